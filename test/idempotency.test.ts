/**
 * Every activity can run twice with the same input and end in the same state: create
 * finds what the first run made, delete and detach of something gone succeed. Run
 * through Temporal's MockActivityEnvironment against real drivers, loop devices and
 * catalog (no server needed for this boundary).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createControlActivities } from '../src/activities/control.js';
import { createNodeActivities } from '../src/activities/node.js';
import { listLoopDevices } from '../src/connectors/loop.js';
import { Connectors } from '../src/connectors/registry.js';
import { Throttle } from '../src/copy/throttle.js';
import { AttachmentLedger } from '../src/node/ledger.js';
import { MiB } from '../src/size.js';
import { DEFAULT_YAML, makeEnv, volumeWithData, type TestEnv, attachInProcess, detachInProcess } from './helpers/env.js';
import { listAll } from '../src/drivers/backup/stores/store.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { snapshotWorld } from './helpers/world.js';

let env: TestEnv;
let ledger: AttachmentLedger;
beforeAll(async () => {
  env = await makeEnv({
    workers: false,
    yaml: (dir, taskQueue, address) => {
      // A posix object target beside the usual volume target: its activities are run twice too.
      mkdirSync(join(dir, 'objects'));
      return DEFAULT_YAML(dir, taskQueue, address).replace('defaultTarget: vault', `  - { name: shelf, driver: posix, path: ${dir}/objects }\ndefaultTarget: vault`);
    },
  });
  ledger = new AttachmentLedger(join(env.config.stateDir, 'nodes', 'test', 'ledger.sqlite'));
});
afterAll(async () => {
  ledger?.close();
  await env?.cleanup();
});

/** Catalog, backend files, ledger, and every object in the posix target (with its size). */
const world = async () => {
  const store = (await env.rt.objectTarget('shelf')).store;
  const objects = await Promise.all((await listAll(store, '')).sort().map(async (k) => `${k}:${await store.sizeOf(k)}`));
  return snapshotWorld(env, { ledger: ledger.entries().map((e) => e.path), objects });
};

/** Runs `fn` twice in one workflow's activity context; returns both results and the world after each. */
async function twice<R>(workflowId: string, fn: () => Promise<R>) {
  const mock = new MockActivityEnvironment({ workflowExecution: { workflowId, runId: 'run-1' }, heartbeatTimeoutMs: 0 });
  const first = (await mock.run(fn)) as R;
  const afterFirst = await world();
  const second = (await mock.run(fn)) as R;
  expect(await world(), 'second run changed the state').toEqual(afterFirst);
  return { first, second };
}

