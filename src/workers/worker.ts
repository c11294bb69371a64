/**
 * gbackup's worker processes. One process can run both roles:
 * - the control worker polls the shared task queue: workflows and control activities;
 * - the node worker polls `<taskQueue>-node-<node>`: attach, copy, detach on this host.
 * A node worker reconciles its attachment ledger before it polls.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker, type WorkflowBundle } from '@temporalio/worker';
import { nodeTaskQueue } from '../api.js';
import { createControlActivities } from '../activities/control.js';
import { createNodeActivities } from '../activities/node.js';
import type { LoadedConfig } from '../config/load.js';
import { LoopConnector } from '../connectors/loop.js';
import { Throttle } from '../copy/throttle.js';
import { AttachmentLedger } from '../node/ledger.js';
import { reconcileLedger } from '../node/reconcile.js';
import { Runtime } from '../runtime.js';

/** The workflows directory, as .ts under vitest/tsx and as .js when built. */
export function workflowsPath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const dir = join(here, '..', 'workflows');
  return existsSync(join(dir, 'index.ts')) ? join(dir, 'index.ts') : join(dir, 'index.js');
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
  // Refuses a config that breaks the same-storage rule before anything polls.
  const runtime = await Runtime.open(config);
  const node = opts.node ?? config.nodes[0]!.name;
  runtime.node(node);
  const roles = { control: opts.roles?.control ?? true, node: opts.roles?.node ?? true };

  const connection = await NativeConnection.connect({ address: config.temporal.address });
  const clientConnection = await Connection.connect({ address: config.temporal.address });
  const client = new Client({ connection: clientConnection, namespace: config.temporal.namespace });
  const workers: Worker[] = [];
  let ledger: AttachmentLedger | undefined;

  try {
    if (roles.control) {
      workers.push(
        await Worker.create({
          connection,
          namespace: config.temporal.namespace,
          taskQueue: config.temporal.taskQueue,
          ...(opts.workflowBundle ? { workflowBundle: opts.workflowBundle } : { workflowsPath: workflowsPath() }),
          activities: createControlActivities(runtime),
        }),
      );
    }
    if (roles.node) {
      const connector = new LoopConnector(runtime.nodeRoots(node));
      ledger = new AttachmentLedger(join(config.stateDir, 'nodes', node, 'ledger.sqlite'));
      const cleaned = await reconcileLedger({
        ledger,
        connector,
        isRunning: async (workflowId) => {
          try {
            const d = await client.workflow.getHandle(workflowId).describe();
            return d.status.name === 'RUNNING';
          } catch {
            return false;
          }
        },
      });
      for (const c of cleaned) log(`gbackup node ${node}: reconciled ${c.path} (workflow ${c.workflowId} no longer running): detached ${c.detached.join(', ') || 'nothing attached'}`);
      workers.push(
        await Worker.create({
          connection,
          namespace: config.temporal.namespace,
          taskQueue: nodeTaskQueue(config.temporal.taskQueue, node),
          activities: createNodeActivities({
            node,
            connector,
            ledger,
            throttle: new Throttle(config.copyBpsLimit),
            blockSize: config.copyBlockSize,
            notify: async (workflowId, p) => client.workflow.getHandle(workflowId).signal('copyProgress', p),
            readLimit: async (workflowId) => (await client.workflow.getHandle(workflowId).query<number | null>('copyLimit')) ?? undefined,
          }),
        }),
      );
    }
  } catch (e) {
    await connection.close();
    await clientConnection.close();
    throw e;
  }

  log(`gbackup worker: node '${node}', task queues: ${workers.map((w) => w.options.taskQueue).join(', ')} on ${config.temporal.address}`);
  const done = Promise.all(workers.map((w) => w.run())).then(async () => {
    ledger?.close();
    runtime.close();
    await connection.close();
    await clientConnection.close();
  });
  return {
    runtime,
    node,
    done,
    async shutdown() {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
      await done;
    },
  };
}
