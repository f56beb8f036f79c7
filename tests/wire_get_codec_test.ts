// The P2P holder's own codec (src/channel/wire/get_codec.ts) against the generic one:
// the same reply bytes, the same decoded requests (field order included) and the same
// errors, over format boundaries, other layouts, truncations and flipped bytes; and a
// holder serving a fetch that decodes its request and encodes its reply without the
// generic msgpack path (it used it once each).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Encoder } from "@msgpack/msgpack";
import {
  decodeMessage,
  encodeMessage,
  receivedFieldOrder,
  type WireInt,
} from "../src/channel/wire/mod.ts";
import { decodeGetRequest, encodeGetReply } from "../src/channel/wire/get_codec.ts";
import { hex } from "./wire/samples.ts";
import { countMsgpack, outcome } from "./wire/util.ts";
import {
  checkFetched,
  instance,
  startRegistry,
  storeDoc,
  waitForHits,
} from "./helpers/p2p_util.ts";

const raw = new Encoder({ useBigInt64: true });

const get = (keys: string[], mem: WireInt[], lookup = "requester-0-1", receiver = "rcv") =>
  encodeMessage({
    type: "BatchedLookupAndGetMsg",
    lookup_id: lookup,
    receiver_id: receiver,
    keys,
    mem_indexes: mem,
  });

test("get codec: encodeGetReply writes encodeMessage's bytes, or its error", () => {
  const values: unknown[] = [
    0,
    1,
    0x7f,
    0x80,
    0xffff,
    0x10000,
    2 ** 32 - 1,
    2 ** 32,
    2 ** 53 - 1,
    -1,
    -33,
    -(2 ** 31) - 1,
  ];
  values.push(1.5, 2n ** 60n, "3", -(2 ** 53));
  for (const v of values) {
    assert.deepEqual(
      outcome(() => hex(encodeGetReply(v as number))),
      outcome(() =>
        hex(encodeMessage({ type: "BatchedLookupAndGetRetMsg", num_hit_chunks: v as number }))
      ),
      String(v),
    );
  }
});

test("get codec: decodeGetRequest decodes as decodeMessage does (value, field order or error), also on truncated and flipped bytes", () => {
  const key = "vllm@p2p-demo@1@0@0123456789abcdef@bfloat16";
  const canonical = get([key, "k2"], [0, 300, 70000, 2 ** 40]);
  const inputs: Uint8Array[] = [
    canonical,
    get([], []),
    get(Array(16).fill(key), Array.from({ length: 16 }, (_, i) => i)),
    get(Array(70000).fill("k"), []),
    get([key], [2n ** 60n, -5]),
    get(["mod\u00e9l@x"], [1]),
    get([key], [1], "x".repeat(40), "y".repeat(300)),
    raw.encode({
      type: "BatchedLookupAndGetMsg",
      receiver_id: "r",
      lookup_id: "l",
      keys: [key],
      mem_indexes: [1],
    }),
    raw.encode({
      type: "BatchedLookupAndGetMsg",
      lookup_id: "l",
      receiver_id: "r",
      keys: [key],
      mem_indexes: [1.5],
    }),
    raw.encode({
      type: "BatchedLookupAndGetMsg",
      lookup_id: "l",
      receiver_id: "r",
      keys: [5],
      mem_indexes: [1],
    }),
    raw.encode({ type: "BatchedLookupAndGetMsg", lookup_id: "l", receiver_id: "r", keys: [key] }),
    raw.encode({
      type: "BatchedLookupAndGetMsg",
      lookup_id: "l",
      receiver_id: "r",
      keys: [key],
      mem_indexes: [1],
      x: 1,
    }),
    encodeMessage({ type: "P2PInitSideMsg" }),
    encodeMessage({ type: "BatchedLookupAndGetRetMsg", num_hit_chunks: 1 }),
    raw.encode({ type: "NoSuchMsg" }),
    Uint8Array.from([...canonical, 0xc0]),
  ];
  for (let n = 0; n < canonical.length; n++) inputs.push(canonical.subarray(0, n));
  for (let i = 0; i < canonical.length; i++) {
    for (const x of [0x00, 0x7f, 0x90, 0xa1, 0xc0, 0xcf, 0xd9, 0xdc, 0xff]) {
      const m = canonical.slice();
      m[i] = x;
      inputs.push(m);
    }
  }
  for (const [k, bytes] of inputs.entries()) {
    const a = outcome(() => decodeGetRequest(bytes)) as { ok?: object };
    const b = outcome(() => decodeMessage(bytes)) as { ok?: object };
    assert.deepEqual(a, b, `input ${k}: ${hex(bytes.subarray(0, 40))}`);
    if (a.ok && b.ok) {
      assert.deepEqual(receivedFieldOrder(a.ok), receivedFieldOrder(b.ok), `input ${k}`);
    }
  }
});

test("p2p holder: a fetch's request and reply skip the generic msgpack path (two calls before), every byte checked", async () => {
  await using registry = await startRegistry();
  await using holder = await instance(registry, "holder");
  await using requester = await instance(registry, "requester");
  const a = await storeDoc(holder, "A", 4);
  await waitForHits(requester, a, 4);
  await requester.retrieve(a.slice(0, 1)).then((r) => requester.release(r.pages)); // handshake
  let got: Awaited<ReturnType<typeof requester.retrieve>> | undefined;
  const n = await countMsgpack(async () => {
    got = await requester.retrieve(a);
  }, { encodes: ["BatchedLookupAndGetRetMsg"], decodes: ["BatchedLookupAndGetMsg"] });
  assert.equal(got!.hitChunks, 4);
  assert.equal(checkFetched(requester, got!).bad, 0);
  assert.equal(n, 0, "generic decodes of the request + encodes of the reply");
  assert.deepEqual([holder.stats.served, holder.stats.servedChunks], [2, 5]);
});
