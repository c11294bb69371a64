/**
 * The catalog's SQL, written once for both databases: `?` placeholders (numbered for
 * PostgreSQL by its executor), TEXT timestamps in ISO 8601 (so ordering and the views are
 * identical), and every status change as one conditional UPDATE ... RETURNING, which is
 * atomic on SQLite and PostgreSQL alike without a read-then-write window.
 */
import type { BackupStatus, VolumeStatus, VolumeView } from '../api.js';
import { BackupNotFound, InvalidInput, InvalidStatus, SnapshotNotFound, VolumeNotFound } from '../errors.js';
import type { BackupFields, BackupLocation, BackupRecord, Catalog, CatalogTable, NewBackup, NewVolume, Page, PageRequest, SnapshotView, TableRow, VolumeTransition } from './catalog.js';

export type Row = Record<string, unknown>;

/** Runs one statement; returns its rows (empty for statements that return none). */
export type Executor = (sql: string, params: readonly unknown[]) => Promise<Row[]>;

const str = (v: unknown) => (v === null || v === undefined ? null : String(v));
const now = () => new Date().toISOString();
const placeholders = (n: number) => Array.from({ length: n }, () => '?').join(',');

function toVolume(r: Row): VolumeView {
  return {
    id: String(r.id),
    name: String(r.name),
    backend: String(r.backend),
    pool: str(r.pool),
    size: Number(r.size),
    status: String(r.status) as VolumeStatus,
    error: str(r.error),
    instance: str(r.instance),
    attachedNode: str(r.attached_node),
    createdAt: String(r.created_at),
    updatedAt: String(r.updated_at),
  };
}

function toBackup(r: Row): BackupRecord {
  return {
    id: String(r.id),
    name: String(r.name),
    volumeId: String(r.volume_id),
    snapshotId: str(r.snapshot_id),
    target: String(r.target),
    status: String(r.status) as BackupStatus,
    size: Number(r.size),
    storedBytes: Number(r.stored_bytes),
    method: str(r.method),
    node: str(r.node),
    error: str(r.error),
    createdAt: String(r.created_at),
    updatedAt: String(r.updated_at),
    workflowId: str(r.workflow_id),
    location: r.location ? (JSON.parse(String(r.location)) as BackupLocation) : null,
    sourcePreviousStatus: str(r.source_previous_status) as VolumeStatus | null,
    parentId: str(r.parent_id),
    changes: str(r.changes),
    policy: str(r.policy),
    scheduledAt: str(r.scheduled_at),
    groupId: str(r.group_id),
    copyOf: str(r.copy_of),
    verifiedAt: str(r.verified_at),
  };
}

function toSnapshot(r: Row): SnapshotView {
  return {
    id: String(r.id),
    name: String(r.name),
    volumeId: String(r.volume_id),
    backend: String(r.backend),
    pool: str(r.pool),
    size: Number(r.size),
    status: String(r.status) as SnapshotView['status'],
    backupId: str(r.backup_id),
    createdAt: String(r.created_at),
  };
}

const quoteList = (from: readonly string[]) => from.map((s) => `'${s}'`).join(' or ');

