/**
 * The six ZeroMQ socket types LMCache uses, over ZMTP 3: REQ/REP, PUSH/PULL and
 * DEALER/ROUTER. They interoperate with libzmq 4.x (pyzmq) peers.
 *
 * @example
 * ```ts
 * import { RepSocket, ReqSocket } from "@kvport/nixl/wire";
 *
 * await using rep = await RepSocket.bind("tcp://127.0.0.1:0");
 * rep.serve((frames) => frames); // echo
 * await using req = ReqSocket.connect(`tcp://127.0.0.1:${rep.port}`);
 * const reply = await req.request(new TextEncoder().encode("ping"), { timeoutMs: 1000 });
 * console.log(new TextDecoder().decode(reply[0])); // ping
 * ```
 *
 * @module
 */

import { WireClosedError, WireError, WireProtocolError, WireTimeoutError } from "./errors.ts";
import {
  type PeerInfo,
  type Pipe,
  type TimeoutOptions,
  toFrames,
  toHex,
  WireSocket,
  type WireSocketOptions,
  withDeadline,
} from "./socket.ts";

const EMPTY = new Uint8Array(0);

/** A message argument: one frame, or the list of frames of a multipart message. */
export type Message = Uint8Array | readonly Uint8Array[];

function remaining(deadline: number): number {
  return deadline - performance.now();
}

/**
 * Creates a socket and binds it to `url`, closing it again when the bind fails: the body
 * of every socket type's static `bind`.
 */
async function bound<S extends WireSocket>(create: () => S, url: string): Promise<S> {
  const s = create();
  try {
    await s.bind(url);
  } catch (e) {
    await s.close();
    throw e;
  }
  return s;
}

/**
 * A REQ socket: strict request/reply with the empty delimiter frame ZeroMQ puts in front
 * of the body. Concurrent `request` calls are queued and run one at a time.
 *
 * Unlike libzmq's REQ, it never wedges: when a request times out, or its connection
 * breaks, the request fails with a typed error and the connection is dropped and
 * re-established at once, so the next request starts from a fresh state and a late
 * reply to the old one can never be taken for the new one's.
 *
 * @example
 * ```ts
 * import { decodeMessage, encodeMessage, ReqSocket } from "@kvport/nixl/wire";
 *
 * await using req = ReqSocket.connect("localhost:7301", { timeoutMs: 5000 });
 * const [reply] = await req.request(encodeMessage({
 *   type: "AllocRequest",
 *   keys: ["vllm@m@1@0@abc@bfloat16"],
 *   fmt: 1,
 *   shape: [2, 32, 256, 1024],
 *   dtype: "bfloat16",
 *   last_chunk_toks: 256,
 * }));
 * console.log(decodeMessage(reply, ["AllocResponse"]).remote_indexes);
 * ```
 */
export class ReqSocket extends WireSocket {
  #queue: Promise<unknown> = Promise.resolve();
  /** Requests queued or running. */
  #busy = 0;
  #pending:
    | { pipe: Pipe; resolve: (f: Uint8Array[]) => void; reject: (e: WireError) => void }
    | undefined;

  /**
   * Creates an unbound, unconnected socket: call `connect()` or `bind()` next.
   *
   * @param options see {@linkcode WireSocketOptions}
   */
  constructor(options: WireSocketOptions = {}) {
    super("REQ", options);
  }

  /**
   * Creates a REQ socket connected to `url` (in the background; see
   * {@linkcode WireSocket.connect}).
   *
   * @param url `tcp://host:port` or `host:port`
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket
   */
  static connect(url: string, options: WireSocketOptions = {}): ReqSocket {
    return new ReqSocket(options).connect(url);
  }

  /**
   * Creates a REQ socket bound to `url` (peers connect to it).
   *
   * @param url `tcp://host:port`; port 0 picks a free port
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket, once listening
   */
  static override bind(url: string, options: WireSocketOptions = {}): Promise<ReqSocket> {
    return bound(() => new ReqSocket(options), url);
  }

