/**
 * The spec, end to end through real parts: a volume on one backend, backed up to a
 * target on a second, restored onto a third and onto another pool of the first, each
 * compared by sha256. Real Temporal, real loop devices, real dd, and the catalog on SQLite
 * and on a real PostgreSQL server.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import type { BackupResult, RestoreResult } from '../src/api.js';
import { MiB } from '../src/size.js';
import { sha256File } from '../src/copy/checksum.js';
import { makeEnv, volumeWithData, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';

let env: TestEnv;

async function backup(volumeId: string, target = 'vault') {
  const backupId = `bak-${randomBytes(4).toString('hex')}`;
  const h = await env.client.startBackup({ volumeId, backupId, target }, { target, backend: 'x' });
  return (await env.client.result<BackupResult>(h)).backup;
}

async function restore(input: { backupId: string; backend?: string; pool?: string; volumeId?: string }) {
  const h = await env.client.startRestore({ ...input, ...(input.volumeId ? {} : { newVolumeId: `vol-${randomBytes(4).toString('hex')}` }) });
  return (await env.client.result<RestoreResult>(h)).volume;
}

async function sha256Prefix(path: string, bytes: number): Promise<{ prefix: string; restIsZero: boolean }> {
  const fh = await open(path, 'r');
  const h = createHash('sha256');
  const buf = Buffer.alloc(MiB);
  let pos = 0;
  let restIsZero = true;
  for (;;) {
    const { bytesRead } = await fh.read(buf, 0, MiB, pos);
    if (bytesRead === 0) break;
    const inPrefix = Math.max(0, Math.min(bytesRead, bytes - pos));
    h.update(buf.subarray(0, inPrefix));
    if (inPrefix < bytesRead && buf.subarray(inPrefix, bytesRead).some((b) => b !== 0)) restIsZero = false;
    pos += bytesRead;
  }
  await fh.close();
  return { prefix: h.digest('hex'), restIsZero };
}

// The core round trip on both catalogs: the embedded SQLite file and a real PostgreSQL.
describe.each(['sqlite', 'postgres'] as const)('generic backup and restore between backends (%s catalog)', (catalog) => {
  beforeAll(async () => {
    env = await makeEnv({ catalog });
    expect(env.rt.catalog.describe).toMatch(new RegExp(`^${catalog} `));
  });
  afterAll(async () => {
    await env?.cleanup();
  });

  it('backs up alpha/gold to beta and restores bit-exact onto gamma and onto alpha/silver', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 32);
    const srcSum = await env.volumes.sha256(src.id);

    const b = await backup(src.id);
    expect(b).toMatchObject({ volumeId: src.id, target: 'vault', status: 'available', size: 32 * MiB, method: 'generic' });
    // Three 4 MiB data extents; the holes were not copied.
    expect(b.storedBytes).toBe(12 * MiB);
    expect((await env.rt.catalog.volume(src.id)).status).toBe('available');
    const backupFile = env.rt.driver('beta').initializeConnection({ pool: null, name: `backup-${b.id}` }).path;
    expect(await sha256File(backupFile)).toBe(srcSum);
    // The self-describing record beside the backup names the source.
    const rec = (await env.rt.driver('beta').readRecord({ pool: null, name: `backup-${b.id}` })) as { format: string; volume: { id: string } };
    expect(rec.format).toBe('gbackup-volume-backup');
    expect(rec.volume.id).toBe(src.id);

    const onGamma = await restore({ backupId: b.id, backend: 'gamma' });
    expect(onGamma).toMatchObject({ backend: 'gamma', pool: null, status: 'available', size: 32 * MiB });
    expect(await env.volumes.sha256(onGamma.id)).toBe(srcSum);

    const onSilver = await restore({ backupId: b.id, backend: 'alpha', pool: 'silver' });
    expect(onSilver).toMatchObject({ backend: 'alpha', pool: 'silver', status: 'available' });
    expect(await env.volumes.sha256(onSilver.id)).toBe(srcSum);

    expect((await env.rt.catalog.backup(b.id)).status).toBe('available');
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('restores onto an existing larger volume: its old data is replaced, the tail reads zeros', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const b = await backup(src.id);
    // The destination is full of old random data everywhere, including where the backup has holes.
    const old = await volumeWithData(env, 'gamma', undefined, 24, [0, 4, 8, 12, 16, 20]);
    const restored = await restore({ backupId: b.id, volumeId: old.id });
    expect(restored).toMatchObject({ id: old.id, status: 'available', size: 24 * MiB });
    const path = env.rt.driver('gamma').initializeConnection({ pool: null, name: old.id }).path;
    const { prefix, restIsZero } = await sha256Prefix(path, 16 * MiB);
    expect(prefix).toBe(await env.volumes.sha256(src.id));
    expect(restIsZero).toBe(true);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('deletes a backup: data, record and catalog entry are gone', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const b = await backup(src.id);
    const h = await env.client.startDelete({ backupId: b.id });
    await env.client.result(h);
    expect(await env.rt.catalog.findBackup(b.id)).toBeNull();
    expect((await env.rt.driver('beta').listVolumes()).map((l) => l.name)).not.toContain(`backup-${b.id}`);
    expect((await env.rt.driver('beta').listRecords(null)).map((l) => l.name)).not.toContain(`backup-${b.id}`);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('answers the progress query with the bytes of the copy', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 16, [0, 4, 8, 12]);
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    const h = await env.client.startBackup({ volumeId: src.id, backupId }, { target: 'vault', backend: 'alpha' });
    await env.client.result(h);
    const p = await h.query<{ phase: string; bytesDone: number; bytesTotal: number; backupId: string }>('progress');
    expect(p).toMatchObject({ phase: 'done', backupId, bytesDone: 16 * MiB, bytesTotal: 16 * MiB });
  });

  it('rebuilds a lost catalog from the records in the target, and the backups restore again', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const sum = await env.volumes.sha256(src.id);
    const b = await backup(src.id);
    const known = (await env.rt.catalog.listBackups()).length;
    // Lose the backup's catalog entry, as with a lost catalog.
    await env.rt.catalog.deleteBackupRecord(b.id);
    // Through Temporal, as `gbackup catalog rebuild` does it: the control worker reads the targets.
    const report = await env.client.rebuildCatalog();
    expect(report.imported).toEqual([b.id]);
    expect(report.alreadyKnown.length).toBe(known - 1);
    expect(await env.rt.catalog.backup(b.id)).toMatchObject({ status: 'available', volumeId: src.id, size: 8 * MiB, target: 'vault', storedBytes: 4 * MiB });
    const back = await restore({ backupId: b.id, backend: 'gamma' });
    expect(await env.volumes.sha256(back.id)).toBe(sum);
  });
});
