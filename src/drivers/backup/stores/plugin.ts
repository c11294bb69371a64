/**
 * What an object store plugs in with: its config schema and how to open it. A new store
 * is a folder `stores/<name>/` holding config.ts (the schema), store.ts (an ObjectStore)
 * and index.ts (this entry), plus one line in registry.ts. Nothing else names it.
 */
import type { z } from 'zod';
import type { ObjectStore } from './store.js';

/** A store's config schema: a strict object with a literal `driver` and the chunked options spread in. */
export type StoreSchema = z.ZodObject<{ driver: z.ZodLiteral<string>; name: z.ZodType<string> } & z.ZodRawShape>;

export interface StorePlugin<S extends StoreSchema = StoreSchema> {
  schema: S;
  /** Opens the store; secrets (credentials) are read here, on the worker, from files or the environment. */
  open(config: z.infer<S>, env: NodeJS.ProcessEnv): Promise<ObjectStore>;
  /** The config with its own relative paths made absolute (`abs` resolves against the config file's directory). */
  resolvePaths(config: z.infer<S>, abs: (p: string) => string): z.infer<S>;
  /** The local directory the store writes into, which the same-storage rule compares with every backend; null for a remote store. */
  localDirectory(config: z.infer<S>): string | null;
  /** Where its objects go, in one line, for `target list` and messages. */
  describe(config: z.infer<S>): string;
}

/** Keeps the schema's type in the entry, so the registry can build a typed union. */
export const defineStore = <S extends StoreSchema>(p: StorePlugin<S>): StorePlugin<S> => p;
