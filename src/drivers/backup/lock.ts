/**
 * S3 Object Lock and deletes: a backup whose metadata object is still locked is refused
 * before anything is touched (no `deleting` marker, no chunk gone), with the date after
 * which it can go. Its chunks are locked at least as long (backup.ts extends re-used
 * ones), so the metadata's lock is the backup's.
 */
import { BackupRetained } from './errors.js';
import { keys } from './format.js';
import type { ObjectStore } from './stores/store.js';

/** Throws BackupRetained while the backup's metadata object is locked at `now`. */
export async function refuseWhileRetained(store: ObjectStore, target: string, backupId: string, now: Date = new Date()): Promise<void> {
  if (!store.objectLock || !store.retention) return;
  const held = await store.retention(keys.metadata(backupId));
  if (held === null || held.retainUntil.getTime() <= now.getTime()) return;
  const until = held.retainUntil.toISOString();
  throw new BackupRetained(
    `backup '${backupId}' is retained by S3 Object Lock until ${until} (target ${target}, mode ${held.mode}); it can be deleted after that`,
    until,
    target,
  );
}
