/**
 * Control-plane latency now that every CLI command is a workflow on a control worker and
 * the catalog may be PostgreSQL: the same measurements on a SQLite and a PostgreSQL
 * catalog, one after the other, in one run, on one Temporal dev server.
 *
 * 1. `backup list` with 10,000 backups in the catalog (10 pages of MAX_PAGE = 1000):
 *    (a) GbackupClient.listBackups() in this process, through Temporal: 10 `lookup`
 *        workflows, each answered by a local activity on the in-process control worker;
 *    (b) the real CLI, `node bin/gbackup.js --config <client-only> backup list --json`, as
 *        a child process: (a) plus Node start-up, module loading, connecting, printing;
 *    (c) the reference: Catalog.pageBackups x10 on the same catalog, no Temporal.
 *    Interleaved a, b, c per iteration, so a drift in the machine's load weighs on all
 *    three alike. The catalog is filled straight through the catalog API (insertBackup in
 *    transactions of 1000), with a few real volumes the rows belong to. Two references
 *    to read (a) and (b) by: `gbackup --help` (Node start-up and module loading alone), and
 *    one page as its own lookup workflow taken apart from its history (server time, the
 *    workflow task that runs the local activity, the payload bytes the page puts in history).
 * 2. Start-to-first-byte of a backup of a 16 MiB volume (random data, volume target on
 *    another file backend): from just before client.startBackup() until the destination
 *    volume's image file first has blocks allocated. The image is created sparse (0 blocks)
 *    and only dd writes into it, through a loop device doing O_DIRECT on the file, so ext4
 *    allocates (and stat's st_blocks shows) the first block when dd's first write reaches
 *    the backing file, not when it is flushed. A worker thread polls stat() every
 *    POLL_MS, so the event loop running the workers is not held up and the time is exact
 *    to within one poll interval (the report gives the measured gap). The whole backup's
 *    wall time (to client.result()) is recorded too, and two waypoints: the destination
 *    image appearing (seen by the same poller) and the copy activity's start (its history
 *    event, server clock, same host).
 *
 * Warm-up runs (not counted) come first for every measurement: the first workflow of a
 * worker pays for its sandbox, the first CLI run for a cold module cache. Caches are warm
 * otherwise: this is about the control plane, and the copy uses O_DIRECT anyway. The
 * workers' periodic sweep (every timeouts.reconcileEvery = 30 s, a full listing of the
 * backups) runs as in production and may land inside a sample.
 *
 * Needs root (loop devices; PostgreSQL runs as the `postgres` user). Everything lives in a
 * temporary directory under /var/tmp (PostgreSQL's under the OS temp dir), removed at the
 * end with its loop devices, the workers, the dev server and PostgreSQL.
 * BENCH_RUNS=n (default 20) sets the samples per measurement; BENCH_ROWS=n the catalog rows.
 * Writes var/bench/controlplane.json. Run: npm run build && node dist/bench/controlplane.js
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { Worker as Thread } from 'node:worker_threads';
import { bundleWorkflowCode } from '@temporalio/worker';
import type { WorkflowHandle } from '@temporalio/client';
import { execa } from 'execa';
import { MANAGE_WORKFLOWS, MAX_PAGE, manageWorkflowIds, workflowIds, type BackupResult, type VolumeView } from '../src/api.js';
import type { Catalog, NewBackup } from '../src/catalog/catalog.js';
import { openCatalog } from '../src/catalog/open.js';
import { GbackupClient } from '../src/client/client.js';
import { parseConfig, type LoadedConfig } from '../src/config/load.js';
import { repoRoot, startDevServer, type DevServer } from '../src/dev/devserver.js';
import { backupVolumeName } from '../src/services/target-kinds.js';
import { Volumes } from '../src/services/volumes.js';
import { MiB } from '../src/size.js';
import { installLogger } from '../src/workers/logging.js';
import { startWorkers, workflowsPath, type RunningWorkers } from '../src/workers/worker.js';
import { startPostgres, type PostgresServer } from '../test/helpers/postgres.js';
import { tsMs } from './history.js';
import { cleanupStep, detachLoopsUnder } from './cleanup.js';

const RUNS = Math.max(1, Number.parseInt(process.env.BENCH_RUNS ?? '20', 10) || 20);
const ROWS = Math.max(1, Number.parseInt(process.env.BENCH_ROWS ?? '10000', 10) || 10_000);
const WARMUP = 1;
/** `--help` runs: a side reference, and each costs a Node start-up. */
const HELP_RUNS = 5;
/** One-page lookup workflows whose histories are taken apart (median reported). */
const ANATOMY_RUNS = 5;
/** The catalog's backup rows belong to this many (real, empty) volumes. */
const VOLUMES = 5;
const BATCH = 1000;
const VOLUME_SIZE = 16 * MiB;
/** The first-byte poller's sleep between two stat() calls. */
const POLL_MS = 0.5;
const TMPFS_MAGIC = 0x01021994;
const CLI = join(repoRoot, 'bin', 'gbackup.js');

