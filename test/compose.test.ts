// The deployment files are code too: docker-compose.yml must be valid per the Compose
// Specification (schema vendored in test/fixtures/compose-spec.json), wire the worker the way the
// Dockerfile and the config expect, and the example config must pass our own config schema.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, it, expect } from 'vitest';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import * as ajvFormats from 'ajv-formats';
import { parse as parseYaml } from 'yaml';
import { Config } from '../src/config/schema.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const read = (rel: string) => readFileSync(`${root}/${rel}`, 'utf8');

type Service = Record<string, unknown> & {
  build?: unknown;
  privileged?: boolean;
  environment?: Record<string, string> | string[];
  volumes?: (string | { type: string; source?: string; target: string; read_only?: boolean })[];
  depends_on?: Record<string, { condition: string }> | string[];
  ports?: unknown;
  secrets?: (string | { source: string; target?: string })[];
};
type ComposeFile = {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
  secrets?: Record<string, { environment?: string; file?: string }>;
};

// ajv-formats is CommonJS; depending on the loader its plugin is the namespace's default or
// the default's default.
type FormatsPlugin = (ajv: Ajv) => Ajv;
const formatsModule = ajvFormats as unknown as { default: FormatsPlugin | { default: FormatsPlugin } };
const addFormats: FormatsPlugin =
  typeof formatsModule.default === 'function' ? formatsModule.default : formatsModule.default.default;

function compileComposeSchema(): ValidateFunction {
  const schema = JSON.parse(read('test/fixtures/compose-spec.json')) as Record<string, unknown>;
  // The spec declares draft-07 (which is Ajv's default dialect) by an https URI Ajv does not
  // know by that name; the dialect is the same, so drop the declaration rather than fetch it.
  delete schema.$schema;
  const ajv = new Ajv({ strict: false, allErrors: true });
  addFormats(ajv);
  return ajv.compile(schema);
}

/**
 * Compose interpolates `${VAR}`, `${VAR:-default}` and `$$` before it validates; do the same with
 * an empty environment, so the test sees what `docker compose config` would with no .env file.
 */
function interpolate(text: string): string {
  return text.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g, (m, _name, fallback?: string) =>
    m === '$$' ? '$' : (fallback ?? ''),
  );
}

const validate = compileComposeSchema();
const compose = parseYaml(interpolate(read('docker-compose.yml')), { merge: true }) as ComposeFile;

