/**
 * The data path to and from an object target: only the volume is attached (the store is
 * reached over the network from any node), on a node that reaches its backend. Same
 * node-loss handling as the generic path: a lost node's attachment is released from the
 * control side and the copy moves on, resuming from its heartbeat and the store.
 */
import { log, workflowInfo } from '@temporalio/workflow';
import type { Loc } from '../activities/control.js';
import type { ConnectionInfo } from '../drivers/volume/driver.js';
import type { Activities } from './activities.js';
import { Saga } from './saga.js';
import { isNodeLost, type Tracker } from './common.js';

type NodeActs = ReturnType<Activities['node']>;

export interface AttachedRequest<R> {
  volume: Loc;
  readOnly: boolean;
  /** Spreads work over nodes; the same key picks the same node. */
  key: string;
  tracker: Tracker;
  acts: Activities;
  /** The node step that moves the bytes, with the volume attached on `node`. */
  run: (node: NodeActs, connection: ConnectionInfo) => Promise<R>;
  /** Called right before bytes start landing on a destination volume. */
  onCopyStart?: () => void;
}

export async function runOnAttached<R>(req: AttachedRequest<R>): Promise<R> {
  const lost: string[] = [];
  const taskQueue = workflowInfo().taskQueue;
  const { control, compensation } = req.acts;
  for (;;) {
    const node = await control.chooseNode({ backends: [req.volume.backend], exclude: lost, key: req.key });
    req.tracker.state.node = node;
    const acts = req.acts.node(taskQueue, node);
    const held = new Saga();
    try {
      req.tracker.phase('attaching');
      const conn = await control.initializeConnection({ loc: req.volume, readOnly: req.readOnly });
      held.add('terminate connection', () => compensation.terminateConnection({ loc: req.volume }));
      held.add('detach volume', () => acts.undo.detachVolume({ connection: conn }));
      await acts.steps.attachVolume({ connection: conn, role: req.readOnly ? 'source' : 'destination' });
      req.tracker.phase(req.readOnly ? 'uploading chunks' : 'downloading chunks');
      req.onCopyStart?.();
      const result = await req.run(acts, conn);
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
