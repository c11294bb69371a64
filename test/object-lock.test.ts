/**
 * S3 Object Lock through real parts: a real MinIO with a lock-enabled bucket, the
 * Temporal dev server and a worker. Locked full + incremental backups, the retention on
 * every object, a re-used chunk's lock extended to the newer backup, a delete refused
 * up-front (catalog row and objects untouched), MinIO itself refusing a versioned delete
 * of a locked chunk, bit-exact restores, `target check` on buckets with and without lock.
 *
 * MinIO's shortest retention is one day, so the "after expiry" path is tested on the
 * pre-check itself with a clock past the retain-until date (refuseWhileRetained's `now`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { DeleteObjectCommand, GetObjectLockConfigurationCommand, GetObjectRetentionCommand, HeadObjectCommand, ListObjectVersionsCommand } from '@aws-sdk/client-s3';
import type { BackupResult, BackupView, RestoreResult } from '../src/api.js';
import { WorkflowError } from '../src/client/client.js';
import { BackupRetained, ObjectRetained } from '../src/drivers/backup/errors.js';
import { FORMAT, FORMAT_VERSION, keys } from '../src/drivers/backup/format.js';
import { deleteBackup } from '../src/drivers/backup/prune.js';
import { retainUntilFor } from '../src/drivers/backup/stores/store.js';
import { refuseWhileRetained } from '../src/drivers/backup/lock.js';
import { S3Target } from '../src/drivers/backup/stores/s3/config.js';
import { MiB } from '../src/size.js';
import { makeEnv, volumeWithData, type TestEnv, scribble } from './helpers/env.js';
import { startMinio, type Minio } from './helpers/minio.js';

let minio: Minio;
let env: TestEnv;
const PREFIX = 'lock/c';
const DAY = 86_400_000;

beforeAll(async () => {
  minio = await startMinio({ bucket: 'locked', objectLock: true });
  await minio.createBucket('plain');
  env = await makeEnv({
    yaml: (dir, taskQueue, address) => {
      writeFileSync(join(dir, 's3.json'), JSON.stringify({ accessKeyId: minio.accessKeyId, secretAccessKey: minio.secretAccessKey }), { mode: 0o600 });
      const s3 = (name: string, bucket: string, extra: string) => `
  - name: ${name}
    driver: s3
    endpoint: ${minio.endpoint}
    bucket: ${bucket}
    prefix: ${PREFIX}
    forcePathStyle: true
    credentialsFile: ${dir}/s3.json
    ${extra}`;
      return `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha, pools: [gold, silver] }
  - { name: beta,  driver: file, path: ${dir}/beta }
  - { name: gamma, driver: file, path: ${dir}/gamma }
targets:
  - { name: vault, driver: volume, backend: beta }
${s3('locked', 'locked', 'objectLock: { retainDays: 2 }')}
${s3('unlockable', 'plain', 'objectLock: { retainDays: 1, mode: GOVERNANCE }')}
${s3('fresh', 'fresh-locked', 'objectLock: { retainDays: 1 }')}
defaultTarget: locked
`;
    },
  });
}, 120_000);

afterAll(async () => {
  await env?.cleanup();
  await minio?.stop();
});

const newId = (p: string) => `${p}-${randomBytes(4).toString('hex')}`;

async function backup(volumeId: string, incremental = false): Promise<BackupView> {
  const h = await env.client.startBackup({ volumeId, backupId: newId('bak'), target: 'locked', ...(incremental ? { incremental } : {}) }, { target: 'locked', backend: 'x' });
  return (await env.client.result<BackupResult>(h)).backup;
}

async function retention(key: string): Promise<{ mode: string | undefined; until: number }> {
  const r = await minio.client.send(new GetObjectRetentionCommand({ Bucket: 'locked', Key: `${PREFIX}/${key}` }));
  return { mode: r.Retention?.Mode, until: new Date(r.Retention!.RetainUntilDate!).getTime() };
}

/** The CLI run from the TypeScript sources (bin/gbackup.js runs dist/, which may be stale). */
function gbackupFromSources(...args: string[]) {
  const main = pathToFileURL(join(import.meta.dirname, '..', 'src', 'cli', 'main.ts')).href;
  const script = `const { main } = await import(${JSON.stringify(main)}); process.exitCode = await main(process.argv.slice(1));`;
  return execa(process.execPath, ['--import', join(import.meta.dirname, 'helpers', 'ts-loader.mjs'), '--input-type=module', '-e', script, '--', ...args], { reject: false });
}

