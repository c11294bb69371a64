/**
 * `gbackup catalog migrate`: copies a catalog into another database (one host's embedded
 * SQLite into the PostgreSQL of a control plane, typically), every row with every column as
 * it is: statuses mid-operation, the workflow that owns a busy volume, the status a backup
 * restores, timestamps, locations. The views leave some of those out, so the copy goes by
 * raw rows (dumpRows/loadRows). Run it with the workers stopped: a row that changes during
 * the copy is copied as it was read.
 *
 * The copy is one transaction on the destination, checked before it commits, so the
 * destination ends up with all of the source or unchanged. A destination that already holds
 * exactly the source's rows is left alone (a re-run after a success); any other non-empty one
 * is refused, as merging two catalogs could give one volume two histories.
 */
import { InvalidInput } from '../errors.js';
import type { Catalog, CatalogTable, TableRow } from './catalog.js';

export const CATALOG_TABLES: readonly CatalogTable[] = ['volumes', 'snapshots', 'backups'];

export interface MigrationReport {
  volumes: number;
  snapshots: number;
  backups: number;
  /** Rows per status, per table, as copied (or as found, when already migrated). */
  byStatus: Record<CatalogTable, Record<string, number>>;
  /** The destination held exactly the source's rows already; nothing was written. */
  alreadyMigrated: boolean;
}

type Dump = Record<CatalogTable, TableRow[]>;

async function dumpAll(c: Catalog): Promise<Dump> {
  return { volumes: await c.dumpRows('volumes'), snapshots: await c.dumpRows('snapshots'), backups: await c.dumpRows('backups') };
}

function byStatus(rows: readonly TableRow[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of rows) counts[String(r.status)] = (counts[String(r.status)] ?? 0) + 1;
  return counts;
}

const countsOf = (d: Dump) => CATALOG_TABLES.map((t) => `${d[t].length} ${t}`).join(', ');

/**
 * Rows keyed by id. dumpRows gives every row its columns in one fixed order with the same
 * value types on both drivers, so the JSON text of a row is a faithful fingerprint. (Keyed,
 * not in dump order: the two databases may collate ids differently.)
 */
const keyed = (rows: readonly TableRow[]) => new Map(rows.map((r) => [String(r.id), JSON.stringify(r)]));

/** What differs between two dumps, first per-status counts then single rows; null when nothing does. */
function difference(a: Dump, b: Dump): string | null {
  for (const t of CATALOG_TABLES) {
    if (a[t].length !== b[t].length) return `${t}: ${a[t].length} in the source, ${b[t].length} in the destination`;
    const [sa, sb] = [byStatus(a[t]), byStatus(b[t])];
    for (const s of new Set([...Object.keys(sa), ...Object.keys(sb)])) {
      if (sa[s] !== sb[s]) return `${t} in status '${s}': ${sa[s] ?? 0} in the source, ${sb[s] ?? 0} in the destination`;
    }
    const kb = keyed(b[t]);
    for (const [id, row] of keyed(a[t])) {
      const other = kb.get(id);
      if (other === undefined) return `${t} row '${id}' is missing from the destination`;
      if (other !== row) return `${t} row '${id}' differs: ${row} in the source, ${other} in the destination`;
    }
  }
  return null;
}

export async function migrateCatalog(from: Catalog, to: Catalog): Promise<MigrationReport> {
  // Both were migrated to this build's schema at open; a newer build's would have columns this one cannot copy.
  const [vFrom, vTo] = [await from.schemaVersion(), await to.schemaVersion()];
  if (vFrom !== vTo) throw new InvalidInput(`catalog schema versions differ: ${from.describe} is at ${vFrom}, ${to.describe} at ${vTo}`);
  // In one transaction so that a SQLite source is read at one moment (it holds the write lock).
  const source = await from.tx(dumpAll);
  const report = (alreadyMigrated: boolean): MigrationReport => ({
    volumes: source.volumes.length,
    snapshots: source.snapshots.length,
    backups: source.backups.length,
    byStatus: { volumes: byStatus(source.volumes), snapshots: byStatus(source.snapshots), backups: byStatus(source.backups) },
    alreadyMigrated,
  });
  return to.tx(async (dest) => {
    const there = await dumpAll(dest);
    if (CATALOG_TABLES.some((t) => there[t].length > 0)) {
      if (difference(source, there) === null) return report(true);
      throw new InvalidInput(`${to.describe} is not empty (${countsOf(there)}) and does not hold the same rows as ${from.describe}; migrate into an empty catalog`);
    }
    for (const t of CATALOG_TABLES) await dest.loadRows(t, source[t]);
    const diff = difference(source, await dumpAll(dest));
    // Thrown inside the transaction: nothing of the copy is committed.
    if (diff !== null) throw new Error(`copying ${from.describe} to ${to.describe} did not verify, nothing was written: ${diff}`);
    return report(false);
  });
}
