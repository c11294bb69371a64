/**
 * Restore: a backup's chain from an object target onto a volume, resuming from what is written and synced.
 */
import { open } from 'node:fs/promises';
import { VolumeTooSmall } from '../../errors.js';
import type { Throttle } from '../../copy/throttle.js';
import { BufferPool, CHUNK_OVERHEAD, sharedCodecPool, type ChunkBuffer, type CodecPool } from './codec.js';
import { ChunkCorrupt, ChunkMissing, DecryptionFailed, ObjectNotFound } from './errors.js';
import { BackupMetadata, keys } from './format.js';
import { type ObjectStore } from './stores/store.js';
import { ChunkedTarget } from './target.js';
import { DoneMarks, Semaphore, abortError, asError, chunkLabel, deviceSize } from './pool.js';
import { openChain } from './chain.js';

/** Downloads in flight: GETs of cold objects wait on the server's disk, so more of them overlap better. */
export const DEFAULT_RESTORE_CONCURRENCY = 8;
/** A restore makes its writes durable (fdatasync) at least this often before reporting them done. */
const RESTORE_SYNC_BYTES = 256 * 1024 * 1024;
/** ...and at least this often, so a slow (throttled) restore also has a recent resume point. */
const RESTORE_SYNC_MS = 2_000;


function chunkError(kind: string, message: string, chunk: { offset: number; sha256: string; key: string }, backupId: string): ChunkCorrupt {
  const text = `backup '${backupId}': ${chunkLabel(chunk.offset, chunk.sha256)}, object ${chunk.key}, ${message}`;
  if (kind === 'auth') return new DecryptionFailed(`${text}; the key matches the backup's fingerprint, so the object was altered or damaged`, chunk);
  if (kind === 'missing') return new ChunkMissing(text, chunk);
  return new ChunkCorrupt(text, chunk);
}

/** Buffers one chunk read needs: the decoded chunk (chunk size) and the object as fetched (chunk size + CHUNK_OVERHEAD). */
export interface ReadSlot {
  out: ChunkBuffer;
  body: ChunkBuffer;
}

/** Fetches and decodes one chunk into `slot.out`; throws a ChunkCorrupt naming it. Returns the bytes fetched. */
export async function fetchChunk(
  store: ObjectStore,
  codec: CodecPool,
  slot: ReadSlot,
  chunk: { offset: number; length: number; sha256: string; key: string },
  sealKey: Buffer | null,
  backupId: string,
): Promise<number> {
  let got: { buffer: ChunkBuffer; length: number };
  try {
    got = await store.getInto(chunk.key, (n) => {
      // Nothing this chunk can encode to is larger: the object is not the chunk.
      if (n > chunk.length + CHUNK_OVERHEAD || n > slot.body.byteLength) throw chunkError('length', `is ${n} bytes, more than a chunk of ${chunk.length} bytes encodes to`, chunk, backupId);
      return slot.body;
    });
  } catch (e) {
    throw e instanceof ObjectNotFound ? chunkError('missing', 'is missing from the store', chunk, backupId) : e;
  }
  const r = await codec.decode(got.buffer, got.length, slot.out, chunk.length, Buffer.from(chunk.sha256, 'hex'), sealKey);
  if (r.failure) throw chunkError(r.failure.kind, r.failure.message, chunk, backupId);
  return got.length;
}

export interface RestoreProgress {
  /** Every chunk below this offset is written and synced (what a retry may resume from). */
  doneOffset: number;
  bytesWritten: number;
  bytesFetched: number;
}

export interface RestoreFromStoreOptions {
  target: ChunkedTarget;
  backupId: string;
  /** Block device or file, opened for writing in place; at least the backup's size. */
  dest: string;
  /** The destination reads zeros where it was not written (new or cleared volume): zero chunks are skipped. */
  destIsZero?: boolean;
  /** The heartbeat's doneOffset of an earlier attempt. */
  startOffset?: number;
  concurrency?: number;
  /** Codec threads to use (default: the process-wide sharedCodecPool()). */
  codec?: CodecPool;
  throttle?: Throttle;
  signal?: AbortSignal;
  onProgress?: (p: RestoreProgress) => void;
}

export interface RestoreFromStoreResult {
  metadata: BackupMetadata;
  resumedFrom: number;
  bytesWritten: number;
  bytesFetched: number;
}

