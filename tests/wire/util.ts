/**
 * Helpers of the wire socket tests: text <-> bytes, and a raw TCP client for feeding
 * malformed bytes to a server.
 *
 * @module
 */

import * as net from "node:net";
import {
  encodeFrames,
  encodeGreeting,
  encodeReady,
  type SocketType,
} from "../../src/channel/wire/mod.ts";
import { Decoder, Encoder } from "@msgpack/msgpack";

const ENC = new TextEncoder();
const DEC = new TextDecoder();

/** UTF-8 bytes of a string. */
export function b(s: string): Uint8Array {
  return ENC.encode(s);
}

/** String of UTF-8 bytes. */
export function s(bytes: Uint8Array): string {
  return DEC.decode(bytes);
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A raw TCP client: what it received, and when the server closed it. */
export interface RawClient {
  socket: net.Socket;
  /** Everything received so far. */
  received(): Uint8Array;
  /** Resolves when the connection closed (by either side). */
  closed: Promise<void>;
  /** Writes bytes. */
  write(bytes: Uint8Array | string): void;
  /** Destroys the socket and waits for it to close. */
  destroy(): Promise<void>;
}

/** Connects a raw TCP client to 127.0.0.1:port. */
export function rawConnect(port: number): Promise<RawClient> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ host: "127.0.0.1", port });
    const chunks: Uint8Array[] = [];
    const closed = new Promise<void>((r) => socket.on("close", () => r()));
    socket.on("data", (d: Uint8Array) => chunks.push(new Uint8Array(d)));
    socket.on("error", () => {});
    socket.once("connect", () =>
      resolve({
        socket,
        closed,
        received: () => {
          const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
          let off = 0;
          for (const c of chunks) {
            out.set(c, off);
            off += c.length;
          }
          return out;
        },
        write: (bytes) => socket.write(typeof bytes === "string" ? ENC.encode(bytes) : bytes),
        destroy: () => {
          socket.destroy();
          return closed;
        },
      }));
    socket.once("error", reject);
  });
}

/** Greeting plus READY of a well-behaved peer of type `type`. */
export function handshake(type: SocketType, identity = new Uint8Array(0)): Uint8Array {
  const g = encodeGreeting();
  const r = encodeReady(type, identity);
  const out = new Uint8Array(g.length + r.length);
  out.set(g);
  out.set(r, g.length);
  return out;
}

/** One encoded multipart message, as a single buffer. */
export function frames(...parts: Uint8Array[]): Uint8Array {
  const pieces = encodeFrames(parts);
  const out = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of pieces) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Waits until `cond()` is true, polling every 5 ms, up to `ms`. */
export async function until(cond: () => boolean, ms = 2000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

/**
 * What a call gives: its value, or its error's class and message (to compare two codecs'
 * results and errors with one deepEqual).
 *
 * @example
 * ```ts
 * import { outcome } from "./util.ts";
 * console.log(outcome(() => JSON.parse("{"))); // { error: "SyntaxError: ..." }
 * ```
 */
export function outcome(fn: () => unknown): unknown {
  try {
    return { ok: fn() };
  } catch (e) {
    return { error: `${(e as Error).name}: ${(e as Error).message}` };
  }
}

/**
 * Counts the generic msgpack library's encodes and decodes while `fn` runs: all of them,
 * or with `only` just the encodes of messages of `only.encodes`' types and the decodes
 * giving messages of `only.decodes`' types (a fast codec of ours that passes them by
 * shows as none).
 *
 * @example
 * ```ts
 * import { countMsgpack } from "./util.ts";
 * import { encodeMessage } from "../../src/channel/wire/mod.ts";
 * const n = await countMsgpack(async () => {
 *   encodeMessage({ type: "ErrorMsg", error: "x" });
 * });
 * console.log(n); // 1
 * ```
 */
export async function countMsgpack(
  fn: () => Promise<void>,
  only?: { encodes: readonly string[]; decodes: readonly string[] },
): Promise<number> {
  const enc = Encoder.prototype as unknown as { encode: (...a: unknown[]) => unknown };
  const dec = Decoder.prototype as unknown as { decode: (...a: unknown[]) => unknown };
  const [e0, d0] = [enc.encode, dec.decode];
  const typeOf = (v: unknown) => (v as { type?: unknown } | null)?.type as string;
  let n = 0;
  enc.encode = function (...a) {
    if (!only || only.encodes.includes(typeOf(a[0]))) n++;
    return e0.apply(this, a);
  };
  dec.decode = function (...a) {
    const v = d0.apply(this, a);
    if (!only || only.decodes.includes(typeOf(v))) n++;
    return v;
  };
  try {
    await fn();
  } finally {
    enc.encode = e0;
    dec.decode = d0;
  }
  return n;
}
