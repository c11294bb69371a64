/**
 * A local Temporal dev server (`temporal server start-dev`) with gbackup's search
 * attributes registered and SQLite persistence, for the demo, `gbackup dev` and tests.
 * The binary is the one `npm run setup` builds into .tools/bin; nothing is downloaded.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { SEARCH_ATTRIBUTES } from '../api.js';

/** The repository (or installed package) root: the nearest directory above with a package.json. */
export const repoRoot = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
})();

export function temporalBinary(): string {
  const p = process.env.GBACKUP_TEMPORAL_BIN ?? join(repoRoot, '.tools', 'bin', 'temporal');
  if (!existsSync(p)) throw new Error(`Temporal CLI not found at ${p}; run 'npm run setup' first`);
  return p;
}

export interface DevServerOptions {
  port?: number;
  uiPort?: number | null;
  /** SQLite file: the server's state survives a restart (tests restart it). */
  dbFile: string;
  ip?: string;
  log?: (line: string) => void;
  /** Register gbackup's search attributes at start (default); false gives a plain server, as an existing namespace may be. */
  searchAttributes?: boolean;
}

export interface DevServer {
  address: string;
  uiUrl: string | null;
  stop(): Promise<void>;
  /** Stops and starts again on the same port and database. */
  restart(): Promise<void>;
}

async function waitForPort(host: string, port: number, timeoutMs: number, proc: ResultPromise): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`temporal dev server exited with code ${proc.exitCode}`);
    const ok = await new Promise<boolean>((res) => {
      const s = createConnection({ host, port }, () => {
        s.destroy();
        res(true);
      });
      s.on('error', () => res(false));
    });
    if (ok) return;
    await sleep(200);
  }
  throw new Error(`temporal dev server did not listen on ${host}:${port} within ${timeoutMs} ms`);
}

/** A free TCP port on loopback. */
export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? res(addr.port) : rej(new Error('no port'))));
    });
  });
}

export async function portIsFree(port: number): Promise<boolean> {
  return new Promise((res) => {
    const srv = createServer();
    srv.once('error', () => res(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => res(true)));
  });
}

export async function startDevServer(opts: DevServerOptions): Promise<DevServer> {
  const ip = opts.ip ?? '127.0.0.1';
  // The dev server binds all its services to --ip but has them dial each other at 127.0.0.1:
  // on any other single address it listens and then fails every call, so say so at once.
  if (!['127.0.0.1', 'localhost', '0.0.0.0'].includes(ip)) {
    throw new Error(`the Temporal dev server cannot listen on ${ip} alone (its services reach each other at 127.0.0.1); use 127.0.0.1, or 0.0.0.0 for every address`);
  }
  const port = opts.port ?? (await freePort());
  const uiPort = opts.uiPort === null ? null : (opts.uiPort ?? (await freePort()));
  mkdirSync(dirname(opts.dbFile), { recursive: true });
  const args = [
    'server',
    'start-dev',
    '--ip',
    ip,
    '--port',
    String(port),
    '--db-filename',
    opts.dbFile,
    // Commits go to a write-ahead log without an fsync each. By default every history write
    // of the dev server's SQLite is an fsync'd rollback-journal commit: measured here, ~40 ms
    // of a small backup's ~120 ms of orchestration (80 ms with these). What is committed
    // still survives the server being killed (the log is in the file system); a power loss
    // can take the last moments of history, never the database. Production runs a Temporal
    // cluster on its own database (docker-compose.yml), not this server.
    '--sqlite-pragma',
    'journal_mode=wal',
    '--sqlite-pragma',
    'synchronous=normal',
    '--log-level',
    'error',
    ...(uiPort === null ? ['--headless'] : ['--ui-port', String(uiPort)]),
    ...(opts.searchAttributes === false ? [] : Object.values(SEARCH_ATTRIBUTES).flatMap((k) => ['--search-attribute', `${k.name}=Keyword`])),
    // The dev server has one history shard, and its transfer queue polls at most 20
    // times a second by default: every step of a saga then waits ~50 ms for dispatch
    // (measured: a no-op activity 102 ms -> 10 ms with this raised).
    '--dynamic-config-value',
    'history.transferProcessorMaxPollRPS=1000',
    // Activities on the workflow's own task queue start in the same round trip.
    '--dynamic-config-value',
    'system.enableActivityEagerExecution=true',
  ];
  let proc: ResultPromise | undefined;
  const launch = async () => {
    proc = execa(temporalBinary(), args, { reject: false, stdin: 'ignore', buffer: false, cleanup: true });
    proc.stderr?.on('data', (d: Buffer) => opts.log?.(d.toString()));
    await waitForPort(ip, port, 60_000, proc);
    // The frontend listens before namespaces are ready; give it a moment to settle.
    await sleep(500);
  };
  const stop = async () => {
    if (!proc || proc.exitCode !== null) return;
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc?.kill('SIGKILL'), 10_000);
    await proc;
    clearTimeout(t);
  };
  await launch();
  return {
    address: `${ip}:${port}`,
    uiUrl: uiPort === null ? null : `http://${ip}:${uiPort}`,
    stop,
    async restart() {
      await stop();
      await launch();
    },
  };
}
