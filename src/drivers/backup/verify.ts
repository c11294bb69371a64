/**
 * Verify: read back every chunk a restore would read and check its sha256.
 */
import { BufferPool, CHUNK_OVERHEAD, sharedCodecPool, type CodecPool } from './codec.js';
import { BackupCorrupt, ChunkCorrupt } from './errors.js';
import { keys } from './format.js';
import { ChunkedTarget } from './target.js';
import { abortError, chunkLabel, forEachLimited } from './pool.js';
import { openChain } from './chain.js';
import { DEFAULT_RESTORE_CONCURRENCY, decodeChunk, downloadChunk } from './restore.js';

export interface VerifyResult {
  backupId: string;
  chunks: number;
  bytes: number;
}

/**
 * Reads back every chunk a restore of this backup would read and checks it. Throws
 * BackupCorrupt listing every missing or damaged chunk (and WrongKey/MissingKey first).
 */
export async function verifyBackup(opts: { target: ChunkedTarget; backupId: string; concurrency?: number; codec?: CodecPool; signal?: AbortSignal }): Promise<VerifyResult> {
  const { target, backupId } = opts;
  const store = target.store;
  const { sealKey, last, view } = await openChain(target, backupId);
  const concurrency = Math.max(1, opts.concurrency ?? DEFAULT_RESTORE_CONCURRENCY);
  const codec = opts.codec ?? sharedCodecPool();
  // A decoded chunk is only checked and dropped: a few buffers serve the codec threads.
  const buffers = new BufferPool(Math.min(concurrency, 4), view.chunkSize);
  const bodies = new BufferPool(concurrency, view.chunkSize + CHUNK_OVERHEAD);
  const failures: BackupCorrupt['failures'] = [];
  let chunks = 0;
  let bytes = 0;
  // Identical chunks at several offsets are one object: read it once.
  const checked = new Set<string>();
  await forEachLimited(concurrency, view.count, async (i) => {
    if (opts.signal?.aborted) throw abortError(opts.signal, `verify of '${backupId}'`);
    const hex = view.hexAt(i);
    if (hex === null || checked.has(hex)) return;
    checked.add(hex);
    const chunk = { offset: i * view.chunkSize, length: view.lengthOf(i), sha256: hex, key: keys.chunk(last.chunkSpace, hex) };
    const body = await bodies.take();
    try {
      const n = await downloadChunk(store, body, chunk, backupId);
      const out = await buffers.take();
      try {
        await decodeChunk(codec, body, n, out, 0, chunk, sealKey, backupId);
      } finally {
        buffers.give(out);
      }
      chunks++;
      bytes += chunk.length;
    } catch (e) {
      if (!(e instanceof ChunkCorrupt)) throw e;
      failures.push({ offset: chunk.offset, sha256: hex, key: chunk.key, reason: e.message });
    } finally {
      bodies.give(body);
    }
  });
  if (failures.length > 0) {
    failures.sort((a, b) => a.offset - b.offset);
    const named = failures
      .slice(0, 5)
      .map((f) => `${chunkLabel(f.offset, f.sha256)} object ${f.key}: ${f.reason.replace(/^.*?, object [^,]+, /, '')}`)
      .join('; ');
    throw new BackupCorrupt(
      `backup '${backupId}' failed verification: ${failures.length} bad chunk(s): ${named}${failures.length > 5 ? `; and ${failures.length - 5} more` : ''}`,
      failures,
    );
  }
  return { backupId, chunks, bytes };
}
