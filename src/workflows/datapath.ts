/**
 * The generic data path of the spec: attach source and destination to one node, copy
 * with dd, detach both. All node steps of one copy run on one node, chosen among the
 * nodes that reach both backends; if that node is lost, what the backends hold is
 * released from the control queue and the copy moves to another eligible node.
 */
import type { Loc } from '../activities/plans.js';
import type { CopyResult } from '../activities/node.js';
import type { ConnectionInfo } from '../drivers/volume/driver.js';
import type { Activities } from './activities.js';
import type { Tracker } from './common.js';
import { onSomeNode } from './nodes.js';
import { settleAll } from '../settle.js';
import type { Saga } from './saga.js';

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
  /** What prepareCopy returned: node chosen, connections open (first try only). */
  prepared?: { node: string; src: ConnectionInfo; dst: ConnectionInfo; release: boolean };
}

/** The backend side of both connections released, at once (idempotent; nothing to do for local files). */
export function terminateConnections(compensation: Activities['compensation'], source: Loc, dest: Loc): Promise<[void, void]> {
  return settleAll([compensation.terminateConnection({ loc: source }), compensation.terminateConnection({ loc: dest })]);
}

export async function runDataPath(req: DataPathRequest): Promise<CopyResult> {
  const { control, compensation } = req.acts;
  const connect = async (held: Saga, together: boolean) => {
    if (together) {
      held.add('terminate connections', () => terminateConnections(compensation, req.source, req.dest));
      const [src, dst] = await settleAll([control.initializeConnection({ loc: req.source, readOnly: true }), control.initializeConnection({ loc: req.dest, readOnly: false })]);
      return { src, dst };
    }
    const src = await control.initializeConnection({ loc: req.source, readOnly: true });
    held.add('terminate source connection', () => compensation.terminateConnection({ loc: req.source }));
    const dst = await control.initializeConnection({ loc: req.dest, readOnly: false });
    held.add('terminate destination connection', () => compensation.terminateConnection({ loc: req.dest }));
    return { src, dst };
  };
  const p = req.prepared;
  const opened = p && {
    node: p.node,
    connections: { src: p.src, dst: p.dst },
    ...(p.release ? { release: () => terminateConnections(compensation, req.source, req.dest) } : {}),
  };
  return onSomeNode({ backends: [req.source.backend, req.dest.backend], key: req.key, tracker: req.tracker, acts: req.acts, connect, ...(opened ? { opened } : {}) }, async (acts, held, { src, dst }) => {
    // One node step (local mode): the copy attaches both volumes, copies and detaches them,
    // so the node is asked once instead of five times. The undos stay on the stack, for a
    // copy that fails, is cancelled or loses its node; they are skipped once it says it detached.
    const oneStep = req.acts.mode === 'local';
    let detached = false;
    held.add('detach source', async () => (detached ? undefined : acts.undo.detachVolume({ connection: src })));
    if (!oneStep) await acts.steps.attachVolume({ connection: src, role: 'source' });
    held.add('detach destination', async () => (detached ? undefined : acts.undo.detachVolume({ connection: dst })));
    if (!oneStep) await acts.steps.attachVolume({ connection: dst, role: 'destination' });
    req.tracker.phase('copying');
    req.onCopyStart?.();
    const result = await acts.copy.copyVolume({
      source: src,
      dest: dst,
      size: req.size,
      sparse: req.sparse,
      bpsLimit: req.tracker.currentLimit(),
      ...(oneStep ? { attach: true } : {}),
    });
    detached = result.detached === true;
    req.tracker.state.lastCopy = { resumedFrom: result.resumedFrom, bytesCopied: result.bytesCopied, storedBytes: result.storedBytes, node: result.node };
    req.tracker.state.bytesDone = result.storedBytes;
    req.tracker.state.bytesTotal = result.storedBytes;
    return result;
  });
}
