/** Opens the catalog the config names; migrations run as part of opening. */
import type { CatalogConfig } from '../config/schema.js';
import type { Catalog } from './catalog.js';
import { PostgresCatalog } from './postgres.js';
import { SqliteCatalog } from './sqlite.js';

export function openCatalog(config: CatalogConfig): Promise<Catalog> {
  if (config.driver === 'postgres') return PostgresCatalog.open({ url: config.url, passwordFile: config.passwordFile, poolSize: config.poolSize });
  // load.ts always fills in the file (stateDir/catalog.sqlite by default).
  if (config.file === undefined) throw new Error('sqlite catalog without a file: the config was not loaded through loadConfig');
  return SqliteCatalog.open(config.file);
}
