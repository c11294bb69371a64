/**
 * Backup to an object target. Data path of a backup, per chunk, with at most `concurrency + 4` chunks in flight and
 * `concurrency` uploads at once, so memory is fixed by the chunk size, never the volume:
 *
 *   read (main thread, positional) -> zero check + sha256 (+ zstd + AES-GCM) in a codec
 *   worker -> skip if zeros, unchanged since the parent, or already stored -> put
 *
 * Progress is `doneOffset`: every chunk below it is stored. A retry resumes from the
 * heartbeat's doneOffset and from the backup's journal in the store (the hashes of the
 * chunks already done, written every few seconds), and checks the store before uploading
 * anything else, so a crashed attempt's uploads are not repeated.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { InvalidInput } from '../../errors.js';
import type { Throttle } from '../../copy/throttle.js';
import type { Extent } from '../../copy/extents.js';
import { BufferPool, CHUNK_OVERHEAD, chunkSpace, dataKey, keyFingerprint, sharedCodecPool, type ChunkBuffer, type CodecPool, type EncodedChunk, type EncodeOptions } from './codec.js';
import { BackupChainBroken, ChunkMissing, NoParentBackup } from './errors.js';
import { BackupMetadata, ChunkView, FORMAT, FORMAT_VERSION, JournalRecord, keys } from './format.js';
import { listAll, retainUntilFor, type ObjectStore } from './stores/store.js';
import { ChunkedTarget } from './target.js';
import { DoneMarks, Semaphore, abortError, asError, checkId, chunkLabel, chunksOverlapping, forEachLimited, isPermanent, readFully, sourceExtents } from './pool.js';
import { findLatestBackup, loadChain, readJournals, readMetadata, readPending } from './chain.js';
import { deleteBackup } from './prune.js';
import { EarlyHashes } from './early.js';
import { settleDeletes } from './gc.js';

/**
 * Uploads in flight. Against MinIO on loopback (2 cores, 1 GiB, bench/objects.ts) 6 was
 * ~5% faster than 4 and as fast as 8; a remote store, with its longer round trips, gains
 * more from it. Memory: (concurrency + 4) x 2 chunk buffers.
 */
export const DEFAULT_CONCURRENCY = 6;
/** Source reads in flight at once. */
const READ_AHEAD = 4;
/** How often an unfinished backup records its progress in the store (and how many chunks at most in between). */
// Every 2 s: a crash then costs at most ~2 s of re-reading (one small PUT per interval).
const JOURNAL_MS = 2_000;
const JOURNAL_CHUNKS = 256;


export interface BackupProgress {
  /** Every chunk below this offset is stored (what a retry may resume from). */
  doneOffset: number;
  /** Bytes read from the source by this attempt. */
  bytesRead: number;
  /** Encoded bytes this attempt put into the store. */
  bytesStored: number;
}

export interface BackupToStoreOptions {
  target: ChunkedTarget;
  backupId: string;
  volumeId: string;
  /** Block device or file to read. */
  source: string;
  /** Bytes to back up (the volume's size). */
  size: number;
  /** Build on the newest complete backup of the volume in this target (same key and chunk size), if any. */
  incremental?: boolean;
  /** Build on exactly this backup (overrides `incremental`'s choice). */
  parentId?: string | null;
  /** With `incremental`: fail with NoParentBackup instead of falling back to a full backup. */
  requireParent?: boolean;
  /**
   * A regular file whose holes are the source's holes (the image behind a loop device):
   * chunks in holes are taken as zeros without reading them. Default: the source itself
   * when it is a regular file.
   */
  dataExtents?: Extent[] | null;
  /**
   * Byte ranges that may differ from the parent backup (`parentId`, which must be given
   * with it); every chunk that does not overlap one is taken from the parent without being
   * read. From changed-block tracking (copy/cbt.ts). A retry whose pending record names
   * another parent ignores it and reads everything.
   */
  changed?: Extent[] | null;
  /**
   * The heartbeat's doneOffset of an earlier attempt. Honoured only when that attempt's
   * pending record is in the store with the same key space and size; parent and chunk size
   * then come from that record, whatever this call asks, so a retry finishes what was begun.
   */
  startOffset?: number;
  /** Uploads in flight (default 6); the pipeline holds at most 4 more chunks than this. */
  concurrency?: number;
  /** Codec threads to use (default: the process-wide sharedCodecPool()). */
  codec?: CodecPool;
  throttle?: Throttle;
  signal?: AbortSignal;
  onProgress?: (p: BackupProgress) => void;
  name?: string;
  snapshotId?: string;
  labels?: Record<string, string>;
}

