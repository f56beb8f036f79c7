/**
 * The CURVE security mechanism of ZMTP 3 (RFC 26, CurveZMQ): the HELLO / WELCOME /
 * INITIATE / READY handshake that authenticates both ends with long-term Curve25519 keys
 * and agrees on per-connection transient keys, then every message frame sealed in a
 * `MESSAGE` box with a strictly increasing nonce. Interoperates with libzmq (pyzmq with
 * `curve_server` / `curve_serverkey`).
 *
 * The primitives (X25519 + XSalsa20-Poly1305 boxes, random bytes) are tweetnacl's; this
 * file only lays out the commands and checks them. Every command is checked for its exact
 * layout before a box is opened; any failure is a {@linkcode WireSecurityError} and the
 * connection is dropped.
 *
 * A server refuses a client whose long-term public key is not in its allow-list, with an
 * `ERROR` command naming the reason (as libzmq does after a ZAP refusal).
 *
 * @example
 * ```ts
 * import { curveKeyPair, RepSocket, ReqSocket } from "@kvport/nixl/wire";
 *
 * const server = curveKeyPair();
 * const client = curveKeyPair();
 * await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
 *   curve: { server: true, secretKey: server.secretKey, allowedClients: [client.publicKey] },
 * });
 * await using req = ReqSocket.connect(rep.endpoints[0], {
 *   curve: { secretKey: client.secretKey, serverKey: server.publicKey },
 * });
 * ```
 *
 * @module
 */

import nacl from "tweetnacl";
import { WireSecurityError } from "./errors.ts";
import { encodeCommand } from "./zmtp.ts";
import { z85Encode } from "./z85.ts";

/** Length of a Curve25519 key, public or secret. */
export const CURVE_KEY_BYTES = 32;

/** A Curve25519 key pair (32-byte keys). */
export interface CurveKeyPair {
  /** The public key: give it to peers (servers list client keys; clients know the server's). */
  readonly publicKey: Uint8Array;
  /** The secret key: never leaves this process. */
  readonly secretKey: Uint8Array;
}

/** CURVE settings of a socket that authenticates as the server. */
export interface CurveServerOptions {
  /** This socket is the CURVE server. */
  readonly server: true;
  /** Our long-term secret key (32 bytes); the public key is derived from it. */
  readonly secretKey: Uint8Array;
  /**
   * Long-term public keys of the clients allowed in (32 bytes each); any other client is
   * refused with an ERROR command. At least one.
   */
  readonly allowedClients: Iterable<Uint8Array>;
}

/** CURVE settings of a socket that authenticates as a client. */
export interface CurveClientOptions {
  /** This socket is a CURVE client (the default). */
  readonly server?: false;
  /** Our long-term secret key (32 bytes); the public key is derived from it. */
  readonly secretKey: Uint8Array;
  /** The server's long-term public key (32 bytes). */
  readonly serverKey: Uint8Array;
}

/** CURVE settings of a socket: the server or the client side. */
export type CurveOptions = CurveServerOptions | CurveClientOptions;

/**
 * Makes a fresh Curve25519 key pair from the system's random source.
 *
 * @returns the pair
 *
 * @example
 * ```ts
 * import { curveKeyPair, z85Encode } from "@kvport/nixl/wire";
 *
 * const pair = curveKeyPair();
 * console.log(z85Encode(pair.publicKey).length); // 40
 * ```
 */
export function curveKeyPair(): CurveKeyPair {
  const kp = nacl.box.keyPair();
  return { publicKey: kp.publicKey, secretKey: kp.secretKey };
}

/**
 * The public key of a secret key.
 *
 * @param secretKey 32 bytes
 * @returns the public key
 *
 * @example
 * ```ts
 * import { curveKeyPair, curvePublicKey } from "@kvport/nixl/wire";
 *
 * const pair = curveKeyPair();
 * console.log(curvePublicKey(pair.secretKey).join() === pair.publicKey.join()); // true
 * ```
 */
export function curvePublicKey(secretKey: Uint8Array): Uint8Array {
  checkKey("secretKey", secretKey);
  return nacl.scalarMult.base(secretKey);
}

