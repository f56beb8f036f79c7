// Unit tests of the ZMTP 3 codec: greeting, frames (short/long, MORE, COMMAND), commands,
// metadata, and the incremental decoder's limits.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  checkGreeting,
  compatiblePeerTypes,
  encodeCommand,
  encodeFrames,
  encodeGreeting,
  encodeMetadata,
  encodeReady,
  FLAG_COMMAND,
  FLAG_LONG,
  FLAG_MORE,
  parseMetadata,
  WireProtocolError,
  ZmtpDecoder,
  type ZmtpEvent,
} from "../src/channel/wire/mod.ts";

const enc = new TextEncoder();

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function decodeAll(bytes: Uint8Array, d = new ZmtpDecoder({ skipGreeting: true })): ZmtpEvent[] {
  const events: ZmtpEvent[] = [];
  d.push(bytes, (e) => events.push(e));
  return events;
}

test("greeting: 64 bytes, signature, version 3.1, NULL mechanism", () => {
  const g = encodeGreeting();
  assert.equal(g.length, 64);
  assert.equal(g[0], 0xff);
  assert.deepEqual([...g.subarray(1, 9)], [0, 0, 0, 0, 0, 0, 0, 0]);
  assert.equal(g[9], 0x7f);
  assert.deepEqual([g[10], g[11]], [3, 1]);
  assert.equal(new TextDecoder().decode(g.subarray(12, 16)), "NULL");
  assert.ok(g.subarray(16, 64).every((b) => b === 0));
  assert.deepEqual(checkGreeting(g), { major: 3, minor: 1, mechanism: "NULL", asServer: false });
  // A ZMTP 3.0 peer (libzmq 4.0) is accepted too.
  const g30 = encodeGreeting({ minor: 0 });
  assert.equal(checkGreeting(g30)?.minor, 0);
  assert.equal(checkGreeting(g.subarray(0, 40)), undefined, "incomplete greeting");
});

test("greeting: garbage is refused at the first wrong byte", () => {
  assert.throws(() => checkGreeting(enc.encode("G")), /must start with 0xff, got 0x47 'G'/);
  const bad9 = encodeGreeting().slice(0, 10);
  bad9[9] = 0x7e;
  assert.throws(() => checkGreeting(bad9), WireProtocolError);
  const v2 = encodeGreeting().slice(0, 11);
  v2[10] = 2;
  assert.throws(() => checkGreeting(v2), /unsupported ZMTP version 2/);
  const plain = encodeGreeting();
  plain.set(enc.encode("PLAIN"), 12);
  assert.throws(() => checkGreeting(plain), /mechanism "PLAIN": NULL and CURVE/);
  const curve = encodeGreeting({ mechanism: "CURVE", asServer: true });
  assert.deepEqual(checkGreeting(curve), {
    major: 3,
    minor: 1,
    mechanism: "CURVE",
    asServer: true,
  });
});

test("frames: short frame header for <= 255 bytes, long for larger", () => {
  const [short] = encodeFrames([new Uint8Array(255)]);
  assert.deepEqual([...short.subarray(0, 2)], [0x00, 255]);
  assert.equal(short.length, 257);
  const [long] = encodeFrames([new Uint8Array(256)]);
  assert.deepEqual([...long.subarray(0, 9)], [FLAG_LONG, 0, 0, 0, 0, 0, 0, 1, 0]);
  assert.equal(long.length, 265);
  const [empty] = encodeFrames([new Uint8Array(0)]);
  assert.deepEqual([...empty], [0, 0]);
});

test("frames: MORE on every frame but the last", () => {
  const [wire] = encodeFrames([enc.encode("a"), new Uint8Array(0), enc.encode("bc")]);
  assert.deepEqual([...wire], [FLAG_MORE, 1, 97, FLAG_MORE, 0, 0, 2, 98, 99]);
  const events = decodeAll(wire);
  assert.equal(events.length, 1);
  assert.equal(events[0].kind, "message");
  if (events[0].kind === "message") {
    assert.deepEqual(events[0].frames.map((f) => [...f]), [[97], [], [98, 99]]);
  }
});

test("frames: large bodies are not copied, and decode back", () => {
  const big = new Uint8Array(200_000).map((_, i) => i % 253);
  const pieces = encodeFrames([enc.encode("hdr"), big]);
  assert.ok(pieces.includes(big), "the large body is passed through, not copied");
  const events = decodeAll(concat(pieces));
  assert.equal(events.length, 1);
  if (events[0].kind === "message") {
    assert.deepEqual(events[0].frames[1], big);
    assert.notEqual(events[0].frames[1].buffer, big.buffer);
  }
});

test("decoder: fed one byte at a time yields the same events", () => {
  const stream = concat([
    encodeGreeting(),
    encodeReady("DEALER", enc.encode("id-1")),
    ...encodeFrames([enc.encode("x"), new Uint8Array(300)]),
    ...encodeFrames([new Uint8Array(0)]),
  ]);
  const d = new ZmtpDecoder();
  const kinds: string[] = [];
  for (let i = 0; i < stream.length; i++) {
    d.push(stream.subarray(i, i + 1), (e) => kinds.push(e.kind));
  }
  assert.deepEqual(kinds, ["greeting", "command", "message", "message"]);
  assert.equal(d.buffered, 0);
});

