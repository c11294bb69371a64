/** Checks of ids, names and sizes that callers send: light, so the CLI can use them before it connects. */
import { randomBytes } from 'node:crypto';
import { idSchema, nameSchema } from '../api.js';
import { InvalidName, InvalidSize } from '../errors.js';
import { MiB, parseSize } from '../size.js';

export const newId = (prefix: string) => `${prefix}-${randomBytes(6).toString('hex')}`;

export function checkName(value: string, what: string, kind: 'id' | 'name' = 'name'): string {
  const r = (kind === 'id' ? idSchema(what) : nameSchema(what)).safeParse(value);
  if (!r.success) throw new InvalidName(r.error.issues[0]?.message ?? `invalid ${what}`);
  return r.data;
}

export function checkSize(text: string): number {
  const r = parseSize(text);
  if ('error' in r) throw new InvalidSize(r.error);
  if (r.bytes % MiB !== 0) throw new InvalidSize(`size must be a whole number of MiB (direct I/O and loop devices need it), got ${r.bytes} bytes`);
  return r.bytes;
}
