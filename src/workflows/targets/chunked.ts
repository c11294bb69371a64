/**
 * A chunked target (posix directory, S3): only the volume is attached, on a node that
 * reaches its backend, and the node's engine moves chunks to or from the store.
 */
import { runOnAttached } from '../objectpath.js';
import type { BackupTarget } from './target.js';

export const chunkedTarget: BackupTarget = {
  async backup({ plan, backupId, volumeId, name, tracker, saga, acts }) {
    const objectTarget = plan.objectTarget!;
    // Chunks, metadata and journal of this backup; chunks other backups share stay.
    saga.add('delete stored objects', () => acts.compensation.deleteObjectBackup({ target: objectTarget, backupId }));
    // Changed-block tracking: compare the kept clone of the parent with this backup's snapshot.
    const found = acts.mode === 'local' && plan.changeTracking === true && plan.incremental === true ? await acts.control.findChanges({ backupId }) : null;
    const stored = await runOnAttached({
      volume: plan.source,
      readOnly: true,
      key: backupId,
      tracker,
      acts,
      run: (node, connection, attach) =>
        node.copy.backupToObjects({
          ...attach,
          source: connection,
          target: objectTarget,
          backupId,
          volumeId,
          size: plan.size,
          incremental: plan.incremental === true,
          ...(found?.parentId ? { parentId: found.parentId, ...(found.changed ? { changed: found.changed } : {}) } : {}),
          ...(name !== undefined ? { name } : {}),
          labels: { volumeName: plan.volume.name, backend: plan.volume.backend, ...(plan.volume.pool ? { pool: plan.volume.pool } : {}) },
          bpsLimit: tracker.currentLimit(),
        }),
    });
    tracker.state.lastCopy = { resumedFrom: stored.resumedFrom, bytesCopied: stored.bytesRead, storedBytes: stored.storedBytes, node: stored.node };
    tracker.state.bytesDone = plan.size;
    // 'cbt' read only the changed ranges; 'hash' read everything (with why, when tracking was tried); 'full' had no parent.
    const changes = stored.parentId === null ? 'full' : found?.parentId ? 'cbt' : (found?.changes ?? 'hash');
    return { storedBytes: stored.storedBytes, method: 'chunked', node: stored.node, parentId: stored.parentId, ...(acts.mode === 'local' ? { changes } : {}) };
  },

  async restore({ plan, tracker, acts, touched }) {
    const ctl = acts.control;
    const objectTarget = plan.objectTarget!;
    if (plan.createdVolume) {
      tracker.phase('creating volume');
      await ctl.createBackendVolume({ loc: plan.dest, size: plan.size });
    } else {
      // The old contents must not shine through where the backup has zeros.
      touched();
      await ctl.clearBackendVolume({ loc: plan.dest });
    }
    const r = await runOnAttached({
      volume: plan.dest,
      readOnly: false,
      key: plan.volumeId,
      tracker,
      acts,
      onCopyStart: touched,
      run: (node, connection, attach) =>
        node.copy.restoreFromObjects({ ...attach, dest: connection, target: objectTarget, backupId: plan.backupId, size: plan.size, destIsZero: true, bpsLimit: tracker.currentLimit() }),
    });
    tracker.state.lastCopy = { resumedFrom: r.resumedFrom, bytesCopied: r.bytesWritten, storedBytes: r.bytesFetched, node: r.node };
    tracker.state.bytesDone = plan.size;
  },

  async delete({ begun, backupId, control }) {
    // The store refuses when other backups (say, imported ones) build on this one.
    await control.deleteObjectBackup({ target: begun.objectTarget!, backupId });
  },
};
