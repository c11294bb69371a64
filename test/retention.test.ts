/**
 * Retention rules (src/policy/retention.ts) on their own: GFS buckets, chains that go
 * whole or not at all, the newest verified backup, and what is left alone.
 */
import { describe, expect, it } from 'vitest';
import { planRetention, type RetentionCandidate } from '../src/policy/retention.js';

const DAY = 86_400_000;
const T0 = Date.parse('2026-03-02T02:00:00.000Z'); // a Monday
const at = (day: number, hour = 2) => new Date(T0 + day * DAY + (hour - 2) * 3_600_000).toISOString();
const full = (id: string, day: number, extra: Partial<RetentionCandidate> = {}): RetentionCandidate => ({ id, status: 'available', at: at(day), parentId: null, verifiedAt: null, ...extra });
const ids = (xs: { id: string }[]) => xs.map((x) => x.id);

describe('planRetention', () => {
  it('keep-last keeps the N newest, deletes the rest newest first', () => {
    const bs = [0, 1, 2, 3, 4].map((d) => full(`b${d}`, d));
    const p = planRetention(bs, { last: 2, daily: 0, weekly: 0, monthly: 0 });
    expect(ids(p.keep)).toEqual(['b4', 'b3']);
    expect(ids(p.remove)).toEqual(['b2', 'b1', 'b0']);
    expect(p.keep[0]!.reasons).toEqual(['keep-last 1/2']);
  });

  it('daily keeps the newest of each of the N newest days; weekly uses ISO weeks; monthly calendar months', () => {
    // Two backups a day for 40 days (2026-03-02 .. 2026-04-10).
    const bs: RetentionCandidate[] = [];
    for (let d = 0; d < 40; d++) for (const h of [2, 14]) bs.push({ ...full(`d${d}h${h}`, d), at: at(d, h) });
    const p = planRetention(bs, { last: 0, daily: 3, weekly: 2, monthly: 2 });
    const byReason = (prefix: string) => p.keep.filter((k) => k.reasons.some((r) => r.startsWith(prefix))).map((k) => k.id);
    expect(byReason('keep-daily')).toEqual(['d39h14', 'd38h14', 'd37h14']);
    // 2026-04-10 is a Friday of ISO week 15; the week before ends on Sunday 2026-04-05 (day 34).
    expect(byReason('keep-weekly')).toEqual(['d39h14', 'd34h14']);
    expect(p.keep.find((k) => k.id === 'd34h14')!.reasons).toEqual(['keep-weekly 2026-W14']);
    // March ends on day 29.
    expect(byReason('keep-monthly')).toEqual(['d39h14', 'd29h14']);
    expect(p.keep).toHaveLength(5);
    expect(p.remove).toHaveLength(80 - 5);
  });

  it('a kept incremental keeps its whole chain; a chain no kept backup needs goes whole, children first', () => {
    // Chain A: a0 <- a1 <- a2 (days 0-2); chain B: b3 <- b4 <- b5 (days 3-5).
    const bs = [
      full('a0', 0),
      full('a1', 1, { parentId: 'a0' }),
      full('a2', 2, { parentId: 'a1' }),
      full('b3', 3),
      full('b4', 4, { parentId: 'b3' }),
      full('b5', 5, { parentId: 'b4' }),
    ];
    const p = planRetention(bs, { last: 1, daily: 0, weekly: 0, monthly: 0 });
    expect(ids(p.keep)).toEqual(['b5', 'b4', 'b3']);
    expect(p.keep.find((k) => k.id === 'b3')!.reasons).toEqual(['needed by b4 (incremental)']);
    expect(ids(p.remove)).toEqual(['a2', 'a1', 'a0']);
  });

  it('deletes an incremental before its parent even when the slot times say otherwise', () => {
    // A backfilled parent slot newer than its child's (out of order): the child still goes first.
    const bs = [full('p', 5), full('c', 1, { parentId: 'p' }), full('keep', 9)];
    const p = planRetention(bs, { last: 1, daily: 0, weekly: 0, monthly: 0 });
    expect(ids(p.remove)).toEqual(['c', 'p']);
  });

  it('orders backups of one slot by when they were made: a Schedule slot is whole seconds', () => {
    // Two runs started in the same second share the slot; ids sort the other way round.
    const slot = at(3);
    const bs = [
      full('zz-older', 3, { createdAt: `${slot.slice(0, 19)}.100Z` }),
      full('aa-newer', 3, { parentId: 'zz-older', createdAt: `${slot.slice(0, 19)}.900Z` }),
    ];
    const p = planRetention(bs, { last: 1, daily: 0, weekly: 0, monthly: 0 });
    expect(p.keep.map((k) => [k.id, k.reasons])).toEqual([
      ['aa-newer', ['keep-last 1/1']],
      ['zz-older', ['needed by aa-newer (incremental)']],
    ]);
    expect(p.remove).toEqual([]);
    // Without the child link the older one goes, not the newer.
    const unlinked = planRetention([bs[0]!, { ...bs[1]!, parentId: null }], { last: 1, daily: 0, weekly: 0, monthly: 0 });
    expect(ids(unlinked.keep)).toEqual(['aa-newer']);
    expect(ids(unlinked.remove)).toEqual(['zz-older']);
  });

  it('always keeps the newest verified backup and its chain', () => {
    const bs = [full('f0', 0), full('i1', 1, { parentId: 'f0', verifiedAt: at(2) }), full('f2', 2), full('f3', 3)];
    const p = planRetention(bs, { last: 1, daily: 0, weekly: 0, monthly: 0 });
    expect(ids(p.keep).sort()).toEqual(['f0', 'f3', 'i1']);
    expect(p.keep.find((k) => k.id === 'i1')!.reasons[0]).toMatch(/^newest verified/);
    expect(ids(p.remove)).toEqual(['f2']);
  });

  it('leaves backups that are not available alone, and keeps what a running incremental builds on', () => {
    const bs = [full('f0', 0), full('f1', 1), full('f2', 2), { ...full('run', 3, { parentId: 'f0' }), status: 'creating' }, { ...full('bad', 4), status: 'error' }];
    const p = planRetention(bs, { last: 1, daily: 0, weekly: 0, monthly: 0 });
    expect(ids(p.keep).sort()).toEqual(['f0', 'f2']);
    expect(p.keep.find((k) => k.id === 'f0')!.reasons).toEqual(['needed by run (creating incremental)']);
    expect(ids(p.remove)).toEqual(['f1']);
    expect(p.untouched).toEqual([
      { id: 'run', status: 'creating' },
      { id: 'bad', status: 'error' },
    ]);
  });

  it('refuses rules that keep nothing', () => {
    expect(() => planRetention([full('a', 0)], { last: 0, daily: 0, weekly: 0, monthly: 0 })).toThrow(/keeps nothing/);
  });
});
