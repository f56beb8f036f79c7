/**
 * The PD receiver's page credits (kvport to kvport only): free pages handed to a named
 * sender agent ahead of its requests, so that a request of that sender needs no
 * AllocRequest round trip (it WRITEs into them and binds them to keys with a
 * notification, see `bind_notify.ts`).
 *
 * - Taken only from pages free now (`tryAcquire`): a credit never makes a real request
 *   wait, and none is given while requests wait for pages.
 * - Bounded: per agent `maxPerAgent` pages, all agents together `maxTotal`; a peer
 *   cannot grow either.
 * - Each lot of credits is one lease owned by the agent, handed to it (its expiry puts
 *   the pages in quarantine, as for any page a peer may still be writing), with a
 *   lifetime; each page granted WRITE to that agent alone, one grant per page.
 * - Never taken back early while the agent may use it: a credit ends when it is bound,
 *   expires (then through the quarantine), or the agent itself gives it back
 *   (`kvport_credit_return`: credits it never wrote and no longer uses, free at once).
 *   Forgetting the agent's peer entry does not end them: a sender that does not know
 *   could still WRITE them, and its bind would then be refused after its send had
 *   succeeded (data lost without an error).
 *
 * @module
 */

import { errorMessage } from "../channel/_util.ts";
import type { PageGrantBook } from "../channel/grants.ts";
import type { LeasePool, PageLease } from "../channel/lease_pool.ts";

/** Most credits in one reply (a list field of a message holds 1024 entries at most). */
const MAX_PER_REPLY = 1024;

/** One credit page: whose it is and the lease it sits in. */
interface Credit {
  agent: string;
  lease: PageLease;
}

/** Limits of a {@linkcode CreditBook}. */
export interface CreditLimits {
  /** Most credit pages one agent holds at once. */
  maxPerAgent: number;
  /** Most credit pages all agents hold together. */
  maxTotal: number;
}

/**
 * The credits of one PD receiver (see the module doc).
 *
 * @example
 * ```ts
 * import { CreditBook } from "./credit_book.ts";
 * import { LeasePool } from "../channel/lease_pool.ts";
 * import { PageGrantBook } from "../channel/grants.ts";
 * import type { TransferChannel } from "../channel/types.ts";
 * declare const channel: TransferChannel;
 *
 * const pool = new LeasePool(64);
 * const book = new CreditBook(pool, new PageGrantBook(channel), { maxPerAgent: 16, maxTotal: 16 });
 * const pages = await book.give("kvport-sender-1", 8, 60_000);
 * console.log(pages.length, book.held("kvport-sender-1")); // 8 8
 * ```
 */
export class CreditBook {
  readonly #pool: LeasePool;
  readonly #grants: PageGrantBook;
  readonly #limits: CreditLimits;
  readonly #byPage = new Map<number, Credit>();
  readonly #perAgent = new Map<string, number>();
  #given = 0;
  #expired = 0;
  #lastError: string | null = null;

  /** A book over `pool`'s pages, granting through `grants`. */
  constructor(pool: LeasePool, grants: PageGrantBook, limits: CreditLimits) {
    this.#pool = pool;
    this.#grants = grants;
    this.#limits = limits;
  }

  /** The limits. */
  get limits(): CreditLimits {
    return this.#limits;
  }

  /** Credit pages held now by `agent`, or by every agent. */
  held(agent?: string): number {
    return agent === undefined ? this.#byPage.size : this.#perAgent.get(agent) ?? 0;
  }

