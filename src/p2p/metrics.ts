/**
 * Peer-to-peer sharing's metrics. The counters an instance and the registry already
 * keep (`stats`) are read at scrape time: lookups, promised (hit) chunks, fetches,
 * fetched chunks and bytes, retries, handshakes, requests served, admits and evicts,
 * chunks and pages held. Counted where they happen: lookups that found a holder, and
 * failures by their code (P2PError codes for lookups and fetches, LMCache's
 * `P2PErrorMsg` codes for requests this instance refused as a holder). See
 * docs/METRICS.md.
 *
 * @example
 * ```ts
 * import { p2pMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * const m = p2pMetrics(new MetricsRegistry(), 0)!;
 * m.failed("fetch", "TIMEOUT");
 * ```
 * @module
 */

import type { Counter, CounterCell } from "../metrics/family.ts";
import type { MetricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, collectFrom, type StatsRead } from "../metrics/source.ts";
import type { P2PBackendStats } from "./backend.ts";
import type { P2PRegistryStats } from "./registry.ts";

const SERVED_CODE_NAMES: Record<number, string> = {
  1: "P2P_SERVER_ERROR",
  2: "UNKNOWN_MSG_TYPE",
  3: "REMOTE_XFER_HANDLER_NOT_INITIALIZED",
};

/**
 * The cells of one P2P instance's TP rank.
 *
 * @example
 * ```ts
 * import { P2PMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * new P2PMetrics(new MetricsRegistry(), 0).refused(3);
 * ```
 */
export class P2PMetrics {
  readonly #rank: string;
  readonly #hits: CounterCell;
  readonly #errors: Counter;
  readonly #refused: Counter;

  /** The families of `tpRank` in `registry`. */
  constructor(registry: MetricsRegistry, tpRank: number) {
    const rank = this.#rank = String(tpRank);
    this.#hits = registry.counter({
      name: "kvport_p2p_lookup_hits_total",
      help: "Requester: registry lookups that named a holder (at least one chunk).",
      labels: ["tp_rank"],
    }).labels(rank);
    this.#errors = registry.counter({
      name: "kvport_p2p_errors_total",
      help: "Requester: lookups and fetches that failed (counted as misses), by op and " +
        "P2PError code.",
      labels: ["tp_rank", "op", "code"],
    });
    this.#refused = registry.counter({
      name: "kvport_p2p_served_errors_total",
      help: "Holder: lookup-and-get requests answered with P2PErrorMsg, by error code name.",
      labels: ["tp_rank", "code"],
    });
  }

  /** A lookup named a holder. */
  hit(): void {
    this.#hits.value++;
  }

  /** A lookup or fetch failed with `code`. */
  failed(op: "lookup" | "fetch", code: string): void {
    this.#errors.labels(this.#rank, op, code).inc();
  }

  /** This holder answered P2PErrorMsg `code`. */
  refused(code: number): void {
    this.#refused.labels(this.#rank, SERVED_CODE_NAMES[code] ?? "UNKNOWN").inc();
  }
}

const cache = new WeakMap<MetricsRegistry, Map<number, P2PMetrics>>();

/**
 * The P2P cells of `tpRank`, or `undefined` when `registry` is disabled.
 *
 * @example
 * ```ts
 * import { p2pMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * p2pMetrics(new MetricsRegistry(), 0)?.hit();
 * ```
 */
export function p2pMetrics(registry: MetricsRegistry, tpRank: number): P2PMetrics | undefined {
  if (!registry.enabled) return undefined;
  let byRank = cache.get(registry);
  if (!byRank) cache.set(registry, byRank = new Map());
  let m = byRank.get(tpRank);
  if (!m) byRank.set(tpRank, m = new P2PMetrics(registry, tpRank));
  return m;
}

/**
 * Reports an instance's `stats` at every scrape, until retired.
 *
 * @example
 * ```ts
 * import { collectP2PBackend } from "./metrics.ts";
 * import type { P2PBackend } from "./backend.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * declare const p2p: P2PBackend;
 * const source = collectP2PBackend(new MetricsRegistry(), 0, p2p.channel.pageSize, () => p2p.stats);
 * ```
 */
