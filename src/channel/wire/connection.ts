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

import type { TcpStream } from "./tcp.ts";
import {
  WireClosedError,
  WireError,
  WireProtocolError,
  WireSecurityError,
  WireTimeoutError,
} from "./errors.ts";
import {
  CURVE_MESSAGE_OVERHEAD,
  CurveMechanism,
  type CurveOptions,
  resolveCurve,
} from "./curve.ts";
import { after, type Timer } from "../../deadline.ts";
import {
  compatiblePeerTypes,
  DEFAULT_MAX_COMMAND_BYTES,
  DEFAULT_MAX_FRAMES,
  DEFAULT_MAX_MESSAGE_BYTES,
  encodeCommand,
  encodeFrames,
  encodeGreeting,
  encodeMetadata,
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
  /** CURVE security (RFC 26) instead of NULL: our keys and the peer's (see `curve.ts`). */
  curve?: CurveOptions;
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
 * A ZMTP 3 connection over a connected TCP socket (`node:net`'s, or a
 * {@linkcode TcpStream} over Deno's own: see `tcp.ts`). It sends its greeting at once,
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
  readonly #socket: TcpStream;
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
  /** The CURVE state, when the socket has a `curve` option. */
  readonly #curve: CurveMechanism | undefined;
  readonly #maxMessageBytes: number;
  readonly #maxFrames: number;
  /** Decrypted frames of the CURVE message being reassembled, and their bytes. */
  #parts: Uint8Array[] = [];
  #partsBytes = 0;

  /**
   * Wraps `socket` and starts the handshake by sending our greeting.
   *
   * @param socket a connected (or just accepted) TCP socket (a `net.Socket` or any other
   *   {@linkcode TcpStream}); the connection owns it
   * @param address the peer's address, for messages
   * @param options socket type, identity and limits
   * @param handlers callbacks
   */
  constructor(
    socket: TcpStream,
    address: string,
    options: ZmtpConnectionOptions,
    handlers: ZmtpConnectionHandlers = {},
  ) {
    this.#socket = socket;
    this.address = address;
    this.socketType = options.socketType;
    this.#identity = options.identity ?? EMPTY;
    this.#handlers = handlers;
    this.#maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.#maxFrames = options.maxFrames ?? DEFAULT_MAX_FRAMES;
    this.#curve = options.curve
      ? new CurveMechanism(resolveCurve(options.curve), address)
      : undefined;
    this.#decoder = new ZmtpDecoder({
      // Under CURVE every frame travels alone in a MESSAGE box; the limits apply to the
      // decrypted message as it is reassembled.
      maxMessageBytes: this.#maxMessageBytes + (this.#curve ? CURVE_MESSAGE_OVERHEAD : 0),
      maxFrames: this.#maxFrames,
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
      socket.write(
        this.#curve
          ? encodeGreeting({ mechanism: "CURVE", asServer: this.#curve.asServer })
          : encodeGreeting(),
      );
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

  /** The peer's long-term CURVE public key once the handshake proved it (CURVE only). */
  get peerPublicKey(): Uint8Array | undefined {
    return this.#curve?.peerPublicKey;
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
    const curve = this.#curve;
    const pieces = curve
      ? frames.map((f, i) => curve.seal(f, i < frames.length - 1))
      : encodeFrames(frames);
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
      const e = err instanceof WireSecurityError
        ? (err.peer ? err : new WireSecurityError(err.message, { peer: this.address }))
        : err instanceof WireProtocolError
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
      case "greeting": {
        const ours = this.#curve ? "CURVE" : "NULL";
        if (event.greeting.mechanism !== ours) {
          throw new WireSecurityError(
            `peer speaks the ${event.greeting.mechanism} security mechanism, this socket ` +
              `${ours} (both ends must be configured alike)`,
          );
        }
        this.#state = "handshake";
        if (this.#curve) {
          this.#curve.setMetadata(this.#ourMetadata());
          for (const c of this.#curve.start()) this.#socket.write(c);
        } else {
          this.#socket.write(encodeReady(this.socketType, this.#identity));
        }
        return;
      }
      case "command":
        this.#onCommand(event.name, event.data);
        return;
      case "message":
        if (this.#state !== "ready") {
          throw new WireProtocolError("message frame received before the READY command");
        }
        if (this.#curve) {
          for (const f of event.frames) this.#onCurveFrame(f, false);
          return;
        }
        this.#handlers.onMessage?.(this, event.frames);
        return;
    }
  }

  #onCommand(name: string, data: Uint8Array): void {
    const upper = name.toUpperCase();
    if (this.#curve) {
      if (this.#state === "handshake") {
        const step = this.#curve.handshake(name, data);
        for (const c of step.write) this.#socket.write(c);
        if (step.refuse) {
          this.#refuse(step.refuse);
          return;
        }
        if (step.metadata) this.#onPeerMetadata(step.metadata);
        return;
      }
      if (upper !== "MESSAGE") {
        throw new WireSecurityError(
          `plaintext command ${JSON.stringify(name)} after the CURVE handshake`,
        );
      }
      this.#onCurveFrame(data, true);
      return;
    }
    if (upper === "ERROR") {
      const len = data[0] ?? 0;
      const reason = UTF8.decode(data.subarray(1, 1 + len));
      throw new WireProtocolError(`peer sent ERROR: ${JSON.stringify(reason)}`);
    }
    if (this.#state === "handshake") {
      if (upper !== "READY") {
        throw new WireProtocolError(`expected the READY command, got ${JSON.stringify(name)}`);
      }
      this.#onPeerMetadata(data);
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

  /** Our handshake metadata: Socket-Type, and Identity for REQ, DEALER and ROUTER. */
  #ourMetadata(): Uint8Array {
    const props: Array<readonly [string, Uint8Array]> = [
      ["Socket-Type", new TextEncoder().encode(this.socketType)],
    ];
    if (this.socketType === "REQ" || this.socketType === "DEALER" || this.socketType === "ROUTER") {
      props.push(["Identity", this.#identity]);
    }
    return encodeMetadata(props);
  }

  /** A CURVE server refused the client: the ERROR is written, then the connection ends. */
  #refuse(error: WireSecurityError): void {
    this.#error ??= error;
    this.#state = "closed";
    this.#clearTimer();
    this.#socket.end();
    // A client that does not close its end is cut off after a second.
    const timer = after(1000, () => this.#socket.destroy(), { ref: false });
    this.#socket.once("close", () => timer.clear());
  }

  /** One decrypted CURVE frame: reassemble messages under the limits, answer PING. */
  #onCurveFrame(body: Uint8Array, fromCommand: boolean): void {
    const f = this.#curve!.open(body, fromCommand);
    if (f.command) {
      // Commands inside MESSAGE boxes (libzmq heartbeats): PING is answered, others ignored.
      // libzmq sends a PING when its timer fires, even between the frames of a multipart
      // message: the message being reassembled goes on.
      const nameLen = f.data[0] ?? 0;
      const name = String.fromCharCode(...f.data.subarray(1, 1 + nameLen));
      if (name === "PING") {
        const context = f.data.subarray(1 + nameLen + 2, 1 + nameLen + 18);
        const pong = new Uint8Array(5 + context.length);
        pong.set([4, 0x50, 0x4f, 0x4e, 0x47], 0);
        pong.set(context, 5);
        this.#socket.write(this.#curve!.seal(pong, false, true));
      }
      return;
    }
    if (this.#parts.length + 1 > this.#maxFrames) {
      throw new WireProtocolError(
        `message has more than ${this.#maxFrames} frames (the limit maxFrames)`,
      );
    }
    if (f.data.length > this.#maxMessageBytes - this.#partsBytes) {
      throw new WireProtocolError(
        `message of more than ${this.#maxMessageBytes} bytes (maxMessageBytes)`,
      );
    }
    this.#parts.push(f.data.slice());
    this.#partsBytes += f.data.length;
    if (f.more) return;
    const frames = this.#parts;
    this.#parts = [];
    this.#partsBytes = 0;
    this.#handlers.onMessage?.(this, frames);
  }

  /** The peer's READY metadata (NULL) or INITIATE/READY box (CURVE): check and go ready. */
  #onPeerMetadata(data: Uint8Array): void {
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
  }
}
