import { setTimeout as sleep } from 'node:timers/promises';
import type { WorkflowHandle } from '@temporalio/client';
import type { Progress } from '../../src/api.js';

/** Polls `fn` every 100 ms until it returns something truthy; fails naming `what` after `ms`. */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** The workflow's progress query (every gbackup workflow answers it). */
export const progress = (h: WorkflowHandle) => h.query<Progress>('progress');
