/**
 * One backup per volume at a time, with the control plane spread over hosts: two worker
 * processes ("hosts" h1 and h2: own config file, own stateDir, one PostgreSQL catalog, one
 * task queue, both roles) and two CLI configs holding only the Temporal connection, as two
 * client hosts would have. Twenty `gbackup backup create` processes race for ten volumes;
 * the workflow id `backup-volume-<id>` lets one through per volume, and the catalog's
 * conditional UPDATE (checked on its own below) would stop a second one anyway.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { workflowIds, type BackupResult, type BackupView, type VolumeView } from '../src/api.js';
import { spreadIndex } from '../src/activities/control.js';
import { PostgresCatalog } from '../src/catalog/postgres.js';
import { InvalidStatus } from '../src/errors.js';
import { MiB } from '../src/size.js';
import { makeEnv, volumeWithData, yamlWith, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { freshDatabase } from './helpers/postgres.js';
import { workerProcess, type WorkerProcess } from './helpers/worker-process.js';

const BIN = join(import.meta.dirname, '..', 'bin', 'gbackup.js');
const HOSTS = ['h1', 'h2'] as const;
const VOLUMES = 10;
const SIZE_MIB = 32;
/**
 * While the twenty CLIs start, every running backup is slowed to this (the product's own
 * `throttle` update): starting twenty node processes on a loaded machine can spread their
 * arrivals over tens of seconds, and a backup that finished before its rival arrived would
 * rightly let the rival through. 32 MiB at 512 KiB/s cannot finish within a minute.
 */
const HOLD_BPS = MiB / 2;

/** Undone last-first in afterAll, also when setup or a test failed halfway. */
const cleanups: (() => Promise<void>)[] = [];
let env: TestEnv;
const hostStateDirs: string[] = [];
const clientConfigs: string[] = [];
let vols: VolumeView[] = [];
const workers: WorkerProcess[] = [];
/** The backup each volume got in the race: filled by the first test, read by the list test. */
const winners = new Map<string, string>();

/** CLI processes still running, so a failed test leaves none behind. */
const clis = new Set<ResultPromise>();

interface CliResult {
  code: number | undefined;
  stdout: string;
  stderr: string;
  json: unknown;
  /** Milliseconds from the start of the race to this process's exit. */
  endedAt: number;
}

async function gb(config: string, t0: number, ...args: string[]): Promise<CliResult> {
  const p = execa('node', [BIN, '--config', config, ...args], { reject: false, stdin: 'ignore' });
  clis.add(p);
  try {
    const r = await p;
    let json: unknown;
    try {
      json = JSON.parse(r.stdout);
    } catch {
      json = undefined;
    }
    return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr, json, endedAt: Date.now() - t0 };
  } finally {
    clis.delete(p);
  }
}

/** The no-leak check once per host: findLeaks reads the node ledgers under the env's stateDir. */
async function leaksOnEveryHost() {
  return Promise.all(hostStateDirs.map((stateDir) => findLeaks({ ...env, config: { ...env.config, stateDir } })));
}

beforeAll(async () => {
  const nodes = `nodes:\n${HOSTS.map((h) => `  - { name: ${h}, backends: [alpha, beta, gamma] }`).join('\n')}\n`;
  // 8 MiB/s per node: ten 32 MiB backups on two nodes take tens of seconds, so they overlap;
  // 1 MiB blocks keep the throttle's slices short, so lifting the hold takes effect quickly.
  env = await makeEnv({ catalog: 'postgres', workers: false, yaml: yamlWith(`${nodes}copyBpsLimit: 8M\ncopyBlockSize: 1M`) });
  cleanups.push(() => env.cleanup());

  const workerYaml = readFileSync(env.configFile, 'utf8');
  const t = env.config.temporal;
  for (const h of HOSTS) {
    const hostDir = join(env.dir, h);
    mkdirSync(hostDir);
    const stateDir = join(hostDir, 'state');
    hostStateDirs.push(stateDir);
    // The same backends, targets, catalog and task queue; only the local state differs.
    const configFile = join(hostDir, 'worker.yaml');
    writeFileSync(configFile, workerYaml.replace(/^stateDir: .*$/m, `stateDir: ${stateDir}`));
    // The client host's directory holds its config and nothing else, before and after.
    const clientDir = join(env.dir, `client-${h}`);
    mkdirSync(clientDir);
    const client = join(clientDir, 'client.yaml');
    writeFileSync(client, `temporal: { address: '${t.address}', namespace: ${t.namespace}, taskQueue: ${t.taskQueue} }\n`);
    clientConfigs.push(client);
    const w = workerProcess({ dir: hostDir, configFile, node: h });
    workers.push(w);
    cleanups.push(() => w.stop());
  }
  // Undone before the workers stop: a failed test may leave CLIs and backups running.
  cleanups.push(async () => {
    await Promise.allSettled(vols.map((v) => env.client.client.workflow.getHandle(workflowIds.backup(v.id)).terminate('test cleanup')));
  });
  cleanups.push(async () => {
    for (const p of clis) p.kill('SIGKILL');
    await Promise.allSettled([...clis]);
  });
  await Promise.all(workers.map((w) => w.start()));

  // Random data all through (8 MiB pieces back to back): every byte is copied, at the limit.
  vols = await Promise.all(Array.from({ length: VOLUMES }, () => volumeWithData(env, 'alpha', 'gold', SIZE_MIB, [0, 8, 16, 24], 8 * MiB)));
}, 300_000);

