/**
 * The plain-data form of a registry's state at one moment: what `MetricsRegistry.collect`
 * returns, what the text format is written from, what `parseExposition` reads back and
 * what `kvport stats --json` prints.
 *
 * @example
 * ```ts
 * import type { FamilySnapshot } from "./snapshot.ts";
 * const f: FamilySnapshot = {
 *   name: "app_requests_total", help: "Requests.", type: "counter",
 *   samples: [{ labels: { op: "WRITE" }, value: 3 }],
 * };
 * ```
 * @module
 */

import type { MetricType } from "./family.ts";

/** One series of a counter or gauge. */
export interface ValueSample {
  /** Label names to values. */
  labels: Record<string, string>;
  /** The value. */
  value: number;
}

/** One series of a histogram. */
export interface HistogramSample {
  /** Label names to values (without `le`). */
  labels: Record<string, string>;
  /** Cumulative counts: `[upper bound, observations <= bound]`, ending with `+Inf`. */
  buckets: [number, number][];
  /** Sum of the observations. */
  sum: number;
  /** Number of observations. */
  count: number;
}

/** One family with its series. */
export interface FamilySnapshot {
  /** Metric name. */
  name: string;
  /** Help text. */
  help: string;
  /** `"counter"`, `"gauge"` or `"histogram"` (`"untyped"` when read from a foreign text). */
  type: MetricType | "untyped";
  /** Its series: {@linkcode ValueSample}s, or {@linkcode HistogramSample}s for a histogram. */
  samples: (ValueSample | HistogramSample)[];
}

/**
 * Whether a sample is a histogram's.
 *
 * @example
 * ```ts
 * import { isHistogramSample } from "./snapshot.ts";
 * console.log(isHistogramSample({ labels: {}, value: 1 })); // false
 * ```
 */
export function isHistogramSample(s: ValueSample | HistogramSample): s is HistogramSample {
  return (s as HistogramSample).buckets !== undefined;
}

/**
 * An estimate of quantile `q` (0..1) from cumulative buckets, interpolated linearly in
 * the bucket holding it (as Prometheus's `histogram_quantile` does); NaN without
 * observations.
 *
 * @example
 * ```ts
 * import { quantile } from "./snapshot.ts";
 * console.log(quantile([[1, 5], [2, 10], [Infinity, 10]], 0.5)); // 1
 * ```
 */
export function quantile(buckets: readonly [number, number][], q: number): number {
  if (buckets.length === 0) return NaN;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return NaN;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (bound === Infinity) return lowerBound; // in the open bucket: its lower edge
      const inBucket = count - lowerCount;
      if (inBucket <= 0) return bound;
      return lowerBound + (bound - lowerBound) * ((rank - lowerCount) / inBucket);
    }
    lowerBound = bound;
    lowerCount = count;
  }
  return lowerBound;
}

/**
 * The value of a series: a counter's or gauge's value, a histogram's count; summed over
 * every series of `family` whose labels include `match`. `undefined` when none matches.
 *
 * @example
 * ```ts
 * import { sumOf } from "./snapshot.ts";
 * const f = { name: "a_total", help: "", type: "counter" as const, samples: [
 *   { labels: { op: "WRITE" }, value: 2 }, { labels: { op: "READ" }, value: 3 }] };
 * console.log(sumOf(f, { op: "WRITE" }), sumOf(f)); // 2 5
 * ```
 */
export function sumOf(
  family: FamilySnapshot | undefined,
  match: Record<string, string> = {},
): number | undefined {
  if (!family) return undefined;
  let total: number | undefined;
  for (const s of family.samples) {
    if (!Object.entries(match).every(([k, v]) => s.labels[k] === v)) continue;
    total = (total ?? 0) + (isHistogramSample(s) ? s.count : s.value);
  }
  return total;
}
