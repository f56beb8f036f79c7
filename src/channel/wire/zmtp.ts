/**
 * ZMTP 3.x codec (RFC 23/ZMTP, RFC 37/ZMTP 3.1) with the NULL and CURVE (see
 * `curve.ts`) security mechanisms:
 * greeting, commands (READY, PING/PONG, ERROR), frames and multipart messages, and an
 * incremental decoder that refuses an oversize frame from its header, before any byte of
 * its body is buffered.
 *
 * This module knows no sockets; {@linkcode ZmtpConnection} drives it over `node:net`.
 *
 * @example
 * ```ts
 * import { encodeFrames, ZmtpDecoder } from "@kvport/nixl/wire";
 *
 * const decoder = new ZmtpDecoder({ skipGreeting: true });
 * for (const piece of encodeFrames([new Uint8Array(0), new TextEncoder().encode("hi")])) {
 *   decoder.push(piece, (event) => console.log(event.kind)); // "message" once
 * }
 * ```
 *
 * @module
 */

import { WireProtocolError } from "./errors.ts";

/** The ZeroMQ socket types this library speaks. */
export type SocketType = "REQ" | "REP" | "DEALER" | "ROUTER" | "PUSH" | "PULL";

/** Every socket type of {@linkcode SocketType}, in one list. */
export const SOCKET_TYPES: readonly SocketType[] = [
  "REQ",
  "REP",
  "DEALER",
  "ROUTER",
  "PUSH",
  "PULL",
];

const PEERS: Readonly<Record<SocketType, readonly string[]>> = {
  REQ: ["REP", "ROUTER"],
  REP: ["REQ", "DEALER"],
  DEALER: ["REP", "DEALER", "ROUTER"],
  ROUTER: ["REQ", "DEALER", "ROUTER"],
  PUSH: ["PULL"],
  PULL: ["PUSH"],
};

/**
 * The peer socket types a socket type may talk to (RFC 23's compatibility table).
 *
 * @param type our socket type
 * @returns the compatible peer types
 *
 * @example
 * ```ts
 * import { compatiblePeerTypes } from "@kvport/nixl/wire";
 *
 * console.log(compatiblePeerTypes("REQ")); // ["REP", "ROUTER"]
 * ```
 */
export function compatiblePeerTypes(type: SocketType): readonly string[] {
  return PEERS[type];
}

/** Size of a ZMTP 3 greeting, in bytes. */
export const GREETING_SIZE = 64;

/** Frame flag: more frames of this message follow. */
export const FLAG_MORE = 0x01;
/** Frame flag: the size field is 8 bytes (a long frame). */
export const FLAG_LONG = 0x02;
/** Frame flag: the frame is a command, not message data. */
export const FLAG_COMMAND = 0x04;

/** Default largest message (sum of its frames) accepted from a peer: 64 MiB. */
export const DEFAULT_MAX_MESSAGE_BYTES: number = 64 * 1024 * 1024;
/** Default largest number of frames in one message accepted from a peer. */
export const DEFAULT_MAX_FRAMES: number = 1024;
/** Default largest command frame accepted from a peer: 64 KiB. */
export const DEFAULT_MAX_COMMAND_BYTES: number = 64 * 1024;

const TEXT = new TextEncoder();
const UTF8 = new TextDecoder();

/** The security mechanisms this library speaks. */
export type Mechanism = "NULL" | "CURVE";

/** What a peer's greeting said. */
export interface Greeting {
  /** Major protocol version (3 for ZMTP 3.x). */
  major: number;
  /** Minor protocol version (0 or 1). */
  minor: number;
  /** Security mechanism name: `"NULL"` or `"CURVE"`. */
  mechanism: Mechanism;
  /** The as-server flag. */
  asServer: boolean;
}

/**
 * Encodes our 64-byte greeting: signature, version 3.1, mechanism (NULL by default).
 *
 * @param options minor version (default 1), the as-server flag (default false; NULL
 *   ignores it) and the mechanism (default `"NULL"`)
 * @returns the 64 bytes
 *
 * @example
 * ```ts
 * import { encodeGreeting } from "@kvport/nixl/wire";
 *
 * const g = encodeGreeting();
 * console.log(g.length, g[0], g[9], g[10], g[11]); // 64 255 127 3 1
 * ```
 */
export function encodeGreeting(
  options: { minor?: number; asServer?: boolean; mechanism?: Mechanism } = {},
): Uint8Array {
  const g = new Uint8Array(GREETING_SIZE);
  g[0] = 0xff;
  g[9] = 0x7f;
  g[10] = 3;
  g[11] = options.minor ?? 1;
  g.set(TEXT.encode(options.mechanism ?? "NULL"), 12);
  g[32] = options.asServer ? 1 : 0;
  return g;
}

