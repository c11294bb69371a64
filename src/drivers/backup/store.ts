/**
 * Object stores: the few operations the chunked format needs, over a posix directory or
 * an S3 bucket. Objects are written whole and atomically (a reader sees the old object,
 * no object, or the complete new one), which is what lets "metadata exists" mean
 * "backup complete" and "chunk exists" mean "chunk stored".
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { access, mkdir, open, readdir, readFile, rename, rmdir, stat, unlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { z } from 'zod';
import type { ObjectTarget, S3Target } from './config.js';
import {
  InvalidObjectKey,
  MissingCredentials,
  ObjectNotFound,
  StoreAccessDenied,
  StoreFull,
  StoreNotFound,
  StoreReadOnly,
  StoreUnreachable,
} from './errors.js';

export interface ObjectStore {
  /** Where the objects live, for messages: `posix:/srv/vault`, `s3://bucket/prefix/`. */
  readonly location: string;
  /**
   * Throws a StoreUnusable naming the target and what is wrong when the store cannot be
   * used at all (no such bucket or directory, access denied, read-only, unreachable);
   * one cheap request, so a backup can refuse before it changes anything.
   */
  ready(): Promise<{ created: boolean }>;
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
 *
 * The directory itself is never created: a missing one is most often a share that is not
 * mounted, and backups written into the mount point would fill the wrong disk.
 */
export class PosixStore implements ObjectStore {
  readonly location: string;
  private readonly tmpDir: string;
  private readonly madeDirs = new Set<string>();

  constructor(
    readonly root: string,
    /** The target's name, for messages. */
    readonly target = 'posix',
  ) {
    this.location = `posix:${root}`;
    this.tmpDir = join(root, '.tmp');
  }

  private path(key: string): string {
    return join(this.root, checkKey(key));
  }

  private async rootExists(): Promise<boolean> {
    try {
      return (await stat(this.root)).isDirectory();
    } catch {
      return false;
    }
  }

  private missing(): StoreNotFound {
    return new StoreNotFound(`target '${this.target}': directory ${this.root} does not exist (create it, or mount the filesystem it belongs on)`, this.target);
  }

  /**
   * The permanent failures of a filesystem, named; anything else (EIO, EAGAIN, ...) is
   * returned as it is and retried. ENOENT is only permanent when the root itself is gone.
   */
  private async classify(e: unknown, doing: string): Promise<unknown> {
    const code = errno(e);
    const says = `target '${this.target}': cannot ${doing} in ${this.root}`;
    switch (code) {
      case 'ENOENT':
      case 'ENOTDIR':
        return (await this.rootExists()) ? e : this.missing();
      case 'EACCES':
      case 'EPERM':
        return new StoreAccessDenied(`${says}: permission denied (${code}); the worker runs as uid ${process.getuid?.() ?? '?'}`, this.target);
      case 'EROFS':
        return new StoreReadOnly(`${says}: the filesystem is read-only (EROFS)`, this.target);
      case 'ENOSPC':
      case 'EDQUOT':
        return new StoreFull(`${says}: no space left (${code}); free space there or point the target elsewhere`, this.target);
      default:
        return e;
    }
  }

  async ready(): Promise<{ created: boolean }> {
    if (!(await this.rootExists())) throw this.missing();
    try {
      // access(2) answers EROFS for W_OK on a read-only mount, also for root.
      await access(this.root, fsc.R_OK | fsc.W_OK | fsc.X_OK);
    } catch (e) {
      throw await this.classify(e, 'read and write');
    }
    return { created: false };
  }

  private async ensureDir(dir: string): Promise<void> {
    if (this.madeDirs.has(dir)) return;
    if (!(await this.rootExists())) throw this.missing();
    await mkdir(dir, { recursive: true });
    this.madeDirs.add(dir);
  }

  async put(key: string, body: Buffer, _opts?: PutOptions): Promise<void> {
    const dest = this.path(key);
    const tmp = join(this.tmpDir, `${randomBytes(8).toString('hex')}.part`);
    try {
      await this.ensureDir(this.tmpDir);
      await this.ensureDir(dirname(dest));
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
    } catch (e) {
      throw await this.classify(e, `write object '${key}'`);
    }
  }

  async get(key: string): Promise<Buffer> {
    try {
      return await readFile(this.path(key));
    } catch (e) {
      throw await this.readFailure(e, key);
    }
  }

