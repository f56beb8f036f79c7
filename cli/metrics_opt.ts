/**
 * `--metrics-port P` and `--metrics-host H` of the long-running commands (`pd-receiver`,
 * `pd-sender`, `p2p-peer`, `p2p-registry`): serve the process's metrics registry on
 * `http://H:P/metrics` (H defaults to 127.0.0.1; P 0 picks a free port, printed on the
 * ready line).
 *
 * @example
 * ```ts
 * import { METRICS_OPTIONS, startMetrics } from "./metrics_opt.ts";
 * import { parse } from "./args.ts";
 * const v = parse(["--metrics-port", "0"], { ...METRICS_OPTIONS });
 * const server = await startMetrics(v);
 * console.log(server?.url);
 * await server?.close();
 * ```
 * @module
 */
import { type MetricsServer, serveMetrics } from "../src/metrics/server.ts";
import { int, type ParseOptions, UsageError } from "./args.ts";

/** The `parseArgs` options of the metrics flags. */
export const METRICS_OPTIONS: ParseOptions = {
  "metrics-port": { type: "string" },
  "metrics-host": { type: "string" },
};

/** The help lines of the metrics flags. */
export const METRICS_HELP =
  `      --metrics-port P    serve Prometheus metrics on http://HOST:P/metrics
                          (0: any free port; the address is on the ready line)
      --metrics-host H    address the metrics listener binds (default 127.0.0.1)`;

/**
 * Starts the metrics listener when `--metrics-port` was given (else `null`); a bad port
 * is a usage error, a port that cannot be bound an error naming the address.
 *
 * @example
 * ```ts
 * import { startMetrics } from "./metrics_opt.ts";
 * const server = await startMetrics({ "metrics-port": "0" });
 * await server?.close();
 * ```
 */
export async function startMetrics(
  v: Record<string, string | boolean | undefined>,
): Promise<MetricsServer | null> {
  const flags = checkMetricsFlags(v);
  return flags ? await serveMetrics(flags) : null;
}

/**
 * Checks `--metrics-port` / `--metrics-host` without binding anything, so a command
 * reports a bad flag as a usage error before it reads its configuration. Returns what
 * to bind, or `null` without `--metrics-port`.
 *
 * @example
 * ```ts
 * import { checkMetricsFlags } from "./metrics_opt.ts";
 * console.log(checkMetricsFlags({ "metrics-port": "9400" })); // { host: "127.0.0.1", port: 9400 }
 * ```
 */
export function checkMetricsFlags(
  v: Record<string, string | boolean | undefined>,
): { host: string; port: number } | null {
  const portText = v["metrics-port"];
  const host = v["metrics-host"];
  if (portText === undefined) {
    if (host !== undefined) throw new UsageError("--metrics-host needs --metrics-port");
    return null;
  }
  const port = int("metrics-port", portText as string, 0);
  if (port > 65535) throw new UsageError(`--metrics-port expects 0..65535, got ${port}`);
  if (host !== undefined && (typeof host !== "string" || host.trim() === "")) {
    throw new UsageError("--metrics-host expects an address, e.g. 127.0.0.1 or 0.0.0.0");
  }
  return { host: (host as string | undefined) ?? "127.0.0.1", port };
}
