/**
 * What the wire's two socket back ends (`tcp_deno.ts`, `tcp_bun.ts`) share: a tiny event
 * emitter and {@linkcode QueuedStream}, the write queue with its callbacks and the
 * stream's end (destroy, failure, `close` once). Each back end adds how bytes reach its
 * runtime's socket. Private to this folder.
 *
 * @module
 */

type Listener = (...args: never[]) => void;

/** A tiny event emitter: the events of a `TcpStream`, listeners in order. */
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

/** A write callback, due once the stream's written byte count reaches `upTo`. */
export interface WriteCallback {
  upTo: number;
  cb: (error?: Error | null) => void;
}

/**
 * A stream's queued writes and its end. A subclass moves `queue` to its socket, calls
 * the callbacks that came due, and closes its socket in {@linkcode closeTransport}; the
 * rest (refusing writes after the end, failing what is queued, `error` then `close`
 * once, on a later turn as `node:net` does) is here.
 */
export abstract class QueuedStream extends Events {
  protected isDestroyed = false;
  #closeEmitted = false;
  /** Buffers not yet handed to the socket, in order. */
  protected queue: Uint8Array[] = [];
  protected callbacks: WriteCallback[] = [];
  /** Bytes queued so far (a callback is due once the written count passes its `upTo`). */
  protected queuedBytes = 0;
  protected ending = false;
  protected noDelay = false;
  protected paused = false;
  /** The peer's IP address, when connected. */
  remoteAddress: string | undefined;
  /** The peer's port, when connected. */
  remotePort: number | undefined;

  /** Whether the stream is destroyed (by us, an error or the peer's close). */
  get destroyed(): boolean {
    return this.isDestroyed;
  }

  /** Closes the runtime's socket (when there is one); called once, at the end. */
  protected abstract closeTransport(): void;

  /** The error to report for what the runtime threw or handed over. */
  protected asError(e: unknown): Error {
    return e instanceof Error ? e : new Error(String(e));
  }

  /**
   * The common part of `write`: refused (the callback gets the error on a later turn,
   * false) after `end()` or once destroyed; else `data` and `cb` are queued (true).
   */
  protected enqueue(data: Uint8Array, cb?: (error?: Error | null) => void): boolean {
    if (this.isDestroyed || this.ending) {
      const error = new Error(this.ending ? "write after end" : "write on a destroyed socket");
      if (cb) queueMicrotask(() => cb(error));
      return false;
    }
    if (data.length > 0) {
      this.queue.push(data);
      this.queuedBytes += data.length;
    }
    if (cb) this.callbacks.push({ upTo: this.queuedBytes, cb });
    return true;
  }

  /** Drops what is queued; every pending callback gets `error` on a later turn. */
  protected failWrites(error: Error): void {
    const cbs = this.callbacks;
    this.callbacks = [];
    this.queue = [];
    for (const { cb } of cbs) queueMicrotask(() => cb(error));
  }

  /**
   * Closes at once: pending write callbacks get an error, `close` follows (also while a
   * connect is pending: its late socket is closed when it comes).
   */
  destroy(): this {
    if (this.isDestroyed) return this;
    this.isDestroyed = true;
    this.closeTransport();
    this.failWrites(new Error("socket destroyed before the bytes were written"));
    this.afterDestroy();
    this.emitClose();
    return this;
  }

  /** What a subclass still does after {@linkcode destroy} closed its socket. */
  protected afterDestroy(): void {}

  /** The stream failed (`e`): closed, queued writes failed, `error` then `close`. */
  protected fail(e: unknown): void {
    if (this.isDestroyed) {
      this.emitClose();
      return;
    }
    const error = this.asError(e);
    this.isDestroyed = true;
    this.closeTransport();
    this.failWrites(error);
    this.emit("error", error);
    this.emitClose();
  }

  /** `close`, once, on a later turn (after the caller's own handling, as node:net). */
  protected emitClose(): void {
    if (this.#closeEmitted) return;
    this.#closeEmitted = true;
    queueMicrotask(() => this.emit("close"));
  }
}