interface Meta {
  chunkSpace: string;
  createdAt: string;
  chunks: { offset: number; sha256: string }[];
}
const chunkKey = (m: Meta, sha: string) => `chunks/${m.chunkSpace}/${sha.slice(0, 2)}/${sha}`;

/** Every version and delete marker under the target's prefix. */
async function versions(): Promise<{ versions: string[]; markers: number }> {
  const r = await minio.client.send(new ListObjectVersionsCommand({ Bucket: 'locked', Prefix: `${PREFIX}/` }));
  return { versions: (r.Versions ?? []).map((v) => `${v.Key}@${v.VersionId}`).sort(), markers: (r.DeleteMarkers ?? []).length };
}

describe('S3 Object Lock', () => {
  it('locks full + incremental, extends re-used chunks, refuses deletes up-front, restores bit-exact', async () => {
    const src = await volumeWithData(env, 'alpha', 'gold', 24, [0, 8, 20]);
    const sumFull = await env.volumes.sha256(src.id);
    const full = await backup(src.id);
    const t = await env.rt.objectTarget('locked');
    const fullMeta = JSON.parse((await t.store.get(`backups/${full.id}/metadata.json`)).toString('utf8')) as Meta;
    const fullUntil = new Date(fullMeta.createdAt).getTime() + 2 * DAY;

    // Every object of the full backup is locked, COMPLIANCE (the default), until createdAt + 2 days.
    expect(await retention(`backups/${full.id}/metadata.json`)).toEqual({ mode: 'COMPLIANCE', until: fullUntil });
    for (const c of fullMeta.chunks) expect(await retention(chunkKey(fullMeta, c.sha256)), `chunk at ${c.offset}`).toEqual({ mode: 'COMPLIANCE', until: fullUntil });
    const head = await minio.client.send(new HeadObjectCommand({ Bucket: 'locked', Key: `${PREFIX}/${chunkKey(fullMeta, fullMeta.chunks[0]!.sha256)}` }));
    expect(head.ObjectLockMode).toBe('COMPLIANCE');
    expect(head.ObjectLockRetainUntilDate?.getTime()).toBe(fullUntil);

    // A later incremental: only the chunk at 8 MiB changes.
    await new Promise((r) => setTimeout(r, 1100));
    await scribble(env, src.id, 9, 8192);
    const sumInc = await env.volumes.sha256(src.id);
    const inc = await backup(src.id, true);
    expect(inc.parentId).toBe(full.id);
    const incMeta = JSON.parse((await t.store.get(`backups/${inc.id}/metadata.json`)).toString('utf8')) as Meta;
    const incUntil = new Date(incMeta.createdAt).getTime() + 2 * DAY;
    expect(incUntil).toBeGreaterThan(fullUntil);
    expect(incMeta.chunks.map((c) => c.offset)).toEqual([8 * MiB]);
    expect(await retention(`backups/${inc.id}/metadata.json`)).toEqual({ mode: 'COMPLIANCE', until: incUntil });
    expect(await retention(chunkKey(incMeta, incMeta.chunks[0]!.sha256))).toEqual({ mode: 'COMPLIANCE', until: incUntil });
    // The chunks the incremental re-uses from its parent (0 and 20 MiB), and the parent's
    // metadata, are now locked as long as the incremental; the replaced chunk (8 MiB) is not.
    for (const c of fullMeta.chunks) {
      const want = c.offset === 8 * MiB ? fullUntil : incUntil;
      expect(await retention(chunkKey(fullMeta, c.sha256)), `chunk at ${c.offset}`).toEqual({ mode: 'COMPLIANCE', until: want });
    }
    expect((await retention(`backups/${full.id}/metadata.json`)).until).toBe(incUntil);

    // Deleting the locked incremental is refused before anything is touched.
    const before = await versions();
    const err = await env.client.result(await env.client.startDelete({ backupId: inc.id })).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err).toBeInstanceOf(WorkflowError);
    expect((err as WorkflowError).type).toBe('BackupRetained');
    expect(err!.message).toContain(
      `backup '${inc.id}' is retained by S3 Object Lock until ${new Date(incUntil).toISOString()} (target locked, mode COMPLIANCE); it can be deleted after that`,
    );
    expect((await env.rt.catalog.backup(inc.id)).status).toBe('available');
    expect(await versions()).toEqual(before);
    expect(before.markers).toBe(0);
    // The same through the CLI: exit 1, the message on stderr; still nothing touched.
    const cli = await gbackupFromSources('--config', env.configFile, 'backup', 'delete', inc.id, '--wait');
    expect(cli.exitCode, cli.stderr).toBe(1);
    expect(cli.stderr).toContain(`backup '${inc.id}' is retained by S3 Object Lock until ${new Date(incUntil).toISOString()} (target locked, mode COMPLIANCE)`);
    expect((await env.rt.catalog.backup(inc.id)).status).toBe('available');
    expect(await versions()).toEqual(before);

    // The lock is MinIO's, not ours: a versioned delete of a locked chunk is refused by the
    // store, and through our store it is ObjectRetained, naming the date.
    const locked = `${PREFIX}/${chunkKey(fullMeta, fullMeta.chunks[0]!.sha256)}`;
    const v = (await minio.client.send(new ListObjectVersionsCommand({ Bucket: 'locked', Prefix: locked }))).Versions![0]!;
    const refused = await minio.client.send(new DeleteObjectCommand({ Bucket: 'locked', Key: locked, VersionId: v.VersionId! })).then(
      () => null,
      (e: unknown) => e as Error,
    );
    // (AWS answers AccessDenied; MinIO this.)
    expect(`${refused?.name}: ${refused?.message}`).toBe('InvalidRequest: Object is WORM protected and cannot be overwritten');
    const ours = await t.store.delete(chunkKey(fullMeta, fullMeta.chunks[0]!.sha256)).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(ours).toBeInstanceOf(ObjectRetained);
    expect((ours as ObjectRetained).retainUntil).toBe(new Date(incUntil).toISOString());
    expect(await versions()).toEqual(before);

    // Both points of the chain restore to exactly what the volume held.
    for (const [b, sum] of [
      [full, sumFull],
      [inc, sumInc],
    ] as const) {
      const h = await env.client.startRestore({ backupId: b.id, backend: 'gamma', newVolumeId: newId('vol') });
      const vol = (await env.client.result<RestoreResult>(h)).volume;
      expect(await env.volumes.sha256(vol.id), `restore of ${b.id}`).toBe(sum);
    }

    // After the lock ends the pre-check lets the delete through (MinIO's minimum retention
    // is a day, so the clock is moved rather than waited for).
    await expect(refuseWhileRetained(t.store, 'locked', inc.id, new Date(incUntil - 1))).rejects.toBeInstanceOf(BackupRetained);
    await expect(refuseWhileRetained(t.store, 'locked', inc.id, new Date(incUntil))).resolves.toBeUndefined();
    const e2 = await refuseWhileRetained(t.store, 'locked', inc.id).catch((e: unknown) => e as BackupRetained);
    expect(e2).toBeInstanceOf(BackupRetained);
    expect(e2!.retainUntil).toBe(new Date(incUntil).toISOString());
  });

  it("a failed backup's locked chunks do not block its cleanup: they are left, counted, and everything else goes", async () => {
    const t = await env.rt.objectTarget('locked');
    const id = newId('bak');
    const space = 'plain';
    const body = randomBytes(4096);
    const sha = createHash('sha256').update(body).digest('hex');
    // What a backup that failed mid-way leaves: its pending record and a chunk it locked.
    const pending = { format: FORMAT, formatVersion: FORMAT_VERSION, backupId: id, volumeId: 'vol-gone', parent: null, size: 4096, chunkSize: 4 * MiB, chunkSpace: space, createdAt: new Date().toISOString() };
    await t.store.put(keys.pending(id), Buffer.from(JSON.stringify(pending)));
    await t.store.put(keys.chunk(space, sha), body, { retainUntil: retainUntilFor(t.store.objectLock!, new Date()) });
    const r = await deleteBackup({ target: t, backupId: id, also: [sha] });
    expect(r).toMatchObject({ deleted: true, chunksDeleted: 0, chunksRetained: 1 });
    expect(await t.store.exists(keys.pending(id))).toBe(false);
    expect(await t.store.exists(keys.chunk(space, sha))).toBe(true);
    // Unlocked bookkeeping went with all its versions, no delete marker left behind.
    const left = await minio.client.send(new ListObjectVersionsCommand({ Bucket: 'locked', Prefix: `${PREFIX}/backups/${id}/` }));
    expect([...(left.Versions ?? []), ...(left.DeleteMarkers ?? [])]).toEqual([]);
  });

  it('target check: lock verified; a bucket without it is named; --create-bucket makes one with it', async () => {
    const [ok] = await env.client.checkTargets({ target: 'locked' });
    expect(ok).toMatchObject({ target: 'locked', ok: true });
    expect(ok!.steps.map((s) => s.step)).toEqual(['reach', 'lock', 'list', 'write', 'read', 'delete']);
    // The probe went with all its versions: nothing of it stays in the versioned bucket.
    const probes = await minio.client.send(new ListObjectVersionsCommand({ Bucket: 'locked', Prefix: `${PREFIX}/probe/` }));
    expect([...(probes.Versions ?? []), ...(probes.DeleteMarkers ?? [])]).toEqual([]);

    const [bad] = await env.client.checkTargets({ target: 'unlockable' });
    expect(bad).toMatchObject({ target: 'unlockable', ok: false });
    const failed = bad!.steps.find((s) => !s.ok)!;
    expect(failed.step).toBe('lock');
    expect(failed.error!.message).toMatch(/^target 'unlockable': bucket 'plain' at http:\/\/127\.0\.0\.1:\d+ does not have S3 Object Lock enabled/);

    const [made] = await env.client.checkTargets({ target: 'fresh', createBucket: true });
    expect(made).toMatchObject({ target: 'fresh', ok: true, createdBucket: true });
    const conf = await minio.client.send(new GetObjectLockConfigurationCommand({ Bucket: 'fresh-locked' }));
    expect(conf.ObjectLockConfiguration?.ObjectLockEnabled).toBe('Enabled');
  });

  it('config: objectLock is validated with clear messages', () => {
    const base = { name: 's3', driver: 's3', bucket: 'gbackup' };
    expect(S3Target.parse({ ...base, objectLock: { retainDays: 7 } }).objectLock).toEqual({ retainDays: 7, mode: 'COMPLIANCE' });
    const msg = (objectLock: unknown) => S3Target.safeParse({ ...base, objectLock }).error?.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    expect(msg({ retainDays: 0 })).toEqual(['objectLock.retainDays: objectLock.retainDays must be at least 1 (S3 retention is counted in days)']);
    expect(msg({ retainDays: 1.5 })).toEqual(['objectLock.retainDays: objectLock.retainDays must be a whole number of days']);
    expect(msg({ retainDays: 3, mode: 'LEGAL' })).toEqual(["objectLock.mode: objectLock.mode must be 'GOVERNANCE' or 'COMPLIANCE'"]);
    expect(msg({ retainDays: 3, days: 3 })).toEqual(["objectLock: objectLock has unknown field 'days' (known: retainDays, mode)"]);
  });
});
