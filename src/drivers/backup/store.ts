/**
 * Object stores: the few operations the chunked format needs, over a posix directory or
 * an S3 bucket. Objects are written whole and atomically (a reader sees the old object,
 * no object, or the complete new one), which is what lets "metadata exists" mean
 * "backup complete" and "chunk exists" mean "chunk stored".
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rmdir, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { z } from 'zod';
import type { ObjectTarget, S3Target } from './config.js';
import { InvalidObjectKey, MissingCredentials, ObjectNotFound } from './errors.js';

export interface ObjectStore {
  /** Where the objects live, for messages: `posix:/srv/vault`, `s3://bucket/prefix/`. */
  readonly location: string;
  put(key: string, body: Buffer, opts?: PutOptions): Promise<void>;
  /** Throws ObjectNotFound when there is no such object. */
  get(key: string): Promise<Buffer>;
  /**
   * Like get, into the buffer `alloc(length)` returns (a pool's): the data path reads every
   * chunk this way, so no chunk costs a fresh allocation. `alloc` may throw to refuse an
   * object of that length (the read is then abandoned and the error thrown).
   */
  getInto<B extends ArrayBufferLike>(key: string, alloc: (length: number) => B): Promise<{ buffer: B; length: number }>;
  exists(key: string): Promise<boolean>;
  /** The object's size in bytes, or null when there is no such object. */
  sizeOf(key: string): Promise<number | null>;
  /** Idempotent: deleting a missing object is success. */
  delete(key: string): Promise<void>;
  /** Every key starting with `prefix`, in no particular order. */
  list(prefix: string): AsyncIterable<string>;
}

export interface PutOptions {
  /** CRC-32 of the body, computed off the main thread: the store checks the upload with it. */
  crc32?: number | null;
}

const SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/;

/**
 * Keys become file paths and URL paths, so they are held to a small alphabet: segments of
 * [A-Za-z0-9._-] not starting with a dot (so `.`, `..` and the posix store's `.tmp`
 * directory are impossible), joined by single slashes, no leading slash.
 */
export function checkKey(key: string): string {
  if (key.length === 0 || key.length > 512) throw new InvalidObjectKey(`object key must be 1-512 characters, got ${key.length}`);
  if (key.startsWith('/')) throw new InvalidObjectKey(`object key '${key}' must not start with '/'`);
  if (key.includes('..')) throw new InvalidObjectKey(`object key '${key}' must not contain '..'`);
  for (const s of key.split('/')) {
    if (!SEGMENT.test(s)) throw new InvalidObjectKey(`object key '${key}' may only contain names of [A-Za-z0-9._-] (not starting with '.') separated by single '/'`);
  }
  return key;
}

const errno = (e: unknown) => (e as NodeJS.ErrnoException | undefined)?.code;

/**
 * A directory as an object store. A put writes a temporary file under `<root>/.tmp`,
 * fsyncs it, renames it into place and fsyncs the directory: a crash leaves either the
 * old state or the whole object, never a torn one, and a listed object is on disk.
 */
export class PosixStore implements ObjectStore {
  readonly location: string;
  private readonly tmpDir: string;
  private readonly madeDirs = new Set<string>();

  constructor(readonly root: string) {
    this.location = `posix:${root}`;
    this.tmpDir = join(root, '.tmp');
  }

  private path(key: string): string {
    return join(this.root, checkKey(key));
  }

  private async ensureDir(dir: string): Promise<void> {
    if (this.madeDirs.has(dir)) return;
    await mkdir(dir, { recursive: true });
    this.madeDirs.add(dir);
  }

