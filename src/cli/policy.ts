/**
 * `gbackup policy ...`: backup policies, each a Temporal Schedule (client/policies.ts).
 *
 *   policy create NAME (--volume ID ... | --selector backend=B,pool=P,name=PREFIX) [--target T]
 *                 (--schedule CRON ... | --every 6h ...) [--incremental [--full-every N]]
 *                 --keep-last N --keep-daily N --keep-weekly N --keep-monthly N
 *                 [--copy-to T2 [--copy-keep last=N,daily=N,weekly=N,monthly=N]]
 *                 [--catchup-window "1 hour"] [--parallel N] [--paused]
 *   policy list | show NAME | pause NAME | resume NAME | delete NAME
 *   policy run-now NAME [--wait]
 *   policy prune NAME [--dry-run]
 *   policy backfill NAME --from ISO --to ISO
 */
import { parseArgs } from 'node:util';
import type { KeepRules, PolicyRunResult, PolicySpecInput, PruneResult, VolumeSelector } from '../api.js';
import type { PolicyInfo } from '../client/policies.js';
import { loadConfig } from '../config/load.js';
import { InvalidInput } from '../errors.js';
import { checkName } from '../services/checks.js';
import { parse, str, withClient } from './args.js';
import { record, table, UsageError, type Out } from './output.js';
import { showProgress } from './progress.js';

export const POLICY_USAGE = `  policy create NAME (--volume ID ... | --selector backend=B,pool=P,name=PREFIX) [--target T]
                (--schedule CRON ... | --every 6h ...) [--incremental [--full-every N]]
                --keep-last N --keep-daily N --keep-weekly N --keep-monthly N
                [--copy-to T2 [--copy-keep last=N,daily=N,weekly=N,monthly=N]]
                [--catchup-window "1 hour"] [--parallel N] [--paused]
                                        a Temporal Schedule (policy-NAME) whose runs back up,
                                        copy and prune by GFS retention (UTC days/weeks/months)
  policy list | show NAME | pause NAME | resume NAME | delete NAME
  policy run-now NAME [--wait]          a run now, through the schedule (skipped while one runs)
  policy prune NAME [--dry-run]         apply retention now; --dry-run lists what would go and why
  policy backfill NAME --from ISO --to ISO   run the slots the schedule had in that span
`;

function count(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new InvalidInput(`--${flag} must be a whole number, not '${v}'`);
  return Number(v);
}

