/**
 * The chunked backup format, version 1: what a target holds and how to read it without
 * this program's catalog.
 *
 *   backups/<backupId>/metadata.json   the record; written last, so it exists only for a
 *                                      complete backup (its existence means `available`)
 *   backups/<backupId>/pending.json    written first: the backup is being made, and on
 *                                      top of which parent (so a delete can refuse)
 *   backups/<backupId>/journal/<n>.json progress of an unfinished backup, for resume
 *   backups/<backupId>/deleting.json   a delete has started; the backup is no longer usable
 *   chunks/<space>/<sha[0:2]>/<sha>    one chunk object (codec.ts), named by content
 *
 * Chunks are content addressed by the sha256 of their *plaintext*, so every backup of a
 * chain (and identical chunks at different offsets, or in different volumes) shares one
 * object, and an incremental needs nothing but the parent's hashes to know what to skip.
 * Encryption does not change a chunk's identity; it changes its key space: `plain` for
 * unencrypted chunks, `k-<fingerprint>` per encryption key. A chunk stored under one key
 * is therefore never taken for present by a backup with another key, and a key change
 * simply starts a new chain. The price of plaintext addressing, accepted here: whoever can
 * list the bucket learns which chunks are equal and can confirm a guessed chunk's presence
 * (not read its content); in exchange delete, verify planning and catalog rebuild work
 * from metadata alone.
 *
 * A metadata record lists the chunks whose content differs from its parent's view of the
 * volume (for a full backup: every chunk that is not all zeros), plus `zeroChunks`: chunks
 * that held data in the parent's view and read zeros now. A restore therefore applies the
 * chain, root first; an incremental's record stays small however large the volume is.
 */
import { z } from 'zod';
import { idSchema, nameSchema } from '../../names.js';
import { MiB } from '../../size.js';
import { UnsupportedFormat } from './errors.js';

export const FORMAT = 'gbackup-chunked';
export const FORMAT_VERSION = 1;

/**
 * 4 MiB, by measurement against MinIO on loopback (bench/objects.ts, BENCH_ONLY=sweep:
 * 1 GiB of random data, zstd + AES-256-GCM, 6 uploads / 8 downloads in flight, page cache
 * dropped before each step, 2 cores shared with MinIO, medians of 3 interleaved rounds):
 *
 *   chunk     full backup        restore            1%-changed incremental
 *   1 MiB     3.94 s  273 MB/s   2.78 s  387 MB/s   0.71 s, stores  3.1 MB
 *   4 MiB     2.69 s  399 MB/s   2.75 s  390 MB/s   0.48 s, stores 12.6 MB
 *   8 MiB     2.39 s  449 MB/s   3.26 s  330 MB/s   0.53 s, stores 25.2 MB
 *   16 MiB    2.31 s  465 MB/s   3.43 s  313 MB/s   0.60 s, stores 50.3 MB
 *
 * 1 MiB chunks pay a request (and a metadata entry) per MiB: backup is 46% slower. Larger
 * chunks upload a little faster (-11% at 8 MiB, -14% at 16 MiB) but restore slower (+19%,
 * +25%), and every changed 4 KiB block costs a whole chunk in an incremental (2x and 4x
 * the bytes of 4 MiB), with proportionally more memory per chunk in flight. 4 MiB has the
 * fastest restore and incremental, and a backup 16% slower than the fastest (16 MiB).
 */
export const DEFAULT_CHUNK_SIZE = 4 * MiB;

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'sha256 must be 64 lowercase hex digits');
const offset = z.number().int().nonnegative();

export const ChunkEntry = z.strictObject({
  offset,
  length: z.number().int().positive(),
  sha256: sha256Hex,
});
export type ChunkEntry = z.infer<typeof ChunkEntry>;

export const EncryptionInfo = z.strictObject({
  algorithm: z.literal('aes-256-gcm'),
  /** HMAC-SHA256(key, constant) (codec.ts): tells a wrong key before any chunk is read; reveals nothing of the key. */
  keyFingerprint: sha256Hex,
});
export type EncryptionInfo = z.infer<typeof EncryptionInfo>;

