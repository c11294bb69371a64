/**
 * Changed-block tracking (CBT) for images on a reflink filesystem (btrfs, xfs), from
 * extent maps alone: no bytes are read.
 *
 * Why it works: the base is a reflink clone of exactly what the last backup read. While
 * it exists, every extent it shares with the current image stays pinned, and the
 * filesystem never writes a shared extent in place: a write to either file goes to a
 * new physical location (copy on write). So a range that both files map to the same
 * physical bytes at the same logical offset holds the same bytes in both. Holes in both
 * are zeros in both. Everything else may have changed; the answer is a superset of the
 * changed bytes, never a subset.
 *
 * The caller's part: the base must hold exactly the bytes of the parent backup, and
 * neither file may be written while this runs (map a snapshot, not a live image). Both
 * are synced first, so that writes already made have their final addresses, and a write
 * noticed meanwhile (mtime, ctime) makes it fall back.
 */
import { open, realpath, stat, statfs } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { BigIntStats, StatsFs } from 'node:fs';
import { execa } from 'execa';
import { GbackupError } from '../errors.js';
import type { Extent } from './extents.js';

/** One FIEMAP record, in bytes. */
export interface MappedExtent {
  logical: number;
  physical: number;
  length: number;
  /** filefrag's names of the FIEMAP flags (`shared`, `unwritten`, `encoded`, ...; unknown ones as hex), without its `eof` note. */
  flags: string[];
}

export type ChangedBlocks = { method: 'cbt'; changed: Extent[]; changedBytes: number } | { method: 'fallback'; reason: string };

/** The extent map could not be read. */
export class ExtentMapError extends GbackupError {}

/** statfs(2) f_type of the filesystems whose clones share extents (as the btrfs and xfs drivers check). */
const REFLINK_FILESYSTEMS = new Map([
  [0x9123683e, 'btrfs'],
  [0x58465342, 'xfs'],
]);

/** Changed ranges are widened to this: the backup's chunks are multiples of it, and direct I/O needs it. */
const ALIGN = 64 * 1024;

/**
 * The physical address means nothing yet (or ever): no comparison can be trusted, so the
 * whole answer falls back. After a sync neither should appear unless the file is written.
 */
const UNTRUSTWORTHY = new Set(['unknown_loc', 'delalloc']);
/**
 * Flags under which two records may be compared (`encoded` and `unwritten` with extra
 * rules). Any other flag (inline, not_aligned, tail_packed, encrypted, unknown hex bits)
 * makes its range count as changed: rare, small, and not worth reasoning about.
 */
const COMPARABLE = new Set(['last', 'shared', 'merged', 'unwritten', 'encoded']);

/**
 * `filefrag -e -b1` rows: `   0:        0..  851967:  298844160.. 299696127: 851968:  [expected:]  flags`.
 * With -b1 every number is in bytes (filefrag's own block size would need converting).
 */
const ROW = /^\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+):\s*(?:\d+:)?\s*([\w,]*)\s*$/;

/**
 * Parses `filefrag -e -b1` output of one or more files (a section per file, each opened by
 * its `File size of` line); throws on a row it does not understand rather than guess.
 */
export function parseFilefrag(text: string, files: string[]): MappedExtent[][] {
  const maps: MappedExtent[][] = [];
  let out: MappedExtent[] | undefined;
  let end = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('File size of ')) {
      out = [];
      maps.push(out);
      end = 0;
      continue;
    }
    // Extent rows start with their index and a colon; the other lines (`Filesystem type
    // is`, the header, `<file>: N extents found` with an absolute file name) do not.
    if (!/^\s*\d+:/.test(line)) continue;
    const file = files[maps.length - 1] ?? files.join("', '");
    const m = ROW.exec(line);
    if (!m || !out) throw new ExtentMapError(`cannot parse filefrag's extent row for '${file}': '${line.trim()}'`);
    const e: MappedExtent = {
      logical: Number(m[1]),
      physical: Number(m[2]),
      length: Number(m[3]),
      flags: m[4] ? m[4].split(',').filter((f) => f !== 'eof' && f !== '') : [],
    };
    // Past 2^53 a double cannot tell two addresses apart; unheard of, but then say so.
    if (!Number.isSafeInteger(e.logical + e.length) || !Number.isSafeInteger(e.physical + e.length)) {
      throw new ExtentMapError(`extent of '${file}' at ${m[1]} (physical ${m[2]}) is beyond 2^53 bytes`);
    }
    if (e.logical < end) throw new ExtentMapError(`extents of '${file}' overlap or are out of order at byte ${e.logical}`);
    if (e.length === 0) continue;
    end = e.logical + e.length;
    out.push(e);
  }
  if (maps.length !== files.length) throw new ExtentMapError(`filefrag reported ${maps.length} extent maps for ${files.length} files ('${files.join("', '")}')`);
  return maps;
}

