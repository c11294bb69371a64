/**
 * A directory as an object store. A put writes a temporary file under `<root>/.tmp`,
 * fsyncs it, renames it into place and fsyncs the directory: a crash leaves either the
 * old state or the whole object, never a torn one, and a listed object is on disk.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { access, mkdir, open, readdir, readFile, rename, rmdir, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ObjectNotFound, StoreAccessDenied, StoreFull, StoreNotFound, StoreReadOnly } from '../../errors.js';
import { checkKey, type ObjectStore, type PutOptions } from '../store.js';

const errno = (e: unknown) => (e as NodeJS.ErrnoException | undefined)?.code;

/**
 * The directory itself is never created: a missing one is most often a share that is not
 * mounted, and backups written into the mount point would fill the wrong disk.
 */
export class PosixStore implements ObjectStore {
  readonly location: string;
  private readonly tmpDir: string;
  private readonly madeDirs = new Set<string>();

  constructor(
    readonly root: string,
    /** The target's name, for messages. */
    readonly target = 'posix',
  ) {
    this.location = `posix:${root}`;
    this.tmpDir = join(root, '.tmp');
  }

  private path(key: string): string {
    return join(this.root, checkKey(key));
  }

  private async rootExists(): Promise<boolean> {
    try {
      return (await stat(this.root)).isDirectory();
    } catch {
      return false;
    }
  }

  private missing(): StoreNotFound {
    return new StoreNotFound(`target '${this.target}': directory ${this.root} does not exist (create it, or mount the filesystem it belongs on)`, this.target);
  }

  /**
   * The permanent failures of a filesystem, named; anything else (EIO, EAGAIN, ...) is
   * returned as it is and retried. ENOENT is only permanent when the root itself is gone.
   */
  private async classify(e: unknown, doing: string): Promise<unknown> {
    const code = errno(e);
    const says = `target '${this.target}': cannot ${doing} in ${this.root}`;
    switch (code) {
      case 'ENOENT':
      case 'ENOTDIR':
        return (await this.rootExists()) ? e : this.missing();
      case 'EACCES':
      case 'EPERM':
        return new StoreAccessDenied(`${says}: permission denied (${code}); the worker runs as uid ${process.getuid?.() ?? '?'}`, this.target);
      case 'EROFS':
        return new StoreReadOnly(`${says}: the filesystem is read-only (EROFS)`, this.target);
      case 'ENOSPC':
      case 'EDQUOT':
        return new StoreFull(`${says}: no space left (${code}); free space there or point the target elsewhere`, this.target);
      default:
        return e;
    }
  }

  async ready(): Promise<{ created: boolean }> {
    if (!(await this.rootExists())) throw this.missing();
    try {
      // access(2) answers EROFS for W_OK on a read-only mount, also for root.
      await access(this.root, fsc.R_OK | fsc.W_OK | fsc.X_OK);
    } catch (e) {
      throw await this.classify(e, 'read and write');
    }
    return { created: false };
  }

  private async ensureDir(dir: string): Promise<void> {
    if (this.madeDirs.has(dir)) return;
    if (!(await this.rootExists())) throw this.missing();
    await mkdir(dir, { recursive: true });
    this.madeDirs.add(dir);
  }

  async put(key: string, body: Buffer, _opts?: PutOptions): Promise<void> {
    const dest = this.path(key);
    const tmp = join(this.tmpDir, `${randomBytes(8).toString('hex')}.part`);
    try {
      await this.ensureDir(this.tmpDir);
      await this.ensureDir(dirname(dest));
      try {
        const fh = await open(tmp, 'wx', 0o600);
        try {
          await fh.writeFile(body);
          await fh.datasync();
        } finally {
          await fh.close();
        }
        await rename(tmp, dest);
      } catch (e) {
        await unlink(tmp).catch(() => undefined);
        throw e;
      }
      const dir = await open(dirname(dest), 'r');
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
    } catch (e) {
      throw await this.classify(e, `write object '${key}'`);
    }
  }

  async get(key: string): Promise<Buffer> {
    try {
      return await readFile(this.path(key));
    } catch (e) {
      throw await this.readFailure(e, key);
    }
  }

  private async readFailure(e: unknown, key: string): Promise<unknown> {
    const classified = await this.classify(e, `read object '${key}'`);
    if (classified === e && errno(e) === 'ENOENT') return new ObjectNotFound(`no object '${key}' in ${this.location}`, key);
    return classified;
  }

  async getInto<B extends ArrayBufferLike>(key: string, alloc: (length: number) => B): Promise<{ buffer: B; length: number }> {
    let fh;
    try {
      fh = await open(this.path(key), 'r');
    } catch (e) {
      throw await this.readFailure(e, key);
    }
    try {
      const length = (await fh.stat()).size;
      const buffer = alloc(length);
      const view = new Uint8Array(buffer, 0, length);
      for (let at = 0; at < length; ) {
        const { bytesRead } = await fh.read(view, at, length - at, at);
        if (bytesRead === 0) throw new Error(`object '${key}' in ${this.location} shrank while being read`);
        at += bytesRead;
      }
      return { buffer, length };
    } finally {
      await fh.close();
    }
  }

  async exists(key: string): Promise<boolean> {
    return (await this.sizeOf(key)) !== null;
  }

  async sizeOf(key: string): Promise<number | null> {
    try {
      const st = await stat(this.path(key));
      return st.isFile() ? st.size : null;
    } catch (e) {
      const classified = await this.classify(e, `look up object '${key}'`);
      if (classified === e && errno(e) === 'ENOENT') return null;
      throw classified;
    }
  }

  async delete(key: string): Promise<void> {
    const p = this.path(key);
    try {
      await unlink(p);
    } catch (e) {
      const classified = await this.classify(e, `delete object '${key}'`);
      if (classified !== e || errno(e) !== 'ENOENT') throw classified;
    }
    // Empty backup directories would otherwise pile up; chunk fan-out directories are
    // few (256 per key space) and reused, so they stay.
    if (key.startsWith('backups/')) {
      for (let d = dirname(p); d.length > this.root.length && d.startsWith(join(this.root, 'backups')); d = dirname(d)) {
        if (d === join(this.root, 'backups')) break;
        try {
          await rmdir(d);
          this.madeDirs.delete(d);
        } catch {
          break;
        }
      }
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    // Walk only the directory the prefix pins down, not the whole tree.
    const slash = prefix.lastIndexOf('/');
    const base = slash < 0 ? '' : prefix.slice(0, slash);
    if (base) checkKey(base);
    // A missing root is not an empty store: a rebuild or a listing would otherwise report "no backups".
    if (!(await this.rootExists())) throw this.missing();
    const classify = (e: unknown) => this.classify(e, `list '${prefix}'`);
    async function* walk(dir: string, rel: string): AsyncIterable<string> {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (e) {
        if (errno(e) === 'ENOENT' || errno(e) === 'ENOTDIR') return;
        throw await classify(e);
      }
      for (const ent of entries) {
        if (ent.name.startsWith('.')) continue;
        const key = rel ? `${rel}/${ent.name}` : ent.name;
        if (ent.isDirectory()) {
          if (prefix.startsWith(`${key}/`) || key.startsWith(prefix) || `${key}/`.startsWith(prefix)) yield* walk(join(dir, ent.name), key);
        } else if (ent.isFile() && key.startsWith(prefix)) {
          yield key;
        }
      }
    }
    yield* walk(base ? join(this.root, base) : this.root, base);
  }
}
