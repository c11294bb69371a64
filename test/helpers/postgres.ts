/**
 * A real PostgreSQL for the catalog tests, from Debian's server packages (`npm run setup`
 * installs them): initdb on a temporary directory, pg_ctl on a free loopback port, the
 * socket inside that directory. Never the system's own cluster, whether it runs or not.
 *
 * TCP asks for a SCRAM password, so the client's password-file path is what the tests use;
 * the superuser comes in over the unix socket without one (only root and `postgres` can
 * reach the socket directory). The suite starts one server (test/global-setup.ts) and each
 * test file takes its own database from it with `freshDatabase()`.
 */
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { appendFile, chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import pg from 'pg';
import { freePort } from '../../src/dev/devserver.js';
import { cleanupOnExit } from './minio.js';

/** What global-setup provides to every test file (`inject('postgres')`): strings only, as provide() needs. */
export interface ProvidedPostgres {
  /** The `gbackup` database as the `gbackup` role over TCP; no password inside. */
  url: string;
  /** The `gbackup` role's password, alone in a file (mode 0600, no trailing newline). */
  passwordFile: string;
  /** The superuser over the unix socket, no password needed: for CREATE DATABASE and the like. */
  adminUrl: string;
}

export interface PostgresServer extends ProvidedPostgres {
  password: string;
  port: number;
  /** The temporary directory holding data, socket, log and password file; gone after stop(). */
  dir: string;
  /** The postmaster's pid. */
  pid: number;
  /** Makes database `name` owned by the `gbackup` role; returns its url (no password inside). */
  createDatabase(name: string): Promise<string>;
  /** Immediate shutdown, then kills whatever is left, and removes `dir`. Safe to call twice. */
  stop(): Promise<void>;
}

/** The role the tests' catalog connects as, and its first database. */
const APP_ROLE = 'gbackup';
const SERVER_USER = 'postgres';

/** Debian installs each major version side by side; the highest one with a pg_ctl wins. */
export function postgresBinDir(): string {
  const fromEnv = process.env.GBACKUP_POSTGRES_BIN_DIR;
  if (fromEnv) return fromEnv;
  const root = '/usr/lib/postgresql';
  let versions: number[] = [];
  try {
    versions = readdirSync(root)
      .filter((v) => /^\d+$/.test(v) && isFile(join(root, v, 'bin', 'pg_ctl')))
      .map(Number)
      .sort((a, b) => b - a);
  } catch {
    // no PostgreSQL at all: reported below
  }
  if (versions[0] === undefined) throw new Error(`no PostgreSQL server under ${root}/<version>/bin; run 'npm run setup' first`);
  return join(root, String(versions[0]), 'bin');
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** The server refuses to run as root: as root, every server command runs as the `postgres` system user. */
function asServerUser(command: string, args: string[]): [string, string[]] {
  if (process.getuid?.() !== 0) return [command, args];
  return ['setpriv', [`--reuid=${SERVER_USER}`, `--regid=${SERVER_USER}`, '--init-groups', '--', command, ...args]];
}

async function serverUserIds(): Promise<{ uid: number; gid: number } | null> {
  if (process.getuid?.() !== 0) return null;
  const { stdout, exitCode } = await execa('getent', ['passwd', SERVER_USER], { reject: false });
  const [, , uid, gid] = stdout.split(':');
  if (exitCode !== 0 || uid === undefined || gid === undefined) {
    throw new Error(`no '${SERVER_USER}' system user (Debian's postgresql package creates it); run 'npm run setup' first`);
  }
  return { uid: Number(uid), gid: Number(gid) };
}

/** Parent pid from /proc/<pid>/stat; the command name may hold spaces and parentheses, so split after the last ')'. */
function procStat(pid: number): { ppid: number; state: string } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return state === undefined || ppid === undefined ? null : { state, ppid: Number(ppid) };
  } catch {
    return null;
  }
}