describe('every activity is idempotent', () => {
  it('control and node activities of a whole backup and restore, each run twice', async () => {
    const control = createControlActivities(env.rt);
    const node = createNodeActivities({ node: 'test', connector: new Connectors([env.dir]), ledger, throttle: new Throttle(undefined), blockSize: 4 * MiB });
    const vol = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    await attachInProcess(env, vol.id, 'vm');
    const wf = `backup-volume-${vol.id}`;
    const backupId = 'bak-idem';

    const plan = (await twice(wf, () => control.beginBackup({ backupId, volumeId: vol.id, force: true }))).first;
    expect(plan.tempSnapshot?.name).toBe(`backup-snap-${backupId}`);
    expect(plan.dest).not.toBeNull();
    const dest = plan.dest!;
    await twice(wf, () => control.createTempSnapshot({ backupId, volumeId: vol.id }));
    const assisted = await twice(wf, () => control.storageAssistedCopy({ source: plan.source, dest, size: plan.size }));
    expect(assisted.first.assisted).toBe(false);
    await twice(wf, () => control.createBackendVolume({ loc: dest, size: plan.size }));
    const src = (await twice(wf, () => control.initializeConnection({ loc: plan.source, readOnly: true }))).first;
    const dst = (await twice(wf, () => control.initializeConnection({ loc: dest, readOnly: false }))).first;
    const a1 = await twice(wf, () => node.attachVolume({ connection: src, role: 'source' }));
    expect(a1.second.device).toBe(a1.first.device);
    await twice(wf, () => node.attachVolume({ connection: dst, role: 'destination' }));
    const copy = await twice(wf, () => node.copyVolume({ source: src, dest: dst, size: plan.size, sparse: true }));
    expect(copy.second.storedBytes).toBe(copy.first.storedBytes);
    await twice(wf, () => node.detachVolume({ connection: dst }));
    await twice(wf, () => node.detachVolume({ connection: src }));
    await twice(wf, () => control.terminateConnection({ loc: dest }));
    const fin = await twice(wf, () => control.finalizeBackup({ backupId, storedBytes: copy.first.storedBytes, method: 'generic', node: 'test' }));
    expect(fin.second.status).toBe('available');
    await twice(wf, () => control.deleteSnapshot({ snapshotId: `backup-snap-${backupId}` }));
    await twice(wf, () => control.failBackup({ backupId, reason: 'late compensation must not undo an available backup' }));
    expect((await env.rt.catalog.backup(backupId)).status).toBe('available');

    const rwf = `restore-backup-${backupId}`;
    const rplan = (await twice(rwf, () => control.beginRestore({ backupId, backend: 'gamma', newVolumeId: 'vol-idem' }))).first;
    await twice(rwf, () => control.createBackendVolume({ loc: rplan.dest, size: rplan.size }));
    await twice(rwf, () => control.finalizeRestore({ backupId, volumeId: 'vol-idem' }));
    await twice(rwf, () => control.failRestore({ backupId, volumeId: 'vol-idem', createdVolume: true, dataTouched: true, reason: 'late' }));
    expect((await env.rt.catalog.volume('vol-idem')).status).toBe('available');

    const dwf = `delete-backup-${backupId}`;
    const del = await twice(dwf, () => control.beginDeleteBackup({ backupId }));
    await twice(dwf, () => control.deleteBackendVolume({ loc: del.first.location! }));
    await twice(dwf, () => control.finishDeleteBackup({ backupId }));
    await twice(dwf, () => control.failDeleteBackup({ backupId, reason: 'x' }));
    expect(await env.rt.catalog.findBackup(backupId)).toBeNull();

    await detachInProcess(env, vol.id);
    expect((await listLoopDevices()).filter((d) => d.backingFile.startsWith(env.dir))).toEqual([]);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('the object-target activities (chunked backup, verify, restore, delete) of a whole round trip, each run twice', async () => {
    const control = createControlActivities(env.rt);
    const node = createNodeActivities({
      node: 'test',
      connector: new Connectors([env.dir]),
      ledger,
      throttle: new Throttle(undefined),
      blockSize: 4 * MiB,
      objectTarget: (name) => env.rt.objectTarget(name),
    });
    const vol = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const wf = `backup-volume-${vol.id}`;
    const backupId = 'bak-idem-obj';

    const plan = (await twice(wf, () => control.beginBackup({ backupId, volumeId: vol.id, target: 'shelf' }))).first;
    expect(plan).toMatchObject({ objectTarget: 'shelf', dest: null, tempSnapshot: null });
    const src = (await twice(wf, () => control.initializeConnection({ loc: plan.source, readOnly: true }))).first;
    await twice(wf, () => node.attachVolume({ connection: src, role: 'source' }));
    const up = await twice(wf, () =>
      node.backupToObjects({ source: src, target: 'shelf', backupId, volumeId: vol.id, size: plan.size, incremental: false }),
    );
    // The second run finds the complete backup and stores nothing.
    expect(up.second).toMatchObject({ storedBytes: up.first.storedBytes, dataBytes: 8 * MiB, parentId: null });
    await twice(wf, () => node.detachVolume({ connection: src }));
    await twice(wf, () => control.finalizeBackup({ backupId, storedBytes: up.first.storedBytes, method: 'chunked', node: 'test', parentId: null }));
    await twice(wf, () => control.failBackup({ backupId, reason: 'late compensation must not undo an available backup' }));
    expect(await env.rt.catalog.backup(backupId)).toMatchObject({ status: 'available', method: 'chunked' });

    const vwf = `verify-backup-${backupId}`;
    expect((await twice(vwf, () => control.beginVerify({ backupId }))).first).toEqual({ target: 'shelf' });
    const verified = await twice(vwf, () => control.verifyObjectBackup({ target: 'shelf', backupId }));
    expect(verified.second).toEqual(verified.first);
    expect(verified.first.bytes).toBe(8 * MiB);

    const rwf = `restore-backup-${backupId}`;
    const rplan = (await twice(rwf, () => control.beginRestore({ backupId, backend: 'gamma', newVolumeId: 'vol-idem-obj' }))).first;
    expect(rplan).toMatchObject({ objectTarget: 'shelf', source: null, createdVolume: true });
    await twice(rwf, () => control.createBackendVolume({ loc: rplan.dest, size: rplan.size }));
    const dst = (await twice(rwf, () => control.initializeConnection({ loc: rplan.dest, readOnly: false }))).first;
    await twice(rwf, () => node.attachVolume({ connection: dst, role: 'destination' }));
    await twice(rwf, () => node.restoreFromObjects({ dest: dst, target: 'shelf', backupId, size: rplan.size, destIsZero: true }));
    await twice(rwf, () => node.detachVolume({ connection: dst }));
    await twice(rwf, () => control.finalizeRestore({ backupId, volumeId: 'vol-idem-obj' }));
    expect(await env.volumes.sha256('vol-idem-obj')).toBe(await env.volumes.sha256(vol.id));

    const dwf = `delete-backup-${backupId}`;
    const del = await twice(dwf, () => control.beginDeleteBackup({ backupId }));
    expect(del.first).toEqual({ location: null, objectTarget: 'shelf' });
    const gone = await twice(dwf, () => control.deleteObjectBackup({ target: 'shelf', backupId }));
    expect(gone.first.chunksDeleted).toBe(2);
    expect(gone.second.chunksDeleted).toBe(0);
    await twice(dwf, () => control.finishDeleteBackup({ backupId }));
    expect(await env.rt.catalog.findBackup(backupId)).toBeNull();
    // Only the delete's announcement (gc.ts), kept a day for backups that ran meanwhile.
    expect((await listAll((await env.rt.objectTarget('shelf')).store, '')).sort()).toEqual([
      expect.stringMatching(/^gc\/\d{15}-bak-idem-obj\.\d{15}\.done$/),
      expect.stringMatching(/^gc\/\d{15}-bak-idem-obj\.json$/),
    ]);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});
