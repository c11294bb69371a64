/**
 * The S3 store's direct GETs (src/drivers/backup/stores/s3/directget.ts) against a raw TCP
 * server that answers exactly as each case needs: bodies split anywhere, kept-alive and
 * dropped connections, answers it must leave to the SDK's own handler, silence.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirectBody, DirectGets, type SignedRequest } from '../src/drivers/backup/stores/s3/directget.js';

type Handler = (req: string, sock: net.Socket) => void;
let server: net.Server;
let port: number;
let handler: Handler = () => undefined;
let connections = 0;
const requests: string[] = [];
const sockets = new Set<net.Socket>();

beforeAll(async () => {
  server = net.createServer((sock) => {
    connections++;
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      let end: number;
      while ((end = buf.indexOf('\r\n\r\n')) >= 0) {
        const req = buf.slice(0, end);
        buf = buf.slice(end + 4);
        requests.push(req);
        handler(req, sock);
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as net.AddressInfo).port;
});
afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise((r) => server.close(r));
});

const request = (path = '/bucket/key', query: SignedRequest['query'] = { 'x-id': 'GetObject' }): SignedRequest => ({
  protocol: 'http:',
  hostname: '127.0.0.1',
  port,
  method: 'GET',
  path,
  query,
  headers: { authorization: 'AWS4-HMAC-SHA256 signed', host: `127.0.0.1:${port}` },
});

const ok = (body: Buffer, extra = '') => Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n${extra}\r\n`, 'latin1'), body]);

async function getBody(gets: DirectGets, req = request()): Promise<Buffer | null> {
  const r = await gets.get(req);
  if (!r) return null;
  const dest = new Uint8Array(new SharedArrayBuffer(r.body.length + 100), 50, r.body.length);
  await r.body.readInto(dest);
  return Buffer.from(dest);
}

const fresh = () => new DirectGets({ connectTimeoutMs: 1000, requestTimeoutMs: 300, maxIdle: 4 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('DirectGets', () => {
  it('reads a body sent in pieces, head and body split anywhere, and reuses the connection', async () => {
    const gets = fresh();
    const before = connections;
    for (const size of [0, 1, 5000, 4 * 1024 * 1024 + 33]) {
      const body = randomBytes(size);
      const whole = ok(body, 'ETag: "x"\r\n');
      handler = (_req, sock) => {
        // Split in the head, at the head's end, and in the body.
        const cuts = [7, whole.length - body.length - 2, whole.length - body.length + 1, whole.length - Math.floor(body.length / 3)].filter((c, i, a) => c > 0 && c < whole.length && a.indexOf(c) === i).sort((a, b) => a - b);
        let from = 0;
        void (async () => {
          for (const c of [...cuts, whole.length]) {
            sock.write(whole.subarray(from, c));
            from = c;
            await sleep(5);
          }
        })();
      };
      const r = await gets.get(request());
      expect(r!.statusCode).toBe(200);
      expect(r!.headers.etag).toBe('"x"');
      expect(r!.body).toBeInstanceOf(DirectBody);
      const dest = new Uint8Array(new SharedArrayBuffer(size + 64), 64, size);
      await r!.body.readInto(dest);
      expect(Buffer.from(dest).equals(body)).toBe(true);
    }
    expect(connections - before).toBe(1);
    expect(requests.at(-1)).toMatch(/^GET \/bucket\/key\?x-id=GetObject HTTP\/1\.1\r\n/);
    expect(requests.at(-1)).toContain('authorization: AWS4-HMAC-SHA256 signed');
    gets.close();
  });

  it('writes the query as the SDK signed it', async () => {
    const gets = fresh();
    handler = (_req, sock) => sock.write(ok(Buffer.from('x')));
    await getBody(gets, request('/b/a%20b', { 'x-id': 'GetObject', versionId: "v(1)*!'", empty: null, list: ['b', 'a'] }));
    expect(requests.at(-1)!.split('\r\n')[0]).toBe(`GET /b/a%20b?empty&list=b&list=a&versionId=v%281%29%2A%21%27&x-id=GetObject HTTP/1.1`);
    gets.close();
  });

  it('leaves errors, chunked and unsized answers, and oversized heads to the SDK (null), on a connection it drops', async () => {
    const gets = fresh();
    const answers = [
      'HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
      'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end',
      `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70 * 1024)}\r\nContent-Length: 1\r\n\r\nz`,
      'not http at all\r\n\r\n',
    ];
    for (const a of answers) {
      handler = (_req, sock) => sock.write(a);
      expect(await gets.get(request())).toBeNull();
      // The next request does not get that connection (what was left of the answer is unread).
      const before = connections;
      handler = (_req, sock) => sock.write(ok(Buffer.from('fine')));
      expect((await getBody(gets))?.toString()).toBe('fine');
      expect(connections - before).toBe(1);
    }
    gets.close();
  });

  it('does not reuse a connection the server closes or asks to close, and retries once on a stale one', async () => {
    const gets = fresh();
    let before = connections;
    handler = (_req, sock) => sock.write(ok(Buffer.from('one'), 'Connection: close\r\n'));
    expect((await getBody(gets))?.toString()).toBe('one');
    handler = (_req, sock) => sock.write(ok(Buffer.from('two')));
    expect((await getBody(gets))?.toString()).toBe('two');
    expect(connections - before).toBe(2);

    // Closed by the server while idle: noticed, and a new connection is made.
    handler = (_req, sock) => sock.end(ok(Buffer.from('three')));
    expect((await getBody(gets))?.toString()).toBe('three');
    before = connections;
    await sleep(50);
    handler = (_req, sock) => sock.write(ok(Buffer.from('four')));
    expect((await getBody(gets))?.toString()).toBe('four');
    expect(connections - before).toBe(1);

    // Dropped by the server as the next request arrives on it: tried once more, on a new one.
    handler = (_req, sock) => sock.write(ok(Buffer.from('five')));
    expect((await getBody(gets))?.toString()).toBe('five');
    before = connections;
    let dropped = 0;
    handler = (_req, sock) => {
      if (connections === before) {
        dropped++;
        sock.destroy();
      } else {
        sock.write(ok(Buffer.from('six')));
      }
    };
    expect((await getBody(gets))?.toString()).toBe('six');
    expect(dropped).toBe(1);
    expect(connections - before).toBe(1);
    gets.close();
  });

  it('fails a body cut short, and a response that never comes', async () => {
    const gets = fresh();
    handler = (_req, sock) => {
      sock.write(ok(Buffer.alloc(1000)).subarray(0, 500));
      setTimeout(() => sock.destroy(), 20);
    };
    await expect(getBody(gets)).rejects.toMatchObject({ code: 'ECONNRESET' });
    handler = () => undefined;
    await expect(getBody(gets)).rejects.toMatchObject({ name: 'TimeoutError' });
    gets.close();
  });

  it('keeps a slow body going as long as bytes keep coming', async () => {
    const gets = fresh();
    const body = randomBytes(64 * 1024);
    const whole = ok(body);
    handler = (_req, sock) => {
      void (async () => {
        // 8 pieces, 150 ms apart: 1 s in all, against a 300 ms silence timeout.
        for (let i = 0; i < 8; i++) {
          sock.write(whole.subarray((i * whole.length) / 8, ((i + 1) * whole.length) / 8));
          await sleep(150);
        }
      })();
    };
    expect((await getBody(gets))?.equals(body)).toBe(true);
    gets.close();
  });

  it('reports a refused connection with its code, and can be read as a stream or dropped unread', async () => {
    const gets = fresh();
    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const deadPort = (closed.address() as net.AddressInfo).port;
    await new Promise((r) => closed.close(r));
    await expect(gets.get({ ...request(), port: deadPort })).rejects.toMatchObject({ code: 'ECONNREFUSED' });

    handler = (_req, sock) => sock.write(ok(Buffer.from('streamed')));
    const r = await gets.get(request());
    const parts: Buffer[] = [];
    for await (const p of r!.body) parts.push(p as Buffer);
    expect(Buffer.concat(parts).toString()).toBe('streamed');

    const before = connections;
    handler = (_req, sock) => sock.write(ok(Buffer.from('dropped')));
    const d = await gets.get(request());
    d!.body.destroy();
    handler = (_req, sock) => sock.write(ok(Buffer.from('after')));
    expect((await getBody(gets))?.toString()).toBe('after');
    expect(connections - before).toBe(1);
    gets.close();
  });

  it('over TLS, trusting only what it should', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gbackup-directget-'));
    try {
      await execa('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'key.pem', '-out', 'cert.pem', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost'], { cwd: dir });
      const cert = readFileSync(join(dir, 'cert.pem'));
      const body = randomBytes(300_000);
      const secure = tls.createServer({ key: readFileSync(join(dir, 'key.pem')), cert }, (sock) => {
        sock.on('data', () => sock.write(ok(body)));
        sock.on('error', () => undefined);
      });
      await new Promise<void>((r) => secure.listen(0, '127.0.0.1', r));
      const at = { ...request(), protocol: 'https:', hostname: 'localhost', port: (secure.address() as net.AddressInfo).port };
      try {
        const trusting = new DirectGets({ connectTimeoutMs: 2000, requestTimeoutMs: 2000, maxIdle: 4, ca: cert });
        expect((await getBody(trusting, at))?.equals(body)).toBe(true);
        expect((await getBody(trusting, at))?.equals(body)).toBe(true);
        trusting.close();
        // Node's own trust store does not know this certificate.
        const plain = fresh();
        await expect(plain.get(at)).rejects.toThrow(/self.signed|certificate/i);
        plain.close();
      } finally {
        await new Promise((r) => secure.close(r));
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
