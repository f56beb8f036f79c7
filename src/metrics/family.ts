/**
 * Metric families: counters, gauges and histograms, each a set of labelled cells. A cell
 * is a plain object whose update is a field increment, so the hot paths of the library
 * cache the cell once (per request, per peer) and pay a few nanoseconds per update.
 *
 * Label values are bounded: each label of a family takes at most `maxLabelValues`
 * distinct values (default 64); later new values are recorded as `"other"`. A family
 * holds at most `maxSeries` cells; beyond that every label of a new series reads
 * `"other"`. So no peer, request or key can grow the registry without limit.
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "./registry.ts";
 * const registry = new MetricsRegistry();
 * const sent = registry.counter({
 *   name: "app_sent_bytes_total",
 *   help: "Bytes sent.",
 *   labels: ["peer"],
 * });
 * const toB = sent.labels("b"); // cache it: updates are then field increments
 * toB.inc(4096);
 * console.log(toB.value); // 4096
 * ```
 * @module
 */

/** The three kinds of families of the text format this library writes. */
export type MetricType = "counter" | "gauge" | "histogram";

/** The value all labels of an overflowing series take. */
export const OVERFLOW_LABEL_VALUE = "other";

/** Default bound on the distinct values of one label of a family. */
export const DEFAULT_MAX_LABEL_VALUES = 64;

/** Default bound on the series (label combinations) of a family. */
export const DEFAULT_MAX_SERIES = 2000;

/**
 * Default histogram buckets, in seconds: 10 us to 60 s, enough for a 4 KiB post and a
 * blocked allocation alike.
 */
export const DEFAULT_SECONDS_BUCKETS: readonly number[] = Object.freeze([
  0.00001,
  0.000025,
  0.00005,
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
]);

/** What every family is made from. */
export interface FamilyOptions {
  /** Metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`; a counter's ends in `_total`. */
  name: string;
  /** One line that says what is counted (the `# HELP` text). */
  help: string;
  /** Label names, in the order `labels(...)` takes their values (default none). */
  labels?: readonly string[];
  /** Distinct values one label may take before new ones read `"other"` (default 64). */
  maxLabelValues?: number;
  /** Series the family may hold before new ones read `"other"` (default 2000). */
  maxSeries?: number;
}

/** Options of a histogram family. */
export interface HistogramOptions extends FamilyOptions {
  /** Upper bounds of the buckets, increasing (default {@linkcode DEFAULT_SECONDS_BUCKETS}). */
  buckets?: readonly number[];
}

/**
 * A metrics error: a bad name, label or value, named with what was expected.
 *
 * @example
 * ```ts
 * import { MetricsError } from "./family.ts";
 * const e = new MetricsError("metric name \"9x\": expected [a-zA-Z_:][a-zA-Z0-9_:]*");
 * console.log(e.name); // MetricsError
 * ```
 */
export class MetricsError extends Error {
  /**
   * Creates the error.
   *
   * @param message what is wrong, with the expected and the got value
   */
  constructor(message: string) {
    super(message);
    this.name = "MetricsError";
  }
}

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/**
 * Checks a metric name (and a counter's `_total` suffix); throws a {@linkcode MetricsError}.
 *
 * @example
 * ```ts
 * import { checkMetricName } from "./family.ts";
 * checkMetricName("app_requests_total", "counter"); // fine
 * // checkMetricName("app_requests", "counter") throws: a counter's name ends in _total
 * ```
 */
export function checkMetricName(name: string, type: MetricType): void {
  if (typeof name !== "string" || !NAME_RE.test(name)) {
    throw new MetricsError(
      `metric name ${JSON.stringify(name)}: expected [a-zA-Z_:][a-zA-Z0-9_:]*`,
    );
  }
  if (type === "counter" && !name.endsWith("_total")) {
    throw new MetricsError(`counter ${name}: a counter's name ends in _total`);
  }
  if (type !== "counter" && name.endsWith("_total")) {
    throw new MetricsError(`${type} ${name}: only counters end in _total`);
  }
}

/**
 * Checks label names: valid, distinct, not reserved (`__*`, and `le` for histograms).
 *
 * @example
 * ```ts
 * import { checkLabelNames } from "./family.ts";
 * checkLabelNames("app_seconds", ["op", "peer"], "histogram"); // fine
 * ```
 */
