/**
 * Backup policies end to end: a real Temporal Schedule whose slots are backfilled day by
 * day (30 simulated days in about a minute), real backups of a volume whose data changes
 * between slots, GFS retention after every run, and restores of every kept backup. Then a
 * stricter policy: a dry run lists what would go and changes nothing; the prune deletes
 * exactly that, keeps the newest verified backup with its chain, and leaves no chunk behind.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { BackupView, PolicyRunResult, PruneResult, RestoreResult, VerifyResult } from '../src/api.js';
import type { PolicyInfo } from '../src/client/policies.js';
import { InvalidInput } from '../src/errors.js';
import { makeEnv, volumeWithData, type TestEnv, scribble } from './helpers/env.js';
import { findLeaks, NO_LEAKS } from './helpers/leaks.js';
import { findStoreLeaks, NO_STORE_LEAKS } from './helpers/objects.js';
import { waitFor } from './helpers/wait.js';

let env: TestEnv;

beforeAll(async () => {
  env = await makeEnv({
    yaml: (dir, taskQueue, address) => {
      mkdirSync(join(dir, 'objects'), { recursive: true });
      mkdirSync(join(dir, 'offsite'), { recursive: true });
      return `
temporal: { address: ${address}, namespace: default, taskQueue: ${taskQueue} }
stateDir: ${dir}/state
backends:
  - { name: alpha, driver: file, path: ${dir}/alpha }
  - { name: gamma, driver: file, path: ${dir}/gamma }
targets:
  - { name: shelf, driver: posix, path: ${dir}/objects }
  - { name: offsite, driver: posix, path: ${dir}/offsite }
defaultTarget: shelf
`;
    },
  });
}, 120_000);

afterAll(async () => {
  if (env) {
    for (const p of await env.client.policies.list().catch(() => [])) await env.client.policies.delete(p.name).catch(() => undefined);
  }
  await env?.cleanup();
});

const DAY = 86_400_000;
/** Slot i is day i at 02:00 UTC, from Monday 2026-01-05: 30 slots run into February. */
const SLOT0 = Date.parse('2026-01-05T02:00:00.000Z');
const slot = (i: number) => new Date(SLOT0 + i * DAY);
const RULES = { last: 3, daily: 7, weekly: 4, monthly: 3 };
const FULL_EVERY = 4;

/**
 * The GFS set by the rules, computed here independently of src/policy/retention.ts: slot
 * i is day i; the week is ISO (Monday first), the month the calendar month.
 */
function expectedKept(n: number): Set<number> {
  const keep = new Set<number>();
  const newestFirst = Array.from({ length: n }, (_, i) => n - 1 - i);
  newestFirst.slice(0, RULES.last).forEach((i) => keep.add(i));
  newestFirst.slice(0, RULES.daily).forEach((i) => keep.add(i)); // one slot a day
  const bucketKeep = (count: number, bucket: (d: Date) => string) => {
    const seen = new Set<string>();
    for (const i of newestFirst) {
      const b = bucket(slot(i));
      if (seen.has(b)) continue;
      seen.add(b);
      keep.add(i);
      if (seen.size === count) break;
    }
  };
  // Days since the Monday of SLOT0's week, in weeks: slot 0 is a Monday.
  bucketKeep(RULES.weekly, (d) => String(Math.floor((d.getTime() - SLOT0) / (7 * DAY))));
  bucketKeep(RULES.monthly, (d) => `${d.getUTCFullYear()}-${d.getUTCMonth()}`);
  // Chains: slot i is a full backup when i % FULL_EVERY == 0, else an incremental on i-1.
  for (const i of [...keep]) for (let j = i; j % FULL_EVERY !== 0; j--) keep.add(j - 1);
  return keep;
}

