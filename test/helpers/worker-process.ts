/**
 * A gbackup worker in its own process (`node bin/gbackup.js worker`), so a test can
 * SIGKILL it like a crashed host and start it again. It gets the suite's pre-built
 * workflow bundle and reads failpoints from a file the test controls.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { inject } from 'vitest';

const BIN = join(import.meta.dirname, '..', '..', 'bin', 'gbackup.js');

export interface WorkerProcess {
  /** Everything the worker printed on stderr so far. */
  output(): string;
  /** True while the process runs. */
  alive(): boolean;
  /** The running process's pid (a worker's Temporal identity is `<pid>@<host>`). */
  pid(): number | undefined;
  kill(): Promise<void>;
  stop(): Promise<void>;
  start(): Promise<void>;
  setFailpoints(spec: string): void;
}

export function workerProcess(opts: {
  dir: string;
  configFile: string;
  node?: string;
  name?: string;
  /** `worker --role` (default: both roles). */
  role?: 'control' | 'node' | 'both';
  /** A command the worker runs under, e.g. `['ip', 'netns', 'exec', ns]` (it must exec node, keeping the pid). */
  wrap?: string[];
}): WorkerProcess {
  const tag = opts.name ?? opts.node ?? 'worker';
  // A worker logs one line per role once it polls; a control-only one has no node line.
  const ready = opts.role === 'control' ? 'gbackup worker: control' : 'gbackup worker: node';
  const bundle = join(opts.dir, `bundle-${tag}.js`);
  const failpoints = join(opts.dir, `failpoints-${tag}`);
  writeFileSync(bundle, inject('workflowCode'));
  writeFileSync(failpoints, '');
  let proc: ResultPromise | undefined;
  let out = '';
  const wp: WorkerProcess = {
    output: () => out,
    alive: () => proc !== undefined && proc.exitCode === null && proc.signalCode === null,
    pid: () => proc?.pid,
    setFailpoints(spec) {
      writeFileSync(failpoints, spec);
    },
    async start() {
      const args = [BIN, 'worker', '--config', opts.configFile, ...(opts.node ? ['--node', opts.node] : []), ...(opts.role ? ['--role', opts.role] : [])];
      const [cmd, ...argv] = [...(opts.wrap ?? []), process.execPath, ...args];
      proc = execa(cmd!, argv, {
        reject: false,
        stdin: 'ignore',
        env: { GBACKUP_WORKFLOW_BUNDLE: bundle, GBACKUP_FAILPOINTS_FILE: failpoints, GBACKUP_LOG_LEVEL: 'WARN' },
      });
      const p = proc;
      let mine = '';
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`worker ${tag} did not start: ${mine}`)), 60_000);
        p.stderr?.on('data', (d: Buffer) => {
          out += d.toString();
          mine += d.toString();
          if (mine.includes(ready)) {
            clearTimeout(t);
            resolve();
          }
        });
        void p.then(() => {
          clearTimeout(t);
          if (!mine.includes(ready)) reject(new Error(`worker ${tag} exited: ${mine}`));
        });
      });
    },
    async kill() {
      if (!proc || proc.exitCode !== null) return;
      proc.kill('SIGKILL');
      await proc;
    },
    async stop() {
      if (!proc || proc.exitCode !== null) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc?.kill('SIGKILL'), 15_000);
      await proc;
      clearTimeout(t);
    },
  };
  return wp;
}
