/**
 * Chunk downloads read from the socket straight into the chunk's buffer.
 *
 * Through Node's HTTP client a 4 MiB object arrives as ~64 pieces of 64 KiB: each a fresh
 * buffer from the socket, copied by the HTTP parser into another fresh buffer, passed
 * through the stream machinery, and copied a third time into the chunk buffer. On the
 * bench a 1 GiB restore spent more CPU on that (main thread, and V8's collector reclaiming
 * 2 GiB of short-lived buffers: a full mark-compact every ~64 MiB received) than on
 * decrypting and hashing. Here the kernel copies the body into the chunk buffer itself
 * (net.Socket's `onread`, with a buffer chosen per read), and nothing is allocated per piece.
 *
 * The SDK still does everything but move the bytes: the request is built, signed and
 * retried by it, this only sends what it signed (a middleware innermost in the
 * GetObject's stack) and hands back the status and headers, which the SDK deserializes
 * as usual. Only the plain case is taken here: a GET answered 2xx with a Content-Length.
 * Anything else (an error status, a chunked or unsized body, a head over 64 KiB) drops
 * the connection and returns null, and the caller sends the request the ordinary way, so
 * errors are parsed and classified by the SDK exactly as before. Kept-alive connections
 * are reused; one the server closed while idle costs a second try on a new one.
 */
import net from 'node:net';
import { Readable } from 'node:stream';
import tls from 'node:tls';

const HEAD_MAX = 64 * 1024;
/** Idle connections are closed after this (servers drop theirs after a while anyway). */
const IDLE_MS = 30_000;

/** What the SDK hands an HTTP handler: a signed request. */
export interface SignedRequest {
  protocol?: string;
  hostname?: string;
  port?: number;
  method?: string;
  path?: string;
  query?: Record<string, string | (string | null)[] | null>;
  headers?: Record<string, string>;
  body?: unknown;
  fragment?: string;
}

export interface DirectResponse {
  statusCode: number;
  reason: string;
  headers: Record<string, string>;
  body: DirectBody;
}

export interface DirectGetOptions {
  connectTimeoutMs: number;
  /** Longest silence on a connection with a request under way. */
  requestTimeoutMs: number;
  /** Idle connections kept per endpoint. */
  maxIdle: number;
  /** Certificates to trust instead of Node's (tests); the SDK's handler trusts Node's, and so does this by default. */
  ca?: string | Buffer;
}

const escapeUri = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** The query string as the SDK's own handler writes it (what was signed). */
function queryString(query: SignedRequest['query']): string {
  const parts: string[] = [];
  for (const key of Object.keys(query ?? {}).sort()) {
    const value = query![key];
    const k = escapeUri(key);
    if (Array.isArray(value)) {
      for (const v of value) parts.push(v === null ? k : `${k}=${escapeUri(v)}`);
    } else {
      parts.push(value === null || value === undefined ? k : `${k}=${escapeUri(value)}`);
    }
  }
  return parts.join('&');
}

function hangUp(): Error {
  return Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });
}

interface Head {
  version: string;
  statusCode: number;
  reason: string;
  headers: Record<string, string>;
}

function parseHead(text: string): Head | null {
  const lines = text.split('\r\n');
  const m = /^HTTP\/(1\.[01]) (\d{3})(?: (.*))?$/.exec(lines[0] ?? '');
  if (!m) return null;
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return null;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  return { version: m[1]!, statusCode: Number(m[2]), reason: m[3] ?? '', headers };
}

type Mode = 'idle' | 'head' | 'wait' | 'body' | 'dead';

/**
 * One connection, reading with `onread`: into its head buffer while a response head is
 * awaited (and while idle, where any byte is an error), into the destination while a
 * body is read; paused in between, so no byte of the body lands anywhere else.
 */
