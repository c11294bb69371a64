/**
 * The one configuration schema. Loaded and validated once per process (config/load.ts);
 * everything downstream receives a parsed `Config` and never re-reads the file.
 */
import { z } from 'zod';
import { DEFAULT_TASK_QUEUE } from '../api.js';
import { nameSchema } from '../names.js';
import { parseSize } from '../size.js';
import { OBJECT_TARGET_SCHEMAS } from '../drivers/backup/stores/registry.js';
import { BACKEND_SCHEMAS } from '../drivers/volume/registry.js';
import { dirPath } from '../drivers/volume/config.js';

const size = (what: string) =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    const r = parseSize(v, what);
    if ('error' in r) {
      ctx.addIssue({ code: 'custom', message: r.error });
      return z.NEVER;
    }
    return r.bytes;
  });

export const Backend = z.discriminatedUnion('driver', BACKEND_SCHEMAS);
export type BackendConfig = z.infer<typeof Backend>;

export const VolumeTarget = z.strictObject({
  name: nameSchema('target name'),
  /** Generic backup: a backend (and pool) used as backup storage, per the spec. */
  driver: z.literal('volume'),
  backend: nameSchema('backend'),
  pool: nameSchema('pool').optional(),
});

/**
 * `volume`: the spec's generic path (a backend as backup storage); `posix` and `s3`: the
 * chunked object targets (drivers/backup), which hold backups only.
 */
export const Target = z.discriminatedUnion('driver', [VolumeTarget, ...OBJECT_TARGET_SCHEMAS]);
export type TargetConfig = z.infer<typeof Target>;

/**
 * A command a consistency group runs on a node before (pre) and after (post) its snapshots,
 * e.g. fsfreeze. Declared here and only named by a workflow input: a command taken from the
 * input would be remote code execution for anyone who can start a workflow. Run with an
 * argument array, never a shell.
 */
export const HookConfig = z.strictObject({
  name: nameSchema('hook name'),
  command: z
    .array(z.string().min(1, 'a hook argument must not be empty').refine((a) => !a.includes('\0'), { message: 'a hook argument must not contain NUL' }))
    .min(1, 'a hook command needs at least the executable')
    .refine((c) => c[0] === undefined || c[0].startsWith('/'), { message: 'the hook executable (command[0]) must be an absolute path' }),
  timeoutSeconds: z.number().positive().max(3600).default(60),
});
export type HookConfig = z.infer<typeof HookConfig>;

export const NodeConfig = z.strictObject({
  name: nameSchema('node name'),
  backends: z.array(nameSchema('backend')).min(1, 'a node must reach at least one backend'),
});
export type NodeConfig = z.infer<typeof NodeConfig>;

/**
 * Where the catalog lives. `sqlite` (default): a file under stateDir, for one host.
 * `postgres`: a shared database, so control workers on several hosts share one catalog.
 * The password comes from passwordFile (or PGPASSWORD), never from the URL in a shared config.
 */