  /** Credit pages given so far, and those that expired unused. */
  get counts(): { given: number; expired: number } {
    return { given: this.#given, expired: this.#expired };
  }

  /** Why the last `give` gave nothing it was asked for (a grant that failed), or `null`. */
  get lastError(): string | null {
    return this.#lastError;
  }

  /** Whether `page` is a live credit of `agent`. */
  isCreditOf(page: number, agent: string): boolean {
    const c = this.#byPage.get(page);
    // (The pool knows the lease of each page: no search of the lot's pages.)
    return c !== undefined && c.agent === agent && c.lease.state === "held" &&
      this.#pool.leaseOf(page) === c.lease;
  }

  /**
   * Gives `agent` up to `want` credit pages for `ttlMs`, within the limits and only from
   * pages free now; resolves to the pages (granted WRITE to `agent` when grants are
   * enforced), possibly none. Never rejects: a grant that fails gives nothing.
   */
  async give(agent: string, want: number, ttlMs: number): Promise<number[]> {
    const room = Math.min(
      want,
      MAX_PER_REPLY,
      this.#limits.maxPerAgent - this.held(agent),
      this.#limits.maxTotal - this.held(),
      this.#pool.free,
    );
    if (!(room > 0) || this.#pool.closed) return [];
    const lease = this.#pool.tryAcquire(room, {
      owner: `credits of ${agent}`,
      ttlMs,
      onExpire: (_l, pages) => this.#expire(pages),
    });
    if (!lease) return [];
    // Handed to the agent: should the lease expire, its pages sit out the quarantine.
    lease.handTo(agent);
    const pages = [...lease.pages];
    for (const p of pages) this.#byPage.set(p, { agent, lease });
    this.#perAgent.set(agent, this.held(agent) + pages.length);
    try {
      await this.#grants.grantWriteEach(agent, pages, ttlMs);
    } catch (e) {
      this.#lastError = `granting agent ${agent} WRITE on ${pages.length} credit page(s) ` +
        `failed: ${errorMessage(e)}`;
      this.#forget(pages);
      if (lease.state === "held") lease.release();
      return [];
    }
    // The agent may have started over (or the lease expired) while the grants were made.
    const live = pages.filter((p) => this.isCreditOf(p, agent));
    if (live.length < pages.length) return [];
    this.#given += pages.length;
    return pages;
  }

  /**
   * Takes `page` out of the credits of its agent (it is being bound): returns the lease
   * it sits in, for the caller to move or release the page. Call after
   * {@linkcode isCreditOf}.
   */
  take(page: number): PageLease {
    const c = this.#byPage.get(page)!;
    this.#forgetOne(page);
    return c.lease;
  }

  /**
   * Ends the credits among `pages` that are `agent`'s (it gave them back: pages it never
   * wrote and no longer uses; other pages are ignored): their grants are revoked (before
   * anyone can be granted them again: the grant book runs in call order) and they are
   * free at once, e.g. for the AllocRequest that gave them back. Returns how many pages
   * that was.
   */
  giveBack(agent: string, pages: Iterable<number>): number {
    const mine: [number, Credit][] = [];
    for (const p of new Set(pages)) {
      if (this.isCreditOf(p, agent)) mine.push([p, this.#byPage.get(p)!]);
    }
    if (mine.length === 0) return 0;
    const list = mine.map(([p]) => p);
    this.#forget(list);
    void this.#grants.release(list);
    for (const [p, c] of mine) c.lease.release({ pages: [p] });
    return list.length;
  }

  /** Forgets every credit (the pool and the channel are closing). */
  close(): void {
    this.#byPage.clear();
    this.#perAgent.clear();
  }

  #expire(pages: readonly number[]): void {
    // The pool put them in quarantine; the grants go too.
    const ours = pages.filter((p) => this.#byPage.has(p));
    this.#forget(ours);
    this.#expired += ours.length;
    void this.#grants.release(ours);
  }

  #forget(pages: readonly number[]): void {
    for (const p of pages) this.#forgetOne(p);
  }

  #forgetOne(p: number): void {
    const c = this.#byPage.get(p);
    if (!c) return;
    this.#byPage.delete(p);
    const n = (this.#perAgent.get(c.agent) ?? 1) - 1;
    if (n > 0) this.#perAgent.set(c.agent, n);
    else this.#perAgent.delete(c.agent);
  }
}
