/**
 * One process's view of the configured world: drivers per backend, targets, nodes and
 * the catalog. Built once at start-up; building it enforces the same-storage rule, so a
 * worker (or CLI) with a broken config stops before touching anything.
 */
import type { LoadedConfig } from '../config/load.js';
import { checkPlacement, type Place } from '../config/placement.js';
import type { NodeConfig, TargetConfig } from '../config/schema.js';
import type { Catalog } from '../catalog/catalog.js';
import { openCatalog } from '../catalog/open.js';
import type { VolumeDriver } from '../drivers/volume/driver.js';
import { createDriver } from '../drivers/volume/registry.js';
import { BackendNotFound, BackupOnlyStorage, InvalidInput, NodeNotFound, PoolNotFound, TargetNotFound } from '../errors.js';
import { ChunkedTarget } from '../drivers/backup/target.js';

export class Runtime {
  readonly drivers: Map<string, VolumeDriver>;
  readonly targetPlaces: Map<string, Place>;
  private catalogInstance: Catalog | undefined;
  private catalogOpening: Promise<Catalog> | undefined;
  /** Object targets, opened on first use (an S3 client, its credentials read once). */
  private readonly objectTargets = new Map<string, Promise<ChunkedTarget>>();

  private constructor(
    readonly config: LoadedConfig,
    drivers: VolumeDriver[],
  ) {
    this.drivers = new Map(drivers.map((d) => [d.backend, d]));
    this.targetPlaces = checkPlacement(drivers, config.targets).targetPlaces;
  }

  /**
   * Prepares every backend (directories, capability probes), checks the placement rule and
   * opens the catalog (running its migrations). A node-only worker passes `catalog: false`:
   * nodes attach and copy, and need not reach the catalog database.
   */
  static async open(config: LoadedConfig, opts: { catalog?: boolean } = {}): Promise<Runtime> {
    const drivers = config.backends.map(createDriver);
    for (const d of drivers) await d.prepare();
    const rt = new Runtime(config, drivers);
    if (opts.catalog !== false) await rt.openCatalog();
    return rt;
  }

  /** Opens the catalog once (idempotent). */
  async openCatalog(): Promise<Catalog> {
    this.catalogOpening ??= openCatalog(this.config.catalog).then((c) => (this.catalogInstance = c));
    return this.catalogOpening;
  }

  get catalog(): Catalog {
    if (!this.catalogInstance) throw new Error('the catalog is not open in this process (a node-only worker has none)');
    return this.catalogInstance;
  }

  async close(): Promise<void> {
    const catalog = this.catalogOpening;
    this.catalogOpening = undefined;
    this.catalogInstance = undefined;
    await catalog?.then((c) => c.close(), () => undefined);
    for (const t of this.objectTargets.values()) void t.then((x) => x.close(), () => undefined);
    this.objectTargets.clear();
  }

  /** True for the chunked object targets (posix, s3), false for the spec's volume targets. */
  isObjectTarget(name: string): boolean {
    return this.target(name).driver !== 'volume';
  }

  /** The opened object target; credentials and keys come from files or the environment, never from inputs. */
  objectTarget(name: string): Promise<ChunkedTarget> {
    const t = this.target(name);
    if (t.driver === 'volume') return Promise.reject(new InvalidInput(`target '${name}' is a volume target, not an object store`));
    let opened = this.objectTargets.get(t.name);
    if (!opened) {
      opened = ChunkedTarget.open(t);
      // A failed open (say, credentials not there yet) is not remembered.
      void opened.catch(() => this.objectTargets.delete(t.name));
      this.objectTargets.set(t.name, opened);
    }
    return opened;
  }

  driver(backend: string): VolumeDriver {
    const d = this.drivers.get(backend);
    if (!d) throw new BackendNotFound(`backend '${backend}' not found (configured: ${[...this.drivers.keys()].join(', ')})`);
    return d;
  }

  target(name: string | undefined): TargetConfig {
    const wanted = name ?? this.config.defaultTarget ?? (this.config.targets.length === 1 ? this.config.targets[0]?.name : undefined);
    if (wanted === undefined) throw new TargetNotFound(`no target given and the config has no defaultTarget (targets: ${this.config.targets.map((t) => t.name).join(', ')})`);
    const t = this.config.targets.find((x) => x.name === wanted);
    if (!t) throw new TargetNotFound(`target '${wanted}' not found (configured: ${this.config.targets.map((x) => x.name).join(', ')})`);
    return t;
  }

  /**
   * Resolves where a new volume goes: the given pool, or the backend's first pool that
   * is not backup storage. Refuses places a target claims: those are backup-only.
   */
  volumePlace(backend: string, pool: string | undefined | null): string | null {
    const d = this.driver(backend);
    const claimedBy = (p: string | null) =>
      [...this.targetPlaces].find(([, tp]) => tp.backend === backend && (tp.pool === null || tp.pool === p))?.[0];
    const resolved = pool ?? d.pools.find((p) => claimedBy(p) === undefined) ?? d.pools[0] ?? null;
    if (!d.pools.includes(resolved)) {
      const known = d.pools.filter((p) => p !== null);
      throw new PoolNotFound(
        known.length === 0
          ? `backend '${backend}' has no pools, but pool '${resolved}' was given`
          : `backend '${backend}' has no pool '${resolved}' (pools: ${known.join(', ')})`,
      );
    }
    const target = claimedBy(resolved);
    if (target !== undefined) {
      throw new BackupOnlyStorage(`backend '${backend}'${resolved ? ` pool '${resolved}'` : ''} holds backups only (target '${target}'); volumes cannot be created there`);
    }
    return resolved;
  }

  node(name: string): NodeConfig {
    const n = this.config.nodes.find((x) => x.name === name);
    if (!n) throw new NodeNotFound(`node '${name}' not found (configured: ${this.config.nodes.map((x) => x.name).join(', ')})`);
    return n;
  }

  /** Every backend's root: what this host's own commands (import, export, instance attach) may attach from. */
  allRoots(): string[] {
    return [...this.drivers.values()].map((d) => d.placeLocation(null));
  }

  /** Backend roots a node may attach from (the connector refuses anything else). */
  nodeRoots(node: string): string[] {
    return this.node(node).backends.map((b) => this.driver(b).placeLocation(null));
  }
}
