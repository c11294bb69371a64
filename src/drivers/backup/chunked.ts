/**
 * Chunked backups to object stores: backup, restore, verify, delete, list, export/import.
 * Plain TypeScript for the node activities to call (no Temporal here); the format is in
 * format.ts, the bytes of a chunk object in codec.ts, the stores in store.ts.
 *
 * Data path of a backup, per chunk, with at most `concurrency + 4` chunks in flight and
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
import { open, stat, type FileHandle } from 'node:fs/promises';
import { execa } from 'execa';
import { Cancelled, BackupNotFound, GbackupError, InvalidInput, VolumeTooSmall } from '../../errors.js';
import { idSchema } from '../../api.js';
import { parseSeekTable, type Extent } from '../../copy/extents.js';
import type { Throttle } from '../../copy/throttle.js';
import type { Compression, ObjectTarget } from './config.js';
import { BufferPool, CHUNK_OVERHEAD, chunkSpace, dataKey, keyFingerprint, loadKey, sharedCodecPool, type ChunkBuffer, type CodecPool, type EncodedChunk } from './codec.js';
import {
  BackupChainBroken,
  BackupCorrupt,
  BackupHasDependents,
  ChunkCorrupt,
  ChunkMissing,
  DecryptionFailed,
  ImportConflict,
  MissingKey,
  NoParentBackup,
  ObjectNotFound,
  ShortRead,
  UnsupportedFormat,
  WrongKey,
} from './errors.js';
import {
  BackupMetadata,
  ChunkView,
  DEFAULT_CHUNK_SIZE,
  FORMAT,
  FORMAT_VERSION,
  JournalRecord,
  keys,
  parseBackupKey,
  parseJson,
  parseMetadata,
  PendingRecord,
} from './format.js';
import { closeStore, listAll, openStore, type ObjectStore } from './store.js';

/**
 * Uploads in flight. Against MinIO on loopback (2 cores, 1 GiB, bench/objects.ts) 6 was
 * ~5% faster than 4 and as fast as 8; a remote store, with its longer round trips, gains
 * more from it. Memory: (concurrency + 4) x 2 chunk buffers.
 */
export const DEFAULT_CONCURRENCY = 6;
/** Downloads in flight: GETs of cold objects wait on the server's disk, so more of them overlap better. */
export const DEFAULT_RESTORE_CONCURRENCY = 8;
/** Source reads in flight at once. */
const READ_AHEAD = 4;
/** How often an unfinished backup records its progress in the store (and how many chunks at most in between). */
// Every 2 s: a crash then costs at most ~2 s of re-reading (one small PUT per interval).
const JOURNAL_MS = 2_000;
const JOURNAL_CHUNKS = 256;
/** A restore makes its writes durable (fdatasync) at least this often before reporting them done. */
const RESTORE_SYNC_BYTES = 256 * 1024 * 1024;
/** ...and at least this often, so a slow (throttled) restore also has a recent resume point. */
const RESTORE_SYNC_MS = 2_000;

// ---------------------------------------------------------------------------------------
// Target

/**
 * An opened object target: its store, chunk settings and (lazily) its key. The key is read
 * from the file or variable the config names on first use, so restoring an unencrypted
 * backup does not need a key to be present.
 */
export class ChunkedTarget {
  private keyPromise: Promise<Buffer | null> | null = null;

  constructor(
    readonly config: ObjectTarget,
    readonly store: ObjectStore,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {}

  static async open(config: ObjectTarget, env: NodeJS.ProcessEnv = process.env): Promise<ChunkedTarget> {
    return new ChunkedTarget(config, await openStore(config, env), env);
  }

  get name(): string {
    return this.config.name;
  }
  get chunkSize(): number {
    return this.config.chunkSize ?? DEFAULT_CHUNK_SIZE;
  }
  get compression(): Compression {
    return this.config.compression;
  }
  get encrypts(): boolean {
    return this.config.encryption !== undefined;
  }

  /** Throws a StoreUnusable naming what is wrong when the store cannot be used at all; see ObjectStore.ready. */
  ready(): Promise<{ created: boolean }> {
    return this.store.ready();
  }

  /** The configured key, or null when the target does not encrypt. Throws MissingKey/InvalidKey. */
  key(): Promise<Buffer | null> {
    this.keyPromise ??= loadKey(this.config.encryption, this.config.name, this.env);
    return this.keyPromise;
  }

  close(): void {
    closeStore(this.store);
  }
}

// ---------------------------------------------------------------------------------------
// Small tools

class Semaphore {
  private waiters: (() => void)[] = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((res) => this.waiters.push(res));
  }
  release(): void {
    const w = this.waiters.shift();
    if (w) w();
    else this.free++;
  }
}

