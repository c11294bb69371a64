/**
 * The `gbackup` command. Volume management runs here against the catalog and the
 * backends; backups, restores and deletes run as Temporal workflows, which this
 * command starts, watches and cancels.
 *
 * Exit codes: 0 success, 1 the operation failed, 2 bad usage or invalid input.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { BackupResult, RestoreResult, VerifyResult } from '../api.js';
import { exportBackup, importBackup } from '../services/records.js';
import { backupView } from '../catalog/catalog.js';
import { GbackupClient } from '../client/client.js';
import { loadConfig, type LoadedConfig } from '../config/load.js';
import { GbackupError, InvalidInput, InvalidStatus } from '../errors.js';
import { Runtime } from '../services/runtime.js';
import { formatBytes, parseSize } from '../size.js';
import { checkName, checkSize, Volumes } from '../services/volumes.js';
import { Snapshots } from '../services/snapshots.js';
import { rebuildCatalog } from '../services/rebuild.js';
import { checkBackupSource, checkDeletable, checkIncrementalTarget, checkRestorable, checkRestoreOnto } from '../services/rules.js';
import { checkTarget, describeCheck } from '../drivers/backup/check.js';
import { describeTarget } from '../drivers/backup/stores/registry.js';
import { makeOut, record, table, UsageError, type Out } from './output.js';
import { showProgress } from './progress.js';
import { runDemo, runDev, runWorker } from './serve.js';

const USAGE = `gbackup: back up and restore block volumes between any storage backends

usage: gbackup [--config FILE] [--json] COMMAND ...

  volume create --backend B [--pool P] --size 64M [--name N]
  volume import --backend B [--pool P] --file IMG [--name N]
  volume export ID --file OUT
  volume list | show ID | delete ID
  volume attach ID --instance NAME      mark in-use, expose as a block device here
  volume detach ID

  snapshot create VOLUME_ID [--name N]
  snapshot list [--volume ID] | show ID | delete ID

  backup create VOLUME_ID [--target T] [--name N] [--force] [--snapshot SNAP_ID] [--incremental] [--wait]
  backup list [--volume ID] | show ID
  backup delete ID [--wait]             refused while incrementals build on it
  backup verify ID [--schedule CRON | --unschedule]   read every chunk back (posix/s3), check hashes;
                                        or run that on a Temporal schedule
  backup export ID                      print the backup's record (posix/s3 targets)
  backup import --target T (RECORD | --file F)   make an exported backup known here
  backup cancel ID
  backup throttle ID --bps 50M|none
  backup restore BACKUP_ID (--backend B [--pool P] [--name N] | --volume VOLUME_ID) [--wait]

  backend list | show NAME
  target list
  target check [NAME] [--create-bucket]   can this host list, write, read and delete in the
                                        target (every object target when NAME is absent)?
                                        --create-bucket makes a missing S3 bucket first
  catalog rebuild            re-import backups from the records stored in every target
  worker [--node NAME]       run this host's worker (control + node roles)
  dev                        Temporal dev server (with UI) + worker, in one terminal
  demo                       dev server, worker, and a backup/restore across three backends

The config comes from --config FILE, else $GBACKUP_CONFIG, else an embedded default.
`;

type Opts = NonNullable<ParseArgsConfig['options']>;
const common: Opts = { config: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } };

function parse(argv: string[], options: Opts, positionals: { min: number; max: number; names: string }) {
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

const str = (v: string | boolean | undefined) => (typeof v === 'string' ? v : undefined);
function need(values: Record<string, string | boolean | undefined>, key: string): string {
  const v = str(values[key]);
  if (v === undefined || v === '') throw new UsageError(`--${key} is required`);
  return v;
}

const VOLUME_COLUMNS = ['id', 'name', 'backend', 'pool', 'size', 'status'];
const BACKUP_COLUMNS = ['id', 'volumeId', 'target', 'status', 'size', 'storedBytes', 'method', 'createdAt', 'error'];

async function withRuntime<T>(config: LoadedConfig, fn: (rt: Runtime) => Promise<T>): Promise<T> {
  const rt = await Runtime.open(config);
  try {
    return await fn(rt);
  } finally {
    await rt.close();
  }
}

async function withClient<T>(config: LoadedConfig, fn: (c: GbackupClient) => Promise<T>): Promise<T> {
  const c = await GbackupClient.connect(config);
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

async function volumeCommand(sub: string | undefined, argv: string[], out: Out): Promise<void> {
  switch (sub) {
    case 'create': {
      const { values } = parse(argv, { backend: { type: 'string' }, pool: { type: 'string' }, size: { type: 'string' }, name: { type: 'string' } }, { min: 0, max: 0, names: '' });
      const config = loadConfig(str(values.config));
      const size = checkSize(need(values, 'size'));
      const backend = checkName(need(values, 'backend'), 'backend');
      const pool = str(values.pool) !== undefined ? checkName(str(values.pool)!, 'pool') : undefined;
      const v = await withRuntime(config, (rt) => new Volumes(rt).create({ backend, pool, size, name: str(values.name) }));
      return out.result(v, () => record({ ...v }));
    }
    case 'import': {
      const { values } = parse(argv, { backend: { type: 'string' }, pool: { type: 'string' }, file: { type: 'string' }, name: { type: 'string' } }, { min: 0, max: 0, names: '' });
      const config = loadConfig(str(values.config));
      const backend = checkName(need(values, 'backend'), 'backend');
      const pool = str(values.pool) !== undefined ? checkName(str(values.pool)!, 'pool') : undefined;
      const v = await withRuntime(config, (rt) => new Volumes(rt).import({ backend, pool, file: need(values, 'file'), name: str(values.name) }));
      return out.result(v, () => record({ ...v }));
    }
    case 'export': {
      const { values, pos } = parse(argv, { file: { type: 'string' } }, { min: 1, max: 1, names: 'volume ID' });
      const config = loadConfig(str(values.config));
      const r = await withRuntime(config, (rt) => new Volumes(rt).export(pos[0]!, need(values, 'file')));
      return out.result({ volume: r.volume, file: r.file, bytes: r.bytes }, () => `exported ${r.volume.id} (${formatBytes(r.bytes)}) to ${r.file}`);
    }
    case 'list': {
      const { values } = parse(argv, {}, { min: 0, max: 0, names: '' });
      const vols = await withRuntime(loadConfig(str(values.config)), async (rt) => await rt.catalog.listVolumes());
      return out.result(vols, () => table(vols as unknown as Record<string, unknown>[], VOLUME_COLUMNS));
    }
    case 'show': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'volume ID' });
      const v = await withRuntime(loadConfig(str(values.config)), async (rt) => await rt.catalog.volume(checkName(pos[0]!, 'volume id', 'id')));
      return out.result(v, () => record({ ...v }));
    }
    case 'delete': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'volume ID' });
      const v = await withRuntime(loadConfig(str(values.config)), (rt) => new Volumes(rt).delete(pos[0]!));
      return out.result({ id: v.id, deleted: true }, () => `deleted volume ${v.id}`);
    }
    case 'attach': {
      const { values, pos } = parse(argv, { instance: { type: 'string' } }, { min: 1, max: 1, names: 'volume ID' });
      const v = await withRuntime(loadConfig(str(values.config)), (rt) => new Snapshots(rt).attach(pos[0]!, need(values, 'instance')));
      return out.result(v, () => `${v.id} attached for instance ${v.instance} at ${v.device}`);
    }
    case 'detach': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'volume ID' });
      const v = await withRuntime(loadConfig(str(values.config)), (rt) => new Snapshots(rt).detach(pos[0]!));
      return out.result(v, () => `${v.id} detached; now ${v.status}`);
    }
    default:
      throw new UsageError(`unknown volume command '${sub ?? ''}' (create, import, export, list, show, delete, attach, detach)`);
  }
}

async function backupCommand(sub: string | undefined, argv: string[], out: Out): Promise<void> {
  switch (sub) {
    case 'create': {
      const { values, pos } = parse(
        argv,
        { target: { type: 'string' }, name: { type: 'string' }, wait: { type: 'boolean' }, force: { type: 'boolean' }, snapshot: { type: 'string' }, incremental: { type: 'boolean' } },
        { min: 1, max: 1, names: 'VOLUME_ID' },
      );
      const incremental = values.incremental === true;
      const config = loadConfig(str(values.config));
      const volumeId = checkName(pos[0]!, 'volume id', 'id');
      const snapshotId = str(values.snapshot) !== undefined ? checkName(str(values.snapshot)!, 'snapshot id', 'id') : undefined;
      const force = values.force === true;
      const name = str(values.name) !== undefined ? checkName(str(values.name)!, 'backup name') : undefined;
      // Checked here for a clear answer at once; the workflow checks again, atomically.
      const { target, volume } = await withRuntime(config, async (rt) => {
        const t = rt.target(str(values.target));
        checkIncrementalTarget(t, incremental);
        const v = await rt.catalog.volume(volumeId);
        checkBackupSource(v, snapshotId !== undefined ? await rt.catalog.snapshot(snapshotId) : null, force);
        return { target: t, volume: v };
      });
      const backupId = `bak-${randomBytes(6).toString('hex')}`;
      return withClient(config, async (c) => {
        const handle = await c.startBackup(
          { volumeId, backupId, target: target.name, ...(name ? { name } : {}), ...(force ? { force } : {}), ...(snapshotId ? { snapshotId } : {}), ...(incremental ? { incremental } : {}) },
          { target: target.name, backend: volume.backend },
        );
        out.info(`backup ${backupId} of volume ${volumeId} started (workflow ${handle.workflowId})`);
        if (!values.wait) return out.result({ id: backupId, volumeId, target: target.name, status: 'creating', workflowId: handle.workflowId }, () => backupId);
        const r = await showProgress(c.result<BackupResult>(handle), () => c.progress(handle));
        return out.result(r.backup, () => record({ ...r.backup }));
      });
    }
    case 'list': {
      const { values } = parse(argv, { volume: { type: 'string' } }, { min: 0, max: 0, names: '' });
      const list = await withRuntime(loadConfig(str(values.config)), async (rt) => (await rt.catalog.listBackups(str(values.volume))).map(backupView));
      return out.result(list, () => table(list as unknown as Record<string, unknown>[], BACKUP_COLUMNS));
    }
    case 'show': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'backup ID' });
      const b = await withRuntime(loadConfig(str(values.config)), async (rt) => backupView(await rt.catalog.backup(checkName(pos[0]!, 'backup id', 'id'))));
      return out.result(b, () => record({ ...b }));
    }
    case 'delete': {
      const { values, pos } = parse(argv, { wait: { type: 'boolean' } }, { min: 1, max: 1, names: 'backup ID' });
      const config = loadConfig(str(values.config));
      const id = checkName(pos[0]!, 'backup id', 'id');
      await withRuntime(config, async (rt) => {
        const b = await rt.catalog.backup(id);
        checkDeletable(b, await rt.catalog.dependentsOf(id));
      });
      return withClient(config, async (c) => {
        const handle = await c.startDelete({ backupId: id });
        // A verify schedule of a deleted backup would only fail from now on.
        await c.unscheduleVerify(id).catch(() => false);
        if (!values.wait) return out.result({ id, status: 'deleting', workflowId: handle.workflowId }, () => `deleting backup ${id}`);
        await c.result(handle);
        return out.result({ id, deleted: true }, () => `deleted backup ${id}`);
      });
    }
    case 'cancel': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'backup ID' });
      const config = loadConfig(str(values.config));
      const id = checkName(pos[0]!, 'backup id', 'id');
      const b = await withRuntime(config, async (rt) => await rt.catalog.backup(id));
      if (b.status !== 'creating' || !b.workflowId) throw new InvalidStatus(`backup '${id}' is '${b.status}'; only a backup being created can be cancelled`);
      await withClient(config, (c) => c.cancel(b.workflowId!));
      return out.result({ id, cancelled: true, workflowId: b.workflowId }, () => `cancel requested for backup ${id}`);
    }
    case 'throttle': {
      const { values, pos } = parse(argv, { bps: { type: 'string' } }, { min: 1, max: 1, names: 'backup ID' });
      const config = loadConfig(str(values.config));
      const id = checkName(pos[0]!, 'backup id', 'id');
      const raw = need(values, 'bps');
      let bps: number | null = null;
      if (raw !== 'none') {
        const r = parseSize(raw, 'bps');
        if ('error' in r) throw new InvalidInput(r.error);
        bps = r.bytes;
      }
      const b = await withRuntime(config, async (rt) => await rt.catalog.backup(id));
      if (b.status !== 'creating' || !b.workflowId) throw new InvalidStatus(`backup '${id}' is '${b.status}'; only a running backup can be throttled`);
      const now = await withClient(config, (c) => c.throttle(b.workflowId!, bps));
      return out.result({ id, bps: now }, () => `backup ${id}: copy limit ${now === null ? 'none' : `${formatBytes(now)}/s`}`);
    }
    case 'restore': {
      const { values, pos } = parse(argv, { backend: { type: 'string' }, pool: { type: 'string' }, volume: { type: 'string' }, name: { type: 'string' }, wait: { type: 'boolean' } }, { min: 1, max: 1, names: 'BACKUP_ID' });
      const config = loadConfig(str(values.config));
      const backupId = checkName(pos[0]!, 'backup id', 'id');
      const backend = str(values.backend);
      const volumeId = str(values.volume);
      if ((backend === undefined) === (volumeId === undefined)) throw new UsageError('give exactly one of --backend B (a new volume) or --volume VOLUME_ID (an existing volume)');
      if (volumeId !== undefined && str(values.pool) !== undefined) throw new UsageError('--pool applies to a new volume (--backend), not to --volume');
      const input = {
        backupId,
        ...(volumeId !== undefined ? { volumeId: checkName(volumeId, 'volume id', 'id') } : {}),
        ...(backend !== undefined ? { backend: checkName(backend, 'backend') } : {}),
        ...(str(values.pool) !== undefined ? { pool: checkName(str(values.pool)!, 'pool') } : {}),
        ...(str(values.name) !== undefined ? { name: checkName(str(values.name)!, 'volume name') } : {}),
        ...(volumeId === undefined ? { newVolumeId: `vol-${randomBytes(6).toString('hex')}` } : {}),
      };
      await withRuntime(config, async (rt) => {
        const b = await rt.catalog.backup(backupId);
        checkRestorable(b);
        if (input.volumeId !== undefined) {
          checkRestoreOnto(await rt.catalog.volume(input.volumeId), b);
        } else {
          rt.volumePlace(input.backend!, input.pool);
        }
      });
      return withClient(config, async (c) => {
        const handle = await c.startRestore(input);
        out.info(`restore of backup ${backupId} started (workflow ${handle.workflowId})`);
        if (!values.wait) return out.result({ backupId, volumeId: input.volumeId ?? input.newVolumeId, status: 'restoring-backup', workflowId: handle.workflowId }, () => input.volumeId ?? input.newVolumeId!);
        const r = await showProgress(c.result<RestoreResult>(handle), () => c.progress(handle));
        return out.result(r.volume, () => record({ ...(r.volume) }));
      });
    }
    case 'verify': {
      const { values, pos } = parse(argv, { schedule: { type: 'string' }, unschedule: { type: 'boolean' } }, { min: 1, max: 1, names: 'backup ID' });
      const config = loadConfig(str(values.config));
      const id = checkName(pos[0]!, 'backup id', 'id');
      const cron = str(values.schedule);
      if (cron !== undefined && values.unschedule === true) throw new UsageError('give --schedule CRON or --unschedule, not both');
      if (values.unschedule === true) {
        const removed = await withClient(config, (c) => c.unscheduleVerify(id));
        return out.result({ backupId: id, unscheduled: removed }, () => (removed ? `verify schedule of ${id} removed` : `backup ${id} had no verify schedule`));
      }
      await withRuntime(config, async (rt) => {
        const b = await rt.catalog.backup(id);
        if (!rt.isObjectTarget(b.target)) throw new InvalidInput(`backup '${id}' is on volume target '${b.target}'; verify reads the chunk hashes of posix and s3 targets`);
      });
      if (cron !== undefined) {
        if (cron.trim() === '') throw new UsageError('--schedule needs a cron expression, such as "0 3 * * 0"');
        const r = await withClient(config, (c) => c.scheduleVerify(id, cron));
        return out.result({ backupId: id, ...r }, () => `verify of ${id} scheduled (${r.scheduleId}); next runs: ${r.nextRuns.join(', ')}`);
      }
      return withClient(config, async (c) => {
        const handle = await c.startVerify({ backupId: id });
        out.info(`verifying backup ${id} (workflow ${handle.workflowId})`);
        const r = await showProgress(c.result<VerifyResult>(handle), () => c.progress(handle));
        return out.result({ ...r, verified: true }, () => `backup ${id} verified: ${r.chunks} chunk(s), ${formatBytes(r.bytes)}, every hash matches`);
      });
    }
    case 'export': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'backup ID' });
      const id = checkName(pos[0]!, 'backup id', 'id');
      const r = await withRuntime(loadConfig(str(values.config)), (rt) => exportBackup(rt, id));
      return out.result(r, () => r.record);
    }
    case 'import': {
      const { values, pos } = parse(argv, { target: { type: 'string' }, file: { type: 'string' } }, { min: 0, max: 1, names: 'RECORD' });
      const target = checkName(need(values, 'target'), 'target');
      const file = str(values.file);
      if ((file === undefined) === (pos[0] === undefined)) throw new UsageError('give the exported record as an argument or with --file F');
      let text: string;
      if (file !== undefined) {
        try {
          text = await readFile(file, 'utf8');
        } catch (e) {
          throw new InvalidInput(`cannot read record file '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
        }
      } else {
        text = pos[0]!;
      }
      // `backup export --json` output is accepted as it is.
      const trimmed = text.trim();
      if (trimmed.startsWith('{')) {
        let rec: unknown;
        try {
          rec = (JSON.parse(trimmed) as { record?: unknown }).record;
        } catch {
          rec = undefined;
        }
        if (typeof rec !== 'string') throw new InvalidInput('the record is neither an exported record nor the JSON of `gbackup backup export --json`');
        text = rec;
      }
      const b = await withRuntime(loadConfig(str(values.config)), (rt) => importBackup(rt, target, text));
      return out.result(b, () => record({ ...b }));
    }
    default:
      throw new UsageError(`unknown backup command '${sub ?? ''}' (create, list, show, delete, cancel, throttle, restore, verify, export, import)`);
  }
}

async function snapshotCommand(sub: string | undefined, argv: string[], out: Out): Promise<void> {
  switch (sub) {
    case 'create': {
      const { values, pos } = parse(argv, { name: { type: 'string' } }, { min: 1, max: 1, names: 'VOLUME_ID' });
      const s = await withRuntime(loadConfig(str(values.config)), (rt) => new Snapshots(rt).create(pos[0]!, str(values.name)));
      return out.result(s, () => record({ ...s }));
    }
    case 'list': {
      const { values } = parse(argv, { volume: { type: 'string' } }, { min: 0, max: 0, names: '' });
      const list = await withRuntime(loadConfig(str(values.config)), async (rt) => await rt.catalog.listSnapshots(str(values.volume)));
      return out.result(list, () => table(list as unknown as Record<string, unknown>[], ['id', 'name', 'volumeId', 'backend', 'pool', 'size', 'status', 'backupId']));
    }
    case 'show': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'snapshot ID' });
      const s = await withRuntime(loadConfig(str(values.config)), async (rt) => await rt.catalog.snapshot(checkName(pos[0]!, 'snapshot id', 'id')));
      return out.result(s, () => record({ ...s }));
    }
    case 'delete': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'snapshot ID' });
      const s = await withRuntime(loadConfig(str(values.config)), (rt) => new Snapshots(rt).delete(pos[0]!));
      return out.result({ id: s.id, deleted: true }, () => `deleted snapshot ${s.id}`);
    }
    default:
      throw new UsageError(`unknown snapshot command '${sub ?? ''}' (create, list, show, delete)`);
  }
}

async function backendCommand(sub: string | undefined, argv: string[], out: Out): Promise<void> {
  const { values, pos } = parse(argv, {}, { min: sub === 'show' ? 1 : 0, max: sub === 'show' ? 1 : 0, names: 'backend NAME' });
  const config = loadConfig(str(values.config));
  const rows = await withRuntime(config, async (rt) =>
    Promise.all(
      [...rt.drivers.values()]
        .filter((d) => sub !== 'show' || d.backend === pos[0])
        .map(async (d) => {
          const caps = await d.capabilities();
          const stats = await d.stats(d.pools[0] ?? null);
          const targets = [...rt.targetPlaces].filter(([, p]) => p.backend === d.backend).map(([n, p]) => `${n}${p.pool ? `(${p.pool})` : ''}`);
          return {
            name: d.backend,
            driver: d.driverName,
            pools: d.pools.filter((p) => p !== null),
            path: d.placeLocation(null),
            totalBytes: stats.totalBytes,
            freeBytes: stats.freeBytes,
            snapshotMethod: caps.snapshotMethod,
            storageAssistedBackup: caps.storageAssistedBackup,
            sparseCopy: caps.sparseCopy,
            backupTargets: targets,
          };
        }),
    ),
  );
  if (sub === 'show') {
    if (rows.length === 0) throw new InvalidInput(`backend '${pos[0]}' not found`);
    return out.result(rows[0], () => record(rows[0]!));
  }
  if (sub !== 'list') throw new UsageError(`unknown backend command '${sub ?? ''}' (list, show)`);
  return out.result(rows, () =>
    table(
      rows.map((r) => ({ ...r, pools: r.pools.join(',') || '-', assisted: r.storageAssistedBackup ? 'yes' : 'no', sparse: r.sparseCopy ? 'yes' : 'no', targets: r.backupTargets.join(',') || '-' })),
      ['name', 'driver', 'pools', 'freeBytes', 'totalBytes', 'snapshotMethod', 'assisted', 'sparse', 'targets'],
    ),
  );
}

/** A target check that failed; --json output carries every step of every target checked. */
class TargetCheckFailed extends GbackupError {
  constructor(
    message: string,
    readonly details: unknown,
  ) {
    super(message);
  }
}