function describeByte(b: number): string {
  const c = b >= 0x20 && b < 0x7f ? ` '${String.fromCharCode(b)}'` : "";
  return `0x${b.toString(16).padStart(2, "0")}${c}`;
}

/**
 * Checks a greeting prefix as bytes arrive, so garbage is refused at its first byte.
 * Throws on the first invalid byte among those present; returns the greeting when all
 * 64 bytes are present, else `undefined`.
 *
 * @param bytes the first bytes received (any length)
 * @returns the parsed greeting, or `undefined` while incomplete
 * @throws {WireProtocolError} naming the offending byte
 *
 * @example
 * ```ts
 * import { checkGreeting, encodeGreeting } from "@kvport/nixl/wire";
 *
 * console.log(checkGreeting(encodeGreeting())); // { major: 3, minor: 1, mechanism: "NULL", asServer: false }
 * ```
 */
export function checkGreeting(bytes: Uint8Array): Greeting | undefined {
  const n = bytes.length;
  if (n >= 1 && bytes[0] !== 0xff) {
    throw new WireProtocolError(
      `not a ZMTP peer: greeting must start with 0xff, got ${describeByte(bytes[0])}`,
    );
  }
  if (n >= 10 && (bytes[9] & 0x01) !== 1) {
    throw new WireProtocolError(
      `not a ZMTP peer: greeting signature byte 10 must be 0x7f, got ${describeByte(bytes[9])}`,
    );
  }
  if (n >= 11 && bytes[10] < 3) {
    throw new WireProtocolError(
      `unsupported ZMTP version ${bytes[10]}.x: this library speaks ZMTP 3.x ` +
        `(libzmq 4.x or newer)`,
    );
  }
  if (n >= 32) {
    const mech = bytes.subarray(12, 32);
    let end = mech.indexOf(0);
    if (end < 0) end = 20;
    for (let i = end; i < 20; i++) {
      if (mech[i] !== 0) {
        throw new WireProtocolError("malformed greeting: mechanism name is not NUL-padded");
      }
    }
    const mechanism = String.fromCharCode(...mech.subarray(0, end));
    if (mechanism !== "NULL" && mechanism !== "CURVE") {
      throw new WireProtocolError(
        `unsupported security mechanism ${JSON.stringify(mechanism)}: NULL and CURVE are ` +
          `supported`,
      );
    }
  }
  if (n < GREETING_SIZE) return undefined;
  const end = bytes.subarray(12, 32).indexOf(0);
  const mechanism = String.fromCharCode(...bytes.subarray(12, end < 0 ? 32 : 12 + end));
  return {
    major: bytes[10],
    minor: bytes[11],
    mechanism: mechanism as Mechanism,
    asServer: bytes[32] === 1,
  };
}

function frameHeader(size: number, flags: number): Uint8Array {
  const h = new Uint8Array(frameHeaderSize(size));
  putFrameHeader(h, 0, size, flags);
  return h;
}

/** Bytes of a frame header for a body of `size` bytes: 2 (short) or 9 (long). */
function frameHeaderSize(size: number): number {
  return size <= 255 ? 2 : 9;
}

/** Writes a frame header at `out[off]` (zeroed room of frameHeaderSize); returns the
 * offset after it. */
function putFrameHeader(out: Uint8Array, off: number, size: number, flags: number): number {
  if (size <= 255) {
    out[off] = flags;
    out[off + 1] = size;
    return off + 2;
  }
  out[off] = flags | FLAG_LONG;
  const hi = Math.floor(size / 0x1_0000_0000);
  const lo = size >>> 0;
  for (let i = 0; i < 4; i++) {
    out[off + 4 - i] = (hi >>> (8 * i)) & 0xff;
    out[off + 8 - i] = (lo >>> (8 * i)) & 0xff;
  }
  return off + 9;
}

/** Messages up to this size are encoded into one buffer; larger bodies are not copied. */
const COALESCE_BYTES = 64 * 1024;

/**
 * Encodes a multipart message as frames (MORE on all but the last). Small messages come
 * back as one buffer; large bodies are returned as they are, not copied, between their
 * headers. Frames of 256 bytes and more get a long (8-byte) size.
 *
 * @param frames the message parts (at least one)
 * @returns pieces to write in order
 *
 * @example
 * ```ts
 * import { encodeFrames } from "@kvport/nixl/wire";
 *
 * const [wire] = encodeFrames([new Uint8Array([1, 2])]);
 * console.log(wire); // Uint8Array(4) [0, 2, 1, 2]
 * ```
 */