function errorsOf(errors: ErrorObject[] | null | undefined): string {
  return (errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? ''} ${JSON.stringify(e.params)}`).join('\n');
}

function envOf(service: Service): Record<string, string> {
  const env = service.environment ?? {};
  if (!Array.isArray(env)) return env;
  return Object.fromEntries(env.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

describe('docker-compose.yml', () => {
  it('is valid according to the Compose Specification', () => {
    const ok = validate(compose);
    expect(ok, errorsOf(validate.errors)).toBe(true);
  });

  it('rejects a broken copy (the schema check can fail)', () => {
    const broken = structuredClone(compose);
    (broken.services.temporal as Service).ports = 'not-a-list';
    expect(validate(broken)).toBe(false);
    expect(errorsOf(validate.errors)).toContain('/services/temporal/ports');

    const typo = structuredClone(compose);
    (typo.services['gbackup-worker'] as Service).privilegd = true;
    expect(validate(typo)).toBe(false);
  });

  it('defines the Temporal stack and the worker', () => {
    for (const name of ['postgresql', 'temporal', 'temporal-admin-tools', 'temporal-ui', 'gbackup-worker']) {
      expect(compose.services, `service ${name}`).toHaveProperty(name);
    }
    const temporal = compose.services.temporal as Service;
    expect(temporal.depends_on).toMatchObject({ postgresql: { condition: 'service_healthy' } });
    expect(envOf(temporal).DB).toBe('postgres12');
    expect(envOf(temporal).POSTGRES_SEEDS).toBe('postgresql');
    expect(envOf(compose.services['temporal-ui'] as Service).TEMPORAL_ADDRESS).toBe('temporal:7233');
  });

  it('registers every gbackup search attribute, idempotently', () => {
    const admin = compose.services['temporal-admin-tools'] as Service;
    const script = JSON.stringify(admin.command);
    for (const name of ['GbackupVolumeId', 'GbackupBackupId', 'GbackupBackend', 'GbackupTarget', 'GbackupStatus']) {
      expect(script).toContain(name);
    }
    expect(script).toContain('search-attribute create');
    expect(script).toContain('search-attribute list');
  });

  it('builds the worker from the repository and gives it devices, state and config', () => {
    const worker = compose.services['gbackup-worker'] as Service;
    expect(worker.build).toBeDefined();
    expect(worker.privileged).toBe(true);
    const env = envOf(worker);
    expect(env.GBACKUP_CONFIG).toBe('/etc/gbackup/config.yaml');
    const volumes = worker.volumes ?? [];
    expect(volumes).toContain('/dev:/dev');
    expect(volumes).toContain('gbackup-state:/var/lib/gbackup');
    expect(compose.volumes).toHaveProperty('gbackup-state');
    const config = volumes.find((v) => typeof v === 'object' && v.target === env.GBACKUP_CONFIG);
    expect(config).toMatchObject({ type: 'bind', read_only: true });
    expect(worker.depends_on).toMatchObject({
      'temporal-admin-tools': { condition: 'service_completed_successfully' },
    });
  });
});

describe('deploy/config.example.yaml', () => {
  it('is a valid gbackup config whose backend paths the worker mounts', () => {
    const parsed = Config.safeParse(parseYaml(read('deploy/config.example.yaml')));
    expect(parsed.success, parsed.error?.message).toBe(true);
    const config = parsed.data!;
    expect(config.temporal.address).toBe('temporal:7233');
    const worker = compose.services['gbackup-worker'] as Service;
    const targets = (worker.volumes ?? []).map((v) => (typeof v === 'string' ? v.split(':')[1] : v.target));
    expect(targets).toContain(config.stateDir);
    expect(config.backends?.length).toBeGreaterThan(0);
    for (const backend of config.backends ?? []) {
      expect(targets, `mount for backend ${backend.name}`).toContain(backend.path);
    }
  });
});

describe('the catalog database', () => {
  const worker = compose.services['gbackup-worker'] as Service;
  const setup = compose.services['gbackup-catalog-setup'] as Service;
  const configText = read('deploy/config.example.yaml');
  const { catalog } = Config.parse(parseYaml(configText));
  const postgresCatalog = () => {
    if (catalog.driver !== 'postgres') throw new Error(`catalog.driver is ${catalog.driver}, not postgres`);
    return catalog;
  };
  /** Secret name by the path a service sees it at: /run/secrets/<target, else name>, as Compose mounts it. */
  function secretPaths(service: Service): Map<string, string> {
    return new Map(
      (service.secrets ?? []).map((s): [string, string] => {
        const [name, target] = typeof s === 'string' ? [s, s] : [s.source, s.target ?? s.source];
        return [target.startsWith('/') ? target : `/run/secrets/${target}`, name];
      }),
    );
  }

  it('is a postgres catalog on the compose file\'s PostgreSQL service, with no password in the url', () => {
    const url = new URL(postgresCatalog().url);
    expect(compose.services, `service ${url.hostname}`).toHaveProperty(url.hostname);
    expect((compose.services[url.hostname] as Service).image).toMatch(/^postgres:/);
    expect(url.port || '5432').toBe('5432');
    expect(url.username).toBe('gbackup');
    expect(url.pathname).toBe('/gbackup');
    expect(url.password).toBe('');
  });

  it('keeps the password in a secret from the environment, which the worker gets as the passwordFile', () => {
    const { passwordFile } = postgresCatalog();
    expect(passwordFile).toBeDefined();
    const secret = secretPaths(worker).get(passwordFile ?? '');
    expect(secret, `the worker mounts a secret at ${passwordFile}`).toBeDefined();
    // From the environment (or .env), so no password file sits in the repository.
    expect(compose.secrets?.[secret ?? '']).toEqual({ environment: 'GBACKUP_CATALOG_PASSWORD' });
    expect(configText).not.toMatch(/password\s*:/i);
    expect(Object.keys(envOf(worker)).filter((k) => /PGPASSWORD|CATALOG/i.test(k))).toEqual([]);
  });

  it('has a one-shot setup that makes the role and database idempotently, which the worker waits for', () => {
    expect(setup.image).toMatch(/^postgres:/);
    expect(setup.depends_on).toMatchObject({ postgresql: { condition: 'service_healthy' } });
    expect(envOf(setup).PGHOST).toBe('postgresql');
    expect(setup.restart).toMatch(/^(no|on-failure)/);
    expect([...secretPaths(setup).values()]).toContain('gbackup_catalog_password');
    const script = (setup.command as string[]).join('\n');
    expect(script).toContain('/run/secrets/gbackup_catalog_password');
    expect(script).toMatch(/CREATE ROLE gbackup\b.*WHERE NOT EXISTS/);
    expect(script).toMatch(/CREATE DATABASE gbackup OWNER gbackup\b.*WHERE NOT EXISTS/);
    expect(script).toContain('ALTER ROLE gbackup LOGIN PASSWORD');
    expect(script).toContain('ON_ERROR_STOP=1');
    expect(worker.depends_on).toMatchObject({ 'gbackup-catalog-setup': { condition: 'service_completed_successfully' } });
  });
});

describe('Dockerfile', () => {
  it('exists and its final stage runs bin/gbackup.js', () => {
    expect(existsSync(`${root}/Dockerfile`)).toBe(true);
    const lines = read('Dockerfile')
      .replace(/\\\r?\n/g, ' ')
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    const froms = lines.flatMap((l, i) => (/^FROM\s/i.test(l) ? [i] : []));
    expect(froms.length, 'a multi-stage build').toBeGreaterThanOrEqual(2);
    const finalStage = lines.slice(froms.at(-1));
    expect(finalStage[0]).toMatch(/^FROM\s+node:20-bookworm-slim\b/i);
    const entrypoint = finalStage.filter((l) => /^ENTRYPOINT\s/i.test(l)).at(-1);
    expect(entrypoint).toBeDefined();
    const argv = JSON.parse(entrypoint!.replace(/^ENTRYPOINT\s+/i, '')) as string[];
    expect(argv).toEqual(['node', 'bin/gbackup.js']);
    expect(finalStage.some((l) => /^COPY\s+--from=\S+\s+\S*dist\s/i.test(l))).toBe(true);
  });
});
