/**
 * Starting and watching gbackup workflows with a plain @temporalio/client: what the CLI
 * uses, and a worked example for other services (they need only api.ts's names and
 * shapes; nothing here is required).
 */
import { closableRetries, type ClosableRetries } from '../temporal/retries.js';
import { randomBytes } from 'node:crypto';
import { Client, Connection, ScheduleAlreadyRunning, ScheduleNotFoundError, ScheduleOverlapPolicy, WorkflowExecutionAlreadyStartedError, WorkflowFailedError, type WorkflowExecutionDescription, type WorkflowHandle } from '@temporalio/client';
import { Policies } from './policies.js';
import { ActivityFailure, ApplicationFailure, CancelledFailure, TimeoutFailure } from '@temporalio/common';
import {
  MANAGE_WORKFLOWS,
  manageWorkflowIds,
  SEARCH_ATTRIBUTES,
  WORKFLOWS,
  workflowIds,
  type AttachedVolume,
  type AttachVolumeInput,
  type BackupView,
  type CheckTargetsInput,
  type CreateSnapshotInput,
  type CreateVolumeInput,
  type ExportVolumeInput,
  type ImportBackupRecordInput,
  type ImportVolumeInput,
  type LookupInput,
  type LookupResults,
  type SnapshotInfo,
  type VolumeView,
  type BackupResult,
  type BackupVolumeInput,
  type BackupGroupInput,
  type DeleteBackupInput,
  type Progress,
  type RestoreBackupInput,
  type RestoreResult,
  type VerifyBackupInput,
  copyWorkflowId,
  type CopyBackupInput,
  type CopyBackupResult,
} from '../api.js';
import type { LoadedConfig } from '../config/load.js';
import { BackupInProgress, GbackupError, InvalidInput, InvalidStatus, MissingSearchAttributes } from '../errors.js';
import { missingMessage, missingSearchAttributes, refusedSearchAttribute } from '../workers/search-attributes.js';
import { INPUT_ERROR_TYPES } from '../error-registry.js';
import { temporalConnection, type TemporalSettings } from '../temporal/connection.js';
import type { TargetCheck } from '../drivers/backup/check.js';
import type { RebuildReport } from '../services/rebuild.js';

const nonce = () => randomBytes(6).toString('hex');
/** Whether a worker has taken the workflow's first task: until then its history is the start and that task scheduled. */
const pickedUp = (d: WorkflowExecutionDescription) => (d.historyLength ?? 0) > 3;
/** How long a command waits for a worker before it asks whether there is one at all. */
const NO_WORKER_AFTER_MS = 5000;

/** A workflow's failure, carried back with the original error type. */
export class WorkflowError extends GbackupError {
  constructor(
    message: string,
    readonly type: string,
    readonly workflowId: string,
  ) {
    super(message);
  }
  override get exitCode(): 1 | 2 {
    return INPUT_ERROR_TYPES.has(this.type) ? 2 : 1;
  }
}

function unwrap(err: unknown, workflowId: string): Error {
  if (!(err instanceof WorkflowFailedError)) return err as Error;
  let e: unknown = err.cause;
  while (e instanceof ActivityFailure && e.cause) e = e.cause;
  if (e instanceof ApplicationFailure) return new WorkflowError(e.message, e.type ?? 'Error', workflowId);
  if (e instanceof CancelledFailure) return new WorkflowError('cancelled', 'Cancelled', workflowId);
  if (e instanceof TimeoutFailure) return new WorkflowError(`timed out (${e.timeoutType})`, 'Timeout', workflowId);
  return new WorkflowError(e instanceof Error ? e.message : String(e), 'Error', workflowId);
}

export class GbackupClient {
  private constructor(
    readonly client: Client,
    private readonly connection: Connection,
    readonly taskQueue: string,
    private readonly server: { address: string; namespace: string },
    private readonly retries: ClosableRetries,
  ) {}

