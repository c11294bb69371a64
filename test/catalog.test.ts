// The catalog's contract, run against both drivers: embedded SQLite on a temporary file and
// PostgreSQL on a fresh database of the suite's server. What one driver does, the other must
// do the same way (views, errors, transactions, races, migrations, paging), since a catalog
// moves from one to the other (`gbackup catalog migrate`) under the same workers.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'libsql';
import pg from 'pg';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { VolumeView } from '../src/api.js';
import type { BackupRecord, Catalog, NewBackup, NewVolume, SnapshotView, TableRow } from '../src/catalog/catalog.js';
import { MIGRATIONS, SCHEMA_VERSION } from '../src/catalog/migrations.js';
import { PostgresCatalog } from '../src/catalog/postgres.js';
import { SqliteCatalog } from '../src/catalog/sqlite.js';
import { BackupNotFound, InvalidInput, InvalidStatus, SnapshotNotFound, VolumeNotFound } from '../src/errors.js';
import { raceVolumes, startContender, until, type Outcome } from './helpers/catalog-race.js';
import { freshDatabase } from './helpers/postgres.js';

type Row = Record<string, unknown>;

/** One empty catalog database; open() may be called again for another handle on it. */
interface Store {
  /** The SQLite file, for other processes to open. */
  file?: string;
  open(): Promise<Catalog>;
  /** A statement on a connection of its own, outside any catalog. */
  query(sql: string): Promise<Row[]>;
}

interface Driver {
  name: 'sqlite' | 'postgres';
  fresh(): Promise<Store>;
  /** Opens the store from `n` connections at the same moment; each one's schemaVersion(). */
  openTogether(store: Store, n: number): Promise<number[]>;
  /** Claims from a connection other than `c`'s, timed from `at` (raceVolumes' start). */
  contender(store: Store): Promise<(ids: string[], perId: number, owner: string, at: number) => Promise<Outcome[]>>;
}

// Undone last-first after every test: catalogs closed, processes stopped, directories removed.
const cleanups: (() => Promise<void> | void)[] = [];
async function cleanUp(): Promise<void> {
  const failures: unknown[] = [];
  for (const f of cleanups.splice(0).reverse()) {
    try {
      await f();
    } catch (e) {
      failures.push(e);
    }
  }
  if (failures.length > 0) throw new AggregateError(failures, 'cleanup failed');
}
afterEach(cleanUp);
afterAll(cleanUp);

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'gbackup-catalog-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function closing<C extends Catalog>(c: C): C {
  cleanups.push(() => c.close());
  return c;
}

function sqliteStore(file: string): Store {
  return {
    file,
    open: async () => closing(await SqliteCatalog.open(file)),
    query: async (sql) => {
      const db = new Database(file, { timeout: 15_000 });
      try {
        return db.prepare(sql).all() as Row[];
      } finally {
        db.close();
      }
    },
  };
}

const sqlite: Driver = {
  name: 'sqlite',
  fresh: async () => sqliteStore(join(tempDir(), 'catalog.sqlite')),
  async openTogether(store, n) {
    // One process has one connection per file: the others are other processes.
    const file = store.file!;
    const others = Array.from({ length: n - 1 }, () => startContender());
    for (const o of others) cleanups.push(() => o.stop());
    // A close before any open answers once the process is up: then all start together.
    await Promise.all(others.map((o) => o.send({ op: 'close' })));
    const at = Date.now() + 300;
    const versions = await Promise.all([
      ...others.map(async (o) => Number((await o.send({ op: 'open', file, at })).version)),
      until(at).then(async () => (await store.open()).schemaVersion()),
    ]);
    for (const o of others) await o.send({ op: 'close' });
    return versions;
  },
  async contender(store) {
    const other = startContender();
    cleanups.push(() => other.stop());
    await other.send({ op: 'open', file: store.file!, at: 0 });
    return async (ids, perId, owner, at) => (await other.send({ op: 'race', ids, perId, owner, at })).outcomes as Outcome[];
  },
};

async function withPassword(url: string, passwordFile: string): Promise<string> {
  const { readFile } = await import('node:fs/promises');
  const u = new URL(url);
  u.password = encodeURIComponent(await readFile(passwordFile, 'utf8'));
  return u.toString();
}

