/**
 * The node side of an attach, in os-brick's shape: connectVolume turns connection info
 * into a local block device, disconnectVolume undoes it and is idempotent.
 *
 * A loop device is found again by its backing file, never by a remembered device name:
 * after a crash the name in our history may belong to somebody else's loop device,
 * while the backing file identifies ours for certain.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { realpath, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { launch, launchChecked, ToolFailed } from '../node/launcher.js';
import type { ConnectionInfo } from '../drivers/volume/driver.js';
import { GbackupError, InvalidInput } from '../errors.js';
import { rawDataExtents, type Extent } from '../copy/extents.js';
import type { Connector } from './connector.js';

export interface LoopDevice {
  device: string;
  backingFile: string;
  readOnly: boolean;
}

export class AttachError extends GbackupError {}

/**
 * Every attached loop device, with its backing file (without the ' (deleted)' suffix).
 * Read from sysfs (/sys/block/loopN/loop/backing_file exists exactly while loopN is bound
 * to a file): no process to start. The reads are synchronous on purpose: sysfs answers
 * from memory, and ~50 tiny reads through the thread pool took 3 ms where these take a
 * fraction of one. `losetup --list` where sysfs is not mounted.
 */
export async function listLoopDevices(): Promise<LoopDevice[]> {
  let names: string[];
  try {
    names = readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n));
  } catch {
    return listWithLosetup();
  }
  const found: LoopDevice[] = [];
  for (const n of names) {
    try {
      const back = readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8');
      const ro = readFileSync(`/sys/block/${n}/ro`, 'utf8');
      found.push({ device: `/dev/${n}`, backingFile: back.trim().replace(/ \(deleted\)$/, ''), readOnly: ro.trim() === '1' });
    } catch {
      // not bound to a file (or detached meanwhile)
    }
  }
  return found;
}

async function listWithLosetup(): Promise<LoopDevice[]> {
  const { stdout } = await launchChecked('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE,RO']);
  if (stdout.trim() === '') return [];
  const parsed = JSON.parse(stdout) as { loopdevices?: { name: string; 'back-file': string | null; ro: boolean | string }[] };
  return (parsed.loopdevices ?? []).map((d) => ({
    device: d.name,
    backingFile: (d['back-file'] ?? '').replace(/ \(deleted\)$/, ''),
    readOnly: d.ro === true || d.ro === '1',
  }));
}

/** Free loop devices an attach of this process is binding right now. */
const claimed = new Set<string>();

/**
 * A free loop device no other attach of this process is binding (until released), or
 * null when sysfs shows none (then `losetup --find` makes one).
 *
 * Why not always `--find`: two of them at once (a copy attaches its source and
 * destination together) both pick the lowest free device, the loser gets EBUSY, and
 * util-linux 2.38 sleeps 200 ms before it looks again. Naming distinct devices lets both
 * attaches run in parallel; another process racing for the same device still only costs
 * the fallback to `--find`.
 */
export function claimFreeDevice(): { device: string; release: () => void } | null {
  let names: string[];
  try {
    names = readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n));
  } catch {
    return null;
  }
  names.sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
  for (const n of names) {
    const device = `/dev/${n}`;
    if (claimed.has(device) || existsSync(`/sys/block/${n}/loop/backing_file`) || !existsSync(device)) continue;
    claimed.add(device);
    return { device, release: () => claimed.delete(device) };
  }
  return null;
}

/** Protocol `file`: a local image file, exposed as a block device through a loop device. */
export class LoopConnector implements Connector {
  readonly protocol = 'file';

  /**
   * @param allowedRoots only files under these directories may be attached: connection
   *   info arrives through workflow history and must not name an arbitrary host file.
   * @param directIo the loop device does O_DIRECT on its backing file, so data is not
   *   cached twice (once for the loop device, once for the file); measured faster.
   */
  constructor(
    private readonly allowedRoots: readonly string[],
    private readonly directIo = true,
  ) {}

  private async checkPath(path: string): Promise<string> {
    const real = await realpath(path).catch(() => {
      throw new AttachError(`cannot attach '${path}': the volume's file does not exist`);
    });
    const roots = await Promise.all(this.allowedRoots.map((r) => realpath(r).catch(() => r)));
    if (!roots.some((r) => real.startsWith(r.endsWith('/') ? r : `${r}/`))) {
      throw new InvalidInput(`refusing to attach '${path}': it is not under a configured backend of this node`);
    }
    return real;
  }

  async devicesFor(path: string): Promise<LoopDevice[]> {
    const real = await realpath(path).catch(() => path);
    return (await listLoopDevices()).filter((d) => d.backingFile === real || d.backingFile === path);
  }

  /** Returns the block device for the volume, reusing one an earlier attempt attached. */
  async connectVolume(info: ConnectionInfo): Promise<{ device: string }> {
    const real = await this.checkPath(info.path);
    const existing = (await this.devicesFor(real)).find((d) => d.readOnly === info.readOnly);
    if (existing) return { device: existing.device };
    const options = [...(this.directIo ? ['--direct-io=on'] : []), ...(info.readOnly ? ['--read-only'] : [])];
    const claim = claimFreeDevice();
    if (claim !== null) {
      try {
        // Binding a named free device fails at once (EBUSY) if another process took it
        // meanwhile; then `--find` below picks one as before.
        if ((await launch('losetup', [...options, '--', claim.device, real])).exitCode === 0) return { device: claim.device };
      } finally {
        claim.release();
      }
    }
    try {
      const { stdout } = await launchChecked('losetup', ['--find', '--show', ...options, '--', real]);
      return { device: stdout.trim() };
    } catch (e) {
      throw new AttachError(`losetup could not attach '${real}': ${e instanceof ToolFailed ? e.stderr.trim() : (e as Error).message}`);
    }
  }

  /** The image file's extents: what the loop device reads as data. */
  dataExtents(info: Pick<ConnectionInfo, 'path'>, size: number): Promise<Extent[] | null> {
    return rawDataExtents(info.path, size);
  }

  /** Free bytes of the filesystem holding the image file. */
  async freeBytes(info: Pick<ConnectionInfo, 'path'>): Promise<number | null> {
    try {
      const s = await statfs(dirname(info.path));
      return s.bavail * s.bsize;
    } catch {
      return null;
    }
  }

  /** Backing files of every loop device on this host. */
  async attached(): Promise<Set<string>> {
    return new Set((await listLoopDevices()).map((d) => d.backingFile));
  }

  /** Detaches every loop device backed by the volume's file; nothing attached is success. */
  async disconnectVolume(info: Pick<ConnectionInfo, 'path'>): Promise<{ detached: string[] }> {
    const devices = (await this.devicesFor(info.path)).map((d) => d.device);
    if (devices.length === 0) return { detached: [] };
    const r = await launch('losetup', ['--detach', ...devices]);
    if (r.exitCode === 0) return { detached: devices };
    // Some were gone between list and detach: that is the state we want; any still there is not.
    const left = new Set((await listLoopDevices()).map((d) => d.device));
    const stuck = devices.filter((d) => left.has(d));
    if (stuck.length > 0) throw new AttachError(`losetup could not detach ${stuck.join(', ')}: ${r.stderr.trim() || `exit ${r.exitCode ?? r.signal}`}`);
    return { detached: devices };
  }
}
