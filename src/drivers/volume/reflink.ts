/**
 * What the reflink drivers (btrfs, xfs) share: image files cloned with FICLONE, so a
 * snapshot, and a backup or restore between two places on one filesystem, costs a
 * metadata update instead of a full read and write.
 */
import { constants as fsc } from 'node:fs';
import { copyFile, rename, rm, stat, statfs, truncate, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';
import { execa } from 'execa';
import { GbackupError, InvalidConfig } from '../../errors.js';

export class ReflinkError extends GbackupError {}

/** Errors of a clone that a plain copy would not have: the pair is not reflinkable. */
const NOT_CLONEABLE = new Set(['EXDEV', 'EOPNOTSUPP', 'ENOTSUP', 'EINVAL', 'ENOSYS']);

/** Nearest existing ancestor of `path` (itself included). */
export async function nearestExisting(path: string): Promise<string> {
  for (let p = path; ; p = dirname(p)) {
    try {
      await stat(p);
      return p;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(p) === p) throw e;
    }
  }
}

/** Refuses a backend path that is not on the filesystem the driver needs, naming what it is on. */
export async function requireFilesystem(opts: { backend: string; driver: string; root: string; magic: number; label: string }): Promise<void> {
  const existing = await nearestExisting(opts.root);
  if ((await statfs(existing)).type === opts.magic) return;
  const { stdout: fsType } = await execa('stat', ['--file-system', '--format', '%T', existing], { reject: false });
  throw new InvalidConfig(
    `backend '${opts.backend}' (driver ${opts.driver}): path '${opts.root}' is not on a ${opts.label} filesystem` +
      (fsType ? ` ('${existing}' is on ${fsType.trim()})` : '') +
      `; mount a ${opts.label} filesystem there, or use driver: file`,
  );
}

/**
 * One tiny clone per place at start-up: a directory marked NOCOW, or an xfs made without
 * reflink, makes clones fail, and that should stop the worker, not a backup.
 */
export async function checkCloneWorks(backend: string, places: { pool: string | null; dir: string }[], hint: string): Promise<void> {
  for (const { pool, dir } of places) {
    const a = `${dir}/.reflink-probe-${process.pid}-${randomBytes(4).toString('hex')}`;
    const b = `${a}.clone`;
    try {
      await writeFile(a, 'probe');
      await copyFile(a, b, fsc.COPYFILE_FICLONE_FORCE);
    } catch (e) {
      throw new ReflinkError(`backend '${backend}'${pool ? ` pool '${pool}'` : ''}: reflink clone fails in '${dir}' (${(e as Error).message}); ${hint}`);
    } finally {
      await rm(a, { force: true });
      await rm(b, { force: true });
    }
  }
}

/** A snapshot as a clone of the image, made under a temporary name and renamed: a crash leaves none or a whole one. */
export async function cloneSnapshot(src: string, dst: string): Promise<void> {
  const tmp = `${dst}.creating`;
  await copyFile(src, tmp, fsc.COPYFILE_FICLONE_FORCE);
  await rename(tmp, dst);
}

/**
 * The destination becomes a clone of the whole source image, replaced atomically, so a
 * retry after success, or after a crash at any point, ends in the same state. A larger
 * destination keeps its size, with zeros past the source's end, as the generic path
 * leaves it. False when the pair cannot be cloned (the caller copies with dd).
 */
export async function cloneReplacing(src: string, dst: string, destSize: number): Promise<boolean> {
  const srcSize = (await stat(src)).size;
  const tmp = `${dst}.creating`;
  try {
    await copyFile(src, tmp, fsc.COPYFILE_FICLONE_FORCE);
  } catch (e) {
    await rm(tmp, { force: true });
    // Same filesystem, yet not clonable (e.g. a NOCOW source): dd still can.
    if (NOT_CLONEABLE.has((e as NodeJS.ErrnoException).code ?? '')) return false;
    throw e;
  }
  if (destSize > srcSize) await truncate(tmp, destSize);
  await rename(tmp, dst);
  return true;
}
