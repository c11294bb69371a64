/**
 * The catalog: volumes, snapshots and backups with their statuses. Two implementations
 * share one SQL body (sql.ts): embedded SQLite under stateDir for one host (the default,
 * nothing to set up), and PostgreSQL for a control plane that spans hosts. Every status
 * transition is one conditional UPDATE (`... WHERE status IN (...)`), atomic on both, so
 * two workers, on one host or on several, can never both claim a volume.
 */
import type { BackupStatus, BackupView, SnapshotInfo, VolumeStatus, VolumeView } from '../api.js';

/** A snapshot as the catalog keeps it (the public shape, api.ts). */
export type SnapshotView = SnapshotInfo;

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

/** A page of a listing: `next` is the cursor of the following page, null after the last. */
export interface Page<T> {
  items: T[];
  next: string | null;
}

export interface PageRequest {
  /** The `next` of the previous page; absent for the first. */
  after?: string | null;
  limit: number;
}

export type NewVolume = Omit<VolumeView, 'createdAt' | 'updatedAt' | 'error' | 'instance' | 'attachedNode'> & { error?: string | null; owner?: string | null };

/** A backup row to insert: the identity fields of the view, plus what an import or a migration keeps. */
export type NewBackup = Pick<BackupView, 'id' | 'name' | 'volumeId' | 'snapshotId' | 'target' | 'status' | 'size' | 'workflowId'> & {
  location: BackupLocation | null;
  sourcePreviousStatus: VolumeStatus | null;
  parentId?: string | null;
  /** Kept as given by a migration or an import; now otherwise. */
  createdAt?: string;
  storedBytes?: number;
  method?: string | null;
  node?: string | null;
  error?: string | null;
  /** The policy whose schedule started the backup; the consistency group it was taken with; the backup it copies. */
  policy?: string | null;
  /** The schedule slot (nominal time) a policy's backup was taken for. */
  scheduledAt?: string | null;
  groupId?: string | null;
  copyOf?: string | null;
};

export interface VolumeTransition {
  error?: string | null;
  rememberPrevious?: boolean;
  instance?: string | null;
  /** The node holding an instance attachment's block device. */
  attachedNode?: string | null;
  owner?: string | null;
}

export interface BackupFields {
  error?: string | null;
  storedBytes?: number;
  method?: string;
  node?: string;
  parentId?: string;
  changes?: string;
}

export interface Catalog {
  /** 'sqlite' or 'postgres', and where: for messages (never the password). */
  readonly describe: string;
  close(): Promise<void>;
  /**
   * Runs fn in one transaction; the catalog it gets is bound to that transaction. A tx
   * inside a tx joins it. Needed where several writes must land together.
   */
  tx<T>(fn: (c: Catalog) => Promise<T>): Promise<T>;
  /** Schema version after the migrations ran at open. */
  schemaVersion(): Promise<number>;

  insertVolume(v: NewVolume): Promise<VolumeView>;
  findVolume(id: string): Promise<VolumeView | null>;
  volume(id: string): Promise<VolumeView>;
  volumePreviousStatus(id: string): Promise<VolumeStatus | null>;
  /** The workflow that holds the volume in a busy status, so its retried steps recognise their own claim. */
  volumeOwner(id: string): Promise<string | null>;
  listVolumes(): Promise<VolumeView[]>;
  /**
   * Moves a volume from one of `from` to `to`, atomically. Throws InvalidStatus naming
   * the current status when the volume is elsewhere, so callers never act on a stale read.
   */
  transitionVolume(id: string, from: readonly VolumeStatus[], to: VolumeStatus, opts?: VolumeTransition): Promise<VolumeView>;
  deleteVolumeRecord(id: string): Promise<void>;

  insertSnapshot(s: Omit<SnapshotView, 'createdAt'> & { createdAt?: string }): Promise<SnapshotView>;
  findSnapshot(id: string): Promise<SnapshotView | null>;
  snapshot(id: string): Promise<SnapshotView>;
  listSnapshots(volumeId?: string): Promise<SnapshotView[]>;
  setSnapshotStatus(id: string, status: SnapshotView['status']): Promise<void>;
  deleteSnapshotRecord(id: string): Promise<void>;

  insertBackup(b: NewBackup): Promise<BackupRecord>;
  findBackup(id: string): Promise<BackupRecord | null>;
  backup(id: string): Promise<BackupRecord>;
  /** Backups built on top of this one (incrementals), which keep it from being deleted. */
  dependentsOf(id: string): Promise<BackupRecord[]>;
  listBackups(volumeId?: string): Promise<BackupRecord[]>;
  /** The backups a policy's runs made (and copied), oldest first. */
  listPolicyBackups(policy: string): Promise<BackupRecord[]>;
  /** One page of backups, oldest first; for listings too large for one message. */
  pageBackups(filter: { volumeId?: string }, page: PageRequest): Promise<Page<BackupRecord>>;
  countBackups(): Promise<number>;
  transitionBackup(id: string, from: readonly BackupStatus[], to: BackupStatus, fields?: BackupFields): Promise<BackupRecord>;
  /** Records that a verify read the whole backup back and found it sound. */
  markBackupVerified(id: string, at: string): Promise<void>;
  deleteBackupRecord(id: string): Promise<void>;

  /**
   * Every row of a table with all its columns as stored (ordered by id), for copying a
   * catalog to another database (migrate.ts): the views leave out columns such as owner
   * and previous_status that a copy must keep. Sizes come back as numbers on both drivers.
   */
  dumpRows(table: CatalogTable): Promise<TableRow[]>;
  /** Inserts rows as dumpRows gives them; a column the table does not have is refused. */
  loadRows(table: CatalogTable, rows: readonly TableRow[]): Promise<void>;
}

export type CatalogTable = 'volumes' | 'snapshots' | 'backups';

/** A row as the database stores it: column name to TEXT, INTEGER or NULL. */
export type TableRow = Record<string, string | number | null>;

/** The public view of a backup record (what `--json` prints). */
export function backupView(b: BackupRecord): BackupView {
  const { location: _l, sourcePreviousStatus: _s, ...view } = b;
  return view;
}
