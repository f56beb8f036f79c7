/**
 * Disaggregated prefill's metrics. Receiver: AllocRequests and their outcome, the waits
 * for free pages, chunks and bytes that landed, cancellations. Sender: batches by
 * outcome, chunks and bytes sent by receiver, batch latency, handshakes, proxy
 * notifications. Both: pages free and leased, read at scrape time. Labelled by TP rank;
 * the receiver of a sender (its id, `host:init_port`) is a bounded `peer` label. See
 * docs/METRICS.md.
 *
 * @example
 * ```ts
 * import { pdSenderMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * const m = pdSenderMetrics(new MetricsRegistry(), 0)!;
 * m.batch("ok", "localhost:7300", 8, 0, 8 * 4096, 0.01);
 * ```
 * @module
 */

import type { Counter, CounterCell, HistogramCell } from "../metrics/family.ts";
import type { MetricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, collectFrom, type StatsRead } from "../metrics/source.ts";

/** The receiver's cells for one TP rank. */
export interface PdReceiverMetrics {
  /** AllocRequests answered with pages. */
  allocOk: CounterCell;
  /** AllocRequests answered -1 after `pd_allocation_timeout_sec`. */
  allocTimeout: CounterCell;
  /** AllocRequests refused with an ErrorMsg. */
  allocError: CounterCell;
  /** AllocRequests that found too few free pages and waited. */
  allocWaits: CounterCell;
  /** How long those waited (seconds). */
  allocWaitSeconds: HistogramCell;
  /** Chunks whose data landed. */
  receivedChunks: CounterCell;
  /** Their meaningful bytes. */
  receivedBytes: CounterCell;
  /** Chunks dropped by a sender's CancelNotif. */
  cancelledChunks: CounterCell;
}

/**
 * The sender's metrics for one TP rank.
 *
 * @example
 * ```ts
 * import { PdSenderMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * new PdSenderMetrics(new MetricsRegistry(), 0).proxyNotification(true);
 * ```
 */
export class PdSenderMetrics {
  readonly #rank: string;
  readonly #batches: Counter;
  readonly #chunks: Counter;
  readonly #bytes: Counter;
  readonly #skipped: CounterCell;
  readonly #seconds: HistogramCell;
  readonly #handshakes: Counter;
  readonly #proxy: Counter;
  readonly #okCells = new Map<
    string,
    { batches: CounterCell; chunks: CounterCell; bytes: CounterCell }
  >();

  /** The families of TP rank `tpRank` in `registry`. */
  constructor(registry: MetricsRegistry, tpRank: number) {
    const rank = this.#rank = String(tpRank);
    this.#batches = registry.counter({
      name: "kvport_pd_send_batches_total",
      help: "Sender: batches (one AllocRequest and its WRITEs) that ended, by result: ok or " +
        "the stage that failed (handshake, alloc, write, notify, restart).",
      labels: ["tp_rank", "result"],
    });
    this.#chunks = registry.counter({
      name: "kvport_pd_sent_chunks_total",
      help: "Sender: KV chunks written to receivers, by receiver id (peer).",
      labels: ["tp_rank", "peer"],
    });
    this.#bytes = registry.counter({
      name: "kvport_pd_sent_bytes_total",
      help: "Sender: bytes written to receivers (chunks x page size), by receiver id (peer).",
      labels: ["tp_rank", "peer"],
    });
    this.#skipped = registry.counter({
      name: "kvport_pd_skipped_chunks_total",
      help: "Sender: chunks not written because the receiver already held them.",
      labels: ["tp_rank"],
    }).labels(rank);
    this.#seconds = registry.histogram({
      name: "kvport_pd_send_seconds",
      help: "Sender: duration of successful batches (AllocRequest round trip and WRITEs).",
      labels: ["tp_rank"],
    }).labels(rank);
    this.#handshakes = registry.counter({
      name: "kvport_pd_handshakes_total",
      help: "Sender: handshakes with receivers (kind first, or again after a lost " +
        "connection or a restarted receiver).",
      labels: ["tp_rank", "kind"],
    });
    this.#proxy = registry.counter({
      name: "kvport_pd_proxy_notifications_total",
      help: "Sender: ProxyNotif messages pushed to the proxy, by result.",
      labels: ["tp_rank", "result"],
    });
    this.#batches.labels(rank, "ok");
    this.#handshakes.labels(rank, "again");
    this.#proxy.labels(rank, "ok");
  }

  /** A batch ended (`result` "ok" or the failing stage). */
  batch(
    result: string,
    peer: string,
    sent: number,
    skipped: number,
    bytes: number,
    seconds: number,
  ): void {
    if (result !== "ok") {
      this.#batches.labels(this.#rank, result).inc();
      return;
    }
    // The cells of a receiver are looked up once (series are never removed).
    let c = this.#okCells.get(peer);
    if (c === undefined) {
      if (this.#okCells.size >= 1024) this.#okCells.clear();
      this.#okCells.set(
        peer,
        c = {
          batches: this.#batches.labels(this.#rank, "ok"),
          chunks: this.#chunks.labels(this.#rank, peer),
          bytes: this.#bytes.labels(this.#rank, peer),
        },
      );
    }
    c.batches.inc();
    c.chunks.inc(sent);
    c.bytes.inc(bytes);
    this.#skipped.inc(skipped);
    this.#seconds.observe(seconds);
  }

  /** A handshake with a receiver succeeded (`again`: not the link's first). */
  handshake(again: boolean): void {
    this.#handshakes.labels(this.#rank, again ? "again" : "first").inc();
  }

  /** A proxy notification was pushed (or failed). */
  proxyNotification(ok: boolean): void {
    this.#proxy.labels(this.#rank, ok ? "ok" : "error").inc();
  }
}