  /**
   * A start the server refused for lack of our search attributes becomes the message the
   * worker gives (which attributes, and the commands that register them); anything else
   * is returned as it is.
   */
  private async explainRefusal(e: unknown): Promise<unknown> {
    const named = refusedSearchAttribute(e);
    if (named === null) return e;
    const missing = await missingSearchAttributes(this.connection, this.server.namespace).catch(() => [named]);
    return new MissingSearchAttributes(missingMessage(missing.length > 0 ? missing : [named], this.server, 'the server refused to start the workflow'));
  }

  /** `env`: where the TEMPORAL_* overrides come from (temporal/connection.ts). */
  static async connect(config: { temporal: TemporalSettings & Pick<LoadedConfig['temporal'], 'taskQueue'> }, env?: Record<string, string | undefined>): Promise<GbackupClient> {
    const t = temporalConnection(config.temporal, env);
    // gRPC hides why a TLS handshake failed ("failed to connect before the deadline"): say where to look.
    const hint = t.options.tls === false ? "is 'gbackup dev' or a Temporal server running?" : 'is the server up, and do temporal.tls / TEMPORAL_TLS_* (CA, server name, client certificate) match it?';
    const retries = closableRetries();
    const connection = await Connection.connect({ ...t.options, connectTimeout: '5s', interceptors: retries.interceptors }).catch((e: Error) => {
      throw new GbackupError(`cannot reach Temporal at ${t.describe}: ${e.message} (${hint})`);
    });
    return new GbackupClient(new Client({ connection, namespace: t.namespace }), connection, config.temporal.taskQueue, { address: t.address, namespace: t.namespace }, retries);
  }

  async close(): Promise<void> {
    // A call still being retried (the server was away) ends with CANCELLED, not with an uncaught throw (retries.ts).
    this.retries.close();
    await this.connection.close();
  }

  /** Backup policies: Temporal Schedules that run backups and prune by retention (policies.ts). */
  get policies(): Policies {
    return new Policies(this.client, this.taskQueue, (e) => this.explainRefusal(e));
  }

  // ---- management: each a short workflow on the control worker ---------------------------

  /**
   * Runs one management workflow to its end. `busy` words the refusal when a workflow of
   * that id runs already (one create/delete/attach per volume at a time).
   */
  private async manage<R>(type: string, workflowId: string, input: unknown, summary: string, busy?: string): Promise<R> {
    let handle: WorkflowHandle;
    try {
      handle = await this.client.workflow.start(type, { taskQueue: this.taskQueue, workflowId, args: [input], staticSummary: summary });
    } catch (e) {
      if (e instanceof WorkflowExecutionAlreadyStartedError) throw new InvalidStatus(busy ?? `an operation with workflow id ${workflowId} is already running`);
      throw await this.explainRefusal(e);
    }
    return this.resultOrNoWorker<R>(handle);
  }

  private noWorker(): GbackupError {
    return new GbackupError(
      `no gbackup control worker polls task queue '${this.taskQueue}' in namespace '${this.server.namespace}' at ${this.server.address}: start one with 'gbackup worker' (its config names the same task queue)`,
    );
  }

  /**
   * Whether any worker polls our control queue. A command whose workflow no worker picks
   * up would otherwise wait forever; asked only when the answer is slow in coming.
   */
  async hasControlWorker(): Promise<boolean> {
    const r = await this.client.workflowService.describeTaskQueue({
      namespace: this.server.namespace,
      // temporal.api.enums.v1: TASK_QUEUE_KIND_NORMAL = 1, TASK_QUEUE_TYPE_WORKFLOW = 1.
      taskQueue: { name: this.taskQueue, kind: 1 },
      taskQueueType: 1,
    });
    return (r.pollers ?? []).length > 0;
  }

  /** Still running, never picked up by a worker, and no worker polls the queue: nobody will run it. */
  private async unserved(handle: WorkflowHandle, d: WorkflowExecutionDescription): Promise<boolean> {
    return d.status.name === 'RUNNING' && !pickedUp(d) && !(await this.hasControlWorker());
  }

