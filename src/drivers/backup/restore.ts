/**
 * Restore: a backup's chain from an object target onto a volume, resuming from what is written and synced.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { VolumeTooSmall } from '../../errors.js';
import type { Throttle } from '../../copy/throttle.js';
import { BufferPool, CHUNK_OVERHEAD, sharedCodecPool, type ChunkBuffer, type CodecPool } from './codec.js';
import { ChunkCorrupt, ChunkMissing, DecryptionFailed, ObjectNotFound } from './errors.js';
import { BackupMetadata, keys } from './format.js';
import { type ObjectStore } from './stores/store.js';
import { ChunkedTarget } from './target.js';
import { DoneMarks, Semaphore, abortError, asError, chunkLabel, deviceSize } from './pool.js';
import { openChain } from './chain.js';
import { SlabPool, alignForWrites, directable, openDirectWriter, refusedDirect, type SlabBuffer } from './direct.js';

/**
 * Downloads in flight: GETs of cold objects wait on the server's disk (and a remote
 * store's on the round trip), so more of them overlap better. On the bench (MinIO on
 * loopback, 1 GiB) 8, 12 and 16 are within noise of each other now that the restore is
 * bound by CPU; 12 costs no more memory than 8 did before DECODE_WINDOW.
 */
export const DEFAULT_RESTORE_CONCURRENCY = 12;
/**
 * Decoded chunks in flight (decoding or being written). Their buffers are taken only once
 * an object is in, so more downloads cost only object buffers: 12 downloads with 6 of
 * these hold 80 MiB at 4 MiB chunks, what 8 downloads with a decode buffer each did.
 */
const DECODE_WINDOW = 6;
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

type ChunkRef = { offset: number; length: number; sha256: string; key: string };

/** Fetches a chunk's object into `body`; throws a ChunkCorrupt naming it. Returns the object's length. */
export async function downloadChunk(store: ObjectStore, body: ChunkBuffer, chunk: ChunkRef, backupId: string): Promise<number> {
  try {
    const got = await store.getInto(chunk.key, (n) => {
      // Nothing this chunk can encode to is larger: the object is not the chunk.
      if (n > chunk.length + CHUNK_OVERHEAD || n > body.byteLength) throw chunkError('length', `is ${n} bytes, more than a chunk of ${chunk.length} bytes encodes to`, chunk, backupId);
      return body;
    });
    return got.length;
  } catch (e) {
    throw e instanceof ObjectNotFound ? chunkError('missing', 'is missing from the store', chunk, backupId) : e;
  }
}

/** Decodes a fetched object (`bodyLen` bytes of `body`) into `out` from `outOff`; throws a ChunkCorrupt naming the chunk. */
export async function decodeChunk(
  codec: CodecPool,
  body: ChunkBuffer,
  bodyLen: number,
  out: ChunkBuffer,
  outOff: number,
  chunk: ChunkRef,
  sealKey: Buffer | null,
  backupId: string,
): Promise<void> {
  const r = await codec.decode(body, bodyLen, out, chunk.length, Buffer.from(chunk.sha256, 'hex'), sealKey, outOff);
  if (r.failure) throw chunkError(r.failure.kind, r.failure.message, chunk, backupId);
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
  let direct: FileHandle | null = null;
  const codec = opts.codec ?? sharedCodecPool();
  try {
    const destSize = await deviceSize(opts.dest, fh);
    if (destSize < size) throw new VolumeTooSmall(`${opts.dest} holds ${destSize} bytes; backup '${backupId}' needs ${size}`);
    // An object buffer per download, and two for objects waiting to be decoded; decoded
    // chunks need a buffer only from their decode to the end of their write (DECODE_WINDOW
    // of them), plus one of zeros to write zero chunks with, when the destination is not
    // known to read zeros.
    const window = concurrency + 2;
    const outs = new SlabPool(DECODE_WINDOW + (opts.destIsZero ? 0 : 1), chunkSize);
    const bodies = new BufferPool(window, chunkSize + CHUNK_OVERHEAD);
    const inFlight = new Semaphore(window);
    const downloads = new Semaphore(concurrency);
    const written = new DoneMarks(count, startIdx);

    // Decoded chunks go to the volume with O_DIRECT where it can be had (direct.ts). The
    // alignment probe writes one block of zeros at the start of the first chunk this restore
    // writes (and writes whole), so nothing outside what is restored is touched.
    let first = startIdx;
    while (first < count && ((opts.destIsZero && view.hexAt(first) === null) || !directable(view.lengthOf(first), first * chunkSize))) first++;
    if (first < count) direct = await openDirectWriter(opts.dest);
    if (direct && !alignForWrites(outs, direct, first * chunkSize)) {
      await direct.close();
      direct = null;
    }
    const zeros = opts.destIsZero ? null : await outs.take();
    const writeChunk = async (b: SlabBuffer, len: number, position: number): Promise<void> => {
      const data = new Uint8Array(b.buf, b.off, len);
      let at = 0;
      if (direct && directable(len, position)) {
        try {
          // A short direct write leaves an unaligned rest: that goes through the cache.
          at = (await direct.write(data, 0, len, position)).bytesWritten;
        } catch (e) {
          if (!refusedDirect(e)) throw e;
          // Refused (not failed): nothing was written. Through the cache from now on.
          direct = null;
        }
      }
      while (at < len) {
        const { bytesWritten } = await fh.write(data, at, len - at, position + at);
        if (bytesWritten === 0) throw new Error(`${opts.dest}: wrote nothing at byte ${position + at}`);
        at += bytesWritten;
      }
    };
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
            writeChunk(zeros, len, offset)
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
          let body: ChunkBuffer | null = await bodies.take();
          let out: SlabBuffer | null = null;
          try {
            let fetched: number;
            await downloads.acquire();
            try {
              await opts.throttle?.acquire(len, opts.signal);
              fetched = await downloadChunk(store, body, chunk, backupId);
              bytesFetched += fetched;
            } finally {
              downloads.release();
            }
            out = await outs.take();
            await decodeChunk(codec, body, fetched, out.buf, out.off, chunk, sealKey, backupId);
            // The object's buffer is free once decoded: the next download can start.
            bodies.give(body);
            body = null;
            await writeChunk(out, len, offset);
            bytesWritten += len;
            written.set(idx);
            maybeSync();
          } finally {
            if (out) outs.give(out);
            if (body) bodies.give(body);
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
    await direct?.close();
    await fh.close();
  }
}
