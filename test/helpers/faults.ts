/**
 * Running a workflow under an injected fault, for the fault matrix and the soak: the
 * worker runs in its own process and reads failpoints from a file; `crash` kills it
 * and this brings it back (a shared step such as detach may kill it twice), like
 * systemd would; `cancel` holds the step and cancels the workflow while it hangs.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { WorkflowHandle } from '@temporalio/client';
import type { TestEnv } from './env.js';
import type { WorkerProcess } from './worker-process.js';

export const FAULTS = ['error', 'transient', 'crash', 'cancel'] as const;
export type FaultKind = (typeof FAULTS)[number];
export const BACKUP_STEPS = ['backup.begin', 'snapshot', 'assisted-copy', 'create-destination', 'attach-source', 'attach-destination', 'copy', 'detach', 'finalize', 'cleanup'] as const;
export const RESTORE_STEPS = ['assisted-copy', 'create-destination', 'attach-source', 'attach-destination', 'copy', 'detach', 'finalize'] as const;

export async function waitFor(what: string, fn: () => Promise<boolean> | boolean, ms = 60_000, detail: () => string = () => ''): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${detail() ? `:\n${detail()}` : ''}`);
    await sleep(100);
  }
}

export type Outcome<T> = ({ ok: T } | { error: string }) & { restarted: boolean };

export async function underFault<T>(
  env: TestEnv,
  worker: WorkerProcess,
  failpointsFile: string,
  step: string,
  fault: FaultKind,
  start: () => Promise<WorkflowHandle>,
): Promise<Outcome<T>> {
  const firedFile = `${failpointsFile}.fired`;
  const fired = () => (existsSync(firedFile) ? readFileSync(firedFile, 'utf8') : '');
  rmSync(firedFile, { force: true });
  worker.setFailpoints(`${step}=${fault === 'cancel' ? 'hang' : fault}`);
  const handle = await start();
  let settled = false;
  const result = env.client.result<T>(handle).then(
    (ok) => ({ ok }),
    (e: unknown) => ({ error: (e as Error).message }),
  );
  void result.then(() => (settled = true));
  let cancelled = false;
  let restarted = false;
  while (!settled) {
    if (!worker.alive()) {
      await worker.start();
      restarted = true;
    }
    if (fault === 'cancel' && !cancelled && fired().includes(`${step}=hang`)) {
      cancelled = true;
      await env.client.cancel(handle.workflowId).catch(() => undefined);
    }
    await sleep(100);
  }
  worker.setFailpoints('');
  return { ...(await result), restarted };
}

export function describeOutcome(r: Outcome<unknown>, status: string, fault: FaultKind): string {
  if ('ok' in r) return fault === 'cancel' ? 'available (cancel late)' : fault === 'error' ? 'available (step undone later)' : fault === 'transient' || fault === 'crash' ? 'available (retried)' : 'available';
  return /cancelled/.test(r.error) ? 'error (cancelled)' : `${status} (${/injected/i.test(r.error) ? 'injected' : r.error.slice(0, 16)})`;
}
