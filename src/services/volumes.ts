/**
 * Volume management against the catalog and the backends: create, delete, checksum (the
 * control worker's manage activities run these), and an in-process import for hosts that
 * are their own node (tests and benches set up volumes with it; people import through the
 * importVolume workflow). A failure undoes the half-made volume and its record.
 */
import { stat } from 'node:fs/promises';
import type { VolumeView } from '../api.js';
import { Connectors } from '../connectors/registry.js';
import { copyExtents } from '../copy/dd.js';
import { dataExtents } from '../copy/extents.js';
import { InvalidInput } from '../errors.js';
import type { Runtime } from './runtime.js';
import { checkName, newId } from './checks.js';
import { changeBaseName } from '../names.js';
import { MiB, roundUp } from '../size.js';

// Checks of what callers send live apart (checks.ts), so the CLI loads them without the copy engine.
export { checkName, checkSize, newId } from './checks.js';

export class Volumes {
  constructor(private readonly rt: Runtime) {}

  private connector(): Connectors {
    return new Connectors(this.rt.allRoots());
  }

  /**
   * `owner`: the workflow making the volume. Its retried step finds its own 'creating'
   * record and finishes the job instead of calling the id taken.
   */
  async create(input: { backend: string; pool?: string; size: number; name?: string; id?: string; keepCreating?: boolean; owner?: string }): Promise<VolumeView> {
    const id = input.id ? checkName(input.id, 'volume id', 'id') : newId('vol');
    const name = input.name ? checkName(input.name, 'volume name') : id;
    const pool = this.rt.volumePlace(input.backend, input.pool);
    const driver = this.rt.driver(input.backend);
    const cat = this.rt.catalog;
    const existing = await cat.findVolume(id);
    const retry = existing !== null && input.owner !== undefined && existing.status === 'creating' && (await cat.volumeOwner(id)) === input.owner;
    if (existing && !retry) throw new InvalidInput(`volume id '${id}' is already used`);
    if (!retry) {
      await (driver as { checkSpace?: (p: string | null, s: number) => Promise<void> }).checkSpace?.(pool, input.size);
      await cat.insertVolume({ id, name, backend: input.backend, pool, size: input.size, status: 'creating', owner: input.owner ?? null });
    }
    try {
      await driver.createVolume({ pool, name: id }, input.size);
    } catch (e) {
      await driver.deleteVolume({ pool, name: id }).catch(() => undefined);
      await cat.deleteVolumeRecord(id);
      throw e;
    }
    return input.keepCreating ? await cat.volume(id) : await cat.transitionVolume(id, ['creating'], 'available');
  }

  /** Undo of a create: the half-made volume and its record go (only while 'creating', only the owner's). */
  async discard(id: string, owner: string): Promise<void> {
    const cat = this.rt.catalog;
    const v = await cat.findVolume(id);
    if (!v || v.status !== 'creating' || (await cat.volumeOwner(id)) !== owner) return;
    await this.rt.driver(v.backend).deleteVolume({ pool: v.pool, name: v.id });
    await cat.deleteVolumeRecord(id);
  }

  /** A new volume holding the file's bytes (size rounded up to whole MiB, zero-filled). */
  async import(input: { backend: string; pool?: string; file: string; name?: string }): Promise<VolumeView> {
    const st = await stat(input.file).catch(() => {
      throw new InvalidInput(`cannot read image file '${input.file}'`);
    });
    if (!st.isFile() || st.size === 0) throw new InvalidInput(`image file '${input.file}' is empty or not a regular file`);
    const vol = await this.create({ backend: input.backend, pool: input.pool, size: roundUp(st.size, MiB), name: input.name, keepCreating: true });
    const conn = this.rt.driver(vol.backend).initializeConnection({ pool: vol.pool, name: vol.id });
    const connector = this.connector();
    try {
      const { device } = await connector.connectVolume(conn);
      await copyExtents({ source: input.file, dest: device, extents: await dataExtents(input.file, st.size), blockSize: 4 * MiB, sparse: true, direct: false });
    } catch (e) {
      await connector.disconnectVolume(conn);
      await this.rt.driver(vol.backend).deleteVolume({ pool: vol.pool, name: vol.id });
      await this.rt.catalog.deleteVolumeRecord(vol.id);
      throw e;
    }
    await connector.disconnectVolume(conn);
    return await this.rt.catalog.transitionVolume(vol.id, ['creating'], 'available');
  }

  /** `owner`: the deleting workflow, whose retry may find the volume 'deleting' already. */
  async delete(id: string, owner?: string): Promise<VolumeView> {
    const cat = this.rt.catalog;
    const current = await cat.volume(checkName(id, 'volume id', 'id'));
    const resumed = owner !== undefined && current.status === 'deleting' && (await cat.volumeOwner(id)) === owner;
    const vol = resumed ? current : await cat.transitionVolume(id, ['available', 'error'], 'deleting', { owner: owner ?? null });
    const driver = this.rt.driver(vol.backend);
    try {
      await this.connector().disconnectVolume(driver.initializeConnection({ pool: vol.pool, name: vol.id }));
      await driver.deleteVolume({ pool: vol.pool, name: vol.id });
      // The clones kept for change tracking (changes-<backup>) go with the volume: nothing can build on them now.
      for (const b of await cat.listBackups(vol.id)) await driver.deleteVolume({ pool: vol.pool, name: changeBaseName(b.id) });
    } catch (e) {
      await cat.transitionVolume(vol.id, ['deleting'], 'error', { error: `delete failed: ${(e as Error).message}` });
      throw e;
    }
    await cat.deleteVolumeRecord(vol.id);
    return vol;
  }

  /** sha256 of the volume's bytes, as its storage holds them. */
  async sha256(id: string): Promise<string> {
    const vol = await this.rt.catalog.volume(id);
    return this.rt.driver(vol.backend).sha256({ pool: vol.pool, name: vol.id });
  }
}