/** A zombie counts as gone: it runs nothing, and no init may be reaping orphans in a container. */
export function isAlive(pid: number): boolean {
  const s = procStat(pid);
  return s !== null && s.state !== 'Z';
}

/** Live children of `pid` (a postmaster's backends and auxiliary processes). */
export function childPids(pid: number): number[] {
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .map(Number)
    .filter((p) => procStat(p)?.ppid === pid && isAlive(p));
}

function readPostmasterPid(dataDir: string): number | null {
  try {
    const first = readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0];
    return first && /^\d+$/.test(first) ? Number(first) : null;
  } catch {
    return null;
  }
}

function killAll(pids: number[]): void {
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

const DATABASE_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

function databaseUrl(appUrl: string, name: string): string {
  const u = new URL(appUrl);
  u.pathname = `/${name}`;
  return u.toString();
}

/** CREATE DATABASE cannot take parameters, so the name is checked instead and quoted anyway. */
async function createDatabaseVia(adminUrl: string, appUrl: string, name: string): Promise<string> {
  if (!DATABASE_NAME.test(name)) throw new Error(`database name '${name}' must match ${String(DATABASE_NAME)}`);
  const owner = decodeURIComponent(new URL(appUrl).username);
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE "${name}" OWNER ${admin.escapeIdentifier(owner)}`);
  } finally {
    await admin.end();
  }
  return databaseUrl(appUrl, name);
}

/**
 * A database of its own for one test file, on the suite's server: given what global-setup
 * provided (by default `inject('postgres')`). Nothing drops it; the server goes at the end.
 */
export async function freshDatabase(provided?: ProvidedPostgres): Promise<{ url: string; passwordFile: string }> {
  // Imported here, not at the top: global-setup imports this module outside any test file.
  const p = provided ?? (await import('vitest')).inject('postgres');
  const url = await createDatabaseVia(p.adminUrl, p.url, `gbackup_test_${randomBytes(6).toString('hex')}`);
  return { url, passwordFile: p.passwordFile };
}

export interface StartPostgresOptions {
  /** Where the temporary directory goes (default: the OS temp dir); the `postgres` user must be able to traverse it. */
  baseDir?: string;
}

export async function startPostgres(opts: StartPostgresOptions = {}): Promise<PostgresServer> {
  const bin = postgresBinDir();
  const ids = await serverUserIds();
  const dir = await mkdtemp(join(opts.baseDir ?? tmpdir(), 'gbackup-pg-'));
  const dataDir = join(dir, 'data');
  const socketDir = join(dir, 'sock');
  const logFile = join(dir, 'postgres.log');
  const passwordFile = join(dir, 'password');
  const pgCtl = join(bin, 'pg_ctl');
  let pid: number | null = null;
  let stopped = false;

  const pgCtlStopArgs = ['stop', '-D', dataDir, '-m', 'immediate', '-w', '-t', '20', '-s'];
  // Should the process end without stop() (killed, crashed, process.exit): pg_ctl daemonizes the
  // server, so nothing else would stop it. Synchronous, as exit handlers must be.
  const forget = cleanupOnExit(() => {
    const [cmd, args] = asServerUser(pgCtl, pgCtlStopArgs);
    spawnSync(cmd, args, { stdio: 'ignore', cwd: '/', timeout: 20_000 });
    if (pid !== null) killAll([pid, ...childPids(pid)]);
    rmSync(dir, { recursive: true, force: true });
  });

  const stop = async () => {
    if (stopped) return;
    stopped = true;
    forget();
    const running = pid ?? readPostmasterPid(dataDir);
    const children = running === null ? [] : childPids(running);
    const [cmd, args] = asServerUser(pgCtl, pgCtlStopArgs);
    await execa(cmd, args, { reject: false, stdin: 'ignore', cwd: '/' });
    // pg_ctl gives up after its timeout, or there may be no pid file to go by: kill by pid then.
    const leftovers = () => (running === null ? [] : [running, ...children].filter(isAlive));
    for (let i = 0; i < 50 && leftovers().length > 0; i++) {
      killAll(leftovers());
      await sleep(100);
    }
    if (leftovers().length > 0) throw new Error(`postgres processes ${leftovers().join(', ')} survived SIGKILL`);
    await rm(dir, { recursive: true, force: true });
  };

  const serverLog = async () => (await readFile(logFile, 'utf8').catch(() => '')).slice(-3000);
  const run = async (command: string, args: string[]) => {
    const [cmd, argv] = asServerUser(command, args);
    // cwd: the postgres user may not be allowed into the caller's working directory.
    const r = await execa(cmd, argv, { reject: false, stdin: 'ignore', cwd: dir, all: true });
    return r.exitCode === 0 ? null : `${command} ${args.join(' ')} failed (exit ${r.exitCode}): ${r.all}`;
  };

  try {
    await mkdir(socketDir);
    if (ids) {
      await chown(dir, ids.uid, ids.gid);
      await chown(socketDir, ids.uid, ids.gid);
    }
    await chmod(socketDir, 0o700);
    const reachable = await run('test', ['-w', dir]);
    if (reachable) throw new Error(`the '${SERVER_USER}' user cannot write ${dir} (is a parent directory closed to it? set TMPDIR): ${reachable}`);

    const initdb = await run(join(bin, 'initdb'), ['-D', dataDir, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--no-locale', '--no-sync', '--no-instructions']);
    if (initdb) throw new Error(initdb);
    // Written whole: TCP only with a password; the socket for the superuser (the directory is closed to others).
    await writeFile(join(dataDir, 'pg_hba.conf'), ['local all all trust', 'host all all 127.0.0.1/32 scram-sha-256', ''].join('\n'));
    await appendFile(
      join(dataDir, 'postgresql.conf'),
      [
        '',
        '# gbackup test server: throwaway data, so durability is traded for speed.',
        "listen_addresses = '127.0.0.1'",
        `unix_socket_directories = '${socketDir}'`,
        "password_encryption = 'scram-sha-256'",
        'fsync = off',
        'synchronous_commit = off',
        'full_page_writes = off',
        // Every test file and each of its worker processes holds a pool of its own.
        'max_connections = 300',
        '',
      ].join('\n'),
    );

    // freePort() only says the port was free a moment ago: another process may take it before
    // the server binds, so try again on a new one then.
    let port = 0;
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      await appendFile(join(dataDir, 'postgresql.conf'), `port = ${port}\n`);
      const started = await run(pgCtl, ['start', '-D', dataDir, '-l', logFile, '-w', '-t', '60', '-s']);
      if (!started) break;
      const log = await serverLog();
      if (attempt < 3 && /could not bind|Address already in use/i.test(log)) continue;
      throw new Error(`${started}\n${log}`);
    }
    pid = readPostmasterPid(dataDir);
    if (pid === null) throw new Error(`postgres started but wrote no pid file:\n${await serverLog()}`);

    // URL-safe characters only, so the password fits in SQL and in a URL should a test need one.
    const password = randomBytes(24).toString('base64url');
    const adminUrl = `postgres://postgres@localhost:${port}/postgres?host=${encodeURIComponent(socketDir)}`;
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    try {
      await admin.query(`CREATE ROLE ${APP_ROLE} LOGIN PASSWORD ${admin.escapeLiteral(password)}`);
      await admin.query(`CREATE DATABASE ${APP_ROLE} OWNER ${APP_ROLE}`);
    } finally {
      await admin.end();
    }
    await writeFile(passwordFile, password, { mode: 0o600 });
    const url = `postgres://${APP_ROLE}@127.0.0.1:${port}/${APP_ROLE}`;
    return {
      url,
      password,
      passwordFile,
      port,
      adminUrl,
      dir,
      pid,
      createDatabase: (name) => createDatabaseVia(adminUrl, url, name),
      stop,
    };
  } catch (e) {
    await stop().catch(() => {});
    throw e;
  }
}