export function collectP2PBackend(
  registry: MetricsRegistry,
  tpRank: number,
  pageSize: number,
  read: StatsRead<P2PBackendStats>,
): CollectedSource {
  const l = { tp_rank: String(tpRank) };
  return collectFrom(registry, read, (s, sink) => {
    const c = (name: string, help: string, v: number, extra: Record<string, string> = {}) =>
      sink.counter(name, help, { ...l, ...extra }, v);
    c("kvport_p2p_lookups_total", "Requester: lookups asked of the registry.", s.lookups);
    c(
      "kvport_p2p_lookup_hit_chunks_total",
      "Requester: chunks the registry promised (leading chunks a holder has), summed.",
      s.promisedChunks,
    );
    c("kvport_p2p_fetches_total", "Requester: fetches that asked a holder.", s.fetches);
    c("kvport_p2p_fetched_chunks_total", "Requester: chunks fetched.", s.fetchedChunks);
    c(
      "kvport_p2p_fetched_bytes_total",
      "Requester: bytes fetched (chunks x page size).",
      s.fetchedChunks * pageSize,
    );
    c(
      "kvport_p2p_retries_total",
      "Requester: requests sent again (error 3 or a lost reply).",
      s.retries,
    );
    c("kvport_p2p_handshakes_total", "Requester: handshakes with holders.", s.handshakes);
    c("kvport_p2p_served_total", "Holder: lookup-and-get requests answered.", s.served, {
      result: "ok",
    });
    c("kvport_p2p_served_total", "Holder: lookup-and-get requests answered.", s.servedErrors, {
      result: "error",
    });
    c("kvport_p2p_served_chunks_total", "Holder: chunks written to requesters.", s.servedChunks);
    c(
      "kvport_p2p_served_bytes_total",
      "Holder: bytes written to requesters.",
      s.servedChunks * pageSize,
    );
    c("kvport_p2p_admitted_chunks_total", "Holder: chunks admitted (reported).", s.admitted);
    c("kvport_p2p_evicted_chunks_total", "Holder: chunks evicted (reported).", s.evicted);
    sink.gauge("kvport_p2p_chunks", "Holder: chunks held.", l, s.chunks);
    const ph = "Pages of the P2P buffer, by state (quarantined: held back after a lost reply).";
    sink.gauge("kvport_p2p_pages", ph, { ...l, state: "free" }, s.freePages);
    sink.gauge("kvport_p2p_pages", ph, { ...l, state: "quarantined" }, s.quarantinedPages);
  });
}

/**
 * Reports the registry's `stats` at every scrape, until retired.
 *
 * @example
 * ```ts
 * import { collectP2PRegistry } from "./metrics.ts";
 * import type { P2PRegistry } from "./registry.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * declare const registry: P2PRegistry;
 * const source = collectP2PRegistry(new MetricsRegistry(), () => registry.stats);
 * ```
 */
export function collectP2PRegistry(
  registry: MetricsRegistry,
  read: StatsRead<P2PRegistryStats>,
): CollectedSource {
  return collectFrom(registry, read, (s, sink) => {
    sink.gauge("kvport_p2p_registry_instances", "Instance-workers known.", {}, s.instances);
    sink.gauge(
      "kvport_p2p_registry_chunks",
      "Chunk entries held (one per holder and location).",
      {},
      s.chunks,
    );
    const c = (name: string, help: string, v: number) => sink.counter(name, help, {}, v);
    c(
      "kvport_p2p_registry_reports_total",
      "Reports taken (register, heartbeat, admit, ...).",
      s.reports,
    );
    c("kvport_p2p_registry_lookups_total", "Lookups answered.", s.lookups);
    c("kvport_p2p_registry_lookup_hits_total", "Lookups that found a holder.", s.hits);
    c("kvport_p2p_registry_forgotten_total", "Instances forgotten for silence.", s.forgotten);
    c("kvport_p2p_registry_errors_total", "Messages that could not be used.", s.errors);
  });
}
