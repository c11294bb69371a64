/**
 * Waiting for several steps at once without leaving any in flight. Pure (no Temporal, no
 * Node APIs): workflows and activities both use it.
 */

/** Runs every step to its end (no step is left in flight), then fails with the first failure, if any. */
export async function settleAll<T extends readonly unknown[]>(steps: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const results = await Promise.allSettled(steps);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}
