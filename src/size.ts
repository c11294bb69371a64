/**
 * Sizes as operators write them: `64M`, `1G`, `512MiB`, `1048576`. Units are binary
 * (K = 1024), like dd, losetup and Cinder's GiB. Pure: used by the CLI, the config and
 * inside workflows.
 */
const UNITS: Record<string, number> = {
  '': 1,
  B: 1,
  K: 1024,
  KB: 1024,
  KIB: 1024,
  M: 1024 ** 2,
  MB: 1024 ** 2,
  MIB: 1024 ** 2,
  G: 1024 ** 3,
  GB: 1024 ** 3,
  GIB: 1024 ** 3,
  T: 1024 ** 4,
  TB: 1024 ** 4,
  TIB: 1024 ** 4,
};

export const MiB = 1024 * 1024;

/** Returns the byte count, or a message saying what is wrong with `text`. */
export function parseSize(text: string | number, what = 'size'): { bytes: number } | { error: string } {
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text)) return { error: `${what} must be a whole number of bytes, got ${text}` };
    if (text <= 0) return { error: `${what} must be greater than zero, got ${text}` };
    return { bytes: text };
  }
  const m = /^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(text);
  if (!m) return { error: `${what} '${text}' is not a size (examples: 64M, 1G, 1048576)` };
  const unit = UNITS[m[2]!.toUpperCase()];
  if (unit === undefined) return { error: `${what} '${text}' has an unknown unit '${m[2]}' (use K, M, G or T)` };
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) return { error: `${what} '${text}' is too large` };
  if (bytes <= 0) return { error: `${what} must be greater than zero, got '${text}'` };
  return { bytes };
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

export const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;
