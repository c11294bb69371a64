/**
 * The chunked engine's I/O shortcuts (src/drivers/backup/direct.ts, early.ts): restores
 * written with O_DIRECT where the file system allows it (and through the cache where it
 * does not, or for a short last chunk), and an incremental's chunks hashed while it still
 * consults the store. Everything is compared bit for bit; a posix directory is the store.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupToStore } from '../src/drivers/backup/backup.js';
import { CodecPool } from '../src/drivers/backup/codec.js';
import { DIRECT_ALIGN, SlabPool } from '../src/drivers/backup/direct.js';
import { EarlyHashes } from '../src/drivers/backup/early.js';
import { restoreFromStore } from '../src/drivers/backup/restore.js';
import { ObjectTarget } from '../src/drivers/backup/stores/registry.js';
import type { ObjectStore } from '../src/drivers/backup/stores/store.js';
import { DelegatingStore } from './helpers/delegating-store.js';
import { ChunkedTarget } from '../src/drivers/backup/target.js';
import { cleanupOnExit } from './helpers/minio.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = MiB;

let dir: string;
let codec: CodecPool;
let forgetDir: (() => void) | null = null;
let seq = 0;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'gbackup-engine-io-'));
  const made = dir;
  forgetDir = cleanupOnExit(() => rmSync(made, { recursive: true, force: true }));
  codec = new CodecPool(2);
  writeFileSync(join(dir, 'key'), randomBytes(32));
});
afterAll(async () => {
  forgetDir?.();
  if (dir) rmSync(dir, { recursive: true, force: true });
  await codec?.close();
});

/** A store whose metadata reads are slow, as a remote store's are: the backup's early hashing then has time to run. */
class SlowStore extends DelegatingStore {
  constructor(
    inner: ObjectStore,
    readonly delayMs: number,
  ) {
    super(inner);
  }
  override async get(key: string) {
    if (key.startsWith('backups/')) await new Promise((r) => setTimeout(r, this.delayMs));
    return this.inner.get(key);
  }
}

async function openTarget(delayMs = 0): Promise<ChunkedTarget> {
  const place = join(dir, `t${++seq}`);
  mkdirSync(place);
  const config = ObjectTarget.parse({ name: 'vault', driver: 'posix', path: place, chunkSize: CS, compression: 'zstd', encryption: { keyFile: join(dir, 'key') } });
  const t = await ChunkedTarget.open(config, {});
  return delayMs > 0 ? new ChunkedTarget(config, new SlowStore(t.store, delayMs), {}) : t;
}

/** `size` bytes: chunk i random, zeros (i % 4 === 1), or a hole (i % 4 === 3). */
async function makeVolume(name: string, size: number): Promise<string> {
  const f = join(dir, name);
  writeFileSync(f, '');
  await truncate(f, size);
  const fh = await open(f, 'r+');
  try {
    for (let i = 0; i * CS < size; i++) {
      if (i % 4 === 3) continue;
      const n = Math.min(CS, size - i * CS);
      await fh.write(i % 4 === 1 ? Buffer.alloc(n) : randomBytes(n), 0, n, i * CS);
    }
  } finally {
    await fh.close();
  }
  return f;
}

async function sha256(file: string, length?: number): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file, length === undefined ? {} : { end: length - 1 })) h.update(c as Buffer);
  return h.digest('hex');
}

async function writeAt(file: string, position: number, data: Buffer): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    await fh.write(data, 0, data.length, position);
  } finally {
    await fh.close();
  }
}

/** A destination of `size` bytes: sparse, or filled with `fill` (what a used volume holds). */
async function destination(name: string, size: number, fill?: number): Promise<string> {
  const f = join(dir, name);
  if (fill === undefined) {
    writeFileSync(f, '');
    await truncate(f, size);
  } else {
    writeFileSync(f, Buffer.alloc(size, fill));
  }
  return f;
}

