/**
 * TLS, mTLS and API keys to Temporal, from the config and from Temporal's envconfig
 * variables. `temporal server start-dev` (CLI v1.5.1) has no TLS option at all, so the
 * suite's real dev server is put behind a real mTLS terminator (node:tls, ALPN h2,
 * client certificates required, throwaway CA from openssl): what the client and the
 * worker's native connection see is a TLS-only Temporal frontend.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { inject } from 'vitest';
import { execa } from 'execa';
import { WorkflowFailedError } from '@temporalio/client';
import { ActivityFailure, ApplicationFailure } from '@temporalio/common';
import { WORKFLOWS } from '../src/api.js';
import { GbackupClient } from '../src/client/client.js';
import { parseConfig } from '../src/config/load.js';
import { InvalidConfig } from '../src/errors.js';
import { temporalConnection } from '../src/temporal/connection.js';
import { startWorkers, type RunningWorkers } from '../src/workers/worker.js';
import { makeEnv, yamlWith, type TestEnv } from './helpers/env.js';

// The shell's TEMPORAL_* must not steer this file's connections; each test passes its own env.
for (const k of Object.keys(process.env)) if (k.startsWith('TEMPORAL_')) delete process.env[k];

const SERVER_NAME = 'temporal.test';
const API_KEY = `gbk-${randomBytes(12).toString('hex')}`;
let dir: string;
let proxy: TlsServer | undefined;
let proxyAddress: string;
const sockets = new Set<Socket>();
/** What the TLS side saw: proof that a refused connection was refused for TLS reasons. */
const handshakeErrors: string[] = [];
const f = (name: string) => join(dir, name);

