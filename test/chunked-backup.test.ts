/**
 * Chunked backups end to end on real stores: a posix directory and a real MinIO (started
 * here on loopback, stopped in afterAll). Each scenario runs against both. Volumes are
 * sparse files with 1 MiB chunks; every restore is compared by sha256.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupToStore, type BackupProgress, type BackupToStoreOptions } from '../src/drivers/backup/backup.js';
import { ChunkedTarget } from '../src/drivers/backup/target.js';
import { deleteBackup } from '../src/drivers/backup/prune.js';
import { exportRecord, importRecord } from '../src/drivers/backup/records.js';
import { listBackupRecords, listIncompleteBackups } from '../src/drivers/backup/chain.js';
import { restoreFromStore } from '../src/drivers/backup/restore.js';
import { verifyBackup } from '../src/drivers/backup/verify.js';
import { CodecPool } from '../src/drivers/backup/codec.js';
import { ObjectTarget } from '../src/drivers/backup/stores/registry.js';
import { keys } from '../src/drivers/backup/format.js';
import { listAll, type ObjectStore, type PutOptions } from '../src/drivers/backup/stores/store.js';
import { cleanupOnExit, startMinio, type Minio } from './helpers/minio.js';
import { DelegatingStore } from './helpers/delegating-store.js';

const MiB = 1024 * 1024;
const CS = MiB;
const SIZE = 24 * MiB;

/** Asymmetric matchers typed as the strings they stand for, for toMatchObject. */
const containing = (text: string) => expect.stringContaining(text) as string;
const matching = (re: RegExp) => expect.stringMatching(re) as string;

let dir: string;
let minio: Minio | null = null;
let codec: CodecPool;
let seq = 0;

let forgetDir: (() => void) | null = null;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gbackup-chunked-'));
  const made = dir;
  forgetDir = cleanupOnExit(() => rmSync(made, { recursive: true, force: true }));
  codec = new CodecPool(2);
  minio = await startMinio();
  writeFileSync(join(dir, 'key'), randomBytes(32));
  writeFileSync(join(dir, 'key2'), randomBytes(32).toString('hex'));
});
afterAll(async () => {
  try {
    await minio?.stop();
  } finally {
    forgetDir?.();
    if (dir) rmSync(dir, { recursive: true, force: true });
    await codec?.close();
  }
});

/** Counts what reaches the store, and lets a test act on the n-th get. */
class SpyStore extends DelegatingStore {
  puts = 0;
  putBytes = 0;
  gets = 0;
  onGet: ((n: number) => void) | null = null;
  override async put(key: string, body: Buffer, opts?: PutOptions) {
    if (key.startsWith('chunks/')) {
      this.puts++;
      this.putBytes += body.length;
    }
    return this.inner.put(key, body, opts);
  }
  private counted(key: string) {
    if (key.startsWith('chunks/')) {
      this.gets++;
      this.onGet?.(this.gets);
    }
  }
  override async get(key: string) {
    this.counted(key);
    return this.inner.get(key);
  }
  override async getInto<B extends ArrayBufferLike>(key: string, alloc: (n: number) => B) {
    this.counted(key);
    return this.inner.getInto(key, alloc);
  }
}

type Kind = 'posix' | 's3';
interface TargetOpts {
  compression?: 'zstd' | 'none';
  key?: 'key' | 'key2' | 'env';
  /** Reuse the place of an earlier target (same directory or prefix). */
  place?: string;
}

function targetConfig(kind: Kind, o: TargetOpts = {}): { config: ObjectTarget; place: string } {
  const place = o.place ?? `t${++seq}`;
  // A posix target's directory must exist: the store never makes it (an unmounted share would be filled).
  if (kind === 'posix') mkdirSync(join(dir, place), { recursive: true });
  const encryption = o.key === undefined ? undefined : o.key === 'env' ? { keyEnv: 'GBACKUP_TEST_KEY' } : { keyFile: join(dir, o.key) };
  const common = { name: 'vault', chunkSize: CS, compression: o.compression ?? 'zstd', ...(encryption ? { encryption } : {}) };
  const config =
    kind === 'posix'
      ? ObjectTarget.parse({ ...common, driver: 'posix', path: join(dir, place) })
      : ObjectTarget.parse({ ...common, driver: 's3', endpoint: minio!.endpoint, bucket: minio!.bucket, prefix: place, forcePathStyle: true });
  return { config, place };
}