function checkKey(name: string, key: unknown): asserts key is Uint8Array {
  if (!(key instanceof Uint8Array) || key.length !== CURVE_KEY_BYTES) {
    const got = key instanceof Uint8Array ? `${key.length} bytes` : typeof key;
    throw new WireSecurityError(`CURVE ${name} must be ${CURVE_KEY_BYTES} bytes, got ${got}`);
  }
}

/** Resolved, checked CURVE settings of a socket (shared by its connections). */
export interface CurveSettings {
  readonly asServer: boolean;
  readonly publicKey: Uint8Array;
  readonly secretKey: Uint8Array;
  /** Client: the server's key. */
  readonly serverKey: Uint8Array | undefined;
  /** Server: allowed client keys, as hex. */
  readonly allowed: ReadonlySet<string> | undefined;
}

/**
 * Checks CURVE options and derives what connections need (internal to the wire layer).
 *
 * @param options the socket's `curve` option
 * @returns the settings
 * @throws {WireSecurityError} naming the bad field
 *
 * @example
 * ```ts
 * import { curveKeyPair } from "@kvport/nixl/wire";
 * import { resolveCurve } from "./curve.ts";
 *
 * const s = resolveCurve({ secretKey: curveKeyPair().secretKey, serverKey: curveKeyPair().publicKey });
 * console.log(s.asServer); // false
 * ```
 */
export function resolveCurve(options: CurveOptions): CurveSettings {
  // A socket's connections share its options object: resolve (derive keys) once.
  const cached = RESOLVED.get(options);
  if (cached) return cached;
  const settings = resolveUncached(options);
  RESOLVED.set(options, settings);
  return settings;
}

const RESOLVED = new WeakMap<CurveOptions, CurveSettings>();

function resolveUncached(options: CurveOptions): CurveSettings {
  if (options === null || typeof options !== "object") {
    throw new WireSecurityError(`option curve must be an object, got ${String(options)}`);
  }
  checkKey("secretKey", options.secretKey);
  const publicKey = nacl.scalarMult.base(options.secretKey);
  if (options.server === true) {
    const allowed = new Set<string>();
    for (const k of options.allowedClients) {
      checkKey("allowedClients entry", k);
      allowed.add(hex(k));
    }
    if (allowed.size === 0) {
      throw new WireSecurityError(
        "CURVE server needs at least one key in allowedClients (strangers are refused)",
      );
    }
    return {
      asServer: true,
      publicKey,
      secretKey: options.secretKey,
      serverKey: undefined,
      allowed,
    };
  }
  checkKey("serverKey", (options as CurveClientOptions).serverKey);
  return {
    asServer: false,
    publicKey,
    secretKey: options.secretKey,
    serverKey: (options as CurveClientOptions).serverKey,
    allowed: undefined,
  };
}

function hex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

const ASCII = new TextEncoder();
const UTF8 = new TextDecoder();

function prefix(text: string): Uint8Array {
  return ASCII.encode(text);
}

const HELLO_PREFIX = prefix("CurveZMQHELLO---");
const WELCOME_PREFIX = prefix("WELCOME-");
const COOKIE_PREFIX = prefix("COOKIE--");
const INITIATE_PREFIX = prefix("CurveZMQINITIATE");
const VOUCH_PREFIX = prefix("VOUCH---");
const READY_PREFIX = prefix("CurveZMQREADY---");
const MESSAGE_C_PREFIX = prefix("CurveZMQMESSAGEC");
const MESSAGE_S_PREFIX = prefix("CurveZMQMESSAGES");
const MESSAGE_NAME = prefix("\x07MESSAGE");

