/**
 * Which parts of a volume hold data. Reading holes back just to find zeros costs as
 * much as reading data, so the copy asks the filesystem (SEEK_DATA/SEEK_HOLE through
 * xfs_io, which works on ext4, xfs and btrfs alike) and moves only the data extents.
 */
import { launchChecked } from '../node/launcher.js';

export interface Extent {
  start: number;
  end: number;
}

/** Extents are widened to this alignment: direct I/O needs aligned offsets anyway. */
const ALIGN = 64 * 1024;
/** Extents closer than this are merged: one dd run beats two with a small gap between. */
const MERGE_GAP = 1024 * 1024;

export function normalizeExtents(raw: Extent[], size: number): Extent[] {
  const sorted = raw
    .map((e) => ({ start: Math.floor(e.start / ALIGN) * ALIGN, end: Math.min(size, Math.ceil(e.end / ALIGN) * ALIGN) }))
    .filter((e) => e.end > e.start)
    .sort((a, b) => a.start - b.start);
  const out: Extent[] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last && e.start - last.end <= MERGE_GAP) last.end = Math.max(last.end, e.end);
    else out.push({ ...e });
  }
  return out;
}

/** Parses `xfs_io -c 'seek -a -r 0'` output: a table of DATA/HOLE starts. */
export function parseSeekTable(text: string, size: number): Extent[] {
  const marks = [...text.matchAll(/^(DATA|HOLE)\s+(\d+)/gm)].map((m) => ({ kind: m[1]!, at: Number(m[2]) }));
  const out: Extent[] = [];
  marks.forEach((m, i) => {
    if (m.kind !== 'DATA') return;
    const next = marks[i + 1];
    out.push({ start: m.at, end: next ? next.at : size });
  });
  return out;
}

/** A file's data extents as the filesystem reports them (unmerged), or null when it cannot tell. */
export async function rawDataExtents(file: string, size: number): Promise<Extent[] | null> {
  try {
    const { stdout } = await launchChecked('xfs_io', ['-r', '-c', 'seek -a -r 0', '--', file]);
    return parseSeekTable(stdout, size);
  } catch {
    return null;
  }
}

/** What a copy moves: the extents aligned and merged, or the whole range when nobody could tell (slower, still right). */
export function copyExtentsOf(raw: Extent[] | null, size: number): Extent[] {
  if (raw === null) return size > 0 ? [{ start: 0, end: size }] : [];
  return normalizeExtents(raw, size);
}

/** Data extents of a file, ready for a copy. */
export async function dataExtents(file: string, size: number): Promise<Extent[]> {
  return copyExtentsOf(await rawDataExtents(file, size), size);
}

export const extentBytes = (ex: Extent[]) => ex.reduce((n, e) => n + (e.end - e.start), 0);

/**
 * At most `max` extents, by merging neighbours across ever larger gaps: a superset of
 * the input stays a superset, and the list stays small enough to pass in a workflow
 * history (changed-block tracking of a badly fragmented volume).
 */
export function atMostExtents(extents: Extent[], max: number): Extent[] {
  let out = extents;
  for (let gap = 64 * 1024; out.length > Math.max(1, max); gap *= 2) {
    const merged: Extent[] = [];
    for (const e of out) {
      const last = merged[merged.length - 1];
      if (last && e.start - last.end <= gap) last.end = Math.max(last.end, e.end);
      else merged.push({ ...e });
    }
    out = merged;
  }
  return out;
}