async function openTarget(kind: Kind, o: TargetOpts = {}, env: NodeJS.ProcessEnv = {}) {
  const { config, place } = targetConfig(kind, o);
  const inner = (await ChunkedTarget.open(config, { ...minio!.env, ...env })).store;
  const spy = new SpyStore(inner);
  return { target: new ChunkedTarget(config, spy, { ...minio!.env, ...env }), spy, place };
}

/** A sparse volume: data in some chunks, holes elsewhere, and one chunk of written zeros. */
async function makeVolume(name: string, size = SIZE, fill: (i: number) => Buffer | null = defaultFill): Promise<string> {
  const f = join(dir, name);
  writeFileSync(f, '');
  await truncate(f, size);
  const fh = await open(f, 'r+');
  try {
    for (let i = 0; i < Math.ceil(size / CS); i++) {
      const b = fill(i);
      if (b) await fh.write(b, 0, Math.min(b.length, size - i * CS), i * CS);
    }
  } finally {
    await fh.close();
  }
  return f;
}
const text = (i: number) => Buffer.from(`chunk ${i} of a volume with compressible text; `.repeat(CS / 40).slice(0, CS));
function defaultFill(i: number): Buffer | null {
  if (i % 5 === 4) return null; // hole
  if (i === 7) return Buffer.alloc(CS); // allocated, but zeros
  return i % 2 ? randomBytes(CS) : text(i);
}

async function writeChunk(file: string, i: number, data: Buffer): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    await fh.write(data, 0, data.length, i * CS);
  } finally {
    await fh.close();
  }
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  return h.digest('hex');
}

async function emptyFile(name: string, size = SIZE, fill?: Buffer): Promise<string> {
  const f = join(dir, name);
  writeFileSync(f, '');
  await truncate(f, size);
  if (fill) for (let i = 0; i < size / CS; i++) await writeChunk(f, i, fill);
  return f;
}

async function restoreSha(target: ChunkedTarget, backupId: string, name: string, destIsZero = true): Promise<string> {
  const dest = await emptyFile(name, SIZE, destIsZero ? undefined : randomBytes(CS));
  await restoreFromStore({ target, backupId, dest, destIsZero, codec });
  return sha256File(dest);
}

async function flipByte(store: ObjectStore, key: string): Promise<void> {
  const b = Buffer.from(await store.get(key));
  b[b.length >> 1]! ^= 0x01;
  await store.put(key, b);
}

const chunkObjects = async (store: ObjectStore) => (await listAll(store, 'chunks/')).length;

/**
 * A backup stopped (aborted, as a dying worker stops) once it has stored `stopAt` bytes;
 * returns its error and its last progress report, as a heartbeat would have carried it.
 */
async function interruptedBackup(opts: Omit<BackupToStoreOptions, 'signal' | 'onProgress'>, stopAt: number): Promise<{ error: unknown; last: BackupProgress }> {
  const ac = new AbortController();
  let last: BackupProgress = { doneOffset: 0, bytesRead: 0, bytesStored: 0 };
  const error = await backupToStore({
    ...opts,
    signal: ac.signal,
    onProgress: (p) => {
      last = p;
      if (p.bytesStored >= stopAt) ac.abort();
    },
  }).then(
    () => null,
    (e: unknown) => e,
  );
  return { error, last };
}

describe('s3 store', () => {
  it('uploads with a CRC-32 the store checks, and refuses a body that does not match it', async () => {
    const { target } = await openTarget('s3');
    const body = randomBytes(100_000);
    const { crc32 } = await import('node:zlib');
    await target.store.put('chunks/plain/aa/good', body, { crc32: crc32(body) });
    expect((await target.store.get('chunks/plain/aa/good')).equals(body)).toBe(true);
    await expect(target.store.put('chunks/plain/aa/bad', body, { crc32: crc32(body) ^ 1 })).rejects.toThrow();
    expect(await target.store.exists('chunks/plain/aa/bad')).toBe(false);
    await target.store.put('chunks/plain/aa/plain', body);
    expect(await listAll(target.store, 'chunks/')).toHaveLength(2);
  });
});