/** HELLO data: version (2), padding (72), C' (32), nonce (8), box (80). */
const HELLO_BYTES = 2 + 72 + 32 + 8 + 80;
/** WELCOME data: nonce (16), box of S' + cookie (32 + 96 + 16). */
const WELCOME_BYTES = 16 + 144;
/** Cookie: nonce (16), box of C' + s' (64 + 16). */
const COOKIE_BYTES = 16 + 80;
/** Vouch: nonce (16), box of C' + S (64 + 16). */
const VOUCH_BYTES = 16 + 80;
/** Smallest INITIATE data: cookie, nonce (8), box of C + vouch (32 + 96 + 16). */
const INITIATE_MIN_BYTES = COOKIE_BYTES + 8 + 16 + 32 + VOUCH_BYTES;
/** Box overhead (Poly1305 tag). */
const TAG = 16;
/** MESSAGE frame bytes around the payload: name (8), nonce (8), tag (16), flags (1). */
export const CURVE_MESSAGE_OVERHEAD = 8 + 8 + TAG + 1;

function nonce24(pre: Uint8Array, tail: Uint8Array): Uint8Array {
  const n = new Uint8Array(24);
  n.set(pre, 0);
  n.set(tail, pre.length);
  return n;
}

function shortNonce(value: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, value);
  return b;
}

