/**
 * Wake-ups from native threads (`kvp_event_notify`, ABI 4): ONE thread-safe callback
 * per loaded library (`Deno.UnsafeCallback.threadSafe` or Bun's threadsafe
 * `JSCallback`, made by the loader at the first watch and never keeping the event loop
 * alive), which each agent's notifier thread calls with the small id of its watch. The
 * table maps ids to the functions that wake that agent's waiters; an id whose watch
 * ended (a call still queued after the agent closed) is ignored.
 *
 * @example
 * ```ts
 * import { WakeTable } from "./wakes.ts";
 * const table = new WakeTable(() => 0); // the loader's kvp_event_notify call
 * const w = table.watch(1n, () => console.log("something finished"));
 * table.dispatch(1); // what the callback does for id 1
 * w.unwatch();
 * ```
 * @module
 */

import { NixlError, Status } from "../src/errors.ts";

/** A watch of one agent's events ({@linkcode EventWakes.watch}). */
export interface EventWatch {
  /** The status of `kvp_event_notify` (0: watching; the engine may have no notifier:
   * `NIXL_ERR_NOT_SUPPORTED`). */
  readonly status: number;
  /** Ends the watch: `wake` is not called any more (idempotent). */
  unwatch(): void;
}

/** Wake-ups of agents' waiters from native threads, as a loader provides them. */
export interface EventWakes {
  /**
   * Asks the shim to call `wake` on the JavaScript thread after each run of events of
   * `agent` (a request finished, a notification queued, the agent destroyed). Until
   * {@linkcode EventWatch.unwatch}; the native side stops at `kvp_agent_destroy`.
   */
  watch(agent: bigint, wake: () => void): EventWatch;
}

/**
 * The ids of the watches and their wake functions; `notify(agent, id)` is the loader's
 * `kvp_event_notify` call with its callback's pointer.
 *
 * @example
 * ```ts
 * import { WakeTable } from "./wakes.ts";
 * const table = new WakeTable((_agent, _id) => 0);
 * let woken = 0;
 * table.watch(7n, () => woken++);
 * table.dispatch(1n);
 * console.log(woken, table.size); // 1 1
 * ```
 */
export class WakeTable implements EventWakes {
  #next = 1;
  #wakes = new Map<number, { agent: bigint; wake: () => void }>();
  #notify: (agent: bigint, id: bigint) => number;
  #ack: ((agent: bigint) => void) | undefined;

  /** `ack(agent)`, where given, runs before each wake (`kvp_event_ack` of direct calls:
   * the next event calls again). */
  constructor(notify: (agent: bigint, id: bigint) => number, ack?: (agent: bigint) => void) {
    this.#notify = notify;
    this.#ack = ack;
  }

  /** Watches alive. */
  get size(): number {
    return this.#wakes.size;
  }

  /** Calls the wake function of watch `id` (what the native callback does). */
  dispatch(id: number | bigint): void {
    const w = this.#wakes.get(Number(id));
    if (!w) return;
    try {
      this.#ack?.(w.agent); // before the waiters check statuses: nothing is missed
      w.wake();
    } catch {
      // A wake only resolves promises; nothing may be thrown into the runtime's callback.
    }
  }

  watch(agent: bigint, wake: () => void): EventWatch {
    const id = this.#next++;
    this.#wakes.set(id, { agent, wake });
    const status = this.#notify(agent, BigInt(id));
    if (status !== 0) this.#wakes.delete(id);
    return { status, unwatch: () => this.#wakes.delete(id) };
  }
}

/** How long a library close waits for the notifier threads (each is at most one
 * callback away from its exit). */
export const QUIESCE_MS = 10_000;

/**
 * Throws when `kvp_event_quiesce` (status `st`) did not see every notifier thread leave
 * the wake callback: unloading the library then would crash the one still inside.
 *
 * @example
 * ```ts
 * import { assertQuiesced } from "./wakes.ts";
 * assertQuiesced(0); // NIXL_SUCCESS: nothing thrown
 * ```
 */
export function assertQuiesced(st: number): void {
  if (st === Status.SUCCESS) return;
  throw new NixlError(
    st,
    "kvp_event_quiesce",
    `a notifier thread did not leave the wake callback within ${QUIESCE_MS} ms; ` +
      "the library stays loaded",
  );
}

/** How long the process's exit waits for notifier threads to leave the callback (they
 * need microseconds, unless one is blocked in a call the event loop will not run any
 * more: then the exit goes on after this). */
export const EXIT_QUIESCE_MS = 200;
