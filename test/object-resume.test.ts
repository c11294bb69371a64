/**
 * A killed worker mid-upload: the retried backup resumes from its heartbeat and the
 * journal in the store instead of starting over, and the result restores bit-exact.
 * Same for a restore killed mid-download. Workers run in their own processes here,
 * so they can be SIGKILLed like a crashed host; the store is a real MinIO.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BackupResult, RestoreResult } from '../src/api.js';
import { formatBytes, MiB } from '../src/size.js';
import { makeEnv, volumeWithData, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { startMinio, type Minio } from './helpers/minio.js';
import { findStoreLeaks, NO_STORE_LEAKS } from './helpers/objects.js';
import { progress, waitFor } from './helpers/wait.js';
import { workerProcess, type WorkerProcess } from './helpers/worker-process.js';

let minio: Minio;
let env: TestEnv;
let worker: WorkerProcess;

beforeAll(async () => {
  minio = await startMinio();
  env = await makeEnv({
    workers: false,
    yaml: (dir, taskQueue, address) => {
      writeFileSync(join(dir, 's3.json'), JSON.stringify({ accessKeyId: minio.accessKeyId, secretAccessKey: minio.secretAccessKey }), { mode: 0o600 });
      return `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha }
  - { name: gamma, driver: file, path: ${dir}/gamma }
  - { name: beta,  driver: file, path: ${dir}/beta }
targets:
  - { name: vault, driver: volume, backend: beta }
  - { name: bucket, driver: s3, endpoint: ${minio.endpoint}, bucket: ${minio.bucket}, prefix: resume, forcePathStyle: true, credentialsFile: ${dir}/s3.json }
timeouts: { heartbeat: 3, scheduleToStart: 5, reconcileEvery: 2 }
copyBpsLimit: 8M
`;
    },
  });
  worker = workerProcess({ dir: env.dir, configFile: env.configFile });
  await worker.start();
}, 120_000);

afterAll(async () => {
  await worker?.kill();
  await env?.cleanup();
  await minio?.stop();
});


describe('object copies across a worker crash', () => {
  it('a backup killed mid-upload resumes, re-reading only what was not stored, and a restore killed mid-download resumes too', async () => {
    const size = 96 * MiB;
    const vol = await volumeWithData(env, 'alpha', undefined, 96, [0, 16, 32, 48, 64, 80], 16 * MiB);
    const sum = await env.volumes.sha256(vol.id);
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    const h = await env.client.startBackup({ volumeId: vol.id, backupId, target: 'bucket' }, { target: 'bucket', backend: 'alpha' });
    const atKill = await waitFor(`40 MiB of the upload ${worker.output()}`, async () => {
      const p = await progress(h);
      return p.bytesDone >= 40 * MiB ? p.bytesDone : undefined;
    });
    // Mid-upload for sure: at 8 MiB/s the rest takes seconds.
    expect((await env.rt.catalog.backup(backupId)).status).toBe('creating');
    await worker.kill();
    await worker.start();
    const { backup } = await env.client.result<BackupResult>(h);
    expect(backup.status).toBe('available');
    const copy = (await progress(h)).lastCopy!;
    console.log(
      `object resume: killed at ${formatBytes(atKill)} of ${formatBytes(size)}; the retry resumed from ${formatBytes(copy.resumedFrom)} and read ${formatBytes(copy.bytesCopied)} ` +
        `(${((copy.bytesCopied / size) * 100).toFixed(0)}% of the volume)`,
    );
    expect(copy.resumedFrom).toBeGreaterThan(0);
    // The journal in the store lags the upload by at most ~2 s (16 MiB at this limit): what is below it is not even read again.
    expect(copy.bytesCopied).toBeLessThanOrEqual(size - atKill + 24 * MiB);
    // Every byte was stored once: what the killed attempt uploaded was found, not uploaded again.
    expect(backup.storedBytes).toBeGreaterThanOrEqual(size);
    expect(backup.storedBytes).toBeLessThan(size + 64 * 1024);

    const newVolumeId = `vol-${randomBytes(4).toString('hex')}`;
    const r = await env.client.startRestore({ backupId, backend: 'gamma', newVolumeId });
    await waitFor(`a third of the download ${worker.output()}`, async () => {
      const p = await progress(r);
      return p.bytesDone >= 32 * MiB ? p.bytesDone : undefined;
    });
    // The offset reaches the server with the next heartbeat (at most a second later).
    await sleep(1500);
    await worker.kill();
    await worker.start();
    const { volume } = await env.client.result<RestoreResult>(r);
    expect(volume.status).toBe('available');
    const rcopy = (await progress(r)).lastCopy;
    expect(await env.volumes.sha256(volume.id)).toBe(sum);
    console.log(`object restore resume: ${JSON.stringify(rcopy)}`);
    expect(rcopy?.resumedFrom ?? 0).toBeGreaterThan(0);
    expect(rcopy?.bytesCopied ?? size).toBeLessThan(size);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
    expect(await findStoreLeaks((await env.rt.objectTarget('bucket')).store)).toEqual(NO_STORE_LEAKS);
  });

  it('a backup cancelled mid-upload, or failing for good, leaves the source as it was and nothing of itself in the store', async () => {
    const store = (await env.rt.objectTarget('bucket')).store;
    const vol = await volumeWithData(env, 'alpha', undefined, 64, [0, 16, 32, 48], 16 * MiB);
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    const h = await env.client.startBackup({ volumeId: vol.id, backupId, target: 'bucket' }, { target: 'bucket', backend: 'alpha' });
    await waitFor('part of the upload', async () => ((await progress(h)).bytesDone >= 16 * MiB ? true : undefined));
    await env.client.cancel(h.workflowId);
    await expect(env.client.result(h)).rejects.toThrow(/cancelled/);
    expect(await env.rt.catalog.backup(backupId)).toMatchObject({ status: 'error', error: 'cancelled' });
    expect((await env.rt.catalog.volume(vol.id)).status).toBe('available');

    worker.setFailpoints('copy=error');
    const failedId = `bak-${randomBytes(4).toString('hex')}`;
    const f = await env.client.startBackup({ volumeId: vol.id, backupId: failedId, target: 'bucket' }, { target: 'bucket', backend: 'alpha' });
    await expect(env.client.result(f)).rejects.toThrow(/InjectedFault|injected/i);
    worker.setFailpoints('');
    expect((await env.rt.catalog.backup(failedId)).status).toBe('error');
    expect((await env.rt.catalog.volume(vol.id)).status).toBe('available');

    // Only complete backups (the one of the first test) remain, and every chunk object is one of theirs.
    const keys: string[] = [];
    for await (const k of store.list('backups/')) keys.push(k);
    expect(keys.filter((k) => k.includes(backupId) || k.includes(failedId))).toEqual([]);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
    expect(await findStoreLeaks(store)).toEqual(NO_STORE_LEAKS);
  });

  it('a backup or restore whose workflow is terminated (no compensation runs) is cleaned up by the control worker: nothing stays attached, stored or stuck', async () => {
    const store = (await env.rt.objectTarget('bucket')).store;
    const vol = await volumeWithData(env, 'alpha', undefined, 64, [0, 16, 32, 48], 16 * MiB);
    const terminated: string[] = [];
    for (const target of ['bucket', 'vault']) {
      const backupId = `bak-${randomBytes(4).toString('hex')}`;
      const h = await env.client.startBackup({ volumeId: vol.id, backupId, target }, { target, backend: 'alpha' });
      await waitFor(`part of the copy to ${target}`, async () => ((await progress(h)).bytesDone >= 8 * MiB ? true : undefined));
      await h.terminate('test: an operator terminates the workflow');
      terminated.push(backupId);
      const b = await waitFor(`the sweep to end backup ${backupId}`, async () => {
        const r = await env.rt.catalog.backup(backupId);
        return r.status === 'error' ? r : undefined;
      });
      expect(b.error).toMatch(/abandoned: workflow backup-volume-.* ended without finishing/);
      expect((await env.rt.catalog.volume(vol.id)).status).toBe('available');
    }

    const good = `bak-${randomBytes(4).toString('hex')}`;
    await env.client.result(await env.client.startBackup({ volumeId: vol.id, backupId: good, target: 'bucket' }, { target: 'bucket', backend: 'alpha' }));
    const newVolumeId = `vol-${randomBytes(4).toString('hex')}`;
    const r = await env.client.startRestore({ backupId: good, backend: 'gamma', newVolumeId });
    await waitFor('part of the restore', async () => ((await progress(r)).bytesDone >= 8 * MiB ? true : undefined));
    await r.terminate('test: an operator terminates the workflow');
    const v = await waitFor('the sweep to end the restore', async () => {
      const x = await env.rt.catalog.volume(newVolumeId);
      return x.status === 'error' ? x : undefined;
    });
    expect(v.error).toMatch(/restore workflow restore-backup-.* ended without finishing/);
    await waitFor('the backup to be available again', async () => (await env.rt.catalog.backup(good)).status === 'available');
    await env.volumes.delete(newVolumeId);

    // The node's ledger reconcile detaches what the terminated workflows attached.
    await waitFor('no leaks', async () => JSON.stringify(await findLeaks(env)) === JSON.stringify(NO_LEAKS));
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
    expect(await findStoreLeaks(store)).toEqual(NO_STORE_LEAKS);
    const keys: string[] = [];
    for await (const k of store.list('backups/')) keys.push(k);
    expect(keys.filter((k) => terminated.some((id) => k.includes(id)))).toEqual([]);
  });
});
