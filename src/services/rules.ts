/**
 * The rules of backup, restore and delete, in one place: the control activities enforce
 * them (atomically, at the start of each workflow) and the CLI checks them first for an
 * answer at once. Same checks, same error types, same words.
 */
import type { BackupView, VolumeView } from '../api.js';
import type { SnapshotView } from '../catalog/catalog.js';
import type { TargetConfig } from '../config/schema.js';
import { BackupInProgress, InvalidInput, InvalidStatus, VolumeTooSmall } from '../errors.js';
import { BackupHasDependents } from '../drivers/backup/errors.js';
import { formatBytes } from '../size.js';

/** --incremental needs a target that keeps chunks (posix, s3). */
export function checkIncrementalTarget(target: TargetConfig, incremental: boolean): void {
  if (incremental && target.driver === 'volume') {
    throw new InvalidInput(`target '${target.name}' is a volume target: it holds whole copies, so --incremental needs a posix or s3 target`);
  }
}

/** What a backup reads: an available snapshot of the volume, or the volume when available (or in use, with force). */
export function checkBackupSource(volume: VolumeView, snapshot: SnapshotView | null, force: boolean): void {
  if (snapshot) {
    if (snapshot.volumeId !== volume.id) throw new InvalidInput(`snapshot '${snapshot.id}' is of volume '${snapshot.volumeId}', not '${volume.id}'`);
    if (snapshot.status !== 'available') throw new InvalidStatus(`snapshot '${snapshot.id}' is '${snapshot.status}'; a backup needs it 'available'`);
    return;
  }
  if (volume.status === 'backing-up') throw new BackupInProgress(`volume '${volume.id}' is already being backed up`);
  if (volume.status === 'error') throw new InvalidStatus(`volume '${volume.id}' is in 'error'${volume.error ? ` (${volume.error})` : ''}; a volume in error cannot be backed up`);
  if (volume.status === 'in-use' && !force) throw new InvalidStatus(`volume '${volume.id}' is 'in-use' (instance ${volume.instance ?? '?'}); back it up with --force, through a temporary snapshot`);
  if (volume.status !== 'available' && volume.status !== 'in-use') throw new InvalidStatus(`volume '${volume.id}' is '${volume.status}'; a backup needs it 'available' or 'in-use'`);
}

export function checkRestorable(backup: Pick<BackupView, 'id' | 'status'>): void {
  if (backup.status !== 'available') throw new InvalidStatus(`backup '${backup.id}' is '${backup.status}'; only an 'available' backup can be restored`);
}

/** A restore onto an existing volume: it must be available and at least as large as the backup. */
export function checkRestoreOnto(volume: VolumeView, backup: Pick<BackupView, 'id' | 'size'>): void {
  if (volume.status !== 'available') throw new InvalidStatus(`volume '${volume.id}' is '${volume.status}'; a restore needs an 'available' volume`);
  if (volume.size < backup.size) {
    throw new VolumeTooSmall(`volume '${volume.id}' has ${volume.size} bytes (${formatBytes(volume.size)}); backup '${backup.id}' needs at least ${backup.size} (${formatBytes(backup.size)})`);
  }
}

/** As in Cinder: a backup being made or restored stays, and one that incrementals build on goes last. */
export function checkDeletable(backup: Pick<BackupView, 'id' | 'status'>, dependents: readonly { id: string }[]): void {
  if (backup.status === 'restoring') throw new InvalidStatus(`backup '${backup.id}' is being restored; it can be deleted when the restore ends`);
  if (backup.status === 'creating') throw new InvalidStatus(`backup '${backup.id}' is still being created; cancel it with 'gbackup backup cancel ${backup.id}'`);
  const ids = dependents.map((d) => `'${d.id}'`);
  if (ids.length > 0) {
    throw new BackupHasDependents(
      `backup '${backup.id}' cannot be deleted: backup${ids.length > 1 ? 's' : ''} ${ids.join(', ')} ${ids.length > 1 ? 'are incrementals' : 'is an incremental'} on top of it; delete ${ids.length > 1 ? 'them' : 'it'} first`,
    );
  }
}
