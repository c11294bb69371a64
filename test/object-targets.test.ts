/**
 * Object targets end to end through real parts: Temporal workflows, loop devices, a real
 * posix directory and a real MinIO. Full and incremental chains, encryption, verify and
 * corruption, wrong and missing keys, deletion rules, export/import between catalogs,
 * catalog rebuild, and restores from S3 onto every volume backend (file and btrfs).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BackupResult, BackupView, RestoreResult, VerifyResult } from '../src/api.js';
import { MiB } from '../src/size.js';
import { makeEnv, volumeWithData, type TestEnv, scribble } from './helpers/env.js';
import { failsWith } from './helpers/failures.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { startMinio, type Minio } from './helpers/minio.js';
import { findStoreLeaks, NO_STORE_LEAKS } from './helpers/objects.js';
import { makeLoopFilesystem, type LoopFilesystem } from './helpers/loopfs.js';

let minio: Minio;
let fs: LoopFilesystem;
let fsDir: string;
let env: TestEnv;
const keyHex = randomBytes(32).toString('hex');

/** The object targets of this file's world: a posix directory and two prefixes of one bucket (one encrypted). */
const targets = (dir: string, key: { file: string } | null, opts: { compression?: string } = {}) => `
  - { name: shelf, driver: posix, path: ${dir}/objects${opts.compression ? `, compression: ${opts.compression}` : ''} }
  - name: bucket
    driver: s3
    endpoint: ${minio.endpoint}
    bucket: ${minio.bucket}
    prefix: e2e/sealed
    forcePathStyle: true
    credentialsFile: ${dir}/s3.json
    ${key ? `encryption: { keyFile: ${key.file} }` : ''}
`;

function writeSecrets(dir: string, hex: string | null): { file: string } | null {
  // The posix target's directory: a store never makes its own root.
  mkdirSync(join(dir, 'objects'), { recursive: true });
  writeFileSync(join(dir, 's3.json'), JSON.stringify({ accessKeyId: minio.accessKeyId, secretAccessKey: minio.secretAccessKey }), { mode: 0o600 });
  if (hex === null) return null;
  const file = join(dir, 'backup.key');
  writeFileSync(file, hex, { mode: 0o600 });
  return { file };
}

/** A world whose targets are the object targets (plus the usual volume target) and a btrfs backend. */
async function objectEnv(hex: string | null): Promise<TestEnv> {
  return makeEnv({
    yaml: (dir, taskQueue, address) => {
      const key = writeSecrets(dir, hex);
      return `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold, silver] }
  - { name: beta,  driver: file, path: ${dir}/beta }
  - { name: gamma, driver: file, path: ${dir}/gamma }
  - { name: bt,    driver: btrfs, path: ${fs.mountPoint}/bt-${taskQueue} }
targets:
  - { name: vault, driver: volume, backend: beta }
${targets(dir, key)}
defaultTarget: shelf
`;
    },
  });
}

beforeAll(async () => {
  minio = await startMinio();
  fsDir = mkdtempSync(join(tmpdir(), 'gbackup-objects-btrfs-'));
  fs = await makeLoopFilesystem(fsDir, 160 * MiB, 'btrfs');
  env = await objectEnv(keyHex);
}, 120_000);

afterAll(async () => {
  await env?.cleanup();
  await fs?.cleanup();
  if (fsDir) rmSync(fsDir, { recursive: true, force: true });
  await minio?.stop();
});

/** Another deployment: its own, empty catalog, over this world's posix target directory. */
function freshCatalogOverShelf(): Promise<TestEnv> {
  return makeEnv({
    workers: false,
    yaml: (d, taskQueue, address) => `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${d}/state
backends:
  - { name: gamma, driver: file, path: ${d}/gamma }
targets:
  - { name: shelf, driver: posix, path: ${env.dir}/objects }
`,
  });
}

const newId = (p: string) => `${p}-${randomBytes(4).toString('hex')}`;

async function backup(e: TestEnv, volumeId: string, target: string, incremental = false): Promise<BackupView> {
  const h = await e.client.startBackup({ volumeId, backupId: newId('bak'), target, ...(incremental ? { incremental } : {}) }, { target, backend: 'x' });
  return (await e.client.result<BackupResult>(h)).backup;
}

