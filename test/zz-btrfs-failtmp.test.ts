import { afterAll, beforeAll, describe, it, expect } from 'vitest';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeBtrfsFilesystem, type BtrfsFilesystem } from './helpers/btrfs.js';
let dir: string; let fs1: BtrfsFilesystem | undefined; let fs2: BtrfsFilesystem | undefined;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gbackup-btrfs-fail-'));
  fs1 = await makeBtrfsFilesystem(join(dir, 'fs1'), 300 * 1024 * 1024);
  // held open: umount will be busy
  (globalThis as any).fh = await open(join(fs1.mountPoint, 'held'), 'w');
  fs2 = await makeBtrfsFilesystem(join(dir, 'fs2'), 50 * 1024 * 1024 * 1024 * 1024 * 1024);
});
afterAll(async () => { try { await fs2?.cleanup(); } finally { await fs1?.cleanup(); await rm(dir, { recursive: true, force: true }); } });
describe('x', () => { it('fails', () => { expect(1).toBe(2); }); });
