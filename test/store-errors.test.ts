/**
 * How the stores name their permanent failures, one by one: the S3 error codes MinIO
 * cannot be made to answer here (AccessDenied without a second user, a full disk) are
 * handed to the classifier as the SDK would raise them; the posix ones come from the
 * kernel (an immutable directory gives EPERM even to root). What must stay retryable
 * (throttling, 5xx, timeouts) is checked to stay so. The end-to-end run of each failure
 * through Temporal is test/permanent-errors.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { PosixStore } from '../src/drivers/backup/stores/posix/store.js';
import { S3Store } from '../src/drivers/backup/stores/s3/store.js';
import { StoreAccessDenied, StoreFull, StoreNotFound, StoreUnusable } from '../src/drivers/backup/errors.js';
import { DAMAGED_BACKUP_TYPES, INPUT_ERROR_TYPES, NON_RETRYABLE_ERROR_TYPES } from '../src/error-registry.js';
import { logLine } from '../src/workers/logging.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'gbackup-store-errors-'));
});
afterAll(async () => {
  await execa('chattr', ['-R', '-i', dir], { reject: false });
  rmSync(dir, { recursive: true, force: true });
});

const s3 = new S3Store({ target: 'cold', endpoint: 'http://s3.example:9000', region: 'us-east-1', bucket: 'archive', prefix: 'p', forcePathStyle: true, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } });
const sdkError = (name: string, status: number, message = name) => Object.assign(new Error(message), { name, $metadata: { httpStatusCode: status } });

describe('S3 errors', () => {
  it.each([
    ['NoSuchBucket', 404, StoreNotFound, /target 'cold': bucket 'archive' at http:\/\/s3\.example:9000 does not exist; create it, run 'gbackup target check cold --create-bucket'/],
    ['AccessDenied', 403, StoreAccessDenied, /target 'cold': cannot write object 'k': access denied to bucket 'archive' at http:\/\/s3\.example:9000 \(AccessDenied/],
    ['InvalidAccessKeyId', 403, StoreAccessDenied, /does not know the access key id/],
    ['SignatureDoesNotMatch', 403, StoreAccessDenied, /refuses the secret key/],
    ['XMinioStorageFull', 507, StoreFull, /has no space left \(XMinioStorageFull\)/],
    ['Unknown', 403, StoreAccessDenied, /access denied to bucket 'archive' .*\(HTTP 403\)/],
  ] as const)('%s (HTTP %i) is a %s naming the target and the bucket', (name, status, cls, message) => {
    const c = s3.classify(sdkError(name, status), "write object 'k'");
    expect(c).toBeInstanceOf(cls);
    expect(c).toBeInstanceOf(StoreUnusable);
    expect((c as StoreUnusable).target).toBe('cold');
    expect((c as Error).message).toMatch(message);
    expect(NON_RETRYABLE_ERROR_TYPES).toContain((c as Error).name);
  });

  it.each([
    ['SlowDown', 503],
    ['ServiceUnavailable', 503],
    ['InternalError', 500],
    ['RequestTimeout', 400],
    ['TimeoutError', 0],
  ] as const)('%s (HTTP %i) stays what it is, and is retried', (name, status) => {
    const e = sdkError(name, status);
    expect(s3.classify(e, 'read')).toBe(e);
    expect(NON_RETRYABLE_ERROR_TYPES).not.toContain(name);
  });
});

describe('posix errors', () => {
  it('a directory the worker may not write in (EPERM: immutable, also for root) is StoreAccessDenied', async () => {
    const root = join(dir, 'locked');
    mkdirSync(root);
    await execa('chattr', ['+i', root]);
    const store = new PosixStore(root, 'locked');
    const err = await store.put('chunks/x/ab/abc', Buffer.from('x')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreAccessDenied);
    expect((err as Error).message).toMatch(new RegExp(`target 'locked': cannot write object 'chunks/x/ab/abc' in ${root}: permission denied \\(EPERM\\)`));
    await execa('chattr', ['-i', root]);
    // Once writable again, the same store works (nothing was cached).
    await store.put('chunks/x/ab/abc', Buffer.from('x'));
    expect((await store.get('chunks/x/ab/abc')).toString()).toBe('x');
  });

  it('a missing root is StoreNotFound for every operation, and is never created', async () => {
    const root = join(dir, 'absent');
    const store = new PosixStore(root, 'absent');
    for (const op of [() => store.put('a', Buffer.from('x')), () => store.get('a'), () => store.sizeOf('a'), () => store.ready(), async () => store.list('')[Symbol.asyncIterator]().next()]) {
      await expect(op()).rejects.toBeInstanceOf(StoreNotFound);
    }
    await expect(store.delete('a')).rejects.toBeInstanceOf(StoreNotFound);
    await expect(execa('test', ['-e', root])).rejects.toThrow();
  });

  it('a missing object in an existing root is still just a missing object', async () => {
    const root = join(dir, 'present');
    mkdirSync(root);
    const store = new PosixStore(root, 'present');
    expect(await store.sizeOf('nope')).toBeNull();
    await expect(store.get('nope')).rejects.toMatchObject({ name: 'ObjectNotFound' });
    await store.delete('nope');
  });
});

describe('the error registry', () => {
  it('derives the three lists from what each class declares', () => {
    for (const n of ['StoreNotFound', 'StoreAccessDenied', 'StoreReadOnly', 'StoreFull', 'StoreUnreachable', 'BackendFull', 'VolumeExists', 'MissingSearchAttributes', 'InvalidInput', 'ChunkCorrupt']) {
      expect(NON_RETRYABLE_ERROR_TYPES).toContain(n);
    }
    // Retryable on purpose: a lagging listing, a dd hiccup, a transient fault.
    for (const n of ['ObjectNotFound', 'CopyFailed', 'TransientFault', 'Cancelled']) expect(NON_RETRYABLE_ERROR_TYPES).not.toContain(n);
    // A store or backend that cannot be used is a failed operation (exit 1), not bad input (exit 2).
    for (const n of ['StoreNotFound', 'BackendFull', 'MissingSearchAttributes', 'NoEligibleNode']) expect(INPUT_ERROR_TYPES.has(n)).toBe(false);
    for (const n of ['InvalidInput', 'VolumeNotFound', 'SameStorageTarget', 'WrongKey']) expect(INPUT_ERROR_TYPES.has(n)).toBe(true);
    expect([...DAMAGED_BACKUP_TYPES].sort()).toEqual(['BackupChainBroken', 'BackupCorrupt', 'ChunkCorrupt', 'ChunkMissing', 'DecryptionFailed']);
  });
});

describe('worker log lines', () => {
  it('drop the warnings that describe the design, keep the rest', () => {
    const at = BigInt(Date.UTC(2026, 11, 2)) * 1_000_000n;
    expect(logLine({ level: 'WARN', message: 'No workflows registered, not polling for workflow tasks', timestampNanos: at })).toBeNull();
    expect(logLine({ level: 'WARN', message: 'Activity failed', meta: { attempt: 2 }, timestampNanos: at })).toBe('2026-12-02T00:00:00.000Z [WARN] Activity failed { attempt: 2 }\n');
  });
});