export interface BackupToStoreResult {
  metadata: BackupMetadata;
  /** Where this attempt started (0 for a first attempt). */
  resumedFrom: number;
  bytesRead: number;
  /** Bytes of chunks taken from the parent unread, because `changed` left them out. */
  bytesSkippedByCbt: number;
  /** Encoded bytes put by this attempt. */
  bytesStored: number;
  chunksStored: number;
  /** The backup was already complete (an earlier attempt wrote its metadata). */
  alreadyComplete: boolean;
  /** Chunks a delete running at the same time removed, read from the source and stored again (gc.ts). */
  chunksRepaired?: number;
}

export async function backupToStore(opts: BackupToStoreOptions): Promise<BackupToStoreResult> {
  // An incremental reads and hashes the start of the volume while it consults the store
  // (early.ts); never where that could read what the backup itself would not.
  const early =
    (opts.incremental || opts.parentId) && !opts.changed && !opts.throttle && !opts.startOffset && !opts.signal?.aborted && Number.isSafeInteger(opts.size) && opts.size > 0
      ? new EarlyHashes(opts.source, opts.size, opts.target.chunkSize, opts.codec ?? sharedCodecPool(), READ_AHEAD + 2)
      : null;
  try {
    return await backupOnce(opts, early);
  } finally {
    await early?.halt();
  }
}