const say = (m: string) => process.stderr.write(`bench-controlplane: ${m}\n`);
const fmt = (n: number, digits = 1) => n.toFixed(digits);
const msSince = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

// ---------------------------------------------------------------------------------------------
// Statistics: nearest-rank percentiles, so p50 and p95 are samples that occurred (of 20 runs,
// the 10th and 19th fastest).

interface Stats {
  p50: number;
  p95: number;
  min: number;
  max: number;
  samples: number[];
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)]!;
}

function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  return { p50: percentile(s, 0.5), p95: percentile(s, 0.95), min: s[0]!, max: s[s.length - 1]!, samples };
}

// ---------------------------------------------------------------------------------------------
// First byte: a worker thread polls the destination image's allocated blocks.

/**
 * Plain CommonJS for an eval'd thread. It stats the file until it holds a block (or the
 * main thread raises the stop flag) and reports, on the shared monotonic clock
 * (process.hrtime), when the file appeared, the last poll that found no block and the
 * first that found one: the first write landed between those two.
 */
const POLLER = `
const { statSync } = require('node:fs');
const { parentPort, workerData } = require('node:worker_threads');
const flag = new Int32Array(workerData.stop);
let appeared = null, lastMiss = null, hit = null, polls = 0;
parentPort.postMessage({ ready: true });
while (Atomics.load(flag, 0) === 0) {
  const st = statSync(workerData.path, { throwIfNoEntry: false });
  const now = process.hrtime.bigint();
  polls++;
  if (st && appeared === null) appeared = now;
  if (st && st.blocks > 0) { hit = now; break; }
  lastMiss = now;
  Atomics.wait(flag, 0, 0, workerData.intervalMs);
}
parentPort.postMessage({ appeared, lastMiss, hit, polls });
`;

interface PollResult {
  appeared: bigint | null;
  lastMiss: bigint | null;
  hit: bigint | null;
  polls: number;
}

interface Poller {
  /** Stops polling (if it has not found a block yet) and gives what it saw. */
  finish(): Promise<PollResult>;
}

