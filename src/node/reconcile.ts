/**
 * Start-up reconciliation of a node: every ledger entry whose workflow no longer runs
 * is a leftover of a crash (the workflow finished or failed while this node was down),
 * so what it attached is detached and the entry cleared. Entries of running workflows
 * stay: those workflows will detach them themselves.
 */
import type { Connectors } from '../connectors/registry.js';
import type { AttachmentLedger } from './ledger.js';

export interface Reconciled {
  path: string;
  workflowId: string;
  detached: string[];
}

export async function reconcileLedger(deps: {
  ledger: AttachmentLedger;
  connector: Pick<Connectors, 'disconnectVolume'>;
  isRunning: (workflowId: string) => Promise<boolean>;
}): Promise<Reconciled[]> {
  const out: Reconciled[] = [];
  for (const e of deps.ledger.entries()) {
    if (await deps.isRunning(e.workflowId)) continue;
    const { detached } = await deps.connector.disconnectVolume({ protocol: e.protocol, path: e.path });
    deps.ledger.clear(e.path);
    out.push({ path: e.path, workflowId: e.workflowId, detached });
  }
  return out;
}
