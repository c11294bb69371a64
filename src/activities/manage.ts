/**
 * Control activities of volume, snapshot and catalog management: what the CLI used to do
 * in its own process, now done by the control worker for any caller that reaches
 * Temporal. Each is idempotent under retry (a step finds what its earlier attempt made,
 * by the workflow that owns it) and refuses bad input with the same errors as before.
 */
import { Context } from '@temporalio/activity';
import {
  MAX_PAGE,
  type BackendInfo,
  type LookupInput,
  type LookupResults,
  type SnapshotInfo,
  type TargetInfo,
  type VolumeView,
} from '../api.js';
import { backupView } from '../catalog/catalog.js';
import type { ConnectionInfo } from '../drivers/volume/driver.js';
import { checkTarget, type TargetCheck } from '../drivers/backup/check.js';
import { describeTarget } from '../drivers/backup/stores/registry.js';
import { BackendNotFound, InvalidInput, InvalidStatus, NoEligibleNode, NodeNotFound } from '../errors.js';
import { exportBackup, importBackup } from '../services/records.js';
import { rebuildCatalog, type RebuildReport } from '../services/rebuild.js';
import type { Runtime } from '../services/runtime.js';
import { Snapshots } from '../services/snapshots.js';
import { checkName, Volumes } from '../services/volumes.js';
import { spreadIndex } from './control.js';

const workflowId = () => Context.current().info.workflowExecution?.workflowId ?? 'none';

export type ManageDeps = Pick<Runtime, 'catalog' | 'driver' | 'drivers' | 'target' | 'targetPlaces' | 'objectTarget' | 'isObjectTarget' | 'volumePlace' | 'allRoots' | 'node'> & {
  config: Pick<Runtime['config'], 'nodes' | 'targets' | 'defaultTarget'>;
};

/** The node for a node step on `backend`: the one asked for (it must reach the backend), else one picked by `key`. */
export function nodeFor(rt: Pick<ManageDeps, 'config' | 'driver'>, backend: string, requested: string | undefined, key: string): string {
  rt.driver(backend);
  const reach = rt.config.nodes.filter((n) => n.backends.includes(backend));
  if (requested !== undefined) {
    const n = rt.config.nodes.find((x) => x.name === requested);
    if (!n) throw new NodeNotFound(`node '${requested}' not found (configured: ${rt.config.nodes.map((x) => x.name).join(', ')})`);
    if (!n.backends.includes(backend)) throw new NoEligibleNode(`node '${requested}' does not reach backend '${backend}' (it reaches ${n.backends.join(', ')})`);
    return n.name;
  }
  if (reach.length === 0) throw new NoEligibleNode(`no node reaches backend '${backend}' (nodes: ${rt.config.nodes.map((n) => `${n.name} -> ${n.backends.join(',')}`).join('; ')})`);
  return reach[spreadIndex(key, reach.length)]!.name;
}

async function backendInfo(rt: ManageDeps, name: string | undefined): Promise<BackendInfo[]> {
  if (name !== undefined && !rt.drivers.has(name)) throw new BackendNotFound(`backend '${name}' not found (configured: ${[...rt.drivers.keys()].join(', ')})`);
  return Promise.all(
    [...rt.drivers.values()]
      .filter((d) => name === undefined || d.backend === name)
      .map(async (d) => {
        const caps = await d.capabilities();
        const stats = await d.stats(d.pools[0] ?? null);
        return {
          name: d.backend,
          driver: d.driverName,
          pools: d.pools.filter((p): p is string => p !== null),
          path: d.placeLocation(null),
          totalBytes: stats.totalBytes,
          freeBytes: stats.freeBytes,
          snapshotMethod: caps.snapshotMethod,
          storageAssistedBackup: caps.storageAssistedBackup,
          sparseCopy: caps.sparseCopy,
          backupTargets: [...rt.targetPlaces].filter(([, p]) => p.backend === d.backend).map(([n, p]) => `${n}${p.pool ? `(${p.pool})` : ''}`),
        };
      }),
  );
}

