/**
 * Policies through a Temporal client: each policy is a Schedule named `policy-<name>`
 * whose action starts runPolicy with the policy as its argument. Creating, pausing,
 * resuming, deleting, triggering and backfilling are the Schedule API; the policy itself
 * is read back from the action's argument, so there is no second copy to keep in step.
 */
import {
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  ScheduleOverlapPolicy,
  WorkflowExecutionAlreadyStartedError,
  type Client,
  type ScheduleDescription,
  type ScheduleHandle,
} from '@temporalio/client';
import { idSchema, policyIds, PolicySpec, PruneBackupsInput, WORKFLOWS_POLICY, type PolicyRunResult, type PolicySpecInput, type PruneResult, type RunPolicyInput } from '../api.js';
import { InvalidInput, InvalidStatus } from '../errors.js';

export class PolicyNotFound extends InvalidInput {}
export class PolicyExists extends InvalidInput {}

export interface PolicyInfo {
  name: string;
  scheduleId: string;
  paused: boolean;
  note: string | null;
  policy: PolicySpec;
  nextRuns: string[];
  /** The latest runs the schedule started: slot, workflow id, and how it ended (when known). */
  recentRuns: { scheduledAt: string; workflowId: string; runId: string }[];
  runningWorkflows: string[];
  createdAt: string;
}

const PREFIX = 'policy-';

function issues(e: { issues: { path: PropertyKey[]; message: string }[] }): string {
  return e.issues.map((i) => `${i.path.join('.') || 'policy'}: ${i.message}`).join('; ');
}

export class Policies {
  constructor(
    private readonly client: Client,
    private readonly taskQueue: string,
    /** Refusals for lack of search attributes, explained (GbackupClient.explainRefusal). */
    private readonly explain: (e: unknown) => Promise<unknown> = async (e) => e,
  ) {}

  /** Checks a policy as the workflows will; the message names every field that is wrong. */
  static parse(spec: PolicySpecInput): PolicySpec {
    const r = PolicySpec.safeParse(spec);
    if (!r.success) throw new InvalidInput(`invalid policy: ${issues(r.error)}`);
    return r.data;
  }

  private handle(name: string): ScheduleHandle {
    const r = idSchema('policy name').safeParse(name);
    if (!r.success) throw new InvalidInput(`invalid policy name: ${issues(r.error)}`);
    return this.client.schedule.getHandle(policyIds.schedule(r.data));
  }

  private async describeOr404(name: string): Promise<{ handle: ScheduleHandle; d: ScheduleDescription }> {
    const handle = this.handle(name);
    try {
      return { handle, d: await handle.describe() };
    } catch (e) {
      if (e instanceof ScheduleNotFoundError) throw new PolicyNotFound(`policy '${name}' not found (no schedule '${policyIds.schedule(name)}')`);
      throw e;
    }
  }

  private static info(name: string, d: ScheduleDescription): PolicyInfo {
    const action = d.action as { args?: unknown[] };
    const arg = (action.args?.[0] ?? {}) as Partial<RunPolicyInput>;
    return {
      name,
      scheduleId: d.scheduleId,
      paused: d.state.paused,
      note: d.state.note ?? null,
      policy: PolicySpec.parse(arg.policy),
      nextRuns: d.info.nextActionTimes.slice(0, 5).map((t) => t.toISOString()),
      recentRuns: d.info.recentActions.map((a) => ({
        scheduledAt: a.scheduledAt.toISOString(),
        workflowId: a.action.workflow.workflowId,
        runId: a.action.workflow.firstExecutionRunId,
      })),
      runningWorkflows: d.info.runningActions.map((a) => a.workflow.workflowId),
      createdAt: d.info.createdAt.toISOString(),
    };
  }

