/**
 * Internal helpers of the channel and PD layers: a serial queue, deadlines, small
 * utilities. Not part of the public surface.
 *
 * @module
 */

/** Message of an error value, whatever was thrown. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * A first-in first-out async mutex: `run(fn)` starts `fn` only after every earlier
 * `run` has settled, so the resource it guards is never touched by two callers at once.
 * Channels serialize every use of their agent with one.
 *
 * @example
 * ```ts
 * import { SerialQueue } from "./_util.ts";
 *
 * const q = new SerialQueue();
 * const order: number[] = [];
 * await Promise.all([
 *   q.run(async () => { await new Promise((r) => setTimeout(r, 10)); order.push(1); }),
 *   q.run(() => { order.push(2); }),
 * ]);
 * console.log(order); // [1, 2]
 * ```
 */
export class SerialQueue {
  // The task later ones wait for; none until a first task (a queue is made per PD
  // request: most run one task with runNow and never need a resolved promise).
  #tail: Promise<unknown> | null = null;
  #pending = 0;

  /** Number of tasks queued or running. */
  get pending(): number {
    return this.#pending;
  }

  /** Runs `fn` after every earlier task has settled; resolves to its result. */
  run<T>(fn: () => T | Promise<T>): Promise<T> {
    this.#pending++;
    return this.#track((this.#tail ?? Promise.resolve()).then(fn));
  }

  /**
   * Runs `fn` in this turn when nothing is queued or running (else as {@linkcode run}):
   * the same order, without the promise turns a queued task waits for. Later tasks wait
   * for it as for any; a synchronous throw of `fn` rejects the returned promise.
   *
   * @example
   * ```ts
   * import { SerialQueue } from "./_util.ts";
   * const q = new SerialQueue();
   * let ran = false;
   * const done = q.runNow(async () => { ran = true; });
   * console.log(ran); // true: it started in this turn
   * await done;
   * ```
   */
  runNow<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#pending !== 0) return this.run(fn);
    this.#pending++;
    let result: Promise<T>;
    try {
      result = fn();
    } catch (e) {
      result = Promise.reject(e);
    }
    return this.#track(result);
  }

  /** Makes `result` the task later ones wait for; counted pending until it settles. */
  #track<T>(result: Promise<T>): Promise<T> {
    const done = () => {
      this.#pending--;
    };
    this.#tail = result.then(done, done);
    return result;
  }

  /** Resolves once every task queued so far has settled. */
  idle(): Promise<void> {
    return (this.#tail ?? Promise.resolve()).then(() => undefined);
  }
}

/** Most entries {@linkcode distinct} compares pairwise; a set is cheaper beyond. */
const PAIRWISE_MAX = 32;

/**
 * Whether the entries of `xs` are distinct by `===` (as a set counts them, but for NaN,
 * which a set counts once): a pairwise pass for a few entries (no set built: a batch of
 * keys is checked once per request), a set beyond.
 *
 * @example
 * ```ts
 * import { distinct } from "./_util.ts";
 * console.log(distinct(["a", "b"]), distinct([3, 4, 3])); // true false
 * ```
 */
export function distinct(xs: readonly unknown[]): boolean {
  const n = xs.length;
  if (n > PAIRWISE_MAX) return new Set(xs).size === n;
  for (let i = 1; i < n; i++) {
    const x = xs[i];
    for (let j = 0; j < i; j++) if (xs[j] === x) return false;
  }
  return true;
}

/** Formats a host and port as `host:port` (IPv6 hosts in brackets). */
export function joinHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