describe('backup policies on a Temporal Schedule', () => {
  it('30 daily slots keep exactly the GFS set; every kept backup restores bit-exact; a stricter dry run changes nothing and its prune deletes exactly what it listed', async () => {
    const vol = await volumeWithData(env, 'alpha', undefined, 32, [0, 12, 28]);
    const name = `daily-${randomBytes(3).toString('hex')}`;
    // Paused: only the backfilled slots run, never the wall clock's 02:00.
    const created = await env.client.policies.create(
      { name, volumeIds: [vol.id], schedule: { cron: ['0 2 * * *'] }, incremental: true, fullEvery: FULL_EVERY, keep: RULES },
      { paused: true },
    );
    expect(created).toMatchObject({ name, paused: true, scheduleId: `policy-${name}` });
    expect(created.policy.keep).toEqual(RULES);
    await expect(env.client.policies.create({ name, volumeIds: [vol.id], schedule: { cron: ['0 2 * * *'] }, keep: RULES })).rejects.toThrow(/exists already/);

    const sums = new Map<string, string>();
    const slotOf = new Map<string, number>();
    const N = 30;
    const handle = env.client.client.schedule.getHandle(`policy-${name}`);
    for (let i = 0; i < N; i++) {
      if (i > 0) await scribble(env, vol.id, (i * 5) % 32);
      const sum = await env.volumes.sha256(vol.id);
      await env.client.policies.backfill(name, new Date(slot(i).getTime() - 60_000), new Date(slot(i).getTime() + 60_000));
      const d = await waitFor(`run ${i} of policy ${name}`, async () => {
        const d = await handle.describe();
        return d.info.numActionsTaken === i + 1 && d.info.runningActions.length === 0 ? d : undefined;
      }, 120_000);
      const last = d.info.recentActions[d.info.recentActions.length - 1]!;
      expect(last.scheduledAt.toISOString()).toBe(slot(i).toISOString());
      const run = (await env.client.client.workflow.getHandle(last.action.workflow.workflowId, last.action.workflow.firstExecutionRunId).result()) as PolicyRunResult;
      expect(run.failed).toEqual([]);
      expect(run.backups).toHaveLength(1);
      expect(run.backups[0]!.full, `slot ${i}`).toBe(i % FULL_EVERY === 0);
      sums.set(run.backups[0]!.backupId, sum);
      slotOf.set(run.backups[0]!.backupId, i);
      expect(run.prune?.failed).toEqual([]);
    }

    const left = (await env.client.listBackups(vol.id)).filter((b) => b.policy === name);
    const keptSlots = new Set(left.map((b) => slotOf.get(b.id)!));
    const expected = expectedKept(N);
    // The table for the note: slot, day, kept?
    console.log(
      `policy ${name}, rules ${JSON.stringify(RULES)}, full every ${FULL_EVERY}:\n` +
        Array.from({ length: N }, (_, i) => `  slot ${String(i).padStart(2)} ${slot(i).toISOString().slice(0, 10)} ${i % FULL_EVERY === 0 ? 'full' : 'incr'} ${keptSlots.has(i) ? 'KEPT' : '-'}`).join('\n'),
    );
    expect([...keptSlots].sort((a, b) => a - b)).toEqual([...expected].sort((a, b) => a - b));
    for (const b of left) {
      expect(b).toMatchObject({ status: 'available', policy: name, scheduledAt: slot(slotOf.get(b.id)!).toISOString() });
    }

    // Prune never broke a chain: every kept backup restores to what the volume held at its slot.
    for (const b of left) {
      const h = await env.client.startRestore({ backupId: b.id, backend: 'gamma', newVolumeId: `vol-r-${randomBytes(4).toString('hex')}` });
      const v = (await env.client.result<RestoreResult>(h)).volume;
      expect(await env.volumes.sha256(v.id), `restore of slot ${slotOf.get(b.id)}`).toBe(sums.get(b.id));
      await env.volumes.delete(v.id);
    }

    // A stricter policy of the same name. The oldest kept backup is verified first: it stays.
    const oldest = left.reduce((a, b) => (slotOf.get(a.id)! < slotOf.get(b.id)! ? a : b));
    await env.client.result<VerifyResult>(await env.client.startVerify({ backupId: oldest.id }));
    await env.client.policies.delete(name);
    await env.client.policies.create({ name, volumeIds: [vol.id], schedule: { cron: ['0 2 * * *'] }, incremental: true, fullEvery: FULL_EVERY, keep: { last: 2 } }, { paused: true });

    const before: BackupView[] = await env.client.listBackups(vol.id);
    const dry = await env.client.policies.prune(name, true);
    expect(dry.dryRun).toBe(true);
    expect(dry.deleted).toEqual([]);
    expect(await env.client.listBackups(vol.id)).toEqual(before);
    const plan = dry.plan.find((g) => g.volumeId === vol.id)!;
    const newest = N - 1;
    // last 2 = slots 29, 28, with their chain back to the full at 28; the verified one with its chain.
    const keepSlots = new Set<number>([newest, newest - 1]);
    for (const s of [...keepSlots]) for (let j = s; j % FULL_EVERY !== 0; j--) keepSlots.add(j - 1);
    const o = slotOf.get(oldest.id)!;
    keepSlots.add(o);
    for (let j = o; j % FULL_EVERY !== 0; j--) keepSlots.add(j - 1);
    expect(plan.keep.map((k) => slotOf.get(k.id)!).sort((a, b) => a - b)).toEqual([...keepSlots].filter((s) => keptSlots.has(s)).sort((a, b) => a - b));
    expect(plan.keep.find((k) => k.id === oldest.id)!.reasons.some((r) => r.startsWith('newest verified'))).toBe(true);
    for (const r of plan.remove) expect(r.reason).toMatch(/no keep rule/);
    expect(plan.remove.length).toBe(left.length - plan.keep.length);

    const pruned = await env.client.policies.prune(name, false);
    expect(pruned.failed).toEqual([]);
    expect(pruned.deleted.sort()).toEqual(plan.remove.map((r) => r.id).sort());
    const after = await env.client.listBackups(vol.id);
    expect(after.map((b) => b.id).sort()).toEqual(plan.keep.map((k) => k.id).sort());
    const h = await env.client.startRestore({ backupId: oldest.id, backend: 'gamma', newVolumeId: `vol-r-${randomBytes(4).toString('hex')}` });
    expect(await env.volumes.sha256((await env.client.result<RestoreResult>(h)).volume.id)).toBe(sums.get(oldest.id));

    expect(await findLeaks(env)).toEqual(NO_LEAKS);
    expect(await findStoreLeaks((await env.rt.objectTarget('shelf')).store)).toEqual(NO_STORE_LEAKS);
  }, 600_000);

  it('refuses a bad policy naming the field, and an unknown one by name', async () => {
    await expect(env.client.policies.create({ name: 'p1', volumeIds: ['v1'], schedule: { cron: ['0 2 * * *'] }, keep: {} })).rejects.toThrow(/retention keeps nothing/);
    await expect(env.client.policies.create({ name: 'p1', schedule: { cron: ['0 2 * * *'] }, keep: { last: 1 } })).rejects.toThrow(/exactly one of volume ids/);
    await expect(env.client.policies.create({ name: 'p1', volumeIds: ['v1'], schedule: {}, keep: { last: 1 } })).rejects.toThrow(/needs a schedule/);
    await expect(env.client.policies.create({ name: '../x', volumeIds: ['v1'], schedule: { cron: ['0 2 * * *'] }, keep: { last: 1 } })).rejects.toThrow(InvalidInput);
    await expect(env.client.policies.create({ name: 'p1', volumeIds: ['v1'], schedule: { cron: ['not a cron'] }, keep: { last: 1 } })).rejects.toThrow(/invalid schedule of policy 'p1'/);
    await expect(env.client.policies.show('nope')).rejects.toThrow(/policy 'nope' not found/);
    expect((await env.client.policies.list()).map((p) => p.name)).not.toContain('p1');
  });

  it('the CLI: create with --copy-to, run-now --wait copies each backup to the second target, prune --dry-run lists, pause/resume/show/list/delete; bad input exits 2', async () => {
    const { main } = await import('../src/cli/main.js');
    /** Runs the CLI in-process; its JSON output parsed. */
    const cli = async <T>(...args: string[]): Promise<{ code: number; out: T; err: string }> => {
      const out: string[] = [];
      const err: string[] = [];
      const o = vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => (out.push(String(c)), true));
      const e = vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => (err.push(String(c)), true));
      try {
        const code = await main(['--config', env.configFile, '--json', ...args]);
        return { code, out: JSON.parse(out.join('') || 'null') as T, err: err.join('') };
      } finally {
        o.mockRestore();
        e.mockRestore();
      }
    };
    const vol = await volumeWithData(env, 'alpha', undefined, 16, [0, 9]);
    const name = `cli-${randomBytes(3).toString('hex')}`;

    // Bad input names what is wrong and creates nothing.
    const both = await cli('policy', 'create', name, '--volume', vol.id, '--selector', 'backend=alpha', '--schedule', '0 3 1 1 *', '--keep-last', '1');
    expect(both.code).toBe(2);
    expect(both.err).toMatch(/--volume ID .* or --selector/);
    const nan = await cli('policy', 'create', name, '--volume', vol.id, '--schedule', '0 3 1 1 *', '--keep-last', 'many');
    expect(nan.code).toBe(2);
    expect(nan.err).toMatch(/--keep-last must be a whole number, not 'many'/);
    const badKeep = await cli('policy', 'create', name, '--volume', vol.id, '--schedule', '0 3 1 1 *', '--keep-last', '1', '--copy-to', 'offsite', '--copy-keep', 'hourly=3');
    expect(badKeep.code).toBe(2);
    expect(badKeep.err).toMatch(/--copy-keep: 'hourly=3'/);
    const sameTarget = await cli('policy', 'create', name, '--volume', vol.id, '--target', 'shelf', '--schedule', '0 3 1 1 *', '--keep-last', '1', '--copy-to', 'shelf');
    expect(sameTarget.code).toBe(2);
    expect(sameTarget.err).toMatch(/copy target must differ/);
    expect((await cli<PolicyInfo[]>('policy', 'list')).out.map((p) => p.name)).not.toContain(name);

    // Once a year at 03:00 on Jan 1: only run-now runs it here.
    const created = await cli<PolicyInfo>('policy', 'create', name, '--volume', vol.id, '--target', 'shelf', '--schedule', '0 3 1 1 *', '--keep-last', '1', '--copy-to', 'offsite', '--copy-keep', 'last=1');
    expect(created.code, created.err).toBe(0);
    expect(created.out.policy).toMatchObject({ name, volumeIds: [vol.id], target: 'shelf', keep: { last: 1 }, copyTo: { target: 'offsite', keep: { last: 1 } } });
    expect(created.out.nextRuns[0]).toMatch(/-01-01T03:00:00/);

    const sums: string[] = [];
    const runs: PolicyRunResult[] = [];
    for (let i = 0; i < 2; i++) {
      if (i > 0) await scribble(env, vol.id, 3);
      sums.push(await env.volumes.sha256(vol.id));
      const r = await cli<PolicyRunResult>('policy', 'run-now', name, '--wait');
      expect(r.code, r.err).toBe(0);
      expect(r.out.backups).toHaveLength(1);
      expect(r.out.copies).toEqual([{ backupId: r.out.backups[0]!.backupId, copyId: expect.any(String) as string }]);
      runs.push(r.out);
    }
    const [first, second] = runs as [PolicyRunResult, PolicyRunResult];
    // keep-last 1 on shelf: the second run's prune removed the first backup there.
    expect(second.prune!.deleted).toContain(first.backups[0]!.backupId);
    const mine = (await env.client.listBackups(vol.id)).filter((b) => b.policy === name);
    const copy2 = mine.find((b) => b.id === second.copies[0]!.copyId)!;
    expect(copy2).toMatchObject({ target: 'offsite', copyOf: second.backups[0]!.backupId, status: 'available' });
    expect(mine.filter((b) => b.target === 'shelf').map((b) => b.id)).toEqual([second.backups[0]!.backupId]);
    // On offsite the second copy builds on the first (its chunks are re-used), so keep-last 1 keeps both.
    const offsite = mine.filter((b) => b.target === 'offsite').map((b) => b.id).sort();
    expect(offsite).toEqual([first.copies[0]!.copyId, second.copies[0]!.copyId].sort());

    // The copy restores on its own, bit-exact.
    const rh = await env.client.startRestore({ backupId: copy2.id, backend: 'gamma', newVolumeId: `vol-r-${randomBytes(4).toString('hex')}` });
    const restored = (await env.client.result<RestoreResult>(rh)).volume;
    expect(await env.volumes.sha256(restored.id)).toBe(sums[1]);
    await env.volumes.delete(restored.id);

    const dry = await cli<PruneResult>('policy', 'prune', name, '--dry-run');
    expect(dry.code, dry.err).toBe(0);
    expect(dry.out).toMatchObject({ dryRun: true, deleted: [] });
    expect(dry.out.plan.flatMap((g) => g.remove)).toEqual([]);
    expect(dry.out.plan.map((g) => g.target).sort()).toEqual(['offsite', 'shelf']);

    expect((await cli<PolicyInfo>('policy', 'pause', name)).out.paused).toBe(true);
    const shown = await cli<PolicyInfo & { lastRun: { status: string } }>('policy', 'show', name);
    expect(shown.out).toMatchObject({ name, paused: true, lastRun: { status: 'COMPLETED' } });
    expect((await cli<PolicyInfo>('policy', 'resume', name)).out.paused).toBe(false);
    expect((await cli<PolicyInfo[]>('policy', 'list')).out.map((p) => p.name)).toContain(name);
    expect((await cli('policy', 'delete', name)).code).toBe(0);
    const gone = await cli('policy', 'show', name);
    expect(gone.code).toBe(2);
    expect(gone.err).toMatch(new RegExp(`policy '${name}' not found`));
    // The backups stay after the policy goes.
    expect((await env.client.listBackups(vol.id)).filter((b) => b.policy === name)).toHaveLength(3);
    expect(await findLeaks(env)).toEqual(NO_LEAKS);
  }, 300_000);

  it('a --selector policy backs up exactly the volumes matching it when the run starts', async () => {
    const tag = randomBytes(3).toString('hex');
    const match = [];
    for (const n of ['one', 'two']) match.push(await env.volumes.create({ backend: 'alpha', size: 8 * 1024 * 1024, name: `sel${tag}-${n}` }));
    const other = await env.volumes.create({ backend: 'alpha', size: 8 * 1024 * 1024, name: `other${tag}` });
    const name = `sel-${tag}`;
    // Every 30 days: only run-now runs it here.
    await env.client.policies.create({ name, selector: { backend: 'alpha', namePrefix: `sel${tag}-` }, schedule: { every: ['720h'] }, keep: { last: 1 } });
    // Made after the policy: a selector is evaluated at each run.
    match.push(await env.volumes.create({ backend: 'alpha', size: 8 * 1024 * 1024, name: `sel${tag}-three` }));
    const r = await env.client.policies.runNow(name);
    expect(r.workflowId).not.toBeNull();
    const run = (await env.client.client.workflow.getHandle(r.workflowId!, r.runId!).result()) as PolicyRunResult;
    expect(run.failed).toEqual([]);
    expect(run.backups.map((b) => b.volumeId).sort()).toEqual(match.map((v) => v.id).sort());
    expect((await env.client.listBackups(other.id)).filter((b) => b.policy === name)).toEqual([]);
    await env.client.policies.delete(name);
  }, 120_000);
});
