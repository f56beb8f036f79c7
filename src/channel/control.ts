/**
 * The control-plane sockets channels and PD use, over the wire layer: a REP server
 * that always answers (an `ErrorMsg` when a request cannot be served, so no peer waits
 * for a reply that never comes), a REQ requester that knows when its peer went away, a
 * PULL collector and a PUSH notifier. Messages are LMCache's msgpack maps.
 *
 * @module
 */

import {
  type CurveClientOptions,
  type CurveServerOptions,
  decodeMessage,
  encodeMessage,
  type LmcacheMessage,
  type PeerInfo,
  PullSocket,
  PushSocket,
  RepSocket,
  ReqSocket,
  type WireError,
} from "./wire/mod.ts";
import { errorMessage } from "./_util.ts";
import { countMessageError } from "./wire/metrics.ts";
import { metricsRegistry } from "../metrics/registry.ts";
import type { SideMessage } from "./types.ts";

/** A listening socket. */
export interface ControlServer {
  /** `host:port` bound (the real port when 0 was asked). */
  readonly url: string;
  /** Stops listening and closes every connection. Idempotent. */
  close(): Promise<void>;
}

/**
 * Computes the reply of one request; a throw becomes an `ErrorMsg` reply. `gone` aborts
 * when the requester's connection closes (it gave up or went away): nobody will read
 * the reply, so a handler that waits can stop and undo what it did for it.
 */
export type RequestHandler = (
  message: SideMessage,
  from: string,
  gone: AbortSignal,
) => Promise<SideMessage>;

/** Options of {@linkcode serveRequests}. */
export interface ServeOptions {
  /** Largest request accepted; a larger frame disconnects the peer. */
  maxMessageBytes?: number;
  /** Told about misbehaving peers and failed requests. */
  onError?: (error: Error) => void;
  /**
   * The reply to a request that failed (default `ErrorMsg{error}`). `request` is the
   * decoded request, `undefined` when it did not decode. PD's allocation socket answers
   * with its own message types here, since LMCache's sender cannot decode `ErrorMsg`.
   */
  errorReply?: (error: Error, request: SideMessage | undefined) => SideMessage;
  /** CURVE server settings (default NULL): clients not allowed are refused. */
  curve?: CurveServerOptions;
}

