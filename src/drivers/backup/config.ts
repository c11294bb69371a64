/**
 * Config shapes of the chunked object targets. They join the `targets` union in
 * config/schema.ts beside `driver: volume`. Secrets never live here: the config names a
 * key file or an environment variable, and S3 credentials come from the environment or
 * a credentials file, so neither a workflow input nor a history event ever holds them.
 */
import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { nameSchema } from '../../api.js';
import { MiB, parseSize } from '../../size.js';

/** Bounds of a chunk: below 64 KiB the per-object cost dominates, above 64 MiB memory does. */
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 64 * MiB;

const path = (what: string) =>
  z
    .string({ error: `${what} must be a string` })
    .min(1, `${what} must not be empty`)
    .refine((p) => !p.includes('\0'), { message: `${what} must not contain NUL` });

const chunkSize = z
  .union([z.string(), z.number()])
  .transform((v, ctx) => {
    const r = parseSize(v, 'chunkSize');
    if ('error' in r) {
      ctx.addIssue({ code: 'custom', message: r.error });
      return z.NEVER;
    }
    return r.bytes;
  })
  .refine((n) => n >= MIN_CHUNK_SIZE && n <= MAX_CHUNK_SIZE, { message: 'chunkSize must be between 64K and 64M' })
  .refine((n) => n % 4096 === 0, { message: 'chunkSize must be a multiple of 4K' });

export const Compression = z.enum(['zstd', 'none']);
export type Compression = z.infer<typeof Compression>;

export const EncryptionConfig = z
  .strictObject({
    /** A file holding the 32-byte key: raw, 64 hex digits, or base64. */
    keyFile: path('encryption.keyFile').optional(),
    /** An environment variable holding the key as 64 hex digits or base64. */
    keyEnv: z
      .string()
      .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'encryption.keyEnv must be an environment variable name')
      .optional(),
  })
  .refine((e) => (e.keyFile === undefined) !== (e.keyEnv === undefined), {
    message: 'encryption needs exactly one of keyFile or keyEnv',
  });
export type EncryptionConfig = z.infer<typeof EncryptionConfig>;

const common = {
  name: nameSchema('target name'),
  /** Default: DEFAULT_CHUNK_SIZE (format.ts), chosen by measurement. */
  chunkSize: chunkSize.optional(),
  compression: Compression.default('zstd'),
  encryption: EncryptionConfig.optional(),
};

export const PosixTarget = z.strictObject({
  ...common,
  driver: z.literal('posix'),
  /** A directory; relative paths are relative to the config file (resolveTargetPaths). */
  path: path('path'),
});
export type PosixTarget = z.infer<typeof PosixTarget>;

export const S3Target = z.strictObject({
  ...common,
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

export const ObjectTarget = z.discriminatedUnion('driver', [PosixTarget, S3Target]);
export type ObjectTarget = z.infer<typeof ObjectTarget>;

/** The same target with its relative paths (path, keyFile, credentialsFile) made absolute against `baseDir`. */
export function resolveTargetPaths<T extends ObjectTarget>(target: T, baseDir: string): T {
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));
  const out = { ...target };
  if (out.driver === 'posix') out.path = abs(out.path);
  if (out.driver === 's3' && out.credentialsFile !== undefined) out.credentialsFile = abs(out.credentialsFile);
  if (out.encryption?.keyFile !== undefined) out.encryption = { ...out.encryption, keyFile: abs(out.encryption.keyFile) };
  return out;
}
