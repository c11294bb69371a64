/**
 * How gbackup reaches Temporal: the `temporal` block of the config, overridden by the
 * environment variables of Temporal's envconfig (the names the Temporal CLI and SDKs
 * read), turned into the options `Connection.connect` and `NativeConnection.connect`
 * both take. Every connection (CLI client, workers, bench) is built here, so the CLI and
 * the workers of one host can never disagree about where, or how, they connect.
 *
 * The result holds secrets (the client key, the API key): it goes to connect() and
 * nowhere else. Messages use `describe`, which names no secret.
 */
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import type { TLSConfig } from '@temporalio/client';
import type { Config, TemporalTls } from '../config/schema.js';
import { InvalidConfig } from '../errors.js';

/** What a connection needs from the config: the CLI's client takes no more than this. */
export type TemporalSettings = Pick<Config['temporal'], 'address' | 'namespace'> & Partial<Pick<Config['temporal'], 'tls' | 'apiKeyFile'>>;

export interface TemporalConnection {
  /** After the environment's overrides: use these, not the config's. */
  address: string;
  namespace: string;
  /** For Connection.connect and NativeConnection.connect alike. Holds secrets: never log it. */
  options: { address: string; tls: TLSConfig | false; apiKey?: string };
  /** Where and how, for messages: `temporal.example:7233 (mTLS, API key)`. */
  describe: string;
}

/**
 * Temporal's envconfig names (go.temporal.io/sdk/contrib/envconfig ApplyEnvVars). The
 * legacy TEMPORAL_TLS_CERT/KEY/CA win over the new names, as in the Temporal CLI.
 */
export const TEMPORAL_ENV = {
  address: 'TEMPORAL_ADDRESS',
  namespace: 'TEMPORAL_NAMESPACE',
  apiKey: 'TEMPORAL_API_KEY',
  tls: 'TEMPORAL_TLS',
  clientCert: ['TEMPORAL_TLS_CERT', 'TEMPORAL_TLS_CLIENT_CERT_PATH'],
  clientKey: ['TEMPORAL_TLS_KEY', 'TEMPORAL_TLS_CLIENT_KEY_PATH'],
  serverCa: ['TEMPORAL_TLS_CA', 'TEMPORAL_TLS_SERVER_CA_CERT_PATH'],
  serverName: 'TEMPORAL_TLS_SERVER_NAME',
  disableHostVerification: 'TEMPORAL_TLS_DISABLE_HOST_VERIFICATION',
} as const;

/** envconfig's PEM-in-a-variable forms: refused by name rather than silently ignored. */
const UNSUPPORTED_ENV = ['TEMPORAL_TLS_CLIENT_CERT_DATA', 'TEMPORAL_TLS_CLIENT_KEY_DATA', 'TEMPORAL_TLS_SERVER_CA_CERT_DATA', 'TEMPORAL_TLS_CERT_DATA', 'TEMPORAL_TLS_KEY_DATA', 'TEMPORAL_TLS_CA_DATA'];

type Env = Record<string, string | undefined>;

/** Relative paths in the temporal block are relative to the config file, like every other path. */
export function resolveTemporalPaths<T extends Partial<Pick<Config['temporal'], 'tls' | 'apiKeyFile'>>>(t: T, abs: (p: string) => string): T {
  const tls = t.tls;
  return {
    ...t,
    ...(t.apiKeyFile !== undefined ? { apiKeyFile: abs(t.apiKeyFile) } : {}),
    ...(typeof tls === 'object'
      ? {
          tls: {
            ...tls,
            ...(tls.serverRootCaCertFile !== undefined ? { serverRootCaCertFile: abs(tls.serverRootCaCertFile) } : {}),
            ...(tls.clientCertFile !== undefined ? { clientCertFile: abs(tls.clientCertFile) } : {}),
            ...(tls.clientKeyFile !== undefined ? { clientKeyFile: abs(tls.clientKeyFile) } : {}),
          },
        }
      : {}),
  };
}

function envValue(env: Env, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v === '' ? undefined : v;
}

/** envconfig's booleans: true/false/1/0. Anything else is refused, not read as false. */
function envBool(env: Env, name: string): boolean | undefined {
  const v = envValue(env, name);
  if (v === undefined) return undefined;
  const l = v.toLowerCase();
  if (l === 'true' || l === '1') return true;
  if (l === 'false' || l === '0') return false;
  throw new InvalidConfig(`${name}='${v}': expected true, false, 1 or 0`);
}

/** A file setting and where it came from, so an error names the setting to fix. */
interface FileSetting {
  file: string;
  setting: string;
}

function fileSetting(env: Env, names: readonly string[], configured: string | undefined, configName: string): FileSetting | undefined {
  for (const name of names) {
    const v = envValue(env, name);
    // Relative to the working directory, as a shell user means it.
    if (v !== undefined) return { file: isAbsolute(v) ? v : resolve(v), setting: name };
  }
  return configured === undefined ? undefined : { file: configured, setting: configName };
}

