/**
 * The no-leak check of an object target: every chunk object is referenced by some
 * complete backup's metadata, and no unfinished backup left its bookkeeping (pending
 * record, journal, delete marker) behind.
 */
import type { ObjectStore } from '../../src/drivers/backup/stores/store.js';
import { listAll } from '../../src/drivers/backup/stores/store.js';
import { parseMetadata } from '../../src/drivers/backup/format.js';

export interface StoreLeaks {
  /** Chunk objects no metadata lists. */
  orphanChunks: string[];
  /** pending.json, journal/, deleting.json of any backup. */
  bookkeeping: string[];
}

export const NO_STORE_LEAKS: StoreLeaks = { orphanChunks: [], bookkeeping: [] };

export async function findStoreLeaks(store: ObjectStore): Promise<StoreLeaks> {
  const keys = await listAll(store, '');
  const referenced = new Set<string>();
  const bookkeeping: string[] = [];
  for (const k of keys) {
    if (!k.startsWith('backups/')) continue;
    if (k.endsWith('/metadata.json')) {
      const m = parseMetadata(JSON.parse((await store.get(k)).toString('utf8')), k);
      for (const c of m.chunks) referenced.add(`chunks/${m.chunkSpace}/${c.sha256.slice(0, 2)}/${c.sha256}`);
    } else {
      bookkeeping.push(k);
    }
  }
  const orphanChunks = keys.filter((k) => k.startsWith('chunks/') && !referenced.has(k));
  return { orphanChunks, bookkeeping };
}
