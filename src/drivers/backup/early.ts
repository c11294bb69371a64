/**
 * An incremental's first chunks, read and hashed while the backup is still consulting the
 * store.
 *
 * Before its first read a backup makes its round trips to the store (is the backup already
 * complete, a pending record of an earlier attempt, the parent's chain, its own pending
 * record) and asks xfs_io where a file source holds data: 40-60 ms on the bench, during
 * which disk and codec threads idle. An incremental reads and hashes the whole volume and
 * uploads little, so it is bound by read + sha256 (2 cores: the codec threads, the kernel's
 * copies and the store share them); those milliseconds are worth ~10% of a 1 GiB
 * incremental. So the volume is read and hashed from its start meanwhile, into the read
 * buffers the backup uses next. Once the backup knows its parent it takes the hashes:
 * chunks that are zeros or equal to the parent's need nothing more; any other is read
 * again (from the page cache, it was just read) and encoded as usual.
 *
 * Nothing here decides anything: the hashes are a cache of what a read would give. It is
 * not used where it could read what the backup would not (a throttled or resumed backup,
 * one given changed ranges), and errors only stop it early (the backup reads for itself).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { BufferPool, type CodecPool } from './codec.js';
import { readFully } from './pool.js';

export class EarlyHashes {
  /** Read buffers: the backup's own read pool, handed over once this stops. */
  readonly pool: BufferPool;
  private readonly hashes = new Map<number, Buffer | null>();
  private readonly count: number;
  private next = 0;
  private stopped = false;
  private readonly running: Promise<void>;
  private halted: Promise<void> | null = null;

  constructor(
    private readonly source: string,
    private readonly size: number,
    readonly chunkSize: number,
    private readonly codec: CodecPool,
    readers: number,
    buffers: number,
  ) {
    this.count = Math.ceil(size / chunkSize);
    this.pool = new BufferPool(buffers, chunkSize);
    this.running = this.run(readers);
  }

  private async run(readers: number): Promise<void> {
    let fh: FileHandle;
    try {
      fh = await open(this.source, 'r');
    } catch {
      return;
    }
    const hashing = new Set<Promise<void>>();
    try {
      await Promise.all(
        Array.from({ length: readers }, async () => {
          while (!this.stopped && this.next < this.count) {
            const buf = await this.pool.take();
            if (this.stopped) {
              this.pool.give(buf);
              return;
            }
            const i = this.next++;
            const len = Math.min(this.chunkSize, this.size - i * this.chunkSize);
            try {
              await readFully(fh, buf, len, i * this.chunkSize, this.source);
            } catch {
              this.pool.give(buf);
              this.stopped = true;
              return;
            }
            // Hashed while the next chunk is read; the buffer returns when the hash is in.
            const h: Promise<void> = this.codec
              .hash(buf, len)
              .then(
                (r) => void this.hashes.set(i, r.sha),
                () => void (this.stopped = true),
              )
              .finally(() => {
                this.pool.give(buf);
                hashing.delete(h);
              });
            hashing.add(h);
          }
        }),
      );
    } finally {
      while (hashing.size > 0) await Promise.all([...hashing]);
      await fh.close().catch(() => undefined);
    }
  }

  /**
   * Stops reading; once what is in flight is hashed (and the source closed), the sha256 of
   * every chunk read, by index (null: all zeros), or null when the backup's chunk size is
   * not the one assumed here. Idempotent.
   */
  async halt(chunkSize: number = this.chunkSize): Promise<Map<number, Buffer | null> | null> {
    this.stopped = true;
    this.halted ??= this.running;
    await this.halted;
    return chunkSize === this.chunkSize ? this.hashes : null;
  }
}