test("commands: READY carries Socket-Type and Identity (REQ, DEALER, ROUTER only)", () => {
  const ready = encodeReady("REQ", enc.encode("me"));
  assert.equal(ready[0], FLAG_COMMAND);
  const [ev] = decodeAll(ready);
  assert.equal(ev.kind, "command");
  if (ev.kind !== "command") return;
  assert.equal(ev.name, "READY");
  const meta = parseMetadata(ev.data);
  assert.equal(new TextDecoder().decode(meta.get("socket-type")), "REQ");
  assert.deepEqual(meta.get("identity"), enc.encode("me"));
  const [push] = decodeAll(encodeReady("PUSH", enc.encode("ignored")));
  if (push.kind === "command") assert.equal(parseMetadata(push.data).has("identity"), false);
});

test("commands: exact bytes of a small command", () => {
  assert.deepEqual([...encodeCommand("PONG", new Uint8Array(0))], [4, 5, 4, 80, 79, 78, 71]);
});

test("metadata: round trip, case-insensitive names, truncation refused", () => {
  const meta = encodeMetadata([["Socket-Type", enc.encode("ROUTER")], [
    "X-Big",
    new Uint8Array(70_000),
  ]]);
  const m = parseMetadata(meta);
  assert.equal(m.get("x-big")?.length, 70_000);
  assert.throws(() => parseMetadata(meta.subarray(0, meta.length - 1)), /value of 70000 bytes/);
  assert.throws(() => parseMetadata(new Uint8Array([5, 65, 66])), WireProtocolError);
  // A value length of 4 GiB - 1 in 20 bytes: refused, nothing allocated.
  const lie = encodeMetadata([["Identity", new Uint8Array(0)]]);
  new DataView(lie.buffer).setUint32(9, 0xffffffff);
  assert.throws(() => parseMetadata(lie), /4294967295 bytes announced/);
  assert.deepEqual(compatiblePeerTypes("DEALER"), ["REP", "DEALER", "ROUTER"]);
});

test("limits: an oversize frame is refused from its header alone", () => {
  const d = new ZmtpDecoder({ skipGreeting: true, maxMessageBytes: 1024 });
  // Long frame announcing 1 GiB; only the 9-byte header is sent.
  const header = new Uint8Array([FLAG_LONG, 0, 0, 0, 0, 0x40, 0, 0, 0]);
  assert.throws(
    () => d.push(header, () => {}),
    /frame of 1073741824 bytes exceeds the limit of 1024/,
  );
  // An absurd 2^64-1 announcement, too.
  const d2 = new ZmtpDecoder({ skipGreeting: true });
  assert.throws(
    () => d2.push(new Uint8Array([FLAG_LONG, 255, 255, 255, 255, 255, 255, 255, 255]), () => {}),
    WireProtocolError,
  );
});

test("limits: the limit counts the whole multipart message and the frame count", () => {
  const d = new ZmtpDecoder({ skipGreeting: true, maxMessageBytes: 100 });
  const ok = encodeFrames([new Uint8Array(50), new Uint8Array(50)]);
  assert.equal(decodeAll(concat(ok), d).length, 1, "exactly at the limit is fine");
  const tooBig = concat(encodeFrames([new Uint8Array(60), new Uint8Array(41)]));
  assert.throws(
    () => decodeAll(tooBig, new ZmtpDecoder({ skipGreeting: true, maxMessageBytes: 100 })),
    /after 60 bytes/,
  );
  const frames = Array.from({ length: 5 }, () => new Uint8Array(0));
  assert.throws(
    () =>
      decodeAll(
        concat(encodeFrames(frames)),
        new ZmtpDecoder({ skipGreeting: true, maxFrames: 4 }),
      ),
    /more than 4 frames/,
  );
});

test("malformed: reserved flag bits, MORE on a command, command inside a message", () => {
  assert.throws(() => decodeAll(new Uint8Array([0x80, 0])), /reserved flag bits/);
  assert.throws(
    () => decodeAll(new Uint8Array([FLAG_COMMAND | FLAG_MORE, 0])),
    /must not have MORE/,
  );
  const mixed = concat([
    new Uint8Array([FLAG_MORE, 1, 65]),
    encodeCommand("PING", new Uint8Array(2)),
  ]);
  assert.throws(() => decodeAll(mixed), /command frame inside a multipart message/);
  assert.throws(() => decodeAll(new Uint8Array([FLAG_COMMAND, 1, 9])), /name length 9/);
  assert.throws(() => decodeAll(new Uint8Array([FLAG_COMMAND, 2, 1, 0x07])), /not printable ASCII/);
  assert.throws(
    () => decodeAll(concat([new Uint8Array([FLAG_COMMAND | FLAG_LONG, 0, 0, 0, 0, 0, 1, 0, 1])])),
    /command frame of 65537 bytes exceeds/,
  );
});
