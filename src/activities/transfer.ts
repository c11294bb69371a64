/**
 * Node activities of volume management: an image file into a volume (import), a volume
 * into an image file (export), and an instance's long-lived attachment. They run on the
 * node's queue because the file and the block device are on that host; `file` is a path
 * on the node, checked against the node's transfer directories when the config sets them.
 */
import { stat } from 'node:fs/promises';
import { execa } from 'execa';
import type { ConnectionInfo } from '../drivers/volume/driver.js';
import type { Connectors } from '../connectors/registry.js';
import { copyExtents } from '../copy/dd.js';
import { copyExtentsOf, dataExtents } from '../copy/extents.js';
import { InvalidInput } from '../errors.js';
import { MiB } from '../size.js';
import { checkTransferPath } from '../node/transfer-dirs.js';

export interface TransferDeps {
  node: string;
  connector: Connectors;
  /** Where import and export may read and write on this node; undefined: anywhere. */
  transferDirs?: readonly string[];
}

export function createTransferActivities(deps: TransferDeps) {
  const { connector, node } = deps;
  return {
    /** Size of an image file on this node, rounded up to whole MiB (what the new volume needs). */
    async statImage(input: { file: string }): Promise<{ bytes: number; size: number; node: string }> {
      const file = await checkTransferPath(input.file, deps.transferDirs, 'read');
      const st = await stat(file).catch((e: NodeJS.ErrnoException) => {
        throw new InvalidInput(`cannot read image file '${input.file}' on node '${node}': ${e.code ?? e.message}`);
      });
      if (!st.isFile() || st.size === 0) throw new InvalidInput(`image file '${input.file}' on node '${node}' is empty or not a regular file`);
      return { bytes: st.size, size: Math.ceil(st.size / MiB) * MiB, node };
    },

    /** Writes the file's data extents onto the attached device; a retry writes them again. */
    async fillFromFile(input: { device: string; file: string }): Promise<{ bytes: number }> {
      const file = await checkTransferPath(input.file, deps.transferDirs, 'read');
      const st = await stat(file);
      await copyExtents({ source: file, dest: input.device, extents: await dataExtents(file, st.size), blockSize: 4 * MiB, sparse: true, direct: false });
      return { bytes: st.size };
    },

    /** Writes the attached volume into the file, sparse where the volume has holes. */
    async drainToFile(input: { connection: ConnectionInfo; device: string; file: string; size: number }): Promise<{ bytes: number }> {
      const file = await checkTransferPath(input.file, deps.transferDirs, 'write');
      await execa('truncate', ['-s', '0', '--', file]).catch(() => undefined);
      await execa('truncate', ['-s', String(input.size), '--', file]).catch((e: Error) => {
        throw new InvalidInput(`cannot write export file '${input.file}' on node '${node}': ${e.message.split('\n').pop() ?? e.message}`);
      });
      await copyExtents({
        source: input.device,
        dest: file,
        extents: copyExtentsOf(await connector.dataExtents(input.connection, input.size), input.size),
        blockSize: 4 * MiB,
        sparse: true,
        direct: false,
      });
      return { bytes: input.size };
    },

    /** An instance's attachment: kept until detachInstance (not in the ledger, which reconciles copies). */
    async attachInstance(input: { connection: ConnectionInfo }): Promise<{ device: string; node: string }> {
      const { device } = await connector.connectVolume(input.connection);
      return { device, node };
    },

    async detachInstance(input: { connection: ConnectionInfo }): Promise<{ detached: string[] }> {
      return connector.disconnectVolume(input.connection);
    },
  };
}