  async put(key: string, body: Buffer, _opts?: PutOptions): Promise<void> {
    const dest = this.path(key);
    await this.ensureDir(this.tmpDir);
    await this.ensureDir(dirname(dest));
    const tmp = join(this.tmpDir, `${randomBytes(8).toString('hex')}.part`);
    try {
      const fh = await open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(body);
        await fh.datasync();
      } finally {
        await fh.close();
      }
      await rename(tmp, dest);
    } catch (e) {
      await unlink(tmp).catch(() => undefined);
      throw e;
    }
    const dir = await open(dirname(dest), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  async get(key: string): Promise<Buffer> {
    try {
      return await readFile(this.path(key));
    } catch (e) {
      if (errno(e) === 'ENOENT') throw new ObjectNotFound(`no object '${key}' in ${this.location}`, key);
      throw e;
    }
  }

  async getInto<B extends ArrayBufferLike>(key: string, alloc: (length: number) => B): Promise<{ buffer: B; length: number }> {
    let fh;
    try {
      fh = await open(this.path(key), 'r');
    } catch (e) {
      if (errno(e) === 'ENOENT') throw new ObjectNotFound(`no object '${key}' in ${this.location}`, key);
      throw e;
    }
    try {
      const length = (await fh.stat()).size;
      const buffer = alloc(length);
      const view = new Uint8Array(buffer, 0, length);
      for (let at = 0; at < length; ) {
        const { bytesRead } = await fh.read(view, at, length - at, at);
        if (bytesRead === 0) throw new Error(`object '${key}' in ${this.location} shrank while being read`);
        at += bytesRead;
      }
      return { buffer, length };
    } finally {
      await fh.close();
    }
  }

  async exists(key: string): Promise<boolean> {
    return (await this.sizeOf(key)) !== null;
  }

  async sizeOf(key: string): Promise<number | null> {
    try {
      const st = await stat(this.path(key));
      return st.isFile() ? st.size : null;
    } catch (e) {
      if (errno(e) === 'ENOENT') return null;
      throw e;
    }
  }

  async delete(key: string): Promise<void> {
    const p = this.path(key);
    try {
      await unlink(p);
    } catch (e) {
      if (errno(e) !== 'ENOENT') throw e;
    }
    // Empty backup directories would otherwise pile up; chunk fan-out directories are
    // few (256 per key space) and reused, so they stay.
    if (key.startsWith('backups/')) {
      for (let d = dirname(p); d.length > this.root.length && d.startsWith(join(this.root, 'backups')); d = dirname(d)) {
        if (d === join(this.root, 'backups')) break;
        try {
          await rmdir(d);
          this.madeDirs.delete(d);
        } catch {
          break;
        }
      }
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    // Walk only the directory the prefix pins down, not the whole tree.
    const slash = prefix.lastIndexOf('/');
    const base = slash < 0 ? '' : prefix.slice(0, slash);
    if (base) checkKey(base);
    async function* walk(dir: string, rel: string): AsyncIterable<string> {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (e) {
        if (errno(e) === 'ENOENT' || errno(e) === 'ENOTDIR') return;
        throw e;
      }
      for (const ent of entries) {
        if (ent.name.startsWith('.')) continue;
        const key = rel ? `${rel}/${ent.name}` : ent.name;
        if (ent.isDirectory()) {
          if (prefix.startsWith(`${key}/`) || key.startsWith(prefix) || `${key}/`.startsWith(prefix)) yield* walk(join(dir, ent.name), key);
        } else if (ent.isFile() && key.startsWith(prefix)) {
          yield key;
        }
      }
    }
    yield* walk(base ? join(this.root, base) : this.root, base);
  }
}

const CredentialsFile = z.strictObject({
  accessKeyId: z.string().min(1),
  secretAccessKey: z.string().min(1),
  sessionToken: z.string().min(1).optional(),
});

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** From the target's credentialsFile, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN). */
export async function loadS3Credentials(target: Pick<S3Target, 'name' | 'credentialsFile'>, env: NodeJS.ProcessEnv = process.env): Promise<S3Credentials> {
  if (target.credentialsFile !== undefined) {
    let text: string;
    try {
      text = await readFile(target.credentialsFile, 'utf8');
    } catch (e) {
      throw new MissingCredentials(`target '${target.name}': cannot read credentialsFile '${target.credentialsFile}': ${(e as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new MissingCredentials(`target '${target.name}': credentialsFile '${target.credentialsFile}' is not JSON`);
    }
    const r = CredentialsFile.safeParse(parsed);
    if (!r.success) {
      throw new MissingCredentials(`target '${target.name}': credentialsFile '${target.credentialsFile}' must hold {"accessKeyId": "...", "secretAccessKey": "..."}`);
    }
    return r.data;
  }
  const accessKeyId = env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) {
    throw new MissingCredentials(
      `target '${target.name}': no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the worker's environment, or give credentialsFile`,
    );
  }
  return { accessKeyId, secretAccessKey, ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}) };
}

/**
 * Reads a response body straight into a buffer of its announced length: ~15% less CPU
 * than the SDK's collect-then-concatenate, and no allocation when the buffer is pooled.
 */
function readExactly(body: Readable, out: Buffer, key: string): Promise<void> {
  const length = out.length;
  return new Promise((resolve, reject) => {
    let at = 0;
    body.on('data', (d: Buffer) => {
      if (at + d.length > length) {
        body.destroy(new Error(`object '${key}' is longer than its Content-Length ${length}`));
        return;
      }
      at += d.copy(out, at);
    });
    body.on('error', reject);
    body.on('end', () => (at === length ? resolve() : reject(new Error(`object '${key}' ended after ${at} of ${length} bytes`))));
  });
}

const httpStatus = (e: unknown) => (e as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;

export interface S3StoreOptions {
  endpoint?: string;
  region: string;
  bucket: string;
  prefix: string;
  forcePathStyle: boolean;
  credentials: S3Credentials;
  /** Sockets kept open to the endpoint; more than the pipeline's concurrency is waste. */
  maxSockets?: number;
}

/**
 * An S3 bucket (or a prefix in one) through the AWS SDK v3. A PutObject is atomic on S3,
 * so no temporary names are needed. Creating the bucket is the operator's job: a backup
 * that silently made a bucket in the wrong account or region would be worse than an error.
 */
export class S3Store implements ObjectStore {
  readonly location: string;
  readonly client: S3Client;
  private readonly prefix: string;

  constructor(private readonly opts: S3StoreOptions) {
    this.prefix = opts.prefix === '' || opts.prefix.endsWith('/') ? opts.prefix : `${opts.prefix}/`;
    this.location = `s3://${opts.bucket}/${this.prefix}`;
    // Under Node 20 the SDK warns, once per process, that releases after January 2027 need
    // Node 22. The release the lockfile pins runs on Node 20, and the notice would otherwise
    // land on stderr of every CLI command that touches S3. Set the variable to 'false' to see it.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.client = new S3Client({
      ...(opts.endpoint !== undefined ? { endpoint: opts.endpoint } : {}),
      region: opts.region,
      forcePathStyle: opts.forcePathStyle,
      credentials: opts.credentials,
      // Every chunk carries its own sha256 (checked on every read) and, when encrypted, a
      // GCM tag; a CRC32 per request on top would cost CPU for no new guarantee.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // With `Expect: 100-continue` (the SDK's default for every PUT with a body) the SDK
      // sends each PUT on a new, unpooled connection and waits a round trip before the body:
      // a TCP connect per chunk. A chunk is small enough to simply send.
      expectContinueHeader: false,
      requestHandler: { requestTimeout: 120_000, httpAgent: { keepAlive: true, maxSockets: opts.maxSockets ?? 32 }, httpsAgent: { keepAlive: true, maxSockets: opts.maxSockets ?? 32 } },
    });
  }

