/**
 * Changed-block tracking from extent maps, on real btrfs and xfs (reflink) filesystems on
 * loop devices: an image of random data with holes, a reflink clone of it as the base,
 * then ~1% of its 4 KiB blocks rewritten, a few unaligned writes, a write running into a
 * hole and a punched hole. What changedSince reports is checked against a block-by-block
 * comparison of the two files, and a backup built on it against a hash-based incremental.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsc, mkdtempSync, rmSync } from 'node:fs';
import { copyFile, mkdir, open, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { changedSince, compareExtentMaps, extentMap, parseFilefrag, type ChangedBlocks } from '../src/copy/cbt.js';
import type { Extent } from '../src/copy/extents.js';
import { backupToStore } from '../src/drivers/backup/backup.js';
import { CodecPool } from '../src/drivers/backup/codec.js';
import { restoreFromStore } from '../src/drivers/backup/restore.js';
import { ObjectTarget } from '../src/drivers/backup/stores/registry.js';
import { ChunkedTarget } from '../src/drivers/backup/target.js';
import { InvalidInput } from '../src/errors.js';
import { makeLoopFilesystem, type LoopFilesystem } from './helpers/loopfs.js';
import { cleanupOnExit } from './helpers/minio.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 96 * MiB;
const BLOCK = 4 * KiB;
const ALIGN = 64 * KiB;
/** Never written in the base: a hole in the middle and one at the end. */
const HOLES: Extent[] = [
  { start: 40 * MiB, end: 48 * MiB },
  { start: 88 * MiB, end: SIZE },
];

type FsType = 'btrfs' | 'xfs';
interface Scenario {
  fs: LoopFilesystem;
  base: string;
  current: string;
  /** Every byte range a write or a punch touched in `current` after the clone. */
  touched: Extent[];
}

let dir: string;
let forgetDir: (() => void) | null = null;
let codec: CodecPool;
const scenarios = new Map<FsType, Scenario>();

/** Seeded, so a failure can be replayed (the seed is printed). */
function prng(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (x + 0x6d2b79f5) >>> 0;
    let t = x;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

async function writeAt(file: string, at: number, bytes: Buffer): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    await fh.write(bytes, 0, bytes.length, at);
  } finally {
    await fh.close();
  }
}

