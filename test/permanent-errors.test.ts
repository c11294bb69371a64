/**
 * First contact with a real deployment: every permanent failure of a backup target or a
 * volume backend ends the operation within a bound, with exit code 1 and a message that
 * names what is wrong, leaves nothing behind, and once the cause is fixed the same
 * command succeeds. Real MinIO, real Temporal, real tmpfs mounts for the full and
 * read-only directories, real loop devices. Prints the table: fault, seconds, message.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { freePort } from '../src/dev/devserver.js';
import { startWorkers } from '../src/workers/worker.js';
import { HeadBucketCommand } from '@aws-sdk/client-s3';
import { listLoopDevices } from '../src/connectors/loop.js';
import { listAll } from '../src/drivers/backup/stores/store.js';
import { makeEnv, volumeWithData, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { startMinio, type Minio } from './helpers/minio.js';

/** Every fault below must reach its terminal state within this (the unreachable endpoint takes ~8 s of tries). */
const BOUND_S = 60;
const MISSING_BUCKET = 'gbackup-never-made';
/** A bucket the config asks to be made (createBucket: true). */
const AUTO_BUCKET = 'gbackup-made-on-request';
/** What the worker logged, from its start on. */
const workerLog: string[] = [];

let minio: Minio;
let env: TestEnv;
let down: string;
const mounts: string[] = [];
const rows: { fault: string; seconds: number; code: number | undefined; message: string }[] = [];
const failpoints = () => join(env.dir, 'failpoints');

async function tmpfs(dir: string, opts: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  await execa('mount', ['-t', 'tmpfs', '-o', opts, 'tmpfs', dir]);
  mounts.push(dir);
}

const BIN = join(import.meta.dirname, '..', 'bin', 'gbackup.js');
async function gb(...args: string[]) {
  const r = await execa('node', [BIN, '--config', env.configFile, ...args], { reject: false });
  let json: Record<string, unknown> | undefined;
  try {
    json = JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    json = undefined;
  }
  return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr, json };
}

function credentials(file: string, secret: string, id = minio.accessKeyId): void {
  writeFileSync(file, JSON.stringify({ accessKeyId: id, secretAccessKey: secret }), { mode: 0o600 });
}

beforeAll(async () => {
  minio = await startMinio();
  down = `http://127.0.0.1:${await freePort()}`;
  const s3 = (name: string, extra: string) => `
  - name: ${name}
    driver: s3
    endpoint: ${extra.includes('endpoint') ? '' : minio.endpoint}
    forcePathStyle: true
    ${extra}`;
  env = await makeEnv({
    workers: false,
    yaml: (dir, taskQueue, address) => {
      credentials(join(dir, 'good.json'), minio.secretAccessKey);
      credentials(join(dir, 'wrong-secret.json'), 'not-the-secret');
      credentials(join(dir, 'unknown-id.json'), minio.secretAccessKey, 'nobody-has-this-key');
      return `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha }
  - { name: tiny,  driver: file, path: ${dir}/tiny }
  - { name: small, driver: file, path: ${dir}/small }
targets:
  - { name: vault, driver: volume, backend: tiny }
  - { name: gone, driver: posix, path: ${dir}/not-mounted }
  - { name: ro, driver: posix, path: ${dir}/ro }
  - { name: full, driver: posix, path: ${dir}/full }
${s3('nobucket', `bucket: ${MISSING_BUCKET}\n    credentialsFile: ${dir}/good.json`)}
${s3('badsecret', `bucket: ${minio.bucket}\n    prefix: badsecret\n    credentialsFile: ${dir}/wrong-secret.json`)}
${s3('badid', `bucket: ${minio.bucket}\n    prefix: badid\n    credentialsFile: ${dir}/unknown-id.json`)}
  - { name: down, driver: s3, endpoint: ${down}, bucket: ${minio.bucket}, forcePathStyle: true, credentialsFile: ${dir}/good.json }
  - { name: auto, driver: s3, endpoint: ${minio.endpoint}, bucket: ${AUTO_BUCKET}, forcePathStyle: true, credentialsFile: ${dir}/good.json, createBucket: true }
defaultTarget: vault
`.replace(/endpoint: \n/g, '');
    },
  });
  // A read-only directory and a small one, as real mounts: EROFS and ENOSPC come from the kernel.
  await tmpfs(join(env.dir, 'ro'), 'ro,size=64m');
  await tmpfs(join(env.dir, 'full'), 'size=8m');
  // The volume target's backend: room for one 32 MiB volume, so the test can fill it mid-copy.
  await tmpfs(join(env.dir, 'tiny'), 'size=40m');
  // A backend to restore onto, with room for one 16 MiB volume.
  await tmpfs(join(env.dir, 'small'), 'size=24m');
  process.env.GBACKUP_FAILPOINTS_FILE = failpoints();
  env.workers = await startWorkers({ config: env.config, workflowBundle: { code: inject('workflowCode') }, log: (m) => workerLog.push(m) });
});