async function restore(e: TestEnv, input: { backupId: string; backend?: string; pool?: string; volumeId?: string }) {
  const h = await e.client.startRestore({ ...input, ...(input.volumeId ? {} : { newVolumeId: newId('vol') }) });
  return (await e.client.result<RestoreResult>(h)).volume;
}

describe('object targets through Temporal', () => {
  it('posix: full, then a chain of two incrementals; each restores bit-exact; only changed chunks are stored', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 32, [0, 12, 28]);
    const sums: string[] = [];
    const backups: BackupView[] = [];
    sums.push(await env.volumes.sha256(src.id));
    backups.push(await backup(env, src.id, 'shelf'));
    expect(backups[0]).toMatchObject({ status: 'available', method: 'chunked', parentId: null, target: 'shelf', size: 32 * MiB });
    // Three 4 MiB chunks of random data (incompressible): about 12 MiB stored, the holes not at all.
    expect(backups[0]!.storedBytes).toBeGreaterThan(12 * MiB - 1);
    expect(backups[0]!.storedBytes).toBeLessThan(12 * MiB + 64 * 1024);

    await scribble(env, src.id, 13, 4096); // one chunk changes
    sums.push(await env.volumes.sha256(src.id));
    backups.push(await backup(env, src.id, 'shelf', true));
    expect(backups[1]).toMatchObject({ status: 'available', parentId: backups[0]!.id });
    expect(backups[1]!.storedBytes).toBeLessThan(4 * MiB + 64 * 1024);

    await scribble(env, src.id, 20, 1 * MiB); // a chunk that was a hole gets data
    sums.push(await env.volumes.sha256(src.id));
    backups.push(await backup(env, src.id, 'shelf', true));
    expect(backups[2]).toMatchObject({ status: 'available', parentId: backups[1]!.id });

    // Every point of the chain restores to exactly what the volume held then.
    for (let i = 0; i < 3; i++) {
      const v = await restore(env, { backupId: backups[i]!.id, backend: 'gamma' });
      expect(v.status).toBe('available');
      expect(await env.volumes.sha256(v.id)).toBe(sums[i]);
    }
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
    expect(await findStoreLeaks((await env.rt.objectTarget('shelf')).store)).toEqual(NO_STORE_LEAKS);
  });

  it('s3 encrypted: full + incremental restore from MinIO onto every volume backend (file pools, btrfs), and onto an existing larger volume', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 24, [0, 8, 20]);
    const full = await backup(env, src.id, 'bucket');
    await scribble(env, src.id, 9, 8192);
    const sum = await env.volumes.sha256(src.id);
    const inc = await backup(env, src.id, 'bucket', true);
    expect(inc.parentId).toBe(full.id);
    // Nothing readable in the bucket: every chunk object is AES-GCM sealed (GBC1 header, flag 2).
    const t = await env.rt.objectTarget('bucket');
    const meta = JSON.parse((await t.store.get(`backups/${full.id}/metadata.json`)).toString('utf8')) as { encryption: unknown; chunks: { sha256: string }[]; chunkSpace: string };
    expect(meta.encryption).toMatchObject({ algorithm: 'aes-256-gcm' });
    const obj = await t.store.get(`chunks/${meta.chunkSpace}/${meta.chunks[0]!.sha256.slice(0, 2)}/${meta.chunks[0]!.sha256}`);
    expect(obj.subarray(0, 4).toString()).toBe('GBC1');
    expect(obj[4]! & 2).toBe(2);

    for (const [backend, pool] of [
      ['alpha', 'silver'],
      ['gamma', undefined],
      ['bt', undefined],
    ] as const) {
      const v = await restore(env, { backupId: inc.id, backend, ...(pool ? { pool } : {}) });
      expect(v).toMatchObject({ backend, status: 'available', size: 24 * MiB });
      expect(await env.volumes.sha256(v.id), `restore onto ${backend}`).toBe(sum);
    }
    // An existing, larger volume full of other data: the backup's range is exactly the backup, the rest zeros.
    const big = await volumeWithData(env, 'gamma', undefined, 32, [0, 4, 8, 12, 16, 20, 24, 28]);
    const onto = await restore(env, { backupId: inc.id, volumeId: big.id });
    expect(onto.status).toBe('available');
    const img = env.rt.driver('gamma').initializeConnection({ pool: null, name: big.id }).path;
    const fh = await open(img, 'r');
    const head = Buffer.alloc(24 * MiB);
    const tail = Buffer.alloc(8 * MiB);
    await fh.read(head, 0, head.length, 0);
    await fh.read(tail, 0, tail.length, 24 * MiB);
    await fh.close();
    const { createHash } = await import('node:crypto');
    expect(createHash('sha256').update(head).digest('hex')).toBe(sum);
    expect(tail.every((b) => b === 0)).toBe(true);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
    expect(await findStoreLeaks(t.store)).toEqual(NO_STORE_LEAKS);
  });

  it('verify passes on a sound backup; a flipped byte in one stored chunk fails verify naming that chunk, and a restore fails loudly leaving the volume in error', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 16, [0, 4, 12]);
    const b = await backup(env, src.id, 'bucket');
    const ok = await env.client.result<VerifyResult>(await env.client.startVerify({ backupId: b.id }));
    expect(ok).toMatchObject({ backupId: b.id, chunks: 3, bytes: 12 * MiB });

    const t = await env.rt.objectTarget('bucket');
    const meta = JSON.parse((await t.store.get(`backups/${b.id}/metadata.json`)).toString('utf8')) as { chunks: { offset: number; sha256: string }[]; chunkSpace: string };
    const victim = meta.chunks[1]!;
    const key = `chunks/${meta.chunkSpace}/${victim.sha256.slice(0, 2)}/${victim.sha256}`;
    const body = await t.store.get(key);
    body[Math.floor(body.length / 2)]! ^= 0x01;
    await t.store.put(key, body);

    const err = await failsWith(env.client.result(await env.client.startVerify({ backupId: b.id })), 'BackupCorrupt', new RegExp(`offset ${victim.offset}\\b`));
    expect(err.message).toContain(victim.sha256.slice(0, 16));
    expect(err.message).toMatch(/1 bad chunk/);
    // Verify changes nothing.
    expect((await env.rt.catalog.backup(b.id)).status).toBe('available');

    const newVolumeId = newId('vol');
    const h = await env.client.startRestore({ backupId: b.id, backend: 'gamma', newVolumeId });
    await failsWith(env.client.result(h), '(DecryptionFailed|ChunkCorrupt)', new RegExp(`offset ${victim.offset}\\b`));
    const v = await env.rt.catalog.volume(newVolumeId);
    expect(v.status).toBe('error');
    expect(v.error).toMatch(new RegExp(`offset ${victim.offset}\\b`));
    expect((await env.rt.catalog.backup(b.id)).status).toBe('available');
    // Nothing attached or half-copied left behind; the volume in error is the operator's to inspect or delete.
    expect((await findLeaks(env)).loopDevices).toEqual([]);
    await env.volumes.delete(newVolumeId);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('refuses to delete a backup that incrementals build on, changing nothing; deletes newest first and removes every object', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const full = await backup(env, src.id, 'bucket');
    await scribble(env, src.id, 1, 4096);
    const inc = await backup(env, src.id, 'bucket', true);
    await failsWith(env.client.result(await env.client.startDelete({ backupId: full.id })), 'BackupHasDependents', new RegExp(`'${inc.id}'`));
    expect(await env.rt.catalog.backup(full.id)).toMatchObject({ status: 'available', error: null });
    const t = await env.rt.objectTarget('bucket');
    expect(await t.store.exists(`backups/${full.id}/metadata.json`)).toBe(true);

    await env.client.result(await env.client.startDelete({ backupId: inc.id }));
    await env.client.result(await env.client.startDelete({ backupId: full.id }));
    expect(await env.rt.catalog.findBackup(full.id)).toBeNull();
    expect(await env.rt.catalog.findBackup(inc.id)).toBeNull();
    expect(await t.store.exists(`backups/${full.id}/metadata.json`)).toBe(false);
    expect(await findStoreLeaks(t.store)).toEqual(NO_STORE_LEAKS);
  });

  it('--incremental on a volume target is refused before anything changes', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const h = await env.client.startBackup({ volumeId: src.id, backupId: newId('bak'), target: 'vault', incremental: true }, { target: 'vault', backend: 'alpha' });
    await failsWith(env.client.result(h), 'InvalidInput', /volume target.*--incremental/);
    expect((await env.rt.catalog.volume(src.id)).status).toBe('available');
    expect(await env.rt.catalog.listBackups(src.id)).toEqual([]);
  });
});

