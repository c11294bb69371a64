/**
 * The `btrfs` driver: volumes are sparse raw image files like the `file` driver's (so a
 * node attaches them through the same loop connector), kept on a btrfs filesystem whose
 * pools are subvolumes directly under the backend's path.
 *
 * What btrfs does better is copying: a reflink (FICLONE) shares every extent of the
 * source, so a snapshot, and a backup or restore between two places on the same
 * filesystem, costs a metadata update instead of a full read and write. Images keep COW
 * on (no NOCOW attribute): reflinks need it.
 */
import { mkdir, stat, statfs } from 'node:fs/promises';
import { execa } from 'execa';
import type { DriverCapabilities, VolumeDriver, VolumeLocator } from '../driver.js';
import { assertSafeName, FileVolumeDriver } from '../file/driver.js';
import { GbackupError, InvalidConfig } from '../../../errors.js';
import { checkCloneWorks, cloneReplacing, cloneSnapshot, requireFilesystem } from '../reflink.js';

/** statfs(2) f_type of btrfs (BTRFS_SUPER_MAGIC). */
export const BTRFS_SUPER_MAGIC = 0x9123683e;

/** btrfs's own failures; a clone that fails at start-up is a ReflinkError. */
export class BtrfsError extends GbackupError {}

/** True when `path` lives on a btrfs filesystem. */
export async function isOnBtrfs(path: string): Promise<boolean> {
  return (await statfs(path)).type === BTRFS_SUPER_MAGIC;
}

/**
 * The UUID of the btrfs filesystem holding `path`. Every subvolume of one filesystem
 * reports the same UUID, while st_dev and statfs' f_fsid differ per subvolume, so this
 * is what "same filesystem" compares.
 */
export async function btrfsFilesystemUuid(path: string): Promise<string> {
  const mountPoint = (await execa('findmnt', ['--noheadings', '--output', 'TARGET', '--target', path])).stdout.trim();
  // `btrfs filesystem show` asks the mounted filesystem itself (it only accepts a mount
  // point or a device); findmnt's UUID comes from blkid and serves when that fails.
  const show = await execa('btrfs', ['filesystem', 'show', '--raw', mountPoint], { reject: false });
  const fromShow = /uuid:\s*([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/i.exec(show.stdout)?.[1];
  if (fromShow) return fromShow.toLowerCase();
  const fromFindmnt = (await execa('findmnt', ['--noheadings', '--output', 'UUID', '--target', path], { reject: false })).stdout.trim();
  if (/^[0-9a-f-]{36}$/i.test(fromFindmnt)) return fromFindmnt.toLowerCase();
  throw new BtrfsError(`cannot tell the btrfs filesystem UUID of '${path}' (mounted at '${mountPoint}'): ${show.stderr.trim() || 'no uuid in output'}`);
}

export class BtrfsVolumeDriver extends FileVolumeDriver {
  override readonly driverName: string = 'btrfs';
  private uuid: Promise<string> | undefined;

  /**
   * Checks that the path is on btrfs, then makes each missing pool a subvolume.
   * Idempotent, and safe when two processes prepare the same backend at once.
   */
  override async prepare(): Promise<void> {
    await requireFilesystem({ backend: this.backend, driver: 'btrfs', root: this.root, magic: BTRFS_SUPER_MAGIC, label: 'btrfs' });
    // A path inside the filesystem that does not exist yet is made as a plain directory.
    await mkdir(this.root, { recursive: true });
    for (const pool of this.pools) if (pool !== null) await this.ensureSubvolume(pool);
    this.uuid = undefined;
    await this.filesystemUuid();
    await checkCloneWorks(this.backend, this.pools.map((pool) => ({ pool, dir: this.placeLocation(pool) })), 'is it marked NOCOW?');
  }

  private async ensureSubvolume(pool: string): Promise<void> {
    assertSafeName(pool);
    const dir = this.placeLocation(pool);
    if (await this.poolDirectoryExists(pool, dir)) return;
    const r = await execa('btrfs', ['subvolume', 'create', dir], { reject: false });
    // Another process may have made it between the check and the create.
    if (r.exitCode !== 0 && !(await this.poolDirectoryExists(pool, dir))) {
      throw new BtrfsError(`backend '${this.backend}': cannot create subvolume for pool '${pool}' at '${dir}': ${r.stderr.trim() || r.stdout.trim()}`);
    }
  }

  /**
   * An existing subvolume is the expected case; an existing plain directory (say, a
   * backend switched from driver file) also works, because reflinks do not need
   * subvolumes, so it is accepted as it is rather than refused or moved.
   */
  private async poolDirectoryExists(pool: string, dir: string): Promise<boolean> {
    try {
      const s = await stat(dir);
      if (!s.isDirectory()) throw new InvalidConfig(`backend '${this.backend}': pool '${pool}' path '${dir}' exists and is not a directory`);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
  }

  override async capabilities(): Promise<DriverCapabilities> {
    return { snapshotMethod: 'reflink', storageAssistedBackup: true, sparseCopy: true };
  }

  /** The UUID of this backend's btrfs filesystem, asked once. */
  filesystemUuid(): Promise<string> {
    if (!this.uuid) {
      const lookup = btrfsFilesystemUuid(this.root);
      this.uuid = lookup;
      // A failed lookup is not remembered: the next call asks again.
      lookup.catch(() => {
        if (this.uuid === lookup) this.uuid = undefined;
      });
    }
    return this.uuid;
  }

  /** O(1): the snapshot shares every extent with the source until either is written. */
  override async createSnapshot(source: VolumeLocator, snapshot: VolumeLocator): Promise<void> {
    if ((await this.volumeSize(snapshot)) !== null) return;
    await cloneSnapshot(this.imagePath(source), this.imagePath(snapshot));
  }

  /**
   * Backup or restore by reflink when the source is a btrfs volume on this same
   * filesystem (any pool, any backend configured on it); anything else returns false and
   * the caller copies with dd.
   */
  override async storageAssistedCopy(sourceDriver: VolumeDriver, source: VolumeLocator, dest: VolumeLocator): Promise<boolean> {
    if (!(sourceDriver instanceof BtrfsVolumeDriver)) return false;
    const [srcUuid, ownUuid] = await Promise.all([sourceDriver.filesystemUuid(), this.filesystemUuid()]);
    if (srcUuid !== ownUuid) return false;
    return cloneReplacing(sourceDriver.imagePath(source), this.imagePath(dest), (await this.volumeSize(dest)) ?? 0);
  }
}
