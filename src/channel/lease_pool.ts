/**
 * Page leases: one owner for every page of a channel's buffer. A page is free, held by
 * exactly one {@linkcode PageLease} (owner: a request, a chunk key, a peer), or in
 * quarantine: released while a transfer into it may still be in flight (a cancelled
 * WRITE can still land: control and data planes are separate connections), so nobody
 * gets it until the quarantine ends. A lease may carry a deadline; when it passes, the
 * pages come back by themselves. The PD receiver, the PD sender's staging pages, the
 * P2P requester's fetch pages and the P2P holder's chunks all take their pages here.
 *
 * @example
 * ```ts
 * import { LeasePool } from "./lease_pool.ts";
 *
 * const pool = new LeasePool(4, { quarantineMs: 100 });
 * const lease = await pool.acquire(3, { owner: "req-1", timeoutMs: 1000 });
 * lease.handTo("decoder-0"); // a peer may now write into these pages
 * lease.release({ inFlight: true }); // a WRITE may still land: quarantine
 * console.log(pool.free, pool.quarantined); // 1 3
 * pool.close();
 * ```
 *
 * @module
 */

import { ChannelError, ChannelTimeoutError } from "./errors.ts";
import { after, type Timer } from "../deadline.ts";

/** Where a lease stands: holding pages, released (all of them), expired, or closed. */
export type LeaseState = "held" | "released" | "expired" | "closed";

/** Why pages left a lease, in a {@linkcode LeaseReleaseEvent}. */
export type LeaseReleaseReason = "released" | "expired" | "moved" | "closed";

/** Pages that left a lease, told to {@linkcode LeaseHooks.onRelease}. */
export interface LeaseReleaseEvent {
  /** The lease they left. */
  readonly lease: PageLease;
  /** The pages. */
  readonly pages: readonly number[];
  /** The peer they were handed to (`undefined`: never handed to one). */
  readonly peer: string | undefined;
  /** Why they left. */
  readonly reason: LeaseReleaseReason;
  /** How long they stay in quarantine before anyone can have them again (0: free now). */
  readonly quarantineMs: number;
}

/**
 * Callbacks of a {@linkcode LeasePool}, for code that must follow pages handed to peers
 * (e.g. granting a peer access to exactly those pages and revoking it again).
 * `onGrant` may throw: {@linkcode PageLease.handTo} then throws and the lease is not
 * handed over. Errors of `onRelease` and `onFree` are ignored: a release never fails.
 */
export interface LeaseHooks {
  /** Pages of `lease` were handed to `peer`: it may now transfer into or out of them. */
  onGrant?(lease: PageLease, pages: readonly number[], peer: string): void;
  /** Pages left a lease (released, expired, moved to another lease, pool closed). */
  onRelease?(event: LeaseReleaseEvent): void;
  /** Pages became free (at release, or when their quarantine ended). */
  onFree?(pages: readonly number[]): void;
}

/** Options of {@linkcode LeasePool}. */
export interface LeasePoolOptions {
  /**
   * How long released pages that may still receive a transfer stay in quarantine, ms
   * (default 30000: the default transfer timeout). Used by `release({ inFlight: true })`
   * and by the expiry of a lease handed to a peer.
   */
  quarantineMs?: number;
  /** Callers that may wait for pages at once (default 1024); more are refused at once. */
  maxWaiters?: number;
  /** Hooks attached from the start (more with {@linkcode LeasePool.addHooks}). */
  hooks?: LeaseHooks;
}

/** Options of {@linkcode LeasePool.tryAcquire} and {@linkcode LeasePool.acquire}. */
export interface LeaseOptions {
  /** Who holds the pages: a request id, a chunk key, a peer. Named in errors. */
  owner: string;
  /** Lifetime of the lease, ms (default `Infinity`): at its end the pages come back. */
  ttlMs?: number;
  /** Called when the lease expired (its pages already returned). */
  onExpire?: (lease: PageLease, pages: readonly number[]) => void;
}

/** Options of {@linkcode LeasePool.acquire}. */
export interface LeaseAcquireOptions extends LeaseOptions {
  /** Longest wait for enough free pages, ms (default `Infinity`). */
  timeoutMs?: number;
  /** Aborting it stops the wait (rejecting with its reason). */
  signal?: AbortSignal;
}

