import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import type { ZodError } from 'zod';
import { Config, type NodeConfig } from './schema.js';
import { resolveTargetPaths } from '../drivers/backup/stores/registry.js';
import { InvalidConfig } from '../errors.js';
import { resolveTemporalPaths } from '../temporal/connection.js';

/** Used when neither --config nor GBACKUP_CONFIG names a file: everything under ./var. */
export const DEFAULT_CONFIG_YAML = `# gbackup's embedded default: two file backends, one generic backup target.
temporal: { address: 127.0.0.1:7233, namespace: default, taskQueue: gbackup }
stateDir: ./var
backends:
  - { name: alpha, driver: file, path: ./var/backends/alpha, pools: [gold, silver] }
  - { name: beta,  driver: file, path: ./var/backends/beta }
targets:
  - { name: vault, driver: volume, backend: beta }
defaultTarget: vault
`;

export interface LoadedConfig extends Omit<Config, 'backends' | 'targets'> {
  /** Empty in a client's config (only the Temporal connection); a worker refuses to start so. */
  backends: NonNullable<Config['backends']>;
  targets: NonNullable<Config['targets']>;
  /** Where the config came from, for messages. */
  source: string;
  /** Always present after loading: the default is one node, this host, reaching every backend. */
  nodes: NodeConfig[];
}

export function formatZodError(err: ZodError, source: string): string {
  const lines = err.issues.map((i) => {
    const path = i.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '');
    return `  ${path || '(top level)'}: ${i.message}`;
  });
  return `invalid config ${source}:\n${lines.join('\n')}`;
}

/** Node name of this host: a valid name even for odd hostnames. */
export function defaultNodeName(): string {
  const h = hostname().split('.')[0]?.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '') ?? '';
  return h.length > 0 ? h.slice(0, 64) : 'node';
}

export function parseConfig(text: string, source: string, baseDir: string): LoadedConfig {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    throw new InvalidConfig(`invalid config ${source}: not valid YAML: ${(e as Error).message}`);
  }
  const parsed = Config.safeParse(raw ?? {});
  if (!parsed.success) throw new InvalidConfig(formatZodError(parsed.error, source));
  const c = parsed.data;
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));
  return {
    ...c,
    source,
    temporal: resolveTemporalPaths(c.temporal, abs),
    stateDir: abs(c.stateDir),
    ...(c.transferDirs !== undefined ? { transferDirs: c.transferDirs.map(abs) } : {}),
    catalog:
      c.catalog.driver === 'sqlite'
        ? { driver: 'sqlite', file: abs(c.catalog.file ?? join(c.stateDir, 'catalog.sqlite')) }
        : { ...c.catalog, ...(c.catalog.passwordFile !== undefined ? { passwordFile: abs(c.catalog.passwordFile) } : {}) },
    backends: (c.backends ?? []).map((b) => ({ ...b, path: abs(b.path) })),
    targets: (c.targets ?? []).map((t) => (t.driver === 'volume' ? t : resolveTargetPaths(t, baseDir))),
    nodes: c.nodes ?? (c.backends ? [{ name: defaultNodeName(), backends: c.backends.map((b) => b.name) }] : []),
  };
}

/**
 * The config file comes from --config, else GBACKUP_CONFIG, else the embedded default.
 * Relative paths in a file are relative to that file; in the default, to the cwd.
 */
export function loadConfig(file?: string): LoadedConfig {
  const path = file ?? process.env.GBACKUP_CONFIG;
  if (path === undefined || path === '') return parseConfig(DEFAULT_CONFIG_YAML, '(embedded default)', process.cwd());
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new InvalidConfig(`cannot read config file '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseConfig(text, `'${path}'`, dirname(resolve(path)));
}