describe.each(['posix', 's3'] as const)('chunked backups on %s', (kind) => {
  it('full + two incrementals: only changes stored, every backup restores bit-exact, zero chunks never stored', async () => {
    const { target, spy } = await openTarget(kind);
    const vol = await makeVolume(`${kind}-chain.img`);
    const sums: string[] = [await sha256File(vol)];
    const b1 = await backupToStore({ target, backupId: 'b1', volumeId: 'vol1', source: vol, size: SIZE, codec });
    // 24 chunks: 4 holes (never read), chunk 7 written zeros, 19 data chunks.
    expect(b1.metadata.chunks.length).toBe(19);
    expect(b1.bytesRead).toBe(20 * CS);
    expect(await chunkObjects(target.store)).toBe(19);
    // The chunk of written zeros is neither listed nor stored.
    expect(b1.metadata.chunks.some((c) => c.offset === 7 * CS)).toBe(false);
    expect(await target.store.exists(keys.chunk('plain', createHash('sha256').update(Buffer.alloc(CS)).digest('hex')))).toBe(false);
    expect(b1.metadata.parent).toBeNull();

    await writeChunk(vol, 1, randomBytes(CS)); // changed
    await writeChunk(vol, 4, randomBytes(CS)); // hole -> data
    await writeChunk(vol, 2, Buffer.alloc(CS)); // data -> zeros
    sums.push(await sha256File(vol));
    const putsBefore = spy.puts;
    const b2 = await backupToStore({ target, backupId: 'b2', volumeId: 'vol1', source: vol, size: SIZE, incremental: true, codec });
    expect(b2.metadata.parent).toBe('b1');
    expect(b2.metadata.chunks.map((c) => c.offset)).toEqual([1 * CS, 4 * CS]);
    expect(b2.metadata.zeroChunks).toEqual([2 * CS]);
    expect(spy.puts - putsBefore).toBe(2);

    await writeChunk(vol, 23, text(99));
    await writeChunk(vol, 10, text(1)); // text(1) is in no backup yet
    sums.push(await sha256File(vol));
    const b3 = await backupToStore({ target, backupId: 'b3', volumeId: 'vol1', source: vol, size: SIZE, incremental: true, codec });
    expect(b3.metadata.parent).toBe('b2');
    expect(b3.metadata.chunks.length).toBe(2);
    expect(await chunkObjects(target.store)).toBe(19 + 2 + 2);

    for (const [i, id] of ['b1', 'b2', 'b3'].entries()) {
      expect(await restoreSha(target, id, `${kind}-r-${id}.img`), id).toBe(sums[i]);
    }
    // Onto a destination full of other data: zero chunks are written too.
    expect(await restoreSha(target, 'b2', `${kind}-r-b2-dirty.img`, false)).toBe(sums[1]);
    await verifyBackup({ target, backupId: 'b3', codec });

    // A second volume with the same content shares every chunk.
    const putsBefore2 = spy.puts;
    // (With the process-wide codec threads, as the activities use.)
    await backupToStore({ target, backupId: 'c1', volumeId: 'vol2', source: vol, size: SIZE, parentId: 'b3' });
    expect(spy.puts - putsBefore2).toBe(0);

    const records = await listBackupRecords(target.store);
    expect(records.map((r) => [r.backupId, r.metadata.volumeId, r.metadata.parent, r.status])).toEqual([
      ['b1', 'vol1', null, 'available'],
      ['b2', 'vol1', 'b1', 'available'],
      ['b3', 'vol1', 'b2', 'available'],
      ['c1', 'vol2', 'b3', 'available'],
    ]);
  });

  it('compression and encryption on and off all restore exactly; encrypted objects hold no plaintext', async () => {
    const vol = await makeVolume(`${kind}-codec.img`);
    const sum = await sha256File(vol);
    const stored: Record<string, number> = {};
    for (const [label, o] of [
      ['none', { compression: 'none' }],
      ['zstd', { compression: 'zstd' }],
      ['none+aes', { compression: 'none', key: 'key' }],
      ['zstd+aes', { compression: 'zstd', key: 'key2' }],
      ['zstd+aes(env)', { compression: 'zstd', key: 'env' }],
    ] as const) {
      const { target, spy } = await openTarget(kind, o, { GBACKUP_TEST_KEY: randomBytes(32).toString('base64') });
      const r = await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec });
      stored[label] = spy.putBytes;
      expect(r.metadata.compression).toBe(o.compression);
      expect(r.metadata.encryption !== null, label).toBe('key' in o);
      expect(await restoreSha(target, 'b1', `${kind}-codec-${label}.img`), label).toBe(sum);
      if ('key' in o) {
        expect(r.metadata.chunkSpace).toMatch(/^k-/);
        const k = (await listAll(target.store, 'chunks/'))[0]!;
        const body = await target.store.get(k);
        expect(body.includes(Buffer.from('compressible text'))).toBe(false);
        expect(JSON.stringify(r.metadata)).not.toContain((await target.key())!.toString('hex'));
      }
    }
    // Half the data chunks are text: zstd stores far fewer bytes; AES adds 28 bytes a chunk.
    expect(stored.zstd!).toBeLessThan(stored.none! * 0.7);
    expect(stored['none+aes']! - stored.none!).toBe(19 * 28);
  });

  it('a flipped byte in one stored chunk fails verify naming the chunk, and fails the restore', async () => {
    const vol = await makeVolume(`${kind}-flip.img`);
    for (const o of [{ compression: 'none' }, { compression: 'zstd' }, { compression: 'zstd', key: 'key' }] as const) {
      const { target } = await openTarget(kind, o);
      const r = await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec });
      await verifyBackup({ target, backupId: 'b1', codec });
      const victim = r.metadata.chunks[5]!;
      const key = keys.chunk(r.metadata.chunkSpace, victim.sha256);
      await flipByte(target.store, key);
      const err = await verifyBackup({ target, backupId: 'b1', codec }).catch((e: unknown) => e);
      expect(err).toMatchObject({ name: 'BackupCorrupt', failures: [{ offset: victim.offset, key }] });
      expect((err as Error).message).toContain(`offset ${victim.offset}`);
      expect((err as Error).message).toContain(key);
      const dest = await emptyFile(`${kind}-flip-dest.img`);
      const rerr = await restoreFromStore({ target, backupId: 'b1', dest, destIsZero: true, codec }).catch((e: unknown) => e);
      expect(rerr, JSON.stringify(o)).toMatchObject({
        name: 'key' in o ? 'DecryptionFailed' : 'ChunkCorrupt',
        chunk: { offset: victim.offset, sha256: victim.sha256, key },
      });
      expect((rerr as Error).message).toContain(`offset ${victim.offset}`);
      // A missing chunk is named too.
      await target.store.delete(key);
      await expect(verifyBackup({ target, backupId: 'b1', codec })).rejects.toMatchObject({ name: 'BackupCorrupt', message: containing('missing') });
      await expect(restoreFromStore({ target, backupId: 'b1', dest, destIsZero: true, codec })).rejects.toMatchObject({ name: 'ChunkMissing' });
    }
  });

  it('a wrong or missing key is a clear error before any chunk is read', async () => {
    const vol = await makeVolume(`${kind}-key.img`);
    const { target, place } = await openTarget(kind, { key: 'key' });
    await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec });
    const dest = await emptyFile(`${kind}-key-dest.img`);
    const destSum = await sha256File(dest);

    const wrong = await openTarget(kind, { key: 'key2', place });
    await expect(restoreFromStore({ target: wrong.target, backupId: 'b1', dest, codec })).rejects.toMatchObject({ name: 'WrongKey', message: containing('fingerprint') });
    await expect(verifyBackup({ target: wrong.target, backupId: 'b1', codec })).rejects.toMatchObject({ name: 'WrongKey' });
    expect(wrong.spy.gets).toBe(0);

    const none = await openTarget(kind, { place });
    await expect(restoreFromStore({ target: none.target, backupId: 'b1', dest, codec })).rejects.toMatchObject({ name: 'MissingKey', message: containing('encrypted') });

    const unset = await openTarget(kind, { key: 'env', place });
    await expect(restoreFromStore({ target: unset.target, backupId: 'b1', dest, codec })).rejects.toMatchObject({ name: 'MissingKey', message: containing('GBACKUP_TEST_KEY') });
    await expect(backupToStore({ target: unset.target, backupId: 'b2', volumeId: 'v', source: vol, size: SIZE, codec })).rejects.toMatchObject({ name: 'MissingKey' });
    expect(none.spy.gets + unset.spy.gets).toBe(0);
    expect(await sha256File(dest)).toBe(destSum);

    // A key change starts a new chain instead of building on chunks sealed with the old key.
    const b2 = await backupToStore({ target: wrong.target, backupId: 'b2', volumeId: 'v', source: vol, size: SIZE, incremental: true, codec });
    expect(b2.metadata.parent).toBeNull();
    await expect(
      backupToStore({ target: wrong.target, backupId: 'b3', volumeId: 'v', source: vol, size: SIZE, parentId: 'b1', codec }),
    ).rejects.toMatchObject({ name: 'InvalidInput', message: containing('another encryption key') });
  });

  it('resumes an interrupted backup without uploading again what was stored', async () => {
    const vol = await makeVolume(`${kind}-resume.img`, SIZE, (i) => (i === 13 ? null : randomBytes(CS)));
    const sum = await sha256File(vol);
    const { target, spy } = await openTarget(kind);
    const { error: err, last } = await interruptedBackup({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, concurrency: 2, codec }, 8 * CS);
    expect(err).toMatchObject({ name: matching(/Abort|Cancelled/) });
    const firstPuts = spy.puts;
    const firstBytes = spy.putBytes;
    expect(firstPuts).toBeGreaterThanOrEqual(8);
    expect(firstPuts).toBeLessThan(23);
    expect(await target.store.exists(keys.metadata('b1'))).toBe(false);
    expect(await listBackupRecords(target.store)).toEqual([]);
    expect((await listIncompleteBackups(target.store)).map((b) => b.backupId)).toEqual(['b1']);

    const r = await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, startOffset: last.doneOffset, codec });
    expect(r.resumedFrom).toBeGreaterThan(0);
    // Nothing the first attempt stored was uploaded again.
    expect(spy.puts).toBe(23);
    expect(r.chunksStored).toBe(23 - firstPuts);
    // Random data is stored raw (5-byte header): the second run uploaded only what was missing.
    expect(r.bytesStored).toBe(spy.putBytes - firstBytes);
    expect(r.bytesStored).toBe((23 - firstPuts) * (CS + 5));
    expect(r.bytesStored).toBeLessThan(23 * (CS + 5));
    expect(r.metadata.stats.storedBytes).toBe(spy.putBytes);
    expect(r.metadata.chunks.length).toBe(23);
    expect(await listAll(target.store, keys.backupDir('b1'))).toEqual([keys.metadata('b1')]);
    expect(await restoreSha(target, 'b1', `${kind}-resume-r.img`)).toBe(sum);
    // Running it again is a no-op.
    expect((await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec })).alreadyComplete).toBe(true);
  });

  it('counts every stored byte exactly once when a crash lost the journal, without uploading anything again', async () => {
    const vol = await makeVolume(`${kind}-nojournal.img`, SIZE, () => randomBytes(CS));
    const sum = await sha256File(vol);
    const { target, spy } = await openTarget(kind);
    const { last } = await interruptedBackup({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, concurrency: 2, codec }, 10 * CS);
    const firstPuts = spy.puts;
    // As if the worker died before any journal record reached the store: only the heartbeat's offset survives.
    for (const k of await listAll(target.store, keys.journalPrefix('b1'))) await target.store.delete(k);
    const r = await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, startOffset: last.doneOffset, codec });
    expect(r.resumedFrom).toBe(last.doneOffset);
    expect(spy.puts).toBe(24);
    expect(r.chunksStored).toBe(24 - firstPuts);
    expect(r.metadata.stats.storedBytes).toBe(spy.putBytes);
    expect(r.metadata.stats.storedBytes).toBe(24 * (CS + 5));
    expect(await restoreSha(target, 'b1', `${kind}-nojournal-r.img`)).toBe(sum);
  });

  it('resumes after a crash that left no journal: the listing finds what was stored', async () => {
    const vol = await makeVolume(`${kind}-crash.img`, SIZE, () => randomBytes(CS));
    const sum = await sha256File(vol);
    const { target, spy } = await openTarget(kind);
    await interruptedBackup({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec }, 10 * CS);
    // As if the worker died: no journal, no heartbeat offset.
    for (const k of await listAll(target.store, keys.journalPrefix('b1'))) await target.store.delete(k);
    const first = spy.puts;
    const r = await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec });
    expect(r.chunksStored).toBe(24 - first);
    expect(spy.puts).toBe(24);
    expect(await restoreSha(target, 'b1', `${kind}-crash-r.img`)).toBe(sum);
  });

  it('ignores a heartbeat offset that no stored pending record backs (another key, or nothing begun)', async () => {
    const vol = await makeVolume(`${kind}-stale.img`, SIZE, () => randomBytes(CS));
    const sum = await sha256File(vol);
    const { target, spy, place } = await openTarget(kind, { key: 'key' });
    const { doneOffset } = (await interruptedBackup({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec }, 8 * CS)).last;
    expect(doneOffset).toBeGreaterThan(0);
    // The retry runs with another key: what was sealed with the first one cannot count.
    const other = await openTarget(kind, { key: 'key2', place });
    const r = await backupToStore({ target: other.target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, startOffset: doneOffset, codec });
    expect(r.resumedFrom).toBe(0);
    expect(r.chunksStored).toBe(24);
    expect(await restoreSha(other.target, 'b1', `${kind}-stale-r.img`)).toBe(sum);
    // A heartbeat offset for a backup that never began is ignored as well.
    const fresh = await backupToStore({ target, backupId: 'b2', volumeId: 'v', source: vol, size: SIZE, startOffset: SIZE, codec });
    expect(fresh.resumedFrom).toBe(0);
    expect(spy.puts).toBeGreaterThanOrEqual(8 + 24);
    expect(await restoreSha(target, 'b2', `${kind}-stale-r2.img`)).toBe(sum);
  });

  it('resumes an interrupted restore, skipping what was written', async () => {
    const vol = await makeVolume(`${kind}-rresume.img`, SIZE, () => randomBytes(CS));
    const sum = await sha256File(vol);
    const { target, spy } = await openTarget(kind);
    await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec });
    const dest = await emptyFile(`${kind}-rresume-dest.img`);
    const ac = new AbortController();
    spy.onGet = (n) => n === 12 && ac.abort();
    let doneOffset = 0;
    await expect(
      restoreFromStore({ target, backupId: 'b1', dest, destIsZero: true, codec, concurrency: 2, signal: ac.signal, onProgress: (p) => (doneOffset = p.doneOffset) }),
    ).rejects.toMatchObject({ name: matching(/Abort|Cancelled/) });
    spy.onGet = null;
    expect(doneOffset).toBeGreaterThanOrEqual(8 * CS);
    const getsBefore = spy.gets;
    const r = await restoreFromStore({ target, backupId: 'b1', dest, destIsZero: true, codec, startOffset: doneOffset });
    expect(r.resumedFrom).toBe(doneOffset);
    expect(r.bytesWritten).toBe(SIZE - doneOffset);
    expect(r.bytesFetched).toBe((24 - doneOffset / CS) * (CS + 5));
    expect(spy.gets - getsBefore).toBe(24 - doneOffset / CS);
    expect(await sha256File(dest)).toBe(sum);
  });

  it('refuses to delete a backup others depend on, and reclaims chunks no one else uses', async () => {
    const vol = await makeVolume(`${kind}-del.img`, SIZE, () => randomBytes(CS));
    const sum1 = await sha256File(vol);
    const { target } = await openTarget(kind);
    await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec });
    await writeChunk(vol, 3, randomBytes(CS));
    await backupToStore({ target, backupId: 'b2', volumeId: 'v', source: vol, size: SIZE, incremental: true, codec });
    // Another volume with b2's content: a full backup that shares every chunk, b2's new one included.
    await backupToStore({ target, backupId: 'w1', volumeId: 'w', source: vol, size: SIZE, codec });
    await writeChunk(vol, 3, randomBytes(CS));
    await writeChunk(vol, 4, randomBytes(CS));
    await backupToStore({ target, backupId: 'b3', volumeId: 'v', source: vol, size: SIZE, incremental: true, codec });
    expect(await chunkObjects(target.store)).toBe(24 + 1 + 2);

    await expect(deleteBackup({ target, backupId: 'b1' })).rejects.toMatchObject({ name: 'BackupHasDependents', message: containing("'b2'") });
    await expect(deleteBackup({ target, backupId: 'b2' })).rejects.toMatchObject({ name: 'BackupHasDependents', message: containing("'b3'") });
    expect(await chunkObjects(target.store)).toBe(27);
    expect(await deleteBackup({ target, backupId: 'b3' })).toMatchObject({ deleted: true, chunksDeleted: 2 });
    expect(await chunkObjects(target.store)).toBe(25);
    expect(await deleteBackup({ target, backupId: 'b3' })).toMatchObject({ deleted: false });
    expect(await deleteBackup({ target, backupId: 'b2' })).toMatchObject({ deleted: true, chunksDeleted: 0, chunksShared: 1 });
    expect(await deleteBackup({ target, backupId: 'w1' })).toMatchObject({ deleted: true, chunksDeleted: 1, chunksShared: 23 });
    expect(await chunkObjects(target.store)).toBe(24);
    expect(await restoreSha(target, 'b1', `${kind}-del-r.img`)).toBe(sum1);
    await verifyBackup({ target, backupId: 'b1', codec });
    expect(await deleteBackup({ target, backupId: 'b1' })).toMatchObject({ deleted: true, chunksDeleted: 24 });
    expect(await chunkObjects(target.store)).toBe(0);
    expect(await listAll(target.store, 'backups/')).toEqual([]);
  });

  it('deleting an unfinished backup removes what it stored; a pending incremental protects its parent', async () => {
    const vol = await makeVolume(`${kind}-delpart.img`, SIZE, () => randomBytes(CS));
    const { target } = await openTarget(kind);
    await backupToStore({ target, backupId: 'full', volumeId: 'v', source: vol, size: SIZE, codec });
    for (let i = 0; i < 12; i++) await writeChunk(vol, i, randomBytes(CS));
    await interruptedBackup({ target, backupId: 'inc', volumeId: 'v', source: vol, size: SIZE, incremental: true, codec, concurrency: 1 }, 6 * CS);
    expect(await chunkObjects(target.store)).toBeGreaterThan(24);
    await expect(deleteBackup({ target, backupId: 'full' })).rejects.toMatchObject({ name: 'BackupHasDependents' });
    expect(await deleteBackup({ target, backupId: 'inc' })).toMatchObject({ deleted: true });
    expect(await chunkObjects(target.store)).toBe(24);
    expect(await listIncompleteBackups(target.store)).toEqual([]);
    await deleteBackup({ target, backupId: 'full' });
  });

  it('exports and imports a record, and rebuilds a catalog from metadata alone', async () => {
    const vol = await makeVolume(`${kind}-export.img`);
    const sum = await sha256File(vol);
    const { target } = await openTarget(kind, { key: 'key' });
    await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec, name: 'nightly', labels: { backend: 'alpha' } });
    await writeChunk(vol, 0, randomBytes(CS));
    const sum2 = await sha256File(vol);
    await backupToStore({ target, backupId: 'b2', volumeId: 'v', source: vol, size: SIZE, incremental: true, codec });
    const rec1 = await exportRecord(target.store, 'b1');
    const rec2 = await exportRecord(target.store, 'b2');
    expect(rec1).toMatch(/^[A-Za-z0-9_-]+$/);

    // Lose the records, keep the chunks: importing brings both back.
    await target.store.delete(keys.metadata('b2'));
    await target.store.delete(keys.metadata('b1'));
    await expect(importRecord({ target, record: rec2 })).rejects.toMatchObject({ name: 'BackupChainBroken' });
    expect((await importRecord({ target, record: rec1 })).labels).toEqual({ backend: 'alpha' });
    await importRecord({ target, record: rec2 });
    expect(await importRecord({ target, record: rec2 })).toMatchObject({ backupId: 'b2' });
    expect(await restoreSha(target, 'b1', `${kind}-export-r1.img`)).toBe(sum);
    expect(await restoreSha(target, 'b2', `${kind}-export-r2.img`)).toBe(sum2);

    // An empty target has none of the chunks.
    const other = await openTarget(kind, { key: 'key' });
    await expect(importRecord({ target: other.target, record: rec1 })).rejects.toMatchObject({ name: 'BackupChainBroken', message: containing('not there') });
    await expect(importRecord({ target, record: 'garbage' })).rejects.toMatchObject({ name: 'UnsupportedFormat' });

    // Once the chunk objects are copied there (as bucket replication would), the records import
    // into that second store, parent first, and restore from it alone.
    for (const k of await listAll(target.store, 'chunks/')) await other.target.store.put(k, await target.store.get(k));
    await expect(importRecord({ target: other.target, record: rec2 })).rejects.toMatchObject({ name: 'BackupChainBroken', message: containing("'b1'") });
    await importRecord({ target: other.target, record: rec1 });
    expect(await importRecord({ target: other.target, record: rec2 })).toMatchObject({ backupId: 'b2', parent: 'b1' });
    expect((await listBackupRecords(other.target.store)).map((r) => r.backupId)).toEqual(['b1', 'b2']);
    expect(await restoreSha(other.target, 'b2', `${kind}-export-site2.img`)).toBe(sum2);
    await verifyBackup({ target: other.target, backupId: 'b1', codec });
    // The same id with other content is a conflict, not an overwrite.
    const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(rec1, 'base64url').toString()), metadata: { ...(await listBackupRecords(other.target.store))[0]!.metadata, size: SIZE - CS } })).toString('base64url');
    await expect(importRecord({ target: other.target, record: forged })).rejects.toMatchObject({ name: 'ImportConflict' });

    const catalog = (await listBackupRecords(target.store)).map((r) => ({
      id: r.backupId,
      volumeId: r.metadata.volumeId,
      parent: r.metadata.parent,
      size: r.metadata.size,
      name: r.metadata.name ?? null,
      encrypted: r.metadata.encryption !== null,
    }));
    expect(catalog).toEqual([
      { id: 'b1', volumeId: 'v', parent: null, size: SIZE, name: 'nightly', encrypted: true },
      { id: 'b2', volumeId: 'v', parent: 'b1', size: SIZE, name: null, encrypted: true },
    ]);
  });

  it('a store that fails mid-way fails the backup and the restore cleanly, and a retry completes', async () => {
    const vol = await makeVolume(`${kind}-fail.img`, SIZE, () => randomBytes(CS));
    const sum = await sha256File(vol);
    const { target, spy } = await openTarget(kind);
    let failPuts = 6;
    let failGets = Infinity;
    const inner = spy.inner;
    const flaky: ObjectStore = Object.create(spy) as ObjectStore;
    flaky.put = async (key, body, o) => {
      if (key.startsWith('chunks/') && --failPuts < 0) throw new Error('injected put failure');
      return spy.put(key, body, o);
    };
    flaky.getInto = async (key, alloc) => {
      if (key.startsWith('chunks/') && --failGets < 0) throw new Error('injected get failure');
      return inner.getInto(key, alloc);
    };
    const t = new ChunkedTarget(target.config, flaky, minio!.env);
    let doneOffset = 0;
    await expect(
      backupToStore({ target: t, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec, onProgress: (p) => (doneOffset = p.doneOffset) }),
    ).rejects.toThrow('injected put failure');
    expect(spy.puts).toBe(6);
    failPuts = Infinity;
    const r = await backupToStore({ target: t, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec, startOffset: doneOffset });
    expect(r.chunksStored).toBe(24 - 6);
    expect(spy.puts).toBe(24);

    failGets = 5;
    const dest = await emptyFile(`${kind}-fail-dest.img`);
    await expect(restoreFromStore({ target: t, backupId: 'b1', dest, destIsZero: true, codec })).rejects.toThrow('injected get failure');
    failGets = 3;
    await expect(verifyBackup({ target: t, backupId: 'b1', codec })).rejects.toThrow('injected get failure');
    failGets = Infinity;
    await restoreFromStore({ target: t, backupId: 'b1', dest, destIsZero: true, codec });
    expect(await sha256File(dest)).toBe(sum);
  });

  it('a codec pool closed under a running backup fails it instead of hanging it', async () => {
    const vol = await makeVolume(`${kind}-codec-close.img`, SIZE, () => randomBytes(CS));
    const { target } = await openTarget(kind, { key: 'key' });
    const own = new CodecPool(2);
    const closing: Promise<void>[] = [];
    await expect(
      backupToStore({
        target,
        backupId: 'b1',
        volumeId: 'v',
        source: vol,
        size: SIZE,
        codec: own,
        onProgress: (p) => {
          if (p.bytesRead >= 4 * CS && closing.length === 0) closing.push(own.close());
        },
      }),
    ).rejects.toThrow(/codec pool closed|codec worker/);
    await Promise.all(closing);
    // A fresh attempt with a working pool finishes the backup.
    const r = await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec });
    expect(r.metadata.chunks.length).toBe(24);
    await verifyBackup({ target, backupId: 'b1', codec });
  });

  it('refuses an incremental that must have a parent when there is none, and a too-small destination', async () => {
    const vol = await makeVolume(`${kind}-noparent.img`);
    const { target } = await openTarget(kind);
    await expect(
      backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, incremental: true, requireParent: true, codec }),
    ).rejects.toMatchObject({ name: 'NoParentBackup' });
    await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec });
    const small = await emptyFile(`${kind}-small.img`, SIZE - CS);
    await expect(restoreFromStore({ target, backupId: 'b1', dest: small, codec })).rejects.toMatchObject({ name: 'VolumeTooSmall' });
    await expect(restoreFromStore({ target, backupId: 'nope', dest: small, codec })).rejects.toMatchObject({ name: 'BackupNotFound' });
  });
});
