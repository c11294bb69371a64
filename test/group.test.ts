/**
 * Consistency groups through real parts (Temporal dev server, workers, loop devices, dd):
 * several volumes snapshotted at one moment between a pre and a post hook declared in the
 * config, each backed up with the group's id and restored bit-exact; a failing pre hook,
 * a cancel and an unknown hook leave nothing behind, and the post hook always ran.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { chmodSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { BackupGroupResult, RestoreResult } from '../src/api.js';
import { BackupGroupInput, workflowIds } from '../src/api.js';
import { parseConfig } from '../src/config/load.js';
import { attachInProcess, DEFAULT_YAML, detachInProcess, makeEnv, volumeWithData, yamlWith, type TestEnv } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { progress, waitFor } from './helpers/wait.js';

/** Hook scripts in the test's directory: each appends "<role> <epoch ms> <group> <volumes>" to hooks.log. */
function hooksYaml(dir: string, extra = ''): string {
  const log = join(dir, 'hooks.log');
  const script = (name: string, body: string) => {
    const f = join(dir, `${name}.sh`);
    writeFileSync(f, `#!/bin/sh\n${body}\n`);
    chmodSync(f, 0o755);
    return f;
  };
  const pre = script('pre', `echo "pre $(date +%s%3N) $GBACKUP_GROUP_ID $GBACKUP_VOLUME_IDS" >> ${log}`);
  // Holds while the test's hold file exists, so the test can read the snapshots the post hook sees.
  const post = script('post', `echo "post $(date +%s%3N) $GBACKUP_GROUP_ID $GBACKUP_VOLUME_IDS" >> ${log}\nwhile [ -e ${join(dir, 'hold')} ]; do sleep 0.05; done`);
  const fail = script('fail', `echo "fail $(date +%s%3N) $GBACKUP_GROUP_ID" >> ${log}\necho "cannot freeze /srv/db: device busy" >&2\nexit 3`);
  const slow = script('pre-slow', `echo "pre $(date +%s%3N) $GBACKUP_GROUP_ID $GBACKUP_VOLUME_IDS" >> ${log}\nwhile [ -e ${join(dir, 'hold-pre')} ]; do sleep 0.05; done\necho "pre-done $(date +%s%3N) $GBACKUP_GROUP_ID" >> ${log}`);
  return `hooks:
  - { name: pre-slow, command: [${slow}], timeoutSeconds: 60 }
  - { name: pre, command: [${pre}], timeoutSeconds: 30 }
  - { name: post, command: [${post}], timeoutSeconds: 60 }
  - { name: fail-pre, command: [${fail}, --freeze], timeoutSeconds: 30 }
${extra}`;
}

const hookLines = (env: TestEnv, groupId: string) =>
  existsSync(join(env.dir, 'hooks.log'))
    ? readFileSync(join(env.dir, 'hooks.log'), 'utf8')
        .split('\n')
        .filter((l) => l.split(' ')[2] === groupId)
        .map((l) => {
          const [role, at, , volumes] = l.split(' ');
          return { role: role!, at: Number(at), volumes: volumes ?? '' };
        })
    : [];

const gid = () => `grp-${randomBytes(5).toString('hex')}`;

async function groupSnapshots(env: TestEnv, groupId: string) {
  return (await env.rt.catalog.listSnapshots()).filter((s) => s.id.startsWith(`${groupId}-`));
}

