/** Config of the `btrfs` backend. */
import { z } from 'zod';
import { backendOptions } from '../config.js';

export const BtrfsBackend = z.strictObject({
  ...backendOptions,
  driver: z.literal('btrfs'),
  /** Mount point of a btrfs filesystem; pools are subvolumes directly under it. */
  path: backendOptions.path,
});
