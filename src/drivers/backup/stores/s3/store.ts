/**
 * An S3 bucket (or a prefix in one) as an object store, through the AWS SDK v3.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  GetObjectRetentionCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  ListObjectVersionsCommand,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { ObjectNotFound, ObjectRetained, StoreAccessDenied, StoreFull, StoreNotFound, StoreUnreachable, StoreUnusable } from '../../errors.js';
import { checkKey, type ObjectLockPolicy, type ObjectStore, type PutOptions, type Retention } from '../store.js';
import { CredentialSource, type S3Credentials } from './credentials.js';
import { DirectBody, DirectGets, type SignedRequest } from './directget.js';

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
      // fill() with a buffer as long as the range is one memcpy; copy() (TypedArray.set)
      // copies into a SharedArrayBuffer word by word with relaxed atomics, ~2x the CPU.
      if (d.length > 0) out.fill(d, at, at + d.length);
      at += d.length;
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
const REQUEST_TIMEOUT_MS = 120_000;

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
  /** Lock what backups write (the bucket must have object lock, hence versioning). */
  objectLock?: ObjectLockPolicy;
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
  readonly objectLock?: ObjectLockPolicy;
  private readonly prefix: string;
  private readonly target: string;
  private readonly endpoint: string;
  /** Chunk GETs read from the socket into their buffers (directget.ts); null when GBACKUP_DIRECT_GET=0. */
  private readonly direct: DirectGets | null;

  constructor(private readonly opts: S3StoreOptions) {
    this.prefix = opts.prefix === '' || opts.prefix.endsWith('/') ? opts.prefix : `${opts.prefix}/`;
    this.location = `s3://${opts.bucket}/${this.prefix}`;
    this.target = opts.target ?? 's3';
    if (opts.objectLock) this.objectLock = opts.objectLock;
    this.endpoint = opts.endpoint ?? `https://s3.${opts.region}.amazonaws.com`;
    // Under Node 20 the SDK warns, once per process, that releases after January 2027 need
    // Node 22. The release the lockfile pins runs on Node 20, and the notice would otherwise
    // land on stderr of every CLI command that touches S3. Set the variable to 'false' to see it.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.direct =
      process.env.GBACKUP_DIRECT_GET === '0' ? null : new DirectGets({ connectTimeoutMs: CONNECT_TIMEOUT_MS, requestTimeoutMs: REQUEST_TIMEOUT_MS, maxIdle: opts.maxSockets ?? 32 });
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
        requestTimeout: REQUEST_TIMEOUT_MS,
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
    if (c instanceof StoreAccessDenied && this.opts.credentials instanceof CredentialSource) this.opts.credentials.invalidate();
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
    // A locked write to a bucket made without object lock: no retry makes it one.
    if (status === 400 && this.objectLock && /object ?lock/i.test(detail ?? '')) {
      return new StoreUnusable(`${says}: ${where} does not have S3 Object Lock enabled, but the target's objectLock needs it (${name}: ${detail}); run 'gbackup target check ${this.target}'`, this.target);
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
      return { created: await this.createContainer() };
    }
  }

  /** Makes the bucket; one that exists and is ours is success. Only on request, never by itself. */
  async createContainer(): Promise<boolean> {
    return this.send(`create bucket '${this.opts.bucket}'`, async () => {
      try {
        // Object lock can only be turned on when a bucket is made (it brings versioning).
        await this.client.send(new CreateBucketCommand({ Bucket: this.opts.bucket, ...(this.objectLock ? { ObjectLockEnabledForBucket: true } : {}) }));
        return true;
      } catch (e) {
        if ((e as Error).name === 'BucketAlreadyOwnedByYou') return false;
        throw e;
      }
    });
  }

  async put(key: string, body: Buffer, opts?: PutOptions): Promise<void> {
    const crc = opts?.crc32;
    const lock =
      this.objectLock && opts?.retainUntil ? { ObjectLockMode: this.objectLock.mode, ObjectLockRetainUntilDate: opts.retainUntil } : null;
    if (crc === undefined || crc === null) {
      // SigV4 then hashes the body (sha256) on this thread: correct, but CPU the pipeline could use.
      // A locked PUT must carry a Content-MD5 (or a checksum) or S3 and MinIO refuse it.
      const md5 = lock ? { ContentMD5: createHash('md5').update(body).digest('base64') } : {};
      await this.send(`write object '${key}'`, () =>
        this.client.send(new PutObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key), Body: body, ContentLength: body.length, ...md5, ...lock })),
      );
      return;
    }
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc >>> 0);
    const cmd = new PutObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key), Body: body, ContentLength: body.length, ChecksumCRC32: sum.toString('base64'), ...lock });
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
      const r = await this.send(`read object '${key}'`, () => {
        const cmd = new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) });
        const direct = this.direct;
        if (direct) {
          // Innermost, where the SDK's handler would send the signed request: sent here
          // instead, unless it is not a plain 2xx (then the handler sends it after all).
          cmd.middlewareStack.add(
            (next) => async (args) => {
              const response = await direct.get(args.request as SignedRequest);
              return response ? { response } : next(args);
            },
            { step: 'deserialize', priority: 'low', name: 'gbackupDirectGet' },
          );
        }
        return this.client.send(cmd);
      });
      if (!r.Body) throw new ObjectNotFound(`object '${key}' in ${this.location} has no body`, key);
      if (r.Body instanceof DirectBody) {
        const body = r.Body;
        let buffer: B;
        try {
          buffer = alloc(body.length);
        } catch (e) {
          body.destroy();
          throw e;
        }
        await body.readInto(new Uint8Array(buffer, 0, body.length));
        return { buffer, length: body.length };
      }
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
    if (this.objectLock) return this.deleteVersions(key);
    await this.send(`delete object '${key}'`, () => this.client.send(new DeleteObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) })));
  }

  /**
   * A lock-enabled bucket is versioned: a DeleteObject without a version only stacks a
   * delete marker on the data, which stays. So every version (and marker) of the key is
   * deleted by id. A version still locked is refused by the store (AWS: AccessDenied,
   * MinIO: InvalidRequest "Object is WORM protected"): that is ObjectRetained, naming until when.
   */
  private async deleteVersions(key: string): Promise<void> {
    const full = this.key(key);
    const versions: (string | undefined)[] = [];
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    do {
      const r = await this.send(`list versions of '${key}'`, () =>
        this.client.send(
          new ListObjectVersionsCommand({ Bucket: this.opts.bucket, Prefix: full, ...(keyMarker ? { KeyMarker: keyMarker } : {}), ...(versionMarker ? { VersionIdMarker: versionMarker } : {}) }),
        ),
      );
      // A prefix listing: keys that merely start with this one are not ours.
      for (const v of [...(r.Versions ?? []), ...(r.DeleteMarkers ?? [])]) if (v.Key === full) versions.push(v.VersionId);
      keyMarker = r.IsTruncated ? r.NextKeyMarker : undefined;
      versionMarker = r.IsTruncated ? r.NextVersionIdMarker : undefined;
    } while (keyMarker);
    for (const versionId of versions) {
      await this.send(`delete object '${key}'`, async () => {
        try {
          await this.client.send(new DeleteObjectCommand({ Bucket: this.opts.bucket, Key: full, ...(versionId !== undefined ? { VersionId: versionId } : {}) }));
        } catch (e) {
          // AWS says AccessDenied; MinIO InvalidRequest "Object is WORM protected and cannot be overwritten".
          const name = (e as Error).name;
          if (name !== 'AccessDenied' && !(name === 'InvalidRequest' && /WORM|lock|retention/i.test((e as Error).message))) throw e;
          const held = await this.retentionOf(full, versionId).catch(() => null);
          if (held && held.retainUntil.getTime() > Date.now()) {
            throw new ObjectRetained(
              `target '${this.target}': object '${key}' is retained by S3 Object Lock until ${held.retainUntil.toISOString()} (mode ${held.mode}); it can be deleted after that`,
              key,
              held.retainUntil.toISOString(),
            );
          }
          throw e;
        }
      });
    }
  }

  private async retentionOf(full: string, versionId?: string): Promise<Retention | null> {
    try {
      const r = await this.client.send(new GetObjectRetentionCommand({ Bucket: this.opts.bucket, Key: full, ...(versionId !== undefined ? { VersionId: versionId } : {}) }));
      const mode = r.Retention?.Mode;
      const until = r.Retention?.RetainUntilDate;
      if ((mode !== 'GOVERNANCE' && mode !== 'COMPLIANCE') || until === undefined) return null;
      return { mode, retainUntil: new Date(until) };
    } catch (e) {
      const name = (e as Error).name;
      // No lock on it, or no such object: nothing holds it.
      if (name === 'NoSuchObjectLockConfiguration' || name === 'NoSuchKey' || name === 'NoSuchVersion' || httpStatus(e) === 404) return null;
      throw e;
    }
  }

  async retention(key: string): Promise<Retention | null> {
    const full = this.key(key);
    return this.send(`read the retention of object '${key}'`, () => this.retentionOf(full));
  }

  async extendRetention(key: string, until: Date): Promise<boolean> {
    const full = this.key(key);
    if (!(await this.exists(key))) return false;
    const now = await this.retention(key);
    if (now && now.retainUntil.getTime() >= until.getTime()) return true;
    // The lock's mode stays as it is: COMPLIANCE cannot be turned into GOVERNANCE.
    const mode = now?.mode ?? this.objectLock?.mode ?? 'COMPLIANCE';
    await this.send(`extend the retention of object '${key}'`, () =>
      this.client.send(new PutObjectRetentionCommand({ Bucket: this.opts.bucket, Key: full, Retention: { Mode: mode, RetainUntilDate: until } })),
    );
    return true;
  }

  async checkObjectLock(): Promise<void> {
    const where = `bucket '${this.opts.bucket}' at ${this.endpoint}`;
    const missing = new StoreUnusable(
      `target '${this.target}': ${where} does not have S3 Object Lock enabled, but the target's objectLock needs it; object lock can only be turned on when a bucket is made: use a new bucket made with it ('gbackup target check ${this.target} --create-bucket' or 'createBucket: true' make a missing one so)`,
      this.target,
    );
    const r = await this.send(`read the object lock configuration of bucket '${this.opts.bucket}'`, async () => {
      try {
        return await this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.opts.bucket }));
      } catch (e) {
        if ((e as Error).name === 'ObjectLockConfigurationNotFoundError') return null;
        throw e;
      }
    });
    if (r?.ObjectLockConfiguration?.ObjectLockEnabled !== 'Enabled') throw missing;
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
    this.direct?.close();
    this.client.destroy();
  }
}
