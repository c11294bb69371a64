/**
 * The pieces of the chunked targets on their own: config shapes, object keys, the
 * posix store, the chunk view arithmetic, keys and the chunk codec.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PosixTarget } from '../src/drivers/backup/stores/posix/config.js';
import { resolveTargetPaths } from '../src/drivers/backup/stores/registry.js';
import { S3Target } from '../src/drivers/backup/stores/s3/config.js';
import { BufferPool, CHUNK_OVERHEAD, chunkSpace, CodecPool, dataKey, keyFingerprint, loadKey, parseKey, sharedCodecPool } from '../src/drivers/backup/codec.js';
import { ChunkView, DEFAULT_CHUNK_SIZE, keys, parseMetadata, type BackupMetadata } from '../src/drivers/backup/format.js';
import { checkKey, listAll } from '../src/drivers/backup/stores/store.js';
import { loadS3Credentials } from '../src/drivers/backup/stores/s3/credentials.js';
import { PosixStore } from '../src/drivers/backup/stores/posix/store.js';

/** Asymmetric matchers typed as the strings they stand for, for toMatchObject. */
const containing = (text: string) => expect.stringContaining(text) as string;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'gbackup-chunked-format-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('target config', () => {
  it('parses posix and s3 targets with defaults', () => {
    const p = PosixTarget.parse({ name: 'vault', driver: 'posix', path: './backups', chunkSize: '4M' });
    expect(p).toMatchObject({ chunkSize: 4 * 1024 * 1024, compression: 'zstd' });
    const s = S3Target.parse({ name: 'cloud', driver: 's3', bucket: 'my-backups', encryption: { keyEnv: 'GBACKUP_KEY' } });
    expect(s).toMatchObject({ region: 'us-east-1', prefix: '', forcePathStyle: false, compression: 'zstd' });
  });

  it('names the field that is wrong', () => {
    const bad = [
      [{ name: 'v', driver: 'posix', path: '/x', chunkSize: '3K' }, 'chunkSize'],
      [{ name: 'v', driver: 'posix', path: '/x', compression: 'gzip' }, 'compression'],
      [{ name: 'v', driver: 'posix', path: '/x', encryption: {} }, 'encryption'],
      [{ name: 'v', driver: 'posix', path: '/x', encryption: { keyFile: '/k', keyEnv: 'K' } }, 'encryption'],
      [{ name: 'v', driver: 'posix', path: '/x', secretKey: 'oops' }, ''],
    ] as const;
    for (const [input, path] of bad) {
      const r = PosixTarget.safeParse(input);
      expect(r.success, JSON.stringify(input)).toBe(false);
      if (!r.success && path) expect(r.error.issues[0]!.path.join('.')).toContain(path);
    }
    expect(S3Target.safeParse({ name: 'c', driver: 's3', bucket: 'B' }).success).toBe(false);
    expect(S3Target.safeParse({ name: 'c', driver: 's3', bucket: 'ok-bucket', prefix: '../x' }).success).toBe(false);
    expect(S3Target.safeParse({ name: 'c', driver: 's3', bucket: 'ok-bucket', accessKey: 'no' }).success).toBe(false);
  });

  it('resolves relative paths against the config directory', () => {
    const p = resolveTargetPaths(PosixTarget.parse({ name: 'v', driver: 'posix', path: 'b', encryption: { keyFile: 'k/key' } }), '/etc/gbackup');
    expect(p.path).toBe('/etc/gbackup/b');
    expect(p.encryption?.keyFile).toBe('/etc/gbackup/k/key');
  });
});

