/**
 * Config of the chunked object targets that every store shares: chunk size, compression,
 * encryption. Each store's own schema (stores/<name>/config.ts) spreads these in; the
 * registry (stores/registry.ts) joins them into the `targets` union. Secrets never live here: the config names a
 * key file or an environment variable, and S3 credentials come from the environment or
 * a credentials file, so neither a workflow input nor a history event ever holds them.
 */
import { z } from 'zod';
import { nameSchema } from '../../names.js';
import { MiB, parseSize } from '../../size.js';

/** Bounds of a chunk: below 64 KiB the per-object cost dominates, above 64 MiB memory does. */
export const MIN_CHUNK_SIZE = 64 * 1024;
export const MAX_CHUNK_SIZE = 64 * MiB;

export const path = (what: string) =>
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

/** The options every chunked object target has, spread into each store's schema. */
export const chunkedTargetOptions = {
  name: nameSchema('target name'),
  /** Default: DEFAULT_CHUNK_SIZE (format.ts), chosen by measurement. */
  chunkSize: chunkSize.optional(),
  compression: Compression.default('zstd'),
  encryption: EncryptionConfig.optional(),
};