export const CatalogConfig = z.discriminatedUnion('driver', [
  z.strictObject({ driver: z.literal('sqlite'), file: dirPath.optional() }),
  z.strictObject({
    driver: z.literal('postgres'),
    url: z
      .string()
      .min(1, 'url must not be empty')
      .refine((u) => /^postgres(ql)?:\/\//.test(u), { message: "url must start with 'postgres://' (e.g. postgres://gbackup@db:5432/gbackup)" }),
    passwordFile: dirPath.optional(),
    /** Connections per process (control activities run concurrently). */
    poolSize: z.number().int().min(1).max(100).default(10),
  }),
]);
export type CatalogConfig = z.infer<typeof CatalogConfig>;

/**
 * TLS to the Temporal frontend: `true` trusts the system's roots; the object names a
 * private CA, an SNI name, and a client certificate + key for mTLS. Only paths are
 * kept here: the key stays in its file, readable by the worker alone.
 */
export const TemporalTls = z.union([
  z.boolean(),
  z.strictObject({
    serverName: z.string().min(1).optional(),
    serverRootCaCertFile: dirPath.optional(),
    clientCertFile: dirPath.optional(),
    clientKeyFile: dirPath.optional(),
  }),
]);
export type TemporalTls = z.infer<typeof TemporalTls>;

export const Config = z
  .strictObject({
    temporal: z
      .strictObject({
        address: z.string().min(1).default('127.0.0.1:7233'),
        namespace: z.string().min(1).default('default'),
        taskQueue: nameSchema('taskQueue').default(DEFAULT_TASK_QUEUE),
        /** A control worker adds gbackup's missing search attributes to the namespace at start; off: it refuses to start without them. */
        registerSearchAttributes: z.boolean().default(true),
        /** TLS to the frontend; TEMPORAL_TLS* variables override it (temporal/connection.ts). */
        tls: TemporalTls.optional(),
        /** The API key lives in this file (read at connect time), never in the config itself. */
        apiKeyFile: dirPath.optional(),
      })
      .prefault({}),
    /** Catalog, node ledgers and other local state. Relative paths are relative to the config file. */
    stateDir: dirPath.default('./var'),
    catalog: CatalogConfig.default({ driver: 'sqlite' }),
    /**
     * Directories on the nodes where `volume import` may read and `volume export` may write
     * (paths resolved, symlinks followed). Unset: any absolute path, as root: set it wherever
     * people other than the node's operators can start workflows.
     */
    transferDirs: z.array(dirPath).min(1).optional(),
    /**
     * Backends and targets are what a worker serves. A config without them is a client's:
     * the CLI needs only the Temporal connection, since every command runs on a worker.
     */
    backends: z.array(Backend).min(1, 'at least one backend is needed').optional(),
    targets: z.array(Target).min(1, 'at least one backup target is needed').optional(),
    defaultTarget: nameSchema('defaultTarget').optional(),
    /** Nodes and the backends each reaches; default: this host reaching every backend. */
    nodes: z.array(NodeConfig).min(1).optional(),
    /** Commands consistency groups may run around their snapshots (backup create --group --pre-hook/--post-hook). */
    hooks: z.array(HookConfig).optional(),
    /** Like Cinder's volume_copy_bps_limit: bytes per second shared by the copies on one node. */
    copyBpsLimit: size('copyBpsLimit').optional(),
    /**
     * How fast a lost worker or node is noticed (seconds). A node step that no worker
     * starts within scheduleToStart means the node is gone; an activity silent for
     * heartbeat seconds means its worker died. reconcileEvery: how often a node sweeps
     * its ledger for attachments no running workflow owns.
     */
    timeouts: z
      .strictObject({
        scheduleToStart: z.number().positive().default(60),
        heartbeat: z.number().positive().default(15),
        reconcileEvery: z.number().positive().default(30),
      })
      .prefault({}),
    /** dd block size; 4M measured best on loop devices (see README). */
    copyBlockSize: size('copyBlockSize').default(4 * 1024 * 1024),
  })
  .superRefine((c, ctx) => {
    const unique = (items: { name: string }[], key: string) => {
      const seen = new Set<string>();
      items.forEach((it, i) => {
        if (seen.has(it.name)) ctx.addIssue({ code: 'custom', path: [key, i, 'name'], message: `duplicate name '${it.name}'` });
        seen.add(it.name);
      });
    };
    unique(c.backends ?? [], 'backends');
    unique(c.targets ?? [], 'targets');
    if (c.nodes) unique(c.nodes, 'nodes');
    if (c.hooks) unique(c.hooks, 'hooks');
    if ((c.backends === undefined) !== (c.targets === undefined)) {
      ctx.addIssue({ code: 'custom', path: [c.backends === undefined ? 'backends' : 'targets'], message: 'a worker config needs both backends and targets (a client config neither)' });
    }
    const backends = new Map((c.backends ?? []).map((b) => [b.name, b]));
    (c.targets ?? []).forEach((t, i) => {
      if (t.driver !== 'volume') return;
      const b = backends.get(t.backend);
      if (!b) {
        ctx.addIssue({ code: 'custom', path: ['targets', i, 'backend'], message: `unknown backend '${t.backend}' (configured: ${[...backends.keys()].join(', ')})` });
      } else if (t.pool !== undefined && !(b.pools ?? []).includes(t.pool)) {
        ctx.addIssue({ code: 'custom', path: ['targets', i, 'pool'], message: `backend '${b.name}' has no pool '${t.pool}' (pools: ${(b.pools ?? []).join(', ') || 'none'})` });
      }
    });
    if (c.defaultTarget !== undefined && !(c.targets ?? []).some((t) => t.name === c.defaultTarget)) {
      ctx.addIssue({ code: 'custom', path: ['defaultTarget'], message: `unknown target '${c.defaultTarget}'` });
    }
    c.nodes?.forEach((n, i) =>
      n.backends.forEach((b, j) => {
        if (!backends.has(b)) ctx.addIssue({ code: 'custom', path: ['nodes', i, 'backends', j], message: `unknown backend '${b}'` });
      }),
    );
    if (c.copyBlockSize % 4096 !== 0) ctx.addIssue({ code: 'custom', path: ['copyBlockSize'], message: 'copyBlockSize must be a multiple of 4096 (direct I/O)' });
  });
export type Config = z.infer<typeof Config>;
