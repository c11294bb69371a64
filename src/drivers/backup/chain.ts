/**
 * Reading what a target holds: metadata, pending records and journals of every backup; chains of incrementals and the key they need.
 */
import { BackupNotFound } from '../../errors.js';
import { dataKey, keyFingerprint } from './codec.js';
import { BackupChainBroken, MissingKey, ObjectNotFound, UnsupportedFormat, WrongKey } from './errors.js';
import { BackupMetadata, ChunkView, JournalRecord, keys, parseBackupKey, parseJson, parseMetadata, PendingRecord } from './format.js';
import { forEachLimited } from './pool.js';
import { type ObjectStore } from './stores/store.js';
import { ChunkedTarget } from './target.js';

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

export async function readMetadata(store: ObjectStore, backupId: string): Promise<BackupMetadata | null> {
  try {
    return parseMetadata(await getJson(store, keys.metadata(backupId)), `${store.location}${keys.metadata(backupId)}`);
  } catch (e) {
    if (e instanceof ObjectNotFound) return null;
    throw e;
  }
}

export async function readPending(store: ObjectStore, backupId: string): Promise<PendingRecord | null> {
  try {
    const r = PendingRecord.safeParse(await getJson(store, keys.pending(backupId)));
    return r.success ? r.data : null;
  } catch (e) {
    if (e instanceof ObjectNotFound || e instanceof UnsupportedFormat) return null;
    throw e;
  }
}

/** Every backup the target knows of, complete or not, from one listing of `backups/`. */
export async function scanBackups(store: ObjectStore): Promise<Map<string, StoredBackup>> {
  const found = new Map<string, { files: Set<string>; journals: string[] }>();
  for await (const key of store.list(keys.backupsPrefix)) {
    const p = parseBackupKey(key);
    if (!p) continue;
    let f = found.get(p.backupId);
    if (!f) found.set(p.backupId, (f = { files: new Set(), journals: [] }));
    if (p.rest.startsWith('journal/')) f.journals.push(key);
    else f.files.add(p.rest);
  }
  // Read 8 at a time: one round trip after another made a target of a few hundred backups
  // cost seconds before every incremental.
  const entries = [...found];
  const records: StoredBackup[] = new Array<StoredBackup>(entries.length);
  await forEachLimited(8, entries.length, async (i) => {
    const [backupId, f] = entries[i]!;
    const [metadata, pending] = await Promise.all([
      f.files.has('metadata.json') ? readMetadata(store, backupId) : null,
      f.files.has('pending.json') ? readPending(store, backupId) : null,
    ]);
    records[i] = { backupId, metadata, pending, deleting: f.files.has('deleting.json'), journals: f.journals.sort() };
  });
  return new Map(records.map((r) => [r.backupId, r]));
}

export async function readJournals(store: ObjectStore, journalKeys: string[]): Promise<JournalRecord[]> {
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

/** A backup's chain, root first. `known`: the backup's own metadata, if the caller has just read it. */
export async function loadChain(store: ObjectStore, backupId: string, known?: BackupMetadata | null): Promise<BackupMetadata[]> {
  const chain: BackupMetadata[] = [];
  const seen = new Set<string>();
  let id: string | null = backupId;
  while (id !== null) {
    if (seen.has(id)) throw new BackupChainBroken(`backup '${backupId}': its chain loops at '${id}'`);
    seen.add(id);
    const m: BackupMetadata | null = id === backupId && known?.backupId === backupId ? known : await readMetadata(store, id);
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
