/**
 * The in-memory key index of a static pool: key -> slot, in least-recently-used order,
 * with pin counts. Pinned keys (by the user, or held by a read in flight) are never
 * eviction candidates.
 *
 * @module
 */

/** What the index knows of one stored key. */
export interface SlotEntry {
  /** Slot (file) index in the pool. */
  slot: number;
  /** Bytes of the chunk that are data (a partial last chunk is shorter than a page). */
  dataLen: number;
  /** CRC-32 of those bytes, checked on every read. */
  dataCrc: number;
  /** Journal sequence number of the record that stored it. */
  seq: bigint;
  /** User pins (`pin`/`unpin`). */
  pins: number;
  /** Reads in flight (internal pins). */
  readers: number;
}

/**
 * Key -> slot map in LRU order (a `Map` keeps insertion order: oldest first) plus the
 * free-slot list.
 *
 * @example
 * ```ts
 * import { LruSlotIndex } from "./lru.ts";
 * const idx = new LruSlotIndex(2);
 * idx.set("a", { slot: idx.takeFree()!, dataLen: 1, dataCrc: 0, seq: 1n, pins: 0, readers: 0 });
 * console.log(idx.evictionCandidates(1)); // ["a"] once nothing is free
 * ```
 */
export class LruSlotIndex {
  #entries = new Map<string, SlotEntry>();
  #free: number[] = [];
  #size: number;

  /** @param size number of slots; all start free. */
  constructor(size: number) {
    this.#size = size;
    for (let i = size - 1; i >= 0; i--) this.#free.push(i);
  }

  /**
   * An index holding `entries` (oldest first); their slots are taken, every other slot is
   * free. Entries whose slot is out of range or already taken are skipped.
   */
  static fromEntries<E extends SlotEntry>(
    size: number,
    entries: Iterable<[string, E]>,
  ): LruSlotIndex {
    const idx = new LruSlotIndex(0);
    idx.#size = size;
    const used = new Uint8Array(size);
    for (const [key, e] of entries) {
      if (e.slot < 0 || e.slot >= size || used[e.slot]) continue;
      used[e.slot] = 1;
      idx.#entries.set(key, e);
    }
    for (let i = size - 1; i >= 0; i--) if (!used[i]) idx.#free.push(i);
    return idx;
  }

  /** Number of slots. */
  get size(): number {
    return this.#size;
  }

  /** Number of keys stored. */
  get count(): number {
    return this.#entries.size;
  }

  /** Number of free slots. */
  get freeCount(): number {
    return this.#free.length;
  }

  /** Number of keys with a user pin. */
  get pinnedCount(): number {
    let n = 0;
    for (const e of this.#entries.values()) if (e.pins > 0) n++;
    return n;
  }

  /** The entry of a key without touching its recency. */
  peek(key: string): SlotEntry | undefined {
    return this.#entries.get(key);
  }

  /** The entry of a key, made most recently used. */
  touch(key: string): SlotEntry | undefined {
    const e = this.#entries.get(key);
    if (e) {
      this.#entries.delete(key);
      this.#entries.set(key, e);
    }
    return e;
  }

  /** Adds or replaces a key as most recently used (the caller frees a replaced slot). */
  set(key: string, entry: SlotEntry): void {
    this.#entries.delete(key);
    this.#entries.set(key, entry);
  }

  /** Removes a key; returns its entry. The slot is not freed (see {@linkcode release}). */
  delete(key: string): SlotEntry | undefined {
    const e = this.#entries.get(key);
    if (e) this.#entries.delete(key);
    return e;
  }

  /** Takes a free slot (lowest index first on a fresh index); undefined when none is free. */
  takeFree(): number | undefined {
    return this.#free.pop();
  }

  /** Takes a specific free slot (replay); false when it is not free. */
  takeSpecific(slot: number): boolean {
    const i = this.#free.indexOf(slot);
    if (i < 0) return false;
    this.#free.splice(i, 1);
    return true;
  }

  /** Returns a slot to the free list. */
  release(slot: number): void {
    this.#free.push(slot);
  }

  /**
   * Up to `n` keys to evict, least recently used first, skipping pinned keys, keys with a
   * read in flight and the keys in `protect`.
   */
  evictionCandidates(n: number, protect?: ReadonlySet<string>): string[] {
    const out: string[] = [];
    if (n <= 0) return out;
    for (const [key, e] of this.#entries) {
      if (e.pins > 0 || e.readers > 0 || protect?.has(key)) continue;
      out.push(key);
      if (out.length >= n) break;
    }
    return out;
  }

  /** Keys, least recently used first. */
  keys(): IterableIterator<string> {
    return this.#entries.keys();
  }

  /** Entries, least recently used first. */
  entries(): IterableIterator<[string, SlotEntry]> {
    return this.#entries.entries();
  }
}
