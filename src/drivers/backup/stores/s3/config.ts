/** Config of an S3 (or MinIO, or any S3-compatible) target. */
import { z } from 'zod';
import { chunkedTargetOptions, path } from '../../config.js';

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
});
export type S3Target = z.infer<typeof S3Target>;