async function makeScenario(type: FsType, seed: number): Promise<Scenario> {
  const fsDir = join(dir, type);
  await mkdir(fsDir);
  const fs = await makeLoopFilesystem(fsDir, 512 * MiB, type);
  const current = join(fs.mountPoint, 'volume.img');
  const base = join(fs.mountPoint, 'base.img');
  await writeFile(current, '');
  await truncate(current, SIZE);
  const fh = await open(current, 'r+');
  try {
    for (let at = 0; at < SIZE; at += 8 * MiB) {
      if (HOLES.some((h) => at >= h.start && at < h.end)) continue;
      await fh.write(randomBytes(8 * MiB), 0, 8 * MiB, at);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  await copyFile(current, base, fsc.COPYFILE_FICLONE_FORCE);

  const rand = prng(seed);
  const touched: Extent[] = [];
  const write = async (at: number, n: number) => {
    await writeAt(current, at, randomBytes(n));
    touched.push({ start: at, end: at + n });
  };
  // ~1% of the 4 KiB blocks, anywhere (holes included).
  const blocks = SIZE / BLOCK;
  for (let k = 0; k < Math.round(blocks * 0.01); k++) await write(Math.floor(rand() * blocks) * BLOCK, BLOCK);
  await write(7 * MiB + 1234, 100);
  await write(13 * MiB + 4000, 10_000);
  await write(SIZE - 1, 1);
  // From data into the hole at 40 MiB, and one inside the hole at the end.
  await write(40 * MiB - 8 * KiB, 64 * KiB);
  await write(90 * MiB, BLOCK);
  // A block rewritten with the bytes it held: copied on write, so "changed", harmlessly.
  const same = Buffer.alloc(BLOCK);
  const rh = await open(current, 'r');
  await rh.read(same, 0, BLOCK, 20 * MiB).finally(() => rh.close());
  await writeAt(current, 20 * MiB, same);
  touched.push({ start: 20 * MiB, end: 20 * MiB + BLOCK });
  // Punched: an unaligned end, and one inside a hole (nothing changes there).
  for (const [at, n] of [
    [60 * MiB, MiB + 512],
    [44 * MiB, 64 * KiB],
  ] as const) {
    await execa('fallocate', ['--punch-hole', '--offset', String(at), '--length', String(n), '--', current]);
    touched.push({ start: at, end: at + n });
  }
  // No sync here on purpose: changedSince must sync before it maps.
  return { fs, base, current, touched };
}

/** The 4 KiB blocks whose bytes differ between two files of `size` bytes. */
async function differingBlocks(a: string, b: string, size = SIZE): Promise<number[]> {
  const out: number[] = [];
  const [fa, fb] = await Promise.all([open(a, 'r'), open(b, 'r')]);
  try {
    const ba = Buffer.alloc(8 * MiB);
    const bb = Buffer.alloc(8 * MiB);
    for (let at = 0; at < size; at += ba.length) {
      await Promise.all([fa.read(ba, 0, ba.length, at), fb.read(bb, 0, bb.length, at)]);
      for (let o = 0; o < ba.length; o += BLOCK) if (ba.compare(bb, o, o + BLOCK, o, o + BLOCK) !== 0) out.push((at + o) / BLOCK);
    }
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
  return out;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(file, 'r');
  try {
    for await (const c of fh.createReadStream({ highWaterMark: 4 * MiB })) h.update(c as Buffer);
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

const covers = (ranges: Extent[], start: number, end: number) => ranges.some((r) => r.start <= start && r.end >= end);

/** Distinct 64 KiB windows a set of ranges touches: the most CBT may report. */
function windowsOf(ranges: Extent[]): Set<number> {
  const w = new Set<number>();
  for (const r of ranges) for (let i = Math.floor(r.start / ALIGN); i < Math.ceil(r.end / ALIGN); i++) w.add(i);
  return w;
}

function expectCbt(r: ChangedBlocks): Extract<ChangedBlocks, { method: 'cbt' }> {
  if (r.method !== 'cbt') throw new Error(`expected CBT, got a fallback: ${r.reason}`);
  return r;
}

beforeAll(async () => {
  dir = mkdtempSync('/var/tmp/gbackup-cbt-');
  const made = dir;
  forgetDir = cleanupOnExit(() => rmSync(made, { recursive: true, force: true }));
  codec = new CodecPool(2);
  for (const type of ['btrfs', 'xfs'] as const) {
    const seed = Math.floor(Math.random() * 2 ** 31);
    console.log(`cbt test: ${type} scenario seed ${seed}`);
    const s = await makeScenario(type, seed).catch(async (e: unknown) => {
      // A failed setup still leaves the loop device of the first filesystem behind otherwise.
      for (const made of scenarios.values()) await made.fs.cleanup();
      scenarios.clear();
      throw e;
    });
    scenarios.set(type, s);
  }
});

afterAll(async () => {
  try {
    for (const s of scenarios.values()) await s.fs.cleanup().catch((e: unknown) => console.error(e));
    // A scenario that failed half way made its filesystem without being recorded: detach by path.
    for (const type of ['btrfs', 'xfs'] as const) {
      const mnt = join(dir, type, 'mnt');
      await execa('umount', [mnt], { reject: false });
      const { stdout } = await execa('losetup', ['--noheadings', '--output', 'NAME', '--associated', join(dir, type, `${type}.img`)], { reject: false });
      for (const dev of stdout.split('\n').filter(Boolean)) await execa('losetup', ['--detach', dev.trim()], { reject: false });
    }
  } finally {
    forgetDir?.();
    if (dir) rmSync(dir, { recursive: true, force: true });
    await codec?.close();
  }
});

describe('filefrag parsing and the map comparison', () => {
  it('reads bytes and flags, with and without the expected column', () => {
    const text = [
      'Filesystem type is: 9123683e',
      'File size of /x/a is 1073741824 (1073741824 blocks of 1 bytes)',
      ' ext:     logical_offset:        physical_offset: length:   expected: flags:',
      '   0:        0..  851967:  298844160.. 299696127: 851968:             shared',
      '   1:   851968..  856063:   20103168..  20107263:   4096:  299696128:',
      '   2:   856064.. 1486847:  299700224.. 300331007: 630784:   20107264: last,shared,eof',
      '/x/a: 3 extents found',
      'File size of /x/b is 10 (4096 block of 1 bytes)',
      ' ext:     logical_offset:        physical_offset: length:   expected: flags:',
      '   0:        0..    4095:          0..      4095:   4096:             last,not_aligned,inline,eof',
      '/x/b: 1 extent found',
    ].join('\n');
    const [a, b] = parseFilefrag(text, ['/x/a', '/x/b']);
    expect(a).toEqual([
      { logical: 0, physical: 298844160, length: 851968, flags: ['shared'] },
      { logical: 851968, physical: 20103168, length: 4096, flags: [] },
      { logical: 856064, physical: 299700224, length: 630784, flags: ['last', 'shared'] },
    ]);
    expect(b).toEqual([{ logical: 0, physical: 0, length: 4096, flags: ['last', 'not_aligned', 'inline'] }]);
    expect(() => parseFilefrag('File size of /x/a is 1\n   0: garbage\n', ['/x/a'])).toThrow(/cannot parse/);
  });

  it('calls a range unchanged only where both map the same physical bytes', () => {
    const e = (logical: number, physical: number, length: number, ...flags: string[]) => ({ logical, physical, length, flags });
    const size = 1024 * KiB;
    // Base: one extent. Current: the same, with 4 KiB at 128 KiB moved elsewhere, a hole
    // punched at 512 KiB, and data where the base has none (past 768 KiB).
    const base = [e(0, 1_000_000 * 4096, 768 * KiB, 'shared')];
    const current = [
      e(0, 1_000_000 * 4096, 128 * KiB, 'shared'),
      e(128 * KiB, 5 * 4096, 4 * KiB),
      e(132 * KiB, 1_000_000 * 4096 + 132 * KiB, 380 * KiB, 'shared'),
      e(576 * KiB, 1_000_000 * 4096 + 576 * KiB, 192 * KiB, 'shared'),
      e(960 * KiB, 9 * 4096, 64 * KiB),
    ];
    const c = compareExtentMaps(base, current, size);
    expect(c.changed).toEqual([
      { start: 128 * KiB, end: 192 * KiB },
      { start: 512 * KiB, end: 576 * KiB },
      { start: 960 * KiB, end: 1024 * KiB },
    ]);
    // Compressed pieces: only a record that starts where the base's does, on the same extent.
    const enc = compareExtentMaps([e(0, 4096, 256 * KiB, 'encoded')], [e(0, 4096, 128 * KiB, 'encoded'), e(128 * KiB, 4096, 128 * KiB, 'encoded')], 256 * KiB);
    expect(enc.changed).toEqual([{ start: 128 * KiB, end: 256 * KiB }]);
  });
});

describe('backupToStore with changed ranges', () => {
  it('refuses them without a parent', async () => {
    const target = new ChunkedTarget(ObjectTarget.parse({ name: 'vault', driver: 'posix', path: '/nonexistent' }), null as never);
    await expect(backupToStore({ target, backupId: 'b', volumeId: 'v', source: '/dev/null', size: MiB, changed: [] })).rejects.toThrow(InvalidInput);
    await expect(backupToStore({ target, backupId: 'b', volumeId: 'v', source: '/dev/null', size: MiB, incremental: true, changed: [] })).rejects.toThrow(/parentId/);
  });
});

describe.each(['btrfs', 'xfs'] as const)('CBT on %s', (type) => {
  const sc = () => scenarios.get(type)!;

  it('covers every changed block, and little more', async () => {
    const { base, current, touched } = sc();
    const t0 = performance.now();
    const r = expectCbt(await changedSince({ base, current, size: SIZE }));
    const ms = performance.now() - t0;
    const diff = await differingBlocks(base, current);
    const missed = diff.filter((b) => !covers(r.changed, b * BLOCK, (b + 1) * BLOCK));
    expect(missed).toEqual([]);
    // Sorted, merged, 64 KiB aligned, within the volume.
    r.changed.forEach((x, k) => {
      expect(x.start % ALIGN).toBe(0);
      expect(x.end % ALIGN === 0 || x.end === SIZE).toBe(true);
      expect(x.end).toBeLessThanOrEqual(SIZE);
      if (k > 0) expect(x.start).toBeGreaterThan(r.changed[k - 1]!.end);
    });
    // No more than the 64 KiB windows the writes touched: nowhere near the whole file.
    const windows = windowsOf(touched);
    expect(r.changedBytes).toBeLessThanOrEqual(windows.size * ALIGN);
    expect(r.changedBytes).toBeLessThan(SIZE / 3);
    for (const x of r.changed) for (let i = x.start / ALIGN; i < Math.ceil(x.end / ALIGN); i++) expect(windows.has(i)).toBe(true);
    console.log(`cbt ${type}: ${diff.length} blocks differ (${diff.length * BLOCK} bytes); reported ${r.changed.length} ranges, ${r.changedBytes} bytes; ${windows.size} windows touched; ${ms.toFixed(1)} ms`);
  });

  it('finds nothing changed against a fresh clone', async () => {
    const { current, fs } = sc();
    const fresh = join(fs.mountPoint, 'fresh.img');
    await copyFile(current, fresh, fsc.COPYFILE_FICLONE_FORCE);
    try {
      const r = expectCbt(await changedSince({ base: fresh, current, size: SIZE }));
      expect(r).toEqual({ method: 'cbt', changed: [], changedBytes: 0 });
    } finally {
      await rm(fresh, { force: true });
    }
  });

  // btrfs only (xfs does not compress): defined for btrfs alone rather than skipped for xfs.
  if (type === 'btrfs') it('works on compressed (encoded) extents, a whole compressed extent at a time', async () => {
    const { fs } = sc();
    const current = join(fs.mountPoint, 'compressed.img');
    const base = join(fs.mountPoint, 'compressed-base.img');
    const size = 16 * MiB;
    try {
      await writeFile(current, '');
      await execa('btrfs', ['property', 'set', current, 'compression', 'zstd']);
      const text = Buffer.alloc(size);
      for (let o = 0; o < size; o += 64) text.write(`line ${o} ${Math.random()}`.padEnd(63, '.') + '\n', o);
      await writeFile(current, text);
      await copyFile(current, base, fsc.COPYFILE_FICLONE_FORCE);
      expect((await extentMap(base)).filter((e) => e.flags.includes('encoded')).length).toBeGreaterThan(10);
      const spots = [5 * BLOCK, 100_000, 3 * MiB + 17, 9 * MiB - 1000, size - 3000];
      for (const at of spots) await writeAt(current, at, randomBytes(3000));
      const r = expectCbt(await changedSince({ base, current, size }));
      const diff = await differingBlocks(base, current, size);
      expect(diff.filter((b) => !covers(r.changed, b * BLOCK, (b + 1) * BLOCK))).toEqual([]);
      // btrfs compresses 128 KiB at a time: a write costs at most the compressed extents it
      // touches (two, when it straddles), aligned.
      expect(r.changedBytes).toBeLessThanOrEqual(spots.length * 3 * 128 * KiB);
    } finally {
      await rm(current, { force: true });
      await rm(base, { force: true });
    }
  });

  it('falls back, saying why, when the base cannot be trusted', async () => {
    const { base, current, fs } = sc();
    const missing = await changedSince({ base: join(fs.mountPoint, 'gone.img'), current, size: SIZE });
    expect(missing).toMatchObject({ method: 'fallback', reason: expect.stringMatching(/gone\.img' does not exist/) as string });

    const size = await changedSince({ base, current, size: SIZE + ALIGN });
    expect(size).toMatchObject({ method: 'fallback', reason: expect.stringMatching(/is 100663296 bytes, not the 100728832 to back up/) as string });

    const self = await changedSince({ base: current, current, size: SIZE });
    expect(self).toMatchObject({ method: 'fallback', reason: expect.stringMatching(/is the image itself/) as string });

    const copy = join(fs.mountPoint, 'copy.img');
    await execa('cp', ['--reflink=never', '--sparse=always', '--', base, copy]);
    try {
      const r = await changedSince({ base: copy, current, size: SIZE });
      expect(r).toMatchObject({ method: 'fallback', reason: expect.stringMatching(/copy\.img' shares no extent with the image/) as string });
    } finally {
      await rm(copy, { force: true });
    }
  });
});

describe('CBT across and outside reflink filesystems', () => {
  it('falls back for a base on another filesystem', async () => {
    const b = scenarios.get('btrfs')!;
    const x = scenarios.get('xfs')!;
    const r = await changedSince({ base: x.base, current: b.current, size: SIZE });
    expect(r).toMatchObject({ method: 'fallback', reason: expect.stringMatching(/are on different filesystems/) as string });
  });

  it('falls back on ext4 and tmpfs', async () => {
    for (const place of [dir, '/dev/shm']) {
      const a = join(place, `cbt-${process.pid}-a.img`);
      const c = join(place, `cbt-${process.pid}-c.img`);
      try {
        await writeFile(a, randomBytes(256 * KiB));
        await copyFile(a, c);
        const r = await changedSince({ base: a, current: c, size: 256 * KiB });
        expect(r).toMatchObject({ method: 'fallback', reason: expect.stringMatching(/on a filesystem without shared extents \(statfs type 0x[0-9a-f]+; CBT needs btrfs or xfs\)/) as string });
      } finally {
        await rm(a, { force: true });
        await rm(c, { force: true });
      }
    }
  });
});

describe.each(['btrfs', 'xfs'] as const)('backup with CBT on %s', (type) => {
  it('stores what a hash-based incremental stores, reading far less, and restores bit-exact', async () => {
    const { base, current } = scenarios.get(type)!;
    const storeDir = join(dir, `store-${type}`);
    await mkdir(storeDir);
    const target = await ChunkedTarget.open(ObjectTarget.parse({ name: 'vault', driver: 'posix', path: storeDir, chunkSize: ALIGN, compression: 'none' }));
    try {
      const common = { target, volumeId: 'vol', size: SIZE, codec };
      const full = await backupToStore({ ...common, backupId: 'full', source: base });
      expect(full.bytesSkippedByCbt).toBe(0);
      const hashed = await backupToStore({ ...common, backupId: 'hashed', source: current, parentId: 'full' });
      const cbt = expectCbt(await changedSince({ base, current, size: SIZE }));
      const tracked = await backupToStore({ ...common, backupId: 'tracked', source: current, parentId: 'full', changed: cbt.changed });

      expect(tracked.metadata.parent).toBe('full');
      expect(tracked.metadata.chunks).toEqual(hashed.metadata.chunks);
      expect(tracked.metadata.zeroChunks).toEqual(hashed.metadata.zeroChunks);
      expect(tracked.metadata.stats.dataBytes).toBe(hashed.metadata.stats.dataBytes);
      // Only the chunks under a changed range are read (the holes among them are not).
      expect(tracked.bytesRead).toBeLessThanOrEqual(cbt.changedBytes);
      expect(tracked.bytesRead).toBeLessThan(hashed.bytesRead / 4);
      expect(tracked.bytesSkippedByCbt).toBeGreaterThan(SIZE / 2);
      expect(hashed.bytesSkippedByCbt).toBe(0);
      console.log(`backup ${type}: hash-based read ${hashed.bytesRead} bytes, CBT read ${tracked.bytesRead} and skipped ${tracked.bytesSkippedByCbt}`);

      const dest = join(dir, `restore-${type}.img`);
      await writeFile(dest, '');
      await truncate(dest, SIZE);
      try {
        await restoreFromStore({ target, backupId: 'tracked', dest, destIsZero: true, codec });
        expect(await sha256File(dest)).toBe(await sha256File(current));
      } finally {
        await rm(dest, { force: true });
      }

      // A retry whose pending record names another parent than the one `changed` is over
      // must not trust it: here it claims nothing changed, and everything is read anyway.
      await expect(
        backupToStore({ ...common, backupId: 'retry', source: current, parentId: 'full', changed: cbt.changed, signal: AbortSignal.abort() }),
      ).rejects.toThrow();
      const retry = await backupToStore({ ...common, backupId: 'retry', source: current, parentId: 'hashed', changed: [] });
      expect(retry.metadata.parent).toBe('full');
      expect(retry.bytesSkippedByCbt).toBe(0);
      expect(retry.metadata.chunks).toEqual(hashed.metadata.chunks);
    } finally {
      target.close();
    }
  });
});
