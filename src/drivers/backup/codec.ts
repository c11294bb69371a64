/**
 * What a chunk looks like at rest, and the threads that make it so.
 *
 * A chunk object is self-describing, so chunks written with other settings (a chain whose
 * compression changed, a chunk that did not compress) read back without outside help:
 *
 *   "GBC1" | flags (1 byte: 1 = zstd, 2 = AES-256-GCM) | [nonce, 12 bytes] | payload | [tag, 16 bytes]
 *
 * - Compression: zstd (level 3) through @toondepauw/node-zstd, a napi-rs addon whose
 *   prebuilt binary ships inside its npm platform package (for linux-x64-gnu,
 *   @toondepauw/node-zstd-linux-x64-gnu/node-zstd.linux-x64-gnu.node: nothing is compiled
 *   or downloaded at install, and it loads in worker threads). Incompressible data is
 *   detected from a sample and stored raw: random or already-compressed data then costs
 *   nothing to write or read. A payload's zstd headers are checked before it is decoded,
 *   so a crafted object cannot make a decode allocate more than about a chunk.
 * - Encryption: AES-256-GCM with a fresh random 96-bit nonce per chunk object (random
 *   nonces are safe for 2^32 objects per key: 16 PiB at 4 MiB chunks). The data key is
 *   HKDF-derived from the configured key, and the additional data binds the header and
 *   the chunk's plaintext sha256, so an object swapped under another chunk's name fails
 *   authentication instead of restoring the wrong bytes.
 * - Every decode ends with a sha256 check of the plaintext against the metadata: a flipped
 *   byte anywhere is an error naming the chunk, never wrong data on the volume.
 *
 * Hashing, compression and encryption run in worker threads (one per core, up to 4):
 * sha256 runs at ~1.9 GB/s and AES-GCM at ~1.7 GB/s on one core here, which would make a
 * backup, and an incremental (read + hash everything, upload little) above all, CPU-bound
 * on the main thread. Chunk buffers are shared memory: a job only names them, and nothing
 * is copied between threads.
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
 * has zlib.crc32. `bytes` is a view of the caller's `space` buffer, which must not go back
 * to its pool before the object is stored.
 */
export interface EncodedChunk {
  bytes: Buffer;
  crc32: number | null;
}

/** Room an encoded chunk may need beyond its plaintext: header, nonce, tag. */
export const CHUNK_OVERHEAD = 5 + 12 + 16;
export type DecodeFailure = 'format' | 'auth' | 'decompress' | 'length' | 'hash' | 'key';

/**
 * Chunk buffers are SharedArrayBuffers: a job names them and the codec thread works in
 * place, so nothing is copied and nothing changes hands. (Transferring ArrayBuffers back and
 * forth instead made every chunk two new 4 MiB external allocations in the main isolate,
 * which V8 answered with a mark-compact every few chunks: a 1 GiB incremental into a
 * directory took 0.9-1.2 s that way and takes 0.37 s now; a full backup 2.6 s, now 1.2 s.)
 */
export type ChunkBuffer = SharedArrayBuffer;

interface JobBase {
  id: number;
}
/** `off`, `outOff`: where in its buffer the chunk starts (a buffer of a SlabPool, aligned for O_DIRECT). */
type Job =
  | (JobBase & { op: 'hash'; buf: ChunkBuffer; off: number; len: number })
  | (JobBase & { op: 'encode'; buf: ChunkBuffer; off: number; len: number; space: ChunkBuffer; sha: string; compress: boolean; key: Uint8Array | null })
  | (JobBase & { op: 'hashEncode'; buf: ChunkBuffer; off: number; len: number; space: ChunkBuffer; skipSha: string | null; compress: boolean; key: Uint8Array | null })
  | (JobBase & { op: 'decode'; body: ChunkBuffer; bodyLen: number; out: ChunkBuffer; outOff: number; len: number; sha: string; key: Uint8Array | null });

