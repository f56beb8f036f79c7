/**
 * `serveMetrics`: a small HTTP listener answering `GET /metrics` with a registry's text
 * format (over `node:http`, so the same code runs in Deno and Bun). It binds to the
 * host it is given (127.0.0.1 unless told otherwise), answers only `/metrics` (and `/`
 * with a pointer to it), and never keeps a request open: a scrape that takes longer
 * than `timeoutMs` is answered 503.
 *
 * @example
 * ```ts
 * import { metricsRegistry, serveMetrics } from "@kvport/nixl";
 *
 * await using server = await serveMetrics({ port: 0, registry: metricsRegistry() });
 * console.log(server.url); // http://127.0.0.1:41234/metrics
 * ```
 * @module
 */

import * as http from "node:http";
import { MetricsError } from "./family.ts";
import { type MetricsRegistry, metricsRegistry } from "./registry.ts";
import { after, type Timer } from "../deadline.ts";

/** Options of {@linkcode serveMetrics}. */
export interface ServeMetricsOptions {
  /** Address to bind (default `127.0.0.1`). */
  host?: string;
  /** Port (0: any free port; read it from `port` or `url`). */
  port: number;
  /** The registry served (default {@linkcode metricsRegistry}). */
  registry?: MetricsRegistry;
  /** Longest a scrape may take before it is answered 503 (default 10 000 ms). */
  timeoutMs?: number;
}

/** A running `/metrics` listener. */
export interface MetricsServer extends AsyncDisposable {
  /** The host bound. */
  readonly host: string;
  /** The port bound (the real one when 0 was asked). */
  readonly port: number;
  /** `http://host:port/metrics`. */
  readonly url: string;
  /** Stops listening and closes open connections. Idempotent. */
  close(): Promise<void>;
}

function urlHost(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/**
 * Starts answering `GET /metrics` on `host:port` with the registry's exposition text.
 * Fails with a {@linkcode MetricsError} naming the address when it cannot bind.
 *
 * @example
 * ```ts
 * import { MetricsRegistry, serveMetrics } from "@kvport/nixl/metrics";
 * const registry = new MetricsRegistry();
 * await using server = await serveMetrics({ host: "127.0.0.1", port: 0, registry });
 * const text = await (await fetch(server.url)).text();
 * ```
 */
export async function serveMetrics(options: ServeMetricsOptions): Promise<MetricsServer> {
  const host = options.host ?? "127.0.0.1";
  const port = options.port;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new MetricsError(`metrics port must be 0..65535, got ${String(port)}`);
  }
  const registry = options.registry ?? metricsRegistry();
  const timeoutMs = options.timeoutMs ?? 10_000;
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { "content-type": "text/plain", allow: "GET, HEAD" }).end(
        "only GET /metrics\n",
      );
      return;
    }
    if (path === "/") {
      res.writeHead(200, { "content-type": "text/plain" }).end("kvport metrics: GET /metrics\n");
      return;
    }
    if (path !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: GET /metrics\n");
      return;
    }
    let timer: Timer | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = after(
        timeoutMs,
        () => reject(new MetricsError(`the scrape took more than ${timeoutMs} ms`)),
      );
    });
    Promise.race([registry.metrics(), late]).then(
      (text) => {
        res.writeHead(200, {
          "content-type": registry.contentType,
          "content-length": String(new TextEncoder().encode(text).byteLength),
        });
        res.end(req.method === "HEAD" ? undefined : text);
      },
      (e) => {
        res.writeHead(503, { "content-type": "text/plain" }).end(
          `metrics unavailable: ${e instanceof Error ? e.message : String(e)}\n`,
        );
      },
    ).finally(() => timer?.clear());
  });
  // Scrapers keep connections alive between scrapes; closing must not wait for them.
  const sockets = new Set<import("node:net").Socket>();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error) =>
      reject(new MetricsError(`cannot serve metrics on ${host}:${port}: ${e.message}`));
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const addr = server.address();
  const bound = addr && typeof addr !== "string" ? addr.port : port;
  let closing: Promise<void> | undefined;
  const close = () =>
    closing ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const s of sockets) s.destroy();
    });
  return {
    host,
    port: bound,
    url: `http://${urlHost(host)}:${bound}/metrics`,
    close,
    [Symbol.asyncDispose]: close,
  };
}
