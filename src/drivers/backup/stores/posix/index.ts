/** The posix directory store: its registry entry. */
import { defineStore } from '../plugin.js';
import { PosixTarget } from './config.js';

export const posix = defineStore({
  schema: PosixTarget,
  // Loaded when opened, as the S3 store is: a config reader needs the schema only.
  open: async (c) => new (await import('./store.js')).PosixStore(c.path, c.name),
  resolvePaths: (c, abs) => ({ ...c, path: abs(c.path) }),
  localDirectory: (c) => c.path,
  describe: (c) => c.path,
});
