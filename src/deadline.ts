/**
 * Deadlines: every timer of the library goes through here. `setTimeout` takes a signed
 * 32-bit delay, so any delay above 2^31-1 ms (about 24.8 days) fires at once in every
 * runtime; a configured timeout of "30 days" would then time out immediately. These
 * helpers re-arm long delays in steps, treat `Infinity` as "never", and give every
 * deadline an `AbortSignal` where a caller wants one.
 *
 * @example
 * ```ts
 * import { after, deadlineSignal, sleep } from "./deadline.ts";
 *
 * const t = after(2 ** 31 + 5, () => console.log("in about 24.8 days"));
 * t.clear();
 * await sleep(1);
 * using d = deadlineSignal(50);
 * console.log(d.signal.aborted); // false
 * ```
 *
 * @module
 */

/** The longest delay `setTimeout` honours (2^31-1 ms); above it a timer fires at once. */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

/**
 * A delay clamped into what a timer or a native wait can take: `0..2^31-1` ms (NaN and
 * negative become 0, `Infinity` and anything larger become 2^31-1).
 *
 * @example
 * ```ts
 * import { clampDelay } from "./deadline.ts";
 * console.log(clampDelay(2 ** 40), clampDelay(-5)); // 2147483647 0
 * ```
 */
export function clampDelay(ms: number): number {
  if (!(ms > 0)) return 0;
  return ms > MAX_TIMER_DELAY_MS ? MAX_TIMER_DELAY_MS : ms;
}

/** A pending timer of {@linkcode after}. */
export interface Timer extends Disposable {
  /** Cancels the timer; idempotent, harmless after it fired. */
  clear(): void;
  /** Whether the callback has run. */
  readonly fired: boolean;
}

/** Options of {@linkcode after}. */
export interface AfterOptions {
  /**
   * Whether the timer may keep the process alive (default `true`, like `setTimeout`);
   * `false` unrefs it, like `AbortSignal.timeout`.
   */
  ref?: boolean;
}

type Handle = ReturnType<typeof setTimeout>;

function unref(h: Handle): void {
  const deno = (globalThis as { Deno?: { unrefTimer?: (id: number) => void } }).Deno;
  if (typeof h === "number" && deno?.unrefTimer) deno.unrefTimer(h);
  else (h as { unref?: () => void }).unref?.();
}

interface SharedEntry {
  end: number;
  fn: () => void;
  fired: boolean;
  done: boolean;
}

/**
 * Deadlines that share one timer (see {@linkcode afterShared}). A request's deadline is
 * almost never reached: the reply comes in microseconds, the deadline is seconds away.
 * Under Deno a `setTimeout` armed and cleared for every request costs about as much as the rest
 * of the request's JavaScript: an in-process REQ/REP round trip took 71-75 us with one,
 * 62-66 us with this class, 46-55 us with no deadline at all (2-core machine, interleaved
 * runs; Bun 32-33 us either way). The timer is armed for the earliest deadline and left armed
 * when deadlines are cleared: a later deadline never re-arms it, and when it fires it runs
 * what expired and re-arms for the next one. {@linkcode SharedDeadlines.idle} disarms it
 * when nothing is pending (the sockets call it when they close), so it does not keep a
 * process alive after its sockets closed.
 *
 * @example
 * ```ts
 * import { SharedDeadlines } from "./deadline.ts";
 * const deadlines = new SharedDeadlines();
 * const t = deadlines.add(5000, () => console.log("no reply in 5 s"));
 * t.clear(); // the reply came: nothing fires
 * deadlines.idle(); // nothing pending: the timer is gone
 * ```
 */
export class SharedDeadlines {
  #entries = new Set<SharedEntry>();
  #handle: Handle | undefined;
  /** `performance.now()` the armed timer fires at (Infinity: none armed). */
  #armedAt = Infinity;

