/**
 * VolumeDriver: what a storage backend can do, in Cinder's words (create_volume,
 * initialize_connection, ...). The base class carries the generic parts every driver
 * shares; a driver overrides only what its storage does better, like Cinder's BaseVD.
 *
 * The generic backup itself (create destination, attach both, copy, detach) is
 * orchestrated by the backup workflow out of these primitives, because each step must
 * be a separately retried and compensated activity; `storageAssistedCopy` is the hook
 * through which a driver replaces the attach+dd part with its storage's own API.
 *
 * No Temporal imports here: drivers are plain TypeScript, tested on real storage.
 */
import { statfs } from 'node:fs/promises';
import { InsufficientSpace, PoolNotFound } from '../../errors.js';
import { formatBytes } from '../../size.js';
import type { Extent } from '../../copy/extents.js';
import type { ChangedBlocks } from '../../copy/cbt.js';

/** A volume (or snapshot, or backup volume) as the storage knows it. */
export interface VolumeLocator {
  pool: string | null;
  /** Storage-level name, derived from a validated id (`vol-…`, `backup-…`, `snap-…`). */
  name: string;
}

/** os-brick's connection_properties: what a node needs to attach the volume. */
export interface ConnectionInfo {
  /** Which connector attaches it (connectors/registry.ts): `file` is a local image file behind a loop device. */
  protocol: string;
  backend: string;
  /** The volume's address for its connector (for `file`, the image file); also what a node's ledger records. */
  path: string;
  readOnly: boolean;
}

export interface DriverCapabilities {
  snapshotMethod: 'reflink' | 'copy' | 'subvolume-snapshot';
  /** The driver can back up and restore within its storage without dd. */
  storageAssistedBackup: boolean;
  /** Holes are skipped: copies move only the bytes that were written. */
  sparseCopy: boolean;
  /**
   * The backend holds something per connection (an export, a target, an ACL) that
   * terminateConnection releases. Absent or false: local files, nothing to release, so
   * the workflow skips that step after a copy (its undo stays for failures).
   */
  exportsConnections?: boolean;
}

export interface StorageStats {
  totalBytes: number;
  freeBytes: number;
}

export interface VolumeDriver {
  readonly backend: string;
  readonly driverName: string;
  /** Configured pools; `[null]` for a pool-less backend. */
  readonly pools: readonly (string | null)[];
  /** Creates directories and checks the storage is usable; called once at start-up. */
  prepare(): Promise<void>;
  /** Directory whose subtree holds a pool's volumes: what the same-storage rule compares. */
  placeLocation(pool: string | null): string;
  capabilities(): Promise<DriverCapabilities>;
  stats(pool: string | null): Promise<StorageStats>;
  /** Idempotent: an existing volume of the same size is success. The volume reads as zeros. */
  createVolume(loc: VolumeLocator, size: number): Promise<void>;
  /** Idempotent: a volume already gone is success. */
  deleteVolume(loc: VolumeLocator): Promise<void>;
  /** Size in bytes, or null when the volume does not exist. */
  volumeSize(loc: VolumeLocator): Promise<number | null>;
  listVolumes(): Promise<VolumeLocator[]>;
  /** Makes an existing volume read as zeros, cheaply, so a sparse copy onto it is exact. */
  clearVolume(loc: VolumeLocator): Promise<void>;
  /** Point-in-time copy of a volume; idempotent. */
  createSnapshot(source: VolumeLocator, snapshot: VolumeLocator): Promise<void>;
  initializeConnection(loc: VolumeLocator, opts?: { readOnly?: boolean }): ConnectionInfo;
  /** Which byte ranges of the volume hold data (holes read as zeros), or null when the storage cannot tell. */
  dataExtents(loc: VolumeLocator, size: number): Promise<Extent[] | null>;
  /** sha256 of the volume's bytes (what a restore must reproduce), read from the storage without attaching. */
  sha256(loc: VolumeLocator): Promise<string>;
  /** Backend side of a detach; idempotent. Nothing to release for local files. */
  terminateConnection(loc: VolumeLocator): Promise<void>;
  /** A self-describing record stored beside a backup, so a lost catalog can be rebuilt. */
  writeRecord(loc: VolumeLocator, record: unknown): Promise<void>;
  readRecord(loc: VolumeLocator): Promise<unknown>;
  deleteRecord(loc: VolumeLocator): Promise<void>;
  listRecords(pool: string | null): Promise<VolumeLocator[]>;
  /**
   * Storage-assisted copy from `source` (on `sourceDriver`) to `dest` on this driver.
   * Returns false when this pair is not something the storage can do, and the caller
   * falls back to the generic attach + dd path.
   */
  storageAssistedCopy(sourceDriver: VolumeDriver, source: VolumeLocator, dest: VolumeLocator): Promise<boolean>;
  /**
   * Changed-block tracking: which byte ranges of `current` may differ from `base` (a
   * point-in-time copy this driver made of an ancestor of `current`), or why the storage
   * cannot tell. Never a subset of what really changed.
   */
  changedBlocks(base: VolumeLocator, current: VolumeLocator, size: number): Promise<ChangedBlocks>;
}

