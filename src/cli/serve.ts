/** Long-running commands: `worker`, `dev` (dev server + worker) and `demo`. */
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { BackupResult, BackupView, RestoreResult } from '../api.js';
import { GbackupClient } from '../client/client.js';
import { parseConfig, type LoadedConfig } from '../config/load.js';
import { freePort, portIsFree, startDevServer } from '../dev/devserver.js';
import { Runtime } from '../services/runtime.js';
import { formatBytes, MiB } from '../size.js';
import { checkSize, Volumes } from '../services/volumes.js';
import { sha256File } from '../copy/checksum.js';
import { startWorkers } from '../workers/worker.js';
import { installLogger } from '../workers/logging.js';
import { showProgress } from './progress.js';

function untilSignal(): Promise<string> {
  return new Promise((res) => {
    const on = (s: string) => res(s);
    process.once('SIGINT', on);
    process.once('SIGTERM', on);
  });
}

export async function runWorker(config: LoadedConfig, node?: string, role: 'control' | 'node' | 'both' = 'both'): Promise<void> {
  installLogger();
  const w = await startWorkers({ config, node, roles: { control: role !== 'node', node: role !== 'control' } });
  const stop = untilSignal().then(() => w.shutdown());
  await Promise.race([w.done, stop]);
}

function splitAddress(address: string): { host: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(address);
  return m ? { host: m[1]!, port: Number(m[2]) } : { host: address, port: 7233 };
}

export async function runDev(config: LoadedConfig, opts: { port?: string; uiPort?: string }): Promise<void> {
  installLogger('WARN');
  const { host, port } = splitAddress(config.temporal.address);
  const server = await startDevServer({
    ip: host,
    port: opts.port ? Number(opts.port) : port,
    uiPort: opts.uiPort ? Number(opts.uiPort) : 8233,
    dbFile: join(config.stateDir, 'temporal.sqlite'),
  });
  // The worker talks to this plain local server: not to TEMPORAL_ADDRESS, not with the config's TLS or API key.
  const local = { ...config, temporal: { ...config.temporal, address: server.address, tls: false, apiKeyFile: undefined } };
  const w = await startWorkers({ config: local, env: {} }).catch(async (e: unknown) => {
    await server.stop();
    throw e;
  });
  process.stderr.write(`gbackup dev: Temporal at ${server.address}, UI at ${server.uiUrl}. Ctrl-C stops.\n`);
  await untilSignal();
  await w.shutdown();
  await server.stop();
}

/** A demo image: random data in three places, holes in between, so the sparse copy shows. */
async function writeDemoImage(file: string, size: number): Promise<void> {
  const fh = await open(file, 'w');
  try {
    await fh.truncate(size);
    for (const at of [0, Math.floor(size / 2 / MiB) * MiB, size - 4 * MiB]) await fh.write(randomBytes(4 * MiB), 0, 4 * MiB, at);
  } finally {
    await fh.close();
  }
}