/** Options of {@linkcode PageLease.release}. */
export interface LeaseReleaseOptions {
  /** Only these pages of the lease (default: all it still holds). */
  pages?: Iterable<number>;
  /**
   * A transfer into the pages may still be in flight (it timed out or was cancelled):
   * they go to quarantine for the pool's `quarantineMs` instead of being free at once.
   */
  inFlight?: boolean;
  /** Quarantine for exactly this long, ms (overrides `inFlight`; 0: free now). */
  quarantineMs?: number;
}

interface Waiter {
  count: number;
  options: LeaseAcquireOptions;
  resolve: (lease: PageLease) => void;
  reject: (e: unknown) => void;
  timer?: Timer;
  onAbort?: () => void;
}

interface Quarantine {
  pages: number[];
  timer: Timer;
}

/**
 * Pages held by one owner, from {@linkcode LeasePool}. Release it (all pages or some),
 * hand it to a peer, move pages to a new owner; after it expired, a release is a no-op
 * that returns `false` (the pages may belong to someone else by then).
 *
 * @example
 * ```ts
 * import { LeasePool } from "./lease_pool.ts";
 *
 * const pool = new LeasePool(2);
 * const lease = pool.tryAcquire(2, { owner: "fetch-7", ttlMs: 60_000 })!;
 * const kept = lease.moveTo([lease.pages[0]], "chunk k1"); // a new owner for one page
 * lease.release();
 * console.log(kept.pages, pool.free); // [0] 1
 * kept.release();
 * pool.close();
 * ```
 */
export class PageLease implements Disposable {
  /** Unique id within its pool (for logs). */
  readonly id: number;
  /** Who holds it. */
  readonly owner: string;
  /** The pool it came from. */
  readonly pool: LeasePool;
  /** @ignore */
  _pages: number[];
  /** @ignore */
  _state: LeaseState = "held";
  /** @ignore */
  _peer: string | undefined;
  /** @ignore */
  _deadline: number;
  /** @ignore */
  _timer: Timer | undefined;
  /** @ignore */
  _onExpire: LeaseOptions["onExpire"];

  /** @ignore (leases come from {@linkcode LeasePool}) */
  constructor(pool: LeasePool, id: number, owner: string, pages: number[]) {
    this.pool = pool;
    this.id = id;
    this.owner = owner;
    this._pages = pages;
    this._deadline = Infinity;
  }

  /** Pages it holds now (in the order acquired). */
  get pages(): readonly number[] {
    return this._pages;
  }

  /** Where it stands. */
  get state(): LeaseState {
    return this._state;
  }

  /** The peer it was handed to, if any. */
  get peer(): string | undefined {
    return this._peer;
  }

  /** When it expires, as a `performance.now()` time (`Infinity`: never). */
  get deadline(): number {
    return this._deadline;
  }

  /** Records that its pages were handed to `peer` (calls the pool's `onGrant` hooks). */
  handTo(peer: string): void {
    this.pool._handTo(this, peer);
  }

  /**
   * Gives pages back (all by default). Pages a transfer may still land in go to
   * quarantine (`inFlight`). Returns `false` when the lease had expired or the pool was
   * closed (nothing done); throws a {@linkcode ChannelError} for a page it does not hold
   * (a double release).
   */
  release(options?: LeaseReleaseOptions): boolean {
    return this.pool._release(this, options ?? {});
  }

  /** Sets a new lifetime from now, ms (`Infinity`: no deadline, e.g. once data landed). */
  renew(ttlMs: number): void {
    this.pool._renew(this, ttlMs);
  }

  /** Moves `pages` of this lease to a new lease of `owner` (no deadline, no peer). */
  moveTo(pages: Iterable<number>, owner: string, options?: Omit<LeaseOptions, "owner">): PageLease {
    return this.pool._move(this, [...pages], { ...options, owner });
  }

  /**
   * Moves each of `pages` to a lease of its own: page `pages[i]` to owner `owners[i]`
   * (no deadline, no peer). The same as `moveTo([pages[i]], owners[i])` for each page,
   * in one pass over this lease (a bind moves a batch of keys' pages out of one lot of
   * credits: a move per key went over the lot once per key). All or nothing: a page
   * this lease does not hold, or one given twice, moves none.
   *
   * @example
   * ```ts
   * import { LeasePool } from "./lease_pool.ts";
   * const pool = new LeasePool(4);
   * const lot = pool.tryAcquire(3, { owner: "credits" })!;
   * const [a, b] = lot.moveEach([lot.pages[0], lot.pages[2]], ["key-a", "key-b"]);
   * console.log(a.owner, b.pages.length, lot.pages.length); // key-a 1 1
   * pool.close();
   * ```
   */
  moveEach(pages: readonly number[], owners: readonly string[]): PageLease[] {
    return this.pool._moveEach(this, pages, owners);
  }

