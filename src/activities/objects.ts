/**
 * Control activities of the object targets (posix, s3): what needs the store but no
 * volume attached — deleting a backup's objects and verifying one. They run on the shared
 * task queue; every control worker reads the same credentials and key files.
 */
import { Context } from '@temporalio/activity';
import { deleteBackup } from '../drivers/backup/prune.js';
import { openChain } from '../drivers/backup/chain.js';
import { verifyBackup, type VerifyResult } from '../drivers/backup/verify.js';
import { type ChunkedTarget } from '../drivers/backup/target.js';
import { InvalidInput, InvalidStatus } from '../errors.js';
import type { Runtime } from '../services/runtime.js';

/**
 * Refuses, before anything is touched, a restore or verify that cannot read the backup:
 * its chain is not all in the target, or it is encrypted and the target's key is missing
 * or is not the key it was written with.
 */
export async function checkReadable(target: ChunkedTarget, backupId: string): Promise<void> {
  await openChain(target, backupId);
}

/** The object-target activities need the catalog and the opened targets only. */
export function createObjectActivities(rt: Pick<Runtime, 'catalog' | 'objectTarget' | 'isObjectTarget'>) {
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
      const b = rt.catalog.backup(input.backupId);
      if (!rt.isObjectTarget(b.target)) {
        throw new InvalidInput(`backup '${b.id}' is on volume target '${b.target}'; verify reads the chunk hashes of posix and s3 targets`);
      }
      if (b.status !== 'available' && b.status !== 'restoring') {
        throw new InvalidStatus(`backup '${b.id}' is '${b.status}'; only a complete backup can be verified`);
      }
      await checkReadable(await rt.objectTarget(b.target), b.id);
      return { target: b.target };
    },

    /** Reads every chunk back and checks its hash; BackupCorrupt names each bad chunk. */
    async verifyObjectBackup(input: { target: string; backupId: string }): Promise<VerifyResult> {
      const t = await rt.objectTarget(input.target);
      return verifyBackup({ target: t, backupId: input.backupId, signal: Context.current().cancellationSignal });
    },
  };
}
