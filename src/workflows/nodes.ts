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

export type NodeActs = ReturnType<Activities['node']>;

export async function onSomeNode<R>(
  req: { backends: string[]; key: string; tracker: Tracker; acts: Activities },
  body: (acts: NodeActs, held: Saga, node: string) => Promise<R>,
): Promise<R> {
  const lost: string[] = [];
  const taskQueue = workflowInfo().taskQueue;
  for (;;) {
    const node = await req.acts.control.chooseNode({ backends: [...new Set(req.backends)], exclude: lost, key: req.key });
    req.tracker.state.node = node;
    const acts = req.acts.node(taskQueue, node);
    const held = new Saga();
    try {
      const result = await body(acts, held, node);
      req.tracker.phase('detaching');
      const failed = await held.unwind();
      if (failed.length > 0) log.warn('detach did not finish; the node reconciles it at its next start', { node, failed });
      return result;
    } catch (err) {
      await held.unwind();
      if (isNodeLost(err)) {
        log.warn('node lost; moving the copy to another node', { node });
        lost.push(node);
        continue;
      }
      throw err;
    }
  }
}
