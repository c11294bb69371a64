/**
 * Export and import of a backup's record (Cinder's backup-export / backup-import).
 */
import { BackupNotFound } from '../../errors.js';
import { BackupChainBroken, ImportConflict, UnsupportedFormat } from './errors.js';
import { BackupMetadata, FORMAT_VERSION, keys, parseMetadata } from './format.js';
import { type ObjectStore } from './stores/store.js';
import { ChunkedTarget } from './target.js';
import { chunkLabel, forEachLimited } from './pool.js';
import { loadChain, readMetadata } from './chain.js';

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
