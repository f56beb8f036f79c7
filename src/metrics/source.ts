/**
 * `collectFrom`: reports the counters an object already keeps (a `stats` getter, the
 * native agent's info) at scrape time, and keeps their last values once the object is
 * gone, so the process's totals never go down when a receiver, an agent or a store
 * closes (Prometheus would read a drop as a counter reset).
 *
 * @example
 * ```ts
 * import { collectFrom } from "./source.ts";
 * import { MetricsRegistry } from "./registry.ts";
 *
 * const registry = new MetricsRegistry();
 * const stats = { served: 0, queued: 0 };
 * const source = collectFrom(registry, () => stats, (s, sink) => {
 *   sink.counter("app_served_total", "Requests served.", {}, s.served);
 *   sink.gauge("app_queued", "Requests queued.", {}, s.queued);
 * });
 * stats.served = 5;
 * await source.retire(); // app_served_total stays 5, app_queued is gone
 * ```
 * @module
 */

import type { MetricSink, MetricsRegistry } from "./registry.ts";

/** Reads an object's figures: `undefined` once the object is gone. */
export type StatsRead<S> = () => S | undefined | Promise<S | undefined>;

/** What {@linkcode collectFrom} returns. */
export interface CollectedSource {
  /**
   * Reads the object one last time, keeps its counters in the registry's retired totals
   * and stops collecting from it. Idempotent; call it before the object closes.
   */
  retire(): Promise<void>;
}

interface Retired {
  name: string;
  help: string;
  labels: Record<string, string>;
  value: number;
}

const retiredOf = new WeakMap<MetricsRegistry, Map<string, Retired>>();

function retiredTotals(registry: MetricsRegistry): Map<string, Retired> {
  let totals = retiredOf.get(registry);
  if (!totals) {
    const map = new Map<string, Retired>();
    totals = map;
    retiredOf.set(registry, map);
    registry.addCollector((sink) => {
      for (const r of map.values()) sink.counter(r.name, r.help, r.labels, r.value);
    });
  }
  return totals;
}

/**
 * Collects from `read()` at every scrape through `report`, until `retire()`. A `read()`
 * that answers `undefined` says the object is gone (see {@linkcode weakly}): the values
 * of the last scrape are retired and collecting stops. With a disabled registry nothing
 * is collected (and `retire` does nothing).
 *
 * @example
 * ```ts
 * import { collectFrom, MetricsRegistry } from "@kvport/nixl/metrics";
 * const registry = new MetricsRegistry();
 * const pool = { free: 3 };
 * const source = collectFrom(registry, () => pool, (p, sink) => {
 *   sink.gauge("app_free_pages", "Free pages.", {}, p.free);
 * });
 * await source.retire();
 * ```
 */
export function collectFrom<S>(
  registry: MetricsRegistry,
  read: StatsRead<S>,
  report: (stats: S, sink: MetricSink) => void,
): CollectedSource {
  if (!registry.enabled) return { retire: () => Promise.resolve() };
  let last: S | undefined;
  let retiring: Promise<void> | undefined;
  const keepCounters = (final: S) => {
    const totals = retiredTotals(registry);
    const keep = (name: string, help: string, labels: Record<string, string>, v: number) => {
      const key = `${name}\u0000${
        Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join("\u0000")
      }`;
      const t = totals.get(key);
      if (t) t.value += v;
      else totals.set(key, { name, help, labels: { ...labels }, value: v });
    };
    report(final, { counter: keep, gauge: () => {} });
  };
  const remove = registry.addCollector(async (sink) => {
    const s = await read();
    if (s === undefined) {
      // Collected without a close: keep what the last scrape saw, and stop.
      retiring ??= Promise.resolve().then(() => {
        remove();
        if (last !== undefined) keepCounters(last);
      });
      return;
    }
    last = s;
    report(s, sink);
  });
  return {
    retire: () =>
      retiring ??= (async () => {
        remove();
        let final = last;
        try {
          final = (await read()) ?? last;
        } catch {
          // Already unreadable: the values of the last scrape are the best there is.
        }
        if (final !== undefined) keepCounters(final);
      })(),
  };
}

/**
 * A `read` for {@linkcode collectFrom} that holds `target` weakly: the registry (which
 * lives as long as the process) must not keep alive an agent or a channel that was
 * dropped without `close()`. Answers `undefined` once `target` was collected.
 *
 * @example
 * ```ts
 * import { collectFrom, MetricsRegistry, weakly } from "@kvport/nixl/metrics";
 * const pool = { free: 3 };
 * collectFrom(new MetricsRegistry(), weakly(pool, (p) => p.free), (free, sink) => {
 *   sink.gauge("app_free_pages", "Free pages.", {}, free);
 * });
 * ```
 */
export function weakly<T extends object, S>(
  target: T,
  read: (target: T) => S | Promise<S>,
): StatsRead<S> {
  const ref = new WeakRef(target);
  return () => {
    const t = ref.deref();
    return t === undefined ? undefined : read(t);
  };
}
