/** The `btrfs` driver's registry entry. */
import { defineVolumeDriver } from '../plugin.js';
import { BtrfsBackend } from './config.js';
import { BtrfsVolumeDriver } from './driver.js';

export const btrfs = defineVolumeDriver({ schema: BtrfsBackend, create: (c) => new BtrfsVolumeDriver(c.name, c.path, c.pools) });