describe('object backups between catalogs', () => {
  it('export/import makes a backup (and its parent) restorable in another catalog; a wrong or missing key there is refused before any volume is made', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const full = await backup(env, src.id, 'bucket');
    await scribble(env, src.id, 9, 4096);
    const inc = await backup(env, src.id, 'bucket', true);
    const sum = await env.volumes.sha256(src.id);
    const { exportBackup, importBackup } = await import('../src/services/records.js');
    const recFull = await exportBackup(env.rt, full.id);
    const recInc = await exportBackup(env.rt, inc.id);

    const other = await objectEnv(keyHex);
    const wrong = await objectEnv(randomBytes(32).toString('hex'));
    const none = await objectEnv(null);
    try {
      // The parent first: an incremental alone would not restore.
      await failsWith(importBackup(other.rt, 'bucket', recInc.record), 'InvalidInput', new RegExp(`import '${full.id}' first`));
      await importBackup(other.rt, 'bucket', recFull.record);
      const imported = await importBackup(other.rt, 'bucket', recInc.record);
      expect(imported).toMatchObject({ id: inc.id, parentId: full.id, status: 'available', volumeId: src.id });
      const v = await restore(other, { backupId: inc.id, backend: 'gamma' });
      expect(await other.volumes.sha256(v.id)).toBe(sum);

      await importBackup(wrong.rt, 'bucket', recFull.record);
      const nv = newId('vol');
      await failsWith(wrong.client.result(await wrong.client.startRestore({ backupId: full.id, backend: 'gamma', newVolumeId: nv })), 'WrongKey', /fingerprint/);
      expect(await wrong.rt.catalog.findVolume(nv)).toBeNull();
      expect((await wrong.rt.catalog.backup(full.id)).status).toBe('available');

      await importBackup(none.rt, 'bucket', recFull.record);
      await failsWith(none.client.result(await none.client.startRestore({ backupId: full.id, backend: 'gamma', newVolumeId: nv })), 'MissingKey', /encrypted.*no encryption key/);
      expect(await none.rt.catalog.findVolume(nv)).toBeNull();
      expect(await findLeaks(other)).toEqual(NO_LEAKS);
    } finally {
      await other.cleanup();
      await wrong.cleanup();
      await none.cleanup();
    }
  });

  it('rebuilds a lost catalog from the metadata objects, parents included', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const full = await backup(env, src.id, 'shelf');
    await scribble(env, src.id, 5, 4096);
    const inc = await backup(env, src.id, 'shelf', true);
    // A fresh catalog over the same posix directory.
    const fresh = await freshCatalogOverShelf();
    try {
      const { rebuildCatalog } = await import('../src/services/rebuild.js');
      const r = await rebuildCatalog(fresh.rt);
      expect(r.imported).toEqual(expect.arrayContaining([full.id, inc.id]));
      expect(await fresh.rt.catalog.backup(inc.id)).toMatchObject({ parentId: full.id, status: 'available', target: 'shelf', method: 'chunked' });
      const again = await rebuildCatalog(fresh.rt);
      expect(again.imported).toEqual([]);
      expect(again.alreadyKnown).toEqual(expect.arrayContaining([full.id, inc.id]));
    } finally {
      await fresh.cleanup();
    }
  });
});