class Connection {
  readonly socket: net.Socket;
  private readonly head = Buffer.allocUnsafe(HEAD_MAX);
  private headLen = 0;
  private mode: Mode = 'idle';
  private dest: Uint8Array | null = null;
  private at = 0;
  private waiter: { resolve: (v: { head: Head; prefix: Buffer } | null) => void; reject: (e: Error) => void } | null = null;
  private bodyWaiter: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private prefix: Buffer = Buffer.alloc(0);
  /** A byte of the current response has arrived (so a failure is not a stale kept-alive connection). */
  answered = false;
  keepAlive = false;
  readonly ready: Promise<void>;

  constructor(
    req: SignedRequest,
    private readonly opts: DirectGetOptions,
    private readonly onGone: (c: Connection) => void,
  ) {
    const https = req.protocol === 'https:';
    const port = req.port ?? (https ? 443 : 80);
    const host = req.hostname!;
    const onread = { buffer: () => this.nextBuffer(), callback: (n: number, buf: Uint8Array) => this.onRead(n, buf) };
    // tls.connect takes `onread` too (Node's documentation says so; @types/node does not).
    const tlsOptions: tls.ConnectionOptions & { onread: typeof onread; noDelay: boolean } = {
      host,
      port,
      ...(net.isIP(host) ? {} : { servername: host }),
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      onread,
      noDelay: true,
    };
    this.socket = https ? tls.connect(tlsOptions) : net.connect({ host, port, onread, noDelay: true });
    this.socket.setKeepAlive(true);
    this.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        // As the SDK's handler words it, so the store reports the endpoint as unreachable.
        const e = Object.assign(new Error(`Socket timed out without establishing a connection within ${opts.connectTimeoutMs} ms`), { name: 'TimeoutError' });
        this.fail(e);
        reject(e);
      }, opts.connectTimeoutMs);
      this.socket.once(https ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        resolve();
      });
      this.socket.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    this.ready.catch(() => undefined);
    this.socket.on('error', (e) => this.fail(e));
    this.socket.on('end', () => this.fail(hangUp()));
    this.socket.on('close', () => this.fail(hangUp()));
    this.socket.on('timeout', () => {
      if (this.mode === 'idle') this.fail(hangUp());
      else this.fail(Object.assign(new Error(`no data from the store for ${this.opts.requestTimeoutMs} ms`), { name: 'TimeoutError', code: 'ETIMEDOUT' }));
    });
  }

  get usable(): boolean {
    return this.mode === 'idle' && !this.socket.destroyed;
  }

  private nextBuffer(): Uint8Array {
    if (this.mode === 'body') return this.dest!.subarray(this.at);
    if (this.mode === 'head') return this.head.subarray(this.headLen);
    return this.head;
  }

  /**
   * `buf` is where the kernel put the `n` bytes: the buffer nextBuffer() gave after the
   * previous read. When the mode changed since (a body to read once its head is in), that
   * is the head buffer, and the bytes are moved to where they belong.
   * false pauses the socket (a head is in, its body has nowhere to go yet).
   */
  private onRead(n: number, buf: Uint8Array): boolean {
    if (this.mode === 'body') {
      const dest = this.dest!;
      if (n > dest.length - this.at) {
        this.fail(new Error(`the store sent more than the ${dest.length} bytes its Content-Length announced`));
        return false;
      }
      if (buf.buffer !== dest.buffer || buf.byteOffset !== dest.byteOffset + this.at) {
        Buffer.from(dest.buffer, dest.byteOffset, dest.length).fill(buf.subarray(0, n), this.at, this.at + n);
      }
      this.at += n;
      if (this.at === dest.length) this.endBody();
      return true;
    }
    if (this.mode === 'head') {
      this.answered = true;
      if (buf.buffer !== this.head.buffer || buf.byteOffset !== this.head.byteOffset + this.headLen) {
        if (n > HEAD_MAX - this.headLen) {
          this.resolveHead(null);
          return false;
        }
        this.head.set(buf.subarray(0, n), this.headLen);
      }
      const from = Math.max(0, this.headLen - 3);
      this.headLen += n;
      const end = this.head.subarray(0, this.headLen).indexOf('\r\n\r\n', from);
      if (end < 0) {
        if (this.headLen === HEAD_MAX) this.resolveHead(null);
        return true;
      }
      const head = parseHead(this.head.toString('latin1', 0, end));
      if (!head) {
        this.resolveHead(null);
        return false;
      }
      this.prefix = Buffer.from(this.head.subarray(end + 4, this.headLen));
      this.mode = 'wait';
      const w = this.waiter!;
      this.waiter = null;
      w.resolve({ head, prefix: this.prefix });
      return false;
    }
    // Bytes nobody asked for: the connection cannot be trusted any more.
    this.fail(new Error('unexpected data from the store on an idle connection'));
    return false;
  }

  /** Not a response taken here: the connection goes, the request is sent the ordinary way. */
  private resolveHead(v: null): void {
    const w = this.waiter;
    this.waiter = null;
    this.destroy();
    w?.resolve(v);
  }

  private endBody(): void {
    this.mode = 'idle';
    this.dest = null;
    this.socket.setTimeout(IDLE_MS);
    this.socket.unref();
    const w = this.bodyWaiter;
    this.bodyWaiter = null;
    w?.resolve();
  }

  /** Sends a request; the response head and the first bytes of its body, or null for one not taken here. */
  request(text: string): Promise<{ head: Head; prefix: Buffer } | null> {
    if (!this.usable) return Promise.reject(hangUp());
    this.mode = 'head';
    this.headLen = 0;
    this.answered = false;
    this.socket.ref();
    this.socket.setTimeout(this.opts.requestTimeoutMs);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.socket.write(text, 'latin1');
    });
  }

  /** Reads the body (exactly dest.length bytes, the Content-Length) into `dest`. */
  readBody(dest: Uint8Array): Promise<void> {
    if (this.mode !== 'wait') return Promise.reject(this.mode === 'dead' ? hangUp() : new Error('no response body to read'));
    if (this.prefix.length > dest.length) {
      const e = new Error(`the store sent ${this.prefix.length} bytes for a body of ${dest.length}`);
      this.fail(e);
      return Promise.reject(e);
    }
    if (this.prefix.length > 0) Buffer.from(dest.buffer, dest.byteOffset, dest.length).fill(this.prefix, 0, this.prefix.length);
    this.at = this.prefix.length;
    this.dest = dest;
    return new Promise((resolve, reject) => {
      this.bodyWaiter = { resolve, reject };
      if (this.at === dest.length) this.endBody();
      else this.mode = 'body';
      this.socket.resume();
    });
  }

  fail(e: Error): void {
    if (this.mode === 'dead') return;
    this.mode = 'dead';
    this.socket.destroy();
    const w = this.waiter;
    const b = this.bodyWaiter;
    this.waiter = null;
    this.bodyWaiter = null;
    w?.reject(e);
    b?.reject(e);
    this.onGone(this);
  }

  destroy(): void {
    this.fail(hangUp());
  }
}

