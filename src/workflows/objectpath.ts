/**
 * The data path to and from an object target: only the volume is attached (the store is
 * reached over the network from any node), on a node that reaches its backend. Same
 * node-loss handling as the generic path: a lost node's attachment is released from the
 * control side and the copy moves on, resuming from its heartbeat and the store.
 */
import type { Loc } from '../activities/plans.js';
import type { ConnectionInfo } from '../drivers/volume/driver.js';
import type { Activities } from './activities.js';
import type { Tracker } from './common.js';
import { onSomeNode, type NodeActs } from './nodes.js';
import type { Saga } from './saga.js';

export interface AttachedRequest<R> {
  volume: Loc;
  readOnly: boolean;
  /** Spreads work over nodes; the same key picks the same node. */
  key: string;
  tracker: Tracker;
  acts: Activities;
  /**
   * The node step that moves the bytes, with the volume attached on `node`; `attach` goes
   * into its input: `{ attach: true }` when the step attaches and detaches the volume itself.
   */
  run: (node: NodeActs, connection: ConnectionInfo, attach: { attach?: true }) => Promise<R & { detached?: boolean }>;
  /** Called right before bytes start landing on a destination volume. */
  onCopyStart?: () => void;
}

export async function runOnAttached<R>(req: AttachedRequest<R>): Promise<R> {
  const { control, compensation } = req.acts;
  const connect = async (held: Saga, together: boolean) => {
    const undo = () => compensation.terminateConnection({ loc: req.volume });
    // Asked at once with the node (together), the undo must be there before the step.
    if (together) held.add('terminate connection', undo);
    const conn = await control.initializeConnection({ loc: req.volume, readOnly: req.readOnly });
    if (!together) held.add('terminate connection', undo);
    return conn;
  };
  return onSomeNode({ backends: [req.volume.backend], key: req.key, tracker: req.tracker, acts: req.acts, connect }, async (acts, held, conn) => {
    // Local mode: one node step attaches, moves the chunks and detaches (see datapath.ts).
    const oneStep = req.acts.mode === 'local';
    let detached = false;
    held.add('detach volume', async () => (detached ? undefined : acts.undo.detachVolume({ connection: conn })));
    if (!oneStep) await acts.steps.attachVolume({ connection: conn, role: req.readOnly ? 'source' : 'destination' });
    req.tracker.phase(req.readOnly ? 'uploading chunks' : 'downloading chunks');
    req.onCopyStart?.();
    const result = await req.run(acts, conn, oneStep ? { attach: true } : {});
    detached = result.detached === true;
    return result;
  });
}