/** Lowest index below which every flag is set, advanced as flags are set in any order. */
class DoneMarks {
  private readonly marks: Uint8Array;
  ptr: number;
  constructor(
    readonly count: number,
    start: number,
  ) {
    this.marks = new Uint8Array(count);
    this.ptr = Math.min(start, count);
  }
  set(i: number): void {
    this.marks[i] = 1;
    while (this.ptr < this.count && this.marks[this.ptr] === 1) this.ptr++;
  }
}

const asError = (e: unknown): Error => (e instanceof Error ? e : new Error(String(e)));
/** The error's class says a retry cannot cure it (errors.ts). */
const isPermanent = (e: Error): boolean => e instanceof GbackupError && (e.constructor as typeof GbackupError).permanent;

/**
 * Calls fn(0) .. fn(count - 1), at most `limit` at a time. The first error stops new calls;
 * the ones running are waited for (so nothing still runs, or holds a buffer, once this
 * settles) and then that error is thrown.
 */
async function forEachLimited(limit: number, count: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const state: { failure: Error | null } = { failure: null };
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(limit, count)) }, async () => {
      while (state.failure === null && next < count) {
        const i = next++;
        try {
          await fn(i);
        } catch (e) {
          state.failure ??= asError(e);
        }
      }
    }),
  );
  if (state.failure) throw state.failure;
}

function abortError(signal: AbortSignal, what: string): Error {
  return signal.reason instanceof Error ? signal.reason : new Cancelled(`${what} cancelled`);
}

async function readFully(fh: FileHandle, buf: ChunkBuffer, len: number, position: number, source: string): Promise<void> {
  const view = new Uint8Array(buf, 0, len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(view, got, len - got, position + got);
    if (bytesRead === 0) throw new ShortRead(`${source} ended at byte ${position + got}, before the backup size`);
    got += bytesRead;
  }
}

/** Size of a regular file or a block device. */
async function deviceSize(path: string, fh: FileHandle): Promise<number> {
  const st = await fh.stat();
  if (st.isBlockDevice()) {
    const { stdout } = await execa('blockdev', ['--getsize64', path]);
    return Number(stdout.trim());
  }
  return st.size;
}

/**
 * Which chunks may hold data, from the filesystem's extent map (SEEK_DATA/SEEK_HOLE via
 * xfs_io, as copy/extents.ts does, but unmerged: the dd engine merges nearby extents to
 * save dd runs, while here every whole chunk inside a hole is a read saved); null when
 * everything must be read (a block device, or a filesystem that cannot tell).
 */
async function chunksWithData(file: string | undefined, size: number, chunkSize: number): Promise<Uint8Array | null> {
  if (file === undefined) return null;
  const st = await stat(file);
  if (!st.isFile()) return null;
  let extents: Extent[];
  try {
    const { stdout } = await execa('xfs_io', ['-r', '-c', 'seek -a -r 0', '--', file]);
    extents = parseSeekTable(stdout, size);
  } catch {
    return null;
  }
  const count = Math.ceil(size / chunkSize);
  const marks = new Uint8Array(count);
  for (const e of extents) {
    const end = Math.min(size, e.end);
    for (let i = Math.floor(e.start / chunkSize); i < Math.min(count, Math.ceil(end / chunkSize)); i++) marks[i] = 1;
  }
  return marks;
}

/** Ids become object keys: held to the API's id rules, with the rule that was broken in the message. */
function checkId(what: string, id: string): void {
  const r = idSchema(what).safeParse(id);
  if (!r.success) throw new InvalidInput(r.error.issues[0]?.message ?? `${what} is not a valid id`);
}

const chunkLabel = (offset: number, sha: string) => `chunk at offset ${offset} (sha256 ${sha.slice(0, 16)}…)`;

// ---------------------------------------------------------------------------------------
// Reading what a target holds

