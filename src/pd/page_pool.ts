/**
 * A pool of page indexes with all-or-nothing allocation and bounded waiting.
 *
 * @module
 */

import { ChannelError, ChannelTimeoutError } from "../channel/errors.ts";

interface Waiter {
  count: number;
  resolve: (pages: number[]) => void;
  reject: (e: unknown) => void;
  timer?: ReturnType<typeof setTimeout>;
}

/**
 * Hands out page indexes `0..pageCount-1`. `allocate(n)` takes `n` pages at once or
 * waits (first come, first served) until `n` are free, at most `timeoutMs`: two
 * requests can never deadlock each holding part of what they need.
 *
 * @example
 * ```ts
 * import { PagePool } from "./page_pool.ts";
 *
 * const pool = new PagePool(4);
 * const pages = await pool.allocate(3, 1000);
 * console.log(pages, pool.free); // [0, 1, 2] 1
 * pool.release(pages);
 * ```
 */
export class PagePool {
  /** Number of pages managed. */
  readonly pageCount: number;
  #free: number[];
  #used: Uint8Array;
  #waiters: Waiter[] = [];
  #closed = false;

  /**
   * Creates a pool of `pageCount` free pages.
   *
   * @param pageCount number of pages (>= 0)
   */
  constructor(pageCount: number) {
    if (!Number.isInteger(pageCount) || pageCount < 0) {
      throw new RangeError(`pageCount must be an integer >= 0, got ${pageCount}`);
    }
    this.pageCount = pageCount;
    this.#free = [];
    for (let i = pageCount - 1; i >= 0; i--) this.#free.push(i);
    this.#used = new Uint8Array(pageCount);
  }

  /** Pages free now. */
  get free(): number {
    return this.#free.length;
  }

  /** Callers waiting for pages. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Takes `count` pages now, or returns `null` when fewer are free (or others wait). */
  tryAllocate(count: number): number[] | null {
    this.#check(count);
    if (this.#waiters.length > 0 || this.#free.length < count) return null;
    return this.#take(count);
  }

  /**
   * Takes `count` pages, waiting at most `timeoutMs` (Infinity: no limit) for enough to
   * be released. Rejects with a {@linkcode ChannelTimeoutError} (op `"allocate"`) when
   * the time runs out, or at once when `count` exceeds the pool.
   */
  allocate(count: number, timeoutMs?: number): Promise<number[]> {
    timeoutMs ??= Infinity;
    this.#check(count);
    const now = this.tryAllocate(count);
    if (now) return Promise.resolve(now);
    return new Promise<number[]>((resolve, reject) => {
      const waiter: Waiter = { count, resolve, reject };
      if (Number.isFinite(timeoutMs)) {
        waiter.timer = setTimeout(() => {
          const i = this.#waiters.indexOf(waiter);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(
            new ChannelTimeoutError("allocate", timeoutMs, {
              hint: `${count} page(s) wanted, ${this.#free.length} of ${this.pageCount} free`,
            }),
          );
          this.#drain();
        }, Math.max(0, timeoutMs));
      }
      this.#waiters.push(waiter);
    });
  }

  /** Returns pages to the pool; a page not allocated throws (double free). */
  release(pages: Iterable<number>): void {
    for (const p of pages) {
      if (!Number.isInteger(p) || p < 0 || p >= this.pageCount || this.#used[p] === 0) {
        throw new RangeError(`page ${p} is not allocated (double free or foreign index)`);
      }
      this.#used[p] = 0;
      this.#free.push(p);
    }
    this.#drain();
  }

  /** Whether `page` is allocated now. */
  isAllocated(page: number): boolean {
    return this.#used[page] === 1;
  }

  /** Rejects every waiter; later allocations fail. */
  close(): void {
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) {
      if (w.timer !== undefined) clearTimeout(w.timer);
      w.reject(new ChannelError("CLOSED", "page pool closed while waiting for pages"));
    }
  }

  #check(count: number): void {
    if (this.#closed) throw new ChannelError("CLOSED", "page pool is closed");
    if (!Number.isInteger(count) || count < 0) {
      throw new RangeError(`page count must be an integer >= 0, got ${count}`);
    }
    if (count > this.pageCount) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `${count} pages wanted but the buffer has only ${this.pageCount}: ` +
          "send smaller batches or give the buffer more pages",
      );
    }
  }

  #take(count: number): number[] {
    const out = this.#free.splice(this.#free.length - count, count).reverse();
    for (const p of out) this.#used[p] = 1;
    return out;
  }

  #drain(): void {
    while (this.#waiters.length > 0 && this.#free.length >= this.#waiters[0].count) {
      const w = this.#waiters.shift()!;
      if (w.timer !== undefined) clearTimeout(w.timer);
      w.resolve(this.#take(w.count));
    }
  }
}
