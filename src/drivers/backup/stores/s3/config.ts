/** Config of an S3 (or MinIO, or any S3-compatible) target. */
import { z } from 'zod';
import { chunkedTargetOptions, path } from '../../config.js';

/**
 * S3 Object Lock: every chunk and metadata object a backup writes is locked for
 * `retainDays` (a chunk a newer backup re-uses is locked as long as that one), so
 * neither gbackup nor anyone holding the credentials can delete or overwrite a backup
 * sooner. The bucket must have been made with object lock (`target check --create-bucket`
 * does that).
 */
export const ObjectLockConfig = z.strictObject(
  {
    retainDays: z
      .number({ error: 'objectLock.retainDays must be a number of days' })
      .int('objectLock.retainDays must be a whole number of days')
      .positive('objectLock.retainDays must be at least 1 (S3 retention is counted in days)'),
    /** COMPLIANCE: nobody can shorten or remove it; GOVERNANCE: users with s3:BypassGovernanceRetention can. */
    mode: z.enum(['GOVERNANCE', 'COMPLIANCE'], { error: "objectLock.mode must be 'GOVERNANCE' or 'COMPLIANCE'" }).default('COMPLIANCE'),
  },
  { error: (i) => (i.code === 'unrecognized_keys' ? `objectLock has unknown ${i.keys.length === 1 ? 'field' : 'fields'} ${i.keys.map((k) => `'${k}'`).join(', ')} (known: retainDays, mode)` : 'objectLock must be { retainDays, mode? }') },
);
export type ObjectLockConfig = z.infer<typeof ObjectLockConfig>;

export const S3Target = z.strictObject({
  ...chunkedTargetOptions,
  driver: z.literal('s3'),
  /** e.g. http://127.0.0.1:9000 for MinIO; AWS when absent. */
  endpoint: z.url({ error: 'endpoint must be a URL such as https://s3.example.com' }).optional(),
  region: z.string().min(1).default('us-east-1'),
  bucket: z
    .string()
    .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'bucket must be 3-63 characters of lowercase letters, digits, dots and dashes'),
  /** Key prefix inside the bucket, so several targets can share a bucket. */
  prefix: z
    .string()
    .regex(/^([A-Za-z0-9._-]+\/)*([A-Za-z0-9._-]+)?$/, "prefix may only contain letters, digits, '.', '_', '-' and '/' between names")
    .refine((p) => !p.split('/').some((s) => s === '.' || s === '..'), { message: "prefix must not contain '.' or '..' segments" })
    .default(''),
  /** MinIO and most non-AWS stores need path-style URLs (http://host/bucket/key). */
  forcePathStyle: z.boolean().default(false),
  /** JSON file {accessKeyId, secretAccessKey, sessionToken?}; else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY. */
  credentialsFile: path('credentialsFile').optional(),
  /** Make the bucket when it is missing (at worker start and before a backup); off: a missing bucket is an error. */
  createBucket: z.boolean().default(false),
  /** Absent: objects are not locked. */
  objectLock: ObjectLockConfig.optional(),
});
export type S3Target = z.infer<typeof S3Target>;
