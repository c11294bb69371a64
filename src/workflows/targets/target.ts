/**
 * The backup target seen from the workflows: one implementation per kind of target
 * (volume target = the spec's generic path; chunked target = the posix and s3 stores),
 * each owning how a backup is stored, restored and deleted there. The workflows pick one
 * from the plan and never branch on the kind themselves.
 *
 * Each implementation issues exactly the activities, in exactly the order, that the
 * workflows issued before this seam existed, so recorded histories still replay.
 */
import type { BackupPlan, Loc, RestorePlan } from '../../activities/plans.js';
import type { Activities } from '../activities.js';
import type { Tracker } from '../common.js';
import type { Saga } from '../saga.js';

export interface StoredBackup {
  storedBytes: number;
  method: string;
  node: string | null;
  parentId?: string | null;
  /** Object targets (local mode): how the changes were found (BackupView.changes). */
  changes?: string;
}

export interface BackupContext {
  plan: BackupPlan;
  backupId: string;
  volumeId: string;
  name: string | undefined;
  tracker: Tracker;
  saga: Saga;
  acts: Activities;
}

export interface RestoreContext {
  plan: RestorePlan;
  tracker: Tracker;
  acts: Activities;
  /** Tells the workflow that the destination's old contents are being overwritten from now on. */
  touched: () => void;
}

export interface DeleteContext {
  backupId: string;
  /** What beginDeleteBackup found: the backup volume, or the object target holding the backup. */
  begun: { location: Loc | null; objectTarget?: string };
  control: Activities['control'];
}

export interface BackupTarget {
  /** Stores the backup (pushing the undo of what it makes onto the saga first); returns what finalize records. */
  backup(ctx: BackupContext): Promise<StoredBackup>;
  /** Writes the backup onto the plan's destination volume (made or cleared as needed). */
  restore(ctx: RestoreContext): Promise<void>;
  /** Removes the stored backup (idempotent; a chunked store refuses while other backups build on it). */
  delete(ctx: DeleteContext): Promise<void>;
}
