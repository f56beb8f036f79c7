/**
 * The local chunk store of a P2P instance: key -> page of the channel's buffer, with pins
 * so an eviction never frees a page a transfer is reading, and LRU order for eviction.
 *
 * @module
 */

import type { LeasePool, PageLease } from "../channel/lease_pool.ts";

/** One chunk held by a {@linkcode ChunkStore}. */
export interface StoredChunk {
  /** The cache-engine key. */
  readonly key: string;
  /** Its chunk hash (what the registry indexes). */
  readonly hash: bigint;
  /** The page of the channel's buffer holding it. */
  readonly page: number;
  /** The lease through which it owns the page (owner: the key). */
  readonly lease: PageLease;
  /** Bytes of the page that hold the chunk (a partial last chunk holds fewer). */
  readonly bytes: number;
  /** Transfers (and callers) reading the page now. */
  readonly pins: number;
  /** Removed from the store; its page is freed once the last pin goes. */
  readonly removed: boolean;
}

interface Entry {
  key: string;
  hash: bigint;
  page: number;
  lease: PageLease;
  bytes: number;
  pins: number;
  removed: boolean;
  /** A transfer reading the page ended in doubt (timed out): quarantine it when freed. */
  inFlight: boolean;
}

/**
 * Key -> page map over a {@linkcode LeasePool}: each chunk owns its page through a lease
 * (owner: the key). A removed chunk disappears from lookups at once, but its lease ends
 * only when nobody pins it: a WRITE that pinned it still reads the bytes it promised,
 * and the page cannot be reused for another key meanwhile; a pin that ended in doubt (a
 * timed-out WRITE) sends the page to quarantine. Iteration order is least recently used
 * first.
 *
 * @example
 * ```ts
 * import { ChunkStore } from "./store.ts";
 * import { LeasePool } from "../channel/lease_pool.ts";
 *
 * const pool = new LeasePool(2);
 * const store = new ChunkStore(pool);
 * const lease = await pool.acquire(1, { owner: "k" });
 * store.add("k", 1n, lease, 4096);
 * const c = store.pin("k")!;
 * store.remove("k"); // gone from lookups, page still held
 * console.log(store.has("k"), pool.free); // false 1
 * store.unpin(c);
 * console.log(pool.free); // 2
 * ```
 */
export class ChunkStore {
  readonly #pool: LeasePool;
  readonly #entries = new Map<string, Entry>();

  /**
   * A store whose pages come from (and return to) `pool`.
   *
   * @param pool the page pool of the channel's buffer
   */
  constructor(pool: LeasePool) {
    this.#pool = pool;
  }

  /** The pool the chunks' leases come from. */
  get pool(): LeasePool {
    return this.#pool;
  }

  /** Chunks held. */
  get size(): number {
    return this.#entries.size;
  }

  /** Whether `key` is held. */
  has(key: string): boolean {
    return this.#entries.has(key);
  }

  /** The chunk of `key` (marking it recently used), or `undefined`. */
  get(key: string): StoredChunk | undefined {
    const e = this.#entries.get(key);
    if (!e) return undefined;
    this.#entries.delete(key);
    this.#entries.set(key, e);
    return e;
  }

  /** The chunk of `key` without touching the LRU order. */
  peek(key: string): StoredChunk | undefined {
    return this.#entries.get(key);
  }

  /** Keys held, least recently used first. */
  keys(): string[] {
    return [...this.#entries.keys()];
  }

  /** Chunks held, least recently used first. */
  chunks(): StoredChunk[] {
    return [...this.#entries.values()];
  }

  /**
   * Stores `key` in the page of `lease` (one page; the store now owns the lease). A
   * chunk already stored under `key` is replaced and returned (its page freed once
   * unpinned).
   */
  add(key: string, hash: bigint, lease: PageLease, bytes: number): StoredChunk | undefined {
    if (lease.pages.length !== 1 || lease.pool !== this.#pool) {
      throw new RangeError(
        `a chunk needs a lease of one page of this store's pool, got ${lease.pages.length}`,
      );
    }
    const page = lease.pages[0];
    const old = this.#entries.get(key);
    if (old && old.lease === lease) {
      // The same page again: new contents in place, pins stay.
      old.hash = hash;
      old.bytes = bytes;
      this.#entries.delete(key);
      this.#entries.set(key, old);
      return undefined;
    }
    if (old) this.#drop(old);
    this.#entries.set(key, {
      key,
      hash,
      page,
      lease,
      bytes,
      pins: 0,
      removed: false,
      inFlight: false,
    });
    return old;
  }

  /** Removes `key`; returns the chunk, or `undefined` when it was not held. */
  remove(key: string): StoredChunk | undefined {
    const e = this.#entries.get(key);
    if (e) this.#drop(e);
    return e;
  }

  /** Pins the chunk of `key` (its page stays valid until `unpin`); `undefined` if absent. */
  pin(key: string): StoredChunk | undefined {
    const e = this.#entries.get(key);
    if (e) e.pins++;
    return e;
  }

  /**
   * Releases one pin; a removed chunk's page returns to the pool with the last one.
   * `inFlight`: the transfer that held the pin may still be reading the page (it timed
   * out), so the page goes to quarantine rather than to the next owner.
   */
  unpin(chunk: StoredChunk, inFlight = false): void {
    const e = chunk as Entry;
    if (e.pins <= 0) throw new RangeError(`chunk ${e.key} is not pinned`);
    e.pins--;
    if (inFlight) e.inFlight = true;
    if (e.removed && e.pins === 0) e.lease.release({ inFlight: e.inFlight });
  }

  /** The least recently used chunk nobody pins, or `undefined`. */
  victim(): StoredChunk | undefined {
    for (const e of this.#entries.values()) if (e.pins === 0) return e;
    return undefined;
  }

  /** Removes every chunk (pinned pages are freed when unpinned); returns them. */
  clear(): StoredChunk[] {
    const all = [...this.#entries.values()];
    for (const e of all) this.#drop(e);
    return all;
  }

  #drop(e: Entry): void {
    this.#entries.delete(e.key);
    e.removed = true;
    if (e.pins === 0) e.lease.release({ inFlight: e.inFlight });
  }
}
