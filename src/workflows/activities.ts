/**
 * Activity proxies, one per timeout profile (samples-typescript style). Workflows see
 * activity *types* only.
 *
 * Timeouts, and why:
 * - every activity heartbeats (the copy with its offset, the rest through the worker's
 *   keep-alive), so a dead worker is noticed after `heartbeat` seconds (default 15: ten
 *   times the copy's 1 s progress interval, so a loaded host is not mistaken for a dead
 *   one), not after a start-to-close timeout sized for the slowest storage;
 * - node steps must start within `scheduleToStart` seconds (default 60: a worker
 *   restart fits, a dead node does not); then the workflow releases the backend side
 *   and moves the data path to another node;
 * - steps retry with backoff up to 8 times (the copy 10, resuming each time);
 *   compensations retry without limit: giving up would leak, and they are idempotent;
 * - the copy waits for its own cancellation to finish, so dd has stopped before the
 *   compensations detach its devices.
 */
import { ActivityCancellationType, CancellationScope, patched, proxyActivities, proxyLocalActivities, type ActivityOptions, type LocalActivityOptions } from '@temporalio/workflow';
import type { ControlActivities as CoreControlActivities } from '../activities/control.js';
import type { ManageActivities } from '../activities/manage.js';
import type { NodeActivities } from '../activities/node.js';
import { NON_RETRYABLE_ERROR_TYPES } from '../error-registry.js';
import { nodeTaskQueue } from '../api.js';
import type { Timeouts } from '../activities/plans.js';

/** Everything on the control queue: the backup/restore steps and volume/catalog management. */
type ControlActivities = CoreControlActivities & ManageActivities;

const retry = {
  initialInterval: '1 second',
  backoffCoefficient: 2,
  maximumInterval: '30 seconds',
  nonRetryableErrorTypes: NON_RETRYABLE_ERROR_TYPES,
} as const;

export const DEFAULT_TIMEOUTS: Timeouts = { scheduleToStartMs: 60_000, heartbeatMs: 15_000 };

/**
 * How control steps run. `local` (every workflow started since the 'local-control-steps'
 * patch): as local activities, inside the workflow task on the control worker that runs
 * the workflow. They need no node, and each one as a normal activity cost two round trips
 * through the server (schedule, poll, complete, new workflow task: ~25 ms here), which
 * was most of a small backup's time. A local activity's result is a marker in the history,
 * so it runs once per workflow like any activity; a control worker that dies inside one
 * is replaced when the workflow task times out, and the step runs again (all are
 * idempotent). `remote`: as activities on the control queue (histories from before).
 */
export type ControlMode = 'local' | 'remote';

/**
 * Later versions of the steps, each behind its own patch. They are decided in a workflow's
 * first activation, before any step: a `patched` call made right after a local activity
 * can fall into a different workflow task on replay than it did when it ran (the local
 * activity's result is replayed from its marker at once), and then no longer matches its
 * marker. Histories from before any of these carry no marker, and replay on the old path.
 */
export interface StepVersions {
  /** nodes.ts: the node is chosen while the connections are opened, in one workflow task. */
  connectTogether: boolean;
  /** commit(): finalize runs as a local activity in the task that has the copy's result. */
  commitInTask: boolean;
  /**
   * targets/volume.ts: the steps before a generic copy (storage-assisted copy, create the
   * destination, choose the node, open the connections) run as one local activity
   * (prepareCopy), and connections that hold nothing on the backend are not terminated
   * one by one after the copy (their undo stays for failures).
   */
  prepareInOne: boolean;
}

/** Every step as it first was. */
const NO_VERSIONS: StepVersions = { connectTogether: false, commitInTask: false, prepareInOne: false };

/**
 * Call first thing in a workflow (see StepVersions). `prepare`: whether the workflow has
 * the step prepareInOne changes (backup and restore do; a copy between targets does not,
 * and records no marker for it).
 */
export function stepVersions(mode: ControlMode, opts: { prepare: boolean } = { prepare: true }): StepVersions {
  const local = mode === 'local';
  return {
    connectTogether: local && patched('connect-while-choosing-node'),
    commitInTask: local && patched('commit-in-workflow-task'),
    prepareInOne: local && opts.prepare && patched('prepare-copy-in-one-step'),
  };
}

