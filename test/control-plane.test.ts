/**
 * The control plane spans hosts: every CLI command runs on a control worker, so a host
 * with nothing but the Temporal connection in its config drives everything, and an
 * embedded SQLite catalog moves into PostgreSQL with `catalog migrate` losing nothing.
 * Real Temporal, real PostgreSQL, real loop devices, the real `gbackup` binary.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { openCatalog } from '../src/catalog/open.js';
import type { Catalog } from '../src/catalog/catalog.js';
import { parseConfig } from '../src/config/load.js';
import { sha256File } from '../src/copy/checksum.js';
import { MiB } from '../src/size.js';
import { makeEnv, makeImage, postgresCatalogYaml, yamlWith, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';

const BIN = join(import.meta.dirname, '..', 'bin', 'gbackup.js');

let env: TestEnv;
/** A config with only the Temporal connection: what an operator's laptop has. */
let clientConfig: string;
const transfer = () => join(env.dir, 'transfer');

beforeAll(async () => {
  env = await makeEnv({ yaml: (dir, q, a) => yamlWith(`transferDirs: [${join(dir, 'transfer')}]`)(dir, q, a) });
  mkdirSync(transfer(), { recursive: true });
  clientConfig = join(env.dir, 'client.yaml');
  writeFileSync(clientConfig, `temporal: { address: ${env.config.temporal.address}, namespace: default, taskQueue: ${env.config.temporal.taskQueue} }\n`);
});
afterAll(async () => {
  await env?.cleanup();
});

async function gb(config: string, ...args: string[]) {
  // No TEMPORAL_* from the shell: the config alone says where Temporal is.
  const r = await execa('node', [BIN, '--config', config, '--json', ...args], { reject: false, env: { TEMPORAL_ADDRESS: '', TEMPORAL_NAMESPACE: '' } });
  let json: unknown;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    json = undefined;
  }
  return { code: r.exitCode, stderr: r.stderr, json: json as Record<string, unknown> & Record<string, unknown>[] };
}

