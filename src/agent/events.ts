/**
 * Waits without polling timers or pool threads: a waiter sleeps until the agent says
 * something happened (one of its requests finished, a notification was queued, it was
 * destroyed), or until its deadline. Two back ends:
 * - the wake callback (`kvp_event_notify`, ABI 4, both runtimes, both engines): the
 *   agent's notifier thread calls the library's one thread-safe callback, which runs on
 *   the event loop and wakes the waiters (one thread hop: native thread -> event loop);
 *   on the nixl engine the engine's watcher thread polls NIXL and signals it (Bun; Deno
 *   keeps its pool-thread wait there, which measured better: {@linkcode DENO_NIXL_POOL});
 * - the event descriptor (`kvp_event_fd`, Bun with an ABI-3 library): a byte per event
 *   on a socket that Bun's event loop reads as a stream.
 *
 * Deno with an ABI-3 library waits on its thread pool instead (`kvp_xfer_wait` as a
 * nonblocking call), and an engine without either (the nixl engine of a module before
 * its watcher) polls: {@linkcode AgentEvents.open} returns `null` there.
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

/** Which wake-up mechanism new agents use: `"auto"` (the wake callback where the library
 * has it, except Deno on the nixl engine: see {@linkcode DENO_NIXL_POOL}), `"wake"` (the
 * wake callback wherever the library has it) or `"legacy"` (what an ABI-3 library does:
 * Deno's pool-thread waits, Bun's event descriptor). */
export type WakeMode = "auto" | "wake" | "legacy";

/**
 * Deno on the nixl engine keeps its pool-thread waits (`kvp_xfer_wait` / `kvp_notif_wait`
 * as nonblocking calls) under `"auto"`: there the wake comes from the engine's watcher, a
 * thread that polls NIXL (which has no completion callback), and measured against the
 * pool-thread wait on a 2-core machine (bench/nixl_bench.ts, TCP, three interleaved
 * pairs, issue 18) it moved the same bandwidth (4096 x 4 KiB: 0.85-0.99 of raw NIXL
 * against 0.92-0.95) but made the 4 KiB latency worse (p50 1.23-1.52 x raw NIXL against
 * 0.98-1.18, p99 361-524 us against 130-328). Bun has no pool-thread wait (its other
 * choice is polling on timers), and takes the watcher.
 *
 * @example
 * ```ts
 * import { DENO_NIXL_POOL } from "./events.ts";
 * console.log(DENO_NIXL_POOL); // true
 * ```
 */
export const DENO_NIXL_POOL = true;

let wakeMode: WakeMode = "auto";

/**
 * Picks the wake-up mechanism of agents created from now on (benchmarks compare the
 * two; the default is `"auto"`). Internal: not exported by the package.
 *
 * @example
 * ```ts
 * import { setWakeMode } from "./events.ts";
 * setWakeMode("legacy"); // agents created now wait as with an ABI-3 library
 * setWakeMode("auto");
 * ```
 */
export function setWakeMode(mode: WakeMode): void {
  if (mode !== "auto" && mode !== "wake" && mode !== "legacy") {
    throw new TypeError(
      `wake mode must be "auto", "wake" or "legacy", got ${JSON.stringify(mode)}`,
    );
  }
  wakeMode = mode;
}

/** Where an agent's events come from: started while someone waits, stopped otherwise
 * (a pending read keeps Bun's process alive), closed with the agent. */
interface EventSource {
  arm(): void;
  disarm(): void;
  close(): Promise<void>;
}

/**
 * The events of one agent: a count (`gen`) bumped by each wake, and waiters that sleep
 * until it moves. An idle agent keeps nothing of the event loop alive.
 */
export class AgentEvents {
  #gen = 0;
  #ended = false;
  #closed = false;
  #waiters = new Set<() => void>();
  #listeners = new Set<() => void>();
  #source: EventSource | null = null;
  /** Whether events arrive with nobody waiting (the wake callback), see `onWake`. */
  #live = false;

  private constructor() {}

