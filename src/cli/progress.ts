/** A terminal progress bar fed by a workflow's progress query (bytes, rate, ETA). */
import type { Progress } from '../api.js';
import { formatBytes } from '../size.js';

export function renderProgress(p: Progress, width = 30): string {
  const frac = p.bytesTotal > 0 ? Math.min(1, p.bytesDone / p.bytesTotal) : 0;
  const filled = Math.round(frac * width);
  const eta = p.rateBps > 0 && p.bytesTotal > p.bytesDone ? `${Math.ceil((p.bytesTotal - p.bytesDone) / p.rateBps)}s` : '-';
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(p.bytesDone)}/${formatBytes(p.bytesTotal)} ${p.rateBps > 0 ? `${formatBytes(p.rateBps)}/s` : ''} ETA ${eta} ${p.phase}${p.node ? ` @${p.node}` : ''}${p.lastError ? ` (retrying ${p.lastError.step}: ${p.lastError.message.slice(0, 80)})` : ''}`;
}

/** Redraws the bar until `done` settles; draws nothing when stderr is not a terminal. */
export async function showProgress<T>(done: Promise<T>, poll: () => Promise<Progress | null>): Promise<T> {
  if (!process.stderr.isTTY) return done;
  let finished = false;
  const loop = (async () => {
    while (!finished) {
      const p = await poll();
      if (p && !finished) process.stderr.write(`\r\x1b[2K${renderProgress(p)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  })();
  try {
    return await done;
  } finally {
    finished = true;
    await loop;
    process.stderr.write('\r\x1b[2K');
  }
}
