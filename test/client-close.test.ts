/**
 * Closing a client while a call is being retried (the server went away) ends that call
 * with a rejection (and so does a call made after the close), not with an uncaught 'Channel has been shut down' thrown later from
 * the SDK's retry timer (src/temporal/retries.ts). Each case runs in its own process,
 * since the uncaught error ends the process it happens in; the SDK's own default
 * connection is run the same way, to show the case would catch the crash.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { repoRoot, startDevServer, type DevServer } from '../src/dev/devserver.js';
import { waitFor } from './helpers/faults.js';

const dist = (p: string) => JSON.stringify(join(repoRoot, 'dist', 'src', p));

/** Connects (ours or the SDK's plain connection), waits for 'go', calls while the server is down, closes mid-retry, waits out the retry timers. */
const script = (kind: 'gbackup' | 'sdk', address: string) => `
  import { Connection } from '@temporalio/client';
  import { GbackupClient } from ${dist('client/client.js')};
  const say = (m) => process.stdout.write(m + '\\n');
  let service, close;
  if (${JSON.stringify(kind)} === 'gbackup') {
    const c = await GbackupClient.connect({ temporal: { address: ${JSON.stringify(address)}, namespace: 'default', taskQueue: 'close-test' } });
    service = c.client.workflowService; close = () => c.close();
  } else {
    const conn = await Connection.connect({ address: ${JSON.stringify(address)} });
    service = conn.workflowService; close = () => conn.close();
  }
  say('connected');
  process.stdin.once('data', async () => {
    const call = service.describeNamespace({ namespace: 'default' }).then(() => 'answered', (e) => 'rejected: ' + (e.details ?? e.message));
    await new Promise((r) => setTimeout(r, 700));
    await close();
    say('call ' + await call);
    // A call made after the close: ends at once too (the SDK's retry interceptor would throw from a timer).
    if (${JSON.stringify(kind)} === 'gbackup') say('late call ' + await service.describeNamespace({ namespace: 'default' }).then(() => 'answered', (e) => 'rejected: ' + (e.details ?? e.message)));
    await new Promise((r) => setTimeout(r, 6000));
    say('survived');
    process.exit(0);
  });
`;

let server: DevServer;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gbackup-close-'));
  server = await startDevServer({ dbFile: join(dir, 'temporal.sqlite'), uiPort: null, searchAttributes: false });
});

afterAll(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function run(kind: 'gbackup' | 'sdk'): Promise<{ exitCode: number | undefined; out: string; err: string }> {
  await server.restart();
  const child: ResultPromise = execa(process.execPath, ['--input-type=module', '-e', script(kind, server.address)], { cwd: repoRoot, reject: false });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  await waitFor(`${kind}: connected`, () => out.includes('connected'), 20_000, () => out);
  await server.stop();
  child.stdin?.write('go\n');
  const r = await child;
  return { exitCode: r.exitCode, out, err: String(r.stderr) };
}

describe('closing a client while a call retries', () => {
  it('the SDK connection alone crashes the process from its retry timer (what this guards against)', async () => {
    const r = await run('sdk');
    expect(r.exitCode).not.toBe(0);
    expect(r.err).toContain('Channel has been shut down');
    expect(r.out).not.toContain('survived');
  }, 60_000);

  it("gbackup's client ends the retried call with a rejection and the process lives on", async () => {
    const r = await run('gbackup');
    expect(r.err).not.toContain('Channel has been shut down');
    expect(r.out).toMatch(/^call rejected: .*closed/m);
    expect(r.out).toMatch(/^late call rejected: .*closed/m);
    expect(r.err).not.toContain('savedMessageNext');
    expect(r.out).toContain('survived');
    expect(r.exitCode).toBe(0);
  }, 60_000);
});
