/**
 * What a volume driver plugs in with: its config schema and a factory. A new driver is a
 * folder `drivers/volume/<name>/` holding config.ts (the schema), driver.ts (a
 * VolumeDriver, usually extending FileVolumeDriver or BaseVolumeDriver) and index.ts
 * (this entry), plus one line in registry.ts.
 */
import type { z } from 'zod';
import type { VolumeDriver } from './driver.js';

export type BackendSchema = z.ZodObject<{ driver: z.ZodLiteral<string>; name: z.ZodType<string>; path: z.ZodType<string> } & z.ZodRawShape>;

export interface VolumeDriverPlugin<S extends BackendSchema = BackendSchema> {
  schema: S;
  create(config: z.infer<S>): VolumeDriver;
}

export const defineVolumeDriver = <S extends BackendSchema>(p: VolumeDriverPlugin<S>): VolumeDriverPlugin<S> => p;
