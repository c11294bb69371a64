/**
 * Pieces every gbackup workflow shares: input validation, the progress query and the
 * copy-progress signal, search attributes, failure reasons.
 */
import {
  ActivityFailure,
  ApplicationFailure,
  CancelledFailure,
  defineQuery,
  defineSignal,
  defineUpdate,
  isCancellation,
  setHandler,
  TimeoutFailure,
  upsertSearchAttributes,
  setCurrentDetails,
} from '@temporalio/workflow';
import { TimeoutType } from '@temporalio/common';
import type { z } from 'zod';
import { QUERIES, SEARCH_ATTRIBUTES, type Progress } from '../api.js';
import { DAMAGED_BACKUP_TYPES } from '../error-registry.js';
import type { CopyProgressSignal } from '../activities/node.js';
import type { StepFailure } from '../workers/retries.js';

export const progressQuery = defineQuery<Progress>(QUERIES.progress);
export const copyProgressSignal = defineSignal<[CopyProgressSignal]>('copyProgress');
/** A step's attempt failed and will be retried (workers/retries.ts). */
export const stepFailedSignal = defineSignal<[StepFailure]>('stepFailed');
/** Per-backup copy limit in bytes/s (null: none), read by the copy between slices. */
export const copyLimitQuery = defineQuery<number | null>('copyLimit');
export const throttleUpdate = defineUpdate<number | null, [{ bps: number | null }]>('throttle');

/** Bad input fails the workflow at once and is never retried. */
export function parseInput<S extends z.ZodType>(schema: S, raw: unknown): z.infer<S> {
  // Jitless: a workflow parses its input once, with a schema built afresh in its own module
  // instance, so compiling zod's fast path (new Function) first costs more than it saves.
  const r = schema.safeParse(raw, { jitless: true });
  if (!r.success) {
    const msg = r.error.issues.map((i) => `${i.path.join('.') || 'input'}: ${i.message}`).join('; ');
    throw ApplicationFailure.nonRetryable(`invalid input: ${msg}`, 'InvalidInput');
  }
  return r.data;
}

/** The innermost message of a failure chain: what an operator needs to read. */
export function failureReason(err: unknown): string {
  if (isCancellation(err)) return 'cancelled';
  let e: unknown = err;
  while (e instanceof ActivityFailure && e.cause) e = e.cause;
  if (e instanceof TimeoutFailure) return `timed out (${e.timeoutType ?? 'unknown'})`;
  if (e instanceof ApplicationFailure) return `${e.type ?? 'Error'}: ${e.message}`;
  if (e instanceof CancelledFailure) return 'cancelled';
  return e instanceof Error ? e.message : String(e);
}

export function failureType(err: unknown): string | undefined {
  let e: unknown = err;
  while (e instanceof ActivityFailure && e.cause) e = e.cause;
  return e instanceof ApplicationFailure ? (e.type ?? undefined) : undefined;
}

export function isDamagedBackup(err: unknown): boolean {
  const t = failureType(err);
  return t !== undefined && DAMAGED_BACKUP_TYPES.has(t);
}

/** A node that never picks up its work, or stops heartbeating, is treated as lost. */
export function isNodeLost(err: unknown): boolean {
  if (!(err instanceof ActivityFailure)) return false;
  const cause = err.cause;
  return cause instanceof TimeoutFailure && (cause.timeoutType === TimeoutType.SCHEDULE_TO_START || cause.timeoutType === TimeoutType.HEARTBEAT);
}

export class Tracker {
  readonly state: Progress;
  private limit: number | null = null;
  private retrying = false;

  constructor(init: Partial<Progress>, limit: number | null = null) {
    this.limit = limit;
    this.state = { phase: 'starting', bytesDone: 0, bytesTotal: 0, rateBps: 0, node: null, backupId: null, volumeId: null, ...init };
    setHandler(progressQuery, () => this.state);
    setHandler(copyProgressSignal, (p) => {
      this.state.bytesDone = p.bytesDone;
      this.state.bytesTotal = p.bytesTotal;
      this.state.rateBps = p.rateBps;
    });
    setHandler(stepFailedSignal, (f) => {
      this.state.lastError = f;
      this.retrying = true;
      this.details();
    });
    setHandler(copyLimitQuery, () => this.limit);
    setHandler(
      throttleUpdate,
      ({ bps }) => {
        this.limit = bps;
        return this.limit;
      },
      {
        validator: ({ bps }) => {
          if (bps !== null && (!Number.isSafeInteger(bps) || bps <= 0)) throw new Error(`bps must be a positive whole number of bytes per second or null, got ${bps}`);
        },
      },
    );
  }

  /** The per-backup copy limit set through the throttle update (null: none). */
  currentLimit(): number | null {
    return this.limit;
  }

  phase(phase: string): void {
    this.state.phase = phase;
    // A new phase means the retried step got through: lastError stays for the query, the UI moves on.
    this.retrying = false;
    this.details();
  }

  /** The UI's current details: the phase, and the retried error while there is one. */
  private details(): void {
    const e = this.retrying ? this.state.lastError : undefined;
    setCurrentDetails(`**${this.state.phase}**${this.state.node ? ` on node ${this.state.node}` : ''}${e ? `\n\nretrying ${e.step} (attempt ${e.attempt} failed: ${e.type}: ${e.message})` : ''}`);
  }

  status(status: string): void {
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.status, value: status }]);
  }
}
