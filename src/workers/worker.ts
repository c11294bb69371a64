/**
 * gbackup's worker processes. One process can run both roles:
 * - the control worker polls the shared task queue: workflows and control activities;
 * - the node worker polls `<taskQueue>-node-<node>`: attach, copy, detach on this host.
 * A node worker reconciles its attachment ledger before it polls.
 */
import { closableRetries } from '../temporal/retries.js';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker, type WorkflowBundle } from '@temporalio/worker';
import { nodeTaskQueue } from '../api.js';
import { createControlActivities } from '../activities/control.js';
import { createManageActivities } from '../activities/manage.js';
import { createNodeActivities } from '../activities/node.js';
import type { LoadedConfig } from '../config/load.js';
import { Connectors } from '../connectors/registry.js';
import { Throttle } from '../copy/throttle.js';
import { AttachmentLedger } from '../node/ledger.js';
import { reconcileLedger } from '../node/reconcile.js';
import { Runtime } from '../services/runtime.js';
import { InvalidConfig } from '../errors.js';
import { sweepAbandoned, sweepChangeBases, sweepTempSnapshots } from './sweeps.js';
import { keepAlive } from './keepalive.js';
import { reportRetries, type StepFailure } from './retries.js';
import { ensureSearchAttributes } from './search-attributes.js';
import { checkTarget, describeCheck } from '../drivers/backup/check.js';
import { temporalConnection } from '../temporal/connection.js';

/** The workflows directory, as .ts under vitest/tsx and as .js when built. */
export function workflowsPath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const dir = join(here, '..', 'workflows');
  return existsSync(join(dir, 'index.ts')) ? join(dir, 'index.ts') : join(dir, 'index.js');
}

/**
 * Tests and benchmarks hand in a pre-built bundle (also as GBACKUP_WORKFLOW_BUNDLE, a
 * file, for worker processes they start), which saves the seconds of bundling.
 */
function workflowSource(bundle: WorkflowBundle | undefined): { workflowBundle: WorkflowBundle } | { workflowsPath: string } {
  if (bundle) return { workflowBundle: bundle };
  const file = process.env.GBACKUP_WORKFLOW_BUNDLE;
  if (file) return { workflowBundle: { code: readFileSync(file, 'utf8') } };
  return { workflowsPath: workflowsPath() };
}

export interface WorkerOptions {
  config: LoadedConfig;
  /** Node name for the node worker; default the first configured node. */
  node?: string;
  /** Which roles to run; default both. */
  roles?: { control?: boolean; node?: boolean };
  /** A pre-built workflow bundle (tests build it once for many workers). */
  workflowBundle?: WorkflowBundle;
  log?: (msg: string) => void;
  /** Where the TEMPORAL_* overrides come from (temporal/connection.ts); default process.env. */
  env?: Record<string, string | undefined>;
}

