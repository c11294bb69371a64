/**
 * A control plane over several hosts: a PostgreSQL catalog shared by two control workers,
 * two node workers, each worker its own process with its own config file and stateDir
 * (as on four hosts). A control worker dies, SIGKILLed mid-backup; the other one finishes
 * the backup, which restores bit-exact, and the catalog and the storage are left as after
 * an undisturbed run. Then node workers in network namespaces of their own, which reach
 * Temporal over a veth and nothing else (not the catalog), still do a node's work.
 */
import { afterEach, describe, expect, inject, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import type { WorkflowHandle } from '@temporalio/client';
import { execa } from 'execa';
import type { BackupResult, RestoreResult } from '../src/api.js';
import { spreadIndex } from '../src/activities/control.js';
import { sha256File } from '../src/copy/checksum.js';
import { startDevServer } from '../src/dev/devserver.js';
import { AttachmentLedger } from '../src/node/ledger.js';
import { MiB } from '../src/size.js';
import { startWorkers } from '../src/workers/worker.js';
import { makeEnv, volumeWithData, yamlWith, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS, type LeakReport } from './helpers/leaks.js';
import { cleanupOnExit } from './helpers/minio.js';
import { progress, waitFor } from './helpers/wait.js';
import { workerProcess, type WorkerProcess } from './helpers/worker-process.js';

const twoNodes = 'nodes:\n  - { name: n1, backends: [alpha, beta, gamma] }\n  - { name: n2, backends: [alpha, beta, gamma] }\n';
// Short timeouts, so a dead worker is noticed in seconds; the copy limit makes a 96 MiB copy
// take ~6 s, long enough to kill a worker while it runs.
const haYaml = yamlWith(`timeouts: { heartbeat: 3, scheduleToStart: 5, reconcileEvery: 2 }\n${twoNodes}copyBpsLimit: 16M`);

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch((e: unknown) => console.error('cleanup failed:', e));
});

type Role = 'control' | 'node';
interface Host {
  tag: string;
  role: Role;
  stateDir: string;
  worker: WorkerProcess;
}

/**
 * One "host": the test world's config with a stateDir of its own, and a worker process on
 * it. Everything else (backends, targets, nodes, task queue, catalog) is the same config.
 */
function host(env: TestEnv, tag: string, role: Role, opts: { node?: string; wrap?: string[]; temporalAddress?: string } = {}): Host {
  const stateDir = join(env.dir, `state-${tag}`);
  const swap = (text: string, from: string, to: string) => {
    if (!text.includes(from)) throw new Error(`no '${from}' in ${env.configFile}`);
    return text.replace(from, to);
  };
  let mine = swap(readFileSync(env.configFile, 'utf8'), `stateDir: ${env.config.stateDir}\n`, `stateDir: ${stateDir}\n`);
  if (opts.temporalAddress) mine = swap(mine, `address: ${env.config.temporal.address},`, `address: ${opts.temporalAddress},`);
  const configFile = join(env.dir, `config-${tag}.yaml`);
  writeFileSync(configFile, mine);
  const worker = workerProcess({ dir: env.dir, configFile, name: tag, role, ...(opts.node ? { node: opts.node } : {}), ...(opts.wrap ? { wrap: opts.wrap } : {}) });
  cleanups.push(async () => worker.kill());
  return { tag, role, stateDir, worker };
}

/** findLeaks, plus the attachment ledgers of every host's own stateDir (findLeaks reads only the env's). */
async function leaksOn(env: TestEnv, hosts: Host[]): Promise<LeakReport> {
  const report = await findLeaks(env);
  for (const h of hosts) {
    const nodesDir = join(h.stateDir, 'nodes');
    if (!existsSync(nodesDir)) continue;
    for (const node of readdirSync(nodesDir)) {
      const l = new AttachmentLedger(join(nodesDir, node, 'ledger.sqlite'));
      report.ledgerEntries.push(...l.entries().map((e) => `${h.tag}/${node}: ${e.path}`));
      l.close();
    }
  }
  return report;
}