export function checkLabelNames(metric: string, names: readonly string[], type: MetricType): void {
  const seen = new Set<string>();
  for (const n of names) {
    if (typeof n !== "string" || !LABEL_RE.test(n) || n.startsWith("__")) {
      throw new MetricsError(
        `${metric}: label name ${JSON.stringify(n)}: expected [a-zA-Z_][a-zA-Z0-9_]* ` +
          "not starting with __",
      );
    }
    if (type === "histogram" && n === "le") {
      throw new MetricsError(`${metric}: "le" is the bucket label of a histogram`);
    }
    if (seen.has(n)) throw new MetricsError(`${metric}: label ${n} given twice`);
    seen.add(n);
  }
}

function positiveInt(metric: string, what: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1) {
    throw new MetricsError(`${metric}: ${what} must be an integer >= 1, got ${String(v)}`);
  }
  return v;
}

/**
 * A counter cell: only goes up.
 *
 * @example
 * ```ts
 * import { CounterCell } from "./family.ts";
 * const c = new CounterCell();
 * c.inc(4096);
 * console.log(c.value); // 4096
 * ```
 */
export class CounterCell {
  /** The count. */
  value = 0;

  /** Adds `n` (default 1); a negative or non-finite `n` is ignored (counters never fall). */
  inc(n = 1): void {
    if (n >= 0 && n !== Infinity) this.value += n;
  }
}

/**
 * A gauge cell: set, raised and lowered.
 *
 * @example
 * ```ts
 * import { GaugeCell } from "./family.ts";
 * const g = new GaugeCell();
 * g.inc();
 * g.dec();
 * console.log(g.value); // 0
 * ```
 */
export class GaugeCell {
  /** The current value. */
  value = 0;

  /** Sets the value. */
  set(v: number): void {
    this.value = v;
  }

  /** Adds `n` (default 1). */
  inc(n = 1): void {
    this.value += n;
  }

  /** Subtracts `n` (default 1). */
  dec(n = 1): void {
    this.value -= n;
  }
}

/**
 * A histogram cell: counts per bucket (not cumulative), their sum and count.
 *
 * @example
 * ```ts
 * import { HistogramCell } from "./family.ts";
 * const h = new HistogramCell([0.001, 0.01]);
 * h.observe(0.005);
 * console.log(h.counts, h.count); // Float64Array [0, 1, 0] 1
 * ```
 */
export class HistogramCell {
  /** Upper bounds of the buckets (shared with the family). */
  readonly bounds: readonly number[];
  /** Observations per bucket; the last entry is the `+Inf` bucket. */
  readonly counts: Float64Array;
  /** Sum of the observed values. */
  sum = 0;
  /** Number of observations. */
  count = 0;

  /** A cell over `bounds`. */
  constructor(bounds: readonly number[]) {
    this.bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  /** Records one value (e.g. seconds); NaN is ignored. */
  observe(v: number): void {
    if (v !== v) return;
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]) i++;
    this.counts[i]++;
    this.sum += v;
    this.count++;
  }
}

/** Any cell. */
export type Cell = CounterCell | GaugeCell | HistogramCell;

/**
 * One family: a name, help, label names and the cells by label values. Use
 * {@linkcode Counter}, {@linkcode Gauge} or {@linkcode Histogram}.
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "./registry.ts";
 * const f = new MetricsRegistry().gauge({ name: "app_depth", help: "Depth.", labels: ["q"] });
 * f.labels("a").set(3);
 * console.log(f.cells()); // [{ labels: { q: "a" }, cell: GaugeCell { value: 3 } }]
 * ```
 */
export abstract class Family<C extends Cell> {
  /** Its name. */
  readonly name: string;
  /** Its help text. */
  readonly help: string;
  /** Its label names. */
  readonly labelNames: readonly string[];
  /** `"counter"`, `"gauge"` or `"histogram"`. */
  abstract readonly type: MetricType;
  readonly #cells = new Map<string, { values: readonly string[]; cell: C }>();
  readonly #seen: Set<string>[];
  readonly #maxValues: number;
  readonly #maxSeries: number;
  #unlabelled: C | undefined;