  /** Same as `release()` when still held; for `using`. */
  [Symbol.dispose](): void {
    if (this._state === "held" && this._pages.length > 0) this.release();
  }
}

/**
 * Hands out the pages `0..pageCount-1` as {@linkcode PageLease}s: all-or-nothing, first
 * come first served (two requests can never deadlock each holding part of what they
 * need), waits bounded by a timeout or a signal, quarantine for pages a transfer may
 * still reach, and expiry for leases with a deadline.
 *
 * @example
 * ```ts
 * import { LeasePool } from "./lease_pool.ts";
 *
 * const pool = new LeasePool(1);
 * const a = pool.tryAcquire(1, { owner: "a", ttlMs: 10 })!;
 * const b = await pool.acquire(1, { owner: "b", timeoutMs: 1000 }); // once `a` expired
 * console.log(a.state, b.pages); // expired [0]
 * b.release();
 * pool.close();
 * ```
 */
export class LeasePool {
  /** Number of pages managed. */
  readonly pageCount: number;
  /** Quarantine of pages released with `inFlight`, ms. */
  readonly quarantineMs: number;
  readonly #maxWaiters: number;
  #free: number[] = [];
  /** Lease holding each page; `null` when free or quarantined. */
  #holder: (PageLease | null)[];
  #quarantined = new Set<Quarantine>();
  #quarantinedPages = 0;
  #leases = new Set<PageLease>();
  #waiters: Waiter[] = [];
  #hooks = new Set<LeaseHooks>();
  #clearing: Timer[] = [];
  #nextId = 1;
  #closed = false;

  /**
   * A pool of `pageCount` free pages.
   *
   * @param pageCount number of pages (>= 0)
   * @param options quarantine, waiter limit, hooks
   */
  constructor(pageCount: number, options: LeasePoolOptions = {}) {
    if (!Number.isInteger(pageCount) || pageCount < 0) {
      throw new RangeError(`pageCount must be an integer >= 0, got ${pageCount}`);
    }
    const q = options.quarantineMs ?? 30_000;
    if (typeof q !== "number" || !(q >= 0)) {
      throw new RangeError(`quarantineMs must be a number >= 0, got ${q}`);
    }
    const w = options.maxWaiters ?? 1024;
    if (!Number.isInteger(w) || w < 0) {
      throw new RangeError(`maxWaiters must be an integer >= 0, got ${w}`);
    }
    this.pageCount = pageCount;
    this.quarantineMs = q;
    this.#maxWaiters = w;
    for (let i = pageCount - 1; i >= 0; i--) this.#free.push(i);
    this.#holder = new Array(pageCount).fill(null);
    if (options.hooks) this.#hooks.add(options.hooks);
  }

  /** Pages free now. */
  get free(): number {
    return this.#free.length;
  }

  /** Pages in quarantine now. */
  get quarantined(): number {
    return this.#quarantinedPages;
  }

  /** Pages held by leases now. */
  get leased(): number {
    return this.pageCount - this.#free.length - this.#quarantinedPages;
  }

  /** Leases holding pages now. */
  get leases(): number {
    return this.#leases.size;
  }

  /** Callers waiting for pages. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Whether the pool was closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The lease holding `page`, or `undefined` (free, quarantined, out of range). */
  leaseOf(page: number): PageLease | undefined {
    return this.#holder[page] ?? undefined;
  }

  /** Attaches hooks; returns the function that detaches them. */
  addHooks(hooks: LeaseHooks): () => void {
    this.#hooks.add(hooks);
    return () => {
      this.#hooks.delete(hooks);
    };
  }

