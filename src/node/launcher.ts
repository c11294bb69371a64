/**
 * Starts the short-lived tools of the data path (dd, losetup, xfs_io) from a small helper
 * process instead of from the worker itself.
 *
 * Why: Node starts a child with fork(), whose cost grows with the parent's memory (page
 * tables are copied), and it runs on the main thread. Measured here: 1.3 ms from a 47 MB
 * process, 8 ms at 150 MB, 16 ms at 250 MB, 27 ms at 550 MB. A worker with its Temporal
 * runtime and copy buffers sits in the upper half of that, and a copy starts 5 processes
 * plus one dd per extent (24 for a 10%-written volume), each stalling every workflow task
 * and heartbeat of the process meanwhile. The helper is a bare Node process (~45 MB) that
 * does nothing but start processes, so each start costs it ~1.3 ms, off the worker's thread.
 *
 * The helper spawns with an argument array and no shell, exactly as execa is used
 * elsewhere. It is started on first use, one per process, and restarted if it dies. When
 * the worker goes away (even killed), the helper's IPC channel closes and it kills what it
 * started and exits, so no dd outlives its worker by more than that.
 * GBACKUP_LAUNCHER=off starts tools directly (execa) instead.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { execa } from 'execa';

export interface LaunchOptions {
  /** Kills the process (SIGTERM) when aborted; the result then says so in `signal`. */
  signal?: AbortSignal;
  /** Called with each piece of stderr as it arrives (dd's progress lines). */
  onStderr?: (chunk: string) => void;
}

export interface Launched {
  /** null when the process was killed by a signal. */
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** A tool that could not be started at all (not installed, not executable). */
export class LaunchFailed extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
    this.name = 'LaunchFailed';
  }
}

/** A tool that ran and exited non-zero (or was killed), from `launchChecked`. */
export class ToolFailed extends Error {
  constructor(
    message: string,
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(message);
    this.name = 'ToolFailed';
  }
}

type Request = { id: number; file: string; args: string[]; stream: boolean } | { id: number; kill: string };
type Reply =
  | { id: number; stderrChunk: string }
  | { id: number; exitCode: number | null; signal: string | null; stdout: string; stderr: string }
  | { id: number; error: string; code?: string };

/** The helper's whole program (run with `node -e`: no file to find next to the compiled code). */
const HELPER = `
const { spawn } = require('node:child_process');
const running = new Map();
const MAX = 64 * 1024 * 1024;
const send = (m) => { try { process.send(m); } catch {} };
process.on('message', (m) => {
  if (m.kill !== undefined) { running.get(m.id)?.kill(m.kill); return; }
  let child;
  try {
    child = spawn(m.file, m.args, { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    send({ id: m.id, error: String(e && e.message || e), code: e && e.code });
    return;
  }
  running.set(m.id, child);
  let out = '', err = '', failed = null;
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => { if (out.length < MAX) out += d; });
  child.stderr.on('data', (d) => { if (err.length < MAX) err += d; if (m.stream) send({ id: m.id, stderrChunk: d }); });
  child.on('error', (e) => { failed = e; });
  child.on('close', (code, signal) => {
    running.delete(m.id);
    if (failed) send({ id: m.id, error: String(failed.message), code: failed.code });
    else send({ id: m.id, exitCode: code, signal, stdout: out, stderr: err });
  });
});
process.on('disconnect', () => {
  for (const c of running.values()) { try { c.kill('SIGKILL'); } catch {} }
  process.exit(0);
});
`;

interface Pending {
  resolve: (r: Launched) => void;
  reject: (e: Error) => void;
  onStderr: ((chunk: string) => void) | undefined;
}

class Launcher {
  private readonly child: ChildProcess;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private dead: Error | null = null;

  constructor(onGone: () => void) {
    this.child = spawn(process.execPath, ['-e', HELPER], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], serialization: 'json' });
    this.child.unref();
    this.idle();
    this.child.on('message', (m: Reply) => this.onReply(m));
    const gone = (why: string) => {
      if (this.dead) return;
      this.dead = new Error(`the process launcher ${why}`);
      onGone();
      for (const p of this.pending.values()) p.reject(this.dead);
      this.pending.clear();
    };
    this.child.on('exit', (code, signal) => gone(`exited (${signal ?? code})`));
    this.child.on('error', (e) => gone(`failed: ${e.message}`));
  }

  /** While a tool runs, the helper's channel keeps this process alive; idle, it does not. */
  private busy(): void {
    (this.child.channel as { ref?: () => void } | undefined)?.ref?.();
  }
  private idle(): void {
    (this.child.channel as { unref?: () => void } | undefined)?.unref?.();
  }

  private onReply(m: Reply): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    if ('stderrChunk' in m) {
      p.onStderr?.(m.stderrChunk);
      return;
    }
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.idle();
    if ('error' in m) p.reject(new LaunchFailed(m.error, m.code));
    else p.resolve({ exitCode: m.exitCode, signal: m.signal, stdout: m.stdout, stderr: m.stderr });
  }

  run(file: string, args: readonly string[], opts: LaunchOptions): Promise<Launched> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise<Launched>((resolve, reject) => {
      const onAbort = () => this.post({ id, kill: 'SIGTERM' });
      const done = () => opts.signal?.removeEventListener('abort', onAbort);
      this.pending.set(id, {
        resolve: (r) => (done(), resolve(r)),
        reject: (e) => (done(), reject(e)),
        onStderr: opts.onStderr,
      });
      if (this.pending.size === 1) this.busy();
      this.post({ id, file, args: [...args], stream: opts.onStderr !== undefined });
      if (opts.signal?.aborted) onAbort();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private post(m: Request): void {
    try {
      this.child.send(m);
    } catch {
      // The channel is closing: the exit handler rejects what is pending.
    }
  }
}

let launcher: Launcher | null = null;

const direct = () => process.env.GBACKUP_LAUNCHER === 'off';

/** Runs a tool to its end; a non-zero exit is a result, not an error (execa's reject: false). */
export async function launch(file: string, args: readonly string[], opts: LaunchOptions = {}): Promise<Launched> {
  if (direct()) return launchDirect(file, args, opts);
  launcher ??= new Launcher(() => (launcher = null));
  return launcher.run(file, args, opts);
}

/** Runs a tool and fails with ToolFailed (its stderr in the message) unless it exits 0. */
export async function launchChecked(file: string, args: readonly string[], opts: LaunchOptions = {}): Promise<Launched> {
  const r = await launch(file, args, opts);
  if (r.exitCode !== 0) {
    const why = r.exitCode === null ? `was killed (${r.signal})` : `exited ${r.exitCode}`;
    throw new ToolFailed(`${file} ${why}: ${r.stderr.trim() || 'no message'}`, r.exitCode, r.stderr);
  }
  return r;
}

async function launchDirect(file: string, args: readonly string[], opts: LaunchOptions): Promise<Launched> {
  const child = execa(file, args, { reject: false, stdin: 'ignore', cancelSignal: opts.signal, forceKillAfterDelay: false });
  if (opts.onStderr) {
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', opts.onStderr);
  }
  const r = await child;
  if (r.failed && r.exitCode === undefined && r.signal === undefined && !r.isCanceled) throw new LaunchFailed(r.message ?? `${file} could not be started`, (r as { code?: string }).code);
  return { exitCode: r.exitCode ?? null, signal: r.signal ?? null, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
}
