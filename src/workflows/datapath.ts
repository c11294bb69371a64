/**
 * The generic data path of the spec: attach source and destination to one node, copy
 * with dd, detach both. All node steps of one copy run on one node, chosen among the
 * nodes that reach both backends; if that node is lost, what the backends hold is
 * released from the control queue and the copy moves to another eligible node.
 */
import { log, workflowInfo } from '@temporalio/workflow';
import type { Loc } from '../activities/control.js';
import type { CopyResult } from '../activities/node.js';
import type { Activities } from './activities.js';
import { Saga } from './saga.js';
import { isNodeLost, type Tracker } from './common.js';

export interface DataPathRequest {
  source: Loc;
  dest: Loc;
  size: number;
  /** The destination reads zeros: dd may skip writing zero blocks. */
  sparse: boolean;
  /** Spreads work over nodes; the same key picks the same node. */
  key: string;
  tracker: Tracker;
  /** Called right before bytes start landing on the destination. */
  onCopyStart?: () => void;
  acts: Activities;
}

export async function runDataPath(req: DataPathRequest): Promise<CopyResult> {
  const lost: string[] = [];
  const taskQueue = workflowInfo().taskQueue;
  const { control, compensation } = req.acts;
  for (;;) {
    const node = await control.chooseNode({ backends: [...new Set([req.source.backend, req.dest.backend])], exclude: lost, key: req.key });
    req.tracker.state.node = node;
    const acts = req.acts.node(taskQueue, node);
    const held = new Saga();
    try {
      req.tracker.phase('attaching');
      const src = await control.initializeConnection({ loc: req.source, readOnly: true });
      held.add('terminate source connection', () => compensation.terminateConnection({ loc: req.source }));
      const dst = await control.initializeConnection({ loc: req.dest, readOnly: false });
      held.add('terminate destination connection', () => compensation.terminateConnection({ loc: req.dest }));
      held.add('detach source', () => acts.undo.detachVolume({ connection: src }));
      await acts.steps.attachVolume({ connection: src, role: 'source' });
      held.add('detach destination', () => acts.undo.detachVolume({ connection: dst }));
      await acts.steps.attachVolume({ connection: dst, role: 'destination' });
      req.tracker.phase('copying');
      req.onCopyStart?.();
      const result = await acts.copy.copyVolume({ source: src, dest: dst, size: req.size, sparse: req.sparse, bpsLimit: req.tracker.currentLimit() });
      req.tracker.state.lastCopy = { resumedFrom: result.resumedFrom, bytesCopied: result.bytesCopied, storedBytes: result.storedBytes, node: result.node };
      req.tracker.state.bytesDone = result.storedBytes;
      req.tracker.state.bytesTotal = result.storedBytes;
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
