/**
 * A bandwidth limit shared by the copies on one node (Cinder's volume_copy_bps_limit).
 *
 * Copies take the budget in equal slices, first come first served, so concurrent copies
 * interleave slice by slice and share the limit fairly. A copy may carry its own, lower
 * limit (changed while it runs through the backup workflow's `throttle` update).
 */
import { setTimeout as sleep } from 'node:timers/promises';

/** Slices last about this long at the limit: short enough to react to a change. */
const SLICE_SECONDS = 0.25;

export class Throttle {
  private nextFree = 0;

  constructor(
    private readonly bps: number | undefined,
    /** A further limit of just this copy, read at every slice so it can change mid-copy. */
    private readonly ownLimit?: () => number | undefined,
    private readonly parent?: Throttle,
  ) {}

  /** The limit in force, or undefined when there is none. */
  limit(): number | undefined {
    const own = this.ownLimit?.() ?? this.bps;
    const parent = this.parent?.limit();
    if (own === undefined) return parent;
    return parent === undefined ? own : Math.min(own, parent);
  }

  /** A child throttle for one copy: honours this node-wide limit and its own. */
  forCopy(ownLimit: () => number | undefined): Throttle {
    return new Throttle(undefined, ownLimit, this);
  }

  sliceBytes(blockSize: number): number | undefined {
    const l = this.limit();
    if (l === undefined) return undefined;
    return Math.max(blockSize, Math.floor((l * SLICE_SECONDS) / blockSize) * blockSize);
  }

  async acquire(bytes: number, signal?: AbortSignal): Promise<void> {
    await this.parent?.acquire(bytes, signal);
    const l = this.ownLimit?.() ?? this.bps;
    if (l === undefined) return;
    const now = performance.now();
    const start = Math.max(now, this.nextFree);
    this.nextFree = start + (bytes / l) * 1000;
    if (start > now) await sleep(start - now, undefined, { signal });
  }
}
