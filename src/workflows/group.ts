/**
 * backupGroup: a consistency group. Several volumes are backed up from snapshots all taken
 * at one moment, between a pre hook (say, fsfreeze --freeze) and a post hook (--unfreeze).
 *
 *   plan (every volume, hook and the target checked) -> pre hook -> snapshot each volume
 *   -> post hook -> back up each snapshot (child backupVolume, groupId recorded)
 *   -> delete the snapshots
 *
 * The post hook runs whenever the pre hook was started: after the snapshots, and also
 * when the pre hook or a snapshot fails or the group is cancelled (shielded from the
 * cancel), so a frozen filesystem is never left frozen. Each snapshot's undo is pushed
 * before it is made, so no outcome leaks one. The backups are ordinary backupVolume
 * workflows with their usual ids: one backup per volume at a time holds for groups too.
 */
import { ActivityCancellationType, ActivityFailure, ApplicationFailure, CancellationScope, ChildWorkflowFailure, executeChild, log, proxyActivities, uuid4, workflowInfo } from '@temporalio/workflow';
import { BackupGroupInput, workflowIds, WORKFLOWS, type BackupGroupResult, type BackupResult, type BackupVolumeInput, type BackupView } from '../api.js';
import type { createHookActivities } from '../activities/hooks.js';
import { NON_RETRYABLE_ERROR_TYPES } from '../error-registry.js';
import { nodeTaskQueue } from '../api.js';
import { activities, localControl } from './activities.js';
import { failureReason, parseInput, Tracker } from './common.js';
import { Saga } from './saga.js';

type HookActivities = ReturnType<typeof createHookActivities>;

const shortId = (prefix: string) => `${prefix}-${uuid4().replace(/-/g, '').slice(0, 12)}`;

/** The innermost failure of a child's chain: what the group's error names. */
function childReason(err: unknown): string {
  let e: unknown = err;
  while ((e instanceof ChildWorkflowFailure || e instanceof ActivityFailure) && e.cause) e = e.cause;
  return failureReason(e);
}

export async function backupGroup(raw: BackupGroupInput): Promise<BackupGroupResult> {
  const input = parseInput(BackupGroupInput, raw);
  const groupId = input.groupId ?? shortId('grp');
  const tracker = new Tracker({});
  const saga = new Saga();
  tracker.phase('validating');
  // Unknown hook, missing or busy volume, unknown target: refused here, before any hook runs.
  const plan = await localControl.planGroup({
    groupId,
    volumeIds: input.volumeIds,
    ...(input.target !== undefined ? { target: input.target } : {}),
    ...(input.preHook !== undefined ? { preHook: input.preHook } : {}),
    ...(input.postHook !== undefined ? { postHook: input.postHook } : {}),
  });
  tracker.state.node = plan.node;
  const acts = activities(plan.timeouts, 'local');
  const hookQueue = nodeTaskQueue(workflowInfo().taskQueue, plan.node);
  // A hook is not retried after it ran and failed (HookFailed is permanent): freezing twice
  // is an error of its own. A node that never picks it up times out and fails the group.
  const hooks = (timeoutMs: number | undefined, attempts: number) =>
    proxyActivities<HookActivities>({
      taskQueue: hookQueue,
      startToCloseTimeout: (timeoutMs ?? 60_000) + 30_000,
      scheduleToStartTimeout: plan.timeouts.scheduleToStartMs,
      heartbeatTimeout: plan.timeouts.heartbeatMs,
      // A cancel waits until the hook's process is gone: a post hook (thaw) must not run
      // while the pre hook (freeze) still does, or the freeze would win.
      cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      retry: { initialInterval: '1 second', maximumAttempts: attempts, nonRetryableErrorTypes: NON_RETRYABLE_ERROR_TYPES },
    });
  const hookArgs = { groupId, volumeIds: input.volumeIds };

  let preStarted = false;
  let postDone = false;
  // The post hook (thaw) is retried when its node did not run it, and shielded from a cancel.
  const runPost = async () => {
    if (!preStarted || postDone || input.postHook === undefined) return;
    postDone = true;
    tracker.phase(`running post hook '${input.postHook}'`);
    await CancellationScope.nonCancellable(() => hooks(plan.hookTimeoutMs.post, 3).runHook({ hook: input.postHook!, role: 'post', ...hookArgs }));
  };

  const snapshots: { volumeId: string; snapshotId: string }[] = [];
  try {
    if (input.preHook !== undefined) {
      tracker.phase(`running pre hook '${input.preHook}'`);
      preStarted = true;
      await hooks(plan.hookTimeoutMs.pre, 1).runHook({ hook: input.preHook, role: 'pre', ...hookArgs });
    } else {
      preStarted = true;
    }
    tracker.phase('snapshotting');
    for (const volumeId of input.volumeIds) {
      // Named after the group where the id allows it, so an operator sees whose it is.
      const named = `${groupId}-snap${snapshots.length + 1}`;
      const snapshotId = named.length <= 64 ? named : shortId('snap');
      // Pushed first: a snapshot half made by a failed or cancelled step is removed too.
      saga.add(`delete group snapshot ${snapshotId}`, () => acts.compensation.deleteSnapshot({ snapshotId }));
      await acts.control.createSnapshot({ volumeId, snapshotId });
      snapshots.push({ volumeId, snapshotId });
    }
    await runPost();

    tracker.phase('backing up');
    const settled = await Promise.allSettled(
      snapshots.map(({ volumeId, snapshotId }) => {
        const args: BackupVolumeInput = {
          volumeId,
          snapshotId,
          groupId,
          backupId: shortId('bak'),
          ...(input.target !== undefined ? { target: input.target } : {}),
          ...(input.incremental !== undefined ? { incremental: input.incremental } : {}),
          ...(input.name !== undefined ? { name: input.name } : {}),
        };
        return executeChild<(i: BackupVolumeInput) => Promise<BackupResult>>(WORKFLOWS.backupVolume, {
          workflowId: workflowIds.backup(volumeId),
          args: [args],
          staticSummary: `Group ${groupId}: back up volume ${volumeId} from snapshot ${snapshotId}`,
        });
      }),
    );
    const backups: BackupView[] = [];
    const failed: string[] = [];
    settled.forEach((r, i) => {
      if (r.status === 'fulfilled') backups.push(r.value.backup);
      else failed.push(`volume '${snapshots[i]!.volumeId}': ${childReason(r.reason)}`);
    });
    if (CancellationScope.current().consideredCancelled) throw settled.find((r) => r.status === 'rejected')?.reason ?? new Error('cancelled');
    if (failed.length > 0) {
      throw ApplicationFailure.nonRetryable(
        `group '${groupId}': ${failed.length} of ${snapshots.length} backups failed (${failed.join('; ')})${backups.length > 0 ? `; made: ${backups.map((b) => b.id).join(', ')}` : ''}`,
        'GroupBackupFailed',
      );
    }
    tracker.phase('removing snapshots');
    const left = await saga.unwind();
    if (left.length > 0) log.warn('group snapshots not removed', { groupId, left });
    tracker.phase('done');
    return { groupId, backups };
  } catch (err) {
    tracker.phase(`failed: ${failureReason(err)}`);
    // Thaw first, then remove what was made; a post hook that fails now must not hide the first error.
    await runPost().catch((e: unknown) => log.error('post hook failed after the group failed', { groupId, error: failureReason(e) }));
    await saga.unwind();
    throw err;
  }
}