async function backupOnce(opts: BackupToStoreOptions, early: EarlyHashes | null): Promise<BackupToStoreResult> {
  const { target, backupId, volumeId, size } = opts;
  const store = target.store;
  checkId('backupId', backupId);
  checkId('volumeId', volumeId);
  if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidInput(`backup size must be a positive whole number of bytes, got ${size}`);
  const concurrency = Math.max(1, opts.concurrency ?? DEFAULT_CONCURRENCY);
  if (opts.changed) checkChanged(opts.changed, opts.parentId);

  // The pending record is read alongside (one round trip less before the first read).
  const pendingRead = readPending(store, backupId);
  pendingRead.catch(() => undefined);
  const done = await readMetadata(store, backupId);
  if (done) {
    await cleanupProgress(store, backupId);
    return { metadata: done, resumedFrom: size, bytesRead: 0, bytesSkippedByCbt: 0, bytesStored: 0, chunksStored: 0, alreadyComplete: true };
  }

  // Where the source holds data is asked now (of xfs_io, for a file: ~30 ms), while the
  // store is consulted, rather than after: the first read starts that much sooner.
  const extentsAsked = sourceExtents(opts.dataExtents, opts.source, size);
  extentsAsked.catch(() => undefined);

  const key = await target.key();
  const space = chunkSpace(key);
  const fingerprint = key ? keyFingerprint(key) : null;
  const sealKey = key ? dataKey(key) : null;

  // An earlier attempt's pending record fixes parent and chunk size for every retry, so
  // what it stored stays valid; a change of key means starting over.
  let pending = await pendingRead;
  if (pending && (pending.chunkSpace !== space || pending.size !== size || pending.volumeId !== volumeId)) {
    // What that attempt stored is unusable now: reclaim it like an abandoned backup.
    await deleteBackup({ target, backupId });
    pending = null;
  }
  const resuming = pending !== null;
  const chunkSize = pending?.chunkSize ?? target.chunkSize;

  let chain: BackupMetadata[] = [];
  if (pending) {
    if (pending.parent !== null) chain = await loadChain(store, pending.parent);
  } else {
    let parentId: string | null = null;
    let latest: BackupMetadata | null = null;
    if (opts.parentId) {
      parentId = opts.parentId;
    } else if (opts.incremental) {
      latest = await findLatestBackup(store, volumeId, { chunkSpace: space, chunkSize });
      parentId = latest?.backupId ?? null;
      if (parentId === null && opts.requireParent) {
        throw new NoParentBackup(`volume '${volumeId}' has no complete backup in target '${target.name}' (with this key and chunk size) to make an incremental on`);
      }
    }
    if (parentId !== null) {
      chain = await loadChain(store, parentId, latest);
      const p = chain[chain.length - 1]!;
      if (p.chunkSpace !== space || p.chunkSize !== chunkSize) {
        throw new InvalidInput(
          `backup '${parentId}' cannot be the parent of '${backupId}': it was made with ${p.chunkSpace === space ? `chunk size ${p.chunkSize}` : 'another encryption key'}; make a full backup`,
        );
      }
    }
    pending = {
      format: FORMAT,
      formatVersion: FORMAT_VERSION,
      backupId,
      volumeId,
      parent: parentId,
      size,
      chunkSize,
      chunkSpace: space,
      createdAt: new Date().toISOString(),
    };
    await store.put(keys.pending(backupId), Buffer.from(JSON.stringify(pending)));
  }
  // Under Object Lock, every object of this backup is locked until the same moment, fixed
  // by the pending record: a retry's uploads and re-locks match the first attempt's.
  const retainUntil = store.objectLock ? retainUntilFor(store.objectLock, new Date(pending.createdAt)) : undefined;
  const lock = retainUntil ? { retainUntil } : {};
  const parentView = chain.length > 0 ? ChunkView.ofChain(chain) : null;
  // Every chunk a chain member lists is stored (content addressed, same key space).
  const chainKnown = new Set<string>();
  for (const m of chain) for (const e of m.chunks) chainKnown.add(e.sha256);

  const view = new ChunkView(size, chunkSize);
  const count = view.count;
  // `changed` describes the difference from opts.parentId only: a retry building on the
  // parent its pending record names (another one) must read everything.
  const unchanged = opts.changed && parentView && pending.parent === opts.parentId ? chunksOutside(opts.changed, count, chunkSize) : null;
  let bytesSkippedByCbt = 0;

  // What earlier attempts recorded: a contiguous prefix of chunks, hashed and stored.
  let journalEnd = 0;
  let storedBefore = 0;
  /** Object size of every new chunk this backup stored, by sha256, over all attempts. */
  const sizes = new Map<string, number>();
  let unjournaled: [string, number][] = [];
  if (resuming) {
    for (const j of await readJournals(store, await listAll(store, keys.journalPrefix(backupId)))) {
      for (const [hex, n] of Object.entries(j.sizes ?? {})) sizes.set(hex, n);
      if (j.from > journalEnd || j.to > count || j.shas.length !== j.to - j.from) continue;
      j.shas.forEach((sha, k) => view.set(j.from + k, sha === '' ? null : sha));
      journalEnd = Math.max(journalEnd, j.to);
      storedBefore = Math.max(storedBefore, j.storedBytes);
    }
  }
  // Chunks below the heartbeat's offset are stored; only their hashes must be recomputed.
  // Without a pending record of the same key and size, nothing an earlier attempt did counts.
  const heartbeatEnd = resuming ? Math.min(count, Math.floor((opts.startOffset ?? 0) / chunkSize)) : 0;
  const trustedEnd = Math.max(journalEnd, heartbeatEnd);
  const resumedFrom = Math.min(size, Math.max(journalEnd, trustedEnd) * chunkSize);

  const mayHoldData = chunksOverlapping(await extentsAsked, size, chunkSize);
  const codec = opts.codec ?? sharedCodecPool();
  // Chunks being read or encoded, beyond those uploading or waiting to.
  const window = concurrency + READ_AHEAD;
  // A read buffer is held only while its chunk is read and encoded (the object waits for its
  // upload in a space buffer), so a few more than the reads in flight keep the codec busy.
  const buffers = early?.chunkSize === chunkSize ? early.pool : new BufferPool(READ_AHEAD + 2, chunkSize);
  const spaces = new BufferPool(window, chunkSize + CHUNK_OVERHEAD);
  const inFlight = new Semaphore(window);
  const uploads = new Semaphore(concurrency);
  // Several reads in flight: a cold virtio disk read 0.7 GB/s with one, 1.7 GB/s with four.
  const reads = new Semaphore(READ_AHEAD);
  const known = new DoneMarks(count, journalEnd);
  const uploading = new Map<string, Promise<void>>();
  const uploaded = new Set<string>();
  let bytesRead = 0;
  let bytesStored = 0;
  let chunksStored = 0;
  let failure: Error | null = null;
  const tasks = new Set<Promise<void>>();

  let journalFrom = journalEnd;
  let journaledStored = storedBefore;
  let journalWrite: Promise<void> = Promise.resolve();
  let lastJournal = performance.now();
  const writeJournal = (): Promise<void> => {
    // After a failed write (already reported through its task) the next one still tries.
    journalWrite = journalWrite.catch(() => undefined).then(async () => {
      const to = known.ptr;
      // An empty record still carries the byte count of uploads past the contiguous prefix.
      if (to < journalFrom || (to === journalFrom && storedBefore + bytesStored === journaledStored && unjournaled.length === 0)) return;
      const shas: string[] = [];
      for (let i = journalFrom; i < to; i++) shas.push(view.hexAt(i) ?? '');
      const recorded = unjournaled;
      unjournaled = [];
      const rec: JournalRecord = { from: journalFrom, to, shas, storedBytes: storedBefore + bytesStored, sizes: Object.fromEntries(recorded) };
      try {
        await store.put(keys.journal(backupId, journalFrom), Buffer.from(JSON.stringify(rec)));
      } catch (e) {
        unjournaled = recorded.concat(unjournaled);
        throw e;
      }
      journaledStored = rec.storedBytes;
      journalFrom = to;
      lastJournal = performance.now();
    });
    return journalWrite;
  };

  const report = () => opts.onProgress?.({ doneOffset: Math.min(size, Math.max(known.ptr, trustedEnd) * chunkSize), bytesRead, bytesStored });
  const finish = (i: number) => {
    known.set(i);
    // Not once every chunk is done: the metadata, written next, supersedes the journal.
    if (known.ptr < count && (known.ptr - journalFrom >= JOURNAL_CHUNKS || (known.ptr > journalFrom && performance.now() - lastJournal >= JOURNAL_MS))) {
      lastJournal = performance.now();
      track(writeJournal());
    }
    report();
  };
  const track = (p: Promise<void>) => {
    const t = p.catch((e) => {
      failure ??= asError(e);
    });
    tasks.add(t);
    void t.finally(() => tasks.delete(t));
  };

  const upload = async (hex: string, body: () => Promise<EncodedChunk>): Promise<void> => {
    if (chainKnown.has(hex) || uploaded.has(hex)) return;
    const running = uploading.get(hex);
    if (running) return running;
    const p = (async () => {
      const objectKey = keys.chunk(space, hex);
      // After a crash, what the last attempt stored but did not journal is found here.
      if (resuming) {
        const found = sizes.get(hex) ?? (await store.sizeOf(objectKey));
        if (found !== null) {
          if (!sizes.has(hex)) {
            sizes.set(hex, found);
            unjournaled.push([hex, found]);
          }
          return;
        }
      }
      const b = await body();
      await uploads.acquire();
      try {
        await store.put(objectKey, b.bytes, { crc32: b.crc32, ...lock });
      } finally {
        uploads.release();
      }
      bytesStored += b.bytes.length;
      chunksStored++;
      sizes.set(hex, b.bytes.length);
      unjournaled.push([hex, b.bytes.length]);
    })();
    uploading.set(hex, p);
    try {
      await p;
      uploaded.add(hex);
    } finally {
      uploading.delete(hex);
    }
  };

  const encodeOpts = { compress: target.compression === 'zstd', key: sealKey };
  /** A chunk's read buffer and the space its object is encoded into; each goes back to its pool once nothing uses it. */
  interface Slot {
    buf: ChunkBuffer | null;
    space: ChunkBuffer | null;
  }
  const processChunk = async (i: number, slot: Slot): Promise<void> => {
    const len = view.lengthOf(i);
    const parentSha = parentView && parentView.lengthOf(i) === len ? parentView.hashAt(i) : null;
    try {
      if (i < trustedEnd || resuming) {
        const h = await codec.hash(slot.buf!, len);
        view.set(i, h.sha);
        if (i < trustedEnd || h.sha === null || (parentSha && parentSha.equals(h.sha))) return;
        const sha = h.sha;
        await upload(sha.toString('hex'), async () => {
          const body = await codec.encode(slot.buf!, len, slot.space!, sha, encodeOpts);
          buffers.give(slot.buf!);
          slot.buf = null;
          return body;
        });
        return;
      }
      const r = await codec.hashEncode(slot.buf!, len, slot.space!, parentSha, encodeOpts);
      // The read buffer is free as soon as the chunk is encoded; the object waits for its upload.
      buffers.give(slot.buf!);
      slot.buf = null;
      view.set(i, r.sha);
      if (r.sha === null || r.body === null) return;
      const body = r.body;
      await upload(r.sha.toString('hex'), async () => body);
    } finally {
      if (slot.buf) buffers.give(slot.buf);
      if (slot.space) spaces.give(slot.space);
    }
  };

  let fh: FileHandle | null = null;
  try {
    fh = await open(opts.source, 'r');
    const source = fh;
    // What was hashed meanwhile; its reading stops here (the read buffers are this loop's now).
    const preHashed = early ? await early.halt(chunkSize) : null;
    for (let i = journalEnd; i < count; i++) {
      if (failure) break;
      if (opts.signal?.aborted) break;
      if (mayHoldData && mayHoldData[i] === 0) {
        view.set(i, null);
        finish(i);
        continue;
      }
      // Untouched since the parent: its hash (or its zeros) stands, unread. A chunk the
      // parent has with another length (the volume grew or shrank) is read.
      if (unchanged && unchanged[i] === 1 && parentView!.lengthOf(i) === view.lengthOf(i)) {
        view.set(i, parentView!.hashAt(i));
        bytesSkippedByCbt += view.lengthOf(i);
        finish(i);
        continue;
      }
      // Read and hashed early: zeros, a chunk equal to the parent's, or one below the
      // trusted prefix, need nothing more. Any other is read again and encoded.
      const pre = preHashed?.get(i);
      if (pre !== undefined) {
        const parentSha = parentView && parentView.lengthOf(i) === view.lengthOf(i) ? parentView.hashAt(i) : null;
        if (pre === null || i < trustedEnd || (parentSha && parentSha.equals(pre))) {
          view.set(i, pre);
          bytesRead += view.lengthOf(i);
          finish(i);
          continue;
        }
      }
      await inFlight.acquire();
      const slot: Slot = { buf: await buffers.take(), space: await spaces.take() };
      await reads.acquire();
      const idx = i;
      track(
        (async () => {
          const len = view.lengthOf(idx);
          try {
            await opts.throttle?.acquire(len, opts.signal);
            await readFully(source, slot.buf!, len, idx * chunkSize, opts.source);
          } catch (e) {
            buffers.give(slot.buf!);
            spaces.give(slot.space!);
            throw e;
          } finally {
            reads.release();
          }
          bytesRead += len;
          await processChunk(idx, slot);
          finish(idx);
        })().finally(() => inFlight.release()),
      );
    }
    while (tasks.size > 0) await Promise.all([...tasks]);
    if (!failure && opts.signal?.aborted) failure = abortError(opts.signal, `backup '${backupId}'`);
    if (failure) {
      // What is done is recorded, so the retry does not redo it; unless the backup was
      // reclaimed meanwhile (its workflow gave up on this attempt and compensated): then
      // no bookkeeping may come back.
      const stillPending = await store.exists(keys.pending(backupId)).catch(() => true);
      const recorded =
        !stillPending ||
        (await writeJournal().then(
          () => true,
          () => false,
        ));
      // No retry follows a permanent failure, and the compensation can only reclaim what the
      // journal lists; when even the journal could not be written (a full store), the chunks
      // this backup stored are reclaimed now, sparing those other backups use.
      if (!recorded && isPermanent(failure)) await deleteBackup({ target, backupId, also: [...sizes.keys()] }).catch(() => undefined);
      throw failure;
    }
  } finally {
    await fh?.close();
  }

  const delta = view.deltaFrom(parentView);
  // Exactly what a first attempt would count: each distinct new chunk once, by its object
  // size. A resumed backup knows most sizes from its journal; the chunks the crashed attempt
  // stored after its last record are asked for, and must be there.
  let storedBytes = 0;
  const newChunks = [...new Map(delta.chunks.filter((e) => !chainKnown.has(e.sha256)).map((e) => [e.sha256, e])).values()];
  let nextNew = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (nextNew < newChunks.length) {
        const e = newChunks[nextNew++]!;
        const n = sizes.get(e.sha256) ?? (resuming ? await store.sizeOf(keys.chunk(space, e.sha256)) : null);
        if (n === null) {
          throw new ChunkMissing(`backup '${backupId}': ${chunkLabel(e.offset, e.sha256)} should have been stored by an earlier attempt but is not in ${store.location}`, {
            offset: e.offset,
            sha256: e.sha256,
            key: keys.chunk(space, e.sha256),
          });
        }
        storedBytes += n;
      }
    }),
  );
  const metadata: BackupMetadata = {
    format: FORMAT,
    formatVersion: FORMAT_VERSION,
    backupId,
    volumeId,
    ...(opts.name !== undefined ? { name: opts.name } : {}),
    ...(opts.snapshotId !== undefined ? { snapshotId: opts.snapshotId } : {}),
    createdAt: pending.createdAt,
    completedAt: new Date().toISOString(),
    size,
    chunkSize,
    parent: pending.parent,
    compression: target.compression,
    encryption: fingerprint ? { algorithm: 'aes-256-gcm', keyFingerprint: fingerprint } : null,
    chunkSpace: space,
    chunks: delta.chunks,
    zeroChunks: delta.zeroChunks,
    stats: {
      dataBytes: view.dataBytes(),
      changedBytes: delta.chunks.reduce((n, e) => n + e.length, 0),
      storedBytes,
    },
    ...(opts.labels !== undefined ? { labels: opts.labels } : {}),
  };
  BackupMetadata.parse(metadata);
  // The journal is listed while the metadata is written (every journal write has settled).
  const journals = listAll(store, keys.journalPrefix(backupId));
  journals.catch(() => undefined);
  if (retainUntil) await extendReused(store, { view, stored: sizes, chain, space, retainUntil, concurrency });
  await store.put(keys.metadata(backupId), Buffer.from(JSON.stringify(metadata)), lock);
  // A delete that scanned before this metadata existed may have taken what it references (gc.ts).
  const settled = await settleDeletes(store, {
    backupId,
    sinceMs: Date.parse(pending.createdAt),
    ...(opts.signal ? { signal: opts.signal } : {}),
    onWait: () => opts.onProgress?.({ doneOffset: size, bytesRead, bytesStored }),
  });
  const chunksRepaired =
    settled.deletes.length === 0
      ? 0
      : await repairAfterDeletes({ store, backupId, chain, metadata, deletes: settled.deletes, source: opts.source, codec, encodeOpts, lock, signal: opts.signal });
  await cleanupProgress(store, backupId, journals);
  opts.onProgress?.({ doneOffset: size, bytesRead, bytesStored });
  return { metadata, resumedFrom, bytesRead, bytesSkippedByCbt, bytesStored, chunksStored, alreadyComplete: false, ...(chunksRepaired > 0 ? { chunksRepaired } : {}) };
}