export function encodeFrames(frames: readonly Uint8Array[]): Uint8Array[] {
  if (frames.length === 0) throw new RangeError("a ZMTP message needs at least one frame");
  let total = 0;
  for (let i = 0; i < frames.length; i++) {
    const n = frames[i].length;
    total += frameHeaderSize(n) + n;
  }
  if (total > COALESCE_BYTES) {
    const pieces: Uint8Array[] = [];
    for (let i = 0; i < frames.length; i++) {
      const f = frames[i];
      pieces.push(frameHeader(f.length, i < frames.length - 1 ? FLAG_MORE : 0));
      if (f.length > 0) pieces.push(f);
    }
    return pieces;
  }
  // Small: headers written in place, one buffer, no header arrays (every request and
  // reply of the side channels and the registry is one of these).
  const out = new Uint8Array(total);
  let off = 0;
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i];
    off = putFrameHeader(out, off, f.length, i < frames.length - 1 ? FLAG_MORE : 0);
    out.set(f, off);
    off += f.length;
  }
  return [out];
}

/**
 * Encodes one command frame: name length, name, data.
 *
 * @param name the command name (1..255 ASCII characters), e.g. `"READY"`
 * @param data the command data
 * @returns the whole frame (header included)
 *
 * @example
 * ```ts
 * import { encodeCommand } from "@kvport/nixl/wire";
 *
 * console.log(encodeCommand("PONG", new Uint8Array(0))); // Uint8Array(7) [4, 5, 4, 80, 79, 78, 71]
 * ```
 */
export function encodeCommand(name: string, data: Uint8Array): Uint8Array {
  const nameBytes = TEXT.encode(name);
  if (nameBytes.length === 0 || nameBytes.length > 255) {
    throw new RangeError(`command name must be 1..255 bytes, got ${nameBytes.length}`);
  }
  const bodyLength = 1 + nameBytes.length + data.length;
  const h = frameHeader(bodyLength, FLAG_COMMAND);
  const out = new Uint8Array(h.length + bodyLength);
  out.set(h, 0);
  out[h.length] = nameBytes.length;
  out.set(nameBytes, h.length + 1);
  out.set(data, h.length + 1 + nameBytes.length);
  return out;
}

/**
 * Encodes ZMTP metadata properties (name length, name, 4-byte value length, value), as
 * carried by READY.
 *
 * @param properties property names (1..255 bytes) and values
 * @returns the encoded properties
 *
 * @example
 * ```ts
 * import { encodeMetadata } from "@kvport/nixl/wire";
 *
 * const meta = encodeMetadata([["Socket-Type", new TextEncoder().encode("REQ")]]);
 * console.log(meta.length); // 1 + 11 + 4 + 3 = 19
 * ```
 */
export function encodeMetadata(
  properties: ReadonlyArray<readonly [string, Uint8Array]>,
): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [name, value] of properties) {
    const n = TEXT.encode(name);
    if (n.length === 0 || n.length > 255) {
      throw new RangeError(`property name must be 1..255 bytes, got ${n.length}`);
    }
    const p = new Uint8Array(1 + n.length + 4 + value.length);
    p[0] = n.length;
    p.set(n, 1);
    new DataView(p.buffer).setUint32(1 + n.length, value.length);
    p.set(value, 1 + n.length + 4);
    parts.push(p);
  }
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/**
 * Parses ZMTP metadata properties. Names are returned lower-cased (they are
 * case-insensitive); every length is checked against the bytes present.
 *
 * @param data the encoded properties
 * @returns property name (lower case) to value
 * @throws {WireProtocolError} on a truncated or malformed property
 *
 * @example
 * ```ts
 * import { encodeMetadata, parseMetadata } from "@kvport/nixl/wire";
 *
 * const meta = parseMetadata(encodeMetadata([["Identity", new Uint8Array([7])]]));
 * console.log(meta.get("identity")); // Uint8Array(1) [7]
 * ```
 */
export function parseMetadata(data: Uint8Array): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let off = 0;
  while (off < data.length) {
    const nameLen = data[off];
    if (nameLen === 0 || off + 1 + nameLen + 4 > data.length) {
      throw new WireProtocolError(
        `malformed metadata property at byte ${off}: name of ${nameLen} bytes and its ` +
          `value length do not fit in ${data.length - off} remaining bytes`,
      );
    }
    const name = UTF8.decode(data.subarray(off + 1, off + 1 + nameLen)).toLowerCase();
    const valueLen = view.getUint32(off + 1 + nameLen);
    const start = off + 1 + nameLen + 4;
    if (valueLen > data.length - start) {
      throw new WireProtocolError(
        `malformed metadata property "${name}": value of ${valueLen} bytes announced, ` +
          `${data.length - start} present`,
      );
    }
    out.set(name, data.slice(start, start + valueLen));
    off = start + valueLen;
  }
  return out;
}

