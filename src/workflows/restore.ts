/**
 * restoreBackup: a backup taken on storage A onto a volume on any storage B, either a
 * new volume (backend + pool) or an existing `available` volume at least as large.
 * Same saga shape as the backup; the backup itself is only read and stays `available`.
 */
import { patched, upsertSearchAttributes, uuid4 } from '@temporalio/workflow';
import { RestoreBackupInput, SEARCH_ATTRIBUTES, type RestoreResult } from '../api.js';
import { activities, commit, control, localControl, stepVersions } from './activities.js';
import { failureReason, isDamagedBackup, parseInput, Tracker } from './common.js';
import { backupTargetFor } from './targets/index.js';
import { Saga } from './saga.js';

export async function restoreBackup(raw: RestoreBackupInput): Promise<RestoreResult> {
  const input = parseInput(RestoreBackupInput, raw);
  const newVolumeId = input.newVolumeId ?? `vol-${uuid4().replace(/-/g, '').slice(0, 12)}`;
  const tracker = new Tracker({ backupId: input.backupId, volumeId: input.volumeId ?? newVolumeId }, input.bpsLimit ?? null);
  // Control steps as local activities (see activities.ts); histories from before as they ran then.
  const mode = patched('local-control-steps') ? 'local' : 'remote';
  const versions = stepVersions(mode);
  const identity = [
    { key: SEARCH_ATTRIBUTES.backupId, value: input.backupId },
    { key: SEARCH_ATTRIBUTES.volumeId, value: input.volumeId ?? newVolumeId },
    { key: SEARCH_ATTRIBUTES.status, value: 'restoring' },
  ];
  // Local mode: one upsert with the backend after begin (see backup.ts).
  let searchable = mode === 'remote';
  if (searchable) upsertSearchAttributes(identity);
  const saga = new Saga();
  let reason = '';
  let dataTouched = false;
  let keepVolume = false;
  try {
    tracker.phase('validating');
    const plan = await (mode === 'local' ? localControl : control).beginRestore({ ...input, newVolumeId });
    const acts = activities(plan.timeouts, mode, versions);
    const { control: ctl, compensation } = acts;
    saga.add('fail restore', () =>
      compensation.failRestore({
        backupId: plan.backupId,
        volumeId: plan.volumeId,
        createdVolume: plan.createdVolume,
        dataTouched,
        reason,
        ...(keepVolume ? { keepVolume } : {}),
      }),
    );
    upsertSearchAttributes([...(searchable ? [] : identity), { key: SEARCH_ATTRIBUTES.backend, value: plan.dest.backend }]);
    searchable = true;
    tracker.state.bytesTotal = plan.size;

    if (plan.createdVolume) saga.add('delete new volume', async () => (keepVolume ? undefined : compensation.deleteBackendVolume({ loc: plan.dest })));
    await backupTargetFor(plan).restore({ plan, tracker, acts, touched: () => (dataTouched = true) });

    tracker.phase('finalizing');
    const finalize = { backupId: plan.backupId, volumeId: plan.volumeId };
    const volume = mode === 'local' ? await commit(acts, (c) => c.finalizeRestore(finalize)) : await ctl.finalizeRestore(finalize);
    tracker.phase('done');
    tracker.status('available');
    return { volume, backupId: plan.backupId };
  } catch (err) {
    if (!searchable) upsertSearchAttributes(identity);
    reason = failureReason(err);
    // A damaged backup (object targets): the volume stays, in error, naming the chunk (Cinder's error_restoring).
    keepVolume = isDamagedBackup(err);
    tracker.phase(`failed: ${reason}`);
    await saga.unwind();
    tracker.status('error');
    throw err;
  }
}
