/**
 * One ZMTP 3 connection over a `node:net` socket: greeting, NULL handshake (READY with
 * `Socket-Type` and `Identity`), then multipart messages both ways. Sockets
 * ({@linkcode ReqSocket} and the others) own a set of these.
 *
 * @example
 * ```ts
 * import * as net from "node:net";
 * import { ZmtpConnection } from "@kvport/nixl/wire";
 *
 * const tcp = net.createConnection({ host: "127.0.0.1", port: 5555 });
 * tcp.on("connect", () => {
 *   const conn = new ZmtpConnection(tcp, "tcp://127.0.0.1:5555", { socketType: "PUSH" }, {
 *     onReady: (c) => c.send([new TextEncoder().encode("hello")]).then(() => c.destroy()),
 *   });
 * });
 * ```
 *
 * @module
 */

import type * as net from "node:net";
import { WireClosedError, WireError, WireProtocolError, WireTimeoutError } from "./errors.ts";
import { after, type Timer } from "../../deadline.ts";
import {
  compatiblePeerTypes,
  DEFAULT_MAX_COMMAND_BYTES,
  DEFAULT_MAX_FRAMES,
  DEFAULT_MAX_MESSAGE_BYTES,
  encodeCommand,
  encodeFrames,
  encodeGreeting,
  encodeReady,
  parseMetadata,
  type SocketType,
  ZmtpDecoder,
  type ZmtpEvent,
} from "./zmtp.ts";

/** Settings of one {@linkcode ZmtpConnection}. */
export interface ZmtpConnectionOptions {
  /** Our socket type, announced in READY. */
  socketType: SocketType;
  /** Our identity, announced in READY by REQ, DEALER and ROUTER; default empty. */
  identity?: Uint8Array;
  /** Largest message accepted from the peer; default 64 MiB. */
  maxMessageBytes?: number;
  /** Most frames per message accepted from the peer; default 1024. */
  maxFrames?: number;
  /** Time allowed for the peer's greeting and READY; default 5000 ms. */
  handshakeTimeoutMs?: number;
}

/** Callbacks of one {@linkcode ZmtpConnection}; each is optional. */
export interface ZmtpConnectionHandlers {
  /** The handshake completed; messages may be sent. */
  onReady?: (conn: ZmtpConnection) => void;
  /** A complete multipart message arrived. */
  onMessage?: (conn: ZmtpConnection, frames: Uint8Array[]) => void;
  /** The connection closed; `error` says why when it was not a clean close. */
  onClose?: (conn: ZmtpConnection, error: WireError | undefined) => void;
}

const EMPTY = new Uint8Array(0);
const UTF8 = new TextDecoder();

/**
 * A ZMTP 3 connection over a connected `node:net` socket. It sends its greeting at once,
 * answers the peer's greeting with READY, checks the peer's socket type, and then
 * delivers messages. Any protocol violation, or a handshake that does not complete in
 * time, destroys the connection with a {@linkcode WireProtocolError} or
 * {@linkcode WireTimeoutError} passed to `onClose`.
 *
 * @example
 * ```ts
 * import * as net from "node:net";
 * import { ZmtpConnection } from "@kvport/nixl/wire";
 *
 * const server = net.createServer((tcp) => {
 *   new ZmtpConnection(tcp, "tcp://peer", { socketType: "PULL" }, {
 *     onMessage: (_c, frames) => console.log(frames.length),
 *   });
 * });
 * server.listen(0);
 * ```
 */
export class ZmtpConnection {
  /** The peer's address, `tcp://ip:port`. */
  readonly address: string;
  /** Our socket type. */
  readonly socketType: SocketType;
  readonly #socket: net.Socket;
  readonly #identity: Uint8Array;
  readonly #handlers: ZmtpConnectionHandlers;
  readonly #decoder: ZmtpDecoder;
  #state: "greeting" | "handshake" | "ready" | "closed" = "greeting";
  #timer: Timer | undefined;
  #error: WireError | undefined;
  #peerSocketType: string | undefined;
  #peerIdentity: Uint8Array = EMPTY;
  #pendingSends = new Set<(error: WireError) => void>();
  #closed: Promise<void>;
  #resolveClosed!: () => void;
  #finished = false;