async function startPoller(path: string): Promise<Poller> {
  const stop = new SharedArrayBuffer(4);
  const thread = new Thread(POLLER, { eval: true, workerData: { path, stop, intervalMs: POLL_MS } });
  let resolveResult!: (r: PollResult) => void;
  let rejectResult!: (e: Error) => void;
  const result = new Promise<PollResult>((res, rej) => {
    resolveResult = res;
    rejectResult = rej;
  });
  const ready = new Promise<void>((res, rej) => {
    thread.on('message', (m: PollResult | { ready: true }) => ('ready' in m ? res() : resolveResult(m)));
    thread.on('error', (e) => {
      rej(e);
      rejectResult(e);
    });
  });
  await ready;
  return {
    async finish() {
      Atomics.store(new Int32Array(stop), 0, 1);
      Atomics.notify(new Int32Array(stop), 0);
      try {
        return await result;
      } finally {
        await thread.terminate();
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Workflow history: when the copy activity started (server clock, epoch ms).


interface BackupAnatomy {
  /** When the copy activity started (server clock, epoch ms). */
  copyStartedEpochMs: number;
  /** What the copy activity says it spent moving bytes (dd running), ms. */
  copyMs: number;
  events: number;
  workflowTasks: number;
  activities: number;
  localActivities: number;
}

async function backupAnatomy(handle: WorkflowHandle): Promise<BackupAnatomy> {
  const events = (await handle.fetchHistory()).events ?? [];
  const copy = new Set<string>();
  const a: BackupAnatomy = { copyStartedEpochMs: NaN, copyMs: NaN, events: events.length, workflowTasks: 0, activities: 0, localActivities: 0 };
  for (const e of events) {
    if (e.workflowTaskStartedEventAttributes) a.workflowTasks++;
    if (e.activityTaskScheduledEventAttributes) a.activities++;
    if (e.markerRecordedEventAttributes?.markerName === 'core_local_activity') a.localActivities++;
    if (e.activityTaskScheduledEventAttributes?.activityType?.name === 'copyVolume') copy.add(String(e.eventId));
    const st = e.activityTaskStartedEventAttributes;
    // An activity's started event is written with its completion; its time is still the start.
    if (st && copy.has(String(st.scheduledEventId))) a.copyStartedEpochMs = tsMs(e.eventTime);
    const done = e.activityTaskCompletedEventAttributes;
    if (done && copy.has(String(done.scheduledEventId))) {
      const data = done.result?.payloads?.[0]?.data;
      const r = data ? (JSON.parse(Buffer.from(data).toString('utf8')) as { copyMs?: number }) : {};
      a.copyMs = r.copyMs ?? NaN;
    }
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// The world, and its cleanup (also on SIGINT/SIGTERM)

interface World {
  dir: string;
  server: DevServer | null;
  postgres: PostgresServer | null;
  /** Whatever a catalog round has open: closed in reverse order. */
  closers: (() => Promise<unknown>)[];
}

let cleaned: Promise<void> | null = null;
function cleanup(w: World): Promise<void> {
  cleaned ??= (async () => {
    const step = cleanupStep(say);
    for (const close of w.closers.splice(0).reverse()) await step('round', close);
    await step('server', () => w.server?.stop());
    await step('postgres', () => w.postgres?.stop());
    await step('loop devices', () => detachLoopsUnder(w.dir));
    await step('temp dir', () => rmSync(w.dir, { recursive: true, force: true }));
  })();
  return cleaned;
}

// ---------------------------------------------------------------------------------------------
// One catalog's round

type Driver = 'sqlite' | 'postgres';

interface Round {
  catalog: Driver;
  describe: string;
  fillSeconds: number;
  rowsInCatalog: number;
  listClient: Stats;
  listCli: Stats;
  listRaw: Stats;
  page: PageAnatomy;
  rows: { client: number; cli: number; raw: number };
  firstByte: Stats;
  destCreated: Stats;
  copyActivityStarted: Stats;
  backupWall: Stats;
  copyTime: Stats;
  overhead: Stats;
  shape: BackupAnatomy;
  /** Gap between the last poll without a block and the first with one: the first byte's uncertainty. */
  pollGapMs: Stats;
}

/** The catalog row of the i-th filler backup: finished, on one of the volumes, a second after the one before. */
function fillerBackup(i: number, volumeIds: string[], node: string, base: number): NewBackup {
  const id = `bak-fill-${String(i).padStart(6, '0')}`;
  const volumeId = volumeIds[i % volumeIds.length]!;
  return {
    id,
    name: `fill-${i}`,
    volumeId,
    snapshotId: null,
    target: 'vault',
    status: 'available',
    size: VOLUME_SIZE,
    storedBytes: VOLUME_SIZE,
    method: 'generic',
    node,
    location: { backend: 'beta', pool: null, name: backupVolumeName(id) },
    workflowId: workflowIds.backup(volumeId),
    sourcePreviousStatus: 'available',
    createdAt: new Date(base + i * 1000).toISOString(),
  };
}

/** The environment without TEMPORAL_* or GBACKUP_CONFIG: the CLI must use the given config and this run's server. */
function cliEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('TEMPORAL_') && k !== 'GBACKUP_CONFIG') env[k] = v;
  return env;
}

async function cliList(configFile: string): Promise<{ ms: number; rows: number }> {
  const t0 = process.hrtime.bigint();
  const r = await execa(process.execPath, [CLI, '--config', configFile, 'backup', 'list', '--json'], { env: cliEnv(), extendEnv: false, stdin: 'ignore', maxBuffer: 512 * MiB });
  const ms = msSince(t0);
  return { ms, rows: (JSON.parse(r.stdout) as unknown[]).length };
}

async function clientList(client: GbackupClient): Promise<{ ms: number; rows: number }> {
  const t0 = process.hrtime.bigint();
  const rows = (await client.listBackups()).length;
  return { ms: msSince(t0), rows };
}

/** What the lookup activity does, without the workflow around it: every page, in order. */
async function rawList(cat: Catalog): Promise<{ ms: number; rows: number }> {
  const t0 = process.hrtime.bigint();
  let rows = 0;
  let after: string | null = null;
  do {
    const page = await cat.pageBackups({}, { after, limit: MAX_PAGE });
    rows += page.items.length;
    after = page.next;
  } while (after !== null);
  return { ms: msSince(t0), rows };
}

interface PageAnatomy {
  clientMs: number;
  serverMs: number;
  workflowTaskMs: number;
  events: number;
  payloadBytes: number;
  markerBytes: number;
  resultBytes: number;
}

type Payloads = { payloads?: { data?: Uint8Array | null }[] | null } | null | undefined;
const payloadBytes = (p: Payloads) => (p?.payloads ?? []).reduce((n, x) => n + (x.data?.length ?? 0), 0);

/**
 * Where one page's time goes: the first page of the listing as its own lookup workflow
 * (what listBackups starts), timed at the client and taken apart from its history.
 */
async function pageAnatomy(client: GbackupClient): Promise<PageAnatomy> {
  const workflowId = manageWorkflowIds.lookup(`bench-${randomBytes(6).toString('hex')}`);
  const t0 = process.hrtime.bigint();
  const handle = await client.client.workflow.start(MANAGE_WORKFLOWS.lookup, { taskQueue: client.taskQueue, workflowId, args: [{ what: 'backups' }] });
  await handle.result();
  const clientMs = msSince(t0);
  const events = (await handle.fetchHistory()).events ?? [];
  let markerBytes = 0;
  let resultBytes = 0;
  let total = 0;
  let wftStarted = NaN;
  let wftCompleted = NaN;
  for (const e of events) {
    const marker = Object.values(e.markerRecordedEventAttributes?.details ?? {}).reduce((n, p) => n + payloadBytes(p), 0);
    const result = payloadBytes(e.workflowExecutionCompletedEventAttributes?.result);
    markerBytes += marker;
    resultBytes += result;
    total += marker + result + payloadBytes(e.workflowExecutionStartedEventAttributes?.input);
    // The first workflow task runs the local activity and completes the workflow.
    if (e.workflowTaskStartedEventAttributes && Number.isNaN(wftStarted)) wftStarted = tsMs(e.eventTime);
    if (e.workflowTaskCompletedEventAttributes && Number.isNaN(wftCompleted)) wftCompleted = tsMs(e.eventTime);
  }
  const serverMs = events.length > 1 ? tsMs(events[events.length - 1]!.eventTime) - tsMs(events[0]!.eventTime) : NaN;
  return { clientMs, serverMs, workflowTaskMs: wftCompleted - wftStarted, events: events.length, payloadBytes: total, markerBytes, resultBytes };
}

function medianAnatomy(xs: PageAnatomy[]): PageAnatomy {
  const med = (k: keyof PageAnatomy) => stats(xs.map((x) => x[k])).p50;
  return { clientMs: med('clientMs'), serverMs: med('serverMs'), workflowTaskMs: med('workflowTaskMs'), events: med('events'), payloadBytes: med('payloadBytes'), markerBytes: med('markerBytes'), resultBytes: med('resultBytes') };
}

async function round(world: World, driver: Driver, bundle: string, pg: PostgresServer | null): Promise<Round> {
  const dir = join(world.dir, driver);
  mkdirSync(dir, { recursive: true });
  const taskQueue = `bench-cp-${driver}-${randomBytes(3).toString('hex')}`;
  const temporal = `temporal: { address: ${world.server!.address}, namespace: default, taskQueue: ${taskQueue} }`;
  const yaml = `${temporal}
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold] }
  - { name: beta,  driver: file, path: ${dir}/beta }
targets:
  - { name: vault, driver: volume, backend: beta }
defaultTarget: vault
${pg ? `catalog: { driver: postgres, url: '${pg.url}', passwordFile: '${pg.passwordFile}' }\n` : ''}`;
  const configFile = join(dir, 'config.yaml');
  writeFileSync(configFile, yaml);
  const config: LoadedConfig = parseConfig(yaml, configFile, dir);
  // What `gbackup` on a host without the catalog or storage has: the Temporal connection only.
  const clientConfigFile = join(dir, 'client.yaml');
  writeFileSync(clientConfigFile, `${temporal}\n`);

  const closers = world.closers;
  const cat = await openCatalog(config.catalog);
  closers.push(() => cat.close());
  say(`${driver}: catalog ${cat.describe}; starting workers on task queue ${taskQueue}`);
  const workers: RunningWorkers = await startWorkers({ config, workflowBundle: { code: bundle }, log: () => undefined, env: {} });
  closers.push(() => workers.shutdown());
  const client = await GbackupClient.connect(config, {});
  closers.push(() => client.close());

  // A few real volumes for the rows to belong to; the first holds 16 MiB of random data to back up.
  const volumes = new Volumes(workers.runtime);
  const vols: VolumeView[] = [];
  for (let i = 0; i < VOLUMES; i++) vols.push(await volumes.create({ backend: 'alpha', pool: 'gold', size: VOLUME_SIZE, name: `bench-cp-${i}` }));
  const source = vols[0]!;
  const fh = await open(workers.runtime.driver('alpha').initializeConnection({ pool: 'gold', name: source.id }).path, 'r+');
  try {
    await fh.write(randomBytes(VOLUME_SIZE), 0, VOLUME_SIZE, 0);
    await fh.sync();
  } finally {
    await fh.close();
  }

  const t0 = process.hrtime.bigint();
  // Dated in the past, a second apart, so the backups made below sort after them.
  const base = Date.now() - (ROWS + 86_400) * 1000;
  const node = config.nodes[0]!.name;
  const volumeIds = vols.map((v) => v.id);
  for (let from = 0; from < ROWS; from += BATCH) {
    await cat.tx(async (c) => {
      for (let i = from; i < Math.min(ROWS, from + BATCH); i++) await c.insertBackup(fillerBackup(i, volumeIds, node, base));
    });
  }
  const fillSeconds = msSince(t0) / 1000;
  const rowsInCatalog = await cat.countBackups();
  say(`${driver}: ${rowsInCatalog} backups in the catalog (filled in ${fmt(fillSeconds, 2)} s), ${VOLUMES} volumes`);
  if (rowsInCatalog !== ROWS) throw new Error(`expected ${ROWS} backups in the catalog, found ${rowsInCatalog}`);

  // --- 1. backup list
  for (let i = 0; i < WARMUP; i++) {
    await clientList(client);
    await cliList(clientConfigFile);
    await rawList(cat);
  }
  const a: number[] = [];
  const b: number[] = [];
  const c: number[] = [];
  const rows = { client: 0, cli: 0, raw: 0 };
  for (let i = 0; i < RUNS; i++) {
    const ra = await clientList(client);
    const rb = await cliList(clientConfigFile);
    const rc = await rawList(cat);
    a.push(ra.ms);
    b.push(rb.ms);
    c.push(rc.ms);
    rows.client = ra.rows;
    rows.cli = rb.rows;
    rows.raw = rc.rows;
    if (ra.rows !== ROWS || rb.rows !== ROWS || rc.rows !== ROWS) throw new Error(`listing returned ${ra.rows} / ${rb.rows} / ${rc.rows} rows, not ${ROWS}`);
    say(`${driver}: list #${i + 1}: client ${fmt(ra.ms)} ms, CLI ${fmt(rb.ms)} ms, raw catalog ${fmt(rc.ms)} ms`);
  }

  const anatomy: PageAnatomy[] = [];
  for (let i = 0; i < ANATOMY_RUNS; i++) anatomy.push(await pageAnatomy(client));
  const page = medianAnatomy(anatomy);
  say(`${driver}: one page: client ${fmt(page.clientMs)} ms, server ${fmt(page.serverMs)} ms, ${fmt(page.payloadBytes / 1e3, 0)} kB of payloads in history`);

  // --- 2. start-to-first-byte of a backup
  const beta = workers.runtime.driver('beta');
  const firstByte: number[] = [];
  const destCreated: number[] = [];
  const copyStarted: number[] = [];
  const wall: number[] = [];
  const ddTime: number[] = [];
  const overhead: number[] = [];
  let shape: BackupAnatomy | null = null;
  const gaps: number[] = [];
  for (let i = -1; i < RUNS; i++) {
    const backupId = `bak-cp-${driver.slice(0, 2)}-${i < 0 ? 'warm' : i}-${randomBytes(3).toString('hex')}`;
    const dest = beta.initializeConnection({ pool: null, name: backupVolumeName(backupId) }).path;
    const poller = await startPoller(dest);
    let p: PollResult;
    let handle: WorkflowHandle;
    let result: BackupResult;
    const t0Epoch = performance.timeOrigin + performance.now();
    const t = process.hrtime.bigint();
    let wallMs: number;
    try {
      handle = await client.startBackup({ volumeId: source.id, backupId, target: 'vault' }, { target: 'vault', backend: 'alpha' });
      result = await client.result<BackupResult>(handle);
      wallMs = msSince(t);
    } finally {
      p = await poller.finish();
    }
    if (result.backup.status !== 'available') throw new Error(`backup ${backupId} ended ${result.backup.status}`);
    if (p.hit === null || p.appeared === null || p.lastMiss === null) throw new Error(`backup ${backupId}: no block ever appeared in ${dest} (${p.polls} polls)`);
    const rel = (x: bigint) => Number(x - t) / 1e6;
    const anatomy = await backupAnatomy(handle);
    const copyMs = anatomy.copyStartedEpochMs - t0Epoch;
    if (!Number.isFinite(anatomy.copyMs)) throw new Error(`backup ${backupId}: the copy activity did not report its copy time`);
    if (i < 0) {
      say(`${driver}: backup warm-up: first byte ${fmt(rel(p.hit))} ms, whole ${fmt(wallMs)} ms`);
      continue;
    }
    firstByte.push(rel(p.hit));
    destCreated.push(rel(p.appeared));
    copyStarted.push(copyMs);
    wall.push(wallMs);
    ddTime.push(anatomy.copyMs);
    overhead.push(wallMs - anatomy.copyMs);
    shape = anatomy;
    gaps.push(Number(p.hit - p.lastMiss) / 1e6);
    say(
      `${driver}: backup #${i + 1}: destination made ${fmt(rel(p.appeared))} ms, copy activity started ${fmt(copyMs)} ms, first byte ${fmt(rel(p.hit))} ms, ` +
        `done ${fmt(wallMs)} ms (dd ${fmt(anatomy.copyMs)} ms, orchestration ${fmt(wallMs - anatomy.copyMs)} ms)`,
    );
  }

  // This round's things go now (the next round must not share the machine with them).
  for (const close of closers.splice(0).reverse()) await close();
  return {
    catalog: driver,
    describe: cat.describe,
    fillSeconds,
    rowsInCatalog,
    listClient: stats(a),
    listCli: stats(b),
    listRaw: stats(c),
    page,
    rows,
    firstByte: stats(firstByte),
    destCreated: stats(destCreated),
    copyActivityStarted: stats(copyStarted),
    backupWall: stats(wall),
    copyTime: stats(ddTime),
    overhead: stats(overhead),
    shape: shape!,
    pollGapMs: stats(gaps),
  };
}

// ---------------------------------------------------------------------------------------------
// Output

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

function report(rounds: Round[], cliStart: Stats, load: { start: number[]; end: number[] }): string {
  const out: string[] = [];
  const cell = (s: Stats) => [fmt(s.p50), fmt(s.p95)];
  const by = (f: (r: Round) => Stats) => rounds.flatMap((r) => cell(f(r)));
  const head = ['', ...rounds.flatMap((r) => [`${r.catalog} p50 ms`, `${r.catalog} p95 ms`])];
  out.push('');
  out.push(`gbackup control plane: ${cpus().length} CPU, ${fmt(totalmem() / 1024 ** 3, 1)} GiB RAM, Temporal dev server and in-process workers on this host, ${RUNS} runs each after ${WARMUP} warm-up(s), nearest-rank percentiles`);
  // Anything else running on the host (a test suite, say) weighs on every number here.
  out.push(`load average (1, 5, 15 min) at start ${load.start.map((x) => fmt(x, 2)).join(' ')}, at end ${load.end.map((x) => fmt(x, 2)).join(' ')}`);
  out.push('');
  out.push(`backup list, ${ROWS} backups in the catalog (${Math.ceil(ROWS / MAX_PAGE)} pages of ${MAX_PAGE}):`);
  out.push(
    table(head, [
      ['(a) client.listBackups() via Temporal', ...by((r) => r.listClient)],
      ['(b) CLI process: gbackup backup list --json', ...by((r) => r.listCli)],
      ['(c) raw catalog: pageBackups x10', ...by((r) => r.listRaw)],
    ]),
  );
  for (const r of rounds) {
    out.push(
      `${r.catalog}: rows returned (a) ${r.rows.client}, (b) ${r.rows.cli}, (c) ${r.rows.raw}; (a)/(c) = ${fmt(r.listClient.p50 / r.listRaw.p50)}x at p50, ${fmt(r.listClient.p95 / r.listRaw.p95)}x at p95; ` +
        `(b)/(a) = ${fmt(r.listCli.p50 / r.listClient.p50, 2)}x at p50; catalog filled in ${fmt(r.fillSeconds, 2)} s (${r.describe})`,
    );
  }
  out.push(`CLI process alone (node bin/gbackup.js --help: Node start-up and module loading, no Temporal), ${HELP_RUNS} runs: p50 ${fmt(cliStart.p50)} ms, max ${fmt(cliStart.max)} ms`);
  for (const r of rounds) {
    const x = r.page;
    out.push(
      `${r.catalog}: one page (${MAX_PAGE} rows) as one lookup workflow, median of ${ANATOMY_RUNS}: client ${fmt(x.clientMs)} ms = server first-to-last event ${fmt(x.serverMs)} ms ` +
        `(workflow task with the local activity ${fmt(x.workflowTaskMs)} ms) + client/gRPC ${fmt(x.clientMs - x.serverMs)} ms; ${x.events} history events carrying ${fmt(x.payloadBytes / 1e3, 0)} kB of payloads ` +
        `(the page is in both the local activity's marker and the workflow's result: ${fmt(x.markerBytes / 1e3, 0)} + ${fmt(x.resultBytes / 1e3, 0)} kB)`,
    );
  }
  out.push('');
  out.push(`backup of a ${VOLUME_SIZE / MiB} MiB volume (random data, file backend -> volume target on another file backend), ms from just before client.startBackup():`);
  out.push(
    table(head, [
      ['destination image created', ...by((r) => r.destCreated)],
      ['copy activity started (history)', ...by((r) => r.copyActivityStarted)],
      ['start-to-first-byte', ...by((r) => r.firstByte)],
      ['whole backup (to client.result())', ...by((r) => r.backupWall)],
      ['  of which dd moving bytes (copy activity)', ...by((r) => r.copyTime)],
      ['  orchestration overhead (whole - dd)', ...by((r) => r.overhead)],
    ]),
  );
  for (const r of rounds) {
    out.push(
      `${r.catalog}: one backup = ${r.shape.events} history events, ${r.shape.workflowTasks} workflow tasks, ${r.shape.activities} activities, ${r.shape.localActivities} local activities; ` +
        `orchestration p50 ${fmt(r.overhead.p50)} ms (target < 100 ms)`,
    );
  }
  out.push(
    `first byte = first stat() of the destination image showing an allocated block (dd's first O_DIRECT write reaching it through the loop device), polled every ${POLL_MS} ms from a worker thread; ` +
      `gap to the previous poll: ${rounds.map((r) => `${r.catalog} p50 ${fmt(r.pollGapMs.p50, 2)} ms, max ${fmt(r.pollGapMs.max, 2)} ms`).join('; ')}`,
  );
  return out.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------

async function run(): Promise<void> {
  const started = process.hrtime.bigint();
  const load = { start: loadavg(), end: [] as number[] };
  if (process.getuid?.() !== 0) throw new Error('the bench needs root: the node attaches loop devices, and PostgreSQL runs as the postgres user');
  const base = '/var/tmp';
  if (statfsSync(base).type === TMPFS_MAGIC) throw new Error(`${base} is tmpfs; the bench must run on a disk`);
  installLogger('WARN');
  const world: World = { dir: mkdtempSync(join(base, 'gbackup-bench-cp-')), server: null, postgres: null, closers: [] };
  const onSignal = (sig: NodeJS.Signals) => {
    say(`${sig}: cleaning up`);
    void cleanup(world).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    say(`working in ${world.dir}; bundling workflows, starting the Temporal dev server and PostgreSQL`);
    const [bundle, server, postgres] = await Promise.all([
      bundleWorkflowCode({ workflowsPath: workflowsPath(), logger: { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error: console.error } }).then((b) => b.code),
      startDevServer({ uiPort: null, dbFile: join(world.dir, 'temporal.sqlite') }),
      startPostgres(),
    ]);
    world.server = server;
    world.postgres = postgres;

    // The CLI's fixed cost on this host, to read (b) against.
    const help: number[] = [];
    for (let i = 0; i < WARMUP + HELP_RUNS; i++) {
      const t0 = process.hrtime.bigint();
      await execa(process.execPath, [CLI, '--help'], { env: cliEnv(), extendEnv: false, stdin: 'ignore' });
      if (i >= WARMUP) help.push(msSince(t0));
    }
    const cliStart = stats(help);
    say(`CLI --help: p50 ${fmt(cliStart.p50)} ms`);

    const rounds: Round[] = [];
    rounds.push(await round(world, 'sqlite', bundle, null));
    rounds.push(await round(world, 'postgres', bundle, postgres));

    load.end = loadavg();
    const text = report(rounds, cliStart, load);
    process.stdout.write(text);
    const jsonFile = join(repoRoot, 'var', 'bench', 'controlplane.json');
    mkdirSync(join(repoRoot, 'var', 'bench'), { recursive: true });
    writeFileSync(
      jsonFile,
      JSON.stringify(
        {
          date: new Date().toISOString(),
          host: { cpus: cpus().length, memBytes: totalmem(), loadAverage: load },
          runs: RUNS,
          warmup: WARMUP,
          helpRuns: HELP_RUNS,
          rows: ROWS,
          pageSize: MAX_PAGE,
          volumeBytes: VOLUME_SIZE,
          pollMs: POLL_MS,
          percentiles: 'nearest rank',
          units: 'milliseconds',
          cliStartMs: cliStart,
          rounds: rounds.map((r) => ({ ...r, listClientOverRaw: { p50: r.listClient.p50 / r.listRaw.p50, p95: r.listClient.p95 / r.listRaw.p95 } })),
          benchSeconds: msSince(started) / 1000,
        },
        null,
        2,
      ) + '\n',
    );
    say(`results written to ${jsonFile}; bench took ${fmt(msSince(started) / 1000)} s`);
  } finally {
    await cleanup(world);
  }
}

run().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
