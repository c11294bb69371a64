/** The `file` driver's registry entry. */
import { defineVolumeDriver } from '../plugin.js';
import { FileBackend } from './config.js';
import { FileVolumeDriver } from './driver.js';

export const file = defineVolumeDriver({ schema: FileBackend, create: (c) => new FileVolumeDriver(c.name, c.path, c.pools) });