  /**
   * Sends a request and waits for its reply. The deadline covers waiting for a
   * connection, for earlier queued requests, the send and the reply.
   *
   * @param message one frame or the frames of the request body
   * @param options deadline (default the socket's `timeoutMs`)
   * @returns the reply's frames (the envelope removed)
   * @throws {WireTimeoutError} when no reply came in time (the connection is recreated)
   * @throws {WireClosedError} when the connection or the socket closed first
   * @throws {WireProtocolError} when the reply has no empty delimiter frame
   */
  request(message: Message, options: TimeoutOptions = {}): Promise<Uint8Array[]> {
    const frames = toFrames(message);
    const timeoutMs = options.timeoutMs ?? this._timeoutMs;
    const deadline = performance.now() + timeoutMs;
    const run = () => this.#run(frames, timeoutMs, deadline);
    // Nothing queued or running: written in this call (with a live peer), not after the
    // microtasks queued before it - with other work in flight on this thread those can
    // hold a small request back for a millisecond.
    const result = this.#busy === 0 ? run() : this.#queue.then(run, run);
    this.#busy++;
    const settled = () => {
      this.#busy--;
    };
    this.#queue = result.then(settled, settled);
    return result;
  }

  async #run(frames: Uint8Array[], timeoutMs: number, deadline: number): Promise<Uint8Array[]> {
    if (this.isClosed) throw new WireClosedError("cannot request: REQ socket is closed");
    if (remaining(deadline) <= 0) {
      throw new WireTimeoutError("request", timeoutMs, {
        peer: this._describeEndpoints(),
        hint: "its deadline passed while earlier requests were running",
      });
    }
    const pipe = this._pipeNow() ?? await this._nextPipe(remaining(deadline));
    const reply = new Promise<Uint8Array[]>((resolve, reject) => {
      this.#pending = { pipe, resolve, reject };
    });
    // The reply promise may reject before we await it (e.g. the send fails first).
    reply.catch(() => {});
    try {
      await pipe.conn.send([EMPTY, ...frames]);
      return await withDeadline(
        reply,
        remaining(deadline),
        () =>
          new WireTimeoutError("reply to request", timeoutMs, {
            peer: pipe.info.address,
            hint: "the connection was dropped and is re-established, so the next request " +
              "starts fresh",
          }),
      );
    } catch (e) {
      if (e instanceof WireTimeoutError || e instanceof WireProtocolError) {
        this._resetPipe(pipe);
      }
      throw e;
    } finally {
      this.#pending = undefined;
    }
  }

  /** Handles a message from a peer (see {@linkcode WireSocket}). */
  protected override _onMessage(pipe: Pipe, frames: Uint8Array[]): void {
    const p = this.#pending;
    if (!p || p.pipe !== pipe) return; // a stale or unsolicited reply: dropped
    this.#pending = undefined;
    if (frames.length < 2 || frames[0].length !== 0) {
      p.reject(
        new WireProtocolError(
          `reply without the empty delimiter frame (${frames.length} frame(s), first of ` +
            `${frames[0].length} bytes)`,
          { peer: pipe.info.address },
        ),
      );
      return;
    }
    p.resolve(frames.slice(1));
  }

  /** Fails the pending request of a peer that went away. */
  protected override _onDetach(pipe: Pipe, error: WireError | undefined): void {
    const p = this.#pending;
    if (p && p.pipe === pipe) {
      this.#pending = undefined;
      p.reject(
        new WireClosedError("connection closed while waiting for the reply to a request", {
          peer: pipe.info.address,
          cause: error,
        }),
      );
    }
  }

  /** Fails the pending request when the socket closes. */
  protected override _onClose(error: WireClosedError): void {
    const p = this.#pending;
    this.#pending = undefined;
    p?.reject(error);
  }
}

/** One request received by a {@linkcode RepSocket}. */
export interface RepRequest {
  /** The request body's frames (the envelope removed). */
  readonly frames: Uint8Array[];
  /** The peer that sent it. */
  readonly peer: PeerInfo;
  /**
   * Sends the reply (with the request's envelope restored). Call once.
   *
   * @throws {WireClosedError} when the peer is gone
   */
  reply(message: Message): Promise<void>;
}