describe('consistency groups', () => {
  let env: TestEnv;
  beforeAll(async () => {
    env = await makeEnv({ yaml: (dir, tq, addr) => yamlWith(hooksYaml(dir))(dir, tq, addr) });
  });
  afterAll(async () => {
    await env?.cleanup();
  });

  it('backs up 3 volumes (one in-use) from snapshots taken between the pre and post hook, all with the group id, each restoring bit-exact', async () => {
    const a = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const b = await volumeWithData(env, 'gamma', undefined, 16, [4, 12]);
    const c = await volumeWithData(env, 'alpha', 'silver', 16, [0]);
    await attachInProcess(env, c.id, 'vm-1');
    try {
      const sums = new Map([a, b, c].map((v) => [v.id, '']));
      for (const id of sums.keys()) sums.set(id, await env.volumes.sha256(id));
      const groupId = gid();
      const volumeIds = [a.id, b.id, c.id];
      writeFileSync(join(env.dir, 'hold'), '');
      const h = await env.client.startBackupGroup({ groupId, volumeIds, preHook: 'pre', postHook: 'post' });
      // While the post hook holds, the snapshots it runs after are in the catalog.
      await waitFor('post hook started', async () => hookLines(env, groupId).some((l) => l.role === 'post'));
      const snaps = await groupSnapshots(env, groupId);
      rmSync(join(env.dir, 'hold'));
      const r = await env.client.result<BackupGroupResult>(h);

      const lines = hookLines(env, groupId);
      expect(lines.map((l) => l.role)).toEqual(['pre', 'post']);
      expect(lines[0]!.volumes).toBe(volumeIds.join(','));
      expect(snaps.map((s) => s.volumeId).sort()).toEqual([...volumeIds].sort());
      for (const s of snaps) {
        const at = Date.parse(s.createdAt);
        expect(at).toBeGreaterThanOrEqual(lines[0]!.at);
        expect(at).toBeLessThanOrEqual(lines[1]!.at);
      }

      expect(r.groupId).toBe(groupId);
      expect(r.backups.map((x) => x.volumeId).sort()).toEqual([...volumeIds].sort());
      for (const bk of r.backups) {
        expect(bk.status).toBe('available');
        expect(bk.groupId).toBe(groupId);
        expect(snaps.map((s) => s.id)).toContain(bk.snapshotId);
        expect((await env.rt.catalog.backup(bk.id)).groupId).toBe(groupId);
      }
      // The group's snapshots are gone; the volumes are where they were.
      expect(await groupSnapshots(env, groupId)).toEqual([]);
      expect((await env.rt.catalog.volume(a.id)).status).toBe('available');
      expect((await env.rt.catalog.volume(c.id)).status).toBe('in-use');

      for (const bk of r.backups) {
        const rh = await env.client.startRestore({ backupId: bk.id, backend: 'gamma', newVolumeId: `vol-${randomBytes(4).toString('hex')}` });
        const restored = (await env.client.result<RestoreResult>(rh)).volume;
        expect(await env.volumes.sha256(restored.id)).toBe(sums.get(bk.volumeId));
      }
      expect(await findLeaks(env)).toEqual(NO_LEAKS);
    } finally {
      rmSync(join(env.dir, 'hold'), { force: true });
      await detachInProcess(env, c.id).catch(() => undefined);
    }
  });

  it('a failing pre hook takes no snapshot and makes no backup, runs the post hook, and names the hook, its status and stderr', async () => {
    const a = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const b = await volumeWithData(env, 'gamma', undefined, 8, [0]);
    const groupId = gid();
    const before = (await env.rt.catalog.listSnapshots()).length;
    const h = await env.client.startBackupGroup({ groupId, volumeIds: [a.id, b.id], preHook: 'fail-pre', postHook: 'post' });
    await expect(env.client.result(h)).rejects.toThrow(/pre hook 'fail-pre'.*exited with status 3.*cannot freeze \/srv\/db: device busy/);
    expect(hookLines(env, groupId).map((l) => l.role)).toEqual(['fail', 'post']);
    expect((await env.rt.catalog.listSnapshots()).length).toBe(before);
    expect(await groupSnapshots(env, groupId)).toEqual([]);
    for (const v of [a, b]) {
      expect(await env.rt.catalog.listBackups(v.id)).toEqual([]);
      expect((await env.rt.catalog.volume(v.id)).status).toBe('available');
    }
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('an unknown hook name is refused before anything happens', async () => {
    const a = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const b = await volumeWithData(env, 'gamma', undefined, 8, [0]);
    const groupId = gid();
    const h = await env.client.startBackupGroup({ groupId, volumeIds: [a.id, b.id], preHook: 'pre', postHook: 'thaw-everything' });
    await expect(env.client.result(h)).rejects.toThrow(/post hook 'thaw-everything' is not declared in the config \(hooks: pre-slow, pre, post, fail-pre\)/);
    expect(hookLines(env, groupId)).toEqual([]);
    expect(await groupSnapshots(env, groupId)).toEqual([]);
    for (const v of [a, b]) expect(await env.rt.catalog.listBackups(v.id)).toEqual([]);
  });

  it('backup create --group through the CLI (in-process) waits for the group and prints its backups', async () => {
    const { main } = await import('../src/cli/main.js');
    const a = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const b = await volumeWithData(env, 'gamma', undefined, 8, [4]);
    const written: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      written.push(String(chunk));
      return true;
    });
    let code: number;
    try {
      code = await main(['--config', env.configFile, 'backup', 'create', '--group', `${a.id},${b.id}`, '--pre-hook', 'pre', '--post-hook', 'post', '--wait', '--json']);
    } finally {
      spy.mockRestore();
    }
    expect(code).toBe(0);
    const r = JSON.parse(written.join('')) as BackupGroupResult;
    expect(r.backups.map((x) => x.volumeId).sort()).toEqual([a.id, b.id].sort());
    expect(r.backups.every((x) => x.groupId === r.groupId && x.status === 'available')).toBe(true);
    expect(hookLines(env, r.groupId).map((l) => l.role)).toEqual(['pre', 'post']);
    // A volume id and --group together is bad usage (exit 2), and so is --force with a group.
    const quiet = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(await main(['--config', env.configFile, 'backup', 'create', a.id, '--group', `${a.id},${b.id}`])).toBe(2);
      expect(await main(['--config', env.configFile, 'backup', 'create', '--group', `${a.id},${b.id}`, '--force'])).toBe(2);
    } finally {
      quiet.mockRestore();
    }
  });

  it('refuses a volume that does not exist or is busy, naming it, before any hook runs', async () => {
    const a = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const groupId = gid();
    const h = await env.client.startBackupGroup({ groupId, volumeIds: [a.id, 'vol-nosuchvolume'], preHook: 'pre', postHook: 'post' });
    await expect(env.client.result(h)).rejects.toThrow(/vol-nosuchvolume/);
    expect(hookLines(env, groupId)).toEqual([]);
  });
});

