/**
 * The wire's TCP streams on Deno's own sockets (`Deno.connect` / `Deno.listen`), behind
 * the {@linkcode TcpStream} of `tcp.ts` (which picks them under Deno).
 *
 * @example
 * ```ts
 * import { tcpConnect, wireTcpKind } from "./tcp.ts";
 * const s = tcpConnect("127.0.0.1", 9); // a DenoTcpStream under Deno
 * s.on("error", () => {});
 * console.log(wireTcpKind());
 * ```
 *
 * @module
 */

import type { TcpListener, TcpStream } from "./tcp.ts";
import { QueuedStream } from "./_tcp_stream.ts";

/** `Deno`'s TCP surface, as far as this file uses it (absent under Bun and Node). */
export interface DenoNet {
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

/** Deno's socket functions, when this runtime is Deno. */
export function denoNet(): DenoNet | undefined {
  const d = (globalThis as { Deno?: Partial<DenoNet> }).Deno;
  return typeof d?.connect === "function" && typeof d?.listen === "function"
    ? d as DenoNet
    : undefined;
}

/** Listens with `Deno.listen`; every accepted connection becomes a stream. */
export function listenDeno(
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
export class DenoTcpStream extends QueuedStream implements TcpStream {
  #conn: DenoConn | undefined;
  #resumeRead: (() => void) | undefined;
  #writing = false;

  /** Turns Nagle's algorithm off (now, or once connected). */
  setNoDelay(noDelay = true): this {
    this.noDelay = noDelay;
    if (this.#conn && !this.isDestroyed) {
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
      if (this.isDestroyed) {
        conn.close(); // destroyed while connecting: `close` was emitted then
        return;
      }
      this.adopt(conn);
      this.emit("connect");
    }, (e) => this.fail(e));
  }

  /** (internal) Takes a connected `Deno.TcpConn` and starts reading. */
  adopt(conn: DenoConn): void {
    this.#conn = conn;
    this.remoteAddress = conn.remoteAddr.hostname;
    this.remotePort = conn.remoteAddr.port;
    if (this.noDelay) this.setNoDelay(true);
    void this.#readLoop(conn);
    if (this.queue.length > 0) void this.#writeLoop();
  }

  async #readLoop(conn: DenoConn): Promise<void> {
    let buf = new Uint8Array(READ_BUFFER);
    for (;;) {
      if (this.paused) await new Promise<void>((r) => (this.#resumeRead = r));
      if (this.isDestroyed) return;
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch (e) {
        this.fail(e);
        return;
      }
      if (this.isDestroyed) return;
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
    if (!this.enqueue(data, cb)) return false;
    if (!this.#writing && this.#conn) void this.#writeLoop();
    return true;
  }

  async #writeLoop(): Promise<void> {
    const conn = this.#conn!;
    this.#writing = true;
    let written = this.queuedBytes - this.queue.reduce((a, b) => a + b.length, 0);
    while (this.queue.length > 0 || this.callbacks.length > 0) {
      let data = this.queue.shift();
      if (data && this.queue.length > 0 && data.length < JOIN_WRITES_MAX) {
        // Join small queued buffers: one write (and one wake of the peer) for all.
        let total = data.length;
        let k = 0;
        while (k < this.queue.length && total + this.queue[k].length <= JOIN_WRITES_MAX) {
          total += this.queue[k++].length;
        }
        if (k > 0) {
          const joined = new Uint8Array(total);
          joined.set(data, 0);
          let off = data.length;
          for (const b of this.queue.splice(0, k)) {
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
          this.fail(e);
          return;
        }
        if (this.isDestroyed) return;
        written += data.length;
      }
      while (this.callbacks.length > 0 && this.callbacks[0].upTo <= written) {
        this.callbacks.shift()!.cb(null);
      }
    }
    this.#writing = false;
    if (this.ending) {
      conn.closeWrite().catch(() => {});
    }
  }

  /** Stops `data` events until {@linkcode resume}. */
  pause(): this {
    this.paused = true;
    return this;
  }

  /** Resumes `data` events. */
  resume(): this {
    this.paused = false;
    const r = this.#resumeRead;
    this.#resumeRead = undefined;
    r?.();
    return this;
  }

  /** Closes our sending side once the queued bytes are written. */
  end(): this {
    if (this.isDestroyed || this.ending) return this;
    this.ending = true;
    if (this.#conn && !this.#writing) this.#conn.closeWrite().catch(() => {});
    return this;
  }

  /** (`destroy` and failures) `Deno.connect` cannot be aborted: a connection that comes
   * after the end is closed when it comes (`connectWith`). */
  protected closeTransport(): void {
    try {
      this.#conn?.close();
    } catch {
      // already closed
    }
  }

  /** A paused read loop ends. */
  protected override afterDestroy(): void {
    this.resume();
  }
}
