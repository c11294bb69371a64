/**
 * The catalog: volumes, snapshots and backups with their statuses, in an embedded SQLite
 * file under stateDir. The CLI and the workers on one host share the file; SQLite's
 * locking (WAL + busy timeout) makes every status transition atomic across processes,
 * which is what keeps two operations from claiming one volume.
 */
import Database from 'libsql';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { BackupStatus, BackupView, VolumeStatus, VolumeView } from '../api.js';
import { BackupNotFound, InvalidStatus, SnapshotNotFound, VolumeNotFound } from '../errors.js';

export interface SnapshotView {
  id: string;
  name: string;
  volumeId: string;
  backend: string;
  pool: string | null;
  size: number;
  status: 'creating' | 'available' | 'deleting' | 'error';
  /** Set for a temporary snapshot a backup took of an in-use volume. */
  backupId: string | null;
  createdAt: string;
}

/** Where a backup's bytes live: a volume on a backend (generic target). */
export interface BackupLocation {
  backend: string;
  pool: string | null;
  name: string;
}

export interface BackupRecord extends BackupView {
  /** The backup volume of a volume target; null for an object target (its metadata object says where). */
  location: BackupLocation | null;
  /** Source volume status before the backup claimed it, restored when the backup ends. */
  sourcePreviousStatus: VolumeStatus | null;
}