/** `changed` is byte ranges over a given parent: anything else is a caller's mistake, not a reason to read less. */
function checkChanged(changed: Extent[], parentId: string | null | undefined): void {
  if (!parentId) throw new InvalidInput('changed ranges (changed-block tracking) describe the difference from a parent backup: give parentId with them');
  for (const e of changed) {
    if (!Number.isSafeInteger(e.start) || !Number.isSafeInteger(e.end) || e.start < 0 || e.end < e.start) {
      throw new InvalidInput(`changed range ${e.start}..${e.end} is not a range of whole bytes`);
    }
  }
}

/** 1 for every chunk that no range overlaps. */
function chunksOutside(ranges: Extent[], count: number, chunkSize: number): Uint8Array {
  const out = new Uint8Array(count).fill(1);
  for (const e of ranges) {
    if (e.end <= e.start) continue;
    const last = Math.min(count, Math.ceil(e.end / chunkSize));
    for (let i = Math.floor(e.start / chunkSize); i < last; i++) out[i] = 0;
  }
  return out;
}

/**
 * After a delete ran while this backup did (gc.ts): every ancestor must still be there,
 * else the backup is marked unusable and fails (its workflow deletes it); every chunk
 * its metadata names must be in the store, else it is read from the source and stored
 * again. The metadata, already written, keeps any later delete off these chunks.
 */
