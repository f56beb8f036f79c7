/**
 * The wire's TCP streams on Bun's own sockets (`Bun.connect` / `Bun.listen`), behind the
 * {@linkcode TcpStream} of `tcp.ts` (which picks them under Bun).
 *
 * @example
 * ```ts
 * import { tcpConnect, wireTcpKind } from "./tcp.ts";
 * const s = tcpConnect("127.0.0.1", 9); // a BunTcpStream under Bun
 * s.on("error", () => {});
 * console.log(wireTcpKind());
 * ```
 *
 * @module
 */

import type { TcpListener, TcpStream } from "./tcp.ts";
import { QueuedStream } from "./_tcp_stream.ts";

/** `Bun`'s TCP surface, as far as this file uses it (absent under Deno and Node). */
export interface BunNet {
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

/** Bun's socket functions, when this runtime is Bun. */
export function bunNet(): BunNet | undefined {
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
export class BunTcpStream extends QueuedStream implements TcpStream {
  #socket: BunSocket | undefined;
  /** Where the first queued buffer's bytes not yet taken by the kernel begin. */
  #offset = 0;
  #writtenBytes = 0;

  /** (internal) Connects in the background; `connect` or `error` + `close` follow. */
  static connect(bun: BunNet, host: string, port: number): BunTcpStream {
    const s = new BunTcpStream();
    // The stream is the socket's `data` from the start and takes it over in `open`, before
    // any `data` event: the peer may speak first (libzmq sends its greeting at once), and
    // bytes that came before the connect promise's continuation would find no stream.
    bun.connect({ hostname: host, port, data: s, socket: BunTcpStream.#connectHandlers })
      .catch((e) => s.fail(e));
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
      if (s) s.fail(error);
    },
    close(sock, error) {
      const s = sock.data as BunTcpStream | undefined;
      if (!s) return;
      if (error) s.fail(error);
      else s.#closed();
    },
  };

  /** The handlers of outgoing sockets: `open` hands the socket to its stream. */
  static readonly #connectHandlers: BunHandlers = {
    ...BunTcpStream.#handlers,
    open(sock) {
      const s = sock.data as BunTcpStream | undefined;
      if (!s || s.isDestroyed) {
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
      if (s) s.fail(error);
    },
  };

  #adopt(sock: BunSocket): void {
    this.#socket = sock;
    sock.data = this;
    this.remoteAddress = sock.remoteAddress;
    this.remotePort = sock.remotePort;
    if (this.noDelay) this.setNoDelay(true);
    if (this.paused) sock.pause();
    this.#flush();
  }

  #onData(data: Uint8Array): void {
    if (!this.isDestroyed) this.emit("data", data);
  }

  /** Turns Nagle's algorithm off (now, or once connected). */
  setNoDelay(noDelay = true): this {
    this.noDelay = noDelay;
    if (this.#socket && !this.isDestroyed) this.#socket.setNoDelay(noDelay);
    return this;
  }

  /** Queues `data`; `cb` runs once all of it was taken by the kernel, or with the error. */
  write(data: Uint8Array, cb?: (error?: Error | null) => void): boolean {
    if (!this.enqueue(data, cb)) return false;
    if (this.#socket) this.#flush();
    return this.queue.length === 0;
  }

  /** Hands queued bytes to the socket until it takes no more; calls finished callbacks. */
  #flush(): void {
    const sock = this.#socket;
    if (!sock || this.isDestroyed) return;
    while (this.queue.length > 0) {
      const head = this.queue[0];
      const rest = this.#offset === 0 ? head : head.subarray(this.#offset);
      const n = sock.write(rest);
      if (n > 0) this.#writtenBytes += n;
      if (n < rest.length) {
        this.#offset += Math.max(0, n);
        break; // the kernel's buffer is full: `drain` calls us again
      }
      this.queue.shift();
      this.#offset = 0;
    }
    if (this.callbacks.length > 0 && this.callbacks[0].upTo <= this.#writtenBytes) {
      const done: Array<(error?: Error | null) => void> = [];
      while (this.callbacks.length > 0 && this.callbacks[0].upTo <= this.#writtenBytes) {
        done.push(this.callbacks.shift()!.cb);
      }
      // node:net calls write callbacks on a later turn, never inside write().
      queueMicrotask(() => {
        for (const cb of done) cb(null);
      });
    }
    if (this.ending && this.queue.length === 0) sock.end();
  }

  /** Stops `data` events until {@linkcode resume}. */
  pause(): this {
    this.paused = true;
    if (this.#socket && !this.isDestroyed) this.#socket.pause();
    return this;
  }

  /** Resumes `data` events. */
  resume(): this {
    this.paused = false;
    if (this.#socket && !this.isDestroyed) this.#socket.resume();
    return this;
  }

  /** Closes our sending side once the queued bytes are written. */
  end(): this {
    if (this.isDestroyed || this.ending) return this;
    this.ending = true;
    if (this.#socket) this.#flush();
    return this;
  }

  /**
   * (`destroy` and failures) Bun's `close()`, not `terminate()`: that one resets the
   * connection, and the peer's kernel then drops what we wrote and it had not read yet
   * (node:net's `destroy()` closes with a FIN too). A socket that connects after the end
   * is closed when it comes (its `open`).
   */
  protected closeTransport(): void {
    const sock = this.#socket;
    if (!sock) return;
    sock.data = undefined;
    try {
      sock.close();
    } catch {
      // already closed
    }
  }

  /** Bun's errors with their code in the message. */
  protected override asError(e: unknown): Error {
    return withCode(e);
  }

  /** The socket closed without an error (after our end, or the peer's). */
  #closed(): void {
    if (!this.isDestroyed) {
      this.isDestroyed = true;
      if (this.#socket) this.#socket.data = undefined;
      this.failWrites(new Error("socket closed before the bytes were written"));
    }
    this.emitClose();
  }
}
