/**
 * Control activities of copyBackup: a backup copied to a second target becomes a backup
 * of its own there (new id, `copyOf` naming the source). begin claims the source as
 * `restoring` (so it cannot be deleted while read) and inserts the copy as `creating`;
 * finalize and fail give the source back its status; fail removes the copy's row, so a
 * failed or cancelled copy leaves nothing behind (the workflow deletes the data first).
 */
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Context } from '@temporalio/activity';
import { backupView } from '../catalog/catalog.js';
import { backupToStore } from '../drivers/backup/backup.js';
import { openChain } from '../drivers/backup/chain.js';
import { restoreFromStore } from '../drivers/backup/restore.js';
import { InvalidInput, InvalidStatus } from '../errors.js';
import { failpoint } from './failpoints.js';
import type { Runtime } from '../services/runtime.js';
import { checkRestorable } from '../services/rules.js';
import { backupKind, targetKind } from '../services/target-kinds.js';
import type { Loc, Timeouts } from './plans.js';

const workflowId = () => Context.current().info.workflowExecution?.workflowId ?? 'none';

export interface CopyPlan {
  copyId: string;
  sourceId: string;
  volumeId: string;
  size: number;
  /** The source backup's volume (volume target), or null. */
  source: Loc | null;
  sourceObject: string | null;
  /** The copy's volume (volume target), or null. */
  dest: Loc | null;
  destObject: string | null;
  /** Labels carried into an object destination's metadata (rebuild reads them). */
  labels: Record<string, string>;
  timeouts: Timeouts;
}

export type CopyDeps = Pick<Runtime, 'catalog' | 'driver' | 'target' | 'objectTarget' | 'isObjectTarget' | 'volumePlace'> & {
  /** stateDir: where the object -> object copy stages the image (holds the volume's data, sparse); absent: the OS temp dir. */
  config: { timeouts: { scheduleToStart: number; heartbeat: number }; stateDir?: string };
};

