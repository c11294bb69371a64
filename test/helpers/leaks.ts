/**
 * The no-leak check: nothing attached, nothing half-made, nothing on storage that the
 * catalog does not account for.
 */
import { readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { listLoopDevices } from '../../src/connectors/loop.js';
import { AttachmentLedger } from '../../src/node/ledger.js';
import type { TestEnv } from './env.js';
import { changeBaseName } from '../../src/names.js';

export interface LeakReport {
  loopDevices: string[];
  ledgerEntries: string[];
  unreferencedVolumes: string[];
  partialFiles: string[];
  /** Temporary snapshots of backups that are no longer running. */
  tempSnapshots: string[];
}

export async function findLeaks(env: TestEnv): Promise<LeakReport> {
  const roots = [env.dir, ...[...env.rt.drivers.values()].map((d) => `${d.placeLocation(null)}/`)];
  // A volume attached to an instance (volume attach) is in use on purpose, not a leak.
  const instanceFiles = new Set(
    (await env.rt.catalog.listVolumes())
      .filter((v) => v.instance !== null)
      .map((v) => env.rt.driver(v.backend).initializeConnection({ pool: v.pool, name: v.id }).path),
  );
  const loopDevices = (await listLoopDevices())
    .filter((d) => roots.some((r) => d.backingFile.startsWith(r)) && !instanceFiles.has(d.backingFile))
    .map((d) => `${d.device} -> ${d.backingFile}`);
  const ledgerEntries: string[] = [];
  const nodesDir = join(env.config.stateDir, 'nodes');
  if (existsSync(nodesDir)) {
    for (const node of readdirSync(nodesDir)) {
      const l = new AttachmentLedger(join(nodesDir, node, 'ledger.sqlite'));
      ledgerEntries.push(...l.entries().map((e) => `${node}: ${e.path}`));
      l.close();
    }
  }
  const cat = env.rt.catalog;
  const known = new Set<string>();
  for (const v of await cat.listVolumes()) known.add(`${v.backend}/${v.pool ?? ''}/${v.id}`);
  for (const s of await cat.listSnapshots()) known.add(`${s.backend}/${s.pool ?? ''}/${s.id}`);
  for (const b of await cat.listBackups()) if (b.location) known.add(`${b.location.backend}/${b.location.pool ?? ''}/${b.location.name}`);
  // The newest available backup of a volume in a target keeps a clone of what it read (change tracking).
  // Only that one: an older backup's clone left behind is a leak.
  const volumes = new Map((await cat.listVolumes()).map((v) => [v.id, v]));
  const newest = new Map<string, { id: string; createdAt: string }>();
  for (const b of await cat.listBackups()) {
    const k = `${b.volumeId}/${b.target}`;
    const n = newest.get(k);
    if (b.status === 'available' && (!n || b.createdAt > n.createdAt)) newest.set(k, b);
  }
  for (const [k, b] of newest) {
    const v = volumes.get(k.split('/')[0]!);
    if (v) known.add(`${v.backend}/${v.pool ?? ''}/${changeBaseName(b.id)}`);
  }
  const unreferencedVolumes: string[] = [];
  const partialFiles: string[] = [];
  for (const [name, d] of env.rt.drivers) {
    for (const loc of await d.listVolumes()) {
      const key = `${name}/${loc.pool ?? ''}/${loc.name}`;
      if (!known.has(key)) unreferencedVolumes.push(key);
    }
    for (const pool of d.pools) {
      for (const f of readdirSync(d.placeLocation(pool))) if (/\.(creating|tmp)$/.test(f)) partialFiles.push(`${name}/${pool ?? ''}/${f}`);
    }
  }
  const tempSnapshots: string[] = [];
  for (const s of await cat.listSnapshots()) {
    if (s.backupId !== null && (await cat.findBackup(s.backupId))?.status !== 'creating') tempSnapshots.push(s.id);
  }
  return { loopDevices, ledgerEntries, unreferencedVolumes, partialFiles, tempSnapshots };
}

export const NO_LEAKS: LeakReport = { loopDevices: [], ledgerEntries: [], unreferencedVolumes: [], partialFiles: [], tempSnapshots: [] };
