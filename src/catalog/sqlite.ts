/**
 * The embedded catalog: one SQLite file under stateDir, shared by the CLI and workers of
 * one host. WAL plus a busy timeout lets several processes use it; BEGIN IMMEDIATE takes
 * the write lock up front, so a transaction's reads and writes see no other writer.
 *
 * libsql's API is synchronous while the Catalog is async: a transaction stays open across
 * awaits, so this process's other callers wait on a lock instead of slipping their
 * statements into someone else's transaction. Calls made within the transaction's async
 * context (on this object or the one fn is given) belong to it.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import Database from 'libsql';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Catalog } from './catalog.js';
import { MIGRATIONS, MIGRATIONS_TABLE, statements } from './migrations.js';
import { SqlCatalog, type Executor, type Row } from './sql.js';

/** A FIFO lock: one holder at a time, in order of asking. */
class Lock {
  private tail: Promise<void> = Promise.resolve();
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const before = this.tail;
    let release!: () => void;
    this.tail = new Promise((r) => (release = r));
    await before;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

function runOn(db: Database.Database): Executor {
  return (sql, params) => {
    const stmt = db.prepare(sql);
    if (stmt.reader) return Promise.resolve(stmt.all(...params) as Row[]);
    stmt.run(...params);
    return Promise.resolve([]);
  };
}

export class SqliteCatalog extends SqlCatalog {
  readonly describe: string;
  private readonly db: Database.Database;
  private readonly lock = new Lock();
  private readonly direct: Executor;
  /** Set inside a transaction's async context: its statements skip the lock it holds. */
  private readonly inTx = new AsyncLocalStorage<true>();
  protected readonly exec: Executor = (sql, params) => (this.inTx.getStore() ? this.direct(sql, params) : this.lock.run(() => this.direct(sql, params)));

  private constructor(readonly file: string) {
    super();
    this.describe = `sqlite ${file}`;
    mkdirSync(dirname(file), { recursive: true });
    // libsql's timeout is in milliseconds (as better-sqlite3's).
    this.db = new Database(file, { timeout: 15_000 });
    this.db.pragma('busy_timeout = 15000');
    this.direct = runOn(this.db);
  }

  /**
   * Processes opening a new file together: switching it to WAL (and creating the migrations
   * table while it is not WAL yet) needs a lock another one may hold while waiting for a
   * lock this one holds, and SQLite then answers "database is locked" at once instead of
   * waiting (its deadlock rule). Those steps are retried for as long as the busy timeout.
   */
  private static async retryBusy<T>(fn: () => T): Promise<T> {
    const deadline = Date.now() + 15_000;
    for (let wait = 5; ; wait = Math.min(wait * 2, 200)) {
      try {
        return fn();
      } catch (e) {
        const busy = (e as { code?: string }).code?.startsWith('SQLITE_BUSY') || /database is locked/.test(String((e as Error).message));
        if (!busy || Date.now() > deadline) throw e;
      }
      await new Promise((r) => setTimeout(r, wait + Math.random() * wait));
    }
  }

  /**
   * One instance per file per process, shared by its owners (a worker's runtime, the
   * CLI's, a test's): two connections of one process would wait on each other's write
   * lock synchronously, which blocks the very event loop that would release it.
   */
  private static readonly open_ = new Map<string, Promise<SqliteCatalog>>();
  private refs = 0;

  static async open(file: string): Promise<SqliteCatalog> {
    const key = resolve(file);
    let opening = SqliteCatalog.open_.get(key);
    if (!opening) {
      opening = (async () => {
        const c = new SqliteCatalog(key);
        try {
          await c.migrate();
        } catch (e) {
          // Nobody will ever close an instance that was never handed out.
          c.db.close();
          throw e;
        }
        return c;
      })();
      SqliteCatalog.open_.set(key, opening);
      void opening.catch(() => SqliteCatalog.open_.delete(key));
    }
    const c = await opening;
    // Its last owner may have closed it while this call waited for it: open the file anew.
    if (SqliteCatalog.open_.get(key) !== opening) return SqliteCatalog.open(file);
    c.refs++;
    return c;
  }

  private async migrate(): Promise<void> {
    await SqliteCatalog.retryBusy(() => this.db.pragma('journal_mode = WAL'));
    await SqliteCatalog.retryBusy(() => this.db.exec(MIGRATIONS_TABLE));
    await this.tx(async () => {
      const applied = new Set((this.db.prepare('SELECT version FROM schema_migrations').all() as Row[]).map((r) => Number(r.version)));
      for (const m of MIGRATIONS) {
        if (applied.has(m.version)) continue;
        for (const s of statements(m.sql.sqlite)) this.db.exec(s);
        this.db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?,?,?)').run(m.version, m.name, new Date().toISOString());
      }
    });
  }

  close(): Promise<void> {
    if (--this.refs > 0) return Promise.resolve();
    SqliteCatalog.open_.delete(this.file);
    this.db.close();
    return Promise.resolve();
  }

  tx<T>(fn: (c: Catalog) => Promise<T>): Promise<T> {
    if (this.inTx.getStore()) return fn(this);
    return this.lock.run(async () => {
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const r = await this.inTx.run(true, () => fn(this));
        this.db.exec('COMMIT');
        return r;
      } catch (e) {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
        throw e;
      }
    });
  }
}