interface Reply {
  id: number;
  zero?: boolean;
  /** Hex, so that a reply allocates no ArrayBuffer on the main thread. */
  sha?: string;
  /** encode: the object is the first `bodyLen` bytes of the job's space buffer. */
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
function codecWorker(req: NodeJS.Require, zstdFrom: string, zstdLevel: number): void {
  const { parentPort } = req('node:worker_threads') as typeof import('node:worker_threads');
  const crypto = req('node:crypto') as typeof import('node:crypto');
  const zlib = req('node:zlib') as typeof import('node:zlib') & { crc32?: (b: Uint8Array) => number };
  const { createRequire } = req('node:module') as typeof import('node:module');
  const zstd = createRequire(zstdFrom)('@toondepauw/node-zstd') as typeof import('@toondepauw/node-zstd');
  const encoder = new zstd.Encoder(zstdLevel);
  const decoder = new zstd.Decoder();
  const MAGIC = Buffer.from('GBC1');
  let zeros = Buffer.alloc(0);

  const isZero = (b: Buffer) => {
    if (zeros.length < b.length) zeros = Buffer.alloc(b.length);
    return b.equals(zeros.subarray(0, b.length));
  };
  const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest();
  // Copies into shared memory with memcpy: Buffer.copy (TypedArray.set) copies into a
  // SharedArrayBuffer word by word with relaxed atomics, several times slower on cold data.
  // fill() with a buffer as large as the range is one memcpy.
  const put = (dest: Buffer, src: Buffer, at: number): number => {
    if (src.length > 0) dest.fill(src, at, at + src.length);
    return src.length;
  };

  // Compressing incompressible data (media, archives, encrypted files) costs as much as
  // compressing text and saves nothing: a 64 KiB sample from four places decides first.
  const SAMPLE = 16 * 1024;
  function worthCompressing(plain: Buffer): boolean {
    if (plain.length < 16 * SAMPLE) return true;
    const step = Math.floor((plain.length - SAMPLE) / 3);
    const sample = Buffer.concat([0, 1, 2, 3].map((k) => plain.subarray(k * step, k * step + SAMPLE)));
    return encoder.encodeSync(sample).length < sample.length * 0.95;
  }

  // Ciphers run over pieces of a chunk: each piece's output is small enough for malloc to
  // reuse (a whole-chunk update() is a fresh 4 MiB mapping, page-faulted in, every time) and
  // is copied, hashed or checksummed while it is still in cache.
  const PIECE = 64 * 1024;

  function encode(plain: Buffer, space: SharedArrayBuffer, sha: Buffer, compress: boolean, key: Uint8Array | null): { bodyLen: number; flags: number; crc32: number | null } {
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
    const bodyLen = headLen + payload.length + (key ? 16 : 0);
    if (bodyLen > space.byteLength) throw new Error(`encoded chunk of ${bodyLen} bytes does not fit its ${space.byteLength}-byte buffer`);
    // Written into the caller's pooled buffer: no fresh 4 MiB allocation per chunk on either thread.
    const out = Buffer.from(space, 0, bodyLen);
    MAGIC.copy(out, 0);
    out[4] = flags;
    // A CRC of the object lets the store check the upload without a second sha256 on the main thread.
    const crc = zlib.crc32 as ((data: Uint8Array, value?: number) => number) | undefined;
    let sum = 0;
    if (nonce && key) {
      nonce.copy(out, 5);
      const c = crypto.createCipheriv('aes-256-gcm', key, nonce);
      c.setAAD(Buffer.concat([out.subarray(0, headLen), sha]));
      if (crc) sum = crc(out.subarray(0, headLen));
      let at = headLen;
      for (let k = 0; k < payload.length; k += PIECE) {
        const part = c.update(payload.subarray(k, k + PIECE));
        at += put(out, part, at);
        if (crc) sum = crc(part, sum);
      }
      const rest = c.final();
      at += put(out, rest, at);
      c.getAuthTag().copy(out, at);
      if (crc) sum = crc(out.subarray(at - rest.length), sum);
    } else {
      put(out, payload, headLen);
      if (crc) sum = crc(out);
    }
    return { bodyLen, flags, crc32: crc ? sum : null };
  }

  /**
   * Whether a zstd payload can decode to about `len` bytes, from its frame and block headers
   * alone: null, or the reason to refuse it. One frame, its declared size (if any) `len`, and
   * blocks that cannot regenerate more than a chunk. Checked before decoding, so a crafted object (a
   * few MiB of RLE blocks can claim gigabytes) is refused instead of exhausting memory.
   */
  function zstdCheck(p: Buffer, len: number): string | null {
    if (p.length < 6 || p.readUInt32LE(0) !== 0xfd2fb528) return 'is not a zstd frame';
    const fhd = p[4]!;
    const fcsFlag = fhd >> 6;
    const single = (fhd >> 5) & 1;
    if (fhd & 8) return 'has a reserved zstd header bit set';
    let at = 5 + (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3]!;
    // The decoded size is declared only by some encoders (not by the streaming one used here).
    const fcsLen = [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
    if (at + fcsLen > p.length) return 'has a truncated zstd header';
    const fcs = fcsLen === 0 ? len : fcsLen === 1 ? p[at]! : fcsLen === 2 ? p.readUInt16LE(at) + 256 : fcsLen === 4 ? p.readUInt32LE(at) : Number(p.readBigUInt64LE(at));
    if (fcs !== len) return `declares ${fcs} decoded bytes, not ${len}`;
    at += fcsLen;
    const MAX_BLOCK = 128 * 1024;
    let bound = 0;
    for (;;) {
      if (at + 3 > p.length) return 'ends inside a zstd block header';
      const h = p[at]! | (p[at + 1]! << 8) | (p[at + 2]! << 16);
      at += 3;
      const type = (h >> 1) & 3;
      const size = h >>> 3;
      if (type === 3 || size > MAX_BLOCK) return 'has an invalid zstd block';
      bound += type === 2 ? MAX_BLOCK : size;
      at += type === 1 ? 1 : size;
      if (bound > len + MAX_BLOCK) return `could decode to more than ${len} bytes`;
      if (h & 1) break;
    }
    if (fhd & 4) at += 4;
    if (at !== p.length) return 'has bytes after its zstd frame';
    return null;
  }

  function decode(body: Buffer, out: Buffer, sha: Buffer, key: Uint8Array | null): Reply['failure'] {
    if (body.length < 5 || !body.subarray(0, 4).equals(MAGIC)) return { kind: 'format', message: 'is not a gbackup chunk object (bad header)' };
    const flags = body[4]!;
    if (flags & ~3) return { kind: 'format', message: `has unknown flags ${flags}` };
    let payload: Buffer;
    if (flags & 2) {
      if (!key) return { kind: 'key', message: 'is encrypted but no key was given' };
      if (body.length < 5 + 12 + 16) return { kind: 'format', message: 'is too short for an encrypted chunk' };
      const d = crypto.createDecipheriv('aes-256-gcm', key, body.subarray(5, 17));
      d.setAAD(Buffer.concat([body.subarray(0, 17), sha]));
      d.setAuthTag(body.subarray(body.length - 16));
      const cipher = body.subarray(17, body.length - 16);
      const raw = (flags & 1) === 0;
      if (raw && cipher.length !== out.length) return { kind: 'length', message: `decodes to ${cipher.length} bytes, not ${out.length}` };
      // Uncompressed: straight into `out`, hashed on the way. Compressed: in place (each
      // piece of ciphertext is consumed before its plaintext is written over it).
      const dest = raw ? out : cipher;
      const h = raw ? crypto.createHash('sha256') : null;
      try {
        let at = 0;
        for (let k = 0; k < cipher.length; k += PIECE) {
          const part = d.update(cipher.subarray(k, k + PIECE));
          at += put(dest, part, at);
          h?.update(part);
        }
        // GCM releases nothing at final(); it only checks the tag.
        d.final();
      } catch {
        return { kind: 'auth', message: 'failed AES-GCM authentication' };
      }
      if (h) return h.digest().equals(sha) ? undefined : { kind: 'hash', message: 'decodes to bytes whose sha256 does not match the metadata' };
      payload = cipher;
    } else {
      payload = body.subarray(5);
    }
    if (flags & 1) {
      const bad = zstdCheck(payload, out.length);
      if (bad) return { kind: 'decompress', message: `does not decompress (${bad})` };
      try {
        payload = decoder.decodeSync(payload);
      } catch (e) {
        return { kind: 'decompress', message: `does not decompress (${(e as Error).message})` };
      }
    }
    if (payload.length !== out.length) return { kind: 'length', message: `decodes to ${payload.length} bytes, not ${out.length}` };
    if (!sha256(payload).equals(sha)) return { kind: 'hash', message: 'decodes to bytes whose sha256 does not match the metadata' };
    put(out, payload, 0);
    return undefined;
  }

  parentPort!.on('message', (job: Job) => {
    const reply: Reply = { id: job.id };
    try {
      if (job.op === 'decode') {
        if (job.outOff + job.len > job.out.byteLength) throw new Error(`a chunk of ${job.len} bytes does not fit its ${job.out.byteLength}-byte buffer`);
        const failure = decode(Buffer.from(job.body, 0, job.bodyLen), Buffer.from(job.out, job.outOff, job.len), Buffer.from(job.sha, 'hex'), job.key);
        if (failure) reply.failure = failure;
      } else {
        if (job.off + job.len > job.buf.byteLength) throw new Error(`a chunk of ${job.len} bytes does not fit its ${job.buf.byteLength}-byte buffer`);
        const plain = Buffer.from(job.buf, job.off, job.len);
        let sha: Buffer | null = null;
        let skip = false;
        if (job.op === 'hash' || job.op === 'hashEncode') {
          reply.zero = isZero(plain);
          if (!reply.zero) {
            sha = sha256(plain);
            reply.sha = sha.toString('hex');
          }
          skip = reply.zero || (job.op === 'hashEncode' && job.skipSha === reply.sha);
        } else {
          sha = Buffer.from(job.sha, 'hex');
        }
        if ((job.op === 'encode' || job.op === 'hashEncode') && !skip && sha) {
          const r = encode(plain, job.space, sha, job.compress, job.key);
          reply.bodyLen = r.bodyLen;
          reply.flags = r.flags;
          if (r.crc32 !== null) reply.crc32 = r.crc32;
        }
      }
    } catch (e) {
      reply.error = (e as Error).stack ?? String(e);
    }
    parentPort!.postMessage(reply);
  });
}

const WORKER_SOURCE = `(${codecWorker.toString()})(require, ${JSON.stringify(import.meta.url)}, ${ZSTD_LEVEL});`;

/** Keys as posted: a copy with its own ArrayBuffer (posting a view would clone the whole pool slab under it), made once per key. */
const postedKeys = new WeakMap<Buffer, Uint8Array>();
function own(key: Buffer | null): Uint8Array | null {
  if (key === null) return null;
  let k = postedKeys.get(key);
  if (!k) postedKeys.set(key, (k = new Uint8Array(key)));
  return k;
}

interface Pending {
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
}

/**
 * Worker threads that hash, encode and decode chunks. Jobs go to the least busy thread.
 * Once the pool fails (a thread died, or close()) every job in flight and every later one
 * rejects, and the threads are stopped, so none still writes into a buffer its caller has
 * taken back.
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

  private terminating: Promise<unknown> | null = null;

  private fail(e: Error): void {
    if (this.failed) return;
    this.failed = e;
    // Jobs in flight reject once their threads have stopped: a caller that then reuses a
    // buffer can be sure no thread still reads or writes it.
    this.terminating = Promise.allSettled(this.workers.map((s) => s.w.terminate())).then(() => {
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    });
  }

  /** Posts a job to the least busy thread. The job's buffers are shared with it, not moved. */
  private run(job: Job): Promise<Reply> {
    if (this.failed) return Promise.reject(this.failed);
    const slot = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    if (slot.busy++ === 0) slot.w.ref();
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(job.id, { resolve, reject });
      try {
        slot.w.postMessage(job);
      } catch (e) {
        // Not posted: no reply will come to release the slot.
        this.pending.delete(job.id);
        if (--slot.busy === 0) slot.w.unref();
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    }).then((r) => {
      if (r.error) throw new Error(`codec worker: ${r.error}`);
      return r;
    });
  }