/** The workflow tasks workers completed: who (`<pid>@<host>`) and when (ms), in history order. */
async function completedWorkflowTasks(h: WorkflowHandle): Promise<{ identity: string; at: number }[]> {
  const history = await h.fetchHistory();
  return (history.events ?? []).flatMap((e) => {
    const identity = e.workflowTaskCompletedEventAttributes?.identity;
    return identity ? [{ identity, at: Number(e.eventTime?.seconds ?? 0) * 1000 + (e.eventTime?.nanos ?? 0) / 1e6 }] : [];
  });
}

const pidOf = (identity: string) => Number(identity.split('@')[0]);

/** The catalog after one backup of `volumeId`: everything at rest, that backup its only one. */
async function expectCatalogAtRest(env: TestEnv, volumeId: string, backupId: string): Promise<void> {
  const cat = env.rt.catalog;
  const backups = await cat.listBackups(volumeId);
  expect(backups.map((b) => ({ id: b.id, status: b.status }))).toEqual([{ id: backupId, status: 'available' }]);
  expect((await cat.listBackups()).filter((b) => b.status !== 'available')).toEqual([]);
  expect((await cat.listVolumes()).filter((v) => v.status !== 'available').map((v) => `${v.id}: ${v.status}`)).toEqual([]);
  expect(await cat.volumeOwner(volumeId)).toBeNull();
}

async function restoreAndSum(env: TestEnv, backupId: string): Promise<string> {
  const rh = await env.client.startRestore({ backupId, backend: 'gamma', newVolumeId: `vol-${randomBytes(6).toString('hex')}` });
  const { volume } = await env.client.result<RestoreResult>(rh);
  expect(volume.status).toBe('available');
  return env.volumes.sha256(volume.id);
}

