/**
 * The agent layer's metrics: transfers by op and status, their bytes and latency, the
 * requests in flight and notifications, recorded by `TransferRequest` and `NixlAgent`
 * through cells cached per agent (an update is a field increment); and the engine's own
 * counters of which data path each post took (`kvp_agent_info`: `posts_mem`,
 * `posts_tcp`, ...), read at scrape time. See docs/METRICS.md.
 *
 * @example
 * ```ts
 * import { agentMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * const m = agentMetrics(new MetricsRegistry())!;
 * const since = m.write.started(0);
 * m.write.finished(0, since, 4096);
 * ```
 * @module
 */

import type { CounterCell, GaugeCell, HistogramCell } from "../metrics/family.ts";
import type { MetricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, collectFrom, type StatsRead } from "../metrics/source.ts";
import { statusName } from "../errors.ts";

const SUCCESS = 0;

/**
 * Requests of at least this many bytes are timed from before their post, so those that
 * complete inside the post are in the latency histogram too. Smaller ones that complete
 * there are counted but not timed: a clock read costs 40-90 ns, a 4 KiB post about 1 us.
 */
export const TIMED_POST_BYTES = 1 << 20;

/**
 * The cells of one op (`READ` or `WRITE`) of one agent.
 *
 * @example
 * ```ts
 * import { OpMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * const m = new OpMetrics(new MetricsRegistry(), "WRITE");
 * m.succeeded(4096, 0); // completed inside its post, untimed
 * ```
 */
export class OpMetrics {
  readonly #ok: CounterCell;
  readonly #bytes: CounterCell;
  readonly #seconds: HistogramCell;
  readonly #inflight: GaugeCell;
  readonly #timeouts: CounterCell;
  readonly #status: (status: string) => CounterCell;

  /** The cells of `op` in `registry`. */
  constructor(registry: MetricsRegistry, op: "READ" | "WRITE") {
    const transfers = registry.counter({
      name: "kvport_agent_transfers_total",
      help: "Transfer requests that ended, by op and NIXL status name (SUCCESS or NIXL_ERR_*).",
      labels: ["op", "status"],
    });
    this.#ok = transfers.labels(op, "SUCCESS");
    this.#status = (s) => transfers.labels(op, s);
    this.#bytes = registry.counter({
      name: "kvport_agent_transfer_bytes_total",
      help: "Bytes moved by successful transfer requests (sum of their local descriptors).",
      labels: ["op"],
    }).labels(op);
    this.#seconds = registry.histogram({
      name: "kvport_agent_transfer_seconds",
      help: "Post to completion of successful requests (those under 1 MiB that complete " +
        "inside the post are not timed).",
      labels: ["op"],
    }).labels(op);
    this.#inflight = registry.gauge({
      name: "kvport_agent_transfers_in_flight",
      help: "Transfer requests posted and not yet ended.",
      labels: ["op"],
    }).labels(op);
    this.#timeouts = registry.counter({
      name: "kvport_agent_wait_timeouts_total",
      help: "Waits on a transfer request that ran out of time (the request may end later).",
      labels: ["op"],
    }).labels(op);
  }

  /** A request completed inside its post (`t0`: when the post started, 0 if untimed). */
  succeeded(bytes: number, t0: number): void {
    this.#ok.value++;
    this.#bytes.value += bytes;
    if (t0 !== 0) this.#seconds.observe((performance.now() - t0) / 1000);
  }

  /** A post failed at once with `status`. */
  failed(status: number): void {
    this.#status(statusName(status)).inc();
  }

  /**
   * A post went pending: returns its start time (ms; `t0` when the post was timed), to
   * hand to {@linkcode finished}.
   */
  started(t0: number): number {
    this.#inflight.value++;
    return t0 || performance.now() || Number.MIN_VALUE; // never 0: 0 means "not pending"
  }

  /** A pending request ended with `status`. */
  finished(status: number, since: number, bytes: number): void {
    this.#inflight.value--;
    if (status === SUCCESS) {
      this.#ok.value++;
      this.#bytes.value += bytes;
      this.#seconds.observe((performance.now() - since) / 1000);
    } else this.#status(statusName(status)).inc();
  }

  /** A wait ran out of time. */
  timedOut(): void {
    this.#timeouts.value++;
  }
}

/** The metrics of one agent: per op, notifications, and the engine's path counters. */
export interface AgentMetrics {
  /** READ requests. */
  read: OpMetrics;
  /** WRITE requests. */
  write: OpMetrics;
  /** Notifications sent. */
  notifSent: CounterCell;
  /** Notifications received. */
  notifReceived: CounterCell;
}

const cache = new WeakMap<MetricsRegistry, AgentMetrics>();

/**
 * The agent metrics of `registry`, or `undefined` when it is disabled.
 *
 * @example
 * ```ts
 * import { agentMetrics } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * console.log(agentMetrics(new MetricsRegistry({ enabled: false }))); // undefined
 * ```
 */
export function agentMetrics(registry: MetricsRegistry): AgentMetrics | undefined {
  if (!registry.enabled) return undefined;
  let m = cache.get(registry);
  if (!m) {
    const notes = registry.counter({
      name: "kvport_agent_notifications_total",
      help: "Notifications sent to and taken from peers.",
      labels: ["direction"],
    });
    m = {
      read: new OpMetrics(registry, "READ"),
      write: new OpMetrics(registry, "WRITE"),
      notifSent: notes.labels("sent"),
      notifReceived: notes.labels("received"),
    };
    cache.set(registry, m);
  }
  return m;
}

const PATHS = ["mem", "cma", "tcp", "file", "cuda"] as const;

/**
 * Collects the engine's counters of one agent at scrape time (`posts_<path>`,
 * `posts_inline`, `posts_staged` of `kvp_agent_info`; engines without them report
 * none) and counts it as a live agent. `retire()` before the agent is destroyed.
 *
 * @example
 * ```ts
 * import { collectAgentInfo } from "./metrics.ts";
 * import { MetricsRegistry } from "../metrics/registry.ts";
 * const source = collectAgentInfo(new MetricsRegistry(), "builtin", () => ({ posts_mem: "3" }));
 * await source.retire();
 * ```
 */
export function collectAgentInfo(
  registry: MetricsRegistry,
  engine: string,
  info: StatsRead<Record<string, string>>,
): CollectedSource {
  return collectFrom(registry, info, (i, sink) => {
    sink.gauge("kvport_agents", "Live agents, by engine.", { engine }, 1);
    for (const path of PATHS) {
      const v = Number(i[`posts_${path}`]);
      if (!Number.isFinite(v)) continue;
      sink.counter(
        "kvport_agent_posts_total",
        "Posts by the data path the engine took (mem: shared memory, cma: cross-memory " +
          "attach, tcp, file, cuda).",
        { path },
        v,
      );
    }
    const inline = Number(i.posts_inline);
    if (Number.isFinite(inline)) {
      sink.counter(
        "kvport_agent_posts_inline_total",
        "Posts that completed inside the post call.",
        {},
        inline,
      );
    }
    const staged = Number(i.posts_staged);
    if (Number.isFinite(staged)) {
      sink.counter(
        "kvport_agent_posts_staged_total",
        "GPU posts staged through pinned host memory.",
        {},
        staged,
      );
    }
  });
}