afterAll(async () => {
  try {
    console.log(
      `\npermanent failures (bound ${BOUND_S} s):\n| fault | seconds to terminal state | exit | message |\n|---|---|---|---|\n${rows
        .map((r) => `| ${r.fault} | ${r.seconds.toFixed(1)} | ${r.code} | ${r.message.replace(/\n/g, ' ').slice(0, 240)} |`)
        .join('\n')}`,
    );
    delete process.env.GBACKUP_FAILPOINTS_FILE;
    await env?.workers?.shutdown().catch(() => undefined);
    // A loop device over a file on a mount keeps it busy: detach first, even after a failed test.
    for (const d of await listLoopDevices()) if (env && d.backingFile.startsWith(`${env.dir}/`)) await execa('losetup', ['-d', d.device], { reject: false });
    for (const m of mounts.reverse()) {
      if ((await execa('umount', [m], { reject: false })).exitCode !== 0) await execa('umount', ['--lazy', m], { reject: false });
    }
  } finally {
    await env?.cleanup();
    await minio?.stop();
  }
});

/** Runs the command, records the row, and checks the bound and the exit code. */
async function fails(fault: string, args: string[], message: RegExp) {
  const t0 = performance.now();
  const r = await gb(...args);
  const seconds = (performance.now() - t0) / 1000;
  const line = r.stderr.trim().split('\n').filter((l) => l.startsWith('gbackup:')).join(' ') || r.stderr.trim();
  rows.push({ fault, seconds, code: r.code, message: line });
  expect(r.code, r.stderr).toBe(1);
  expect(r.stderr).toMatch(message);
  expect(seconds).toBeLessThan(BOUND_S);
  return r;
}

/** The volume is back in its status, no backup of it is stuck, nothing is attached or left over. */
async function nothingLeft(volumeId: string, target: string) {
  expect((await env.rt.catalog.volume(volumeId)).status).toBe('available');
  const stuck = (await env.rt.catalog.listBackups(volumeId)).filter((b) => b.status === 'creating' || b.target === target && b.status === 'available');
  expect(stuck).toEqual([]);
  expect(await findLeaks(env)).toEqual(NO_LEAKS);
}

async function storeKeys(target: string): Promise<string[]> {
  const t = await env.rt.objectTarget(target);
  // Not the deletes' announcements (gc.ts): they are kept a day by design.
  return (await listAll(t.store, '')).filter((k) => !k.startsWith('probe/') && !k.startsWith('gc/'));
}

async function succeeds(volumeId: string, target: string) {
  const r = await gb('backup', 'create', volumeId, '--target', target, '--wait', '--json');
  expect(r.code, r.stderr).toBe(0);
  expect(r.json).toMatchObject({ volumeId, target, status: 'available' });
  return r.json!;
}