export function activities(t: Timeouts = DEFAULT_TIMEOUTS, mode: ControlMode = 'remote', versions: StepVersions = NO_VERSIONS) {
  const control: ActivityOptions = {
    startToCloseTimeout: '2 hours',
    heartbeatTimeout: t.heartbeatMs,
    // A cancel waits for the step to stop: a step that commits anyway (say, finalize)
    // is then seen as done, instead of being raced by the compensations.
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: { ...retry, maximumAttempts: 8 },
  };
  const nodeStep = (queue: string): ActivityOptions => ({
    taskQueue: queue,
    startToCloseTimeout: '10 minutes',
    heartbeatTimeout: t.heartbeatMs,
    scheduleToStartTimeout: t.scheduleToStartMs,
    retry: { ...retry, maximumAttempts: 8 },
  });
  const local: LocalActivityOptions = {
    startToCloseTimeout: '2 hours',
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: { ...retry, maximumAttempts: 8 },
  };
  return {
    control: mode === 'local' ? proxyLocalActivities<ControlActivities>(local) : proxyActivities<ControlActivities>(control),
    /** Undo steps retry without limit (no maximumAttempts): giving up would leak. */
    compensation: mode === 'local' ? proxyLocalActivities<ControlActivities>({ ...local, retry }) : proxyActivities<ControlActivities>({ ...control, retry }),
    mode,
    /** Remote mode (histories from before local steps) has none of the later versions. */
    versions: mode === 'local' ? versions : NO_VERSIONS,
    /**
     * Commit points (finalize) as activities: how local-mode histories from before
     * StepVersions.commitInTask ran them. A local activity's result can be lost with its
     * workflow task (a cancel arriving at that moment makes the server refuse the
     * completion); an activity's completion is recorded by the server, and a cancel waits
     * for it (WAIT_CANCELLATION_COMPLETED). New workflows run finalize as a local activity
     * shielded from cancellation instead: see commit().
     */
    commit: proxyActivities<ControlActivities>(control),
    /** The commit point as a local activity (StepVersions.commitInTask; see commit()). */
    localCommit: proxyLocalActivities<ControlActivities>(local),
    node(taskQueue: string, node: string) {
      const queue = nodeTaskQueue(taskQueue, node);
      return {
        steps: proxyActivities<NodeActivities>(nodeStep(queue)),
        /** Retried until the node answers, unless it never picks them up (then the ledger reconciles). */
        undo: proxyActivities<NodeActivities>({ ...nodeStep(queue), retry }),
        copy: proxyActivities<NodeActivities>({
          taskQueue: queue,
          startToCloseTimeout: '24 hours',
          heartbeatTimeout: t.heartbeatMs,
          scheduleToStartTimeout: t.scheduleToStartMs,
          cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
          retry: { ...retry, maximumAttempts: 10 },
        }),
      };
    },
  };
}

/**
 * Runs a workflow's commit point (finalize), after which the backup or restore stands.
 *
 * New workflows (StepVersions.commitInTask) run it as a local activity in the workflow
 * task that received the copy's result, shielded from cancellation: one activity round
 * trip and one workflow task fewer (~25 ms of a small backup). Shielded, because a local
 * activity's result is recorded only with its workflow task: when that task's completion
 * is refused (a cancel arrived while it ran), the task replacing it must run the step
 * again, and finds it done (every finalize is idempotent), instead of following the
 * cancel into undoing what the lost run committed. So a cancel that arrives once the data
 * is copied comes too late; it did before too whenever it found the commit activity
 * already running. Histories from before ran it as an activity (`commit`), which a cancel
 * waits for (WAIT_CANCELLATION_COMPLETED).
 */
export function commit<T>(acts: Activities, step: (control: Activities['commit'] | Activities['localCommit']) => Promise<T>): Promise<T> {
  return acts.versions.commitInTask ? CancellationScope.nonCancellable(() => step(acts.localCommit)) : step(acts.commit);
}

/** For the first step, before the config's timeouts are known. */
export const { control, compensation } = activities();
/** The same, as local activities. */
export const { control: localControl, compensation: localCompensation } = activities(DEFAULT_TIMEOUTS, 'local');
export type Activities = ReturnType<typeof activities>;
