/**
 * Transient failures are retried by Temporal, out of the workflow's sight: without this,
 * a backup against a throttling or restarting store would show an unchanging phase
 * while attempt after attempt fails. Each failed attempt that will be retried is told
 * to its workflow (the `stepFailed` signal), whose progress query and UI details then
 * show the step, the attempt and the error. Best effort: a lost report loses nothing.
 */
import type { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { ActivityInterceptorsFactory } from '@temporalio/worker';
import { NON_RETRYABLE_ERROR_TYPES } from '../error-registry.js';

export interface StepFailure {
  step: string;
  attempt: number;
  type: string;
  message: string;
}

const permanent = new Set(NON_RETRYABLE_ERROR_TYPES);

/** Whether Temporal will try the activity again after this error (cancellation aside). */
function willRetry(e: unknown, ctx: Context): boolean {
  if (ctx.cancellationSignal.aborted) return false;
  if (e instanceof ApplicationFailure) return !e.nonRetryable && !permanent.has(e.type ?? '');
  return !(e instanceof Error && permanent.has(e.name));
}

export function reportRetries(report: (workflowId: string, failure: StepFailure) => void): ActivityInterceptorsFactory {
  return (ctx: Context) => ({
    inbound: {
      async execute(input, next) {
        try {
          return await next(input);
        } catch (e) {
          const wf = ctx.info.workflowExecution?.workflowId;
          if (wf !== undefined && willRetry(e, ctx)) {
            const err = e instanceof Error ? e : new Error(String(e));
            report(wf, { step: ctx.info.activityType, attempt: ctx.info.attempt, type: err instanceof ApplicationFailure ? (err.type ?? err.name) : err.name, message: err.message });
          }
          throw e;
        }
      },
    },
  });
}