describe('every command through Temporal', () => {
  it('drives volumes, backups and lists from a host whose config holds only temporal:', async () => {
    const img = join(transfer(), 'disk.img');
    await makeImage(img, 12 * MiB, [0, 8]);
    const imp = await gb(clientConfig, 'volume', 'import', '--backend', 'alpha', '--pool', 'gold', '--file', img, '--name', 'remote-src');
    expect(imp.code, imp.stderr).toBe(0);
    expect(imp.json).toMatchObject({ name: 'remote-src', backend: 'alpha', pool: 'gold', size: 12 * MiB, status: 'available' });
    const volumeId = imp.json.id as string;

    const bk = await gb(clientConfig, 'backup', 'create', volumeId, '--wait');
    expect(bk.code, bk.stderr).toBe(0);
    const backupId = bk.json.id as string;

    const vols = await gb(clientConfig, 'volume', 'list');
    expect(vols.code, vols.stderr).toBe(0);
    expect((vols.json as unknown as { id: string }[]).map((v) => v.id)).toContain(volumeId);
    const backups = await gb(clientConfig, 'backup', 'list', '--volume', volumeId);
    expect(backups.code, backups.stderr).toBe(0);
    expect(backups.json).toEqual([expect.objectContaining({ id: backupId, volumeId, status: 'available', target: 'vault' })]);
    const backends = await gb(clientConfig, 'backend', 'list');
    expect((backends.json as unknown as { name: string }[]).map((b) => b.name).sort()).toEqual(['alpha', 'beta', 'gamma']);
    const targets = await gb(clientConfig, 'target', 'list');
    expect(targets.json).toEqual([{ name: 'vault', driver: 'volume', location: 'beta', default: true }]);

    const out = join(transfer(), 'out.img');
    const ex = await gb(clientConfig, 'volume', 'export', volumeId, '--file', out);
    expect(ex.code, ex.stderr).toBe(0);
    expect(await sha256File(out)).toBe(await sha256File(img));
    // Nor may an export write outside them (the node runs as root).
    const outside = join(env.dir, 'outside.img');
    const refused = await gb(clientConfig, 'volume', 'export', volumeId, '--file', outside);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/outside\.img' is outside the node's transfer directories/);
    expect(existsSync(outside)).toBe(false);

    // Each of those was a workflow the operator can find in the UI.
    const types = new Set<string>();
    for await (const w of env.client.client.workflow.list({ query: `TaskQueue = '${env.config.temporal.taskQueue}'` })) types.add(w.type);
    for (const t of ['importVolume', 'backupVolume', 'lookup', 'exportVolume']) expect(types).toContain(t);

    expect((await gb(clientConfig, 'backup', 'delete', backupId, '--wait')).code).toBe(0);
    expect((await gb(clientConfig, 'volume', 'delete', volumeId)).code).toBe(0);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('refuses bad input on the worker with the same exit codes and words, leaving nothing', async () => {
    const before = (await env.rt.catalog.listVolumes()).length;
    const cases: [string[], number, RegExp][] = [
      [['volume', 'create', '--backend', 'nowhere', '--size', '4M'], 2, /backend 'nowhere' not found/],
      [['volume', 'create', '--backend', 'alpha', '--pool', 'bronze', '--size', '4M'], 2, /backend 'alpha' has no pool 'bronze' \(pools: gold, silver\)/],
      [['volume', 'show', 'vol-000000000000'], 2, /volume 'vol-000000000000' not found/],
      [['backup', 'create', 'vol-000000000000'], 2, /volume 'vol-000000000000' not found/],
      [['backup', 'restore', 'bak-000000000000', '--backend', 'gamma'], 2, /backup 'bak-000000000000' not found/],
      // The node reads only inside its transfer directories: no /etc/shadow into a volume.
      [['volume', 'import', '--backend', 'alpha', '--file', '/etc/hostname'], 2, /'\/etc\/hostname' is outside the node's transfer directories/],
      [['volume', 'import', '--backend', 'alpha', '--file', join(transfer(), 'missing.img')], 2, /cannot read image file .*missing\.img.*ENOENT/],
    ];
    for (const [args, code, msg] of cases) {
      const r = await gb(clientConfig, ...args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(code);
      expect(r.stderr, args.join(' ')).toMatch(msg);
    }
    expect((await env.rt.catalog.listVolumes()).length).toBe(before);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('says so when no control worker serves the queue, instead of waiting forever, and leaves no workflow running', async () => {
    const lonely = join(env.dir, 'lonely.yaml');
    const queue = `nobody-${Date.now()}`;
    writeFileSync(lonely, `temporal: { address: ${env.config.temporal.address}, namespace: default, taskQueue: ${queue} }\n`);
    for (const args of [['volume', 'list'], ['backup', 'create', 'vol-000000000000']]) {
      const r = await gb(lonely, ...args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(new RegExp(`no gbackup control worker polls task queue '${queue}'`));
    }
    const running: string[] = [];
    for await (const w of env.client.client.workflow.list({ query: `TaskQueue = '${queue}' AND ExecutionStatus = 'Running'` })) running.push(w.workflowId);
    expect(running).toEqual([]);
  });

  it('a worker will not start from a client-only config, and says why', async () => {
    const r = await execa('node', [BIN, '--config', clientConfig, 'worker'], { reject: false, timeout: 30_000 });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/has no backends and targets: it can drive the CLI, but a worker serves backends/);
  });
});

describe('catalog migrate', () => {
  let pgConfig: string;
  const catalogs: Catalog[] = [];
  afterAll(async () => {
    for (const c of catalogs) await c.close();
  });

  it('copies an SQLite catalog into PostgreSQL: every row, counts and statuses equal; a re-run is a no-op', async () => {
    // Something in every status worth keeping: available and errored backups, a snapshot, an in-use volume.
    const img = join(transfer(), 'm.img');
    await makeImage(img, 8 * MiB, [0]);
    const a = await env.client.importVolume({ volumeId: 'vol-aaaaaaaaaaaa', backend: 'alpha', pool: 'gold', file: img });
    const b = await env.client.importVolume({ volumeId: 'vol-bbbbbbbbbbbb', backend: 'alpha', pool: 'gold', file: img });
    const bk = await gb(env.configFile, 'backup', 'create', a.id, '--wait');
    expect(bk.code, bk.stderr).toBe(0);
    await env.client.createSnapshot({ volumeId: a.id, snapshotId: 'snap-aaaaaaaaaaaa' });
    await env.client.attachVolume({ volumeId: b.id, instance: 'vm-1' });
    await env.rt.catalog.insertBackup({ id: 'bak-eeeeeeeeeeee', name: 'failed', volumeId: a.id, snapshotId: null, target: 'vault', status: 'error', size: 8 * MiB, location: null, workflowId: null, sourcePreviousStatus: 'available', error: 'disk on fire' });

    const yaml = `${(await import('node:fs')).readFileSync(env.configFile, 'utf8')}${await postgresCatalogYaml()}`;
    pgConfig = join(env.dir, 'pg.yaml');
    writeFileSync(pgConfig, yaml);
    const r = await gb(pgConfig, 'catalog', 'migrate', '--from', join(env.config.stateDir, 'catalog.sqlite'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toMatchObject({ alreadyMigrated: false });

    const from = env.rt.catalog;
    const to = await openCatalog(parseConfig(yaml, pgConfig, env.dir).catalog);
    catalogs.push(to);
    const strip = <T extends object>(xs: T[]) => xs.map((x) => JSON.parse(JSON.stringify(x)) as T);
    expect(strip(await to.listVolumes())).toEqual(strip(await from.listVolumes()));
    expect(strip(await to.listBackups())).toEqual(strip(await from.listBackups()));
    expect(strip(await to.listSnapshots())).toEqual(strip(await from.listSnapshots()));
    expect(r.json.volumes).toBe((await from.listVolumes()).length);
    expect(r.json.backups).toBe((await from.listBackups()).length);
    expect((r.json.byStatus as { backups: Record<string, number> }).backups).toMatchObject({ available: expect.any(Number), error: 1 });
    expect(await to.volume(b.id)).toMatchObject({ status: 'in-use', instance: 'vm-1' });

    const again = await gb(pgConfig, 'catalog', 'migrate', '--from', join(env.config.stateDir, 'catalog.sqlite'));
    expect(again.code, again.stderr).toBe(0);
    expect(again.json).toMatchObject({ alreadyMigrated: true });
    // Into a catalog that is not PostgreSQL: refused, naming why.
    const wrong = await gb(env.configFile, 'catalog', 'migrate', '--from', join(env.config.stateDir, 'catalog.sqlite'));
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toMatch(/copies into a PostgreSQL catalog/);

    await env.client.detachVolume(b.id);
  });
});