const postgres: Driver = {
  name: 'postgres',
  async fresh() {
    const db = await freshDatabase();
    return {
      open: async () => closing(await PostgresCatalog.open({ ...db, poolSize: 4 })),
      query: async (sql) => {
        const client = new pg.Client({ connectionString: await withPassword(db.url, db.passwordFile) });
        await client.connect();
        try {
          return (await client.query(sql)).rows as Row[];
        } finally {
          await client.end();
        }
      },
    };
  },
  async openTogether(store, n) {
    const catalogs = await Promise.all(Array.from({ length: n }, () => store.open()));
    return Promise.all(catalogs.map((c) => c.schemaVersion()));
  },
  async contender(store) {
    const other = await store.open();
    return (ids, perId, owner, at) => raceVolumes(other, ids, perId, owner, at);
  },
};

const drivers = [sqlite, postgres];

// ---- the data the tests put in ------------------------------------------------------------

const TiB = 2 ** 40;
const BIG = 5 * TiB + 3 * 2 ** 20; // past 2^32 and 2^40: a 32-bit integer anywhere would show

const vol = (id: string, over: Partial<NewVolume> = {}): NewVolume => ({ id, name: `volume ${id}`, backend: 'fast', pool: 'p1', size: BIG, status: 'available', ...over });

const bak = (id: string, volumeId: string, over: Partial<NewBackup> = {}): NewBackup => ({
  id,
  name: `backup ${id}`,
  volumeId,
  snapshotId: null,
  target: 'store-1',
  status: 'available',
  size: BIG,
  location: null,
  workflowId: `wf-${id}`,
  sourcePreviousStatus: null,
  ...over,
});

const snap = (id: string, volumeId: string, over: Partial<SnapshotView> = {}): Omit<SnapshotView, 'createdAt'> & { createdAt?: string } => ({
  id,
  name: `snapshot ${id}`,
  volumeId,
  backend: 'fast',
  pool: 'p1',
  size: BIG,
  status: 'available',
  backupId: null,
  ...over,
});

/** The same history on any catalog: every kind of row and column the views show. */
async function populate(c: Catalog): Promise<void> {
  await c.insertVolume(vol('v-a'));
  await c.insertVolume(vol('v-b', { pool: null, size: 2 ** 20 }));
  await c.insertVolume(vol('v-c', { status: 'creating', owner: 'wf-create-v-c' }));
  await c.transitionVolume('v-b', ['available'], 'in-use', { instance: 'vm-7', attachedNode: 'node-2', owner: 'wf-attach' });
  await c.transitionVolume('v-a', ['available'], 'backing-up', { rememberPrevious: true, owner: 'wf-b-2' });
  await c.insertSnapshot(snap('s-1', 'v-a', { createdAt: '2026-01-02T03:04:05.000Z' }));
  await c.insertSnapshot(snap('s-2', 'v-b', { status: 'creating', backupId: 'b-2', pool: null, createdAt: '2026-01-02T03:04:06.000Z' }));
  await c.insertBackup(
    bak('b-1', 'v-a', { location: { backend: 'slow', pool: null, name: 'backup-b-1' }, storedBytes: 2 ** 33 + 1, method: 'generic', node: 'node-1', createdAt: '2026-01-01T00:00:00.000Z' }),
  );
  await c.insertBackup(bak('b-2', 'v-a', { status: 'creating', parentId: 'b-1', snapshotId: 's-1', sourcePreviousStatus: 'available', createdAt: '2026-01-03T00:00:00.000Z' }));
  await c.insertBackup(bak('b-3', 'v-b', { target: 'objects', createdAt: '2026-01-03T00:00:00.000Z', workflowId: null }));
  await c.transitionBackup('b-3', ['available'], 'error', { error: 'bucket gone' });
}

// ---- the contract -------------------------------------------------------------------------