  /** Terminates a workflow no worker ever ran: it has done nothing, so nothing is left half-done. */
  private async abandon(handle: WorkflowHandle): Promise<void> {
    await handle.terminate('no gbackup control worker polls this task queue').catch(() => undefined);
  }

  /**
   * The result; but a workflow still unstarted after a few seconds with no worker on the
   * queue is terminated (it has done nothing yet) and reported, instead of waiting forever.
   */
  private async resultOrNoWorker<R>(handle: WorkflowHandle): Promise<R> {
    const result = this.result<R>(handle);
    let timer: NodeJS.Timeout | undefined;
    const watchdog = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        void (async () => {
          if (!(await this.unserved(handle, await handle.describe()))) return;
          // Rejected first: the terminate makes the result reject too, with a vaguer message.
          reject(this.noWorker());
          await this.abandon(handle);
        })().catch(() => undefined);
      }, NO_WORKER_AFTER_MS);
    });
    try {
      return await Promise.race([result, watchdog]);
    } finally {
      clearTimeout(timer);
      result.catch(() => undefined);
    }
  }

  /** A read-only question to the catalog (or the configured world), answered by a control worker. */
  async lookup<W extends LookupInput['what']>(q: Extract<LookupInput, { what: W }>): Promise<LookupResults[W]> {
    return this.manage<LookupResults[W]>(MANAGE_WORKFLOWS.lookup, manageWorkflowIds.lookup(nonce()), q, `Look up ${q.what}`);
  }

  /** Every backup (or a volume's), fetched page by page. */
  async listBackups(volumeId?: string): Promise<BackupView[]> {
    const all: BackupView[] = [];
    let after: string | null = null;
    do {
      const page: LookupResults['backups'] = await this.lookup({ what: 'backups', ...(volumeId !== undefined ? { volumeId } : {}), ...(after !== null ? { after } : {}) });
      all.push(...page.items);
      after = page.next;
    } while (after !== null);
    return all;
  }

  createVolume(input: CreateVolumeInput): Promise<VolumeView> {
    return this.manage(MANAGE_WORKFLOWS.createVolume, manageWorkflowIds.createVolume(input.volumeId), input, `Create volume ${input.volumeId} on ${input.backend}${input.pool ? `/${input.pool}` : ''}`);
  }

  deleteVolume(volumeId: string): Promise<VolumeView> {
    return this.manage(MANAGE_WORKFLOWS.deleteVolume, manageWorkflowIds.deleteVolume(volumeId), { volumeId }, `Delete volume ${volumeId}`, `volume '${volumeId}' is already being deleted`);
  }

  importVolume(input: ImportVolumeInput): Promise<VolumeView> {
    return this.manage(MANAGE_WORKFLOWS.importVolume, manageWorkflowIds.importVolume(input.volumeId), input, `Import ${input.file} into a new volume ${input.volumeId} on ${input.backend}`);
  }

  exportVolume(input: ExportVolumeInput): Promise<{ volume: VolumeView; file: string; bytes: number; node: string }> {
    return this.manage(MANAGE_WORKFLOWS.exportVolume, manageWorkflowIds.exportVolume(input.volumeId, nonce()), input, `Export volume ${input.volumeId} to ${input.file}`);
  }

  attachVolume(input: AttachVolumeInput): Promise<AttachedVolume> {
    return this.manage(MANAGE_WORKFLOWS.attachVolume, manageWorkflowIds.attachVolume(input.volumeId), input, `Attach volume ${input.volumeId} for instance ${input.instance}`, `volume '${input.volumeId}' is already being attached`);
  }

  detachVolume(volumeId: string): Promise<VolumeView> {
    return this.manage(MANAGE_WORKFLOWS.detachVolume, manageWorkflowIds.detachVolume(volumeId), { volumeId }, `Detach volume ${volumeId}`, `volume '${volumeId}' is already being detached`);
  }

  createSnapshot(input: CreateSnapshotInput): Promise<SnapshotInfo> {
    return this.manage(MANAGE_WORKFLOWS.createSnapshot, manageWorkflowIds.createSnapshot(input.snapshotId), input, `Snapshot volume ${input.volumeId} as ${input.snapshotId}`);
  }

  deleteSnapshot(snapshotId: string): Promise<SnapshotInfo> {
    return this.manage(MANAGE_WORKFLOWS.deleteSnapshot, manageWorkflowIds.deleteSnapshot(snapshotId), { snapshotId }, `Delete snapshot ${snapshotId}`, `snapshot '${snapshotId}' is already being deleted`);
  }

  importBackupRecord(input: ImportBackupRecordInput): Promise<BackupView> {
    return this.manage(MANAGE_WORKFLOWS.importBackupRecord, manageWorkflowIds.importBackupRecord(nonce()), input, `Import a backup record into target ${input.target}`);
  }

  rebuildCatalog(): Promise<RebuildReport> {
    return this.manage(MANAGE_WORKFLOWS.rebuildCatalog, manageWorkflowIds.rebuildCatalog(), {}, 'Rebuild the catalog from the records in every target', 'a catalog rebuild is already running');
  }

  checkTargets(input: CheckTargetsInput): Promise<TargetCheck[]> {
    return this.manage(MANAGE_WORKFLOWS.checkTargets, manageWorkflowIds.checkTargets(nonce()), input, `Check target${input.target ? ` ${input.target}` : 's'}`);
  }

  /**
   * Waits until a just started backup, restore or delete has passed its validating step,
   * so a caller that does not wait for the end still hears at once of bad input (the
   * workflow's own atomic checks, not a second copy of them here).
   */
  async accepted(handle: WorkflowHandle): Promise<void> {
    const started = Date.now();
    for (let i = 0; ; i++) {
      const d = await handle.describe();
      if (d.status.name !== 'RUNNING') {
        await this.result(handle);
        return;
      }
      if (Date.now() - started > NO_WORKER_AFTER_MS && (await this.unserved(handle, d))) {
        await this.abandon(handle);
        throw this.noWorker();
      }
      // Nothing to ask before a worker has run the first workflow task (a query would wait for one).
      if (!pickedUp(d)) {
        await new Promise((r) => setTimeout(r, Math.min(200, 20 * (i + 1))));
        continue;
      }
      const p = await this.client.withDeadline(Date.now() + 2000, () => this.progress(handle));
      if (p && p.phase !== 'starting' && p.phase !== 'validating' && !p.phase.startsWith('failed')) return;
      await new Promise((r) => setTimeout(r, Math.min(200, 20 * (i + 1))));
    }
  }

  async startBackup(input: BackupVolumeInput & { backupId: string }, labels: { target?: string; backend?: string } = {}): Promise<WorkflowHandle> {
    const workflowId = workflowIds.backup(input.volumeId);
    try {
      return await this.client.workflow.start(WORKFLOWS.backupVolume, {
        taskQueue: this.taskQueue,
        workflowId,
        args: [input],
        staticSummary: `Back up volume ${input.volumeId} to ${input.target ?? labels.target ? `target ${input.target ?? labels.target}` : 'the default target'} as backup ${input.backupId}`,
        typedSearchAttributes: [
          { key: SEARCH_ATTRIBUTES.volumeId, value: input.volumeId },
          { key: SEARCH_ATTRIBUTES.backupId, value: input.backupId },
          // The workflow sets target and backend itself once it has resolved them.
          ...(labels.target ?? input.target ? [{ key: SEARCH_ATTRIBUTES.target, value: (labels.target ?? input.target)! }] : []),
          ...(labels.backend ? [{ key: SEARCH_ATTRIBUTES.backend, value: labels.backend }] : []),
          { key: SEARCH_ATTRIBUTES.status, value: 'creating' },
        ],
      });
    } catch (e) {
      if (e instanceof WorkflowExecutionAlreadyStartedError) {
        throw new BackupInProgress(`volume '${input.volumeId}' already has a backup running (workflow ${workflowId}); one backup per volume at a time`);
      }
      throw await this.explainRefusal(e);
    }
  }

  /**
   * A consistency group (backupGroup): snapshots of all volumes at one moment between the
   * config's named pre and post hooks, then a backup of each. The result is BackupGroupResult.
   */
  async startBackupGroup(input: BackupGroupInput & { groupId: string }): Promise<WorkflowHandle> {
    const workflowId = workflowIds.group(input.groupId);
    try {
      return await this.client.workflow.start(WORKFLOWS.backupGroup, {
        taskQueue: this.taskQueue,
        workflowId,
        args: [input],
        staticSummary: `Back up volumes ${input.volumeIds.join(', ')} as consistency group ${input.groupId}`,
      });
    } catch (e) {
      if (e instanceof WorkflowExecutionAlreadyStartedError) throw new InvalidInput(`group id '${input.groupId}' is already used (workflow ${workflowId})`);
      throw await this.explainRefusal(e);
    }
  }

  async startRestore(input: RestoreBackupInput & { newVolumeId?: string }): Promise<WorkflowHandle> {
    const workflowId = workflowIds.restore(input.backupId);
    try {
      return await this.client.workflow.start(WORKFLOWS.restoreBackup, {
        taskQueue: this.taskQueue,
        workflowId,
        args: [input],
        staticSummary: `Restore backup ${input.backupId} onto ${input.volumeId ? `volume ${input.volumeId}` : `a new volume on ${input.backend}${input.pool ? `/${input.pool}` : ''}`}`,
        typedSearchAttributes: [
          { key: SEARCH_ATTRIBUTES.backupId, value: input.backupId },
          { key: SEARCH_ATTRIBUTES.volumeId, value: input.volumeId ?? input.newVolumeId ?? '' },
          { key: SEARCH_ATTRIBUTES.status, value: 'restoring' },
        ],
      });
    } catch (e) {
      if (e instanceof WorkflowExecutionAlreadyStartedError) {
        throw new InvalidStatus(`backup '${input.backupId}' is already being restored (workflow ${workflowId})`);
      }
      throw await this.explainRefusal(e);
    }
  }

  async startDelete(input: DeleteBackupInput): Promise<WorkflowHandle> {
    const workflowId = workflowIds.deleteBackup(input.backupId);
    try {
      return await this.client.workflow.start(WORKFLOWS.deleteBackup, {
        taskQueue: this.taskQueue,
        workflowId,
        args: [input],
        staticSummary: `Delete backup ${input.backupId}`,
        typedSearchAttributes: [
          { key: SEARCH_ATTRIBUTES.backupId, value: input.backupId },
          { key: SEARCH_ATTRIBUTES.status, value: 'deleting' },
        ],
      });
    } catch (e) {
      if (e instanceof WorkflowExecutionAlreadyStartedError) throw new InvalidStatus(`backup '${input.backupId}' is already being deleted`);
      throw await this.explainRefusal(e);
    }
  }

  async startVerify(input: VerifyBackupInput): Promise<WorkflowHandle> {
    const workflowId = workflowIds.verify(input.backupId);
    try {
      return await this.client.workflow.start(WORKFLOWS.verifyBackup, {
        taskQueue: this.taskQueue,
        workflowId,
        args: [input],
        staticSummary: `Verify backup ${input.backupId}: read every chunk back and check its hash`,
        typedSearchAttributes: [
          { key: SEARCH_ATTRIBUTES.backupId, value: input.backupId },
          { key: SEARCH_ATTRIBUTES.status, value: 'verifying' },
        ],
      });
    } catch (e) {
      if (e instanceof WorkflowExecutionAlreadyStartedError) throw new InvalidStatus(`backup '${input.backupId}' is already being verified (workflow ${workflowId})`);
      throw await this.explainRefusal(e);
    }
  }

  /** Copies a backup to a second target (a backup of its own there); one copy per backup and target at a time. */
  async startCopy(input: CopyBackupInput): Promise<WorkflowHandle> {
    const workflowId = copyWorkflowId(input.backupId, input.target);
    try {
      return await this.client.workflow.start(WORKFLOWS.copyBackup, {
        taskQueue: this.taskQueue,
        workflowId,
        args: [input],
        staticSummary: `Copy backup ${input.backupId} to target ${input.target}`,
      });
    } catch (e) {
      if (e instanceof WorkflowExecutionAlreadyStartedError) throw new InvalidStatus(`backup '${input.backupId}' is already being copied to '${input.target}' (workflow ${workflowId})`);
      throw await this.explainRefusal(e);
    }
  }

  async copyBackup(input: CopyBackupInput): Promise<CopyBackupResult> {
    return await this.result<CopyBackupResult>(await this.startCopy(input));
  }

  /** Waits for a workflow's result; its failure comes back as a WorkflowError with the original type. */
  async result<T>(handle: WorkflowHandle): Promise<T> {
    try {
      return (await handle.result()) as T;
    } catch (e) {
      throw unwrap(e, handle.workflowId);
    }
  }

  async progress(handle: WorkflowHandle): Promise<Progress | null> {
    try {
      return await handle.query<Progress>('progress');
    } catch {
      return null;
    }
  }

  /**
   * A Temporal schedule that runs verifyBackup on a cron expression (say `0 3 * * 0`);
   * overlapping runs are skipped. Replaces an existing schedule of the backup.
   */
  async scheduleVerify(backupId: string, cron: string): Promise<{ scheduleId: string; nextRuns: string[] }> {
    const scheduleId = workflowIds.verify(backupId);
    try {
      let handle = this.client.schedule.getHandle(scheduleId);
      try {
        handle = await this.client.schedule.create({
          scheduleId,
          spec: { cronExpressions: [cron] },
          policies: { overlap: ScheduleOverlapPolicy.SKIP },
          action: {
            type: 'startWorkflow',
            workflowType: WORKFLOWS.verifyBackup,
            taskQueue: this.taskQueue,
            workflowId: scheduleId,
            args: [{ backupId } satisfies VerifyBackupInput],
            typedSearchAttributes: [
              { key: SEARCH_ATTRIBUTES.backupId, value: backupId },
              { key: SEARCH_ATTRIBUTES.status, value: 'verifying' },
            ],
          },
          memo: { purpose: `verify backup ${backupId}` },
        });
      } catch (e) {
        if (!(e instanceof ScheduleAlreadyRunning)) throw e;
        // Rescheduling: only the times change, so a bad expression leaves the old schedule as it was.
        await handle.update((prev) => ({ ...prev, spec: { cronExpressions: [cron] } }));
      }
      const d = await handle.describe();
      return { scheduleId, nextRuns: d.info.nextActionTimes.slice(0, 3).map((t) => t.toISOString()) };
    } catch (e) {
      const explained = await this.explainRefusal(e);
      if (explained !== e) throw explained;
      // The server refuses a malformed cron expression with its own words.
      if (e instanceof Error && /cron|invalid/i.test(e.message)) throw new InvalidInput(`invalid --schedule '${cron}': ${e.message}`);
      throw e;
    }
  }

  /** Removes the backup's verify schedule; none is success. */
  async unscheduleVerify(backupId: string): Promise<boolean> {
    try {
      await this.client.schedule.getHandle(workflowIds.verify(backupId)).delete();
      return true;
    } catch (e) {
      if (e instanceof ScheduleNotFoundError) return false;
      throw e;
    }
  }

  async cancel(workflowId: string): Promise<void> {
    const handle = this.client.workflow.getHandle(workflowId);
    const d = await handle.describe();
    if (d.status.name !== 'RUNNING') throw new InvalidInput(`workflow ${workflowId} is not running (${d.status.name})`);
    await handle.cancel();
  }

  async throttle(workflowId: string, bps: number | null): Promise<number | null> {
    return this.client.workflow.getHandle(workflowId).executeUpdate<number | null, [{ bps: number | null }]>('throttle', { args: [{ bps }] });
  }
}

export type { BackupResult, RestoreResult };
