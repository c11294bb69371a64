/**
 * What a chunk looks like at rest, and the threads that make it so.
 *
 * A chunk object is self-describing, so chunks written with other settings (a chain whose
 * compression changed, a chunk that did not compress) read back without outside help:
 *
 *   "GBC1" | flags (1 byte: 1 = zstd, 2 = AES-256-GCM) | [nonce, 12 bytes] | payload | [tag, 16 bytes]
 *
 * - Compression: zstd (level 3) through @toondepauw/node-zstd, a napi-rs addon whose
 *   prebuilt binary ships inside its npm platform package (nothing is compiled or
 *   downloaded at install). Measured here at about the speed of zstd-napi (which builds
 *   from source with node-gyp) and 2-3x faster than the WASM builds. A chunk that does not
 *   shrink is stored raw: random or already-compressed data then costs nothing to read.
 * - Encryption: AES-256-GCM with a fresh random 96-bit nonce per chunk object (random
 *   nonces are safe for 2^32 objects per key: 16 PiB at 4 MiB chunks). The data key is
 *   HKDF-derived from the configured key, and the additional data binds the header and
 *   the chunk's plaintext sha256, so an object swapped under another chunk's name fails
 *   authentication instead of restoring the wrong bytes.
 * - Every decode ends with a sha256 check of the plaintext against the metadata: a flipped
 *   byte anywhere is an error naming the chunk, never wrong data on the volume.
 *
 * Hashing, compression and encryption run in worker threads (one per core by default):
 * sha256 alone runs at ~1.3 GB/s on one core here, which would make an incremental backup
 * (read + hash everything, upload little) CPU-bound on the main thread. Buffers move to
 * the workers and back by transfer, not copy.
 */
import { createHmac, hkdfSync } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { EncryptionConfig } from './config.js';
import { InvalidKey, MissingKey } from './errors.js';

export const CHUNK_MAGIC = 'GBC1';
export const FLAG_ZSTD = 1;
export const FLAG_AES_GCM = 2;
export const ZSTD_LEVEL = 3;
const KEY_BYTES = 32;

/** Parses key material: exactly 32 raw bytes, or 64 hex digits, or base64 of 32 bytes. */
export function parseKey(material: Buffer, where: string): Buffer {
  if (material.length === KEY_BYTES) return Buffer.from(material);
  const text = material.toString('utf8').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(text)) {
    const b = Buffer.from(text, text.includes('-') || text.includes('_') ? 'base64url' : 'base64');
    if (b.length === KEY_BYTES) return b;
  }
  throw new InvalidKey(`${where} must hold a 32-byte key: 32 raw bytes, 64 hex digits, or base64 of 32 bytes (got ${material.length} bytes that are none of these)`);
}

/** A target's key, read on the worker: null when the target does not encrypt. */
export async function loadKey(enc: EncryptionConfig | undefined, target: string, env: NodeJS.ProcessEnv = process.env): Promise<Buffer | null> {
  if (!enc) return null;
  if (enc.keyFile !== undefined) {
    let raw: Buffer;
    try {
      raw = await readFile(enc.keyFile);
    } catch (e) {
      throw new MissingKey(`target '${target}': cannot read encryption keyFile '${enc.keyFile}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    return parseKey(raw, `target '${target}': keyFile '${enc.keyFile}'`);
  }
  const name = enc.keyEnv!;
  const v = env[name];
  if (v === undefined || v === '') throw new MissingKey(`target '${target}': the encryption key variable ${name} is not set in the worker's environment`);
  return parseKey(Buffer.from(v, 'utf8'), `target '${target}': variable ${name}`);
}

/** HMAC-SHA256 of a constant: identifies a key without revealing it. */
export function keyFingerprint(key: Buffer): string {
  return createHmac('sha256', key).update('gbackup key fingerprint v1').digest('hex');
}

/** The AES key chunks are sealed with; separate from the fingerprint's use of the key. */
export function dataKey(key: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), 'gbackup chunk encryption v1', KEY_BYTES));
}