/** Cursor of a backup page: the last row's (created_at, id), the listing's order. */
const cursorOf = (b: BackupRecord) => Buffer.from(JSON.stringify([b.createdAt, b.id])).toString('base64url');
function parseCursor(c: string): [string, string] {
  try {
    const v = JSON.parse(Buffer.from(c, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && typeof v[1] === 'string') return [v[0], v[1]];
  } catch {
    // falls through to the error below
  }
  throw new InvalidInput(`invalid page cursor '${c}': give the 'next' of the previous page`);
}

/**
 * Every catalog operation over an executor. The concrete catalogs supply the executor
 * (a connection, or a transaction's connection) and the transaction itself.
 */
export abstract class SqlCatalog implements Catalog {
  abstract readonly describe: string;
  protected abstract readonly exec: Executor;
  abstract close(): Promise<void>;
  abstract tx<T>(fn: (c: Catalog) => Promise<T>): Promise<T>;

  async schemaVersion(): Promise<number> {
    const r = await this.exec('SELECT MAX(version) AS v FROM schema_migrations', []);
    return Number(r[0]?.v ?? 0);
  }

  private async one(sql: string, params: readonly unknown[]): Promise<Row | null> {
    return (await this.exec(sql, params))[0] ?? null;
  }

  // ---- volumes -------------------------------------------------------------------------

  async insertVolume(v: NewVolume): Promise<VolumeView> {
    const t = now();
    const r = await this.one(
      'INSERT INTO volumes (id,name,backend,pool,size,status,error,owner,created_at,updated_at) VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING *',
      [v.id, v.name, v.backend, v.pool, v.size, v.status, v.error ?? null, v.owner ?? null, t, t],
    );
    return toVolume(r!);
  }

  async findVolume(id: string): Promise<VolumeView | null> {
    const r = await this.one('SELECT * FROM volumes WHERE id = ?', [id]);
    return r ? toVolume(r) : null;
  }

  async volume(id: string): Promise<VolumeView> {
    const v = await this.findVolume(id);
    if (!v) throw new VolumeNotFound(`volume '${id}' not found`);
    return v;
  }

  async volumePreviousStatus(id: string): Promise<VolumeStatus | null> {
    const r = await this.one('SELECT previous_status FROM volumes WHERE id = ?', [id]);
    return r ? (str(r.previous_status) as VolumeStatus | null) : null;
  }

  async volumeOwner(id: string): Promise<string | null> {
    const r = await this.one('SELECT owner FROM volumes WHERE id = ?', [id]);
    return r ? str(r.owner) : null;
  }

  async listVolumes(): Promise<VolumeView[]> {
    return (await this.exec('SELECT * FROM volumes ORDER BY created_at, id', [])).map(toVolume);
  }

  async transitionVolume(id: string, from: readonly VolumeStatus[], to: VolumeStatus, opts: VolumeTransition = {}): Promise<VolumeView> {
    const sets = ['status = ?', 'error = ?', 'owner = ?', 'updated_at = ?'];
    const params: unknown[] = [to, opts.error ?? null, opts.owner ?? null, now()];
    // Both databases read the old row on the right-hand side of SET.
    if (opts.rememberPrevious) sets.push('previous_status = status');
    if (opts.instance !== undefined) {
      sets.push('instance = ?');
      params.push(opts.instance);
    }
    if (opts.attachedNode !== undefined) {
      sets.push('attached_node = ?');
      params.push(opts.attachedNode);
    }
    const r = await this.one(`UPDATE volumes SET ${sets.join(', ')} WHERE id = ? AND status IN (${placeholders(from.length)}) RETURNING *`, [...params, id, ...from]);
    if (r) return toVolume(r);
    const v = await this.volume(id);
    throw new InvalidStatus(`volume '${id}' is '${v.status}'${v.error ? ` (${v.error})` : ''}; this needs it to be ${quoteList(from)}`);
  }

  async deleteVolumeRecord(id: string): Promise<void> {
    await this.exec('DELETE FROM volumes WHERE id = ?', [id]);
  }

  // ---- snapshots -----------------------------------------------------------------------

  async insertSnapshot(s: Omit<SnapshotView, 'createdAt'> & { createdAt?: string }): Promise<SnapshotView> {
    const r = await this.one('INSERT INTO snapshots (id,name,volume_id,backend,pool,size,status,backup_id,created_at) VALUES (?,?,?,?,?,?,?,?,?) RETURNING *', [
      s.id,
      s.name,
      s.volumeId,
      s.backend,
      s.pool,
      s.size,
      s.status,
      s.backupId,
      s.createdAt ?? now(),
    ]);
    return toSnapshot(r!);
  }

  async findSnapshot(id: string): Promise<SnapshotView | null> {
    const r = await this.one('SELECT * FROM snapshots WHERE id = ?', [id]);
    return r ? toSnapshot(r) : null;
  }

  async snapshot(id: string): Promise<SnapshotView> {
    const s = await this.findSnapshot(id);
    if (!s) throw new SnapshotNotFound(`snapshot '${id}' not found`);
    return s;
  }

  async listSnapshots(volumeId?: string): Promise<SnapshotView[]> {
    const rows = volumeId
      ? await this.exec('SELECT * FROM snapshots WHERE volume_id = ? ORDER BY created_at, id', [volumeId])
      : await this.exec('SELECT * FROM snapshots ORDER BY created_at, id', []);
    return rows.map(toSnapshot);
  }

  async setSnapshotStatus(id: string, status: SnapshotView['status']): Promise<void> {
    await this.exec('UPDATE snapshots SET status = ? WHERE id = ?', [status, id]);
  }

  async deleteSnapshotRecord(id: string): Promise<void> {
    await this.exec('DELETE FROM snapshots WHERE id = ?', [id]);
  }

  // ---- backups -------------------------------------------------------------------------

  async insertBackup(b: NewBackup): Promise<BackupRecord> {
    const t = b.createdAt ?? now();
    const r = await this.one(
      'INSERT INTO backups (id,name,volume_id,snapshot_id,target,status,size,stored_bytes,method,node,error,location,workflow_id,source_previous_status,parent_id,policy,scheduled_at,group_id,copy_of,created_at,updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING *',
      [
        b.id,
        b.name,
        b.volumeId,
        b.snapshotId,
        b.target,
        b.status,
        b.size,
        b.storedBytes ?? 0,
        b.method ?? null,
        b.node ?? null,
        b.error ?? null,
        b.location ? JSON.stringify(b.location) : null,
        b.workflowId,
        b.sourcePreviousStatus,
        b.parentId ?? null,
        b.policy ?? null,
        b.scheduledAt ?? null,
        b.groupId ?? null,
        b.copyOf ?? null,
        t,
        t,
      ],
    );
    return toBackup(r!);
  }

  async findBackup(id: string): Promise<BackupRecord | null> {
    const r = await this.one('SELECT * FROM backups WHERE id = ?', [id]);
    return r ? toBackup(r) : null;
  }

  async backup(id: string): Promise<BackupRecord> {
    const b = await this.findBackup(id);
    if (!b) throw new BackupNotFound(`backup '${id}' not found`);
    return b;
  }

  async dependentsOf(id: string): Promise<BackupRecord[]> {
    return (await this.exec('SELECT * FROM backups WHERE parent_id = ? ORDER BY created_at, id', [id])).map(toBackup);
  }

  async listBackups(volumeId?: string): Promise<BackupRecord[]> {
    const rows = volumeId
      ? await this.exec('SELECT * FROM backups WHERE volume_id = ? ORDER BY created_at, id', [volumeId])
      : await this.exec('SELECT * FROM backups ORDER BY created_at, id', []);
    return rows.map(toBackup);
  }

  async listPolicyBackups(policy: string): Promise<BackupRecord[]> {
    return (await this.exec('SELECT * FROM backups WHERE policy = ? ORDER BY created_at, id', [policy])).map(toBackup);
  }

  async pageBackups(filter: { volumeId?: string }, page: PageRequest): Promise<Page<BackupRecord>> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.volumeId !== undefined) {
      where.push('volume_id = ?');
      params.push(filter.volumeId);
    }
    if (page.after) {
      const [createdAt, id] = parseCursor(page.after);
      where.push('(created_at > ? OR (created_at = ? AND id > ?))');
      params.push(createdAt, createdAt, id);
    }
    // One more than asked tells whether another page follows.
    const rows = await this.exec(`SELECT * FROM backups${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id LIMIT ?`, [...params, page.limit + 1]);
    const items = rows.slice(0, page.limit).map(toBackup);
    return { items, next: rows.length > page.limit && items.length > 0 ? cursorOf(items[items.length - 1]!) : null };
  }

  async countBackups(): Promise<number> {
    const r = await this.one('SELECT COUNT(*) AS n FROM backups', []);
    return Number(r?.n ?? 0);
  }

  async transitionBackup(id: string, from: readonly BackupStatus[], to: BackupStatus, fields: BackupFields = {}): Promise<BackupRecord> {
    const r = await this.one(
      `UPDATE backups SET status = ?, error = ?, stored_bytes = COALESCE(?, stored_bytes), method = COALESCE(?, method), node = COALESCE(?, node), parent_id = COALESCE(?, parent_id), changes = COALESCE(?, changes), updated_at = ? WHERE id = ? AND status IN (${placeholders(from.length)}) RETURNING *`,
      [to, fields.error ?? null, fields.storedBytes ?? null, fields.method ?? null, fields.node ?? null, fields.parentId ?? null, fields.changes ?? null, now(), id, ...from],
    );
    if (r) return toBackup(r);
    const b = await this.backup(id);
    throw new InvalidStatus(`backup '${id}' is '${b.status}'${b.error ? ` (${b.error})` : ''}; this needs it to be ${quoteList(from)}`);
  }

  async markBackupVerified(id: string, at: string): Promise<void> {
    await this.exec('UPDATE backups SET verified_at = ? WHERE id = ?', [at, id]);
  }

  async deleteBackupRecord(id: string): Promise<void> {
    await this.exec('DELETE FROM backups WHERE id = ?', [id]);
  }

  // ---- raw rows, for copying a catalog to another database (migrate.ts) ---------------

  async dumpRows(table: CatalogTable): Promise<TableRow[]> {
    const columns = columnsOf(table);
    const rows = await this.exec(`SELECT * FROM ${table} ORDER BY id`, []);
    return rows.map((r) => {
      // A column this list lacks would be lost by a copy, one it names but the table lacks
      // would be invented: either means a migration changed the table and not TABLE_COLUMNS.
      const names = Object.keys(r);
      const differ = [...names.filter((n) => !columns.has(n)), ...[...columns.keys()].filter((n) => !names.includes(n))];
      if (differ.length > 0) throw new Error(`${this.describe}: table ${table} and TABLE_COLUMNS in sql.ts differ in column(s) ${differ.join(', ')}`);
      const out: TableRow = {};
      for (const [name, kind] of columns) out[name] = cell(r[name], kind, table, name);
      return out;
    });
  }

  async loadRows(table: CatalogTable, rows: readonly TableRow[]): Promise<void> {
    const columns = columnsOf(table);
    // A few hundred rows per INSERT: far fewer round trips for a large catalog, and well under
    // either database's limit on parameters per statement (SQLite 32766, PostgreSQL 65535).
    const batch = 200;
    for (let i = 0; i < rows.length; ) {
      const names = Object.keys(rows[i]!);
      if (names.length === 0) throw new InvalidInput(`a row for ${table} without columns`);
      for (const n of names) if (!columns.has(n)) throw new InvalidInput(`table ${table} has no column '${n}'`);
      const same = (r: TableRow) => Object.keys(r).join(',') === names.join(',');
      const chunk: TableRow[] = [];
      while (i < rows.length && chunk.length < batch && same(rows[i]!)) chunk.push(rows[i++]!);
      const params = chunk.flatMap((r) => names.map((n) => cell(r[n], columns.get(n)!, table, n)));
      const values = chunk.map(() => `(${placeholders(names.length)})`).join(',');
      await this.exec(`INSERT INTO ${table} (${names.join(',')}) VALUES ${values}`, params);
    }
  }
}