function toUrl(endpoint: string): string {
  const s = endpoint.replace(/^tcp:\/\//, "");
  return s;
}

function asMessage(m: SideMessage): LmcacheMessage {
  return m as unknown as LmcacheMessage;
}

/**
 * Binds a REP socket on `url` and serves `handler`. A request that does not decode, or
 * whose handler throws, is answered `ErrorMsg{error}` naming what went wrong.
 */
export async function serveRequests(
  url: string,
  handler: RequestHandler,
  options: ServeOptions = {},
): Promise<ControlServer> {
  const sock = await RepSocket.bind(url, {
    maxMessageBytes: options.maxMessageBytes,
    maxFrames: 4,
    onError: (e: WireError) => options.onError?.(e),
    curve: options.curve,
  });
  const bound = sock.endpoints[0] ?? `tcp://${url}`;
  const serving = sock.serve(async (frames, peer: PeerInfo, gone: AbortSignal) => {
    let reply: SideMessage;
    let request: SideMessage | undefined;
    try {
      if (frames.length !== 1) {
        throw new Error(`expected a request of one frame, got ${frames.length}`);
      }
      let msg;
      try {
        msg = decodeMessage(frames[0], undefined, { peer: peer.address });
      } catch (e) {
        countMessageError(metricsRegistry(), "REP");
        throw e;
      }
      request = msg as unknown as SideMessage;
      reply = await handler(request, peer.address, gone);
    } catch (e) {
      const error = e instanceof Error ? e : new Error(String(e));
      options.onError?.(error);
      reply = options.errorReply?.(error, request) ??
        { type: "ErrorMsg", error: errorMessage(e) };
    }
    try {
      return encodeMessage(asMessage(reply));
    } catch (e) {
      return encodeMessage({ type: "ErrorMsg", error: `reply not encodable: ${errorMessage(e)}` });
    }
  });
  serving.catch(() => {});
  return {
    url: toUrl(bound),
    close: () => sock.close(),
  };
}

/** A REQ connection to one peer. */
export interface Requester {
  /** Sends a request, waits at most `timeoutMs` for its reply. */
  request(message: SideMessage, timeoutMs: number): Promise<SideMessage>;
  /**
   * Why the peer is gone (its connection closed since it was first made, e.g. it
   * restarted), or `null` while the first connection is alive.
   */
  readonly lost: string | null;
  /** Closes the socket. Idempotent. */
  close(): Promise<void>;
}

/**
 * Connects a REQ socket to `url` and waits (at most `timeoutMs`) for the connection.
 * `lost` turns non-null when that connection goes away: the socket reconnects by
 * itself, but a new connection may be a restarted peer that has forgotten us.
 */
export async function openRequester(
  url: string,
  options: { timeoutMs: number; maxMessageBytes?: number; curve?: CurveClientOptions },
): Promise<Requester> {
  const sock = ReqSocket.connect(url, {
    curve: options.curve,
    timeoutMs: options.timeoutMs,
    connectTimeoutMs: Math.min(options.timeoutMs, 5000),
    maxMessageBytes: options.maxMessageBytes,
    reconnectIntervalMs: 50,
    reconnectMaxIntervalMs: 1000,
  });
  let first: PeerInfo;
  try {
    first = await sock.waitForPeer({ timeoutMs: options.timeoutMs });
  } catch (e) {
    await sock.close();
    throw e;
  }
  let lostWhy: string | null = null;
  return {
    get lost(): string | null {
      if (lostWhy === null && !sock.peers.includes(first)) {
        lostWhy = `the connection to ${url} closed`;
      }
      return lostWhy;
    },
    async request(message: SideMessage, timeoutMs: number): Promise<SideMessage> {
      const [reply] = await sock.request(encodeMessage(asMessage(message)), { timeoutMs })
        .catch((e) => {
          lostWhy ??= errorMessage(e);
          throw e;
        });
      if (!sock.peers.includes(first)) lostWhy ??= `the connection to ${url} was replaced`;
      try {
        return decodeMessage(reply, undefined, { peer: url }) as unknown as SideMessage;
      } catch (e) {
        countMessageError(metricsRegistry(), "REQ");
        throw e;
      }
    },
    close: () => sock.close(),
  };
}

/** A PUSH connection. */
export interface Pusher {
  /** Sends one message, waiting at most `timeoutMs` for a peer and the write. */
  send(message: SideMessage, timeoutMs: number): Promise<void>;
  /** Closes the socket. Idempotent. */
  close(): Promise<void>;
}

/** Connects a PUSH socket to `url` (in the background; `send` waits for it). */
export function openPusher(url: string, options: { timeoutMs: number }): Promise<Pusher> {
  const sock = PushSocket.connect(url, {
    timeoutMs: options.timeoutMs,
    reconnectIntervalMs: 50,
    reconnectMaxIntervalMs: 1000,
  });
  return Promise.resolve({
    send: (message: SideMessage, timeoutMs: number) =>
      sock.send(encodeMessage(asMessage(message)), { timeoutMs }),
    close: () => sock.close(),
  });
}

/**
 * Binds a PULL socket on `url`; `handler` gets every message that decodes (others are
 * handed over as `{ type: "<undecodable>", error }` so the caller can count them).
 */
export async function servePull(
  url: string,
  handler: (message: SideMessage, from: string) => void,
  options: ServeOptions = {},
): Promise<ControlServer> {
  const sock = await PullSocket.bind(url, {
    maxMessageBytes: options.maxMessageBytes,
    maxFrames: 4,
    onError: (e: WireError) => options.onError?.(e),
  });
  const bound = sock.endpoints[0] ?? `tcp://${url}`;
  (async () => {
    for await (const frames of sock) {
      let msg: SideMessage;
      try {
        if (frames.length !== 1) throw new Error(`expected one frame, got ${frames.length}`);
        msg = decodeMessage(frames[0]) as unknown as SideMessage;
      } catch (e) {
        countMessageError(metricsRegistry(), "PULL");
        msg = { type: "<undecodable>", error: errorMessage(e) };
      }
      try {
        handler(msg, bound);
      } catch {
        // The handler's failure is its own.
      }
    }
  })().catch(() => {});
  return { url: toUrl(bound), close: () => sock.close() };
}
