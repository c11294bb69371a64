/** Config of the `xfs` backend. */
import { z } from 'zod';
import { backendOptions } from '../config.js';

export const XfsBackend = z.strictObject({
  ...backendOptions,
  driver: z.literal('xfs'),
  /** A directory on an xfs filesystem made with reflink (mkfs.xfs's default since xfsprogs 5.1); pools are directories under it. */
  path: backendOptions.path,
});
