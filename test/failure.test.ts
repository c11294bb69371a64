/**
 * A failure injected in the copy, or a cancel mid-copy, leaves no loop device, no
 * destination volume, no ledger entry, and the source back in its previous status;
 * the backup is `error` with the reason.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { MiB } from '../src/size.js';
import { makeEnv, volumeWithData, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';

let env: TestEnv;
beforeAll(async () => {
  env = await makeEnv();
});
afterEach(() => {
  delete process.env.GBACKUP_FAILPOINTS;
});
afterAll(async () => {
  await env?.cleanup();
});

describe('failures during a backup', () => {
  it('a non-retryable copy failure compensates everything', async () => {
    const vol = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    process.env.GBACKUP_FAILPOINTS = 'copy=error';
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    const h = await env.client.startBackup({ volumeId: vol.id, backupId }, { target: 'vault', backend: 'alpha' });
    await expect(env.client.result(h)).rejects.toThrow(/failpoint 'copy': injected error/);
    const b = await env.rt.catalog.backup(backupId);
    expect(b.status).toBe('error');
    expect(b.error).toMatch(/InjectedFault: failpoint 'copy'/);
    expect((await env.rt.catalog.volume(vol.id)).status).toBe('available');
    expect(await env.rt.driver('beta').volumeSize({ pool: null, name: `backup-${backupId}` })).toBeNull();
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('a transient copy failure is retried and the backup succeeds', async () => {
    const vol = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    process.env.GBACKUP_FAILPOINTS = 'copy=transient,attach-source=transient';
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    const h = await env.client.startBackup({ volumeId: vol.id, backupId }, { target: 'vault', backend: 'alpha' });
    const { backup } = await env.client.result<{ backup: { status: string } }>(h);
    expect(backup.status).toBe('available');
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('a cancel mid-copy runs every compensation; the backup is error with reason cancelled', async () => {
    const vol = await volumeWithData(env, 'alpha', 'gold', 64, [0, 16, 32, 48], 16 * MiB);
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    // Limited from the first byte, so the cancel finds dd running.
    const h = await env.client.startBackup({ volumeId: vol.id, backupId, bpsLimit: 8 * MiB }, { target: 'vault', backend: 'alpha' });
    // Wait until bytes are moving, then cancel.
    for (let i = 0; i < 100; i++) {
      const p = await h.query<{ phase: string }>('progress');
      if (p.phase === 'copying') break;
      await sleep(100);
    }
    await sleep(1500);
    expect((await env.rt.catalog.volume(vol.id)).status).toBe('backing-up');
    await env.client.cancel(h.workflowId);
    await expect(env.client.result(h)).rejects.toThrow(/cancelled/);
    expect(await env.rt.catalog.backup(backupId)).toMatchObject({ status: 'error', error: 'cancelled' });
    expect((await env.rt.catalog.volume(vol.id)).status).toBe('available');
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('a failed restore onto a new volume removes it; onto an existing volume marks it error once written', async () => {
    const vol = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const bh = await env.client.startBackup({ volumeId: vol.id, backupId: `bak-${randomBytes(4).toString('hex')}` }, { target: 'vault', backend: 'alpha' });
    const { backup } = await env.client.result<{ backup: { id: string } }>(bh);
    process.env.GBACKUP_FAILPOINTS = 'copy=error';
    const newVolumeId = `vol-${randomBytes(4).toString('hex')}`;
    await expect(env.client.result(await env.client.startRestore({ backupId: backup.id, backend: 'gamma', newVolumeId }))).rejects.toThrow(/injected error/);
    expect(await env.rt.catalog.findVolume(newVolumeId)).toBeNull();
    expect(await env.rt.driver('gamma').volumeSize({ pool: null, name: newVolumeId })).toBeNull();
    const existing = await env.volumes.create({ backend: 'gamma', size: 16 * MiB });
    await expect(env.client.result(await env.client.startRestore({ backupId: backup.id, volumeId: existing.id }))).rejects.toThrow(/injected error/);
    expect(await env.rt.catalog.volume(existing.id)).toMatchObject({ status: 'error' });
    expect((await env.rt.catalog.volume(existing.id)).error).toMatch(/restore from backup .* failed/);
    expect((await env.rt.catalog.backup(backup.id)).status).toBe('available');
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});
