/**
 * A volume target: the spec's generic path. A backup is a volume on the target's backend
 * (and pool), made by the driver's storage-assisted copy when the storage can (btrfs
 * reflinks), else by attaching source and destination to a node and copying with dd.
 */
import { runDataPath } from '../datapath.js';
import type { BackupTarget } from './target.js';

export const volumeTarget: BackupTarget = {
  async backup({ plan, backupId, tracker, saga, acts }) {
    const { control: ctl, compensation } = acts;
    const dest = plan.dest!;
    saga.add('delete destination', () => compensation.deleteBackendVolume({ loc: dest }));
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