interface StoredBackup {
  backupId: string;
  metadata: BackupMetadata | null;
  pending: PendingRecord | null;
  deleting: boolean;
  journals: string[];
}

async function getJson(store: ObjectStore, key: string): Promise<unknown> {
  return parseJson(await store.get(key), `${store.location}${key}`);
}

async function readMetadata(store: ObjectStore, backupId: string): Promise<BackupMetadata | null> {
  try {
    return parseMetadata(await getJson(store, keys.metadata(backupId)), `${store.location}${keys.metadata(backupId)}`);
  } catch (e) {
    if (e instanceof ObjectNotFound) return null;
    throw e;
  }
}

async function readPending(store: ObjectStore, backupId: string): Promise<PendingRecord | null> {
  try {
    const r = PendingRecord.safeParse(await getJson(store, keys.pending(backupId)));
    return r.success ? r.data : null;
  } catch (e) {
    if (e instanceof ObjectNotFound || e instanceof UnsupportedFormat) return null;
    throw e;
  }
}

/** Every backup the target knows of, complete or not, from one listing of `backups/`. */
async function scanBackups(store: ObjectStore): Promise<Map<string, StoredBackup>> {
  const found = new Map<string, { files: Set<string>; journals: string[] }>();
  for await (const key of store.list(keys.backupsPrefix)) {
    const p = parseBackupKey(key);
    if (!p) continue;
    let f = found.get(p.backupId);
    if (!f) found.set(p.backupId, (f = { files: new Set(), journals: [] }));
    if (p.rest.startsWith('journal/')) f.journals.push(key);
    else f.files.add(p.rest);
  }
  const out = new Map<string, StoredBackup>();
  for (const [backupId, f] of found) {
    out.set(backupId, {
      backupId,
      metadata: f.files.has('metadata.json') ? await readMetadata(store, backupId) : null,
      pending: f.files.has('pending.json') ? await readPending(store, backupId) : null,
      deleting: f.files.has('deleting.json'),
      journals: f.journals.sort(),
    });
  }
  return out;
}

async function readJournals(store: ObjectStore, journalKeys: string[]): Promise<JournalRecord[]> {
  const out: JournalRecord[] = [];
  for (const k of journalKeys) {
    const r = JournalRecord.safeParse(await getJson(store, k).catch(() => null));
    if (r.success) out.push(r.data);
  }
  return out.sort((a, b) => a.from - b.from);
}

export interface BackupRecordView {
  backupId: string;
  /** `deleting`: a delete started and did not finish; the backup must not be used. */
  status: 'available' | 'deleting';
  metadata: BackupMetadata;
}

/** Complete backups on a target, oldest first: what a catalog rebuild reads. */
export async function listBackupRecords(store: ObjectStore): Promise<BackupRecordView[]> {
  const all = await scanBackups(store);
  return [...all.values()]
    .filter((b): b is StoredBackup & { metadata: BackupMetadata } => b.metadata !== null)
    .map((b) => ({ backupId: b.backupId, status: b.deleting ? ('deleting' as const) : ('available' as const), metadata: b.metadata }))
    .sort((a, b) => a.metadata.completedAt.localeCompare(b.metadata.completedAt) || a.backupId.localeCompare(b.backupId));
}

/** Backups that were started and never completed (no metadata): for a sweep to delete. */
export async function listIncompleteBackups(store: ObjectStore): Promise<{ backupId: string; volumeId: string | null; createdAt: string | null }[]> {
  const all = await scanBackups(store);
  return [...all.values()]
    .filter((b) => b.metadata === null)
    .map((b) => ({ backupId: b.backupId, volumeId: b.pending?.volumeId ?? null, createdAt: b.pending?.createdAt ?? null }));
}

/** The newest complete backup of a volume that an incremental can build on. */
export async function findLatestBackup(store: ObjectStore, volumeId: string, match?: { chunkSpace: string; chunkSize: number }): Promise<BackupMetadata | null> {
  const usable = (await listBackupRecords(store)).filter(
    (r) => r.status === 'available' && r.metadata.volumeId === volumeId && (!match || (r.metadata.chunkSpace === match.chunkSpace && r.metadata.chunkSize === match.chunkSize)),
  );
  return usable[usable.length - 1]?.metadata ?? null;
}