/** "last=3,daily=7": the --copy-keep rules. */
function keepList(v: string): Partial<KeepRules> {
  const out: Record<string, number> = {};
  for (const part of v.split(',')) {
    const m = /^(last|daily|weekly|monthly)=(\d+)$/.exec(part.trim());
    if (!m) throw new InvalidInput(`--copy-keep: '${part}' is not one of last=N, daily=N, weekly=N, monthly=N`);
    out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** "backend=B,pool=P,name=PREFIX": the --selector. */
function selector(v: string): VolumeSelector {
  const out: { backend?: string; pool?: string; namePrefix?: string } = {};
  for (const part of v.split(',')) {
    const m = /^(backend|pool|name)=(.+)$/.exec(part.trim());
    if (!m) throw new InvalidInput(`--selector: '${part}' is not one of backend=B, pool=P, name=PREFIX`);
    if (m[1] === 'name') out.namePrefix = m[2]!;
    else out[m[1] as 'backend' | 'pool'] = checkName(m[2]!, `selector ${m[1]}`);
  }
  return out;
}

function parseDate(v: string | undefined, flag: string): Date {
  if (v === undefined) throw new UsageError(`--${flag} is required`);
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) throw new InvalidInput(`--${flag}: '${v}' is not a date (use ISO 8601, e.g. 2026-01-05T00:00:00Z)`);
  return d;
}

const keepText = (k: KeepRules) => Object.entries(k).filter(([, n]) => n > 0).map(([r, n]) => `${r}=${n}`).join(',');

function summary(p: PolicyInfo): Record<string, unknown> {
  return {
    name: p.name,
    paused: p.paused,
    volumes: p.policy.volumeIds ? p.policy.volumeIds.join(',') : Object.entries(p.policy.selector ?? {}).map(([k, v]) => `${k}=${v}`).join(','),
    target: p.policy.target ?? '(default)',
    schedule: [...p.policy.schedule.cron, ...p.policy.schedule.every.map((e) => `every ${e}`)].join('; '),
    keep: keepText(p.policy.keep),
    copyTo: p.policy.copyTo ? `${p.policy.copyTo.target} (${keepText(p.policy.copyTo.keep)})` : null,
    nextRun: p.nextRuns[0] ?? null,
  };
}

function pruneText(r: PruneResult): string {
  const lines: string[] = [];
  for (const g of r.plan) {
    lines.push(`volume ${g.volumeId} on ${g.target}: keep ${g.keep.length}, ${r.dryRun ? 'would delete' : 'delete'} ${g.remove.length}`);
    for (const k of g.keep) lines.push(`  keep    ${k.id}  ${k.at}  ${k.reasons.join('; ')}`);
    for (const x of g.remove) lines.push(`  ${r.dryRun ? 'would delete' : 'delete'}  ${x.id}  ${x.at}  ${x.reason}`);
    for (const u of g.untouched) lines.push(`  untouched ${u.id}  (${u.status})`);
  }
  if (lines.length === 0) lines.push(`policy ${r.policy} has no backups yet`);
  if (!r.dryRun) {
    lines.push(`deleted ${r.deleted.length}${r.retained.length ? `; retained ${r.retained.map((x) => `${x.id} (${x.why})`).join('; ')}` : ''}${r.failed.length ? `; failed ${r.failed.map((x) => `${x.id} (${x.error})`).join('; ')}` : ''}`);
  }
  return lines.join('\n');
}

async function create(argv: string[], out: Out): Promise<void> {
  let r;
  try {
    r = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        config: { type: 'string' },
        json: { type: 'boolean' },
        volume: { type: 'string', multiple: true },
        selector: { type: 'string' },
        target: { type: 'string' },
        schedule: { type: 'string', multiple: true },
        every: { type: 'string', multiple: true },
        incremental: { type: 'boolean' },
        'full-every': { type: 'string' },
        'keep-last': { type: 'string' },
        'keep-daily': { type: 'string' },
        'keep-weekly': { type: 'string' },
        'keep-monthly': { type: 'string' },
        'copy-to': { type: 'string' },
        'copy-keep': { type: 'string' },
        'catchup-window': { type: 'string' },
        parallel: { type: 'string' },
        paused: { type: 'boolean' },
      },
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const v = r.values;
  if (r.positionals.length !== 1) throw new UsageError(r.positionals.length === 0 ? 'missing policy NAME' : `unexpected argument '${r.positionals[1]}'`);
  const name = checkName(r.positionals[0]!, 'policy name', 'id');
  if ((v.volume === undefined) === (v.selector === undefined)) throw new UsageError('give --volume ID (repeatable) or --selector backend=B,pool=P,name=PREFIX');
  const keep: Partial<KeepRules> = {};
  for (const rule of ['last', 'daily', 'weekly', 'monthly'] as const) {
    const n = count(v[`keep-${rule}`], `keep-${rule}`);
    if (n !== undefined) keep[rule] = n;
  }
  if (v['copy-keep'] !== undefined && v['copy-to'] === undefined) throw new UsageError('--copy-keep needs --copy-to T');
  const fullEvery = count(v['full-every'], 'full-every');
  const parallel = count(v.parallel, 'parallel');
  const spec: PolicySpecInput = {
    name,
    ...(v.volume ? { volumeIds: v.volume.map((id) => checkName(id, 'volume id', 'id')) } : { selector: selector(v.selector!) }),
    ...(v.target !== undefined ? { target: checkName(v.target, 'target') } : {}),
    schedule: { cron: v.schedule ?? [], every: v.every ?? [] },
    incremental: v.incremental === true,
    ...(fullEvery !== undefined ? { fullEvery } : {}),
    keep,
    // Copies keep by the policy's rules unless --copy-keep says otherwise.
    ...(v['copy-to'] !== undefined ? { copyTo: { target: checkName(v['copy-to'], 'copy target'), keep: v['copy-keep'] !== undefined ? keepList(v['copy-keep']) : keep } } : {}),
    ...(v['catchup-window'] !== undefined ? { catchupWindow: v['catchup-window'] } : {}),
    ...(parallel !== undefined ? { parallel } : {}),
  };
  const info = await withClient(loadConfig(str(v.config)), (c) => c.policies.create(spec, { paused: v.paused === true }));
  out.info(`policy ${name} created: schedule ${info.scheduleId}${info.paused ? ' (paused)' : ''}`);
  out.result(info, () => record({ ...summary(info), scheduleId: info.scheduleId, nextRuns: info.nextRuns.join(', ') }));
}

export async function policyCommand(sub: string | undefined, argv: string[], out: Out): Promise<void> {
  const named = (extra: Parameters<typeof parse>[1] = {}) => {
    const { values, pos } = parse(argv, extra, { min: 1, max: 1, names: 'policy NAME' });
    return { values, name: checkName(pos[0]!, 'policy name', 'id'), config: loadConfig(str(values.config)) };
  };
  switch (sub) {
    case 'create':
      return create(argv, out);
    case 'list': {
      const { values } = parse(argv, {}, { min: 0, max: 0, names: '' });
      const list = await withClient(loadConfig(str(values.config)), (c) => c.policies.list());
      return out.result(list, () => table(list.map(summary), ['name', 'paused', 'volumes', 'target', 'schedule', 'keep', 'copyTo', 'nextRun']));
    }
    case 'show': {
      const { name, config } = named();
      const r = await withClient(config, async (c) => ({ info: await c.policies.show(name), lastRun: await c.policies.lastRun(name) }));
      return out.result({ ...r.info, lastRun: r.lastRun }, () =>
        record({
          ...summary(r.info),
          scheduleId: r.info.scheduleId,
          note: r.info.note,
          nextRuns: r.info.nextRuns.join(', '),
          running: r.info.runningWorkflows.join(', ') || null,
          lastRun: r.lastRun ? `${r.lastRun.workflowId} ${r.lastRun.status}${r.lastRun.error ? `: ${r.lastRun.error}` : ''}` : null,
        }),
      );
    }
    case 'pause':
    case 'resume': {
      const { name, config } = named();
      const info = await withClient(config, (c) => (sub === 'pause' ? c.policies.pause(name) : c.policies.resume(name)));
      return out.result(info, () => `policy ${name} ${info.paused ? 'paused' : 'resumed'}${info.nextRuns[0] && !info.paused ? `; next run ${info.nextRuns[0]}` : ''}`);
    }
    case 'delete': {
      const { name, config } = named();
      await withClient(config, (c) => c.policies.delete(name));
      return out.result({ name, deleted: true }, () => `policy ${name} deleted (its backups stay; delete or prune them first if they should go)`);
    }
    case 'run-now': {
      const { name, config, values } = named({ wait: { type: 'boolean' } });
      return withClient(config, async (c) => {
        const r = await c.policies.runNow(name);
        if (r.workflowId === null) {
          return out.result({ name, workflowId: null, skipped: true, running: r.running }, () => `policy ${name}: a run is still going (${r.running.join(', ') || 'unknown'}); this one was skipped`);
        }
        out.info(`policy ${name}: run started (workflow ${r.workflowId})`);
        if (!values.wait) return out.result({ name, workflowId: r.workflowId, runId: r.runId }, () => r.workflowId!);
        const handle = c.client.workflow.getHandle(r.workflowId, r.runId ?? undefined);
        const res = await showProgress(c.result<PolicyRunResult>(handle), () => c.progress(handle));
        return out.result(res, () =>
          [
            table(res.backups as unknown as Record<string, unknown>[], ['volumeId', 'backupId', 'full']),
            res.copies.length ? `copies: ${res.copies.map((x) => `${x.backupId} -> ${x.copyId}`).join(', ')}` : '',
            res.skipped.length ? `skipped: ${res.skipped.map((x) => `${x.volumeId} (${x.why})`).join('; ')}` : '',
            res.prune ? pruneText(res.prune) : '',
          ]
            .filter((l) => l !== '')
            .join('\n'),
        );
      });
    }
    case 'prune': {
      const { name, config, values } = named({ 'dry-run': { type: 'boolean' } });
      const r = await withClient(config, (c) => c.policies.prune(name, values['dry-run'] === true));
      return out.result(r, () => pruneText(r));
    }
    case 'backfill': {
      const { name, config, values } = named({ from: { type: 'string' }, to: { type: 'string' } });
      const from = parseDate(str(values.from), 'from');
      const to = parseDate(str(values.to), 'to');
      await withClient(config, (c) => c.policies.backfill(name, from, to));
      return out.result({ name, from: from.toISOString(), to: to.toISOString(), backfilled: true }, () => `policy ${name}: slots from ${from.toISOString()} to ${to.toISOString()} queued, run one after another`);
    }
    default:
      throw new UsageError(`unknown policy command '${sub ?? ''}' (create, list, show, pause, resume, delete, run-now, prune, backfill)`);
  }
}
