/**
 * S3 credentials: from the target's credentialsFile, else the AWS_* environment; read on
 * the worker, never passed through a workflow. CredentialSource reads them again after
 * the store refused them, so a fixed file needs no restart.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { MissingCredentials } from '../../errors.js';
import type { S3Target } from './config.js';

const CredentialsFile = z.strictObject({
  accessKeyId: z.string().min(1),
  secretAccessKey: z.string().min(1),
  sessionToken: z.string().min(1).optional(),
});

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** From the target's credentialsFile, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN). */
export async function loadS3Credentials(target: Pick<S3Target, 'name' | 'credentialsFile'>, env: NodeJS.ProcessEnv = process.env): Promise<S3Credentials> {
  if (target.credentialsFile !== undefined) {
    let text: string;
    try {
      text = await readFile(target.credentialsFile, 'utf8');
    } catch (e) {
      throw new MissingCredentials(`target '${target.name}': cannot read credentialsFile '${target.credentialsFile}': ${(e as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new MissingCredentials(`target '${target.name}': credentialsFile '${target.credentialsFile}' is not JSON`);
    }
    const r = CredentialsFile.safeParse(parsed);
    if (!r.success) {
      throw new MissingCredentials(`target '${target.name}': credentialsFile '${target.credentialsFile}' must hold {"accessKeyId": "...", "secretAccessKey": "..."}`);
    }
    return r.data;
  }
  const accessKeyId = env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) {
    throw new MissingCredentials(
      `target '${target.name}': no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the worker's environment, or give credentialsFile`,
    );
  }
  return { accessKeyId, secretAccessKey, ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}) };
}

/**
 * Credentials read again when the store refused them (and at least every minute), so an
 * operator who fixes a credentials file or rotates a key needs no worker restart. Between
 * re-reads every request gets the cached pair: the SDK asks for it per request.
 */
export class CredentialSource {
  private current: Promise<S3Credentials>;
  private readAt = Date.now();
  private stale = false;
  private static readonly MAX_AGE_MS = 60_000;

  constructor(
    first: S3Credentials,
    private readonly reload: () => Promise<S3Credentials>,
  ) {
    this.current = Promise.resolve(first);
  }

  /** The SDK's identity provider. An expiration in the past makes the SDK ask again next time, which is this cache's to answer. */
  provider = async (): Promise<S3Credentials & { expiration: Date }> => {
    if (this.stale || Date.now() - this.readAt > CredentialSource.MAX_AGE_MS) {
      const old = this.current;
      this.stale = false;
      this.readAt = Date.now();
      // Should the file be unreadable just now, the old pair stays.
      this.current = this.reload().catch(() => old);
    }
    return { ...(await this.current), expiration: new Date() };
  };

  /** The store refused the pair: the next request reads it again (by then the operator may have fixed it). */
  invalidate(): void {
    this.stale = true;
  }
}