export interface RunningWorkers {
  runtime: Runtime;
  node: string;
  /** Resolves when every worker has stopped. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export async function startWorkers(opts: WorkerOptions): Promise<RunningWorkers> {
  const { config } = opts;
  const log = opts.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  // A missing certificate or key file is named before anything is opened.
  const temporal = temporalConnection(config.temporal, opts.env);
  // Refuses a config that breaks the same-storage rule before anything polls.
  if (config.backends.length === 0) {
    throw new InvalidConfig(`config ${config.source} has no backends and targets: it can drive the CLI, but a worker serves backends (add backends:, targets:)`);
  }
  const roles = { control: opts.roles?.control ?? true, node: opts.roles?.node ?? true };
  // A node-only worker attaches and copies; the catalog is the control role's.
  const runtime = await Runtime.open(config, { catalog: roles.control });
  const node = opts.node ?? config.nodes[0]!.name;
  runtime.node(node);

  const connection = await NativeConnection.connect(temporal.options);
  // The worker's own client calls (signals, queries, search attributes) retry safely across its shutdown (retries.ts).
  const grpcRetries = closableRetries();
  const clientConnection = await Connection.connect({ ...temporal.options, interceptors: grpcRetries.interceptors });
  const client = new Client({ connection: clientConnection, namespace: temporal.namespace });
  const workers: Worker[] = [];
  // Progress signals and limit queries are best effort: a short deadline stops gRPC from
  // retrying them for long (say, while the server restarts), and shutdown waits for the
  // few in flight, so none is retried on a closed connection.
  const inFlight = new Set<Promise<unknown>>();
  const sideCall = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = client.withDeadline(Date.now() + 3000, fn);
    const settled = p.then(
      () => undefined,
      () => undefined,
    );
    inFlight.add(settled);
    void settled.then(() => inFlight.delete(settled));
    return p;
  };
  /**
   * Whether a workflow (or what it left running) may still be at work, `graceMs` after it
   * closed. Only a workflow the server does not know, or reports closed, is certainly not
   * running; an unknown answer counts as running.
   */
  const busyWithin = (graceMs: number) => async (workflowId: string): Promise<boolean> => {
    try {
      const d = await client.workflow.getHandle(workflowId).describe();
      if (d.status.name === 'RUNNING') return true;
      return graceMs > 0 && d.closeTime !== undefined && Date.now() - d.closeTime.getTime() < graceMs;
    } catch (e) {
      return (e as Error).name !== 'WorkflowNotFoundError';
    }
  };
  const isRunning = busyWithin(0);
  // For the sweep of abandoned operations a workflow closed only moments ago still counts:
  // the activities it left behind (a terminated workflow cancels none) go on until their
  // next heartbeat is refused, and an upload that outlived the sweep would leave a journal
  // or chunks nobody owns. A heartbeat timeout (plus slack) after the close, they have noticed.
  const mayStillWork = busyWithin(config.timeouts.heartbeat * 1000 + 2000);
  let ledger: AttachmentLedger | undefined;
  let reconcileTimer: NodeJS.Timeout | undefined;
  let sweepTimer: NodeJS.Timeout | undefined;
  const retries = reportRetries((workflowId: string, f: StepFailure) => {
    void sideCall(() => client.workflow.getHandle(workflowId).signal('stepFailed', f)).catch(() => undefined);
  });
  const started: string[] = [];
  let stopping = false;

