/**
 * `MetricsRegistry`: the families of one process (or of one test), the collectors that
 * report figures other code already keeps (read at scrape time, so they cost nothing
 * between scrapes), and the snapshot both the text format and `kvport stats` are made
 * from. {@linkcode metricsRegistry} is the process-wide one every layer uses unless it is
 * handed another.
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "./registry.ts";
 *
 * const registry = new MetricsRegistry();
 * const requests = registry.counter({
 *   name: "app_requests_total",
 *   help: "Requests answered.",
 *   labels: ["status"],
 * });
 * requests.labels("ok").inc();
 * registry.addCollector((sink) => sink.gauge("app_queue_depth", "Queued requests.", {}, 3));
 * console.log(await registry.metrics());
 * ```
 * @module
 */

import process from "node:process";
import {
  checkLabelNames,
  checkMetricName,
  Counter,
  type FamilyOptions,
  Gauge,
  Histogram,
  type HistogramOptions,
  MetricsError,
  type MetricType,
} from "./family.ts";
import type { FamilySnapshot, ValueSample } from "./snapshot.ts";
import { formatExposition } from "./exposition.ts";

/** Where a collector reports its figures; equal name and labels from several add up. */
export interface MetricSink {
  /** Reports a counter value (a total since some start; `name` ends in `_total`). */
  counter(name: string, help: string, labels: Record<string, string>, value: number): void;
  /** Reports a gauge value. */
  gauge(name: string, help: string, labels: Record<string, string>, value: number): void;
}

/** Called at each scrape to report figures kept elsewhere. */
export type Collector = (sink: MetricSink) => void | Promise<void>;

/** Options of a {@linkcode MetricsRegistry}. */
export interface MetricsRegistryOptions {
  /**
   * `false`: the layers handed this registry record nothing (their hot paths skip
   * metrics entirely); scrapes still answer, with the families made so far. Default true.
   */
  enabled?: boolean;
}

type AnyFamily = Counter | Gauge | Histogram;