/** A request handler of {@linkcode RepSocket.serve}: returns the reply. */
export type RepHandler = (
  frames: Uint8Array[],
  peer: PeerInfo,
  /** Aborts when the peer's connection closes: nobody will read the reply. */
  gone: AbortSignal,
) => Message | Promise<Message>;

/**
 * A REP socket: receives requests (stripping the envelope: every frame up to and
 * including the first empty one) and sends each reply back to the peer that asked, with
 * the envelope restored. Requests of different peers are handled concurrently; those of
 * one peer in order.
 *
 * @example
 * ```ts
 * import { decodeMessage, encodeMessage, RepSocket } from "@kvport/nixl/wire";
 *
 * await using rep = await RepSocket.bind("tcp://*:7300");
 * for await (const req of rep) {
 *   const msg = decodeMessage(req.frames[0], ["NixlInitRequest"]);
 *   await req.reply(encodeMessage({
 *     type: "NixlInitResponse",
 *     remote_agent_name: new TextEncoder().encode("decoder-0"),
 *     remote_meta_bytes: msg.local_meta_bytes,
 *   }));
 * }
 * ```
 */
export class RepSocket extends WireSocket {
  /** The running serve()'s hand-over of a new request, if any. */
  #direct: ((req: RepRequest) => void) | undefined;

  /**
   * Creates an unbound, unconnected socket: call `connect()` or `bind()` next.
   *
   * @param options see {@linkcode WireSocketOptions}
   */
  constructor(options: WireSocketOptions = {}) {
    super("REP", options);
  }

  /**
   * Creates a REP socket bound to `url`.
   *
   * @param url `tcp://host:port`, `tcp://*:port` or `host:port`; port 0 picks a free port
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket, once listening
   */
  static override bind(url: string, options: WireSocketOptions = {}): Promise<RepSocket> {
    return bound(() => new RepSocket(options), url);
  }

  /**
   * Creates a REP socket connected to `url` (e.g. to a ROUTER or DEALER broker).
   *
   * @param url `tcp://host:port` or `host:port`
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket
   */
  static connect(url: string, options: WireSocketOptions = {}): RepSocket {
    return new RepSocket(options).connect(url);
  }

  /**
   * Waits for the next request.
   *
   * @param options deadline (default the socket's `timeoutMs`)
   * @returns the request, with its `reply` function
   * @throws {WireTimeoutError} when none came in time
   * @throws {WireClosedError} when the socket closed
   */
  receive(options: TimeoutOptions = {}): Promise<RepRequest> {
    return this._receive<RepRequest>(options.timeoutMs ?? this._timeoutMs, "request");
  }

  /** Iterates requests until the socket closes (no deadline: a server loop). */
  [Symbol.asyncIterator](): AsyncIterableIterator<RepRequest> {
    return this._inbox.iterate() as AsyncIterableIterator<RepRequest>;
  }

