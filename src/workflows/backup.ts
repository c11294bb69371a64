/**
 * backupVolume: the generic backup of the spec, as a saga.
 *
 *   validate -> mark source backing-up -> create destination volume on the target
 *   -> attach both to a node -> dd -> detach both -> finalize (record + statuses)
 *
 * Every step pushes its undo first; on failure or cancel the undos run in reverse, so
 * no attachment or half-made volume survives, and the source returns to its status.
 */
import { CancellationScope, log, patched, upsertSearchAttributes, uuid4 } from '@temporalio/workflow';
import { BackupVolumeInput, SEARCH_ATTRIBUTES, type BackupResult } from '../api.js';
import { activities, compensation as defaultCompensation, control } from './activities.js';
import { failureReason, parseInput, Tracker } from './common.js';
import { runDataPath } from './datapath.js';
import { runOnAttached } from './objectpath.js';
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
    // beginBackup claims the volume and records the backup in one transaction; should it fail
    // or be cancelled after that commit, this undo puts both back (it finds nothing otherwise).
    // Versioned: histories from before it had no undo here.
    const undoBegin = patched('fail-backup-after-begin');
    if (undoBegin) saga.add('fail backup', () => defaultCompensation.failBackup({ backupId, reason }));
    const plan = await control.beginBackup({
      backupId,
      volumeId: input.volumeId,
      target: input.target,
      name: input.name,
      force: input.force,
      snapshotId: input.snapshotId,
      ...(input.incremental !== undefined ? { incremental: input.incremental } : {}),
    });
    const { control: ctl, compensation } = activities(plan.timeouts);
    if (!undoBegin) saga.add('fail backup', () => compensation.failBackup({ backupId, reason }));
    if (plan.tempSnapshot) {
      const snapshotId = plan.tempSnapshot.name;
      // Removed on every outcome: by the saga on failure or cancel, right after finalize on success.
      saga.add('delete temporary snapshot', () => compensation.deleteSnapshot({ snapshotId }));
      tracker.phase('snapshotting in-use volume');
      await ctl.createTempSnapshot({ backupId, volumeId: input.volumeId });
    }
    upsertSearchAttributes([
      { key: SEARCH_ATTRIBUTES.target, value: plan.target },
      { key: SEARCH_ATTRIBUTES.backend, value: plan.source.backend },
    ]);
    tracker.state.bytesTotal = plan.size;

    let result: { storedBytes: number; method: string; node: string | null; parentId?: string | null };
    const objectTarget = plan.objectTarget ?? null;
    if (objectTarget !== null) {
      // Chunks, metadata and journal of this backup; chunks other backups share stay.
      saga.add('delete stored objects', () => compensation.deleteObjectBackup({ target: objectTarget, backupId }));
      const acts = activities(plan.timeouts);
      const stored = await runOnAttached({
        volume: plan.source,
        readOnly: true,
        key: backupId,
        tracker,
        acts,
        run: (node, connection) =>
          node.copy.backupToObjects({
            source: connection,
            target: objectTarget,
            backupId,
            volumeId: input.volumeId,
            size: plan.size,
            incremental: plan.incremental === true,
            ...(input.name !== undefined ? { name: input.name } : {}),
            labels: { volumeName: plan.volume.name, backend: plan.volume.backend, ...(plan.volume.pool ? { pool: plan.volume.pool } : {}) },
            bpsLimit: tracker.currentLimit(),
          }),
      });
      tracker.state.lastCopy = { resumedFrom: stored.resumedFrom, bytesCopied: stored.bytesRead, storedBytes: stored.storedBytes, node: stored.node };
      tracker.state.bytesDone = plan.size;
      result = { storedBytes: stored.storedBytes, method: 'chunked', node: stored.node, parentId: stored.parentId };
    } else {
      const dest = plan.dest!;
      saga.add('delete destination', () => compensation.deleteBackendVolume({ loc: dest }));
      // The driver's own copy when its storage can do it (btrfs reflinks), else the spec's generic path.
      tracker.phase('storage-assisted copy');
      const assisted = await ctl.storageAssistedCopy({ source: plan.source, dest, size: plan.size });
      if (assisted.assisted) {
        result = { storedBytes: assisted.storedBytes, method: 'storage-assisted', node: null };
      } else {
        tracker.phase('creating destination');
        await ctl.createBackendVolume({ loc: dest, size: plan.size });
        const copied = await runDataPath({ source: plan.source, dest, size: plan.size, sparse: true, key: backupId, tracker, acts: activities(plan.timeouts) });
        result = { storedBytes: copied.storedBytes, method: 'generic', node: copied.node };
      }
    }

    tracker.phase('finalizing');
    const backup = await ctl.finalizeBackup({ backupId, ...result });
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
    reason = failureReason(err);
    tracker.phase(`failed: ${reason}`);
    await saga.unwind();
    tracker.status('error');
    throw err;
  }
}
