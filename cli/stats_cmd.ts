/**
 * `kvport stats`: a process's metrics for a person at a terminal. Scrapes a `/metrics`
 * URL (what `--metrics-port` serves, or any Prometheus text endpoint) and prints each
 * family's series: counters and gauges with their values (bytes also in KiB/MiB/GiB),
 * histograms as count, mean, p50 and p99 (estimated from the buckets, as Prometheus's
 * `histogram_quantile` does). `--watch S` scrapes every S seconds and adds each
 * counter's rate per second; `--json` prints one JSON snapshot instead.
 *
 * @module
 */
import { after, deadlineSignal } from "../src/deadline.ts";
import process from "node:process";
import { parseExposition } from "../src/metrics/parse.ts";
import {
  type FamilySnapshot,
  type HistogramSample,
  isHistogramSample,
  quantile,
  type ValueSample,
} from "../src/metrics/snapshot.ts";
import { guard, int, parse, UsageError } from "./args.ts";
import type { Command } from "./commands.ts";
import { out } from "./io.ts";

const HELP = `Usage: kvport stats --url URL [--watch S] [--filter TEXT] [--json]
       kvport stats --port P [--host H] ...

Shows the metrics a kvport process serves (kvport pd-receiver, pd-sender, p2p-peer or
p2p-registry with --metrics-port P): counters and gauges with their values, histograms
as count, mean, p50 and p99. Families without any series are left out.

Options:
      --url URL       the metrics endpoint (http://host:port/metrics; host:port is enough)
      --port P        shorthand for --url http://HOST:P/metrics
      --host H        host for --port (default 127.0.0.1)
      --filter TEXT   only families whose name contains TEXT
      --watch S       scrape every S seconds and show counter rates (until Ctrl-C)
      --timeout S     give up on a scrape after S seconds (default 5)
      --json          print one JSON object: { url, time, families } (bucket bound +Inf
                      as the string "+Inf")
  -h, --help          this help

Exit codes: 0 success, 1 the endpoint could not be scraped, 2 usage error.`;

/**
 * The metrics URL from `--url` or `--port`/`--host`.
 *
 * @example
 * ```ts
 * import { metricsUrl } from "./stats_cmd.ts";
 * console.log(metricsUrl(undefined, "9400")); // http://127.0.0.1:9400/metrics
 * ```
 */
