/**
 * The process launcher (src/node/launcher.ts): tools started from a small helper process
 * behave as execa's did (exit codes, output, cancel, a missing tool), and nothing they
 * start outlives a worker that is killed.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { execa } from 'execa';
import { launch, launchChecked, LaunchFailed, ToolFailed } from '../src/node/launcher.js';
import { repoRoot } from '../src/dev/devserver.js';
import { waitFor } from './helpers/faults.js';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('process launcher', () => {
  it('returns exit code, stdout and stderr; a non-zero exit is a result', async () => {
    const r = await launch('sh', ['-c', 'printf out; printf err >&2; exit 3']);
    expect(r).toEqual({ exitCode: 3, signal: null, stdout: 'out', stderr: 'err' });
  });

  it('passes arguments as they are, with no shell in between', async () => {
    const odd = "a b; echo injected $(id) 'q' \"d\"";
    const r = await launch('printf', ['%s', odd]);
    expect(r.stdout).toBe(odd);
  });

  it('launchChecked fails with the tool and its stderr in the message', async () => {
    const e = await launchChecked('sh', ['-c', 'echo "no such device" >&2; exit 2']).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ToolFailed);
    expect((e as ToolFailed).message).toBe('sh exited 2: no such device');
    expect((e as ToolFailed).exitCode).toBe(2);
  });

  it('a tool that does not exist fails with LaunchFailed (ENOENT), and the launcher still works after it', async () => {
    const e = await launch('/nonexistent/gbackup-tool', []).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(LaunchFailed);
    expect((e as LaunchFailed).code).toBe('ENOENT');
    expect((await launch('true', [])).exitCode).toBe(0);
  });

  it('streams stderr while the tool runs (dd progress), in order', async () => {
    const chunks: string[] = [];
    const r = await launch('sh', ['-c', 'echo one >&2; sleep 0.3; echo two >&2'], { onStderr: (c) => chunks.push(c) });
    expect(chunks.join('')).toBe('one\ntwo\n');
    expect(chunks.length).toBe(2);
    expect(r.stderr).toBe('one\ntwo\n');
  });

  it('an abort kills the tool (SIGTERM) at once', async () => {
    const ac = new AbortController();
    const t0 = Date.now();
    setTimeout(() => ac.abort(), 100);
    const r = await launch('sleep', ['30'], { signal: ac.signal });
    expect(r.signal).toBe('SIGTERM');
    expect(r.exitCode).toBeNull();
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('runs many tools at once, each with its own result', async () => {
    const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => launch('sh', ['-c', `echo ${i}; exit ${i % 3}`])));
    rs.forEach((r, i) => expect(r).toMatchObject({ stdout: `${i}\n`, exitCode: i % 3 }));
  });

  it('kills what it started when its worker is killed (SIGKILL), and exits itself', async () => {
    // A stand-in worker: starts a long sleep through the launcher and reports the pids.
    const script = `
      import { launch } from ${JSON.stringify(join(repoRoot, 'dist', 'src', 'node', 'launcher.js'))};
      void launch('sh', ['-c', 'echo $$ >&2; exec sleep 60'], { onStderr: (c) => process.stdout.write('tool ' + c) });
    `;
    const worker = execa(process.execPath, ['--input-type=module', '-e', script], { reject: false, stdin: 'ignore' });
    let out = '';
    worker.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await waitFor('the tool to start', () => /tool \d+/.test(out), 15_000, () => out);
      const tool = Number(/tool (\d+)/.exec(out)![1]);
      const helper = Number((await execa('ps', ['-o', 'ppid=', '-p', String(tool)])).stdout.trim());
      expect(alive(tool)).toBe(true);
      expect(helper).not.toBe(worker.pid);
      worker.kill('SIGKILL');
      await worker;
      await waitFor('the tool to be killed', () => !alive(tool), 10_000);
      await waitFor('the helper to exit', () => !alive(helper), 10_000);
    } finally {
      worker.kill('SIGKILL');
    }
  });
});