/**
 * The columns of each table and the kind of value each holds: the only names dumpRows and
 * loadRows put into SQL. A migration that adds a column adds it here too (dumpRows refuses
 * a table whose columns differ from this, rather than copy it without the new one).
 */
const TABLE_COLUMNS: Record<CatalogTable, Record<string, 'text' | 'int'>> = {
  volumes: {
    id: 'text',
    name: 'text',
    backend: 'text',
    pool: 'text',
    size: 'int',
    status: 'text',
    previous_status: 'text',
    error: 'text',
    instance: 'text',
    owner: 'text',
    created_at: 'text',
    updated_at: 'text',
    attached_node: 'text',
  },
  snapshots: { id: 'text', name: 'text', volume_id: 'text', backend: 'text', pool: 'text', size: 'int', status: 'text', backup_id: 'text', created_at: 'text' },
  backups: {
    id: 'text',
    name: 'text',
    volume_id: 'text',
    snapshot_id: 'text',
    target: 'text',
    status: 'text',
    size: 'int',
    stored_bytes: 'int',
    method: 'text',
    node: 'text',
    location: 'text',
    error: 'text',
    workflow_id: 'text',
    source_previous_status: 'text',
    parent_id: 'text',
    changes: 'text',
    policy: 'text',
    scheduled_at: 'text',
    group_id: 'text',
    copy_of: 'text',
    verified_at: 'text',
    created_at: 'text',
    updated_at: 'text',
  },
};

function columnsOf(table: string): Map<string, 'text' | 'int'> {
  if (!Object.hasOwn(TABLE_COLUMNS, table)) throw new InvalidInput(`unknown catalog table '${table}' (volumes, snapshots, backups)`);
  return new Map(Object.entries(TABLE_COLUMNS[table as CatalogTable]));
}

/**
 * One value as both databases store it. node-postgres returns BIGINT as a string (it may
 * exceed a JS number), so integers become numbers here, refused past 2^53 rather than rounded.
 */
function cell(v: unknown, kind: 'text' | 'int', table: string, column: string): string | number | null {
  if (v === null || v === undefined) return null;
  if (kind === 'text') {
    if (typeof v !== 'string') throw new InvalidInput(`${table}.${column} must be text, got ${typeof v}`);
    return v;
  }
  if (typeof v !== 'bigint' && typeof v !== 'string' && typeof v !== 'number') throw new InvalidInput(`${table}.${column} must be an integer, got ${typeof v}`);
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new InvalidInput(`${table}.${column} must be an integer up to 2^53, got '${v}'`);
  return n;
}
