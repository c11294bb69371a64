/**
 * The backup target seen from the control side: what differs between a volume target
 * (the spec's generic path: a backup is a volume on a backend) and a chunked target
 * (posix, s3: chunks and a metadata object in a store) when a backup is planned, checked,
 * recorded, read back or reclaimed. The control activities and the sweeps ask the kind
 * instead of branching on it; the workflows have their half in workflows/targets/.
 */
import type { VolumeView } from '../api.js';
import type { Loc } from '../activities/plans.js';
import { backupView, type BackupRecord } from '../catalog/catalog.js';
import type { TargetConfig } from '../config/schema.js';
import { openChain } from '../drivers/backup/chain.js';
import { deleteBackup } from '../drivers/backup/prune.js';
import { InsufficientSpace, InvalidInput } from '../errors.js';
import { formatBytes } from '../size.js';
import type { Runtime } from './runtime.js';

export type TargetDeps = Pick<Runtime, 'catalog' | 'driver' | 'objectTarget' | 'isObjectTarget'>;

/** The metadata record written beside every volume-target backup, enough to rebuild a lost catalog. */
export interface BackupRecordFile {
  format: 'gbackup-volume-backup';
  version: 1;
  backup: ReturnType<typeof backupView> & { location: Loc };
  volume: { id: string; name: string; backend: string; pool: string | null; size: number };
}

export const backupVolumeName = (backupId: string) => `backup-${backupId}`;

export interface TargetKind {
  /** Where a new backup goes: a volume on the target's backend, or the object target by name. */
  place(target: TargetConfig, backupId: string): { dest: Loc | null; objectTarget: string | null };
  /** Refuses, before anything changes, a target that cannot take the volume now (space; store, credentials, key). */
  checkUsable(rt: TargetDeps, target: TargetConfig, volume: VolumeView): Promise<void>;
  /** Where a stored backup is read from (both null: nowhere, the record is broken). */
  locate(backup: BackupRecord): { source: Loc | null; objectTarget: string | null };
  /** Refuses, before any volume changes, a backup that cannot be read (chain missing, key wrong or absent). */
  checkReadable(rt: TargetDeps, backup: BackupRecord): Promise<void>;
  /** Writes the backup's self-describing record beside it at finalize (a chunked backup's metadata already is one). */
  record(rt: TargetDeps, backup: BackupRecord, volume: VolumeView, done: { storedBytes: number; method: string; node: string | null }): Promise<void>;
  /** Removes what an abandoned backup stored; false (nothing done) while it is still attached on this host. */
  removeAbandoned(rt: TargetDeps, backup: BackupRecord, attached: Set<string>): Promise<boolean>;
  /** Why a delete must wait now, or null. */
  deleteBlocker(rt: TargetDeps, backup: BackupRecord): Promise<string | null>;
}

const volumeKind: TargetKind = {
  place(target, backupId) {
    if (target.driver !== 'volume') throw new InvalidInput(`target '${target.name}' is not a volume target`);
    return { dest: { backend: target.backend, pool: target.pool ?? null, name: backupVolumeName(backupId) }, objectTarget: null };
  },
  async checkUsable(rt, target, volume) {
    if (target.driver !== 'volume') return;
    const { freeBytes } = await rt.driver(target.backend).stats(target.pool ?? null);
    if (volume.size > freeBytes) throw new InsufficientSpace(`target '${target.name}' has ${formatBytes(freeBytes)} free; volume '${volume.id}' needs ${formatBytes(volume.size)}`);
  },
  locate(backup) {
    return { source: backup.location ? { ...backup.location } : null, objectTarget: null };
  },
  async checkReadable() {
    // The backup volume is read like any volume; the node checks it exists when it attaches.
  },
  async record(rt, b, volume, done) {
    if (!b.location) return;
    const record: BackupRecordFile = {
      format: 'gbackup-volume-backup',
      version: 1,
      backup: { ...backupView({ ...b, status: 'available', storedBytes: done.storedBytes, method: done.method, node: done.node }), location: b.location },
      volume: { id: volume.id, name: volume.name, backend: volume.backend, pool: volume.pool, size: volume.size },
    };
    await rt.driver(b.location.backend).writeRecord(b.location, record);
  },
  async removeAbandoned(rt, b, attached) {
    if (!b.location) return true;
    const driver = rt.driver(b.location.backend);
    if (attached.has(driver.initializeConnection(b.location).path)) return false;
    await driver.deleteVolume(b.location);
    await driver.deleteRecord(b.location);
    return true;
  },
  async deleteBlocker() {
    return null;
  },
};

const chunkedKind: TargetKind = {
  place(target) {
    return { dest: null, objectTarget: target.name };
  },
  async checkUsable(rt, target) {
    // Opens the store now: missing credentials or key, a missing bucket or directory, a
    // store that refuses us or does not answer: all refused before anything changes.
    const t = await rt.objectTarget(target.name);
    await t.key();
    await t.ready();
  },
  locate(backup) {
    return { source: null, objectTarget: backup.target };
  },
  async checkReadable(rt, backup) {
    await openChain(await rt.objectTarget(backup.target), backup.id);
  },
  async record() {
    // The engine wrote the metadata object last: it is the record.
  },
  async removeAbandoned(rt, b) {
    await deleteBackup({ target: await rt.objectTarget(b.target), backupId: b.id });
    return true;
  },
  async deleteBlocker(rt, b) {
    // A backup being made of the same volume may choose this one as its parent.
    const running = (await rt.catalog.listBackups(b.volumeId)).find((x) => x.id !== b.id && x.target === b.target && x.status === 'creating');
    return running ? `backup '${b.id}' cannot be deleted while backup '${running.id}' of the same volume is being made on target '${b.target}' (it may build on it)` : null;
  },
};

/** The kind of a configured target, by name. */
export function targetKind(rt: Pick<Runtime, 'isObjectTarget'>, target: string): TargetKind {
  return rt.isObjectTarget(target) ? chunkedKind : volumeKind;
}

/** The kind of a stored backup: one with a backup volume is a volume-target backup, whatever its target became since. */
export function backupKind(rt: Pick<Runtime, 'isObjectTarget'>, b: Pick<BackupRecord, 'location' | 'target'>): TargetKind {
  return b.location === null && rt.isObjectTarget(b.target) ? chunkedKind : volumeKind;
}
