/**
 * Helpers of the channel and PD tests: keys, deterministic page content, raw sockets.
 *
 * @module
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as net from "node:net";
import { type DisaggSpec, PdReceiver, type PdReceiverOptions } from "../../mod.ts";

/**
 * A PD receiver of the mock tests: `pages` pages of `pageSize` bytes on loopback (any
 * free ports), the mock_memory channel, chunks of `chunkSize` tokens, plus `extra`.
 */
export function mockReceiver(
  pages: number,
  pageSize: number,
  chunkSize: number,
  extra: Partial<PdReceiverOptions> = {},
): Promise<PdReceiver> {
  return PdReceiver.create({
    host: "127.0.0.1",
    initPort: 0,
    allocPort: 0,
    bufferSize: pages * pageSize,
    pageSize,
    chunkSize,
    channelType: "mock_memory",
    ...extra,
  });
}

/** A key of chunk `i` of request `req`. */
export function testKey(req: string, i: number, worker = 0, world = 1): string {
  const hash = (fnv(`${req}/${i}`) >>> 0).toString(16);
  return `vllm@test-model@${world}@${worker}@${hash}${i.toString(16)}@bfloat16`;
}

/** 32-bit FNV-1a of a string. */
export function fnv(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Fills `bytes` with content derived from `key` (xorshift32 seeded by the key). */
export function fillFor(key: string, bytes: Uint8Array): void {
  let x = fnv(key) || 1;
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  for (let i = words.length * 4; i < bytes.length; i++) bytes[i] = i & 0xff;
}

/** Whether `bytes` holds what {@linkcode fillFor} writes for `key`. */
export function checkFor(key: string, bytes: Uint8Array): boolean {
  const want = new Uint8Array(bytes.length);
  fillFor(key, want);
  for (let i = 0; i < bytes.length; i++) if (want[i] !== bytes[i]) return false;
  return true;
}

/** Port of `host:port`. */
export function portOf(url: string): number {
  return Number(url.slice(url.lastIndexOf(":") + 1));
}

/**
 * Opens a raw TCP connection, writes `chunks` (with a pause between them), and resolves
 * with what the peer sent back and whether it closed the connection, after `waitMs`.
 */
export function rawExchange(
  port: number,
  chunks: Uint8Array[],
  waitMs = 300,
): Promise<{ received: Uint8Array; closedByPeer: boolean }> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ host: "127.0.0.1", port });
    const got: Uint8Array[] = [];
    let closedByPeer = false;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      sock.destroy();
      const total = got.reduce((a, b) => a + b.length, 0);
      const received = new Uint8Array(total);
      let at = 0;
      for (const g of got) {
        received.set(g, at);
        at += g.length;
      }
      resolve({ received, closedByPeer });
    };
    sock.on("data", (d: Uint8Array) => got.push(new Uint8Array(d)));
    sock.on("end", () => {
      closedByPeer = true;
    });
    sock.on("close", () => {
      closedByPeer = true;
      setTimeout(finish, 10);
    });
    sock.on("error", (e: Error) => {
      if (!done && got.length === 0 && !closedByPeer) {
        // Connection refused and the like are failures of the test setup.
        if ((e as { code?: string }).code === "ECONNREFUSED") reject(e);
      }
    });
    sock.on("connect", async () => {
      for (const c of chunks) {
        if (sock.destroyed) break;
        sock.write(c);
        await new Promise((r) => setTimeout(r, 20));
      }
      setTimeout(finish, waitMs);
    });
  });
}

/** A ZMTP 3.0 NULL greeting (64 bytes). */
export function zmtpGreeting(): Uint8Array {
  const g = new Uint8Array(64);
  g[0] = 0xff;
  g[9] = 0x7f;
  g[10] = 3;
  g[11] = 0;
  g.set(new TextEncoder().encode("NULL"), 12);
  return g;
}

/** A ZMTP READY command announcing `socketType`. */
export function zmtpReady(socketType: string): Uint8Array {
  const enc = new TextEncoder();
  const name = enc.encode("READY");
  const key = enc.encode("Socket-Type");
  const val = enc.encode(socketType);
  const body = new Uint8Array(1 + name.length + 1 + key.length + 4 + val.length);
  let at = 0;
  body[at++] = name.length;
  body.set(name, at);
  at += name.length;
  body[at++] = key.length;
  body.set(key, at);
  at += key.length;
  new DataView(body.buffer).setUint32(at, val.length);
  at += 4;
  body.set(val, at);
  return zmtpFrame(body, { command: true });
}

/** One ZMTP frame (short or long form). */
export function zmtpFrame(
  body: Uint8Array,
  options: { more?: boolean; command?: boolean; announce?: number } = {},
): Uint8Array {
  const size = options.announce ?? body.length;
  const flags = (options.more ? 1 : 0) | (options.command ? 4 : 0);
  if (size < 256) {
    const f = new Uint8Array(2 + body.length);
    f[0] = flags;
    f[1] = size;
    f.set(body, 2);
    return f;
  }
  const f = new Uint8Array(9 + body.length);
  f[0] = flags | 2;
  new DataView(f.buffer).setBigUint64(1, BigInt(size));
  f.set(body, 9);
  return f;
}

/** A REQ-style request: empty delimiter frame, then the body. */
export function zmtpRequest(body: Uint8Array): Uint8Array {
  const a = zmtpFrame(new Uint8Array(0), { more: true });
  const b = zmtpFrame(body);
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** The sha256 of `b`, hex. */
export const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/** Resolves after `ms` milliseconds. */
export const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits up to `ms` for `cond()` to hold (checked every 5 ms); fails naming `what`. */
export async function eventually(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (cond()) return;
    await pause(5);
  }
  assert.ok(cond(), `timed out waiting for: ${what}`);
}

/** The spec of request `reqId` (its last batch) to the receiver `rx` on 127.0.0.1. */
export function loopbackSpec(
  rx: { initPort: number; allocPort: number },
  reqId: string,
): DisaggSpec {
  return {
    reqId,
    receiverHost: "127.0.0.1",
    receiverInitPort: rx.initPort,
    receiverAllocPort: rx.allocPort,
    isLastPrefill: true,
  };
}
