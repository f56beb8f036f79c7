/**
 * The TCP streams under the wire: the runtime's own sockets (`Deno.connect` /
 * `Deno.listen` under Deno, `Bun.connect` / `Bun.listen` under Bun) by default, or
 * `node:net` (Node, or on request). Both runtimes build `node:net` as a compatibility
 * layer (a stream, an emitter, deferred callbacks) over the same socket: a bare echo of
 * 200 bytes between two processes on the 2-core development machine took 76-88 us per
 * round trip through Deno's `node:net` against 42-59 us through `Deno.connect`, and 50-53
 * against 24-25 us through Bun's (BENCHMARKS.md, issue 15). All give a
 * {@linkcode TcpStream}, the subset of `net.Socket` that {@linkcode ZmtpConnection}
 * uses, so the ZMTP layer above does not know which one it runs on.
 *
 * `KVPORT_WIRE_TCP=node` picks `node:net` in either runtime (the tests run the wire
 * suites both ways; a comparison needs both in one build); `deno` or `bun` in the other
 * runtime fails.
 *
 * @example
 * ```ts
 * import { tcpConnect, tcpListen, wireTcpKind } from "./tcp.ts";
 *
 * const server = await tcpListen("127.0.0.1", 0, (s) => s.on("data", (d) => s.write(d)));
 * const c = tcpConnect("127.0.0.1", server.port);
 * c.once("connect", () => c.write(new Uint8Array([1, 2, 3])));
 * c.on("data", (d) => {
 *   console.log(wireTcpKind(), d); // "deno" (or "bun") Uint8Array(3) [1, 2, 3]
 *   c.destroy();
 *   server.close();
 * });
 * ```
 *
 * @module
 */

import * as net from "node:net";
import process from "node:process";
import { WireError } from "./errors.ts";

/**
 * The part of a connected TCP socket the wire uses: `node:net`'s `Socket` has it, and so
 * have {@linkcode DenoTcpStream} and {@linkcode BunTcpStream}. Events: `connect` (outgoing streams), `data`, `error`
 * (then `close`), `close` (once, whatever ended the stream).
 *
 * @example
 * ```ts
 * import type { TcpStream } from "./tcp.ts";
 *
 * function echo(s: TcpStream): void {
 *   s.on("data", (chunk) => s.write(chunk));
 * }
 * console.log(typeof echo);
 * ```
 */
export interface TcpStream {
  /** The stream was destroyed (or closed by the peer); writes fail. */
  readonly destroyed: boolean;
  /** The peer's IP address, when connected. */
  readonly remoteAddress?: string;
  /** The peer's port, when connected. */
  readonly remotePort?: number;
  /** Turns Nagle's algorithm off (`true`). */
  setNoDelay?(noDelay?: boolean): unknown;
  /** Adds a listener. */
  on(event: "data", listener: (chunk: Uint8Array) => void): unknown;
  /** Adds a listener. */
  on(event: "error", listener: (error: Error) => void): unknown;
  /** Adds a listener. */
  on(event: "close" | "connect", listener: () => void): unknown;
  /** Adds a listener called once. */
  once(event: "close" | "connect", listener: () => void): unknown;
  /**
   * Queues bytes; `cb` runs once they were handed to the kernel (or with the error).
   * The stream may keep `data` until then: do not reuse it.
   */
  write(data: Uint8Array, cb?: (error?: Error | null) => void): unknown;
  /** Stops `data` events (back-pressure) until {@linkcode resume}. */
  pause(): unknown;
  /** Resumes `data` events. */
  resume(): unknown;
  /** Closes our sending side once queued bytes are written. */
  end(): unknown;
  /** Closes the stream at once; `close` follows. */
  destroy(): unknown;
}

/**
 * A listening TCP socket.
 *
 * @example
 * ```ts
 * import { tcpListen } from "./tcp.ts";
 *
 * const l = await tcpListen("127.0.0.1", 0, (s) => s.destroy());
 * console.log(l.address, l.port);
 * await l.close();
 * ```
 */
export interface TcpListener {
  /** The address really bound (a host name resolved). */
  readonly address: string;
  /** The port really bound (the chosen one for port 0). */
  readonly port: number;
  /** Stops accepting; resolves once the listener is closed (accepted streams stay). */
  close(): Promise<void>;
}