async function repairAfterDeletes(o: {
  store: ObjectStore;
  backupId: string;
  chain: BackupMetadata[];
  metadata: BackupMetadata;
  deletes: string[];
  source: string;
  codec: CodecPool;
  encodeOpts: EncodeOptions;
  lock: { retainUntil?: Date };
  signal: AbortSignal | undefined;
}): Promise<number> {
  const { store, backupId, metadata: m } = o;
  for (const a of o.chain) {
    if ((await store.exists(keys.metadata(a.backupId))) && !(await store.exists(keys.deleting(a.backupId)))) continue;
    await store.put(keys.deleting(backupId), Buffer.from(JSON.stringify({ backupId, at: new Date().toISOString(), why: `ancestor '${a.backupId}' deleted` })));
    throw new BackupChainBroken(
      `backup '${backupId}' builds on backup '${a.backupId}', which a delete running at the same time (of ${o.deletes.map((d) => `'${d}'`).join(', ')}) removed; back the volume up again (a full backup, or an incremental on another backup)`,
    );
  }
  const distinct = [...new Map(m.chunks.map((e) => [e.sha256, e])).values()];
  const missing: typeof distinct = [];
  await forEachLimited(8, distinct.length, async (i) => {
    const e = distinct[i]!;
    if ((await store.sizeOf(keys.chunk(m.chunkSpace, e.sha256))) === null) missing.push(e);
  });
  if (missing.length === 0) return 0;
  const fh = await open(o.source, 'r');
  const bufs = new BufferPool(1, m.chunkSize);
  const spaces = new BufferPool(1, m.chunkSize + CHUNK_OVERHEAD);
  const buf = await bufs.take();
  const space = await spaces.take();
  try {
    for (const e of missing) {
      if (o.signal?.aborted) throw abortError(o.signal, `backup '${backupId}'`);
      await readFully(fh, buf, e.length, e.offset, o.source);
      const h = await o.codec.hash(buf, e.length);
      if (h.sha?.toString('hex') !== e.sha256) {
        throw new ChunkMissing(`backup '${backupId}': ${chunkLabel(e.offset, e.sha256)} was removed by a delete running at the same time, and the source no longer holds it`, {
          offset: e.offset,
          sha256: e.sha256,
          key: keys.chunk(m.chunkSpace, e.sha256),
        });
      }
      const body = await o.codec.encode(buf, e.length, space, h.sha, o.encodeOpts);
      await store.put(keys.chunk(m.chunkSpace, e.sha256), body.bytes, { crc32: body.crc32, ...o.lock });
    }
  } finally {
    bufs.give(buf);
    spaces.give(space);
    await fh.close();
  }
  return missing.length;
}