/** A CA, a server certificate for SERVER_NAME only (not 127.0.0.1, so SNI matters), a client certificate. */
async function makePki(): Promise<void> {
  const ssl = (...args: string[]) => execa('openssl', args, { cwd: dir });
  const key = (name: string) => ssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', name);
  await key('ca.key');
  await ssl('req', '-x509', '-new', '-key', 'ca.key', '-subj', '/CN=gbackup test CA', '-days', '2', '-out', 'ca.pem', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const leaf = async (name: string, cn: string, ext: string) => {
    await key(`${name}.key`);
    await ssl('req', '-new', '-key', `${name}.key`, '-subj', `/CN=${cn}`, '-out', `${name}.csr`);
    writeFileSync(f(`${name}.ext`), ext);
    await ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-out', `${name}.pem`, '-extfile', `${name}.ext`);
  };
  await leaf('server', SERVER_NAME, `basicConstraints=CA:FALSE\nsubjectAltName=DNS:${SERVER_NAME}\nextendedKeyUsage=serverAuth\n`);
  await leaf('client', 'gbackup-worker', 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n');
  await leaf('other', 'other', 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n');
  writeFileSync(f('api.key'), `${API_KEY}\n`);
}

/** mTLS in front of the plain dev server: gRPC's HTTP/2 passes through unchanged once TLS is off it. */
async function startProxy(target: string): Promise<string> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const server = createTlsServer(
    { key: readFileSync(f('server.key')), cert: readFileSync(f('server.pem')), ca: readFileSync(f('ca.pem')), requestCert: true, rejectUnauthorized: true, ALPNProtocols: ['h2'] },
    (client) => {
      const upstream = netConnect({ host, port });
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    },
  );
  server.on('tlsClientError', (e) => handshakeErrors.push(e.message));
  proxy = server;
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  const addr = server.address();
  if (typeof addr !== 'object' || addr === null) throw new Error('proxy has no address');
  return `127.0.0.1:${addr.port}`;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gbackup-tls-'));
  await makePki();
  proxyAddress = await startProxy(inject('temporalAddress'));
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((res) => (proxy ? proxy.close(() => res()) : res()));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A config file in `dir` with the temporal block given; relative paths are relative to it. */
function configWith(temporal: string) {
  const file = join(dir, `config-${randomBytes(3).toString('hex')}.yaml`);
  const yaml = `temporal: ${temporal}
stateDir: ./state
backends: [{ name: alpha, driver: file, path: ./alpha }]
targets: [{ name: vault, driver: volume, backend: alpha }]
`;
  writeFileSync(file, yaml);
  return parseConfig(yaml, `'${file}'`, dir);
}

const MTLS = `{ serverName: ${SERVER_NAME}, serverRootCaCertFile: ./ca.pem, clientCertFile: ./client.pem, clientKeyFile: ./client.key }`;

describe('the option building', () => {
  const base = { address: 'h:7233', namespace: 'default' };
  it('is plain by default, TLS with system roots for tls: true, and TLS whenever an API key is set (envconfig)', () => {
    expect(temporalConnection(base, {}).options).toEqual({ address: 'h:7233', tls: false });
    expect(temporalConnection({ ...base, tls: true }, {}).options).toEqual({ address: 'h:7233', tls: {} });
    const keyed = temporalConnection({ ...base, apiKeyFile: f('api.key') }, {});
    expect(keyed.options).toEqual({ address: 'h:7233', tls: {}, apiKey: API_KEY });
    expect(temporalConnection({ ...base, apiKeyFile: f('api.key') }, { TEMPORAL_TLS: 'false' }).options).toEqual({ address: 'h:7233', tls: false, apiKey: API_KEY });
    expect(temporalConnection(base, { TEMPORAL_API_KEY: 'k1' }).options).toEqual({ address: 'h:7233', tls: {}, apiKey: 'k1' });
    expect(temporalConnection({ ...base, tls: { serverName: 'x' } }, { TEMPORAL_TLS: '0' }).options.tls).toBe(false);
    expect(temporalConnection(base, { TEMPORAL_TLS: 'TRUE', TEMPORAL_ADDRESS: 'e:1', TEMPORAL_NAMESPACE: 'ns' })).toMatchObject({ address: 'e:1', namespace: 'ns', options: { address: 'e:1', tls: {} } });
  });

  it('names no secret in what it says about a connection', () => {
    const c = temporalConnection({ ...base, apiKeyFile: f('api.key'), tls: { clientCertFile: f('client.pem'), clientKeyFile: f('client.key') } }, {});
    expect(c.describe).toBe('h:7233 (mTLS, API key)');
    expect(c.describe).not.toContain(API_KEY);
  });

  it('resolves relative paths against the config file', () => {
    const t = configWith(`{ address: h:1, apiKeyFile: ./api.key, tls: ${MTLS} }`).temporal;
    expect(t).toMatchObject({ apiKeyFile: f('api.key'), tls: { serverName: SERVER_NAME, serverRootCaCertFile: f('ca.pem'), clientCertFile: f('client.pem'), clientKeyFile: f('client.key') } });
    expect(configWith('{ address: h:1 }').temporal).toMatchObject({ address: 'h:1', namespace: 'default', taskQueue: 'gbackup', registerSearchAttributes: true });
  });

  it('refuses what it cannot honour, naming the setting', () => {
    const refused = (t: Parameters<typeof temporalConnection>[0], env: Record<string, string>, msg: RegExp) => {
      expect(() => temporalConnection(t, env)).toThrow(InvalidConfig);
      expect(() => temporalConnection(t, env)).toThrow(msg);
    };
    refused(base, { TEMPORAL_TLS: 'yes' }, /TEMPORAL_TLS='yes': expected true, false, 1 or 0/);
    refused(base, { TEMPORAL_TLS: 'true', TEMPORAL_TLS_DISABLE_HOST_VERIFICATION: 'true' }, /TEMPORAL_TLS_DISABLE_HOST_VERIFICATION=true is not supported/);
    expect(temporalConnection(base, { TEMPORAL_TLS: 'true', TEMPORAL_TLS_DISABLE_HOST_VERIFICATION: 'false' }).options.tls).toEqual({});
    refused(base, { TEMPORAL_TLS_CLIENT_KEY_DATA: '-----BEGIN' }, /TEMPORAL_TLS_CLIENT_KEY_DATA is not supported by gbackup/);
    refused({ ...base, tls: { clientCertFile: f('client.pem') } }, {}, /temporal.tls.clientCertFile is set .* but a client key .* is not/);
    refused(base, { TEMPORAL_TLS_CLIENT_KEY_PATH: f('client.key') }, /TEMPORAL_TLS_CLIENT_KEY_PATH is set .* but a client certificate .* is not/);
    refused({ ...base, tls: { clientCertFile: f('client.pem'), clientKeyFile: f('other.key') } }, {}, /client certificate '.*client.pem' \(temporal.tls.clientCertFile\) does not belong to the key '.*other.key'/);
    refused({ ...base, tls: { clientCertFile: f('client.key'), clientKeyFile: f('client.key') } }, {}, /'.*client.key' \(temporal.tls.clientCertFile\) is not a PEM certificate/);
    refused({ ...base, tls: { clientCertFile: f('client.pem'), clientKeyFile: f('client.pem') } }, {}, /client key '.*client.pem' \(temporal.tls.clientKeyFile\) is not an unencrypted PEM private key/);
    writeFileSync(f('empty.key'), '\n');
    refused({ ...base, apiKeyFile: f('empty.key') }, {}, /API key file '.*empty.key' \(temporal.apiKeyFile\) is empty/);
  });
});

describe('against a TLS-only Temporal frontend', () => {
  const temporalOf = (address: string) => ({ address, namespace: 'default', taskQueue: 'unused' });

  it('refuses a plain connection, TLS without a client certificate, and the wrong server name', async () => {
    /** Connecting fails with our message, and the TLS side says why. */
    const refused = async (temporal: Parameters<typeof GbackupClient.connect>[0]['temporal'], message: RegExp, handshake: RegExp) => {
      handshakeErrors.length = 0;
      await expect(GbackupClient.connect({ temporal }, {})).rejects.toThrow(message);
      expect(handshakeErrors.some((e) => handshake.test(e))).toBe(true);
    };
    await refused(temporalOf(proxyAddress), new RegExp(`cannot reach Temporal at ${proxyAddress}: .*is 'gbackup dev' or a Temporal server running`), /wrong version number/);
    const noClientCert = { ...temporalOf(proxyAddress), tls: { serverName: SERVER_NAME, serverRootCaCertFile: f('ca.pem') } };
    await refused(noClientCert, new RegExp(`cannot reach Temporal at ${proxyAddress} \\(TLS\\): .*temporal\\.tls`), /peer did not return a certificate/);
    // The certificate names temporal.test only: without serverName the client hangs up on 127.0.0.1.
    const noServerName = { ...temporalOf(proxyAddress), tls: { serverRootCaCertFile: f('ca.pem'), clientCertFile: f('client.pem'), clientKeyFile: f('client.key') } };
    await refused(noServerName, new RegExp(`cannot reach Temporal at ${proxyAddress} \\(mTLS\\):`), /socket hang up|certificate/);
  });

  it('connects with mTLS and an API key from the config file (relative paths)', async () => {
    const config = configWith(`{ address: '${proxyAddress}', apiKeyFile: ./api.key, tls: ${MTLS} }`);
    const c = await GbackupClient.connect(config, {});
    try {
      expect(await c.client.workflow.count()).toMatchObject({ count: expect.any(Number) as unknown });
    } finally {
      await c.close();
    }
  });

  it('takes the address and every TLS file from the envconfig variables over the config, and the legacy names too', async () => {
    const config = configWith(`{ address: '127.0.0.1:1', namespace: elsewhere }`);
    const envconfig = {
      TEMPORAL_ADDRESS: proxyAddress,
      TEMPORAL_NAMESPACE: 'default',
      TEMPORAL_TLS: 'true',
      TEMPORAL_TLS_SERVER_NAME: SERVER_NAME,
      TEMPORAL_TLS_SERVER_CA_CERT_PATH: f('ca.pem'),
      TEMPORAL_TLS_CLIENT_CERT_PATH: f('client.pem'),
      TEMPORAL_TLS_CLIENT_KEY_PATH: f('client.key'),
      TEMPORAL_API_KEY: API_KEY,
    };
    const legacy = { TEMPORAL_ADDRESS: proxyAddress, TEMPORAL_TLS_SERVER_NAME: SERVER_NAME, TEMPORAL_TLS_CA: f('ca.pem'), TEMPORAL_TLS_CERT: f('client.pem'), TEMPORAL_TLS_KEY: f('client.key') };
    for (const env of [envconfig, legacy]) {
      const c = await GbackupClient.connect({ ...config, temporal: { ...config.temporal, namespace: 'default' } }, env);
      try {
        expect(await c.client.workflow.count()).toMatchObject({ count: expect.any(Number) as unknown });
      } finally {
        await c.close();
      }
    }
  });

  it('fails clearly, naming the file and the setting, when a certificate, key or API key file is missing', async () => {
    const missingCert = configWith(`{ address: '${proxyAddress}', tls: { serverRootCaCertFile: ./ca.pem, clientCertFile: ./nope.pem, clientKeyFile: ./client.key } }`);
    const err = await GbackupClient.connect(missingCert, {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidConfig);
    expect((err as Error).message).toBe(`cannot read the client certificate '${f('nope.pem')}' (temporal.tls.clientCertFile): ENOENT`);
    // The worker names it too, before it opens the catalog or connects.
    await expect(startWorkers({ config: missingCert, env: {}, log: () => undefined })).rejects.toThrow(`cannot read the client certificate '${f('nope.pem')}' (temporal.tls.clientCertFile): ENOENT`);
    await expect(GbackupClient.connect(configWith(`{ address: '${proxyAddress}', tls: ${MTLS} }`), { TEMPORAL_TLS_CLIENT_KEY_PATH: '/nonexistent/client.key' })).rejects.toThrow(
      "cannot read the client key '/nonexistent/client.key' (TEMPORAL_TLS_CLIENT_KEY_PATH): ENOENT",
    );
    await expect(GbackupClient.connect(configWith(`{ address: '${proxyAddress}', tls: { serverRootCaCertFile: ./ca-missing.pem } }`), {})).rejects.toThrow(
      `cannot read the server CA certificate '${f('ca-missing.pem')}' (temporal.tls.serverRootCaCertFile): ENOENT`,
    );
    await expect(GbackupClient.connect(configWith(`{ address: '${proxyAddress}', apiKeyFile: ./gone.key }`), {})).rejects.toThrow(`cannot read the API key file '${f('gone.key')}' (temporal.apiKeyFile): ENOENT`);
  });

  describe('workers', () => {
    let env: TestEnv | undefined;
    let workers: RunningWorkers | undefined;
    const logged: string[] = [];
    afterAll(async () => {
      await workers?.shutdown().catch(() => undefined);
      await env?.cleanup();
    });

    it('poll and run workflows over mTLS (native and client connections), and log no secret', async () => {
      const tls = `{ serverName: ${SERVER_NAME}, serverRootCaCertFile: ${f('ca.pem')}, clientCertFile: ${f('client.pem')}, clientKeyFile: ${f('client.key')} }`;
      const yaml = (d: string, taskQueue: string, address: string) =>
        yamlWith('')(d, taskQueue, address).replace(/^temporal: \{ (.*) \}$/m, `temporal: { $1, apiKeyFile: ${f('api.key')}, tls: ${tls} }`);
      env = await makeEnv({ address: proxyAddress, yaml, workers: false });
      expect(env.config.temporal.tls).toMatchObject({ serverName: SERVER_NAME });
      workers = await startWorkers({ config: env.config, workflowBundle: { code: inject('workflowCode') }, log: (m) => logged.push(m), env: {} });
      expect(logged.find((l) => l.includes('control role'))).toContain(`Temporal ${proxyAddress} (mTLS, API key) namespace 'default'`);
      expect(logged.join('\n')).not.toContain(API_KEY);
      expect(logged.join('\n')).not.toContain('PRIVATE KEY');

      // A workflow task and a control activity, both through the TLS frontend.
      const failure: unknown = await env.client.client.workflow
        .execute(WORKFLOWS.backupVolume, { taskQueue: env.config.temporal.taskQueue, workflowId: `tls-${randomBytes(4).toString('hex')}`, args: [{ volumeId: 'vol-nope' }] })
        .catch((e: unknown) => e);
      expect(failure).toBeInstanceOf(WorkflowFailedError);
      let cause = (failure as WorkflowFailedError).cause;
      while (cause instanceof ActivityFailure && cause.cause) cause = cause.cause;
      expect(cause).toBeInstanceOf(ApplicationFailure);
      expect((cause as ApplicationFailure).type).toBe('VolumeNotFound');
    });
  });
});
