/**
 * Deleting a backup and the chunks no other backup uses.
 */
import { BackupHasDependents, ObjectRetained } from './errors.js';
import { refuseWhileRetained } from './lock.js';
import { keys } from './format.js';
import { listAll } from './stores/store.js';
import { ChunkedTarget } from './target.js';
import { forEachLimited } from './pool.js';
import { readJournals, scanBackups } from './chain.js';
import { announceDelete } from './gc.js';

export interface DeleteBackupResult {
  /** False when there was nothing of the backup in the target (already deleted). */
  deleted: boolean;
  chunksDeleted: number;
  /** Chunks of this backup that other backups still use. */
  chunksShared: number;
  /** Chunks left because S3 Object Lock still holds them (a failed backup's, say); a later delete can take them. */
  chunksRetained?: number;
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
  const store = opts.target.store;
  // Nothing of it stored: nothing to remove and nothing to announce, so a repeated delete
  // changes nothing. A locked backup is refused before anything is written, announcement too.
  const present = await listAll(store, keys.backupDir(opts.backupId));
  if (present.length === 0) return { deleted: false, chunksDeleted: 0, chunksShared: 0 };
  if (present.includes(keys.metadata(opts.backupId))) await refuseWhileRetained(store, opts.target.name, opts.backupId);
  // Announced before the scan, so a backup writing its metadata meanwhile finds out (gc.ts).
  const announced = await announceDelete(store, opts.backupId);
  try {
    return await deleteScanned(opts);
  } finally {
    // Kept (marked finished) even when no backup seemed to run: an incremental may have
    // chosen this very backup as its parent and not yet said so (gc.ts).
    await announced.finish();
  }
}

async function deleteScanned(opts: Parameters<typeof deleteBackup>[0]): Promise<DeleteBackupResult> {
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
  // (A locked backup was refused before the announcement: it stays exactly as it was.)
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
  let chunksRetained = 0;
  await forEachLimited(Math.max(1, opts.concurrency ?? 8), doomed.length, (i) =>
    store.delete(doomed[i]!).catch((e: unknown) => {
      // Unused but still locked (stored by a backup that failed): it can only go later.
      if (!(e instanceof ObjectRetained)) throw e;
      chunksRetained++;
    }),
  );
  for (const k of me.journals) await store.delete(k);
  await store.delete(keys.pending(backupId));
  await store.delete(keys.metadata(backupId));
  await store.delete(keys.deleting(backupId));
  return { deleted: true, chunksDeleted: doomed.length - chunksRetained, chunksShared: shared.size, ...(chunksRetained > 0 ? { chunksRetained } : {}) };
}
