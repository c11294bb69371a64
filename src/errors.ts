/**
 * Errors with stable names. The names travel through Temporal as ApplicationFailure
 * types, so they go into `nonRetryableErrorTypes`: a retry cannot fix bad input or a
 * broken rule, while everything else (I/O hiccups, a busy device) is retried.
 *
 * Deliberately free of Temporal imports: drivers and the catalog throw these too.
 */
export class GbackupError extends Error {
  /** Exit code the CLI uses: 2 for bad input or usage, 1 for a failed operation. */
  get exitCode(): 1 | 2 {
    return 1;
  }
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Bad input: the caller asked for something impossible or malformed. */
export class InvalidInput extends GbackupError {
  override get exitCode(): 1 | 2 {
    return 2;
  }
}

export class InvalidConfig extends InvalidInput {}
export class InvalidName extends InvalidInput {}
export class InvalidSize extends InvalidInput {}
export class VolumeNotFound extends InvalidInput {}
export class BackupNotFound extends InvalidInput {}
export class SnapshotNotFound extends InvalidInput {}
export class BackendNotFound extends InvalidInput {}
export class PoolNotFound extends InvalidInput {}
export class TargetNotFound extends InvalidInput {}
export class NodeNotFound extends InvalidInput {}
/** A status transition that the current status does not allow (Cinder's InvalidVolume/InvalidBackup). */
export class InvalidStatus extends InvalidInput {}
export class VolumeTooSmall extends InvalidInput {}
export class InsufficientSpace extends InvalidInput {}
export class BackupInProgress extends InvalidInput {}
export class BackupOnlyStorage extends InvalidInput {}
/** The spec's rule: backup storage must not be the storage the volumes live on. */
export class SameStorageTarget extends InvalidConfig {}
/** No node reaches both sides of a copy. */
export class NoEligibleNode extends GbackupError {}
/** A failpoint fired with the non-retryable flavour (tests only). */
export class InjectedFault extends GbackupError {}
export class Cancelled extends GbackupError {}

/** Every error type a retry cannot cure. */
export const NON_RETRYABLE_ERROR_TYPES = [
  'InvalidInput',
  'InvalidConfig',
  'InvalidName',
  'InvalidSize',
  'VolumeNotFound',
  'BackupNotFound',
  'SnapshotNotFound',
  'BackendNotFound',
  'PoolNotFound',
  'TargetNotFound',
  'NodeNotFound',
  'InvalidStatus',
  'VolumeTooSmall',
  'InsufficientSpace',
  'BackupInProgress',
  'BackupOnlyStorage',
  'SameStorageTarget',
  'NoEligibleNode',
  'InjectedFault',
  'ZodError',
  // The chunked object targets (drivers/backup/errors.ts): a retry cannot repair a wrong
  // key or a corrupt object. Named here, not imported, to keep this module dependency-free.
  'MissingCredentials',
  'InvalidObjectKey',
  'MissingKey',
  'InvalidKey',
  'WrongKey',
  'UnsupportedFormat',
  'BackupHasDependents',
  'NoParentBackup',
  'ImportConflict',
  'ChunkCorrupt',
  'DecryptionFailed',
  'ChunkMissing',
  'BackupCorrupt',
  'BackupChainBroken',
  'ShortRead',
];

/** Errors whose name marks bad input, for the CLI's exit code 2 when they come back from a workflow. */
export const INPUT_ERROR_TYPES = new Set(
  NON_RETRYABLE_ERROR_TYPES.filter(
    (n) => !['NoEligibleNode', 'InjectedFault', 'ChunkCorrupt', 'DecryptionFailed', 'ChunkMissing', 'BackupCorrupt', 'BackupChainBroken', 'ShortRead'].includes(n),
  ),
);
