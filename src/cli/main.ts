/**
 * The `gbackup` command. Every command is a Temporal workflow run by a control worker
 * (backups, restores and deletes; volume, snapshot and catalog management; even lists),
 * so this process needs only the Temporal connection: it works from any host that
 * reaches Temporal. Only `worker`, `dev`, `demo` and `catalog migrate` do local work.
 *
 * Exit codes: 0 success, 1 the operation failed, 2 bad usage or invalid input.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { existsSync } from 'node:fs';
import type { BackupGroupResult, BackupResult, CopyBackupResult, RestoreResult, VerifyResult } from '../api.js';
import { loadConfig } from '../config/load.js';
import { GbackupError, InvalidInput, InvalidStatus } from '../errors.js';
import { formatBytes, parseSize } from '../size.js';
import { checkName, checkSize } from '../services/checks.js';
import { describeCheck } from '../drivers/backup/check.js';
import { makeOut, record, table, UsageError, type Out } from './output.js';
import { need, newId, optName, parse, str, withClient } from './args.js';
import { POLICY_USAGE, policyCommand } from './policy.js';
import { showProgress } from './progress.js';
/**
 * What only `worker`, `dev`, `demo` and `catalog migrate` need (the Temporal worker's native
 * bridge, the database drivers) is loaded by those commands alone: every other command is a
 * Temporal client call, and a CLI start-up that loads none of it is most of its latency.
 */
const serve = () => import('./serve.js');

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

  backup create VOLUME_ID [--target T] [--name N] [--force] [--snapshot SNAP_ID] [--incremental] [--bps 50M] [--wait]
  backup create --group V1,V2[,...] [--target T] [--incremental] [--name N] [--pre-hook NAME] [--post-hook NAME] [--wait]
                                        consistency group: snapshots of all at one moment, between
                                        the config's named hooks, then a backup of each
  backup list [--volume ID] | show ID
  backup delete ID [--wait]             refused while incrementals build on it
  backup verify ID [--schedule CRON | --unschedule]   read every chunk back (posix/s3), check hashes;
                                        or run that on a Temporal schedule
  backup export ID                      print the backup's record (posix/s3 targets)
  backup import --target T (RECORD | --file F)   make an exported backup known here
  backup cancel ID
  backup throttle ID --bps 50M|none
  backup restore BACKUP_ID (--backend B [--pool P] [--name N] | --volume VOLUME_ID) [--wait]
  backup copy BACKUP_ID --to TARGET [--name N] [--wait]   a backup of its own in another target

${POLICY_USAGE}
  backend list | show NAME
  target list
  target check [NAME] [--create-bucket]   can this host list, write, read and delete in the
                                        target (every object target when NAME is absent)?
                                        --create-bucket makes a missing S3 bucket first
  catalog rebuild            re-import backups from the records stored in every target
  catalog migrate --from FILE   copy an SQLite catalog (stateDir/catalog.sqlite) into the
                             config's PostgreSQL catalog; counts and statuses checked
  worker [--node NAME] [--role control|node|both]   run this host's worker (default both roles)
  dev                        Temporal dev server (with UI) + worker, in one terminal
  demo                       dev server, worker, and a backup/restore across three backends

