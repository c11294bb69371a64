/**
 * The `xfs` driver: sparse raw image files like the `file` driver's (attached through
 * the same loop connector), on an xfs filesystem with reflink; pools are directories.
 * Snapshots are reflink clones, and a backup or restore between two places on the same
 * xfs filesystem is a clone of the image instead of a dd copy (storage-assisted).
 */
import { mkdir, stat } from 'node:fs/promises';
import type { DriverCapabilities, VolumeDriver, VolumeLocator } from '../driver.js';
import { FileVolumeDriver } from '../file/driver.js';
import { checkCloneWorks, cloneReplacing, cloneSnapshot, requireFilesystem } from '../reflink.js';

/** statfs(2) f_type of xfs (XFS_SUPER_MAGIC, "XFSB"). */
const XFS_SUPER_MAGIC = 0x58465342;

export class XfsVolumeDriver extends FileVolumeDriver {
  override readonly driverName: string = 'xfs';

  /** On xfs, with reflink working in every pool; pools are made as directories. */
  override async prepare(): Promise<void> {
    await requireFilesystem({ backend: this.backend, driver: 'xfs', root: this.root, magic: XFS_SUPER_MAGIC, label: 'xfs' });
    for (const pool of this.pools) await mkdir(this.placeLocation(pool), { recursive: true });
    await checkCloneWorks(this.backend, this.pools.map((pool) => ({ pool, dir: this.placeLocation(pool) })), 'was the filesystem made with reflink (mkfs.xfs -m reflink=1)?');
  }

  override async capabilities(): Promise<DriverCapabilities> {
    return { snapshotMethod: 'reflink', storageAssistedBackup: true, sparseCopy: true };
  }

  /** O(1): the snapshot shares every extent with the source until either is written. */
  override async createSnapshot(source: VolumeLocator, snapshot: VolumeLocator): Promise<void> {
    if ((await this.volumeSize(snapshot)) !== null) return;
    await cloneSnapshot(this.imagePath(source), this.imagePath(snapshot));
  }

  /** The filesystem a place is on: one xfs filesystem is one device number. */
  async filesystemId(): Promise<number> {
    return (await stat(this.root)).dev;
  }

  /** Backup or restore by reflink when the source is an xfs volume on this same filesystem; else dd. */
  override async storageAssistedCopy(sourceDriver: VolumeDriver, source: VolumeLocator, dest: VolumeLocator): Promise<boolean> {
    if (!(sourceDriver instanceof XfsVolumeDriver)) return false;
    if ((await sourceDriver.filesystemId()) !== (await this.filesystemId())) return false;
    return cloneReplacing(sourceDriver.imagePath(source), this.imagePath(dest), (await this.volumeSize(dest)) ?? 0);
  }
}