export function chunkSpace(key: Buffer | null): string {
  return key ? `k-${keyFingerprint(key).slice(0, 16)}` : 'plain';
}

// ---------------------------------------------------------------------------------------
// Worker protocol

export interface HashResult {
  zero: boolean;
  sha: Buffer | null;
}
export interface EncodeOptions {
  compress: boolean;
  /** The data key (dataKey()), or null for no encryption. */
  key: Buffer | null;
}
/**
 * An encoded chunk object and its CRC-32 (for the store's upload check), when the runtime
 * has zlib.crc32. `bytes` lives in `space`, the caller's pooled buffer, which goes back to
 * its pool once the object is stored.
 */
export interface EncodedChunk {
  bytes: Buffer;
  crc32: number | null;
  space: ArrayBuffer;
}

/** Room an encoded chunk may need beyond its plaintext: header, nonce, tag. */
export const CHUNK_OVERHEAD = 5 + 12 + 16;
export type DecodeFailure = 'format' | 'auth' | 'decompress' | 'length' | 'hash' | 'key';

interface JobBase {
  id: number;
}
type Job =
  | (JobBase & { op: 'hash'; buf: ArrayBuffer; len: number })
  | (JobBase & { op: 'encode'; buf: ArrayBuffer; len: number; space: ArrayBuffer; sha: Uint8Array; compress: boolean; key: Uint8Array | null })
  | (JobBase & { op: 'hashEncode'; buf: ArrayBuffer; len: number; space: ArrayBuffer; skipSha: Uint8Array | null; compress: boolean; key: Uint8Array | null })
  | (JobBase & { op: 'decode'; body: ArrayBuffer; bodyLen: number; out: ArrayBuffer; len: number; sha: Uint8Array; key: Uint8Array | null });

interface Reply {
  id: number;
  buf?: ArrayBuffer;
  zero?: boolean;
  sha?: Uint8Array;
  /** encode: the space buffer back, with `bodyLen` bytes of object in it; decode: the body buffer back. */
  space?: ArrayBuffer;
  bodyLen?: number;
  flags?: number;
  crc32?: number;
  failure?: { kind: DecodeFailure; message: string };
  error?: string;
}

/**
 * The worker's whole program. It is sent to the thread as source text (`eval`), so the
 * same code runs from src/ under vitest and from dist/ in production; it may therefore use
 * nothing but its parameters (no imports, no closure).
 */