describe('permanent failures fail fast and clearly, and leave nothing behind', () => {
  it('the worker warns at start, naming each target it cannot use, and makes the bucket a target asks for', async () => {
    const expected = ['nobucket', 'badsecret', 'badid', 'down', 'gone', 'ro'];
    const warned = (name: string) => workerLog.some((l) => l.startsWith(`gbackup worker: WARNING: target '${name}'`));
    // The unreachable endpoint takes its ~8 s of tries; the check runs beside the polling.
    for (let i = 0; i < 300 && !expected.every(warned); i++) await sleep(100);
    expect(expected.filter((n) => !warned(n))).toEqual([]);
    expect(workerLog.find((l) => l.includes("target 'down'"))).toMatch(/reach failed: StoreUnreachable: .*unreachable: ECONNREFUSED/);
    expect(workerLog.find((l) => l.includes("target 'ro'"))).toMatch(/read-only \(EROFS\)/);
    // Usable targets are not mentioned, but for the one whose bucket was made on request.
    expect(workerLog.some((l) => l.includes("target 'full'") || l.includes("target 'vault'"))).toBe(false);
    expect(workerLog.find((l) => l.includes("target 'auto'"))).toMatch(/ok .*; bucket created/);
    await minio.client.send(new HeadBucketCommand({ Bucket: AUTO_BUCKET }));
    // One line per role and queue, before any of that.
    expect(workerLog.filter((l) => / role /.test(l))).toHaveLength(2);
  });

  it('S3: a bucket that does not exist; then --create-bucket and the retry succeeds', async () => {
    const v = await volumeWithData(env, 'alpha', undefined, 16, [0, 8]);
    await fails('S3 bucket missing', ['backup', 'create', v.id, '--target', 'nobucket', '--wait'], new RegExp(`bucket '${MISSING_BUCKET}' at ${minio.endpoint} does not exist`));
    await nothingLeft(v.id, 'nobucket');
    const check = await gb('target', 'check', 'nobucket', '--json');
    expect(check.code).toBe(1);
    expect(check.json).toMatchObject({ error: { type: 'TargetCheckFailed' } });
    expect(JSON.stringify(check.json)).toContain('StoreNotFound');
    const made = await gb('target', 'check', 'nobucket', '--create-bucket', '--json');
    expect(made.code, made.stderr).toBe(0);
    expect(made.json).toMatchObject([{ target: 'nobucket', ok: true, createdBucket: true }]);
    const b = await succeeds(v.id, 'nobucket');
    expect(await storeKeys('nobucket')).toContain(`backups/${b.id as string}/metadata.json`);
  });

  it('S3: a wrong secret key and an unknown access key id; fixed credentials work without a worker restart', async () => {
    const v = await volumeWithData(env, 'alpha', undefined, 16, [0]);
    await fails('S3 wrong secret key', ['backup', 'create', v.id, '--target', 'badsecret', '--wait'], /target 'badsecret'.*refuses the secret key.*SignatureDoesNotMatch/);
    await nothingLeft(v.id, 'badsecret');
    await fails('S3 unknown access key id', ['backup', 'create', v.id, '--target', 'badid', '--wait'], /target 'badid'.*does not know the access key id.*InvalidAccessKeyId/);
    await nothingLeft(v.id, 'badid');
    expect(await listAll((await env.rt.objectTarget('nobucket')).store, 'badsecret/')).toEqual([]);
    credentials(join(env.dir, 'wrong-secret.json'), minio.secretAccessKey);
    await succeeds(v.id, 'badsecret');
  });

  it('S3: an endpoint nobody listens on fails after a bounded number of tries, naming it', async () => {
    const v = await volumeWithData(env, 'alpha', undefined, 16, [0]);
    await fails('S3 endpoint unreachable', ['backup', 'create', v.id, '--target', 'down', '--wait'], new RegExp(`endpoint ${down.replace(/\./g, '\\.')} unreachable: ECONNREFUSED \\(5 tries\\)`));
    await nothingLeft(v.id, 'down');
    const check = await gb('target', 'check', 'down');
    expect(check.code).toBe(1);
    expect(check.stderr).toMatch(/reach failed: StoreUnreachable/);
  });

  it('posix: a missing directory is not created (it may be an unmounted share); once it exists the retry succeeds', async () => {
    const v = await volumeWithData(env, 'alpha', undefined, 16, [0]);
    await fails('posix directory missing', ['backup', 'create', v.id, '--target', 'gone', '--wait'], new RegExp(`target 'gone': directory ${env.dir}/not-mounted does not exist`));
    await nothingLeft(v.id, 'gone');
    expect(() => readFileSync(join(env.dir, 'not-mounted'))).toThrow(/ENOENT/);
    mkdirSync(join(env.dir, 'not-mounted'));
    await succeeds(v.id, 'gone');
  });

  it('posix: a read-only filesystem; remounted read-write the retry succeeds', async () => {
    const v = await volumeWithData(env, 'alpha', undefined, 16, [0]);
    await fails('posix read-only (EROFS)', ['backup', 'create', v.id, '--target', 'ro', '--wait'], /target 'ro': cannot read and write in .*\/ro: the filesystem is read-only \(EROFS\)/);
    await nothingLeft(v.id, 'ro');
    await execa('mount', ['-o', 'remount,rw', join(env.dir, 'ro')]);
    await succeeds(v.id, 'ro');
  });

  it('posix: a directory that fills up mid-backup; the backup is error with the reason, its chunks are gone; with room the retry succeeds', async () => {
    // 32 MiB of random data cannot fit in 8 MiB.
    const v = await volumeWithData(env, 'alpha', undefined, 32, [0, 8, 16, 24]);
    await fails('posix full mid-backup (ENOSPC)', ['backup', 'create', v.id, '--target', 'full', '--wait'], /target 'full': cannot write object .* no space left \(ENOSPC\)/);
    await nothingLeft(v.id, 'full');
    const failed = (await env.rt.catalog.listBackups(v.id)).filter((b) => b.target === 'full');
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ status: 'error' });
    expect(failed[0]!.error).toMatch(/StoreFull: .*ENOSPC/);
    // Nothing of it stays: the compensation removed its chunks and bookkeeping.
    expect(await storeKeys('full')).toEqual([]);
    await execa('mount', ['-o', 'remount,size=128m', join(env.dir, 'full')]);
    await succeeds(v.id, 'full');
  });

  it('a volume backend that fills up mid-copy: backup error naming the backend, the half-made volume deleted; with room the retry succeeds', async () => {
    const v = await volumeWithData(env, 'alpha', undefined, 32, [0, 8, 16, 24]);
    const filler = join(env.dir, 'tiny', 'filler');
    await fillDuringCopy(filler, 30, () =>
      fails('volume backend full mid-copy (ENOSPC)', ['backup', 'create', v.id, '--target', 'vault', '--wait'], /backend 'tiny' is full: writing .* failed with ENOSPC/),
    );
    await nothingLeft(v.id, 'vault');
    const failed = (await env.rt.catalog.listBackups(v.id)).filter((b) => b.target === 'vault');
    expect(failed.map((b) => b.status)).toEqual(['error']);
    expect(failed[0]!.error).toMatch(/BackendFull/);
    // The half-made backup volume is gone, only the filler is left on the backend.
    expect((await execa('ls', [join(env.dir, 'tiny')])).stdout.trim()).toBe('filler');
    await execa('rm', [filler]);
    await succeeds(v.id, 'vault');
  });

  it('a volume backend that fills up mid-restore from an object target: the new volume is gone, the backup stays available; with room the retry succeeds', async () => {
    const v = await volumeWithData(env, 'alpha', undefined, 16, [0, 4, 8, 12]);
    // The posix target's directory exists by now (the test above made it; this one may run alone).
    mkdirSync(join(env.dir, 'not-mounted'), { recursive: true });
    const b = await succeeds(v.id, 'gone');
    const filler = join(env.dir, 'small', 'filler');
    // Direct writes see ENOSPC; buffered writes to the loop device see the full backend as EIO at fdatasync.
    await fillDuringCopy(filler, 20, () =>
      fails('volume backend full mid-restore (EIO, 0 bytes free)', ['backup', 'restore', b.id as string, '--backend', 'small', '--wait'], /backend 'small' is full: writing .* failed with (EIO|ENOSPC)/),
    );
    expect((await env.rt.catalog.backup(b.id as string)).status).toBe('available');
    expect((await env.rt.catalog.listVolumes()).filter((x) => x.backend === 'small')).toEqual([]);
    expect((await execa('ls', [join(env.dir, 'small')])).stdout.trim()).toBe('filler');
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
    await execa('rm', [filler]);
    const r = await gb('backup', 'restore', b.id as string, '--backend', 'small', '--wait', '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(await env.volumes.sha256(r.json!.id as string)).toBe(await env.volumes.sha256(v.id));
  });

  it('target list names every target, its driver and where its backups go', async () => {
    const r = await gb('target', 'list', '--json');
    expect(r.code, r.stderr).toBe(0);
    const rows = r.json as unknown as { name: string; driver: string; location: string; default: boolean }[];
    expect(rows.find((t) => t.name === 'vault')).toEqual({ name: 'vault', driver: 'volume', location: 'tiny', default: true });
    expect(rows.find((t) => t.name === 'gone')).toMatchObject({ driver: 'posix', location: join(env.dir, 'not-mounted'), default: false });
    expect(rows.find((t) => t.name === 'down')).toMatchObject({ driver: 's3', location: `s3://${minio.bucket}/ at ${down}` });
  });

  it('a transient failure is retried, and the last error shows in the progress while it is', async () => {
    const v = await volumeWithData(env, 'alpha', undefined, 16, [0]);
    writeFileSync(failpoints(), 'copy=transient\n');
    try {
      const b = await succeeds(v.id, 'nobucket');
      const handle = env.client.client.workflow.getHandle(b.workflowId as string);
      const p = await env.client.progress(handle);
      expect(p?.lastError).toMatchObject({ step: 'backupToObjects', attempt: 1, type: 'TransientFault' });
      expect(p?.lastError?.message).toMatch(/injected transient error/);
    } finally {
      writeFileSync(failpoints(), '');
    }
  });
});

/**
 * Holds the copy `run` starts right before it writes (failpoint), fills the destination's
 * filesystem with `mib` MiB behind the workflow's back, then lets the copy go on.
 */
async function fillDuringCopy(filler: string, mib: number, run: () => Promise<unknown>): Promise<void> {
  rmSync(`${failpoints()}.fired`, { force: true });
  writeFileSync(failpoints(), 'copy=hang\n');
  const done = run();
  for (let i = 0; i < 200 && !readFileSafe(`${failpoints()}.fired`).includes('copy=hang'); i++) await sleep(100);
  writeFileSync(failpoints(), '');
  await execa('dd', ['if=/dev/zero', `of=${filler}`, 'bs=1M', `count=${mib}`, 'status=none'], { reject: false });
  await done;
}

function readFileSafe(f: string): string {
  try {
    return readFileSync(f, 'utf8');
  } catch {
    return '';
  }
}