The config comes from --config FILE, else $GBACKUP_CONFIG, else an embedded default.
`;

const VOLUME_COLUMNS = ['id', 'name', 'backend', 'pool', 'size', 'status'];
const BACKUP_COLUMNS = ['id', 'volumeId', 'target', 'status', 'size', 'storedBytes', 'method', 'createdAt', 'error'];

async function volumeCommand(sub: string | undefined, argv: string[], out: Out): Promise<void> {
  switch (sub) {
    case 'create': {
      const { values } = parse(argv, { backend: { type: 'string' }, pool: { type: 'string' }, size: { type: 'string' }, name: { type: 'string' } }, { min: 0, max: 0, names: '' });
      const config = loadConfig(str(values.config));
      const size = checkSize(need(values, 'size'));
      const backend = checkName(need(values, 'backend'), 'backend');
      const pool = optName(values, 'pool', 'pool');
      const name = optName(values, 'name', 'volume name');
      const v = await withClient(config, (c) => c.createVolume({ volumeId: newId('vol'), backend, size, ...(pool ? { pool } : {}), ...(name ? { name } : {}) }));
      return out.result(v, () => record({ ...v }));
    }
    case 'import': {
      const { values } = parse(argv, { backend: { type: 'string' }, pool: { type: 'string' }, file: { type: 'string' }, name: { type: 'string' }, node: { type: 'string' } }, { min: 0, max: 0, names: '' });
      const config = loadConfig(str(values.config));
      const backend = checkName(need(values, 'backend'), 'backend');
      const pool = optName(values, 'pool', 'pool');
      const name = optName(values, 'name', 'volume name');
      const node = optName(values, 'node', 'node');
      // The file is read on the node; a relative path means this shell's directory.
      const file = resolve(need(values, 'file'));
      const v = await withClient(config, (c) =>
        c.importVolume({ volumeId: newId('vol'), backend, file, ...(pool ? { pool } : {}), ...(name ? { name } : {}), ...(node ? { node } : {}) }),
      );
      return out.result(v, () => record({ ...v }));
    }
    case 'export': {
      const { values, pos } = parse(argv, { file: { type: 'string' }, node: { type: 'string' } }, { min: 1, max: 1, names: 'volume ID' });
      const config = loadConfig(str(values.config));
      const volumeId = checkName(pos[0]!, 'volume id', 'id');
      const node = optName(values, 'node', 'node');
      const r = await withClient(config, (c) => c.exportVolume({ volumeId, file: resolve(need(values, 'file')), ...(node ? { node } : {}) }));
      return out.result({ volume: r.volume, file: r.file, bytes: r.bytes, node: r.node }, () => `exported ${r.volume.id} (${formatBytes(r.bytes)}) to ${r.file} on node ${r.node}`);
    }
    case 'list': {
      const { values } = parse(argv, {}, { min: 0, max: 0, names: '' });
      const vols = await withClient(loadConfig(str(values.config)), (c) => c.lookup({ what: 'volumes' }));
      return out.result(vols, () => table(vols as unknown as Record<string, unknown>[], VOLUME_COLUMNS));
    }
    case 'show': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'volume ID' });
      const id = checkName(pos[0]!, 'volume id', 'id');
      const v = await withClient(loadConfig(str(values.config)), (c) => c.lookup({ what: 'volume', id }));
      return out.result(v, () => record({ ...v }));
    }
    case 'delete': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'volume ID' });
      const id = checkName(pos[0]!, 'volume id', 'id');
      const v = await withClient(loadConfig(str(values.config)), (c) => c.deleteVolume(id));
      return out.result({ id: v.id, deleted: true }, () => `deleted volume ${v.id}`);
    }
    case 'attach': {
      const { values, pos } = parse(argv, { instance: { type: 'string' }, node: { type: 'string' } }, { min: 1, max: 1, names: 'volume ID' });
      const volumeId = checkName(pos[0]!, 'volume id', 'id');
      const instance = checkName(need(values, 'instance'), 'instance');
      const node = optName(values, 'node', 'node');
      const v = await withClient(loadConfig(str(values.config)), (c) => c.attachVolume({ volumeId, instance, ...(node ? { node } : {}) }));
      return out.result(v, () => `${v.id} attached for instance ${v.instance} at ${v.device} on node ${v.node}`);
    }
    case 'detach': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'volume ID' });
      const id = checkName(pos[0]!, 'volume id', 'id');
      const v = await withClient(loadConfig(str(values.config)), (c) => c.detachVolume(id));
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
        {
          target: { type: 'string' },
          name: { type: 'string' },
          wait: { type: 'boolean' },
          force: { type: 'boolean' },
          snapshot: { type: 'string' },
          incremental: { type: 'boolean' },
          bps: { type: 'string' },
          group: { type: 'string' },
          'pre-hook': { type: 'string' },
          'post-hook': { type: 'string' },
        },
        { min: 0, max: 1, names: 'VOLUME_ID' },
      );
      const incremental = values.incremental === true;
      if (str(values.group) !== undefined) {
        // A consistency group: every volume from a snapshot of one moment (backupGroup).
        if (pos.length > 0) throw new UsageError('give either VOLUME_ID or --group V1,V2,..., not both');
        for (const opt of ['force', 'snapshot', 'bps'] as const) if (values[opt] !== undefined) throw new UsageError(`--${opt} does not apply to --group (a group reads its own snapshots)`);
        const volumeIds = str(values.group)!.split(',').map((v) => checkName(v.trim(), 'volume id', 'id'));
        const config = loadConfig(str(values.config));
        const target = optName(values, 'target', 'target');
        const name = str(values.name) !== undefined ? checkName(str(values.name)!, 'backup name') : undefined;
        const preHook = optName(values, 'pre-hook', 'pre hook');
        const postHook = optName(values, 'post-hook', 'post hook');
        const groupId = newId('grp');
        return withClient(config, async (c) => {
          const handle = await c.startBackupGroup({
            groupId,
            volumeIds,
            ...(target ? { target } : {}),
            ...(name ? { name } : {}),
            ...(incremental ? { incremental } : {}),
            ...(preHook ? { preHook } : {}),
            ...(postHook ? { postHook } : {}),
          });
          await c.accepted(handle);
          out.info(`group ${groupId} of volumes ${volumeIds.join(', ')} started (workflow ${handle.workflowId})`);
          if (!values.wait) return out.result({ groupId, volumeIds, target: target ?? null, status: 'creating', workflowId: handle.workflowId }, () => groupId);
          const r = await showProgress(c.result<BackupGroupResult>(handle), () => c.progress(handle));
          return out.result(r, () => table(r.backups as unknown as Record<string, unknown>[], [...BACKUP_COLUMNS, 'groupId']));
        });
      }
      if (pos.length === 0) throw new UsageError('backup create needs VOLUME_ID (or --group V1,V2,...)');
      let bpsLimit: number | undefined;
      if (str(values.bps) !== undefined) {
        const r = parseSize(str(values.bps)!, 'bps');
        if ('error' in r) throw new InvalidInput(r.error);
        bpsLimit = r.bytes;
      }
      const config = loadConfig(str(values.config));
      const volumeId = checkName(pos[0]!, 'volume id', 'id');
      const snapshotId = str(values.snapshot) !== undefined ? checkName(str(values.snapshot)!, 'snapshot id', 'id') : undefined;
      const force = values.force === true;
      const name = str(values.name) !== undefined ? checkName(str(values.name)!, 'backup name') : undefined;
      const target = optName(values, 'target', 'target');
      const backupId = newId('bak');
      return withClient(config, async (c) => {
        const handle = await c.startBackup({ volumeId, backupId, ...(target ? { target } : {}), ...(name ? { name } : {}), ...(force ? { force } : {}), ...(snapshotId ? { snapshotId } : {}), ...(incremental ? { incremental } : {}), ...(bpsLimit ? { bpsLimit } : {}) });
        // The workflow's own checks (atomic, on the control worker) answer bad input at once.
        await c.accepted(handle);
        out.info(`backup ${backupId} of volume ${volumeId} started (workflow ${handle.workflowId})`);
        if (!values.wait) return out.result({ id: backupId, volumeId, target: target ?? null, status: 'creating', workflowId: handle.workflowId }, () => backupId);
        const r = await showProgress(c.result<BackupResult>(handle), () => c.progress(handle));
        return out.result(r.backup, () => record({ ...r.backup }));
      });
    }
    case 'list': {
      const { values } = parse(argv, { volume: { type: 'string' } }, { min: 0, max: 0, names: '' });
      const volumeId = optName(values, 'volume', 'volume id', 'id');
      const list = await withClient(loadConfig(str(values.config)), (c) => c.listBackups(volumeId));
      return out.result(list, () => table(list as unknown as Record<string, unknown>[], BACKUP_COLUMNS));
    }
    case 'show': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'backup ID' });
      const id = checkName(pos[0]!, 'backup id', 'id');
      const { targetDriver: _t, ...b } = await withClient(loadConfig(str(values.config)), (c) => c.lookup({ what: 'backup', id }));
      return out.result(b, () => record({ ...b }));
    }
    case 'delete': {
      const { values, pos } = parse(argv, { wait: { type: 'boolean' } }, { min: 1, max: 1, names: 'backup ID' });
      const config = loadConfig(str(values.config));
      const id = checkName(pos[0]!, 'backup id', 'id');
      return withClient(config, async (c) => {
        const handle = await c.startDelete({ backupId: id });
        await c.accepted(handle);
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
      const b = await withClient(config, async (c) => {
        const found = await c.lookup({ what: 'backup', id });
        if (found.status !== 'creating' || !found.workflowId) throw new InvalidStatus(`backup '${id}' is '${found.status}'; only a backup being created can be cancelled`);
        await c.cancel(found.workflowId);
        return found;
      });
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
      const now = await withClient(config, async (c) => {
        const b = await c.lookup({ what: 'backup', id });
        if (b.status !== 'creating' || !b.workflowId) throw new InvalidStatus(`backup '${id}' is '${b.status}'; only a running backup can be throttled`);
        return c.throttle(b.workflowId, bps);
      });
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
        ...(volumeId === undefined ? { newVolumeId: newId('vol') } : {}),
      };
      return withClient(config, async (c) => {
        const handle = await c.startRestore(input);
        await c.accepted(handle);
        out.info(`restore of backup ${backupId} started (workflow ${handle.workflowId})`);
        if (!values.wait) return out.result({ backupId, volumeId: input.volumeId ?? input.newVolumeId, status: 'restoring-backup', workflowId: handle.workflowId }, () => input.volumeId ?? input.newVolumeId!);
        const r = await showProgress(c.result<RestoreResult>(handle), () => c.progress(handle));
        return out.result(r.volume, () => record({ ...(r.volume) }));
      });
    }
    case 'copy': {
      const { values, pos } = parse(argv, { to: { type: 'string' }, name: { type: 'string' }, wait: { type: 'boolean' } }, { min: 1, max: 1, names: 'BACKUP_ID' });
      const config = loadConfig(str(values.config));
      const backupId = checkName(pos[0]!, 'backup id', 'id');
      const target = checkName(need(values, 'to'), 'target');
      const copyId = newId('bak');
      const input = { backupId, target, copyId, ...(str(values.name) !== undefined ? { name: checkName(str(values.name)!, 'backup name') } : {}) };
      return withClient(config, async (c) => {
        const handle = await c.startCopy(input);
        await c.accepted(handle);
        out.info(`copy ${copyId} of backup ${backupId} to target ${target} started (workflow ${handle.workflowId})`);
        if (!values.wait) return out.result({ id: copyId, copyOf: backupId, target, status: 'creating', workflowId: handle.workflowId }, () => copyId);
        const r = await showProgress(c.result<CopyBackupResult>(handle), () => c.progress(handle));
        return out.result({ ...r.backup, chunksUploaded: r.chunksUploaded, chunksSkipped: r.chunksSkipped }, () => record({ ...r.backup, chunksUploaded: r.chunksUploaded, chunksSkipped: r.chunksSkipped }));
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
      const b = await withClient(config, (c) => c.lookup({ what: 'backup', id }));
      if (b.targetDriver === 'volume') throw new InvalidInput(`backup '${id}' is on volume target '${b.target}'; verify reads the chunk hashes of posix and s3 targets`);
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
      const r = await withClient(loadConfig(str(values.config)), (c) => c.lookup({ what: 'exportBackup', id }));
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
      const b = await withClient(loadConfig(str(values.config)), (c) => c.importBackupRecord({ target, record: text }));
      return out.result(b, () => record({ ...b }));
    }
    default:
      throw new UsageError(`unknown backup command '${sub ?? ''}' (create, list, show, delete, cancel, throttle, restore, copy, verify, export, import)`);
  }
}

async function snapshotCommand(sub: string | undefined, argv: string[], out: Out): Promise<void> {
  switch (sub) {
    case 'create': {
      const { values, pos } = parse(argv, { name: { type: 'string' } }, { min: 1, max: 1, names: 'VOLUME_ID' });
      const volumeId = checkName(pos[0]!, 'volume id', 'id');
      const name = optName(values, 'name', 'snapshot name');
      const s = await withClient(loadConfig(str(values.config)), (c) => c.createSnapshot({ volumeId, snapshotId: newId('snap'), ...(name ? { name } : {}) }));
      return out.result(s, () => record({ ...s }));
    }
    case 'list': {
      const { values } = parse(argv, { volume: { type: 'string' } }, { min: 0, max: 0, names: '' });
      const volumeId = optName(values, 'volume', 'volume id', 'id');
      const list = await withClient(loadConfig(str(values.config)), (c) => c.lookup({ what: 'snapshots', ...(volumeId ? { volumeId } : {}) }));
      return out.result(list, () => table(list as unknown as Record<string, unknown>[], ['id', 'name', 'volumeId', 'backend', 'pool', 'size', 'status', 'backupId']));
    }
    case 'show': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'snapshot ID' });
      const id = checkName(pos[0]!, 'snapshot id', 'id');
      const s = await withClient(loadConfig(str(values.config)), (c) => c.lookup({ what: 'snapshot', id }));
      return out.result(s, () => record({ ...s }));
    }
    case 'delete': {
      const { values, pos } = parse(argv, {}, { min: 1, max: 1, names: 'snapshot ID' });
      const id = checkName(pos[0]!, 'snapshot id', 'id');
      const s = await withClient(loadConfig(str(values.config)), (c) => c.deleteSnapshot(id));
      return out.result({ id: s.id, deleted: true }, () => `deleted snapshot ${s.id}`);
    }
    default:
      throw new UsageError(`unknown snapshot command '${sub ?? ''}' (create, list, show, delete)`);
  }
}

async function backendCommand(sub: string | undefined, argv: string[], out: Out): Promise<void> {
  const { values, pos } = parse(argv, {}, { min: sub === 'show' ? 1 : 0, max: sub === 'show' ? 1 : 0, names: 'backend NAME' });
  if (sub !== 'list' && sub !== 'show') throw new UsageError(`unknown backend command '${sub ?? ''}' (list, show)`);
  const name = sub === 'show' ? checkName(pos[0]!, 'backend') : undefined;
  const rows = await withClient(loadConfig(str(values.config)), (c) => c.lookup({ what: 'backends', ...(name ? { name } : {}) }));
  if (sub === 'show') return out.result(rows[0], () => record({ ...rows[0]! }));
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
      const rows = await withClient(loadConfig(str(values.config)), (c) => c.lookup({ what: 'targets' }));
      return out.result(rows, () => table(rows as unknown as Record<string, unknown>[], ['name', 'driver', 'location', 'default']));
    }
    case 'check': {
      const { values, pos } = parse(argv, { 'create-bucket': { type: 'boolean' } }, { min: 0, max: 1, names: 'target NAME' });
      const target = pos[0] !== undefined ? checkName(pos[0], 'target') : undefined;
      const checks = await withClient(loadConfig(str(values.config)), (c) => c.checkTargets({ ...(target ? { target } : {}), ...(values['create-bucket'] === true ? { createBucket: true } : {}) }));
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

/**
 * `catalog migrate --from FILE`: copies an embedded SQLite catalog into the config's
 * PostgreSQL catalog, once, when moving a one-host deployment to several hosts. The one
 * command that talks to the databases itself: it runs on the host that has the old file,
 * with the control workers stopped (else the file may change under it).
 */
async function catalogMigrate(argv: string[], out: Out): Promise<void> {
  const { values } = parse(argv, { from: { type: 'string' } }, { min: 0, max: 0, names: '' });
  const config = loadConfig(str(values.config));
  const file = resolve(need(values, 'from'));
  if (config.catalog.driver !== 'postgres') throw new InvalidInput(`catalog migrate copies into a PostgreSQL catalog; config ${config.source} has catalog.driver '${config.catalog.driver}'`);
  if (!existsSync(file)) throw new InvalidInput(`--from '${file}' does not exist (the old catalog is stateDir/catalog.sqlite)`);
  const [{ openCatalog }, { migrateCatalog }] = await Promise.all([import('../catalog/open.js'), import('../catalog/migrate.js')]);
  const from = await openCatalog({ driver: 'sqlite', file });
  try {
    const to = await openCatalog(config.catalog);
    try {
      const r = await migrateCatalog(from, to);
      out.result({ from: from.describe, to: to.describe, ...r }, () =>
        r.alreadyMigrated
          ? `already migrated: ${to.describe} holds the same ${r.volumes} volume(s), ${r.snapshots} snapshot(s), ${r.backups} backup(s)`
          : `migrated ${r.volumes} volume(s), ${r.snapshots} snapshot(s), ${r.backups} backup(s) from ${from.describe} to ${to.describe}; counts and statuses checked`,
      );
    } finally {
      await to.close();
    }
  } finally {
    await from.close();
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
      case 'policy':
        await policyCommand(sub, rest, out);
        break;
      case 'catalog': {
        if (sub === 'migrate') {
          await catalogMigrate(rest, out);
          break;
        }
        if (sub !== 'rebuild') throw new UsageError(`unknown catalog command '${sub ?? ''}' (rebuild, migrate)`);
        const { values } = parse(rest, {}, { min: 0, max: 0, names: '' });
        const r = await withClient(loadConfig(str(values.config)), (c) => c.rebuildCatalog());
        out.result(r, () => `imported ${r.imported.length} backup(s), ${r.alreadyKnown.length} already known${r.skipped.length ? `, skipped: ${r.skipped.map((x) => `${x.record} (${x.reason})`).join('; ')}` : ''}`);
        break;
      }
      case 'worker': {
        const { values } = parse([sub, ...rest].filter((x): x is string => x !== undefined), { node: { type: 'string' }, role: { type: 'string' } }, { min: 0, max: 0, names: '' });
        // Hosts of a multi-host control plane split the roles: control hosts reach the catalog, node hosts the storage.
        const role = str(values.role) ?? 'both';
        if (role !== 'control' && role !== 'node' && role !== 'both') throw new UsageError(`--role must be control, node or both, not '${role}'`);
        await (await serve()).runWorker(loadConfig(str(values.config)), str(values.node), role);
        break;
      }
      case 'dev': {
        const { values } = parse([sub, ...rest].filter((x): x is string => x !== undefined), { 'ui-port': { type: 'string' }, port: { type: 'string' } }, { min: 0, max: 0, names: '' });
        await (await serve()).runDev(loadConfig(str(values.config)), { port: str(values.port), uiPort: str(values['ui-port']) });
        break;
      }
      case 'demo': {
        const { values } = parse([sub, ...rest].filter((x): x is string => x !== undefined), { 'keep-running': { type: 'boolean' }, size: { type: 'string' } }, { min: 0, max: 0, names: '' });
        await (await serve()).runDemo({ keepRunning: values['keep-running'] === true ? true : undefined, size: str(values.size) });
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
