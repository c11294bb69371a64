/** Config of the `file` backend. */
import { z } from 'zod';
import { backendOptions } from '../config.js';

export const FileBackend = z.strictObject({
  ...backendOptions,
  driver: z.literal('file'),
  /** Directory holding raw sparse image files, one subdirectory per pool. */
  path: backendOptions.path,
});