  /** Takes `count` pages now, or returns `null` when fewer are free (or others wait). */
  tryAcquire(count: number, options: LeaseOptions): PageLease | null {
    this.#check(count, options);
    if (this.#waiters.length > 0 || this.#free.length < count) return null;
    return this.#grant(count, options);
  }

  /**
   * Takes `count` pages, waiting at most `timeoutMs` for enough to come free. Rejects
   * with a {@linkcode ChannelTimeoutError} (op `"allocate"`) when the time runs out, with
   * the signal's reason when it aborts, and at once when `count` exceeds the pool or too
   * many callers wait already.
   */
  acquire(count: number, options: LeaseAcquireOptions): Promise<PageLease> {
    try {
      this.#check(count, options);
      options.signal?.throwIfAborted();
    } catch (e) {
      return Promise.reject(e);
    }
    const now = this.tryAcquire(count, options);
    if (now) return Promise.resolve(now);
    if (this.#waiters.length >= this.#maxWaiters) {
      return Promise.reject(
        new ChannelError(
          "INVALID_ARGUMENT",
          `${options.owner}: ${this.#waiters.length} callers already wait for pages ` +
            `(maxWaiters ${this.#maxWaiters}); try again later`,
          { op: "allocate" },
        ),
      );
    }
    const timeoutMs = options.timeoutMs ?? Infinity;
    return new Promise<PageLease>((resolve, reject) => {
      const w: Waiter = { count, options, resolve, reject };
      const drop = () => {
        const i = this.#waiters.indexOf(w);
        if (i >= 0) this.#waiters.splice(i, 1);
        w.timer?.clear();
        if (w.onAbort) options.signal?.removeEventListener("abort", w.onAbort);
      };
      w.timer = after(timeoutMs, () => {
        drop();
        reject(
          new ChannelTimeoutError("allocate", timeoutMs, {
            hint: `${options.owner}: ${count} page(s) wanted, ${this.#free.length} of ` +
              `${this.pageCount} free, ${this.#quarantinedPages} in quarantine`,
          }),
        );
        this.#drain(); // a large request at the head may have blocked smaller ones
      });
      if (options.signal) {
        w.onAbort = () => {
          drop();
          reject(options.signal!.reason);
          this.#drain();
        };
        options.signal.addEventListener("abort", w.onAbort, { once: true });
      }
      this.#waiters.push(w);
    });
  }

  /**
   * Rejects every waiter, stops every timer; quarantined pages count as free again.
   * Leases still held stay valid to read; releasing them later is a no-op. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) {
      w.timer?.clear();
      if (w.onAbort) w.options.signal?.removeEventListener("abort", w.onAbort);
      w.reject(new ChannelError("CLOSED", "page pool closed while waiting for pages"));
    }
    for (const q of this.#quarantined) {
      q.timer.clear();
      this.#free.push(...q.pages);
    }
    this.#quarantined.clear();
    this.#quarantinedPages = 0;
    for (const lease of this.#leases) {
      lease._timer?.clear();
      lease._state = "closed";
    }
    this.#leases.clear();
  }

  #check(count: number, options: LeaseOptions): void {
    if (this.#closed) throw new ChannelError("CLOSED", "page pool is closed");
    if (!options || typeof options.owner !== "string" || options.owner === "") {
      throw new ChannelError("INVALID_ARGUMENT", "a lease needs an owner (a non-empty string)");
    }
    if (!Number.isInteger(count) || count < 0) {
      throw new RangeError(`page count must be an integer >= 0, got ${count}`);
    }
    if (count > this.pageCount) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `${options.owner}: ${count} pages wanted but the buffer has only ${this.pageCount}: ` +
          "send smaller batches or give the buffer more pages",
      );
    }
  }

  #grant(count: number, options: LeaseOptions): PageLease {
    const pages = this.#free.splice(this.#free.length - count, count).reverse();
    return this.#newLease(pages, options);
  }

  #newLease(pages: number[], options: LeaseOptions): PageLease {
    return this.#lease(pages, options.owner, options.ttlMs ?? Infinity, options.onExpire);
  }

  #lease(
    pages: number[],
    owner: string,
    ttlMs: number,
    onExpire: LeaseOptions["onExpire"],
  ): PageLease {
    const lease = new PageLease(this, this.#nextId++, owner, pages);
    // Nothing held, nothing to track (an empty lease would stay in the table for good).
    if (pages.length === 0) {
      lease._state = "released";
      return lease;
    }
    for (const p of pages) this.#holder[p] = lease;
    lease._onExpire = onExpire;
    this.#leases.add(lease);
    this._renew(lease, ttlMs);
    return lease;
  }

  #drain(): void {
    while (this.#waiters.length > 0 && this.#free.length >= this.#waiters[0].count) {
      const w = this.#waiters.shift()!;
      w.timer?.clear();
      if (w.onAbort) w.options.signal?.removeEventListener("abort", w.onAbort);
      w.resolve(this.#grant(w.count, w.options));
    }
  }

  #emit<K extends keyof LeaseHooks>(name: K, ...args: Parameters<NonNullable<LeaseHooks[K]>>) {
    for (const h of this.#hooks) {
      const f = h[name] as ((...a: unknown[]) => void) | undefined;
      if (!f) continue;
      if (name === "onGrant") f.apply(h, args);
      else {
        try {
          f.apply(h, args);
        } catch {
          // A release never fails: the hook's failure is its own.
        }
      }
    }
  }

  /** Takes pages out of a lease (they must all be in it, each once); returns them. */
  #detach(lease: PageLease, pages: number[] | undefined, op: string): number[] {
    const own = pages ?? [...lease._pages];
    const holder = this.#holder;
    // Each page is let go as it is checked: a page given twice finds itself let go
    // already. On a refusal the pages let go so far are put back (all or nothing).
    for (let i = 0; i < own.length; i++) {
      const p = own[i];
      if (holder[p] !== lease) {
        for (let j = 0; j < i; j++) holder[own[j]] = lease;
        throw this.#notHeld(lease, p, op);
      }
      holder[p] = null;
    }
    // A new array (as a filter makes): one read through `lease.pages` before stays as it
    // was. What stays is what the lease still holds (a plain loop: cold, it costs a
    // fraction of a filter's callback per page).
    if (pages === undefined) lease._pages = [];
    else {
      const held = lease._pages;
      const rest: number[] = [];
      for (let i = 0; i < held.length; i++) if (holder[held[i]] === lease) rest.push(held[i]);
      lease._pages = rest;
    }
    if (lease._pages.length === 0) {
      if (lease._timer) this.#clearSoon(lease._timer);
      lease._timer = undefined;
      this.#leases.delete(lease);
    }
    return own;
  }