afterAll(async () => {
  while (cleanups.length) await cleanups.pop()!().catch((e: unknown) => console.error('cleanup:', e));
}, 120_000);

describe('one backup per volume across hosts', () => {
  it('20 concurrent `backup create` CLIs on two client hosts: one wins per volume, the other gets BackupInProgress (exit 2)', async ({ onTestFailed }) => {
    onTestFailed(() => {
      for (const [i, w] of workers.entries()) console.log(`worker ${HOSTS[i]} said:\n${w.output().slice(-5000)}`);
    });
    const t0 = Date.now();
    // Each volume twice, once through each host's client config; the order alternates so
    // neither host always goes first.
    const runs = vols.flatMap((v, i) => {
      const order = i % 2 === 0 ? [0, 1] : [1, 0];
      // The hold: every backup copies at a crawl from its first byte, so the winner of each
      // volume still runs when the other CLI asks (lifted once every CLI has exited).
      return order.map((c) => ({ volumeId: v.id, client: c, result: gb(clientConfigs[c]!, t0, 'backup', 'create', v.id, '--json', '--bps', String(HOLD_BPS)) }));
    });
    const results = await Promise.all(runs.map((r) => r.result));
    const spread = results.map((r) => r.endedAt);
    const running = await Promise.all(vols.map(async (v) => (await env.client.client.workflow.getHandle(workflowIds.backup(v.id)).describe()).status.name));
    await Promise.allSettled(vols.map((v) => env.client.throttle(workflowIds.backup(v.id), null)));

    // Every outcome is one of exactly two.
    for (const [i, r] of results.entries()) {
      const run = runs[i]!;
      const what = `backup create ${run.volumeId} via client ${run.client + 1}: exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
      if (r.code === 0) {
        expect(r.json, what).toMatchObject({ volumeId: run.volumeId, status: 'creating', workflowId: workflowIds.backup(run.volumeId) });
        expect((r.json as { id: string }).id, what).toMatch(/^bak-[0-9a-f]{12}$/);
      } else {
        expect(r.code, what).toBe(2);
        const error = (r.json as { error?: { type: string; message: string } } | undefined)?.error;
        expect(error?.type, what).toBe('BackupInProgress');
        expect(error?.message, what).toMatch(new RegExp(`volume '${run.volumeId}' (already has a backup running|is already being backed up)`));
        expect(r.stderr, what).toMatch(/BackupInProgress: volume '.*' (already has a backup running|is already being backed up)/);
      }
    }
    const wonBy = new Map<string, number[]>();
    for (const [i, r] of results.entries()) if (r.code === 0) wonBy.set(runs[i]!.volumeId, [...(wonBy.get(runs[i]!.volumeId) ?? []), runs[i]!.client]);
    for (const v of vols) {
      expect(wonBy.get(v.id), `winners for ${v.id}`).toHaveLength(1);
      const i = runs.findIndex((r, j) => r.volumeId === v.id && results[j]!.code === 0);
      winners.set(v.id, (results[i]!.json as { id: string }).id);
    }
    expect(running, 'every winning backup was still running when the last CLI exited').toEqual(vols.map(() => 'RUNNING'));

    // Every backup runs to its end; then one row per volume, available, and nothing left over.
    const done = await Promise.all(vols.map((v) => env.client.result<BackupResult>(env.client.client.workflow.getHandle(workflowIds.backup(v.id)))));
    const finished = Date.now() - t0;
    for (const [i, v] of vols.entries()) {
      expect(done[i]!.backup).toMatchObject({ id: winners.get(v.id), volumeId: v.id, status: 'available', size: SIZE_MIB * MiB });
      const rows = await env.rt.catalog.listBackups(v.id);
      expect(rows.map((b) => [b.id, b.status])).toEqual([[winners.get(v.id), 'available']]);
      expect((await env.rt.catalog.volume(v.id)).status).toBe('available');
    }
    expect(await env.rt.catalog.countBackups()).toBe(VOLUMES);
    for (const leaks of await leaksOnEveryHost()) expect(leaks).toEqual(NO_LEAKS);

    const nodes = done.map((d) => d.backup.node);
    for (const n of nodes) expect(HOSTS).toContain(n);
    // Copies go where the backup id sends them unless that node failed to take the work in time.
    const moved = done.filter((d) => d.backup.node !== HOSTS[spreadIndex(d.backup.id, HOSTS.length)]).map((d) => d.backup.id);
    const viaClient = [...wonBy.values()].map(([c]) => c);
    const lost = results.find((r) => r.code === 2)!;
    console.log(
      `race: CLIs exited between ${Math.min(...spread)} and ${Math.max(...spread)} ms; winners via client 1: ${viaClient.filter((c) => c === 0).length}, ` +
        `client 2: ${viaClient.filter((c) => c === 1).length}; copies on h1: ${nodes.filter((n) => n === 'h1').length}, h2: ${nodes.filter((n) => n === 'h2').length} (moved off their first node: ${moved.length}); ` +
        `all backups done after ${finished} ms; a loser said: ${lost.stderr.trim()}`,
    );
  }, 300_000);

  it('`volume list` and `backup list` with a config holding only `temporal:` show the shared catalog', async () => {
    expect(winners.size, 'needs the race above').toBe(VOLUMES);
    for (const config of clientConfigs) {
      expect(readFileSync(config, 'utf8')).toMatch(/^temporal: \{[^\n]*\}\n$/);
      // No local state on a client host: no stateDir, no catalog file, after every command so far.
      expect(readdirSync(dirname(config))).toEqual(['client.yaml']);
      const vl = await gb(config, Date.now(), 'volume', 'list', '--json');
      expect(vl.code, vl.stderr).toBe(0);
      const listed = vl.json as VolumeView[];
      expect(listed.map((v) => v.id).sort()).toEqual(vols.map((v) => v.id).sort());
      for (const v of listed) expect(v.status).toBe('available');

      const bl = await gb(config, Date.now(), 'backup', 'list', '--json');
      expect(bl.code, bl.stderr).toBe(0);
      const backups = bl.json as BackupView[];
      expect(backups.map((b) => b.id).sort()).toEqual([...winners.values()].sort());
      for (const b of backups) expect(b).toMatchObject({ id: winners.get(b.volumeId), status: 'available', target: 'vault' });
    }
  });

  it('the catalog alone: 20 claims from two PostgresCatalog instances on one volume, exactly one wins', async () => {
    const db = await freshDatabase();
    // Opened together: both run the migrations, under the advisory lock.
    const catalogs = await Promise.all([PostgresCatalog.open(db), PostgresCatalog.open(db)]);
    cleanups.push(async () => {
      await Promise.allSettled(catalogs.map((c) => c.close()));
    });
    const [a, b] = catalogs;
    const id = 'vol-race0000001';
    await a.insertVolume({ id, name: 'race', backend: 'alpha', pool: 'gold', size: MiB, status: 'available' });
    // Every pool holds its connections before the race, so the claims meet in the database.
    await Promise.all(catalogs.flatMap((c) => Array.from({ length: 10 }, () => c.findVolume(id))));

    for (let round = 0; round < 10; round++) {
      const claims = await Promise.allSettled(
        Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).transitionVolume(id, ['available'], 'backing-up', { owner: `claim-${round}-${i}` })),
      );
      const won = claims.flatMap((c, i) => (c.status === 'fulfilled' ? [{ i, v: c.value }] : []));
      expect(won, `round ${round}`).toHaveLength(1);
      expect(won[0]!.v.status).toBe('backing-up');
      for (const c of claims) {
        if (c.status === 'fulfilled') continue;
        expect(c.reason, `round ${round}`).toBeInstanceOf(InvalidStatus);
        expect((c.reason as Error).message).toBe(`volume '${id}' is 'backing-up'; this needs it to be 'available'`);
      }
      // The winner is the owner on record, whichever catalog instance asked.
      expect(await b.volumeOwner(id)).toBe(`claim-${round}-${won[0]!.i}`);
      await a.transitionVolume(id, ['backing-up'], 'available');
    }
  });
});
