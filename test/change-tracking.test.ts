/**
 * Changed-block tracking end to end, through Temporal, on real btrfs and xfs (loop
 * mounted) and a posix object target: a backup keeps a clone of what it read; the next
 * incremental compares extent maps and reads only the changed chunks ('cbt'); when the
 * clone is gone it reads and hashes everything ('hash: <why>') and stores exactly the
 * same chunk list; every backup restores bit-exact; nothing is left behind.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import type { BackupResult, BackupView, RestoreResult } from '../src/api.js';
import { loadChain } from '../src/drivers/backup/chain.js';
import { ChunkView } from '../src/drivers/backup/format.js';
import { changeBaseName } from '../src/names.js';
import { MiB } from '../src/size.js';
import { makeEnv, volumeWithData, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { makeLoopFilesystem, type LoopFilesystem } from './helpers/loopfs.js';

let env: TestEnv;
let fsDir: string;
const filesystems: LoopFilesystem[] = [];

beforeAll(async () => {
  fsDir = mkdtempSync(join(tmpdir(), 'gbackup-cbt-'));
  filesystems.push(await makeLoopFilesystem(join(fsDir, 'b'), 256 * MiB, 'btrfs'));
  filesystems.push(await makeLoopFilesystem(join(fsDir, 'x'), 320 * MiB, 'xfs'));
  const [b, x] = filesystems;
  env = await makeEnv({
    yaml: (dir, taskQueue, address) => {
      mkdirSync(join(dir, 'objects'));
      return `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha }
  - { name: beta, driver: file, path: ${dir}/beta }
  - { name: bt, driver: btrfs, path: ${b!.mountPoint}/bt }
  - { name: xf, driver: xfs, path: ${x!.mountPoint}/xf }
targets:
  - { name: vault, driver: volume, backend: beta }
  - { name: objs, driver: posix, path: ${dir}/objects }
defaultTarget: vault
`;
    },
  });
});

afterAll(async () => {
  try {
    await env?.cleanup();
  } finally {
    for (const f of filesystems) await f.cleanup();
    rmSync(fsDir, { recursive: true, force: true });
  }
});

interface CopyStats {
  bytesRead: number;
  bytesSkipped: number;
}

/** What the node's chunked copy reported (its activity result in the history). */
async function copyStats(h: WorkflowHandle): Promise<CopyStats> {
  const events = (await h.fetchHistory()).events ?? [];
  const scheduled = new Set(events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'backupToObjects').map((e) => String(e.eventId)));
  const done = events.find((e) => e.activityTaskCompletedEventAttributes && scheduled.has(String(e.activityTaskCompletedEventAttributes.scheduledEventId)));
  const data = done?.activityTaskCompletedEventAttributes?.result?.payloads?.[0]?.data;
  if (!data) throw new Error('no completed backupToObjects activity in the history');
  const r = JSON.parse(Buffer.from(data).toString('utf8')) as { bytesRead: number; bytesSkipped?: number };
  return { bytesRead: r.bytesRead, bytesSkipped: r.bytesSkipped ?? 0 };
}

async function backup(volumeId: string, backend: string): Promise<{ backup: BackupView; stats: CopyStats }> {
  const h = await env.client.startBackup({ volumeId, backupId: `bak-${randomBytes(4).toString('hex')}`, target: 'objs', incremental: true }, { target: 'objs', backend });
  const { backup: b } = await env.client.result<BackupResult>(h);
  return { backup: b, stats: await copyStats(h) };
}

async function restoredSum(backupId: string): Promise<string> {
  const h = await env.client.startRestore({ backupId, backend: 'alpha', newVolumeId: `vol-${randomBytes(4).toString('hex')}` });
  const { volume } = await env.client.result<RestoreResult>(h);
  const sum = await env.volumes.sha256(volume.id);
  await env.volumes.delete(volume.id);
  return sum;
}