describe('two control workers, two node workers, one PostgreSQL catalog, four stateDirs', () => {
  async function fourHosts(): Promise<{ env: TestEnv; controls: Host[]; nodes: Host[] }> {
    const env = await makeEnv({ workers: false, catalog: 'postgres', yaml: haYaml });
    cleanups.push(async () => env.cleanup());
    const controls = [host(env, 'control-a', 'control'), host(env, 'control-b', 'control')];
    const nodes = [host(env, 'node-1', 'node', { node: 'n1' }), host(env, 'node-2', 'node', { node: 'n2' })];
    await Promise.all([...controls, ...nodes].map((h) => h.worker.start()));
    return { env, controls, nodes };
  }

  it('finishes a backup on the other control worker when the one running it is SIGKILLed mid-copy', async () => {
    const { env, controls, nodes } = await fourHosts();
    const vol = await volumeWithData(env, 'alpha', 'gold', 96, [0, 16, 32, 48, 64, 80], 16 * MiB);
    const sum = await env.volumes.sha256(vol.id);
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    const h = await env.client.startBackup({ volumeId: vol.id, backupId }, { target: 'vault', backend: 'alpha' });
    await waitFor('copying', async () => {
      const p = await progress(h);
      return p.phase === 'copying' && p.bytesDone > 0;
    });

    // The workflow sticks to the control worker that ran its last task: that is the one to kill.
    const last = (await completedWorkflowTasks(h)).at(-1)!.identity;
    const running = controls.find((c) => c.worker.pid() === pidOf(last));
    expect(running, `last workflow task by ${last}; control pids ${controls.map((c) => c.worker.pid()).join(', ')}`).toBeDefined();
    const survivor = controls.find((c) => c !== running)!;
    const killedPid = running!.worker.pid()!;
    expect((await progress(h)).phase).toBe('copying');
    await running!.worker.kill();
    const killedAt = Date.now();

    const { backup } = await env.client.result<BackupResult>(h);
    expect(backup.status).toBe('available');
    expect(['n1', 'n2']).toContain(backup.node);
    // The rest of the workflow ran on the survivor: every task completed after the kill (a
    // second of slack for one the dying worker sent just before) is its, the last one too.
    const tasks = await completedWorkflowTasks(h);
    const after = tasks.filter((t) => t.at > killedAt + 1000).map((t) => pidOf(t.identity));
    expect(after.length).toBeGreaterThan(0);
    expect(new Set(after)).toEqual(new Set([survivor.worker.pid()]));
    expect(tasks.map((t) => pidOf(t.identity))).toContain(killedPid);
    expect(survivor.worker.alive()).toBe(true);
    expect(nodes.every((n) => n.worker.alive())).toBe(true);

    await expectCatalogAtRest(env, vol.id, backupId);
    expect(await sha256File(env.rt.driver('beta').initializeConnection({ pool: null, name: `backup-${backupId}` }).path)).toBe(sum);
    expect(await restoreAndSum(env, backupId)).toBe(sum);
    expect(await leaksOn(env, [...controls, ...nodes])).toEqual(NO_LEAKS);
  });

  it('retries a control step on the other control worker when the one running it dies in it', async () => {
    const { env, controls, nodes } = await fourHosts();
    // Whichever control worker takes finalize's first attempt dies in it, before it commits.
    for (const c of controls) c.worker.setFailpoints('finalize=crash');
    const vol = await volumeWithData(env, 'alpha', 'gold', 32, [0, 12, 28]);
    const sum = await env.volumes.sha256(vol.id);
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    const h = await env.client.startBackup({ volumeId: vol.id, backupId }, { target: 'vault', backend: 'alpha' });
    const { backup } = await env.client.result<BackupResult>(h);
    expect(backup.status).toBe('available');

    // The trail has a line per attempt that met the failpoint: the crash, and the retry that went on.
    const fired = (c: Host) => readFileSync(join(env.dir, `failpoints-${c.tag}.fired`), { encoding: 'utf8', flag: 'a+' });
    const dead = controls.filter((c) => !c.worker.alive());
    expect(dead.length, controls.map((c) => `${c.tag}: ${fired(c)}`).join('; ')).toBe(1);
    expect(fired(dead[0]!)).toBe('finalize=crash@1\n');
    expect(dead[0]!.worker.output()).toContain("failpoint 'finalize': killing worker");
    const survivor = controls.find((c) => c !== dead[0])!;
    // Finalize is a local activity: the workflow task that replaces the dead worker's runs it
    // again (from attempt 1), and the crash fires once per run.
    expect(fired(survivor)).toMatch(/^finalize=crash@\d+\n$/);
    // The retry, on the survivor, is what recorded the backup: a local activity's result is a
    // marker written with the workflow task that ran it, and that task was the survivor's.
    const events = (await h.fetchHistory()).events ?? [];
    const finalize = events.find((e) => {
      const marker = e.markerRecordedEventAttributes;
      const raw = marker?.details?.data?.payloads?.[0]?.data;
      return marker?.markerName === 'core_local_activity' && raw != null && (JSON.parse(Buffer.from(raw).toString('utf8')) as { activity_type?: string }).activity_type === 'finalizeBackup';
    });
    expect(finalize, 'a finalizeBackup marker').toBeDefined();
    const task = events.find((e) => e.eventId?.toString() === finalize!.markerRecordedEventAttributes!.workflowTaskCompletedEventId?.toString());
    expect(pidOf(task!.workflowTaskCompletedEventAttributes!.identity!)).toBe(survivor.worker.pid());
    expect(nodes.every((n) => n.worker.alive())).toBe(true);

    await expectCatalogAtRest(env, vol.id, backupId);
    // The restore's finalize meets the same failpoint, and only one control worker is left.
    survivor.worker.setFailpoints('');
    expect(await restoreAndSum(env, backupId)).toBe(sum);
    expect(await leaksOn(env, [...controls, ...nodes])).toEqual(NO_LEAKS);
  });
});

/** `ip` with arguments; throws with its stderr, unless `tolerant`. */
async function ip(args: string[], tolerant = false): Promise<void> {
  const r = await execa('ip', args, { reject: false, stdin: 'ignore' });
  if (r.exitCode !== 0 && !tolerant) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}

