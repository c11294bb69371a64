/**
 * In-use volumes through temporary snapshots, snapshot backups, and the btrfs driver's
 * storage-assisted path, on a real loop-mounted btrfs and real ext4 file backends.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { WorkflowHandle } from '@temporalio/client';
import type { BackupResult, RestoreResult } from '../src/api.js';
import { MiB } from '../src/size.js';
import { makeEnv, volumeWithData, type TestEnv } from './helpers/env.js';
import { makeLoopFilesystem, type LoopFilesystem } from './helpers/loopfs.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';

let env: TestEnv;
let fs: LoopFilesystem;
let fsDir: string;
beforeAll(async () => {
  fsDir = mkdtempSync(join(tmpdir(), 'gbackup-btrfs-'));
  fs = await makeLoopFilesystem(fsDir, 1536 * MiB, 'btrfs');
  env = await makeEnv({
    yaml: (dir, taskQueue, address) => `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold, silver] }
  - { name: beta,  driver: file, path: ${dir}/beta }
  - { name: bt,    driver: btrfs, path: ${fs.mountPoint}/bt, pools: [gold, silver] }
targets:
  - { name: vault,  driver: volume, backend: beta }
  - { name: bvault, driver: volume, backend: bt, pool: silver }
defaultTarget: vault
`,
  });
});
afterEach(() => {
  delete process.env.GBACKUP_FAILPOINTS;
});
afterAll(async () => {
  await env?.cleanup();
  await fs?.cleanup();
  rmSync(fsDir, { recursive: true, force: true });
});

const newBackupId = () => `bak-${randomBytes(4).toString('hex')}`;

async function startBackup(volumeId: string, extra: { target?: string; force?: boolean; snapshotId?: string; bpsLimit?: number } = {}) {
  const backupId = newBackupId();
  const handle = await env.client.startBackup({ volumeId, backupId, ...extra }, { target: extra.target ?? 'vault', backend: 'x' });
  return { backupId, handle };
}

async function restoreNew(backupId: string, backend: string, pool?: string) {
  const h = await env.client.startRestore({ backupId, backend, ...(pool ? { pool } : {}), newVolumeId: `vol-${randomBytes(4).toString('hex')}` });
  return (await env.client.result<RestoreResult>(h)).volume;
}

async function untilPhase(h: WorkflowHandle, phase: string) {
  for (let i = 0; i < 200; i++) {
    const p = await h.query<{ phase: string }>('progress');
    if (p.phase === phase) return;
    await sleep(50);
  }
  throw new Error(`workflow never reached phase ${phase}`);
}

/** Writes random 1 MiB blocks at random offsets of the device until stopped. */
function startWriter(device: string, size: number) {
  let stop = false;
  let writes = 0;
  const done = (async () => {
    const fh = await open(device, 'r+');
    try {
      while (!stop) {
        await fh.write(randomBytes(MiB), 0, MiB, Math.floor(Math.random() * (size / MiB)) * MiB);
        await fh.sync();
        writes++;
      }
    } finally {
      await fh.close();
    }
  })();
  return {
    async stop() {
      stop = true;
      await done;
      return writes;
    },
  };
}

