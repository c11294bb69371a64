/**
 * A real MinIO for the S3 tests: the binary `npm run setup` builds into .tools/bin, on
 * 127.0.0.1 with free ports and a temporary data directory, with one bucket made through
 * the SDK. `stop()` kills it and removes the directory; call it from afterAll so a failed
 * test leaves neither behind.
 */
import { existsSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { execa, type ResultPromise } from 'execa';
import { freePort, repoRoot } from '../../src/dev/devserver.js';

export interface Minio {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
  dir: string;
  client: S3Client;
  /** Environment for a worker or restic: the credentials as AWS_* variables. */
  env: Record<string, string>;
  /** `objectLock`: made with S3 Object Lock enabled (and so versioned). */
  createBucket(name: string, opts?: { objectLock?: boolean }): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Runs `cleanup` (synchronous) if the process ends before the returned function is called:
 * on exit, and on SIGINT/SIGTERM (then re-raised, so the process still dies of it), for
 * what a test made that must not outlive a test run that is killed or crashes.
 */
export function cleanupOnExit(cleanup: () => void): () => void {
  const onExit = () => {
    remove();
    cleanup();
  };
  const onSignal = (signal: NodeJS.Signals) => {
    onExit();
    process.kill(process.pid, signal);
  };
  const remove = () => {
    process.removeListener('exit', onExit);
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  };
  process.once('exit', onExit);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return remove;
}

/** Fixed root credentials of every test and bench MinIO (loopback only, temporary data). */
export const MINIO_CREDENTIALS = { accessKeyId: 'gbackup-test', secretAccessKey: 'gbackup-test-secret' } as const;

export function minioBinary(): string {
  const p = process.env.GBACKUP_MINIO_BIN ?? join(repoRoot, '.tools', 'bin', 'minio');
  if (!existsSync(p)) throw new Error(`MinIO not found at ${p}; run 'npm run setup' first`);
  return p;
}


async function waitReady(url: string, proc: ResultPromise, output: () => string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`minio exited with code ${proc.exitCode}: ${output().slice(-2000)}`);
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await sleep(150);
  }
  throw new Error(`minio was not ready at ${url} within ${timeoutMs} ms: ${output().slice(-2000)}`);
}

/** `objectLock`: the bucket is made with S3 Object Lock enabled (default: a plain bucket). */
export async function startMinio(opts: { bucket?: string; baseDir?: string; objectLock?: boolean } = {}): Promise<Minio> {
  const dir = await mkdtemp(join(opts.baseDir ?? tmpdir(), 'gbackup-minio-'));
  const port = await freePort();
  let consolePort = await freePort();
  while (consolePort === port) consolePort = await freePort();
  const { accessKeyId, secretAccessKey } = MINIO_CREDENTIALS;
  let output = '';
  const proc = execa(minioBinary(), ['server', join(dir, 'data'), '--address', `127.0.0.1:${port}`, '--console-address', `127.0.0.1:${consolePort}`, '--quiet'], {
    env: { MINIO_ROOT_USER: accessKeyId, MINIO_ROOT_PASSWORD: secretAccessKey, MINIO_BROWSER: 'off', MINIO_UPDATE: 'off' },
    stdin: 'ignore',
    reject: false,
    buffer: false,
  });
  proc.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const endpoint = `http://127.0.0.1:${port}`;
  const client = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId, secretAccessKey } });
  let stopped = false;
  // Should the test process end without afterAll (killed, crashed, process.exit), neither the
  // server nor its data outlive it.
  const forget = cleanupOnExit(() => {
    proc.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    forget();
    client.destroy();
    if (proc.exitCode === null) {
      proc.kill('SIGTERM');
      const killer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await proc;
      clearTimeout(killer);
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitReady(`${endpoint}/minio/health/ready`, proc, () => output, 60_000);
    const bucket = opts.bucket ?? 'gbackup';
    const createBucket = async (name: string, o: { objectLock?: boolean } = {}) => {
      await client.send(new CreateBucketCommand({ Bucket: name, ...(o.objectLock ? { ObjectLockEnabledForBucket: true } : {}) }));
    };
    await createBucket(bucket, { objectLock: opts.objectLock === true });
    return {
      endpoint,
      accessKeyId,
      secretAccessKey,
      bucket,
      dir,
      client,
      env: { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey },
      createBucket,
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