  /** The refusal of a page `lease` does not hold (anymore: a double release). */
  #notHeld(lease: PageLease, p: number, op: string): ChannelError {
    const now = this.#holder[p];
    const where = !Number.isInteger(p) || p < 0 || p >= this.pageCount
      ? `outside 0..${this.pageCount - 1}`
      : now
      ? `held by lease ${now.id} (${now.owner})`
      : this.#free.includes(p)
      ? "free"
      : "in quarantine";
    return new ChannelError(
      "INVALID_ARGUMENT",
      `${op}: page ${p} is not held by lease ${lease.id} (${lease.owner}), it is ${where}` +
        (lease._state === "released" ? ": the lease was released already" : "") +
        " (double release?)",
      { op },
    );
  }

  /**
   * Clears `timer` once the current turn is over (no timer can fire before then, and
   * an expiry checks the lease's state anyway): a lease emptied by a bind or a release
   * has its deadline timer cleared after the caller's work (clearing a timer costs
   * microseconds on Deno, and a bind would pay them before its keys are announced).
   */
  #clearSoon(timer: Timer): void {
    this.#clearing.push(timer);
    if (this.#clearing.length > 1) return;
    queueMicrotask(() => {
      const timers = this.#clearing;
      this.#clearing = [];
      for (const t of timers) t.clear();
    });
  }

  /** Frees pages now or after `quarantineMs`. */
  #putBack(pages: number[], quarantineMs: number): void {
    if (pages.length === 0) return;
    if (quarantineMs > 0 && !this.#closed) {
      const q: Quarantine = {
        pages,
        timer: after(quarantineMs, () => {
          this.#quarantined.delete(q);
          this.#quarantinedPages -= pages.length;
          this.#free.push(...pages);
          this.#emit("onFree", pages);
          this.#drain();
        }),
      };
      this.#quarantined.add(q);
      this.#quarantinedPages += pages.length;
      return;
    }
    this.#free.push(...pages);
    this.#emit("onFree", pages);
    this.#drain();
  }

  /** @ignore */
  _release(lease: PageLease, options: LeaseReleaseOptions): boolean {
    if (lease._state === "expired" || lease._state === "closed") return false;
    if (lease.pool !== this) throw new ChannelError("INVALID_ARGUMENT", "lease of another pool");
    const wanted = options.pages === undefined ? undefined : [...options.pages];
    if (lease._state === "released" && (wanted === undefined || wanted.length > 0)) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `release: lease ${lease.id} (${lease.owner}) was released already (double release)`,
        { op: "release" },
      );
    }
    const pages = this.#detach(lease, wanted, "release");
    if (lease._pages.length === 0) lease._state = "released";
    const q = options.quarantineMs ?? (options.inFlight ? this.quarantineMs : 0);
    if (!(q >= 0)) throw new RangeError(`quarantineMs must be >= 0, got ${q}`);
    if (pages.length === 0) return true;
    this.#emit("onRelease", {
      lease,
      pages,
      peer: lease._peer,
      reason: "released",
      quarantineMs: q,
    });
    this.#putBack(pages, q);
    return true;
  }

  /** @ignore */
  _handTo(lease: PageLease, peer: string): void {
    if (lease._state !== "held") {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `handTo: lease ${lease.id} (${lease.owner}) is ${lease._state}`,
      );
    }
    this.#emit("onGrant", lease, lease._pages, peer);
    lease._peer = peer;
  }

  /** @ignore */
  _renew(lease: PageLease, ttlMs: number): void {
    if (typeof ttlMs !== "number" || !(ttlMs >= 0)) {
      throw new RangeError(`ttlMs must be a number >= 0 (Infinity: none), got ${ttlMs}`);
    }
    if (lease._state !== "held") return;
    lease._timer?.clear();
    lease._timer = undefined;
    if (ttlMs === Infinity) {
      lease._deadline = Infinity; // (no clock read: once per key bound)
      return;
    }
    lease._deadline = performance.now() + ttlMs;
    lease._timer = after(ttlMs, () => this.#expire(lease));
  }

  #expire(lease: PageLease): void {
    if (lease._state !== "held") return;
    const pages = this.#detach(lease, undefined, "expire");
    lease._state = "expired";
    // A peer it was handed to may still be transferring into its pages.
    const q = lease._peer === undefined ? 0 : this.quarantineMs;
    this.#emit("onRelease", {
      lease,
      pages,
      peer: lease._peer,
      reason: "expired",
      quarantineMs: q,
    });
    this.#putBack(pages, q);
    try {
      lease._onExpire?.(lease, pages);
    } catch {
      // The owner's failure is its own; the pages are back either way.
    }
  }

  /** @ignore */
  _move(lease: PageLease, pages: number[], options: LeaseOptions): PageLease {
    if (lease._state !== "held") {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `moveTo: lease ${lease.id} (${lease.owner}) is ${lease._state}`,
      );
    }
    if (typeof options.owner !== "string" || options.owner === "") {
      throw new ChannelError("INVALID_ARGUMENT", "moveTo: a lease needs an owner");
    }
    const moved = this.#detach(lease, pages, "moveTo");
    this.#movedOut(lease, moved);
    return this.#newLease(moved, options);
  }

  /** `moved` left `lease` for new leases: its state, and the hooks of a handed lease. */
  #movedOut(lease: PageLease, moved: number[]): void {
    if (lease._pages.length === 0) lease._state = "released";
    if (lease._peer !== undefined && moved.length > 0 && this.#hooks.size > 0) {
      this.#emit("onRelease", {
        lease,
        pages: moved,
        peer: lease._peer,
        reason: "moved",
        quarantineMs: 0,
      });
    }
  }

  /** @ignore */
  _moveEach(lease: PageLease, pages: readonly number[], owners: readonly string[]): PageLease[] {
    if (lease._state !== "held") {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `moveTo: lease ${lease.id} (${lease.owner}) is ${lease._state}`,
      );
    }
    if (pages.length !== owners.length) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `moveEach: ${pages.length} page(s) but ${owners.length} owner(s); one owner per page`,
      );
    }
    for (const owner of owners) {
      if (typeof owner !== "string" || owner === "") {
        throw new ChannelError("INVALID_ARGUMENT", "moveTo: a lease needs an owner");
      }
    }
    const moved = this.#detach(lease, [...pages], "moveTo");
    this.#movedOut(lease, moved);
    const out = new Array<PageLease>(moved.length);
    for (let i = 0; i < moved.length; i++) {
      out[i] = this.#lease([moved[i]], owners[i], Infinity, undefined);
    }
    return out;
  }
}