  try {
    if (roles.control) {
      // Before anything polls: the workflows upsert these, and a start without them is refused.
      const added = await ensureSearchAttributes(clientConnection, { address: temporal.address, namespace: temporal.namespace, register: config.temporal.registerSearchAttributes });
      if (added.length > 0) log(`gbackup worker: registered search attributes ${added.join(', ')} in namespace '${temporal.namespace}'`);
      workers.push(
        await Worker.create({
          connection,
          namespace: temporal.namespace,
          taskQueue: config.temporal.taskQueue,
          ...workflowSource(opts.workflowBundle),
          activities: { ...createControlActivities(runtime), ...createManageActivities(runtime) },
          // After a worker dies, its cached workflows wait this long before another worker
          // takes them over (default 10 s).
          stickyQueueScheduleToStartTimeout: '3 seconds',
          interceptors: { activity: [keepAlive, retries] },
          maxHeartbeatThrottleInterval: '1 second',
        }),
      );
      let sweeping = false;
      sweepTimer = setInterval(() => {
        if (sweeping) return;
        sweeping = true;
        // Operations of workflows that ended unfinished (terminated, timed out) first: that
        // ends their backups, so the same pass can remove their temporary snapshots.
        void sweepAbandoned(runtime, { isRunning: mayStillWork })
          .then((cleaned) => cleaned.forEach((m) => log(`gbackup: ${m}`)))
          .catch((e: unknown) => log(`gbackup: sweep of abandoned operations failed: ${String(e)}`))
          .then(() => sweepTempSnapshots(runtime))
          .then((removed) => removed.forEach((id) => log(`gbackup: removed temporary snapshot ${id} left by a finished backup`)))
          .catch((e: unknown) => log(`gbackup: snapshot sweep failed: ${String(e)}`))
          .then(() => sweepChangeBases(runtime))
          .then((removed) => removed.forEach((name) => log(`gbackup: removed change-tracking clone ${name} (its backup is gone, failed or superseded)`)))
          .catch((e: unknown) => log(`gbackup: change-tracking sweep failed: ${String(e)}`))
          .finally(() => (sweeping = false));
      }, config.timeouts.reconcileEvery * 1000);
      started.push(`control role on task queue '${config.temporal.taskQueue}' (workflows, catalog and backend management)`);
    }
    if (roles.node) {
      const connector = new Connectors(runtime.nodeRoots(node));
      ledger = new AttachmentLedger(join(config.stateDir, 'nodes', node, 'ledger.sqlite'));
      const nodeLedger = ledger;
      const reconcile = async () => {
        const cleaned = await reconcileLedger({
          ledger: nodeLedger,
          connector,
          isRunning,
        });
        for (const c of cleaned) log(`gbackup node ${node}: reconciled ${c.path} (workflow ${c.workflowId} no longer running): detached ${c.detached.join(', ') || 'nothing attached'}`);
      };
      // At start-up, before polling: whatever a crash left attached is released first.
      await reconcile();
      // And periodically: a detach that failed for good is retried here.
      reconcileTimer = setInterval(() => void reconcile().catch((e: unknown) => log(`gbackup node ${node}: reconcile failed: ${String(e)}`)), config.timeouts.reconcileEvery * 1000);
      workers.push(
        await Worker.create({
          connection,
          namespace: temporal.namespace,
          taskQueue: nodeTaskQueue(config.temporal.taskQueue, node),
          interceptors: { activity: [keepAlive, retries] },
          // The copy's offset reaches the server at least every second: a resume after
          // a crash repeats at most about a second of copying.
          maxHeartbeatThrottleInterval: '1 second',
          activities: createNodeActivities({
            node,
            connector,
            ledger,
            throttle: new Throttle(config.copyBpsLimit),
            blockSize: config.copyBlockSize,
            ...(config.transferDirs !== undefined ? { transferDirs: config.transferDirs } : {}),
            notify: (workflowId, p) => sideCall(() => client.workflow.getHandle(workflowId).signal('copyProgress', p)),
            readLimit: async (workflowId) => (await sideCall(() => client.workflow.getHandle(workflowId).query<number | null>('copyLimit'))) ?? undefined,
            objectTarget: (name) => runtime.objectTarget(name),
            ...(config.hooks !== undefined ? { hooks: config.hooks } : {}),
          }),
        }),
      );
      started.push(`node role '${node}' on task queue '${nodeTaskQueue(config.temporal.taskQueue, node)}' (attach, copy, detach; backends ${runtime.node(node).backends.join(', ')})`);
    }
  } catch (e) {
    clearInterval(reconcileTimer);
    clearInterval(sweepTimer);
    await connection.close();
    grpcRetries.close();
    await clientConnection.close();
    throw e;
  }

  for (const line of started) log(`gbackup worker: ${line}, Temporal ${temporal.describe} namespace '${temporal.namespace}'`);
  // Object targets this host cannot use are worth a warning now, not a failed backup at 3 am;
  // checked in the background, so an unreachable store does not hold up polling.
  void Promise.all(
    config.targets
      .filter((t) => t.driver !== 'volume')
      .map(async (t) => {
        try {
          const c = await checkTarget(await runtime.objectTarget(t.name));
          if (stopping) return;
          if (!c.ok) log(`gbackup worker: WARNING: ${describeCheck(c)}`);
          else if (c.createdBucket) log(`gbackup worker: ${describeCheck(c)}`);
        } catch (e) {
          if (!stopping) log(`gbackup worker: WARNING: target '${t.name}': ${(e as Error).message}`);
        }
      }),
  );
  const done = Promise.all(workers.map((w) => w.run())).then(async () => {
    stopping = true;
    await Promise.all(inFlight);
    clearInterval(reconcileTimer);
    clearInterval(sweepTimer);
    ledger?.close();
    await runtime.close();
    await connection.close();
    grpcRetries.close();
    await clientConnection.close();
  });
  return {
    runtime,
    node,
    done,
    async shutdown() {
      stopping = true;
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
      await done;
    },
  };
}