  /**
   * Serves requests with `handler` until the socket closes. A handler that throws (or
   * returns something that is not a message) has its peer's connection closed, so the
   * peer fails fast instead of waiting for a reply that will never come; the error goes to
   * the `onError` option.
   *
   * @param handler computes the reply of one request; its `gone` signal aborts when the
   *   peer's connection closes (a peer that gave up), so a long wait can stop early
   * @returns a promise resolved when the socket has closed
   */
  async serve(handler: RepHandler): Promise<void> {
    const chains = new Map<Pipe["conn"], Promise<void>>();
    const gone = new WeakMap<Pipe["conn"], AbortSignal>();
    const dispatch = (req: RepRequest): void => {
      const conn = (req as InternalRequest).pipe.conn;
      let signal = gone.get(conn);
      if (!signal) {
        const ctl = new AbortController();
        signal = ctl.signal;
        gone.set(conn, signal);
        conn.closed.then(() =>
          ctl.abort(new WireClosedError(`the connection of ${req.peer.address} closed`))
        );
      }
      const run = async () => {
        let reply: Message;
        try {
          reply = await handler(req.frames, req.peer, signal);
          await req.reply(reply);
        } catch (e) {
          const err = e instanceof WireError ? e : new WireError(
            `request handler failed: ${e instanceof Error ? e.message : String(e)}`,
            { peer: req.peer.address, cause: e },
          );
          this._report(err);
          if (!(e instanceof WireClosedError)) await conn.destroy();
        }
      };
      // A connection with no request running: the handler starts now, in the turn the
      // request's bytes were read; else after the ones before it, in order.
      const prev = chains.get(conn);
      const next = prev ? prev.then(run) : run();
      chains.set(conn, next);
      next.then(() => {
        if (chains.get(conn) === next) chains.delete(conn);
      });
    };
    // Requests queued before serving: first, in order. From here on requests are handed
    // over as they arrive (no queue, no promise turn) unless another serve() does that.
    for (let r = this._inbox.takeNow(); r !== undefined; r = this._inbox.takeNow()) {
      dispatch(r as RepRequest);
    }
    const direct = this.#direct === undefined;
    if (direct) this.#direct = dispatch;
    try {
      // Ends when the socket closes (with direct hand-over nothing is queued here).
      for await (const req of this) dispatch(req);
    } finally {
      if (direct && this.#direct === dispatch) this.#direct = undefined;
    }
  }

  /** Handles a message from a peer (see {@linkcode WireSocket}). */
  protected override _onMessage(pipe: Pipe, frames: Uint8Array[]): void {
    const split = frames.findIndex((f) => f.length === 0);
    if (split < 0 || split === frames.length - 1) {
      this._report(
        new WireProtocolError(
          split < 0
            ? `request without the empty delimiter frame (${frames.length} frame(s)); dropped`
            : "request with an envelope but no body; dropped",
          { peer: pipe.info.address },
        ),
      );
      return;
    }
    const envelope = frames.slice(0, split + 1);
    let replied = false;
    const req: InternalRequest = {
      frames: frames.slice(split + 1),
      peer: pipe.info,
      pipe,
      reply: (message: Message) => {
        if (replied) {
          return Promise.reject(new WireError("this request was already replied to"));
        }
        replied = true;
        return pipe.conn.send([...envelope, ...toFrames(message)]);
      },
    };
    if (this.#direct) this.#direct(req);
    else this._enqueue(req);
  }
}

interface InternalRequest extends RepRequest {
  readonly pipe: Pipe;
}

/**
 * A PUSH socket: sends messages to PULL peers, round-robin. `send` waits (up to its
 * deadline) for a peer to be connected and for the bytes to reach the kernel.
 *
 * @example
 * ```ts
 * import { encodeMessage, PushSocket } from "@kvport/nixl/wire";
 *
 * await using push = PushSocket.connect("tcp://proxy:7500");
 * await push.send(encodeMessage({ type: "ProxyNotif", req_id: "req-42" }));
 * ```
 */
export class PushSocket extends WireSocket {
  /**
   * Creates an unbound, unconnected socket: call `connect()` or `bind()` next.
   *
   * @param options see {@linkcode WireSocketOptions}
   */
  constructor(options: WireSocketOptions = {}) {
    super("PUSH", options);
  }

  /**
   * Creates a PUSH socket connected to `url`.
   *
   * @param url `tcp://host:port` or `host:port`
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket
   */
  static connect(url: string, options: WireSocketOptions = {}): PushSocket {
    return new PushSocket(options).connect(url);
  }

  /**
   * Creates a PUSH socket bound to `url`.
   *
   * @param url `tcp://host:port`; port 0 picks a free port
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket, once listening
   */
  static override bind(url: string, options: WireSocketOptions = {}): Promise<PushSocket> {
    return bound(() => new PushSocket(options), url);
  }

  /**
   * Sends one message to the next peer.
   *
   * @param message one frame or the frames of a multipart message
   * @param options deadline (default the socket's `timeoutMs`)
   * @throws {WireTimeoutError} when no peer was connected, or the bytes could not be
   *   written, in time (a message already queued on a connection may still be delivered)
   */
  send(message: Message, options: TimeoutOptions = {}): Promise<void> {
    return this._sendNext(toFrames(message), options.timeoutMs ?? this._timeoutMs);
  }

  /** Handles a message from a peer (see {@linkcode WireSocket}). */
  protected override _onMessage(_pipe: Pipe, _frames: Uint8Array[]): void {
    // A PULL peer never sends; anything else was refused at the handshake.
  }
}

/**
 * A PULL socket: receives messages from PUSH peers, fairly queued.
 *
 * @example
 * ```ts
 * import { decodeMessage, PullSocket } from "@kvport/nixl/wire";
 *
 * await using pull = await PullSocket.bind("tcp://*:7500");
 * for await (const frames of pull) {
 *   console.log(decodeMessage(frames[0], ["ProxyNotif"]).req_id);
 * }
 * ```
 */
export class PullSocket extends WireSocket {
  /**
   * Creates an unbound, unconnected socket: call `connect()` or `bind()` next.
   *
   * @param options see {@linkcode WireSocketOptions}
   */
  constructor(options: WireSocketOptions = {}) {
    super("PULL", options);
  }

  /**
   * Creates a PULL socket bound to `url`.
   *
   * @param url `tcp://host:port`, `tcp://*:port` or `host:port`; port 0 picks a free port
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket, once listening
   */
  static override bind(url: string, options: WireSocketOptions = {}): Promise<PullSocket> {
    return bound(() => new PullSocket(options), url);
  }

  /**
   * Creates a PULL socket connected to `url`.
   *
   * @param url `tcp://host:port` or `host:port`
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket
   */
  static connect(url: string, options: WireSocketOptions = {}): PullSocket {
    return new PullSocket(options).connect(url);
  }

  /**
   * Waits for the next message.
   *
   * @param options deadline (default the socket's `timeoutMs`)
   * @returns its frames
   * @throws {WireTimeoutError} when none came in time
   * @throws {WireClosedError} when the socket closed
   */
  receive(options: TimeoutOptions = {}): Promise<Uint8Array[]> {
    return this._receive<Uint8Array[]>(options.timeoutMs ?? this._timeoutMs, "message");
  }

  /** Iterates messages until the socket closes (no deadline). */
  [Symbol.asyncIterator](): AsyncIterableIterator<Uint8Array[]> {
    return this._inbox.iterate() as AsyncIterableIterator<Uint8Array[]>;
  }

  /** Handles a message from a peer (see {@linkcode WireSocket}). */
  protected override _onMessage(_pipe: Pipe, frames: Uint8Array[]): void {
    this._enqueue(frames);
  }
}

/**
 * A DEALER socket: sends round-robin and receives fairly queued, with no envelope
 * handling. To talk to a ROUTER the way a REQ does (LMCache's PD allocation channel),
 * put an empty delimiter frame first: `send([new Uint8Array(0), body])`.
 *
 * @example
 * ```ts
 * import { DealerSocket, decodeMessage, encodeMessage } from "@kvport/nixl/wire";
 *
 * await using dealer = DealerSocket.connect("tcp://decoder:7301", { identity: "sender-1" });
 * await dealer.send([new Uint8Array(0), encodeMessage({ type: "CancelNotif", req_id: "r", keys: [] })]);
 * const frames = await dealer.receive({ timeoutMs: 5000 });
 * console.log(decodeMessage(frames[frames.length - 1]).type);
 * ```
 */
export class DealerSocket extends WireSocket {
  /**
   * Creates an unbound, unconnected socket: call `connect()` or `bind()` next.
   *
   * @param options see {@linkcode WireSocketOptions}
   */
  constructor(options: WireSocketOptions = {}) {
    super("DEALER", options);
  }

  /**
   * Creates a DEALER socket connected to `url`.
   *
   * @param url `tcp://host:port` or `host:port`
   * @param options see {@linkcode WireSocketOptions}; `identity` names us to a ROUTER
   * @returns the socket
   */
  static connect(url: string, options: WireSocketOptions = {}): DealerSocket {
    return new DealerSocket(options).connect(url);
  }

  /**
   * Creates a DEALER socket bound to `url`.
   *
   * @param url `tcp://host:port`; port 0 picks a free port
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket, once listening
   */
  static override bind(url: string, options: WireSocketOptions = {}): Promise<DealerSocket> {
    return bound(() => new DealerSocket(options), url);
  }

  /**
   * Sends one message to the next peer.
   *
   * @param message one frame or the frames of a multipart message
   * @param options deadline (default the socket's `timeoutMs`)
   * @throws {WireTimeoutError} when no peer was connected, or the bytes could not be
   *   written, in time
   */
  send(message: Message, options: TimeoutOptions = {}): Promise<void> {
    return this._sendNext(toFrames(message), options.timeoutMs ?? this._timeoutMs);
  }

  /**
   * Waits for the next message.
   *
   * @param options deadline (default the socket's `timeoutMs`)
   * @returns its frames, as sent by the peer
   * @throws {WireTimeoutError} when none came in time
   * @throws {WireClosedError} when the socket closed
   */
  receive(options: TimeoutOptions = {}): Promise<Uint8Array[]> {
    return this._receive<Uint8Array[]>(options.timeoutMs ?? this._timeoutMs, "message");
  }

  /** Iterates messages until the socket closes (no deadline). */
  [Symbol.asyncIterator](): AsyncIterableIterator<Uint8Array[]> {
    return this._inbox.iterate() as AsyncIterableIterator<Uint8Array[]>;
  }

  /** Handles a message from a peer (see {@linkcode WireSocket}). */
  protected override _onMessage(_pipe: Pipe, frames: Uint8Array[]): void {
    this._enqueue(frames);
  }
}

/**
 * A ROUTER socket: every received message is prefixed with the sending peer's identity
 * frame (its own `Identity`, or a 5-byte one generated for an anonymous peer); a sent
 * message's first frame names the peer to route it to. A peer claiming an identity a
 * connected peer holds is refused, as libzmq does by default (`routerHandover: true`
 * lets it take the route over).
 *
 * @example
 * ```ts
 * import { decodeMessage, encodeMessage, RouterSocket } from "@kvport/nixl/wire";
 *
 * await using router = await RouterSocket.bind("tcp://*:7301");
 * for await (const [identity, delimiter, body] of router) {
 *   const req = decodeMessage(body, ["AllocRequest"]);
 *   await router.send([identity, delimiter, encodeMessage({
 *     type: "AllocResponse",
 *     already_sent_indexes: [],
 *     remote_indexes: req.keys.map((_, i) => i),
 *   })]);
 * }
 * ```
 */
export class RouterSocket extends WireSocket {
  #handler: ((message: Uint8Array[]) => unknown) | undefined;
  /** A handler call still running (its promise unsettled): later messages queue. */
  #handling = false;

  /**
   * Creates an unbound, unconnected socket: call `connect()` or `bind()` next.
   *
   * @param options see {@linkcode WireSocketOptions}
   */
  constructor(options: WireSocketOptions = {}) {
    super("ROUTER", options);
  }

  /**
   * Creates a ROUTER socket bound to `url`.
   *
   * @param url `tcp://host:port`, `tcp://*:port` or `host:port`; port 0 picks a free port
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket, once listening
   */
  static override bind(url: string, options: WireSocketOptions = {}): Promise<RouterSocket> {
    return bound(() => new RouterSocket(options), url);
  }

  /**
   * Creates a ROUTER socket connected to `url`.
   *
   * @param url `tcp://host:port` or `host:port`
   * @param options see {@linkcode WireSocketOptions}
   * @returns the socket
   */
  static connect(url: string, options: WireSocketOptions = {}): RouterSocket {
    return new RouterSocket(options).connect(url);
  }

  /**
   * Sends a message to the peer named by its first frame.
   *
   * @param message `[identity, ...frames]`
   * @param options deadline for writing the bytes (default the socket's `timeoutMs`)
   * @throws {WireClosedError} when no connected peer has that identity
   * @throws {WireTimeoutError} when the bytes could not be written in time
   */
  async send(message: readonly Uint8Array[], options: TimeoutOptions = {}): Promise<void> {
    const frames = toFrames(message);
    if (frames.length < 2) {
      throw new WireError(
        `a ROUTER message needs the identity frame and at least one more, got ${frames.length}`,
      );
    }
    const key = toHex(frames[0]);
    const pipe = this._pipeByKey(key);
    if (!pipe) {
      throw new WireClosedError(
        `ROUTER has no connected peer with identity 0x${key} (it disconnected, or never ` +
          `connected)`,
      );
    }
    const timeoutMs = options.timeoutMs ?? this._timeoutMs;
    await withDeadline(
      pipe.conn.send(frames.slice(1)),
      timeoutMs,
      () =>
        new WireTimeoutError("send", timeoutMs, {
          peer: pipe.info.address,
          hint: "the peer is not reading; the message stays queued on the connection",
        }),
    );
  }

  /**
   * Waits for the next message.
   *
   * @param options deadline (default the socket's `timeoutMs`)
   * @returns `[identity, ...frames]`
   * @throws {WireTimeoutError} when none came in time
   * @throws {WireClosedError} when the socket closed
   */
  receive(options: TimeoutOptions = {}): Promise<Uint8Array[]> {
    return this._receive<Uint8Array[]>(options.timeoutMs ?? this._timeoutMs, "message");
  }

  /** Iterates `[identity, ...frames]` messages until the socket closes (no deadline). */
  [Symbol.asyncIterator](): AsyncIterableIterator<Uint8Array[]> {
    return this._inbox.iterate() as AsyncIterableIterator<Uint8Array[]>;
  }

  /**
   * The connected peer with this identity, if any.
   *
   * @param identity a routing identity, as received in a message's first frame
   * @returns the peer, or `undefined`
   */
  peer(identity: Uint8Array): PeerInfo | undefined {
    return this._pipeByKey(toHex(identity))?.info;
  }

  /**
   * Hands every message (`[identity, ...frames]`) to `handler` instead of queueing it for
   * `receive()` and iteration: one at a time, in arrival order, as a `for await` loop that
   * awaits what the handler returns would. A message that arrives while no call is
   * running goes to the handler in the turn its bytes were read - a server that answers
   * at once (the P2P registry) skips the queue's promise turns; one that arrives while a
   * call's promise is unsettled waits in the queue (bounded by `highWaterMark`, as for
   * `receive()`). A handler that throws or rejects has the error reported to `onError`.
   *
   * @param handler takes one message; may return a promise to hold the next one back
   * @returns a function that stops handing messages over (they queue again)
   * @throws {WireError} when a handler is already set
   *
   * @example
   * ```ts
   * import { RouterSocket } from "@kvport/nixl/wire";
   *
   * await using router = await RouterSocket.bind("tcp://127.0.0.1:0");
   * const stop = router.handle((message) => router.send(message)); // echo
   * stop();
   * ```
   */
  handle(handler: (message: Uint8Array[]) => unknown): () => void {
    if (this.#handler) throw new WireError("this ROUTER socket has a message handler already");
    this.#handler = handler;
    this.#drain();
    return () => {
      if (this.#handler === handler) this.#handler = undefined;
    };
  }

  /** Runs the handler on `message`; true when it returned an unsettled promise. */
  #call(message: Uint8Array[]): boolean {
    let r: unknown;
    try {
      r = this.#handler!(message);
    } catch (e) {
      this.#failed(e);
      return false;
    }
    if (!(r instanceof Promise)) return false;
    this.#handling = true;
    r.then(undefined, (e) => this.#failed(e)).finally(() => {
      this.#handling = false;
      this.#drain();
    });
    return true;
  }

  #failed(e: unknown): void {
    this._report(
      e instanceof WireError ? e : new WireError(
        `ROUTER message handler failed: ${e instanceof Error ? e.message : String(e)}`,
        { cause: e },
      ),
    );
  }

  /** Hands queued messages over, in order, while no call is running. */
  #drain(): void {
    while (this.#handler && !this.#handling && !this.isClosed) {
      const message = this._inbox.takeNow();
      if (message === undefined) return;
      this.#call(message as Uint8Array[]);
    }
  }

  /** Handles a message from a peer (see {@linkcode WireSocket}). */
  protected override _onMessage(pipe: Pipe, frames: Uint8Array[]): void {
    const message = [pipe.info.identity, ...frames];
    if (this.#handler && !this.#handling && this._inbox.size === 0) this.#call(message);
    else this._enqueue(message);
  }
}