async function targetCommand(sub: string | undefined, argv: string[], out: Out): Promise<void> {
  switch (sub) {
    case 'list': {
      const { values } = parse(argv, {}, { min: 0, max: 0, names: '' });
      const config = loadConfig(str(values.config));
      const rows = config.targets.map((t) => ({
        name: t.name,
        driver: t.driver,
        location: t.driver === 'volume' ? `${t.backend}${t.pool ? `/${t.pool}` : ''}` : describeTarget(t),
        default: t.name === (config.defaultTarget ?? (config.targets.length === 1 ? t.name : undefined)),
      }));
      return out.result(rows, () => table(rows, ['name', 'driver', 'location', 'default']));
    }
    case 'check': {
      const { values, pos } = parse(argv, { 'create-bucket': { type: 'boolean' } }, { min: 0, max: 1, names: 'target NAME' });
      const config = loadConfig(str(values.config));
      const createBucket = values['create-bucket'] === true;
      const checks = await withRuntime(config, async (rt) => {
        const names = pos[0] !== undefined ? [rt.target(checkName(pos[0], 'target')).name] : config.targets.filter((t) => t.driver !== 'volume').map((t) => t.name);
        if (names.length === 0) throw new InvalidInput(`no object targets (posix, s3) configured; volume targets are checked when the worker starts (same-storage rule, free space)`);
        return Promise.all(
          names.map(async (name) => {
            const t = rt.target(name);
            if (t.driver === 'volume') throw new InvalidInput(`target '${name}' is a volume target (backend '${t.backend}'); check works on posix and s3 targets`);
            const target = await rt.objectTarget(name);
            const make = target.store.createContainer?.bind(target.store);
            if (createBucket && !make) throw new InvalidInput(`--create-bucket applies to s3 targets; target '${name}' is ${t.driver}, with no bucket to make`);
            const created = createBucket && make ? await make() : false;
            const c = await checkTarget(target);
            return { ...c, createdBucket: c.createdBucket || created };
          }),
        );
      });
      for (const c of checks) out.info(describeCheck(c));
      const failed = checks.filter((c) => !c.ok);
      if (failed.length > 0) {
        const first = failed[0]!.steps.find((s) => !s.ok)!;
        throw new TargetCheckFailed(`${failed.map((c) => `target '${c.target}'`).join(', ')} failed the check (${first.step}: ${first.error?.message})`, checks);
      }
      return out.result(checks, () => checks.map((c) => `${c.target}: ok`).join('\n'));
    }
    default:
      throw new UsageError(`unknown target command '${sub ?? ''}' (list, check)`);
  }
}