/** Loose, so a later 1.x writer may add fields that this reader keeps (import writes them back). */
export const BackupMetadata = z.looseObject({
  format: z.literal(FORMAT),
  formatVersion: z.literal(FORMAT_VERSION),
  backupId: idSchema('backupId'),
  volumeId: idSchema('volumeId'),
  name: nameSchema('name').optional(),
  snapshotId: idSchema('snapshotId').optional(),
  createdAt: z.iso.datetime(),
  completedAt: z.iso.datetime(),
  /** The source volume's size in bytes. */
  size: z.number().int().nonnegative(),
  chunkSize: z.number().int().positive(),
  /** The backup this one is an increment on; null for a full backup. */
  parent: idSchema('parent').nullable(),
  /** What new chunks were written with; each chunk object also says so itself. */
  compression: z.enum(['zstd', 'none']),
  encryption: EncryptionInfo.nullable(),
  /** Key space of the chunk objects: `plain` or `k-<first 16 hex of the key fingerprint>`. */
  chunkSpace: z.string().regex(/^(plain|k-[0-9a-f]{16})$/),
  /** Chunks whose content differs from the parent's view (all data chunks for a full backup). */
  chunks: z.array(ChunkEntry),
  /** Offsets of chunks that held data in the parent's view and are all zeros now. */
  zeroChunks: z.array(offset),
  stats: z.looseObject({
    /** Bytes in non-zero chunks of the whole volume as of this backup. */
    dataBytes: z.number().int().nonnegative(),
    /** Bytes in the chunks this record lists (changed since the parent). */
    changedBytes: z.number().int().nonnegative(),
    /** Encoded bytes this backup put into the store (after dedupe, compression, encryption). */
    storedBytes: z.number().int().nonnegative(),
  }),
  /** Free-form catalog fields (volume name, backend, ...) carried so a rebuild can restore them. */
  labels: z.record(z.string(), z.string()).optional(),
});
export type BackupMetadata = z.infer<typeof BackupMetadata>;

/** Written before the first chunk: what is being made, on top of what. */
export const PendingRecord = z.looseObject({
  format: z.literal(FORMAT),
  formatVersion: z.literal(FORMAT_VERSION),
  backupId: idSchema('backupId'),
  volumeId: idSchema('volumeId'),
  parent: idSchema('parent').nullable(),
  size: z.number().int().nonnegative(),
  chunkSize: z.number().int().positive(),
  chunkSpace: z.string().regex(/^(plain|k-[0-9a-f]{16})$/),
  createdAt: z.iso.datetime(),
});
export type PendingRecord = z.infer<typeof PendingRecord>;

/**
 * Progress of an unfinished backup: the full view of chunks [from, to), every one of which
 * is stored. `shas[i]` is chunk from+i's sha256, or '' for an all-zero chunk.
 */
export const JournalRecord = z.strictObject({
  from: z.number().int().nonnegative(),
  to: z.number().int().nonnegative(),
  shas: z.array(z.union([sha256Hex, z.literal('')])),
  /** Encoded bytes the backup had put into the store up to `to`, over all attempts. */
  storedBytes: z.number().int().nonnegative(),
  /** Object sizes of the new chunks stored since the previous record (any offset), by sha256: the exact storedBytes of a resumed backup. */
  sizes: z.record(sha256Hex, z.number().int().nonnegative()).optional(),
});
export type JournalRecord = z.infer<typeof JournalRecord>;

export const keys = {
  backupsPrefix: 'backups/',
  backupDir: (backupId: string) => `backups/${backupId}/`,
  metadata: (backupId: string) => `backups/${backupId}/metadata.json`,
  pending: (backupId: string) => `backups/${backupId}/pending.json`,
  deleting: (backupId: string) => `backups/${backupId}/deleting.json`,
  journalPrefix: (backupId: string) => `backups/${backupId}/journal/`,
  /** Zero-padded so a listing sorts in chunk order. */
  journal: (backupId: string, from: number) => `backups/${backupId}/journal/${from.toString().padStart(12, '0')}.json`,
  chunk: (space: string, sha256: string) => `chunks/${space}/${sha256.slice(0, 2)}/${sha256}`,
  /** Deletes announce themselves here before they scan (gc.ts); the start time sorts them. */
  gcPrefix: 'gc/',
  gc: (startedMs: number, backupId: string) => `gc/${String(startedMs).padStart(15, '0')}-${backupId}.json`,
};

/** `backups/<id>/<file>` → [id, file], or null for keys of another shape. */
export function parseBackupKey(key: string): { backupId: string; rest: string } | null {
  const m = /^backups\/([^/]+)\/(.+)$/.exec(key);
  return m ? { backupId: m[1]!, rest: m[2]! } : null;
}

/** Parses a metadata object, telling a newer format version apart from garbage. */
export function parseMetadata(raw: unknown, where: string): BackupMetadata {
  const head = raw as { format?: unknown; formatVersion?: unknown } | null;
  if (typeof head !== 'object' || head === null || head.format !== FORMAT) {
    throw new UnsupportedFormat(`${where} is not a ${FORMAT} metadata record`);
  }
  if (head.formatVersion !== FORMAT_VERSION) {
    throw new UnsupportedFormat(`${where} has format version ${String(head.formatVersion)}; this gbackup reads version ${FORMAT_VERSION}`);
  }
  const r = BackupMetadata.safeParse(raw);
  if (!r.success) {
    const first = r.error.issues[0];
    throw new UnsupportedFormat(`${where} is malformed: ${first ? `${first.path.join('.')}: ${first.message}` : 'invalid'}`);
  }
  return r.data;
}

