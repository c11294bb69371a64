/**
 * Everything a failed or repeated operation must leave unchanged: the catalog rows and
 * the files (with sizes) on every file backend of a test world.
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { TestEnv } from './env.js';

export async function snapshotWorld(env: TestEnv, extra: Record<string, unknown> = {}) {
  const files: string[] = [];
  const walk = (d: string) => {
    for (const f of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, f.name);
      if (f.isDirectory()) walk(p);
      else files.push(`${p}:${statSync(p).size}`);
    }
  };
  for (const b of env.config.backends) walk(b.path);
  const c = env.rt.catalog;
  const strip = <T extends { updatedAt?: string }>(x: T) => ({ ...x, updatedAt: undefined });
  return { files: files.sort(), volumes: (await c.listVolumes()).map(strip), backups: (await c.listBackups()).map(strip), snapshots: await c.listSnapshots(), ...extra };
}
