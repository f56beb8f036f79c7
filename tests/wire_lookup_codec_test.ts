// The P2P lookup's own codec (src/channel/wire/lookup_codec.ts) against the generic one:
// the same bytes (and msgspec's, from the golden fixture), the same decoded messages
// (field order included) and the same errors, over every integer and string format
// boundary, other field orders, truncations and flipped bytes; and a registry round trip
// that runs no generic msgpack encode or decode at all (it ran four before).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Encoder } from "@msgpack/msgpack";
import {
  type BatchedP2PLookupRetMsg,
  decodeMessage,
  encodeMessage,
  receivedFieldOrder,
  type WireInt,
} from "../src/channel/wire/mod.ts";
import {
  decodeLookupReply,
  decodeRequest,
  encodeLookup,
  encodeLookupReply,
} from "../src/channel/wire/lookup_codec.ts";
import { askingClient, reportHolder, startRegistry } from "./helpers/p2p_util.ts";
import { hex, loadGolden, loadSamples } from "./wire/samples.ts";
import { countMsgpack, outcome } from "./wire/util.ts";

const raw = new Encoder({ useBigInt64: true });

/** Compares fast and generic decodes of `bytes`: value, field order, or error. */
function sameDecode(bytes: Uint8Array, fast: () => unknown, slow: () => unknown, what: string) {
  const a = outcome(fast) as { ok?: object };
  const b = outcome(slow) as { ok?: object };
  assert.deepEqual(a, b, `${what}: ${hex(bytes.subarray(0, 48))}`);
  if (a.ok && b.ok) {
    assert.deepEqual(receivedFieldOrder(a.ok), receivedFieldOrder(b.ok), `${what}: field order`);
  }
}

const P = (e: number) => 2 ** e;
/** Every integer format boundary of msgpack, and those of the [-2^31, 2^32) rule. */
const INTS: bigint[] = [
  0,
  1,
  0x7f,
  0x80,
  0xff,
  0x100,
  0xffff,
  0x10000,
  P(31) - 1,
  P(31),
  P(32) - 1,
  P(32),
  P(53) - 1,
  P(53),
  -1,
  -0x20,
  -0x21,
  -0x80,
  -0x81,
  -0x8000,
  -0x8001,
  -P(31),
  -P(31) - 1,
  -P(53) + 1,
].map(BigInt).concat([2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n, -(2n ** 63n)]);

function generic(hashes: readonly unknown[], instance: unknown, worker: unknown): Uint8Array {
  return encodeMessage({
    type: "BatchedP2PLookupMsg",
    hashes: [...hashes] as bigint[],
    instance_id: instance as string,
    worker_id: worker as WireInt,
  });
}

const IDS = [
  "",
  "a",
  "x".repeat(31),
  "x".repeat(32),
  "x".repeat(255),
  "x".repeat(256),
  "x".repeat(65535),
  "x".repeat(65536),
  "inst\u00e9",
  "\u{1f600}",
];

test("lookup codec: encodeLookup writes encodeMessage's bytes (msgspec's), for every format boundary", () => {
  const cases: [unknown[], unknown, unknown][] = [];
  for (const h of INTS) cases.push([[h], "req", 0]);
  cases.push([INTS, "req", 0]);
  for (const n of [0, 15, 16, 65535, 65536]) {
    cases.push([Array.from({ length: n }, (_, i) => INTS[i % INTS.length]), "r", 1]);
  }
  for (const id of IDS) cases.push([[1n, 2n ** 40n], id, 3]);
  for (const w of INTS) if (w >= -(2n ** 53n) && w < 2n ** 53n) cases.push([[5n], "w", Number(w)]);
  // Not the fast path's values: the generic path answers (bytes or error).
  cases.push([[5, 2n ** 40n], "n", 0]); // a number hash (accepted, as a bigint)
  cases.push([[2n ** 64n], "big", 0]);
  cases.push([[-(2n ** 63n) - 1n], "small", 0]);
  cases.push([["1"], "str", 0]);
  cases.push([[1n], 7, 0]);
  cases.push([[1n], "w", 1.5]);
  cases.push([[1n], "w", 2n]);
  cases.push([[1n], "w", 2 ** 60]);
  for (const [hashes, id, w] of cases) {
    const what = `${hashes.length} hash(es), id of ${String(id).length}, worker ${w}`;
    const fast = outcome(() => hex(encodeLookup(hashes as bigint[], id as string, w as number)));
    assert.deepEqual(fast, outcome(() => hex(generic(hashes, id, w))), what);
  }
  // And msgspec's own bytes of the sample lookup and reply (golden fixture).
  const golden = loadGolden();
  const samples = loadSamples();
  let seen = 0;
  samples.forEach((m, i) => {
    const want = golden.hex[String(i)];
    if (m.type === "BatchedP2PLookupMsg") {
      assert.equal(hex(encodeLookup(m.hashes, m.instance_id, Number(m.worker_id))), want);
      seen++;
    } else if (m.type === "BatchedP2PLookupRetMsg") {
      assert.equal(hex(encodeLookupReply(m)), want);
      seen++;
    }
  });
  assert.equal(seen, 2);
});