export function parseJson(buf: Buffer, where: string): unknown {
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch {
    throw new UnsupportedFormat(`${where} is not valid JSON`);
  }
}

const ZERO_HASH = Buffer.alloc(32);

/**
 * The state of every chunk of a volume as of one backup: all-zero, or data with a sha256.
 * Packed (32 bytes + 1 flag per chunk: 8 MiB per TiB at 4 MiB chunks) so that memory grows
 * with the volume only by that ratio, never by the data.
 */
export class ChunkView {
  readonly count: number;
  private readonly hashes: Buffer;
  private readonly data: Uint8Array;

  constructor(
    readonly size: number,
    readonly chunkSize: number,
  ) {
    this.count = Math.ceil(size / chunkSize);
    this.hashes = Buffer.alloc(this.count * 32);
    this.data = new Uint8Array(this.count);
  }

  lengthOf(i: number): number {
    return Math.min(this.chunkSize, this.size - i * this.chunkSize);
  }

  isData(i: number): boolean {
    return i < this.count && this.data[i] === 1;
  }

  /** The chunk's sha256 (a view, not a copy), or null when it is zeros or beyond the end. */
  hashAt(i: number): Buffer | null {
    return this.isData(i) ? this.hashes.subarray(i * 32, i * 32 + 32) : null;
  }

  hexAt(i: number): string | null {
    return this.hashAt(i)?.toString('hex') ?? null;
  }

  set(i: number, sha: Uint8Array | string | null): void {
    if (sha === null) {
      this.data[i] = 0;
      ZERO_HASH.copy(this.hashes, i * 32);
      return;
    }
    const b = typeof sha === 'string' ? Buffer.from(sha, 'hex') : sha;
    this.hashes.set(b, i * 32);
    this.data[i] = 1;
  }

  /** Same content as `other` at chunk i: both zero, or the same hash over the same length. */
  sameAs(other: ChunkView | null, i: number): boolean {
    const mine = this.hashAt(i);
    const theirs = other?.hashAt(i) ?? null;
    if (mine === null || theirs === null) return mine === theirs;
    return other!.lengthOf(i) === this.lengthOf(i) && mine.equals(theirs);
  }

  dataBytes(): number {
    let n = 0;
    for (let i = 0; i < this.count; i++) if (this.data[i] === 1) n += this.lengthOf(i);
    return n;
  }

  /** What a record on top of `parent` must list to describe this view. */
  deltaFrom(parent: ChunkView | null): { chunks: ChunkEntry[]; zeroChunks: number[] } {
    const chunks: ChunkEntry[] = [];
    const zeroChunks: number[] = [];
    for (let i = 0; i < this.count; i++) {
      if (this.sameAs(parent, i)) continue;
      const hex = this.hexAt(i);
      if (hex === null) zeroChunks.push(i * this.chunkSize);
      else chunks.push({ offset: i * this.chunkSize, length: this.lengthOf(i), sha256: hex });
    }
    return { chunks, zeroChunks };
  }

  /** A copy resized to `size` (chunks past the end dropped, new ones zero). */
  resized(size: number): ChunkView {
    const v = new ChunkView(size, this.chunkSize);
    for (let i = 0; i < Math.min(v.count, this.count); i++) {
      // A chunk cut short by a shrink no longer has the hashed content: it must come from the delta.
      if (this.isData(i) && this.lengthOf(i) === v.lengthOf(i)) v.set(i, this.hashAt(i));
    }
    return v;
  }

  /** Applies one record of a chain on top of this view (which must be the record's parent's). */
  static apply(base: ChunkView | null, m: BackupMetadata): ChunkView {
    const v = base ? base.resized(m.size) : new ChunkView(m.size, m.chunkSize);
    if (v.chunkSize !== m.chunkSize) throw new UnsupportedFormat(`backup '${m.backupId}' has chunk size ${m.chunkSize} but its parent ${base?.chunkSize}`);
    for (const e of m.chunks) {
      const i = e.offset / m.chunkSize;
      if (!Number.isInteger(i) || i >= v.count || e.length !== v.lengthOf(i)) {
        throw new UnsupportedFormat(`backup '${m.backupId}' lists a chunk at offset ${e.offset} (length ${e.length}) that does not fit its size ${m.size}`);
      }
      v.set(i, e.sha256);
    }
    for (const off of m.zeroChunks) {
      const i = off / m.chunkSize;
      if (!Number.isInteger(i) || i >= v.count) throw new UnsupportedFormat(`backup '${m.backupId}' lists a zero chunk at offset ${off} outside its size ${m.size}`);
      v.set(i, null);
    }
    return v;
  }

  /** The view of the last record of a chain given root first. */
  static ofChain(chain: BackupMetadata[]): ChunkView {
    let v: ChunkView | null = null;
    for (const m of chain) v = ChunkView.apply(v, m);
    if (!v) throw new Error('empty chain');
    return v;
  }
}
