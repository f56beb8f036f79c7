/**
 * The machinery shared by every socket type: connecting with reconnect, binding,
 * the set of live connections ("pipes"), waits with deadlines, the inbound queue with
 * back-pressure, and a close that releases every timer and TCP socket.
 *
 * @example
 * ```ts
 * import { PullSocket, type WireSocket } from "@kvport/nixl/wire";
 *
 * const sock: WireSocket = await PullSocket.bind("tcp://127.0.0.1:0");
 * console.log(sock.type, sock.port > 0);
 * await sock.close();
 * ```
 *
 * @module
 */

import { after, afterShared, sharedDeadlinesIdle, type Timer } from "../../deadline.ts";
import { type Endpoint, formatEndpoint, parseEndpoint } from "./endpoint.ts";
import { WireClosedError, WireError, WireProtocolError, WireTimeoutError } from "./errors.ts";
import { type WireMetrics, wireMetrics } from "./metrics.ts";
import { type MetricsRegistry, metricsRegistry } from "../../metrics/registry.ts";
import { ZmtpConnection } from "./connection.ts";
import { tcpConnect, tcpListen, type TcpListener, type TcpStream } from "./tcp.ts";
import { DEFAULT_MAX_FRAMES, DEFAULT_MAX_MESSAGE_BYTES, type SocketType } from "./zmtp.ts";
import { assertListenAllowed } from "./net_permission.ts";
import { type CurveOptions, resolveCurve } from "./curve.ts";

/** Settings common to every socket. All are optional. */
export interface WireSocketOptions {
  /**
   * Default deadline of `request`, `send` and `receive`, in milliseconds; each call may
   * override it. Default 30000. `Infinity` waits forever (not recommended).
   */
  timeoutMs?: number;
  /** Deadline of one TCP connect attempt; default 5000 ms. */
  connectTimeoutMs?: number;
  /** Deadline of the ZMTP handshake of a new connection; default 5000 ms. */
  handshakeTimeoutMs?: number;
  /** First delay before reconnecting a lost connection; default 100 ms. */
  reconnectIntervalMs?: number;
  /** Largest reconnect delay (the delay doubles after each failure); default 2000 ms. */
  reconnectMaxIntervalMs?: number;
  /**
   * Largest message (sum of its frames) accepted from a peer; default 64 MiB. A peer
   * announcing a larger frame is disconnected before anything is allocated for it.
   */
  maxMessageBytes?: number;
  /** Most frames in one message accepted from a peer; default 1024. */
  maxFrames?: number;
  /**
   * Our identity (ZMTP `Identity`, 1..255 bytes, not starting with a zero byte), sent by
   * REQ, DEALER and ROUTER sockets. A ROUTER peer routes replies to it. Default: none
   * (the ROUTER generates one).
   */
  identity?: Uint8Array | string;
  /**
   * ROUTER only: whether a peer connecting with the identity of a connected peer takes
   * over its route (libzmq's `ZMQ_ROUTER_HANDOVER`). Default `false`, as libzmq: the
   * newcomer is refused (disconnected, reported to `onError`) and the first peer keeps
   * its replies, so nobody can steal another peer's replies by claiming its identity.
   */
  routerHandover?: boolean;
  /**
   * Inbound messages queued before reading from peers pauses (TCP back-pressure);
   * default 1000.
   */
  highWaterMark?: number;
  /**
   * Told about peers that misbehaved (protocol errors, handshake timeouts) and about
   * handler failures of `RepSocket.serve`. The library never logs by itself.
   */
  onError?: (error: WireError) => void;
  /** Registry connections and refused peers are counted in (default: `metricsRegistry()`). */
  metrics?: MetricsRegistry;
  /**
   * CURVE security (ZMTP RFC 26) instead of NULL: `{ server: true, secretKey,
   * allowedClients }` or `{ secretKey, serverKey }`. Every connection of the socket is then
   * authenticated and encrypted, and a peer speaking NULL, or a client whose key is not
   * allowed, is refused. Default: NULL (no security, as LMCache).
   */
  curve?: CurveOptions;
}

