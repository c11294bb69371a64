/**
 * Control activities: they run on the shared task queue and touch the catalog and the
 * backends' management side (create, delete, export). Each is a thin adapter over the
 * catalog and a driver, and each can run twice with the same input and end in the same
 * state: the workflow's retries and compensations depend on that.
 */
import { Context, log } from '@temporalio/activity';
import type { VolumeStatus, VolumeView } from '../api.js';
import { backupView } from '../catalog/catalog.js';
import type { ConnectionInfo } from '../drivers/volume/driver.js';
import { InsufficientSpace, InvalidInput, InvalidStatus, NoEligibleNode } from '../errors.js';
import type { Runtime } from '../services/runtime.js';
import type { BackupPlan, Loc, RestorePlan, Timeouts } from './plans.js';
import { formatBytes } from '../size.js';
import { failpoint } from './failpoints.js';
import { atMostExtents, copyExtentsOf, extentBytes, type Extent } from '../copy/extents.js';
import { createObjectActivities } from './objects.js';
import { createPolicyActivities } from './policy.js';
import { createCopyActivities } from './copy.js';
import { createGroupActivities } from './group.js';
import { checkBackupSource, checkDeletable, checkIncrementalTarget, checkRestorable, checkRestoreOnto } from '../services/rules.js';
import { backupKind, targetKind } from '../services/target-kinds.js';
import { changeBaseName, tempSnapshotName } from '../names.js';

export { changeBaseName, tempSnapshotName };
/** Changed ranges handed to the copy at most: they travel in the workflow history. */
const MAX_CHANGED_EXTENTS = 4096;

/** What prepareCopy did: the storage copied by itself, or the generic copy is ready to run. */
export type PreparedCopy = { assisted: true; storedBytes: number } | { assisted: false; node: string; src: ConnectionInfo; dst: ConnectionInfo; release: boolean };

export interface ChangesFound {
  /** The backup to build on; null: the copy finds its parent by itself and reads everything. */
  parentId: string | null;
  /** With parentId: the byte ranges that may differ from it; every other chunk is the parent's. */
  changed?: Extent[];
  /** What finalize records (BackupView.changes). */
  changes: string;
}
const workflowId = () => Context.current().info.workflowExecution?.workflowId ?? 'none';

/** Spreads copies over nodes deterministically by key, so a retry picks the same node. */
export function spreadIndex(key: string, n: number): number {
  let h = 0;
  for (const ch of key) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return h % n;
}

/**
 * What the control activities use of a process's runtime, and no more: the catalog, the
 * drivers and targets, the nodes and timeouts of the config. Tests can hand in a smaller
 * world than a whole runtime.
 */
export type ControlDeps = Pick<Runtime, 'catalog' | 'driver' | 'target' | 'objectTarget' | 'isObjectTarget' | 'volumePlace'> & {
  config: Pick<Runtime['config'], 'nodes' | 'timeouts' | 'hooks'>;
};