test("lookup codec: encodeLookupReply writes encodeMessage's bytes, or its error", () => {
  const entries: unknown[][] = [
    ["", "", 0, ""],
    ["holder", "LocalCPUBackend", 3, "10.0.0.2:8200"],
    ["h".repeat(40), "l".repeat(300), 2 ** 33, "u".repeat(70000)],
    ["h\u00e9", "l", 1, "u"],
    ["h", "l", 2n ** 60n, "u"],
    ["h", "l", 1.5, "u"],
    ["h", "l", 1],
    ["h", 5, 1, "u"],
  ];
  const lists = [...entries.map((e) => [e]), entries.slice(0, 2), Array(16).fill(entries[1]), []];
  for (const layout of lists) {
    const m = { type: "BatchedP2PLookupRetMsg", layout_info: layout } as BatchedP2PLookupRetMsg;
    assert.deepEqual(
      outcome(() => hex(encodeLookupReply(m))),
      outcome(() => hex(encodeMessage(m))),
      JSON.stringify(layout, (_, v) => typeof v === "bigint" ? `${v}n` : v).slice(0, 80),
    );
  }
});

/** The lookup's bytes in other layouts a peer might send (another field order, extra
 * keys, floats, a map of 3), all of which the generic path decides on. */
function variants(): Uint8Array[] {
  const out: Uint8Array[] = [];
  const base = {
    type: "BatchedP2PLookupMsg",
    hashes: [1, 2n ** 63n],
    instance_id: "a",
    worker_id: 0,
  };
  out.push(raw.encode({ ...base }));
  out.push(raw.encode({ type: base.type, worker_id: 0, instance_id: "a", hashes: base.hashes }));
  out.push(raw.encode({ ...base, extra: 1 }));
  out.push(raw.encode({ ...base, worker_id: 1.0 }));
  out.push(raw.encode({ ...base, worker_id: 1.5 }));
  out.push(raw.encode({ ...base, hashes: [1.5] }));
  out.push(raw.encode({ ...base, hashes: "x" }));
  out.push(raw.encode({ type: base.type, hashes: base.hashes, instance_id: "a" }));
  out.push(raw.encode({ ...base, instance_id: new Uint8Array([97]) }));
  out.push(raw.encode({ ...base, instance_id: "\u00e9t\u00e9" }));
  out.push(raw.encode({ ...base, instance_id: null }));
  out.push(raw.encode([base]));
  out.push(raw.encode({ type: "HeartbeatMsg" }));
  out.push(
    encodeMessage({
      type: "RegisterMsg",
      instance_id: "a",
      worker_id: 0,
      ip: "h",
      port: 1,
      peer_init_url: "u",
    }),
  );
  const canonical = generic(INTS, "req", 0);
  out.push(canonical);
  // Bytes after the message; a bad UTF-8 byte in the instance id.
  out.push(Uint8Array.from([...canonical, 0xc0]));
  const bad = generic([1n], "abc", 0);
  bad[bad.indexOf(0x62)] = 0xff;
  out.push(bad);
  return out;
}

