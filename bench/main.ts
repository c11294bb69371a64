/**
 * gbackup's throughput benchmark: backup and restore of 1 GiB volumes through the real
 * stack (Temporal dev server, in-process control + node workers, file backends on loop
 * devices), measured cold against a plain `dd` between two loop devices in the same run.
 *
 *   A  1 GiB of random data: the copy engine against the disk; target >= 0.95x dd (issue 11).
 *   B  1 GiB with 10% written (4 MiB chunks at seeded random offsets): extent skipping;
 *      target <= 0.2x of A's time (issue 11; was >= 5x faster).
 *
 * Also times dd at several block sizes (the reason for `copyBlockSize`), the copy engine
 * without Temporal (`copyExtents` on the same loop devices) and a tiny volume's backup
 * (the fixed cost of a workflow), so a miss can be pinned on a layer.
 *
 * Needs root (loop devices, drop_caches). Everything lives in a temporary directory under
 * /var/tmp, which is removed at the end together with its loop devices and the server.
 * BENCH_REPEAT=n (default 3) repeats every timed step n times and reports the median;
 * BENCH_SIZE_GIB=n uses n GiB volumes (default 1).
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { execa } from 'execa';
import type { BackupResult, RestoreResult } from '../src/api.js';
import { GbackupClient } from '../src/client/client.js';
import { parseConfig } from '../src/config/load.js';
import { copyExtents } from '../src/copy/dd.js';
import { dataExtents } from '../src/copy/extents.js';
import { repoRoot, startDevServer, temporalBinary, type DevServer } from '../src/dev/devserver.js';
import { Runtime } from '../src/services/runtime.js';
import { MiB } from '../src/size.js';
import { Volumes } from '../src/services/volumes.js';
import { sha256File } from '../src/copy/checksum.js';
import { startWorkers, type RunningWorkers } from '../src/workers/worker.js';
import { installLogger } from '../src/workers/logging.js';
import { tsMs } from './history.js';
import { cleanupStep, detachLoopsUnder } from './cleanup.js';

const GiB = 1024 * MiB;
/** BENCH_SIZE_GIB=n: larger volumes show how the fixed cost of a workflow amortizes. */
const VOLUME_GIB = Math.max(1, Number.parseInt(process.env.BENCH_SIZE_GIB ?? '1', 10) || 1);
const VOLUME_SIZE = VOLUME_GIB * GiB;
const CHUNK = 4 * MiB;
const SPARSE_FRACTION = 0.1;
const SWEEP_BLOCK_SIZES = [1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB];
const REFERENCE_BS = 4 * MiB;
const TMPFS_MAGIC = 0x01021994;
/**
 * BENCH_DYNAMIC_CONFIG="key=value,key=value": extra `--dynamic-config-value`s for the dev
 * server, e.g. history.transferProcessorMaxPollRPS=1000 (the single-shard dev server caps
 * task dispatch at 20 per second by default, which makes back-to-back steps ~50 ms each).
 */
const DYNAMIC_CONFIG = (process.env.BENCH_DYNAMIC_CONFIG ?? '').split(',').map((kv) => kv.trim()).filter((kv) => /^[\w.]+=\S+$/.test(kv));
const REPEAT = Math.max(1, Number.parseInt(process.env.BENCH_REPEAT ?? '3', 10) || 1);

const say = (m: string) => process.stderr.write(`bench: ${m}\n`);
const MB = (bytes: number) => bytes / 1e6;
const fmt = (n: number, digits = 2) => n.toFixed(digits);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};
const bsLabel = (bs: number) => (bs % MiB === 0 ? `${bs / MiB}M` : `${bs / 1024}K`);

// ---------------------------------------------------------------------------------------------
// Cold measurements