const SCHEMA = `
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

type Row = Record<string, unknown>;
const str = (v: unknown) => (v === null || v === undefined ? null : String(v));
const now = () => new Date().toISOString();

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

/** The public view of a backup record (what `--json` prints). */
export function backupView(b: BackupRecord): BackupView {
  const { location: _l, sourcePreviousStatus: _s, ...view } = b;
  return view;
}

export class Catalog {
  private readonly db: Database.Database;

  constructor(readonly file: string) {
    mkdirSync(dirname(file), { recursive: true });
    this.db = new Database(file, { timeout: 15 });
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('busy_timeout = 15000');
    this.db.exec(SCHEMA);
  }

  close(): void {
    this.db.close();
  }

  /** Runs fn atomically; IMMEDIATE takes the write lock up front so check-then-set cannot race. */
  tx<T>(fn: () => T): T {
    if (this.db.inTransaction) return fn();
    return this.db.transaction(fn).immediate();
  }

  // ---- volumes -------------------------------------------------------------------------

  insertVolume(v: Omit<VolumeView, 'createdAt' | 'updatedAt' | 'error' | 'instance'> & { error?: string | null; owner?: string | null }): VolumeView {
    const t = now();
    this.db
      .prepare('INSERT INTO volumes (id,name,backend,pool,size,status,error,owner,created_at,updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)')
      .run(v.id, v.name, v.backend, v.pool, v.size, v.status, v.error ?? null, v.owner ?? null, t, t);
    return this.volume(v.id);
  }

  findVolume(id: string): VolumeView | null {
    const r = this.db.prepare('SELECT * FROM volumes WHERE id = ?').get(id) as Row | undefined;
    return r ? toVolume(r) : null;
  }

  volume(id: string): VolumeView {
    const v = this.findVolume(id);
    if (!v) throw new VolumeNotFound(`volume '${id}' not found`);
    return v;
  }

  volumePreviousStatus(id: string): VolumeStatus | null {
    const r = this.db.prepare('SELECT previous_status FROM volumes WHERE id = ?').get(id) as Row | undefined;
    return r ? (str(r.previous_status) as VolumeStatus | null) : null;
  }

  /** The workflow that holds the volume in a busy status, so its retried steps recognise their own claim. */
  volumeOwner(id: string): string | null {
    const r = this.db.prepare('SELECT owner FROM volumes WHERE id = ?').get(id) as Row | undefined;
    return r ? str(r.owner) : null;
  }

  listVolumes(): VolumeView[] {
    return (this.db.prepare('SELECT * FROM volumes ORDER BY created_at, id').all() as Row[]).map(toVolume);
  }

  /**
   * Moves a volume from one of `from` to `to`, atomically. Throws InvalidStatus naming
   * the current status when the volume is elsewhere, so callers never act on a stale read.
   */
  transitionVolume(id: string, from: readonly VolumeStatus[], to: VolumeStatus, opts: { error?: string | null; rememberPrevious?: boolean; instance?: string | null; owner?: string | null } = {}): VolumeView {
    return this.tx(() => {
      const v = this.volume(id);
      if (!from.includes(v.status)) {
        throw new InvalidStatus(`volume '${id}' is '${v.status}'${v.error ? ` (${v.error})` : ''}; this needs it to be ${from.map((s) => `'${s}'`).join(' or ')}`);
      }
      this.db
        .prepare(
          `UPDATE volumes SET status = ?, error = ?, owner = ?, updated_at = ?${opts.rememberPrevious ? ', previous_status = status' : ''}${opts.instance !== undefined ? ', instance = ?' : ''} WHERE id = ?`,
        )
        .run(...([to, opts.error ?? null, opts.owner ?? null, now(), ...(opts.instance !== undefined ? [opts.instance] : []), id] as unknown[]));
      return this.volume(id);
    });
  }

  deleteVolumeRecord(id: string): void {
    this.db.prepare('DELETE FROM volumes WHERE id = ?').run(id);
  }

  // ---- snapshots -----------------------------------------------------------------------

  insertSnapshot(s: Omit<SnapshotView, 'createdAt'>): SnapshotView {
    this.db
      .prepare('INSERT INTO snapshots (id,name,volume_id,backend,pool,size,status,backup_id,created_at) VALUES (?,?,?,?,?,?,?,?,?)')
      .run(s.id, s.name, s.volumeId, s.backend, s.pool, s.size, s.status, s.backupId, now());
    return this.snapshot(s.id);
  }

  findSnapshot(id: string): SnapshotView | null {
    const r = this.db.prepare('SELECT * FROM snapshots WHERE id = ?').get(id) as Row | undefined;
    return r ? toSnapshot(r) : null;
  }

  snapshot(id: string): SnapshotView {
    const s = this.findSnapshot(id);
    if (!s) throw new SnapshotNotFound(`snapshot '${id}' not found`);
    return s;
  }

  listSnapshots(volumeId?: string): SnapshotView[] {
    const rows = volumeId
      ? this.db.prepare('SELECT * FROM snapshots WHERE volume_id = ? ORDER BY created_at, id').all(volumeId)
      : this.db.prepare('SELECT * FROM snapshots ORDER BY created_at, id').all();
    return (rows as Row[]).map(toSnapshot);
  }

  setSnapshotStatus(id: string, status: SnapshotView['status']): void {
    this.db.prepare('UPDATE snapshots SET status = ? WHERE id = ?').run(status, id);
  }

  deleteSnapshotRecord(id: string): void {
    this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(id);
  }

  // ---- backups -------------------------------------------------------------------------

  insertBackup(b: {
    id: string;
    name: string;
    volumeId: string;
    snapshotId: string | null;
    target: string;
    status: BackupStatus;
    size: number;
    location: BackupLocation | null;
    workflowId: string | null;
    sourcePreviousStatus: VolumeStatus | null;
    parentId?: string | null;
  }): BackupRecord {
    const t = now();
    this.db
      .prepare(
        'INSERT INTO backups (id,name,volume_id,snapshot_id,target,status,size,location,workflow_id,source_previous_status,parent_id,created_at,updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)',
      )
      .run(b.id, b.name, b.volumeId, b.snapshotId, b.target, b.status, b.size, b.location ? JSON.stringify(b.location) : null, b.workflowId, b.sourcePreviousStatus, b.parentId ?? null, t, t);
    return this.backup(b.id);
  }

  findBackup(id: string): BackupRecord | null {
    const r = this.db.prepare('SELECT * FROM backups WHERE id = ?').get(id) as Row | undefined;
    return r ? toBackup(r) : null;
  }

  backup(id: string): BackupRecord {
    const b = this.findBackup(id);
    if (!b) throw new BackupNotFound(`backup '${id}' not found`);
    return b;
  }

  /** Backups built on top of this one (incrementals), which keep it from being deleted. */
  dependentsOf(id: string): BackupRecord[] {
    return (this.db.prepare('SELECT * FROM backups WHERE parent_id = ? ORDER BY created_at, id').all(id) as Row[]).map(toBackup);
  }

  listBackups(volumeId?: string): BackupRecord[] {
    const rows = volumeId
      ? this.db.prepare('SELECT * FROM backups WHERE volume_id = ? ORDER BY created_at, id').all(volumeId)
      : this.db.prepare('SELECT * FROM backups ORDER BY created_at, id').all();
    return (rows as Row[]).map(toBackup);
  }

  transitionBackup(
    id: string,
    from: readonly BackupStatus[],
    to: BackupStatus,
    fields: { error?: string | null; storedBytes?: number; method?: string; node?: string; parentId?: string } = {},
  ): BackupRecord {
    return this.tx(() => {
      const b = this.backup(id);
      if (!from.includes(b.status)) {
        throw new InvalidStatus(`backup '${id}' is '${b.status}'${b.error ? ` (${b.error})` : ''}; this needs it to be ${from.map((s) => `'${s}'`).join(' or ')}`);
      }
      this.db
        .prepare(
          'UPDATE backups SET status = ?, error = ?, stored_bytes = COALESCE(?, stored_bytes), method = COALESCE(?, method), node = COALESCE(?, node), parent_id = COALESCE(?, parent_id), updated_at = ? WHERE id = ?',
        )
        .run(to, fields.error ?? null, fields.storedBytes ?? null, fields.method ?? null, fields.node ?? null, fields.parentId ?? null, now(), id);
      return this.backup(id);
    });
  }

  deleteBackupRecord(id: string): void {
    this.db.prepare('DELETE FROM backups WHERE id = ?').run(id);
  }
}
