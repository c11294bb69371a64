/**
 * copyBackup: a backup copied to a second target, where it is a backup of its own (new
 * id, same volume and size, `copyOf` = the source). The source is claimed `restoring`
 * while read. Four routes, by the kinds of the two targets:
 * - object -> object: decoded and stored again with the destination's key and compression
 *   (one control step, copyObjects), as an incremental on the newest backup of the volume
 *   already in the destination, so chunks it holds are not uploaded again;
 * - volume -> object: the backup volume attached on a node and stored as chunks (the
 *   engine of backups, backupToObjects);
 * - object -> volume: a new volume on the destination's backend, restored into (the
 *   engine of restores, restoreFromObjects);
 * - volume -> volume: dd between the two backup volumes (the generic data path).
 * Every step pushes its undo first: a failed or cancelled copy leaves no objects, volume,
 * attachment or catalog row, and the source back `available`.
 */
import { ApplicationFailure, uuid4 } from '@temporalio/workflow';
import { CopyBackupInput, type CopyBackupResult } from '../api.js';
import { activities, commit, localControl, stepVersions } from './activities.js';
import { failureReason, parseInput, Tracker } from './common.js';
import { runDataPath } from './datapath.js';
import { runOnAttached } from './objectpath.js';
import { Saga } from './saga.js';

export async function copyBackup(raw: CopyBackupInput): Promise<CopyBackupResult> {
  const input = parseInput(CopyBackupInput, raw);
  const versions = stepVersions('local', { prepare: false });
  const copyId = input.copyId ?? `bak-${uuid4().replace(/-/g, '').slice(0, 12)}`;
  const tracker = new Tracker({ backupId: copyId }, null);
  const saga = new Saga();
  try {
    tracker.phase('validating');
    const plan = await localControl.beginCopy({ backupId: input.backupId, target: input.target, copyId, ...(input.name !== undefined ? { name: input.name } : {}), ...(input.policy !== undefined ? { policy: input.policy } : {}) });
    const acts = activities(plan.timeouts, 'local', versions);
    const { control: ctl, compensation } = acts;
    saga.add('fail copy', () => compensation.failCopy({ copyId, backupId: plan.sourceId }));
    tracker.state.volumeId = plan.volumeId;
    tracker.state.bytesTotal = plan.size;
    let done: { storedBytes: number; method: string; node: string | null; parentId?: string | null };
    let chunks: { chunksUploaded: number; chunksSkipped: number } | null = null;

    if (plan.sourceObject !== null && plan.destObject !== null) {
      const destObject = plan.destObject;
      saga.add('delete stored objects', () => compensation.deleteObjectBackup({ target: destObject, backupId: copyId }));
      tracker.phase('copying chunks');
      // A long data step: a regular activity, heartbeating, so a cancel or a lost worker is noticed.
      const r = await activities(plan.timeouts, 'remote').control.copyObjects({
        sourceTarget: plan.sourceObject,
        destTarget: destObject,
        sourceId: plan.sourceId,
        copyId,
        volumeId: plan.volumeId,
        size: plan.size,
        labels: plan.labels,
        ...(input.name !== undefined ? { name: input.name } : {}),
      });
      chunks = { chunksUploaded: r.chunksUploaded, chunksSkipped: r.chunksSkipped };
      done = { storedBytes: r.storedBytes, method: 'chunked', node: null, parentId: r.parentId };
    } else if (plan.source !== null && plan.destObject !== null) {
      const destObject = plan.destObject;
      saga.add('delete stored objects', () => compensation.deleteObjectBackup({ target: destObject, backupId: copyId }));
      const r = await runOnAttached({
        volume: plan.source,
        readOnly: true,
        key: copyId,
        tracker,
        acts,
        run: (node, connection, attach) =>
          node.copy.backupToObjects({
            ...attach,
            source: connection,
            target: destObject,
            backupId: copyId,
            volumeId: plan.volumeId,
            size: plan.size,
            // Builds on the newest backup of the volume already there: its chunks stay where they are.
            incremental: true,
            labels: plan.labels,
            ...(input.name !== undefined ? { name: input.name } : {}),
          }),
      });
      done = { storedBytes: r.storedBytes, method: 'chunked', node: r.node, parentId: r.parentId };
    } else if (plan.sourceObject !== null && plan.dest !== null) {
      const dest = plan.dest;
      saga.add('delete backup volume', () => compensation.deleteBackendVolume({ loc: dest }));
      tracker.phase('creating volume');
      await ctl.createBackendVolume({ loc: dest, size: plan.size });
      const sourceObject = plan.sourceObject;
      const r = await runOnAttached({
        volume: dest,
        readOnly: false,
        key: copyId,
        tracker,
        acts,
        run: (node, connection, attach) =>
          node.copy.restoreFromObjects({ ...attach, dest: connection, target: sourceObject, backupId: plan.sourceId, size: plan.size, destIsZero: true }),
      });
      done = { storedBytes: r.bytesWritten, method: 'generic', node: r.node };
    } else if (plan.source !== null && plan.dest !== null) {
      const dest = plan.dest;
      saga.add('delete backup volume', () => compensation.deleteBackendVolume({ loc: dest }));
      tracker.phase('creating volume');
      await ctl.createBackendVolume({ loc: dest, size: plan.size });
      const r = await runDataPath({ source: plan.source, dest, size: plan.size, sparse: true, key: copyId, tracker, acts });
      done = { storedBytes: r.storedBytes, method: 'generic', node: r.node };
    } else {
      throw ApplicationFailure.nonRetryable(`backup '${plan.sourceId}' has no place to copy from or to`, 'InvalidInput');
    }

    tracker.phase('finalizing');
    const backup = await commit(acts, (c) => c.finalizeCopy({ copyId, ...done }));
    tracker.state.bytesDone = plan.size;
    tracker.phase('done');
    return { backup, chunksUploaded: chunks?.chunksUploaded ?? null, chunksSkipped: chunks?.chunksSkipped ?? null };
  } catch (err) {
    tracker.phase(`failed: ${failureReason(err)}`);
    await saga.unwind();
    throw err;
  }
}