describe('posix store', () => {
  it('refuses keys that could leave its directory', () => {
    for (const k of ['../x', '/etc/passwd', 'a//b', 'a/../b', '.tmp/x', 'a/.hidden', 'a b', 'a/', '', 'x\0y']) {
      expect(() => checkKey(k), k).toThrow(expect.objectContaining({ name: 'InvalidObjectKey' }));
    }
    expect(checkKey('chunks/plain/ab/abcdef')).toBe('chunks/plain/ab/abcdef');
  });

  it('puts atomically, gets, lists and deletes', async () => {
    // The store's directory is the operator's to make; the store makes only what is below it.
    mkdirSync(join(dir, 'store'));
    const s = new PosixStore(join(dir, 'store'));
    await s.put('backups/b1/metadata.json', Buffer.from('{}'));
    await s.put('chunks/plain/ab/abc', Buffer.from('x'));
    await s.put('chunks/plain/cd/cde', Buffer.from('y'));
    expect((await s.get('chunks/plain/ab/abc')).toString()).toBe('x');
    expect(await s.exists('chunks/plain/ab/abc')).toBe(true);
    expect(await s.exists('chunks/plain/ab/nope')).toBe(false);
    await expect(s.get('chunks/plain/ab/nope')).rejects.toMatchObject({ name: 'ObjectNotFound' });
    expect((await listAll(s, 'chunks/')).sort()).toEqual(['chunks/plain/ab/abc', 'chunks/plain/cd/cde']);
    expect(await listAll(s, 'chunks/plain/a')).toEqual(['chunks/plain/ab/abc']);
    expect(await listAll(s, 'backups/')).toEqual(['backups/b1/metadata.json']);
    // No temporary file is left behind or listed.
    expect(readdirSync(join(dir, 'store', '.tmp'))).toEqual([]);
    writeFileSync(join(dir, 'store', '.tmp', 'crashed.part'), 'partial');
    expect((await listAll(s, '')).length).toBe(3);
    await s.delete('backups/b1/metadata.json');
    await s.delete('backups/b1/metadata.json');
    expect(readdirSync(join(dir, 'store', 'backups'))).toEqual([]);
  });
});

describe('s3 credentials', () => {
  it('come from a file or the environment, with a clear error otherwise', async () => {
    const f = join(dir, 'creds.json');
    writeFileSync(f, JSON.stringify({ accessKeyId: 'a', secretAccessKey: 'b' }));
    expect(await loadS3Credentials({ name: 't', credentialsFile: f }, {})).toEqual({ accessKeyId: 'a', secretAccessKey: 'b' });
    expect(await loadS3Credentials({ name: 't' }, { AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'y' })).toEqual({ accessKeyId: 'x', secretAccessKey: 'y' });
    await expect(loadS3Credentials({ name: 't' }, {})).rejects.toMatchObject({ name: 'MissingCredentials', message: containing('AWS_ACCESS_KEY_ID') });
    writeFileSync(f, '{"accessKeyId": "a"}');
    await expect(loadS3Credentials({ name: 't', credentialsFile: f }, {})).rejects.toMatchObject({ name: 'MissingCredentials' });
  });
});

describe('keys', () => {
  it('reads raw, hex and base64 keys and rejects anything else', async () => {
    const k = randomBytes(32);
    expect(parseKey(k, 'k')).toEqual(k);
    expect(parseKey(Buffer.from(`${k.toString('hex')}\n`), 'k')).toEqual(k);
    expect(parseKey(Buffer.from(k.toString('base64')), 'k')).toEqual(k);
    expect(() => parseKey(Buffer.from('short'), 'k')).toThrow(expect.objectContaining({ name: 'InvalidKey' }));
    expect(() => parseKey(randomBytes(31), 'k')).toThrow(expect.objectContaining({ name: 'InvalidKey' }));
    await expect(loadKey({ keyFile: join(dir, 'absent') }, 't')).rejects.toMatchObject({ name: 'MissingKey' });
    await expect(loadKey({ keyEnv: 'GBACKUP_TEST_NO_SUCH_KEY' }, 't', {})).rejects.toMatchObject({ name: 'MissingKey', message: containing('GBACKUP_TEST_NO_SUCH_KEY') });
    expect(await loadKey({ keyEnv: 'K' }, 't', { K: k.toString('hex') })).toEqual(k);
    expect(await loadKey(undefined, 't')).toBeNull();
  });

  it('fingerprints without revealing the key, and separates key spaces', () => {
    const k = randomBytes(32);
    const fp = keyFingerprint(k);
    expect(fp).toMatch(/^[0-9a-f]{64}$/);
    expect(fp).not.toContain(k.toString('hex').slice(0, 16));
    expect(dataKey(k).equals(k)).toBe(false);
    expect(chunkSpace(k)).toBe(`k-${fp.slice(0, 16)}`);
    expect(chunkSpace(null)).toBe('plain');
    expect(keys.chunk('plain', 'ab'.repeat(32))).toBe(`chunks/plain/ab/${'ab'.repeat(32)}`);
  });
});