  private async readFailure(e: unknown, key: string): Promise<unknown> {
    const classified = await this.classify(e, `read object '${key}'`);
    if (classified === e && errno(e) === 'ENOENT') return new ObjectNotFound(`no object '${key}' in ${this.location}`, key);
    return classified;
  }

  async getInto<B extends ArrayBufferLike>(key: string, alloc: (length: number) => B): Promise<{ buffer: B; length: number }> {
    let fh;
    try {
      fh = await open(this.path(key), 'r');
    } catch (e) {
      throw await this.readFailure(e, key);
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
      const classified = await this.classify(e, `look up object '${key}'`);
      if (classified === e && errno(e) === 'ENOENT') return null;
      throw classified;
    }
  }

  async delete(key: string): Promise<void> {
    const p = this.path(key);
    try {
      await unlink(p);
    } catch (e) {
      const classified = await this.classify(e, `delete object '${key}'`);
      if (classified !== e || errno(e) !== 'ENOENT') throw classified;
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
    // A missing root is not an empty store: a rebuild or a listing would otherwise report "no backups".
    if (!(await this.rootExists())) throw this.missing();
    const classify = (e: unknown) => this.classify(e, `list '${prefix}'`);
    async function* walk(dir: string, rel: string): AsyncIterable<string> {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (e) {
        if (errno(e) === 'ENOENT' || errno(e) === 'ENOTDIR') return;
        throw await classify(e);
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
 * Credentials read again when the store refused them (and at least every minute), so an
 * operator who fixes a credentials file or rotates a key needs no worker restart. Between
 * re-reads every request gets the cached pair: the SDK asks for it per request.
 */
export class CredentialSource {
  private current: Promise<S3Credentials>;
  private readAt = Date.now();
  private stale = false;
  private static readonly MAX_AGE_MS = 60_000;

  constructor(
    first: S3Credentials,
    private readonly reload: () => Promise<S3Credentials>,
  ) {
    this.current = Promise.resolve(first);
  }

  /** The SDK's identity provider. An expiration in the past makes the SDK ask again next time, which is this cache's to answer. */
  provider = async (): Promise<S3Credentials & { expiration: Date }> => {
    if (this.stale || Date.now() - this.readAt > CredentialSource.MAX_AGE_MS) {
      const old = this.current;
      this.stale = false;
      this.readAt = Date.now();
      // Should the file be unreadable just now, the old pair stays.
      this.current = this.reload().catch(() => old);
    }
    return { ...(await this.current), expiration: new Date() };
  };

  /** The store refused the pair: the next request reads it again (by then the operator may have fixed it). */
  refresh(): void {
    this.stale = true;
  }
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

/** Socket errors that mean "nobody answers there", as opposed to a request that broke mid-way. */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'EADDRNOTAVAIL']);

function unreachableCode(e: unknown): string | null {
  const err = e as { code?: string; name?: string; message?: string; cause?: { code?: string } } | undefined;
  const code = err?.code ?? err?.cause?.code;
  if (code !== undefined && UNREACHABLE_CODES.has(code)) return code;
  // The SDK's own connection timeout: the TCP handshake never completed.
  if (err?.name === 'TimeoutError' && /without establishing a connection/i.test(err.message ?? '')) return 'connect timeout';
  return null;
}

/**
 * An unreachable endpoint is tried this many times, with backoff (0.5, 1, 2, 4 s: ~7.5 s
 * in all, beyond the SDK's own quick retries), before it is reported as permanent: long
 * enough for a store that restarts, short enough that a wrong endpoint fails in seconds.
 */
const UNREACHABLE_TRIES = 5;
const CONNECT_TIMEOUT_MS = 5_000;

export interface S3StoreOptions {
  endpoint?: string;
  region: string;
  bucket: string;
  prefix: string;
  forcePathStyle: boolean;
  credentials: S3Credentials | CredentialSource;
  /** Sockets kept open to the endpoint; more than the pipeline's concurrency is waste. */
  maxSockets?: number;
  /** The target's name, for messages. */
  target?: string;
  /** Tries of an unreachable endpoint before it is reported (default UNREACHABLE_TRIES); tests lower it. */
  unreachableTries?: number;
  /** The operator asked for it (`createBucket: true`): ready() makes a missing bucket. */
  createBucket?: boolean;
}

/**
 * An S3 bucket (or a prefix in one) through the AWS SDK v3. A PutObject is atomic on S3,
 * so no temporary names are needed. Creating the bucket is the operator's job (or asked
 * for with `createBucket: true` / `target check --create-bucket`): a backup that silently
 * made a bucket in the wrong account or region would be worse than an error.
 *
 * Every request goes through `send`, which turns the store's permanent refusals into
 * StoreUnusable errors that name the target, the bucket and the endpoint; throttling,
 * timeouts and 5xx stay ordinary errors, and are retried.
 */
export class S3Store implements ObjectStore {
  readonly location: string;
  readonly client: S3Client;
  private readonly prefix: string;
  private readonly target: string;
  private readonly endpoint: string;

  constructor(private readonly opts: S3StoreOptions) {
    this.prefix = opts.prefix === '' || opts.prefix.endsWith('/') ? opts.prefix : `${opts.prefix}/`;
    this.location = `s3://${opts.bucket}/${this.prefix}`;
    this.target = opts.target ?? 's3';
    this.endpoint = opts.endpoint ?? `https://s3.${opts.region}.amazonaws.com`;
    // Under Node 20 the SDK warns, once per process, that releases after January 2027 need
    // Node 22. The release the lockfile pins runs on Node 20, and the notice would otherwise
    // land on stderr of every CLI command that touches S3. Set the variable to 'false' to see it.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.client = new S3Client({
      ...(opts.endpoint !== undefined ? { endpoint: opts.endpoint } : {}),
      region: opts.region,
      forcePathStyle: opts.forcePathStyle,
      credentials: opts.credentials instanceof CredentialSource ? opts.credentials.provider : opts.credentials,
      // Every chunk carries its own sha256 (checked on every read) and, when encrypted, a
      // GCM tag; a CRC32 per request on top would cost CPU for no new guarantee.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // With `Expect: 100-continue` (the SDK's default for every PUT with a body) the SDK
      // sends each PUT on a new, unpooled connection and waits a round trip before the body:
      // a TCP connect per chunk. A chunk is small enough to simply send.
      expectContinueHeader: false,
      requestHandler: {
        requestTimeout: 120_000,
        connectionTimeout: CONNECT_TIMEOUT_MS,
        httpAgent: { keepAlive: true, maxSockets: opts.maxSockets ?? 32 },
        httpsAgent: { keepAlive: true, maxSockets: opts.maxSockets ?? 32 },
      },
    });
  }

  private key(key: string): string {
    return this.prefix + checkKey(key);
  }

  /** The store's permanent refusals, named; anything else is returned unchanged (and retried). */
  classify(e: unknown, doing: string): unknown {
    const c = this.name(e, doing);
    // Refused credentials are read again for the next request: the operator may be fixing them.
    if (c instanceof StoreAccessDenied && this.opts.credentials instanceof CredentialSource) this.opts.credentials.refresh();
    return c;
  }

  private name(e: unknown, doing: string): unknown {
    const name = (e as Error | undefined)?.name ?? '';
    const status = httpStatus(e);
    const where = `bucket '${this.opts.bucket}' at ${this.endpoint}`;
    const says = `target '${this.target}': cannot ${doing}`;
    const detail = (e as Error | undefined)?.message;
    switch (name) {
      case 'NoSuchBucket':
        return new StoreNotFound(
          `target '${this.target}': ${where} does not exist; create it, run 'gbackup target check ${this.target} --create-bucket', or set 'createBucket: true' on the target`,
          this.target,
        );
      case 'AccessDenied':
      case 'AllAccessDisabled':
      case 'AccountProblem':
        return new StoreAccessDenied(`${says}: access denied to ${where} (${name}${detail && detail !== name ? `: ${detail}` : ''})`, this.target);
      case 'InvalidAccessKeyId':
        return new StoreAccessDenied(`${says}: ${this.endpoint} does not know the access key id in the target's credentials (InvalidAccessKeyId)`, this.target);
      case 'SignatureDoesNotMatch':
        return new StoreAccessDenied(`${says}: ${this.endpoint} refuses the secret key in the target's credentials (SignatureDoesNotMatch)`, this.target);
      case 'XMinioStorageFull':
        return new StoreFull(`${says}: ${where} has no space left (XMinioStorageFull)`, this.target);
      default:
        break;
    }
    // HEAD responses carry no error body: only the status tells.
    if (status === 403 && (name === 'Forbidden' || name === 'Unknown' || name === 'UnknownError')) {
      return new StoreAccessDenied(`${says}: access denied to ${where} (HTTP 403)`, this.target);
    }
    if (status === 507) return new StoreFull(`${says}: ${where} has no space left (HTTP 507)`, this.target);
    return e;
  }

  /**
   * One request, with the permanent failures classified. An endpoint that does not answer
   * is tried UNREACHABLE_TRIES times with backoff first: a store that restarts comes back.
   */
  private async send<T>(doing: string, request: () => Promise<T>): Promise<T> {
    const tries = this.opts.unreachableTries ?? UNREACHABLE_TRIES;
    for (let attempt = 1; ; attempt++) {
      try {
        return await request();
      } catch (e) {
        const code = unreachableCode(e);
        if (code === null) throw this.classify(e, doing);
        if (attempt >= tries) {
          throw new StoreUnreachable(`target '${this.target}': endpoint ${this.endpoint} unreachable: ${code} (${tries} tries); cannot ${doing}`, this.target);
        }
        await sleep(500 * 2 ** (attempt - 1));
      }
    }
  }

  async ready(): Promise<{ created: boolean }> {
    try {
      // A one-key listing rather than HeadBucket: HEAD answers carry no error body, so a
      // wrong secret, an unknown key id and a missing right would all be a bare 403.
      await this.send(`reach bucket '${this.opts.bucket}'`, () => this.client.send(new ListObjectsV2Command({ Bucket: this.opts.bucket, Prefix: this.prefix, MaxKeys: 1 })));
      return { created: false };
    } catch (e) {
      if (!(e instanceof StoreNotFound) || this.opts.createBucket !== true) throw e;
      return { created: await this.createBucket() };
    }
  }

  /** Makes the bucket; one that exists and is ours is success. Only on request, never by itself. */
  async createBucket(): Promise<boolean> {
    return this.send(`create bucket '${this.opts.bucket}'`, async () => {
      try {
        await this.client.send(new CreateBucketCommand({ Bucket: this.opts.bucket }));
        return true;
      } catch (e) {
        if ((e as Error).name === 'BucketAlreadyOwnedByYou') return false;
        throw e;
      }
    });
  }

  async put(key: string, body: Buffer, opts?: PutOptions): Promise<void> {
    const crc = opts?.crc32;
    if (crc === undefined || crc === null) {
      // SigV4 then hashes the body (sha256) on this thread: correct, but CPU the pipeline could use.
      await this.send(`write object '${key}'`, () => this.client.send(new PutObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key), Body: body, ContentLength: body.length })));
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
    await this.send(`write object '${key}'`, () => this.client.send(cmd));
  }