export function metricsUrl(url: string | undefined, port: string | undefined, host?: string) {
  if (url !== undefined && port !== undefined) {
    throw new UsageError("give --url or --port, not both");
  }
  if (url === undefined) {
    if (port === undefined) throw new UsageError("--url (or --port) is required");
    const p = int("port", port, 1);
    if (p > 65535) throw new UsageError(`--port expects 1..65535, got ${p}`);
    const h = host ?? "127.0.0.1";
    return `http://${h.includes(":") ? `[${h}]` : h}:${p}/metrics`;
  }
  let u: URL;
  try {
    u = new URL(/^[a-z]+:\/\//i.test(url) ? url : `http://${url}`);
  } catch {
    throw new UsageError(`--url expects http://host:port/metrics, got ${JSON.stringify(url)}`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new UsageError(`--url expects an http(s) URL, got ${JSON.stringify(url)}`);
  }
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/metrics";
  return u.href;
}

/**
 * Scrapes `url` within `timeoutMs`; an error names the URL and what went wrong.
 *
 * @example
 * ```ts
 * import { scrape } from "./stats_cmd.ts";
 * const families = await scrape("http://127.0.0.1:9400/metrics", 5000);
 * ```
 */
export async function scrape(url: string, timeoutMs: number): Promise<FamilySnapshot[]> {
  using deadline = deadlineSignal(timeoutMs);
  let res: Response;
  try {
    res = await fetch(url, { signal: deadline.signal });
  } catch (e) {
    const why = deadline.signal.aborted
      ? `no answer within ${timeoutMs} ms`
      : String((e as Error)?.message ?? e);
    throw new Error(`cannot scrape ${url}: ${why}`);
  }
  const text = await res.text();
  if (!res.ok) {
    throw new Error(`cannot scrape ${url}: HTTP ${res.status}: ${text.trim().slice(0, 200)}`);
  }
  try {
    return parseExposition(text);
  } catch (e) {
    throw new Error(`${url} did not answer in the Prometheus text format: ${(e as Error).message}`);
  }
}

function human(v: number, name: string): string {
  if (!Number.isFinite(v)) return String(v);
  const plain = Number.isInteger(v) || Math.abs(v) >= 1000
    ? v.toFixed(0)
    : v.toPrecision(4).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  if (!/_bytes(_total)?$/.test(name) || Math.abs(v) < 1024) return plain;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let x = v;
  let u = -1;
  while (Math.abs(x) >= 1024 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return `${plain} (${x.toFixed(1)} ${units[u]})`;
}

function seconds(v: number): string {
  if (!Number.isFinite(v)) return "-";
  if (v < 1e-3) return `${(v * 1e6).toFixed(1)} us`;
  if (v < 1) return `${(v * 1e3).toFixed(2)} ms`;
  return `${v.toFixed(3)} s`;
}

function labelsText(labels: Record<string, string>): string {
  const e = Object.entries(labels);
  return e.length === 0 ? "" : `{${e.map(([k, v]) => `${k}="${v}"`).join(",")}}`;
}

function key(name: string, labels: Record<string, string>): string {
  return `${name}${labelsText(labels)}`;
}

/**
 * The human view of `families`; with `previous` (and the seconds between), counters get
 * their rate per second.
 *
 * @example
 * ```ts
 * import { formatStats } from "./stats_cmd.ts";
 * console.log(formatStats([{ name: "a_total", help: "A.", type: "counter",
 *   samples: [{ labels: {}, value: 2 }] }]));
 * ```
 */
export function formatStats(
  families: readonly FamilySnapshot[],
  previous?: { families: readonly FamilySnapshot[]; seconds: number },
): string {
  const before = new Map<string, number>();
  for (const f of previous?.families ?? []) {
    for (const s of f.samples) {
      before.set(key(f.name, s.labels), isHistogramSample(s) ? s.count : s.value);
    }
  }
  const lines: string[] = [];
  for (const f of families) {
    if (f.samples.length === 0) continue;
    lines.push(`${f.name} (${f.type})${f.help ? `: ${f.help}` : ""}`);
    for (const s of f.samples) {
      const lt = labelsText(s.labels) || "{}";
      if (isHistogramSample(s)) {
        const h = s as HistogramSample;
        const mean = h.count > 0 ? h.sum / h.count : NaN;
        const isSec = f.name.endsWith("_seconds");
        const fmt = (v: number) => (isSec ? seconds(v) : human(v, f.name));
        let line = `  ${lt}  count ${h.count}, mean ${fmt(mean)}, p50 ${
          fmt(quantile(h.buckets, 0.5))
        }, p99 ${fmt(quantile(h.buckets, 0.99))}`;
        const b = before.get(key(f.name, s.labels));
        if (previous && b !== undefined && previous.seconds > 0) {
          line += `, ${((h.count - b) / previous.seconds).toFixed(1)}/s`;
        }
        lines.push(line);
      } else {
        const v = (s as ValueSample).value;
        let line = `  ${lt}  ${human(v, f.name)}`;
        const b = before.get(key(f.name, s.labels));
        if (f.type === "counter" && previous && b !== undefined && previous.seconds > 0) {
          line += `  (${human((v - b) / previous.seconds, f.name)}/s)`;
        }
        lines.push(line);
      }
    }
  }
  return lines.length === 0 ? "(no series)" : lines.join("\n");
}

function toJson(url: string, families: readonly FamilySnapshot[]): string {
  return JSON.stringify(
    { url, time: new Date().toISOString(), families },
    (_, v) =>
      typeof v === "number" && !Number.isFinite(v)
        ? (Number.isNaN(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf")
        : v,
  );
}

async function run(args: string[]): Promise<number> {
  const v = parse(args, {
    url: { type: "string" },
    port: { type: "string" },
    host: { type: "string" },
    filter: { type: "string" },
    watch: { type: "string" },
    timeout: { type: "string" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  });
  if (v.help) {
    out(HELP);
    return 0;
  }
  const url = metricsUrl(
    v.url as string | undefined,
    v.port as string | undefined,
    v.host as string | undefined,
  );
  const timeoutMs = int("timeout", v.timeout, 1, 5) * 1000;
  const watchS = v.watch === undefined ? 0 : int("watch", v.watch, 1);
  const filter = v.filter as string | undefined;
  const pick = (fs: FamilySnapshot[]) =>
    filter === undefined ? fs : fs.filter((f) => f.name.includes(filter));
  let families = pick(await scrape(url, timeoutMs));
  if (v.json) {
    out(toJson(url, families));
    if (watchS === 0) return 0;
  } else {
    out(`${url} at ${new Date().toISOString()}`);
    out(formatStats(families));
    if (watchS === 0) return 0;
  }
  // --watch: until SIGINT/SIGTERM, without leaving a listener behind.
  let stopped = false;
  let wake: () => void = () => {};
  const stop = () => {
    stopped = true;
    wake();
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  try {
    let t0 = performance.now();
    while (!stopped) {
      await new Promise<void>((ok) => {
        const t = after(watchS * 1000, ok);
        wake = () => {
          t.clear();
          ok();
        };
      });
      if (stopped) break;
      const next = pick(await scrape(url, timeoutMs));
      const now = performance.now();
      if (v.json) out(toJson(url, next));
      else {
        if (process.stdout.isTTY) process.stdout.write("\x1b[2J\x1b[H");
        out(
          `${url} at ${new Date().toISOString()} (rates over ${((now - t0) / 1000).toFixed(1)} s)`,
        );
        out(formatStats(next, { families, seconds: (now - t0) / 1000 }));
      }
      families = next;
      t0 = now;
    }
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
  }
  return 0;
}

/**
 * `kvport stats`.
 *
 * @example
 * ```ts
 * import { statsCommand } from "./stats_cmd.ts";
 * const code = await statsCommand.run(["--url", "http://127.0.0.1:9400/metrics"]);
 * ```
 */
export const statsCommand: Command = {
  name: "stats",
  summary: "show the metrics a kvport process serves (--metrics-port), or watch their rates",
  run: (args) => guard("stats", () => run(args)),
};