describe('chunk codec', () => {
  const pool = new CodecPool(2);
  afterAll(() => pool.close());
  const CS = 256 * 1024;

  const space = () => new SharedArrayBuffer(CS + CHUNK_OVERHEAD);
  /** Decodes a copy of `body` into a fresh buffer; the decoded bytes come back with the result. */
  const decode = async (body: Buffer, sha: Buffer, key: Buffer | null, len = CS) => {
    const sab = new SharedArrayBuffer(body.length + 7);
    new Uint8Array(sab).set(body);
    const out = new SharedArrayBuffer(CS);
    const r = await pool.decode(sab, body.length, out, len, sha, key);
    return { ...r, out: Buffer.from(out, 0, len) };
  };

  async function roundTrip(plain: Buffer, compress: boolean, key: Buffer | null) {
    const buf = new SharedArrayBuffer(CS);
    Buffer.from(buf).set(plain);
    const sp = space();
    const h = await pool.hashEncode(buf, plain.length, sp, null, { compress, key });
    expect(h.zero).toBe(false);
    expect(h.body!.crc32).toBe(crc32(h.body!.bytes));
    // The object is written in place, into the space buffer given.
    expect(h.body!.bytes.buffer).toBe(sp);
    const body = Buffer.from(h.body!.bytes);
    const d = await decode(body, h.sha!, key, plain.length);
    expect(d.failure).toBeNull();
    expect(d.out.equals(plain)).toBe(true);
    return { body, sha: h.sha! };
  }

  it('round-trips with and without zstd and AES-GCM; stores incompressible data raw', async () => {
    const text = Buffer.from('gbackup '.repeat(CS / 8));
    const rnd = randomBytes(CS);
    const key = dataKey(randomBytes(32));
    const plainText = await roundTrip(text, false, null);
    expect(plainText.body.length).toBe(CS + 5);
    const zText = await roundTrip(text, true, null);
    expect(zText.body.length).toBeLessThan(CS / 10);
    expect(zText.body[4]).toBe(1);
    const zRnd = await roundTrip(rnd, true, null);
    expect(zRnd.body[4]).toBe(0);
    const enc = await roundTrip(text, true, key);
    expect(enc.body[4]).toBe(3);
    expect(enc.body.includes(Buffer.from('gbackup gbackup'))).toBe(false);
    await roundTrip(rnd.subarray(0, 1000), true, key);
  });

  it('tells zero chunks and unchanged chunks without encoding them', async () => {
    const buf = new SharedArrayBuffer(CS);
    const z = await pool.hashEncode(buf, CS, space(), null, { compress: true, key: null });
    expect(z).toMatchObject({ zero: true, sha: null, body: null });
    Buffer.from(buf).fill(7);
    const a = await pool.hashEncode(buf, CS, space(), null, { compress: true, key: null });
    const b = await pool.hashEncode(buf, CS, space(), a.sha, { compress: true, key: null });
    expect(b.sha!.equals(a.sha!)).toBe(true);
    expect(b.body).toBeNull();
    expect((await pool.hash(buf, CS)).sha!.equals(a.sha!)).toBe(true);
    // A job whose buffers cannot hold it fails as an error, and the pool goes on working.
    await expect(pool.decode(new SharedArrayBuffer(16), 16, new SharedArrayBuffer(8), 64, a.sha!, null)).rejects.toThrow(/does not fit/);
    expect((await pool.hash(buf, CS)).zero).toBe(false);
  });

  it('refuses a flipped byte, a wrong key and a swapped object', async () => {
    const key = dataKey(randomBytes(32));
    const plain = randomBytes(CS);
    for (const [compress, k] of [[false, null], [true, null], [true, key], [false, key]] as const) {
      const { body, sha } = await roundTrip(plain, compress, k);
      const bad = Buffer.from(body);
      bad[bad.length >> 1]! ^= 0x40;
      const d = await decode(bad, sha, k);
      expect(d.failure?.kind, `compress=${compress} key=${k !== null}`).toMatch(k ? /^auth$/ : /^(hash|decompress)$/);
    }
    const { body, sha } = await roundTrip(plain, true, key);
    expect((await decode(body, sha, dataKey(randomBytes(32)))).failure?.kind).toBe('auth');
    expect((await decode(body, sha, null)).failure?.kind).toBe('key');
    // The same bytes presented as another chunk fail authentication (the sha is in the AAD).
    const other = Buffer.from(sha);
    other[0]! ^= 1;
    expect((await decode(body, other, key)).failure?.kind).toBe('auth');
    expect((await decode(Buffer.from('nonsense'), sha, key)).failure?.kind).toBe('format');
  });

  it('refuses a zstd payload that would decode to far more than a chunk, before decoding it', async () => {
    /** A zstd frame of RLE blocks of 128 KiB of 'x': tiny, and as large decoded as there are blocks. */
    const rleFrame = (blocks: number, trailing = Buffer.alloc(0)) => {
      const parts = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38])];
      for (let i = 0; i < blocks; i++) {
        const h = (128 * 1024 * 8) | (1 << 1) | (i === blocks - 1 ? 1 : 0);
        parts.push(Buffer.from([h & 0xff, (h >> 8) & 0xff, (h >> 16) & 0xff, 0x78]));
      }
      return Buffer.concat([Buffer.from('GBC1'), Buffer.from([1]), ...parts, trailing]);
    };
    const plain = Buffer.alloc(CS, 'x');
    const sha = createHash('sha256').update(plain).digest();
    // Two blocks are exactly one chunk: a frame from another encoder reads back.
    const ok = await decode(rleFrame(2), sha, null);
    expect(ok.failure).toBeNull();
    expect(ok.out.equals(plain)).toBe(true);
    // 20000 blocks would be 2.5 GiB: refused from the headers.
    const bomb = await decode(rleFrame(20000), sha, null);
    expect(bomb.failure).toMatchObject({ kind: 'decompress', message: containing('more than') });
    expect((await decode(rleFrame(2, Buffer.from('junk')), sha, null)).failure).toMatchObject({ kind: 'decompress' });
  });

  it('hands buffers out and back, allocating only what is used', async () => {
    const p = new BufferPool(2, 16);
    expect(p.idle).toBe(2);
    const a = await p.take();
    const b = await p.take();
    expect(a.byteLength).toBe(16);
    expect(p.idle).toBe(0);
    const waiting = p.take();
    p.give(a);
    expect(await waiting).toBe(a);
    p.give(a);
    p.give(b);
    expect(p.idle).toBe(2);
  });

  it('a closed pool refuses new jobs and fails those in flight', async () => {
    const p = new CodecPool(1);
    const buf = new SharedArrayBuffer(8 * 1024 * 1024);
    Buffer.from(buf).fill(1);
    const inFlight = Array.from({ length: 8 }, () => p.hash(buf, buf.byteLength).then(() => 'done', (e: Error) => e.message));
    await p.close();
    const outcomes = await Promise.all(inFlight);
    expect(outcomes.every((o) => o === 'done' || o === 'codec pool closed')).toBe(true);
    expect(outcomes).toContain('codec pool closed');
    await expect(p.hash(buf, 16)).rejects.toThrow('codec pool closed');
  });

  it('shares one pool per process, and replaces it once it failed', async () => {
    const a = sharedCodecPool();
    expect(sharedCodecPool()).toBe(a);
    await a.close();
    const b = sharedCodecPool();
    expect(b).not.toBe(a);
    expect(b.usable).toBe(true);
    const buf = new SharedArrayBuffer(64);
    expect((await b.hash(buf, 64)).zero).toBe(true);
  });
});

