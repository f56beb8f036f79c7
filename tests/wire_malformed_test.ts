// Garbage, truncated and oversize input from raw TCP clients: refused per connection,
// while the server keeps serving a well-behaved client.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  encodeCommand,
  encodeGreeting,
  encodeMetadata,
  FLAG_COMMAND,
  FLAG_LONG,
  RepSocket,
  ReqSocket,
  type WireError,
  WireProtocolError,
} from "../src/channel/wire/mod.ts";
import { b, frames, handshake, rawConnect, s, until } from "./wire/util.ts";

const FAST = { timeoutMs: 2000, reconnectIntervalMs: 20 };

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

test("malformed input is refused per connection; the server keeps serving", async () => {
  const errors: WireError[] = [];
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    maxMessageBytes: 64 * 1024,
    handshakeTimeoutMs: 300,
    onError: (e) => errors.push(e),
  });
  const serving = rep.serve(([f]) => b(`ok ${s(f)}`));
  await using good = ReqSocket.connect(`tcp://127.0.0.1:${rep.port}`, FAST);
  let answered = 0;
  let stop = false;
  const traffic = (async () => {
    while (!stop) {
      const [r] = await good.request(b(String(answered)));
      assert.equal(s(r), `ok ${answered}`);
      answered++;
    }
  })();

  /** Sends `bytes` from a raw client; expects the server to close it; returns the error. */
  const refused = async (what: string, bytes: Uint8Array, pattern: RegExp) => {
    const before = errors.length;
    const raw = await rawConnect(rep.port);
    raw.write(bytes);
    await raw.closed;
    const match = () => errors.slice(before).find((e) => pattern.test(e.message));
    await until(() => match() !== undefined, 1000, `${what} to be reported`).catch(() => {});
    const found = match();
    assert.ok(
      found,
      `${what}: expected an error matching ${pattern}, got ` +
        JSON.stringify(errors.slice(before).map((e) => e.message)),
    );
    assert.ok(found instanceof WireProtocolError || found.name === "WireTimeoutError");
  };

  await refused("HTTP", b("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), /0x47 'G'/);
  await refused("TLS hello", new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00]), /0x16/);
  const v2 = encodeGreeting();
  v2[10] = 2;
  await refused("ZMTP 2 peer", v2, /unsupported ZMTP version 2/);
  await refused(
    "oversize frame (1 GiB announced, header only)",
    concat(handshake("REQ"), new Uint8Array([FLAG_LONG, 0, 0, 0, 0, 0x40, 0, 0, 0])),
    /frame of 1073741824 bytes exceeds the limit of 65536/,
  );
  await refused(
    "data before READY",
    concat(encodeGreeting(), frames(b("too early"))),
    /message frame received before the READY command/,
  );
  await refused(
    "READY with truncated metadata",
    concat(
      encodeGreeting(),
      encodeCommand("READY", encodeMetadata([["Socket-Type", b("REQ")]]).subarray(0, 10)),
    ),
    /malformed metadata/,
  );
  await refused(
    "READY without Socket-Type",
    concat(encodeGreeting(), encodeCommand("READY", new Uint8Array(0))),
    /without the Socket-Type/,
  );
  await refused("wrong socket type", handshake("PUSH"), /"PUSH" cannot talk to our REP/);
  await refused(
    "reserved flag bits",
    concat(handshake("REQ"), new Uint8Array([0x40, 1, 1])),
    /reserved flag bits/,
  );
  await refused(
    "oversize command",
    concat(encodeGreeting(), new Uint8Array([FLAG_COMMAND | FLAG_LONG, 0, 0, 0, 0, 0x10, 0, 0, 0])),
    /command frame of 268435456 bytes/,
  );
  await refused("silent after greeting", encodeGreeting(), /ZMTP READY command timed out/);

  // Truncated input then a client-side close: cleaned up without a report or a crash.
  for (
    const cut of [
      encodeGreeting().subarray(0, 30),
      concat(handshake("REQ"), new Uint8Array([0, 100]), new Uint8Array(10)),
    ]
  ) {
    const raw = await rawConnect(rep.port);
    raw.write(cut);
    await new Promise((r) => setTimeout(r, 20));
    await raw.destroy();
  }

  // A raw client that speaks correctly gets a correct reply; a request without the
  // delimiter is dropped (as libzmq's REP does) and reported.
  const raw = await rawConnect(rep.port);
  raw.write(
    concat(handshake("REQ"), frames(b("no delimiter")), frames(new Uint8Array(0), b("raw"))),
  );
  const expected = concat(frames(new Uint8Array(0), b("ok raw")));
  const t0 = Date.now();
  while (!raw.received().length || !endsWith(raw.received(), expected)) {
    if (Date.now() - t0 > 2000) assert.fail("no reply to the raw client");
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.ok(errors.some((e) => /without the empty delimiter/.test(e.message)));
  await raw.destroy();

  // Random bytes after a valid greeting never crash the server.
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff;
  for (let i = 0; i < 20; i++) {
    const junk = new Uint8Array(1 + (i * 37) % 200).map(rand);
    const raw = await rawConnect(rep.port);
    raw.write(concat(handshake("REQ"), junk));
    await new Promise((r) => setTimeout(r, 5));
    await raw.destroy();
  }

  stop = true;
  await traffic;
  assert.ok(answered > 0, "the good client was served throughout");
  assert.deepEqual((await good.request(b("last"))).map(s), ["ok last"]);
  assert.equal(rep.peers.length, 1, "only the good client is left");
  await rep.close();
  await serving;
});

function endsWith(a: Uint8Array, tail: Uint8Array): boolean {
  if (a.length < tail.length) return false;
  for (let i = 0; i < tail.length; i++) if (a[a.length - tail.length + i] !== tail[i]) return false;
  return true;
}