/** Writes back the file's dirty pages, so that delayed allocations get their real addresses first. */
async function syncData(file: string): Promise<void> {
  const fh = await open(file, 'r');
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/**
 * The files' extent maps (FIEMAP), each synced first, from one filefrag run (starting a
 * process costs more than mapping a few thousand extents). filefrag, not `xfs_io fiemap`:
 * it prints bytes with -b1 (xfs_io prints 512-byte units, which round short inline tails
 * away) and flags by name; -e refuses the FIBMAP fallback, whose output means something
 * else; -s asks FIEMAP to sync as well (FIEMAP_FLAG_SYNC).
 */
export async function extentMaps(files: string[]): Promise<MappedExtent[][]> {
  // Absolute names: a summary line (`<file>: N extents found`) then cannot pass for a row.
  const paths = files.map((f) => resolve(f));
  await Promise.all(paths.map(syncData));
  const r = await execa('filefrag', ['-e', '-s', '-b1', '--', ...paths], { reject: false, maxBuffer: 1024 * 1024 * 1024 });
  if (r.exitCode !== 0 || r.failed) {
    const why = r.stderr.trim().split('\n').pop() || r.shortMessage;
    throw new ExtentMapError(`cannot read the extent map of '${paths.join("' and '")}' (filefrag): ${why}`);
  }
  return parseFilefrag(r.stdout, paths);
}

/** One file's extent map (FIEMAP), synced first. */
export async function extentMap(file: string): Promise<MappedExtent[]> {
  return (await extentMaps([file]))[0]!;
}

/** Same bytes at this logical offset in both files, judging by their records covering it. */
function sameBytes(a: MappedExtent, b: MappedExtent): boolean {
  if (!a.flags.every((f) => COMPARABLE.has(f)) || !b.flags.every((f) => COMPARABLE.has(f))) return false;
  // Zeros either way, but two different answers to "is it written" are not worth trusting.
  if (a.flags.includes('unwritten') !== b.flags.includes('unwritten')) return false;
  const encA = a.flags.includes('encoded');
  const encB = b.flags.includes('encoded');
  if (encA || encB) {
    // btrfs reports a compressed extent's disk address for every piece of it, whatever the
    // piece's offset inside: an address does not advance with the logical offset there. Two
    // records starting at the same logical offset on the same compressed extent do hold
    // the same bytes (writes never move an extent's data to another logical offset), so
    // compressed volumes still get CBT, at the granularity of whole records.
    return encA && encB && a.logical === b.logical && a.physical === b.physical;
  }
  return a.physical - a.logical === b.physical - b.logical;
}

interface Comparison {
  changed: Extent[];
  /** Bytes that hold data in both and are the same physical bytes. */
  sharedBytes: number;
  dataA: number;
  dataB: number;
}

/** Sweeps both sorted maps at once; O(records). */
export function compareExtentMaps(a: MappedExtent[], b: MappedExtent[], size: number): Comparison {
  const changed: Extent[] = [];
  let sharedBytes = 0;
  const dataOf = (m: MappedExtent[]) => m.reduce((n, e) => n + Math.max(0, Math.min(size, e.logical + e.length) - e.logical), 0);
  const mark = (start: number, end: number) => {
    const s = Math.floor(start / ALIGN) * ALIGN;
    const e = Math.min(size, Math.ceil(end / ALIGN) * ALIGN);
    const last = changed[changed.length - 1];
    if (last && s <= last.end) last.end = Math.max(last.end, e);
    else changed.push({ start: s, end: e });
  };
  let i = 0;
  let j = 0;
  let pos = 0;
  while (pos < size) {
    while (i < a.length && a[i]!.logical + a[i]!.length <= pos) i++;
    while (j < b.length && b[j]!.logical + b[j]!.length <= pos) j++;
    const ea = a[i];
    const eb = b[j];
    const inA = ea !== undefined && ea.logical <= pos;
    const inB = eb !== undefined && eb.logical <= pos;
    // The segment ends where either file's mapping next changes.
    const edge = (e: MappedExtent | undefined, inside: boolean) => (e === undefined ? size : inside ? e.logical + e.length : e.logical);
    const end = Math.min(size, edge(ea, inA), edge(eb, inB));
    if (inA && inB) {
      if (sameBytes(ea, eb)) sharedBytes += end - pos;
      else mark(pos, end);
    } else if (inA || inB) {
      mark(pos, end);
    }
    pos = end;
  }
  return { changed, sharedBytes, dataA: dataOf(a), dataB: dataOf(b) };
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** What must not change while the maps are read: the same inode, size and times. */
const fingerprint = (s: BigIntStats) => `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;

/**
 * The byte ranges of `current` that may differ from `base` (a reflink clone of what the
 * parent backup read), aligned outward to 64 KiB, or why that cannot be told. Never
 * throws for a base that is missing or unsuitable: the caller then reads everything.
 */
export async function changedSince(opts: { base: string; current: string; size: number }): Promise<ChangedBlocks> {
  const { size } = opts;
  const fallback = (reason: string): ChangedBlocks => ({ method: 'fallback', reason });
  let base: string;
  let current: string;
  try {
    current = await realpath(opts.current);
  } catch (e) {
    return fallback(`cannot read the image '${opts.current}': ${(e as Error).message}`);
  }
  try {
    base = await realpath(opts.base);
  } catch (e) {
    const gone = (e as NodeJS.ErrnoException).code === 'ENOENT';
    return fallback(gone ? `the base '${opts.base}' does not exist` : `cannot read the base '${opts.base}': ${(e as Error).message}`);
  }
  let bs: BigIntStats;
  let cs: BigIntStats;
  try {
    [bs, cs] = await Promise.all([stat(base, { bigint: true }), stat(current, { bigint: true })]);
  } catch (e) {
    return fallback(`cannot stat the base '${base}' or the image '${current}': ${(e as Error).message}`);
  }
  for (const [name, file, s] of [
    ['base', base, bs],
    ['image', current, cs],
  ] as const) {
    if (!s.isFile()) return fallback(`the ${name} '${file}' is not a regular file`);
    if (s.size !== BigInt(size)) return fallback(`the ${name} '${file}' is ${s.size} bytes, not the ${size} to back up`);
  }
  if (bs.dev === cs.dev && bs.ino === cs.ino) return fallback(`the base '${base}' is the image itself, not a clone of it`);

  let bfs: StatsFs;
  let cfs: StatsFs;
  try {
    [bfs, cfs] = await Promise.all([statfs(base), statfs(current)]);
  } catch (e) {
    return fallback(`cannot tell the filesystem of the base '${base}' or the image '${current}': ${(e as Error).message}`);
  }
  const bType = REFLINK_FILESYSTEMS.get(bfs.type);
  const cType = REFLINK_FILESYSTEMS.get(cfs.type);
  if (cType === undefined) return fallback(`the image '${current}' is on a filesystem without shared extents (statfs type ${hex(cfs.type)}; CBT needs btrfs or xfs)`);
  if (bType === undefined) return fallback(`the base '${base}' is on a filesystem without shared extents (statfs type ${hex(bfs.type)}; CBT needs btrfs or xfs)`);
  if (bs.dev !== cs.dev) {
    // btrfs gives each subvolume its own st_dev: two pools of one filesystem share extents
    // all the same. Imported here, not at the top: the volume drivers import this module.
    const { btrfsFilesystemUuid } = await import('../drivers/volume/btrfs/driver.js');
    const same =
      bType === 'btrfs' &&
      cType === 'btrfs' &&
      (await Promise.all([btrfsFilesystemUuid(base), btrfsFilesystemUuid(current)]).then(
        ([x, y]) => x === y,
        () => false,
      ));
    if (!same) return fallback(`the base '${base}' and the image '${current}' are on different filesystems, so they share no extents`);
  }

  let maps: [MappedExtent[], MappedExtent[]];
  try {
    maps = (await extentMaps([base, current])) as [MappedExtent[], MappedExtent[]];
  } catch (e) {
    return fallback((e as Error).message);
  }
  const [after1, after2] = await Promise.all([stat(base, { bigint: true }), stat(current, { bigint: true })]).catch(() => [null, null]);
  if (!after1 || !after2 || fingerprint(after1) !== fingerprint(bs)) return fallback(`the base '${base}' changed while its extents were read`);
  if (fingerprint(after2) !== fingerprint(cs)) return fallback(`the image '${current}' changed while its extents were read`);

  for (const [name, file, map] of [
    ['base', base, maps[0]],
    ['image', current, maps[1]],
  ] as const) {
    const bad = map.find((e) => e.flags.some((f) => UNTRUSTWORTHY.has(f)));
    if (bad) return fallback(`the ${name} '${file}' has an extent at byte ${bad.logical} without a settled address (${bad.flags.join(',')}); is it being written?`);
  }
  const c = compareExtentMaps(maps[0], maps[1], size);
  // Both hold data yet share none of it: the base was not cloned from this image (or a
  // copy broke the sharing), and its being the parent's bytes is not to be taken on trust.
  if (c.sharedBytes === 0 && c.dataA > 0 && c.dataB > 0) {
    return fallback(`the base '${base}' shares no extent with the image '${current}': it is not a clone of an earlier state of it`);
  }
  return { method: 'cbt', changed: c.changed, changedBytes: c.changed.reduce((n, e) => n + (e.end - e.start), 0) };
}
