/**
 * The TCP streams under the wire: the runtime's own sockets (`Deno.connect` /
 * `Deno.listen` under Deno, `Bun.connect` / `Bun.listen` under Bun) by default, or
 * `node:net` (Node, or on request). Both runtimes build `node:net` as a compatibility
 * layer (a stream, an emitter, deferred callbacks) over the same socket: a bare echo of
 * 200 bytes between two processes on the 2-core development machine took 76-88 us per
 * round trip through Deno's `node:net` against 42-59 us through `Deno.connect`, and 50-53
 * against 24-25 us through Bun's (BENCHMARKS.md, issue 15). All give a
 * {@linkcode TcpStream}, the subset of `net.Socket` that {@linkcode ZmtpConnection}
 * uses, so the ZMTP layer above does not know which one it runs on.
 *
 * `KVPORT_WIRE_TCP=node` picks `node:net` in either runtime (the tests run the wire
 * suites both ways; a comparison needs both in one build); `deno` or `bun` in the other
 * runtime fails.
 *
 * @example
 * ```ts
 * import { tcpConnect, tcpListen, wireTcpKind } from "./tcp.ts";
 *
 * const server = await tcpListen("127.0.0.1", 0, (s) => s.on("data", (d) => s.write(d)));
 * const c = tcpConnect("127.0.0.1", server.port);
 * c.once("connect", () => c.write(new Uint8Array([1, 2, 3])));
 * c.on("data", (d) => {
 *   console.log(wireTcpKind(), d); // "deno" (or "bun") Uint8Array(3) [1, 2, 3]
 *   c.destroy();
 *   server.close();
 * });
 * ```
 *
 * @module
 */

import * as net from "node:net";
import process from "node:process";
import { WireError } from "./errors.ts";
import { denoNet, DenoTcpStream, listenDeno } from "./tcp_deno.ts";
import { bunNet, BunTcpStream } from "./tcp_bun.ts";

export { BunTcpStream, DenoTcpStream };

/**
 * The part of a connected TCP socket the wire uses: `node:net`'s `Socket` has it, and so
 * have {@linkcode DenoTcpStream} and {@linkcode BunTcpStream}. Events: `connect` (outgoing streams), `data`, `error`
 * (then `close`), `close` (once, whatever ended the stream).
 *
 * @example
 * ```ts
 * import type { TcpStream } from "./tcp.ts";
 *
 * function echo(s: TcpStream): void {
 *   s.on("data", (chunk) => s.write(chunk));
 * }
 * console.log(typeof echo);
 * ```
 */
export interface TcpStream {
  /** The stream was destroyed (or closed by the peer); writes fail. */
  readonly destroyed: boolean;
  /** The peer's IP address, when connected. */
  readonly remoteAddress?: string;
  /** The peer's port, when connected. */
  readonly remotePort?: number;
  /** Turns Nagle's algorithm off (`true`). */
  setNoDelay?(noDelay?: boolean): unknown;
  /** Adds a listener. */
  on(event: "data", listener: (chunk: Uint8Array) => void): unknown;
  /** Adds a listener. */
  on(event: "error", listener: (error: Error) => void): unknown;
  /** Adds a listener. */
  on(event: "close" | "connect", listener: () => void): unknown;
  /** Adds a listener called once. */
  once(event: "close" | "connect", listener: () => void): unknown;
  /**
   * Queues bytes; `cb` runs once they were handed to the kernel (or with the error).
   * The stream may keep `data` until then: do not reuse it.
   */
  write(data: Uint8Array, cb?: (error?: Error | null) => void): unknown;
  /** Stops `data` events (back-pressure) until {@linkcode resume}. */
  pause(): unknown;
  /** Resumes `data` events. */
  resume(): unknown;
  /** Closes our sending side once queued bytes are written. */
  end(): unknown;
  /** Closes the stream at once; `close` follows. */
  destroy(): unknown;
}

/**
 * A listening TCP socket.
 *
 * @example
 * ```ts
 * import { tcpListen } from "./tcp.ts";
 *
 * const l = await tcpListen("127.0.0.1", 0, (s) => s.destroy());
 * console.log(l.address, l.port);
 * await l.close();
 * ```
 */
export interface TcpListener {
  /** The address really bound (a host name resolved). */
  readonly address: string;
  /** The port really bound (the chosen one for port 0). */
  readonly port: number;
  /** Stops accepting; resolves once the listener is closed (accepted streams stay). */
  close(): Promise<void>;
}

