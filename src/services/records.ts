/**
 * Backup records between catalogs (Cinder's backup-export / backup-import) for the object
 * targets. A record is the backup's metadata object, which holds everything a restore
 * needs; importing it into another deployment's target (whose store holds the chunks,
 * say a replicated bucket) makes the backup listable and restorable there.
 */
import { decodeRecord, exportRecord, importRecord } from '../drivers/backup/records.js';
import type { BackupMetadata } from '../drivers/backup/format.js';
import { backupView, type Catalog } from '../catalog/catalog.js';
import type { BackupView } from '../api.js';
import { InvalidInput, InvalidStatus } from '../errors.js';
import { ImportConflict } from '../drivers/backup/errors.js';
import type { Runtime } from './runtime.js';

export interface ExportedBackup {
  backupId: string;
  target: string;
  /** Opaque, self-checking text: give it to `gbackup backup import` elsewhere. */
  record: string;
}

export async function exportBackup(rt: Runtime, backupId: string): Promise<ExportedBackup> {
  const b = await rt.catalog.backup(backupId);
  if (!rt.isObjectTarget(b.target)) {
    throw new InvalidInput(`backup '${b.id}' is on volume target '${b.target}'; export and import apply to posix and s3 targets, whose records are self-contained`);
  }
  if (b.status !== 'available') throw new InvalidStatus(`backup '${b.id}' is '${b.status}'; only an 'available' backup can be exported`);
  const t = await rt.objectTarget(b.target);
  return { backupId: b.id, target: b.target, record: await exportRecord(t.store, b.id) };
}

/** A catalog row for a backup known from its metadata object (import, rebuild). */
export async function catalogFromMetadata(c: Catalog, target: string, m: BackupMetadata): Promise<BackupView> {
  await c.insertBackup({
    id: m.backupId,
    name: m.name ?? m.backupId,
    volumeId: m.volumeId,
    snapshotId: m.snapshotId ?? null,
    target,
    status: 'available',
    size: m.size,
    location: null,
    workflowId: null,
    sourcePreviousStatus: null,
    parentId: m.parent,
  });
  return backupView(await c.transitionBackup(m.backupId, ['available'], 'available', { storedBytes: m.stats.storedBytes, method: 'chunked' }));
}

/**
 * Imports an exported record into `target`: its chunks (and its parent) must be in that
 * target's store already; every chunk's presence is checked before the catalog changes.
 */
export async function importBackup(rt: Runtime, targetName: string, text: string): Promise<BackupView> {
  const m = decodeRecord(text);
  if (!rt.isObjectTarget(targetName)) throw new InvalidInput(`target '${targetName}' is a volume target; import needs a posix or s3 target`);
  const c = rt.catalog;
  const known = await c.findBackup(m.backupId);
  if (known && known.target !== targetName) throw new ImportConflict(`backup '${m.backupId}' is already in this catalog, on target '${known.target}'`);
  if (m.parent !== null && !await c.findBackup(m.parent)) {
    throw new InvalidInput(`backup '${m.backupId}' is an incremental on '${m.parent}', which this catalog does not know; import '${m.parent}' first`);
  }
  const t = await rt.objectTarget(targetName);
  await importRecord({ target: t, record: text });
  if (known) return backupView(known);
  return catalogFromMetadata(c, targetName, m);
}
