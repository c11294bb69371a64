/**
 * Import and export name files on a node, and the node runs as root: when the config sets
 * `transferDirs`, a path must resolve (symlinks followed) inside one of them, so a caller
 * who may start workflows cannot make a node read /etc/shadow into a volume or overwrite
 * a system file with one.
 */
import { realpath } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { InvalidInput } from '../errors.js';

export async function checkTransferPath(file: string, dirs: readonly string[] | undefined, mode: 'read' | 'write'): Promise<string> {
  if (!isAbsolute(file) || file.includes('\0')) throw new InvalidInput(`file '${file}' must be an absolute path`);
  if (dirs === undefined) return file;
  // A file to write may not exist yet: its directory must.
  const real =
    mode === 'read'
      ? await realpath(file).catch(() => resolve(file))
      : join(await realpath(dirname(file)).catch(() => resolve(dirname(file))), basename(file));
  for (const d of dirs) {
    const root = await realpath(d).catch(() => resolve(d));
    const rel = relative(root, real);
    if (rel !== '' && !rel.startsWith('..') && !isAbsolute(rel)) return real;
  }
  throw new InvalidInput(`file '${file}' is outside the node's transfer directories (${dirs.join(', ')})`);
}