function codecWorker(req: NodeJS.Require, zstdFrom: string): void {
  const { parentPort } = req('node:worker_threads') as typeof import('node:worker_threads');
  const crypto = req('node:crypto') as typeof import('node:crypto');
  const zlib = req('node:zlib') as typeof import('node:zlib') & { crc32?: (b: Uint8Array) => number };
  const { createRequire } = req('node:module') as typeof import('node:module');
  const zstd = createRequire(zstdFrom)('@toondepauw/node-zstd') as typeof import('@toondepauw/node-zstd');
  const encoder = new zstd.Encoder(3);
  const decoder = new zstd.Decoder();
  const MAGIC = Buffer.from('GBC1');
  let zeros = Buffer.alloc(0);

  const isZero = (b: Buffer) => {
    if (zeros.length < b.length) zeros = Buffer.alloc(b.length);
    return b.equals(zeros.subarray(0, b.length));
  };
  const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest();

  // Compressing incompressible data (media, archives, encrypted files) costs as much as
  // compressing text and saves nothing: a 64 KiB sample from four places decides first.
  const SAMPLE = 16 * 1024;
  function worthCompressing(plain: Buffer): boolean {
    if (plain.length < 16 * SAMPLE) return true;
    const step = Math.floor((plain.length - SAMPLE) / 3);
    const sample = Buffer.concat([0, 1, 2, 3].map((k) => plain.subarray(k * step, k * step + SAMPLE)));
    return encoder.encodeSync(sample).length < sample.length * 0.95;
  }

  function encode(plain: Buffer, space: ArrayBuffer, sha: Uint8Array, compress: boolean, key: Uint8Array | null): { bodyLen: number; flags: number; crc32: number | null } {
    let flags = 0;
    let payload = plain;
    if (compress && worthCompressing(plain)) {
      const c = encoder.encodeSync(plain);
      if (c.length < plain.length) {
        payload = c;
        flags |= 1;
      }
    }
    const nonce = key ? crypto.randomBytes(12) : null;
    if (key) flags |= 2;
    const headLen = 5 + (nonce ? 12 : 0);
    // Written into the caller's pooled buffer: no fresh 4 MiB allocation per chunk on either thread.
    const out = Buffer.from(space, 0, headLen + payload.length + (key ? 16 : 0));
    MAGIC.copy(out, 0);
    out[4] = flags;
    if (nonce && key) {
      nonce.copy(out, 5);
      const c = crypto.createCipheriv('aes-256-gcm', key, nonce);
      c.setAAD(Buffer.concat([out.subarray(0, headLen), sha]));
      let at = headLen;
      at += c.update(payload).copy(out, at);
      at += c.final().copy(out, at);
      c.getAuthTag().copy(out, at);
    } else {
      payload.copy(out, headLen);
    }
    // A CRC of the object lets the store check the upload without a second sha256 on the main thread.
    return { bodyLen: out.length, flags, crc32: zlib.crc32 ? zlib.crc32(out) : null };
  }

  function decode(body: Buffer, out: Buffer, sha: Uint8Array, key: Uint8Array | null): Reply['failure'] {
    if (body.length < 5 || !body.subarray(0, 4).equals(MAGIC)) return { kind: 'format', message: 'is not a gbackup chunk object (bad header)' };
    const flags = body[4]!;
    if (flags & ~3) return { kind: 'format', message: `has unknown flags ${flags}` };
    let payload: Buffer;
    if (flags & 2) {
      if (!key) return { kind: 'key', message: 'is encrypted but no key was given' };
      if (body.length < 5 + 12 + 16) return { kind: 'format', message: 'is too short for an encrypted chunk' };
      const nonce = body.subarray(5, 17);
      const d = crypto.createDecipheriv('aes-256-gcm', key, nonce);
      d.setAAD(Buffer.concat([body.subarray(0, 17), sha]));
      d.setAuthTag(body.subarray(body.length - 16));
      try {
        payload = d.update(body.subarray(17, body.length - 16));
        // GCM releases nothing at final(); it only checks the tag.
        const rest = d.final();
        if (rest.length > 0) payload = Buffer.concat([payload, rest]);
      } catch {
        return { kind: 'auth', message: 'failed AES-GCM authentication' };
      }
    } else {
      payload = body.subarray(5);
    }
    if (flags & 1) {
      try {
        payload = decoder.decodeSync(payload);
      } catch (e) {
        return { kind: 'decompress', message: `does not decompress (${(e as Error).message})` };
      }
    }
    if (payload.length !== out.length) return { kind: 'length', message: `decodes to ${payload.length} bytes, not ${out.length}` };
    if (!sha256(payload).equals(sha)) return { kind: 'hash', message: 'decodes to bytes whose sha256 does not match the metadata' };
    payload.copy(out);
    return undefined;
  }

  parentPort!.on('message', (job: Job) => {
    const reply: Reply = { id: job.id };
    const transfer: ArrayBuffer[] = [];
    try {
      if (job.op === 'decode') {
        const out = Buffer.from(job.out, 0, job.len);
        const failure = decode(Buffer.from(job.body, 0, job.bodyLen), out, job.sha, job.key);
        if (failure) reply.failure = failure;
        reply.buf = job.out;
        reply.space = job.body;
        transfer.push(job.out, job.body);
      } else {
        const plain = Buffer.from(job.buf, 0, job.len);
        let sha: Uint8Array | null = null;
        let skip = false;
        if (job.op === 'hash' || job.op === 'hashEncode') {
          reply.zero = isZero(plain);
          if (!reply.zero) {
            sha = new Uint8Array(sha256(plain));
            reply.sha = sha;
          }
          skip = reply.zero || (job.op === 'hashEncode' && job.skipSha !== null && Buffer.from(job.skipSha).equals(sha!));
        } else {
          sha = job.sha;
        }
        if ((job.op === 'encode' || job.op === 'hashEncode') && !skip && sha) {
          const r = encode(plain, job.space, sha, job.compress, job.key);
          reply.bodyLen = r.bodyLen;
          reply.flags = r.flags;
          if (r.crc32 !== null) reply.crc32 = r.crc32;
        }
        if (job.op !== 'hash') {
          reply.space = job.space;
          transfer.push(job.space);
        }
        reply.buf = job.buf;
        transfer.push(job.buf);
      }
    } catch (e) {
      reply.error = (e as Error).stack ?? String(e);
      const b = job.op === 'decode' ? job.out : job.buf;
      if (!transfer.includes(b)) {
        reply.buf = b;
        transfer.push(b);
      }
      const sp = job.op === 'decode' ? job.body : job.op === 'hash' ? null : job.space;
      if (sp && !transfer.includes(sp)) {
        reply.space = sp;
        transfer.push(sp);
      }
    }
    parentPort!.postMessage(reply, transfer);
  });
}

