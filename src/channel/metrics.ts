/**
 * The channel layer's metrics: page batches moved (by role, op and peer), their latency
 * and outcome, handshakes and re-handshakes, and the peers and pages of each live
 * channel (read at scrape time). Peers are label values bounded by the registry (64 per
 * family, then `"other"`). See docs/METRICS.md.
 *
 * @example
 * ```ts
 * import { channelMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * const m = channelMetrics(new MetricsRegistry(), "sender")!;
 * m.transferred("WRITE", "localhost:7300", 8, 8 * 4096, 0.002);
 * ```
 * @module
 */

import type { Counter, CounterCell, Histogram, HistogramCell } from "../metrics/family.ts";
import type { MetricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, collectFrom, type StatsRead } from "../metrics/source.ts";

/** The cells one successful batch with a peer adds to (see `transferred`). */
interface PeerCells {
  ok: CounterCell;
  pages: CounterCell;
  bytes: CounterCell;
  seconds: HistogramCell;
}

/** Most (op, peer) pairs whose cells are kept at hand; beyond, the lookup starts over. */
const MAX_PEER_CELLS = 1024;

/**
 * The channel metrics of one role in one registry.
 *
 * @example
 * ```ts
 * import { ChannelMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * new ChannelMetrics(new MetricsRegistry(), "receiver").handshake("responder", true);
 * ```
 */
export class ChannelMetrics {
  readonly #role: string;
  /** The cells of each (op, peer) seen (series are never removed, so they stay valid):
   * a batch adds to them without four label lookups. */
  readonly #peerCells = new Map<string, PeerCells>();
  readonly #transfers: Counter;
  readonly #pages: Counter;
  readonly #bytes: Counter;
  readonly #seconds: Histogram;
  readonly #handshakes: Counter;
  readonly #rehandshakes: Counter;

  /** The families of `role` in `registry`. */
  constructor(registry: MetricsRegistry, role: string) {
    this.#role = role;
    this.#transfers = registry.counter({
      name: "kvport_channel_transfers_total",
      help: "Page batches (one channel write or read) that ended, by status: ok or the " +
        "ChannelError code.",
      labels: ["role", "op", "status"],
    });
    this.#pages = registry.counter({
      name: "kvport_channel_pages_total",
      help: "Pages (KV chunks) moved by successful batches, by peer.",
      labels: ["role", "op", "peer"],
    });
    this.#bytes = registry.counter({
      name: "kvport_channel_bytes_total",
      help: "Bytes moved by successful batches (pages x page size), by peer.",
      labels: ["role", "op", "peer"],
    });
    this.#seconds = registry.histogram({
      name: "kvport_channel_transfer_seconds",
      help: "Duration of successful page batches, from the call to the data in place.",
      labels: ["role", "op"],
    });
    this.#handshakes = registry.counter({
      name: "kvport_channel_handshakes_total",
      help: "Handshakes, by side (initiator: connect; responder: answered) and result.",
      labels: ["role", "side", "result"],
    });
    this.#rehandshakes = registry.counter({
      name: "kvport_channel_rehandshakes_total",
      help: "Handshakes that replaced a known peer's entry (a restarted or reconnecting peer).",
      labels: ["role"],
    });
    // Present from the start, so that rates and alerts see a 0 rather than no series.
    for (const op of ["WRITE", "READ"]) this.#transfers.labels(role, op, "ok");
    this.#rehandshakes.labels(role);
  }

  /** A batch moved `pages` pages (`bytes` bytes) with `peer` in `seconds`. */
  transferred(op: string, peer: string, pages: number, bytes: number, seconds: number): void {
    const key = op + "\u0000" + peer;
    let c = this.#peerCells.get(key);
    if (c === undefined) {
      const role = this.#role;
      if (this.#peerCells.size >= MAX_PEER_CELLS) this.#peerCells.clear();
      this.#peerCells.set(
        key,
        c = {
          ok: this.#transfers.labels(role, op, "ok"),
          pages: this.#pages.labels(role, op, peer),
          bytes: this.#bytes.labels(role, op, peer),
          seconds: this.#seconds.labels(role, op),
        },
      );
    }
    c.ok.inc();
    c.pages.inc(pages);
    c.bytes.inc(bytes);
    c.seconds.observe(seconds);
  }

  /** A batch failed with `code` (a ChannelError code). */
  failed(op: string, code: string): void {
    this.#transfers.labels(this.#role, op, code).inc();
  }

  /** A handshake ended. */
  handshake(side: "initiator" | "responder", ok: boolean): void {
    this.#handshakes.labels(this.#role, side, ok ? "ok" : "error").inc();
  }

  /** A known peer handshook again. */
  rehandshake(): void {
    this.#rehandshakes.labels(this.#role).inc();
  }
}

const cache = new WeakMap<MetricsRegistry, Map<string, ChannelMetrics>>();

/**
 * The channel metrics of `role` in `registry`, or `undefined` when it is disabled.
 *
 * @example
 * ```ts
 * import { channelMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * channelMetrics(new MetricsRegistry(), "sender")?.failed("WRITE", "TIMEOUT");
 * ```
 */
export function channelMetrics(
  registry: MetricsRegistry,
  role: string,
): ChannelMetrics | undefined {
  if (!registry.enabled) return undefined;
  let byRole = cache.get(registry);
  if (!byRole) cache.set(registry, byRole = new Map());
  let m = byRole.get(role);
  if (!m) byRole.set(role, m = new ChannelMetrics(registry, role));
  return m;
}

/**
 * Reports a live channel's peers and buffer pages at every scrape, until retired.
 *
 * @example
 * ```ts
 * import { collectChannel } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * const labels = { role: "sender", type: "nixl" };
 * const source = collectChannel(new MetricsRegistry(), labels, 16, () => 2);
 * await source.retire();
 * ```
 */
export function collectChannel(
  registry: MetricsRegistry,
  labels: { role: string; type: string },
  pages: number,
  peers: StatsRead<number>,
): CollectedSource {
  return collectFrom(registry, peers, (n, sink) => {
    sink.gauge("kvport_channel_peers", "Peers known to live channels.", labels, n);
    sink.gauge("kvport_channel_buffer_pages", "Pages of live channels' buffers.", labels, pages);
  });
}
