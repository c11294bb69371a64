/**
 * A node's attachment ledger: every volume this node attaches is written here
 * before the attach and cleared after the detach. If the node dies in between, the
 * entry survives, and the node's next start detaches what no running workflow owns.
 */
import Database from 'libsql';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

export interface LedgerEntry {
  /** The connector that attached it (ConnectionInfo.protocol). */
  protocol: string;
  path: string;
  backend: string;
  workflowId: string;
  createdAt: string;
}

export class AttachmentLedger {
  private readonly db: Database.Database;

  constructor(file: string) {
    mkdirSync(dirname(file), { recursive: true });
    this.db = new Database(file, { timeout: 15 });
    this.db.pragma('journal_mode = WAL');
    // Commits reach the WAL without an fsync each (two records and two clears per copy were
    // four fsyncs on the copy's path). They survive the worker being killed, which is what the
    // ledger is for; a power loss takes the loop devices with it, and with them what an
    // unsynced record would have named.
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 15000');
    this.db.exec('CREATE TABLE IF NOT EXISTS attachments (path TEXT PRIMARY KEY, backend TEXT NOT NULL, workflow_id TEXT NOT NULL, created_at TEXT NOT NULL)');
    // Ledgers written before connectors were chosen by protocol hold loop attachments only.
    const columns = this.db.prepare('PRAGMA table_info(attachments)').all() as { name: string }[];
    if (!columns.some((c) => c.name === 'protocol')) this.db.exec("ALTER TABLE attachments ADD COLUMN protocol TEXT NOT NULL DEFAULT 'file'");
  }

  record(e: Omit<LedgerEntry, 'createdAt'>): void {
    this.db
      .prepare('INSERT INTO attachments (path, protocol, backend, workflow_id, created_at) VALUES (?,?,?,?,?) ON CONFLICT(path) DO UPDATE SET workflow_id = excluded.workflow_id')
      .run(e.path, e.protocol, e.backend, e.workflowId, new Date().toISOString());
  }

  clear(path: string): void {
    this.db.prepare('DELETE FROM attachments WHERE path = ?').run(path);
  }

  entries(): LedgerEntry[] {
    return (this.db.prepare('SELECT path, protocol, backend, workflow_id AS workflowId, created_at AS createdAt FROM attachments ORDER BY created_at').all() as LedgerEntry[]).map((r) => ({ ...r }));
  }

  close(): void {
    this.db.close();
  }
}
