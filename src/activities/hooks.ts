/**
 * Node activity of consistency groups: runs a hook declared in the config (by name; the
 * workflow input never carries a command) with an argument array, never a shell, under
 * its timeout, and reports its exit status and the tail of its stderr.
 */
import { execa } from 'execa';
import { Context } from '@temporalio/activity';
import type { HookConfig } from '../config/schema.js';
import { HookFailed, HookNotFound } from '../errors.js';

const STDERR_TAIL = 2000;

export interface HookResult {
  hook: string;
  exitCode: number;
  stderrTail: string;
  node: string;
}

export function createHookActivities(deps: { node: string; hooks?: readonly HookConfig[] }) {
  return {
    async runHook(input: { hook: string; role: 'pre' | 'post'; groupId: string; volumeIds: string[] }): Promise<HookResult> {
      const h = (deps.hooks ?? []).find((x) => x.name === input.hook);
      if (!h) throw new HookNotFound(`${input.role} hook '${input.hook}' is not declared in the config of node '${deps.node}'`);
      const [file, ...args] = h.command;
      const signal = Context.current().cancellationSignal;
      const r = await execa(file!, args, {
        reject: false,
        stdin: 'ignore',
        timeout: h.timeoutSeconds * 1000,
        cancelSignal: signal,
        // Only what the hook needs: the worker's own environment (credentials, keys) stays with the worker.
        extendEnv: false,
        env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', GBACKUP_GROUP_ID: input.groupId, GBACKUP_VOLUME_IDS: input.volumeIds.join(',') },
        buffer: { stdout: false, stderr: true },
      });
      // Killed because the workflow was cancelled: report the cancel, not a failed hook.
      if (signal.aborted) throw signal.reason;
      const stderrTail = String(r.stderr ?? '').slice(-STDERR_TAIL);
      if (r.failed) {
        const status = r.timedOut ? `timed out after ${h.timeoutSeconds}s` : r.exitCode !== undefined ? `exited with status ${r.exitCode}` : `failed (${r.signal ?? r.shortMessage})`;
        throw new HookFailed(`${input.role} hook '${h.name}' (${file}) of group '${input.groupId}' ${status} on node '${deps.node}'${stderrTail ? `: ${stderrTail.trim()}` : ''}`);
      }
      return { hook: h.name, exitCode: r.exitCode ?? 0, stderrTail, node: deps.node };
    },
  };
}