  /**
   * The events of agent `handle` (of engine `engine`), or `null` where they are not used:
   * the runtime waits on its thread pool (Deno with an ABI-3 library, the `"legacy"`
   * mode, or Deno on the nixl engine under `"auto"`: {@linkcode DENO_NIXL_POOL}), or the
   * engine has neither notifier nor event descriptor.
   */
  static open(lib: NativeLib, handle: bigint, engine = ""): AgentEvents | null {
    const events = new AgentEvents();
    if (
      wakeMode === "auto" && DENO_NIXL_POOL && engine === "nixl" && lib.runtime === "deno" &&
      lib.nonblocking
    ) {
      return null;
    }
    if (lib.wakes && wakeMode !== "legacy") {
      const watch = lib.wakes.watch(handle, () => events.poke());
      if (watch.status === Status.SUCCESS) {
        events.#source = { arm() {}, disarm() {}, close: () => Promise.resolve(watch.unwatch()) };
        events.#live = true;
        return events;
      }
      // NIXL_ERR_NOT_SUPPORTED: this engine has no notifier (nor a descriptor).
      return null;
    }
    if (!lib.eventStream) return null;
    if (lib.symbols.kvp_event_fd(handle, OUT_I32) !== Status.SUCCESS) return null;
    const fd = OUT_I32[0];
    try {
      events.#source = new DescriptorSource(fd, lib.eventStream(fd), events);
      return events;
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
        // Nobody waits any more: stop listening, so that an idle agent keeps nothing
        // (a pending read: a process) alive.
        if (this.#waiters.size === 0) this.#source?.disarm();
        resolve();
      };
      // The deadline only (it also keeps the event loop alive meanwhile): the wake
      // itself comes from the agent.
      const timer = after(ms, done);
      this.#waiters.add(done);
      this.#source?.arm();
    });
  }

  /**
   * Calls `fn` in the turn of every wake from now on (before the waiters are woken),
   * with no promise or timer in between; returns the function that stops it. Only where
   * events come with nobody waiting (the wake callback): `null` for the event descriptor,
   * which is read only while someone waits in {@linkcode changed}. A wake says only that
   * something may have happened: `fn` checks what (a notification queued, or none).
   *
   * @example
   * ```ts
   * import { AgentEvents } from "./events.ts";
   * declare const events: AgentEvents;
   * const stop = events.onWake(() => console.log("look at the notifications"));
   * stop?.();
   * ```
   */
  onWake(fn: () => void): (() => void) | null {
    if (!this.#live || this.#closed) return null;
    // A wrapper of its own, so that one function given twice is two listeners.
    const listener = () => fn();
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** Wakes every waiter now (an event, or an abort: nothing native happened). */
  poke(): void {
    this.#gen++;
    if (this.#listeners.size > 0) {
      for (const l of this.#listeners) {
        try {
          l();
        } catch {
          // A listener's failure is its own: the waiters are still woken.
        }
      }
    }
    this.#wakeWaiters();
  }

  /**
   * A waiter's own status poll saw its request end: the other waiters of this agent
   * re-check theirs (two waits on one request, or on requests that ended together). The
   * engine signals an end it sees itself, but the nixl engine's watcher leaves a request
   * whose end a caller's poll saw first unsignalled (that caller was told), so without
   * this a second waiter slept until its slice ran out (100 ms). Listeners are not
   * called: nothing native happened.
   *
   * @example
   * ```ts
   * import { AgentEvents } from "./events.ts";
   * declare const events: AgentEvents;
   * events.settled(); // after a poll returned something other than IN_PROG
   * ```
   */
  settled(): void {
    if (this.#waiters.size === 0) return;
    this.#gen++;
    this.#wakeWaiters();
  }

  #wakeWaiters(): void {
    // (A copy: a woken waiter leaves the set. None to copy on most wakes of a listener.)
    if (this.#waiters.size > 0) { for (const w of [...this.#waiters]) w(); }
  }

  /** @internal The source ended (end of file): waits return at once from now on. */
  end(): void {
    this.#ended = true;
  }

  /** Stops listening (and closes the descriptor, which Bun leaves open). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#listeners.clear();
    this.poke();
    await this.#source?.close();
  }
}

/** The event descriptor read as a stream, only while someone waits. */
class DescriptorSource implements EventSource {
  #fd: number;
  #stream: ReadableStream<Uint8Array>;
  #events: AgentEvents;
  /** Held only while a read is pending (a held reader with a pending read keeps Bun's
   * event loop, and so the process, alive). */
  #reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  #reading: Promise<void> | null = null;
  #releasing = false;
  #ended = false;
  #closed = false;

  constructor(fd: number, stream: ReadableStream<Uint8Array>, events: AgentEvents) {
    this.#fd = fd;
    this.#stream = stream;
    this.#events = events;
  }

  arm(): void {
    if (this.#reading || this.#ended || this.#closed) return;
    this.#reader ??= this.#stream.getReader();
    this.#reading = this.#reader.read().then(
      ({ done }) => {
        if (done) this.#end();
      },
      () => {
        // Given up by disarm (not the end), or the stream failed (the end).
        if (!this.#releasing) this.#end();
      },
    ).finally(() => {
      this.#releasing = false;
      this.#reading = null;
      this.#events.poke();
    });
  }

  #end(): void {
    this.#ended = true;
    this.#events.end();
  }

  /** Gives the reader up when a read is pending (woken by its deadline). */
  disarm(): void {
    if (this.#reading) this.#release();
  }

  #release(): void {
    if (!this.#reader) return;
    this.#releasing = true;
    this.#reader.releaseLock(); // rejects the pending read
    this.#reader = null;
  }

  async close(): Promise<void> {
    this.#closed = true;
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