function readShortNonce(b: Uint8Array, off: number): bigint {
  return new DataView(b.buffer, b.byteOffset + off, 8).getBigUint64(0);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** What one handshake step produced. */
export interface CurveStep {
  /** Command frames to write, in order. */
  readonly write: Uint8Array[];
  /** The peer's metadata, once the handshake is complete. */
  readonly metadata?: Uint8Array;
  /** Refusal: write `write` (an ERROR), then drop the connection with this error. */
  readonly refuse?: WireSecurityError;
}

/** One decrypted frame of a CURVE `MESSAGE`. */
export interface CurveFrame {
  /** The frame's bytes. */
  readonly data: Uint8Array;
  /** More frames of the same message follow. */
  readonly more: boolean;
  /** The frame is a ZMTP command (PING, PONG, ...), not message data. */
  readonly command: boolean;
}

/**
 * The CURVE state of one connection: the handshake, then sealing and opening message
 * frames. Created by {@linkcode ZmtpConnection} when its socket has a `curve` option.
 *
 * @example
 * ```ts
 * import { curveKeyPair } from "@kvport/nixl/wire";
 * import { CurveMechanism, resolveCurve } from "./curve.ts";
 *
 * const server = curveKeyPair();
 * const client = new CurveMechanism(
 *   resolveCurve({ secretKey: curveKeyPair().secretKey, serverKey: server.publicKey }),
 *   "tcp://127.0.0.1:7300",
 * );
 * const [hello] = client.start(); // the HELLO command frame to write after the greeting
 * console.log(hello.length); // 202
 * ```
 */
export class CurveMechanism {
  readonly #s: CurveSettings;
  readonly #peer: string;
  #state: "greeting" | "hello" | "welcome" | "initiate" | "ready" | "ready-wait" = "greeting";
  #sendNonce = 1n;
  #peerNonce = 0n;
  /** Our transient key pair. */
  #transient: CurveKeyPair | undefined;
  /** The peer's transient public key. */
  #peerTransient: Uint8Array | undefined;
  /** Precomputed key of the two transient keys. */
  #shared: Uint8Array | undefined;
  /** Server: the cookie key, for this connection only. */
  #cookieKey: Uint8Array | undefined;
  #peerPublicKey: Uint8Array | undefined;
  /** Our metadata (Socket-Type, Identity), carried by INITIATE or READY. */
  #metadata: Uint8Array = new Uint8Array(0);

  /**
   * Starts the mechanism for one connection.
   *
   * @param settings the socket's resolved settings
   * @param peer the peer's address, for messages
   */
  constructor(settings: CurveSettings, peer: string) {
    this.#s = settings;
    this.#peer = peer;
  }

  /** We are the CURVE server (the greeting's as-server flag). */
  get asServer(): boolean {
    return this.#s.asServer;
  }

  /** The peer's long-term public key, once the handshake has proven it. */
  get peerPublicKey(): Uint8Array | undefined {
    return this.#peerPublicKey;
  }

  #fail(message: string): WireSecurityError {
    return new WireSecurityError(`CURVE: ${message}`, { peer: this.#peer });
  }

  /**
   * The peer's greeting arrived.
   *
   * @returns the commands to write (the client's HELLO)
   */
  start(): Uint8Array[] {
    // The peer's as-server flag is not checked: libzmq does not set it reliably. A peer of
    // the wrong role fails at the first command instead.
    if (this.#s.asServer) {
      this.#state = "hello";
      return [];
    }
    this.#transient = curveKeyPair();
    const n = shortNonce(this.#sendNonce++);
    const box = nacl.box(
      new Uint8Array(64),
      nonce24(HELLO_PREFIX, n),
      this.#s.serverKey!,
      this.#transient.secretKey,
    );
    const data = concat(
      new Uint8Array([1, 0]),
      new Uint8Array(72),
      this.#transient.publicKey,
      n,
      box,
    );
    this.#state = "welcome";
    return [encodeCommand("HELLO", data)];
  }

  /**
   * One handshake command arrived.
   *
   * @param name the command name as sent
   * @param data its data
   * @returns what to write, the peer's metadata when complete, or a refusal
   * @throws {WireSecurityError} when the command is not what the handshake expects or
   *   does not check
   */
  handshake(name: string, data: Uint8Array): CurveStep {
    const upper = name.toUpperCase();
    if (upper === "ERROR") {
      const len = data[0] ?? 0;
      throw this.#fail(
        `peer refused the handshake: ERROR ${
          JSON.stringify(UTF8.decode(data.subarray(1, 1 + len)))
        }`,
      );
    }
    const expected = this.#state === "hello"
      ? "HELLO"
      : this.#state === "welcome"
      ? "WELCOME"
      : this.#state === "initiate"
      ? "INITIATE"
      : this.#state === "ready-wait"
      ? "READY"
      : "(none)";
    if (upper !== expected) {
      throw this.#fail(`expected the ${expected} command, got ${JSON.stringify(name)}`);
    }
    switch (this.#state) {
      case "hello":
        return this.#onHello(data);
      case "welcome":
        return this.#onWelcome(data);
      case "initiate":
        return this.#onInitiate(data);
      default:
        return this.#onReady(data);
    }
  }

  #onHello(data: Uint8Array): CurveStep {
    if (data.length !== HELLO_BYTES) {
      throw this.#fail(`HELLO must carry ${HELLO_BYTES} bytes, got ${data.length}`);
    }
    if (data[0] !== 1 || data[1] !== 0) {
      throw this.#fail(`HELLO of CurveZMQ version ${data[0]}.${data[1]}; we speak 1.0`);
    }
    const clientTransient = data.slice(74, 106);
    const n = readShortNonce(data, 106);
    const opened = nacl.box.open(
      data.subarray(114),
      nonce24(HELLO_PREFIX, data.subarray(106, 114)),
      clientTransient,
      this.#s.secretKey,
    );
    if (!opened) {
      throw this.#fail(
        "HELLO box does not open: the client does not use our server public key " +
          `(ours is ${z85Encode(this.#s.publicKey)})`,
      );
    }
    this.#peerNonce = n;
    this.#peerTransient = clientTransient;
    this.#transient = curveKeyPair();
    this.#cookieKey = nacl.randomBytes(32);
    const cookieNonce = nacl.randomBytes(16);
    const cookie = concat(
      cookieNonce,
      nacl.secretbox(
        concat(clientTransient, this.#transient.secretKey),
        nonce24(COOKIE_PREFIX, cookieNonce),
        this.#cookieKey,
      ),
    );
    const welcomeNonce = nacl.randomBytes(16);
    const box = nacl.box(
      concat(this.#transient.publicKey, cookie),
      nonce24(WELCOME_PREFIX, welcomeNonce),
      clientTransient,
      this.#s.secretKey,
    );
    this.#state = "initiate";
    return { write: [encodeCommand("WELCOME", concat(welcomeNonce, box))] };
  }

  #onWelcome(data: Uint8Array): CurveStep {
    if (data.length !== WELCOME_BYTES) {
      throw this.#fail(`WELCOME must carry ${WELCOME_BYTES} bytes, got ${data.length}`);
    }
    const opened = nacl.box.open(
      data.subarray(16),
      nonce24(WELCOME_PREFIX, data.subarray(0, 16)),
      this.#s.serverKey!,
      this.#transient!.secretKey,
    );
    if (!opened) {
      throw this.#fail("WELCOME box does not open: the server is not the one whose key we hold");
    }
    const serverTransient = opened.slice(0, 32);
    const cookie = opened.slice(32, 32 + COOKIE_BYTES);
    this.#peerTransient = serverTransient;
    this.#shared = nacl.box.before(serverTransient, this.#transient!.secretKey);
    const vouchNonce = nacl.randomBytes(16);
    const vouch = concat(
      vouchNonce,
      nacl.box(
        concat(this.#transient!.publicKey, this.#s.serverKey!),
        nonce24(VOUCH_PREFIX, vouchNonce),
        serverTransient,
        this.#s.secretKey,
      ),
    );
    const n = shortNonce(this.#sendNonce++);
    const box = nacl.box.after(
      concat(this.#s.publicKey, vouch, this.#metadata),
      nonce24(INITIATE_PREFIX, n),
      this.#shared,
    );
    this.#state = "ready-wait";
    return { write: [encodeCommand("INITIATE", concat(cookie, n, box))] };
  }

  /**
   * Sets the metadata (Socket-Type, Identity) our INITIATE or READY carries.
   *
   * @param metadata encoded ZMTP properties
   */
  setMetadata(metadata: Uint8Array): void {
    this.#metadata = metadata;
  }

  #onInitiate(data: Uint8Array): CurveStep {
    if (data.length < INITIATE_MIN_BYTES) {
      throw this.#fail(
        `INITIATE must carry at least ${INITIATE_MIN_BYTES} bytes, got ${data.length}`,
      );
    }
    const cookie = nacl.secretbox.open(
      data.subarray(16, COOKIE_BYTES),
      nonce24(COOKIE_PREFIX, data.subarray(0, 16)),
      this.#cookieKey!,
    );
    if (!cookie || !equal(cookie.subarray(0, 32), this.#peerTransient!)) {
      throw this.#fail("INITIATE cookie does not open or is not this connection's");
    }
    const serverTransientSecret = cookie.subarray(32, 64);
    if (!equal(serverTransientSecret, this.#transient!.secretKey)) {
      throw this.#fail("INITIATE cookie carries another transient key");
    }
    const n = readShortNonce(data, COOKIE_BYTES);
    if (n <= this.#peerNonce) {
      throw this.#fail(`INITIATE nonce ${n} does not follow HELLO's ${this.#peerNonce}`);
    }
    this.#shared = nacl.box.before(this.#peerTransient!, this.#transient!.secretKey);
    const opened = nacl.box.open.after(
      data.subarray(COOKIE_BYTES + 8),
      nonce24(INITIATE_PREFIX, data.subarray(COOKIE_BYTES, COOKIE_BYTES + 8)),
      this.#shared,
    );
    if (!opened) throw this.#fail("INITIATE box does not open");
    const clientKey = opened.slice(0, 32);
    const vouch = opened.subarray(32, 32 + VOUCH_BYTES);
    const vouched = nacl.box.open(
      vouch.subarray(16),
      nonce24(VOUCH_PREFIX, vouch.subarray(0, 16)),
      clientKey,
      this.#transient!.secretKey,
    );
    if (
      !vouched || !equal(vouched.subarray(0, 32), this.#peerTransient!) ||
      !equal(vouched.subarray(32, 64), this.#s.publicKey)
    ) {
      throw this.#fail("INITIATE vouch does not open or does not vouch for this connection");
    }
    this.#peerNonce = n;
    if (!this.#s.allowed!.has(hex(clientKey))) {
      const reason = "client key not allowed";
      return {
        write: [encodeError(reason)],
        refuse: this.#fail(
          `refused client ${z85Encode(clientKey)}: its public key is not in the allow-list`,
        ),
      };
    }
    this.#peerPublicKey = clientKey;
    const rn = shortNonce(this.#sendNonce++);
    const box = nacl.box.after(this.#metadata, nonce24(READY_PREFIX, rn), this.#shared);
    this.#state = "ready";
    return {
      write: [encodeCommand("READY", concat(rn, box))],
      metadata: opened.slice(32 + VOUCH_BYTES),
    };
  }

  #onReady(data: Uint8Array): CurveStep {
    if (data.length < 8 + TAG) {
      throw this.#fail(`READY must carry at least ${8 + TAG} bytes, got ${data.length}`);
    }
    const n = readShortNonce(data, 0);
    const opened = nacl.box.open.after(
      data.subarray(8),
      nonce24(READY_PREFIX, data.subarray(0, 8)),
      this.#shared!,
    );
    if (!opened) throw this.#fail("READY box does not open");
    this.#peerNonce = n;
    this.#peerPublicKey = this.#s.serverKey;
    this.#state = "ready";
    return { write: [], metadata: opened };
  }

  /**
   * Seals one frame as a CURVE `MESSAGE` and returns the whole ZMTP frame (header
   * included), sent as a data frame without MORE as libzmq does (MORE travels inside).
   *
   * @param frame the frame's bytes
   * @param more more frames of the message follow
   * @param command the frame is a command (PONG), not message data
   * @returns the frame to write
   */
  seal(frame: Uint8Array, more: boolean, command = false): Uint8Array {
    const plain = new Uint8Array(1 + frame.length);
    plain[0] = (more ? 1 : 0) | (command ? 2 : 0);
    plain.set(frame, 1);
    const n = shortNonce(this.#sendNonce++);
    const box = nacl.box.after(
      plain,
      nonce24(this.#s.asServer ? MESSAGE_S_PREFIX : MESSAGE_C_PREFIX, n),
      this.#shared!,
    );
    const size = 16 + box.length;
    const long = size > 255;
    const head = long ? 9 : 2;
    const out = new Uint8Array(head + size);
    if (long) {
      out[0] = 0x02;
      const v = new DataView(out.buffer);
      v.setUint32(1, Math.floor(size / 0x1_0000_0000));
      v.setUint32(5, size >>> 0);
    } else {
      out[0] = 0;
      out[1] = size;
    }
    out.set(MESSAGE_NAME, head);
    out.set(n, head + 8);
    out.set(box, head + 16);
    return out;
  }

  /**
   * Opens one CURVE `MESSAGE` (the body of a data frame, or the data of a MESSAGE command).
   *
   * @param body the frame body, starting with `\x07MESSAGE`, or the command data after
   *   the name when `fromCommand`
   * @param fromCommand the frame came as a command frame named MESSAGE
   * @returns the decrypted frame and its flags
   * @throws {WireSecurityError} on a malformed frame, a replayed nonce or a box that does
   *   not open
   */
  open(body: Uint8Array, fromCommand = false): CurveFrame {
    const start = fromCommand ? 0 : 8;
    if (!fromCommand && (body.length < 8 || !equal(body.subarray(0, 8), MESSAGE_NAME))) {
      throw this.#fail("frame after the handshake is not a MESSAGE command");
    }
    if (body.length < start + 8 + TAG + 1) {
      throw this.#fail(`MESSAGE of ${body.length} bytes is too short`);
    }
    const n = readShortNonce(body, start);
    if (n <= this.#peerNonce) {
      throw this.#fail(`MESSAGE nonce ${n} is not above the last one (${this.#peerNonce})`);
    }
    const opened = nacl.box.open.after(
      body.subarray(start + 8),
      nonce24(
        this.#s.asServer ? MESSAGE_C_PREFIX : MESSAGE_S_PREFIX,
        body.subarray(start, start + 8),
      ),
      this.#shared!,
    );
    if (!opened) throw this.#fail("MESSAGE box does not open");
    this.#peerNonce = n;
    const flags = opened[0];
    if (flags & ~0x03) {
      throw this.#fail(`MESSAGE flags 0x${flags.toString(16)} has unknown bits`);
    }
    return { data: opened.subarray(1), more: (flags & 1) !== 0, command: (flags & 2) !== 0 };
  }
}

/** The ZMTP ERROR command with a reason (at most 255 bytes). */
function encodeError(reason: string): Uint8Array {
  const r = ASCII.encode(reason).subarray(0, 255);
  return encodeCommand("ERROR", concat(new Uint8Array([r.length]), r));
}