/**
 * A GetObject body read straight into a buffer with readInto(). Consumed as a stream
 * instead (nothing here does), it reads into one buffer of the body's size and pushes that.
 */
export class DirectBody extends Readable {
  private started = false;

  constructor(
    private readonly conn: Connection,
    readonly length: number,
    private readonly release: (conn: Connection, reusable: boolean) => void,
  ) {
    super();
  }

  /** The whole body, into `dest` (exactly `length` bytes). */
  async readInto(dest: Uint8Array): Promise<void> {
    if (this.started) throw new Error('the body was already read');
    if (dest.length !== this.length) throw new Error(`a body of ${this.length} bytes does not go into ${dest.length}`);
    this.started = true;
    try {
      await this.conn.readBody(dest);
    } catch (e) {
      this.release(this.conn, false);
      throw e;
    }
    this.release(this.conn, true);
  }

  override _read(): void {
    if (this.started) return;
    const buf = Buffer.allocUnsafe(this.length);
    this.readInto(buf).then(
      () => {
        this.push(buf);
        this.push(null);
      },
      (e: unknown) => this.destroy(e as Error),
    );
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    if (!this.started) {
      this.started = true;
      this.release(this.conn, false);
    }
    cb(err);
  }
}

/** Connections per endpoint, and the GETs sent over them. */
export class DirectGets {
  private readonly idle = new Map<string, Connection[]>();
  private closed = false;

