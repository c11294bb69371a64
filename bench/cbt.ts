/**
 * Incremental backups to an object target with changed-block tracking (copy/cbt.ts)
 * against hash-based ones, on btrfs and on xfs (reflink), same run:
 *
 *   1 GiB of random data in an image on a loop-mounted filesystem -> full backup to a
 *   posix store (zstd + AES-256-GCM, 4 MiB chunks) -> a reflink clone of the image as the
 *   base -> 1% of the 4 MiB chunks changed (16 random 4 KiB writes in each, the 64 KiB of
 *   new bytes per chunk bench/objects.ts writes) -> incremental backup (a) with CBT,
 *   changedSince + backupToStore({ changed }) both timed, (b) hash-based (reads it all).
 *
 * Then changedSince alone on a fragmented image (2,500 random 4 KiB writes since the
 * clone, ~5,000 extents each side), cold and warm.
 *
 * Targets: (a) <= 0.05x and (b) <= 0.15x the full backup's time. Page cache, dentries and
 * inodes dropped before every timed step (root). Median of BENCH_REPEAT rounds (default 3),
 * each on a fresh image and store. Writes var/bench/cbt.json.
 * Run: npm run build && node dist/bench/cbt.js (needs root: loop devices, drop_caches).
 * Everything lives in a temporary directory under /var/tmp, removed at the end.
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import { constants as fsConstants, mkdirSync, writeFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { changedSince, extentMap } from '../src/copy/cbt.js';
import { repoRoot } from '../src/dev/devserver.js';
import { backupToStore, type BackupToStoreResult } from '../src/drivers/backup/backup.js';
import { CodecPool } from '../src/drivers/backup/codec.js';
import { DEFAULT_CHUNK_SIZE } from '../src/drivers/backup/format.js';
import { ObjectTarget } from '../src/drivers/backup/stores/registry.js';
import { ChunkedTarget } from '../src/drivers/backup/target.js';
import { MiB } from '../src/size.js';
import { makeLoopFilesystem, type LoopFilesystem } from '../test/helpers/loopfs.js';
import { cleanupStep, detachLoopsUnder } from './cleanup.js';

const GiB = 1024 * MiB;
const SIZE = 1 * GiB;
const say = (m: string) => process.stderr.write(`bench-cbt: ${m}\n`);
const fmt = (n: number, d = 2) => n.toFixed(d);
const mb = (bytes: number) => fmt(bytes / 1e6, 1);
const isRoot = process.getuid?.() === 0;

async function dropCaches(): Promise<void> {
  if (!isRoot) return;
  await execa('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3\n');
}

async function timed<T>(fn: () => Promise<T>): Promise<{ seconds: number; value: T }> {
  await dropCaches();
  const t0 = performance.now();
  const value = await fn();
  return { seconds: (performance.now() - t0) / 1000, value };
}

/** Incompressible bytes, fast: AES-CTR keystream. */
async function randomFile(path: string, size: number): Promise<void> {
  const cipher = createCipheriv('aes-128-ctr', randomBytes(16), Buffer.alloc(16));
  const zeros = Buffer.alloc(16 * MiB);
  const fh = await open(path, 'w');
  try {
    for (let at = 0; at < size; at += zeros.length) {
      const n = Math.min(zeros.length, size - at);
      await fh.write(cipher.update(zeros.subarray(0, n)), 0, n, at);
    }
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/**
 * Changes `fraction` of the chunks, picked as bench/objects.ts picks them (same generator
 * and seed), each with 16 random 4 KiB writes: 64 KiB of new bytes per chunk, as there.
 */
async function changeChunks(path: string, size: number, chunkSize: number, fraction: number, seed: number): Promise<{ chunks: number; writes: number }> {
  const count = Math.ceil(size / chunkSize);
  const n = Math.max(1, Math.round(count * fraction));
  const picked = new Set<number>();
  let x = 12345 + seed;
  const next = () => (x = (x * 1103515245 + 12345) % 2 ** 31);
  while (picked.size < n) picked.add(next() % count);
  const fh = await open(path, 'r+');
  let writes = 0;
  try {
    for (const i of picked) {
      const blocks = Math.floor(Math.min(chunkSize, size - i * chunkSize) / 4096);
      for (let k = 0; k < 16; k++, writes++) await fh.write(randomBytes(4096), 0, 4096, i * chunkSize + (next() % blocks) * 4096);
    }
  } finally {
    await fh.close();
  }
  return { chunks: n, writes };
}

interface Round {
  fs: 'btrfs' | 'xfs';
  fullSeconds: number;
  fullBytesRead: number;
  changedChunks: number;
  /** changedSince alone, inside cbtSeconds. */
  cbtMapSeconds: number;
  cbtChangedBytes: number;
  baseExtents: number;
  imageExtents: number;
  cbtSeconds: number;
  cbtBytesRead: number;
  cbtBytesSkipped: number;
  cbtStoredBytes: number;
  hashSeconds: number;
  hashBytesRead: number;
  hashStoredBytes: number;
  sameChunks: boolean;
}

async function round(type: 'btrfs' | 'xfs', fs: LoopFilesystem, r: number, keyFile: string, codec: CodecPool): Promise<Round> {
  const image = join(fs.mountPoint, 'volume.img');
  const base = join(fs.mountPoint, 'base.img');
  const storeDir = join(fs.mountPoint, 'store');
  await mkdir(storeDir);
  say(`${type} round ${r}: writing 1 GiB of random data`);
  await randomFile(image, SIZE);
  const target = await ChunkedTarget.open(ObjectTarget.parse({ name: 'bench', driver: 'posix', path: storeDir, compression: 'zstd', encryption: { keyFile } }));
  try {
    const common = { target, volumeId: 'bench', source: image, size: SIZE, codec };
    const full = await timed(() => backupToStore({ ...common, backupId: 'full' }));
    // What the workflow will keep after a backup: the backed-up bytes, as a clone.
    await copyFile(image, base, fsConstants.COPYFILE_FICLONE_FORCE);
    const changed = await changeChunks(image, SIZE, DEFAULT_CHUNK_SIZE, 0.01, r);
    let mapSeconds = 0;
    let changedBytes = 0;
    const cbt = await timed(async () => {
      const t0 = performance.now();
      const c = await changedSince({ base, current: image, size: SIZE });
      mapSeconds = (performance.now() - t0) / 1000;
      if (c.method !== 'cbt') throw new Error(`CBT fell back: ${c.reason}`);
      changedBytes = c.changedBytes;
      return backupToStore({ ...common, backupId: 'cbt', parentId: 'full', changed: c.changed });
    });
    const hash = await timed(() => backupToStore({ ...common, backupId: 'hash', parentId: 'full' }));
    const [baseMap, imageMap] = await Promise.all([extentMap(base), extentMap(image)]);
    const sameChunks = JSON.stringify(cbt.value.metadata.chunks) === JSON.stringify(hash.value.metadata.chunks);
    const row: Round = {
      fs: type,
      fullSeconds: full.seconds,
      fullBytesRead: full.value.bytesRead,
      changedChunks: changed.chunks,
      cbtMapSeconds: mapSeconds,
      cbtChangedBytes: changedBytes,
      baseExtents: baseMap.length,
      imageExtents: imageMap.length,
      cbtSeconds: cbt.seconds,
      cbtBytesRead: cbt.value.bytesRead,
      cbtBytesSkipped: cbt.value.bytesSkippedByCbt,
      cbtStoredBytes: stored(cbt.value),
      hashSeconds: hash.seconds,
      hashBytesRead: hash.value.bytesRead,
      hashStoredBytes: stored(hash.value),
      sameChunks,
    };
    say(
      `  full ${fmt(full.seconds)} s; ${changed.chunks} chunks changed (${changed.writes} writes); CBT ${fmt(cbt.seconds)} s (map ${fmt(mapSeconds * 1000, 1)} ms, ` +
        `${baseMap.length}+${imageMap.length} extents, read ${mb(row.cbtBytesRead)} MB); hash ${fmt(hash.seconds)} s (read ${mb(row.hashBytesRead)} MB); same chunks: ${sameChunks}`,
    );
    return row;
  } finally {
    target.close();
    await rm(storeDir, { recursive: true, force: true });
    await rm(base, { force: true });
    await rm(image, { force: true });
  }
}

const stored = (r: BackupToStoreResult) => r.metadata.stats.storedBytes;

interface MapTiming {
  fs: 'btrfs' | 'xfs';
  baseExtents: number;
  imageExtents: number;
  /** changedSince with the page cache, dentries and inodes dropped first. */
  coldMs: number;
  /** Median of 5 runs right after. */
  warmMs: number;
}

/** changedSince alone on a fragmented image: 1 GiB, 2,500 random 4 KiB writes since the clone (~5,000 extents). */
async function mapTiming(type: 'btrfs' | 'xfs', fs: LoopFilesystem): Promise<MapTiming> {
  const image = join(fs.mountPoint, 'fragmented.img');
  const base = join(fs.mountPoint, 'fragmented-base.img');
  try {
    await randomFile(image, SIZE);
    await copyFile(image, base, fsConstants.COPYFILE_FICLONE_FORCE);
    const fh = await open(image, 'r+');
    try {
      for (let k = 0; k < 2500; k++) await fh.write(randomBytes(4096), 0, 4096, Math.floor(Math.random() * (SIZE / 4096)) * 4096);
    } finally {
      await fh.close();
    }
    const once = async () => {
      const t0 = performance.now();
      const r = await changedSince({ base, current: image, size: SIZE });
      if (r.method !== 'cbt') throw new Error(`CBT fell back: ${r.reason}`);
      return performance.now() - t0;
    };
    await dropCaches();
    const coldMs = await once();
    const warm: number[] = [];
    for (let k = 0; k < 5; k++) warm.push(await once());
    const [b, i] = await Promise.all([extentMap(base), extentMap(image)]);
    const t: MapTiming = { fs: type, baseExtents: b.length, imageExtents: i.length, coldMs, warmMs: median(warm) };
    say(`  ${type}: changedSince on ${t.baseExtents} + ${t.imageExtents} extents: ${fmt(coldMs, 1)} ms cold, ${fmt(t.warmMs, 1)} ms warm (median of 5)`);
    return t;
  } finally {
    await rm(image, { force: true });
    await rm(base, { force: true });
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

async function main(): Promise<void> {
  const dir = await mkdtemp('/var/tmp/gbackup-bench-cbt-');
  const repeat = Math.max(1, Number.parseInt(process.env.BENCH_REPEAT ?? '3', 10) || 1);
  const codec = new CodecPool();
  const filesystems: LoopFilesystem[] = [];
  const rounds: Round[] = [];
  const maps: MapTiming[] = [];
  try {
    say(`work dir ${dir}; ${cpus().length} cores, ${fmt(totalmem() / GiB, 1)} GiB RAM; cold caches: ${isRoot ? 'yes' : 'no (not root)'}; ${repeat} rounds, medians`);
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, randomBytes(32));
    for (const type of ['btrfs', 'xfs'] as const) {
      const fsDir = join(dir, type);
      await mkdir(fsDir);
      // Image, its base clone (shared) and the store's 1 GiB full backup, with room to spare.
      const fs = await makeLoopFilesystem(fsDir, 4 * GiB, type);
      filesystems.push(fs);
      for (let r = 0; r < repeat; r++) rounds.push(await round(type, fs, r, keyFile, codec));
      maps.push(await mapTiming(type, fs));
      await fs.cleanup();
    }

    const out: string[] = [''];
    out.push(
      `1 GiB random data (${SIZE} bytes) on a loop-mounted fs, posix store on the same fs, zstd + AES-256-GCM, chunk ${DEFAULT_CHUNK_SIZE / MiB} MiB, ` +
        `1% of the chunks changed (16 x 4 KiB each), ${cpus().length} cores, caches dropped before each step: ${isRoot}, median of ${repeat}`,
    );
    out.push('');
    out.push(`${'fs'.padEnd(6)} ${'step'.padEnd(24)} ${'seconds'.padStart(8)} ${'x full'.padStart(7)} ${'read MB'.padStart(9)} ${'stored MB'.padStart(10)}  notes`);
    const ratios: Record<string, { cbtOverFull: number; hashOverFull: number }> = {};
    const verdict = (ok: boolean) => (ok ? 'MET' : 'MISSED');
    for (const type of ['btrfs', 'xfs'] as const) {
      const mine = rounds.filter((x) => x.fs === type);
      if (mine.length === 0) continue;
      const med = (k: keyof Round) => median(mine.map((x) => Number(x[k])));
      const full = med('fullSeconds');
      const row = (step: string, s: number, read: number, storedBytes: number | null, note: string) =>
        `${type.padEnd(6)} ${step.padEnd(24)} ${fmt(s, 3).padStart(8)} ${fmt(s / full, 3).padStart(7)} ${mb(read).padStart(9)} ${(storedBytes === null ? '' : mb(storedBytes)).padStart(10)}  ${note}`;
      out.push(row('full backup', full, med('fullBytesRead'), null, ''));
      out.push(
        row(
          'incremental, CBT',
          med('cbtSeconds'),
          med('cbtBytesRead'),
          med('cbtStoredBytes'),
          `changedSince ${fmt(med('cbtMapSeconds') * 1000, 1)} ms (${med('baseExtents')} + ${med('imageExtents')} extents), ${mb(med('cbtChangedBytes'))} MB flagged, ${mb(med('cbtBytesSkipped'))} MB skipped unread`,
        ),
      );
      out.push(row('incremental, hash-based', med('hashSeconds'), med('hashBytesRead'), med('hashStoredBytes'), `same chunk list as CBT: ${mine.every((x) => x.sameChunks) ? 'yes' : 'NO'}`));
      const r = { cbtOverFull: med('cbtSeconds') / full, hashOverFull: med('hashSeconds') / full };
      ratios[type] = r;
      out.push(
        `${type.padEnd(6)} CBT ${fmt(r.cbtOverFull, 3)}x full (target <= 0.05): ${verdict(r.cbtOverFull <= 0.05)}; hash-based ${fmt(r.hashOverFull, 3)}x full (target <= 0.15): ${verdict(r.hashOverFull <= 0.15)}`,
      );
      const m = maps.find((x) => x.fs === type);
      if (m) out.push(`${type.padEnd(6)} changedSince alone, 1 GiB with ${m.baseExtents} + ${m.imageExtents} extents: ${fmt(m.coldMs, 1)} ms cold, ${fmt(m.warmMs, 1)} ms warm`);
      out.push('');
    }
    process.stdout.write(out.join('\n') + '\n');
    const json = { when: new Date().toISOString(), cores: cpus().length, cold: isRoot, volumeBytes: SIZE, chunkSize: DEFAULT_CHUNK_SIZE, repeat, rounds, ratios, changedSinceTiming: maps };
    mkdirSync(join(repoRoot, 'var', 'bench'), { recursive: true });
    writeFileSync(join(repoRoot, 'var', 'bench', 'cbt.json'), JSON.stringify(json, null, 2));
    say(`wrote ${join(repoRoot, 'var', 'bench', 'cbt.json')}`);
    if (!rounds.every((x) => x.sameChunks)) process.exitCode = 1;
  } finally {
    const step = cleanupStep(say);
    for (const fs of filesystems) await step(`filesystem ${fs.mountPoint}`, () => fs.cleanup());
    await step('loop devices', () => detachLoopsUnder(dir));
    await step('codec', () => codec.close());
    await step('temp dir', () => rm(dir, { recursive: true, force: true }));
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
