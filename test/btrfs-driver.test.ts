/**
 * The btrfs driver on real btrfs filesystems (sparse images, loop-mounted): pools as
 * subvolumes, O(1) reflink snapshots, and storage-assisted copies that happen only
 * between places on one filesystem. Every mount and loop device is removed in afterAll,
 * also when a test fails.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { BtrfsVolumeDriver, isOnBtrfs } from '../src/drivers/volume/btrfs/driver.js';
import { FileVolumeDriver } from '../src/drivers/volume/file/driver.js';
import { VolumeExists } from '../src/errors.js';
import { makeLoopFilesystem, type LoopFilesystem } from './helpers/loopfs.js';

const MiB = 1024 * 1024;
const BIG = 512 * MiB;

/** Every subvolume's root directory has inode 256 on btrfs (BTRFS_FIRST_FREE_OBJECTID); a plain directory does not. */
const isSubvolume = async (path: string) => (await stat(path)).ino === 256;

let dir: string;
let fs1: LoopFilesystem | undefined;
let fs2: LoopFilesystem | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gbackup-btrfs-'));
  // Room for the 512 MiB volume plus a thick-checked destination and a dd copy of it;
  // the image is sparse, so only what is written takes host disk.
  fs1 = await makeLoopFilesystem(join(dir, 'fs1'), 2048 * MiB, 'btrfs');
  fs2 = await makeLoopFilesystem(join(dir, 'fs2'), 256 * MiB, 'btrfs');
});

afterAll(async () => {
  try {
    await fs2?.cleanup();
  } finally {
    await fs1?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  }
});