/** `Deno`'s TCP surface, as far as this file uses it (absent under Bun and Node). */
interface DenoNet {
  connect(o: { hostname: string; port: number; transport: "tcp" }): Promise<DenoConn>;
  listen(o: { hostname: string; port: number; transport: "tcp" }): DenoListener;
}
interface DenoAddr {
  hostname: string;
  port: number;
}
interface DenoConn {
  readonly remoteAddr: DenoAddr;
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  closeWrite(): Promise<void>;
  close(): void;
  setNoDelay(noDelay?: boolean): void;
}
interface DenoListener extends AsyncIterable<DenoConn> {
  readonly addr: DenoAddr;
  accept(): Promise<DenoConn>;
  close(): void;
}

function denoNet(): DenoNet | undefined {
  const d = (globalThis as { Deno?: Partial<DenoNet> }).Deno;
  return typeof d?.connect === "function" && typeof d?.listen === "function"
    ? d as DenoNet
    : undefined;
}

/** The TCP implementations of {@linkcode wireTcpKind}. */
export type WireTcpKind = "deno" | "bun" | "node";

/**
 * Which TCP implementation the wire uses in this process: the runtime's own sockets
 * (`"deno"`, `"bun"`; the default) or `"node"` (`node:net`: under Node, or with
 * `KVPORT_WIRE_TCP=node`). Read at each call, so a test may switch it between sockets.
 *
 * @throws {WireError} when `KVPORT_WIRE_TCP` is not `node`, `deno` or `bun`, or names the
 *   other runtime
 *
 * @example
 * ```ts
 * import { wireTcpKind } from "./tcp.ts";
 * console.log(wireTcpKind()); // "deno" under Deno, "bun" under Bun
 * ```
 */
export function wireTcpKind(): WireTcpKind {
  const want = process.env.KVPORT_WIRE_TCP;
  const own: WireTcpKind = denoNet() ? "deno" : bunNet() ? "bun" : "node";
  if (want === undefined || want === "") return own;
  if (want === "node") return "node";
  if (want === "deno" || want === "bun") {
    if (own === want) return want;
    throw new WireError(
      `KVPORT_WIRE_TCP=${want} needs ${want === "deno" ? "Deno" : "Bun"} (this runtime's ` +
        `own sockets are ${own === "node" ? "none" : own})`,
    );
  }
  throw new WireError(
    `KVPORT_WIRE_TCP must be "node", "deno" or "bun" (or unset), got ${JSON.stringify(want)}`,
  );
}

/**
 * Opens a TCP connection in the background: `connect` when it is up, else `error` and
 * `close`.
 *
 * @param host a host name or IP address
 * @param port the port
 * @returns the stream (not yet connected)
 *
 * @example
 * ```ts
 * import { tcpConnect } from "./tcp.ts";
 * const s = tcpConnect("127.0.0.1", 9);
 * s.on("error", (e) => console.log(e.message));
 * s.once("close", () => console.log("closed"));
 * ```
 */
export function tcpConnect(host: string, port: number): TcpStream {
  const kind = wireTcpKind();
  if (kind === "deno") {
    const s = new DenoTcpStream();
    s.connectWith(denoNet()!.connect({ hostname: host, port, transport: "tcp" }));
    return s;
  }
  if (kind === "bun") return BunTcpStream.connect(bunNet()!, host, port);
  return net.createConnection({ host, port });
}

/**
 * Listens on `host:port` and hands every accepted connection to `onConnection`.
 *
 * @param host the address to bind (`0.0.0.0` for all)
 * @param port the port, 0 for a free one
 * @param onConnection called with each accepted (connected) stream
 * @param onError called when the listener fails after it started (rare)
 * @returns the listener, once bound
 * @throws {Error} the runtime's error when the address cannot be bound (e.g. in use)
 *
 * @example
 * ```ts
 * import { tcpListen } from "./tcp.ts";
 * const l = await tcpListen("127.0.0.1", 0, (s) => s.end());
 * console.log(`listening on ${l.address}:${l.port}`);
 * await l.close();
 * ```
 */
