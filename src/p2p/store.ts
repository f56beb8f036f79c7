/**
 * The local chunk store of a P2P instance: key -> page of the channel's buffer, with pins
 * so an eviction never frees a page a transfer is reading, and LRU order for eviction.
 *
 * @module
 */

import type { PagePool } from "../pd/page_pool.ts";

/** One chunk held by a {@linkcode ChunkStore}. */
export interface StoredChunk {
  /** The cache-engine key. */
  readonly key: string;
  /** Its chunk hash (what the registry indexes). */
  readonly hash: bigint;
  /** The page of the channel's buffer holding it. */
  readonly page: number;
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
  bytes: number;
  pins: number;
  removed: boolean;
}

/**
 * Key -> page map over a {@linkcode PagePool}. A removed chunk disappears from lookups at
 * once, but its page returns to the pool only when nobody pins it: a WRITE that pinned it
 * still reads the bytes it promised, and the page cannot be reused for another key
 * meanwhile. Iteration order is least recently used first.
 *
 * @example
 * ```ts
 * import { ChunkStore } from "./store.ts";
 * import { PagePool } from "../pd/page_pool.ts";
 *
 * const pool = new PagePool(2);
 * const store = new ChunkStore(pool);
 * const [page] = await pool.allocate(1);
 * store.add("k", 1n, page, 4096);
 * const c = store.pin("k")!;
 * store.remove("k"); // gone from lookups, page still held
 * console.log(store.has("k"), pool.free); // false 1
 * store.unpin(c);
 * console.log(pool.free); // 2
 * ```
 */
export class ChunkStore {
  readonly #pool: PagePool;
  readonly #entries = new Map<string, Entry>();

  /**
   * A store whose pages come from (and return to) `pool`.
   *
   * @param pool the page pool of the channel's buffer
   */
  constructor(pool: PagePool) {
    this.#pool = pool;
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
   * Stores `key` in `page` (the store now owns the page). A chunk already stored under
   * `key` is replaced and returned (its page freed once unpinned).
   */
  add(key: string, hash: bigint, page: number, bytes: number): StoredChunk | undefined {
    const old = this.#entries.get(key);
    if (old && old.page === page) {
      // The same page again: new contents in place, pins stay.
      old.hash = hash;
      old.bytes = bytes;
      this.#entries.delete(key);
      this.#entries.set(key, old);
      return undefined;
    }
    if (old) this.#drop(old);
    this.#entries.set(key, { key, hash, page, bytes, pins: 0, removed: false });
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

  /** Releases one pin; a removed chunk's page returns to the pool with the last one. */
  unpin(chunk: StoredChunk): void {
    const e = chunk as Entry;
    if (e.pins <= 0) throw new RangeError(`chunk ${e.key} is not pinned`);
    e.pins--;
    if (e.removed && e.pins === 0) this.#pool.release([e.page]);
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
    if (e.pins === 0) this.#pool.release([e.page]);
  }
}
