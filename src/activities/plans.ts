/**
 * What control activities hand the workflows: plans, places, timeouts. Pure types, so
 * workflows (which import activity types only) and activities share them without either
 * importing the other.
 */
import type { VolumeView } from '../api.js';
import type { VolumeLocator } from '../drivers/volume/driver.js';

/** Deliberate timeouts, from the config through the first activity's result (so replay sees them). */
export interface Timeouts {
  scheduleToStartMs: number;
  heartbeatMs: number;
}

export interface Loc extends VolumeLocator {
  backend: string;
}

export interface BackupPlan {
  backupId: string;
  volume: VolumeView;
  target: string;
  /** What the copy reads: the volume, a given snapshot, or the temporary snapshot. */
  source: Loc;
  /** The backup volume on a volume target; null for an object target. */
  dest: Loc | null;
  /** Set for a posix or s3 target: the chunked engine stores the backup there (absent in older histories). */
  objectTarget?: string | null;
  /** Object targets: build on the newest backup of the volume there. */
  incremental?: boolean;
  size: number;
  /** Set when the volume is in use (or for change tracking): the snapshot to take first and always remove. */
  tempSnapshot: Loc | null;
  /**
   * Object target, volume on reflink storage: the backup reads a temporary snapshot, which
   * is kept (as `changeBaseName(backupId)`) once the backup is available, so the next
   * incremental compares extent maps instead of reading everything (absent in older histories).
   */
  changeTracking?: boolean;
  timeouts: Timeouts;
}

export interface RestorePlan {
  backupId: string;
  volumeId: string;
  /** The restore made this volume: on failure it is deleted, not put in `error`. */
  createdVolume: boolean;
  /** The backup volume of a volume target; null when the backup is in an object target. */
  source: Loc | null;
  /** Set when the backup is in a posix or s3 target (absent in older histories). */
  objectTarget?: string | null;
  dest: Loc;
  size: number;
  timeouts: Timeouts;
}
