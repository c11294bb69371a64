/**
 * The spec's rule: "Cinder should not allow to use the same storage both for volume and
 * backups ... If storage supports different pools Cinder will allow to create backup on
 * the same storage but in the different pool."
 *
 * A *place* is where a backend keeps a pool's volumes (a directory). Targets claim
 * places; every other place holds volumes. Two places overlap when one directory is the
 * other or contains it, compared after resolving symlinks and bind mounts, so "same
 * storage" means the same place, not the same name.
 */
import { realpathSync, statSync } from 'node:fs';
import type { TargetConfig } from './schema.js';
import { SameStorageTarget } from '../errors.js';
import { localDirectory } from '../drivers/backup/stores/registry.js';

export interface Place {
  backend: string;
  pool: string | null;
  /** Resolved directory. */
  location: string;
}

export interface PlacementDriver {
  backend: string;
  pools: readonly (string | null)[];
  placeLocation(pool: string | null): string;
}

function resolveDir(dir: string): string {
  try {
    return realpathSync(dir);
  } catch {
    return dir;
  }
}

/** Same directory by device+inode (bind mounts) or path, or one inside the other. */
function overlaps(a: string, b: string): boolean {
  if (a === b) return true;
  try {
    const sa = statSync(a);
    const sb = statSync(b);
    if (sa.dev === sb.dev && sa.ino === sb.ino) return true;
  } catch {
    // a place not made yet compares by path only
  }
  const within = (x: string, y: string) => x.startsWith(y.endsWith('/') ? y : `${y}/`);
  return within(a, b) || within(b, a);
}

const describe = (p: Place) => `backend '${p.backend}'${p.pool ? ` pool '${p.pool}'` : ''} (${p.location})`;

/** The volume places (target places excluded); throws SameStorageTarget on any overlap. */
export function checkPlacement(drivers: readonly PlacementDriver[], targets: readonly TargetConfig[]): { volumePlaces: Place[]; targetPlaces: Map<string, Place> } {
  const byName = new Map(drivers.map((d) => [d.backend, d]));
  const targetPlaces = new Map<string, Place>();
  for (const t of targets) {
    if (t.driver !== 'volume') continue;
    const d = byName.get(t.backend);
    if (!d) continue; // the schema already named it
    const pool = t.pool ?? null;
    targetPlaces.set(t.name, { backend: t.backend, pool, location: resolveDir(d.placeLocation(pool)) });
  }
  // A target claims exactly its place. A pool-less target on a backend with pools does
  // not make those pools backup-only: they still hold volumes, and the overlap check
  // below refuses the pair.
  const claimed = (backend: string, pool: string | null) => [...targetPlaces.values()].some((p) => p.backend === backend && p.pool === pool);
  const volumePlaces: Place[] = [];
  for (const d of drivers) {
    for (const pool of d.pools) {
      if (claimed(d.backend, pool)) continue;
      volumePlaces.push({ backend: d.backend, pool, location: resolveDir(d.placeLocation(pool)) });
    }
  }
  // An object target that writes into a local directory (posix): inside a backend (or
  // holding one) it is that backend's storage, whatever its pools.
  for (const t of targets) {
    if (t.driver === 'volume') continue;
    const dir = localDirectory(t);
    if (dir === null) continue;
    const location = resolveDir(dir);
    for (const d of drivers) {
      const root = resolveDir(d.placeLocation(null));
      if (overlaps(location, root)) {
        throw new SameStorageTarget(
          `target '${t.name}' (${t.driver} ${location}) is the same storage as backend '${d.backend}' (${root}), which holds volumes; ` +
            `an object target needs a directory outside every backend (spec: generic backup implementation)`,
        );
      }
    }
  }
  for (const [name, tp] of targetPlaces) {
    for (const vp of volumePlaces) {
      if (overlaps(tp.location, vp.location)) {
        throw new SameStorageTarget(
          `target '${name}' on ${describe(tp)} is the same storage as ${describe(vp)}, which holds volumes; ` +
            `backups must go to other storage or another pool (spec: generic backup implementation)`,
        );
      }
    }
  }
  return { volumePlaces, targetPlaces };
}