describe('consistency groups: input and config', () => {
  it('refuses a group of one volume, repeated volumes, and a hook that is not an absolute executable', async () => {
    expect(BackupGroupInput.safeParse({ volumeIds: ['vol-a'] }).error?.issues[0]?.message).toMatch(/at least 2 volumes/);
    expect(BackupGroupInput.safeParse({ volumeIds: ['vol-a', 'vol-a'] }).error?.issues[0]?.message).toMatch(/distinct/);
    expect(BackupGroupInput.safeParse({ volumeIds: ['vol-a', 'vol-b'], preHook: 'x', command: ['/bin/sh'] }).success).toBe(false);
    const yaml = (cmd: string) => `${DEFAULT_YAML('/tmp/gb', 'q', '127.0.0.1:7233')}hooks:\n  - { name: freeze, command: ${cmd} }\n`;
    expect(() => parseConfig(yaml('[fsfreeze, --freeze, /srv]'), '/tmp/gb/c.yaml', '/tmp/gb')).toThrow(/hooks\[0\]\.command: the hook executable \(command\[0\]\) must be an absolute path/);
    expect(() => parseConfig(yaml('[]'), '/tmp/gb/c.yaml', '/tmp/gb')).toThrow(/at least the executable/);
    expect(parseConfig(yaml('[/usr/sbin/fsfreeze, --freeze, /srv]'), '/tmp/gb/c.yaml', '/tmp/gb').hooks?.[0]?.timeoutSeconds).toBe(60);
  });
});

describe('consistency groups: cancel', () => {
  let env: TestEnv;
  beforeAll(async () => {
    // Slow copies, so the cancel finds the backups running.
    env = await makeEnv({ yaml: (dir, tq, addr) => yamlWith(hooksYaml(dir, 'copyBpsLimit: 1M'))(dir, tq, addr) });
  });
  afterAll(async () => {
    await env?.cleanup();
  });

  it('a cancel while the pre hook runs stops it, then runs the post hook, and takes no snapshot', async () => {
    const a = await volumeWithData(env, 'alpha', 'gold', 8, [0]);
    const b = await volumeWithData(env, 'gamma', undefined, 8, [0]);
    const groupId = gid();
    writeFileSync(join(env.dir, 'hold-pre'), '');
    try {
      const h = await env.client.startBackupGroup({ groupId, volumeIds: [a.id, b.id], preHook: 'pre-slow', postHook: 'post' });
      await waitFor('pre hook running', async () => hookLines(env, groupId).some((l) => l.role === 'pre'));
      await env.client.cancel(h.workflowId);
      await expect(env.client.result(h)).rejects.toThrow(/cancel/i);
    } finally {
      rmSync(join(env.dir, 'hold-pre'), { force: true });
    }
    // The pre hook was stopped (it never finished) before the post hook ran.
    expect(hookLines(env, groupId).map((l) => l.role)).toEqual(['pre', 'post']);
    expect(await groupSnapshots(env, groupId)).toEqual([]);
    for (const v of [a, b]) {
      expect(await env.rt.catalog.listBackups(v.id)).toEqual([]);
      expect((await env.rt.catalog.volume(v.id)).status).toBe('available');
    }
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });

  it('a cancel during the backups ran the post hook and leaks nothing', async () => {
    const a = await volumeWithData(env, 'alpha', 'gold', 16, [0, 8]);
    const b = await volumeWithData(env, 'gamma', undefined, 16, [0, 8]);
    const groupId = gid();
    const h = await env.client.startBackupGroup({ groupId, volumeIds: [a.id, b.id], preHook: 'pre', postHook: 'post' });
    await waitFor('a backup of the group copying', async () => {
      const p = await progress(env.client.client.workflow.getHandle(workflowIds.backup(a.id))).catch(() => null);
      return p?.phase === 'copying';
    });
    await env.client.cancel(h.workflowId);
    await expect(env.client.result(h)).rejects.toThrow(/cancel/i);
    expect(hookLines(env, groupId).map((l) => l.role)).toEqual(['pre', 'post']);
    expect(await groupSnapshots(env, groupId)).toEqual([]);
    for (const v of [a, b]) expect((await env.rt.catalog.volume(v.id)).status).toBe('available');
    // The cancel reached the running backups: their records stay, in error, naming it.
    const made = [...(await env.rt.catalog.listBackups(a.id)), ...(await env.rt.catalog.listBackups(b.id))];
    expect(made.length).toBeGreaterThan(0);
    for (const bk of made) {
      expect(bk.groupId).toBe(groupId);
      expect(bk.status).toBe('error');
      expect(bk.error).toMatch(/cancel/);
    }
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  });
});