/** Per-call deadline. */
export interface TimeoutOptions {
  /** Deadline in milliseconds; default the socket's `timeoutMs`. */
  timeoutMs?: number;
}

/** What is known about one connected peer. */
export interface PeerInfo {
  /** The peer's address: the endpoint connected to, or `tcp://ip:port` of an accepted peer. */
  readonly address: string;
  /** The routing identity: the peer's own `Identity`, or one generated for it. */
  readonly identity: Uint8Array;
  /** The peer's socket type, from its READY command. */
  readonly socketType: string;
}

/** One live, handshaken connection of a socket. */
export interface Pipe {
  /** The connection. */
  readonly conn: ZmtpConnection;
  /** The peer as seen by users. */
  readonly info: PeerInfo;
  /** `info.identity` as a hex string, the key of routing tables. */
  readonly key: string;
}

interface Waiter {
  resolve: () => void;
  reject: (error: WireError) => void;
  timer: Timer | undefined;
}

const ENCODER = new TextEncoder();

let generatedId = (Math.random() * 0x1_0000_0000) >>> 0;

/** A routing identity the libzmq way: a zero byte and a 32-bit counter. */
function generateIdentity(): Uint8Array {
  const id = new Uint8Array(5);
  generatedId = (generatedId + 1) >>> 0;
  new DataView(id.buffer).setUint32(1, generatedId);
  return id;
}

/**
 * Hex form of an identity or frame, as used in routing tables and messages.
 *
 * @param bytes the bytes
 * @returns lower-case hex
 *
 * @example
 * ```ts
 * import { toHex } from "@kvport/nixl/wire";
 *
 * console.log(toHex(new Uint8Array([0, 255]))); // 00ff
 * ```
 */
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

/**
 * Normalizes a message argument: one buffer becomes a one-frame message.
 *
 * @param message a single frame or the list of frames
 * @returns the frames
 *
 * @example
 * ```ts
 * import { toFrames } from "@kvport/nixl/wire";
 *
 * console.log(toFrames(new Uint8Array([1])).length); // 1
 * ```
 */
export function toFrames(message: Uint8Array | readonly Uint8Array[]): Uint8Array[] {
  if (message instanceof Uint8Array) return [message];
  if (!Array.isArray(message) || message.length === 0) {
    throw new TypeError("a message is a Uint8Array or a non-empty array of Uint8Array frames");
  }
  for (const f of message) {
    if (!(f instanceof Uint8Array)) {
      throw new TypeError(`every frame must be a Uint8Array, got ${typeof f}`);
    }
  }
  return [...message];
}

/**
 * Races `promise` against a deadline, clearing its timer either way.
 *
 * @param promise what to wait for
 * @param timeoutMs the deadline (`Infinity`: no deadline)
 * @param makeError the error to reject with on timeout
 * @returns the promise's value
 *
 * @example
 * ```ts
 * import { WireTimeoutError, withDeadline } from "@kvport/nixl/wire";
 *
 * await withDeadline(Promise.resolve(1), 10, () => new WireTimeoutError("x", 10));
 * ```
 */
export function withDeadline<T>(
  promise: Promise<T>,
  timeoutMs: number,
  makeError: () => WireError,
): Promise<T> {
  if (!Number.isFinite(timeoutMs)) return promise;
  return new Promise<T>((resolve, reject) => {
    // One shared timer for all such deadlines (afterShared): under Deno a timer armed and
    // cleared per request cost ~10 us of an in-process REQ/REP round trip of ~70.
    const timer = afterShared(timeoutMs, () => reject(makeError()));
    promise.then(
      (v) => {
        timer.clear();
        resolve(v);
      },
      (e) => {
        timer.clear();
        reject(e);
      },
    );
  });
}

/**
 * A queue of inbound items with waiting receivers, deadlines and a close that fails every
 * waiter. Used by the receiving sockets.
 *
 * @example
 * ```ts
 * import { Inbox } from "@kvport/nixl/wire";
 *
 * const inbox = new Inbox<string>();
 * inbox.push("a");
 * console.log(await inbox.receive(100, () => new Error("timeout"))); // a
 * ```
 */