describe.each(drivers)('catalog on $name', (driver) => {
  let store: Store;
  let c: Catalog;
  beforeEach(async () => {
    store = await driver.fresh();
    c = await store.open();
  });

  it('keeps volumes: insert, find, list, sizes past 2^32 bytes as numbers', async () => {
    const inserted = await c.insertVolume(vol('v-1'));
    expect(inserted).toMatchObject({ id: 'v-1', name: 'volume v-1', backend: 'fast', pool: 'p1', size: BIG, status: 'available', error: null, instance: null, attachedNode: null });
    expect(inserted.createdAt).toBe(inserted.updatedAt);
    await c.insertVolume(vol('v-2', { pool: null, status: 'error', error: 'lost', owner: 'wf-x' }));
    expect(await c.findVolume('v-1')).toEqual(inserted);
    expect(await c.volume('v-1')).toEqual(inserted);
    expect(typeof (await c.volume('v-1')).size).toBe('number');
    expect(await c.volume('v-2')).toMatchObject({ pool: null, status: 'error', error: 'lost' });
    expect(await c.volumeOwner('v-2')).toBe('wf-x');
    expect(await c.findVolume('nope')).toBeNull();
    expect((await c.listVolumes()).map((v) => v.id)).toEqual(['v-1', 'v-2']);
    await c.deleteVolumeRecord('v-2');
    expect((await c.listVolumes()).map((v) => v.id)).toEqual(['v-1']);
  });

  it('keeps snapshots, by volume, and their status', async () => {
    const s1 = await c.insertSnapshot(snap('s-1', 'v-1', { createdAt: '2026-01-01T00:00:00.000Z' }));
    expect(s1).toEqual({ ...snap('s-1', 'v-1'), createdAt: '2026-01-01T00:00:00.000Z' });
    await c.insertSnapshot(snap('s-2', 'v-2', { backupId: 'b-9', pool: null }));
    expect(await c.snapshot('s-1')).toEqual(s1);
    expect((await c.listSnapshots('v-2')).map((s) => [s.id, s.backupId, s.pool])).toEqual([['s-2', 'b-9', null]]);
    expect((await c.listSnapshots()).map((s) => s.id)).toEqual(['s-1', 's-2']);
    await c.setSnapshotStatus('s-1', 'deleting');
    expect((await c.snapshot('s-1')).status).toBe('deleting');
    await c.deleteSnapshotRecord('s-1');
    expect(await c.findSnapshot('s-1')).toBeNull();
    await expect(c.snapshot('s-1')).rejects.toThrow(SnapshotNotFound);
  });

  it('keeps backups: locations, parents, dependents, sizes past 2^32 bytes', async () => {
    const location = { backend: 'slow', pool: 'p2', name: 'backup-b-1' };
    const b1 = await c.insertBackup(bak('b-1', 'v-1', { location, storedBytes: 2 ** 34 + 5, method: 'generic', node: 'node-1', createdAt: '2026-01-01T00:00:00.000Z' }));
    expect(b1).toEqual({
      ...bak('b-1', 'v-1', { location, storedBytes: 2 ** 34 + 5, method: 'generic', node: 'node-1' }),
      parentId: null,
      changes: null,
      policy: null,
      scheduledAt: null,
      groupId: null,
      copyOf: null,
      verifiedAt: null,
      error: null,
      createdAt: '2026-01-01T00:00:00.000Z',
      updatedAt: '2026-01-01T00:00:00.000Z',
    });
    const b2 = await c.insertBackup(bak('b-2', 'v-1', { parentId: 'b-1', status: 'creating', sourcePreviousStatus: 'in-use', createdAt: '2026-01-02T00:00:00.000Z' }));
    await c.insertBackup(bak('b-3', 'v-2', { createdAt: '2026-01-01T12:00:00.000Z' }));
    expect(b2).toMatchObject({ parentId: 'b-1', status: 'creating', sourcePreviousStatus: 'in-use', storedBytes: 0, method: null, location: null });
    expect(await c.backup('b-1')).toEqual(b1);
    expect((await c.backup('b-1')).size).toBe(BIG);
    const b4 = await c.insertBackup(bak('b-4', 'v-1', { policy: 'nightly', groupId: 'g-1', copyOf: 'b-1', createdAt: '2026-01-03T00:00:00.000Z' }));
    expect(b4).toMatchObject({ policy: 'nightly', groupId: 'g-1', copyOf: 'b-1', verifiedAt: null });
    await c.markBackupVerified('b-4', '2026-01-04T00:00:00.000Z');
    expect((await c.backup('b-4')).verifiedAt).toBe('2026-01-04T00:00:00.000Z');
    await c.deleteBackupRecord('b-4');
    expect((await c.dependentsOf('b-1')).map((b) => b.id)).toEqual(['b-2']);
    expect(await c.dependentsOf('b-2')).toEqual([]);
    expect((await c.listBackups()).map((b) => b.id)).toEqual(['b-1', 'b-3', 'b-2']);
    expect((await c.listBackups('v-1')).map((b) => b.id)).toEqual(['b-1', 'b-2']);
    expect(await c.findBackup('nope')).toBeNull();
    await c.deleteBackupRecord('b-2');
    expect(await c.dependentsOf('b-1')).toEqual([]);
  });

  it('moves a volume only from the statuses given, and names the status it found', async () => {
    await c.insertVolume(vol('v-1'));
    const attached = await c.transitionVolume('v-1', ['available'], 'in-use', { instance: 'vm-1', attachedNode: 'node-3', owner: 'wf-attach' });
    expect(attached).toMatchObject({ status: 'in-use', instance: 'vm-1', attachedNode: 'node-3', error: null });
    expect(await c.volumeOwner('v-1')).toBe('wf-attach');
    const claimed = await c.transitionVolume('v-1', ['available', 'in-use'], 'backing-up', { rememberPrevious: true, owner: 'wf-backup' });
    // Untouched unless given: the attachment stays while the backup runs.
    expect(claimed).toMatchObject({ status: 'backing-up', instance: 'vm-1', attachedNode: 'node-3' });
    expect(await c.volumePreviousStatus('v-1')).toBe('in-use');
    expect(await c.volumeOwner('v-1')).toBe('wf-backup');

    const refused = c.transitionVolume('v-1', ['available'], 'deleting');
    await expect(refused).rejects.toThrow(InvalidStatus);
    await expect(refused).rejects.toThrow("volume 'v-1' is 'backing-up'; this needs it to be 'available'");
    await c.transitionVolume('v-1', ['backing-up'], 'error', { error: 'copy failed' });
    await expect(c.transitionVolume('v-1', ['available', 'in-use'], 'deleting')).rejects.toThrow("volume 'v-1' is 'error' (copy failed); this needs it to be 'available' or 'in-use'");
    // The refused moves changed nothing.
    expect(await c.volume('v-1')).toMatchObject({ status: 'error', error: 'copy failed' });

    const detached = await c.transitionVolume('v-1', ['error'], 'available', { instance: null, attachedNode: null });
    expect(detached).toMatchObject({ status: 'available', instance: null, attachedNode: null, error: null });
    expect(await c.volumeOwner('v-1')).toBeNull();
  });

  it('moves a backup only from the statuses given, keeping fields not given', async () => {
    await c.insertBackup(bak('b-1', 'v-1', { status: 'creating', method: 'chunked' }));
    const done = await c.transitionBackup('b-1', ['creating'], 'available', { storedBytes: 2 ** 35, node: 'node-1', parentId: 'b-0' });
    expect(done).toMatchObject({ status: 'available', storedBytes: 2 ** 35, node: 'node-1', parentId: 'b-0', method: 'chunked', error: null });
    const restoring = await c.transitionBackup('b-1', ['available'], 'restoring');
    expect(restoring).toMatchObject({ storedBytes: 2 ** 35, node: 'node-1', parentId: 'b-0', method: 'chunked' });
    await expect(c.transitionBackup('b-1', ['available', 'error'], 'deleting')).rejects.toThrow("backup 'b-1' is 'restoring'; this needs it to be 'available' or 'error'");
    await c.transitionBackup('b-1', ['restoring'], 'error', { error: 'target unreachable' });
    const refused = c.transitionBackup('b-1', ['available'], 'deleting');
    await expect(refused).rejects.toThrow(InvalidStatus);
    await expect(refused).rejects.toThrow("backup 'b-1' is 'error' (target unreachable)");
  });

  it('says an unknown volume or backup is not found, also when asked to move it', async () => {
    await expect(c.volume('ghost')).rejects.toThrow(VolumeNotFound);
    await expect(c.volume('ghost')).rejects.toThrow("volume 'ghost' not found");
    await expect(c.transitionVolume('ghost', ['available'], 'deleting')).rejects.toThrow(VolumeNotFound);
    await expect(c.backup('ghost')).rejects.toThrow(BackupNotFound);
    await expect(c.backup('ghost')).rejects.toThrow("backup 'ghost' not found");
    await expect(c.transitionBackup('ghost', ['available'], 'deleting')).rejects.toThrow(BackupNotFound);
    expect(await c.volumePreviousStatus('ghost')).toBeNull();
    expect(await c.volumeOwner('ghost')).toBeNull();
  });

  it('commits the writes of a transaction together, nested transactions joining it', async () => {
    await c.insertVolume(vol('v-0'));
    const result = await c.tx(async (t) => {
      await t.insertVolume(vol('v-1'));
      await t.transitionVolume('v-0', ['available'], 'backing-up');
      await t.tx(async (inner) => {
        await inner.insertBackup(bak('b-1', 'v-1'));
        // The outer transaction's write is visible inside the nested one: they are one.
        expect((await inner.volume('v-0')).status).toBe('backing-up');
      });
      expect(await t.findBackup('b-1')).not.toBeNull();
      return 'done';
    });
    expect(result).toBe('done');
    expect(await c.findVolume('v-1')).not.toBeNull();
    expect(await c.findBackup('b-1')).not.toBeNull();
    expect((await c.volume('v-0')).status).toBe('backing-up');
  });

  it('rolls back every write of a transaction that throws, nested ones included', async () => {
    await c.insertVolume(vol('v-0'));
    const failed = c.tx(async (t) => {
      await t.insertVolume(vol('v-1'));
      await t.transitionVolume('v-0', ['available'], 'backing-up', { owner: 'wf-1' });
      await t.tx(async (inner) => {
        await inner.insertBackup(bak('b-1', 'v-1'));
        await inner.insertSnapshot(snap('s-1', 'v-1'));
      });
      await t.transitionBackup('b-1', ['available'], 'deleting');
      throw new Error('boom after four writes');
    });
    await expect(failed).rejects.toThrow('boom after four writes');
    expect(await c.findVolume('v-1')).toBeNull();
    expect(await c.findBackup('b-1')).toBeNull();
    expect(await c.findSnapshot('s-1')).toBeNull();
    expect(await c.volume('v-0')).toMatchObject({ status: 'available' });
    expect(await c.volumeOwner('v-0')).toBeNull();
    expect(await c.countBackups()).toBe(0);
    // And the catalog goes on working after a rollback.
    await c.tx(async (t) => t.insertVolume(vol('v-2')));
    expect((await c.listVolumes()).map((v) => v.id)).toEqual(['v-0', 'v-2']);
  });

  it('shows nothing of a transaction to another caller before it commits', async () => {
    const other = await store.open(); // PostgreSQL: a second pool; SQLite: the one shared instance
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const open = c.tx(async (t) => {
      await t.insertVolume(vol('v-1'));
      await gate;
    });
    await sleep(100);
    let committed = false;
    let before: VolumeView | null | undefined;
    // PostgreSQL answers at once (not there yet); SQLite's other callers wait for the commit.
    const outside = other.findVolume('v-1').then((v) => {
      if (!committed) before = v;
      return v;
    });
    await sleep(200);
    committed = true;
    release();
    await open;
    const after = await outside;
    if (before !== undefined) expect(before).toBeNull();
    else expect(after?.id).toBe('v-1');
    expect(await other.findVolume('v-1')).not.toBeNull();
  });

  it('lets exactly one of 20 concurrent claims on a volume win, through one catalog', async () => {
    const ids = ['v-1', 'v-2', 'v-3'];
    for (const id of ids) await c.insertVolume(vol(id));
    const outcomes = await raceVolumes(c, ids, 20, 'here');
    await expectOneWinnerEach(c, ids, outcomes, 20);
  });

  it('lets exactly one of 20 claims win per volume, made from two connections at once', async () => {
    const ids = Array.from({ length: 20 }, (_, i) => `v-${String(i).padStart(2, '0')}`);
    for (const id of ids) await c.insertVolume(vol(id));
    const race = await driver.contender(store);
    const at = Date.now() + 500;
    // Both claim the i-th volume at the same wall-clock moment (raceVolumes' start).
    const [theirs, ours] = await Promise.all([race(ids, 10, 'there', at), raceVolumes(c, ids, 10, 'here', at)]);
    await expectOneWinnerEach(c, ids, [...theirs, ...ours], 20);
  });

  it('applies each migration exactly once when two open a new database together', async () => {
    const fresh = await driver.fresh();
    // Both succeed: a migration applied twice would fail (ALTER TABLE ... ADD COLUMN, a duplicate key).
    const versions = await driver.openTogether(fresh, 2);
    expect(versions).toEqual([SCHEMA_VERSION, SCHEMA_VERSION]);
    const rows = await fresh.query('SELECT version FROM schema_migrations ORDER BY version');
    expect(rows.map((r) => Number(r.version))).toEqual(MIGRATIONS.map((_, i) => i + 1));
    expect(await c.schemaVersion()).toBe(SCHEMA_VERSION);
    expect(SCHEMA_VERSION).toBe(MIGRATIONS.length);
  });

  it('records the migrations it applied in schema_migrations, versions 1..N', async () => {
    const rows = await store.query('SELECT version, name FROM schema_migrations ORDER BY version');
    expect(rows.map((r) => Number(r.version))).toEqual(MIGRATIONS.map((_, i) => i + 1));
    expect(rows.map((r) => r.name)).toEqual(MIGRATIONS.map((m) => m.name));
    // Opening again applies nothing new.
    const again = await store.open();
    expect(await again.schemaVersion()).toBe(SCHEMA_VERSION);
    expect(await store.query('SELECT version FROM schema_migrations')).toHaveLength(MIGRATIONS.length);
  });

  it('pages 2,500 backups in (created_at, id) order, each exactly once', async () => {
    // Seven backups share each timestamp, and their ids do not follow insertion order: the
    // cursor must break ties by id. Every fifth backup is of another volume, for the filter.
    const all = Array.from({ length: 2500 }, (_, i) => {
      const createdAt = new Date(Date.UTC(2026, 0, 1) + Math.floor(i / 7) * 1000).toISOString();
      return bak(`b-${String((i * 7919) % 2500).padStart(4, '0')}`, i % 5 === 0 ? 'v-other' : 'v-main', { createdAt });
    });
    await c.tx(async (t) => {
      for (const b of all) await t.insertBackup(b);
    });
    expect(await c.countBackups()).toBe(2500);
    const order = (bs: { id: string; createdAt?: string }[]) =>
      [...bs].sort((x, y) => (x.createdAt! < y.createdAt! ? -1 : x.createdAt! > y.createdAt! ? 1 : x.id < y.id ? -1 : x.id > y.id ? 1 : 0)).map((b) => b.id);

    const pages = await pageAll(c, {}, 1000);
    expect(pages.map((p) => p.items.length)).toEqual([1000, 1000, 500]);
    expect(pages.map((p) => p.next === null)).toEqual([false, false, true]);
    const ids = pages.flatMap((p) => p.items.map((b) => b.id));
    expect(new Set(ids).size).toBe(2500);
    expect(ids).toEqual(order(all));

    // 2,000 of v-main: two full pages, and the second says it is the last.
    const main = await pageAll(c, { volumeId: 'v-main' }, 1000);
    expect(main.map((p) => [p.items.length, p.next === null])).toEqual([
      [1000, false],
      [1000, true],
    ]);
    expect(main.flatMap((p) => p.items.map((b) => b.id))).toEqual(order(all.filter((b) => b.volumeId === 'v-main')));
    await expect(c.pageBackups({}, { after: 'not a cursor', limit: 10 })).rejects.toThrow(/invalid page cursor 'not a cursor'/);
  });

  it('counts backups', async () => {
    expect(await c.countBackups()).toBe(0);
    await populate(c);
    expect(await c.countBackups()).toBe(3);
    await c.deleteBackupRecord('b-3');
    expect(await c.countBackups()).toBe(2);
  });

  it('dumps and loads raw rows with every column, and only the columns it knows', async () => {
    await populate(c);
    const volumes = await c.dumpRows('volumes');
    expect(volumes.map((r) => r.id)).toEqual(['v-a', 'v-b', 'v-c']);
    expect(volumes[0]).toMatchObject({ id: 'v-a', status: 'backing-up', previous_status: 'available', owner: 'wf-b-2', size: BIG });
    expect(volumes[1]).toMatchObject({ instance: 'vm-7', attached_node: 'node-2', owner: 'wf-attach', pool: null });
    const backups = await c.dumpRows('backups');
    expect(backups[0]).toMatchObject({ id: 'b-1', stored_bytes: 2 ** 33 + 1, location: JSON.stringify({ backend: 'slow', pool: null, name: 'backup-b-1' }) });

    const copy = await (await driver.fresh()).open();
    for (const t of ['volumes', 'snapshots', 'backups'] as const) await copy.loadRows(t, await c.dumpRows(t));
    for (const t of ['volumes', 'snapshots', 'backups'] as const) expect(await copy.dumpRows(t)).toEqual(await c.dumpRows(t));
    expect(await copy.listVolumes()).toEqual(await c.listVolumes());
    expect(await copy.listBackups()).toEqual(await c.listBackups());

    const row: TableRow = { ...volumes[0]!, id: 'v-z' };
    await expect(copy.loadRows('volumes', [{ ...row, 'name) VALUES (1); --': 'x' }])).rejects.toThrow(InvalidInput);
    await expect(copy.loadRows('volumes; DROP TABLE volumes' as 'volumes', [row])).rejects.toThrow("unknown catalog table 'volumes; DROP TABLE volumes'");
    await expect(copy.dumpRows('schema_migrations' as 'volumes')).rejects.toThrow(InvalidInput);
    expect(await copy.findVolume('v-z')).toBeNull();
  });
});

