/**
 * A PD sender's page credits at one receiver (kvport to kvport only, see
 * `credit_book.ts` for the receiver's side): receiver pages it may WRITE with no
 * AllocRequest, in lots as the replies gave them. A lot is usable while its expiry,
 * measured from when the request that got it was SENT (the receiver's clock starts
 * later, so it can only be later there), is more than one transfer timeout and a margin
 * away: a WRITE begun then ends (or fails) before the receiver takes the pages back.
 * A lot also remembers the chunk form (fmt, shape, dtype) of the request that got it:
 * only batches of that form use it (the receiver checked that form fits its pages).
 * Credits it stops using (stale, the link was reset, too few for a batch) are remembered,
 * to be given back with the next request to that receiver (`kvport_credit_return`): the
 * receiver never takes a credit back by itself before its expiry, since only the sender
 * knows it no longer writes there. What is given back was never written: a page taken
 * for a batch leaves the stock, and comes back only if its batch never ran.
 *
 * @module
 */

import { LastForm } from "./last_form.ts";

/** Most pages remembered to give back (a list field of a message holds 1024 at most;
 * beyond, the receiver's expiry ends them). */
const MAX_DROPPED = 1024;

/** One lot of credits, from one reply. */
interface Lot {
  pages: number[];
  /** `performance.now()` after which the lot is no longer used. */
  usableUntil: number;
  /** The chunk form it was given for. */
  form: string;
}

// The last form made: the requests of one model share one form, which is then not built
// again per request (nor compared character by character with the lots' forms: it is the
// same string).
const lastForm = new LastForm<string>();

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
  return lastForm.get(fmt, shape, dtype) ??
    lastForm.keep(fmt, shape, dtype, `${fmt}|${shape.join(",")}|${dtype}`);
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
  #dropped: number[] = [];

  /**
   * Adds a lot usable until `usableUntil` (a `performance.now()` time). A page given
   * again is the receiver's new credit: an older lot's copy of it, or a give-back of it
   * not sent yet, is obsolete (giving it back now would end the new one).
   */
  add(pages: readonly number[], form: string, usableUntil: number): void {
    const fresh = [...new Set(pages)];
    if (fresh.length === 0) return;
    const again = new Set(fresh);
    for (const l of this.#lots) l.pages = l.pages.filter((p) => !again.has(p));
    this.#lots = this.#lots.filter((l) => l.pages.length > 0);
    this.#dropped = this.#dropped.filter((p) => !again.has(p));
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
    let emptied = false;
    for (const l of this.#lots) {
      if (l.form !== form) continue;
      const k = Math.min(n - pages.length, l.pages.length);
      for (let i = 0; i < k; i++) pages.push(l.pages[i]);
      l.pages = k === l.pages.length ? [] : l.pages.slice(k);
      emptied ||= l.pages.length === 0;
      usableUntil = Math.min(usableUntil, l.usableUntil);
      if (pages.length === n) break;
    }
    if (emptied) this.#lots = this.#lots.filter((l) => l.pages.length > 0);
    return { pages, usableUntil };
  }

  /** Gives back pages taken but not written (their batch never ran), as usable as before. */
  putBack(pages: readonly number[], form: string, usableUntil: number): void {
    if (pages.length === 0) return;
    this.#lots.push({ pages: [...pages], usableUntil, form });
    this.#lots.sort((a, b) => a.usableUntil - b.usableUntil);
  }

  /** Stops using every credit (the link was reset): they are to be given back. */
  clear(): void {
    for (const l of this.#lots) this.#drop(l.pages);
    this.#lots = [];
  }

  /** Pages no longer used, to tell the receiver (then forgotten here). */
  takeDropped(): number[] {
    const out = this.#dropped;
    this.#dropped = [];
    return out;
  }

  /** Pages to give back. */
  get dropped(): number {
    return this.#dropped.length;
  }

  #drop(pages: readonly number[]): void {
    this.#dropped.push(...pages);
    if (this.#dropped.length > MAX_DROPPED) {
      this.#dropped.splice(0, this.#dropped.length - MAX_DROPPED);
    }
  }

  #prune(now: number): void {
    if (this.#lots.length > 0 && this.#lots[0].usableUntil <= now) {
      for (const l of this.#lots) if (l.usableUntil <= now) this.#drop(l.pages);
      this.#lots = this.#lots.filter((l) => l.usableUntil > now);
    }
  }
}
