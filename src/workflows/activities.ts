/**
 * Activity proxies, one per timeout profile (samples-typescript style). Workflows see
 * activity *types* only.
 *
 * Timeouts, and why:
 * - control steps are short catalog/backend calls: 2 min each, retried with backoff.
 * - compensations retry without limit: giving up would leak; they are idempotent.
 * - node steps must start within 60 s (scheduleToStart): a node whose worker is gone
 *   never picks them up, and the workflow then moves the data path to another node
 *   instead of waiting forever.
 * - the copy heartbeats every second; 30 s without one means the node or its worker
 *   died. It runs as long as the volume needs (24 h cap) and waits for its own
 *   cancellation to finish, so dd is stopped before compensations detach its devices.
 */
import { ActivityCancellationType, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control.js';
import type { NodeActivities } from '../activities/node.js';
import { NON_RETRYABLE_ERROR_TYPES } from '../errors.js';
import { nodeTaskQueue } from '../api.js';

const retry = {
  initialInterval: '1 second',
  backoffCoefficient: 2,
  maximumInterval: '30 seconds',
  nonRetryableErrorTypes: NON_RETRYABLE_ERROR_TYPES,
} as const;

export const control = proxyActivities<ControlActivities>({
  startToCloseTimeout: '2 minutes',
  retry: { ...retry, maximumAttempts: 8 },
});

// No maximumAttempts: unlimited.
export const compensation = proxyActivities<ControlActivities>({
  startToCloseTimeout: '2 minutes',
  retry,
});

const nodeStep = (queue: string): ActivityOptions => ({
  taskQueue: queue,
  startToCloseTimeout: '5 minutes',
  scheduleToStartTimeout: '60 seconds',
  retry: { ...retry, maximumAttempts: 8 },
});

export function nodeActivities(taskQueue: string, node: string) {
  const queue = nodeTaskQueue(taskQueue, node);
  return {
    steps: proxyActivities<NodeActivities>(nodeStep(queue)),
    /** Undo steps: retried until the node answers, unless it never picks them up. */
    undo: proxyActivities<NodeActivities>({ ...nodeStep(queue), retry }),
    copy: proxyActivities<NodeActivities>({
      taskQueue: queue,
      startToCloseTimeout: '24 hours',
      heartbeatTimeout: '30 seconds',
      scheduleToStartTimeout: '60 seconds',
      cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
      retry: { ...retry, maximumAttempts: 10 },
    }),
  };
}