describe('gbackup CLI with object targets', () => {
  const BIN = join(import.meta.dirname, '..', 'bin', 'gbackup.js');
  async function gb(configFile: string, ...args: string[]) {
    const { execa } = await import('execa');
    const r = await execa('node', [BIN, '--config', configFile, ...args], { reject: false });
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(r.stdout) as Record<string, unknown>;
    } catch {
      // not JSON
    }
    return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr, json };
  }

  it('create --incremental, verify, export, import elsewhere, and the refusals, with exit codes', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 8, [0, 4]);
    const first = await gb(env.configFile, 'backup', 'create', src.id, '--target', 'shelf', '--incremental', '--wait', '--json');
    expect(first.code, first.stderr).toBe(0);
    // No earlier backup to build on: a full one.
    expect(first.json).toMatchObject({ status: 'available', method: 'chunked', parentId: null });
    await scribble(env, src.id, 1, 4096);
    const second = await gb(env.configFile, 'backup', 'create', src.id, '--target', 'shelf', '--incremental', '--wait', '--json');
    expect(second.code, second.stderr).toBe(0);
    expect(second.json).toMatchObject({ status: 'available', parentId: first.json.id });

    const verify = await gb(env.configFile, 'backup', 'verify', String(second.json.id), '--json');
    expect(verify.code, verify.stderr).toBe(0);
    expect(verify.json).toMatchObject({ backupId: second.json.id, verified: true, chunks: 2 });

    // A verify on a Temporal schedule: made by the CLI, triggered now, its run checks the backup.
    const sched = await gb(env.configFile, 'backup', 'verify', String(second.json.id), '--schedule', '0 3 * * 0', '--json');
    expect(sched.code, sched.stderr).toBe(0);
    expect(sched.json).toMatchObject({ scheduleId: `verify-backup-${String(second.json.id)}` });
    expect((sched.json.nextRuns as string[])[0]).toMatch(/T03:00:00/);
    const sh = env.client.client.schedule.getHandle(String(sched.json.scheduleId));
    await sh.trigger();
    const run = await (async () => {
      for (let i = 0; i < 100; i++) {
        const d = await sh.describe();
        const a = d.info.recentActions[0]?.action;
        if (a) return a;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error('the schedule did not start a run');
    })();
    const verified = await env.client.client.workflow.getHandle(run.workflow.workflowId, run.workflow.firstExecutionRunId).result();
    expect(verified).toMatchObject({ backupId: second.json.id, chunks: 2 });
    const badCron = await gb(env.configFile, 'backup', 'verify', String(second.json.id), '--schedule', 'not a cron');
    expect(badCron.code).toBe(2);
    expect(badCron.stderr).toMatch(/invalid --schedule 'not a cron'/);
    const unsched = await gb(env.configFile, 'backup', 'verify', String(second.json.id), '--unschedule', '--json');
    expect(unsched.json).toMatchObject({ unscheduled: true });

    const refused = await gb(env.configFile, 'backup', 'delete', String(first.json.id), '--wait');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(new RegExp(`'${String(second.json.id)}' is an incremental`));

    const volTarget = await gb(env.configFile, 'backup', 'create', src.id, '--target', 'vault', '--incremental');
    expect(volTarget.code).toBe(2);
    expect(volTarget.stderr).toMatch(/--incremental needs a posix or s3 target/);

    const exp1 = await gb(env.configFile, 'backup', 'export', String(first.json.id), '--json');
    const exp2 = await gb(env.configFile, 'backup', 'export', String(second.json.id));
    expect(exp1.code, exp1.stderr).toBe(0);
    expect(exp1.json).toMatchObject({ backupId: first.json.id, target: 'shelf' });
    expect(exp2.stdout.trim()).toMatch(/^[A-Za-z0-9_-]+$/);

    // Another deployment over the same store: its own catalog and its own worker, which runs the imports.
    const fresh = await freshCatalogOverShelf();
    await fresh.startWorkers();
    try {
      const recFile = join(fresh.dir, 'first.json');
      writeFileSync(recFile, exp1.stdout);
      const imp1 = await gb(fresh.configFile, 'backup', 'import', '--target', 'shelf', '--file', recFile, '--json');
      expect(imp1.code, imp1.stderr).toBe(0);
      const imp2 = await gb(fresh.configFile, 'backup', 'import', '--target', 'shelf', exp2.stdout.trim(), '--json');
      expect(imp2.code, imp2.stderr).toBe(0);
      expect(imp2.json).toMatchObject({ id: second.json.id, parentId: first.json.id, status: 'available' });
      const bad = await gb(fresh.configFile, 'backup', 'import', '--target', 'shelf', 'not-a-record');
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/not a gbackup export/);
    } finally {
      await fresh.cleanup();
    }
    // Some twenty CLI processes, each a node start plus a workflow: slow on a loaded machine.
  }, 300_000);
});
