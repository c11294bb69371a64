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
import { ActivityCancellationType, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
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

export function activities(t: Timeouts = DEFAULT_TIMEOUTS) {
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
  return {
    control: proxyActivities<ControlActivities>(control),
    /** Undo steps retry without limit (no maximumAttempts): giving up would leak. */
    compensation: proxyActivities<ControlActivities>({ ...control, retry }),
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

/** For the first step, before the config's timeouts are known. */
export const { control, compensation } = activities();
export type Activities = ReturnType<typeof activities>;
