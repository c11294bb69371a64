/**
 * Node activities: they run on one node's own task queue (`<taskQueue>-node-<name>`),
 * because a loop device exists only on the host that made it. Attach and detach keep
 * the node's ledger; the copy heartbeats its offset and resumes from it on a retry.
 */
import { Context, log } from '@temporalio/activity';
import type { ConnectionInfo } from '../drivers/volume/driver.js';
import type { Connectors } from '../connectors/registry.js';
import { copyExtents, killStrayCopies } from '../copy/dd.js';
import { copyExtentsOf, extentBytes, type Extent } from '../copy/extents.js';
import type { Throttle } from '../copy/throttle.js';
import type { AttachmentLedger } from '../node/ledger.js';
import { failpoint } from './failpoints.js';
import { settleAll } from '../settle.js';
import { BackendFull } from '../errors.js';
import { backupToStore } from '../drivers/backup/backup.js';
import { restoreFromStore } from '../drivers/backup/restore.js';
import { type ChunkedTarget } from '../drivers/backup/target.js';
import { createTransferActivities } from './transfer.js';
import { createHookActivities } from './hooks.js';
import type { HookConfig } from '../config/schema.js';

export interface CopyHeartbeat {
  doneOffset: number;
  bytesCopied: number;
}

export interface CopyResult {
  /** Bytes holding data in the source: what the copy had to move in total. */
  storedBytes: number;
  /** Bytes this attempt moved. */
  bytesCopied: number;
  /** Offset the copy resumed from (0 for a first attempt). */
  resumedFrom: number;
  node: string;
  /** The step attached the volumes itself (`attach`) and detached them again after the copy. */
  detached?: boolean;
  /** Milliseconds this attempt spent moving bytes (dd running), for telling copy time from orchestration. */
  copyMs?: number;
}

export interface CopyProgressSignal {
  bytesDone: number;
  bytesTotal: number;
  rateBps: number;
}

export interface NodeDeps {
  node: string;
  connector: Connectors;
  ledger: AttachmentLedger;
  throttle: Throttle;
  blockSize: number;
  /** Tells the workflow how far the copy is (a signal), for its progress query. */
  notify?: (workflowId: string, p: CopyProgressSignal) => Promise<void>;
  /** Reads a per-backup limit set through the workflow's throttle update. */
  readLimit?: (workflowId: string) => Promise<number | undefined>;
  /** Where volume import and export may read and write files on this node; undefined: anywhere. */
  transferDirs?: readonly string[];
  /** The object targets (posix, s3) this node stores chunked backups in. */
  objectTarget?: (name: string) => Promise<ChunkedTarget>;
  /** Consistency-group hooks this node may run (the config's `hooks`). */
  hooks?: readonly HookConfig[];
}

/** What the chunked backup's heartbeat carries: a retry resumes from doneOffset. */
export interface ObjectHeartbeat {
  doneOffset: number;
  /** Bytes this attempt read (backup) or wrote (restore). */
  bytes: number;
}

export interface ObjectBackupResult {
  /** Encoded bytes this backup put into the store over all attempts (after dedupe, compression, encryption). */
  storedBytes: number;
  /** Bytes of the volume holding data as of this backup. */
  dataBytes: number;
  /** Bytes in chunks that changed since the parent (all data for a full backup). */
  changedBytes: number;
  parentId: string | null;
  /** Where this attempt started (0 unless a crash interrupted an earlier one), and what it read. */
  resumedFrom: number;
  bytesRead: number;
  /** Bytes changed-block tracking let this attempt take from the parent unread. */
  bytesSkipped?: number;
  node: string;
  /** See CopyResult.detached. */
  detached?: boolean;
}

export interface ObjectRestoreResult {
  resumedFrom: number;
  bytesWritten: number;
  bytesFetched: number;
  node: string;
  /** See CopyResult.detached. */
  detached?: boolean;
}

/** How often progress reaches the workflow: each signal is a history event. */
const NOTIFY_EVERY_MS = 2000;

/** Below this much free space, a write that failed with EIO failed for lack of space. */
const FULL_BELOW_BYTES = 1024 * 1024;