export abstract class BaseVolumeDriver implements VolumeDriver {
  abstract readonly driverName: string;
  readonly pools: readonly (string | null)[];

  constructor(
    readonly backend: string,
    readonly root: string,
    pools: readonly string[] | undefined,
  ) {
    this.pools = pools && pools.length > 0 ? pools : [null];
  }

  abstract prepare(): Promise<void>;
  abstract capabilities(): Promise<DriverCapabilities>;
  abstract createVolume(loc: VolumeLocator, size: number): Promise<void>;
  abstract deleteVolume(loc: VolumeLocator): Promise<void>;
  abstract volumeSize(loc: VolumeLocator): Promise<number | null>;
  abstract listVolumes(): Promise<VolumeLocator[]>;
  abstract clearVolume(loc: VolumeLocator): Promise<void>;
  abstract createSnapshot(source: VolumeLocator, snapshot: VolumeLocator): Promise<void>;
  abstract initializeConnection(loc: VolumeLocator, opts?: { readOnly?: boolean }): ConnectionInfo;
  abstract dataExtents(loc: VolumeLocator, size: number): Promise<Extent[] | null>;
  abstract sha256(loc: VolumeLocator): Promise<string>;
  abstract writeRecord(loc: VolumeLocator, record: unknown): Promise<void>;
  abstract readRecord(loc: VolumeLocator): Promise<unknown>;
  abstract deleteRecord(loc: VolumeLocator): Promise<void>;
  abstract listRecords(pool: string | null): Promise<VolumeLocator[]>;

  /** Throws PoolNotFound unless `pool` is one of this backend's pools (null for pool-less). */
  checkPool(pool: string | null): void {
    if (!this.pools.includes(pool)) {
      const known = this.pools.filter((p) => p !== null);
      throw new PoolNotFound(
        pool === null
          ? `backend '${this.backend}' has pools (${known.join(', ')}); name one with --pool`
          : known.length === 0
            ? `backend '${this.backend}' has no pools, but pool '${pool}' was given`
            : `backend '${this.backend}' has no pool '${pool}' (pools: ${known.join(', ')})`,
      );
    }
  }

  async changedBlocks(_base: VolumeLocator, _current: VolumeLocator, _size: number): Promise<ChangedBlocks> {
    return { method: 'fallback', reason: `backend '${this.backend}' (driver ${this.driverName}) cannot tell which blocks changed` };
  }

  placeLocation(pool: string | null): string {
    return pool === null ? this.root : `${this.root}/${pool}`;
  }

  async stats(pool: string | null): Promise<StorageStats> {
    const s = await statfs(this.placeLocation(pool));
    return { totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize };
  }

  /** Refuses sizes the pool cannot hold, before anything is made. */
  async checkSpace(pool: string | null, size: number): Promise<void> {
    const { freeBytes } = await this.stats(pool);
    if (size > freeBytes) {
      throw new InsufficientSpace(
        `backend '${this.backend}'${pool ? ` pool '${pool}'` : ''} has ${formatBytes(freeBytes)} free; ${formatBytes(size)} (${size} bytes) does not fit`,
      );
    }
  }

  async terminateConnection(_loc: VolumeLocator): Promise<void> {
    // Local files hold nothing on the backend side; exporting drivers override this.
  }

  async storageAssistedCopy(_sourceDriver: VolumeDriver, _source: VolumeLocator, _dest: VolumeLocator): Promise<boolean> {
    return false;
  }
}
