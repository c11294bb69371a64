/**
 * Operations whose workflow ended without finishing: terminated from the UI, or timed
 * out. Compensations never ran for them, so the control worker does their work: a
 * backup left `creating` becomes `error` and what it stored is removed; its source
 * volume gets its status back; a volume a restore left `restoring-backup` goes to
 * `error` (its data is incomplete); a backup left `restoring` by such a restore becomes
 * `available` again. Only workflows the server reports as not running count, and
 * nothing still attached on this host is deleted (the node's ledger reconcile detaches
 * it first; the next sweep finishes).
 *
 * Temporary snapshots carry their backup's id, so the same pass also removes those whose
 * backup no longer runs (a cleanup that failed for good).
 */
import { Connectors } from '../connectors/registry.js';
import { backupKind } from '../services/target-kinds.js';
import type { Runtime } from '../services/runtime.js';
import { changeBaseOf } from '../names.js';

export interface SweepDeps {
  /** False only when the server says the workflow is not running, and its activities have had time to notice (unknown: true). */
  isRunning(workflowId: string): Promise<boolean>;
  /** Addresses of what this host has attached (default: every connector's). */
  attachedFiles?(): Promise<Set<string>>;
}

export async function sweepAbandoned(rt: Runtime, deps: SweepDeps): Promise<string[]> {
  const c = rt.catalog;
  const done: string[] = [];
  const attached = await (deps.attachedFiles ?? (() => new Connectors(rt.allRoots()).attached()))();

  for (const b of await c.listBackups()) {
    if (b.status !== 'creating' || b.workflowId === null || (await deps.isRunning(b.workflowId))) continue;
    const wf = b.workflowId;
    // Nothing still attached on this host is removed; the next sweep finishes it.
    if (!(await backupKind(rt, b).removeAbandoned(rt, b, attached))) continue;
    await c.tx(async () => {
      await c.transitionBackup(b.id, ['creating'], 'error', { error: `abandoned: workflow ${wf} ended without finishing (terminated or timed out); what it stored was removed` });
      const v = await c.findVolume(b.volumeId);
      if (v && v.status === 'backing-up' && await c.volumeOwner(v.id) === wf) await c.transitionVolume(v.id, ['backing-up'], b.sourcePreviousStatus ?? 'available');
    });
    done.push(`backup ${b.id} of abandoned workflow ${wf}: error, its data removed`);
  }

  for (const v of await c.listVolumes()) {
    if (v.status !== 'restoring-backup' && v.status !== 'backing-up') continue;
    const owner = await c.volumeOwner(v.id);
    if (owner === null || (await deps.isRunning(owner))) continue;
    if (v.status === 'backing-up') {
      // Its backup row was handled above; a claim without one goes back as it was.
      await c.tx(async () => await c.transitionVolume(v.id, ['backing-up'], await c.volumePreviousStatus(v.id) ?? 'available'));
      done.push(`volume ${v.id}: back from 'backing-up' (workflow ${owner} ended)`);
      continue;
    }
    if (attached.has(rt.driver(v.backend).initializeConnection({ pool: v.pool, name: v.id }).path)) continue;
    await c.transitionVolume(v.id, ['restoring-backup'], 'error', { error: `restore workflow ${owner} ended without finishing (terminated or timed out); the volume's data is incomplete` });
    done.push(`volume ${v.id}: error, its restore workflow ${owner} ended without finishing`);
  }

  // A backup is `restoring` exactly while a volume is `restoring-backup` (the two change in
  // one transaction); with no such volume left, no restore holds it.
  await c.tx(async () => {
    if ((await c.listVolumes()).some((v) => v.status === 'restoring-backup')) return;
    for (const b of await c.listBackups()) {
      if (b.status !== 'restoring') continue;
      await c.transitionBackup(b.id, ['restoring'], 'available');
      done.push(`backup ${b.id}: available again (no restore holds it)`);
    }
  });
  return done;
}

/**
 * Temporary snapshots carry their backup's id, so the control worker can always find
 * the ones whose backup no longer runs (a cleanup that failed for good) and remove them.
 */
export async function sweepTempSnapshots(rt: Runtime): Promise<string[]> {
  const c = rt.catalog;
  const removed: string[] = [];
  for (const s of await c.listSnapshots()) {
    if (s.backupId === null || (await c.findBackup(s.backupId))?.status === 'creating') continue;
    await rt.driver(s.backend).deleteVolume({ pool: s.pool, name: s.id });
    await c.deleteSnapshotRecord(s.id);
    removed.push(s.id);
  }
  return removed;
}

/**
 * Change-tracking clones (changes-<backup>) of backups that are gone, failed, or no
 * longer the newest of their volume and target: a finalize that failed after keeping one,
 * or an older one that finalize could not remove. Backups still running keep theirs.
 */
export async function sweepChangeBases(rt: Runtime): Promise<string[]> {
  const c = rt.catalog;
  const removed: string[] = [];
  for (const [backend, driver] of rt.drivers) {
    for (const loc of await driver.listVolumes()) {
      const backupId = changeBaseOf(loc.name);
      if (backupId === null) continue;
      const b = await c.findBackup(backupId);
      if (b?.status === 'creating') continue;
      if (b && b.status !== 'error' && b.status !== 'deleting' && isNewestOfTarget(b, await c.listBackups(b.volumeId))) continue;
      await driver.deleteVolume(loc);
      removed.push(`${backend}/${loc.pool ?? ''}/${loc.name}`);
    }
  }
  return removed;
}

/** Whether no later finished backup of the same volume and target exists (whose clone replaces this one). */
function isNewestOfTarget(b: { id: string; target: string; createdAt: string }, all: { id: string; target: string; status: string; createdAt: string }[]): boolean {
  return !all.some((o) => o.id !== b.id && o.target === b.target && o.status === 'available' && o.createdAt > b.createdAt);
}