  async get(key: string): Promise<Buffer> {
    try {
      const r = await this.send(`read object '${key}'`, () => this.client.send(new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) })));
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
      const r = await this.send(`read object '${key}'`, () => this.client.send(new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) })));
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
      const r = await this.send(`look up object '${key}'`, () => this.client.send(new HeadObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) })));
      return r.ContentLength ?? 0;
    } catch (e) {
      if ((e as Error).name === 'NotFound' || httpStatus(e) === 404) return null;
      throw e;
    }
  }

  async delete(key: string): Promise<void> {
    await this.send(`delete object '${key}'`, () => this.client.send(new DeleteObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) })));
  }

  async *list(prefix: string): AsyncIterable<string> {
    let token: string | undefined;
    do {
      const r = await this.send(`list '${prefix}'`, () =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.opts.bucket, Prefix: this.prefix + prefix, ...(token ? { ContinuationToken: token } : {}) })),
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
      return new PosixStore(target.path, target.name);
    case 's3':
      return new S3Store({
        target: target.name,
        ...(target.endpoint !== undefined ? { endpoint: target.endpoint } : {}),
        region: target.region,
        bucket: target.bucket,
        prefix: target.prefix,
        forcePathStyle: target.forcePathStyle,
        credentials: new CredentialSource(await loadS3Credentials(target, env), () => loadS3Credentials(target, env)),
        createBucket: target.createBucket,
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
