/** What every volume backend's config has: a name, a driver, a directory and optional pools. */
import { z } from 'zod';
import { nameSchema } from '../../names.js';

const pools = z
  .array(nameSchema('pool'))
  .min(1, 'pools, when given, must list at least one pool')
  .refine((p) => new Set(p).size === p.length, { message: 'pool names must be unique' })
  .optional();

export const dirPath = z.string().min(1, 'path must not be empty').refine((p) => !p.includes('\0'), { message: 'path must not contain NUL' });

/** Spread into each driver's schema beside its `driver` literal. */
export const backendOptions = {
  name: nameSchema('backend name'),
  path: dirPath,
  pools,
};
