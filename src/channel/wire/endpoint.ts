/**
 * Endpoint strings: `tcp://host:port`, or LMCache's bare `host:port`.
 *
 * @example
 * ```ts
 * import { formatEndpoint, parseEndpoint } from "@kvport/nixl/wire";
 *
 * const ep = parseEndpoint("tcp://*:0", "bind");
 * console.log(ep, formatEndpoint({ host: "::1", port: 7300 }));
 * // { host: "0.0.0.0", port: 0 } tcp://[::1]:7300
 * ```
 *
 * @module
 */

import { WireError } from "./errors.ts";

/** A TCP host and port. */
export interface Endpoint {
  /** Host name or IP address (IPv6 without brackets). */
  host: string;
  /** Port; 0 when binding means "any free port". */
  port: number;
}

/**
 * Parses `tcp://host:port` or `host:port` (IPv6 as `[::1]:port`). When binding, `*` or an
 * empty host means all interfaces and port 0 means any free port; when connecting, both
 * must be concrete. Other transports (`ipc://`, `inproc://`) are refused.
 *
 * @param url the endpoint
 * @param mode `"bind"` or `"connect"`
 * @returns host and port
 * @throws {WireError} naming the endpoint and what is wrong with it
 *
 * @example
 * ```ts
 * import { parseEndpoint } from "@kvport/nixl/wire";
 *
 * console.log(parseEndpoint("localhost:7300", "connect")); // { host: "localhost", port: 7300 }
 * ```
 */
export function parseEndpoint(url: string, mode: "bind" | "connect"): Endpoint {
  let rest = url;
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(url);
  if (scheme) {
    if (scheme[1].toLowerCase() !== "tcp") {
      throw new WireError(
        `unsupported transport "${scheme[1]}" in endpoint ${JSON.stringify(url)}: ` +
          `only tcp:// is supported`,
      );
    }
    rest = url.slice(scheme[0].length);
  }
  const m = /^\[([^\]]*)\]:(\d+)$/.exec(rest) ?? /^([^:\[\]]*):(\d+)$/.exec(rest);
  if (!m) {
    throw new WireError(
      `expected an endpoint "tcp://host:port" or "host:port", got ${JSON.stringify(url)}`,
    );
  }
  let host = m[1];
  const port = Number(m[2]);
  if (!Number.isInteger(port) || port > 65535) {
    throw new WireError(`port of endpoint ${JSON.stringify(url)} is out of range 0..65535`);
  }
  if (mode === "bind") {
    if (host === "*" || host === "") host = "0.0.0.0";
  } else {
    if (host === "*" || host === "") {
      throw new WireError(
        `cannot connect to ${JSON.stringify(url)}: a concrete host is needed, got "${host}"`,
      );
    }
    if (port === 0) {
      throw new WireError(`cannot connect to ${JSON.stringify(url)}: port 0 is not a port`);
    }
  }
  return { host, port };
}

/**
 * Formats an endpoint as `tcp://host:port` (IPv6 hosts in brackets).
 *
 * @param endpoint host and port
 * @returns the endpoint string
 *
 * @example
 * ```ts
 * import { formatEndpoint } from "@kvport/nixl/wire";
 *
 * console.log(formatEndpoint({ host: "127.0.0.1", port: 7300 })); // tcp://127.0.0.1:7300
 * ```
 */
export function formatEndpoint(endpoint: Endpoint): string {
  const host = endpoint.host.includes(":") ? `[${endpoint.host}]` : endpoint.host;
  return `tcp://${host}:${endpoint.port}`;
}
