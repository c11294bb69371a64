import { chunkedTarget } from './chunked.js';
import { volumeTarget } from './volume.js';
import type { BackupTarget } from './target.js';

/** The implementation a plan's target needs: an object target (posix, s3) is chunked, anything else a volume target. */
export function backupTargetFor(plan: { objectTarget?: string | null }): BackupTarget {
  return plan.objectTarget != null ? chunkedTarget : volumeTarget;
}

export type { BackupTarget };
