/**
 * The alphabet of ids and names. Pure zod, no Temporal: drivers, stores and the catalog
 * check names with it too, and api.ts re-exports it for other services.
 */
import { z } from 'zod';

/**
 * Ids and names reach file paths and command lines (a volume `vol-1` becomes
 * `<backend>/<pool>/vol-1.img`), so they are restricted to a conservative alphabet.
 * `..`, `/` and NUL are impossible by construction; the explicit checks make the
 * error say which rule was broken.
 */
const forbidden = (what: string) =>
  z
    .string({ error: `${what} must be a string` })
    .refine((s) => !s.includes('\0'), { message: `${what} must not contain NUL` })
    .refine((s) => !s.includes('/'), { message: `${what} must not contain '/'` })
    .refine((s) => !s.includes('..'), { message: `${what} must not contain '..'` });

export const idSchema = (what = 'id') =>
  forbidden(what).pipe(
    z
      .string()
      .min(1, `${what} must not be empty`)
      .max(64, `${what} must be at most 64 characters`)
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, `${what} may only contain letters, digits, '.', '_' and '-', starting with a letter or digit`),
  );

export const nameSchema = (what = 'name') =>
  forbidden(what).pipe(
    z
      .string()
      .min(1, `${what} must not be empty`)
      .max(128, `${what} must be at most 128 characters`)
      .regex(/^[A-Za-z0-9][A-Za-z0-9._:+@-]*$/, `${what} may only contain letters, digits and . _ : + @ -, starting with a letter or digit`),
  );

/** Storage names the system derives from a (checked) backup id. */
export const tempSnapshotName = (backupId: string) => `backup-snap-${backupId}`;
/** The clone of what a backup read, kept on the volume's storage for the next incremental's change tracking. */
export const changeBaseName = (backupId: string) => `changes-${backupId}`;
/** The backup id a change-tracking clone belongs to, or null for any other storage name. */
export const changeBaseOf = (name: string): string | null => (name.startsWith('changes-') ? name.slice('changes-'.length) : null);
