/**
 * Partial failures never leak, part 1: crashes and lost nodes. Workers run in their own
 * processes here, so they can be SIGKILLed like a crashed host.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { open } from 'node:fs/promises';
import { execa } from 'execa';
import type { WorkflowHandle } from '@temporalio/client';
import { listLoopDevices } from '../src/connectors/loop.js';
import { killStrayCopies } from '../src/copy/dd.js';
import type { BackupResult } from '../src/api.js';
import { spreadIndex } from '../src/activities/control.js';
import { LoopConnector } from '../src/connectors/loop.js';
import { startDevServer } from '../src/dev/devserver.js';
import { AttachmentLedger } from '../src/node/ledger.js';
import { formatBytes, MiB } from '../src/size.js';
import { startWorkers } from '../src/workers/worker.js';
import { makeEnv, volumeWithData, yamlWith } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { progress, waitFor } from './helpers/wait.js';
import { workerProcess } from './helpers/worker-process.js';
import { inject } from 'vitest';

const yaml = (extra: string) => yamlWith(`timeouts: { heartbeat: 3, scheduleToStart: 5, reconcileEvery: 2 }\n${extra}`);

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});



/** The copy's offset in the last heartbeat the server holds for it (0 when none yet). */
async function heartbeatedOffset(h: WorkflowHandle): Promise<number> {
  const d = await h.describe();
  for (const a of d.raw.pendingActivities ?? []) {
    const raw = a.heartbeatDetails?.payloads?.[0]?.data;
    if (a.activityType?.name === 'copyVolume' && raw) return (JSON.parse(Buffer.from(raw).toString('utf8')) as { doneOffset?: number }).doneOffset ?? 0;
  }
  return 0;
}

/** Offset of the first all-zero MiB of a file (its size if none). */
async function firstZeroMiB(file: string): Promise<number> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(MiB);
    for (let pos = 0; ; pos += MiB) {
      const { bytesRead } = await fh.read(buf, 0, MiB, pos);
      if (bytesRead === 0 || buf.subarray(0, bytesRead).every((b) => b === 0)) return pos;
    }
  } finally {
    await fh.close();
  }
}