  private key(key: string): string {
    return this.prefix + checkKey(key);
  }

  async put(key: string, body: Buffer, opts?: PutOptions): Promise<void> {
    const crc = opts?.crc32;
    if (crc === undefined || crc === null) {
      // SigV4 then hashes the body (sha256) on this thread: correct, but CPU the pipeline could use.
      await this.client.send(new PutObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key), Body: body, ContentLength: body.length }));
      return;
    }
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc >>> 0);
    const cmd = new PutObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key), Body: body, ContentLength: body.length, ChecksumCRC32: sum.toString('base64') });
    // The store checks the body against the CRC (and refuses a mismatch), so the signature
    // need not cover a sha256 of it as well.
    cmd.middlewareStack.add(
      (next) => async (args) => {
        const req = args.request as { headers?: Record<string, string> };
        if (req.headers) req.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
        return next(args);
      },
      { step: 'build', name: 'gbackupUnsignedPayload' },
    );
    await this.client.send(cmd);
  }

  async get(key: string): Promise<Buffer> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) }));
      if (!r.Body) throw new ObjectNotFound(`object '${key}' in ${this.location} has no body`, key);
      const bytes = await r.Body.transformToByteArray();
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    } catch (e) {
      if ((e as Error).name === 'NoSuchKey' || httpStatus(e) === 404) throw new ObjectNotFound(`no object '${key}' in ${this.location}`, key);
      throw e;
    }
  }

  async getInto<B extends ArrayBufferLike>(key: string, alloc: (length: number) => B): Promise<{ buffer: B; length: number }> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) }));
      if (!r.Body) throw new ObjectNotFound(`object '${key}' in ${this.location} has no body`, key);
      if (r.Body instanceof Readable && r.ContentLength !== undefined) {
        const body = r.Body;
        let buffer: B;
        try {
          buffer = alloc(r.ContentLength);
        } catch (e) {
          // Refused: the connection is not worth draining an unwanted body for.
          body.destroy();
          throw e;
        }
        await readExactly(body, Buffer.from(buffer, 0, r.ContentLength), key);
        return { buffer, length: r.ContentLength };
      }
      const bytes = await r.Body.transformToByteArray();
      const buffer = alloc(bytes.byteLength);
      new Uint8Array(buffer).set(bytes);
      return { buffer, length: bytes.byteLength };
    } catch (e) {
      if ((e as Error).name === 'NoSuchKey' || httpStatus(e) === 404) throw new ObjectNotFound(`no object '${key}' in ${this.location}`, key);
      throw e;
    }
  }

  async exists(key: string): Promise<boolean> {
    return (await this.sizeOf(key)) !== null;
  }

  async sizeOf(key: string): Promise<number | null> {
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) }));
      return r.ContentLength ?? 0;
    } catch (e) {
      if ((e as Error).name === 'NotFound' || httpStatus(e) === 404) return null;
      throw e;
    }
  }

  async delete(key: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) }));
  }

  async *list(prefix: string): AsyncIterable<string> {
    let token: string | undefined;
    do {
      const r = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.opts.bucket, Prefix: this.prefix + prefix, ...(token ? { ContinuationToken: token } : {}) }),
      );
      for (const o of r.Contents ?? []) if (o.Key !== undefined) yield o.Key.slice(this.prefix.length);
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
  }

  close(): void {
    this.client.destroy();
  }
}

/** The store a target config describes. S3 credentials are read here, on the worker, never passed in. */
export async function openStore(target: ObjectTarget, env: NodeJS.ProcessEnv = process.env): Promise<ObjectStore> {
  switch (target.driver) {
    case 'posix':
      return new PosixStore(target.path);
    case 's3':
      return new S3Store({
        ...(target.endpoint !== undefined ? { endpoint: target.endpoint } : {}),
        region: target.region,
        bucket: target.bucket,
        prefix: target.prefix,
        forcePathStyle: target.forcePathStyle,
        credentials: await loadS3Credentials(target, env),
      });
  }
}

/** Releases a store's sockets (S3); a no-op for directories. */
export function closeStore(store: ObjectStore): void {
  if (store instanceof S3Store) store.close();
}

/** All keys under a prefix, collected. */
export async function listAll(store: ObjectStore, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const k of store.list(prefix)) out.push(k);
  return out;
}