/**
 * A write that failed for lack of space on the destination's backend: retrying would fail
 * the same way (the saga then deletes what the copy made, which frees the space again).
 * Direct writes (dd) see ENOSPC; buffered writes to a loop device only see EIO at
 * fdatasync, so an EIO on a backend with (almost) nothing free counts as full too.
 */
async function asBackendFull(e: unknown, dest: ConnectionInfo, connector: Connectors): Promise<unknown> {
  const code = (e as { code?: unknown } | undefined)?.code;
  if (code !== 'ENOSPC' && code !== 'EIO') return e;
  const free = code === 'EIO' ? await connector.freeBytes(dest).catch(() => null) : null;
  if (code === 'EIO' && (free === null || free >= FULL_BELOW_BYTES)) return e;
  return new BackendFull(
    `backend '${dest.backend}' is full: writing ${dest.path} failed with ${code}${free !== null ? ` (${free} bytes free)` : ''} (${(e as Error).message}); free space there, then retry`,
  );
}

export function createNodeActivities(deps: NodeDeps) {
  const { connector, ledger, node } = deps;
  const ctx = () => Context.current();
  const objectTarget = (name: string): Promise<ChunkedTarget> => {
    if (!deps.objectTarget) throw new Error(`node '${node}' has no object targets configured`);
    return deps.objectTarget(name);
  };

  /**
   * The Temporal side of an object copy: where a retry resumes (the last heartbeat), a
   * heartbeat every second and on every progress report, progress signals for the
   * workflow's query and the per-backup limit polled from its throttle update, as the dd
   * copy does. `end()` stops the clock.
   */
  const objectCopy = (total: number, bpsLimit: number | null | undefined) => {
    const c = ctx();
    const wf = c.info.workflowExecution?.workflowId ?? 'none';
    const last = c.info.heartbeatDetails as ObjectHeartbeat | undefined;
    let details: ObjectHeartbeat = { doneOffset: last?.doneOffset ?? 0, bytes: 0 };
    const beat = setInterval(() => c.heartbeat(details), 1000);
    const started = performance.now();
    let first: number | null = null;
    let lastNotify = started;
    let lastLimitRead = started;
    let limit = bpsLimit ?? undefined;
    return {
      resume: last ? { startOffset: last.doneOffset } : {},
      throttle: deps.throttle.forCopy(() => limit),
      signal: c.cancellationSignal,
      progress(doneOffset: number, bytes: number): void {
        details = { doneOffset, bytes };
        c.heartbeat(details);
        first ??= doneOffset;
        const t = performance.now();
        if (deps.notify && t - lastNotify >= NOTIFY_EVERY_MS) {
          lastNotify = t;
          const rateBps = (doneOffset - first) / Math.max(0.001, (t - started) / 1000);
          void deps.notify(wf, { bytesDone: doneOffset, bytesTotal: total, rateBps }).catch(() => undefined);
        }
        if (deps.readLimit && t - lastLimitRead >= NOTIFY_EVERY_MS) {
          lastLimitRead = t;
          void deps.readLimit(wf).then((l) => (limit = l)).catch(() => undefined);
        }
      },
      end(): void {
        clearInterval(beat);
      },
    };
  };

  /** Attach as its own step does it: recorded in the ledger first, so a crash right after still leaves a trace to reconcile. */
  const attach = async (connection: ConnectionInfo, role: 'source' | 'destination') => {
    await failpoint(`attach-${role}`);
    ledger.record({ protocol: connection.protocol, path: connection.path, backend: connection.backend, workflowId: ctx().info.workflowExecution?.workflowId ?? 'none' });
    return connector.connectVolume(connection);
  };
  const detach = async (connection: ConnectionInfo) => {
    await failpoint('detach');
    const r = await connector.disconnectVolume(connection);
    ledger.clear(connection.path);
    return r;
  };
  /**
   * The detach at the end of a copy that attached for itself. A copy that is done stays
   * done: should a detach fail, the workflow's own detach steps (still on its stack) take
   * over, as they would have without this.
   */
  const detachAfterCopy = async (connections: ConnectionInfo[]): Promise<boolean> => {
    try {
      await Promise.all(connections.map((c) => detach(c)));
      return true;
    } catch (e) {
      log.warn('detach after the copy failed; the workflow detaches', { error: String(e) });
      return false;
    }
  };

  return {
    ...createTransferActivities(deps),
    ...createHookActivities(deps),

    async attachVolume(input: { connection: ConnectionInfo; role: 'source' | 'destination' }): Promise<{ device: string; node: string }> {
      const { device } = await attach(input.connection, input.role);
      return { device, node };
    },

    async detachVolume(input: { connection: ConnectionInfo }): Promise<{ detached: string[] }> {
      return detach(input.connection);
    },

    /**
     * With `attach`, this one step attaches both volumes (as attachVolume does), copies and
     * detaches them: one node round trip per copy instead of five.
     */
    async copyVolume(input: { source: ConnectionInfo; dest: ConnectionInfo; size: number; sparse: boolean; bpsLimit?: number | null; attach?: boolean }): Promise<CopyResult> {
      const c = ctx();
      const wf = c.info.workflowExecution?.workflowId ?? 'none';
      const last = c.info.heartbeatDetails as CopyHeartbeat | undefined;
      const resumedFrom = last?.doneOffset ?? 0;
      // Asked while the devices attach (one process less on the path; it cannot fail: null means "all of it").
      const sourceExtents = connector.dataExtents(input.source, input.size);
      // Attaching is idempotent; a retry on a restarted node finds or remakes the devices.
      // Both at once (the connector gives them distinct devices); should one fail, the
      // other is waited for, so the workflow's detach undos never run ahead of an attach.
      const [src, dst] = await settleAll<[{ device: string }, { device: string }]>([
        input.attach ? attach(input.source, 'source') : connector.connectVolume(input.source),
        input.attach ? attach(input.dest, 'destination') : connector.connectVolume(input.dest),
      ]);
      if (c.info.attempt > 1) await killStrayCopies(dst.device);
      await failpoint('copy');
      const extents = copyExtentsOf(await sourceExtents, input.size);
      const storedBytes = extentBytes(extents);
      const bytesBefore = extentBytes(extents.map((e) => ({ start: e.start, end: Math.min(e.end, Math.max(e.start, resumedFrom)) })));
      // The limit in force when the copy was scheduled comes with the input; later
      // changes (the throttle update) are polled from the workflow while it runs.
      let limit: number | undefined = input.bpsLimit ?? undefined;
      const started = performance.now();
      // The first report after one interval: a rate over the first few milliseconds
      // (one burst of a throttled copy) would be wildly off.
      let lastNotify = started;
      let lastLimitRead = started;
      const throttle = deps.throttle.forCopy(() => limit);
      // Heartbeat on a clock too: a throttled copy may wait between dd runs, and silence
      // would look like a dead node.
      let details: CopyHeartbeat = { doneOffset: resumedFrom, bytesCopied: 0 };
      const beat = setInterval(() => c.heartbeat(details), 1000);
      const { bytesCopied } = await copyExtents({
        source: src.device,
        dest: dst.device,
        extents,
        blockSize: deps.blockSize,
        startOffset: resumedFrom,
        sparse: input.sparse,
        throttle,
        signal: c.cancellationSignal,
        onProgress: (p) => {
          details = { doneOffset: p.doneOffset, bytesCopied: p.bytesCopied };
          c.heartbeat(details);
          const t = performance.now();
          if (deps.notify && t - lastNotify >= NOTIFY_EVERY_MS) {
            lastNotify = t;
            const rateBps = p.bytesCopied / Math.max(0.001, (t - started) / 1000);
            void deps.notify(wf, { bytesDone: bytesBefore + p.bytesCopied, bytesTotal: storedBytes, rateBps }).catch(() => undefined);
          }
          if (deps.readLimit && t - lastLimitRead >= NOTIFY_EVERY_MS && t - started >= NOTIFY_EVERY_MS) {
            lastLimitRead = t;
            void deps.readLimit(wf).then((l) => (limit = l)).catch(() => undefined);
          }
        },
      })
        .catch(async (e: unknown) => {
          throw await asBackendFull(e, input.dest, connector);
        })
        .finally(() => clearInterval(beat));
      const copyMs = Math.round(performance.now() - started);
      c.heartbeat({ doneOffset: input.size, bytesCopied } satisfies CopyHeartbeat);
      if (input.attach) return { storedBytes, bytesCopied, resumedFrom, node, copyMs, detached: await detachAfterCopy([input.source, input.dest]) };
      return { storedBytes, bytesCopied, resumedFrom, node, copyMs };
    },

    /**
     * Chunked backup of an attached volume into an object target. A retry resumes: the
     * heartbeat's offset and the backup's journal in the store say which chunks are done,
     * and the store is asked before anything else is uploaded again.
     */
    async backupToObjects(input: {
      source: ConnectionInfo;
      target: string;
      backupId: string;
      volumeId: string;
      size: number;
      incremental: boolean;
      name?: string;
      labels?: Record<string, string>;
      bpsLimit?: number | null;
      /** Attach the volume first and detach it after (see copyVolume). */
      attach?: boolean;
      /** Changed-block tracking (control's findChanges): build on this backup, reading only `changed`. */
      parentId?: string;
      changed?: Extent[];
    }): Promise<ObjectBackupResult> {
      const target = await objectTarget(input.target);
      const src = input.attach ? await attach(input.source, 'source') : await connector.connectVolume(input.source);
      await failpoint('copy');
      const copy = objectCopy(input.size, input.bpsLimit);
      try {
        const r = await backupToStore({
          target,
          backupId: input.backupId,
          volumeId: input.volumeId,
          source: src.device,
          // Holes of the volume read as zeros: they are not even read.
          dataExtents: await connector.dataExtents(input.source, input.size),
          size: input.size,
          incremental: input.incremental,
          ...(input.parentId !== undefined ? { parentId: input.parentId, changed: input.changed ?? null } : {}),
          ...copy.resume,
          throttle: copy.throttle,
          signal: copy.signal,
          ...(input.name !== undefined ? { name: input.name } : {}),
          ...(input.labels !== undefined ? { labels: input.labels } : {}),
          onProgress: (p) => copy.progress(p.doneOffset, p.bytesRead),
        });
        const m = r.metadata;
        return {
          ...(input.attach ? { detached: await detachAfterCopy([input.source]) } : {}),
          storedBytes: m.stats.storedBytes,
          dataBytes: m.stats.dataBytes,
          changedBytes: m.stats.changedBytes,
          parentId: m.parent,
          resumedFrom: r.resumedFrom,
          bytesRead: r.bytesRead,
          bytesSkipped: r.bytesSkippedByCbt,
          node,
        };
      } finally {
        copy.end();
      }
    },

    /** Writes a backup's chain from an object target onto an attached volume; a retry skips what is written and synced. */
    async restoreFromObjects(input: { dest: ConnectionInfo; target: string; backupId: string; size: number; destIsZero: boolean; bpsLimit?: number | null; attach?: boolean }): Promise<ObjectRestoreResult> {
      const target = await objectTarget(input.target);
      const dst = input.attach ? await attach(input.dest, 'destination') : await connector.connectVolume(input.dest);
      await failpoint('copy');
      const copy = objectCopy(input.size, input.bpsLimit);
      try {
        const r = await restoreFromStore({
          target,
          backupId: input.backupId,
          dest: dst.device,
          // Every attempt writes the same bytes at the data chunks and never touches the zero
          // ones, so a destination that read zeros still does where the backup is zeros.
          destIsZero: input.destIsZero,
          ...copy.resume,
          throttle: copy.throttle,
          signal: copy.signal,
          onProgress: (p) => copy.progress(p.doneOffset, p.bytesWritten),
        });
        const result: ObjectRestoreResult = { resumedFrom: r.resumedFrom, bytesWritten: r.bytesWritten, bytesFetched: r.bytesFetched, node };
        return input.attach ? { ...result, detached: await detachAfterCopy([input.dest]) } : result;
      } catch (e) {
        throw await asBackendFull(e, input.dest, connector);
      } finally {
        copy.end();
      }
    },
  };
}

export type NodeActivities = ReturnType<typeof createNodeActivities>;