  /** Zero check and sha256 of `len` bytes of `buf` from `off`. */
  async hash(buf: ChunkBuffer, len: number, off = 0): Promise<HashResult> {
    const r = await this.run({ id: this.nextId++, op: 'hash', buf, off, len });
    return { zero: r.zero!, sha: r.sha ? Buffer.from(r.sha, 'hex') : null };
  }

  /** Encodes `len` bytes of `buf` from `off` into `space` (chunk size + CHUNK_OVERHEAD bytes). */
  async encode(buf: ChunkBuffer, len: number, space: ChunkBuffer, sha: Buffer, opts: EncodeOptions, off = 0): Promise<EncodedChunk> {
    const r = await this.run({ id: this.nextId++, op: 'encode', buf, off, len, space, sha: sha.toString('hex'), compress: opts.compress, key: own(opts.key) });
    return { bytes: Buffer.from(space, 0, r.bodyLen), crc32: r.crc32 ?? null };
  }

  /**
   * Hash, and unless the chunk is zeros or hashes to `skipSha`, encode into `space` in the
   * same trip: the common case of a backup costs one round trip per chunk.
   */
  async hashEncode(buf: ChunkBuffer, len: number, space: ChunkBuffer, skipSha: Buffer | null, opts: EncodeOptions, off = 0): Promise<HashResult & { body: EncodedChunk | null }> {
    const r = await this.run({
      id: this.nextId++,
      op: 'hashEncode',
      buf,
      off,
      len,
      space,
      skipSha: skipSha ? skipSha.toString('hex') : null,
      compress: opts.compress,
      key: own(opts.key),
    });
    const body = r.bodyLen !== undefined ? { bytes: Buffer.from(space, 0, r.bodyLen), crc32: r.crc32 ?? null } : null;
    return { zero: r.zero!, sha: r.sha ? Buffer.from(r.sha, 'hex') : null, body };
  }

