/**
 * Failpoints let the fault-injection tests fail any step in any way. They are read from
 * GBACKUP_FAILPOINTS, or from the file GBACKUP_FAILPOINTS_FILE names (re-read at every
 * step, so a test can change them under a running worker). Both unset in production:
 * then every failpoint is a no-op.
 *
 *   GBACKUP_FAILPOINTS="copy=error,attach-source=transient,detach=crash"
 *
 * - error:     a non-retryable InjectedFault
 * - transient: a retryable error on the first attempt, success after
 * - crash:     SIGKILL of this worker process on the first attempt, once per step and
 *              workflow run (a marker beside the failpoints file, shared by the workers
 *              of one test): a local activity runs again from attempt 1 on the workflow task
 *              that replaces the dead worker's, and must then go on
 * - hang:      holds the step (heartbeating) until cancelled, or 5 s: lets a test cancel
 *              mid-step; a step that cannot be cancelled then simply goes on
 */
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Context } from '@temporalio/activity';
import { GbackupError, InjectedFault } from '../errors.js';

export class TransientFault extends GbackupError {}

export type Fault = 'error' | 'transient' | 'crash' | 'hang';

function readSpec(env: NodeJS.ProcessEnv): string | undefined {
  if (env.GBACKUP_FAILPOINTS_FILE) {
    try {
      return readFileSync(env.GBACKUP_FAILPOINTS_FILE, 'utf8');
    } catch {
      return undefined;
    }
  }
  return env.GBACKUP_FAILPOINTS;
}

export function activeFault(step: string, env: NodeJS.ProcessEnv = process.env): Fault | undefined {
  const spec = readSpec(env);
  if (!spec) return undefined;
  for (const part of spec.split(/[,\n]/)) {
    const [name, fault] = part.split('=').map((s) => s.trim());
    if (name === step && (fault === 'error' || fault === 'transient' || fault === 'crash' || fault === 'hang')) return fault;
  }
  return undefined;
}

function attempt(): number {
  try {
    return Context.current().info.attempt;
  } catch {
    return 1;
  }
}

/** The workflow run a step belongs to (a workflow id alone is reused by the next backup of the volume). */
function runOf(): string {
  try {
    const run = Context.current().info.workflowExecution;
    return `${run?.workflowId ?? 'none'}-${run?.runId ?? 'none'}`;
  } catch {
    return 'none';
  }
}

/** True the first time a crash fires for this step in this workflow (always without a failpoints file). */
function firstCrash(step: string): boolean {
  const file = process.env.GBACKUP_FAILPOINTS_FILE;
  if (!file) return true;
  const marker = join(dirname(file), `.crashed-${step}-${runOf()}`.replace(/[^A-Za-z0-9._-]/g, '_'));
  if (existsSync(marker)) return false;
  writeFileSync(marker, '');
  return true;
}

export async function failpoint(step: string): Promise<void> {
  const fault = activeFault(step);
  if (!fault) return;
  // Tests wait on this trail to know a fault fired (e.g. to cancel while a step hangs).
  if (process.env.GBACKUP_FAILPOINTS_FILE) appendFileSync(`${process.env.GBACKUP_FAILPOINTS_FILE}.fired`, `${step}=${fault}@${attempt()}\n`);
  switch (fault) {
    case 'error':
      throw new InjectedFault(`failpoint '${step}': injected error`);
    case 'transient':
      if (attempt() === 1) throw new TransientFault(`failpoint '${step}': injected transient error`);
      return;
    case 'crash':
      if (attempt() === 1 && firstCrash(step)) {
        process.stderr.write(`failpoint '${step}': killing worker ${process.pid}\n`);
        process.kill(process.pid, 'SIGKILL');
        await new Promise(() => undefined);
      }
      return;
    case 'hang': {
      if (attempt() > 1) return;
      const ctx = Context.current();
      await new Promise<void>((resolve, reject) => {
        const done = setTimeout(() => {
          clearInterval(hb);
          resolve();
        }, 5000);
        // Local activities do not heartbeat (their workflow task does).
        const hb = setInterval(() => (ctx.info.isLocal ? undefined : ctx.heartbeat()), 200);
        ctx.cancellationSignal.addEventListener('abort', () => {
          clearInterval(hb);
          clearTimeout(done);
          reject(ctx.cancellationSignal.reason instanceof Error ? ctx.cancellationSignal.reason : new Error('cancelled'));
        });
      });
    }
  }
}
