/**
 * Waits without polling timers where the runtime has no nonblocking FFI (Bun): the
 * agent's `kvp_event_fd` descriptor gets a byte whenever one of its requests finishes or
 * a notification is queued, and the runtime's event loop reads it as a stream, so a
 * waiter sleeps until something happened (or its deadline). Deno keeps its thread-pool
 * wait (`kvp_xfer_wait` on a pool thread), which needs no descriptor.
 *
 * @example
 * ```ts
 * import { AgentEvents } from "./events.ts";
 * declare const events: AgentEvents;
 * const seen = events.gen;
 * // ... poll: still in progress ...
 * await events.changed(seen, 1000); // an event since `seen`, or 1 s
 * ```
 * @module
 */

import { closeSync } from "node:fs";
import type { NativeLib } from "../../ffi/mod.ts";
import { OUT_I32 } from "../../ffi/native.ts";
import { Status } from "../errors.ts";
import { after } from "../deadline.ts";

/**
 * The event descriptor of one agent, read on demand: a read is pending only while
 * someone waits, so an idle agent keeps no I/O (and no process) alive.
 */
export class AgentEvents {
  #fd: number;
  #stream: ReadableStream<Uint8Array>;
  /** Held only while a read is pending (a held reader with a pending read keeps Bun's
   * event loop, and so the process, alive). */
  #reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  #gen = 0;
  #reading: Promise<void> | null = null;
  #releasing = false;
  #ended = false;
  #closed = false;
  #waiters = new Set<() => void>();

  private constructor(fd: number, stream: ReadableStream<Uint8Array>) {
    this.#fd = fd;
    this.#stream = stream;
  }

  /**
   * The events of agent `handle`, or `null` where they are not used: the runtime waits
   * on its thread pool (Deno), or the engine has no event descriptor (nixl).
   */
  static open(lib: NativeLib, handle: bigint): AgentEvents | null {
    if (!lib.eventStream) return null;
    if (lib.symbols.kvp_event_fd(handle, OUT_I32) !== Status.SUCCESS) return null;
    const fd = OUT_I32[0];
    try {
      return new AgentEvents(fd, lib.eventStream(fd));
    } catch {
      closeSync(fd);
      return null;
    }
  }

  /** Counts events seen; read it before a status poll, pass it to {@linkcode changed}. */
  get gen(): number {
    return this.#gen;
  }

  /**
   * Resolves once an event has arrived since `gen` was read (at once when one has), after
   * `ms` milliseconds, or when the agent is gone.
   */
  changed(gen: number, ms: number): Promise<void> {
    if (gen !== this.#gen || this.#ended || this.#closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        timer.clear();
        this.#waiters.delete(done);
        // Nobody waits any more but the read is pending (woken by its deadline): give the
        // reader up, so that an idle agent keeps no read (and no process) alive.
        if (this.#waiters.size === 0 && this.#reading) this.#release();
        resolve();
      };
      // The deadline only: the wake itself comes from the descriptor.
      const timer = after(ms, done);
      this.#waiters.add(done);
      this.#read();
    });
  }

  /** Wakes every waiter now (an abort: nothing native happened). */
  poke(): void {
    this.#gen++;
    for (const w of [...this.#waiters]) w();
  }

  #release(): void {
    if (!this.#reader) return;
    this.#releasing = true;
    this.#reader.releaseLock(); // rejects the pending read
    this.#reader = null;
  }

  #read(): void {
    if (this.#reading || this.#ended || this.#closed) return;
    this.#reader ??= this.#stream.getReader();
    this.#reading = this.#reader.read().then(
      ({ done }) => {
        if (done) this.#ended = true;
      },
      () => {
        // Given up by #release (not the end), or the stream failed (the end).
        if (!this.#releasing) this.#ended = true;
      },
    ).finally(() => {
      this.#releasing = false;
      this.#reading = null;
      this.poke();
    });
  }

  /** Stops reading and closes the descriptor (Bun leaves it open). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.poke();
    this.#release();
    await this.#reading?.catch(() => {});
    await this.#stream.cancel().catch(() => {});
    try {
      closeSync(this.#fd);
    } catch {
      // already closed
    }
  }
}
