/**
 * The `gbackup` command as people run it: the real bin, --json on stdout, messages on
 * stderr, exit 0 / 1 / 2. Workflows run on the suite's real Temporal server.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { MiB } from '../src/size.js';
import { makeEnv, makeImage, yamlWith, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { sha256File } from '../src/copy/checksum.js';

let env: TestEnv;
beforeAll(async () => {
  // A node-wide copy limit keeps a backup running long enough to throttle and cancel it.
  env = await makeEnv({ yaml: yamlWith('copyBpsLimit: 16M') });
});
afterAll(async () => {
  await env?.cleanup();
});

const BIN = join(import.meta.dirname, '..', 'bin', 'gbackup.js');
async function gb(...args: string[]) {
  const r = await execa('node', [BIN, '--config', env.configFile, ...args], { reject: false });
  let json: unknown = undefined;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    // not JSON
  }
  return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr, json: json as Record<string, unknown> & Record<string, unknown>[] };
}

describe('gbackup CLI', () => {
  it('imports, backs up, restores and exports through the command line', async () => {
    const img = join(env.dir, 'in.img');
    await makeImage(img, 20 * MiB, [0, 10]);
    const imp = await gb('volume', 'import', '--backend', 'alpha', '--pool', 'gold', '--file', img, '--name', 'cli-src', '--json');
    expect(imp.code, imp.stderr).toBe(0);
    expect(imp.json).toMatchObject({ name: 'cli-src', backend: 'alpha', pool: 'gold', size: 20 * MiB, status: 'available' });
    const volId = imp.json.id as string;

    const list = await gb('volume', 'list', '--json');
    expect(list.code).toBe(0);
    expect((list.json as unknown as { id: string }[]).map((v) => v.id)).toContain(volId);

    const bk = await gb('backup', 'create', volId, '--wait', '--json');
    expect(bk.code, bk.stderr).toBe(0);
    expect(bk.json).toMatchObject({ volumeId: volId, target: 'vault', status: 'available', size: 20 * MiB });
    expect(bk.json).toHaveProperty('createdAt');
    const backupId = bk.json.id as string;

    const show = await gb('backup', 'show', backupId, '--json');
    expect(show.json).toMatchObject({ id: backupId, status: 'available' });

    const rs = await gb('backup', 'restore', backupId, '--backend', 'gamma', '--wait', '--json');
    expect(rs.code, rs.stderr).toBe(0);
    expect(rs.json).toMatchObject({ backend: 'gamma', status: 'available', size: 20 * MiB });

    const out = join(env.dir, 'out.img');
    const ex = await gb('volume', 'export', rs.json.id as string, '--file', out, '--json');
    expect(ex.code, ex.stderr).toBe(0);
    expect(await sha256File(out)).toBe(await sha256File(img));

    const del = await gb('backup', 'delete', backupId, '--wait', '--json');
    expect(del.code, del.stderr).toBe(0);
    expect((await gb('backup', 'show', backupId)).code).toBe(2);
    expect((await gb('volume', 'delete', rs.json.id as string, '--json')).code).toBe(0);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('exits 2 with a specific message for bad usage and bad input, changing nothing', async () => {
    const before = (await env.rt.catalog.listVolumes()).length;
    const cases: [string[], RegExp][] = [
      [['volume', 'create', '--backend', 'alpha', '--size', '0'], /size must be greater than zero/],
      [['volume', 'create', '--backend', 'alpha', '--size', 'huge'], /'huge' is not a size/],
      [['volume', 'create', '--backend', 'alpha', '--size=-1M'], /greater than zero/],
      [['volume', 'create', '--backend', 'nowhere', '--size', '1M'], /backend 'nowhere' not found/],
      [['volume', 'create', '--backend', 'alpha', '--pool', 'x/..', '--size', '1M'], /pool must not contain '\/'/],
      [['volume', 'create', '--backend', 'beta', '--size', '1M'], /holds backups only/],
      [['volume', 'create', '--size', '1M'], /--backend is required/],
      [['volume', 'show', 'vol-missing'], /volume 'vol-missing' not found/],
      [['volume', 'frobnicate'], /unknown volume command/],
      [['backup', 'create', 'vol-missing'], /volume 'vol-missing' not found/],
      [['backup', 'create', '../../etc/passwd'], /must not contain '\/'/],
      [['backup', 'restore', 'bak-missing', '--backend', 'gamma'], /backup 'bak-missing' not found/],
      [['backup', 'restore', 'bak-x'], /exactly one of --backend/],
      [['backup', 'delete', 'bak-missing'], /backup 'bak-missing' not found/],
      [['volume', 'list', '--bogus'], /Unknown option '--bogus'/],
    ];
    for (const [args, msg] of cases) {
      const r = await gb(...args, '--json');
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(msg);
      expect(r.json, args.join(' ')).toHaveProperty('error');
    }
    expect((await env.rt.catalog.listVolumes()).length).toBe(before);
  });

  it('exits 1 when the operation fails, and shows the capability table', async () => {
    const bad = join(env.dir, 'bad.yaml');
    await (await import('node:fs/promises')).writeFile(bad, 'backends: []\ntargets: 3\n');
    const r = await execa('node', [BIN, '--config', bad, 'volume', 'list'], { reject: false });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/backends: at least one backend is needed/);
    expect(r.stderr).toMatch(/targets: /);

    const be = await gb('backend', 'list', '--json');
    expect(be.code).toBe(0);
    const alpha = (be.json as unknown as Record<string, unknown>[]).find((b) => b.name === 'alpha');
    expect(alpha).toMatchObject({ driver: 'file', pools: ['gold', 'silver'], sparseCopy: true, storageAssistedBackup: false });
    // The numbers are the filesystem's own (statfs of the pool directory), not placeholders.
    const fs = await statfs(join(env.dir, 'alpha', 'gold'));
    expect(alpha?.totalBytes).toBe(fs.blocks * fs.bsize);
    // Free space moves with other writers; a few MiB of slack between the two readings.
    expect(Math.abs((alpha?.freeBytes as number) - fs.bavail * fs.bsize)).toBeLessThan(64 * MiB);
    expect(alpha?.freeBytes as number).toBeLessThanOrEqual(alpha?.totalBytes as number);

    // Temporal unreachable: the operation cannot run -> exit 1.
    const cfg = env.configFile.replace('config.yaml', 'unreachable.yaml');
    const text = (await import('node:fs')).readFileSync(env.configFile, 'utf8').replace(env.config.temporal.address, '127.0.0.1:1');
    (await import('node:fs')).writeFileSync(cfg, text);
    const vol = await env.volumes.create({ backend: 'alpha', pool: 'gold', size: MiB });
    const u = await execa('node', [BIN, '--config', cfg, 'backup', 'create', vol.id, '--json'], { reject: false });
    expect(u.exitCode).toBe(1);
    expect(u.stderr).toMatch(/cannot reach Temporal at 127\.0\.0\.1:1/);
  });

  it('attaches for an instance, snapshots, backs up in-use with --force, throttles and cancels from the command line', async () => {
    const img = join(env.dir, 'in2.img');
    await makeImage(img, 64 * MiB, [0, 16, 32, 48], 16 * MiB);
    const vol = (await gb('volume', 'import', '--backend', 'alpha', '--pool', 'gold', '--file', img, '--json')).json;
    const att = await gb('volume', 'attach', vol.id as string, '--instance', 'vm-cli', '--json');
    expect(att.code, att.stderr).toBe(0);
    expect(att.json).toMatchObject({ status: 'in-use', instance: 'vm-cli' });
    expect(att.json.device).toMatch(/^\/dev\/loop\d+$/);

    const refused = await gb('backup', 'create', vol.id as string, '--json');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/is 'in-use' \(instance vm-cli\); back it up with --force/);

    const snap = await gb('snapshot', 'create', vol.id as string, '--name', 'cli-snap', '--json');
    expect(snap.code, snap.stderr).toBe(0);
    expect(snap.json).toMatchObject({ name: 'cli-snap', volumeId: vol.id, status: 'available' });
    expect(((await gb('snapshot', 'list', '--json')).json as unknown as { id: string }[]).map((x) => x.id)).toContain(snap.json.id);

    const started = await gb('backup', 'create', vol.id as string, '--force', '--json');
    expect(started.code, started.stderr).toBe(0);
    const backupId = started.json.id as string;
    const th = await gb('backup', 'throttle', backupId, '--bps', '4M', '--json');
    expect(th.code, th.stderr).toBe(0);
    expect(th.json).toMatchObject({ id: backupId, bps: 4 * MiB });
    const cancel = await gb('backup', 'cancel', backupId, '--json');
    expect(cancel.code, cancel.stderr).toBe(0);
    for (let i = 0; i < 100 && (await env.rt.catalog.backup(backupId)).status === 'creating'; i++) await new Promise((r) => setTimeout(r, 200));
    expect(await env.rt.catalog.backup(backupId)).toMatchObject({ status: 'error', error: 'cancelled' });
    expect((await env.rt.catalog.volume(vol.id as string)).status).toBe('in-use');
    expect((await gb('backup', 'cancel', backupId)).code).toBe(2);

    const fromSnap = await gb('backup', 'create', vol.id as string, '--snapshot', snap.json.id as string, '--wait', '--json');
    expect(fromSnap.code, fromSnap.stderr).toBe(0);
    expect(fromSnap.json).toMatchObject({ status: 'available', snapshotId: snap.json.id });
    expect((await gb('snapshot', 'delete', snap.json.id as string, '--json')).code).toBe(0);
    expect((await gb('volume', 'detach', vol.id as string, '--json')).json).toMatchObject({ status: 'available', instance: null });
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});
