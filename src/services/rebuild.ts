/**
 * Rebuilding a lost catalog from the targets: every backup wrote a self-describing
 * record beside its data (`backup-<id>.backup.json`), so the backups are listable and
 * restorable again without the old catalog. Records already in the catalog are left as
 * they are; a record whose data is missing is skipped and reported.
 */
import type { BackupRecordFile } from './target-kinds.js';
import { listBackupRecords } from '../drivers/backup/chain.js';
import { catalogFromMetadata } from './records.js';
import type { Runtime } from './runtime.js';

export interface RebuildReport {
  imported: string[];
  alreadyKnown: string[];
  skipped: { record: string; reason: string }[];
}

export async function rebuildCatalog(rt: Runtime): Promise<RebuildReport> {
  const report: RebuildReport = { imported: [], alreadyKnown: [], skipped: [] };
  const c = rt.catalog;
  for (const [targetName, place] of rt.targetPlaces) {
    const driver = rt.driver(place.backend);
    for (const loc of await driver.listRecords(place.pool)) {
      const label = `${targetName}:${loc.name}`;
      let rec: BackupRecordFile;
      try {
        rec = (await driver.readRecord(loc)) as BackupRecordFile;
      } catch (e) {
        report.skipped.push({ record: label, reason: `unreadable: ${(e as Error).message}` });
        continue;
      }
      if (rec.format !== 'gbackup-volume-backup' || rec.version !== 1) {
        report.skipped.push({ record: label, reason: `unknown format ${String(rec.format)} v${String(rec.version)}` });
        continue;
      }
      const b = rec.backup;
      if (await c.findBackup(b.id)) {
        report.alreadyKnown.push(b.id);
        continue;
      }
      if ((await driver.volumeSize(loc)) !== b.size) {
        report.skipped.push({ record: label, reason: 'its data volume is missing or has the wrong size' });
        continue;
      }
      await c.insertBackup({
        id: b.id,
        name: b.name,
        volumeId: b.volumeId,
        snapshotId: b.snapshotId,
        target: targetName,
        status: 'available',
        size: b.size,
        location: { backend: place.backend, pool: place.pool, name: loc.name },
        workflowId: b.workflowId,
        sourcePreviousStatus: null,
      });
      await c.transitionBackup(b.id, ['available'], 'available', { storedBytes: b.storedBytes, ...(b.method ? { method: b.method } : {}), ...(b.node ? { node: b.node } : {}) });
      report.imported.push(b.id);
    }
  }
  // Object targets: each complete backup's metadata object is its record (oldest first, so parents come before their incrementals).
  for (const t of rt.config.targets) {
    if (t.driver === 'volume') continue;
    const target = await rt.objectTarget(t.name);
    for (const r of await listBackupRecords(target.store)) {
      const label = `${t.name}:${r.backupId}`;
      if (await c.findBackup(r.backupId)) {
        report.alreadyKnown.push(r.backupId);
        continue;
      }
      if (r.status === 'deleting') {
        report.skipped.push({ record: label, reason: 'a delete of it started and did not finish' });
        continue;
      }
      await catalogFromMetadata(c, t.name, r.metadata);
      report.imported.push(r.backupId);
    }
  }
  return report;
}