describe.each([
  ['file (ext4, snapshot by copy)', 'alpha', 'gold'],
  ['btrfs (snapshot by reflink)', 'bt', 'gold'],
])('in-use backup on %s', (_label, backend, pool) => {
  it('needs --force; with it, backs up a snapshot while a writer keeps writing; the volume stays in-use; the snapshot goes', async () => {
    const vol = await volumeWithData(env, backend, pool, 32, [0, 8, 16, 24]);
    const attached = await env.client.attachVolume({ volumeId: vol.id, instance: 'vm-1' });
    expect(attached.device).toMatch(/^\/dev\/loop\d+$/);
    expect(await env.rt.catalog.volume(vol.id)).toMatchObject({ status: 'in-use', instance: 'vm-1' });
    const atSnapshot = await env.volumes.sha256(vol.id);

    const refused = await startBackup(vol.id);
    await expect(env.client.result(refused.handle)).rejects.toThrow(/is 'in-use' \(instance vm-1\); back it up with --force/);
    expect(await env.rt.catalog.findBackup(refused.backupId)).toBeNull();

    // Limited from the first byte, so the copy is still running when looked at.
    const { backupId, handle } = await startBackup(vol.id, { force: true, bpsLimit: 16 * MiB });
    await untilPhase(handle, 'copying');
    expect((await env.rt.catalog.volume(vol.id)).status).toBe('in-use');
    expect(await env.rt.catalog.findSnapshot(`backup-snap-${backupId}`)).toMatchObject({ status: 'available', backupId });
    const writer = startWriter(attached.device, vol.size);
    const { backup } = await env.client.result<BackupResult>(handle);
    const writes = await writer.stop();
    expect(writes).toBeGreaterThan(0);
    expect(backup.status).toBe('available');
    expect(await env.rt.catalog.volume(vol.id)).toMatchObject({ status: 'in-use', instance: 'vm-1' });
    expect(await env.rt.catalog.findSnapshot(`backup-snap-${backupId}`)).toBeNull();
    expect(await env.rt.driver(backend).volumeSize({ pool, name: `backup-snap-${backupId}` })).toBeNull();
    // The volume changed under the writer; the backup holds the snapshot moment.
    expect(await env.volumes.sha256(vol.id)).not.toBe(atSnapshot);
    const restored = await restoreNew(backupId, 'alpha', 'silver');
    expect(await env.volumes.sha256(restored.id)).toBe(atSnapshot);

    await env.client.detachVolume(vol.id);
    expect((await env.rt.catalog.volume(vol.id)).status).toBe('available');
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('removes the temporary snapshot on failure and on cancel', async () => {
    const vol = await volumeWithData(env, backend, pool, 32, [0, 16]);
    await env.client.attachVolume({ volumeId: vol.id, instance: 'vm-2' });
    process.env.GBACKUP_FAILPOINTS = 'copy=error';
    const failed = await startBackup(vol.id, { force: true });
    await expect(env.client.result(failed.handle)).rejects.toThrow(/injected error/);
    delete process.env.GBACKUP_FAILPOINTS;
    expect(await env.rt.catalog.findSnapshot(`backup-snap-${failed.backupId}`)).toBeNull();
    expect((await env.rt.catalog.backup(failed.backupId)).status).toBe('error');

    // 8 MiB of data at 1 MiB/s: the cancel lands mid-copy. (One that lands once the copy
    // is done comes too late: finalize runs in the task that has the copy's result.)
    const cancelled = await startBackup(vol.id, { force: true, bpsLimit: MiB });
    await untilPhase(cancelled.handle, 'copying');
    await sleep(500);
    await env.client.cancel(cancelled.handle.workflowId);
    await expect(env.client.result(cancelled.handle)).rejects.toThrow(/cancelled/);
    expect(await env.rt.catalog.backup(cancelled.backupId)).toMatchObject({ status: 'error', error: 'cancelled' });
    expect(await env.rt.catalog.findSnapshot(`backup-snap-${cancelled.backupId}`)).toBeNull();
    expect((await env.rt.catalog.volume(vol.id)).status).toBe('in-use');
    await env.client.detachVolume(vol.id);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});

describe('snapshot backups', () => {
  it('backs up an existing snapshot; the snapshot cannot be deleted while that runs', async () => {
    const vol = await volumeWithData(env, 'alpha', 'gold', 32, [0, 8, 16, 24]);
    const snap = await env.client.createSnapshot({ volumeId: vol.id, snapshotId: `snap-${randomBytes(6).toString('hex')}`, name: 'before-upgrade' });
    const atSnapshot = await env.volumes.sha256(vol.id);
    // Change the volume after the snapshot: the backup must hold the snapshot's bytes.
    const dev = await env.client.attachVolume({ volumeId: vol.id, instance: 'vm-3' });
    const fh = await open(dev.device, 'r+');
    await fh.write(randomBytes(MiB), 0, MiB, 4 * MiB);
    await fh.close();
    await env.client.detachVolume(vol.id);

    const { backupId, handle } = await startBackup(vol.id, { snapshotId: snap.id, bpsLimit: 16 * MiB });
    await untilPhase(handle, 'copying');
    await expect(env.client.deleteSnapshot(snap.id)).rejects.toThrow(/is being backed up \(backup bak-/);
    const { backup } = await env.client.result<BackupResult>(handle);
    expect(backup).toMatchObject({ status: 'available', snapshotId: snap.id });
    const restored = await restoreNew(backupId, 'alpha', 'silver');
    expect(await env.volumes.sha256(restored.id)).toBe(atSnapshot);
    await env.client.deleteSnapshot(snap.id);
    expect(await env.rt.catalog.findSnapshot(snap.id)).toBeNull();
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});

describe('btrfs storage-assisted backup', () => {
  it('clones within one btrfs filesystem (other pool), restores by clone, both bit-exact', async () => {
    const vol = await volumeWithData(env, 'bt', 'gold', 64, [0, 20, 40]);
    const sum = await env.volumes.sha256(vol.id);
    const { backupId, handle } = await startBackup(vol.id, { target: 'bvault' });
    const { backup } = await env.client.result<BackupResult>(handle);
    expect(backup).toMatchObject({ status: 'available', method: 'storage-assisted', target: 'bvault' });
    expect(backup.storedBytes).toBe(12 * MiB);
    const back = await restoreNew(backupId, 'bt', 'gold');
    expect(await env.volumes.sha256(back.id)).toBe(sum);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('falls back to the generic path across drivers: btrfs -> file and file -> btrfs', async () => {
    const onBtrfs = await volumeWithData(env, 'bt', 'gold', 32, [0, 12]);
    const b1 = await startBackup(onBtrfs.id, { target: 'vault' });
    const r1 = await env.client.result<BackupResult>(b1.handle);
    expect(r1.backup.method).toBe('generic');
    const onFile = await restoreNew(b1.backupId, 'alpha', 'gold');
    expect(await env.volumes.sha256(onFile.id)).toBe(await env.volumes.sha256(onBtrfs.id));

    const b2 = await startBackup(onFile.id, { target: 'bvault' });
    const r2 = await env.client.result<BackupResult>(b2.handle);
    expect(r2.backup.method).toBe('generic');
    const backOnBtrfs = await restoreNew(b2.backupId, 'bt', 'gold');
    expect(await env.volumes.sha256(backOnBtrfs.id)).toBe(await env.volumes.sha256(onBtrfs.id));
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});
