/**
 * A test world on real parts: a temporary directory with file backends, a config, the
 * catalog, and in-process workers (control + node) on the suite's real Temporal server,
 * each test file on its own task queue. `cleanup` stops the workers and detaches any
 * loop device under the directory, so a failed test leaves nothing behind either.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { inject } from 'vitest';
import { Runtime as TemporalRuntime, DefaultLogger } from '@temporalio/worker';
import { execa } from 'execa';
import { GbackupClient } from '../../src/client/client.js';
import { parseConfig, type LoadedConfig } from '../../src/config/load.js';
import { listLoopDevices } from '../../src/connectors/loop.js';
import { Connectors } from '../../src/connectors/registry.js';
import { Runtime } from '../../src/services/runtime.js';
import { Volumes } from '../../src/services/volumes.js';
import { startWorkers, type RunningWorkers } from '../../src/workers/worker.js';
import { MiB } from '../../src/size.js';
import { freshDatabase } from './postgres.js';

let loggerInstalled = false;
/** Worker logs at ERROR (expected activity failures are WARN), so test output shows what matters. */
export function quietTemporal(): void {
  if (loggerInstalled) return;
  loggerInstalled = true;
  try {
    TemporalRuntime.install({ logger: new DefaultLogger('ERROR') });
  } catch {
    // already installed by another helper in this process
  }
}

export interface TestEnv {
  dir: string;
  config: LoadedConfig;
  configFile: string;
  rt: Runtime;
  client: GbackupClient;
  volumes: Volumes;
  workers: RunningWorkers | null;
  startWorkers(): Promise<RunningWorkers>;
  cleanup(): Promise<void>;
}

export const DEFAULT_YAML = (dir: string, taskQueue: string, address: string) => `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold, silver] }
  - { name: beta,  driver: file, path: ${dir}/beta }
  - { name: gamma, driver: file, path: ${dir}/gamma }
targets:
  - { name: vault, driver: volume, backend: beta }
defaultTarget: vault
`;

/** The default test world plus extra top-level config lines (timeouts, nodes, limits). */
export const yamlWith =
  (extra: string) =>
  (dir: string, taskQueue: string, address: string): string =>
    `${DEFAULT_YAML(dir, taskQueue, address)}${extra}\n`;

/** The catalog line of a test world on the suite's PostgreSQL: a fresh database of its own. */
export async function postgresCatalogYaml(): Promise<string> {
  const db = await freshDatabase();
  return `catalog: { driver: postgres, url: '${db.url}', passwordFile: '${db.passwordFile}' }\n`;
}

export async function makeEnv(
  opts: { yaml?: (dir: string, taskQueue: string, address: string) => string; workers?: boolean; address?: string; catalog?: 'sqlite' | 'postgres' } = {},
): Promise<TestEnv> {
  quietTemporal();
  const dir = mkdtempSync(join(tmpdir(), 'gbackup-test-'));
  const taskQueue = `t-${randomBytes(4).toString('hex')}`;
  const address = opts.address ?? inject('temporalAddress');
  const yaml = (opts.yaml ?? DEFAULT_YAML)(dir, taskQueue, address) + (opts.catalog === 'postgres' ? await postgresCatalogYaml() : '');
  const configFile = join(dir, 'config.yaml');
  writeFileSync(configFile, yaml);
  const config = parseConfig(yaml, configFile, dir);
  const rt = await Runtime.open(config);
  const client = await GbackupClient.connect(config);
  const env: TestEnv = {
    dir,
    config,
    configFile,
    rt,
    client,
    volumes: new Volumes(rt),
    workers: null,
    async startWorkers() {
      env.workers = await startWorkers({ config, workflowBundle: { code: inject('workflowCode') }, log: () => undefined });
      return env.workers;
    },
    async cleanup() {
      await env.workers?.shutdown().catch(() => undefined);
      await client.close().catch(() => undefined);
      await rt.close();
      const roots = [dir, ...config.backends.map((b) => `${b.path}/`)];
      for (const d of await listLoopDevices()) {
        if (roots.some((r) => d.backingFile.startsWith(r))) await execa('losetup', ['-d', d.device], { reject: false });
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  if (opts.workers !== false) await env.startWorkers();
  return env;
}

/** A sparse image with random data at the given MiB offsets (4 MiB each by default). */
export async function makeImage(file: string, size: number, dataAtMiB: number[], chunk = 4 * MiB): Promise<void> {
  const fh = await open(file, 'w');
  try {
    await fh.truncate(size);
    for (const at of dataAtMiB) await fh.write(randomBytes(chunk), 0, chunk, at * MiB);
  } finally {
    await fh.close();
  }
}

/** A volume on `backend` holding random data (and holes), made through the real import path. */
export async function volumeWithData(env: TestEnv, backend: string, pool: string | undefined, sizeMiB = 32, dataAtMiB = [0, 12, sizeMiB - 4], chunk = 4 * MiB) {
  const img = join(env.dir, `src-${randomBytes(3).toString('hex')}.img`);
  await makeImage(img, sizeMiB * MiB, dataAtMiB, chunk);
  const v = await env.volumes.import({ backend, pool, file: img });
  rmSync(img);
  return v;
}

/** Overwrites `len` bytes of a volume's image at `atMiB` with random data (a change for the next backup). */
export async function scribble(env: TestEnv, volumeId: string, atMiB: number, len = 64 * 1024): Promise<void> {
  const v = await env.rt.catalog.volume(volumeId);
  const fh = await open(env.rt.driver(v.backend).initializeConnection({ pool: v.pool, name: v.id }).path, 'r+');
  try {
    await fh.write(randomBytes(len), 0, len, atMiB * MiB);
  } finally {
    await fh.close();
  }
}

/**
 * Marks a volume in use by an instance and attaches it here, in-process, for tests that run
 * activities without workers (the product does this through the attachVolume workflow).
 */
export async function attachInProcess(env: TestEnv, volumeId: string, instance: string): Promise<{ device: string }> {
  const v = await env.rt.catalog.transitionVolume(volumeId, ['available'], 'in-use', { instance });
  return new Connectors(env.rt.allRoots()).connectVolume(env.rt.driver(v.backend).initializeConnection({ pool: v.pool, name: v.id }));
}

export async function detachInProcess(env: TestEnv, volumeId: string): Promise<void> {
  const v = await env.rt.catalog.volume(volumeId);
  await new Connectors(env.rt.allRoots()).disconnectVolume(env.rt.driver(v.backend).initializeConnection({ pool: v.pool, name: v.id }));
  await env.rt.catalog.transitionVolume(v.id, ['in-use'], 'available', { instance: null });
}
