/**
 * Races for volumes, as the catalog tests run them from one process, from two catalogs of one
 * process (PostgreSQL) and from a second process (SQLite, test/helpers/catalog-contender.ts):
 * many `available -> backing-up` claims per volume, of which exactly one may win.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Catalog } from '../../src/catalog/catalog.js';

export interface Outcome {
  id: string;
  /** Who tried: recorded as the volume's owner when this claim wins. */
  owner: string;
  ok: boolean;
  /** The error's name and message when the claim lost. */
  error?: { name: string; message: string };
}

/** Milliseconds between the rounds of a timed race: ample for ten claims on either database. */
const SPACING = 25;

export type ContenderCommand = { op: 'open'; file: string; at: number } | { op: 'race'; ids: string[]; perId: number; owner: string; at: number } | { op: 'close' };

/**
 * For each volume in turn, perId claims at once; every claim's outcome. With `start`, the
 * claims on the i-th volume start at `start + i * SPACING` ms by the wall clock, so that two
 * processes given the same start claim each volume at the same moment, not one after the other.
 */
export async function raceVolumes(c: Catalog, ids: readonly string[], perId: number, owner: string, start?: number): Promise<Outcome[]> {
  const out: Outcome[] = [];
  for (const [n, id] of ids.entries()) {
    if (start !== undefined) await until(start + n * SPACING);
    const claims = Array.from({ length: perId }, async (_, i): Promise<Outcome> => {
      const who = `${owner}-${i}`;
      try {
        await c.transitionVolume(id, ['available'], 'backing-up', { owner: who });
        return { id, owner: who, ok: true };
      } catch (e) {
        const err = e as Error;
        return { id, owner: who, ok: false, error: { name: err.name, message: err.message } };
      }
    });
    out.push(...(await Promise.all(claims)));
  }
  return out;
}

/** Waits until the wall clock reads `at`, busy-waiting the last stretch (a timer may fire late). */
export async function until(at: number): Promise<void> {
  const coarse = at - Date.now() - 20;
  if (coarse > 0) await new Promise((r) => setTimeout(r, coarse));
  while (Date.now() < at) {
    // spin: a few milliseconds at most
  }
}

export interface Contender {
  /** Sends one command; resolves with its answer (rejects when the child reports a failure). */
  send(cmd: ContenderCommand): Promise<Record<string, unknown>>;
  /** Closes the child's catalog and waits for the process to end. */
  stop(): Promise<void>;
}

const HELPERS = import.meta.dirname;
const ROOT = join(HELPERS, '..', '..');

/** A catalog-contender process, started and ready for commands. */
export function startContender(): Contender {
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, ['--import', join(HELPERS, 'ts-loader.mjs'), join(HELPERS, 'catalog-contender.ts')], {
    cwd: ROOT,
    stdio: 'pipe',
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const answers = createInterface({ input: child.stdout });
  const waiting: ((line: string | null) => void)[] = [];
  answers.on('line', (line) => waiting.shift()?.(line));
  const exited = new Promise<void>((res) => child.on('close', () => res()));
  void exited.then(() => waiting.splice(0).forEach((w) => w(null)));
  return {
    async send(cmd) {
      const line = await new Promise<string | null>((res) => {
        waiting.push(res);
        child.stdin.write(`${JSON.stringify(cmd)}\n`);
      });
      if (line === null) throw new Error(`catalog contender exited (${child.exitCode ?? child.signalCode}): ${stderr}`);
      const answer = JSON.parse(line) as Record<string, unknown>;
      if (answer.ok !== true) throw new Error(`catalog contender: ${String(answer.error)}\n${stderr}`);
      return answer;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.stdin.end();
        const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(killer);
      }
    },
  };
}