interface Reported {
  type: "counter" | "gauge";
  name: string;
  help: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * A set of metric families and collectors.
 *
 * Families are made once per name: asking again for the same name, type and labels
 * returns the same family (so each layer can declare its metrics where it uses them);
 * a different type or label list is a {@linkcode MetricsError}.
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "./registry.ts";
 * const r = new MetricsRegistry();
 * const a = r.counter({ name: "x_total", help: "X." });
 * console.log(a === r.counter({ name: "x_total", help: "X." })); // true
 * ```
 */
export class MetricsRegistry {
  /** Whether layers handed this registry record anything. */
  readonly enabled: boolean;
  readonly #families = new Map<string, AnyFamily>();
  readonly #collectors = new Set<Collector>();
  readonly #collectorErrors: Counter;

  /** A registry; see {@linkcode MetricsRegistryOptions}. */
  constructor(options: MetricsRegistryOptions = {}) {
    this.enabled = options.enabled ?? true;
    this.#collectorErrors = this.counter({
      name: "kvport_metrics_collector_errors_total",
      help: "Collectors that failed during a scrape (their figures were left out of it).",
    });
    this.#collectorErrors.labels(); // a 0 from the start
  }

  #family<F extends AnyFamily>(
    type: MetricType,
    options: FamilyOptions,
    make: () => F,
  ): F {
    checkMetricName(options.name, type);
    const labels = options.labels ?? [];
    checkLabelNames(options.name, labels, type);
    const old = this.#families.get(options.name);
    if (old) {
      if (old.type !== type || old.labelNames.join(",") !== labels.join(",")) {
        throw new MetricsError(
          `metric ${options.name} is already a ${old.type} with labels ` +
            `[${old.labelNames.join(", ")}]; asked for a ${type} with [${labels.join(", ")}]`,
        );
      }
      return old as F;
    }
    const f = make();
    this.#families.set(options.name, f);
    return f;
  }

  /** The counter family `options.name` (made on first call). */
  counter(options: FamilyOptions): Counter {
    return this.#family("counter", options, () => new Counter(options));
  }

  /** The gauge family `options.name` (made on first call). */
  gauge(options: FamilyOptions): Gauge {
    return this.#family("gauge", options, () => new Gauge(options));
  }

  /** The histogram family `options.name` (made on first call). */
  histogram(options: HistogramOptions): Histogram {
    return this.#family("histogram", options, () => new Histogram(options));
  }

  /**
   * Adds a collector, called at every scrape; returns the function that removes it.
   *
   * @example
   * ```ts
   * import { MetricsRegistry } from "./registry.ts";
   * const r = new MetricsRegistry();
   * const queue: string[] = [];
   * const remove = r.addCollector((s) => s.gauge("app_queue", "Queued.", {}, queue.length));
   * remove();
   * ```
   */
  addCollector(collector: Collector): () => void {
    this.#collectors.add(collector);
    return () => {
      this.#collectors.delete(collector);
    };
  }

  /** The families made so far, by name. */
  get families(): ReadonlyMap<string, Counter | Gauge | Histogram> {
    return this.#families as ReadonlyMap<string, Counter | Gauge | Histogram>;
  }

  /**
   * Every family with its series now: the direct families, then what the collectors
   * report, sorted by name. A collector that throws is left out of this scrape (and
   * counted in `kvport_metrics_collector_errors_total`).
   */
  async collect(): Promise<FamilySnapshot[]> {
    const out = new Map<string, FamilySnapshot>();
    for (const f of this.#families.values()) out.set(f.name, snapshotOf(f));
    const series = new Map<string, ValueSample>();
    for (const c of [...this.#collectors]) {
      // Each collector reports into its own list, merged only when it completed.
      const reported: Reported[] = [];
      const report = (type: "counter" | "gauge") =>
      (
        name: string,
        help: string,
        labels: Record<string, string>,
        value: number,
      ) => {
        checkMetricName(name, type);
        checkLabelNames(name, Object.keys(labels), type);
        reported.push({ type, name, help, labels, value });
      };
      try {
        await c({ counter: report("counter"), gauge: report("gauge") });
      } catch {
        this.#collectorErrors.inc();
        continue;
      }
      for (const r of reported) {
        let fam = out.get(r.name);
        if (!fam) {
          fam = { name: r.name, help: r.help, type: r.type, samples: [] };
          out.set(r.name, fam);
        } else if (fam.type !== r.type || this.#families.has(r.name)) {
          // A name that is a family of its own, or of another type: a bug to see, not to
          // merge.
          this.#collectorErrors.inc();
          continue;
        }
        const key = r.name + "\u0000" +
          Object.keys(r.labels).sort().map((k) => `${k}=${r.labels[k]}`).join("\u0000");
        const s = series.get(key);
        if (s) s.value += r.value;
        else {
          const sample = { labels: { ...r.labels }, value: r.value };
          series.set(key, sample);
          fam.samples.push(sample);
        }
      }
    }
    return [...out.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** The Prometheus text exposition format (version 0.0.4) of {@linkcode collect}. */
  async metrics(): Promise<string> {
    return formatExposition(await this.collect());
  }

  /** The content type of {@linkcode metrics}' text. */
  get contentType(): string {
    return "text/plain; version=0.0.4; charset=utf-8";
  }
}

function snapshotOf(f: AnyFamily): FamilySnapshot {
  const fam = f as Counter | Gauge | Histogram;
  if (fam instanceof Histogram) {
    return {
      name: fam.name,
      help: fam.help,
      type: "histogram",
      samples: fam.cells().map(({ labels, cell }) => {
        let acc = 0;
        const buckets: [number, number][] = [];
        for (let i = 0; i < cell.counts.length; i++) {
          acc += cell.counts[i];
          buckets.push([i < fam.buckets.length ? fam.buckets[i] : Infinity, acc]);
        }
        return { labels, buckets, sum: cell.sum, count: cell.count };
      }),
    };
  }
  return {
    name: fam.name,
    help: fam.help,
    type: fam.type,
    samples: (fam as Counter | Gauge).cells().map(({ labels, cell }) => ({
      labels,
      value: cell.value,
    })),
  };
}

function envDisabled(): boolean {
  try {
    const v = process.env.KVPORT_METRICS?.trim().toLowerCase();
    return v === "off" || v === "0" || v === "false";
  } catch {
    return false; // no permission to read the environment: the default holds
  }
}

let global: MetricsRegistry | undefined;

/**
 * The process-wide registry every layer records into unless handed another (option
 * `metrics`). Made on first use; `KVPORT_METRICS=off` (or `0`, `false`) at that moment
 * makes it a disabled one, so nothing is recorded anywhere.
 *
 * @example
 * ```ts
 * import { metricsRegistry } from "@kvport/nixl";
 * const text = await metricsRegistry().metrics(); // serve this on /metrics
 * ```
 */
export function metricsRegistry(): MetricsRegistry {
  return global ??= new MetricsRegistry({ enabled: !envDisabled() });
}
