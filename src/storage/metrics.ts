/**
 * The storage layer's metrics, read at scrape time from what the store already keeps:
 * puts, gets (hits and misses), puts dropped, evictions, corrupt chunks found, and the
 * keys, pinned keys, bytes and free slots held now. Labelled by storage plugin and mode
 * (a bounded pair). See docs/METRICS.md.
 *
 * @example
 * ```ts
 * import { collectStorage } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * const source = collectStorage(new MetricsRegistry(), "POSIX", "static", async () => ({
 *   counters: { hits: 1, misses: 0, puts: 1, dropped: 0, evictions: 0, corrupt: 0 },
 *   used: 1, pinned: 0, bytes: 4096, free: 15, pendingPuts: 0,
 * }));
 * await source.retire();
 * ```
 * @module
 */

import type { MetricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, collectFrom, type StatsRead } from "../metrics/source.ts";
import type { StoreCounters } from "./store.ts";

/** What a store reports at a scrape. */
export interface StorageView {
  /** The store's counters since open. */
  counters: StoreCounters;
  /** Keys stored. */
  used: number;
  /** Keys pinned. */
  pinned: number;
  /** Data bytes stored. */
  bytes: number;
  /** Free slots (null in dynamic mode). */
  free: number | null;
  /** Asynchronous puts still writing. */
  pendingPuts: number;
}

/**
 * Reports a store's figures at every scrape, until retired (before it closes).
 *
 * @example
 * ```ts
 * import { collectStorage } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * const counters = { hits: 0, misses: 0, puts: 0, dropped: 0, evictions: 0, corrupt: 0 };
 * const view = { counters, used: 0, pinned: 0, bytes: 0, free: 16, pendingPuts: 0 };
 * const source = collectStorage(new MetricsRegistry(), "POSIX", "static", () => Promise.resolve(view));
 * ```
 */
export function collectStorage(
  registry: MetricsRegistry,
  backend: string,
  mode: string,
  read: StatsRead<StorageView>,
): CollectedSource {
  const l = { backend, mode };
  return collectFrom(registry, read, (v, sink) => {
    const c = v.counters;
    sink.counter("kvport_storage_puts_total", "Keys stored since open.", l, c.puts);
    const gets = "Reads of keys, by result (hit, miss; a corrupt chunk reads as a miss).";
    sink.counter("kvport_storage_gets_total", gets, { ...l, result: "hit" }, c.hits);
    sink.counter("kvport_storage_gets_total", gets, { ...l, result: "miss" }, c.misses);
    sink.counter(
      "kvport_storage_dropped_total",
      "Puts refused because every slot was pinned.",
      l,
      c.dropped,
    );
    sink.counter("kvport_storage_evictions_total", "Keys evicted to make room.", l, c.evictions);
    sink.counter(
      "kvport_storage_corrupt_total",
      "Chunks whose data failed its checksum when read (dropped, read as misses).",
      l,
      c.corrupt,
    );
    sink.gauge("kvport_storage_keys", "Keys stored now.", l, v.used);
    sink.gauge("kvport_storage_pinned_keys", "Keys with a user pin now.", l, v.pinned);
    sink.gauge("kvport_storage_bytes", "Data bytes stored now.", l, v.bytes);
    if (v.free !== null) {
      sink.gauge("kvport_storage_free_slots", "Free slots of static pools.", l, v.free);
    }
    sink.gauge("kvport_storage_pending_puts", "Asynchronous puts still writing.", l, v.pendingPuts);
  });
}
