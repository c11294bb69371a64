/**
 * Errors with stable names. The names travel through Temporal as ApplicationFailure
 * types. Each class says what kind of failure it is, once, and the lists the workflows
 * and the CLI need are derived from that (errors/registry.ts):
 * - `permanent`: a retry cannot cure it (its name goes into `nonRetryableErrorTypes`);
 *   everything else (I/O hiccups, a busy device, a slow store) is retried;
 * - `badInput`: the caller asked for something impossible or malformed (CLI exit code 2);
 * - `damaged`: the stored backup itself is broken (a restore keeps the volume, in error).
 *
 * Deliberately free of Temporal imports: drivers and the catalog throw these too.
 */
export class GbackupError extends Error {
  static readonly permanent: boolean = false;
  static readonly badInput: boolean = false;
  static readonly damaged: boolean = false;

  /** Exit code the CLI uses: 2 for bad input or usage, 1 for a failed operation. */
  get exitCode(): 1 | 2 {
    return (this.constructor as typeof GbackupError).badInput ? 2 : 1;
  }
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A failure no retry can cure, that is not the caller's input: the operation fails at once (exit 1). */
export class PermanentError extends GbackupError {
  static override readonly permanent: boolean = true;
}

/** Bad input: the caller asked for something impossible or malformed. */
export class InvalidInput extends GbackupError {
  static override readonly permanent: boolean = true;
  static override readonly badInput: boolean = true;
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
/** A consistency group names a hook the config does not declare (hooks are never commands from the caller). */
export class HookNotFound extends InvalidInput {}
/** The spec's rule: backup storage must not be the storage the volumes live on. */
export class SameStorageTarget extends InvalidConfig {}
/** The Temporal namespace lacks gbackup's search attributes, and they could not be added. */
export class MissingSearchAttributes extends PermanentError {}
/** No node reaches both sides of a copy. */
export class NoEligibleNode extends PermanentError {}
/** A volume of that name exists with another size: a retry would find it again. */
export class VolumeExists extends PermanentError {}
/** A volume backend ran out of space while data was written to it (ENOSPC mid-copy). */
export class BackendFull extends PermanentError {}
/** A consistency group's hook exited non-zero or timed out: running it again is the operator's decision, not a retry's. */
export class HookFailed extends PermanentError {}
/** A failpoint fired with the non-retryable flavour (tests only). */
export class InjectedFault extends PermanentError {}
export class Cancelled extends GbackupError {}
/** The catalog database cannot be reached or refuses us; retried, since a database restart heals it. */
export class CatalogUnavailable extends GbackupError {}