/** A backup's chain, root first. */
export async function loadChain(store: ObjectStore, backupId: string): Promise<BackupMetadata[]> {
  const chain: BackupMetadata[] = [];
  const seen = new Set<string>();
  let id: string | null = backupId;
  while (id !== null) {
    if (seen.has(id)) throw new BackupChainBroken(`backup '${backupId}': its chain loops at '${id}'`);
    seen.add(id);
    const m = await readMetadata(store, id);
    if (!m) {
      if (id === backupId) throw new BackupNotFound(`backup '${backupId}' is not in ${store.location} (no ${keys.metadata(backupId)})`);
      throw new BackupChainBroken(`backup '${backupId}' depends on '${id}', which is not in ${store.location}`);
    }
    chain.unshift(m);
    id = m.parent;
  }
  return chain;
}

/** The key for reading a chain, checked against the fingerprint before any chunk is read. */
async function keyForChain(target: ChunkedTarget, chain: BackupMetadata[]): Promise<Buffer | null> {
  const enc = chain.find((m) => m.encryption !== null)?.encryption;
  if (!enc) return null;
  const last = chain[chain.length - 1]!;
  if (!target.encrypts) {
    throw new MissingKey(
      `backup '${last.backupId}' is encrypted (key fingerprint ${enc.keyFingerprint.slice(0, 16)}…) but target '${target.name}' has no encryption key configured`,
    );
  }
  const key = (await target.key())!;
  const fp = keyFingerprint(key);
  for (const m of chain) {
    if (m.encryption && m.encryption.keyFingerprint !== fp) {
      throw new WrongKey(
        `backup '${m.backupId}' was encrypted with the key of fingerprint ${m.encryption.keyFingerprint.slice(0, 16)}…; ` +
          `the key target '${target.name}' is configured with has fingerprint ${fp.slice(0, 16)}…`,
      );
    }
  }
  return key;
}

/**
 * What reading a backup needs: its chain (root first) all in the store, the key checked
 * against every fingerprint, and the view of the volume the chain describes. Throws
 * BackupNotFound, BackupChainBroken, MissingKey or WrongKey before any chunk is read.
 */
export async function openChain(target: ChunkedTarget, backupId: string): Promise<{ chain: BackupMetadata[]; sealKey: Buffer | null; last: BackupMetadata; view: ChunkView }> {
  const chain = await loadChain(target.store, backupId);
  const key = await keyForChain(target, chain);
  return { chain, sealKey: key ? dataKey(key) : null, last: chain[chain.length - 1]!, view: ChunkView.ofChain(chain) };
}

// ---------------------------------------------------------------------------------------
// Backup

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
  extentsFrom?: string;
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
  /** Encoded bytes put by this attempt. */
  bytesStored: number;
  chunksStored: number;
  /** The backup was already complete (an earlier attempt wrote its metadata). */
  alreadyComplete: boolean;
}