  /** Runs `fn` once `ms` milliseconds have passed, unless the returned timer is cleared. */
  add(ms: number, fn: () => void): Timer {
    const entry: SharedEntry = {
      end: performance.now() + Math.max(0, ms),
      fn,
      fired: false,
      done: false,
    };
    this.#entries.add(entry);
    if (entry.end < this.#armedAt) this.#arm(entry.end);
    const clear = () => {
      if (entry.done) return;
      entry.done = true;
      this.#entries.delete(entry);
    };
    return {
      clear,
      get fired() {
        return entry.fired;
      },
      [Symbol.dispose]: clear,
    };
  }

  #arm(end: number): void {
    if (this.#handle !== undefined) clearTimeout(this.#handle);
    this.#armedAt = end;
    this.#handle = setTimeout(() => this.#tick(), clampDelay(Math.ceil(end - performance.now())));
  }

  /** Disarms the timer when no deadline is pending (a socket closed: let the process end). */
  idle(): void {
    if (this.#entries.size > 0 || this.#handle === undefined) return;
    clearTimeout(this.#handle);
    this.#handle = undefined;
    this.#armedAt = Infinity;
  }

  #tick(): void {
    this.#handle = undefined;
    this.#armedAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    const due: SharedEntry[] = [];
    for (const e of this.#entries) {
      // Timers may fire a fraction of a millisecond early: that counts as reached.
      if (e.end - now < 1) due.push(e);
      else if (e.end < next) next = e.end;
    }
    for (const e of due) {
      this.#entries.delete(e);
      e.done = true;
      e.fired = true;
    }
    if (next !== Infinity) this.#arm(next);
    for (const e of due) e.fn();
  }
}

const shared = new SharedDeadlines();

/**
 * Disarms the timer of {@linkcode afterShared} if no deadline is pending: the sockets call
 * it when they close, so that a process that closed them can exit at once.
 *
 * @example
 * ```ts
 * import { afterShared, sharedDeadlinesIdle } from "./deadline.ts";
 * afterShared(10_000, () => {}).clear();
 * sharedDeadlinesIdle(); // nothing pending: the timer is gone
 * ```
 */
export function sharedDeadlinesIdle(): void {
  shared.idle();
}

/**
 * Like {@linkcode after}, for deadlines that are usually cleared long before they are
 * reached (a request's reply timeout): all share one timer ({@linkcode SharedDeadlines}),
 * so arming and clearing one costs no timer of its own. `fn` runs once `ms` have passed
 * (as with `after`, a timer a fraction of a millisecond early counts); `Infinity` or NaN
 * never fires. The shared timer may stay armed after its deadlines were cleared, until
 * it fires or {@linkcode sharedDeadlinesIdle} (a wire socket's close) disarms it.
 *
 * @example
 * ```ts
 * import { afterShared } from "./deadline.ts";
 * const t = afterShared(30_000, () => console.log("no reply in 30 s"));
 * // ... the reply came:
 * t.clear();
 * console.log(t.fired); // false
 * ```
 */
export function afterShared(ms: number, fn: () => void): Timer {
  if (!(ms < Infinity)) {
    return { clear: () => {}, fired: false, [Symbol.dispose]: () => {} };
  }
  return shared.add(ms, fn);
}

/**
 * Runs `fn` once after `ms` milliseconds. Unlike `setTimeout`, a delay above 2^31-1 ms
 * waits that long (the timer re-arms in steps) and `Infinity` never fires; NaN or a
 * negative delay fires on the next timer turn.
 *
 * @example
 * ```ts
 * import { after } from "./deadline.ts";
 * const t = after(30 * 86_400_000, () => console.log("30 days later"));
 * console.log(t.fired); // false
 * t.clear();
 * ```
 */
export function after(ms: number, fn: () => void, options: AfterOptions = {}): Timer {
  let handle: Handle | undefined;
  let fired = false;
  let cleared = false;
  const end = Number.isFinite(ms) ? performance.now() + Math.max(0, ms) : Infinity;
  const arm = (delay: number) => {
    handle = setTimeout(tick, delay);
    if (options.ref === false) unref(handle);
  };
  const tick = () => {
    handle = undefined;
    if (cleared) return;
    const left = end - performance.now();
    if (left > MAX_TIMER_DELAY_MS) return arm(MAX_TIMER_DELAY_MS);
    // Timers may fire a fraction of a millisecond early: wait out the rest.
    if (left >= 1) return arm(Math.ceil(left));
    fired = true;
    fn();
  };
  if (end !== Infinity) arm(clampDelay(ms));
  const clear = () => {
    cleared = true;
    if (handle !== undefined) clearTimeout(handle);
    handle = undefined;
  };
  return {
    clear,
    get fired() {
      return fired;
    },
    [Symbol.dispose]: clear,
  };
}

/**
 * Resolves after `ms` milliseconds (any length, see {@linkcode after}); rejects with the
 * signal's reason when `signal` aborts first.
 *
 * @example
 * ```ts
 * import { sleep } from "./deadline.ts";
 * await sleep(5);
 * ```
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => {
      t.clear();
      reject(signal!.reason);
    };
    const t = after(ms, () => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    });
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** An `AbortSignal` that aborts at a deadline; see {@linkcode deadlineSignal}. */
export interface DeadlineSignal extends Disposable {
  /** Aborts when the deadline passes (reason: a `DOMException` named `TimeoutError`). */
  readonly signal: AbortSignal;
  /** Milliseconds left before it aborts (0 once aborted, `Infinity` for no deadline). */
  readonly left: number;
  /** Stops the timer without aborting; idempotent. */
  clear(): void;
}

/**
 * `AbortSignal.timeout` without its 2^31-1 ms limit: a signal that aborts after `ms`
 * (`Infinity`: never). Its timer does not keep the process alive; `clear()` (or `using`)
 * stops it.
 *
 * @example
 * ```ts
 * import { deadlineSignal } from "./deadline.ts";
 * using d = deadlineSignal(2 ** 32);
 * const res = await fetch("data:,ok", { signal: d.signal });
 * console.log(await res.text()); // ok
 * ```
 */
export function deadlineSignal(ms: number): DeadlineSignal {
  const ctl = new AbortController();
  const end = Number.isFinite(ms) ? performance.now() + Math.max(0, ms) : Infinity;
  const t = after(ms, () => {
    ctl.abort(new DOMException(`timed out after ${ms} ms`, "TimeoutError"));
  }, { ref: false });
  return {
    signal: ctl.signal,
    get left() {
      return ctl.signal.aborted ? 0 : Math.max(0, end - performance.now());
    },
    clear: () => t.clear(),
    [Symbol.dispose]: () => t.clear(),
  };
}

/**
 * Runs `fn` every `ms` milliseconds until cleared: `setInterval` without its 2^31-1 ms
 * limit (`Infinity`: never). A run starts its next wait only after it returned.
 *
 * @example
 * ```ts
 * import { every } from "./deadline.ts";
 * let n = 0;
 * const t = every(10, () => n++);
 * t.clear();
 * ```
 */
export function every(ms: number, fn: () => void, options: AfterOptions = {}): Timer {
  let current: Timer | undefined;
  let cleared = false;
  let runs = 0;
  const arm = () => {
    current = after(ms, () => {
      runs++;
      try {
        fn();
      } finally {
        if (!cleared) arm();
      }
    }, options);
  };
  arm();
  const clear = () => {
    cleared = true;
    current?.clear();
  };
  return {
    clear,
    get fired() {
      return runs > 0;
    },
    [Symbol.dispose]: clear,
  };
}
