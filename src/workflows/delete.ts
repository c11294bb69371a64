/** deleteBackup: remove a backup's data and record; refused while it is being restored. */
import { patched, upsertSearchAttributes } from '@temporalio/workflow';
import { DeleteBackupInput, SEARCH_ATTRIBUTES } from '../api.js';
import { compensation as remoteCompensation, control as remoteControl, localCompensation, localControl } from './activities.js';
import { failureReason, failureType, parseInput, Tracker } from './common.js';
import { backupTargetFor } from './targets/index.js';

export async function deleteBackup(raw: DeleteBackupInput): Promise<{ backupId: string; deleted: true }> {
  const input = parseInput(DeleteBackupInput, raw);
  const tracker = new Tracker({ backupId: input.backupId });
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.backupId, value: input.backupId },
    { key: SEARCH_ATTRIBUTES.status, value: 'deleting' },
  ]);
  // Control steps as local activities (see activities.ts); histories from before as they ran then.
  const local = patched('local-control-steps');
  const control = local ? localControl : remoteControl;
  const compensation = local ? localCompensation : remoteCompensation;
  tracker.phase('validating');
  const begun = await control.beginDeleteBackup({ backupId: input.backupId });
  try {
    tracker.phase('deleting data');
    await backupTargetFor(begun).delete({ begun, backupId: input.backupId, control });
    await control.finishDeleteBackup({ backupId: input.backupId });
  } catch (err) {
    // Refused before anything was removed: the backup stays 'available'.
    const refused = failureType(err) === 'BackupHasDependents' || failureType(err) === 'BackupRetained';
    await compensation.failDeleteBackup({ backupId: input.backupId, reason: failureReason(err), ...(refused ? { refused } : {}) });
    tracker.status('error');
    throw err;
  }
  tracker.phase('done');
  tracker.status('deleted');
  return { backupId: input.backupId, deleted: true };
}
