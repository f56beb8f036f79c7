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
