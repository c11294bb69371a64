/**
 * Copying a backup to a second target, end to end through real parts: Temporal workflows,
 * loop devices, a posix directory and a real MinIO. object -> object (posix -> encrypted
 * s3, re-encoded; an incremental's copy uploads only what the destination lacks),
 * volume target -> object target -> volume target, volume -> volume, deleting the source,
 * failures and a cancel leaving nothing, and the refusals.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { copyWorkflowId, type BackupResult, type BackupView, type CopyBackupResult, type RestoreResult } from '../src/api.js';
import { main } from '../src/cli/main.js';
import { makeEnv, volumeWithData, type TestEnv, scribble } from './helpers/env.js';
import { failsWith } from './helpers/failures.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { startMinio, type Minio } from './helpers/minio.js';
import { findStoreLeaks, NO_STORE_LEAKS } from './helpers/objects.js';

let minio: Minio;
let env: TestEnv;

beforeAll(async () => {
  minio = await startMinio();
  env = await makeEnv({
    yaml: (dir, taskQueue, address) => {
      mkdirSync(join(dir, 'objects'), { recursive: true });
      writeFileSync(join(dir, 's3.json'), JSON.stringify({ accessKeyId: minio.accessKeyId, secretAccessKey: minio.secretAccessKey }), { mode: 0o600 });
      writeFileSync(join(dir, 'backup.key'), randomBytes(32).toString('hex'), { mode: 0o600 });
      return `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold, silver, bronze] }
  - { name: beta,  driver: file, path: ${dir}/beta }
  - { name: gamma, driver: file, path: ${dir}/gamma }
targets:
  - { name: vault, driver: volume, backend: beta }
  - { name: vault2, driver: volume, backend: gamma }
  - { name: side, driver: volume, backend: alpha, pool: silver }
  - { name: side2, driver: volume, backend: alpha, pool: bronze }
  - { name: shelf, driver: posix, path: ${dir}/objects }
  - name: bucket
    driver: s3
    endpoint: ${minio.endpoint}
    bucket: ${minio.bucket}
    prefix: copy/sealed
    forcePathStyle: true
    credentialsFile: ${dir}/s3.json
    encryption: { keyFile: ${dir}/backup.key }
defaultTarget: shelf
`;
    },
  });
}, 120_000);

afterEach(() => {
  delete process.env.GBACKUP_FAILPOINTS;
});

afterAll(async () => {
  delete process.env.GBACKUP_FAILPOINTS;
  await env?.cleanup();
  await minio?.stop();
});

const newId = (p: string) => `${p}-${randomBytes(4).toString('hex')}`;

async function backup(volumeId: string, target: string, incremental = false): Promise<BackupView> {
  const h = await env.client.startBackup({ volumeId, backupId: newId('bak'), target, ...(incremental ? { incremental } : {}) }, { target });
  return (await env.client.result<BackupResult>(h)).backup;
}

async function restore(backupId: string): Promise<string> {
  const h = await env.client.startRestore({ backupId, backend: 'alpha', pool: 'gold', newVolumeId: newId('vol') });
  const v = (await env.client.result<RestoreResult>(h)).volume;
  return await env.volumes.sha256(v.id);
}

async function deleteBackup(backupId: string): Promise<void> {
  await env.client.result(await env.client.startDelete({ backupId }));
}

async function noLeaks(): Promise<void> {
  expect(await findLeaks(env)).toEqual(NO_LEAKS);
  expect(await findStoreLeaks((await env.rt.objectTarget('shelf')).store)).toEqual(NO_STORE_LEAKS);
  expect(await findStoreLeaks((await env.rt.objectTarget('bucket')).store)).toEqual(NO_STORE_LEAKS);
  // The object -> object copy's staging images are gone.
  const staging = join(env.config.stateDir, 'staging');
  expect(existsSync(staging) ? readdirSync(staging) : []).toEqual([]);
  const all = await env.client.listBackups();
  expect(all.filter((b) => b.status === 'creating' || b.status === 'restoring').map((b) => b.id)).toEqual([]);
}

describe('copying a backup to another target', () => {
  it('posix -> encrypted s3: restores bit-exact; the copy of an incremental uploads only the chunks s3 lacks; survives deleting its source', async () => {
    // 32 MiB in 4 MiB chunks, data in 3 of them.
    const src = await volumeWithData(env, 'alpha', 'gold', 32, [0, 12, 28]);
    const sum1 = await env.volumes.sha256(src.id);
    const b1 = await backup(src.id, 'shelf');
    const c1 = await env.client.copyBackup({ backupId: b1.id, target: 'bucket' });
    expect(c1.backup).toMatchObject({ status: 'available', target: 'bucket', volumeId: src.id, size: b1.size, copyOf: b1.id });
    expect(c1.backup.id).not.toBe(b1.id);
    expect({ uploaded: c1.chunksUploaded, skipped: c1.chunksSkipped }).toEqual({ uploaded: 3, skipped: 0 });
    expect((await env.rt.catalog.backup(b1.id)).status).toBe('available');
    expect(await restore(c1.backup.id)).toBe(sum1);

    // One chunk changes; the incremental's copy builds on the first copy in s3.
    await scribble(env, src.id, 12, 4096);
    const sum2 = await env.volumes.sha256(src.id);
    const b2 = await backup(src.id, 'shelf', true);
    expect(b2.parentId).toBe(b1.id);
    const c2 = await env.client.copyBackup({ backupId: b2.id, target: 'bucket', name: 'offsite' });
    expect({ uploaded: c2.chunksUploaded, skipped: c2.chunksSkipped }).toEqual({ uploaded: 1, skipped: 2 });
    expect(c2.backup).toMatchObject({ status: 'available', copyOf: b2.id, name: 'offsite' });

    // The source goes; the copy (and its chain in s3) stays restorable.
    await deleteBackup(b2.id);
    expect(await restore(c2.backup.id)).toBe(sum2);
    await noLeaks();
  }, 180_000);

  it('volume target -> posix -> another volume target, and volume -> volume: each restores bit-exact, also after the source is deleted', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const sum = await env.volumes.sha256(src.id);
    const b = await backup(src.id, 'vault');
    const onShelf = await env.client.copyBackup({ backupId: b.id, target: 'shelf' });
    expect(onShelf.backup).toMatchObject({ status: 'available', target: 'shelf', copyOf: b.id });
    expect(onShelf.chunksUploaded).toBeNull();
    const back = await env.client.copyBackup({ backupId: onShelf.backup.id, target: 'vault2' });
    expect(back.backup).toMatchObject({ status: 'available', target: 'vault2', copyOf: onShelf.backup.id, size: b.size });
    const direct = await env.client.copyBackup({ backupId: b.id, target: 'vault2' });
    expect(direct.backup).toMatchObject({ status: 'available', target: 'vault2', copyOf: b.id });

    await deleteBackup(b.id);
    expect(await restore(onShelf.backup.id)).toBe(sum);
    expect(await restore(back.backup.id)).toBe(sum);
    expect(await restore(direct.backup.id)).toBe(sum);
    await noLeaks();
  }, 180_000);

  it('a copy failing after its objects were stored, or failing on the node, leaves nothing and the source available', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const onShelf = await backup(src.id, 'shelf');
    const inVault = await backup(src.id, 'vault');

    process.env.GBACKUP_FAILPOINTS = 'copy.stored=error';
    const id1 = newId('bak');
    await expect(env.client.copyBackup({ backupId: onShelf.id, target: 'bucket', copyId: id1 })).rejects.toThrow(/failpoint 'copy.stored'/);
    expect(await env.rt.catalog.findBackup(id1)).toBeNull();
    expect((await env.rt.catalog.backup(onShelf.id)).status).toBe('available');

    process.env.GBACKUP_FAILPOINTS = 'copy=error';
    const id2 = newId('bak');
    await expect(env.client.copyBackup({ backupId: inVault.id, target: 'shelf', copyId: id2 })).rejects.toThrow(/failpoint 'copy'/);
    const id3 = newId('bak');
    await expect(env.client.copyBackup({ backupId: onShelf.id, target: 'vault2', copyId: id3 })).rejects.toThrow(/failpoint 'copy'/);
    for (const id of [id2, id3]) expect(await env.rt.catalog.findBackup(id)).toBeNull();
    expect(await env.rt.driver('gamma').volumeSize({ pool: null, name: `backup-${id3}` })).toBeNull();
    expect((await env.rt.catalog.backup(inVault.id)).status).toBe('available');
    expect((await env.rt.catalog.backup(onShelf.id)).status).toBe('available');
    await noLeaks();
  }, 180_000);

  it('a cancelled copy leaves nothing and the source available', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const inVault = await backup(src.id, 'vault');
    process.env.GBACKUP_FAILPOINTS = 'copy=hang';
    const copyId = newId('bak');
    const h = await env.client.startCopy({ backupId: inVault.id, target: 'shelf', copyId });
    expect(h.workflowId).toBe(copyWorkflowId(inVault.id, 'shelf'));
    // Wait until the copy is on the node (the catalog row exists, the node step hangs).
    for (let i = 0; i < 100 && !(await env.rt.catalog.findBackup(copyId)); i++) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 1500));
    await env.client.cancel(h.workflowId);
    await expect(env.client.result<CopyBackupResult>(h)).rejects.toThrow();
    expect(await env.rt.catalog.findBackup(copyId)).toBeNull();
    expect((await env.rt.catalog.backup(inVault.id)).status).toBe('available');
    await noLeaks();
  }, 120_000);

  it('the CLI: backup copy ID --to T --wait --json prints the copy; a copy to its own target exits 2', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const b = await backup(src.id, 'shelf');
    const run = async (args: string[]): Promise<{ code: number; stdout: string }> => {
      let stdout = '';
      const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
        stdout += String(chunk);
        return true;
      });
      try {
        return { code: await main(['--config', env.configFile, ...args]), stdout };
      } finally {
        spy.mockRestore();
      }
    };
    const ok = await run(['backup', 'copy', b.id, '--to', 'bucket', '--name', 'cli-copy', '--wait', '--json']);
    expect(ok.code).toBe(0);
    const copy = JSON.parse(ok.stdout) as BackupView & { chunksUploaded: number };
    expect(copy).toMatchObject({ status: 'available', target: 'bucket', copyOf: b.id, name: 'cli-copy', chunksUploaded: 1 });
    expect((await run(['backup', 'copy', b.id, '--to', 'shelf', '--json'])).code).toBe(2);
    await noLeaks();
  }, 120_000);

  it('refuses: the same target, an unknown target, a source not available, volume targets on one backend', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const b = await backup(src.id, 'shelf');
    await failsWith(env.client.copyBackup({ backupId: b.id, target: 'shelf' }), 'InvalidInput', /backup '.*' is already in target 'shelf'/);
    await failsWith(env.client.copyBackup({ backupId: b.id, target: 'nowhere' }), 'TargetNotFound', /target 'nowhere' not found/);
    await env.rt.catalog.transitionBackup(b.id, ['available'], 'error', { error: 'test' });
    await failsWith(env.client.copyBackup({ backupId: b.id, target: 'bucket' }), 'InvalidStatus', /is 'error'; only an available backup can be copied/);
    await env.rt.catalog.transitionBackup(b.id, ['error'], 'available');
    const s = await backup(src.id, 'side');
    await failsWith(env.client.copyBackup({ backupId: s.id, target: 'side2' }), 'InvalidInput', /same backend/);
    await failsWith(env.client.copyBackup({ backupId: 'bak-missing0000', target: 'bucket' }), 'BackupNotFound', /bak-missing0000/);
    expect((await env.rt.catalog.backup(s.id)).status).toBe('available');
    await noLeaks();
  }, 120_000);
});
