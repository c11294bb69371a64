/**
 * Versioned schema migrations, run by every process that opens a catalog (the first one
 * to get there applies them; the others find them applied). Each migration has a text
 * per dialect; a migration once released is never edited, only followed by a new one.
 *
 * Version 1 is the schema of the unversioned catalogs made before migrations existed
 * (CREATE ... IF NOT EXISTS), so such a catalog is adopted as version 1 and moves on.
 */
export type Dialect = 'sqlite' | 'postgres';

export interface Migration {
  version: number;
  name: string;
  sql: Record<Dialect, string>;
}

// Sizes are BIGINT on PostgreSQL (volumes beyond 2 GiB); SQLite's INTEGER is 64-bit already.
const v1 = (big: string) => `
CREATE TABLE IF NOT EXISTS volumes (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, backend TEXT NOT NULL, pool TEXT,
  size ${big} NOT NULL, status TEXT NOT NULL, previous_status TEXT, error TEXT,
  instance TEXT, owner TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, volume_id TEXT NOT NULL, backend TEXT NOT NULL, pool TEXT,
  size ${big} NOT NULL, status TEXT NOT NULL, backup_id TEXT, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS backups (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, volume_id TEXT NOT NULL, snapshot_id TEXT,
  target TEXT NOT NULL, status TEXT NOT NULL, size ${big} NOT NULL, stored_bytes ${big} NOT NULL DEFAULT 0,
  method TEXT, node TEXT, location TEXT, error TEXT, workflow_id TEXT,
  source_previous_status TEXT, parent_id TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS backups_volume ON backups(volume_id);
`;

// Listings page by (created_at, id) and deletes ask for dependents by parent_id: with
// ten thousand backups both must be index lookups, not scans.
const v2 = `
CREATE INDEX IF NOT EXISTS backups_created ON backups(created_at, id);
CREATE INDEX IF NOT EXISTS backups_parent ON backups(parent_id);
CREATE INDEX IF NOT EXISTS snapshots_volume ON snapshots(volume_id);
`;

// An instance attachment lives on one node (its loop device is there): detach must go there.
const v3 = 'ALTER TABLE volumes ADD COLUMN attached_node TEXT';

// How an object backup found its changes (cbt, hash + why, full): shown to operators.
const v4 = 'ALTER TABLE backups ADD COLUMN changes TEXT';

// Policies (issue 12): the policy whose schedule made a backup (retention prunes only its
// own, by the schedule slot it was taken for), the consistency group it was taken with, the backup it is a copy of, and when a
// verify last read it back whole (retention always keeps the newest verified backup).
const v5 = `
ALTER TABLE backups ADD COLUMN policy TEXT;
ALTER TABLE backups ADD COLUMN scheduled_at TEXT;
ALTER TABLE backups ADD COLUMN group_id TEXT;
ALTER TABLE backups ADD COLUMN copy_of TEXT;
ALTER TABLE backups ADD COLUMN verified_at TEXT;
CREATE INDEX IF NOT EXISTS backups_policy ON backups(policy);
CREATE INDEX IF NOT EXISTS backups_group ON backups(group_id)
`;

export const MIGRATIONS: readonly Migration[] = [
  { version: 1, name: 'volumes, snapshots, backups', sql: { sqlite: v1('INTEGER'), postgres: v1('BIGINT') } },
  { version: 2, name: 'indexes for paged listings and dependents', sql: { sqlite: v2, postgres: v2 } },
  { version: 3, name: 'node of an instance attachment', sql: { sqlite: v3, postgres: v3 } },
  { version: 4, name: 'how a backup found its changes', sql: { sqlite: v4, postgres: v4 } },
  { version: 5, name: 'policy, consistency group, copy of, verified at', sql: { sqlite: v5, postgres: v5 } },
];

export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

export const MIGRATIONS_TABLE = 'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)';

/** The statements of one migration text, one by one (node-postgres and SQLite both take one at a time here). */
export function statements(sql: string): string[] {
  return sql
    .split(';')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}
