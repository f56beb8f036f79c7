/**
 * The TCP streams under the wire: `node:net` (Bun, Node, and Deno on request) or Deno's
 * own `Deno.connect` / `Deno.listen` (Deno by default). Under Deno every `node:net` read
 * and write goes through its Node compatibility layer (a stream, an emitter and a
 * `nextTick` on top of the same socket op); a bare echo between two Deno processes took
 * 76-88 us per round trip through it against 42-59 us through `Deno.connect` on the
 * 2-core development machine (BENCHMARKS.md, issue 15). Both give a
 * {@linkcode TcpStream}, the subset of `net.Socket` that {@linkcode ZmtpConnection}
 * uses, so the ZMTP layer above does not know which one it runs on.
 *
 * `KVPORT_WIRE_TCP=node` makes Deno use `node:net` as well (tests run the wire suites both
 * ways; a comparison needs both in one build); `KVPORT_WIRE_TCP=deno` outside Deno fails.
 *
 * @example
 * ```ts
 * import { tcpConnect, tcpListen, wireTcpKind } from "./tcp.ts";
 *
 * const server = await tcpListen("127.0.0.1", 0, (s) => s.on("data", (d) => s.write(d)));
 * const c = tcpConnect("127.0.0.1", server.port);
 * c.once("connect", () => c.write(new Uint8Array([1, 2, 3])));
 * c.on("data", (d) => {
 *   console.log(wireTcpKind(), d); // "deno" Uint8Array(3) [1, 2, 3] (under Deno)
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
 * has {@linkcode DenoTcpStream}. Events: `connect` (outgoing streams), `data`, `error`
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

/**
 * Which TCP implementation the wire uses in this process: `"deno"` (Deno's own sockets;
 * the default under Deno) or `"node"` (`node:net`; Bun, Node, or `KVPORT_WIRE_TCP=node`).
 * Read at each call, so a test may switch it between sockets.
 *
 * @throws {WireError} when `KVPORT_WIRE_TCP` is neither `node` nor `deno`, or is `deno`
 *   outside Deno
 *
 * @example
 * ```ts
 * import { wireTcpKind } from "./tcp.ts";
 * console.log(wireTcpKind()); // "deno" under Deno, "node" under Bun
 * ```
 */
export function wireTcpKind(): "deno" | "node" {
  const want = process.env.KVPORT_WIRE_TCP;
  if (want === undefined || want === "") return denoNet() ? "deno" : "node";
  if (want === "node") return "node";
  if (want === "deno") {
    if (denoNet()) return "deno";
    throw new WireError("KVPORT_WIRE_TCP=deno needs Deno (Deno.connect is not available here)");
  }
  throw new WireError(
    `KVPORT_WIRE_TCP must be "node" or "deno" (or unset), got ${JSON.stringify(want)}`,
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
  const deno = wireTcpKind() === "deno" ? denoNet() : undefined;
  if (!deno) return net.createConnection({ host, port });
  const s = new DenoTcpStream();
  s.connectWith(deno.connect({ hostname: host, port, transport: "tcp" }));
  return s;
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
  const deno = wireTcpKind() === "deno" ? denoNet() : undefined;
  if (deno) return listenDeno(deno, host, port, onConnection, onError);
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

type Listener = (...args: never[]) => void;

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
export class DenoTcpStream implements TcpStream {
  #conn: DenoConn | undefined;
  #destroyed = false;
  #closeEmitted = false;
  #listeners = new Map<string, Listener[]>();
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

  /** Adds a listener of `event`. */
  on(event: string, listener: Listener): this {
    const list = this.#listeners.get(event);
    if (list) list.push(listener);
    else this.#listeners.set(event, [listener]);
    return this;
  }

  /** Adds a listener of `event` that is removed after its first call. */
  once(event: string, listener: Listener): this {
    const wrapped = ((...args: never[]) => {
      this.#off(event, wrapped);
      listener(...args);
    }) as Listener;
    return this.on(event, wrapped);
  }

  #off(event: string, listener: Listener): void {
    const list = this.#listeners.get(event);
    const i = list?.indexOf(listener) ?? -1;
    if (i >= 0) list!.splice(i, 1);
  }

  #emit(event: string, ...args: unknown[]): void {
    const list = this.#listeners.get(event);
    if (!list) return;
    for (const l of [...list]) (l as (...a: unknown[]) => void)(...args);
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
      this.#emit("connect");
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
      this.#emit("data", chunk);
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
    this.#emit("error", error);
    this.#emitClose();
  }

  #emitClose(): void {
    if (this.#closeEmitted) return;
    this.#closeEmitted = true;
    // node:net emits close on a later turn, after the caller's own handling of destroy().
    queueMicrotask(() => this.#emit("close"));
  }
}
