/** Config of a posix directory target. */
import { z } from 'zod';
import { chunkedTargetOptions, path } from '../../config.js';

export const PosixTarget = z.strictObject({
  ...chunkedTargetOptions,
  driver: z.literal('posix'),
  /** A directory; relative paths are relative to the config file (resolveTargetPaths). */
  path: path('path'),
});
export type PosixTarget = z.infer<typeof PosixTarget>;