  /**
   * Wraps `socket` and starts the handshake by sending our greeting.
   *
   * @param socket a connected (or just accepted) TCP socket; the connection owns it
   * @param address the peer's address, for messages
   * @param options socket type, identity and limits
   * @param handlers callbacks
   */
  constructor(
    socket: net.Socket,
    address: string,
    options: ZmtpConnectionOptions,
    handlers: ZmtpConnectionHandlers = {},
  ) {
    this.#socket = socket;
    this.address = address;
    this.socketType = options.socketType;
    this.#identity = options.identity ?? EMPTY;
    this.#handlers = handlers;
    this.#decoder = new ZmtpDecoder({
      maxMessageBytes: options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      maxFrames: options.maxFrames ?? DEFAULT_MAX_FRAMES,
      maxCommandBytes: DEFAULT_MAX_COMMAND_BYTES,
    });
    this.#closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    const handshakeMs = options.handshakeTimeoutMs ?? 5000;
    this.#timer = after(handshakeMs, () => {
      this.#timer = undefined;
      this.destroy(
        new WireTimeoutError(
          this.#state === "greeting" ? "ZMTP greeting" : "ZMTP READY command",
          handshakeMs,
          { peer: address, hint: "handshake not completed; connection closed" },
        ),
      );
    });
    socket.setNoDelay?.(true);
    socket.on("data", (chunk: Uint8Array) => this.#onData(chunk));
    socket.on("error", (err: Error) => {
      this.#error ??= new WireClosedError(`connection error: ${err.message}`, {
        peer: address,
        cause: err,
      });
    });
    socket.on("close", () => this.#finish());
    if (socket.destroyed) {
      queueMicrotask(() => this.#finish());
    } else {
      socket.write(encodeGreeting());
    }
  }

  /** The handshake is complete and the connection is open. */
  get ready(): boolean {
    return this.#state === "ready";
  }

  /** The connection is closed (or closing). */
  get isClosed(): boolean {
    return this.#state === "closed";
  }

  /** The peer's socket type from its READY (`undefined` before the handshake). */
  get peerSocketType(): string | undefined {
    return this.#peerSocketType;
  }

  /** The peer's identity from its READY (empty when it sent none). */
  get peerIdentity(): Uint8Array {
    return this.#peerIdentity;
  }

  /** Resolves once the underlying TCP socket has closed. */
  get closed(): Promise<void> {
    return this.#closed;
  }

  /** Stops reading from the peer (TCP back-pressure) until {@linkcode resume}. */
  pause(): void {
    if (this.#state !== "closed") this.#socket.pause();
  }

  /** Resumes reading after {@linkcode pause}. */
  resume(): void {
    if (this.#state !== "closed") this.#socket.resume();
  }

  /**
   * Sends one multipart message. Resolves when the bytes were handed to the kernel;
   * rejects with {@linkcode WireClosedError} when the connection is not ready or closes
   * first.
   *
   * @param frames the message parts (at least one)
   */
  send(frames: readonly Uint8Array[]): Promise<void> {
    if (this.#state !== "ready") {
      return Promise.reject(
        new WireClosedError(
          this.#state === "closed"
            ? "cannot send: connection closed"
            : "cannot send: handshake not complete",
          { peer: this.address, cause: this.#error },
        ),
      );
    }
    const pieces = encodeFrames(frames);
    return new Promise<void>((resolve, reject) => {
      const fail = (error: WireError) => {
        this.#pendingSends.delete(fail);
        reject(error);
      };
      this.#pendingSends.add(fail);
      const done = (err?: Error | null) => {
        if (!this.#pendingSends.delete(fail)) return;
        if (err) {
          reject(
            new WireClosedError(`send failed: ${err.message}`, { peer: this.address, cause: err }),
          );
        } else {
          resolve();
        }
      };
      try {
        for (let i = 0; i < pieces.length - 1; i++) this.#socket.write(pieces[i]);
        this.#socket.write(pieces[pieces.length - 1], done);
      } catch (err) {
        done(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  /**
   * Closes the connection at once (pending sends are rejected). Idempotent.
   *
   * @param error why, passed to `onClose`; `undefined` for a clean close
   * @returns a promise resolved once the TCP socket has closed
   */
  destroy(error?: WireError): Promise<void> {
    if (error && !this.#error) this.#error = error;
    if (this.#state !== "closed") {
      this.#state = "closed";
      this.#clearTimer();
      this.#socket.destroy();
    }
    return this.#closed;
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) {
      this.#timer.clear();
      this.#timer = undefined;
    }
  }

  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#state = "closed";
    this.#clearTimer();
    const error = this.#error;
    const closedError = new WireClosedError("connection closed", {
      peer: this.address,
      cause: error,
    });
    for (const fail of [...this.#pendingSends]) fail(closedError);
    this.#resolveClosed();
    this.#handlers.onClose?.(this, error);
  }

  #onData(chunk: Uint8Array): void {
    if (this.#state === "closed") return;
    try {
      this.#decoder.push(chunk, (event) => this.#onEvent(event));
    } catch (err) {
      const e = err instanceof WireProtocolError
        ? new WireProtocolError(err.message, { peer: this.address })
        : err instanceof WireError
        ? err
        : new WireProtocolError(`internal error while decoding: ${String(err)}`, {
          peer: this.address,
          cause: err,
        });
      this.destroy(e);
    }
  }

  #onEvent(event: ZmtpEvent): void {
    if (this.#state === "closed") return;
    switch (event.kind) {
      case "greeting":
        this.#state = "handshake";
        this.#socket.write(encodeReady(this.socketType, this.#identity));
        return;
      case "command":
        this.#onCommand(event.name, event.data);
        return;
      case "message":
        if (this.#state !== "ready") {
          throw new WireProtocolError("message frame received before the READY command");
        }
        this.#handlers.onMessage?.(this, event.frames);
        return;
    }
  }

  #onCommand(name: string, data: Uint8Array): void {
    const upper = name.toUpperCase();
    if (upper === "ERROR") {
      const len = data[0] ?? 0;
      const reason = UTF8.decode(data.subarray(1, 1 + len));
      throw new WireProtocolError(`peer sent ERROR: ${JSON.stringify(reason)}`);
    }
    if (this.#state === "handshake") {
      if (upper !== "READY") {
        throw new WireProtocolError(`expected the READY command, got ${JSON.stringify(name)}`);
      }
      const meta = parseMetadata(data);
      const typeBytes = meta.get("socket-type");
      if (!typeBytes) {
        throw new WireProtocolError("READY command without the Socket-Type property");
      }
      const peerType = UTF8.decode(typeBytes);
      const allowed = compatiblePeerTypes(this.socketType);
      if (!allowed.includes(peerType)) {
        throw new WireProtocolError(
          `peer socket type ${JSON.stringify(peerType)} cannot talk to our ${this.socketType} ` +
            `socket (expected ${allowed.join(" or ")})`,
        );
      }
      const identity = meta.get("identity") ?? EMPTY;
      if (identity.length > 255) {
        throw new WireProtocolError(
          `peer identity of ${identity.length} bytes exceeds the ZMTP limit of 255`,
        );
      }
      this.#peerSocketType = peerType;
      this.#peerIdentity = identity;
      this.#state = "ready";
      this.#clearTimer();
      this.#handlers.onReady?.(this);
      return;
    }
    if (upper === "PING") {
      // ZMTP 3.1 heartbeat: TTL (2 bytes) then up to 16 bytes of context, echoed in PONG.
      const context = data.subarray(2, 18);
      this.#socket.write(encodeCommand("PONG", context));
      return;
    }
    // PONG, and commands we have no use for (SUBSCRIBE/CANCEL are for PUB/SUB), are ignored.
  }
}
