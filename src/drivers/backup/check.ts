/**
 * `gbackup target check`: can this host use an object target at all? Reaches the store,
 * lists, writes, reads back and deletes one small probe object, and says which step
 * failed and why, in the words of the store's classified errors (StoreNotFound, ...).
 */
import { randomBytes } from 'node:crypto';
import type { ChunkedTarget } from './target.js';

export type CheckStepName = 'reach' | 'lock' | 'list' | 'write' | 'read' | 'delete';

export interface CheckStep {
  step: CheckStepName;
  ok: boolean;
  ms: number;
  /** The error's type and message when the step failed. */
  error?: { type: string; message: string };
}

export interface TargetCheck {
  target: string;
  location: string;
  ok: boolean;
  /** The bucket was missing and was made, because the check was asked to. */
  createdBucket: boolean;
  steps: CheckStep[];
}

/** Probe objects live apart from backups, so a rebuild or a GC never mistakes one for data. */
const PROBE_PREFIX = 'probe/';

export async function checkTarget(target: ChunkedTarget): Promise<TargetCheck> {
  const steps: CheckStep[] = [];
  let createdBucket = false;
  const run = async (step: CheckStepName, fn: () => Promise<void>): Promise<boolean> => {
    const t0 = performance.now();
    try {
      await fn();
      steps.push({ step, ok: true, ms: Math.round(performance.now() - t0) });
      return true;
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      steps.push({ step, ok: false, ms: Math.round(performance.now() - t0), error: { type: err.name, message: err.message } });
      return false;
    }
  };
  const store = target.store;
  const key = `${PROBE_PREFIX}${randomBytes(8).toString('hex')}`;
  const body = randomBytes(1024);
  const done = async () => ({ target: target.name, location: store.location, ok: steps.every((s) => s.ok), createdBucket, steps });

  if (!(await run('reach', async () => void (createdBucket = (await target.ready()).created)))) return done();
  // A target configured with objectLock on a bucket without it would fail every locked write.
  const checkLock = store.objectLock ? store.checkObjectLock?.bind(store) : undefined;
  if (checkLock && !(await run('lock', checkLock))) return done();
  if (!(await run('list', async () => void (await store.list(PROBE_PREFIX)[Symbol.asyncIterator]().next())))) return done();
  if (!(await run('write', () => store.put(key, body)))) return done();
  await run('read', async () => {
    const back = await store.get(key);
    if (!back.equals(body)) throw new Error(`probe object '${key}' read back ${back.length} bytes that differ from the ${body.length} written`);
  });
  // Deleted whatever the read said: a probe must not stay behind.
  await run('delete', async () => {
    await store.delete(key);
    if (await store.exists(key)) throw new Error(`probe object '${key}' is still there after its delete`);
  });
  return done();
}

/** One line for an operator: what failed, or that everything worked. */
export function describeCheck(c: TargetCheck): string {
  const failed = c.steps.find((s) => !s.ok);
  if (!failed) return `target '${c.target}' (${c.location}): ok (${c.steps.map((s) => `${s.step} ${s.ms} ms`).join(', ')})${c.createdBucket ? '; bucket created' : ''}`;
  return `target '${c.target}' (${c.location}): ${failed.step} failed: ${failed.error?.type}: ${failed.error?.message}`;
}
