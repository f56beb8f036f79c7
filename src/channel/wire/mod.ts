/**
 * LMCache's control plane on the wire, in TypeScript for Deno and Bun: ZeroMQ's ZMTP 3.x
 * protocol (NULL or CURVE security, over `node:net`, interoperable with libzmq 4.x / pyzmq) and
 * the catalogue of LMCache's msgpack messages.
 *
 * - Sockets: {@linkcode ReqSocket} / {@linkcode RepSocket}, {@linkcode PushSocket} /
 *   {@linkcode PullSocket}, {@linkcode DealerSocket} / {@linkcode RouterSocket}. Every
 *   receive and request has a deadline; a REQ socket whose request timed out is recreated
 *   instead of wedging; connecting sockets reconnect; a peer announcing a frame larger than
 *   `maxMessageBytes` (64 MiB by default) is disconnected before anything is allocated.
 *   `close()` is idempotent and releases every timer and TCP socket; `await using` works.
 * - Messages: {@linkcode encodeMessage} / {@linkcode decodeMessage} over typed interfaces
 *   named after LMCache's classes ({@linkcode NixlInitRequest}, {@linkcode AllocRequest},
 *   {@linkcode BatchedLookupAndGetMsg}, ...), byte-identical to LMCache's msgspec output.
 * - Errors: {@linkcode WireTimeoutError}, {@linkcode WireProtocolError},
 *   {@linkcode WireClosedError}, {@linkcode WireMessageError}, all {@linkcode WireError}.
 *
 * @example
 * ```ts
 * import { decodeMessage, encodeMessage, RepSocket, ReqSocket } from "@kvport/nixl/wire";
 *
 * // Responder: the NIXL channel's init side channel.
 * await using rep = await RepSocket.bind("tcp://127.0.0.1:0");
 * rep.serve(([body]) => {
 *   const req = decodeMessage(body, ["NixlInitRequest"]);
 *   return encodeMessage({
 *     type: "NixlInitResponse",
 *     remote_agent_name: new TextEncoder().encode("agent-b"),
 *     remote_meta_bytes: req.local_meta_bytes,
 *   });
 * });
 *
 * // Initiator.
 * await using req = ReqSocket.connect(`127.0.0.1:${rep.port}`, { timeoutMs: 2000 });
 * const [reply] = await req.request(
 *   encodeMessage({ type: "NixlInitRequest", local_meta_bytes: new Uint8Array([1, 2, 3]) }),
 * );
 * console.log(decodeMessage(reply, ["NixlInitResponse"]).remote_meta_bytes); // [1, 2, 3]
 * ```
 *
 * @module
 */

export * from "./errors.ts";
export * from "./endpoint.ts";
export * from "./zmtp.ts";
export * from "./connection.ts";
export * from "./socket.ts";
export * from "./sockets.ts";
export * from "./messages.ts";
export {
  CURVE_KEY_BYTES,
  type CurveClientOptions,
  type CurveKeyPair,
  curveKeyPair,
  type CurveOptions,
  curvePublicKey,
  type CurveServerOptions,
} from "./curve.ts";
export { readCurveAllowList, readCurveKeyFile } from "./curve_keys.ts";
export { z85Decode, z85Encode } from "./z85.ts";