/** A /30 subnet 10.213.<third>.<base>/30 whose addresses no interface here holds. */
async function freeSubnets(count: number): Promise<string[]> {
  const { stdout } = await execa('ip', ['-4', '-o', 'addr', 'show']);
  for (let tries = 0; tries < 50; tries++) {
    const third = 1 + Math.floor(Math.random() * 254);
    if (!stdout.includes(`10.213.${third}.`)) return Array.from({ length: count }, (_, i) => `10.213.${third}.${i * 4}`);
  }
  throw new Error('no free 10.213.x.0/24 for the test namespaces');
}

/**
 * A network namespace joined to this one by a veth pair on a /30 of its own: the host end
 * gets .1 (.5, ...), the namespace end .2 (.6, ...). Nothing routes beyond the pair, so
 * from inside only the host end's address is reachable.
 */
interface NetNs {
  name: string;
  hostAddress: string;
  nsAddress: string;
  remove(): Promise<void>;
}

async function netns(tag: string, subnet: string): Promise<NetNs> {
  const [a, b, c, d] = subnet.split('.').map(Number) as [number, number, number, number];
  const hostAddress = `${a}.${b}.${c}.${d + 1}`;
  const nsAddress = `${a}.${b}.${c}.${d + 2}`;
  const suffix = randomBytes(3).toString('hex');
  const name = `gbk-${tag}-${suffix}`;
  // Interface names have at most 15 characters.
  const hostIf = `gbk${suffix}${tag}h`.slice(0, 15);
  const nsIf = `gbk${suffix}${tag}n`.slice(0, 15);
  const removeSync = () => {
    spawnSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    spawnSync('ip', ['link', 'del', hostIf], { stdio: 'ignore' });
  };
  const forget = cleanupOnExit(removeSync);
  const ns: NetNs = {
    name,
    hostAddress,
    nsAddress,
    async remove() {
      forget();
      // Deleting the namespace takes its veth end, and with it the pair; the host end is
      // deleted too in case the namespace never got its end.
      await ip(['netns', 'del', name], true);
      await ip(['link', 'del', hostIf], true);
    },
  };
  try {
    await ip(['netns', 'add', name]);
    await ip(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
    await ip(['link', 'set', nsIf, 'netns', name]);
    await ip(['addr', 'add', `${hostAddress}/30`, 'dev', hostIf]);
    await ip(['link', 'set', hostIf, 'up']);
    await ip(['netns', 'exec', name, 'ip', 'addr', 'add', `${nsAddress}/30`, 'dev', nsIf]);
    await ip(['netns', 'exec', name, 'ip', 'link', 'set', nsIf, 'up']);
    await ip(['netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up']);
  } catch (e) {
    await ns.remove();
    throw e;
  }
  return ns;
}

/**
 * A TCP relay from `listen` (an address, port chosen here) to `target` (host:port).
 * Temporal's dev server cannot listen on one non-loopback address: its services then bind
 * there but dial each other at 127.0.0.1 and never come up (only 0.0.0.0 or 127.0.0.1 work).
 * So the suite's server stays on loopback, and each veth's host end gets a relay to it.
 */
async function relay(listen: string, target: string): Promise<{ address: string; close(): Promise<void> }> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const open = new Set<Socket>();
  const server = createServer((inbound) => {
    const outbound = createConnection({ host, port });
    for (const [a, b] of [
      [inbound, outbound],
      [outbound, inbound],
    ] as const) {
      open.add(a);
      a.pipe(b);
      a.on('error', () => b.destroy());
      a.on('close', () => {
        open.delete(a);
        b.destroy();
      });
    }
  });
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen(0, listen, () => res());
  });
  const { port: bound } = server.address() as { port: number };
  return {
    address: `${listen}:${bound}`,
    close: () =>
      new Promise<void>((res) => {
        for (const s of open) s.destroy();
        server.close(() => res());
      }),
  };
}

