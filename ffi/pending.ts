/**
 * Book-keeping of nonblocking native calls, so that a library is closed only after every
 * one of them has returned (closing under a running call crashes the process).
 *
 * @example
 * ```ts
 * import { PendingCalls } from "./pending.ts";
 * const pending = new PendingCalls();
 * const slow = pending.track(() => new Promise<number>((r) => setTimeout(() => r(0), 5)));
 * await slow();
 * await pending.drained();
 * ```
 * @module
 */

/** Counts calls in flight and resolves {@linkcode PendingCalls.drained} at zero. */
export class PendingCalls {
  #count = 0;
  #waiters: (() => void)[] = [];

  /** Calls in flight. */
  get count(): number {
    return this.#count;
  }

  /** Wraps an async function so that its calls are counted until they settle. */
  track<A extends unknown[], R>(fn: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
    return (...args: A): Promise<R> => {
      this.#count++;
      let promise: Promise<R>;
      try {
        promise = fn(...args);
      } catch (e) {
        this.#done();
        throw e;
      }
      return promise.finally(() => this.#done());
    };
  }

  /** Resolves once no call is in flight. */
  drained(): Promise<void> {
    if (this.#count === 0) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #done(): void {
    if (--this.#count === 0) {
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const w of waiters) w();
    }
  }
}
