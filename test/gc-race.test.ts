/**
 * A delete that runs while a backup does (src/drivers/backup/gc.ts), on a real posix
 * directory and a real MinIO bucket. The interleavings that used to lose data are forced
 * by a store that runs the delete at the worst moment: after the backup stored its chunks
 * but before its metadata existed, and before an incremental announced its parent.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupToStore } from '../src/drivers/backup/backup.js';
import { listBackupRecords } from '../src/drivers/backup/chain.js';
import { CodecPool } from '../src/drivers/backup/codec.js';
import { BackupChainBroken } from '../src/drivers/backup/errors.js';
import { keys } from '../src/drivers/backup/format.js';
import { deleteBackup, type DeleteBackupResult } from '../src/drivers/backup/prune.js';
import { settleDeletes } from '../src/drivers/backup/gc.js';
import { restoreFromStore } from '../src/drivers/backup/restore.js';
import { ObjectTarget } from '../src/drivers/backup/stores/registry.js';
import { listAll, type PutOptions } from '../src/drivers/backup/stores/store.js';
import { ChunkedTarget } from '../src/drivers/backup/target.js';
import { verifyBackup } from '../src/drivers/backup/verify.js';
import { cleanupOnExit, startMinio, type Minio } from './helpers/minio.js';
import { findStoreLeaks, NO_STORE_LEAKS } from './helpers/objects.js';
import { DelegatingStore } from './helpers/delegating-store.js';

const CS = 1024 * 1024;
const CHUNKS = 6;
let dir: string;
let codec: CodecPool;
let minio: Minio | undefined;
let forgetDir: (() => void) | null = null;
let seq = 0;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gbackup-gc-race-'));
  const made = dir;
  forgetDir = cleanupOnExit(() => rmSync(made, { recursive: true, force: true }));
  codec = new CodecPool(2);
  minio = await startMinio();
}, 60_000);
afterAll(async () => {
  try {
    await minio?.stop();
  } finally {
    forgetDir?.();
    rmSync(dir, { recursive: true, force: true });
    await codec?.close();
  }
});

/** Runs `before` (once) ahead of the first put of a key it matches. */
class InterposingStore extends DelegatingStore {
  private hook: { match: (key: string) => boolean; before: () => Promise<void> } | null = null;
  once(match: (key: string) => boolean, before: () => Promise<void>): void {
    this.hook = { match, before };
  }
  override async put(key: string, body: Buffer, opts?: PutOptions) {
    const h = this.hook;
    if (h && h.match(key)) {
      this.hook = null;
      await h.before();
    }
    return this.inner.put(key, body, opts);
  }
}

async function targets(kind: 'posix' | 's3') {
  const place = `t${++seq}`;
  const common = { name: 'vault', chunkSize: CS, compression: 'zstd' as const };
  if (kind === 'posix') mkdirSync(join(dir, place), { recursive: true });
  const config =
    kind === 'posix'
      ? ObjectTarget.parse({ ...common, driver: 'posix', path: join(dir, place) })
      : ObjectTarget.parse({ ...common, driver: 's3', endpoint: minio!.endpoint, bucket: minio!.bucket, prefix: place, forcePathStyle: true });
  const plain = await ChunkedTarget.open(config, minio!.env);
  const interposing = new InterposingStore(plain.store);
  return { plain, interposing, backingUp: new ChunkedTarget(config, interposing, minio!.env) };
}

function volumeFile(name: string, data: Buffer): string {
  const f = join(dir, `${name}-${++seq}.img`);
  writeFileSync(f, data);
  return f;
}

async function restored(target: ChunkedTarget, backupId: string): Promise<Buffer> {
  const f = join(dir, `restore-${++seq}.img`);
  writeFileSync(f, Buffer.alloc(CHUNKS * CS));
  await restoreFromStore({ target, backupId, dest: f, destIsZero: true, codec });
  return readFileSync(f);
}

