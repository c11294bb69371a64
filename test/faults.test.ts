/**
 * The proof: every step of backup and of restore crossed with every fault
 * (non-retryable error, transient error, worker SIGKILL, workflow cancel). After each:
 * no loop device, ledger entry, temporary snapshot or unreferenced volume on any
 * backend; the source in its previous status; the backup `available` or `error` with a
 * reason; and every `available` backup restores bit-exact. The matrix is printed.
 *
 * Workers run in a separate process that reads failpoints from a file, so `crash`
 * can SIGKILL it for real; the test restarts it, as an operator or systemd would.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { BackupResult, RestoreResult } from '../src/api.js';
import { makeEnv, volumeWithData, yamlWith, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { workerProcess, type WorkerProcess } from './helpers/worker-process.js';
import { BACKUP_STEPS, describeOutcome, FAULTS, RESTORE_STEPS, underFault, waitFor } from './helpers/faults.js';


let env: TestEnv;
let worker: WorkerProcess;
let failpointsFile: string;
let source: { id: string; sum: string };
let fixtureBackup: string;
const matrix: { backup: Record<string, string>; restore: Record<string, string> } = { backup: {}, restore: {} };

beforeAll(async () => {
  env = await makeEnv({
    workers: false,
    yaml: yamlWith('timeouts: { heartbeat: 2, scheduleToStart: 20, reconcileEvery: 1 }'),
  });
  worker = workerProcess({ dir: env.dir, configFile: env.configFile });
  failpointsFile = join(env.dir, 'failpoints-worker');
  await worker.start();
  // An in-use source volume (so the snapshot step exists) and a backup to restore from.
  const vol = await volumeWithData(env, 'alpha', 'gold', 24, [0, 8, 16]);
  await env.client.attachVolume({ volumeId: vol.id, instance: 'vm-faults' });
  source = { id: vol.id, sum: await env.volumes.sha256(vol.id) };
  const h = await env.client.startBackup({ volumeId: vol.id, backupId: `bak-${randomBytes(4).toString('hex')}`, force: true }, { target: 'vault', backend: 'alpha' });
  fixtureBackup = (await env.client.result<BackupResult>(h)).backup.id;
});

afterAll(async () => {
  const steps = [...new Set([...BACKUP_STEPS, ...RESTORE_STEPS])];
  const lines = [`${'step'.padEnd(20)} ${FAULTS.map((f) => `backup:${f}`.padEnd(26)).join('')}${FAULTS.map((f) => `restore:${f}`.padEnd(26)).join('')}`];
  for (const s of steps) {
    lines.push(`${s.padEnd(20)} ${FAULTS.map((f) => (matrix.backup[`${s}/${f}`] ?? 'n/a').padEnd(26)).join('')}${FAULTS.map((f) => (matrix.restore[`${s}/${f}`] ?? 'n/a').padEnd(26)).join('')}`);
  }
  console.log(`\nfault matrix (step x fault -> outcome; every cell also checked for leaks and status):\n${lines.join('\n')}\n`);
  await worker?.kill();
  await env?.cleanup();
});


describe('fault matrix', () => {
  for (const step of BACKUP_STEPS) {
    for (const fault of FAULTS) {
      it(`backup: ${step} x ${fault}`, async () => {
        const backupId = `bak-${randomBytes(4).toString('hex')}`;
        const r = await underFault<BackupResult>(env, worker, failpointsFile, step, fault, () => env.client.startBackup({ volumeId: source.id, backupId, force: true }, { target: 'vault', backend: 'alpha' }));
        const b = await env.rt.catalog.backup(backupId);
        matrix.backup[`${step}/${fault}`] = describeOutcome(r, b.status, fault);
        if (fault === 'crash') expect(r.restarted).toBe(true);
        if (fault === 'transient' || fault === 'crash') expect(b.status, JSON.stringify(r)).toBe('available');
        if (fault === 'error' && !['detach', 'cleanup'].includes(step)) expect(b.status).toBe('error');
        if (b.status === 'error') expect(b.error).toBeTruthy();
        else expect(b.status).toBe('available');
        // Detach leftovers of a failed detach are released by the node's periodic reconcile.
        await waitFor('no leaks', async () => JSON.stringify(await findLeaks(env)) === JSON.stringify(NO_LEAKS), 30_000).catch(() => undefined);
        expect(await findLeaks(env)).toEqual(NO_LEAKS);
        expect(await env.rt.catalog.volume(source.id)).toMatchObject({ status: 'in-use', instance: 'vm-faults' });
        if (b.status === 'available') {
          worker.setFailpoints('');
          const rh = await env.client.startRestore({ backupId, backend: 'gamma', newVolumeId: `vol-${randomBytes(4).toString('hex')}` });
          const { volume } = await env.client.result<RestoreResult>(rh);
          expect(await env.volumes.sha256(volume.id)).toBe(source.sum);
          await env.volumes.delete(volume.id);
        }
        expect(await findLeaks(env)).toEqual(NO_LEAKS);
      });
    }
  }

  for (const step of RESTORE_STEPS) {
    for (const fault of FAULTS) {
      it(`restore: ${step} x ${fault}`, async () => {
        const newVolumeId = `vol-${randomBytes(4).toString('hex')}`;
        const r = await underFault<RestoreResult>(env, worker, failpointsFile, step, fault, () => env.client.startRestore({ backupId: fixtureBackup, backend: 'gamma', newVolumeId }));
        const v = await env.rt.catalog.findVolume(newVolumeId);
        matrix.restore[`${step}/${fault}`] = describeOutcome(r, v ? v.status : 'no volume', fault);
        if (fault === 'crash') expect(r.restarted).toBe(true);
        if (fault === 'transient' || fault === 'crash') expect(v?.status, JSON.stringify(r)).toBe('available');
        if ('ok' in r) {
          expect(v?.status).toBe('available');
          expect(await env.volumes.sha256(newVolumeId)).toBe(source.sum);
          await env.volumes.delete(newVolumeId);
        } else {
          // A failed restore onto a new volume leaves no volume at all.
          expect(v).toBeNull();
        }
        expect((await env.rt.catalog.backup(fixtureBackup)).status).toBe('available');
        await waitFor('no leaks', async () => JSON.stringify(await findLeaks(env)) === JSON.stringify(NO_LEAKS), 30_000).catch(() => undefined);
        expect(await findLeaks(env)).toEqual(NO_LEAKS);
      });
    }
  }
});
