/**
 * Runs a data path on one node, moving to another when the node is lost. All node steps
 * of one copy run on one node, chosen among those that reach every backend involved;
 * when that node never picks up its work or stops heartbeating, what the body attached
 * is released (its undo steps, run from `held`) and the body runs again elsewhere,
 * resuming from its heartbeats.
 */
import { log, workflowInfo } from '@temporalio/workflow';
import type { Activities } from './activities.js';
import { Saga } from './saga.js';
import { isNodeLost, type Tracker } from './common.js';
import { settleAll } from '../settle.js';

export type NodeActs = ReturnType<Activities['node']>;

export async function onSomeNode<R, C>(
  req: {
    backends: string[];
    key: string;
    tracker: Tracker;
    acts: Activities;
    /**
     * The backend side of the attach (initializeConnection), pushing its undo onto `held`
     * first. `together`: its steps may run at once (they are independent).
     */
    connect: (held: Saga, together: boolean) => Promise<C>;
    /**
     * The node chosen and the connections opened already (prepareCopy), for the first
     * try; `release` (when the backends hold something per connection) goes onto `held`.
     */
    opened?: { node: string; connections: C; release?: () => Promise<unknown> };
  },
  body: (acts: NodeActs, held: Saga, connections: C) => Promise<R>,
): Promise<R> {
  const lost: string[] = [];
  const taskQueue = workflowInfo().taskQueue;
  // Choosing the node and opening the connections do not depend on each other: asked at
  // once, they cost the workflow one task instead of three. Versioned (StepVersions):
  // histories from before asked for the node first, then for each connection in turn.
  const together = req.acts.versions.connectTogether;
  for (;;) {
    const held = new Saga();
    const choose = () => req.acts.control.chooseNode({ backends: [...new Set(req.backends)], exclude: lost, key: req.key });
    let node: string | null = null;
    try {
      let connections: C;
      const opened = lost.length === 0 ? req.opened : undefined;
      if (opened) {
        if (opened.release) held.add('terminate connections', opened.release);
        node = opened.node;
        connections = opened.connections;
        req.tracker.state.node = node;
      } else if (together) {
        req.tracker.phase('attaching');
        [node, connections] = await settleAll<[string, C]>([choose(), req.connect(held, true)]);
        req.tracker.state.node = node;
      } else {
        node = await choose();
        req.tracker.state.node = node;
        req.tracker.phase('attaching');
        connections = await req.connect(held, false);
      }
      const result = await body(req.acts.node(taskQueue, node), held, connections);
      req.tracker.phase('detaching');
      const failed = await held.unwind();
      if (failed.length > 0) log.warn('detach did not finish; the node reconciles it at its next start', { node, failed });
      return result;
    } catch (err) {
      await held.unwind();
      if (node !== null && isNodeLost(err)) {
        log.warn('node lost; moving the copy to another node', { node });
        lost.push(node);
        continue;
      }
      throw err;
    }
  }
}