describe.each(['posix', 's3'] as const)('a delete while a backup runs (%s)', (kind) => {
  it('chunks the backup stored again, then a delete removed (scanned before the metadata), are read from the source and stored again', async () => {
    const { plain, interposing, backingUp } = await targets(kind);
    const data = randomBytes(CHUNKS * CS);
    // Two volumes with the same content: the chunks of one are the chunks of the other.
    await backupToStore({ target: plain, backupId: 'bak-x', volumeId: 'vol-a', source: volumeFile('a', data), size: data.length, codec });
    let deleted: DeleteBackupResult | null = null;
    let goneMeanwhile: number | null = null;
    interposing.once(
      (k) => k === keys.metadata('bak-y'),
      async () => {
        // bak-y's chunks are stored but nothing names them yet: the delete of bak-x sees
        // them as bak-x's alone and removes them.
        deleted = await deleteBackup({ target: plain, backupId: 'bak-x' });
        goneMeanwhile = 0;
        for (const k of await listAll(plain.store, 'chunks/')) if (k) goneMeanwhile++;
      },
    );
    const y = await backupToStore({ target: backingUp, backupId: 'bak-y', volumeId: 'vol-b', source: volumeFile('b', data), size: data.length, codec });
    expect(deleted).toMatchObject({ deleted: true, chunksDeleted: CHUNKS });
    expect(goneMeanwhile).toBe(0);
    expect(y.chunksRepaired).toBe(CHUNKS);
    expect((await verifyBackup({ target: plain, backupId: 'bak-y' })).chunks).toBe(CHUNKS);
    expect((await restored(plain, 'bak-y')).equals(data)).toBe(true);
    expect(await findStoreLeaks(plain.store)).toEqual(NO_STORE_LEAKS);
  }, 60_000);

  it('an incremental whose parent a delete removed before the incremental announced it fails, clearly, marked unusable; its compensation leaves nothing', async () => {
    const { plain, interposing, backingUp } = await targets(kind);
    const data = randomBytes(CHUNKS * CS);
    await backupToStore({ target: plain, backupId: 'bak-p', volumeId: 'vol-a', source: volumeFile('a', data), size: data.length, codec });
    randomBytes(CS).copy(data, 2 * CS);
    const source = volumeFile('a2', data);
    let deleted: DeleteBackupResult | null = null;
    interposing.once(
      (k) => k === keys.pending('bak-i'),
      async () => {
        // The incremental chose bak-p; the delete scans before bak-i names it anywhere.
        deleted = await deleteBackup({ target: plain, backupId: 'bak-p' });
      },
    );
    const run = backupToStore({ target: backingUp, backupId: 'bak-i', volumeId: 'vol-a', source, size: data.length, incremental: true, codec });
    await expect(run).rejects.toThrow(BackupChainBroken);
    await expect(run).rejects.toThrow(/backup 'bak-i' builds on backup 'bak-p', which a delete running at the same time \(of 'bak-p'\) removed; back the volume up again/);
    expect(deleted).toMatchObject({ deleted: true, chunksDeleted: CHUNKS });
    // Never offered as complete: it is marked as being deleted.
    expect((await listBackupRecords(plain.store)).map((b) => [b.backupId, b.status])).toEqual([['bak-i', 'deleting']]);
    // What its workflow's compensation does.
    expect(await deleteBackup({ target: plain, backupId: 'bak-i' })).toMatchObject({ deleted: true });
    expect(await findStoreLeaks(plain.store)).toEqual(NO_STORE_LEAKS);
    expect(await listAll(plain.store, 'backups/')).toEqual([]);
  }, 60_000);

  it('without a delete in between, a backup repairs nothing; a delete leaves its announcement marked finished, a repeated one none', async () => {
    const { plain } = await targets(kind);
    const data = randomBytes(CHUNKS * CS);
    const r = await backupToStore({ target: plain, backupId: 'bak-q', volumeId: 'vol-q', source: volumeFile('q', data), size: data.length, codec });
    expect(r.chunksRepaired).toBeUndefined();
    expect(await deleteBackup({ target: plain, backupId: 'bak-q' })).toMatchObject({ deleted: true, chunksDeleted: CHUNKS });
    expect(await deleteBackup({ target: plain, backupId: 'bak-q' })).toMatchObject({ deleted: false, chunksDeleted: 0 });
    // The announcement and the record that it ended (a listing alone tells the state).
    const gc = (await listAll(plain.store, 'gc/')).sort();
    expect(gc).toEqual([expect.stringMatching(/^gc\/\d{15}-bak-q\.\d{15}\.done$/), expect.stringMatching(/^gc\/\d{15}-bak-q\.json$/)]);
    expect(JSON.parse((await plain.store.get(gc[1]!)).toString('utf8'))).toMatchObject({ backupId: 'bak-q', aliveAt: expect.any(String) as string });
    expect(await listAll(plain.store, 'backups/')).toEqual([]);
    expect(await listAll(plain.store, 'chunks/')).toEqual([]);
  }, 60_000);

  it('a backup waits for a delete that is still announced as running, and takes one that stopped refreshing its announcement for dead, marking it', async () => {
    const { plain } = await targets(kind);
    const key = keys.gc(Date.now(), 'bak-dead');
    await plain.store.put(key, Buffer.from(JSON.stringify({ backupId: 'bak-dead', startedAt: new Date().toISOString(), aliveAt: new Date().toISOString() })));
    const t0 = Date.now();
    const r = await settleDeletes(plain.store, { backupId: 'bak-new', sinceMs: Date.now(), pollMs: 100, deadAfterMs: 1000 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(r.deletes).toEqual(['bak-dead']);
    const done = (await listAll(plain.store, 'gc/')).filter((k) => k.endsWith('.done'));
    expect(done).toHaveLength(1);
    expect(done[0]!.startsWith(key.replace(/\.json$/, '.'))).toBe(true);
    expect(JSON.parse((await plain.store.get(done[0]!)).toString('utf8'))).toEqual({ presumedDead: true });
    // Marked: the next backup does not wait, but still checks what it depends on.
    const t1 = Date.now();
    expect((await settleDeletes(plain.store, { backupId: 'bak-next', sinceMs: Date.now(), pollMs: 100, deadAfterMs: 1000 })).deletes).toEqual(['bak-dead']);
    expect(Date.now() - t1).toBeLessThan(1000);
  }, 60_000);
});
