/**
 * Direct I/O (O_DIRECT) for a restore's writes to the volume, and the aligned buffers it needs.
 *
 * Written through the page cache, a restore spends a core-second per GiB in the kernel
 * copying chunks into the cache (and flushing them at each fdatasync under the file's
 * locks), on a machine where the codec threads and the object store want the same cores.
 * Written with O_DIRECT, the device reads the chunk from the buffer it was decoded into:
 * on the bench (1 GiB, 2 cores shared with MinIO) the kernel time of the writes fell from
 * ~1.2 s to ~0.1 s. Reads are another matter: a cold virtio disk read 1 GiB in 0.6-0.9 s
 * through the page cache (its readahead keeps more of the device busy) and in 0.9-1.3 s
 * with O_DIRECT, 4-32 requests of 0.5-8 MiB in flight; so backups read through the cache.
 *
 * O_DIRECT wants memory, file offsets and lengths aligned to the device's logical block
 * size. Offsets are (chunk sizes are multiples of 4 KiB); the memory of a SharedArrayBuffer
 * is only 16-byte aligned, and JavaScript cannot see its address. So the buffers are carved
 * from one slab, and the slab's alignment is found once by trying each 16-byte step with a
 * one-block write (what the kernel refuses it refuses with EINVAL, having written nothing).
 * Anything direct I/O refuses later (a short last chunk, a file system that will not have
 * it) is written through the ordinary descriptor instead: slower, never wrong.
 */
import { constants, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import type { ChunkBuffer } from './codec.js';

/** Alignment asked of direct I/O's memory, offsets and lengths: the largest logical block size in common use. */
export const DIRECT_ALIGN = 4096;

/** `size` bytes of `buf` from `off`: one buffer of a SlabPool. */
export interface SlabBuffer {
  buf: ChunkBuffer;
  off: number;
}

const errno = (e: unknown) => (e as NodeJS.ErrnoException | undefined)?.code;

/**
 * `count` buffers of `size` bytes (a multiple of DIRECT_ALIGN) in one SharedArrayBuffer,
 * each starting `base` bytes past a multiple of `size`: aligned for direct I/O once
 * alignWith() has found `base`. Like BufferPool, buffers are handed out on first use (the
 * slab's untouched pages cost no memory) and every one taken must be given back once.
 */
export class SlabPool {
  private readonly slab: SharedArrayBuffer;
  private base = 0;
  private readonly free: number[] = [];
  private readonly waiters: ((b: SlabBuffer) => void)[] = [];
  private made = 0;
  private started = false;

  constructor(
    readonly count: number,
    readonly size: number,
  ) {
    this.slab = new SharedArrayBuffer(count * size + DIRECT_ALIGN);
  }

  /**
   * Finds where the buffers must start for the kernel to take them for direct I/O: `probe`
   * does one DIRECT_ALIGN-byte transfer from or to the view it is given (all zeros) and
   * throws what the kernel said. False when no offset is accepted (the descriptor does not
   * do direct I/O, or not at this alignment); the buffers then stay where they are.
   * Only before the first take().
   */
  alignWith(probe: (block: Uint8Array) => void): boolean {
    if (this.started) throw new Error('SlabPool.alignWith() after the first take()');
    const all = new Uint8Array(this.slab);
    for (let d = 0; d < DIRECT_ALIGN; d += 16) {
      try {
        probe(all.subarray(d, d + DIRECT_ALIGN));
        this.base = d;
        return true;
      } catch (e) {
        if (errno(e) !== 'EINVAL') return false;
      }
    }
    return false;
  }

  take(): Promise<SlabBuffer> {
    this.started = true;
    const i = this.free.pop() ?? (this.made < this.count ? this.made++ : null);
    if (i !== null) return Promise.resolve(this.at(i));
    return new Promise((res) => this.waiters.push(res));
  }

  give(b: SlabBuffer): void {
    const w = this.waiters.shift();
    if (w) w(b);
    else this.free.push((b.off - this.base) / this.size);
  }

  /** Buffers not handed out right now (for tests: a finished operation gave back all it took). */
  get idle(): number {
    return this.free.length + (this.count - this.made);
  }

  private at(i: number): SlabBuffer {
    return { buf: this.slab, off: this.base + i * this.size };
  }
}

/**
 * A second descriptor of `path` opened for writing with O_DIRECT, or null where the system or
 * the file system will not have it (no O_DIRECT, tmpfs, some FUSE and network file systems).
 * GBACKUP_DIRECT_IO=0 in the environment turns direct I/O off.
 */
export async function openDirectWriter(path: string): Promise<FileHandle | null> {
  if (process.env.GBACKUP_DIRECT_IO === '0' || constants.O_DIRECT === undefined) return null;
  try {
    return await open(path, constants.O_RDWR | constants.O_DIRECT);
  } catch {
    return null;
  }
}

/**
 * Aligns `pool` for direct writes to `fh`, probing with one block of zeros written at
 * `position`: a place the caller is about to write anyway (or that reads zeros already), so
 * the probe changes nothing that is not rewritten before it counts as restored.
 */
export function alignForWrites(pool: SlabPool, fh: FileHandle, position: number): boolean {
  return pool.alignWith((block) => writeSync(fh.fd, block, 0, block.length, position));
}

/** Whether a write of `len` bytes at `position` can go through O_DIRECT (the buffer itself being aligned). */
export const directable = (len: number, position: number) => len % DIRECT_ALIGN === 0 && position % DIRECT_ALIGN === 0;

/** An error that says direct I/O was refused (rather than the write failing). */
export const refusedDirect = (e: unknown) => errno(e) === 'EINVAL';