test("lookup codec: decodeRequest decodes as decodeMessage does (value, field order or error), also on truncated and flipped bytes", () => {
  const inputs = variants();
  const canonical = generic(INTS.slice(0, 12), "req", 7);
  for (let n = 0; n < canonical.length; n++) inputs.push(canonical.subarray(0, n));
  for (let i = 0; i < canonical.length; i++) {
    for (const x of [0x00, 0x7f, 0x90, 0xc0, 0xcf, 0xdc, 0xdd, 0xff]) {
      const m = canonical.slice();
      m[i] = x;
      inputs.push(m);
    }
  }
  for (const n of [0, 16, 65536]) inputs.push(generic(Array(n).fill(3n), "r", 0));
  for (const id of IDS) inputs.push(generic([1n], id, 2 ** 40));
  for (const [k, bytes] of inputs.entries()) {
    sameDecode(bytes, () => decodeRequest(bytes), () => decodeMessage(bytes), `input ${k}`);
    const only = ["BatchedP2PLookupMsg", "RegisterMsg"] as const;
    sameDecode(
      bytes,
      () => decodeRequest(bytes, only, { peer: "p" }),
      () => decodeMessage(bytes, only, { peer: "p" }),
      `input ${k}, expected types`,
    );
  }
  // A subarray of a larger buffer (a frame inside a read buffer) decodes the same.
  const framed = new Uint8Array(canonical.length + 10);
  framed.set(canonical, 5);
  const view = framed.subarray(5, 5 + canonical.length);
  sameDecode(view, () => decodeRequest(view), () => decodeMessage(view), "a view");
});

test("lookup codec: decodeLookupReply decodes as decodeMessage does, also on truncated and flipped bytes", () => {
  const only = ["BatchedP2PLookupRetMsg", "ErrorMsg"] as const;
  const reply = (layout: unknown[][]) =>
    encodeMessage({
      type: "BatchedP2PLookupRetMsg",
      layout_info: layout as BatchedP2PLookupRetMsg["layout_info"],
    });
  const canonical = reply([["holder", "LocalCPUBackend", 3, "10.0.0.2:8200"], [
    "",
    "",
    2n ** 60n,
    "",
  ]]);
  const inputs = [
    canonical,
    reply([]),
    reply(Array(16).fill(["h", "l", 70000, "u"])),
    reply([["h\u00e9", "l", 1, "u"]]),
    reply([["h".repeat(40), "l".repeat(300), -5, "u".repeat(70000)]]),
    encodeMessage({ type: "ErrorMsg", error: "no" }),
    encodeMessage({ type: "BatchedP2PLookupMsg", hashes: [1n], instance_id: "a", worker_id: 0 }),
    raw.encode({ type: "BatchedP2PLookupRetMsg", layout_info: [["h", "l", 1.0, "u"]] }),
    raw.encode({ type: "BatchedP2PLookupRetMsg", layout_info: [["h", "l", 1, "u", 5]] }),
    raw.encode({ layout_info: [["h", "l", 1, "u"]], type: "BatchedP2PLookupRetMsg" }),
    Uint8Array.from([...canonical, 0x00]),
  ];
  for (let n = 0; n < canonical.length; n++) inputs.push(canonical.subarray(0, n));
  for (let i = 0; i < canonical.length; i++) {
    for (const x of [0x00, 0x7f, 0x94, 0xc0, 0xcf, 0xd9, 0xdc, 0xff]) {
      const m = canonical.slice();
      m[i] = x;
      inputs.push(m);
    }
  }
  for (const [k, bytes] of inputs.entries()) {
    sameDecode(
      bytes,
      () => decodeLookupReply(bytes, { peer: "p" }),
      () => decodeMessage(bytes, only, { peer: "p" }),
      `input ${k}`,
    );
  }
});

test("registry round trip: a lookup of 64 hashes runs no generic msgpack encode or decode (it ran four), with the same answer", async () => {
  await using registry = await startRegistry();
  const hashes = Array.from({ length: 64 }, (_, i) => (BigInt(i) << 40n) + 7n);
  reportHolder(registry, "holder", hashes.slice(0, 40));
  const client = askingClient(registry.replyUrl);
  try {
    await client.lookup([1n]); // connected, warm
    let reply: unknown;
    const n = await countMsgpack(async () => {
      reply = await client.lookup(hashes);
    });
    assert.deepEqual(reply, {
      type: "BatchedP2PLookupRetMsg",
      layout_info: [["holder", "LocalCPUBackend", 40, "h:1"]],
    });
    assert.equal(n, 0, "generic msgpack encodes + decodes in one lookup round trip");
    assert.equal(registry.stats.hits, 1);
  } finally {
    await client.close();
  }
});