/** Whether a TCP connection from inside namespace `ns` to host:port succeeds. */
async function canConnect(ns: string, address: string, port: number): Promise<boolean> {
  const script = `const s=require('net').connect(${port},'${address}',()=>process.exit(0));s.on('error',()=>process.exit(1));setTimeout(()=>process.exit(2),3000)`;
  const r = await execa('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { reject: false, stdin: 'ignore' });
  return r.exitCode === 0;
}

describe('node workers on hosts of their own (network namespaces)', () => {
  it('runs each node step on its node, reaching only Temporal, over a veth', async () => {
    const [s1, s2] = (await freeSubnets(2)) as [string, string];
    const spaces = [await netns('1', s1)];
    cleanups.push(() => spaces[0]!.remove());
    spaces.push(await netns('2', s2));
    cleanups.push(() => spaces[1]!.remove());
    const env = await makeEnv({ workers: false, catalog: 'postgres', yaml: haYaml });
    cleanups.push(async () => env.cleanup());
    // Temporal on the veth's address itself would be the plain way; the dev server cannot (see relay()).
    await expect(startDevServer({ ip: spaces[0]!.hostAddress, dbFile: join(env.dir, 'unused.sqlite'), uiPort: null })).rejects.toThrow(/cannot listen on/);
    const relays = await Promise.all(spaces.map((ns) => relay(ns.hostAddress, env.config.temporal.address)));
    cleanups.push(async () => void (await Promise.all(relays.map((r) => r.close()))));

    // The isolation is real: from inside, Temporal (through the relay) answers, and neither
    // Temporal on loopback nor the catalog database does.
    const portOf = (address: string) => Number(address.slice(address.lastIndexOf(':') + 1));
    const catalogUrl = new URL((env.config.catalog as { url: string }).url);
    for (const [i, ns] of spaces.entries()) {
      expect(await canConnect(ns.name, ns.hostAddress, portOf(relays[i]!.address))).toBe(true);
      expect(await canConnect(ns.name, '127.0.0.1', portOf(env.config.temporal.address))).toBe(false);
      expect(await canConnect(ns.name, catalogUrl.hostname, Number(catalogUrl.port))).toBe(false);
    }

    const control = await startWorkers({ config: env.config, roles: { control: true, node: false }, workflowBundle: { code: inject('workflowCode') }, log: () => undefined });
    cleanups.push(() => control.shutdown());
    const nodes = [
      host(env, 'node-1', 'node', { node: 'n1', wrap: ['ip', 'netns', 'exec', spaces[0]!.name], temporalAddress: relays[0]!.address }),
      host(env, 'node-2', 'node', { node: 'n2', wrap: ['ip', 'netns', 'exec', spaces[1]!.name], temporalAddress: relays[1]!.address }),
    ];
    await Promise.all(nodes.map((n) => n.worker.start()));

    // One backup routed to each node (the first choice is spreadIndex of the backup id).
    const idFor = (index: number) => {
      for (;;) {
        const id = `bak-${randomBytes(4).toString('hex')}`;
        if (spreadIndex(id, 2) === index) return id;
      }
    };
    const runs = await Promise.all(
      ['n1', 'n2'].map(async (node, i) => {
        const vol = await volumeWithData(env, 'alpha', 'gold', 32, [0, 12, 28]);
        const sum = await env.volumes.sha256(vol.id);
        const backupId = idFor(i);
        const h = await env.client.startBackup({ volumeId: vol.id, backupId }, { target: 'vault', backend: 'alpha' });
        return { node, vol, backupId, sum, h };
      }),
    );
    const results = await Promise.all(runs.map((r) => env.client.result<BackupResult>(r.h)));
    for (const [i, r] of runs.entries()) {
      expect(results[i]!.backup).toMatchObject({ id: r.backupId, status: 'available', node: r.node });
      expect(await sha256File(env.rt.driver('beta').initializeConnection({ pool: null, name: `backup-${r.backupId}` }).path)).toBe(r.sum);
      await expectCatalogAtRest(env, r.vol.id, r.backupId);
      expect(await restoreAndSum(env, r.backupId)).toBe(r.sum);
    }
    expect(nodes.every((n) => n.worker.alive())).toBe(true);
    expect(await leaksOn(env, nodes)).toEqual(NO_LEAKS);
  });
});