/**
 * Encodes the READY command of the NULL mechanism with `Socket-Type` and, for REQ,
 * DEALER and ROUTER sockets, `Identity`.
 *
 * @param socketType our socket type
 * @param identity our identity (may be empty)
 * @returns the whole command frame
 *
 * @example
 * ```ts
 * import { encodeReady } from "@kvport/nixl/wire";
 *
 * const ready = encodeReady("DEALER", new TextEncoder().encode("sender-1"));
 * console.log(ready[0]); // 4 (COMMAND, short)
 * ```
 */
export function encodeReady(socketType: SocketType, identity: Uint8Array): Uint8Array {
  const props: Array<readonly [string, Uint8Array]> = [["Socket-Type", TEXT.encode(socketType)]];
  if (socketType === "REQ" || socketType === "DEALER" || socketType === "ROUTER") {
    props.push(["Identity", identity]);
  }
  return encodeCommand("READY", encodeMetadata(props));
}

/** One thing the decoder found in the byte stream. */
export type ZmtpEvent =
  | { kind: "greeting"; greeting: Greeting }
  | { kind: "command"; name: string; data: Uint8Array }
  | { kind: "message"; frames: Uint8Array[] };

/** Limits and mode of a {@linkcode ZmtpDecoder}. */
export interface ZmtpDecoderOptions {
  /** Largest message (sum of frame sizes) accepted; default 64 MiB. */
  maxMessageBytes?: number;
  /** Most frames in one message; default 1024. */
  maxFrames?: number;
  /** Largest command frame; default 64 KiB. */
  maxCommandBytes?: number;
  /** Start with frames (the greeting was handled elsewhere); default false. */
  skipGreeting?: boolean;
}

/**
 * Incremental ZMTP 3 decoder. Feed it the bytes as they arrive; it calls back with each
 * greeting, command and complete message. Violations throw {@linkcode WireProtocolError};
 * a frame larger than the limits is refused from its header, before its body is
 * buffered, and memory held is never more than the bytes actually received.
 *
 * @example
 * ```ts
 * import { encodeFrames, encodeGreeting, ZmtpDecoder } from "@kvport/nixl/wire";
 *
 * const d = new ZmtpDecoder({ maxMessageBytes: 1024 });
 * const events: string[] = [];
 * d.push(encodeGreeting(), (e) => events.push(e.kind));
 * for (const p of encodeFrames([new Uint8Array(10)])) d.push(p, (e) => events.push(e.kind));
 * console.log(events); // ["greeting", "message"]
 * ```
 */
export class ZmtpDecoder {
  readonly #maxMessageBytes: number;
  readonly #maxFrames: number;
  readonly #maxCommandBytes: number;
  #chunks: Uint8Array[] = [];
  #head = 0;
  #available = 0;
  #greetingDone: boolean;
  #frames: Uint8Array[] = [];
  #messageBytes = 0;
  #flags = -1;
  #size = -1;

  /**
   * Creates a decoder with the given limits.
   *
   * @param options limits; see {@linkcode ZmtpDecoderOptions}
   */
  constructor(options: ZmtpDecoderOptions = {}) {
    this.#maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.#maxFrames = options.maxFrames ?? DEFAULT_MAX_FRAMES;
    this.#maxCommandBytes = options.maxCommandBytes ?? DEFAULT_MAX_COMMAND_BYTES;
    this.#greetingDone = options.skipGreeting ?? false;
  }

  /** Bytes received but not yet consumed. */
  get buffered(): number {
    return this.#available;
  }

