/**
 * Pages of the staging buffer: handed out first come first served, waited for when all
 * are in use.
 *
 * @module
 */

import { after, type Timer } from "../deadline.ts";

/**
 * A counting allocator of page indexes with a FIFO of waiters.
 *
 * @example
 * ```ts
 * import { PagePool } from "./staging.ts";
 * const pool = new PagePool(4);
 * const pages = await pool.acquire(2);
 * pool.release(pages);
 * ```
 */
export class PagePool {
  #free: number[] = [];
  #waiters: { n: number; resolve: (p: number[]) => void; reject: (e: unknown) => void }[] = [];
  #count: number;
  #closed: Error | undefined;

  /** @param count number of pages */
  constructor(count: number) {
    this.#count = count;
    for (let i = count - 1; i >= 0; i--) this.#free.push(i);
  }

  /** Number of pages. */
  get count(): number {
    return this.#count;
  }

  /** Pages free now. */
  get available(): number {
    return this.#free.length;
  }

  /**
   * Takes `n` pages (n <= count), waiting for them when needed, at most `timeoutMs`
   * (then rejects with `onTimeout()`'s error).
   */
  acquire(n: number, timeoutMs?: number, onTimeout?: () => Error): Promise<number[]> {
    if (this.#closed) return Promise.reject(this.#closed);
    if (n > this.#count) {
      return Promise.reject(new RangeError(`${n} pages asked, the buffer has ${this.#count}`));
    }
    if (this.#waiters.length === 0 && this.#free.length >= n) {
      return Promise.resolve(this.#take(n));
    }
    return new Promise((resolve, reject) => {
      let timer: Timer | undefined;
      const w = {
        n,
        resolve: (p: number[]) => {
          timer?.clear();
          resolve(p);
        },
        reject: (e: unknown) => {
          timer?.clear();
          reject(e);
        },
      };
      this.#waiters.push(w);
      if (timeoutMs !== undefined) {
        timer = after(timeoutMs, () => {
          const i = this.#waiters.indexOf(w);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(onTimeout ? onTimeout() : new Error(`no ${n} free pages in ${timeoutMs} ms`));
          // a waiter behind this one may fit now
          this.release([]);
        });
      }
    });
  }

  /** Takes `n` pages now, or returns undefined. */
  tryAcquire(n: number): number[] | undefined {
    if (this.#closed || this.#waiters.length > 0 || this.#free.length < n) return undefined;
    return this.#take(n);
  }

  /** Returns pages. */
  release(pages: readonly number[]): void {
    for (const p of pages) this.#free.push(p);
    while (this.#waiters.length > 0 && this.#free.length >= this.#waiters[0].n) {
      const w = this.#waiters.shift()!;
      w.resolve(this.#take(w.n));
    }
  }

  /** Fails every waiter and every later acquire. */
  close(reason: Error): void {
    this.#closed = reason;
    for (const w of this.#waiters.splice(0)) w.reject(reason);
  }

  #take(n: number): number[] {
    return this.#free.splice(this.#free.length - n, n).reverse();
  }
}
