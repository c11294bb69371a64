/** The `xfs` driver's registry entry. */
import { defineVolumeDriver } from '../plugin.js';
import { XfsBackend } from './config.js';
import { XfsVolumeDriver } from './driver.js';

export const xfs = defineVolumeDriver({ schema: XfsBackend, create: (c) => new XfsVolumeDriver(c.name, c.path, c.pools) });