  constructor(private readonly opts: DirectGetOptions) {}

  /**
   * Sends a signed GET. Null when the request or its response is not one taken here
   * (see the file's comment): the caller then sends it the ordinary way.
   */
  async get(req: SignedRequest): Promise<DirectResponse | null> {
    if (this.closed || req.method !== 'GET' || (req.protocol !== 'http:' && req.protocol !== 'https:') || !req.hostname || req.body != null || req.fragment) return null;
    const headers = { ...(req.headers ?? {}) };
    if (!Object.keys(headers).some((k) => k.toLowerCase() === 'host')) headers.host = req.port ? `${req.hostname}:${req.port}` : req.hostname;
    const q = queryString(req.query);
    const lines = [`GET ${req.path ?? '/'}${q ? `?${q}` : ''} HTTP/1.1`];
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
    const text = `${lines.join('\r\n')}\r\n\r\n`;
    // Anything that would break the framing is left to the SDK's handler.
    if (/[^\x20-\x7e\r\n\t]/.test(text) || lines.some((l) => /[\r\n]/.test(l))) return null;
    const key = `${req.protocol}//${req.hostname}:${req.port ?? ''}`;
    for (let attempt = 0; ; attempt++) {
      const kept = this.take(key);
      const conn = kept ?? new Connection(req, this.opts, (c) => this.forget(key, c));
      try {
        await conn.ready;
        const r = await conn.request(text);
        if (r === null) return null;
        const { head } = r;
        const length = head.headers['content-length'];
        const plain = head.statusCode >= 200 && head.statusCode < 300 && head.statusCode !== 204 && length !== undefined && /^\d+$/.test(length) && head.headers['transfer-encoding'] === undefined;
        if (!plain) {
          conn.destroy();
          return null;
        }
        const connection = (head.headers.connection ?? '').toLowerCase();
        conn.keepAlive = head.version === '1.1' && !connection.split(',').some((t) => t.trim() === 'close');
        return { statusCode: head.statusCode, reason: head.reason, headers: head.headers, body: new DirectBody(conn, Number(length), (c, reusable) => this.release(key, c, reusable)) };
      } catch (e) {
        conn.destroy();
        // A kept-alive connection the server closed before it saw the request: once more, on a new one.
        if (kept && !conn.answered && attempt === 0) continue;
        throw e;
      }
    }
  }

  private take(key: string): Connection | null {
    const list = this.idle.get(key);
    while (list && list.length > 0) {
      const c = list.pop()!;
      if (c.usable) return c;
    }
    return null;
  }

  private release(key: string, conn: Connection, reusable: boolean): void {
    if (!reusable || !conn.keepAlive || !conn.usable || this.closed) {
      conn.destroy();
      return;
    }
    let list = this.idle.get(key);
    if (!list) this.idle.set(key, (list = []));
    if (list.length >= this.opts.maxIdle) conn.destroy();
    else list.push(conn);
  }

  private forget(key: string, conn: Connection): void {
    const list = this.idle.get(key);
    const i = list?.indexOf(conn) ?? -1;
    if (i >= 0) list!.splice(i, 1);
  }

  /** Closes the idle connections; those in use close when their body is read. */
  close(): void {
    this.closed = true;
    for (const list of this.idle.values()) for (const c of [...list]) c.destroy();
    this.idle.clear();
  }
}