function targetInfo(rt: ManageDeps): TargetInfo[] {
  const targets = rt.config.targets;
  return targets.map((t) => ({
    name: t.name,
    driver: t.driver,
    location: t.driver === 'volume' ? `${t.backend}${t.pool ? `/${t.pool}` : ''}` : describeTarget(t),
    default: t.name === (rt.config.defaultTarget ?? (targets.length === 1 ? t.name : undefined)),
  }));
}

export function createManageActivities(rt: ManageDeps) {
  const volumes = new Volumes(rt as Runtime);
  const snapshots = new Snapshots(rt as Runtime);
  const connectionOf = (v: VolumeView, readOnly: boolean): ConnectionInfo => rt.driver(v.backend).initializeConnection({ pool: v.pool, name: v.id }, { readOnly });

  return {
    /** Answers one read-only question; runs as a local activity (no history beyond its result). */
    async lookup(q: LookupInput): Promise<LookupResults[LookupInput['what']]> {
      const c = rt.catalog;
      switch (q.what) {
        case 'volumes':
          return c.listVolumes();
        case 'volume':
          return c.volume(q.id);
        case 'snapshots':
          return (await c.listSnapshots(q.volumeId)) satisfies SnapshotInfo[];
        case 'snapshot':
          return c.snapshot(q.id);
        case 'backups': {
          const page = await c.pageBackups(q.volumeId !== undefined ? { volumeId: q.volumeId } : {}, { after: q.after ?? null, limit: q.limit ?? MAX_PAGE });
          return { items: page.items.map(backupView), next: page.next };
        }
        case 'backup': {
          const b = await c.backup(q.id);
          const t = rt.config.targets.find((x) => x.name === b.target);
          return { ...backupView(b), targetDriver: t?.driver ?? 'unknown' };
        }
        case 'exportBackup':
          return exportBackup(rt as Runtime, q.id);
        case 'backends':
          return backendInfo(rt, q.name);
        case 'targets':
          return targetInfo(rt);
      }
    },

    /** Makes the volume (and its record); with keepCreating it stays 'creating' for an import to fill. */
    async createVolume(input: { volumeId: string; backend: string; pool?: string; size: number; name?: string; keepCreating?: boolean }): Promise<VolumeView> {
      return volumes.create({ id: input.volumeId, backend: input.backend, pool: input.pool, size: input.size, name: input.name, keepCreating: input.keepCreating, owner: workflowId() });
    },

    /** Undo of createVolume: only this workflow's half-made volume goes. */
    async discardVolume(input: { volumeId: string }): Promise<void> {
      await volumes.discard(input.volumeId, workflowId());
    },

    async finishVolume(input: { volumeId: string }): Promise<VolumeView> {
      const v = await rt.catalog.volume(input.volumeId);
      if (v.status === 'available') return v;
      return rt.catalog.transitionVolume(v.id, ['creating'], 'available');
    },

    async deleteVolume(input: { volumeId: string }): Promise<VolumeView> {
      return volumes.delete(input.volumeId, workflowId());
    },

    /** Where an import's bytes go: the new volume's connection, on the node that will write it. */
    async importTarget(input: { volumeId: string }): Promise<{ connection: ConnectionInfo }> {
      return { connection: connectionOf(await rt.catalog.volume(input.volumeId), false) };
    },

    /** Node, connection and size for an export; the volume is read through a read-only attachment. */
    async beginExport(input: { volumeId: string; node?: string }): Promise<{ volume: VolumeView; connection: ConnectionInfo; node: string }> {
      const v = await rt.catalog.volume(checkName(input.volumeId, 'volume id', 'id'));
      if (v.status !== 'available' && v.status !== 'in-use') throw new InvalidStatus(`volume '${v.id}' is '${v.status}'; export needs 'available' or 'in-use'`);
      return { volume: v, connection: connectionOf(v, true), node: nodeFor(rt, v.backend, input.node, v.id) };
    },

    /** The node an import or a new attachment runs on. */
    async pickNode(input: { backend: string; node?: string; key: string }): Promise<string> {
      return nodeFor(rt, input.backend, input.node, input.key);
    },

    /** Marks the volume in use by the instance on that node (the undo is failAttach). */
    async beginAttach(input: { volumeId: string; instance: string; node: string }): Promise<{ volume: VolumeView; connection: ConnectionInfo }> {
      const wf = workflowId();
      const c = rt.catalog;
      const v = await c.volume(input.volumeId);
      if (v.status === 'in-use' && (await c.volumeOwner(v.id)) === wf) return { volume: v, connection: connectionOf(v, false) };
      const claimed = await c.transitionVolume(v.id, ['available'], 'in-use', { instance: input.instance, attachedNode: input.node, owner: wf });
      return { volume: claimed, connection: connectionOf(claimed, false) };
    },

    async failAttach(input: { volumeId: string }): Promise<void> {
      const c = rt.catalog;
      const v = await c.findVolume(input.volumeId);
      if (v && v.status === 'in-use' && (await c.volumeOwner(v.id)) === workflowId()) {
        await c.transitionVolume(v.id, ['in-use'], 'available', { instance: null, attachedNode: null });
      }
    },

    /** The attachment to undo: its node (recorded at attach) and connection. */
    async beginDetach(input: { volumeId: string }): Promise<{ volume: VolumeView; connection: ConnectionInfo; node: string }> {
      const v = await rt.catalog.volume(checkName(input.volumeId, 'volume id', 'id'));
      if (v.status !== 'in-use') throw new InvalidStatus(`volume '${v.id}' is '${v.status}', not attached to an instance`);
      // Attachments made before nodes were recorded: the node that would be picked now.
      return { volume: v, connection: connectionOf(v, false), node: v.attachedNode ?? nodeFor(rt, v.backend, undefined, v.id) };
    },

    async finishDetach(input: { volumeId: string }): Promise<VolumeView> {
      const v = await rt.catalog.volume(input.volumeId);
      if (v.status !== 'in-use') return v;
      return rt.catalog.transitionVolume(v.id, ['in-use'], 'available', { instance: null, attachedNode: null });
    },

    async createSnapshot(input: { volumeId: string; snapshotId: string; name?: string }): Promise<SnapshotInfo> {
      return snapshots.create(input.volumeId, input.name, input.snapshotId);
    },

    /** A snapshot a person made (the temporary ones of backups go with their backup). */
    async removeSnapshot(input: { snapshotId: string }): Promise<SnapshotInfo> {
      return snapshots.delete(input.snapshotId);
    },

    async importBackupRecord(input: { target: string; record: string }) {
      return importBackup(rt as Runtime, checkName(input.target, 'target'), input.record);
    },

    async rebuildCatalog(): Promise<RebuildReport> {
      return rebuildCatalog(rt as Runtime);
    },

    /** `target check`, from the control worker: can it reach, list, write, read and delete? */
    async checkTargets(input: { target?: string; createBucket?: boolean }): Promise<TargetCheck[]> {
      const names = input.target !== undefined ? [rt.target(input.target).name] : rt.config.targets.filter((t) => t.driver !== 'volume').map((t) => t.name);
      if (names.length === 0) throw new InvalidInput('no object targets (posix, s3) configured; volume targets are checked when the worker starts (same-storage rule, free space)');
      return Promise.all(
        names.map(async (name) => {
          const t = rt.target(name);
          if (t.driver === 'volume') throw new InvalidInput(`target '${name}' is a volume target (backend '${t.backend}'); check works on posix and s3 targets`);
          const target = await rt.objectTarget(name);
          const make = target.store.createContainer?.bind(target.store);
          if (input.createBucket === true && !make) throw new InvalidInput(`--create-bucket applies to s3 targets; target '${name}' is ${t.driver}, with no bucket to make`);
          const created = input.createBucket === true && make ? await make() : false;
          const check = await checkTarget(target);
          return { ...check, createdBucket: check.createdBucket || created };
        }),
      );
    },
  };
}

export type ManageActivities = ReturnType<typeof createManageActivities>;
