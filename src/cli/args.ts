/** Argument parsing shared by the CLI's commands: every name or id is checked before it leaves this process. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { randomBytes } from 'node:crypto';
import { GbackupClient } from '../client/client.js';
import type { LoadedConfig } from '../config/load.js';
import { checkName } from '../services/checks.js';
import { UsageError } from './output.js';

export type Opts = NonNullable<ParseArgsConfig['options']>;
export const common: Opts = { config: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } };

export function parse(argv: string[], options: Opts, positionals: { min: number; max: number; names: string }) {
  let r;
  try {
    r = parseArgs({ args: argv, options: { ...common, ...options }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (r.positionals.length < positionals.min) throw new UsageError(`missing ${positionals.names}`);
  if (r.positionals.length > positionals.max) throw new UsageError(`unexpected argument '${r.positionals[positionals.max]}'`);
  return { values: r.values as Record<string, string | boolean | undefined>, pos: r.positionals };
}

export const str = (v: string | boolean | undefined) => (typeof v === 'string' ? v : undefined);
/** An optional option that is a name or id: checked here, so nothing unchecked leaves this process. */
export function optName(values: Record<string, string | boolean | undefined>, key: string, what: string, kind: 'id' | 'name' = 'name'): string | undefined {
  const v = str(values[key]);
  return v === undefined ? undefined : checkName(v, what, kind);
}
export const newId = (prefix: string) => `${prefix}-${randomBytes(6).toString('hex')}`;
export function need(values: Record<string, string | boolean | undefined>, key: string): string {
  const v = str(values[key]);
  if (v === undefined || v === '') throw new UsageError(`--${key} is required`);
  return v;
}

export async function withClient<T>(config: LoadedConfig, fn: (c: GbackupClient) => Promise<T>): Promise<T> {
  const c = await GbackupClient.connect(config);
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

