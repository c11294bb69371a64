/**
 * Object stores: the few operations the chunked format needs. Objects are written whole
 * and atomically (a reader sees the old object, no object, or the complete new one),
 * which is what lets "metadata exists" mean "backup complete" and "chunk exists" mean
 * "chunk stored". Each store lives in its own folder (posix/, s3/) with its config
 * schema; registry.ts lists them.
 */
import { InvalidObjectKey } from '../errors.js';

export interface ObjectStore {
  /** Where the objects live, for messages: `posix:/srv/vault`, `s3://bucket/prefix/`. */
  readonly location: string;
  /**
   * Throws a StoreUnusable naming the target and what is wrong when the store cannot be
   * used at all (no such bucket or directory, access denied, read-only, unreachable);
   * one cheap request, so a backup can refuse before it changes anything.
   */
  ready(): Promise<{ created: boolean }>;
  put(key: string, body: Buffer, opts?: PutOptions): Promise<void>;
  /** Throws ObjectNotFound when there is no such object. */
  get(key: string): Promise<Buffer>;
  /**
   * Like get, into the buffer `alloc(length)` returns (a pool's): the data path reads every
   * chunk this way, so no chunk costs a fresh allocation. `alloc` may throw to refuse an
   * object of that length (the read is then abandoned and the error thrown).
   */
  getInto<B extends ArrayBufferLike>(key: string, alloc: (length: number) => B): Promise<{ buffer: B; length: number }>;
  exists(key: string): Promise<boolean>;
  /** The object's size in bytes, or null when there is no such object. */
  sizeOf(key: string): Promise<number | null>;
  /** Idempotent: deleting a missing object is success. */
  delete(key: string): Promise<void>;
  /** Every key starting with `prefix`, in no particular order. */
  list(prefix: string): AsyncIterable<string>;
  /** Makes the store's container (an S3 bucket) when it is missing; true when made. Absent where there is nothing to make. */
  createContainer?(): Promise<boolean>;
  /** Set when the store locks what backups write (S3 Object Lock); absent otherwise. */
  readonly objectLock?: ObjectLockPolicy;
  /** The object's current lock, or null when it has none (or there is no such object). Only where objectLock is. */
  retention?(key: string): Promise<Retention | null>;
  /**
   * Locks an existing object until at least `until`: one read, and a write only when its
   * lock ends sooner (a lock is never shortened). False when there is no such object.
   */
  extendRetention?(key: string, until: Date): Promise<boolean>;
  /** Throws a StoreUnusable naming bucket and target when the store cannot lock objects as configured. */
  checkObjectLock?(): Promise<void>;
  /** Releases what the store holds open (sockets); absent when nothing is. */
  close?(): void;
}

export interface PutOptions {
  /** CRC-32 of the body, computed off the main thread: the store checks the upload with it. */
  crc32?: number | null;
  /** Lock the object until then (only where the store has objectLock; ignored elsewhere). */
  retainUntil?: Date;
}

export interface ObjectLockPolicy {
  mode: 'GOVERNANCE' | 'COMPLIANCE';
  retainDays: number;
}

export interface Retention {
  mode: 'GOVERNANCE' | 'COMPLIANCE';
  retainUntil: Date;
}

const DAY_MS = 86_400_000;

/** When a backup started at `from` stops being locked: the same for every attempt of it, so a retry re-locks nothing. */
export function retainUntilFor(policy: ObjectLockPolicy, from: Date): Date {
  return new Date(from.getTime() + policy.retainDays * DAY_MS);
}

const SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/;

/**
 * Keys become file paths and URL paths, so they are held to a small alphabet: segments of
 * [A-Za-z0-9._-] not starting with a dot (so `.`, `..` and the posix store's `.tmp`
 * directory are impossible), joined by single slashes, no leading slash.
 */
export function checkKey(key: string): string {
  if (key.length === 0 || key.length > 512) throw new InvalidObjectKey(`object key must be 1-512 characters, got ${key.length}`);
  if (key.startsWith('/')) throw new InvalidObjectKey(`object key '${key}' must not start with '/'`);
  if (key.includes('..')) throw new InvalidObjectKey(`object key '${key}' must not contain '..'`);
  for (const s of key.split('/')) {
    if (!SEGMENT.test(s)) throw new InvalidObjectKey(`object key '${key}' may only contain names of [A-Za-z0-9._-] (not starting with '.') separated by single '/'`);
  }
  return key;
}

/** All keys under a prefix, collected. */
export async function listAll(store: ObjectStore, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const k of store.list(prefix)) out.push(k);
  return out;
}
