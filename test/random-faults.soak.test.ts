/**
 * Soak: 100 backups and restores (GBACKUP_SOAK_ROUNDS to change), each under a random
 * fault at a random step (or none), then the leak checks over everything. Prints the
 * counts. Seeded (GBACKUP_SOAK_SEED) so a failing run can be repeated.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { BackupResult, RestoreResult } from '../src/api.js';
import { makeEnv, volumeWithData, yamlWith, type TestEnv, attachInProcess, detachInProcess } from './helpers/env.js';
import { BACKUP_STEPS, FAULTS, RESTORE_STEPS, underFault, waitFor, type FaultKind } from './helpers/faults.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { workerProcess, type WorkerProcess } from './helpers/worker-process.js';

const ROUNDS = Number(process.env.GBACKUP_SOAK_ROUNDS ?? 100);
let seed = Number(process.env.GBACKUP_SOAK_SEED ?? 20261125) >>> 0;
/** mulberry32: small, seeded, and without the short low-bit cycles of a plain LCG. */
const rand = (n: number) => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
};

let env: TestEnv;
let worker: WorkerProcess;
beforeAll(async () => {
  env = await makeEnv({
    workers: false,
    yaml: yamlWith('timeouts: { heartbeat: 2, scheduleToStart: 20, reconcileEvery: 1 }'),
  });
  worker = workerProcess({ dir: env.dir, configFile: env.configFile });
  await worker.start();
});
afterAll(async () => {
  await worker?.kill();
  await env?.cleanup();
});

describe('soak', () => {
  it(`${ROUNDS} backups and restores under random faults leave nothing behind`, async () => {
    const failpoints = join(env.dir, 'failpoints-worker');
    const available = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const inUse = await volumeWithData(env, 'alpha', 'silver', 16, [4, 12]);
    await attachInProcess(env, inUse.id, 'vm-soak');
    const sums = new Map([
      [available.id, await env.volumes.sha256(available.id)],
      [inUse.id, await env.volumes.sha256(inUse.id)],
    ]);
    const counts: Record<string, number> = {};
    const bump = (k: string) => (counts[k] = (counts[k] ?? 0) + 1);
    const backups: { id: string; volumeId: string }[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const restore = backups.length > 0 && rand(2) === 1;
      const fault: FaultKind | 'none' = rand(5) === 0 ? 'none' : FAULTS[rand(FAULTS.length)]!;
      if (!restore) {
        const vol = rand(2) === 0 ? available : inUse;
        const step = BACKUP_STEPS[rand(BACKUP_STEPS.length)]!;
        const backupId = `bak-${randomBytes(4).toString('hex')}`;
        const r = await underFault<BackupResult>(env, worker, failpoints, fault === 'none' ? 'none' : step, fault === 'none' ? 'transient' : fault, () =>
          env.client.startBackup({ volumeId: vol.id, backupId, force: true }, { target: 'vault', backend: 'alpha' }),
        );
        const b = await env.rt.catalog.backup(backupId);
        bump(`backup ${b.status}`);
        if (r.restarted) bump('worker restarts');
        if (b.status === 'available') backups.push({ id: backupId, volumeId: vol.id });
        else expect(b.error).toBeTruthy();
        expect((await env.rt.catalog.volume(vol.id)).status).toBe(vol.id === inUse.id ? 'in-use' : 'available');
      } else {
        const b = backups[rand(backups.length)]!;
        const step = RESTORE_STEPS[rand(RESTORE_STEPS.length)]!;
        const newVolumeId = `vol-${randomBytes(4).toString('hex')}`;
        const r = await underFault<RestoreResult>(env, worker, failpoints, fault === 'none' ? 'none' : step, fault === 'none' ? 'transient' : fault, () =>
          env.client.startRestore({ backupId: b.id, backend: 'gamma', newVolumeId }),
        );
        const v = await env.rt.catalog.findVolume(newVolumeId);
        bump(`restore ${v ? v.status : 'undone'}`);
        if (r.restarted) bump('worker restarts');
        if (v) {
          expect(v.status).toBe('available');
          expect(await env.volumes.sha256(newVolumeId)).toBe(sums.get(b.volumeId));
          bump('restores verified bit-exact');
          await env.volumes.delete(newVolumeId);
        }
      }
      bump(`fault ${fault}`);
    }
    await detachInProcess(env, inUse.id);
    await waitFor('no leaks', async () => JSON.stringify(await findLeaks(env)) === JSON.stringify(NO_LEAKS), 30_000).catch(() => undefined);
    const leaks = await findLeaks(env);
    console.log(`soak: ${ROUNDS} rounds; ${JSON.stringify(counts, null, 1)}\nleaks after the run: ${JSON.stringify(leaks)}`);
    expect(leaks).toEqual(NO_LEAKS);
  });
});
