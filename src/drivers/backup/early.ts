/**
 * An incremental's first chunks, read and hashed while the backup is still consulting the
 * store.
 *
 * Before its first read a backup makes its round trips to the store (is the backup already
 * complete, a pending record of an earlier attempt, the parent's chain, its own pending
 * record) and asks xfs_io where a file source holds data: 50-80 ms on the bench (cold
 * caches, 2 cores shared with MinIO), while the disk idles. An incremental reads and
 * hashes the whole volume and uploads little, so it is bound by read + sha256. So the
 * volume is read and hashed from its start meanwhile (6-9 chunks of 4 MiB on the bench),
 * into the read buffers the backup uses next. Once the backup knows its parent it takes the
 * hashes: chunks that are zeros or equal to the parent's need nothing more; any other is
 * read again (from the page cache, it was just read) and encoded as usual.
 *
 * Gently: one read and one hash at a time. Reading and hashing on both codec threads
 * slowed the store's round trips (MinIO wants a core too) by more than it saved: the
 * preamble went from ~55 to ~130 ms. One at a time gained 2-4% of a 1 GiB incremental
 * (medians of 20-40 interleaved runs each, on a loaded machine: within its noise).
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
    buffers: number,
  ) {
    this.count = Math.ceil(size / chunkSize);
    // The backup's read pool (handed over at halt()); this uses two of its buffers.
    this.pool = new BufferPool(buffers, chunkSize);
    this.running = this.run();
  }

  /**
   * One read and one hash at a time (the next chunk is read while the last is hashed): the
   * store's round trips, which this overlaps, need a core too; hashing on both codec
   * threads made them slower by more than it gained.
   */
  private async run(): Promise<void> {
    let fh: FileHandle;
    try {
      fh = await open(this.source, 'r');
    } catch {
      return;
    }
    let hashing: Promise<void> = Promise.resolve();
    try {
      while (!this.stopped && this.next < this.count) {
        const buf = await this.pool.take();
        const i = this.next++;
        const len = Math.min(this.chunkSize, this.size - i * this.chunkSize);
        try {
          await readFully(fh, buf, len, i * this.chunkSize, this.source);
        } catch {
          this.pool.give(buf);
          return;
        }
        await hashing;
        if (this.stopped) {
          this.pool.give(buf);
          return;
        }
        hashing = this.codec.hash(buf, len).then(
          (r) => {
            this.hashes.set(i, r.sha);
            this.pool.give(buf);
          },
          () => {
            this.stopped = true;
            this.pool.give(buf);
          },
        );
      }
    } finally {
      await hashing;
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
