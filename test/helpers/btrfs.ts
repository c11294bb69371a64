/**
 * A real btrfs filesystem for tests: a sparse image file, formatted and mounted through
 * a loop device. cleanup() unmounts, detaches and removes everything, is idempotent,
 * and is also what a failed setup runs before it throws.
 */
import { mkdir, rm, rmdir, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';

export interface BtrfsFilesystem {
  /** `<dir>/mnt` */
  mountPoint: string;
  /** The sparse image file backing the filesystem (`<dir>/btrfs.img`). */
  image: string;
  /** The loop device the filesystem is mounted from. */
  device: string;
  cleanup(): Promise<void>;
}

/** mkfs.btrfs refuses anything smaller than this. */
export const MIN_BTRFS_BYTES = 114 * 1024 * 1024;

export async function makeBtrfsFilesystem(dir: string, sizeBytes: number): Promise<BtrfsFilesystem> {
  if (sizeBytes < MIN_BTRFS_BYTES) throw new Error(`a btrfs filesystem needs at least ${MIN_BTRFS_BYTES} bytes, not ${sizeBytes}`);
  const image = join(dir, 'btrfs.img');
  const mountPoint = join(dir, 'mnt');
  let device = '';
  let mounted = false;
  let cleaned = false;

  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    if (mounted) {
      const r = await execa('umount', [mountPoint], { reject: false });
      // Something still holds it (a leaked fd in a failed test): detach it lazily so the
      // loop device goes away as soon as the holder does, and the run ends clean anyway.
      if (r.exitCode !== 0) await execa('umount', ['--lazy', mountPoint]);
      mounted = false;
    }
    if (device) {
      const r = await execa('losetup', ['--detach', device], { reject: false });
      // Already gone (autoclear) is fine; anything else is a leak worth failing on.
      if (r.exitCode !== 0 && (await execa('losetup', [device], { reject: false })).exitCode === 0) {
        throw new Error(`cannot detach ${device}: ${r.stderr.trim()}`);
      }
      device = '';
    }
    await rm(image, { force: true });
    // rmdir, not rm -r: should anything still be mounted there, it is left alone.
    await rmdir(mountPoint).catch(() => undefined);
    cleaned = true;
  };

  try {
    await mkdir(mountPoint, { recursive: true });
    await writeFile(image, '');
    await truncate(image, sizeBytes);
    await execa('mkfs.btrfs', ['-q', '-f', image]);
    device = (await execa('losetup', ['--find', '--show', image])).stdout.trim();
    await execa('mount', ['-t', 'btrfs', device, mountPoint]);
    mounted = true;
  } catch (e) {
    await cleanup();
    throw e;
  }
  return { mountPoint, image, device, cleanup };
}