export async function backupToStore(opts: BackupToStoreOptions): Promise<BackupToStoreResult> {
  const { target, backupId, volumeId, size } = opts;
  const store = target.store;
  checkId('backupId', backupId);
  checkId('volumeId', volumeId);
  if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidInput(`backup size must be a positive whole number of bytes, got ${size}`);
  const concurrency = Math.max(1, opts.concurrency ?? DEFAULT_CONCURRENCY);

  const done = await readMetadata(store, backupId);
  if (done) {
    await cleanupProgress(store, backupId);
    return { metadata: done, resumedFrom: size, bytesRead: 0, bytesStored: 0, chunksStored: 0, alreadyComplete: true };
  }

  const key = await target.key();
  const space = chunkSpace(key);
  const fingerprint = key ? keyFingerprint(key) : null;
  const sealKey = key ? dataKey(key) : null;

  // An earlier attempt's pending record fixes parent and chunk size for every retry, so
  // what it stored stays valid; a change of key means starting over.
  let pending = await readPending(store, backupId);
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
    if (opts.parentId) {
      parentId = opts.parentId;
    } else if (opts.incremental) {
      parentId = (await findLatestBackup(store, volumeId, { chunkSpace: space, chunkSize }))?.backupId ?? null;
      if (parentId === null && opts.requireParent) {
        throw new NoParentBackup(`volume '${volumeId}' has no complete backup in target '${target.name}' (with this key and chunk size) to make an incremental on`);
      }
    }
    if (parentId !== null) {
      chain = await loadChain(store, parentId);
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
  const parentView = chain.length > 0 ? ChunkView.ofChain(chain) : null;
  // Every chunk a chain member lists is stored (content addressed, same key space).
  const chainKnown = new Set<string>();
  for (const m of chain) for (const e of m.chunks) chainKnown.add(e.sha256);

  const view = new ChunkView(size, chunkSize);
  const count = view.count;

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

  const mayHoldData = await chunksWithData(opts.extentsFrom ?? opts.source, size, chunkSize);
  const codec = opts.codec ?? sharedCodecPool();
  // Chunks being read or encoded, beyond those uploading or waiting to.
  const window = concurrency + READ_AHEAD;
  // A read buffer is held only while its chunk is read and encoded (the object waits for its
  // upload in a space buffer), so a few more than the reads in flight keep the codec busy.
  const buffers = new BufferPool(READ_AHEAD + 2, chunkSize);
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
    if (known.ptr - journalFrom >= JOURNAL_CHUNKS || (known.ptr > journalFrom && performance.now() - lastJournal >= JOURNAL_MS)) {
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
        await store.put(objectKey, b.bytes, { crc32: b.crc32 });
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
    for (let i = journalEnd; i < count; i++) {
      if (failure) break;
      if (opts.signal?.aborted) break;
      if (mayHoldData && mayHoldData[i] === 0) {
        view.set(i, null);
        finish(i);
        continue;
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
      // What is done is recorded, so the retry does not redo it.
      const recorded = await writeJournal().then(
        () => true,
        () => false,
      );
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
  await store.put(keys.metadata(backupId), Buffer.from(JSON.stringify(metadata)));
  await cleanupProgress(store, backupId);
  opts.onProgress?.({ doneOffset: size, bytesRead, bytesStored });
  return { metadata, resumedFrom, bytesRead, bytesStored, chunksStored, alreadyComplete: false };
}

/** Removes an unfinished backup's bookkeeping (pending record and journal). */
async function cleanupProgress(store: ObjectStore, backupId: string): Promise<void> {
  for (const k of await listAll(store, keys.journalPrefix(backupId))) await store.delete(k);
  await store.delete(keys.pending(backupId));
}

// ---------------------------------------------------------------------------------------
// Reading chunks back: restore and verify

function chunkError(kind: string, message: string, chunk: { offset: number; sha256: string; key: string }, backupId: string): ChunkCorrupt {
  const text = `backup '${backupId}': ${chunkLabel(chunk.offset, chunk.sha256)}, object ${chunk.key}, ${message}`;
  if (kind === 'auth') return new DecryptionFailed(`${text}; the key matches the backup's fingerprint, so the object was altered or damaged`, chunk);
  if (kind === 'missing') return new ChunkMissing(text, chunk);
  return new ChunkCorrupt(text, chunk);
}

/** Buffers one chunk read needs: the decoded chunk (chunk size) and the object as fetched (chunk size + CHUNK_OVERHEAD). */
interface ReadSlot {
  out: ChunkBuffer;
  body: ChunkBuffer;
}

/** Fetches and decodes one chunk into `slot.out`; throws a ChunkCorrupt naming it. Returns the bytes fetched. */
async function fetchChunk(
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

export interface VerifyResult {
  backupId: string;
  chunks: number;
  bytes: number;
}

/**
 * Reads back every chunk a restore of this backup would read and checks it. Throws
 * BackupCorrupt listing every missing or damaged chunk (and WrongKey/MissingKey first).
 */
export async function verifyBackup(opts: { target: ChunkedTarget; backupId: string; concurrency?: number; codec?: CodecPool; signal?: AbortSignal }): Promise<VerifyResult> {
  const { target, backupId } = opts;
  const store = target.store;
  const { sealKey, last, view } = await openChain(target, backupId);
  const concurrency = Math.max(1, opts.concurrency ?? DEFAULT_RESTORE_CONCURRENCY);
  const codec = opts.codec ?? sharedCodecPool();
  const buffers = new BufferPool(concurrency, view.chunkSize);
  const bodies = new BufferPool(concurrency, view.chunkSize + CHUNK_OVERHEAD);
  const failures: BackupCorrupt['failures'] = [];
  let chunks = 0;
  let bytes = 0;
  // Identical chunks at several offsets are one object: read it once.
  const checked = new Set<string>();
  await forEachLimited(concurrency, view.count, async (i) => {
    if (opts.signal?.aborted) throw abortError(opts.signal, `verify of '${backupId}'`);
    const hex = view.hexAt(i);
    if (hex === null || checked.has(hex)) return;
    checked.add(hex);
    const chunk = { offset: i * view.chunkSize, length: view.lengthOf(i), sha256: hex, key: keys.chunk(last.chunkSpace, hex) };
    const slot: ReadSlot = { out: await buffers.take(), body: await bodies.take() };
    try {
      await fetchChunk(store, codec, slot, chunk, sealKey, backupId);
      chunks++;
      bytes += chunk.length;
    } catch (e) {
      if (!(e instanceof ChunkCorrupt)) throw e;
      failures.push({ offset: chunk.offset, sha256: hex, key: chunk.key, reason: e.message });
    } finally {
      buffers.give(slot.out);
      bodies.give(slot.body);
    }
  });
  if (failures.length > 0) {
    failures.sort((a, b) => a.offset - b.offset);
    const named = failures
      .slice(0, 5)
      .map((f) => `${chunkLabel(f.offset, f.sha256)} object ${f.key}: ${f.reason.replace(/^.*?, object [^,]+, /, '')}`)
      .join('; ');
    throw new BackupCorrupt(
      `backup '${backupId}' failed verification: ${failures.length} bad chunk(s): ${named}${failures.length > 5 ? `; and ${failures.length - 5} more` : ''}`,
      failures,
    );
  }
  return { backupId, chunks, bytes };
}

// ---------------------------------------------------------------------------------------
// Delete

export interface DeleteBackupResult {
  /** False when there was nothing of the backup in the target (already deleted). */
  deleted: boolean;
  chunksDeleted: number;
  /** Chunks of this backup that other backups still use. */
  chunksShared: number;
}

/**
 * Deletes a backup and the chunks no other backup (complete or in progress) uses. Refused
 * with BackupHasDependents while incrementals build on it. A `deleting` marker goes first,
 * so an interrupted delete leaves a backup marked unusable rather than one that looks
 * complete with chunks missing; running the delete again finishes it.
 */
export async function deleteBackup(opts: {
  target: ChunkedTarget;
  backupId: string;
  concurrency?: number;
  /** Chunks the caller knows this backup stored beyond what its metadata and journal list (sha256 hex). */
  also?: string[];
}): Promise<DeleteBackupResult> {
  const { target, backupId } = opts;
  const store = target.store;
  const all = await scanBackups(store);
  const me = all.get(backupId);
  if (!me) return { deleted: false, chunksDeleted: 0, chunksShared: 0 };
  const dependents = [...all.values()].filter((b) => b.backupId !== backupId && (b.metadata?.parent ?? b.pending?.parent) === backupId).map((b) => b.backupId);
  if (dependents.length > 0) {
    throw new BackupHasDependents(
      `backup '${backupId}' cannot be deleted: ${dependents.length === 1 ? 'backup' : 'backups'} ${dependents.map((d) => `'${d}'`).join(', ')} ${dependents.length === 1 ? 'is an incremental' : 'are incrementals'} on top of it; delete ${dependents.length === 1 ? 'it' : 'them'} first`,
    );
  }
  const space = me.metadata?.chunkSpace ?? me.pending?.chunkSpace;
  if (me.metadata && !me.deleting) await store.put(keys.deleting(backupId), Buffer.from(JSON.stringify({ backupId, at: new Date().toISOString() })));

  const mine = new Set<string>(opts.also ?? []);
  for (const e of me.metadata?.chunks ?? []) mine.add(e.sha256);
  for (const j of await readJournals(store, me.journals)) {
    for (const s of j.shas) if (s) mine.add(s);
    // Chunks stored past the contiguous prefix, recorded by their sizes.
    for (const s of Object.keys(j.sizes ?? {})) mine.add(s);
  }
  const shared = new Set<string>();
  for (const b of all.values()) {
    if (b.backupId === backupId) continue;
    if ((b.metadata?.chunkSpace ?? b.pending?.chunkSpace) !== space) continue;
    for (const e of b.metadata?.chunks ?? []) if (mine.has(e.sha256)) shared.add(e.sha256);
    if (!b.metadata) {
      for (const j of await readJournals(store, b.journals)) for (const s of [...j.shas, ...Object.keys(j.sizes ?? {})]) if (s && mine.has(s)) shared.add(s);
    }
  }
  const doomed = space === undefined ? [] : [...mine].filter((s) => !shared.has(s)).map((s) => keys.chunk(space, s));
  await forEachLimited(Math.max(1, opts.concurrency ?? 8), doomed.length, (i) => store.delete(doomed[i]!));
  for (const k of me.journals) await store.delete(k);
  await store.delete(keys.pending(backupId));
  await store.delete(keys.metadata(backupId));
  await store.delete(keys.deleting(backupId));
  return { deleted: true, chunksDeleted: doomed.length, chunksShared: shared.size };
}

// ---------------------------------------------------------------------------------------
// Export and import of a record (Cinder's backup-export / backup-import)

const EXPORT_FORMAT = 'gbackup-chunked-export';

/** A backup's record as one opaque string, for moving a catalog entry to another deployment. */
export async function exportRecord(store: ObjectStore, backupId: string): Promise<string> {
  const m = await readMetadata(store, backupId);
  if (!m) throw new BackupNotFound(`backup '${backupId}' is not in ${store.location}`);
  return Buffer.from(JSON.stringify({ format: EXPORT_FORMAT, formatVersion: FORMAT_VERSION, metadata: m })).toString('base64url');
}

export function decodeRecord(text: string): BackupMetadata {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(text.trim(), 'base64url').toString('utf8'));
  } catch {
    throw new UnsupportedFormat('the exported backup record is not a gbackup export (not base64url JSON)');
  }
  const r = raw as { format?: unknown; formatVersion?: unknown; metadata?: unknown } | null;
  if (typeof r !== 'object' || r === null || r.format !== EXPORT_FORMAT) throw new UnsupportedFormat('the exported backup record is not a gbackup export');
  if (r.formatVersion !== FORMAT_VERSION) throw new UnsupportedFormat(`the exported backup record has format version ${String(r.formatVersion)}; this gbackup reads ${FORMAT_VERSION}`);
  return parseMetadata(r.metadata, 'the exported backup record');
}

/**
 * Makes an exported backup usable in this target: its chunks (and its parent) must already
 * be here, e.g. a bucket copied to another site. Writes the metadata unless an identical
 * record is there; returns it for the catalog. Checks that every chunk it lists exists.
 */
export async function importRecord(opts: { target: ChunkedTarget; record: string; checkChunks?: boolean; concurrency?: number }): Promise<BackupMetadata> {
  const { store } = opts.target;
  const m = decodeRecord(opts.record);
  const existing = await readMetadata(store, m.backupId);
  if (existing) {
    const same = JSON.stringify({ ...existing, completedAt: '' }) === JSON.stringify({ ...m, completedAt: '' });
    if (!same) throw new ImportConflict(`target '${opts.target.name}' already holds a different backup '${m.backupId}'`);
    return existing;
  }
  if (m.parent !== null) {
    await loadChain(store, m.parent).catch((e: unknown) => {
      throw e instanceof BackupNotFound ? new BackupChainBroken(`backup '${m.backupId}' cannot be imported before its parent '${m.parent}': ${e.message}`) : e;
    });
  }
  if (opts.checkChunks ?? true) {
    const missing: string[] = [];
    await forEachLimited(Math.max(1, opts.concurrency ?? 8), m.chunks.length, async (i) => {
      const e = m.chunks[i]!;
      if (!(await store.exists(keys.chunk(m.chunkSpace, e.sha256)))) missing.push(chunkLabel(e.offset, e.sha256));
    });
    if (missing.length > 0) {
      throw new BackupChainBroken(
        `backup '${m.backupId}' cannot be imported into target '${opts.target.name}': ${missing.length} of its chunks are not there (${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', ...' : ''})`,
      );
    }
  }
  await store.put(keys.metadata(m.backupId), Buffer.from(JSON.stringify(m)));
  return m;
}