/** The TCP implementations of {@linkcode wireTcpKind}. */
export type WireTcpKind = "deno" | "bun" | "node";

/**
 * Which TCP implementation the wire uses in this process: the runtime's own sockets
 * (`"deno"`, `"bun"`; the default) or `"node"` (`node:net`: under Node, or with
 * `KVPORT_WIRE_TCP=node`). Read at each call, so a test may switch it between sockets;
 * without permission to read it (Deno without `--allow-env`) the default holds.
 *
 * @throws {WireError} when `KVPORT_WIRE_TCP` is not `node`, `deno` or `bun`, or names the
 *   other runtime
 *
 * @example
 * ```ts
 * import { wireTcpKind } from "./tcp.ts";
 * console.log(wireTcpKind()); // "deno" under Deno, "bun" under Bun
 * ```
 */
export function wireTcpKind(): WireTcpKind {
  const want = wireTcpEnv();
  const own: WireTcpKind = denoNet() ? "deno" : bunNet() ? "bun" : "node";
  if (want === undefined || want === "") return own;
  if (want === "node") return "node";
  if (want === "deno" || want === "bun") {
    if (own === want) return want;
    throw new WireError(
      `KVPORT_WIRE_TCP=${want} needs ${want === "deno" ? "Deno" : "Bun"} (this runtime's ` +
        `own sockets are ${own === "node" ? "none" : own})`,
    );
  }
  throw new WireError(
    `KVPORT_WIRE_TCP must be "node", "deno" or "bun" (or unset), got ${JSON.stringify(want)}`,
  );
}

/**
 * `KVPORT_WIRE_TCP`, or undefined when unset or when this Deno process may not read it:
 * a library reached without `--allow-env` (a JSR user's tests) keeps the default, and
 * asking first means no permission prompt either.
 */
function wireTcpEnv(): string | undefined {
  const deno = (globalThis as {
    Deno?: {
      permissions?: { querySync?(d: { name: "env"; variable: string }): { state: string } };
    };
  }).Deno;
  const query = deno?.permissions?.querySync;
  if (
    query && query.call(deno!.permissions, { name: "env", variable: "KVPORT_WIRE_TCP" })
        .state !== "granted"
  ) {
    return undefined;
  }
  try {
    return process.env.KVPORT_WIRE_TCP;
  } catch {
    return undefined;
  }
}

/**
 * Opens a TCP connection in the background: `connect` when it is up, else `error` and
 * `close`.
 *
 * @param host a host name or IP address
 * @param port the port
 * @returns the stream (not yet connected)
 *
 * @example
 * ```ts
 * import { tcpConnect } from "./tcp.ts";
 * const s = tcpConnect("127.0.0.1", 9);
 * s.on("error", (e) => console.log(e.message));
 * s.once("close", () => console.log("closed"));
 * ```
 */
export function tcpConnect(host: string, port: number): TcpStream {
  const kind = wireTcpKind();
  if (kind === "deno") {
    const s = new DenoTcpStream();
    s.connectWith(denoNet()!.connect({ hostname: host, port, transport: "tcp" }));
    return s;
  }
  if (kind === "bun") return BunTcpStream.connect(bunNet()!, host, port);
  return net.createConnection({ host, port });
}

/**
 * Listens on `host:port` and hands every accepted connection to `onConnection`.
 *
 * @param host the address to bind (`0.0.0.0` for all)
 * @param port the port, 0 for a free one
 * @param onConnection called with each accepted (connected) stream
 * @param onError called when the listener fails after it started (rare)
 * @returns the listener, once bound
 * @throws {Error} the runtime's error when the address cannot be bound (e.g. in use)
 *
 * @example
 * ```ts
 * import { tcpListen } from "./tcp.ts";
 * const l = await tcpListen("127.0.0.1", 0, (s) => s.end());
 * console.log(`listening on ${l.address}:${l.port}`);
 * await l.close();
 * ```
 */
export async function tcpListen(
  host: string,
  port: number,
  onConnection: (stream: TcpStream) => void,
  onError: (error: Error) => void = () => {},
): Promise<TcpListener> {
  const kind = wireTcpKind();
  if (kind === "deno") return listenDeno(denoNet()!, host, port, onConnection, onError);
  if (kind === "bun") return BunTcpStream.listen(bunNet()!, host, port, onConnection);
  const server = net.createServer((tcp) => onConnection(tcp));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", onError);
  const addr = server.address();
  const real = addr !== null && typeof addr !== "string";
  return {
    address: real ? addr.address : host,
    port: real ? addr.port : port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