export async function tcpListen(
  host: string,
  port: number,
  onConnection: (stream: TcpStream) => void,
  onError: (error: Error) => void = () => {},
): Promise<TcpListener> {
  const kind = wireTcpKind();
  if (kind === "deno") return listenDeno(denoNet()!, host, port, onConnection, onError);
  if (kind === "bun") return BunTcpStream.listen(bunNet()!, host, port, onConnection);
  const server = net.createServer((tcp) => onConnection(tcp));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", onError);
  const addr = server.address();
  const real = addr !== null && typeof addr !== "string";
  return {
    address: real ? addr.address : host,
    port: real ? addr.port : port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function listenDeno(
  deno: DenoNet,
  host: string,
  port: number,
  onConnection: (stream: TcpStream) => void,
  onError: (error: Error) => void,
): TcpListener {
  const listener = deno.listen({ hostname: host, port, transport: "tcp" });
  let closed = false;
  const loop = (async () => {
    for (;;) {
      let conn: DenoConn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (!closed) onError(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      if (closed) {
        conn.close();
        return;
      }
      const s = new DenoTcpStream();
      s.adopt(conn);
      onConnection(s);
    }
  })();
  return {
    address: listener.addr.hostname,
    port: listener.addr.port,
    close: async () => {
      if (!closed) {
        closed = true;
        try {
          listener.close();
        } catch {
          // already closed
        }
      }
      await loop;
    },
  };
}

/** `Bun`'s TCP surface, as far as this file uses it (absent under Deno and Node). */
interface BunNet {
  connect(o: {
    hostname: string;
    port: number;
    data: unknown;
    socket: BunHandlers;
  }): Promise<BunSocket>;
  listen(o: { hostname: string; port: number; socket: BunHandlers }): BunServer;
}
interface BunHandlers {
  open?(s: BunSocket): void;
  data(s: BunSocket, data: Uint8Array): void;
  drain?(s: BunSocket): void;
  close?(s: BunSocket, error?: Error): void;
  error?(s: BunSocket, error: Error): void;
  end?(s: BunSocket): void;
  connectError?(s: BunSocket, error: Error): void;
}
interface BunSocket {
  data: unknown;
  readonly remoteAddress: string;
  readonly remotePort: number;
  write(data: Uint8Array): number;
  end(): void;
  close(): void;
  pause(): void;
  resume(): void;
  setNoDelay(noDelay?: boolean): boolean;
}
interface BunServer {
  readonly hostname: string;
  readonly port: number;
  getsockname(out: { address?: string; port?: number }): void;
  stop(closeActiveConnections?: boolean): void;
}

function bunNet(): BunNet | undefined {
  const b = (globalThis as { Bun?: Partial<BunNet> }).Bun;
  return typeof b?.connect === "function" && typeof b?.listen === "function"
    ? b as BunNet
    : undefined;
}

/** A runtime error with its code in the message (Bun's say "Failed to listen at ..."). */
function withCode(e: unknown): Error {
  const error = e instanceof Error ? e : new Error(String(e));
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && !error.message.includes(code)) {
    error.message = `${code}: ${error.message}`;
  }
  return error;
}

type Listener = (...args: never[]) => void;

/** A tiny event emitter: the events of {@linkcode TcpStream}, listeners in order. */
class Events {
  #listeners = new Map<string, Listener[]>();

  on(event: string, listener: Listener): this {
    const list = this.#listeners.get(event);
    if (list) list.push(listener);
    else this.#listeners.set(event, [listener]);
    return this;
  }

  once(event: string, listener: Listener): this {
    const wrapped = ((...args: never[]) => {
      const list = this.#listeners.get(event);
      const i = list?.indexOf(wrapped) ?? -1;
      if (i >= 0) list!.splice(i, 1);
      listener(...args);
    }) as Listener;
    return this.on(event, wrapped);
  }

  protected emit(event: string, ...args: unknown[]): void {
    const list = this.#listeners.get(event);
    if (!list) return;
    for (const l of [...list]) (l as (...a: unknown[]) => void)(...args);
  }
}

/** Reads of at most this many bytes are copied out of the read buffer, which is reused. */
const COPY_READ_MAX = 4096;
const READ_BUFFER = 64 * 1024;
/** Queued writes are joined into one while they add up to at most this. */
const JOIN_WRITES_MAX = 64 * 1024;

/**
 * A {@linkcode TcpStream} over a `Deno.TcpConn`: one read loop that emits `data`
 * (paused while `pause()` holds), and one write loop that writes queued buffers in order
 * (small ones joined into one write) and calls their callbacks.
 *
 * @example
 * ```ts
 * import { tcpConnect, wireTcpKind } from "./tcp.ts";
 * const s = tcpConnect("127.0.0.1", 9); // a DenoTcpStream under Deno
 * s.on("error", () => {});
 * console.log(wireTcpKind());
 * ```
 */
export class DenoTcpStream extends Events implements TcpStream {
  #conn: DenoConn | undefined;
  #destroyed = false;
  #closeEmitted = false;
  #paused = false;
  #resumeRead: (() => void) | undefined;
  #queue: Uint8Array[] = [];
  #callbacks: Array<{ upTo: number; cb: (error?: Error | null) => void }> = [];
  /** Bytes queued so far (callbacks fire once the written count passes their `upTo`). */
  #queuedBytes = 0;
  #writing = false;
  #ending = false;
  #noDelay = false;
  remoteAddress: string | undefined;
  remotePort: number | undefined;

  /** Whether the stream is destroyed (by us, an error or the peer's close). */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Turns Nagle's algorithm off (now, or once connected). */
  setNoDelay(noDelay = true): this {
    this.#noDelay = noDelay;
    if (this.#conn && !this.#destroyed) {
      try {
        this.#conn.setNoDelay(noDelay);
      } catch {
        // closed meanwhile: nothing to tune
      }
    }
    return this;
  }

  /** (internal) Waits for an outgoing connection; `connect` or `error` + `close` follow. */
  connectWith(pending: Promise<DenoConn>): void {
    pending.then((conn) => {
      if (this.#destroyed) {
        conn.close(); // destroyed while connecting: `close` was emitted then
        return;
      }
      this.adopt(conn);
      this.emit("connect");
    }, (e) => this.#fail(e));
  }

  /** (internal) Takes a connected `Deno.TcpConn` and starts reading. */
  adopt(conn: DenoConn): void {
    this.#conn = conn;
    this.remoteAddress = conn.remoteAddr.hostname;
    this.remotePort = conn.remoteAddr.port;
    if (this.#noDelay) this.setNoDelay(true);
    void this.#readLoop(conn);
    if (this.#queue.length > 0) void this.#writeLoop();
  }

  async #readLoop(conn: DenoConn): Promise<void> {
    let buf = new Uint8Array(READ_BUFFER);
    for (;;) {
      if (this.#paused) await new Promise<void>((r) => (this.#resumeRead = r));
      if (this.#destroyed) return;
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch (e) {
        this.#fail(e);
        return;
      }
      if (this.#destroyed) return;
      if (n === null) {
        // The peer closed its side: like node:net without allowHalfOpen, we close too.
        this.destroy();
        return;
      }
      let chunk: Uint8Array;
      if (n <= COPY_READ_MAX) {
        chunk = buf.slice(0, n);
      } else {
        // The decoder may keep a view of the chunk: hand this buffer over, read into another.
        chunk = buf.subarray(0, n);
        buf = new Uint8Array(READ_BUFFER);
      }
      this.emit("data", chunk);
    }
  }

  /** Queues `data`; `cb` runs once all of it was written, or with the error. */
  write(data: Uint8Array, cb?: (error?: Error | null) => void): boolean {
    if (this.#destroyed || this.#ending) {
      const error = new Error(this.#ending ? "write after end" : "write on a destroyed socket");
      if (cb) queueMicrotask(() => cb(error));
      return false;
    }
    if (data.length > 0) {
      this.#queue.push(data);
      this.#queuedBytes += data.length;
    }
    if (cb) this.#callbacks.push({ upTo: this.#queuedBytes, cb });
    if (!this.#writing && this.#conn) void this.#writeLoop();
    return true;
  }

  async #writeLoop(): Promise<void> {
    const conn = this.#conn!;
    this.#writing = true;
    let written = this.#queuedBytes - this.#queue.reduce((a, b) => a + b.length, 0);
    while (this.#queue.length > 0 || this.#callbacks.length > 0) {
      let data = this.#queue.shift();
      if (data && this.#queue.length > 0 && data.length < JOIN_WRITES_MAX) {
        // Join small queued buffers: one write (and one wake of the peer) for all.
        let total = data.length;
        let k = 0;
        while (k < this.#queue.length && total + this.#queue[k].length <= JOIN_WRITES_MAX) {
          total += this.#queue[k++].length;
        }
        if (k > 0) {
          const joined = new Uint8Array(total);
          joined.set(data, 0);
          let off = data.length;
          for (const b of this.#queue.splice(0, k)) {
            joined.set(b, off);
            off += b.length;
          }
          data = joined;
        }
      }
      if (data) {
        try {
          let off = 0;
          while (off < data.length) off += await conn.write(data.subarray(off));
        } catch (e) {
          this.#writing = false;
          this.#fail(e);
          return;
        }
        if (this.#destroyed) return;
        written += data.length;
      }
      while (this.#callbacks.length > 0 && this.#callbacks[0].upTo <= written) {
        this.#callbacks.shift()!.cb(null);
      }
    }
    this.#writing = false;
    if (this.#ending) {
      conn.closeWrite().catch(() => {});
    }
  }

  /** Stops `data` events until {@linkcode resume}. */
  pause(): this {
    this.#paused = true;
    return this;
  }

  /** Resumes `data` events. */
  resume(): this {
    this.#paused = false;
    const r = this.#resumeRead;
    this.#resumeRead = undefined;
    r?.();
    return this;
  }

  /** Closes our sending side once the queued bytes are written. */
  end(): this {
    if (this.#destroyed || this.#ending) return this;
    this.#ending = true;
    if (this.#conn && !this.#writing) this.#conn.closeWrite().catch(() => {});
    return this;
  }

  /**
   * Closes at once: pending write callbacks get an error, `close` follows (also while a
   * connect is still pending: `Deno.connect` cannot be aborted, its late connection is
   * closed when it comes).
   */
  destroy(): this {
    if (this.#destroyed) return this;
    this.#destroyed = true;
    try {
      this.#conn?.close();
    } catch {
      // already closed
    }
    this.#failCallbacks(new Error("socket destroyed before the bytes were written"));
    this.resume(); // a paused read loop ends
    this.#emitClose();
    return this;
  }

  #failCallbacks(error: Error): void {
    const cbs = this.#callbacks;
    this.#callbacks = [];
    this.#queue = [];
    for (const { cb } of cbs) queueMicrotask(() => cb(error));
  }

  #fail(e: unknown): void {
    if (this.#destroyed) {
      this.#emitClose();
      return;
    }
    const error = e instanceof Error ? e : new Error(String(e));
    this.#destroyed = true;
    try {
      this.#conn?.close();
    } catch {
      // already closed
    }
    this.#failCallbacks(error);
    this.emit("error", error);
    this.#emitClose();
  }

  #emitClose(): void {
    if (this.#closeEmitted) return;
    this.#closeEmitted = true;
    // node:net emits close on a later turn, after the caller's own handling of destroy().
    queueMicrotask(() => this.emit("close"));
  }
}

/**
 * A {@linkcode TcpStream} over a Bun socket (`Bun.connect` / `Bun.listen`). Bun's
 * `write` takes what the kernel takes and returns the count: the rest waits here, in
 * order, for the socket's `drain`; a write callback runs once all of its bytes were
 * taken.
 *
 * @example
 * ```ts
 * import { tcpConnect, wireTcpKind } from "./tcp.ts";
 * const s = tcpConnect("127.0.0.1", 9); // a BunTcpStream under Bun
 * s.on("error", () => {});
 * console.log(wireTcpKind());
 * ```
 */
export class BunTcpStream extends Events implements TcpStream {
  #socket: BunSocket | undefined;
  #destroyed = false;
  #closeEmitted = false;
  /** Buffers not yet taken by the kernel, the first one from `#offset` on. */
  #queue: Uint8Array[] = [];
  #offset = 0;
  #callbacks: Array<{ upTo: number; cb: (error?: Error | null) => void }> = [];
  #queuedBytes = 0;
  #writtenBytes = 0;
  #ending = false;
  #noDelay = false;
  #paused = false;
  remoteAddress: string | undefined;
  remotePort: number | undefined;

  /** (internal) Connects in the background; `connect` or `error` + `close` follow. */
  static connect(bun: BunNet, host: string, port: number): BunTcpStream {
    const s = new BunTcpStream();
    // The stream is the socket's `data` from the start and takes it over in `open`, before
    // any `data` event: the peer may speak first (libzmq sends its greeting at once), and
    // bytes that came before the connect promise's continuation would find no stream.
    bun.connect({ hostname: host, port, data: s, socket: BunTcpStream.#connectHandlers })
      .catch((e) => s.#fail(e));
    return s;
  }

  /** (internal) Listens; every accepted socket becomes a stream for `onConnection`. */
  static listen(
    bun: BunNet,
    host: string,
    port: number,
    onConnection: (stream: TcpStream) => void,
  ): TcpListener {
    let server: BunServer;
    try {
      server = bun.listen({
        hostname: host,
        port,
        socket: {
          ...BunTcpStream.#handlers,
          open(sock) {
            const s = new BunTcpStream();
            s.#adopt(sock);
            onConnection(s);
          },
        },
      });
    } catch (e) {
      throw withCode(e);
    }
    let closed = false;
    // The address really bound: `hostname` is the name asked for ("localhost").
    const bound: { address?: string; port?: number } = {};
    try {
      server.getsockname(bound);
    } catch {
      // an older Bun: the name asked for is what we can tell
    }
    return {
      address: bound.address ?? server.hostname,
      port: bound.port ?? server.port,
      close: () => {
        if (!closed) {
          closed = true;
          server.stop(false); // accepted streams stay, as with node:net's close()
        }
        return Promise.resolve();
      },
    };
  }

  /** One set of handlers for every socket: each finds its stream in `socket.data`. */
  static readonly #handlers: BunHandlers = {
    data(sock, data) {
      const s = sock.data as BunTcpStream | undefined;
      if (s) s.#onData(data);
    },
    drain(sock) {
      const s = sock.data as BunTcpStream | undefined;
      if (s) s.#flush();
    },
    end(sock) {
      // The peer closed its side: like node:net without allowHalfOpen, we close too.
      (sock.data as BunTcpStream | undefined)?.destroy();
    },
    error(sock, error) {
      const s = sock.data as BunTcpStream | undefined;
      if (s) s.#fail(error);
    },
    close(sock, error) {
      const s = sock.data as BunTcpStream | undefined;
      if (!s) return;
      if (error) s.#fail(error);
      else s.#closed();
    },
  };

  /** The handlers of outgoing sockets: `open` hands the socket to its stream. */
  static readonly #connectHandlers: BunHandlers = {
    ...BunTcpStream.#handlers,
    open(sock) {
      const s = sock.data as BunTcpStream | undefined;
      if (!s || s.#destroyed) {
        sock.data = undefined;
        sock.close(); // destroyed while connecting: `close` was emitted then
        return;
      }
      s.#adopt(sock);
      s.emit("connect");
    },
    connectError(sock, error) {
      const s = sock.data as BunTcpStream | undefined;
      sock.data = undefined;
      if (s) s.#fail(error);
    },
  };

  #adopt(sock: BunSocket): void {
    this.#socket = sock;
    sock.data = this;
    this.remoteAddress = sock.remoteAddress;
    this.remotePort = sock.remotePort;
    if (this.#noDelay) this.setNoDelay(true);
    if (this.#paused) sock.pause();
    this.#flush();
  }

  #onData(data: Uint8Array): void {
    if (!this.#destroyed) this.emit("data", data);
  }

  /** Whether the stream is destroyed (by us, an error or the peer's close). */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Turns Nagle's algorithm off (now, or once connected). */
  setNoDelay(noDelay = true): this {
    this.#noDelay = noDelay;
    if (this.#socket && !this.#destroyed) this.#socket.setNoDelay(noDelay);
    return this;
  }

  /** Queues `data`; `cb` runs once all of it was taken by the kernel, or with the error. */
  write(data: Uint8Array, cb?: (error?: Error | null) => void): boolean {
    if (this.#destroyed || this.#ending) {
      const error = new Error(this.#ending ? "write after end" : "write on a destroyed socket");
      if (cb) queueMicrotask(() => cb(error));
      return false;
    }
    if (data.length > 0) {
      this.#queue.push(data);
      this.#queuedBytes += data.length;
    }
    if (cb) this.#callbacks.push({ upTo: this.#queuedBytes, cb });
    if (this.#socket) this.#flush();
    return this.#queue.length === 0;
  }

  /** Hands queued bytes to the socket until it takes no more; calls finished callbacks. */
  #flush(): void {
    const sock = this.#socket;
    if (!sock || this.#destroyed) return;
    while (this.#queue.length > 0) {
      const head = this.#queue[0];
      const rest = this.#offset === 0 ? head : head.subarray(this.#offset);
      const n = sock.write(rest);
      if (n > 0) this.#writtenBytes += n;
      if (n < rest.length) {
        this.#offset += Math.max(0, n);
        break; // the kernel's buffer is full: `drain` calls us again
      }
      this.#queue.shift();
      this.#offset = 0;
    }
    if (this.#callbacks.length > 0 && this.#callbacks[0].upTo <= this.#writtenBytes) {
      const done: Array<(error?: Error | null) => void> = [];
      while (this.#callbacks.length > 0 && this.#callbacks[0].upTo <= this.#writtenBytes) {
        done.push(this.#callbacks.shift()!.cb);
      }
      // node:net calls write callbacks on a later turn, never inside write().
      queueMicrotask(() => {
        for (const cb of done) cb(null);
      });
    }
    if (this.#ending && this.#queue.length === 0) sock.end();
  }

  /** Stops `data` events until {@linkcode resume}. */
  pause(): this {
    this.#paused = true;
    if (this.#socket && !this.#destroyed) this.#socket.pause();
    return this;
  }

  /** Resumes `data` events. */
  resume(): this {
    this.#paused = false;
    if (this.#socket && !this.#destroyed) this.#socket.resume();
    return this;
  }

  /** Closes our sending side once the queued bytes are written. */
  end(): this {
    if (this.#destroyed || this.#ending) return this;
    this.#ending = true;
    if (this.#socket) this.#flush();
    return this;
  }

  /**
   * Closes at once: pending write callbacks get an error, `close` follows (also while a
   * connect is pending; its late socket is closed when it comes). Bun's `close()`, not
   * `terminate()`: that one resets the connection, and the peer's kernel then drops what
   * we wrote and it had not read yet (node:net's `destroy()` closes with a FIN too).
   */
  destroy(): this {
    if (this.#destroyed) return this;
    this.#destroyed = true;
    const sock = this.#socket;
    if (sock) {
      sock.data = undefined;
      try {
        sock.close();
      } catch {
        // already closed
      }
    }
    this.#failCallbacks(new Error("socket destroyed before the bytes were written"));
    this.#emitClose();
    return this;
  }

  #failCallbacks(error: Error): void {
    const cbs = this.#callbacks;
    this.#callbacks = [];
    this.#queue = [];
    for (const { cb } of cbs) queueMicrotask(() => cb(error));
  }

  #fail(e: unknown): void {
    if (this.#destroyed) {
      this.#emitClose();
      return;
    }
    const error = withCode(e);
    this.#destroyed = true;
    const sock = this.#socket;
    if (sock) {
      sock.data = undefined;
      try {
        sock.close();
      } catch {
        // already closed
      }
    }
    this.#failCallbacks(error);
    this.emit("error", error);
    this.#emitClose();
  }

  /** The socket closed without an error (after our end, or the peer's). */
  #closed(): void {
    if (!this.#destroyed) {
      this.#destroyed = true;
      if (this.#socket) this.#socket.data = undefined;
      this.#failCallbacks(new Error("socket closed before the bytes were written"));
    }
    this.#emitClose();
  }

  #emitClose(): void {
    if (this.#closeEmitted) return;
    this.#closeEmitted = true;
    queueMicrotask(() => this.emit("close"));
  }
}
