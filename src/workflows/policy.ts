/**
 * Policies: runPolicy is the action of a policy's Temporal Schedule; pruneBackups applies
 * its retention (also on its own: `gbackup policy prune NAME [--dry-run]`).
 *
 *   plan the run -> back up each volume (child backupVolume workflows, a few at a time)
 *   -> [copy each new backup to the copy target] -> prune (child pruneBackups)
 *
 * The backups are ordinary backupVolume workflows with their usual ids, so "one backup
 * per volume at a time" holds against backups started by hand too: a volume whose backup
 * is still running is skipped for this slot, not queued. A failed volume does not stop the
 * others; the run fails at the end, naming them, so the schedule and the UI show it.
 */
import {
  ActivityFailure,
  ApplicationFailure,
  ChildWorkflowFailure,
  defineQuery,
  executeChild,
  setCurrentDetails,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import { defineSearchAttributeKey, SearchAttributeType, WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import {
  policyIds,
  PruneBackupsInput,
  RunPolicyInput,
  copyWorkflowId,
  workflowIds,
  WORKFLOWS,
  type BackupResult,
  type CopyBackupInput,
  type CopyBackupResult,
  type BackupVolumeInput,
  type DeleteBackupInput,
  type PolicyRunResult,
  type PruneResult,
} from '../api.js';
import { localControl } from './activities.js';
import { failureReason, parseInput } from './common.js';

/** Set by the server on a workflow a schedule started: the slot it was started for. */
const SCHEDULED_START = defineSearchAttributeKey('TemporalScheduledStartTime', SearchAttributeType.DATETIME);

export const policyProgressQuery = defineQuery<{ phase: string; done: number; total: number }>('progress');

/** The innermost application failure of a child's (or activity's) failure chain. */
function innermost(err: unknown): { type: string | undefined; reason: string } {
  let e: unknown = err;
  while ((e instanceof ChildWorkflowFailure || e instanceof ActivityFailure) && e.cause) e = e.cause;
  return { type: e instanceof ApplicationFailure ? (e.type ?? undefined) : undefined, reason: failureReason(e) };
}

/** Runs fn over items, at most `n` at a time. */
async function lanes<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

export async function runPolicy(raw: RunPolicyInput): Promise<PolicyRunResult> {
  const { policy } = parseInput(RunPolicyInput, raw);
  const info = workflowInfo();
  // A run started by hand (`policy run-now` goes through the schedule too) or by a test
  // without a schedule counts for the moment it started.
  const scheduledAt = (info.typedSearchAttributes.get(SCHEDULED_START) ?? info.startTime).toISOString();
  const state = { phase: 'planning', done: 0, total: 0 };
  setHandler(policyProgressQuery, () => state);
  const phase = (p: string) => {
    state.phase = p;
    setCurrentDetails(`**${p}**\n\npolicy ${policy.name}, slot ${scheduledAt}: ${state.done}/${state.total} volumes done`);
  };
  phase('planning');
  const plan = await localControl.planPolicyRun({ policy });
  const result: PolicyRunResult = { policy: policy.name, scheduledAt, backups: [], copies: [], skipped: [...plan.skipped], failed: [], prune: null };
  state.total = plan.volumes.length;
  phase('backing up');
  await lanes(plan.volumes, policy.parallel, async ({ volumeId, incremental }) => {
    const args: BackupVolumeInput = { volumeId, target: plan.target, force: true, policy: policy.name, scheduledAt, ...(incremental ? { incremental } : {}) };
    try {
      const r = await executeChild<(i: BackupVolumeInput) => Promise<BackupResult>>(WORKFLOWS.backupVolume, {
        workflowId: workflowIds.backup(volumeId),
        args: [args],
        staticSummary: `Policy ${policy.name}: back up volume ${volumeId} (${incremental ? 'incremental' : 'full'})`,
      });
      result.backups.push({ volumeId, backupId: r.backup.id, full: r.backup.parentId === null });
      if (policy.copyTo) {
        phase('copying');
        const c = await executeChild<(i: CopyBackupInput) => Promise<CopyBackupResult>>(WORKFLOWS.copyBackup, {
          workflowId: copyWorkflowId(r.backup.id, policy.copyTo.target),
          args: [{ backupId: r.backup.id, target: policy.copyTo.target, policy: policy.name }],
          staticSummary: `Policy ${policy.name}: copy backup ${r.backup.id} of volume ${volumeId} to ${policy.copyTo.target}`,
        });
        result.copies.push({ backupId: r.backup.id, copyId: c.backup.id });
      }
    } catch (e) {
      if (e instanceof WorkflowExecutionAlreadyStartedError) result.skipped.push({ volumeId, why: 'a backup (or copy) of the volume was still running; this slot is skipped for it' });
      else result.failed.push({ volumeId, error: innermost(e).reason });
    }
    state.done++;
    phase('backing up');
  });

  phase('pruning');
  try {
    result.prune = await executeChild(pruneBackups, {
      workflowId: policyIds.prune(policy.name),
      args: [{ policy: policy.name, target: plan.target, keep: policy.keep, ...(policy.copyTo ? { copyTo: policy.copyTo } : {}), dryRun: false }],
      staticSummary: `Policy ${policy.name}: apply retention`,
    });
  } catch (e) {
    // A prune started by hand is running: it applies the same rules.
    if (!(e instanceof WorkflowExecutionAlreadyStartedError)) result.failed.push({ volumeId: '(prune)', error: innermost(e).reason });
  }
  phase('done');
  if (result.failed.length > 0) {
    throw ApplicationFailure.create({
      type: 'PolicyRunFailed',
      nonRetryable: true,
      message: `policy '${policy.name}' (slot ${scheduledAt}): ${result.failed.map((f) => `${f.volumeId}: ${f.error}`).join('; ')}`,
      details: [result],
    });
  }
  return result;
}

export async function pruneBackups(raw: PruneBackupsInput): Promise<PruneResult> {
  const input = parseInput(PruneBackupsInput, raw);
  setCurrentDetails(`**planning** retention of policy ${input.policy}${input.dryRun ? ' (dry run)' : ''}`);
  const plan = await localControl.planPrune(input);
  const result: PruneResult = { policy: input.policy, dryRun: input.dryRun, plan, deleted: [], retained: [], failed: [] };
  if (input.dryRun) return result;
  const doomed = plan.flatMap((g) => g.remove);
  let i = 0;
  // One chain at a time, an incremental before what it builds on (the plan's order): a
  // delete refused because something still builds on a backup leaves it, and so the
  // backups it builds on, in place.
  for (const group of plan) {
    for (const r of group.remove) {
      i++;
      setCurrentDetails(`**deleting** ${r.id} (${i}/${doomed.length}) of policy ${input.policy}`);
      try {
        await executeChild<(i: DeleteBackupInput) => Promise<unknown>>(WORKFLOWS.deleteBackup, {
          workflowId: workflowIds.deleteBackup(r.id),
          args: [{ backupId: r.id }],
          staticSummary: `Prune of policy ${input.policy}: ${r.reason}`,
        });
        result.deleted.push(r.id);
      } catch (e) {
        const { type, reason } = innermost(e);
        if (type === 'BackupRetained') result.retained.push({ id: r.id, why: reason });
        else if (type === 'BackupHasDependents') result.retained.push({ id: r.id, why: `an incremental was started on it meanwhile: ${reason}` });
        else if (e instanceof WorkflowExecutionAlreadyStartedError) result.retained.push({ id: r.id, why: 'a delete of it is already running' });
        else result.failed.push({ id: r.id, error: reason });
      }
    }
  }
  setCurrentDetails(`**done**: ${result.deleted.length} deleted, ${result.retained.length} retained, ${result.failed.length} failed`);
  return result;
}
