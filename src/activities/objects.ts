/**
 * Control activities of the object targets (posix, s3): what needs the store but no
 * volume attached — deleting a backup's objects and verifying one. They run on the shared
 * task queue; every control worker reads the same credentials and key files.
 */
import { Context } from '@temporalio/activity';
import { deleteBackup } from '../drivers/backup/prune.js';
import { verifyBackup, type VerifyResult } from '../drivers/backup/verify.js';
import { InvalidInput, InvalidStatus } from '../errors.js';
import type { Runtime } from '../services/runtime.js';
import { backupKind } from '../services/target-kinds.js';

export function createObjectActivities(rt: Pick<Runtime, 'catalog' | 'driver' | 'objectTarget' | 'isObjectTarget'>) {
  return {
    /**
     * Removes a backup's objects (its metadata, and the chunks no other backup uses);
     * nothing there is success, so a retry or a compensation after a partial run is safe.
     */
    async deleteObjectBackup(input: { target: string; backupId: string }): Promise<{ chunksDeleted: number; chunksShared: number }> {
      const t = await rt.objectTarget(input.target);
      const r = await deleteBackup({ target: t, backupId: input.backupId });
      return { chunksDeleted: r.chunksDeleted, chunksShared: r.chunksShared };
    },

    /** Which target holds the backup, refusing backups verify cannot read. */
    async beginVerify(input: { backupId: string }): Promise<{ target: string }> {
      const b = await rt.catalog.backup(input.backupId);
      if (!rt.isObjectTarget(b.target)) {
        throw new InvalidInput(`backup '${b.id}' is on volume target '${b.target}'; verify reads the chunk hashes of posix and s3 targets`);
      }
      if (b.status !== 'available' && b.status !== 'restoring') {
        throw new InvalidStatus(`backup '${b.id}' is '${b.status}'; only a complete backup can be verified`);
      }
      // The chain and the key, before anything is read.
      await backupKind(rt, b).checkReadable(rt, b);
      return { target: b.target };
    },

    /**
     * Reads every chunk back and checks its hash; BackupCorrupt names each bad chunk. A
     * sound backup is marked verified: retention always keeps the newest verified one. The
     * mark is the time the activity was first scheduled, so a retry writes the same value.
     */
    async verifyObjectBackup(input: { target: string; backupId: string }): Promise<VerifyResult> {
      const t = await rt.objectTarget(input.target);
      const r = await verifyBackup({ target: t, backupId: input.backupId, signal: Context.current().cancellationSignal });
      await rt.catalog.markBackupVerified(input.backupId, new Date(Context.current().info.scheduledTimestampMs).toISOString());
      return r;
    },
  };
}