async function pageAll(c: Catalog, filter: { volumeId?: string }, limit: number) {
  const pages: { items: BackupRecord[]; next: string | null }[] = [];
  let after: string | null = null;
  do {
    const page = await c.pageBackups(filter, { after, limit });
    pages.push(page);
    after = page.next;
  } while (after !== null && pages.length < 100);
  return pages;
}

async function expectOneWinnerEach(c: Catalog, ids: readonly string[], outcomes: readonly Outcome[], perId: number): Promise<void> {
  for (const id of ids) {
    const mine = outcomes.filter((o) => o.id === id);
    expect(mine).toHaveLength(perId);
    const winners = mine.filter((o) => o.ok);
    expect(winners, `winners for ${id}`).toHaveLength(1);
    for (const o of mine.filter((x) => !x.ok)) {
      expect(o.error).toEqual({ name: 'InvalidStatus', message: `volume '${id}' is 'backing-up'; this needs it to be 'available'` });
    }
    // The winner's claim is the one stored.
    expect(await c.volumeOwner(id)).toBe(winners[0]!.owner);
    expect((await c.volume(id)).status).toBe('backing-up');
  }
}

// ---- across drivers -----------------------------------------------------------------------

describe('both drivers', () => {
  it('show the same history the same way', async () => {
    const [a, b] = [await (await sqlite.fresh()).open(), await (await postgres.fresh()).open()];
    await populate(a);
    await populate(b);
    // Volume timestamps and updatedAt are the clock's at the write; the rest must be identical.
    const vols = async (c: Catalog) => (await c.listVolumes()).map((v) => ({ ...v, createdAt: '-', updatedAt: '-' }));
    const baks = async (c: Catalog) => (await c.listBackups()).map((x) => ({ ...x, updatedAt: '-' }));
    expect(await vols(b)).toEqual(await vols(a));
    expect(await baks(b)).toEqual(await baks(a));
    expect(await b.listSnapshots()).toEqual(await a.listSnapshots());
    for (const id of ['v-a', 'v-b', 'v-c']) {
      expect(await b.volumeOwner(id)).toBe(await a.volumeOwner(id));
      expect(await b.volumePreviousStatus(id)).toBe(await a.volumePreviousStatus(id));
    }
    expect((await b.backup('b-1')).storedBytes).toBe(2 ** 33 + 1);
    expect(typeof (await b.volume('v-a')).size).toBe('number');
    const firstPage = async (c: Catalog) => (await c.pageBackups({}, { limit: 2 })).items.map((x) => x.id);
    expect(await firstPage(b)).toEqual(await firstPage(a));
  });
});

