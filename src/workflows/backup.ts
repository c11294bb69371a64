/**
 * backupVolume: the generic backup of the spec, as a saga.
 *
 *   validate -> mark source backing-up -> [temporary snapshot] -> store on the target
 *   -> finalize (record + statuses) -> [remove the temporary snapshot]
 *
 * How a target stores a backup (a volume made and copied with dd, or chunks in an object
 * store) is the target's business: targets/.
 *
 * Every step pushes its undo first; on failure or cancel the undos run in reverse, so
 * no attachment or half-made volume survives, and the source returns to its status.
 */
import { CancellationScope, log, patched, upsertSearchAttributes, uuid4 } from '@temporalio/workflow';
import { BackupVolumeInput, SEARCH_ATTRIBUTES, type BackupResult } from '../api.js';
import { activities, commit, compensation as defaultCompensation, control, localCompensation, localControl, stepVersions } from './activities.js';
import { failureReason, parseInput, Tracker } from './common.js';
import { backupTargetFor } from './targets/index.js';
import { Saga } from './saga.js';

export async function backupVolume(raw: BackupVolumeInput): Promise<BackupResult> {
  const input = parseInput(BackupVolumeInput, raw);
  const backupId = input.backupId ?? `bak-${uuid4().replace(/-/g, '').slice(0, 12)}`;
  const tracker = new Tracker({ backupId, volumeId: input.volumeId }, input.bpsLimit ?? null);
  // Control steps as local activities and one node activity per data path (see
  // activities.ts); histories from before run their steps as they did then.
  const mode = patched('local-control-steps') ? 'local' : 'remote';
  const versions = stepVersions(mode);
  const identity = [
    { key: SEARCH_ATTRIBUTES.backupId, value: backupId },
    { key: SEARCH_ATTRIBUTES.volumeId, value: input.volumeId },
    { key: SEARCH_ATTRIBUTES.status, value: 'creating' },
  ];
  // Local mode: begin runs inside this workflow task, so these go with the target and
  // backend in one upsert after it (each upsert is a visibility write on the server);
  // a begin that fails upserts them on its way out.
  let searchable = mode === 'remote';
  if (searchable) upsertSearchAttributes(identity);
  const saga = new Saga();
  let reason = '';
  const first = mode === 'local' ? { control: localControl, compensation: localCompensation } : { control, compensation: defaultCompensation };
  try {
    tracker.phase('validating');
    // beginBackup claims the volume and records the backup in one transaction; should it fail
    // or be cancelled after that commit, this undo puts both back (it finds nothing otherwise).
    // Versioned: histories from before it had no undo here (local mode always has it).
    const undoBegin = mode === 'local' || patched('fail-backup-after-begin');
    if (undoBegin) saga.add('fail backup', () => first.compensation.failBackup({ backupId, reason }));
    const plan = await first.control.beginBackup({
      backupId,
      volumeId: input.volumeId,
      target: input.target,
      name: input.name,
      force: input.force,
      snapshotId: input.snapshotId,
      ...(input.incremental !== undefined ? { incremental: input.incremental } : {}),
      ...(input.policy !== undefined ? { policy: input.policy, scheduledAt: input.scheduledAt } : {}),
      // Only in the activity's input (no new command): replay-safe for recorded histories.
      ...(input.groupId !== undefined ? { groupId: input.groupId } : {}),
    });
    const acts = activities(plan.timeouts, mode, versions);
    const { control: ctl, compensation } = acts;
    if (!undoBegin) saga.add('fail backup', () => compensation.failBackup({ backupId, reason }));
    if (plan.tempSnapshot) {
      const snapshotId = plan.tempSnapshot.name;
      // Removed on every outcome: by the saga on failure or cancel, right after finalize on success.
      saga.add('delete temporary snapshot', () => compensation.deleteSnapshot({ snapshotId }));
      tracker.phase('snapshotting in-use volume');
      await ctl.createTempSnapshot({ backupId, volumeId: input.volumeId });
    }
    upsertSearchAttributes([
      ...(searchable ? [] : identity),
      { key: SEARCH_ATTRIBUTES.target, value: plan.target },
      { key: SEARCH_ATTRIBUTES.backend, value: plan.source.backend },
    ]);
    searchable = true;
    tracker.state.bytesTotal = plan.size;

    const result = await backupTargetFor(plan).backup({ plan, backupId, volumeId: input.volumeId, name: input.name, tracker, saga, acts });

    tracker.phase('finalizing');
    const finalize = { backupId, ...result, ...(mode === 'local' && plan.changeTracking ? { keepChangeBase: true } : {}) };
    const backup = mode === 'local' ? await commit(acts, (c) => c.finalizeBackup(finalize)) : await ctl.finalizeBackup(finalize);
    // The backup is available now: nothing may undo it any more.
    saga.clear();
    if (plan.tempSnapshot) {
      tracker.phase('removing temporary snapshot');
      const snapshotId = plan.tempSnapshot.name;
      // The backup stands whatever happens here; a snapshot that cannot be removed now
      // is found by the control worker's sweep (it carries the backup id).
      await CancellationScope.nonCancellable(() => compensation.deleteSnapshot({ snapshotId })).catch((e: unknown) =>
        log.warn('temporary snapshot not removed; the sweep will', { snapshotId, error: String(e) }),
      );
    }
    tracker.phase('done');
    tracker.status('available');
    return { backup };
  } catch (err) {
    if (!searchable) upsertSearchAttributes(identity);
    reason = failureReason(err);
    tracker.phase(`failed: ${reason}`);
    await saga.unwind();
    tracker.status('error');
    throw err;
  }
}
