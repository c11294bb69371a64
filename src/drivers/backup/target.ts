/**
 * An opened object target: its store, chunk settings and (lazily) its key.
 */
import type { Compression } from './config.js';
import { loadKey } from './codec.js';
import { DEFAULT_CHUNK_SIZE } from './format.js';
import { closeStore, openStore, type ObjectTarget } from './stores/registry.js';
import type { ObjectStore } from './stores/store.js';

/**
 * An opened object target: its store, chunk settings and (lazily) its key. The key is read
 * from the file or variable the config names on first use, so restoring an unencrypted
 * backup does not need a key to be present.
 */
export class ChunkedTarget {
  private keyPromise: Promise<Buffer | null> | null = null;

  constructor(
    readonly config: ObjectTarget,
    readonly store: ObjectStore,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {}

  static async open(config: ObjectTarget, env: NodeJS.ProcessEnv = process.env): Promise<ChunkedTarget> {
    return new ChunkedTarget(config, await openStore(config, env), env);
  }

  get name(): string {
    return this.config.name;
  }
  get chunkSize(): number {
    return this.config.chunkSize ?? DEFAULT_CHUNK_SIZE;
  }
  get compression(): Compression {
    return this.config.compression;
  }
  get encrypts(): boolean {
    return this.config.encryption !== undefined;
  }

  /** Throws a StoreUnusable naming what is wrong when the store cannot be used at all; see ObjectStore.ready. */
  ready(): Promise<{ created: boolean }> {
    return this.store.ready();
  }

  /** The configured key, or null when the target does not encrypt. Throws MissingKey/InvalidKey. */
  key(): Promise<Buffer | null> {
    this.keyPromise ??= loadKey(this.config.encryption, this.config.name, this.env);
    return this.keyPromise;
  }

  close(): void {
    closeStore(this.store);
  }
}
