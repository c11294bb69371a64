// The PostgreSQL harness the catalog tests stand on: the suite's server takes the password from
// the provided file and nothing else, hands out databases of their own, and a server that is
// stopped leaves no process, no listener and no directory behind.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createConnection } from 'node:net';
import { describe, it, expect, inject, afterAll } from 'vitest';
import pg from 'pg';
import { portIsFree } from '../src/dev/devserver.js';
import { childPids, freshDatabase, isAlive, startPostgres, type PostgresServer } from './helpers/postgres.js';

const provided = inject('postgres');
const password = () => readFileSync(provided.passwordFile, 'utf8');

/**
 * Fields, not `connectionString`: node-postgres lets the string's fields override the others, and
 * a URL without a password parses to password '', so `{ connectionString, password }` sends none.
 */
function clientConfig(url: string, pw?: string): pg.ClientConfig {
  const u = new URL(url);
  return {
    host: u.hostname,
    port: Number(u.port),
    user: decodeURIComponent(u.username),
    database: decodeURIComponent(u.pathname.slice(1)),
    ...(pw !== undefined ? { password: pw } : {}),
  };
}

async function query<T extends pg.QueryResultRow>(url: string, pw: string, sql: string): Promise<T[]> {
  const client = new pg.Client(clientConfig(url, pw));
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

/** Pids whose command line names `dir`: the postmaster runs with `-D <dir>/data`. */
function processesMentioning(dir: string): number[] {
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e) && Number(e) !== process.pid)
    .filter((e) => {
      try {
        return readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(dir);
      } catch {
        return false;
      }
    })
    .map(Number)
    .filter(isAlive);
}

async function connectionRefused(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = createConnection({ host: '127.0.0.1', port }, () => {
      s.destroy();
      res(false);
    });
    s.on('error', (e: NodeJS.ErrnoException) => res(e.code === 'ECONNREFUSED'));
  });
}

describe('the suite PostgreSQL server', () => {
  it('keeps the password out of the url and in a file only its owner reads', () => {
    expect(new URL(provided.url).password).toBe('');
    expect(new URL(provided.adminUrl).password).toBe('');
    expect(statSync(provided.passwordFile).mode & 0o777).toBe(0o600);
    expect(password()).toMatch(/^\S{16,}$/);
  });

  it('lets the gbackup role in with the password from the file', async () => {
    const [row] = await query<{ db: string; role: string; superuser: string }>(
      provided.url,
      password(),
      "SELECT current_database() AS db, current_user AS role, current_setting('is_superuser') AS superuser",
    );
    expect(row).toEqual({ db: 'gbackup', role: 'gbackup', superuser: 'off' });
  });

  it('refuses a wrong password and a missing one', async () => {
    await expect(query(provided.url, `${password()}x`, 'SELECT 1')).rejects.toMatchObject({ code: '28P01' });
    const noPassword = new pg.Client(clientConfig(provided.url));
    await expect(noPassword.connect()).rejects.toThrow();
    await noPassword.end().catch(() => {});
  });

  it('refuses the superuser over TCP: it has no password', async () => {
    const { port } = new URL(provided.url);
    await expect(query(`postgres://postgres@127.0.0.1:${port}/postgres`, password(), 'SELECT 1')).rejects.toMatchObject({ code: '28P01' });
  });

  it('gives each caller a fresh database the gbackup role owns and can write', async () => {
    const a = await freshDatabase();
    const b = await freshDatabase(provided);
    expect(a.url).not.toBe(b.url);
    expect(a.passwordFile).toBe(provided.passwordFile);
    expect(new URL(a.url).password).toBe('');
    const pw = readFileSync(a.passwordFile, 'utf8');
    await query(a.url, pw, 'CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)');
    const [row] = await query<{ db: string; n: number }>(a.url, pw, 'SELECT current_database() AS db, count(*)::int AS n FROM t');
    expect(row).toEqual({ db: new URL(a.url).pathname.slice(1), n: 1 });
    // Separate databases: b does not see a's table.
    await expect(query(b.url, pw, 'SELECT * FROM t')).rejects.toMatchObject({ code: '42P01' });
  });
});

describe('a separately started server', () => {
  let server: PostgresServer | undefined;
  afterAll(async () => server?.stop());

  it('refuses a database name it would have to quote', async () => {
    server = await startPostgres();
    await expect(server.createDatabase('x"; DROP DATABASE gbackup; --')).rejects.toThrow(/must match/);
    const url = await server.createDatabase('catalog_one');
    expect(new URL(url).pathname).toBe('/catalog_one');
    const [row] = await query<{ db: string }>(url, server.password, 'SELECT current_database() AS db');
    expect(row?.db).toBe('catalog_one');
  });

  it('leaves no process, listener or directory after stop()', async () => {
    server ??= await startPostgres();
    const { port, pid, dir } = server;
    const processes = [pid, ...childPids(pid)];
    expect(processes.length, 'postmaster and its auxiliary processes').toBeGreaterThan(1);
    // A backend of an earlier connection may exit between the listing and here: the
    // postmaster and the auxiliaries still running are what stop() must end.
    expect(isAlive(pid)).toBe(true);
    expect(processes.filter(isAlive).length).toBeGreaterThan(1);
    expect(await connectionRefused(port)).toBe(false);

    await server.stop();
    await server.stop(); // twice is fine

    expect(processes.filter(isAlive)).toEqual([]);
    expect(processesMentioning(dir)).toEqual([]);
    expect(await connectionRefused(port)).toBe(true);
    expect(await portIsFree(port)).toBe(true);
    expect(existsSync(dir)).toBe(false);
  });
});
