/**
 * Control activities of policies: what a run backs up, and what retention lets go. They
 * read the catalog and decide; the backups and deletes themselves are the ordinary
 * workflows, started by the policy's workflows as children.
 */
import type { PolicySpec, PruneBackupsInput, PrunePlanEntry, VolumeView } from '../api.js';
import type { BackupRecord } from '../catalog/catalog.js';
import { newerFirst, planRetention, type KeepRules } from '../policy/retention.js';
import type { Runtime } from '../services/runtime.js';

export interface PolicyRunPlan {
  /** The policy's target, resolved (the config's default when the policy names none). */
  target: string;
  volumes: { volumeId: string; incremental: boolean }[];
  skipped: { volumeId: string; why: string }[];
}

/** Links from a backup back to its full one (0 for a full backup). */
function chainLength(b: BackupRecord, byId: Map<string, BackupRecord>): number {
  let n = 0;
  let p = b.parentId;
  const seen = new Set<string>([b.id]);
  while (p !== null && !seen.has(p)) {
    seen.add(p);
    n++;
    p = byId.get(p)?.parentId ?? null;
  }
  return n;
}

const slot = (b: BackupRecord) => b.scheduledAt ?? b.createdAt;

export function createPolicyActivities(rt: Pick<Runtime, 'catalog' | 'target'>) {
  return {
    /**
     * The volumes of this run, each full or incremental: an incremental policy makes a full
     * backup when the volume's newest policy backup already has `fullEvery - 1` incrementals
     * on its full one, so chains stay short enough for retention to let whole ones go.
     */
    async planPolicyRun(input: { policy: PolicySpec }): Promise<PolicyRunPlan> {
      const p = input.policy;
      const target = rt.target(p.target).name;
      let volumes: VolumeView[];
      const skipped: PolicyRunPlan['skipped'] = [];
      if (p.volumeIds) {
        volumes = [];
        for (const id of p.volumeIds) {
          const v = await rt.catalog.findVolume(id);
          if (v) volumes.push(v);
          else skipped.push({ volumeId: id, why: `volume '${id}' does not exist (any more)` });
        }
      } else {
        const s = p.selector!;
        volumes = (await rt.catalog.listVolumes()).filter(
          (v) => (s.backend === undefined || v.backend === s.backend) && (s.pool === undefined || v.pool === s.pool) && (s.namePrefix === undefined || v.name.startsWith(s.namePrefix)),
        );
      }
      const mine = await rt.catalog.listPolicyBackups(p.name);
      const byId = new Map(mine.map((b) => [b.id, b]));
      const out: PolicyRunPlan['volumes'] = [];
      for (const v of volumes) {
        if (v.status === 'error' || v.status === 'deleting' || v.status === 'creating') {
          skipped.push({ volumeId: v.id, why: `volume '${v.id}' is '${v.status}'` });
          continue;
        }
        let incremental = false;
        if (p.incremental) {
          const newest = mine
            .filter((b) => b.volumeId === v.id && b.target === target && b.status === 'available')
            .sort((a, b) => newerFirst({ at: slot(a), createdAt: a.createdAt, id: a.id }, { at: slot(b), createdAt: b.createdAt, id: b.id }))[0];
          incremental = newest !== undefined && chainLength(newest, byId) + 1 < p.fullEvery;
        }
        out.push({ volumeId: v.id, incremental });
      }
      return { target, volumes: out, skipped };
    },

    /**
     * Retention per volume and target over the policy's own backups (a backup made by hand
     * is never the policy's to delete): the policy's target by its rules, the copy target
     * by the copy rules, a target the policy no longer names by the policy's rules.
     */
    async planPrune(input: PruneBackupsInput): Promise<PrunePlanEntry[]> {
      const target = rt.target(input.target).name;
      const mine = await rt.catalog.listPolicyBackups(input.policy);
      const groups = new Map<string, BackupRecord[]>();
      for (const b of mine) {
        const k = `${b.volumeId}\u0000${b.target}`;
        groups.set(k, [...(groups.get(k) ?? []), b]);
      }
      const plan: PrunePlanEntry[] = [];
      for (const [k, backups] of [...groups.entries()].sort(([a], [b]) => (a < b ? -1 : 1))) {
        const [volumeId, t] = k.split('\u0000') as [string, string];
        const rules: KeepRules = input.copyTo && t === input.copyTo.target && t !== target ? input.copyTo.keep : input.keep;
        const r = planRetention(
          backups.map((b) => ({ id: b.id, status: b.status, at: slot(b), createdAt: b.createdAt, parentId: b.parentId, verifiedAt: b.verifiedAt })),
          rules,
        );
        plan.push({ volumeId, target: t, ...r });
      }
      return plan;
    },
  };
}

export type PolicyActivities = ReturnType<typeof createPolicyActivities>;
