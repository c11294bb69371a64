/**
 * The `file` driver: each volume is a sparse raw image file `<path>/<pool>/<name>.img`.
 * A node attaches it through a loop device, so dd copies block device to block device,
 * exactly the path the spec describes for real arrays.
 */
import { constants as fsc } from 'node:fs';
import { copyFile, mkdir, open, readdir, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { execa } from 'execa';
import { BaseVolumeDriver, type ConnectionInfo, type DriverCapabilities, type VolumeLocator } from '../driver.js';
import { InvalidName, VolumeExists } from '../../../errors.js';
import { rawDataExtents, type Extent } from '../../../copy/extents.js';
import { sha256File } from '../../../copy/checksum.js';
import { changedSince, type ChangedBlocks } from '../../../copy/cbt.js';
const SAFE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Defence in depth: names were validated at the edge, but a path is built here. */
export function assertSafeName(name: string): void {
  if (!SAFE.test(name) || name.includes('..') || name.length > 128) throw new InvalidName(`unsafe storage name '${name}'`);
}

export class FileVolumeDriver extends BaseVolumeDriver {
  readonly driverName: string = 'file';
  private reflink: boolean | undefined;

  async prepare(): Promise<void> {
    for (const pool of this.pools) await mkdir(this.placeLocation(pool), { recursive: true });
    this.reflink = await this.probeReflink();
  }

  /** FICLONE works or not per filesystem; one tiny clone at start-up tells which. */
  private async probeReflink(): Promise<boolean> {
    const dir = this.placeLocation(this.pools[0] ?? null);
    const a = `${dir}/.reflink-probe-${process.pid}`;
    const b = `${a}.clone`;
    try {
      await writeFile(a, 'probe');
      await copyFile(a, b, fsc.COPYFILE_FICLONE_FORCE);
      return true;
    } catch {
      return false;
    } finally {
      await rm(a, { force: true });
      await rm(b, { force: true });
    }
  }

  async capabilities(): Promise<DriverCapabilities> {
    if (this.reflink === undefined) this.reflink = await this.probeReflink();
    return { snapshotMethod: this.reflink ? 'reflink' : 'copy', storageAssistedBackup: false, sparseCopy: true };
  }

  imagePath(loc: VolumeLocator): string {
    this.checkPool(loc.pool);
    assertSafeName(loc.name);
    return `${this.placeLocation(loc.pool)}/${loc.name}.img`;
  }

  recordPath(loc: VolumeLocator): string {
    this.checkPool(loc.pool);
    assertSafeName(loc.name);
    return `${this.placeLocation(loc.pool)}/${loc.name}.backup.json`;
  }

  async createVolume(loc: VolumeLocator, size: number): Promise<void> {
    const path = this.imagePath(loc);
    const existing = await this.volumeSize(loc);
    if (existing === size) return; // an earlier attempt made it
    if (existing !== null && existing !== 0) {
      throw new VolumeExists(`backend '${this.backend}' already holds '${loc.name}' with ${existing} bytes, not ${size}`);
    }
    if (existing === null) await this.checkSpace(loc.pool, size);
    // Create under a temporary name and rename: a crash never leaves a half-sized image
    // under the real name, and a retry of this step starts clean.
    const tmp = `${path}.creating`;
    const fh = await open(tmp, 'w');
    try {
      await fh.truncate(size);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  }

  async deleteVolume(loc: VolumeLocator): Promise<void> {
    const path = this.imagePath(loc);
    await rm(path, { force: true });
    await rm(`${path}.creating`, { force: true });
  }

  async volumeSize(loc: VolumeLocator): Promise<number | null> {
    try {
      return (await stat(this.imagePath(loc))).size;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async listVolumes(): Promise<VolumeLocator[]> {
    const out: VolumeLocator[] = [];
    for (const pool of this.pools) {
      for (const f of await readdir(this.placeLocation(pool)).catch(() => [] as string[])) {
        const m = /^(.+)\.img(\.creating)?$/.exec(f);
        if (m) out.push({ pool, name: m[1]! });
      }
    }
    return out;
  }

  async clearVolume(loc: VolumeLocator): Promise<void> {
    // Truncating to zero and back drops every block: the file reads as zeros and holds no data.
    const path = this.imagePath(loc);
    const size = (await stat(path)).size;
    await truncate(path, 0);
    await truncate(path, size);
  }

  async createSnapshot(source: VolumeLocator, snapshot: VolumeLocator): Promise<void> {
    const src = this.imagePath(source);
    const dst = this.imagePath(snapshot);
    if ((await this.volumeSize(snapshot)) !== null) return;
    const tmp = `${dst}.creating`;
    const { snapshotMethod } = await this.capabilities();
    if (snapshotMethod === 'reflink') {
      await copyFile(src, tmp, fsc.COPYFILE_FICLONE_FORCE);
    } else {
      await this.checkSpace(snapshot.pool, (await stat(src)).size);
      // cp keeps holes as holes; Node's copyFile would fill them in.
      await execa('cp', ['--sparse=always', '--', src, tmp]);
    }
    await rename(tmp, dst);
  }

  /**
   * Reflink images: the extent maps of the base (a clone) and the current image say what
   * changed (copy/cbt.ts). Plain copies share no extents, so nothing can be told from them.
   */
  override async changedBlocks(base: VolumeLocator, current: VolumeLocator, size: number): Promise<ChangedBlocks> {
    if ((await this.capabilities()).snapshotMethod !== 'reflink') {
      return { method: 'fallback', reason: `backend '${this.backend}' snapshots by copying (no reflinks at '${this.root}'), so extent maps cannot tell what changed` };
    }
    return changedSince({ base: this.imagePath(base), current: this.imagePath(current), size });
  }

  initializeConnection(loc: VolumeLocator, opts: { readOnly?: boolean } = {}): ConnectionInfo {
    return { protocol: 'file', backend: this.backend, path: this.imagePath(loc), readOnly: opts.readOnly ?? false };
  }

  sha256(loc: VolumeLocator): Promise<string> {
    return sha256File(this.imagePath(loc));
  }

  /** The image file's holes are the volume's: SEEK_DATA/SEEK_HOLE tell them apart. */
  dataExtents(loc: VolumeLocator, size: number): Promise<Extent[] | null> {
    return rawDataExtents(this.imagePath(loc), size);
  }

  async writeRecord(loc: VolumeLocator, record: unknown): Promise<void> {
    const path = this.recordPath(loc);
    await writeFile(`${path}.tmp`, JSON.stringify(record, null, 2) + '\n');
    await rename(`${path}.tmp`, path);
  }

  async readRecord(loc: VolumeLocator): Promise<unknown> {
    return JSON.parse(await readFile(this.recordPath(loc), 'utf8')) as unknown;
  }

  async deleteRecord(loc: VolumeLocator): Promise<void> {
    await rm(this.recordPath(loc), { force: true });
  }

  async listRecords(pool: string | null): Promise<VolumeLocator[]> {
    const files = await readdir(this.placeLocation(pool)).catch(() => [] as string[]);
    return files.flatMap((f) => {
      const m = /^(.+)\.backup\.json$/.exec(f);
      return m ? [{ pool, name: m[1]! }] : [];
    });
  }
}