  /** A family from `options` (checked by the registry). */
  protected constructor(options: FamilyOptions) {
    this.name = options.name;
    this.help = options.help;
    this.labelNames = Object.freeze([...(options.labels ?? [])]);
    this.#seen = this.labelNames.map(() => new Set<string>());
    this.#maxValues = positiveInt(
      options.name,
      "maxLabelValues",
      options.maxLabelValues,
      DEFAULT_MAX_LABEL_VALUES,
    );
    this.#maxSeries = positiveInt(options.name, "maxSeries", options.maxSeries, DEFAULT_MAX_SERIES);
  }

  /** Makes an empty cell. */
  protected abstract make(): C;

  /**
   * The cell of these label values (one per label name, in order), made on first use.
   * Values beyond the family's bounds are recorded as `"other"`.
   */
  labels(...values: string[]): C {
    if (values.length !== this.labelNames.length) {
      throw new MetricsError(
        `${this.name}: ${this.labelNames.length} label value(s) expected ` +
          `(${this.labelNames.join(", ") || "none"}), got ${values.length}`,
      );
    }
    if (values.length === 0) return this.#unlabelled ??= this.#create([], "");
    const key = values.join("\u0000");
    const hit = this.#cells.get(key);
    if (hit !== undefined) return hit.cell;
    return this.#bounded(values.map(String));
  }

  #bounded(values: string[]): C {
    const full = this.#cells.size >= this.#maxSeries;
    const kept = values.map((v, i) => {
      if (full) return OVERFLOW_LABEL_VALUE;
      const seen = this.#seen[i];
      if (seen.has(v)) return v;
      if (seen.size >= this.#maxValues) return OVERFLOW_LABEL_VALUE;
      seen.add(v);
      return v;
    });
    const key = kept.join("\u0000");
    const hit = this.#cells.get(key);
    // An overflowing series is looked up by its own values each time (never cached under
    // them: that would grow the map with every new value).
    return hit !== undefined ? hit.cell : this.#create(kept, key);
  }

  #create(values: readonly string[], key: string): C {
    const cell = this.make();
    this.#cells.set(key, { values: Object.freeze([...values]), cell });
    return cell;
  }

  /** Every cell with its label values, in creation order. */
  cells(): { labels: Record<string, string>; cell: C }[] {
    return [...this.#cells.values()].map(({ values, cell }) => ({
      labels: Object.fromEntries(this.labelNames.map((n, i) => [n, values[i]])),
      cell,
    }));
  }

  /** Forgets every cell (tests; a scraper sees counters start again). */
  reset(): void {
    this.#cells.clear();
    this.#unlabelled = undefined;
    for (const s of this.#seen) s.clear();
  }
}

/**
 * A counter family (`..._total`).
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "./registry.ts";
 * const c = new MetricsRegistry().counter({ name: "app_requests_total", help: "Requests." });
 * c.inc();
 * console.log(c.labels().value); // 1
 * ```
 */
export class Counter extends Family<CounterCell> {
  /** `"counter"`. */
  readonly type = "counter";

  /** @internal Use `MetricsRegistry.counter`. */
  constructor(options: FamilyOptions) {
    super(options);
  }

  /** Makes an empty cell. */
  protected make(): CounterCell {
    return new CounterCell();
  }

  /** Adds `n` to the unlabelled cell (a family without labels). */
  inc(n = 1): void {
    this.labels().inc(n);
  }
}

/**
 * A gauge family.
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "./registry.ts";
 * const g = new MetricsRegistry().gauge({ name: "app_in_flight", help: "Requests running." });
 * g.labels().inc();
 * console.log(g.labels().value); // 1
 * ```
 */
export class Gauge extends Family<GaugeCell> {
  /** `"gauge"`. */
  readonly type = "gauge";

  /** @internal Use `MetricsRegistry.gauge`. */
  constructor(options: FamilyOptions) {
    super(options);
  }

  /** Makes an empty cell. */
  protected make(): GaugeCell {
    return new GaugeCell();
  }

  /** Sets the unlabelled cell. */
  set(v: number): void {
    this.labels().set(v);
  }
}

/**
 * A histogram family (`_bucket`, `_sum`, `_count` series).
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "./registry.ts";
 * const h = new MetricsRegistry().histogram({ name: "app_seconds", help: "Latency." });
 * h.labels().observe(0.002);
 * console.log(h.labels().count); // 1
 * ```
 */
export class Histogram extends Family<HistogramCell> {
  /** `"histogram"`. */
  readonly type = "histogram";
  /** Upper bounds of the buckets. */
  readonly buckets: readonly number[];

  /** @internal Use `MetricsRegistry.histogram`. */
  constructor(options: HistogramOptions) {
    super(options);
    const b = [...(options.buckets ?? DEFAULT_SECONDS_BUCKETS)];
    if (b.length === 0 || b.some((x, i) => !Number.isFinite(x) || (i > 0 && x <= b[i - 1]))) {
      throw new MetricsError(
        `${options.name}: buckets must be finite and strictly increasing, got [${b.join(", ")}]`,
      );
    }
    this.buckets = Object.freeze(b);
  }

  /** Makes an empty cell. */
  protected make(): HistogramCell {
    return new HistogramCell(this.buckets);
  }

  /** Records a value in the unlabelled cell. */
  observe(v: number): void {
    this.labels().observe(v);
  }
}