export function createControlActivities(rt: ControlDeps) {
  const cat = () => rt.catalog;
  const timeouts: Timeouts = { scheduleToStartMs: rt.config.timeouts.scheduleToStart * 1000, heartbeatMs: rt.config.timeouts.heartbeat * 1000 };
  /** Refuses, before anything is made, a copy no node can run (a storage-assisted one needs none). */
  const checkReachable = async (source: Loc | null, dest: Loc | null) => {
    const backends = [...new Set([source?.backend, dest?.backend].filter((b): b is string => b !== undefined))];
    if (rt.config.nodes.some((n) => backends.every((b) => n.backends.includes(b)))) return;
    if (source === null || dest === null) {
      throw new NoEligibleNode(`no node reaches backend '${backends[0]}' (nodes: ${rt.config.nodes.map((n) => `${n.name} -> ${n.backends.join(',')}`).join('; ')})`);
    }
    const s = rt.driver(source.backend);
    const d = rt.driver(dest.backend);
    if ((await d.capabilities()).storageAssistedBackup && s.driverName === d.driverName) return;
    throw new NoEligibleNode(`no node reaches both ${backends.map((b) => `'${b}'`).join(' and ')} (nodes: ${rt.config.nodes.map((n) => `${n.name} -> ${n.backends.join(',')}`).join('; ')})`);
  };

  const chooseNode = (input: { backends: string[]; exclude: string[]; key: string }): string => {
    const eligible = rt.config.nodes.filter((n) => input.backends.every((b) => n.backends.includes(b)));
    const usable = eligible.filter((n) => !input.exclude.includes(n.name));
    if (usable.length === 0) {
      throw new NoEligibleNode(
        eligible.length === 0
          ? `no node reaches both ${input.backends.map((b) => `'${b}'`).join(' and ')} (nodes: ${rt.config.nodes.map((n) => `${n.name} -> ${n.backends.join(',')}`).join('; ')})`
          : `every node that reaches ${input.backends.join(' and ')} failed (${input.exclude.join(', ')})`,
      );
    }
    return usable[spreadIndex(input.key, usable.length)]!.name;
  };

  const storageAssistedCopy = async (input: { source: Loc; dest: Loc; size: number }): Promise<{ assisted: boolean; storedBytes: number }> => {
    await failpoint('assisted-copy');
    const destDriver = rt.driver(input.dest.backend);
    const sourceDriver = rt.driver(input.source.backend);
    if (!(await destDriver.capabilities()).storageAssistedBackup) return { assisted: false, storedBytes: 0 };
    const assisted = await destDriver.storageAssistedCopy(sourceDriver, input.source, input.dest);
    if (!assisted) return { assisted: false, storedBytes: 0 };
    return { assisted: true, storedBytes: extentBytes(copyExtentsOf(await destDriver.dataExtents(input.dest, input.size), input.size)) };
  };

  const createBackendVolume = async (input: { loc: Loc; size: number }): Promise<void> => {
    await failpoint('create-destination');
    await rt.driver(input.loc.backend).createVolume(input.loc, input.size);
  };

  return {
    async beginBackup(input: {
      backupId: string;
      volumeId: string;
      target?: string;
      name?: string;
      force?: boolean;
      snapshotId?: string;
      incremental?: boolean;
      /** A policy's run: recorded on the backup, for its retention. */
      policy?: string;
      scheduledAt?: string;
      /** A consistency group's backup (backupGroup): recorded on it. */
      groupId?: string;
    }): Promise<BackupPlan> {
      const wf = workflowId();
      const c = cat();
      const target = rt.target(input.target);
      const existing = await c.findBackup(input.backupId);
      const volume = await c.volume(input.volumeId);
      const kind = targetKind(rt, target.name);
      checkIncrementalTarget(target, input.incremental === true);
      const { dest, objectTarget } = kind.place(target, input.backupId);
      const snapshot = input.snapshotId !== undefined ? await c.snapshot(input.snapshotId) : null;
      // An in-use volume is read through a temporary snapshot named after the backup (the spec).
      const inUse = snapshot === null && (existing ? existing.sourcePreviousStatus === 'in-use' : volume.status === 'in-use');
      // Change tracking needs the exact bytes backed up kept as a clone: read a snapshot.
      const changeTracking = objectTarget !== null && snapshot === null && (await rt.driver(volume.backend).capabilities()).snapshotMethod === 'reflink';
      const tempSnapshot: Loc | null = inUse || changeTracking ? { backend: volume.backend, pool: volume.pool, name: tempSnapshotName(input.backupId) } : null;
      const source: Loc = snapshot
        ? { backend: snapshot.backend, pool: snapshot.pool, name: snapshot.id }
        : (tempSnapshot ?? { backend: volume.backend, pool: volume.pool, name: volume.id });
      const plan = async (size: number): Promise<BackupPlan> => ({
        backupId: input.backupId,
        volume: await c.volume(input.volumeId),
        target: target.name,
        source,
        dest,
        ...(objectTarget !== null ? { objectTarget, incremental: input.incremental === true } : {}),
        size,
        tempSnapshot,
        ...(changeTracking ? { changeTracking } : {}),
        timeouts,
      });
      if (existing) {
        // A retry of this very step after it committed: same plan again.
        if (existing.workflowId === wf && existing.status === 'creating') return await plan(existing.size);
        throw new InvalidInput(`backup id '${input.backupId}' is already used`);
      }
      checkBackupSource(volume, snapshot, input.force === true);
      await checkReachable(source, dest);
      await kind.checkUsable(rt, target, volume);
      await c.tx(async () => {
        // An available volume is claimed as backing-up; an in-use one stays in-use (its
        // instance keeps writing; we read the snapshot), and so does a snapshot's volume.
        if (!snapshot && volume.status === 'available') await c.transitionVolume(volume.id, ['available'], 'backing-up', { rememberPrevious: true, owner: wf });
        await c.insertBackup({
          id: input.backupId,
          name: input.name ?? input.backupId,
          volumeId: volume.id,
          snapshotId: snapshot?.id ?? null,
          target: target.name,
          status: 'creating',
          size: volume.size,
          location: dest,
          workflowId: wf,
          sourcePreviousStatus: volume.status,
          policy: input.policy ?? null,
          scheduledAt: input.scheduledAt ?? null,
          groupId: input.groupId ?? null,
        });
      });
      await failpoint('backup.begin');
      return await plan(volume.size);
    },

    /** The temporary snapshot of an in-use volume; idempotent (an earlier attempt's snapshot is reused). */
    async createTempSnapshot(input: { backupId: string; volumeId: string }): Promise<void> {
      await failpoint('snapshot');
      const c = cat();
      const v = await c.volume(input.volumeId);
      const id = tempSnapshotName(input.backupId);
      if (!await c.findSnapshot(id)) await c.insertSnapshot({ id, name: id, volumeId: v.id, backend: v.backend, pool: v.pool, size: v.size, status: 'creating', backupId: input.backupId });
      await rt.driver(v.backend).createSnapshot({ pool: v.pool, name: v.id }, { pool: v.pool, name: id });
      await c.setSnapshotStatus(id, 'available');
    },

    /** Removes a snapshot from storage and catalog; one already gone is success. */
    async deleteSnapshot(input: { snapshotId: string }): Promise<void> {
      await failpoint('cleanup');
      const c = cat();
      const s = await c.findSnapshot(input.snapshotId);
      if (!s) return;
      await rt.driver(s.backend).deleteVolume({ pool: s.pool, name: s.id });
      await c.deleteSnapshotRecord(s.id);
    },

    /** Nodes that reach every backend in `backends`; the one to use is picked by `key`. */
    async chooseNode(input: { backends: string[]; exclude: string[]; key: string }): Promise<string> {
      return chooseNode(input);
    },

    async createBackendVolume(input: { loc: Loc; size: number }): Promise<void> {
      await createBackendVolume(input);
    },

    async deleteBackendVolume(input: { loc: Loc }): Promise<void> {
      await rt.driver(input.loc.backend).deleteVolume(input.loc);
      await rt.driver(input.loc.backend).deleteRecord(input.loc);
    },

    /**
     * The vendor hook of the spec: the destination's driver copies within its storage
     * (btrfs: a reflink clone) when it can. `assisted: false` sends the workflow down the
     * generic attach + dd path.
     */
    async storageAssistedCopy(input: { source: Loc; dest: Loc; size: number }): Promise<{ assisted: boolean; storedBytes: number }> {
      return storageAssistedCopy(input);
    },

    /**
     * Every step before a copy, as one control step (local mode, StepVersions.prepareInOne):
     * the storage-assisted copy when the storage can; else the destination made (when
     * asked), the node chosen and both connections opened. One local activity instead of
     * four in a row: each costs the workflow a round trip through the SDK. Every part is
     * idempotent, so a retry repeats it harmlessly, and the workflow's undo steps (delete
     * the destination, terminate the connections) are on its stack before this runs.
     * `release` says whether the backends hold anything per connection that the
     * workflow must release once the copy is done (local files hold nothing).
     */
    async prepareCopy(input: { source: Loc; dest: Loc; size: number; create: boolean; key: string }): Promise<PreparedCopy> {
      const assisted = await storageAssistedCopy(input);
      if (assisted.assisted) return { assisted: true, storedBytes: assisted.storedBytes };
      if (input.create) await createBackendVolume({ loc: input.dest, size: input.size });
      const node = chooseNode({ backends: [...new Set([input.source.backend, input.dest.backend])], exclude: [], key: input.key });
      const sourceDriver = rt.driver(input.source.backend);
      const destDriver = rt.driver(input.dest.backend);
      const src = sourceDriver.initializeConnection(input.source, { readOnly: true });
      const dst = destDriver.initializeConnection(input.dest, { readOnly: false });
      const release = (await sourceDriver.capabilities()).exportsConnections === true || (await destDriver.capabilities()).exportsConnections === true;
      return { assisted: false, node, src, dst, release };
    },

    async clearBackendVolume(input: { loc: Loc }): Promise<void> {
      await rt.driver(input.loc.backend).clearVolume(input.loc);
    },

    async initializeConnection(input: { loc: Loc; readOnly: boolean }): Promise<ConnectionInfo> {
      return rt.driver(input.loc.backend).initializeConnection(input.loc, { readOnly: input.readOnly });
    },

    async terminateConnection(input: { loc: Loc }): Promise<void> {
      await rt.driver(input.loc.backend).terminateConnection(input.loc);
    },

    /**
     * Changed-block tracking for an incremental: the newest available backup of the volume
     * in this target whose clone is still kept is the parent, and the extent maps of that
     * clone and of this backup's snapshot say which ranges to read. Anything that keeps
     * this from being exact (no such backup, its clone gone, storage that cannot tell)
     * sends the backup down the hash path, with the reason recorded and logged.
     */
    async findChanges(input: { backupId: string }): Promise<ChangesFound> {
      const c = cat();
      const b = await c.backup(input.backupId);
      const v = await c.volume(b.volumeId);
      const driver = rt.driver(v.backend);
      const hash = (why: string): ChangesFound => {
        log.warn('changed-block tracking not used; every chunk is read and hashed', { backupId: b.id, volumeId: v.id, reason: why });
        return { parentId: null, changes: `hash: ${why}` };
      };
      const parent = (await c.listBackups(v.id))
        .filter((p) => p.target === b.target && p.status === 'available' && p.method === 'chunked' && p.size === b.size)
        .sort((x, y) => (x.createdAt === y.createdAt ? x.id.localeCompare(y.id) : x.createdAt.localeCompare(y.createdAt)))
        .pop();
      if (!parent) return hash(`no earlier backup of volume '${v.id}' in target '${b.target}' to compare with`);
      const base = { pool: v.pool, name: changeBaseName(parent.id) };
      if ((await driver.volumeSize(base)) === null) return hash(`the copy of backup '${parent.id}' kept on backend '${v.backend}' for change tracking is gone (made before tracking, or removed)`);
      const found = await driver.changedBlocks(base, { pool: v.pool, name: tempSnapshotName(b.id) }, b.size);
      if (found.method === 'fallback') return hash(found.reason);
      return { parentId: parent.id, changed: atMostExtents(found.changed, MAX_CHANGED_EXTENTS), changes: 'cbt' };
    },

    /**
     * The commit point. With `keepChangeBase` (change tracking), what the backup read (its
     * temporary snapshot) is first kept as the clone the next incremental compares with;
     * kept before the commit, so the snapshot sweep, which removes temporary snapshots of
     * backups no longer running, cannot take it away in between. A clone left by a
     * finalize that then fails belongs to no available backup and is swept.
     */
    async finalizeBackup(input: {
      backupId: string;
      storedBytes: number;
      method: string;
      node: string | null;
      parentId?: string | null;
      changes?: string;
      keepChangeBase?: boolean;
    }): Promise<ReturnType<typeof backupView>> {
      const c = cat();
      const b = await c.backup(input.backupId);
      if (b.status === 'available') return backupView(b);
      await failpoint('finalize');
      const v = input.keepChangeBase ? await c.volume(b.volumeId) : null;
      if (v) await rt.driver(v.backend).createSnapshot({ pool: v.pool, name: tempSnapshotName(b.id) }, { pool: v.pool, name: changeBaseName(b.id) });
      await backupKind(rt, b).record(rt, b, await c.volume(b.volumeId), input);
      await c.tx(async () => {
        await c.transitionBackup(b.id, ['creating'], 'available', {
          storedBytes: input.storedBytes,
          method: input.method,
          node: input.node ?? undefined,
          ...(input.parentId ? { parentId: input.parentId } : {}),
          ...(input.changes ? { changes: input.changes } : {}),
        });
        const v = await c.volume(b.volumeId);
        if (v.status === 'backing-up') await c.transitionVolume(v.id, ['backing-up'], b.sourcePreviousStatus ?? 'available');
      });
      if (v) {
        // One clone per volume and target: the older backups' go (the sweep retries a failure).
        for (const older of await c.listBackups(v.id)) {
          if (older.id === b.id || older.target !== b.target) continue;
          await rt.driver(v.backend).deleteVolume({ pool: v.pool, name: changeBaseName(older.id) }).catch((e: unknown) => log.warn('old change-tracking clone not removed', { backupId: older.id, error: String(e) }));
        }
      }
      return backupView(await c.backup(b.id));
    },

    /** Compensation of beginBackup: backup `error` with the reason, source back to its previous status. */
    async failBackup(input: { backupId: string; reason: string }): Promise<void> {
      const c = cat();
      const b = await c.findBackup(input.backupId);
      // Only this workflow's own backup: a refused duplicate id must not fail someone else's.
      if (!b || b.workflowId !== workflowId()) return;
      await c.tx(async () => {
        if (b.status === 'creating') await c.transitionBackup(b.id, ['creating'], 'error', { error: input.reason });
        const v = await c.findVolume(b.volumeId);
        if (v && v.status === 'backing-up' && await c.volumeOwner(v.id) === b.workflowId) {
          await c.transitionVolume(v.id, ['backing-up'], b.sourcePreviousStatus ?? 'available');
        }
      });
    },

    async beginRestore(input: { backupId: string; volumeId?: string; backend?: string; pool?: string; newVolumeId: string; name?: string }): Promise<RestorePlan> {
      const wf = workflowId();
      const c = cat();
      const backup = await c.backup(input.backupId);
      const kind = backupKind(rt, backup);
      const { source, objectTarget } = kind.locate(backup);
      if (source === null && objectTarget === null) throw new InvalidInput(`backup '${backup.id}' has no stored location`);
      const object = objectTarget !== null ? { objectTarget } : {};
      if (input.volumeId !== undefined) {
        const v = await c.volume(input.volumeId);
        const dest: Loc = { backend: v.backend, pool: v.pool, name: v.id };
        const plan: RestorePlan = { backupId: backup.id, volumeId: v.id, createdVolume: false, source, ...object, dest, size: backup.size, timeouts };
        if (v.status === 'restoring-backup' && await c.volumeOwner(v.id) === wf) return plan;
        checkRestorable(backup);
        checkRestoreOnto(v, backup);
        await checkReachable(source, dest);
        // The chain and the key, before any volume changes.
        await kind.checkReadable(rt, backup);
        await c.tx(async () => {
          await c.transitionBackup(backup.id, ['available'], 'restoring');
          await c.transitionVolume(v.id, ['available'], 'restoring-backup', { rememberPrevious: true, owner: wf });
        });
        return plan;
      }
      const backend = input.backend!;
      const existing = await c.findVolume(input.newVolumeId);
      if (existing) {
        if (existing.status === 'restoring-backup' && await c.volumeOwner(existing.id) === wf) {
          return {
            backupId: backup.id,
            volumeId: existing.id,
            createdVolume: true,
            source,
            ...object,
            dest: { backend: existing.backend, pool: existing.pool, name: existing.id },
            size: backup.size,
            timeouts,
          };
        }
        throw new InvalidInput(`volume id '${input.newVolumeId}' is already used`);
      }
      checkRestorable(backup);
      const pool = rt.volumePlace(backend, input.pool);
      await checkReachable(source, { backend, pool, name: input.newVolumeId });
      // The chain and the key, before any volume changes.
      await kind.checkReadable(rt, backup);
      const driver = rt.driver(backend);
      const { freeBytes } = await driver.stats(pool);
      if (backup.size > freeBytes) throw new InsufficientSpace(`backend '${backend}'${pool ? ` pool '${pool}'` : ''} has ${formatBytes(freeBytes)} free; backup '${backup.id}' needs ${formatBytes(backup.size)}`);
      await c.tx(async () => {
        await c.transitionBackup(backup.id, ['available'], 'restoring');
        await c.insertVolume({ id: input.newVolumeId, name: input.name ?? input.newVolumeId, backend, pool, size: backup.size, status: 'restoring-backup', owner: wf });
      });
      return { backupId: backup.id, volumeId: input.newVolumeId, createdVolume: true, source, ...object, dest: { backend, pool, name: input.newVolumeId }, size: backup.size, timeouts };
    },

    async finalizeRestore(input: { backupId: string; volumeId: string }): Promise<VolumeView> {
      const c = cat();
      await failpoint('finalize');
      await c.tx(async () => {
        const v = await c.volume(input.volumeId);
        if (v.status === 'restoring-backup') await c.transitionVolume(v.id, ['restoring-backup'], 'available');
        const b = await c.backup(input.backupId);
        if (b.status === 'restoring') await c.transitionBackup(b.id, ['restoring'], 'available');
      });
      return await c.volume(input.volumeId);
    },

    /**
     * Compensation of beginRestore. The backup is unharmed and goes back to `available`.
     * A volume the restore made is gone (its data was deleted before this runs); an
     * existing volume goes back to its status, or to `error` once the copy wrote to it,
     * because its old contents are then partly overwritten.
     */
    async failRestore(input: { backupId: string; volumeId: string; createdVolume: boolean; dataTouched: boolean; reason: string; keepVolume?: boolean }): Promise<void> {
      const wf = workflowId();
      const c = cat();
      await c.tx(async () => {
        const b = await c.findBackup(input.backupId);
        if (b && b.status === 'restoring') await c.transitionBackup(b.id, ['restoring'], 'available');
        const v = await c.findVolume(input.volumeId);
        if (!v || v.status !== 'restoring-backup' || await c.volumeOwner(v.id) !== wf) return;
        // keepVolume: the backup itself is damaged; the volume stays, in error, for the operator to see (Cinder's error_restoring).
        if (input.createdVolume && input.keepVolume !== true) await c.deleteVolumeRecord(v.id);
        else if (input.dataTouched || input.keepVolume === true) await c.transitionVolume(v.id, ['restoring-backup'], 'error', { error: `restore from backup '${input.backupId}' failed: ${input.reason}` });
        else await c.transitionVolume(v.id, ['restoring-backup'], await c.volumePreviousStatus(v.id) ?? 'available');
      });
    },

    async beginDeleteBackup(input: { backupId: string }): Promise<{ location: Loc | null; objectTarget?: string }> {
      const c = cat();
      const b = await c.backup(input.backupId);
      const kind = backupKind(rt, b);
      const { objectTarget } = kind.locate(b);
      const object = objectTarget !== null ? { objectTarget } : {};
      if (b.status === 'deleting') return { location: b.location, ...object };
      checkDeletable(b, await c.dependentsOf(b.id));
      const blocker = await kind.deleteBlocker(rt, b);
      if (blocker !== null) throw new InvalidStatus(blocker);
      await c.transitionBackup(b.id, ['available', 'error'], 'deleting');
      return { location: b.location, ...object };
    },

    async finishDeleteBackup(input: { backupId: string }): Promise<void> {
      const c = cat();
      const b = await c.findBackup(input.backupId);
      const v = b ? await c.findVolume(b.volumeId) : null;
      // Its change-tracking clone, if any: no incremental can build on a deleted backup.
      if (v) await rt.driver(v.backend).deleteVolume({ pool: v.pool, name: changeBaseName(input.backupId) });
      await c.deleteBackupRecord(input.backupId);
    },

    /** `refused`: the store turned the delete down before removing anything (dependents): the backup stays as it was. */
    async failDeleteBackup(input: { backupId: string; reason: string; refused?: boolean }): Promise<void> {
      const c = cat();
      const b = await c.findBackup(input.backupId);
      if (b && b.status === 'deleting') {
        if (input.refused === true) await c.transitionBackup(b.id, ['deleting'], 'available');
        else await c.transitionBackup(b.id, ['deleting'], 'error', { error: `delete failed: ${input.reason}` });
      }
    },

    ...createObjectActivities(rt),
    ...createPolicyActivities(rt),
    ...createCopyActivities(rt),
    ...createGroupActivities(rt),
  };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;
export type { BackupPlan, Loc, RestorePlan };
export type { VolumeStatus };