async function dropCaches(): Promise<void> {
  // --expose-gc (npm run bench): the data generator's buffers go before a measurement, not during it.
  globalThis.gc?.();
  await execa('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

async function timed<T>(fn: () => Promise<T>): Promise<{ seconds: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { seconds: (performance.now() - t0) / 1000, value };
}

// ---------------------------------------------------------------------------------------------
// Repeatable random data: AES-CTR keystream from a seed (fast with AES-NI), and a seeded PRNG
// for the offsets of scenario B.

function keystream(seed: string): (bytes: number) => Buffer {
  const key = createHash('sha256').update(`gbackup-bench:${seed}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK);
  return (bytes) => cipher.update(bytes === CHUNK ? zeros : Buffer.alloc(bytes));
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` distinct chunk indices out of `total`, sorted, the same on every run. */
function pickChunks(total: number, count: number, seed: number): number[] {
  const rnd = mulberry32(seed);
  const idx = Array.from({ length: total }, (_, i) => i);
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(rnd() * (total - i));
    [idx[i], idx[j]] = [idx[j]!, idx[i]!];
  }
  return idx.slice(0, count).sort((a, b) => a - b);
}

/** Writes random 4 MiB chunks at the given chunk indices of an (already sized) image, then fsyncs. */
async function fillImage(path: string, chunks: number[], seed: string): Promise<number> {
  const next = keystream(seed);
  const fh = await open(path, 'r+');
  try {
    for (const c of chunks) await fh.write(next(CHUNK), 0, CHUNK, c * CHUNK);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return chunks.length * CHUNK;
}

// ---------------------------------------------------------------------------------------------
// Loop devices made by the bench itself (the reference dd); all are also swept at the end.

const ourDevices = new Set<string>();

async function attach(file: string, readOnly: boolean): Promise<string> {
  const { stdout } = await execa('losetup', ['--find', '--show', '--direct-io=on', ...(readOnly ? ['--read-only'] : []), '--', file]);
  const dev = stdout.trim();
  ourDevices.add(dev);
  return dev;
}

async function detach(dev: string): Promise<void> {
  await execa('losetup', ['--detach', dev], { reject: false });
  ourDevices.delete(dev);
}

/**
 * A source image and a fresh sparse destination of the same size, both attached with
 * direct I/O like the node does; `fn` runs cold between them. The destination is
 * recreated every time: a restore or backup always writes into a new sparse volume.
 */
async function withLoopPair<T>(srcImage: string, scratchDir: string, fn: (src: string, dst: string) => Promise<T>): Promise<T> {
  const dstImage = join(scratchDir, `bench-ddref-${randomBytes(3).toString('hex')}.img`);
  const fh = await open(dstImage, 'w');
  await fh.truncate(VOLUME_SIZE);
  await fh.close();
  let src: string | undefined;
  let dst: string | undefined;
  try {
    src = await attach(srcImage, true);
    dst = await attach(dstImage, false);
    await dropCaches();
    return await fn(src, dst);
  } finally {
    if (dst) await detach(dst);
    if (src) await detach(src);
    await rm(dstImage, { force: true });
  }
}

async function ddLoop(srcImage: string, scratchDir: string, bs: number, extraArgs: string[] = []): Promise<number> {
  return withLoopPair(srcImage, scratchDir, async (src, dst) => {
    const { seconds } = await timed(() => execa('dd', [`if=${src}`, `of=${dst}`, `bs=${bs}`, 'iflag=direct', 'oflag=direct', ...extraArgs, 'status=none']));
    return seconds;
  });
}

/** The copy engine alone (extent scan + dd per extent, as the node's copy activity runs it), no Temporal. */
async function engineLoop(srcImage: string, scratchDir: string, blockSize: number): Promise<number> {
  return withLoopPair(srcImage, scratchDir, async (src, dst) => {
    const { seconds } = await timed(async () => {
      const extents = await dataExtents(srcImage, VOLUME_SIZE);
      await copyExtents({ source: src, dest: dst, extents, blockSize, sparse: true });
    });
    return seconds;
  });
}

// ---------------------------------------------------------------------------------------------
// Workflow timing from its history: how long the copy activity ran inside the wall clock.


interface Timeline {
  /** First to last history event, as the server saw it. */
  serverSeconds: number;
  activities: { name: string; queuedSeconds: number; runSeconds: number }[];
  /** The copy activity's run time (started -> completed). */
  copySeconds: number;
  /** Every other activity's run time, summed. */
  otherActivitySeconds: number;
  /** Scheduled -> started, summed: task queue dispatch latency. */
  queuedSeconds: number;
  /** The rest of the server time: workflow tasks, history writes, gaps between steps. */
  workflowSeconds: number;
}

/** Where a workflow's time went, from its history (activities run one after another in ours). */
async function timeline(handle: WorkflowHandle): Promise<Timeline> {
  const events = (await handle.fetchHistory()).events ?? [];
  const byScheduled = new Map<string, { name: string; scheduled: number; started?: number; ended?: number }>();
  for (const e of events) {
    const at = tsMs(e.eventTime);
    const sch = e.activityTaskScheduledEventAttributes;
    if (sch) byScheduled.set(String(e.eventId), { name: sch.activityType?.name ?? '?', scheduled: at });
    const st = e.activityTaskStartedEventAttributes;
    if (st) {
      const a = byScheduled.get(String(st.scheduledEventId));
      if (a) a.started = at;
    }
    const end =
      e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes ?? e.activityTaskTimedOutEventAttributes ?? e.activityTaskCanceledEventAttributes;
    if (end) {
      const a = byScheduled.get(String(end.scheduledEventId));
      if (a) a.ended = at;
    }
  }
  const activities = [...byScheduled.values()].map((a) => ({
    name: a.name,
    // An activity's started event is written with its completion; its time is still the start.
    queuedSeconds: ((a.started ?? a.scheduled) - a.scheduled) / 1000,
    runSeconds: ((a.ended ?? a.started ?? a.scheduled) - (a.started ?? a.scheduled)) / 1000,
  }));
  const serverSeconds = events.length > 1 ? (tsMs(events[events.length - 1]!.eventTime) - tsMs(events[0]!.eventTime)) / 1000 : NaN;
  const sum = (xs: number[]) => xs.reduce((n, x) => n + x, 0);
  const copySeconds = sum(activities.filter((a) => a.name === 'copyVolume').map((a) => a.runSeconds));
  const otherActivitySeconds = sum(activities.filter((a) => a.name !== 'copyVolume').map((a) => a.runSeconds));
  const queuedSeconds = sum(activities.map((a) => a.queuedSeconds));
  return { serverSeconds, activities, copySeconds, otherActivitySeconds, queuedSeconds, workflowSeconds: serverSeconds - copySeconds - otherActivitySeconds - queuedSeconds };
}

// ---------------------------------------------------------------------------------------------
// The world

interface World {
  dir: string;
  server: DevServer | null;
  workers: RunningWorkers | null;
  rt: Runtime | null;
  client: GbackupClient | null;
}

let cleaned: Promise<void> | null = null;
function cleanup(w: World): Promise<void> {
  cleaned ??= (async () => {
    const step = cleanupStep(say);
    await step('client', () => w.client?.close());
    await step('workers', () => w.workers?.shutdown());
    await step('runtime', () => w.rt?.close());
    await step('server', () => w.server?.stop());
    for (const d of [...ourDevices]) await step(`detach ${d}`, () => detach(d));
    await step('loop devices', () => detachLoopsUnder(w.dir));
    await step('temp dir', () => rmSync(w.dir, { recursive: true, force: true }));
  })();
  return cleaned;
}

function checkHost(base: string): void {
  if (process.getuid?.() !== 0) throw new Error('the bench needs root: it attaches loop devices and drops the page cache');
  if (statfsSync(base).type === TMPFS_MAGIC) throw new Error(`${base} is tmpfs; the bench must run on a disk`);
}

// ---------------------------------------------------------------------------------------------
// Scenarios

interface Scenario {
  name: string;
  label: string;
  volumeId: string;
  image: string;
  dataBytes: number;
  extents: number;
  sha256: string;
}

interface Run {
  backupId: string;
  backupSeconds: number;
  backupCopySeconds: number;
  backupTimeline: Timeline;
  restoreSeconds: number;
  restoreCopySeconds: number;
  restoreTimeline: Timeline;
  storedBytes: number;
  restoredVolumeId: string;
  restoredSha256: string;
  backupSha256: string;
}

interface ScenarioResult {
  scenario: string;
  label: string;
  volumeBytes: number;
  dataBytes: number;
  extents: number;
  sha256: string;
  runs: Run[];
  backupSeconds: number;
  backupMBps: number;
  backupCopySeconds: number;
  restoreSeconds: number;
  restoreMBps: number;
  restoreCopySeconds: number;
  ddReferenceSeconds: number;
  ddReferenceSamples: number[];
  ddFsyncSeconds: number;
  ddFsyncSamples: number[];
  ddReferenceMBps: number;
  engineSeconds: number;
  engineSamples: number[];
  backupRatio: number;
  restoreRatio: number;
  verified: boolean;
}

async function makeScenario(volumes: Volumes, rt: Runtime, name: string, label: string, chunks: number[]): Promise<Scenario> {
  const vol = await volumes.create({ backend: 'alpha', pool: 'gold', size: VOLUME_SIZE, name: `bench-${name}` });
  const image = rt.driver('alpha').initializeConnection({ pool: 'gold', name: vol.id }).path;
  const { seconds, value: dataBytes } = await timed(() => fillImage(image, chunks, `scenario-${name}`));
  const extents = await dataExtents(image, VOLUME_SIZE);
  say(`${name}: volume ${vol.id}, ${dataBytes} bytes of random data in ${extents.length} extent(s), written in ${fmt(seconds)} s`);
  await dropCaches();
  const sha256 = await sha256File(image);
  return { name, label, volumeId: vol.id, image, dataBytes, extents: extents.length, sha256 };
}

async function backupAndRestore(client: GbackupClient, rt: Runtime, volumes: Volumes, s: Scenario, i: number): Promise<Run> {
  const backupId = `bak-bench-${s.name.toLowerCase()}-${i}-${randomBytes(3).toString('hex')}`;
  await dropCaches();
  const b = await timed(async () => {
    const h = await client.startBackup({ volumeId: s.volumeId, backupId, target: 'vault' }, { target: 'vault', backend: 'alpha' });
    return { h, r: await client.result<BackupResult>(h) };
  });
  const bAct = await timeline(b.value.h);
  say(`${s.name}#${i}: backup ${backupId} ${fmt(b.seconds)} s (copy activity ${fmt(bAct.copySeconds)} s, ${b.value.r.backup.storedBytes} bytes stored)`);

  const restoredVolumeId = `vol-bench-${s.name.toLowerCase()}-${i}-${randomBytes(3).toString('hex')}`;
  await dropCaches();
  const r = await timed(async () => {
    const h = await client.startRestore({ backupId, backend: 'gamma', newVolumeId: restoredVolumeId });
    return { h, r: await client.result<RestoreResult>(h) };
  });
  const rAct = await timeline(r.value.h);
  say(`${s.name}#${i}: restore onto gamma ${restoredVolumeId} ${fmt(r.seconds)} s (copy activity ${fmt(rAct.copySeconds)} s)`);

  const backupSha256 = await sha256File(rt.driver('beta').initializeConnection({ pool: null, name: `backup-${backupId}` }).path);
  const restoredSha256 = await volumes.sha256(restoredVolumeId);
  return {
    backupId,
    backupSeconds: b.seconds,
    backupCopySeconds: bAct.copySeconds,
    backupTimeline: bAct,
    restoreSeconds: r.seconds,
    restoreCopySeconds: rAct.copySeconds,
    restoreTimeline: rAct,
    storedBytes: b.value.r.backup.storedBytes,
    restoredVolumeId,
    restoredSha256,
    backupSha256,
  };
}

/** Median of REPEAT cold runs: a shared 2-core VM's disk varies by 10-20% from run to run. */
async function sampled(what: string, fn: () => Promise<number>): Promise<{ seconds: number; samples: number[] }> {
  const samples: number[] = [];
  for (let i = 0; i < REPEAT; i++) samples.push(await fn());
  say(`${what}: ${samples.map((x) => fmt(x)).join(' ')} s`);
  return { seconds: median(samples), samples };
}

async function measureScenario(client: GbackupClient, rt: Runtime, volumes: Volumes, s: Scenario, scratch: string): Promise<ScenarioResult> {
  const dd = await sampled(`${s.name}: dd reference bs=${bsLabel(REFERENCE_BS)}`, () => ddLoop(s.image, scratch, REFERENCE_BS));
  // The same dd with conv=fsync: the durability the copy engine promises ('available' means on disk).
  const ddFsync = await sampled(`${s.name}: dd reference + conv=fsync`, () => ddLoop(s.image, scratch, REFERENCE_BS, ['conv=fsync']));
  const engine = await sampled(`${s.name}: copy engine without Temporal`, () => engineLoop(s.image, scratch, REFERENCE_BS));
  const ddReferenceSeconds = dd.seconds;
  const engineSeconds = engine.seconds;
  const runs: Run[] = [];
  for (let i = 1; i <= REPEAT; i++) runs.push(await backupAndRestore(client, rt, volumes, s, i));
  const backupSeconds = median(runs.map((r) => r.backupSeconds));
  const restoreSeconds = median(runs.map((r) => r.restoreSeconds));
  const verified = runs.every((r) => r.restoredSha256 === s.sha256 && r.backupSha256 === s.sha256);
  return {
    scenario: s.name,
    label: s.label,
    volumeBytes: VOLUME_SIZE,
    dataBytes: s.dataBytes,
    extents: s.extents,
    sha256: s.sha256,
    runs,
    backupSeconds,
    backupMBps: MB(VOLUME_SIZE) / backupSeconds,
    backupCopySeconds: median(runs.map((r) => r.backupCopySeconds)),
    restoreSeconds,
    restoreMBps: MB(VOLUME_SIZE) / restoreSeconds,
    restoreCopySeconds: median(runs.map((r) => r.restoreCopySeconds)),
    ddReferenceSeconds,
    ddReferenceSamples: dd.samples,
    ddFsyncSeconds: ddFsync.seconds,
    ddFsyncSamples: ddFsync.samples,
    ddReferenceMBps: MB(VOLUME_SIZE) / ddReferenceSeconds,
    engineSeconds,
    engineSamples: engine.samples,
    // Same bytes on both sides, so the throughput ratio is the inverse time ratio.
    backupRatio: ddReferenceSeconds / backupSeconds,
    restoreRatio: ddReferenceSeconds / restoreSeconds,
    verified,
  };
}

// ---------------------------------------------------------------------------------------------
// Output

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

function report(results: ScenarioResult[], sweep: { bs: number; seconds: number }[], probe: { backup: number; restore: number }): { text: string; ok: boolean } {
  const a = results.find((r) => r.scenario === 'A')!;
  const rows = results.map((r) => [
    `${r.scenario} ${r.label}`,
    String(r.volumeBytes),
    String(r.dataBytes),
    fmt(r.backupSeconds),
    fmt(r.backupMBps, 0),
    fmt(r.ddReferenceSeconds),
    fmt(r.ddFsyncSeconds),
    fmt(r.engineSeconds),
    fmt(r.backupRatio),
    fmt(r.restoreSeconds),
    fmt(r.restoreMBps, 0),
    fmt(r.restoreRatio),
    r === a ? '-' : `${fmt(a.backupSeconds / r.backupSeconds, 1)}x / ${fmt(a.restoreSeconds / r.restoreSeconds, 1)}x`,
  ]);
  const out: string[] = [];
  out.push('');
  out.push(`gbackup bench: ${cpus().length} CPU, ${fmt(totalmem() / GiB, 1)} GiB RAM, file backends on loop devices (direct I/O), cold cache per measurement, median of ${REPEAT} run(s)`);
  if (DYNAMIC_CONFIG.length > 0) out.push(`dev server dynamic config: ${DYNAMIC_CONFIG.join(', ')}`);
  out.push('MB = 10^6 bytes. MB/s = volume bytes / wall-clock seconds. ratio = our throughput / dd throughput over the same volume (higher is better).');
  out.push('dd-ref: dd bs=4M iflag=direct oflag=direct between two loop devices over the whole volume (the ratios use it); +fsync: the same with conv=fsync.');
  out.push('engine: copyExtents alone (extent scan + dd per extent, conv=fsync, no Temporal).');
  out.push('');
  out.push(
    table(['scenario', 'volume bytes', 'data bytes', 'backup s', 'backup MB/s', 'dd-ref s', '+fsync s', 'engine s', 'ratio', 'restore s', 'restore MB/s', 'ratio', 'speedup vs A (bk/rs)'], rows),
  );
  out.push('');
  for (const r of results) {
    out.push(
      `${r.scenario}: ${r.volumeBytes} bytes (${fmt(MB(r.volumeBytes), 1)} MB, ${r.volumeBytes / MiB} MiB) volume, ${r.dataBytes} bytes (${fmt(MB(r.dataBytes), 1)} MB, ${r.dataBytes / MiB} MiB) of data in ${r.extents} extent(s)`,
    );
    out.push(
      `   dd reference ${fmt(r.ddReferenceSeconds)} s (${fmt(r.ddReferenceMBps, 0)} MB/s), with conv=fsync ${fmt(r.ddFsyncSeconds)} s; copy engine without Temporal ${fmt(r.engineSeconds)} s; copy activity inside the workflow: backup ${fmt(r.backupCopySeconds)} s, restore ${fmt(r.restoreCopySeconds)} s`,
    );
    const t = [...r.runs].sort((x, y) => x.backupSeconds - y.backupSeconds)[Math.floor(r.runs.length / 2)]!;
    for (const [what, wall, tl] of [
      ['backup', t.backupSeconds, t.backupTimeline],
      ['restore', t.restoreSeconds, t.restoreTimeline],
    ] as const) {
      out.push(
        `   ${what} ${fmt(wall)} s wall (${t.backupId}) = copy activity ${fmt(tl.copySeconds)} + ${tl.activities.length - 1} other activities ${fmt(tl.otherActivitySeconds)} + task queue dispatch ${fmt(tl.queuedSeconds)} + workflow tasks/gaps ${fmt(tl.workflowSeconds)} + client/start ${fmt(wall - tl.serverSeconds)} s`,
      );
    }
    out.push(`   sha256 source   ${r.sha256}`);
    for (const run of r.runs) {
      out.push(`   sha256 backup   ${run.backupSha256}  (${run.backupId})`);
      out.push(`   sha256 restored ${run.restoredSha256}  (${run.restoredVolumeId} on gamma)`);
    }
    out.push(`   ${r.verified ? 'verified: source == backup == restored' : 'MISMATCH: a copy differs from the source'}`);
  }
  out.push('');
  out.push(`fixed cost of a workflow (16 MiB volume, 4 MiB of data, second of two back-to-back runs): backup ${fmt(probe.backup)} s, restore ${fmt(probe.restore)} s`);
  out.push('');
  const ref = sweep.find((s) => s.bs === 4 * MiB);
  out.push(`dd block size (loop device -> loop device, direct I/O, scenario A bytes, cold cache each, median of ${REPEAT}):`);
  out.push(
    table(
      ['bs', 'seconds', 'MB/s', 'vs 4M'],
      sweep.map((s) => [bsLabel(s.bs), fmt(s.seconds), fmt(MB(VOLUME_SIZE) / s.seconds, 0), ref ? `${fmt(ref.seconds / s.seconds)}x` : '-']),
    ),
  );
  out.push('');
  const b = results.find((r) => r.scenario === 'B');
  const fullOk = a.backupRatio >= 0.95 && a.restoreRatio >= 0.95;
  const sparseOk = b ? b.backupSeconds / a.backupSeconds <= 0.2 && b.restoreSeconds / a.restoreSeconds <= 0.2 : false;
  const verified = results.every((r) => r.verified);
  out.push(`target full volume >= 0.95x dd: backup ${fmt(a.backupRatio)}x, restore ${fmt(a.restoreRatio)}x -> ${fullOk ? 'MET' : 'MISSED'}`);
  if (b) {
    out.push(
      `target 10% volume <= 0.2x of the full volume's time: backup ${fmt(b.backupSeconds / a.backupSeconds, 3)}x, restore ${fmt(b.restoreSeconds / a.restoreSeconds, 3)}x -> ${sparseOk ? 'MET' : 'MISSED'}`,
    );
  }
  out.push(`bit-exact: ${verified ? 'yes' : 'NO'}`);
  return { text: out.join('\n') + '\n', ok: verified };
}

// ---------------------------------------------------------------------------------------------

async function run(): Promise<void> {
  const base = '/var/tmp';
  checkHost(base);
  installLogger('WARN');
  const world: World = { dir: mkdtempSync(join(base, 'gbackup-bench-')), server: null, workers: null, rt: null, client: null };
  const onSignal = (sig: NodeJS.Signals) => {
    say(`${sig}: cleaning up`);
    void cleanup(world).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const { dir } = world;
    if (DYNAMIC_CONFIG.length > 0) {
      // startDevServer takes no extra flags; a wrapper named by GBACKUP_TEMPORAL_BIN adds them.
      const wrapper = join(dir, 'temporal-with-dynamic-config');
      const quote = (x: string) => `'${x.replace(/'/g, `'\\''`)}'`;
      writeFileSync(wrapper, `#!/bin/sh\nexec ${quote(temporalBinary())} "$@" ${DYNAMIC_CONFIG.map((kv) => `--dynamic-config-value ${quote(kv)}`).join(' ')}\n`);
      chmodSync(wrapper, 0o755);
      process.env.GBACKUP_TEMPORAL_BIN = wrapper;
      say(`dev server dynamic config: ${DYNAMIC_CONFIG.join(', ')}`);
    }
    say(`working in ${dir}; starting Temporal dev server`);
    world.server = await startDevServer({ uiPort: null, dbFile: join(dir, 'temporal.sqlite') });
    const yaml = `
temporal: { address: ${world.server.address}, namespace: default, taskQueue: gbackup-bench }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold, silver] }
  - { name: beta,  driver: file, path: ${dir}/beta }
  - { name: gamma, driver: file, path: ${dir}/gamma }
targets:
  - { name: vault, driver: volume, backend: beta }
defaultTarget: vault
`;
    const config = parseConfig(yaml, join(dir, 'config.yaml'), dir);
    writeFileSync(join(dir, 'config.yaml'), yaml);
    say('starting workers (bundling workflows)');
    // The bench's own local server, whatever TEMPORAL_* the shell has set.
    world.workers = await startWorkers({ config, log: () => undefined, env: {} });
    world.rt = await Runtime.open(config);
    world.client = await GbackupClient.connect(config, {});
    const { rt, client } = world;
    const volumes = new Volumes(rt);
    const scratch = join(dir, 'beta');
    mkdirSync(scratch, { recursive: true });

    // Warm-up and fixed cost: the first workflow pays for the sandbox and connections.
    const tiny = await volumes.create({ backend: 'alpha', pool: 'gold', size: 16 * MiB, name: 'bench-probe' });
    await fillImage(rt.driver('alpha').initializeConnection({ pool: 'gold', name: tiny.id }).path, [1], 'probe');
    const probe = { backup: 0, restore: 0 };
    for (let i = 0; i < 2; i++) {
      const backupId = `bak-bench-probe-${i}`;
      const b = await timed(async () => client.result(await client.startBackup({ volumeId: tiny.id, backupId, target: 'vault' }, { target: 'vault', backend: 'alpha' })));
      const r = await timed(async () => client.result(await client.startRestore({ backupId, backend: 'gamma', newVolumeId: `vol-bench-probe-${i}` })));
      say(`probe ${i}: 16 MiB backup ${fmt(b.seconds)} s, restore ${fmt(r.seconds)} s${i === 0 ? ' (warm-up)' : ''}`);
      probe.backup = b.seconds;
      probe.restore = r.seconds;
    }

    const totalChunks = VOLUME_SIZE / CHUNK;
    const A = await makeScenario(volumes, rt, 'A', `full ${VOLUME_GIB} GiB`, Array.from({ length: totalChunks }, (_, i) => i));
    const sparseChunks = pickChunks(totalChunks, Math.round(totalChunks * SPARSE_FRACTION), 20240601);
    const B = await makeScenario(volumes, rt, 'B', '10% written', sparseChunks);

    const results: ScenarioResult[] = [];
    for (const s of [A, B]) results.push(await measureScenario(client, rt, volumes, s, scratch));

    // Round-robin over the block sizes, so a slow phase of the shared disk hits them all alike.
    const samples = new Map<number, number[]>(SWEEP_BLOCK_SIZES.map((bs) => [bs, []]));
    for (let i = 0; i < REPEAT; i++) for (const bs of SWEEP_BLOCK_SIZES) samples.get(bs)!.push(await ddLoop(A.image, scratch, bs));
    const sweep = SWEEP_BLOCK_SIZES.map((bs) => ({ bs, seconds: median(samples.get(bs)!), samples: samples.get(bs)! }));
    for (const s of sweep) say(`dd bs=${bsLabel(s.bs)}: ${s.samples.map((x) => fmt(x)).join(' ')} s`);

    const { text, ok } = report(results, sweep, probe);
    process.stdout.write(text);
    const jsonFile = join(repoRoot, 'var', 'bench', 'results.json');
    mkdirSync(dirname(jsonFile), { recursive: true });
    const a = results[0]!;
    const b = results[1]!;
    writeFileSync(
      jsonFile,
      JSON.stringify(
        {
          date: new Date().toISOString(),
          host: { cpus: cpus().length, memBytes: totalmem(), dir: base },
          repeat: REPEAT,
          devServerDynamicConfig: DYNAMIC_CONFIG,
          units: { MB: 1e6, MiB },
          scenarios: results,
          speedupBvsA: { backup: a.backupSeconds / b.backupSeconds, restore: a.restoreSeconds / b.restoreSeconds },
          workflowFixedCost: { volumeBytes: 16 * MiB, backupSeconds: probe.backup, restoreSeconds: probe.restore },
          ddBlockSizeSweep: sweep.map((s) => ({ bs: s.bs, label: bsLabel(s.bs), seconds: s.seconds, samples: s.samples, MBps: MB(VOLUME_SIZE) / s.seconds })),
          targets: {
            fullVsDd: { want: 0.95, backup: a.backupRatio, restore: a.restoreRatio },
            sparseTimeShare: { wantAtMost: 0.2, backup: b.backupSeconds / a.backupSeconds, restore: b.restoreSeconds / a.restoreSeconds },
          },
        },
        null,
        2,
      ) + '\n',
    );
    say(`results written to ${jsonFile}`);
    if (!ok) process.exitCode = 1;
  } finally {
    await cleanup(world);
  }
}

run().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