describe('SlabPool', () => {
  it('finds the offset the kernel takes, and hands out buffers from it', async () => {
    const pool = new SlabPool(3, 64 * KiB);
    // A "kernel" that takes only memory at 48 past a multiple of 64 (as a slab would be at 16).
    let tries = 0;
    expect(
      pool.alignWith((block) => {
        tries++;
        expect(block.length).toBe(DIRECT_ALIGN);
        expect(block.every((b) => b === 0)).toBe(true);
        if (block.byteOffset % 64 !== 48) throw Object.assign(new Error('EINVAL'), { code: 'EINVAL' });
      }),
    ).toBe(true);
    expect(tries).toBe(4);
    const a = await pool.take();
    const b = await pool.take();
    const c = await pool.take();
    expect([a.off, b.off, c.off]).toEqual([48, 48 + 64 * KiB, 48 + 128 * KiB]);
    expect(a.buf.byteLength).toBeGreaterThanOrEqual(c.off + 64 * KiB);
    expect(pool.idle).toBe(0);
    const waiting = pool.take();
    pool.give(b);
    expect((await waiting).off).toBe(b.off);
    pool.give(a);
    pool.give(b);
    pool.give(c);
    expect(pool.idle).toBe(3);
    expect(() => pool.alignWith(() => undefined)).toThrow(/after the first take/);
  });

  it('gives up on anything but EINVAL, and when no offset is taken', () => {
    expect(
      new SlabPool(1, 64 * KiB).alignWith(() => {
        throw Object.assign(new Error('EIO'), { code: 'EIO' });
      }),
    ).toBe(false);
    let tries = 0;
    expect(
      new SlabPool(1, 64 * KiB).alignWith(() => {
        tries++;
        throw Object.assign(new Error('EINVAL'), { code: 'EINVAL' });
      }),
    ).toBe(false);
    expect(tries).toBe(DIRECT_ALIGN / 16);
  });
});

