/**
 * Errors of the chunked object targets (posix directory, S3). Same rules as src/errors.ts:
 * stable class names travel through Temporal as failure types, and each class declares
 * whether a retry can help (a wrong key or a corrupt object: no) and whether it means a
 * damaged backup; src/error-registry.ts derives the lists from that.
 */
import { GbackupError, InvalidConfig, InvalidInput, PermanentError } from '../../errors.js';

/** A target's credentials are neither in its credentialsFile nor in the environment. */
export class MissingCredentials extends InvalidConfig {}
/** An object key that could escape the store's root or is not in the safe alphabet. */
export class InvalidObjectKey extends InvalidInput {}
/** The store has no object under this key. Retryable: an eventually consistent listing may lag. */
export class ObjectNotFound extends GbackupError {
  constructor(
    message: string,
    readonly key: string,
  ) {
    super(message);
  }
}

/** Encryption is configured (or the backup is encrypted) but the key cannot be had. */
export class MissingKey extends InvalidInput {}
/** The key file or variable holds something other than 32 bytes (raw, hex or base64). */
export class InvalidKey extends InvalidInput {}
/** The key's fingerprint is not the one the backup was written with: checked before any chunk is read. */
export class WrongKey extends InvalidInput {}

/** A stored chunk does not decode to the bytes its metadata names. */
export class ChunkCorrupt extends PermanentError {
  static override readonly damaged: boolean = true;
  constructor(
    message: string,
    readonly chunk: { offset: number; sha256: string; key: string },
  ) {
    super(message);
  }
}
/** AES-GCM refused a chunk: with a matching key fingerprint this means the object was altered. */
export class DecryptionFailed extends ChunkCorrupt {}
/** A chunk named by the metadata is not in the store. */
export class ChunkMissing extends ChunkCorrupt {}
/** verify found chunks that are missing or do not match; `failures` lists every one. */
export class BackupCorrupt extends PermanentError {
  static override readonly damaged: boolean = true;
  constructor(
    message: string,
    readonly failures: { offset: number; sha256: string; key: string; reason: string }[],
  ) {
    super(message);
  }
}

/** A metadata object this version cannot read (newer format, or not ours). */
export class UnsupportedFormat extends InvalidInput {}
/** A backup's parent (or an ancestor) has no metadata in the target. */
export class BackupChainBroken extends PermanentError {
  static override readonly damaged: boolean = true;
}
/** Delete refused: other backups are incrementals on top of this one. */
export class BackupHasDependents extends InvalidInput {}
/**
 * Delete refused before anything was touched: the backup's objects are under S3 Object
 * Lock until `retainUntil` (ISO). Not a failure of the store: retention policies count
 * the backup as retained; it can be deleted after that date.
 */
export class BackupRetained extends PermanentError {
  constructor(
    message: string,
    readonly retainUntil: string,
    readonly target: string,
  ) {
    super(message);
  }
}
/** One object (a version of it) is still under Object Lock, so the store refused its delete. */
export class ObjectRetained extends PermanentError {
  constructor(
    message: string,
    readonly key: string,
    readonly retainUntil: string,
  ) {
    super(message);
  }
}
/** An incremental was required but the target holds no usable full backup of the volume. */
export class NoParentBackup extends InvalidInput {}
/** An imported record conflicts with a different record already in the target. */
export class ImportConflict extends InvalidInput {}
/** The source ended before the size the caller gave. */
export class ShortRead extends PermanentError {}

/**
 * The store cannot be used as it is configured or as it is now, and retrying will not
 * change that: the operator must (create the bucket, fix the credentials, mount the
 * directory, free space). The message names the target and what is wrong.
 */
export class StoreUnusable extends PermanentError {
  constructor(
    message: string,
    /** The target's name from the config. */
    readonly target: string,
  ) {
    super(message);
  }
}
/** The bucket, or the posix directory, does not exist. */
export class StoreNotFound extends StoreUnusable {}
/** The store refuses our credentials or our rights (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, EACCES). */
export class StoreAccessDenied extends StoreUnusable {}
/** The posix directory is on a read-only filesystem. */
export class StoreReadOnly extends StoreUnusable {}
/** The store has no space left (ENOSPC, EDQUOT; MinIO's XMinioStorageFull). */
export class StoreFull extends StoreUnusable {}
/** The endpoint did not answer within a bounded number of tries (connection refused, no such host). */
export class StoreUnreachable extends StoreUnusable {}
