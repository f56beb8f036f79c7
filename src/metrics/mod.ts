/**
 * Metrics an inference fleet can scrape: one registry per process that every layer of
 * the library records into (transfers, PD, P2P, storage, the side channel), served in
 * Prometheus's text format. This module depends on nothing else of the library, so an
 * application can serve or read metrics without loading the native shim.
 *
 * - {@linkcode metricsRegistry}: the process-wide registry (`KVPORT_METRICS=off`
 *   disables it); every layer takes a `metrics` option to record into another one.
 * - {@linkcode serveMetrics}: `GET /metrics` on a host and port (`kvport ...
 *   --metrics-port P` uses it).
 * - {@linkcode parseExposition}: reads the text back (`kvport stats` does).
 *
 * Every metric, its labels and what to alert on: `docs/METRICS.md`.
 *
 * @example
 * ```ts
 * import { metricsRegistry, serveMetrics } from "@kvport/nixl/metrics";
 *
 * // Serve the library's metrics from an application on port 9400:
 * await using server = await serveMetrics({ host: "0.0.0.0", port: 9400 });
 * // ... or put them into the application's own /metrics handler:
 * const text = await metricsRegistry().metrics();
 * ```
 * @module
 */

export {
  type Collector,
  type MetricSink,
  MetricsRegistry,
  metricsRegistry,
  type MetricsRegistryOptions,
} from "./registry.ts";
export {
  type Cell,
  Counter,
  CounterCell,
  DEFAULT_MAX_LABEL_VALUES,
  DEFAULT_MAX_SERIES,
  DEFAULT_SECONDS_BUCKETS,
  Family,
  type FamilyOptions,
  Gauge,
  GaugeCell,
  Histogram,
  HistogramCell,
  type HistogramOptions,
  MetricsError,
  type MetricType,
  OVERFLOW_LABEL_VALUE,
} from "./family.ts";
export {
  type FamilySnapshot,
  type HistogramSample,
  isHistogramSample,
  quantile,
  sumOf,
  type ValueSample,
} from "./snapshot.ts";
export { escapeLabelValue, formatExposition, formatSampleValue } from "./exposition.ts";
export { parseExposition } from "./parse.ts";
export { type MetricsServer, serveMetrics, type ServeMetricsOptions } from "./server.ts";
export { type CollectedSource, collectFrom, type StatsRead, weakly } from "./source.ts";
