/**
 * Every volume driver, by its `driver` name in the config. Adding one is a folder beside
 * these and one line in VOLUME_DRIVERS.
 */
import type { z } from 'zod';
import type { VolumeDriver } from './driver.js';
import type { VolumeDriverPlugin } from './plugin.js';
import { file } from './file/index.js';
import { btrfs } from './btrfs/index.js';
import { xfs } from './xfs/index.js';

export const VOLUME_DRIVERS = { file, btrfs, xfs } as const;

type Schemas = (typeof VOLUME_DRIVERS)[keyof typeof VOLUME_DRIVERS]['schema'];
/** Every driver's config schema: the members of the config's `backends` union. */
export const BACKEND_SCHEMAS = Object.values(VOLUME_DRIVERS).map((d) => d.schema) as unknown as [Schemas, ...Schemas[]];
type AnyBackend = z.infer<Schemas>;

/** The driver a backend's config names. */
export function createDriver(b: AnyBackend): VolumeDriver {
  return (VOLUME_DRIVERS[b.driver] as unknown as VolumeDriverPlugin).create(b);
}
