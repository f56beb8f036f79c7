/**
 * The side channel's metrics (ZMTP sockets and LMCache messages): connections made and
 * open, peers refused for breaking the protocol (a frame over the size limit, too many
 * frames, a bad greeting or command) or for a handshake that never finished, and
 * messages that did not decode. Labelled by socket type (REQ, REP, PUSH, PULL, DEALER,
 * ROUTER), a bounded set. See docs/METRICS.md.
 *
 * @example
 * ```ts
 * import { wireMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../../metrics/registry.ts";
 * const m = wireMetrics(new MetricsRegistry(), "REP")!;
 * m.connected();
 * m.refused("protocol");
 * ```
 * @module
 */

import type { Counter, CounterCell, GaugeCell } from "../../metrics/family.ts";
import type { MetricsRegistry } from "../../metrics/registry.ts";

/**
 * The cells of one socket type.
 *
 * @example
 * ```ts
 * import { WireMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../../metrics/registry.ts";
 * new WireMetrics(new MetricsRegistry(), "ROUTER").refused("timeout");
 * ```
 */
export class WireMetrics {
  readonly #connections: CounterCell;
  readonly #open: GaugeCell;
  readonly #refused: Counter;
  readonly #socket: string;

  /** The cells of `socket` in `registry`. */
  constructor(registry: MetricsRegistry, socket: string) {
    this.#socket = socket;
    this.#connections = registry.counter({
      name: "kvport_wire_connections_total",
      help: "Side-channel (ZMTP) connections whose handshake completed, by socket type.",
      labels: ["socket"],
    }).labels(socket);
    this.#open = registry.gauge({
      name: "kvport_wire_connections_open",
      help: "Side-channel connections open now, by socket type.",
      labels: ["socket"],
    }).labels(socket);
    this.#refused = registry.counter({
      name: "kvport_wire_refused_total",
      help: "Side-channel peers disconnected for a protocol error (reason protocol: a frame " +
        "over the size limit, too many frames, a bad greeting or command) or a handshake " +
        "that did not finish in time (reason timeout).",
      labels: ["socket", "reason"],
    });
    this.#refused.labels(socket, "protocol");
  }

  /** A connection completed its handshake. */
  connected(): void {
    this.#connections.value++;
    this.#open.value++;
  }

  /** A handshaken connection closed. */
  disconnected(): void {
    this.#open.value--;
  }

  /** A peer was disconnected for `reason`. */
  refused(reason: "protocol" | "timeout"): void {
    this.#refused.labels(this.#socket, reason).inc();
  }
}

const cache = new WeakMap<MetricsRegistry, Map<string, WireMetrics>>();

/**
 * The cells of socket type `socket`, or `undefined` when `registry` is disabled.
 *
 * @example
 * ```ts
 * import { wireMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../../metrics/registry.ts";
 * wireMetrics(new MetricsRegistry(), "PULL")?.connected();
 * ```
 */
export function wireMetrics(registry: MetricsRegistry, socket: string): WireMetrics | undefined {
  if (!registry.enabled) return undefined;
  let bySocket = cache.get(registry);
  if (!bySocket) cache.set(registry, bySocket = new Map());
  let m = bySocket.get(socket);
  if (!m) bySocket.set(socket, m = new WireMetrics(registry, socket));
  return m;
}

/**
 * Counts a message that arrived but did not decode as an LMCache message (or was
 * malformed on the socket: wrong frame count), by the socket type it came on.
 *
 * @example
 * ```ts
 * import { countMessageError } from "./metrics.ts";
 * import { MetricsRegistry } from "../../metrics/registry.ts";
 * countMessageError(new MetricsRegistry(), "PULL");
 * ```
 */
export function countMessageError(registry: MetricsRegistry, socket: string): void {
  if (!registry.enabled) return;
  registry.counter({
    name: "kvport_wire_message_errors_total",
    help: "Side-channel messages that did not decode as LMCache messages, by socket type.",
    labels: ["socket"],
  }).labels(socket).inc();
}