export class Inbox<T> {
  #items: T[] = [];
  #head = 0;
  #waiters: Array<{ resolve: (v: T) => void; waiter: Waiter }> = [];
  #closed: Error | undefined;
  readonly #onShift: (() => void) | undefined;

  /**
   * Creates an empty inbox.
   *
   * @param onShift called after an item was taken (for back-pressure)
   */
  constructor(onShift?: () => void) {
    this.#onShift = onShift;
  }

  /** Number of queued items. */
  get size(): number {
    return this.#items.length - this.#head;
  }

  /** Whether {@linkcode close} was called. */
  get isClosed(): boolean {
    return this.#closed !== undefined;
  }

  /** Queues an item, or hands it to the oldest waiting receiver. Ignored after close. */
  push(item: T): void {
    if (this.#closed) return;
    const w = this.#waiters.shift();
    if (w) {
      if (w.waiter.timer !== undefined) w.waiter.timer.clear();
      w.resolve(item);
      return;
    }
    this.#items.push(item);
  }

  /**
   * Takes the oldest item now, or `undefined` when there is none (no promise, no wait).
   *
   * @returns the item, or `undefined`
   */
  takeNow(): T | undefined {
    if (this.size === 0) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined as T;
    this.#head++;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    this.#onShift?.();
    return item;
  }

  /**
   * Takes the oldest item, waiting up to `timeoutMs` for one.
   *
   * @param timeoutMs deadline (`Infinity`: none)
   * @param makeTimeoutError the error on timeout
   */
  receive(timeoutMs: number, makeTimeoutError: () => Error): Promise<T> {
    if (this.size > 0) return Promise.resolve(this.takeNow() as T);
    if (this.#closed) return Promise.reject(this.#closed);
    return new Promise<T>((resolve, reject) => {
      const entry = {
        resolve,
        waiter: { resolve: () => {}, reject, timer: undefined } as Waiter,
      };
      if (Number.isFinite(timeoutMs)) {
        entry.waiter.timer = after(timeoutMs, () => {
          const i = this.#waiters.indexOf(entry);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(makeTimeoutError());
        });
      }
      this.#waiters.push(entry);
    });
  }

  /** Fails every waiter and every later receive with `error`; queued items are dropped. */
  close(error: Error): void {
    if (this.#closed) return;
    this.#closed = error;
    this.#items = [];
    this.#head = 0;
    for (const w of this.#waiters.splice(0)) {
      if (w.waiter.timer !== undefined) w.waiter.timer.clear();
      w.waiter.reject(error as WireError);
    }
  }

  /** Iterates items until the inbox closes (no deadline). */
  iterate(): AsyncIterableIterator<T> {
    const next = (): Promise<IteratorResult<T>> =>
      this.receive(Infinity, () => new Error("unreachable")).then(
        (value) => ({ value, done: false }),
        (error) => {
          if (this.#closed && error === this.#closed) return { value: undefined, done: true };
          throw error;
        },
      );
    const it: AsyncIterableIterator<T> = {
      next,
      return: (): Promise<IteratorResult<T>> => Promise.resolve({ value: undefined, done: true }),
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }
}

interface Resolved {
  timeoutMs: number;
  connectTimeoutMs: number;
  handshakeTimeoutMs: number;
  reconnectIntervalMs: number;
  reconnectMaxIntervalMs: number;
  maxMessageBytes: number;
  maxFrames: number;
  identity: Uint8Array;
  routerHandover: boolean;
  highWaterMark: number;
  onError: ((error: WireError) => void) | undefined;
  curve: CurveOptions | undefined;
}

function positive(name: string, v: number | undefined, dflt: number, allowInf = false): number {
  if (v === undefined) return dflt;
  if (typeof v !== "number" || Number.isNaN(v) || v < 0 || (!allowInf && !Number.isFinite(v))) {
    throw new WireError(`option ${name} must be a non-negative number, got ${String(v)}`);
  }
  return v;
}

function resolveOptions(o: WireSocketOptions): Resolved {
  let identity: Uint8Array = new Uint8Array(0);
  if (o.identity !== undefined) {
    identity = typeof o.identity === "string" ? ENCODER.encode(o.identity) : o.identity;
    if (identity.length === 0 || identity.length > 255 || identity[0] === 0) {
      throw new WireError(
        `option identity must be 1..255 bytes not starting with a zero byte, got ` +
          `${identity.length} byte(s)${identity[0] === 0 ? " starting with 0x00" : ""}`,
      );
    }
  }
  return {
    timeoutMs: positive("timeoutMs", o.timeoutMs, 30_000, true),
    connectTimeoutMs: positive("connectTimeoutMs", o.connectTimeoutMs, 5000),
    handshakeTimeoutMs: positive("handshakeTimeoutMs", o.handshakeTimeoutMs, 5000),
    reconnectIntervalMs: positive("reconnectIntervalMs", o.reconnectIntervalMs, 100),
    reconnectMaxIntervalMs: positive("reconnectMaxIntervalMs", o.reconnectMaxIntervalMs, 2000),
    maxMessageBytes: positive("maxMessageBytes", o.maxMessageBytes, DEFAULT_MAX_MESSAGE_BYTES),
    maxFrames: Math.max(1, positive("maxFrames", o.maxFrames, DEFAULT_MAX_FRAMES)),
    identity,
    routerHandover: o.routerHandover === true,
    highWaterMark: Math.max(1, positive("highWaterMark", o.highWaterMark, 1000)),
    onError: o.onError,
    curve: o.curve === undefined ? undefined : (resolveCurve(o.curve), o.curve),
  };
}

type Adopt = (tcp: TcpStream, address: string, connector: Connector) => ZmtpConnection;

/** Keeps one outgoing connection alive: connect, handshake, reconnect with back-off. */
class Connector {
  readonly endpoint: Endpoint;
  readonly address: string;
  lastError: string | undefined;
  readonly #adopt: Adopt;
  readonly #opts: Resolved;
  #tcp: TcpStream | undefined;
  #conn: ZmtpConnection | undefined;
  #timer: Timer | undefined;
  #delay: number;
  #immediate = false;
  #stopped = false;
  #idle: Promise<void> = Promise.resolve();
  #markIdle: () => void = () => {};

  constructor(adopt: Adopt, endpoint: Endpoint, opts: Resolved) {
    this.#adopt = adopt;
    this.endpoint = endpoint;
    this.address = formatEndpoint(endpoint);
    this.#opts = opts;
    this.#delay = opts.reconnectIntervalMs;
  }

  start(): void {
    this.#attempt();
  }

  #attempt(): void {
    this.#timer = undefined;
    if (this.#stopped) return;
    this.#idle = new Promise((resolve) => (this.#markIdle = resolve));
    const tcp = tcpConnect(this.endpoint.host, this.endpoint.port);
    this.#tcp = tcp;
    let connectTimer: Timer | undefined = after(this.#opts.connectTimeoutMs, () => {
      connectTimer = undefined;
      this.lastError = `TCP connect did not complete within ${this.#opts.connectTimeoutMs} ms`;
      tcp.destroy();
    });
    tcp.on("error", (err: Error) => {
      this.lastError = err.message;
    });
    tcp.once("connect", () => {
      if (connectTimer !== undefined) connectTimer.clear();
      connectTimer = undefined;
      if (this.#stopped) {
        tcp.destroy();
        return;
      }
      this.#conn = this.#adopt(tcp, this.address, this);
    });
    tcp.once("close", () => {
      if (connectTimer !== undefined) connectTimer.clear();
      connectTimer = undefined;
      if (this.#conn === undefined) {
        // Never got to a ZMTP connection: the connect itself failed.
        this.#tcp = undefined;
        this.#markIdle();
        this.#schedule(false);
      }
    });
  }

  /** Called by the owner when the ZMTP connection of this connector closed. */
  connectionClosed(wasReady: boolean, error: WireError | undefined): void {
    if (error) this.lastError = error.message;
    else if (wasReady) this.lastError = "the peer closed the connection";
    this.#conn = undefined;
    this.#tcp = undefined;
    this.#markIdle();
    this.#schedule(wasReady);
  }

  #schedule(wasReady: boolean): void {
    if (this.#stopped) return;
    if (wasReady) this.#delay = this.#opts.reconnectIntervalMs;
    let delay = this.#delay;
    if (this.#immediate) {
      this.#immediate = false;
      delay = 0;
    } else {
      this.#delay = Math.min(this.#delay * 2, this.#opts.reconnectMaxIntervalMs);
    }
    this.#timer = after(delay, () => this.#attempt());
  }

  /** Drops the current connection (if any) and reconnects at once with fresh state. */
  restart(): void {
    if (this.#stopped) return;
    this.#immediate = true;
    if (this.#conn) {
      this.#conn.destroy();
    } else if (this.#tcp) {
      this.#tcp.destroy();
    } else if (this.#timer !== undefined) {
      this.#timer.clear();
      this.#immediate = false;
      this.#attempt();
    }
  }

  close(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#timer.clear();
    this.#timer = undefined;
    if (this.#conn) this.#conn.destroy();
    else if (this.#tcp) this.#tcp.destroy();
    return this.#idle;
  }
}

/**
 * Base class of every socket: endpoints, live peers, deadlines and close. Subclasses
 * ({@linkcode ReqSocket}, {@linkcode RepSocket}, {@linkcode PushSocket},
 * {@linkcode PullSocket}, {@linkcode DealerSocket}, {@linkcode RouterSocket}) add the
 * messaging pattern. A socket may both bind and connect, to any number of endpoints.
 *
 * @example
 * ```ts
 * import { PushSocket } from "@kvport/nixl/wire";
 *
 * await using push = new PushSocket({ timeoutMs: 1000 }).connect("tcp://127.0.0.1:7500");
 * console.log(push.type, push.peers.length);
 * ```
 */
export abstract class WireSocket {
  /** Our socket type. */
  readonly type: SocketType;
  readonly #opts: Resolved;
  #connectorOf = new Map<ZmtpConnection, Connector>();
  #pipes: Pipe[] = [];
  #rr = 0;
  #byConn = new Map<ZmtpConnection, Pipe>();
  #byKey = new Map<string, Pipe>();
  #conns = new Set<ZmtpConnection>();
  #servers: TcpListener[] = [];
  #endpoints: string[] = [];
  #connectors: Connector[] = [];
  #waiters = new Set<Waiter>();
  #closing: Promise<void> | undefined;
  #paused = false;
  #metrics: WireMetrics | undefined;
  /** The inbound queue (receiving sockets). */
  protected readonly _inbox: Inbox<unknown>;

  /**
   * Creates the socket (for subclasses).
   *
   * @param type our socket type
   * @param options see {@linkcode WireSocketOptions}
   */
  protected constructor(type: SocketType, options: WireSocketOptions = {}) {
    this.type = type;
    this.#opts = resolveOptions(options);
    this._inbox = new Inbox<unknown>(() => this.#maybeResume());
    this.#metrics = wireMetrics(options.metrics ?? metricsRegistry(), type);
  }

  /**
   * Endpoints this socket is bound to, as really bound: the address the listener has (a
   * host name resolved) and the real port (`tcp://host:port`).
   */
  get endpoints(): readonly string[] {
    return this.#endpoints;
  }

  /** Port of the first bound endpoint (the real one when bound to port 0). */
  get port(): number {
    const server = this.#servers[0];
    if (!server) throw new WireError(`${this.type} socket is not bound: call bind() first`);
    return server.port;
  }

  /** The peers whose handshake completed, in connection order. */
  get peers(): PeerInfo[] {
    return this.#pipes.map((p) => p.info);
  }

  /** Whether {@linkcode close} was called. */
  get isClosed(): boolean {
    return this.#closing !== undefined;
  }

  /**
   * Connects to an endpoint, in the background: the TCP connection and handshake happen
   * asynchronously and are retried (with back-off) after a failure or a disconnect, until
   * the socket closes. Operations wait for a peer up to their deadline.
   *
   * @param url `tcp://host:port` or `host:port`
   * @returns this socket
   */
  connect(url: string): this {
    this.#assertOpen("connect");
    const c = new Connector(
      (tcp, address, connector) => this.#adopt(tcp, address, connector),
      parseEndpoint(url, "connect"),
      this.#opts,
    );
    this.#connectors.push(c);
    c.start();
    return this;
  }

  /**
   * Binds to an endpoint and accepts peers. Port 0 picks a free port: read it from
   * {@linkcode port} or the returned endpoint.
   *
   * @param url `tcp://host:port`, `tcp://*:port` or `host:port`
   * @returns the bound endpoint with its real port
   * @throws {WireError} when the address cannot be bound (e.g. in use)
   */
  async bind(url: string): Promise<string> {
    this.#assertOpen("bind");
    const ep = parseEndpoint(url, "bind");
    assertListenAllowed(ep.host, ep.port);
    let server: TcpListener;
    try {
      server = await tcpListen(ep.host, ep.port, (tcp) => {
        if (this.#closing) {
          tcp.destroy();
          return;
        }
        this.#adopt(tcp, `tcp://${tcp.remoteAddress}:${tcp.remotePort}`, undefined);
      }, (err) => {
        this.#report(new WireError(`listener on ${url} failed: ${err.message}`, { cause: err }));
      });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      throw new WireError(`cannot bind ${url}: ${message}`, { cause: err });
    }
    if (this.#closing) {
      await server.close();
      throw new WireClosedError(`${this.type} socket was closed while binding ${url}`);
    }
    // The address really bound (a name such as "localhost" resolved), as peers reach it.
    const endpoint = formatEndpoint({ host: server.address, port: server.port });
    this.#servers.push(server);
    this.#endpoints.push(endpoint);
    return endpoint;
  }

  /**
   * Waits until at least one peer has completed its handshake.
   *
   * @param options deadline (default the socket's `timeoutMs`)
   * @returns the first live peer
   * @throws {WireTimeoutError} naming the endpoints and the last connect error
   */
  async waitForPeer(options: TimeoutOptions = {}): Promise<PeerInfo> {
    const pipe = await this._nextPipe(options.timeoutMs ?? this.#opts.timeoutMs);
    return pipe.info;
  }

  /**
   * Closes every connection, listener and timer, and fails pending operations with
   * {@linkcode WireClosedError}. Idempotent: every call returns the same promise, which
   * resolves once all TCP sockets and listeners are closed.
   */
  close(): Promise<void> {
    this.#closing ??= this.#doClose();
    return this.#closing;
  }

  /** Same as {@linkcode close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #doClose(): Promise<void> {
    const error = new WireClosedError(`${this.type} socket closed`);
    for (const w of [...this.#waiters]) {
      this.#waiters.delete(w);
      if (w.timer !== undefined) w.timer.clear();
      w.reject(error);
    }
    this._inbox.close(error);
    this._onClose(error);
    const waits: Promise<void>[] = [];
    for (const c of this.#connectors) waits.push(c.close());
    for (const conn of this.#conns) waits.push(conn.destroy());
    for (const server of this.#servers) waits.push(server.close());
    await Promise.all(waits);
    sharedDeadlinesIdle();
  }

  #assertOpen(op: string): void {
    if (this.#closing) throw new WireClosedError(`cannot ${op}: ${this.type} socket is closed`);
  }

  #report(error: WireError): void {
    if (this.#closing || !this.#opts.onError) return;
    try {
      this.#opts.onError(error);
    } catch {
      // A failing error handler must not break the socket.
    }
  }

  /**
   * Reports an error to the `onError` option (internal; for subclasses).
   *
   * @param error what happened
   */
  protected _report(error: WireError): void {
    this.#report(error);
  }

  /** Wraps an accepted or connected TCP socket in a ZMTP connection owned by this socket. */
  #adopt(tcp: TcpStream, address: string, connector: Connector | undefined): ZmtpConnection {
    const conn = new ZmtpConnection(tcp, address, {
      socketType: this.type,
      identity: this.#opts.identity,
      maxMessageBytes: this.#opts.maxMessageBytes,
      maxFrames: this.#opts.maxFrames,
      handshakeTimeoutMs: this.#opts.handshakeTimeoutMs,
      curve: this.#opts.curve,
    }, {
      onReady: (c) => this.#attach(c),
      onMessage: (c, frames) => {
        const pipe = this.#byConn.get(c);
        if (pipe) this._onMessage(pipe, frames);
      },
      onClose: (c, error) => {
        this.#conns.delete(c);
        this.#connectorOf.delete(c);
        const pipe = this.#byConn.get(c);
        if (pipe) this.#detach(pipe, error);
        if (error instanceof WireProtocolError || error instanceof WireTimeoutError) {
          this.#metrics?.refused(error instanceof WireProtocolError ? "protocol" : "timeout");
          this.#report(error);
        }
        connector?.connectionClosed(pipe !== undefined, error);
      },
    });
    if (this.#closing) {
      conn.destroy();
    } else {
      this.#conns.add(conn);
      if (connector) this.#connectorOf.set(conn, connector);
    }
    return conn;
  }

  #attach(conn: ZmtpConnection): void {
    if (this.#closing) {
      conn.destroy();
      return;
    }
    const peerId = conn.peerIdentity;
    const identity = this.type === "ROUTER" && peerId.length > 0 ? peerId : generateIdentity();
    const key = toHex(identity);
    const old = this.#byKey.get(key);
    if (old && !this.#opts.routerHandover) {
      // libzmq's default: the identity belongs to the peer holding it; a newcomer
      // claiming it is refused, or it could take that peer's replies.
      this.#metrics?.refused("protocol");
      this.#report(
        new WireProtocolError(
          `identity 0x${key} is held by a connected peer (${old.info.address}): refused ` +
            "(routerHandover is off, as libzmq's default)",
          { peer: conn.address },
        ),
      );
      conn.destroy();
      return;
    }
    if (old) {
      // Handover on: a peer that reconnects with its identity replaces its old
      // connection (e.g. after a restart whose old TCP connection is not yet seen dead).
      this.#detach(old, undefined);
      old.conn.destroy();
    }
    const pipe: Pipe = {
      conn,
      key,
      info: { address: conn.address, identity, socketType: conn.peerSocketType ?? "" },
    };
    this.#pipes.push(pipe);
    this.#metrics?.connected();
    this.#byConn.set(conn, pipe);
    this.#byKey.set(key, pipe);
    if (this.#paused) conn.pause();
    this._onAttach(pipe);
    for (const w of [...this.#waiters]) {
      this.#waiters.delete(w);
      if (w.timer !== undefined) w.timer.clear();
      w.resolve();
    }
  }

  #detach(pipe: Pipe, error: WireError | undefined): void {
    if (this.#byConn.get(pipe.conn) !== pipe) return;
    this.#byConn.delete(pipe.conn);
    if (this.#byKey.get(pipe.key) === pipe) this.#byKey.delete(pipe.key);
    const i = this.#pipes.indexOf(pipe);
    if (i >= 0) this.#pipes.splice(i, 1);
    this.#metrics?.disconnected();
    this._onDetach(pipe, error);
  }

  /** Default deadline of operations, from the `timeoutMs` option (internal). */
  protected get _timeoutMs(): number {
    return this.#opts.timeoutMs;
  }

  /** Endpoints for messages: connected and bound ones. */
  protected _describeEndpoints(): string {
    const all = [...this.#connectors.map((c) => c.address), ...this.#endpoints];
    return all.length > 0 ? all.join(", ") : "(none: call connect() or bind() first)";
  }

  #lastConnectError(): string | undefined {
    for (const c of this.#connectors) if (c.lastError) return c.lastError;
    return undefined;
  }

  /**
   * The next live peer in round-robin order if there is one now, else `undefined`
   * (internal: {@linkcode _nextPipe} without a promise turn).
   *
   * @returns the pipe, or `undefined` (none, or the socket is closing)
   */
  protected _pipeNow(): Pipe | undefined {
    if (this.#closing || this.#pipes.length === 0) return undefined;
    return this.#pipes[this.#rr++ % this.#pipes.length];
  }

  /**
   * The next live peer in round-robin order, waiting up to `timeoutMs` for one (internal).
   *
   * @param timeoutMs deadline
   * @returns the pipe
   */
  protected _nextPipe(timeoutMs: number): Promise<Pipe> {
    if (this.#closing) {
      return Promise.reject(new WireClosedError(`${this.type} socket is closed`));
    }
    const pick = (): Pipe => this.#pipes[this.#rr++ % this.#pipes.length];
    if (this.#pipes.length > 0) return Promise.resolve(pick());
    return new Promise<Pipe>((resolve, reject) => {
      const w: Waiter = {
        resolve: () => {
          if (this.#pipes.length > 0) resolve(pick());
          else this._nextPipe(Infinity).then(resolve, reject);
        },
        reject,
        timer: undefined,
      };
      if (Number.isFinite(timeoutMs)) {
        w.timer = after(timeoutMs, () => {
          this.#waiters.delete(w);
          const last = this.#lastConnectError();
          reject(
            new WireTimeoutError("connect", timeoutMs, {
              peer: this._describeEndpoints(),
              hint: `the ${this.type} socket has no peer; ` +
                (last ? `last connect error: ${last}` : "none completed the ZMTP handshake"),
            }),
          );
        });
      }
      this.#waiters.add(w);
    });
  }

  /**
   * Sends to the next live peer in round-robin order, waiting for one and for the write
   * up to `timeoutMs` in all (internal).
   *
   * @param frames the message
   * @param timeoutMs deadline
   */
  protected async _sendNext(frames: Uint8Array[], timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    const pipe = await this._nextPipe(timeoutMs);
    await withDeadline(
      pipe.conn.send(frames),
      deadline - performance.now(),
      () =>
        new WireTimeoutError("send", timeoutMs, {
          peer: pipe.info.address,
          hint: "the peer is not reading; the message stays queued on the connection",
        }),
    );
  }

  /**
   * The live peer with this routing key, if any (internal).
   *
   * @param key hex identity
   */
  protected _pipeByKey(key: string): Pipe | undefined {
    return this.#byKey.get(key);
  }

  /**
   * Drops a connection so that the next operation starts fresh: a connected peer is
   * reconnected at once, an accepted one is closed (internal).
   *
   * @param pipe the pipe to drop
   */
  protected _resetPipe(pipe: Pipe): void {
    const connector = this.#connectorOf.get(pipe.conn);
    if (connector && this.#byConn.get(pipe.conn) === pipe) {
      this.#detach(pipe, undefined);
      connector.restart();
    } else {
      this.#detach(pipe, undefined);
      pipe.conn.destroy();
    }
  }

  /**
   * Queues an inbound item, pausing peers when the queue reaches the high-water mark
   * (internal).
   *
   * @param item the item
   */
  protected _enqueue(item: unknown): void {
    this._inbox.push(item);
    if (!this.#paused && this._inbox.size >= this.#opts.highWaterMark) {
      this.#paused = true;
      for (const c of this.#conns) c.pause();
    }
  }

  #maybeResume(): void {
    if (this.#paused && this._inbox.size <= this.#opts.highWaterMark / 2) {
      this.#paused = false;
      for (const c of this.#conns) c.resume();
    }
  }

  /**
   * Takes the next inbound item (internal).
   *
   * @param timeoutMs deadline
   * @param what what is awaited, for the timeout message
   */
  protected _receive<T>(timeoutMs: number, what: string): Promise<T> {
    return this._inbox.receive(
      timeoutMs,
      () =>
        new WireTimeoutError(what, timeoutMs, {
          peer: this._describeEndpoints(),
          hint: `${this.#pipes.length} peer(s) connected`,
        }),
    ) as Promise<T>;
  }

  /**
   * A peer completed its handshake (hook).
   *
   * @param _pipe the new pipe
   */
  protected _onAttach(_pipe: Pipe): void {}

  /**
   * A peer went away (hook).
   *
   * @param _pipe the pipe
   * @param _error why, when not a clean close
   */
  protected _onDetach(_pipe: Pipe, _error: WireError | undefined): void {}

  /**
   * A message arrived from a peer (hook).
   *
   * @param pipe where from
   * @param frames the frames
   */
  protected abstract _onMessage(pipe: Pipe, frames: Uint8Array[]): void;

  /**
   * The socket is closing (hook): fail what is pending.
   *
   * @param _error the error to fail with
   */
  protected _onClose(_error: WireClosedError): void {}
}