  /**
   * Consumes `chunk` and calls `onEvent` for each event completed by it, in order.
   *
   * @param chunk the next bytes from the peer (not retained after the call returns
   *   unless a frame is still incomplete; frames handed out are copies)
   * @param onEvent called for each greeting, command and complete message
   * @throws {WireProtocolError} on the first violation; the decoder is then unusable
   */
  push(chunk: Uint8Array, onEvent: (event: ZmtpEvent) => void): void {
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#available += chunk.length;
    }
    while (true) {
      if (!this.#greetingDone) {
        const greeting = checkGreeting(this.#peek(Math.min(this.#available, GREETING_SIZE)));
        if (!greeting) return;
        this.#skip(GREETING_SIZE);
        this.#greetingDone = true;
        onEvent({ kind: "greeting", greeting });
        continue;
      }
      if (this.#size < 0) {
        if (this.#available < 1) return;
        const flags = this.#peek(1)[0];
        if ((flags & 0xf8) !== 0) {
          throw new WireProtocolError(
            `malformed frame: reserved flag bits set in flags byte ${describeByte(flags)}`,
          );
        }
        const headerLen = flags & FLAG_LONG ? 9 : 2;
        if (this.#available < headerLen) return;
        const header = this.#peek(headerLen);
        let size: number;
        if (flags & FLAG_LONG) {
          const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
          size = view.getUint32(1) * 0x1_0000_0000 + view.getUint32(5);
        } else {
          size = header[1];
        }
        this.#checkFrame(flags, size);
        this.#skip(headerLen);
        this.#flags = flags;
        this.#size = size;
      }
      if (this.#available < this.#size) return;
      const body = this.#read(this.#size);
      const flags = this.#flags;
      this.#flags = -1;
      this.#size = -1;
      if (flags & FLAG_COMMAND) {
        onEvent(parseCommand(body));
      } else {
        this.#frames.push(body);
        this.#messageBytes += body.length;
        if ((flags & FLAG_MORE) === 0) {
          const frames = this.#frames;
          this.#frames = [];
          this.#messageBytes = 0;
          onEvent({ kind: "message", frames });
        }
      }
    }
  }

  #checkFrame(flags: number, size: number): void {
    if (flags & FLAG_COMMAND) {
      if (flags & FLAG_MORE) {
        throw new WireProtocolError("malformed frame: a command frame must not have MORE set");
      }
      if (this.#frames.length > 0) {
        throw new WireProtocolError(
          `malformed stream: command frame inside a multipart message after ` +
            `${this.#frames.length} frame(s)`,
        );
      }
      if (size > this.#maxCommandBytes) {
        throw new WireProtocolError(
          `command frame of ${size} bytes exceeds the limit of ${this.#maxCommandBytes}`,
        );
      }
      return;
    }
    if (this.#frames.length + 1 > this.#maxFrames) {
      throw new WireProtocolError(
        `message has more than ${this.#maxFrames} frames (the limit maxFrames)`,
      );
    }
    if (size > this.#maxMessageBytes - this.#messageBytes) {
      throw new WireProtocolError(
        `frame of ${size} bytes` +
          (this.#messageBytes > 0 ? ` after ${this.#messageBytes} bytes of its message` : "") +
          ` exceeds the limit of ${this.#maxMessageBytes} bytes per message ` +
          `(maxMessageBytes)`,
      );
    }
  }

  /** Returns the first `n` bytes without consuming them (a view when possible). */
  #peek(n: number): Uint8Array {
    const first = this.#chunks[0];
    if (n === 0) return new Uint8Array(0);
    if (first.length - this.#head >= n) return first.subarray(this.#head, this.#head + n);
    const out = new Uint8Array(n);
    let off = 0;
    let head = this.#head;
    for (const c of this.#chunks) {
      const take = Math.min(c.length - head, n - off);
      out.set(c.subarray(head, head + take), off);
      off += take;
      head = 0;
      if (off === n) break;
    }
    return out;
  }

  /** Consumes `n` bytes and returns a copy of them. */
  #read(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let off = 0;
    while (off < n) {
      const c = this.#chunks[0];
      const take = Math.min(c.length - this.#head, n - off);
      out.set(c.subarray(this.#head, this.#head + take), off);
      off += take;
      this.#advance(take);
    }
    return out;
  }

  #skip(n: number): void {
    let left = n;
    while (left > 0) {
      const c = this.#chunks[0];
      const take = Math.min(c.length - this.#head, left);
      left -= take;
      this.#advance(take);
    }
  }

  #advance(n: number): void {
    this.#head += n;
    this.#available -= n;
    if (this.#head === this.#chunks[0].length) {
      this.#chunks.shift();
      this.#head = 0;
    }
  }
}

function parseCommand(body: Uint8Array): ZmtpEvent {
  if (body.length < 1 || body[0] === 0 || body[0] > body.length - 1) {
    throw new WireProtocolError(
      `malformed command: name length ${body[0] ?? "missing"} does not fit in a ` +
        `${body.length}-byte command`,
    );
  }
  const nameBytes = body.subarray(1, 1 + body[0]);
  for (const b of nameBytes) {
    if (b < 0x21 || b > 0x7e) {
      throw new WireProtocolError(
        `malformed command: name byte ${describeByte(b)} is not printable ASCII`,
      );
    }
  }
  return {
    kind: "command",
    name: String.fromCharCode(...nameBytes),
    data: body.subarray(1 + body[0]),
  };
}