function mnt(fs: LoopFilesystem | undefined): string {
  if (!fs) throw new Error('btrfs filesystem was not set up');
  return fs.mountPoint;
}

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * MiB })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Fills `size` bytes of an image with data that differs in every 4 MiB block. */
async function fill(path: string, size: number): Promise<void> {
  const block = randomBytes(4 * MiB);
  const fh = await open(path, 'r+');
  try {
    for (let off = 0; off < size; off += block.length) {
      block.writeDoubleLE(off, 0);
      await fh.write(block, 0, Math.min(block.length, size - off), off);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** `btrfs filesystem du` of one file: bytes in total and bytes no other file shares. */
async function extentUsage(path: string): Promise<{ total: number; exclusive: number }> {
  const { stdout } = await execa('btrfs', ['filesystem', 'du', '--raw', path]);
  const line = stdout.split('\n').find((l) => l.trim().endsWith(path));
  const m = line && /^\s*(\d+)\s+(\d+)\s/.exec(line);
  if (!m) throw new Error(`unexpected btrfs filesystem du output:\n${stdout}`);
  return { total: Number(m[1]), exclusive: Number(m[2]) };
}

async function partials(d: string): Promise<string[]> {
  return (await readdir(d)).filter((f) => /\.(creating|tmp|clone)$|reflink-probe/.test(f));
}

async function timed<T>(f: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await f();
  return [r, performance.now() - t0];
}

describe('btrfs volume driver', () => {
  let d: BtrfsVolumeDriver;

  beforeAll(async () => {
    d = new BtrfsVolumeDriver('bt', mnt(fs1), ['gold', 'silver']);
    await d.prepare();
  });

  it('prepare makes each pool a subvolume, and is idempotent', async () => {
    for (const pool of ['gold', 'silver']) {
      const show = await execa('btrfs', ['subvolume', 'show', join(mnt(fs1), pool)]);
      expect(show.stdout).toMatch(new RegExp(`^\\s*Name:\\s+${pool}$`, 'm'));
      expect(await isSubvolume(join(mnt(fs1), pool))).toBe(true);
    }
    await d.prepare();
    // Another process (a second worker) preparing the same backend is fine too.
    await Promise.all([new BtrfsVolumeDriver('bt', mnt(fs1), ['gold', 'silver', 'bronze']).prepare(), new BtrfsVolumeDriver('bt', mnt(fs1), ['bronze']).prepare()]);
    expect(await isSubvolume(join(mnt(fs1), 'bronze'))).toBe(true);
    expect(await partials(join(mnt(fs1), 'gold'))).toEqual([]);
    expect(await d.capabilities()).toEqual({ snapshotMethod: 'reflink', storageAssistedBackup: true, sparseCopy: true });
    expect(d.driverName).toBe('btrfs');
  });

  it('prepare refuses a path that is not on btrfs, naming the backend and the path', async () => {
    const plain = join(dir, 'plain');
    await execa('mkdir', ['-p', plain]);
    expect(await isOnBtrfs(plain)).toBe(false);
    const p = new BtrfsVolumeDriver('notbtrfs', plain, ['gold']);
    await expect(p.prepare()).rejects.toThrow(`backend 'notbtrfs' (driver btrfs): path '${plain}' is not on a btrfs filesystem`);
    await expect(p.prepare()).rejects.toMatchObject({ name: 'InvalidConfig' });
    // Nothing was made on the wrong filesystem.
    expect(await readdir(plain)).toEqual([]);
    await expect(new BtrfsVolumeDriver('notbtrfs', join(plain, 'not', 'yet'), undefined).prepare()).rejects.toThrow(/is not on a btrfs filesystem/);
  });

  it('keeps volumes directly at the path when the backend has no pools', async () => {
    const flat = new BtrfsVolumeDriver('flat', mnt(fs2), undefined);
    await flat.prepare();
    await flat.createVolume({ pool: null, name: 'vol-flat' }, 8 * MiB);
    expect((await stat(join(mnt(fs2), 'vol-flat.img'))).size).toBe(8 * MiB);
    expect(flat.placeLocation(null)).toBe(mnt(fs2));
    await flat.deleteVolume({ pool: null, name: 'vol-flat' });
  });

  it('creates, sizes and deletes volumes idempotently, as sparse images', async () => {
    const loc = { pool: 'gold', name: 'vol-a' };
    expect(await d.volumeSize(loc)).toBeNull();
    await d.createVolume(loc, 64 * MiB);
    await d.createVolume(loc, 64 * MiB);
    expect(await d.volumeSize(loc)).toBe(64 * MiB);
    const s = await stat(join(mnt(fs1), 'gold', 'vol-a.img'));
    expect(s.blocks).toBe(0); // sparse: nothing allocated yet
    await expect(d.createVolume(loc, 32 * MiB)).rejects.toBeInstanceOf(VolumeExists);
    expect(await d.listVolumes()).toContainEqual(loc);
    await expect(d.createVolume({ pool: 'nope', name: 'vol-a' }, MiB)).rejects.toMatchObject({ name: 'PoolNotFound' });
    await d.deleteVolume(loc);
    await d.deleteVolume(loc);
    expect(await d.volumeSize(loc)).toBeNull();
    expect(d.initializeConnection({ pool: 'silver', name: 'vol-b' }, { readOnly: true })).toEqual({
      protocol: 'file',
      backend: 'bt',
      path: join(mnt(fs1), 'silver', 'vol-b.img'),
      readOnly: true,
    });
  });

  describe('with a 512 MiB volume full of data', () => {
    const src = { pool: 'gold', name: 'vol-big' };
    let srcPath: string;
    let srcSum: string;

    beforeAll(async () => {
      await d.createVolume(src, BIG);
      srcPath = d.imagePath(src);
      await fill(srcPath, BIG);
      srcSum = await sha256(srcPath);
    });

    it('snapshots in O(1) by reflink: fast, identical, sharing every extent', async () => {
      const snap = { pool: 'gold', name: 'snap-big' };
      const [, ms] = await timed(() => d.createSnapshot(src, snap));
      console.log(`btrfs reflink snapshot of ${BIG / MiB} MiB: ${ms.toFixed(1)} ms`);
      expect(ms).toBeLessThan(1000);
      const snapPath = d.imagePath(snap);
      expect(await sha256(snapPath)).toBe(srcSum);
      expect(await extentUsage(snapPath)).toEqual({ total: BIG, exclusive: 0 });
      // Idempotent: a retry finds the snapshot and leaves it be.
      await d.createSnapshot(src, snap);
      expect(await partials(join(mnt(fs1), 'gold'))).toEqual([]);
      // Copy on write: writing the snapshot leaves the source as it was.
      const fh = await open(snapPath, 'r+');
      await fh.write(Buffer.alloc(MiB, 0xab), 0, MiB, 0);
      await fh.close();
      expect(await sha256(srcPath)).toBe(srcSum);
      await d.deleteVolume(snap);
    });

    it('copies between two pools of one filesystem by reflink, bit-exact, idempotently', async () => {
      const dest = { pool: 'silver', name: 'backup-big' };
      // As in a backup: the destination was created empty first, and a crashed earlier
      // attempt left a partial file behind.
      await d.createVolume(dest, BIG);
      await writeFile(`${d.imagePath(dest)}.creating`, 'junk');
      const [ok, ms] = await timed(() => d.storageAssistedCopy(d, src, dest));
      console.log(`btrfs storage-assisted copy of ${BIG / MiB} MiB: ${ms.toFixed(1)} ms`);
      expect(ok).toBe(true);
      expect(ms).toBeLessThan(1000);
      const destPath = d.imagePath(dest);
      expect((await stat(destPath)).size).toBe(BIG);
      expect(await sha256(destPath)).toBe(srcSum);
      expect(await extentUsage(destPath)).toEqual({ total: BIG, exclusive: 0 });
      // A retry after success ends the same.
      expect(await d.storageAssistedCopy(d, src, dest)).toBe(true);
      expect(await sha256(destPath)).toBe(srcSum);
      expect(await partials(join(mnt(fs1), 'silver'))).toEqual([]);
      await d.deleteVolume(dest);
    });

    it('copies between two backends configured on one filesystem, and into a larger volume', async () => {
      const other = new BtrfsVolumeDriver('bt2', mnt(fs1), ['bronze']);
      await other.prepare();
      expect(await other.filesystemUuid()).toBe(await d.filesystemUuid());
      // Into a volume that does not exist yet: the clone makes it.
      const fresh = { pool: 'bronze', name: 'vol-fresh' };
      expect(await other.storageAssistedCopy(d, src, fresh)).toBe(true);
      expect(await other.volumeSize(fresh)).toBe(BIG);
      expect(await sha256(other.imagePath(fresh))).toBe(srcSum);
      await other.deleteVolume(fresh);
      // Into an existing, larger volume with old data: as the generic path leaves it
      // (cleared, then the source's bytes), the tail past the source reads as zeros.
      const dest = { pool: 'bronze', name: 'vol-restored' };
      await other.createVolume(dest, BIG + 64 * MiB);
      await fill(other.imagePath(dest), BIG + 64 * MiB);
      expect(await other.storageAssistedCopy(d, src, dest)).toBe(true);
      const destPath = other.imagePath(dest);
      expect((await stat(destPath)).size).toBe(BIG + 64 * MiB);
      const fh = await open(destPath, 'r');
      const tail = Buffer.alloc(64 * MiB);
      await fh.read(tail, 0, tail.length, BIG);
      await fh.close();
      expect(tail.every((b) => b === 0)).toBe(true);
      await execa('truncate', ['-s', String(BIG), destPath]);
      expect(await sha256(destPath)).toBe(srcSum);
      await other.deleteVolume(dest);
    });

    it('declines a file-driver source, even on the same filesystem', async () => {
      const fileDriver = new FileVolumeDriver('plainfile', join(mnt(fs1), 'filebackend'), ['p']);
      await fileDriver.prepare();
      const fsrc = { pool: 'p', name: 'vol-f' };
      await fileDriver.createVolume(fsrc, 4 * MiB);
      const dest = { pool: 'silver', name: 'backup-f' };
      await d.createVolume(dest, 4 * MiB);
      expect(await d.storageAssistedCopy(fileDriver, fsrc, dest)).toBe(false);
      expect(await d.volumeSize(dest)).toBe(4 * MiB);
      expect(await partials(join(mnt(fs1), 'silver'))).toEqual([]);
      await d.deleteVolume(dest);
      await fileDriver.deleteVolume(fsrc);
    });

    it('declines a btrfs source on another btrfs filesystem, both ways', async () => {
      const far = new BtrfsVolumeDriver('far', mnt(fs2), ['p']);
      await far.prepare();
      expect(await far.filesystemUuid()).not.toBe(await d.filesystemUuid());
      const farVol = { pool: 'p', name: 'vol-far' };
      await far.createVolume(farVol, 4 * MiB);
      await fill(far.imagePath(farVol), 4 * MiB);
      const dest = { pool: 'silver', name: 'backup-far' };
      expect(await d.storageAssistedCopy(far, farVol, dest)).toBe(false);
      expect(await d.volumeSize(dest)).toBeNull();
      const back = { pool: 'p', name: 'restore-far' };
      expect(await far.storageAssistedCopy(d, src, back)).toBe(false);
      expect(await far.volumeSize(back)).toBeNull();
      await far.deleteVolume(farVol);
    });

    it('compares with dd of the same 512 MiB on the same filesystem (informational)', async () => {
      // The generic path's cost for the same bytes: a full read and write.
      const out = join(mnt(fs1), 'silver', 'dd-copy.img');
      try {
        const [, ms] = await timed(() => execa('dd', [`if=${srcPath}`, `of=${out}`, 'bs=4M', 'conv=fsync', 'status=none']));
        console.log(`dd of ${BIG / MiB} MiB (gold -> silver on the same btrfs, bs=4M conv=fsync): ${ms.toFixed(1)} ms`);
        expect(await sha256(out)).toBe(srcSum);
      } finally {
        await rm(out, { force: true });
      }
    });
  });
});