describe('restores through O_DIRECT', () => {
  // 5 MiB + 1234 bytes: a last chunk that O_DIRECT cannot write, so it goes through the cache.
  const SIZE = 5 * MiB + 1234;
  let target: ChunkedTarget;
  let vol: string;
  let sum: string;
  beforeAll(async () => {
    target = await openTarget();
    vol = await makeVolume('vol.img', SIZE);
    sum = await sha256(vol);
    await backupToStore({ target, backupId: 'b1', volumeId: 'v', source: vol, size: SIZE, codec });
  });

  it('onto a new sparse file, leaving what lies past the backup untouched', async () => {
    const dest = await destination('sparse.img', SIZE + 3 * DIRECT_ALIGN);
    await writeAt(dest, SIZE, Buffer.alloc(3 * DIRECT_ALIGN, 0xaa));
    await restoreFromStore({ target, backupId: 'b1', dest, destIsZero: true, codec });
    expect(await sha256(dest, SIZE)).toBe(sum);
    const tail = readFileSync(dest).subarray(SIZE);
    expect(tail.length).toBe(3 * DIRECT_ALIGN);
    expect(tail.every((b) => b === 0xaa)).toBe(true);
  });

  it('onto a used volume: zero chunks are written as zeros', async () => {
    const dest = await destination('used.img', SIZE, 0x55);
    await restoreFromStore({ target, backupId: 'b1', dest, destIsZero: false, codec });
    expect(await sha256(dest)).toBe(sum);
  });

  it('resumed past its first chunks, rewriting only from there', async () => {
    const dest = await destination('resumed.img', SIZE, 0x55);
    const r = await restoreFromStore({ target, backupId: 'b1', dest, destIsZero: false, startOffset: 2 * CS + 5, codec });
    expect(r.resumedFrom).toBe(2 * CS);
    const got = readFileSync(dest);
    expect(got.subarray(0, 2 * CS).every((b) => b === 0x55)).toBe(true);
    expect(got.subarray(2 * CS).equals(readFileSync(vol).subarray(2 * CS))).toBe(true);
  });

  it('with direct I/O turned off (GBACKUP_DIRECT_IO=0)', async () => {
    const dest = await destination('cached.img', SIZE, 0x55);
    process.env.GBACKUP_DIRECT_IO = '0';
    try {
      await restoreFromStore({ target, backupId: 'b1', dest, destIsZero: false, codec });
    } finally {
      delete process.env.GBACKUP_DIRECT_IO;
    }
    expect(await sha256(dest)).toBe(sum);
  });

  it('onto tmpfs, which may refuse O_DIRECT', async () => {
    if (!existsSync('/dev/shm')) return;
    const shm = mkdtempSync('/dev/shm/gbackup-engine-io-');
    try {
      const dest = join(shm, 'dest.img');
      writeFileSync(dest, Buffer.alloc(SIZE, 0x55));
      await restoreFromStore({ target, backupId: 'b1', dest, destIsZero: false, codec });
      expect(await sha256(dest)).toBe(sum);
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it('a volume smaller than one direct block: nothing is written past its end', async () => {
    const tiny = join(dir, 'tiny.img');
    writeFileSync(tiny, randomBytes(1000));
    await backupToStore({ target, backupId: 'tiny', volumeId: 'tiny', source: tiny, size: 1000, codec });
    const dest = await destination('tiny-dest.img', 1000);
    await restoreFromStore({ target, backupId: 'tiny', dest, destIsZero: true, codec });
    expect(readFileSync(dest).equals(readFileSync(tiny))).toBe(true);
  });
});

describe('early hashing of an incremental', () => {
  it('hashes what it reads (null for zeros), and nothing for another chunk size', async () => {
    const size = 6 * CS + 100;
    const vol = await makeVolume('early.img', size);
    const early = new EarlyHashes(vol, size, CS, codec, 4);
    await new Promise((r) => setTimeout(r, 200));
    expect(await early.halt(2 * CS)).toBeNull();
    const hashes = (await early.halt())!;
    expect(hashes.size).toBe(7);
    const data = readFileSync(vol);
    for (let i = 0; i < 7; i++) {
      const chunk = data.subarray(i * CS, Math.min(size, (i + 1) * CS));
      expect(hashes.get(i)?.toString('hex') ?? null).toBe(chunk.every((b) => b === 0) ? null : createHash('sha256').update(chunk).digest('hex'));
    }
    expect(early.pool.idle).toBe(4);
  });

  it('an incremental whose start was hashed early stores exactly the changes and restores bit-exact', async () => {
    // Slow metadata reads: the volume is hashed before the backup knows its parent.
    const target = await openTarget(40);
    const size = 12 * CS;
    const vol = await makeVolume('early-incr.img', size);
    await backupToStore({ target, backupId: 'full', volumeId: 'v', source: vol, size, codec });
    await writeAt(vol, 0, randomBytes(CS)); // changed
    await writeAt(vol, 2 * CS, Buffer.alloc(CS)); // data -> zeros
    await writeAt(vol, 5 * CS + 7, randomBytes(100)); // changed
    const sum = await sha256(vol);
    const r = await backupToStore({ target, backupId: 'incr', volumeId: 'v', source: vol, size, incremental: true, codec });
    expect(r.metadata.parent).toBe('full');
    expect(r.metadata.chunks.map((c) => c.offset)).toEqual([0, 5 * CS]);
    expect(r.metadata.zeroChunks).toEqual([2 * CS]);
    expect(r.chunksStored).toBe(2);
    // Every chunk with data counted once, however it was read (holes are not read).
    expect(r.bytesRead).toBe(9 * CS);
    const dest = await destination('early-incr-dest.img', size);
    await restoreFromStore({ target, backupId: 'incr', dest, destIsZero: true, codec });
    expect(await sha256(dest)).toBe(sum);
  });
});
