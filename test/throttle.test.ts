/** The node-wide copy limit is shared fairly; a copy's own limit can only lower it. */
import { describe, expect, it } from 'vitest';
import { Throttle } from '../src/copy/throttle.js';
import { MiB } from '../src/size.js';

async function consume(t: Throttle, untilMs: number, slice: number): Promise<number> {
  let bytes = 0;
  while (performance.now() < untilMs) {
    await t.acquire(slice);
    bytes += slice;
  }
  return bytes;
}

describe('Throttle', () => {
  it('shares a node limit fairly between concurrent copies and holds the total to it', async () => {
    const node = new Throttle(40 * MiB);
    const a = node.forCopy(() => undefined);
    const b = node.forCopy(() => undefined);
    const start = performance.now();
    const end = start + 1500;
    const [ba, bb] = await Promise.all([consume(a, end, node.sliceBytes(MiB)!), consume(b, end, node.sliceBytes(MiB)!)]);
    const seconds = (performance.now() - start) / 1000;
    const total = (ba + bb) / seconds;
    expect(total).toBeLessThanOrEqual(40 * MiB * 1.25);
    expect(total).toBeGreaterThan(40 * MiB * 0.5);
    expect(Math.abs(ba - bb)).toBeLessThanOrEqual(node.sliceBytes(MiB)! * 2);
  });

  it("takes the lower of the node's and the copy's own limit, and follows changes of the own limit", () => {
    const node = new Throttle(100 * MiB);
    let own: number | undefined = 10 * MiB;
    const copy = node.forCopy(() => own);
    expect(copy.limit()).toBe(10 * MiB);
    own = 500 * MiB;
    expect(copy.limit()).toBe(100 * MiB);
    own = undefined;
    expect(copy.limit()).toBe(100 * MiB);
    expect(new Throttle(undefined).forCopy(() => undefined).limit()).toBeUndefined();
  });
});
