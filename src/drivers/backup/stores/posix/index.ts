/** The posix directory store: its registry entry. */
import { defineStore } from '../plugin.js';
import { PosixTarget } from './config.js';
import { PosixStore } from './store.js';

export const posix = defineStore({
  schema: PosixTarget,
  open: async (c) => new PosixStore(c.path, c.name),
  resolvePaths: (c, abs) => ({ ...c, path: abs(c.path) }),
  localDirectory: (c) => c.path,
  describe: (c) => c.path,
});
