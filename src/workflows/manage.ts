/**
 * Management workflows: volume, snapshot and catalog operations that any caller reaching
 * Temporal can run, wherever the catalog and the backends are. Each is short and visible
 * in the UI; the ones that change storage are sagas like a backup (an import that fails
 * leaves no volume, an attach that fails leaves the volume available), and the ones that
 * need a block device run those steps on a node's queue.
 */
import { proxyLocalActivities, workflowInfo } from '@temporalio/workflow';
import {
  AttachVolumeInput,
  CheckTargetsInput,
  CreateSnapshotInput,
  CreateVolumeInput,
  ExportVolumeInput,
  ImportBackupRecordInput,
  ImportVolumeInput,
  LookupInput,
  SnapshotIdInput,
  VolumeIdInput,
  type AttachedVolume,
  type BackupView,
  type LookupResults,
  type SnapshotInfo,
  type VolumeView,
} from '../api.js';
import type { ManageActivities } from '../activities/manage.js';
import type { TargetCheck } from '../drivers/backup/check.js';
import type { RebuildReport } from '../services/rebuild.js';
import { NON_RETRYABLE_ERROR_TYPES } from '../error-registry.js';
import { activities, compensation, control } from './activities.js';
import { parseInput } from './common.js';
import { Saga } from './saga.js';

/**
 * Reads run as a local activity: the worker that takes the workflow task answers at once,
 * with no activity task round trip, and a lost worker's task is simply run again.
 */
const local = proxyLocalActivities<ManageActivities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '200 ms', backoffCoefficient: 2, maximumInterval: '5 seconds', maximumAttempts: 5, nonRetryableErrorTypes: NON_RETRYABLE_ERROR_TYPES },
});

/** A node's steps; the control queue these workflows run on is the base of the node queues. */
function nodeSteps(node: string) {
  return activities().node(workflowInfo().taskQueue, node);
}

export async function lookup(raw: LookupInput): Promise<LookupResults[LookupInput['what']]> {
  return local.lookup(parseInput(LookupInput, raw));
}

export async function createVolume(raw: CreateVolumeInput): Promise<VolumeView> {
  const input = parseInput(CreateVolumeInput, raw);
  const saga = new Saga();
  try {
    saga.add('discard volume', () => compensation.discardVolume({ volumeId: input.volumeId }));
    return await control.createVolume(input);
  } catch (err) {
    await saga.unwind();
    throw err;
  }
}

export async function deleteVolume(raw: VolumeIdInput): Promise<VolumeView> {
  const input = parseInput(VolumeIdInput, raw);
  return control.deleteVolume(input);
}

/** A new volume holding an image file that is on a node (sized up to whole MiB, zero-filled). */
export async function importVolume(raw: ImportVolumeInput): Promise<VolumeView> {
  const input = parseInput(ImportVolumeInput, raw);
  const node = await control.pickNode({ backend: input.backend, ...(input.node !== undefined ? { node: input.node } : {}), key: input.volumeId });
  const acts = nodeSteps(node);
  const { size } = await acts.steps.statImage({ file: input.file });
  const saga = new Saga();
  try {
    saga.add('discard volume', () => compensation.discardVolume({ volumeId: input.volumeId }));
    await control.createVolume({ volumeId: input.volumeId, backend: input.backend, pool: input.pool, size, name: input.name, keepCreating: true });
    const { connection } = await control.importTarget({ volumeId: input.volumeId });
    saga.add('detach volume', () => acts.undo.detachVolume({ connection }));
    const { device } = await acts.steps.attachVolume({ connection, role: 'destination' });
    await acts.steps.fillFromFile({ device, file: input.file });
    await acts.undo.detachVolume({ connection });
    return await control.finishVolume({ volumeId: input.volumeId });
  } catch (err) {
    await saga.unwind();
    throw err;
  }
}

/** Writes a volume into a file on a node; the volume is untouched (read through a read-only attachment). */
export async function exportVolume(raw: ExportVolumeInput): Promise<{ volume: VolumeView; file: string; bytes: number; node: string }> {
  const input = parseInput(ExportVolumeInput, raw);
  const { volume, connection, node } = await control.beginExport(input);
  const acts = nodeSteps(node);
  const saga = new Saga();
  try {
    saga.add('detach volume', () => acts.undo.detachVolume({ connection }));
    const { device } = await acts.steps.attachVolume({ connection, role: 'source' });
    const { bytes } = await acts.steps.drainToFile({ connection, device, file: input.file, size: volume.size });
    await acts.undo.detachVolume({ connection });
    return { volume, file: input.file, bytes, node };
  } catch (err) {
    await saga.unwind();
    throw err;
  }
}

/** Marks a volume in use by an instance and exposes it as a block device on a node. */
export async function attachVolume(raw: AttachVolumeInput): Promise<AttachedVolume> {
  const input = parseInput(AttachVolumeInput, raw);
  const current = await local.lookup({ what: 'volume', id: input.volumeId });
  const node = await control.pickNode({ backend: (current as VolumeView).backend, ...(input.node !== undefined ? { node: input.node } : {}), key: input.volumeId });
  const acts = nodeSteps(node);
  const saga = new Saga();
  try {
    saga.add('release volume', () => compensation.failAttach({ volumeId: input.volumeId }));
    const { volume, connection } = await control.beginAttach({ volumeId: input.volumeId, instance: input.instance, node });
    saga.add('detach device', () => acts.undo.detachInstance({ connection }));
    const { device } = await acts.steps.attachInstance({ connection });
    return { ...volume, device, node };
  } catch (err) {
    await saga.unwind();
    throw err;
  }
}

export async function detachVolume(raw: VolumeIdInput): Promise<VolumeView> {
  const input = parseInput(VolumeIdInput, raw);
  const { connection, node } = await control.beginDetach(input);
  await nodeSteps(node).steps.detachInstance({ connection });
  return control.finishDetach(input);
}

export async function createSnapshot(raw: CreateSnapshotInput): Promise<SnapshotInfo> {
  const input = parseInput(CreateSnapshotInput, raw);
  return control.createSnapshot(input);
}

export async function deleteSnapshot(raw: SnapshotIdInput): Promise<SnapshotInfo> {
  const input = parseInput(SnapshotIdInput, raw);
  return control.removeSnapshot(input);
}

export async function importBackupRecord(raw: ImportBackupRecordInput): Promise<BackupView> {
  return control.importBackupRecord(parseInput(ImportBackupRecordInput, raw));
}

export async function rebuildCatalog(): Promise<RebuildReport> {
  return control.rebuildCatalog();
}

export async function checkTargets(raw: CheckTargetsInput): Promise<TargetCheck[]> {
  return control.checkTargets(parseInput(CheckTargetsInput, raw));
}