/** Removes an unfinished backup's bookkeeping (pending record and journal). */
async function cleanupProgress(store: ObjectStore, backupId: string, journals?: Promise<string[]>): Promise<void> {
  const listed = await (journals ?? listAll(store, keys.journalPrefix(backupId)));
  await forEachLimited(8, listed.length, (i) => store.delete(listed[i]!));
  // Last: while it exists, a retry can still find the journal.
  await store.delete(keys.pending(backupId));
}

/**
 * Under Object Lock, what this backup needs but did not store itself (chunks of its
 * parents, chunks deduplicated against other backups, its parents' metadata) is locked
 * at least as long as this backup, so none of it unlocks while this backup still needs
 * it. Only objects whose lock ends sooner are written (extendRetention reads first).
 * Before the metadata: a backup that exists is one whose every object is locked.
 */
async function extendReused(
  store: ObjectStore,
  o: { view: ChunkView; stored: Map<string, number>; chain: BackupMetadata[]; space: string; retainUntil: Date; concurrency: number },
): Promise<void> {
  const extend = store.extendRetention?.bind(store);
  if (!extend) return;
  const reused = new Set<string>();
  for (let i = 0; i < o.view.count; i++) {
    const h = o.view.hashAt(i);
    if (h === null) continue;
    const hex = h.toString('hex');
    // Stored by this backup (any attempt): already locked until retainUntil.
    if (!o.stored.has(hex)) reused.add(hex);
  }
  const todo = [...[...reused].map((h) => keys.chunk(o.space, h)), ...o.chain.map((m) => keys.metadata(m.backupId))];
  await forEachLimited(o.concurrency, todo.length, async (i) => void (await extend(todo[i]!, o.retainUntil)));
}