function read(what: string, s: FileSetting): Buffer {
  try {
    return readFileSync(s.file);
  } catch (e) {
    throw new InvalidConfig(`cannot read the ${what} '${s.file}' (${s.setting}): ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** Parsed here so a wrong file is named now, not as an opaque handshake failure later. */
function readCert(what: string, s: FileSetting): { pem: Buffer; cert: X509Certificate } {
  const pem = read(what, s);
  try {
    return { pem, cert: new X509Certificate(pem) };
  } catch {
    throw new InvalidConfig(`the ${what} '${s.file}' (${s.setting}) is not a PEM certificate`);
  }
}

function readKey(s: FileSetting): { pem: Buffer; key: KeyObject } {
  const pem = read('client key', s);
  try {
    return { pem, key: createPrivateKey(pem) };
  } catch {
    // The parser's message is dropped: nothing derived from a key goes into a message.
    throw new InvalidConfig(`the client key '${s.file}' (${s.setting}) is not an unencrypted PEM private key`);
  }
}

function readApiKey(env: Env, apiKeyFile: string | undefined): string | undefined {
  const fromEnv = envValue(env, TEMPORAL_ENV.apiKey);
  if (fromEnv !== undefined) return fromEnv.trim();
  if (apiKeyFile === undefined) return undefined;
  const s = { file: apiKeyFile, setting: 'temporal.apiKeyFile' };
  const key = read('API key file', s).toString('utf8').trim();
  if (key === '') throw new InvalidConfig(`the API key file '${s.file}' (${s.setting}) is empty`);
  return key;
}

/**
 * The connection for these settings in this environment. Throws InvalidConfig, naming
 * the file and the setting, for a file that is missing, unreadable or not what it should be.
 * Follows envconfig: any TLS setting or an API key turns TLS on, unless TLS is set false.
 */
export function temporalConnection(t: TemporalSettings, env: Env = process.env): TemporalConnection {
  for (const name of UNSUPPORTED_ENV) {
    if (envValue(env, name) !== undefined) throw new InvalidConfig(`${name} is not supported by gbackup: put the PEM in a file and name it in the matching *_PATH variable`);
  }
  const address = envValue(env, TEMPORAL_ENV.address) ?? t.address;
  const namespace = envValue(env, TEMPORAL_ENV.namespace) ?? t.namespace;
  const files: Exclude<TemporalTls, boolean> = typeof t.tls === 'object' ? t.tls : {};
  const ca = fileSetting(env, TEMPORAL_ENV.serverCa, files.serverRootCaCertFile, 'temporal.tls.serverRootCaCertFile');
  const crt = fileSetting(env, TEMPORAL_ENV.clientCert, files.clientCertFile, 'temporal.tls.clientCertFile');
  const key = fileSetting(env, TEMPORAL_ENV.clientKey, files.clientKeyFile, 'temporal.tls.clientKeyFile');
  const serverName = envValue(env, TEMPORAL_ENV.serverName) ?? files.serverName;
  const apiKey = readApiKey(env, t.apiKeyFile);

  const flag = envBool(env, TEMPORAL_ENV.tls) ?? (typeof t.tls === 'boolean' ? t.tls : undefined);
  const on = flag ?? (typeof t.tls === 'object' || ca !== undefined || crt !== undefined || key !== undefined || serverName !== undefined || apiKey !== undefined);
  const auth = apiKey === undefined ? {} : { apiKey };
  if (!on) return { address, namespace, options: { address, tls: false, ...auth }, describe: `${address}${apiKey === undefined ? '' : ' (no TLS, API key)'}` };

  if (envBool(env, TEMPORAL_ENV.disableHostVerification) === true) {
    throw new InvalidConfig(
      `${TEMPORAL_ENV.disableHostVerification}=true is not supported: the TypeScript SDK always verifies the server's certificate; name its CA in ${TEMPORAL_ENV.serverCa[1]} and a name it carries in ${TEMPORAL_ENV.serverName}`,
    );
  }
  if ((crt === undefined) !== (key === undefined)) {
    const [have, missing] = crt === undefined ? [key!, 'a client certificate (temporal.tls.clientCertFile or TEMPORAL_TLS_CLIENT_CERT_PATH)'] : [crt, 'a client key (temporal.tls.clientKeyFile or TEMPORAL_TLS_CLIENT_KEY_PATH)'];
    throw new InvalidConfig(`mTLS needs a certificate and its key: ${have.setting} is set ('${have.file}') but ${missing} is not`);
  }
  const tls: TLSConfig = {};
  if (serverName !== undefined) tls.serverNameOverride = serverName;
  if (ca !== undefined) tls.serverRootCACertificate = readCert('server CA certificate', ca).pem;
  if (crt !== undefined && key !== undefined) {
    const c = readCert('client certificate', crt);
    const k = readKey(key);
    if (!c.cert.checkPrivateKey(k.key)) throw new InvalidConfig(`the client certificate '${crt.file}' (${crt.setting}) does not belong to the key '${key.file}' (${key.setting})`);
    tls.clientCertPair = { crt: c.pem, key: k.pem };
  }
  const how = [tls.clientCertPair ? 'mTLS' : 'TLS', ...(apiKey === undefined ? [] : ['API key'])].join(', ');
  return { address, namespace, options: { address, tls, ...auth }, describe: `${address} (${how})` };
}
