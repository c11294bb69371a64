/**
 * A real filesystem (btrfs, xfs) for tests: a sparse image file, formatted and mounted
 * through a loop device. cleanup() unmounts, detaches and removes everything, is
 * idempotent, and is also what a failed setup runs before it throws.
 */
import { mkdir, rm, rmdir, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';

export interface LoopFilesystem {
  /** `<dir>/mnt` */
  mountPoint: string;
  /** The sparse image file backing the filesystem (`<dir>/<type>.img`). */
  image: string;
  /** The loop device the filesystem is mounted from. */
  device: string;
  cleanup(): Promise<void>;
}

/** mkfs refuses anything smaller than this. */
const MIN_BYTES = { btrfs: 114 * 1024 * 1024, xfs: 300 * 1024 * 1024 } as const;
const MKFS = { btrfs: ['mkfs.btrfs', '-q', '-f'], xfs: ['mkfs.xfs', '-q', '-f', '-m', 'reflink=1'] } as const;

export async function makeLoopFilesystem(dir: string, sizeBytes: number, type: 'btrfs' | 'xfs'): Promise<LoopFilesystem> {
  if (sizeBytes < MIN_BYTES[type]) throw new Error(`a ${type} filesystem needs at least ${MIN_BYTES[type]} bytes, not ${sizeBytes}`);
  const image = join(dir, `${type}.img`);
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
    const [mkfs, ...args] = MKFS[type];
    await execa(mkfs, [...args, image]);
    device = (await execa('losetup', ['--find', '--show', image])).stdout.trim();
    await execa('mount', ['-t', type, device, mountPoint]);
    mounted = true;
  } catch (e) {
    await cleanup();
    throw e;
  }
  return { mountPoint, image, device, cleanup };
}