/** Overwrites a few 4 KiB blocks of the volume's image in place (what an instance's writes do). */
async function scribble(volumeId: string, offsets: number[]): Promise<void> {
  const v = await env.rt.catalog.volume(volumeId);
  const fh = await open(env.rt.driver(v.backend).initializeConnection({ pool: v.pool, name: v.id }).path, 'r+');
  try {
    for (const at of offsets) await fh.write(randomBytes(4096), 0, 4096, at);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

const baseExists = async (volumeId: string, backupId: string) => {
  const v = await env.rt.catalog.volume(volumeId);
  return existsSync(env.rt.driver(v.backend).initializeConnection({ pool: v.pool, name: changeBaseName(backupId) }).path);
};

/** The backup's content as its chain resolves it: the sha256 of every chunk (null for zeros), in order. */
const chunkList = async (backupId: string) => {
  const view = ChunkView.ofChain(await loadChain((await env.rt.objectTarget('objs')).store, backupId));
  return Array.from({ length: view.count }, (_, i) => view.hexAt(i));
};

describe.each(['bt', 'xf'])('changed-block tracking on %s', (backend) => {
  it('reads only the changed chunks, records cbt, falls back to hashing when the clone is gone, and every backup restores bit-exact', async () => {
    const vol = await volumeWithData(env, backend, undefined, 32, [0, 8, 16, 24], 8 * MiB);

    const full = await backup(vol.id, backend);
    expect(full.backup).toMatchObject({ status: 'available', method: 'chunked', changes: 'full', parentId: null });
    expect(full.stats.bytesSkipped).toBe(0);
    expect(await baseExists(vol.id, full.backup.id)).toBe(true);

    // Two 4 KiB writes, in two of the eight 4 MiB chunks.
    await scribble(vol.id, [1 * MiB + 4096, 13 * MiB]);
    const sum1 = await env.volumes.sha256(vol.id);
    const incr = await backup(vol.id, backend);
    expect(incr.backup).toMatchObject({ status: 'available', changes: 'cbt', parentId: full.backup.id });
    // Two chunks read, six taken from the parent unread.
    expect(incr.stats.bytesRead).toBe(8 * MiB);
    expect(incr.stats.bytesSkipped).toBe(24 * MiB);
    // One clone per volume and target: the parent's went when this one was kept.
    expect(await baseExists(vol.id, incr.backup.id)).toBe(true);
    expect(await baseExists(vol.id, full.backup.id)).toBe(false);
    expect(await restoredSum(incr.backup.id)).toBe(sum1);

    // Nothing changed since: nothing is read at all.
    const same = await backup(vol.id, backend);
    expect(same.backup).toMatchObject({ changes: 'cbt', parentId: incr.backup.id });
    expect(same.stats.bytesRead).toBe(0);
    expect(await chunkList(same.backup.id)).toEqual(await chunkList(incr.backup.id));

    // The clone gone: the next incremental reads and hashes everything, says why, and
    // stores exactly the chunk list tracking would have (the cross-check).
    await scribble(vol.id, [20 * MiB + 512 * 1024]);
    const sum2 = await env.volumes.sha256(vol.id);
    const v = await env.rt.catalog.volume(vol.id);
    await env.rt.driver(backend).deleteVolume({ pool: v.pool, name: changeBaseName(same.backup.id) });
    const hashed = await backup(vol.id, backend);
    expect(hashed.backup.changes).toMatch(new RegExp(`^hash: the copy of backup '${same.backup.id}' kept on backend '${backend}' for change tracking is gone`));
    expect(hashed.stats.bytesRead).toBeGreaterThanOrEqual(24 * MiB);
    // ...and the same change found by tracking, from the clone hashing left:
    await scribble(vol.id, [20 * MiB + 512 * 1024 + 4096]);
    const tracked = await backup(vol.id, backend);
    expect(tracked.backup).toMatchObject({ changes: 'cbt', parentId: hashed.backup.id });
    expect(tracked.stats.bytesRead).toBe(4 * MiB);
    const sum3 = await env.volumes.sha256(vol.id);
    const hashedAgain = await (async () => {
      const w = await env.rt.catalog.volume(vol.id);
      await env.rt.driver(backend).deleteVolume({ pool: w.pool, name: changeBaseName(tracked.backup.id) });
      return backup(vol.id, backend);
    })();
    expect(hashedAgain.backup.changes).toMatch(/^hash: /);
    expect(await chunkList(hashedAgain.backup.id)).toEqual(await chunkList(tracked.backup.id));

    expect(await restoredSum(hashed.backup.id)).toBe(sum2);
    expect(await restoredSum(tracked.backup.id)).toBe(sum3);
    expect(await restoredSum(full.backup.id)).not.toBe(sum3);

    // Deleting the volume takes its clone along; the backups stay restorable.
    await env.volumes.delete(vol.id);
    expect(await restoredSum(hashedAgain.backup.id)).toBe(sum3);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});

describe('without reflinks', () => {
  it('a file backend that snapshots by copying backs up incrementals by hashing, and says why', async () => {
    const vol = await volumeWithData(env, 'alpha', undefined, 16, [0, 8], 4 * MiB);
    const full = await backup(vol.id, 'alpha');
    expect(full.backup.changes).toBe('full');
    await scribble(vol.id, [4096]);
    const incr = await backup(vol.id, 'alpha');
    // alpha lives on the host's ext4: no clones, so no temporary snapshot and no tracking asked for.
    expect(incr.backup).toMatchObject({ changes: 'hash', parentId: full.backup.id });
    expect(incr.stats.bytesSkipped).toBe(0);
    expect(await restoredSum(incr.backup.id)).toBe(await env.volumes.sha256(vol.id));
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});
