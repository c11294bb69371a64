// `gbackup catalog migrate` (src/catalog/migrate.ts): a host's SQLite catalog, caught in the
// middle of things (volumes attached, claimed by a backup, restoring; backups creating, failed,
// incremental), copied into a fresh PostgreSQL database with every column as it was; a
// re-run changes nothing; a destination holding something else is refused and left alone; a
// copy that does not verify is rolled back.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Catalog, CatalogTable, TableRow } from '../src/catalog/catalog.js';
import { CATALOG_TABLES, migrateCatalog } from '../src/catalog/migrate.js';
import { PostgresCatalog } from '../src/catalog/postgres.js';
import { SqliteCatalog } from '../src/catalog/sqlite.js';
import { InvalidInput } from '../src/errors.js';
import { freshDatabase } from './helpers/postgres.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function sqliteCatalog(): Promise<Catalog> {
  const dir = mkdtempSync(join(tmpdir(), 'gbackup-migrate-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const c = await SqliteCatalog.open(join(dir, 'catalog.sqlite'));
  cleanups.push(() => c.close());
  return c;
}

async function postgresCatalog(): Promise<Catalog> {
  const c = await PostgresCatalog.open({ ...(await freshDatabase()), poolSize: 4 });
  cleanups.push(() => c.close());
  return c;
}

const BIG = 3 * 2 ** 40 + 2 ** 20;
const at = (day: number, s = 0) => new Date(Date.UTC(2026, 2, day, 8, 0, s)).toISOString();

/** A host's catalog in the middle of its work: every status, attachments, claims, chains of incrementals. */
async function busyCatalog(c: Catalog): Promise<void> {
  const volume = (id: string, status: 'available' | 'creating' = 'available', owner?: string) =>
    c.insertVolume({ id, name: `vol ${id}`, backend: 'fast', pool: id.endsWith('2') ? null : 'gold', size: BIG, status, owner: owner ?? null });
  await volume('v-free');
  await volume('v-attached');
  await c.transitionVolume('v-attached', ['available'], 'in-use', { instance: 'vm-1', attachedNode: 'node-1', owner: 'wf-attach-1' });
  await volume('v-busy2');
  await c.transitionVolume('v-busy2', ['available'], 'in-use', { instance: 'vm-2', attachedNode: 'node-2' });
  await c.transitionVolume('v-busy2', ['in-use'], 'backing-up', { rememberPrevious: true, owner: 'wf-backup-b-4' });
  await volume('v-restoring');
  await c.transitionVolume('v-restoring', ['available'], 'restoring-backup', { rememberPrevious: true, owner: 'wf-restore-1' });
  await volume('v-broken');
  await c.transitionVolume('v-broken', ['available'], 'error', { error: 'device vanished' });
  await volume('v-new', 'creating', 'wf-create-v-new');
  await volume('v-going');
  await c.transitionVolume('v-going', ['available'], 'deleting', { owner: 'wf-delete' });

  await c.insertSnapshot({ id: 's-1', name: 'daily', volumeId: 'v-free', backend: 'fast', pool: 'gold', size: BIG, status: 'available', backupId: null, createdAt: at(1) });
  await c.insertSnapshot({ id: 's-2', name: 'for b-4', volumeId: 'v-busy2', backend: 'fast', pool: null, size: BIG, status: 'creating', backupId: 'b-4', createdAt: at(2) });
  await c.insertSnapshot({ id: 's-3', name: 'bad', volumeId: 'v-broken', backend: 'fast', pool: 'gold', size: 2 ** 30, status: 'error', backupId: null, createdAt: at(2) });

  const backup = (id: string, volumeId: string, createdAt: string, over: Partial<Parameters<Catalog['insertBackup']>[0]> = {}) =>
    c.insertBackup({ id, name: `backup ${id}`, volumeId, snapshotId: null, target: 'vols', status: 'available', size: BIG, location: null, workflowId: `wf-${id}`, sourcePreviousStatus: null, createdAt, ...over });
  await backup('b-1', 'v-free', at(1), { location: { backend: 'slow', pool: 'cold', name: 'backup-b-1' }, storedBytes: 2 ** 36 + 7, method: 'generic', node: 'node-1' });
  await backup('b-2', 'v-free', at(2), { target: 'objects', method: 'chunked', parentId: 'b-1', storedBytes: 2 ** 33 });
  await backup('b-3', 'v-broken', at(2), { status: 'creating', snapshotId: 's-3' });
  await c.transitionBackup('b-3', ['creating'], 'error', { error: 'read error at 1 GiB' });
  await backup('b-4', 'v-busy2', at(3), { status: 'creating', snapshotId: 's-2', target: 'objects', parentId: 'b-2', sourcePreviousStatus: 'in-use' });
  await backup('b-5', 'v-free', at(3), { status: 'deleting', location: { backend: 'slow', pool: null, name: 'backup-b-5' } });
  await backup('b-6', 'v-restoring', at(4), { status: 'restoring', workflowId: null });
  // Enough more that the copy goes in several batches, some sharing a timestamp.
  await c.tx(async (t) => {
    for (let i = 0; i < 450; i++) {
      await t.insertBackup({
        id: `bulk-${String(i).padStart(3, '0')}`,
        name: `nightly ${i}`,
        volumeId: i % 2 ? 'v-free' : 'v-attached',
        snapshotId: null,
        target: 'objects',
        status: i % 10 === 0 ? 'error' : 'available',
        size: BIG,
        location: null,
        workflowId: `wf-bulk-${i}`,
        sourcePreviousStatus: null,
        error: i % 10 === 0 ? 'store unreachable' : null,
        storedBytes: i * 2 ** 30,
        createdAt: at(5, Math.floor(i / 3)),
      });
    }
  });
}

async function dump(c: Catalog): Promise<Record<CatalogTable, TableRow[]>> {
  return { volumes: await c.dumpRows('volumes'), snapshots: await c.dumpRows('snapshots'), backups: await c.dumpRows('backups') };
}

const statusCounts = (rows: { status: string }[]) => rows.reduce<Record<string, number>>((m, r) => ({ ...m, [r.status]: (m[r.status] ?? 0) + 1 }), {});

/** Every view of the catalog a worker or the CLI reads, and the columns only raw rows show. */
async function everything(c: Catalog) {
  const volumes = await c.listVolumes();
  return {
    volumes,
    owners: await Promise.all(volumes.map((v) => c.volumeOwner(v.id))),
    previous: await Promise.all(volumes.map((v) => c.volumePreviousStatus(v.id))),
    snapshots: await c.listSnapshots(),
    backups: await c.listBackups(),
    firstPage: await c.pageBackups({}, { limit: 100 }),
    count: await c.countBackups(),
  };
}

describe('catalog migrate', () => {
  it('copies a busy SQLite catalog into an empty PostgreSQL one, every row and column as it was', async () => {
    const from = await sqliteCatalog();
    await busyCatalog(from);
    const before = await dump(from);
    const to = await postgresCatalog();

    const report = await migrateCatalog(from, to);
    expect(report).toEqual({
      volumes: 7,
      snapshots: 3,
      backups: 456,
      byStatus: {
        volumes: { available: 1, 'in-use': 1, 'backing-up': 1, 'restoring-backup': 1, error: 1, creating: 1, deleting: 1 },
        snapshots: { available: 1, creating: 1, error: 1 },
        backups: { available: 407, error: 46, creating: 1, deleting: 1, restoring: 1 },
      },
      alreadyMigrated: false,
    });
    expect(report.byStatus.volumes).toEqual(statusCounts(await to.listVolumes()));
    expect(report.byStatus.backups).toEqual(statusCounts(await to.listBackups()));

    // Identical through every view, timestamps included, and row by row.
    expect(await everything(to)).toEqual(await everything(from));
    expect(await dump(to)).toEqual(before);
    expect(await to.volume('v-busy2')).toMatchObject({ status: 'backing-up', instance: 'vm-2', attachedNode: 'node-2' });
    expect(await to.volumePreviousStatus('v-busy2')).toBe('in-use');
    expect(await to.volumeOwner('v-busy2')).toBe('wf-backup-b-4');
    expect(await to.backup('b-1')).toMatchObject({ size: BIG, storedBytes: 2 ** 36 + 7, location: { backend: 'slow', pool: 'cold', name: 'backup-b-1' } });
    expect((await to.dependentsOf('b-2')).map((b) => b.id)).toEqual(['b-4']);
    // The source is only read.
    expect(await dump(from)).toEqual(before);
    // And the copy is a working catalog: the claim that was held is still held.
    await expect(to.transitionVolume('v-busy2', ['available', 'in-use'], 'backing-up')).rejects.toThrow("volume 'v-busy2' is 'backing-up'");
    await to.transitionBackup('b-4', ['creating'], 'available', { storedBytes: 42 });
    expect((await to.backup('b-4')).parentId).toBe('b-2');
  });

  it('reports a second run as already migrated and writes nothing', async () => {
    const from = await sqliteCatalog();
    await busyCatalog(from);
    const to = await postgresCatalog();
    const first = await migrateCatalog(from, to);
    const copied = await dump(to);
    const second = await migrateCatalog(from, to);
    expect(second).toEqual({ ...first, alreadyMigrated: true });
    expect(await dump(to)).toEqual(copied);
  });

  it('refuses a destination holding other rows, says what it holds, and leaves it unchanged', async () => {
    const from = await sqliteCatalog();
    await busyCatalog(from);

    // Another host's catalog.
    const other = await postgresCatalog();
    await other.insertVolume({ id: 'v-elsewhere', name: 'x', backend: 'b', pool: null, size: 2 ** 20, status: 'available' });
    await other.insertBackup({
      id: 'b-elsewhere',
      name: 'x',
      volumeId: 'v-elsewhere',
      snapshotId: null,
      target: 't',
      status: 'available',
      size: 2 ** 20,
      location: null,
      workflowId: null,
      sourcePreviousStatus: null,
    });
    const theirs = await dump(other);
    const refused = migrateCatalog(from, other);
    await expect(refused).rejects.toThrow(InvalidInput);
    await expect(refused).rejects.toThrow(`${other.describe} is not empty (1 volumes, 0 snapshots, 1 backups)`);
    expect(await dump(other)).toEqual(theirs);

    // A copy of the source in which one volume has moved on since: not the same rows either.
    const stale = await postgresCatalog();
    await migrateCatalog(from, stale);
    await from.transitionVolume('v-free', ['available'], 'in-use', { instance: 'vm-9', attachedNode: 'node-1' });
    const staleRows = await dump(stale);
    await expect(migrateCatalog(from, stale)).rejects.toThrow('is not empty (7 volumes, 3 snapshots, 456 backups)');
    expect(await dump(stale)).toEqual(staleRows);
  });

  it('rolls the whole copy back when it does not verify', async () => {
    const from = await sqliteCatalog();
    await busyCatalog(from);
    const to = await postgresCatalog();
    // A destination that loses the last backup row, and one that changes a status on the way.
    await expect(migrateCatalog(from, tampering(to, (t, rows) => (t === 'backups' ? rows.slice(0, -1) : rows)))).rejects.toThrow(
      /did not verify, nothing was written: backups: 456 in the source, 455 in the destination/,
    );
    await expect(
      migrateCatalog(
        from,
        tampering(to, (t, rows) => (t === 'volumes' ? rows.map((r) => (r.id === 'v-new' ? { ...r, status: 'available' } : r)) : rows)),
      ),
    ).rejects.toThrow(/volumes in status '(available|creating)': \d in the source, \d in the destination/);
    await expect(migrateCatalog(from, tampering(to, (t, rows) => (t === 'snapshots' ? rows.map((r) => ({ ...r, backup_id: null })) : rows)))).rejects.toThrow(
      /snapshots row 's-2' differs/,
    );
    for (const t of CATALOG_TABLES) expect(await to.dumpRows(t)).toEqual([]);
    // Nothing half-written is in the way of a proper copy afterwards.
    expect((await migrateCatalog(from, to)).alreadyMigrated).toBe(false);
  });

  it('copies back from PostgreSQL into SQLite just as faithfully', async () => {
    const source = await sqliteCatalog();
    await busyCatalog(source);
    const pgCatalog = await postgresCatalog();
    await migrateCatalog(source, pgCatalog);
    const back = await sqliteCatalog();
    const report = await migrateCatalog(pgCatalog, back);
    expect(report.backups).toBe(456);
    expect(await dump(back)).toEqual(await dump(source));
    expect(await everything(back)).toEqual(await everything(source));
  });
});

/** The destination, with loadRows rewriting the rows on their way in: a copy gone wrong. */
function tampering(c: Catalog, rewrite: (table: CatalogTable, rows: readonly TableRow[]) => readonly TableRow[]): Catalog {
  return new Proxy(c, {
    get(target, prop) {
      if (prop === 'tx') return <T>(fn: (inner: Catalog) => Promise<T>) => target.tx((inner) => fn(tampering(inner, rewrite)));
      if (prop === 'loadRows') return (table: CatalogTable, rows: readonly TableRow[]) => target.loadRows(table, rewrite(table, rows));
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
