/**
 * Bad input gets a clear error naming what is wrong, and changes nothing: the catalog
 * and every backend's files are the same before and after. Both doors are tried: the
 * workflows as another service starts them (plain client, by type name) and the CLI.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { symlinkSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure, ActivityFailure } from '@temporalio/common';
import { WORKFLOWS, workflowIds } from '../src/api.js';
import { parseConfig } from '../src/config/load.js';
import { SameStorageTarget } from '../src/errors.js';
import { Runtime } from '../src/services/runtime.js';
import { MiB } from '../src/size.js';
import { startWorkers } from '../src/workers/worker.js';
import { makeEnv, volumeWithData, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { waitFor } from './helpers/wait.js';
import { snapshotWorld as snapshotWorldOf } from './helpers/world.js';

let env: TestEnv;
beforeAll(async () => {
  env = await makeEnv();
});
afterAll(async () => {
  await env?.cleanup();
});

const snapshotWorld = () => snapshotWorldOf(env);

/** Runs a workflow by type name, as another service would, and returns its failure type and message. */
async function workflowFailure(type: string, workflowId: string, input: unknown): Promise<{ type: string; message: string }> {
  try {
    await env.client.client.workflow.execute(type, { taskQueue: env.config.temporal.taskQueue, workflowId, args: [input] });
  } catch (e) {
    expect(e).toBeInstanceOf(WorkflowFailedError);
    let cause = (e as WorkflowFailedError).cause;
    while (cause instanceof ActivityFailure && cause.cause) cause = cause.cause;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    return { type: (cause as ApplicationFailure).type ?? '', message: cause!.message };
  }
  throw new Error(`workflow ${type} succeeded on bad input ${JSON.stringify(input)}`);
}

const wid = () => `bad-${randomBytes(4).toString('hex')}`;