describe('chunk view', () => {
  const CS = 1024 * 1024;
  const h = (c: string) => c.repeat(64);
  const meta = (over: Partial<BackupMetadata>): BackupMetadata =>
    parseMetadata(
      {
        format: 'gbackup-chunked',
        formatVersion: 1,
        backupId: 'b1',
        volumeId: 'v1',
        createdAt: new Date().toISOString(),
        completedAt: new Date().toISOString(),
        size: 3.5 * CS,
        chunkSize: CS,
        parent: null,
        compression: 'zstd',
        encryption: null,
        chunkSpace: 'plain',
        chunks: [],
        zeroChunks: [],
        stats: { dataBytes: 0, changedBytes: 0, storedBytes: 0 },
        ...over,
      },
      'test',
    );

  it('lists only what changed, zeroed chunks included, and applies chains back', () => {
    const full = new ChunkView(3.5 * CS, CS);
    full.set(0, h('a'));
    full.set(1, h('b'));
    full.set(3, h('d'));
    expect(full.lengthOf(3)).toBe(CS / 2);
    const d0 = full.deltaFrom(null);
    expect(d0.chunks.map((c) => c.offset)).toEqual([0, CS, 3 * CS]);
    expect(d0.chunks[2]!.length).toBe(CS / 2);
    const next = new ChunkView(3.5 * CS, CS);
    next.set(0, h('a'));
    next.set(2, h('c'));
    next.set(3, h('d'));
    const d1 = next.deltaFrom(full);
    expect(d1).toEqual({ chunks: [{ offset: 2 * CS, length: CS, sha256: h('c') }], zeroChunks: [CS] });
    const m0 = meta({ backupId: 'b1', ...d0 });
    const m1 = meta({ backupId: 'b2', parent: 'b1', ...d1 });
    const v = ChunkView.ofChain([m0, m1]);
    for (let i = 0; i < 4; i++) expect(v.hexAt(i)).toBe(next.hexAt(i));
  });

  it('handles a volume that grew or shrank between backups', () => {
    const a = new ChunkView(2.5 * CS, CS);
    a.set(0, h('a'));
    a.set(2, h('c'));
    const grown = new ChunkView(4 * CS, CS);
    grown.set(0, h('a'));
    grown.set(2, h('e'));
    grown.set(3, h('f'));
    const m0 = meta({ backupId: 'b1', size: 2.5 * CS, ...a.deltaFrom(null) });
    const m1 = meta({ backupId: 'b2', parent: 'b1', size: 4 * CS, ...grown.deltaFrom(a) });
    expect(m1.chunks.map((c) => c.offset)).toEqual([2 * CS, 3 * CS]);
    const v = ChunkView.ofChain([m0, m1]);
    expect([0, 1, 2, 3].map((i) => v.hexAt(i))).toEqual([h('a'), null, h('e'), h('f')]);
    const shrunk = new ChunkView(1.5 * CS, CS);
    shrunk.set(0, h('a'));
    const m2 = meta({ backupId: 'b3', parent: 'b2', size: 1.5 * CS, ...shrunk.deltaFrom(v) });
    const v2 = ChunkView.ofChain([m0, m1, m2]);
    expect(v2.count).toBe(2);
    expect([0, 1].map((i) => v2.hexAt(i))).toEqual([h('a'), null]);
  });

  it('refuses metadata of another format version or shape', () => {
    expect(() => parseMetadata({ format: 'gbackup-chunked', formatVersion: 2 }, 'x')).toThrow(expect.objectContaining({ name: 'UnsupportedFormat', message: containing('version 2') }));
    expect(() => parseMetadata({ hello: 1 }, 'x')).toThrow(expect.objectContaining({ name: 'UnsupportedFormat' }));
    expect(() => meta({ chunks: [{ offset: 5, length: CS, sha256: h('a') }] }) && ChunkView.ofChain([meta({ chunks: [{ offset: 5, length: CS, sha256: h('a') }] })])).toThrow(
      expect.objectContaining({ name: 'UnsupportedFormat' }),
    );
    expect(DEFAULT_CHUNK_SIZE % 4096).toBe(0);
  });
});