export async function runDemo(opts: { keepRunning?: boolean; size?: string }): Promise<void> {
  installLogger('WARN');
  const dir = resolve('var', 'demo');
  mkdirSync(dir, { recursive: true });
  const say = (m: string) => process.stderr.write(`${m}\n`);
  const size = checkSize(opts.size ?? '64M');
  if (size < 16 * MiB) throw new Error('demo size must be at least 16M');
  const port = await freePort();
  const yaml = `# written by 'gbackup demo'
temporal: { address: 127.0.0.1:${port}, namespace: default, taskQueue: gbackup-demo }
stateDir: ${dir}
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold, silver] }
  - { name: beta,  driver: file, path: ${dir}/beta }
  - { name: gamma, driver: file, path: ${dir}/gamma }
targets:
  - { name: vault, driver: volume, backend: beta }
  - { name: shelf, driver: posix, path: ${dir}/objects, compression: zstd }
defaultTarget: vault
`;
  writeFileSync(join(dir, 'config.yaml'), yaml);
  // An object target's directory is the operator's to make (a store never creates its root).
  mkdirSync(join(dir, 'objects'), { recursive: true });
  const config = parseConfig(yaml, join(dir, 'config.yaml'), dir);
  say(`demo: config ${join(dir, 'config.yaml')}; starting Temporal dev server...`);
  // The UI on its usual port when that is free, so the printed link is the familiar one.
  const server = await startDevServer({ port, uiPort: (await portIsFree(8233)) ? 8233 : await freePort(), dbFile: join(dir, 'temporal.sqlite') });
  // The demo's own local server, whatever TEMPORAL_* the shell has set.
  const workers = await startWorkers({ config, log: say, env: {} });
  const rt = await Runtime.open(config);
  const client = await GbackupClient.connect(config, {});
  try {
    const image = join(dir, 'demo-source.img');
    await writeDemoImage(image, size);
    const volumes = new Volumes(rt);
    // Through Temporal, as every command goes: the control worker makes the volume, a node fills it.
    const source = await client.importVolume({ volumeId: `vol-${randomBytes(6).toString('hex')}`, backend: 'alpha', pool: 'gold', file: image, name: 'demo-source' });
    say(`demo: volume ${source.id} on alpha/gold, ${formatBytes(source.size)} (12 MiB of random data, the rest holes)`);

    const backupId = `bak-${randomBytes(6).toString('hex')}`;
    const bh = await client.startBackup({ volumeId: source.id, backupId, target: 'vault' }, { target: 'vault', backend: 'alpha' });
    const { backup } = await showProgress(client.result<BackupResult>(bh), () => client.progress(bh));
    say(`demo: backup ${backup.id} ${backup.status} on target vault (backend beta), ${formatBytes(backup.storedBytes)} copied by node ${backup.node}`);

    const restored: { where: string; id: string }[] = [];
    for (const [backend, pool] of [
      ['gamma', undefined],
      ['alpha', 'silver'],
    ] as const) {
      const rh = await client.startRestore({ backupId, backend, ...(pool ? { pool } : {}), newVolumeId: `vol-${randomBytes(6).toString('hex')}` });
      const r = await showProgress(client.result<RestoreResult>(rh), () => client.progress(rh));
      restored.push({ where: `${backend}${pool ? `/${pool}` : ''}`, id: r.volume.id });
    }

    // The same volume to an object target: chunks, zstd, then an incremental that finds nothing new.
    const objectBackups: BackupView[] = [];
    for (const incremental of [false, true]) {
      const id = `bak-${randomBytes(6).toString('hex')}`;
      const oh = await client.startBackup({ volumeId: source.id, backupId: id, target: 'shelf', incremental }, { target: 'shelf', backend: 'alpha' });
      const { backup: ob } = await showProgress(client.result<BackupResult>(oh), () => client.progress(oh));
      objectBackups.push(ob);
      say(
        `demo: ${incremental ? `incremental backup ${ob.id} on top of ${ob.parentId}` : `backup ${ob.id}`} ${ob.status} on target shelf (posix objects): ` +
          `${formatBytes(ob.storedBytes)} stored`,
      );
    }
    const orh = await client.startRestore({ backupId: objectBackups[1]!.id, backend: 'gamma', newVolumeId: `vol-${randomBytes(6).toString('hex')}` });
    const or = await showProgress(client.result<RestoreResult>(orh), () => client.progress(orh));
    restored.push({ where: `gamma, from the chain on shelf`, id: or.volume.id });
    const sums = [
      { what: `source   ${source.id} (alpha/gold)`, sum: await volumes.sha256(source.id) },
      { what: `backup   ${backupId} (beta, target vault)`, sum: await sha256File(rt.driver('beta').initializeConnection({ pool: null, name: `backup-${backupId}` }).path) },
      ...(await Promise.all(restored.map(async (r) => ({ what: `restored ${r.id} (${r.where})`, sum: await volumes.sha256(r.id) })))),
    ];
    process.stdout.write(`\nsha256 of each copy:\n${sums.map((s) => `  ${s.sum}  ${s.what}`).join('\n')}\n`);
    const same = sums.every((s) => s.sum === sums[0]!.sum);
    process.stdout.write(same ? 'all identical: the backups restored bit-exact onto other storages\n' : 'MISMATCH: a copy differs\n');
    if (server.uiUrl) {
      process.stdout.write(
        `\nTemporal UI: ${server.uiUrl}/namespaces/default/workflows?query=${encodeURIComponent(`GbackupVolumeId="${source.id}" OR GbackupBackupId="${backupId}"`)}\n`,
      );
    }
    if (!same) process.exitCode = 1;
    const keep = opts.keepRunning ?? (process.stdin.isTTY === true && process.env.CI === undefined);
    if (keep) {
      say('demo: the dev server and worker keep running so you can look around in the UI. Ctrl-C stops them.');
      await untilSignal();
    }
  } finally {
    await client.close();
    await rt.close();
    await workers.shutdown();
    await server.stop();
  }
}