describe('bad input through the workflows, as other services start them', () => {
  it('refuses unknown or malformed ids and names, and changes nothing', async () => {
    const vol = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const before = await snapshotWorld();
    const cases: [string, unknown, string, RegExp][] = [
      [WORKFLOWS.backupVolume, { volumeId: 'vol-nope' }, 'VolumeNotFound', /volume 'vol-nope' not found/],
      [WORKFLOWS.backupVolume, { volumeId: vol.id, target: 'nowhere' }, 'TargetNotFound', /target 'nowhere' not found/],
      [WORKFLOWS.backupVolume, { volumeId: '../etc' }, 'InvalidInput', /volumeId must not contain '\/'|volumeId must not contain '\.\.'/],
      [WORKFLOWS.backupVolume, { volumeId: 'a/b' }, 'InvalidInput', /volumeId must not contain '\/'/],
      [WORKFLOWS.backupVolume, { volumeId: 'a\0b' }, 'InvalidInput', /volumeId must not contain NUL/],
      [WORKFLOWS.backupVolume, { volumeId: vol.id, name: 'x/../y' }, 'InvalidInput', /name must not contain/],
      [WORKFLOWS.backupVolume, { volumeId: vol.id, extra: 1 }, 'InvalidInput', /invalid input/],
      [WORKFLOWS.restoreBackup, { backupId: 'bak-nope', backend: 'gamma' }, 'BackupNotFound', /backup 'bak-nope' not found/],
      [WORKFLOWS.restoreBackup, { backupId: 'bak-x' }, 'InvalidInput', /exactly one of volumeId .* or backend/],
      [WORKFLOWS.deleteBackup, { backupId: 'bak-nope' }, 'BackupNotFound', /backup 'bak-nope' not found/],
      [WORKFLOWS.deleteBackup, { backupId: '..' }, 'InvalidInput', /must not contain '\.\.'/],
    ];
    for (const [type, input, errType, msg] of cases) {
      const f = await workflowFailure(type, wid(), input);
      expect(f.type, JSON.stringify(input)).toBe(errType);
      expect(f.message, JSON.stringify(input)).toMatch(msg);
    }
    expect(await snapshotWorld()).toEqual(before);
  });

  it('refuses restores onto unknown backends and pools, smaller or busy volumes, and a backup-only place', async () => {
    const vol = await volumeWithData(env, 'alpha', 'gold', 16, [0]);
    const h = await env.client.startBackup({ volumeId: vol.id, backupId: `bak-${randomBytes(4).toString('hex')}` }, { target: 'vault', backend: 'alpha' });
    const { backup } = await env.client.result<{ backup: { id: string } }>(h);
    const small = await env.volumes.create({ backend: 'gamma', size: 8 * MiB });
    const errored = await env.volumes.create({ backend: 'gamma', size: 32 * MiB });
    await env.rt.catalog.transitionVolume(errored.id, ['available'], 'error', { error: 'test: broken' });
    const before = await snapshotWorld();
    const cases: [unknown, string, RegExp][] = [
      [{ backupId: backup.id, backend: 'nowhere' }, 'BackendNotFound', /backend 'nowhere' not found/],
      [{ backupId: backup.id, backend: 'alpha', pool: 'bronze' }, 'PoolNotFound', /backend 'alpha' has no pool 'bronze'/],
      [{ backupId: backup.id, backend: 'beta' }, 'BackupOnlyStorage', /holds backups only \(target 'vault'\)/],
      [{ backupId: backup.id, volumeId: small.id }, 'VolumeTooSmall', /has 8388608 bytes .* needs at least 16777216/],
      [{ backupId: backup.id, volumeId: errored.id }, 'InvalidStatus', /is 'error'.*needs an 'available' volume/],
      [{ backupId: backup.id, volumeId: 'vol-nope' }, 'VolumeNotFound', /volume 'vol-nope' not found/],
    ];
    for (const [input, errType, msg] of cases) {
      const f = await workflowFailure(WORKFLOWS.restoreBackup, wid(), input);
      expect(f.type, JSON.stringify(input)).toBe(errType);
      expect(f.message).toMatch(msg);
    }
    expect(await snapshotWorld()).toEqual(before);
    expect((await env.rt.catalog.backup(backup.id)).status).toBe('available');
  });

  it('refuses a backup of a volume in error, with its reason', async () => {
    const vol = await env.volumes.create({ backend: 'alpha', pool: 'gold', size: 8 * MiB });
    await env.rt.catalog.transitionVolume(vol.id, ['available'], 'error', { error: 'disk on fire' });
    const before = await snapshotWorld();
    const f = await workflowFailure(WORKFLOWS.backupVolume, workflowIds.backup(vol.id), { volumeId: vol.id });
    expect(f).toMatchObject({ type: 'InvalidStatus' });
    expect(f.message).toMatch(/in 'error' \(disk on fire\)/);
    expect(await snapshotWorld()).toEqual(before);
  });

  it('refuses a second concurrent backup of one volume, by workflow id, and deleting a backup while it restores', async () => {
    const vol = await volumeWithData(env, 'alpha', 'gold', 64, [0, 16, 32, 48], 16 * MiB);
    const first = `bak-${randomBytes(4).toString('hex')}`;
    // Slowed down from the first byte, so the second request surely arrives while the first runs.
    const h = await env.client.startBackup({ volumeId: vol.id, backupId: first, bpsLimit: 16 * MiB }, { target: 'vault', backend: 'alpha' });
    await expect(env.client.startBackup({ volumeId: vol.id, backupId: `bak-${randomBytes(4).toString('hex')}` }, { target: 'vault', backend: 'alpha' })).rejects.toThrow(
      /volume '.*' already has a backup running .*one backup per volume at a time/,
    );
    await env.client.result(h);
    expect((await env.rt.catalog.listBackups(vol.id)).map((b) => b.id)).toEqual([first]);

    const rh = await env.client.startRestore({ backupId: first, backend: 'gamma', newVolumeId: `vol-${randomBytes(4).toString('hex')}`, bpsLimit: 16 * MiB });
    // The start returns before the restore has claimed the backup; under load the delete
    // could otherwise come first (and win).
    await waitFor(`backup ${first} claimed by its restore`, async () => (await env.rt.catalog.backup(first)).status === 'restoring');
    const f = await workflowFailure(WORKFLOWS.deleteBackup, wid(), { backupId: first });
    expect(f).toMatchObject({ type: 'InvalidStatus' });
    expect(f.message).toMatch(/is being restored/);
    await env.client.result(rh);
    expect((await env.rt.catalog.backup(first)).status).toBe('available');
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});

describe('bad sizes and places through the volume API', () => {
  it('refuses sizes that are zero, negative, unparsable or beyond free space, and backup-only places', async () => {
    const { checkSize } = await import('../src/services/volumes.js');
    expect(() => checkSize('0')).toThrow(/greater than zero/);
    expect(() => checkSize('-5M')).toThrow(/greater than zero/);
    expect(() => checkSize('lots')).toThrow(/'lots' is not a size/);
    expect(() => checkSize('12Q')).toThrow(/unknown unit 'Q'/);
    expect(() => checkSize('1000K')).toThrow(/whole number of MiB/);
    const before = await snapshotWorld();
    await expect(env.volumes.create({ backend: 'alpha', pool: 'gold', size: 1024 * 1024 * MiB * 1024 })).rejects.toThrow(/backend 'alpha' pool 'gold' has .* free; .* does not fit/);
    await expect(env.volumes.create({ backend: 'beta', size: MiB })).rejects.toThrow(/backend 'beta' holds backups only \(target 'vault'\)/);
    await expect(env.volumes.create({ backend: 'nowhere', size: MiB })).rejects.toThrow(/backend 'nowhere' not found/);
    await expect(env.volumes.create({ backend: 'alpha', pool: 'bronze', size: MiB })).rejects.toThrow(/no pool 'bronze'/);
    await expect(env.volumes.create({ backend: 'alpha', pool: 'gold', size: MiB, name: 'a/b' })).rejects.toThrow(/must not contain '\/'/);
    expect(await snapshotWorld()).toEqual(before);
  });
});

describe('the same-storage rule', () => {
  const base = (dir: string, backends: string, targets: string) => `
temporal: { address: ${env.config.temporal.address}, namespace: default, taskQueue: same-storage }
stateDir: ${dir}/state
backends:
${backends}
targets:
${targets}
`;

  it('refuses to start a worker whose target shares storage with volumes, naming both', async () => {
    const dir = join(env.dir, 'rule');
    mkdirSync(join(dir, 'beta'), { recursive: true });
    symlinkSync(join(dir, 'beta'), join(dir, 'beta-alias'));
    const bad = [
      // a pool-less target on a backend whose pools hold volumes
      [`  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold, silver] }`, `  - { name: t, driver: volume, backend: alpha }`, /target 't' on backend 'alpha' .* same storage as backend 'alpha' pool 'gold'/],
      // two entries pointing at one directory are one storage
      [`  - { name: beta, driver: file, path: ${dir}/beta }\n  - { name: gamma, driver: file, path: ${dir}/beta }`, `  - { name: t, driver: volume, backend: beta }`, /target 't' on backend 'beta' .* same storage as backend 'gamma'/],
      // ... also through a symlink
      [`  - { name: beta, driver: file, path: ${dir}/beta }\n  - { name: gamma, driver: file, path: ${dir}/beta-alias }`, `  - { name: t, driver: volume, backend: beta }`, /same storage as backend 'gamma'/],
    ] as const;
    const objects = [
      // a posix object target inside a backend's directory is that backend's storage
      [`  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold] }`, `  - { name: o, driver: posix, path: ${dir}/alpha/backups }`, /target 'o' \(posix .*alpha\/backups\) is the same storage as backend 'alpha'/],
      // ... or holding one
      [`  - { name: alpha, driver: file, path: ${dir}/alpha }`, `  - { name: o, driver: posix, path: ${dir} }`, /target 'o' .* same storage as backend 'alpha'/],
    ] as const;
    for (const [backends, targets, msg] of [...bad, ...objects]) {
      const config = parseConfig(base(dir, backends, targets), 'test', dir);
      const err = await startWorkers({ config, workflowBundle: { code: 'unused' }, log: () => undefined }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SameStorageTarget);
      expect((err as Error).message).toMatch(msg);
    }
  });

  it('names the field of a malformed object target', () => {
    const dir = join(env.dir, 'rule-s3');
    const cases = [
      [`  - { name: s, driver: s3, bucket: Not_A_Bucket }`, /targets\[0\]\.bucket: bucket must be 3-63 characters/],
      [`  - { name: s, driver: s3, bucket: ok-bucket, endpoint: not-a-url }`, /targets\[0\]\.endpoint: endpoint must be a URL/],
      [`  - { name: s, driver: s3, bucket: ok-bucket, prefix: a/../b }`, /targets\[0\]\.prefix/],
      [`  - { name: p, driver: posix, path: ${dir}/o, compression: lz4 }`, /targets\[0\]\.compression/],
      [`  - { name: p, driver: posix, path: ${dir}/o, chunkSize: 3M, encryption: { keyFile: k, keyEnv: K } }`, /targets\[0\]\.chunkSize: .*multiple of 4K|targets\[0\]\.encryption: encryption needs exactly one of keyFile or keyEnv/],
      [`  - { name: p, driver: posix, path: ${dir}/o, secretAccessKey: x }`, /targets\[0\]: .*secretAccessKey/],
    ] as const;
    for (const [targets, msg] of cases) {
      expect(() => parseConfig(base(dir, `  - { name: alpha, driver: file, path: ${dir}/alpha }`, targets), 'test', dir), targets).toThrow(msg);
    }
  });

  it('allows the same storage in a different pool', async () => {
    const dir = join(env.dir, 'rule-ok');
    const config = parseConfig(base(dir, `  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold, silver] }`, `  - { name: side, driver: volume, backend: alpha, pool: silver }`), 'test', dir);
    const rt = await Runtime.open(config);
    expect(rt.volumePlace('alpha', undefined)).toBe('gold');
    expect(() => rt.volumePlace('alpha', 'silver')).toThrow(/holds backups only \(target 'side'\)/);
    await rt.close();
  });
});
