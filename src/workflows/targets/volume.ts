/**
 * A volume target: the spec's generic path. A backup is a volume on the target's backend
 * (and pool), made by the driver's storage-assisted copy when the storage can (btrfs
 * reflinks), else by attaching source and destination to a node and copying with dd.
 */
import { CancellationScope } from '@temporalio/workflow';
import { runDataPath, terminateConnections } from '../datapath.js';
import type { BackupTarget } from './target.js';

export const volumeTarget: BackupTarget = {
  async backup({ plan, backupId, tracker, saga, acts }) {
    const { control: ctl, compensation } = acts;
    const dest = plan.dest!;
    saga.add('delete destination', () => compensation.deleteBackendVolume({ loc: dest }));
    if (acts.versions.prepareInOne) {
      // Undone on failure whether or not they were opened (idempotent; nothing for local files).
      saga.add('terminate connections', () => terminateConnections(compensation, plan.source, dest));
      tracker.phase('preparing copy');
      const prepared = await ctl.prepareCopy({ source: plan.source, dest, size: plan.size, create: true, key: backupId });
      if (prepared.assisted) return { storedBytes: prepared.storedBytes, method: 'storage-assisted', node: null };
      const copied = await runDataPath({ source: plan.source, dest, size: plan.size, sparse: true, key: backupId, tracker, acts, prepared });
      return { storedBytes: copied.storedBytes, method: 'generic', node: copied.node };
    }
    // The driver's own copy when its storage can do it (btrfs reflinks), else the spec's generic path.
    tracker.phase('storage-assisted copy');
    const assisted = await ctl.storageAssistedCopy({ source: plan.source, dest, size: plan.size });
    if (assisted.assisted) return { storedBytes: assisted.storedBytes, method: 'storage-assisted', node: null };
    tracker.phase('creating destination');
    await ctl.createBackendVolume({ loc: dest, size: plan.size });
    const copied = await runDataPath({ source: plan.source, dest, size: plan.size, sparse: true, key: backupId, tracker, acts });
    return { storedBytes: copied.storedBytes, method: 'generic', node: copied.node };
  },

  async restore({ plan, tracker, acts, touched }) {
    const ctl = acts.control;
    const source = plan.source!;
    if (acts.versions.prepareInOne && plan.createdVolume) {
      // A new volume (its undo, delete, is the workflow's): made, or cloned, in one step with the rest.
      const { compensation } = acts;
      tracker.phase('preparing copy');
      const prepared = await ctl.prepareCopy({ source, dest: plan.dest, size: plan.size, create: true, key: plan.volumeId }).catch(async (e: unknown) => {
        // What it may have opened is released (idempotent; nothing for local files), also when cancelled.
        await CancellationScope.nonCancellable(() => terminateConnections(compensation, source, plan.dest));
        throw e;
      });
      if (prepared.assisted) return;
      await runDataPath({ source, dest: plan.dest, size: plan.size, sparse: true, key: plan.volumeId, tracker, acts, onCopyStart: touched, prepared });
      return;
    }
    tracker.phase('storage-assisted copy');
    // A clone replaces the destination's contents whole: from here on an existing volume is touched.
    if (!plan.createdVolume) touched();
    const assisted = await ctl.storageAssistedCopy({ source, dest: plan.dest, size: plan.size });
    if (assisted.assisted) return;
    if (plan.createdVolume) {
      tracker.phase('creating volume');
      await ctl.createBackendVolume({ loc: plan.dest, size: plan.size });
    } else {
      // The old contents must not shine through where the backup has holes.
      await ctl.clearBackendVolume({ loc: plan.dest });
    }
    await runDataPath({ source, dest: plan.dest, size: plan.size, sparse: true, key: plan.volumeId, tracker, acts, onCopyStart: touched });
  },

  async delete({ begun, control }) {
    if (begun.location) await control.deleteBackendVolume({ loc: begun.location });
  },
};
