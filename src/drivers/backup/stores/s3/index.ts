/** The S3 store: its registry entry. */
import { defineStore } from '../plugin.js';
import { S3Target } from './config.js';
import { CredentialSource, loadS3Credentials } from './credentials.js';

export const s3 = defineStore({
  schema: S3Target,
  // The AWS SDK is loaded when a store is opened, not by every process that reads a config (the CLI).
  open: async (c, env) =>
    new (await import('./store.js')).S3Store({
      target: c.name,
      ...(c.endpoint !== undefined ? { endpoint: c.endpoint } : {}),
      region: c.region,
      bucket: c.bucket,
      prefix: c.prefix,
      forcePathStyle: c.forcePathStyle,
      credentials: new CredentialSource(await loadS3Credentials(c, env), () => loadS3Credentials(c, env)),
      createBucket: c.createBucket,
      ...(c.objectLock !== undefined ? { objectLock: c.objectLock } : {}),
    }),
  resolvePaths: (c, abs) => (c.credentialsFile !== undefined ? { ...c, credentialsFile: abs(c.credentialsFile) } : c),
  localDirectory: () => null,
  describe: (c) => `s3://${c.bucket}/${c.prefix}${c.endpoint ? ` at ${c.endpoint}` : ''}`,
});