/** Global options may stand anywhere; they are moved behind the command for its parser. */
function hoistGlobals(argv: string[]): string[] {
  const globals: string[] = [];
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--json') globals.push(a);
    else if (a === '--config' && i + 1 < argv.length) globals.push(a, argv[++i]!);
    else if (a.startsWith('--config=')) globals.push(a);
    else rest.push(a);
  }
  return [...rest, ...globals];
}

export async function main(rawArgv: string[]): Promise<number> {
  const argv = hoistGlobals(rawArgv);
  const json = argv.includes('--json');
  const out = makeOut(json);
  const [cmd, sub, ...rest] = argv;
  try {
    if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    }
    switch (cmd) {
      case 'volume':
        await volumeCommand(sub, rest, out);
        break;
      case 'backup':
        await backupCommand(sub, rest, out);
        break;
      case 'backend':
        await backendCommand(sub, rest, out);
        break;
      case 'snapshot':
        await snapshotCommand(sub, rest, out);
        break;
      case 'target':
        await targetCommand(sub, rest, out);
        break;
      case 'catalog': {
        if (sub !== 'rebuild') throw new UsageError(`unknown catalog command '${sub ?? ''}' (rebuild)`);
        const { values } = parse(rest, {}, { min: 0, max: 0, names: '' });
        const r = await withRuntime(loadConfig(str(values.config)), (rt) => rebuildCatalog(rt));
        out.result(r, () => `imported ${r.imported.length} backup(s), ${r.alreadyKnown.length} already known${r.skipped.length ? `, skipped: ${r.skipped.map((x) => `${x.record} (${x.reason})`).join('; ')}` : ''}`);
        break;
      }
      case 'worker': {
        const { values } = parse([sub, ...rest].filter((x): x is string => x !== undefined), { node: { type: 'string' } }, { min: 0, max: 0, names: '' });
        await runWorker(loadConfig(str(values.config)), str(values.node));
        break;
      }
      case 'dev': {
        const { values } = parse([sub, ...rest].filter((x): x is string => x !== undefined), { 'ui-port': { type: 'string' }, port: { type: 'string' } }, { min: 0, max: 0, names: '' });
        await runDev(loadConfig(str(values.config)), { port: str(values.port), uiPort: str(values['ui-port']) });
        break;
      }
      case 'demo': {
        const { values } = parse([sub, ...rest].filter((x): x is string => x !== undefined), { 'keep-running': { type: 'boolean' }, size: { type: 'string' } }, { min: 0, max: 0, names: '' });
        await runDemo({ keepRunning: values['keep-running'] === true ? true : undefined, size: str(values.size) });
        break;
      }
      default:
        throw new UsageError(`unknown command '${cmd}'\n\n${USAGE}`);
    }
    return 0;
  } catch (e) {
    const code = e instanceof UsageError ? 2 : e instanceof GbackupError ? e.exitCode : 1;
    const type = e instanceof Error ? e.name : 'Error';
    const message = e instanceof Error ? e.message : String(e);
    const details = e instanceof TargetCheckFailed ? { details: e.details } : {};
    if (json) process.stdout.write(`${JSON.stringify({ error: { type, message, ...details } })}\n`);
    process.stderr.write(`gbackup: ${code === 2 && !(e instanceof UsageError) ? `${type}: ` : ''}${message}\n`);
    return code;
  }
}