  /**
   * Decodes a chunk object (the first `bodyLen` bytes of `body`) into `len` bytes of `out`
   * from `outOff` and checks it against `sha`: `failure` says why it does not decode to that.
   */
  async decode(
    body: ChunkBuffer,
    bodyLen: number,
    out: ChunkBuffer,
    len: number,
    sha: Buffer,
    key: Buffer | null,
    outOff = 0,
  ): Promise<{ failure: { kind: DecodeFailure; message: string } | null }> {
    const r = await this.run({ id: this.nextId++, op: 'decode', body, bodyLen, out, outOff, len, sha: sha.toString('hex'), key: own(key) });
    return { failure: r.failure ?? null };
  }

  /** False once a thread died or close() was called: every job then fails. */
  get usable(): boolean {
    return this.failed === null;
  }

  async close(): Promise<void> {
    this.fail(new Error('codec pool closed'));
    await this.terminating;
  }
}

let shared: CodecPool | null = null;

/**
 * The process's codec threads, started on first use and kept (unreferenced while idle, so
 * they never hold the process open): an operation does not pay for starting threads and
 * warming their code (~25 ms, 5% of a 1 GiB incremental), and operations running at once
 * share the cores rather than each starting its own. A pool that failed is replaced.
 */
export function sharedCodecPool(): CodecPool {
  if (!shared?.usable) shared = new CodecPool();
  return shared;
}

/**
 * Fixed buffers for chunks in flight: memory stays flat however large the volume. Buffers
 * are allocated on first use, up to `count`; every buffer taken must be given back exactly
 * once, and only when nothing (a codec thread, an upload, a write) uses it any more.
 */
export class BufferPool {
  private readonly free: ChunkBuffer[] = [];
  private readonly waiters: ((b: ChunkBuffer) => void)[] = [];
  private made = 0;

  constructor(
    readonly count: number,
    readonly size: number,
  ) {}

  take(): Promise<ChunkBuffer> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    if (this.made < this.count) {
      this.made++;
      return Promise.resolve(new SharedArrayBuffer(this.size));
    }
    return new Promise((res) => this.waiters.push(res));
  }

  /** Back into the pool; a larger buffer that stood in for a pooled one (an oversized object) is kept in its place. */
  give(b: ChunkBuffer): void {
    const w = this.waiters.shift();
    if (w) w(b);
    else this.free.push(b);
  }

  /** Buffers not handed out right now (for tests: a finished operation gave back all it took). */
  get idle(): number {
    return this.free.length + (this.count - this.made);
  }
}
