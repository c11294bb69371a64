/**
 * Snapshots a person asks for. A snapshot is a point-in-time, read-only image of a volume
 * on its own backend (reflink clone where the filesystem can, else a sparse copy). Instance
 * attachments are the attachVolume/detachVolume workflows (their device is on a node).
 */
import type { SnapshotView } from '../catalog/catalog.js';
import { InvalidInput, InvalidStatus } from '../errors.js';
import type { Runtime } from './runtime.js';
import { checkName, newId } from './checks.js';

export class Snapshots {
  constructor(private readonly rt: Runtime) {}

  /**
   * `id` chosen by the caller (the workflow), so a retried step finds the snapshot its
   * earlier attempt made: an available one is the answer, a 'creating' one is finished.
   */
  async create(volumeId: string, name?: string, id: string = newId('snap')): Promise<SnapshotView> {
    const cat = this.rt.catalog;
    const v = await cat.volume(checkName(volumeId, 'volume id', 'id'));
    const existing = await cat.findSnapshot(checkName(id, 'snapshot id', 'id'));
    if (existing && (existing.volumeId !== v.id || existing.status === 'deleting' || existing.status === 'error')) throw new InvalidInput(`snapshot id '${id}' is already used`);
    if (existing?.status === 'available') return existing;
    if (!existing) {
      if (v.status !== 'available' && v.status !== 'in-use') throw new InvalidStatus(`volume '${v.id}' is '${v.status}'; a snapshot needs it 'available' or 'in-use'`);
      await cat.insertSnapshot({ id, name: name ? checkName(name, 'snapshot name') : id, volumeId: v.id, backend: v.backend, pool: v.pool, size: v.size, status: 'creating', backupId: null });
    }
    try {
      await this.rt.driver(v.backend).createSnapshot({ pool: v.pool, name: v.id }, { pool: v.pool, name: id });
    } catch (e) {
      await this.rt.driver(v.backend).deleteVolume({ pool: v.pool, name: id }).catch(() => undefined);
      await cat.deleteSnapshotRecord(id);
      throw e;
    }
    await cat.setSnapshotStatus(id, 'available');
    return cat.snapshot(id);
  }

  async delete(id: string): Promise<SnapshotView> {
    const cat = this.rt.catalog;
    const s = await cat.snapshot(checkName(id, 'snapshot id', 'id'));
    const users = (await cat.listBackups(s.volumeId)).filter((b) => b.snapshotId === s.id && b.status === 'creating');
    if (users.length > 0) throw new InvalidStatus(`snapshot '${s.id}' is being backed up (backup ${users.map((b) => b.id).join(', ')}); delete it when that ends`);
    if (s.backupId !== null) {
      const b = await cat.findBackup(s.backupId);
      if (b && b.status === 'creating') throw new InvalidStatus(`snapshot '${s.id}' is the temporary snapshot of running backup '${b.id}'; it is removed when that ends`);
    }
    await this.rt.driver(s.backend).deleteVolume({ pool: s.pool, name: s.id });
    await cat.deleteSnapshotRecord(s.id);
    return s;
  }
}