/**
 * The receiver cells of TP rank `tpRank`, or `undefined` when `registry` is disabled.
 *
 * @example
 * ```ts
 * import { pdReceiverMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * pdReceiverMetrics(new MetricsRegistry(), 0)?.allocOk.inc();
 * ```
 */
export function pdReceiverMetrics(
  registry: MetricsRegistry,
  tpRank: number,
): PdReceiverMetrics | undefined {
  if (!registry.enabled) return undefined;
  const rank = String(tpRank);
  const alloc = registry.counter({
    name: "kvport_pd_alloc_requests_total",
    help: "Receiver: AllocRequests answered, by result (ok; timeout: no free pages within " +
      "pd_allocation_timeout_sec, answered -1; error: refused with ErrorMsg).",
    labels: ["tp_rank", "result"],
  });
  const count = (name: string, help: string) =>
    registry.counter({ name, help, labels: ["tp_rank"] }).labels(rank);
  return {
    allocOk: alloc.labels(rank, "ok"),
    allocTimeout: alloc.labels(rank, "timeout"),
    allocError: alloc.labels(rank, "error"),
    allocWaits: count(
      "kvport_pd_alloc_waits_total",
      "Receiver: AllocRequests that found too few free pages and waited for some.",
    ),
    allocWaitSeconds: registry.histogram({
      name: "kvport_pd_alloc_wait_seconds",
      help: "Receiver: how long AllocRequests waited for free pages (those that waited).",
      labels: ["tp_rank"],
    }).labels(rank),
    receivedChunks: count(
      "kvport_pd_received_chunks_total",
      "Receiver: KV chunks whose data landed (the sender's WRITE notification arrived).",
    ),
    receivedBytes: count(
      "kvport_pd_received_bytes_total",
      "Receiver: meaningful bytes of the chunks that landed.",
    ),
    cancelledChunks: count(
      "kvport_pd_cancelled_chunks_total",
      "Receiver: chunks dropped by a sender's CancelNotif before their data landed.",
    ),
  };
}

const senders = new WeakMap<MetricsRegistry, Map<number, PdSenderMetrics>>();

/**
 * The sender metrics of TP rank `tpRank`, or `undefined` when `registry` is disabled.
 *
 * @example
 * ```ts
 * import { pdSenderMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * pdSenderMetrics(new MetricsRegistry(), 1)?.handshake(false);
 * ```
 */
export function pdSenderMetrics(
  registry: MetricsRegistry,
  tpRank: number,
): PdSenderMetrics | undefined {
  if (!registry.enabled) return undefined;
  let byRank = senders.get(registry);
  if (!byRank) senders.set(registry, byRank = new Map());
  let m = byRank.get(tpRank);
  if (!m) byRank.set(tpRank, m = new PdSenderMetrics(registry, tpRank));
  return m;
}

/** What a PD side's pool looks like at a scrape. */
export interface PdPoolView {
  /** Pages of the buffer. */
  pages: number;
  /** Pages free. */
  free: number;
  /** Receiver: keys held, and how many of them landed. */
  keys?: { held: number; landed: number };
}

/**
 * Reports a PD side's pages (free, leased) and keys held at every scrape, until retired.
 *
 * @example
 * ```ts
 * import { collectPdPool } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * const source = collectPdPool(new MetricsRegistry(), "sender", 0, () => ({ pages: 8, free: 8 }));
 * await source.retire();
 * ```
 */
export function collectPdPool(
  registry: MetricsRegistry,
  role: "sender" | "receiver",
  tpRank: number,
  read: StatsRead<PdPoolView>,
): CollectedSource {
  const rank = String(tpRank);
  return collectFrom(registry, read, (v, sink) => {
    const help = "Pages of the PD buffer, by state (free, leased: held for a request or a key).";
    sink.gauge("kvport_pd_pages", help, { role, tp_rank: rank, state: "free" }, v.free);
    sink.gauge("kvport_pd_pages", help, { role, tp_rank: rank, state: "leased" }, v.pages - v.free);
    if (v.keys) {
      const kh = "Receiver: keys held, by state (pending: allocated, data not landed yet).";
      sink.gauge("kvport_pd_keys", kh, { tp_rank: rank, state: "landed" }, v.keys.landed);
      sink.gauge(
        "kvport_pd_keys",
        kh,
        { tp_rank: rank, state: "pending" },
        v.keys.held - v.keys.landed,
      );
    }
  });
}
