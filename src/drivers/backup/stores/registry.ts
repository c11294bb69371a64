/**
 * Every object store gbackup can back up to, by its `driver` name in the config. Adding
 * one is a folder beside these and one line in STORES.
 */
import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import type { StorePlugin } from './plugin.js';
import type { ObjectStore } from './store.js';
import { posix } from './posix/index.js';
import { s3 } from './s3/index.js';

export const STORES = { posix, s3 } as const;

type Schemas = (typeof STORES)[keyof typeof STORES]['schema'];
/** Every store's config schema: the object-target members of the config's `targets` union. */
export const OBJECT_TARGET_SCHEMAS = Object.values(STORES).map((s) => s.schema) as unknown as [Schemas, ...Schemas[]];
export const ObjectTarget = z.discriminatedUnion('driver', OBJECT_TARGET_SCHEMAS);
export type ObjectTarget = z.infer<typeof ObjectTarget>;

const plugin = (t: ObjectTarget): StorePlugin => STORES[t.driver];

/** The store a target config describes; credentials are read here, on the worker, never passed in. */
export function openStore(target: ObjectTarget, env: NodeJS.ProcessEnv = process.env): Promise<ObjectStore> {
  return plugin(target).open(target, env);
}

/** Releases what a store holds open (an S3 client's sockets). */
export function closeStore(store: ObjectStore): void {
  store.close?.();
}

/** The same target with its relative paths (its own, and encryption.keyFile) made absolute against `baseDir`. */
export function resolveTargetPaths<T extends ObjectTarget>(target: T, baseDir: string): T {
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));
  const out = plugin(target).resolvePaths(target, abs) as T;
  return out.encryption?.keyFile !== undefined ? { ...out, encryption: { ...out.encryption, keyFile: abs(out.encryption.keyFile) } } : out;
}

/** The local directory an object target writes into (null for a remote store): what the same-storage rule compares. */
export const localDirectory = (target: ObjectTarget): string | null => plugin(target).localDirectory(target);

/** Where a target's objects go, in one line. */
export const describeTarget = (target: ObjectTarget): string => plugin(target).describe(target);