// ---- SQLite only --------------------------------------------------------------------------

/** The schema of the catalogs gbackup made before versioned migrations (no schema_migrations). */
const UNVERSIONED_SCHEMA = `
CREATE TABLE IF NOT EXISTS volumes (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, backend TEXT NOT NULL, pool TEXT,
  size INTEGER NOT NULL, status TEXT NOT NULL, previous_status TEXT, error TEXT,
  instance TEXT, owner TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, volume_id TEXT NOT NULL, backend TEXT NOT NULL, pool TEXT,
  size INTEGER NOT NULL, status TEXT NOT NULL, backup_id TEXT, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS backups (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, volume_id TEXT NOT NULL, snapshot_id TEXT,
  target TEXT NOT NULL, status TEXT NOT NULL, size INTEGER NOT NULL, stored_bytes INTEGER NOT NULL DEFAULT 0,
  method TEXT, node TEXT, location TEXT, error TEXT, workflow_id TEXT,
  source_previous_status TEXT, parent_id TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS backups_volume ON backups(volume_id);
`;

describe('SQLite catalog', () => {
  it('adopts an old unversioned catalog, migrates it to the current version and keeps its rows', async () => {
    const file = join(tempDir(), 'old.sqlite');
    const old = new Database(file);
    old.pragma('journal_mode = WAL');
    old.exec(UNVERSIONED_SCHEMA);
    const t = '2025-06-01T10:00:00.000Z';
    old
      .prepare('INSERT INTO volumes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)')
      .run('v-old', 'old volume', 'fast', 'p1', BIG, 'in-use', 'available', null, 'vm-3', 'wf-attach', t, '2025-06-02T10:00:00.000Z');
    old.prepare('INSERT INTO volumes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)').run('v-err', 'broken', 'fast', null, 2 ** 30, 'error', null, 'device gone', null, null, t, t);
    old.prepare('INSERT INTO snapshots VALUES (?,?,?,?,?,?,?,?,?)').run('s-old', 'snap', 'v-old', 'fast', 'p1', BIG, 'available', null, t);
    const ins = old.prepare(
      'INSERT INTO backups (id,name,volume_id,snapshot_id,target,status,size,stored_bytes,method,node,location,error,workflow_id,source_previous_status,parent_id,created_at,updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)',
    );
    ins.run('b-old-1', 'full', 'v-old', 's-old', 'vols', 'available', BIG, 2 ** 33, 'generic', 'node-1', JSON.stringify({ backend: 'slow', pool: null, name: 'bk-1' }), null, 'wf-1', null, null, t, t);
    ins.run('b-old-2', 'incr', 'v-old', null, 'objects', 'creating', BIG, 0, 'chunked', null, null, null, 'wf-2', 'in-use', 'b-old-1', '2025-06-03T10:00:00.000Z', '2025-06-03T10:00:00.000Z');
    old.close();

    const c = closing(await SqliteCatalog.open(file));
    expect(await c.schemaVersion()).toBe(SCHEMA_VERSION);
    const applied = await sqliteStore(file).query('SELECT version FROM schema_migrations ORDER BY version');
    expect(applied.map((r) => Number(r.version))).toEqual(MIGRATIONS.map((m) => m.version));

    expect(await c.volume('v-old')).toEqual({
      id: 'v-old',
      name: 'old volume',
      backend: 'fast',
      pool: 'p1',
      size: BIG,
      status: 'in-use',
      error: null,
      instance: 'vm-3',
      attachedNode: null,
      createdAt: t,
      updatedAt: '2025-06-02T10:00:00.000Z',
    });
    expect(await c.volumePreviousStatus('v-old')).toBe('available');
    expect(await c.volumeOwner('v-old')).toBe('wf-attach');
    expect(await c.volume('v-err')).toMatchObject({ status: 'error', error: 'device gone', pool: null });
    expect(await c.snapshot('s-old')).toMatchObject({ volumeId: 'v-old', size: BIG });
    expect(await c.backup('b-old-1')).toMatchObject({ storedBytes: 2 ** 33, location: { backend: 'slow', pool: null, name: 'bk-1' }, method: 'generic' });
    expect(await c.backup('b-old-2')).toMatchObject({ parentId: 'b-old-1', sourcePreviousStatus: 'in-use', status: 'creating' });
    expect((await c.dependentsOf('b-old-1')).map((b) => b.id)).toEqual(['b-old-2']);
    expect(await c.countBackups()).toBe(2);
    // And it works as a current catalog: the new column included.
    expect(await c.transitionVolume('v-old', ['in-use'], 'available', { instance: null, attachedNode: null })).toMatchObject({ status: 'available', attachedNode: null });
    await c.transitionVolume('v-old', ['available'], 'in-use', { instance: 'vm-4', attachedNode: 'node-9' });
    expect((await c.volume('v-old')).attachedNode).toBe('node-9');
  });

  it('hands out an open catalog to an open() that waited while the last owner closed it', async () => {
    const file = join(tempDir(), 'shared.sqlite');
    const first = await SqliteCatalog.open(file);
    await first.insertVolume(vol('v-1'));
    const waiting = SqliteCatalog.open(file); // resolves after the close below has run
    await first.close();
    const second = closing(await waiting);
    expect((await second.volume('v-1')).id).toBe('v-1');
  });
});