export function createCopyActivities(rt: CopyDeps) {
  const cat = () => rt.catalog;
  const timeouts: Timeouts = { scheduleToStartMs: rt.config.timeouts.scheduleToStart * 1000, heartbeatMs: rt.config.timeouts.heartbeat * 1000 };
  return {
    async beginCopy(input: { backupId: string; target: string; copyId: string; name?: string; policy?: string }): Promise<CopyPlan> {
      const wf = workflowId();
      const c = cat();
      const src = await c.backup(input.backupId);
      const target = rt.target(input.target);
      const { source, objectTarget: sourceObject } = backupKind(rt, src).locate(src);
      const { dest, objectTarget: destObject } = targetKind(rt, target.name).place(target, input.copyId);
      const plan: CopyPlan = {
        copyId: input.copyId,
        sourceId: src.id,
        volumeId: src.volumeId,
        size: src.size,
        source,
        sourceObject,
        dest,
        destObject,
        labels: { copyOf: src.id, sourceTarget: src.target },
        timeouts,
      };
      const existing = await c.findBackup(input.copyId);
      if (existing) {
        // A retry of this very step after it committed: same plan again.
        if (existing.workflowId === wf && existing.status === 'creating') return plan;
        throw new InvalidInput(`backup id '${input.copyId}' is already used`);
      }
      if (target.name === src.target) throw new InvalidInput(`backup '${src.id}' is already in target '${target.name}'; copy it to another target`);
      if (source === null && sourceObject === null) throw new InvalidInput(`backup '${src.id}' has no stored location`);
      if (src.status !== 'available') throw new InvalidStatus(`backup '${src.id}' is '${src.status}'; only an available backup can be copied`);
      if (source !== null && dest !== null && source.backend === dest.backend) {
        throw new InvalidInput(
          `backup '${src.id}' is on volume target '${src.target}' (backend '${source.backend}') and target '${target.name}' is on the same backend; a copy there would share the storage it is meant to protect against`,
        );
      }
      checkRestorable(src);
      // The chain and the key, before anything is made.
      await backupKind(rt, src).checkReadable(rt, src);
      await c.tx(async () => {
        // Read like a restore reads it: `restoring` keeps a delete away until the copy ends.
        await c.transitionBackup(src.id, ['available'], 'restoring');
        await c.insertBackup({
          id: input.copyId,
          name: input.name ?? input.copyId,
          volumeId: src.volumeId,
          snapshotId: null,
          target: target.name,
          status: 'creating',
          size: src.size,
          location: dest,
          workflowId: wf,
          sourcePreviousStatus: null,
          copyOf: src.id,
          // A policy's copy counts for the slot of the backup it copies.
          ...(input.policy !== undefined ? { policy: input.policy, scheduledAt: src.scheduledAt ?? src.createdAt } : {}),
        });
      });
      return plan;
    },

    /**
     * Object target to object target, through a sparse staging file on this worker: the
     * source chain is decoded into it and stored again with the destination's key and
     * compression, as an incremental on the newest backup of the volume already there
     * (content addressing then skips every chunk the destination has). A retry starts over.
     */
    async copyObjects(input: { sourceTarget: string; destTarget: string; sourceId: string; copyId: string; volumeId: string; size: number; name?: string; labels: Record<string, string> }): Promise<{
      storedBytes: number;
      parentId: string | null;
      chunksUploaded: number;
      chunksSkipped: number;
    }> {
      const ctx = Context.current();
      const src = await rt.objectTarget(input.sourceTarget);
      const dst = await rt.objectTarget(input.destTarget);
      const staging = rt.config.stateDir !== undefined ? join(rt.config.stateDir, 'staging') : tmpdir();
      await mkdir(staging, { recursive: true });
      const dir = await mkdtemp(join(staging, 'copy-'));
      const beat = setInterval(() => ctx.heartbeat(), 1000);
      try {
        const file = join(dir, 'image');
        await writeFile(file, '');
        await truncate(file, input.size);
        await restoreFromStore({ target: src, backupId: input.sourceId, dest: file, destIsZero: true, signal: ctx.cancellationSignal });
        const r = await backupToStore({
          target: dst,
          backupId: input.copyId,
          volumeId: input.volumeId,
          source: file,
          size: input.size,
          incremental: true,
          signal: ctx.cancellationSignal,
          ...(input.name !== undefined ? { name: input.name } : {}),
          labels: input.labels,
        });
        // Tests: a copy failing with its objects stored must leave none of them.
        await failpoint('copy.stored');
        const { view } = await openChain(dst, input.copyId);
        let dataChunks = 0;
        for (let i = 0; i < view.count; i++) if (view.isData(i)) dataChunks++;
        return { storedBytes: r.metadata.stats.storedBytes, parentId: r.metadata.parent, chunksUploaded: r.chunksStored, chunksSkipped: dataChunks - r.chunksStored };
      } finally {
        clearInterval(beat);
        await rm(dir, { recursive: true, force: true });
      }
    },

    async finalizeCopy(input: { copyId: string; storedBytes: number; method: string; node: string | null; parentId?: string | null }): Promise<ReturnType<typeof backupView>> {
      const c = cat();
      const b = await c.backup(input.copyId);
      if (b.status === 'available') return backupView(b);
      // A volume target's self-describing record (needs the volume's name; a deleted volume has none to give).
      const v = await c.findVolume(b.volumeId);
      if (v) await backupKind(rt, b).record(rt, b, v, input);
      await c.tx(async () => {
        await c.transitionBackup(b.id, ['creating'], 'available', {
          storedBytes: input.storedBytes,
          method: input.method,
          node: input.node ?? undefined,
          ...(input.parentId ? { parentId: input.parentId } : {}),
        });
        const s = b.copyOf ? await c.findBackup(b.copyOf) : null;
        if (s && s.status === 'restoring') await c.transitionBackup(s.id, ['restoring'], 'available');
      });
      return backupView(await c.backup(b.id));
    },

    /** Compensation of beginCopy (after the copy's data is gone): no copy row, the source back to `available`. */
    async failCopy(input: { copyId: string; backupId: string }): Promise<void> {
      const c = cat();
      const b = await c.findBackup(input.copyId);
      // Only this workflow's own copy: a refused duplicate id must not remove someone else's.
      if (!b || b.workflowId !== workflowId()) return;
      await c.tx(async () => {
        if (b.status === 'creating') await c.deleteBackupRecord(b.id);
        const s = await c.findBackup(input.backupId);
        if (s && s.status === 'restoring') await c.transitionBackup(s.id, ['restoring'], 'available');
      });
    },
  };
}

export type CopyActivities = ReturnType<typeof createCopyActivities>;
