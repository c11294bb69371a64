/**
 * Deleting chunks safely while backups run (no lock server: only the object store).
 *
 * A delete removes the chunks that no backup record references. A backup's references
 * become visible when it writes its metadata; a delete that scanned the store before that
 * moment may remove a chunk the backup stored (the same content another backup had), or
 * the very parent an incremental builds on. So the two announce themselves in an order
 * that makes at least one of them see the other:
 *
 *   delete:  announce (gc/<startMs>-<id>.json)  ->  scan  ->  remove  ->  mark finished
 *   backup:  write metadata  ->  list announcements
 *
 * A delete that scanned before the backup's metadata was written announced before that
 * too, so the backup's listing finds it. The backup then waits for it to finish and checks
 * what it depends on: a chunk that is gone is read from the source again and stored again
 * (its metadata already protects it from every later delete); a parent that is gone fails
 * the backup with a clear error, which its workflow compensates. A delete announced after
 * the metadata was written scans after it, and spares everything it references.
 *
 * Announcements are compared by the clocks of the hosts that wrote them: GC_CLOCK_SKEW_MS
 * is the disagreement tolerated (more only makes a backup check more often).
 */
import { StoreFull } from './errors.js';
import { keys } from './format.js';
import { listAll, type ObjectStore } from './stores/store.js';

export const GC_CLOCK_SKEW_MS = 5 * 60_000;
/** Announcements are kept this long (a backup running longer settles against what is left). */
const GC_KEEP_MS = 24 * 60 * 60_000;

export interface GcAnnouncement {
  backupId: string;
  startedAt: string;
  /** Rewritten every few seconds while the delete runs: a backup tells a dead delete by it not changing. */
  aliveAt: string;
}

/** How often a running delete rewrites its announcement. */
const GC_ALIVE_EVERY_MS = 5_000;
/** An unfinished announcement unchanged this long (by the waiting backup's own clock) is a dead delete's. */
const GC_DEAD_AFTER_MS = 30_000;

/**
 * `gc/<startMs>-<backupId>.json` announces a delete; `gc/<startMs>-<backupId>.<endMs>.done`
 * says it ended, so a listing alone tells finished deletes apart and only running ones are read.
 */
function parseGcKey(key: string): { id: string; startMs: number; backupId: string; endMs: number | null } | null {
  const m = /^gc\/((\d{15})-([^/]+?))(?:\.json|\.(\d{15})\.done)$/.exec(key);
  return m ? { id: m[1]!, startMs: Number(m[2]), backupId: m[3]!, endMs: m[4] !== undefined ? Number(m[4]) : null } : null;
}
const doneKey = (announcement: string, endMs: number) => announcement.replace(/\.json$/, `.${String(endMs).padStart(15, '0')}.done`);

/**
 * Announces a delete before it scans; `finish` records that it ended (also after a failure:
 * what it removed is removed). Announcements older than a day are dropped on the way.
 */
export async function announceDelete(store: ObjectStore, backupId: string): Promise<{ finish(): Promise<void> }> {
  const now = Date.now();
  const key = keys.gc(now, backupId);
  const rec: GcAnnouncement = { backupId, startedAt: new Date(now).toISOString(), aliveAt: new Date(now).toISOString() };
  const write = (r: GcAnnouncement) => store.put(key, Buffer.from(JSON.stringify(r)));
  try {
    await write(rec);
  } catch (e) {
    // A full store is when a delete must work most; a backup then cannot store either.
    if (!(e instanceof StoreFull)) throw e;
    return { finish: async () => undefined };
  }
  let finished = false;
  let refresh = Promise.resolve();
  const alive = setInterval(() => {
    refresh = refresh.then(() => (finished ? undefined : write({ ...rec, aliveAt: new Date().toISOString() }).catch(() => undefined)));
  }, GC_ALIVE_EVERY_MS);
  alive.unref();
  const finish = async () => {
    finished = true;
    clearInterval(alive);
    await refresh;
    // Without it, backups would wait for this delete until it looks dead; when even this
    // cannot be written, the announcement goes (it then tells them nothing).
    await store.put(doneKey(key, Date.now()), Buffer.from('')).catch(() => store.delete(key).catch(() => undefined));
  };
  try {
    const old = (await listAll(store, keys.gcPrefix)).filter((k) => (parseGcKey(k)?.startMs ?? now) < now - GC_KEEP_MS);
    for (const k of old) await store.delete(k).catch(() => undefined);
  } catch {
    // Tidying only: the next delete tries again.
  }
  return { finish };
}

/**
 * Waits until every delete that may have missed a backup's references has ended (or
 * died); returns them (the backup must then check its chunks and chain). `sinceMs`: when
 * the backup began (its pending record), so a delete that ended before then is not counted.
 */
export async function settleDeletes(
  store: ObjectStore,
  o: { backupId: string; sinceMs: number; signal?: AbortSignal; onWait?: () => void; pollMs?: number; deadAfterMs?: number },
): Promise<{ deletes: string[] }> {
  const cutoff = o.sinceMs - GC_CLOCK_SKEW_MS;
  const seen = new Set<string>();
  /** Per unfinished announcement: its last aliveAt, and when (here) that was first read. */
  const watched = new Map<string, { aliveAt: string; since: number }>();
  for (;;) {
    const now = Date.now();
    const announced = new Map<string, { key: string; startMs: number; backupId: string; endMs: number | null }>();
    for (const k of await listAll(store, keys.gcPrefix)) {
      const g = parseGcKey(k);
      if (!g || g.backupId === o.backupId) continue;
      const a = announced.get(g.id) ?? { key: k, startMs: g.startMs, backupId: g.backupId, endMs: null };
      if (g.endMs !== null) a.endMs = Math.max(a.endMs ?? 0, g.endMs);
      else a.key = k;
      announced.set(g.id, a);
    }
    const open: string[] = [];
    for (const a of announced.values()) {
      if (a.endMs !== null) {
        if (a.startMs >= cutoff || a.endMs >= cutoff) seen.add(a.backupId);
        continue;
      }
      let rec: GcAnnouncement;
      try {
        rec = JSON.parse((await store.get(a.key)).toString('utf8')) as GcAnnouncement;
      } catch {
        continue; // ended and tidied meanwhile
      }
      seen.add(a.backupId);
      const w = watched.get(a.key);
      if (!w || w.aliveAt !== rec.aliveAt) {
        watched.set(a.key, { aliveAt: rec.aliveAt, since: now });
      } else if (now - w.since >= (o.deadAfterMs ?? GC_DEAD_AFTER_MS)) {
        // Died (its worker was lost): it removes nothing more. Recorded as ended, so the
        // next backup does not wait for it again.
        await store.put(doneKey(a.key, now), Buffer.from(JSON.stringify({ presumedDead: true }))).catch(() => undefined);
        continue;
      }
      open.push(a.key);
    }
    if (open.length === 0) return { deletes: [...seen] };
    if (o.signal?.aborted) throw o.signal.reason instanceof Error ? o.signal.reason : new Error('aborted');
    o.onWait?.();
    await new Promise((r) => setTimeout(r, o.pollMs ?? 500));
  }
}