export async function restoreFromStore(opts: RestoreFromStoreOptions): Promise<RestoreFromStoreResult> {
  const { target, backupId } = opts;
  const store = target.store;
  const { sealKey, last, view } = await openChain(target, backupId);
  const { size, chunkSize, count } = view;
  const concurrency = Math.max(1, opts.concurrency ?? DEFAULT_RESTORE_CONCURRENCY);
  const startIdx = Math.min(count, Math.floor((opts.startOffset ?? 0) / chunkSize));
  const resumedFrom = Math.min(size, startIdx * chunkSize);

  const fh = await open(opts.dest, 'r+');
  const codec = opts.codec ?? sharedCodecPool();
  try {
    const destSize = await deviceSize(opts.dest, fh);
    if (destSize < size) throw new VolumeTooSmall(`${opts.dest} holds ${destSize} bytes; backup '${backupId}' needs ${size}`);
    // One output buffer per download, and two for chunks being written.
    const window = concurrency + 2;
    const buffers = new BufferPool(window, chunkSize);
    const bodies = new BufferPool(window, chunkSize + CHUNK_OVERHEAD);
    const inFlight = new Semaphore(window);
    const downloads = new Semaphore(concurrency);
    const written = new DoneMarks(count, startIdx);
    const zeros = opts.destIsZero ? null : Buffer.alloc(chunkSize);
    let bytesWritten = 0;
    let bytesFetched = 0;
    let failure: Error | null = null;
    let synced = resumedFrom;
    let lastSync = performance.now();
    let syncing: Promise<void> | null = null;
    const tasks = new Set<Promise<void>>();
    const track = (p: Promise<void>) => {
      const t = p.catch((e) => {
        failure ??= asError(e);
      });
      tasks.add(t);
      void t.finally(() => tasks.delete(t));
    };
    const report = () => opts.onProgress?.({ doneOffset: synced, bytesWritten, bytesFetched });
    // Only synced bytes count as done: a retry on another node must not trust the page cache of this one.
    const maybeSync = () => {
      const upTo = Math.min(size, written.ptr * chunkSize);
      if (syncing || upTo <= synced || (upTo - synced < RESTORE_SYNC_BYTES && performance.now() - lastSync < RESTORE_SYNC_MS)) return;
      lastSync = performance.now();
      syncing = fh.datasync().then(() => {
        synced = Math.max(synced, upTo);
        syncing = null;
        report();
      });
      track(syncing);
    };

    for (let i = startIdx; i < count; i++) {
      if (failure || opts.signal?.aborted) break;
      const offset = i * chunkSize;
      const len = view.lengthOf(i);
      const hex = view.hexAt(i);
      if (hex === null) {
        if (zeros) {
          await inFlight.acquire();
          const idx = i;
          track(
            fh
              .write(zeros, 0, len, offset)
              .then(() => {
                bytesWritten += len;
                written.set(idx);
                maybeSync();
              })
              .finally(() => inFlight.release()),
          );
        } else {
          written.set(i);
        }
        continue;
      }
      await inFlight.acquire();
      const idx = i;
      const chunk = { offset, length: len, sha256: hex, key: keys.chunk(last.chunkSpace, hex) };
      track(
        (async () => {
          const slot: ReadSlot = { out: await buffers.take(), body: await bodies.take() };
          try {
            await downloads.acquire();
            try {
              await opts.throttle?.acquire(len, opts.signal);
              const fetched = await fetchChunk(store, codec, slot, chunk, sealKey, backupId);
              bytesFetched += fetched;
            } finally {
              downloads.release();
            }
            await fh.write(new Uint8Array(slot.out, 0, len), 0, len, offset);
            bytesWritten += len;
            written.set(idx);
            maybeSync();
          } finally {
            buffers.give(slot.out);
            bodies.give(slot.body);
          }
        })().finally(() => inFlight.release()),
      );
    }
    while (tasks.size > 0) await Promise.all([...tasks]);
    if (!failure && opts.signal?.aborted) failure = abortError(opts.signal, `restore of '${backupId}'`);
    if (failure) {
      // Whatever is written is made durable and reported, so a retry can skip it.
      await fh.datasync().catch(() => undefined);
      synced = Math.max(synced, Math.min(size, written.ptr * chunkSize));
      report();
      throw failure;
    }
    await fh.datasync();
    synced = size;
    report();
    return { metadata: last, resumedFrom, bytesWritten, bytesFetched };
  } finally {
    await fh.close();
  }
}