  /** Creates the policy's schedule; a policy of that name is refused (delete it first). */
  async create(spec: PolicySpecInput, opts: { paused?: boolean } = {}): Promise<PolicyInfo> {
    const policy = Policies.parse(spec);
    const scheduleId = policyIds.schedule(policy.name);
    try {
      const handle = await this.client.schedule.create({
        scheduleId,
        spec: {
          cronExpressions: policy.schedule.cron,
          intervals: policy.schedule.every.map((every) => ({ every: every as `${number}${'s' | 'm' | 'h' | 'd'}` })),
        },
        // A run still going when the next slot comes skips that slot; a slot missed while
        // the server was down is run late only within the catch-up window.
        policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: policy.catchupWindow as `${number} hour`, pauseOnFailure: false },
        action: {
          type: 'startWorkflow',
          workflowType: WORKFLOWS_POLICY.runPolicy,
          taskQueue: this.taskQueue,
          workflowId: scheduleId,
          args: [{ policy } satisfies RunPolicyInput],
          staticSummary: `Policy ${policy.name}: back up ${policy.volumeIds ? policy.volumeIds.join(', ') : 'the selected volumes'} to ${policy.target ?? 'the default target'}, then prune`,
        },
        memo: { gbackupPolicy: policy.name },
        state: { paused: opts.paused === true, note: opts.paused === true ? 'created paused' : 'created by gbackup policy create' },
      });
      return Policies.info(policy.name, await handle.describe());
    } catch (e) {
      if (e instanceof ScheduleAlreadyRunning) throw new PolicyExists(`policy '${policy.name}' exists already (schedule '${scheduleId}'); delete it first to change it`);
      const explained = await this.explain(e);
      if (explained !== e) throw explained;
      // The server refuses a malformed cron expression or interval with its own words.
      if (e instanceof Error && /cron|invalid|interval|duration/i.test(e.message)) throw new InvalidInput(`invalid schedule of policy '${policy.name}': ${e.message}`);
      throw e;
    }
  }

  async list(): Promise<PolicyInfo[]> {
    const out: PolicyInfo[] = [];
    for await (const s of this.client.schedule.list()) {
      if (!s.scheduleId.startsWith(PREFIX)) continue;
      try {
        const { d } = await this.describeOr404(s.scheduleId.slice(PREFIX.length));
        out.push(Policies.info(s.scheduleId.slice(PREFIX.length), d));
      } catch (e) {
        // Deleted between the listing and the describe.
        if (!(e instanceof PolicyNotFound)) throw e;
      }
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  async show(name: string): Promise<PolicyInfo> {
    const { d } = await this.describeOr404(name);
    return Policies.info(name, d);
  }

  async pause(name: string, note = 'paused by gbackup policy pause'): Promise<PolicyInfo> {
    const { handle } = await this.describeOr404(name);
    await handle.pause(note);
    return this.show(name);
  }

  async resume(name: string, note = 'resumed by gbackup policy resume'): Promise<PolicyInfo> {
    const { handle } = await this.describeOr404(name);
    await handle.unpause(note);
    return this.show(name);
  }

  /** Deletes the schedule; the backups it made stay (delete them one by one, or prune first). */
  async delete(name: string): Promise<void> {
    const { handle } = await this.describeOr404(name);
    await handle.delete();
  }

  /**
   * A run now, through the schedule (its overlap rule applies: skipped while one runs).
   * The server starts the run a moment after the trigger: this waits for it to appear
   * and returns its workflow and run id, or null when the schedule skipped it (a run is going).
   *
   * A run is told apart by its run id, not its workflow id: the schedule names a run
   * `<schedule>-<time to the second>`, so two actions in one second (a trigger right after
   * another, or after a scheduled slot) share a workflow id and differ only in run id.
   */
  async runNow(name: string, opts: { appearWithinMs?: number } = {}): Promise<{ workflowId: string | null; runId: string | null; running: string[] }> {
    const { handle } = await this.describeOr404(name);
    const d = await this.caughtUp(handle);
    const key = (w: { workflowId: string; firstExecutionRunId: string }): string => `${w.workflowId}/${w.firstExecutionRunId}`;
    const known = new Set([...d.info.recentActions.map((a) => key(a.action.workflow)), ...d.info.runningActions.map((a) => key(a.workflow))]);
    await handle.trigger(ScheduleOverlapPolicy.SKIP);
    // With a run going the trigger is skipped: no need to wait long to see that.
    const deadline = Date.now() + (opts.appearWithinMs ?? (d.info.runningActions.length > 0 ? 1500 : 10_000));
    let running: string[] = [];
    for (;;) {
      const now = await handle.describe();
      running = now.info.runningActions.map((a) => a.workflow.workflowId);
      // The newest action the trigger could have made (recent actions are oldest first).
      const fresh = [...now.info.recentActions.map((a) => a.action.workflow), ...now.info.runningActions.map((a) => a.workflow)].filter((w) => !known.has(key(w)));
      const started = fresh.at(-1);
      if (started !== undefined) return { workflowId: started.workflowId, runId: started.firstExecutionRunId, running };
      if (Date.now() > deadline) return { workflowId: null, runId: null, running };
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /**
   * The schedule's description once it has noticed that its runs ended. The scheduler
   * learns that a run closed a moment after the run's own result is out, and until then it
   * skips a trigger as an overlap: `run-now` right after a `run-now --wait` would be
   * skipped though nothing runs. So while a run it lists as running is closed in fact,
   * wait (bounded) for the scheduler to catch up.
   */
  private async caughtUp(handle: ScheduleHandle, withinMs = 10_000): Promise<ScheduleDescription> {
    const deadline = Date.now() + withinMs;
    for (;;) {
      const d = await handle.describe();
      const closed = await Promise.all(
        d.info.runningActions.map(async (a) => {
          try {
            return (await this.client.workflow.getHandle(a.workflow.workflowId, a.workflow.firstExecutionRunId).describe()).status.name !== 'RUNNING';
          } catch {
            return false;
          }
        }),
      );
      if (!closed.includes(true) || Date.now() > deadline) return d;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Runs the slots between `from` and `to` that the schedule would have run, one after the
   * other (a migration from another tool, or slots lost to an outage beyond the catch-up
   * window). Each run counts for its slot.
   */
  async backfill(name: string, from: Date, to: Date): Promise<void> {
    if (!(from < to)) throw new InvalidInput(`backfill needs --from before --to (got ${from.toISOString()} .. ${to.toISOString()})`);
    const { handle } = await this.describeOr404(name);
    await handle.backfill([{ start: from, end: to, overlap: ScheduleOverlapPolicy.BUFFER_ALL }]);
  }

  /** Applies the policy's retention now; `dryRun` lists what would go and why, deleting nothing. */
  async prune(name: string, dryRun: boolean): Promise<PruneResult> {
    const { policy } = await this.show(name);
    const input = PruneBackupsInput.parse({ policy: policy.name, ...(policy.target ? { target: policy.target } : {}), keep: policy.keep, ...(policy.copyTo ? { copyTo: policy.copyTo } : {}), dryRun });
    const workflowId = dryRun ? `${policyIds.prune(policy.name)}-dry-run-${Date.now().toString(36)}` : policyIds.prune(policy.name);
    try {
      const handle = await this.client.workflow.start(WORKFLOWS_POLICY.pruneBackups, {
        taskQueue: this.taskQueue,
        workflowId,
        args: [input],
        staticSummary: `Prune of policy ${policy.name}${dryRun ? ' (dry run)' : ''}`,
      });
      return (await handle.result()) as PruneResult;
    } catch (e) {
      if (e instanceof WorkflowExecutionAlreadyStartedError) throw new InvalidStatus(`a prune of policy '${policy.name}' is already running (workflow ${workflowId})`);
      throw await this.explain(e);
    }
  }

  /** The result of the newest finished run the schedule started, if any. */
  async lastRun(name: string): Promise<{ workflowId: string; status: string; result: PolicyRunResult | null; error: string | null } | null> {
    const { d } = await this.describeOr404(name);
    const last = d.info.recentActions[d.info.recentActions.length - 1];
    if (!last) return null;
    const h = this.client.workflow.getHandle(last.action.workflow.workflowId, last.action.workflow.firstExecutionRunId);
    const status = (await h.describe()).status.name;
    if (status === 'RUNNING') return { workflowId: h.workflowId, status, result: null, error: null };
    try {
      return { workflowId: h.workflowId, status, result: (await h.result()) as PolicyRunResult, error: null };
    } catch (e) {
      return { workflowId: h.workflowId, status, result: null, error: e instanceof Error ? (e.cause instanceof Error ? e.cause.message : e.message) : String(e) };
    }
  }
}
