/**
 * Retention: which of a policy's backups to keep, by grandfather-father-son rules that
 * understand incremental chains. Pure and deterministic (no clock, no I/O): the prune
 * workflow's plan, the dry run and the tests all come from this one function.
 *
 * The rules are restic's (`forget --keep-*`): keep-last N keeps the N newest; keep-daily N
 * keeps the newest backup of each of the N newest days that have one (weekly: ISO weeks,
 * monthly: calendar months), all in UTC. A backup may be kept by several rules; each
 * reason is listed. On top:
 * - the newest verified backup (a verify read it whole and found it sound) is always kept,
 *   so a policy never prunes its way down to backups nobody has checked (Velero #9061);
 * - a kept backup keeps every backup it is built on (its incremental chain): a backup is
 *   only deleted when no kept backup needs it, so a chain goes whole or not at all;
 * - only `available` backups are considered: one being made, restored or deleted, or
 *   failed, is left alone (a failed one is listed, for the operator to look at).
 */

export interface KeepRules {
  last: number;
  daily: number;
  weekly: number;
  monthly: number;
}

export interface RetentionCandidate {
  id: string;
  status: string;
  /** ISO time the backup counts for (its schedule slot; else when it was made). */
  at: string;
  /**
   * When it was made (ISO, milliseconds): orders backups of one slot. A Schedule's slot
   * time is whole seconds, so two runs started in one second (run-now twice, a backfill)
   * share a slot, and the newer one must still count as newer.
   */
  createdAt?: string;
  parentId: string | null;
  verifiedAt: string | null;
}

export interface RetentionPlan {
  /** Newest first, each with why. */
  keep: { id: string; at: string; reasons: string[] }[];
  /** Newest first: the order they can be deleted in (an incremental before what it builds on). */
  remove: { id: string; at: string; reason: string }[];
  /** Not considered (not `available`), with the status that kept them out. */
  untouched: { id: string; status: string }[];
}

/** The bucket a time falls in, per rule. */
const day = (d: Date) => d.toISOString().slice(0, 10);
const month = (d: Date) => d.toISOString().slice(0, 7);
function isoWeek(d: Date): string {
  // ISO 8601: the week with the year's first Thursday is week 1; weeks start on Monday.
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const dow = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - dow);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

export function keepsAnything(k: KeepRules): boolean {
  return k.last + k.daily + k.weekly + k.monthly > 0;
}

/** Sort order, newest first: slot, then when made, then id (see RetentionCandidate.createdAt). */
export function newerFirst(a: Pick<RetentionCandidate, 'at' | 'createdAt' | 'id'>, b: Pick<RetentionCandidate, 'at' | 'createdAt' | 'id'>): number {
  if (a.at !== b.at) return a.at < b.at ? 1 : -1;
  const ac = a.createdAt ?? '';
  const bc = b.createdAt ?? '';
  if (ac !== bc) return ac < bc ? 1 : -1;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

export function planRetention(backups: readonly RetentionCandidate[], rules: KeepRules): RetentionPlan {
  if (!keepsAnything(rules)) throw new Error('retention keeps nothing: at least one of keep-last, keep-daily, keep-weekly, keep-monthly must be positive');
  const byId = new Map(backups.map((b) => [b.id, b]));
  const usable = backups.filter((b) => b.status === 'available');
  // Newest first; equal slots by when they were made, then by id, so a plan never depends
  // on the order rows came in.
  const newestFirst = [...usable].sort(newerFirst);
  const reasons = new Map<string, string[]>();
  const keep = (id: string, why: string) => {
    const r = reasons.get(id) ?? [];
    r.push(why);
    reasons.set(id, r);
  };

  newestFirst.slice(0, rules.last).forEach((b, i) => keep(b.id, `keep-last ${i + 1}/${rules.last}`));
  const buckets = (n: number, name: string, bucketOf: (d: Date) => string) => {
    if (n <= 0) return;
    const seen = new Set<string>();
    for (const b of newestFirst) {
      const k = bucketOf(new Date(b.at));
      if (seen.has(k)) continue;
      seen.add(k);
      keep(b.id, `${name} ${k}`);
      if (seen.size >= n) break;
    }
  };
  buckets(rules.daily, 'keep-daily', day);
  buckets(rules.weekly, 'keep-weekly', isoWeek);
  buckets(rules.monthly, 'keep-monthly', month);
  const verified = newestFirst.find((b) => b.verifiedAt !== null);
  if (verified) keep(verified.id, `newest verified (${verified.verifiedAt})`);

  // Chains: what a kept backup is built on stays, whatever its own rules say. Parents of
  // any status count (a parent being restored is still needed); a parent outside this
  // list (made by hand, or already gone) is not ours to keep or delete.
  for (const id of [...reasons.keys()]) {
    let child = id;
    let parent = byId.get(id)?.parentId ?? null;
    const guard = new Set<string>([id]);
    while (parent !== null && byId.has(parent) && !guard.has(parent)) {
      guard.add(parent);
      keep(parent, `needed by ${child} (incremental)`);
      child = parent;
      parent = byId.get(parent)!.parentId;
    }
  }
  // A backup not considered (being made, say) that builds on one of ours keeps it too.
  for (const b of backups) {
    if (b.status === 'available') continue;
    let parent = b.parentId;
    let child = b.id;
    const guard = new Set<string>([b.id]);
    while (parent !== null && byId.has(parent) && !guard.has(parent)) {
      guard.add(parent);
      keep(parent, `needed by ${child} (${byId.get(child)!.status === 'available' ? 'incremental' : `${byId.get(child)!.status} incremental`})`);
      child = parent;
      parent = byId.get(parent)!.parentId;
    }
  }

  const plan: RetentionPlan = { keep: [], remove: [], untouched: [] };
  for (const b of newestFirst) {
    const r = reasons.get(b.id);
    if (r) plan.keep.push({ id: b.id, at: b.at, reasons: dedupe(r) });
    else plan.remove.push({ id: b.id, at: b.at, reason: 'matched by no keep rule, and no kept backup builds on it' });
  }
  for (const b of backups) if (b.status !== 'available') plan.untouched.push({ id: b.id, status: b.status });
  plan.remove = childrenFirst(plan.remove, byId);
  return plan;
}

/**
 * Orders deletions so an incremental goes before what it builds on, whatever the times say
 * (a slot time can be out of order with the chain after a backfill); newest first otherwise.
 */
function childrenFirst<T extends { id: string }>(remove: T[], byId: Map<string, RetentionCandidate>): T[] {
  const doomed = new Map(remove.map((r) => [r.id, r]));
  const children = new Map<string, string[]>();
  for (const r of remove) {
    const p = byId.get(r.id)?.parentId;
    if (p && doomed.has(p)) children.set(p, [...(children.get(p) ?? []), r.id]);
  }
  const out: T[] = [];
  const placed = new Set<string>();
  const place = (id: string) => {
    if (placed.has(id)) return;
    placed.add(id);
    for (const c of children.get(id) ?? []) place(c);
    out.push(doomed.get(id)!);
  };
  for (const r of remove) place(r.id);
  return out;
}

function dedupe(xs: string[]): string[] {
  return [...new Set(xs)];
}
