/**
 * The copy engine: dd between two block devices, extent by extent.
 *
 * - `iflag=direct oflag=direct`: no page cache in the way, so the copy runs at disk
 *   speed and does not evict the host's working set.
 * - `skip_bytes,count_bytes,seek_bytes`: byte offsets, so a copy can start at any
 *   extent or resume offset.
 * - `conv=sparse` when the destination is known to read zeros: all-zero blocks inside
 *   a data extent are skipped on the destination too.
 * - `conv=fsync`: `available` must mean on disk, not in a cache.
 * - progress is read from dd's `status=progress` lines and reported as the highest
 *   offset below which everything is copied, which is what a resume needs.
 */
import { readdir, readFile } from 'node:fs/promises';
import { launch } from '../node/launcher.js';
import type { Extent } from './extents.js';
import type { Throttle } from './throttle.js';
import { GbackupError } from '../errors.js';

export class CopyFailed extends GbackupError {
  constructor(
    message: string,
    /** The errno dd reported, when its message names one we act on (ENOSPC: the destination is full). */
    readonly code?: string,
  ) {
    super(message);
  }
}

export interface CopyProgress {
  /** Every byte of every extent below this offset is on the destination. */
  doneOffset: number;
  /** Bytes this run moved so far (excludes what an earlier attempt copied). */
  bytesCopied: number;
}

export interface CopyRequest {
  source: string;
  dest: string;
  extents: Extent[];
  blockSize: number;
  /** Resume point: extents (or parts) below it are already copied. */
  startOffset?: number;
  /** The destination reads zeros where it was not written (new or cleared volume). */
  sparse: boolean;
  direct?: boolean;
  throttle?: Throttle;
  signal?: AbortSignal;
  onProgress?: (p: CopyProgress) => void;
}

/** Largest byte count dd reported so far in its status lines. */
function ddBytes(chunk: string): number | null {
  let best: number | null = null;
  for (const m of chunk.matchAll(/(\d+) bytes/g)) best = Math.max(best ?? 0, Number(m[1]));
  return best;
}

/** One dd run over [from, to). */
async function ddRange(req: CopyRequest, from: number, to: number, report: (copiedInRun: number) => void): Promise<void> {
  const direct = req.direct ?? true;
  const conv = ['notrunc', 'fsync', ...(req.sparse ? ['sparse'] : [])].join(',');
  const args = [
    `if=${req.source}`,
    `of=${req.dest}`,
    `bs=${req.blockSize}`,
    `iflag=${direct ? 'direct,' : ''}skip_bytes,count_bytes`,
    `oflag=${direct ? 'direct,' : ''}seek_bytes`,
    `conv=${conv}`,
    `skip=${from}`,
    `seek=${from}`,
    `count=${to - from}`,
    'status=progress',
  ];
  const r = await launch('dd', args, {
    ...(req.signal ? { signal: req.signal } : {}),
    onStderr: (chunk) => {
      const n = ddBytes(chunk);
      if (n !== null) report(Math.min(n, to - from));
    },
  });
  if (req.signal?.aborted) throw req.signal.reason instanceof Error ? req.signal.reason : new CopyFailed('copy cancelled');
  if (r.exitCode !== 0) {
    const lines = String(r.stderr ?? '').split(/[\r\n]/).filter((l) => l.trim() !== '');
    // dd's own complaints ("dd: error writing ...") say what went wrong; the record counts after them do not.
    const complaints = lines.filter((l) => l.startsWith('dd:'));
    const tail = (complaints.length > 0 ? complaints : lines.filter((l) => !/bytes.*copied|records (in|out)/.test(l))).slice(-3).join('; ');
    const code = lines.some((l) => /No space left on device/i.test(l)) ? 'ENOSPC' : undefined;
    throw new CopyFailed(`dd failed at bytes ${from}-${to} (exit ${r.exitCode ?? r.signal ?? 'unknown'}): ${tail || 'no message'}`, code);
  }
  report(to - from);
}

/**
 * Two dd streams at once: one keeps the disk busy while the other is between reads
 * and writes (or starting up on the next extent). Measured on loop devices here: a
 * 1 GiB copy 1.21 -> 1.13 s (on par with one plain dd, which skips our fsync), a
 * 10%-written volume of 24 extents 0.23 -> 0.16 s; four streams were no better.
 */
export const COPY_STREAMS = 2;
/**
 * Large extents are split so both streams share even a single-extent volume, and so a
 * bandwidth limit set while the copy runs takes hold within one piece.
 */
const PIECE_BYTES = 64 * 1024 * 1024;

interface Piece {
  from: number;
  to: number;
}

/** The work from `start` on, cut into pieces of at most `max` bytes, in offset order. */
export function planPieces(extents: Extent[], start: number, max: number): Piece[] {
  const out: Piece[] = [];
  for (const e of extents) {
    for (let from = Math.max(e.start, start); from < e.end; from += max) out.push({ from, to: Math.min(e.end, from + max) });
  }
  return out;
}

/**
 * Copies the extents from source to dest. Returns the bytes moved by this run.
 * Pieces are taken in offset order by COPY_STREAMS concurrent dd runs; the reported
 * doneOffset is the start of the lowest unfinished piece (plus its whole blocks), so a
 * resume never skips a byte. Throttled copies use throttle-sized pieces.
 */
export async function copyExtents(req: CopyRequest): Promise<{ bytesCopied: number }> {
  const start = req.startOffset ?? 0;
  const pieceBytes = req.throttle?.sliceBytes(req.blockSize) ?? PIECE_BYTES;
  const pieces = planPieces(req.extents, start, pieceBytes);
  const moved = pieces.map(() => 0);
  const abort = new AbortController();
  const onOuterAbort = () => abort.abort(req.signal?.reason);
  req.signal?.addEventListener('abort', onOuterAbort);
  const inner: CopyRequest = { ...req, signal: abort.signal };
  const report = () => {
    let doneOffset = pieces[pieces.length - 1]?.to ?? start;
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i]!;
      if (moved[i]! < p.to - p.from) {
        doneOffset = p.from + Math.floor(moved[i]! / req.blockSize) * req.blockSize;
        break;
      }
    }
    req.onProgress?.({ doneOffset, bytesCopied: moved.reduce((a, b) => a + b, 0) });
  };
  let next = 0;
  const lane = async () => {
    while (next < pieces.length && !abort.signal.aborted) {
      const i = next++;
      const p = pieces[i]!;
      await req.throttle?.acquire(p.to - p.from, abort.signal);
      await ddRange(inner, p.from, p.to, (n) => {
        moved[i] = n;
        report();
      });
    }
  };
  try {
    await Promise.all(
      Array.from({ length: Math.min(COPY_STREAMS, pieces.length) }, () =>
        lane().catch((e: unknown) => {
          abort.abort(e);
          throw e;
        }),
      ),
    );
  } finally {
    req.signal?.removeEventListener('abort', onOuterAbort);
  }
  return { bytesCopied: moved.reduce((a, b) => a + b, 0) };
}

/**
 * dd processes still writing to `device`: after a worker is killed its dd child lives
 * on, and a retry must stop it before copying to the same device again.
 */
export async function killStrayCopies(device: string): Promise<number[]> {
  const killed: number[] = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    const argv = cmd.split('\0');
    if (argv[0]?.endsWith('dd') && argv.includes(`of=${device}`)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
        killed.push(Number(pid));
      } catch {
        // exited meanwhile
      }
    }
  }
  return killed;
}
