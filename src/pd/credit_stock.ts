/**
 * A PD sender's page credits at one receiver (kvport to kvport only, see
 * `credit_book.ts` for the receiver's side): receiver pages it may WRITE with no
 * AllocRequest, in lots as the replies gave them. A lot is usable while its expiry,
 * measured from when the request that got it was SENT (the receiver's clock starts
 * later, so it can only be later there), is more than one transfer timeout and a margin
 * away: a WRITE begun then ends (or fails) before the receiver takes the pages back.
 * A lot also remembers the chunk form (fmt, shape, dtype) of the request that got it:
 * only batches of that form use it (the receiver checked that form fits its pages).
 *
 * @module
 */

/** One lot of credits, from one reply. */
interface Lot {
  pages: number[];
  /** `performance.now()` after which the lot is no longer used. */
  usableUntil: number;
  /** The chunk form it was given for. */
  form: string;
}

/**
 * The chunk form of a batch, as a string: credits are used only by batches of the form
 * they were given for.
 *
 * @example
 * ```ts
 * import { chunkForm } from "./credit_stock.ts";
 * console.log(chunkForm(1, [2, 1, 256, 64], "bfloat16")); // 1|2,1,256,64|bfloat16
 * ```
 */
export function chunkForm(fmt: number, shape: readonly number[], dtype: string): string {
  return `${fmt}|${shape.join(",")}|${dtype}`;
}

/**
 * Credits of one link (see the module doc).
 *
 * @example
 * ```ts
 * import { CreditStock } from "./credit_stock.ts";
 * const stock = new CreditStock();
 * stock.add([4, 5, 6], "1|2,1,256,64|bfloat16", performance.now() + 60_000);
 * console.log(stock.take(2, "1|2,1,256,64|bfloat16")?.pages, stock.count()); // [4, 5] 1
 * ```
 */
export class CreditStock {
  #lots: Lot[] = [];

  /** Adds a lot usable until `usableUntil` (a `performance.now()` time). Pages already
   * held are not added twice. */
  add(pages: readonly number[], form: string, usableUntil: number): void {
    const held = new Set(this.#lots.flatMap((l) => l.pages));
    const fresh = [...new Set(pages)].filter((p) => !held.has(p));
    if (fresh.length === 0) return;
    this.#lots.push({ pages: fresh, usableUntil, form });
    // Soonest to expire first: they are used before they go stale.
    this.#lots.sort((a, b) => a.usableUntil - b.usableUntil);
  }

  /** Usable pages now (of `form`, or of any). Stale lots are dropped. */
  count(form?: string, now: number = performance.now()): number {
    this.#prune(now);
    let n = 0;
    for (const l of this.#lots) if (form === undefined || l.form === form) n += l.pages.length;
    return n;
  }

  /**
   * Takes `n` pages of `form`, soonest to expire first, or returns `null` (taking
   * nothing) when fewer are usable.
   */
  take(
    n: number,
    form: string,
    now: number = performance.now(),
  ): { pages: number[]; usableUntil: number } | null {
    if (n <= 0 || this.count(form, now) < n) return null;
    const pages: number[] = [];
    let usableUntil = Infinity;
    for (const l of this.#lots) {
      if (l.form !== form) continue;
      const k = Math.min(n - pages.length, l.pages.length);
      pages.push(...l.pages.splice(0, k));
      usableUntil = Math.min(usableUntil, l.usableUntil);
      if (pages.length === n) break;
    }
    this.#lots = this.#lots.filter((l) => l.pages.length > 0);
    return { pages, usableUntil };
  }

  /** Gives back pages taken but not written (their batch never ran), as usable as before. */
  putBack(pages: readonly number[], form: string, usableUntil: number): void {
    this.add(pages, form, usableUntil);
  }

  /** Forgets every credit (the link was reset: the receiver ends them itself). */
  clear(): void {
    this.#lots = [];
  }

  #prune(now: number): void {
    if (this.#lots.length > 0 && this.#lots[0].usableUntil <= now) {
      this.#lots = this.#lots.filter((l) => l.usableUntil > now);
    }
  }
}