const WORKER_SOURCE = `(${codecWorker.toString()})(require, ${JSON.stringify(import.meta.url)});`;

/** A copy with its own ArrayBuffer: posting a view would clone the whole buffer under it. */
const own = (b: Uint8Array | null) => (b === null ? null : new Uint8Array(b));

interface Pending {
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
}

/**
 * Worker threads that hash, encode and decode chunks. Jobs go to the least busy thread;
 * each job hands its buffer over and gets it back in the reply.
 */
export class CodecPool {
  private readonly workers: { w: Worker; busy: number }[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failed: Error | null = null;

  constructor(threads = Math.max(1, Math.min(4, availableParallelism()))) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true });
      const slot = { w, busy: 0 };
      w.on('message', (r: Reply) => {
        // Referenced only while it has work: an idle pool never holds the process open.
        if (--slot.busy === 0) w.unref();
        const p = this.pending.get(r.id);
        if (!p) return;
        this.pending.delete(r.id);
        p.resolve(r);
      });
      w.on('error', (e) => this.fail(e));
      w.on('exit', (code) => {
        if (code !== 0) this.fail(new Error(`codec worker exited with code ${code}`));
      });
      w.unref();
      this.workers.push(slot);
    }
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  /**
   * Posts a job to the least busy thread. The buffers in `transfer` move to it: when this
   * rejects, they are lost to the caller (detached), which BufferPool.give() makes up for.
   */
  private run(job: Job, transfer: ArrayBuffer[]): Promise<Reply> {
    if (this.failed) return Promise.reject(this.failed);
    const slot = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    if (slot.busy++ === 0) slot.w.ref();
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(job.id, { resolve, reject });
      try {
        slot.w.postMessage(job, transfer);
      } catch (e) {
        // Not posted (a detached or foreign buffer): no reply will come to release the slot.
        this.pending.delete(job.id);
        if (--slot.busy === 0) slot.w.unref();
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    }).then((r) => {
      if (r.error) throw new Error(`codec worker: ${r.error}`);
      return r;
    });
  }

  /** Zero check and sha256. The buffer comes back in `buf`. */
  async hash(buf: ArrayBuffer, len: number): Promise<HashResult & { buf: ArrayBuffer }> {
    const r = await this.run({ id: this.nextId++, op: 'hash', buf, len }, [buf]);
    return { buf: r.buf!, zero: r.zero!, sha: r.sha ? Buffer.from(r.sha) : null };
  }

  /** Encodes into `space` (a buffer of chunk size + CHUNK_OVERHEAD from the caller's pool). */
  async encode(buf: ArrayBuffer, len: number, space: ArrayBuffer, sha: Buffer, opts: EncodeOptions): Promise<{ buf: ArrayBuffer; body: EncodedChunk }> {
    const r = await this.run({ id: this.nextId++, op: 'encode', buf, len, space, sha: own(sha)!, compress: opts.compress, key: own(opts.key) }, [buf, space]);
    return { buf: r.buf!, body: { bytes: Buffer.from(r.space!, 0, r.bodyLen), crc32: r.crc32 ?? null, space: r.space! } };
  }

  /**
   * Hash, and unless the chunk is zeros or hashes to `skipSha`, encode in the same trip:
   * the common case of a backup costs one round trip per chunk. `space` comes back either
   * way: holding the object in `body`, or unused in `space`.
   */
  async hashEncode(
    buf: ArrayBuffer,
    len: number,
    space: ArrayBuffer,
    skipSha: Buffer | null,
    opts: EncodeOptions,
  ): Promise<HashResult & { buf: ArrayBuffer; body: EncodedChunk | null; space: ArrayBuffer }> {
    const r = await this.run({ id: this.nextId++, op: 'hashEncode', buf, len, space, skipSha: own(skipSha), compress: opts.compress, key: own(opts.key) }, [buf, space]);
    const body = r.bodyLen !== undefined ? { bytes: Buffer.from(r.space!, 0, r.bodyLen), crc32: r.crc32 ?? null, space: r.space! } : null;
    return { buf: r.buf!, zero: r.zero!, sha: r.sha ? Buffer.from(r.sha) : null, body, space: r.space! };
  }

  /**
   * Decodes a chunk object into `out` (length `len`) and checks it against `sha`. The object
   * is the first `bodyLen` bytes of `body`, a buffer the caller owns whole: it moves to the
   * codec thread and comes back in `body`.
   */
  async decode(
    body: ArrayBuffer,
    bodyLen: number,
    out: ArrayBuffer,
    len: number,
    sha: Buffer,
    key: Buffer | null,
  ): Promise<{ buf: ArrayBuffer; body: ArrayBuffer; failure: { kind: DecodeFailure; message: string } | null }> {
    const r = await this.run({ id: this.nextId++, op: 'decode', body, bodyLen, out, len, sha: own(sha)!, key: own(key) }, [out, body]);
    return { buf: r.buf!, body: r.space!, failure: r.failure ?? null };
  }

  async close(): Promise<void> {
    this.fail(new Error('codec pool closed'));
    await Promise.all(this.workers.map((s) => s.w.terminate()));
  }
}

/**
 * Fixed buffers for chunks in flight: memory stays flat however large the volume. Buffers
 * are allocated on first use, up to `count`; every buffer taken must be given back exactly
 * once, whatever happened to it: a buffer lost to a codec thread that failed comes back
 * detached (0 bytes) and is replaced, so a failure never shrinks the pool and never leaves a
 * taker waiting for a buffer that cannot come.
 */
export class BufferPool {
  private readonly free: ArrayBuffer[] = [];
  private readonly waiters: ((b: ArrayBuffer) => void)[] = [];
  private made = 0;

  constructor(
    readonly count: number,
    readonly size: number,
  ) {}

  take(): Promise<ArrayBuffer> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    if (this.made < this.count) {
      this.made++;
      return Promise.resolve(new ArrayBuffer(this.size));
    }
    return new Promise((res) => this.waiters.push(res));
  }

  give(b: ArrayBuffer): void {
    const buf = b.byteLength < this.size ? new ArrayBuffer(this.size) : b;
    const w = this.waiters.shift();
    if (w) w(buf);
    else this.free.push(buf);
  }

  /** Buffers not handed out right now (for tests: a finished operation gave back all it took). */
  get idle(): number {
    return this.free.length + (this.count - this.made);
  }
}
