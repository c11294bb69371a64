/**
 * A Temporal server that never heard of gbackup's search attributes (a plain
 * `temporal server start-dev`, or an existing production namespace): the CLI says which
 * attributes are missing and how to register them, a worker told not to register them
 * refuses to start with the same words, and a worker allowed to registers them and then
 * everything works. A real dev server of its own, started without --search-attribute.
 */
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { parseConfig } from '../src/config/load.js';
import { startDevServer, temporalBinary, type DevServer } from '../src/dev/devserver.js';
import { startWorkers } from '../src/workers/worker.js';
import { missingSearchAttributes, SEARCH_ATTRIBUTE_NAMES } from '../src/workers/search-attributes.js';
import { MissingSearchAttributes } from '../src/errors.js';
import { makeEnv, volumeWithData, type TestEnv } from './helpers/env.js';

let server: DevServer;
let serverDir: string;
let env: TestEnv;

beforeAll(async () => {
  serverDir = mkdtempSync(join(tmpdir(), 'gbackup-plain-temporal-'));
  server = await startDevServer({ dbFile: join(serverDir, 'temporal.sqlite'), uiPort: null, searchAttributes: false });
  env = await makeEnv({ address: server.address, workers: false });
});

afterAll(async () => {
  try {
    await env?.cleanup();
  } finally {
    await server?.stop();
    rmSync(serverDir, { recursive: true, force: true });
  }
});

const BIN = join(import.meta.dirname, '..', 'bin', 'gbackup.js');
const gb = (...args: string[]) => execa('node', [BIN, '--config', env.configFile, ...args], { reject: false });

/** The exact registration command for one attribute, as both messages print it. */
const command = (name: string) => `temporal operator search-attribute create --address ${server.address} --namespace default --name ${name} --type Keyword`;

describe('search attributes on a namespace without them', () => {
  it('the CLI maps the server refusal to a message listing every missing attribute and its command', async () => {
    expect(await missingSearchAttributes(env.client.client.connection, 'default')).toEqual(SEARCH_ATTRIBUTE_NAMES);
    const v = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const t0 = performance.now();
    const r = await gb('backup', 'create', v.id, '--wait');
    const seconds = (performance.now() - t0) / 1000;
    console.log(`missing search attributes: CLI exit ${r.exitCode} after ${seconds.toFixed(1)} s: ${r.stderr.split('\n').slice(1, 3).join(' / ')}`);
    expect(r.exitCode, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/Temporal namespace 'default' at .* lacks gbackup's search attributes .*the server refused to start the workflow/);
    for (const n of SEARCH_ATTRIBUTE_NAMES) expect(r.stderr).toContain(command(n));
    expect(seconds).toBeLessThan(30);
    // Nothing was claimed: the volume is as it was, no backup exists.
    expect((await env.rt.catalog.volume(v.id)).status).toBe('available');
    expect(await env.rt.catalog.listBackups(v.id)).toEqual([]);
  });

  it('a worker that may not register them refuses to start, naming them; the printed command works as printed', async () => {
    const yaml = `temporal: { address: ${server.address}, namespace: default, taskQueue: ${env.config.temporal.taskQueue}, registerSearchAttributes: false }
stateDir: ${env.dir}/state
backends:
  - { name: alpha, driver: file, path: ${env.dir}/alpha, pools: [gold, silver] }
  - { name: beta,  driver: file, path: ${env.dir}/beta }
targets:
  - { name: vault, driver: volume, backend: beta }
`;
    const config = parseConfig(yaml, join(env.dir, 'strict.yaml'), env.dir);
    const refused = startWorkers({ config, workflowBundle: { code: inject('workflowCode') }, log: () => undefined });
    await expect(refused).rejects.toBeInstanceOf(MissingSearchAttributes);
    const message = await refused.catch((e: Error) => e.message);
    expect(message).toMatch(/lacks gbackup's search attributes .*temporal\.registerSearchAttributes is off/);
    for (const n of SEARCH_ATTRIBUTE_NAMES) expect(message).toContain(command(n));
    // The operator runs what the message says, with the real Temporal CLI.
    const [, ...args] = command('GbackupVolumeId').split(' ');
    const ran = await execa(temporalBinary(), args, { reject: false });
    expect(ran.exitCode, ran.stderr).toBe(0);
    const conn = env.client.client.connection;
    expect(await missingSearchAttributes(conn, 'default')).toEqual(SEARCH_ATTRIBUTE_NAMES.filter((n) => n !== 'GbackupVolumeId'));
  });

  it('a worker that may registers the missing ones at start, says so in one line, and backups then work', async () => {
    const lines: string[] = [];
    env.workers = await startWorkers({ config: env.config, workflowBundle: { code: inject('workflowCode') }, log: (m) => lines.push(m) });
    const conn = env.client.client.connection;
    expect(await missingSearchAttributes(conn, 'default')).toEqual([]);
    expect(lines).toContain(`gbackup worker: registered search attributes ${SEARCH_ATTRIBUTE_NAMES.filter((n) => n !== 'GbackupVolumeId').join(', ')} in namespace 'default'`);
    // One line per role and queue, nothing else at start.
    expect(lines.filter((l) => / role /.test(l))).toHaveLength(2);
    expect(lines.find((l) => l.includes('control role'))).toContain(`task queue '${env.config.temporal.taskQueue}'`);
    expect(lines.find((l) => l.includes('node role'))).toContain(`task queue '${env.config.temporal.taskQueue}-node-`);
    const v = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const r = await gb('backup', 'create', v.id, '--wait', '--json');
    expect(r.exitCode, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ volumeId: v.id, status: 'available' });
    // A second start finds them all and registers nothing.
    await env.workers.shutdown();
    const again: string[] = [];
    env.workers = await startWorkers({ config: env.config, workflowBundle: { code: inject('workflowCode') }, log: (m) => again.push(m) });
    expect(again.filter((l) => l.includes('registered'))).toEqual([]);
  });
});
