/**
 * Small concurrency and I/O tools of the chunked engine: a semaphore, in-order completion marks, a bounded task runner, positional reads, and which chunks of an image may hold data.
 */
import { stat, type FileHandle } from 'node:fs/promises';
import { execa } from 'execa';
import { Cancelled, GbackupError, InvalidInput } from '../../errors.js';
import { idSchema } from '../../names.js';
import { rawDataExtents, type Extent } from '../../copy/extents.js';
import type { ChunkBuffer } from './codec.js';
import { ShortRead } from './errors.js';

export class Semaphore {
  private waiters: (() => void)[] = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((res) => this.waiters.push(res));
  }
  release(): void {
    const w = this.waiters.shift();
    if (w) w();
    else this.free++;
  }
}

/** Lowest index below which every flag is set, advanced as flags are set in any order. */
export class DoneMarks {
  private readonly marks: Uint8Array;
  ptr: number;
  constructor(
    readonly count: number,
    start: number,
  ) {
    this.marks = new Uint8Array(count);
    this.ptr = Math.min(start, count);
  }
  set(i: number): void {
    this.marks[i] = 1;
    while (this.ptr < this.count && this.marks[this.ptr] === 1) this.ptr++;
  }
}

export const asError = (e: unknown): Error => (e instanceof Error ? e : new Error(String(e)));
/** The error's class says a retry cannot cure it (errors.ts). */
export const isPermanent = (e: Error): boolean => e instanceof GbackupError && (e.constructor as typeof GbackupError).permanent;

/**
 * Calls fn(0) .. fn(count - 1), at most `limit` at a time. The first error stops new calls;
 * the ones running are waited for (so nothing still runs, or holds a buffer, once this
 * settles) and then that error is thrown.
 */
export async function forEachLimited(limit: number, count: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const state: { failure: Error | null } = { failure: null };
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(limit, count)) }, async () => {
      while (state.failure === null && next < count) {
        const i = next++;
        try {
          await fn(i);
        } catch (e) {
          state.failure ??= asError(e);
        }
      }
    }),
  );
  if (state.failure) throw state.failure;
}

export function abortError(signal: AbortSignal, what: string): Error {
  return signal.reason instanceof Error ? signal.reason : new Cancelled(`${what} cancelled`);
}

export async function readFully(fh: FileHandle, buf: ChunkBuffer, len: number, position: number, source: string): Promise<void> {
  const view = new Uint8Array(buf, 0, len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(view, got, len - got, position + got);
    if (bytesRead === 0) throw new ShortRead(`${source} ended at byte ${position + got}, before the backup size`);
    got += bytesRead;
  }
}

/** Size of a regular file or a block device. */
export async function deviceSize(path: string, fh: FileHandle): Promise<number> {
  const st = await fh.stat();
  if (st.isBlockDevice()) {
    const { stdout } = await execa('blockdev', ['--getsize64', path]);
    return Number(stdout.trim());
  }
  return st.size;
}

/**
 * Which chunks may hold data, from the volume's data extents (unmerged: the dd engine
 * merges nearby extents to save dd runs, while here every whole chunk inside a hole is a
 * read saved). `known` comes from the volume's connector (null: it cannot tell); without
 * it, a regular file as source is asked itself. Null when everything must be read.
 */
export async function chunksWithData(known: Extent[] | null | undefined, source: string, size: number, chunkSize: number): Promise<Uint8Array | null> {
  return chunksOverlapping(await sourceExtents(known, source, size), size, chunkSize);
}

/** The source's data extents: `known` (null: nobody can tell), or when undefined, asked of the source if it is a regular file. */
export async function sourceExtents(known: Extent[] | null | undefined, source: string, size: number): Promise<Extent[] | null> {
  if (known !== undefined) return known;
  return (await stat(source)).isFile() ? await rawDataExtents(source, size) : null;
}

/** Marks of the chunks that `extents` touch (see chunksWithData); null when `extents` is. */
export function chunksOverlapping(extents: Extent[] | null, size: number, chunkSize: number): Uint8Array | null {
  if (extents === null) return null;
  const count = Math.ceil(size / chunkSize);
  const marks = new Uint8Array(count);
  for (const e of extents) {
    const end = Math.min(size, e.end);
    for (let i = Math.floor(e.start / chunkSize); i < Math.min(count, Math.ceil(end / chunkSize)); i++) marks[i] = 1;
  }
  return marks;
}

/** Ids become object keys: held to the API's id rules, with the rule that was broken in the message. */
export function checkId(what: string, id: string): void {
  const r = idSchema(what).safeParse(id);
  if (!r.success) throw new InvalidInput(r.error.issues[0]?.message ?? `${what} is not a valid id`);
}

export const chunkLabel = (offset: number, sha: string) => `chunk at offset ${offset} (sha256 ${sha.slice(0, 16)}…)`;
