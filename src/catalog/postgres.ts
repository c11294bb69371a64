/**
 * The shared catalog: PostgreSQL, for control workers (and CLIs' worker calls) on several
 * hosts. Status transitions are conditional UPDATEs, so under READ COMMITTED two hosts
 * racing for one volume see exactly one winner; multi-statement changes run in one
 * transaction on one pooled connection. Migrations run under an advisory lock, so workers
 * starting together apply each exactly once.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { readFile } from 'node:fs/promises';
import pg from 'pg';
import type { Catalog } from './catalog.js';
import { MIGRATIONS, MIGRATIONS_TABLE, statements } from './migrations.js';
import { SqlCatalog, type Executor, type Row } from './sql.js';
import { CatalogUnavailable, InvalidConfig } from '../errors.js';

/** Any constant works; it only has to be gbackup's own among the database's advisory locks. */
const MIGRATION_LOCK = 0x67626b70; // 'gbkp'

/** `?` placeholders to PostgreSQL's `$1, $2, ...` (the catalog's SQL has no `?` inside literals). */
export function numbered(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable url)';
  }
}

function withPassword(url: string, password: string): string {
  const u = new URL(url);
  u.password = encodeURIComponent(password);
  return u.toString();
}

export interface PostgresOptions {
  url: string;
  passwordFile?: string;
  poolSize?: number;
}

/** Connection errors (refused, unknown host, bad password, no database) are the operator's to fix: said plainly. */
function unavailable(e: unknown, where: string): Error {
  const err = e as Error & { code?: string };
  const code = err.code ?? '';
  if (['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ETIMEDOUT', 'EAI_AGAIN', '28P01', '28000', '3D000'].includes(code)) {
    return new CatalogUnavailable(`catalog ${where} unavailable: ${err.message}${code ? ` (${code})` : ''}`);
  }
  return err;
}

export class PostgresCatalog extends SqlCatalog {
  readonly describe: string;
  private readonly inTx = new AsyncLocalStorage<pg.PoolClient>();
  protected readonly exec: Executor = async (sql, params) => {
    const client = this.inTx.getStore();
    const text = numbered(sql);
    try {
      const r = client ? await client.query(text, params as unknown[]) : await this.pool.query(text, params as unknown[]);
      return r.rows as Row[];
    } catch (e) {
      throw unavailable(e, this.describe);
    }
  };

  private constructor(
    private readonly pool: pg.Pool,
    url: string,
  ) {
    super();
    this.describe = `postgres ${redactUrl(url)}`;
  }

  static async open(opts: PostgresOptions): Promise<PostgresCatalog> {
    let password: string | undefined;
    if (opts.passwordFile !== undefined) {
      try {
        password = (await readFile(opts.passwordFile, 'utf8')).replace(/\r?\n$/, '');
      } catch (e) {
        throw new InvalidConfig(`catalog.passwordFile '${opts.passwordFile}' cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
    }
    const pool = new pg.Pool({
      // node-postgres lets the URL's fields override separate options (an absent password
      // parses as ''), so the password from the file goes into the URL it connects with.
      connectionString: password !== undefined ? withPassword(opts.url, password) : opts.url,
      max: opts.poolSize ?? 10,
      connectionTimeoutMillis: 10_000,
      idleTimeoutMillis: 30_000,
      application_name: 'gbackup',
    });
    // An idle client's error (the server restarted) must not crash the process; the next query reconnects.
    pool.on('error', () => undefined);
    const c = new PostgresCatalog(pool, opts.url);
    try {
      await c.migrate();
    } catch (e) {
      await pool.end().catch(() => undefined);
      throw e;
    }
    return c;
  }

  private async migrate(): Promise<void> {
    await this.tx(async () => {
      await this.exec('SELECT pg_advisory_xact_lock(?)', [MIGRATION_LOCK]);
      await this.exec(MIGRATIONS_TABLE, []);
      const applied = new Set((await this.exec('SELECT version FROM schema_migrations', [])).map((r) => Number(r.version)));
      for (const m of MIGRATIONS) {
        if (applied.has(m.version)) continue;
        for (const s of statements(m.sql.postgres)) await this.exec(s, []);
        await this.exec('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?,?,?)', [m.version, m.name, new Date().toISOString()]);
      }
    });
  }

  private closed = false;

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }

  async tx<T>(fn: (c: Catalog) => Promise<T>): Promise<T> {
    if (this.inTx.getStore()) return fn(this);
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      throw unavailable(e, this.describe);
    }
    let broken = false;
    try {
      await client.query('BEGIN');
      const r = await this.inTx.run(client, () => fn(this));
      await client.query('COMMIT');
      return r;
    } catch (e) {
      await client.query('ROLLBACK').catch(() => (broken = true));
      throw e;
    } finally {
      client.release(broken);
    }
  }
}