describe('crashes', () => {
  it('resumes a copy from its last heartbeated offset after the worker is SIGKILLed, bit-exact', async () => {
    // 12 MiB/s: the 96 MiB copy takes ~8 s, so there is a wide window between the first
    // progress report (every 2 s) and the end of the copy for the kill to land in.
    const env = await makeEnv({ workers: false, yaml: yaml('copyBpsLimit: 12M') });
    const worker = workerProcess({ dir: env.dir, configFile: env.configFile });
    cleanups.push(async () => worker.kill(), async () => env.cleanup());
    await worker.start();
    const vol = await volumeWithData(env, 'alpha', 'gold', 96, [0, 16, 32, 48, 64, 80], 16 * MiB);
    const sum = await env.volumes.sha256(vol.id);
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    const h = await env.client.startBackup({ volumeId: vol.id, backupId }, { target: 'vault', backend: 'alpha' });
    // A quarter copied, and a heartbeat past the start recorded by the server: the progress
    // signal can run ahead of the throttled heartbeats on a loaded machine, and a kill
    // before any heartbeat leaves nothing to resume from.
    const atKill = await waitFor(`a quarter of the copy, heartbeated ${worker.output()}`, async () => {
      const p = await progress(h);
      return p.bytesDone >= 24 * MiB && (await heartbeatedOffset(h)) > 0 ? p.bytesDone : undefined;
    });
    await worker.kill();
    // A crashed host takes its dd with it: stop the orphan, then measure exactly how far
    // the first attempt got (the source is all data; unwritten blocks of the new backup
    // volume are holes and read as zeros).
    const backupFile = env.rt.driver('beta').initializeConnection({ pool: null, name: `backup-${backupId}` }).path;
    for (const d of await listLoopDevices()) if (d.backingFile === backupFile) await killStrayCopies(d.device);
    const writtenEnd = await firstZeroMiB(backupFile);
    await worker.start();
    const { backup } = await env.client.result<BackupResult>(h);
    expect(backup.status).toBe('available');
    const p = await progress(h);
    const copy = p.lastCopy!;
    expect(copy.resumedFrom).toBeGreaterThan(0);
    expect(copy.resumedFrom + copy.bytesCopied).toBe(96 * MiB);
    const { sha256File } = await import('../src/copy/checksum.js');
    expect(await sha256File(backupFile)).toBe(sum);
    const recopied = writtenEnd - copy.resumedFrom;
    console.log(
      `resume: first attempt wrote ${writtenEnd} bytes (${formatBytes(writtenEnd)}) of ${96 * MiB} before SIGKILL; resumed from ${copy.resumedFrom} (${formatBytes(copy.resumedFrom)}); ` +
        `copied twice: ${recopied} bytes (${formatBytes(recopied)}, ${((recopied / (96 * MiB)) * 100).toFixed(1)}% of the volume); last attempt moved ${copy.bytesCopied} bytes`,
    );
    expect(writtenEnd).toBeGreaterThanOrEqual(atKill);
    // The resume point is the last heartbeat: at most ~1 s (12 MiB at this limit) plus one slice behind.
    expect(recopied).toBeGreaterThanOrEqual(0);
    expect(recopied).toBeLessThanOrEqual(32 * MiB);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('finishes a backup across a Temporal server restart (SQLite persistence)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gbackup-restart-'));
    const server = await startDevServer({ dbFile: join(dir, 'temporal.sqlite'), uiPort: null });
    cleanups.push(async () => {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    });
    const env = await makeEnv({ address: server.address, yaml: yaml('copyBpsLimit: 16M') });
    cleanups.push(async () => env.cleanup());
    const vol = await volumeWithData(env, 'alpha', 'gold', 64, [0, 16, 32, 48], 16 * MiB);
    const sum = await env.volumes.sha256(vol.id);
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    const h = await env.client.startBackup({ volumeId: vol.id, backupId }, { target: 'vault', backend: 'alpha' });
    await waitFor('copying', async () => (await progress(h)).phase === 'copying');
    await server.stop();
    await sleep(2000);
    await server.restart();
    const { backup } = await env.client.result<BackupResult>(h);
    expect(backup.status).toBe('available');
    const backupFile = env.rt.driver('beta').initializeConnection({ pool: null, name: `backup-${backupId}` }).path;
    const { sha256File } = await import('../src/copy/checksum.js');
    expect(await sha256File(backupFile)).toBe(sum);
    expect((await env.rt.catalog.volume(vol.id)).status).toBe('available');
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});

describe('nodes', () => {
  const twoNodes = 'nodes:\n  - { name: n1, backends: [alpha, beta, gamma] }\n  - { name: n2, backends: [alpha, beta, gamma] }\n';

  /** A backup id that the routing sends to n1 first. */
  const idForN1 = () => {
    for (;;) {
      const id = `bak-${randomBytes(4).toString('hex')}`;
      if (spreadIndex(id, 2) === 0) return id;
    }
  };

  it('moves the copy to another node when the chosen node never picks up its work', async () => {
    const env = await makeEnv({ workers: false, yaml: yaml(twoNodes) });
    cleanups.push(async () => env.cleanup());
    const control = await startWorkers({ config: env.config, roles: { control: true, node: false }, workflowBundle: { code: inject('workflowCode') }, log: () => undefined });
    const n2 = await startWorkers({ config: env.config, node: 'n2', roles: { control: false, node: true }, log: () => undefined });
    cleanups.push(async () => control.shutdown(), async () => n2.shutdown());
    const vol = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const backupId = idForN1();
    const h = await env.client.startBackup({ volumeId: vol.id, backupId }, { target: 'vault', backend: 'alpha' });
    const { backup } = await env.client.result<BackupResult>(h);
    expect(backup).toMatchObject({ status: 'available', node: 'n2' });
    const history = await h.fetchHistory();
    const timeouts = (history.events ?? []).filter((e) => e.activityTaskTimedOutEventAttributes);
    expect(timeouts.length).toBeGreaterThan(0);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('moves the copy when the node dies mid-copy; the dead node reconciles its attachments when it returns', async () => {
    // Slow enough (8 s for 64 MiB) that the copy is seen running on n1 even on a loaded machine.
    const env = await makeEnv({ workers: false, yaml: yaml(`${twoNodes}copyBpsLimit: 8M`) });
    cleanups.push(async () => env.cleanup());
    const control = await startWorkers({ config: env.config, roles: { control: true, node: false }, workflowBundle: { code: inject('workflowCode') }, log: () => undefined });
    cleanups.push(async () => control.shutdown());
    const n1 = workerProcess({ dir: env.dir, configFile: env.configFile, node: 'n1' });
    cleanups.push(async () => n1.kill());
    await n1.start();
    const vol = await volumeWithData(env, 'alpha', 'gold', 64, [0, 16, 32, 48], 16 * MiB);
    const sum = await env.volumes.sha256(vol.id);
    const backupId = idForN1();
    const h = await env.client.startBackup({ volumeId: vol.id, backupId }, { target: 'vault', backend: 'alpha' });
    await waitFor('copying on n1', async () => {
      const p = await progress(h);
      return p.phase === 'copying' && p.node === 'n1' && p.bytesDone > 0;
    });
    await n1.kill();
    // n1 is gone for good (for now); n2 comes up and takes over.
    const n2 = await startWorkers({ config: env.config, node: 'n2', roles: { control: false, node: true }, log: () => undefined });
    cleanups.push(async () => n2.shutdown());
    const { backup } = await env.client.result<BackupResult>(h);
    expect(backup).toMatchObject({ status: 'available', node: 'n2' });
    const { sha256File } = await import('../src/copy/checksum.js');
    expect(await sha256File(env.rt.driver('beta').initializeConnection({ pool: null, name: `backup-${backupId}` }).path)).toBe(sum);
    // n1's ledger still holds what it attached (on a real second host, the loop devices
    // too; here both nodes share one kernel, so n2's detach already released them) ...
    expect((await findLeaks(env)).ledgerEntries.filter((e) => e.startsWith('n1:')).length).toBeGreaterThan(0);
    // ... until n1 starts again and reconciles its ledger.
    await n1.start();
    await waitFor('n1 reconciled', async () => (await findLeaks(env)).ledgerEntries.length === 0);
    expect(n1.output()).toMatch(/reconciled .* no longer running/);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('refuses, before anything is made, a copy that no node can run', async () => {
    const env = await makeEnv({ yaml: yaml('nodes:\n  - { name: n1, backends: [alpha] }\n  - { name: n2, backends: [beta, gamma] }\n') });
    cleanups.push(async () => env.cleanup());
    const vol = await env.volumes.create({ backend: 'alpha', pool: 'gold', size: 8 * MiB });
    const backupId = `bak-${randomBytes(4).toString('hex')}`;
    const h = await env.client.startBackup({ volumeId: vol.id, backupId }, { target: 'vault', backend: 'alpha' });
    await expect(env.client.result(h)).rejects.toThrow(/no node reaches both 'alpha' and 'beta'/);
    expect(await env.rt.catalog.findBackup(backupId)).toBeNull();
    expect((await env.rt.catalog.volume(vol.id)).status).toBe('available');
    expect((await env.rt.driver('beta').listVolumes()).length).toBe(0);
  });

  it('reconciles a ledger at start-up: detaches what no running workflow owns, and logs it', async () => {
    const env = await makeEnv({ workers: false, yaml: yaml('') });
    cleanups.push(async () => env.cleanup());
    const vol = await env.volumes.create({ backend: 'alpha', pool: 'gold', size: 8 * MiB });
    const conn = env.rt.driver('alpha').initializeConnection({ pool: 'gold', name: vol.id });
    const node = env.config.nodes[0]!.name;
    const ledger = new AttachmentLedger(join(env.config.stateDir, 'nodes', node, 'ledger.sqlite'));
    ledger.record({ protocol: conn.protocol, path: conn.path, backend: 'alpha', workflowId: 'backup-volume-long-gone' });
    ledger.close();
    const { device } = await new LoopConnector([env.dir]).connectVolume(conn);
    expect((await execa('losetup', ['-j', conn.path])).stdout).toContain(device);
    const lines: string[] = [];
    const w = await startWorkers({ config: env.config, workflowBundle: { code: inject('workflowCode') }, log: (l) => lines.push(l) });
    cleanups.push(async () => w.shutdown());
    expect(lines.join('\n')).toMatch(new RegExp(`reconciled ${conn.path} \\(workflow backup-volume-long-gone no longer running\\): detached ${device}`));
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});
