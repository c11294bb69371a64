/**
 * Failpoints let the fault-injection tests fail any step in any way. They are read from
 * GBACKUP_FAILPOINTS only (unset in production: then every failpoint is a no-op):
 *
 *   GBACKUP_FAILPOINTS="copy=error,attach-source=transient,detach=crash"
 *
 * - error:     a non-retryable InjectedFault
 * - transient: a retryable error on the first attempt, success after
 * - crash:     SIGKILL of this worker process on the first attempt
 * - hang:      never returns (until cancelled): lets a test cancel mid-step
 */
import { Context } from '@temporalio/activity';
import { GbackupError, InjectedFault } from './errors.js';

export class TransientFault extends GbackupError {}

export type Fault = 'error' | 'transient' | 'crash' | 'hang';

export function activeFault(step: string, env: NodeJS.ProcessEnv = process.env): Fault | undefined {
  const spec = env.GBACKUP_FAILPOINTS;
  if (!spec) return undefined;
  for (const part of spec.split(',')) {
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

export async function failpoint(step: string): Promise<void> {
  const fault = activeFault(step);
  if (!fault) return;
  switch (fault) {
    case 'error':
      throw new InjectedFault(`failpoint '${step}': injected error`);
    case 'transient':
      if (attempt() === 1) throw new TransientFault(`failpoint '${step}': injected transient error`);
      return;
    case 'crash':
      if (attempt() === 1) {
        process.stderr.write(`failpoint '${step}': killing worker ${process.pid}\n`);
        process.kill(process.pid, 'SIGKILL');
        await new Promise(() => undefined);
      }
      return;
    case 'hang': {
      const signal = Context.current().cancellationSignal;
      await new Promise<void>((_, reject) => {
        const hb = setInterval(() => Context.current().heartbeat(), 1000);
        signal.addEventListener('abort', () => {
          clearInterval(hb);
          reject(signal.reason instanceof Error ? signal.reason : new Error('cancelled'));
        });
      });
    }
  }
}
