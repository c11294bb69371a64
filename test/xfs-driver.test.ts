/**
 * The `xfs` driver, the plug-in added through the seams alone (drivers/volume/xfs/ and
 * one registry line): pools as directories on a real loop-mounted xfs made with reflink,
 * reflink snapshots, storage-assisted backup and restore between two pools of one xfs
 * (a clone, no node, no dd), and the generic dd path to and from other storage.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import type { BackupResult, RestoreResult } from '../src/api.js';
import { parseConfig } from '../src/config/load.js';
import { XfsVolumeDriver } from '../src/drivers/volume/xfs/driver.js';
import { Runtime } from '../src/services/runtime.js';
import { MiB } from '../src/size.js';
import { makeEnv, volumeWithData, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { makeLoopFilesystem, type LoopFilesystem } from './helpers/loopfs.js';

let env: TestEnv;
let fs: LoopFilesystem;
let fsDir: string;
beforeAll(async () => {
  fsDir = mkdtempSync(join(tmpdir(), 'gbackup-xfs-'));
  fs = await makeLoopFilesystem(fsDir, 512 * MiB, 'xfs');
  env = await makeEnv({
    yaml: (dir, taskQueue, address) => `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha }
  - { name: beta,  driver: file, path: ${dir}/beta }
  - { name: xa,    driver: xfs, path: ${fs.mountPoint}/xa, pools: [gold, silver] }
targets:
  - { name: vault,  driver: volume, backend: beta }
  - { name: xvault, driver: volume, backend: xa, pool: silver }
defaultTarget: vault
`,
  });
});
afterAll(async () => {
  try {
    await env?.cleanup();
  } finally {
    await fs?.cleanup();
    rmSync(fsDir, { recursive: true, force: true });
  }
});

async function backup(volumeId: string, target: string, force = false) {
  const h = await env.client.startBackup({ volumeId, backupId: `bak-${randomBytes(4).toString('hex')}`, target, ...(force ? { force } : {}) }, { target, backend: 'xa' });
  return (await env.client.result<BackupResult>(h)).backup;
}
async function restoreNew(backupId: string, backend: string, pool?: string) {
  const h = await env.client.startRestore({ backupId, backend, ...(pool ? { pool } : {}), newVolumeId: `vol-${randomBytes(4).toString('hex')}` });
  return (await env.client.result<RestoreResult>(h)).volume;
}
/** Extents of the image that xfs reports shared with another file (FIEMAP_EXTENT_SHARED): what a reflink clone has. */
async function sharedExtents(file: string): Promise<number> {
  const { stdout } = await execa('xfs_io', ['-r', '-c', 'fiemap -v', file]);
  const flags = stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((c) => /^\d+:$/.test(c[0] ?? '') && c[2] !== 'hole')
    .map((c) => Number.parseInt(c[c.length - 1]!, 16));
  return flags.filter((f) => (f & 0x2000) !== 0).length;
}

describe('xfs driver', () => {
  it('prepares pools as directories, refuses a path that is not on xfs, and reports reflink capabilities', async () => {
    const d = env.rt.driver('xa');
    expect(d.driverName).toBe('xfs');
    expect(await d.capabilities()).toEqual({ snapshotMethod: 'reflink', storageAssistedBackup: true, sparseCopy: true });
    for (const pool of ['gold', 'silver']) expect((await stat(join(fs.mountPoint, 'xa', pool))).isDirectory()).toBe(true);
    const notXfs = new XfsVolumeDriver('nx', join(env.dir, 'plain'), undefined);
    await expect(notXfs.prepare()).rejects.toThrow(/backend 'nx' \(driver xfs\): path '.*plain' is not on a xfs filesystem \('.*' is on ext2\/ext3\)/);
    // The config names the driver like any other, through the registry's schema.
    const bad = `backends:\n  - { name: x, driver: xfs, path: ${fs.mountPoint}/x, pools: [a, a] }\ntargets:\n  - { name: t, driver: volume, backend: x, pool: a }\n`;
    expect(() => parseConfig(bad, join(env.dir, 'bad.yaml'), env.dir)).toThrow(/backends\[0\]\.pools: pool names must be unique/);
  });

  it('backs up and restores within one xfs by reflink (storage-assisted), bit-exact, sharing extents', async () => {
    const v = await volumeWithData(env, 'xa', 'gold', 32, [0, 12, 28]);
    const sum = await env.volumes.sha256(v.id);
    const b = await backup(v.id, 'xvault');
    expect(b).toMatchObject({ status: 'available', method: 'storage-assisted', node: null, storedBytes: 12 * MiB });
    const copy = join(fs.mountPoint, 'xa', 'silver', `backup-${b.id}.img`);
    expect(await sharedExtents(copy)).toBeGreaterThan(0);
    const r = await restoreNew(b.id, 'xa', 'gold');
    expect(await env.volumes.sha256(r.id)).toBe(sum);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('backs up an in-use xfs volume through a reflink snapshot, and crosses to other storage with dd both ways', async () => {
    const v = await volumeWithData(env, 'xa', 'gold', 24, [0, 16]);
    const sum = await env.volumes.sha256(v.id);
    await env.client.attachVolume({ volumeId: v.id, instance: 'vm-xfs' });
    const viaSnap = await backup(v.id, 'vault', true);
    expect(viaSnap).toMatchObject({ status: 'available', method: 'generic' });
    expect(await env.rt.catalog.listSnapshots()).toEqual([]);
    await env.client.detachVolume(v.id);
    // Generic dd from other storage onto xfs, and back.
    const onXfs = await restoreNew(viaSnap.id, 'xa', 'gold');
    expect(await env.volumes.sha256(onXfs.id)).toBe(sum);
    const fromFile = await volumeWithData(env, 'alpha', undefined, 16, [4]);
    const b2 = await backup(fromFile.id, 'xvault');
    expect(b2.method).toBe('generic');
    expect(await env.volumes.sha256((await restoreNew(b2.id, 'alpha')).id)).toBe(await env.volumes.sha256(fromFile.id));
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('the same-storage rule holds for xfs: a pool-less target on a backend with pools is refused', async () => {
    const yaml = `backends:\n  - { name: x, driver: xfs, path: ${fs.mountPoint}/xb, pools: [a, b] }\ntargets:\n  - { name: t, driver: volume, backend: x }\n`;
    await expect(Runtime.open(parseConfig(yaml, join(env.dir, 'same.yaml'), env.dir))).rejects.toThrow(/target 't' on backend 'x' .* is the same storage as backend 'x' pool 'a'/);
  });
});
