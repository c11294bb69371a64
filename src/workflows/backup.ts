/**
 * backupVolume: the generic backup of the spec, as a saga.
 *
 *   validate -> mark source backing-up -> create destination volume on the target
 *   -> attach both to a node -> dd -> detach both -> finalize (record + statuses)
 *
 * Every step pushes its undo first; on failure or cancel the undos run in reverse, so
 * no attachment or half-made volume survives, and the source returns to its status.
 */
import { upsertSearchAttributes, uuid4 } from '@temporalio/workflow';
import { BackupVolumeInput, SEARCH_ATTRIBUTES, type BackupResult } from '../api.js';
import { compensation, control } from './activities.js';
import { failureReason, parseInput, Tracker } from './common.js';
import { runDataPath } from './datapath.js';
import { Saga } from './saga.js';

export async function backupVolume(raw: BackupVolumeInput): Promise<BackupResult> {
  const input = parseInput(BackupVolumeInput, raw);
  const backupId = input.backupId ?? `bak-${uuid4().replace(/-/g, '').slice(0, 12)}`;
  const tracker = new Tracker({ backupId, volumeId: input.volumeId });
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.backupId, value: backupId },
    { key: SEARCH_ATTRIBUTES.volumeId, value: input.volumeId },
    { key: SEARCH_ATTRIBUTES.status, value: 'creating' },
  ]);
  const saga = new Saga();
  let reason = '';
  try {
    tracker.phase('validating');
    const plan = await control.beginBackup({ backupId, volumeId: input.volumeId, target: input.target, name: input.name });
    saga.add('fail backup', () => compensation.failBackup({ backupId, reason }));
    upsertSearchAttributes([
      { key: SEARCH_ATTRIBUTES.target, value: plan.target },
      { key: SEARCH_ATTRIBUTES.backend, value: plan.source.backend },
    ]);
    tracker.state.bytesTotal = plan.size;

    tracker.phase('creating destination');
    saga.add('delete destination', () => compensation.deleteBackendVolume({ loc: plan.dest }));
    await control.createBackendVolume({ loc: plan.dest, size: plan.size });

    const copied = await runDataPath({ source: plan.source, dest: plan.dest, size: plan.size, sparse: true, key: backupId, tracker });

    tracker.phase('finalizing');
    const backup = await control.finalizeBackup({ backupId, storedBytes: copied.storedBytes, method: 'generic', node: copied.node });
    tracker.phase('done');
    tracker.status('available');
    return { backup };
  } catch (err) {
    reason = failureReason(err);
    tracker.phase(`failed: ${reason}`);
    await saga.unwind();
    tracker.status('error');
    throw err;
  }
}
