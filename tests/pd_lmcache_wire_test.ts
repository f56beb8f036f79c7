// PD against LMCache's wire, both generations: refusals LMCache's senders can decode,
// typed refusals in our sender, the reply form following the request, the sender
// learning the receiver's generation, NIXL handshakes listing several agents. The peers
// are pyzmq processes that build and decode with msgspec structs mirroring LMCache's
// classes (tests/helpers/lmcache_structs.py).
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  chunkBytes,
  MemoryFormat,
  MockMemoryChannel,
  PdAllocRefusedError,
  PdSender,
} from "../mod.ts";
import { ALLOC_RESPONSE_ORDER } from "../src/pd/mod.ts";
import { encodeMessage, type LmcacheMessage, withFieldOrder } from "../src/channel/wire/mod.ts";
import { lmcachePeerPython, startLmcachePeer } from "./helpers/py_lmcache.ts";
import { mockReceiver, testKey } from "./helpers/pd_util.ts";

const SHAPE = [2, 1, 32, 32]; // KV_2LTD bf16: 4096 bytes
const BIG = [2, 2, 32, 32]; // 8192 bytes: larger than a page
const PAGE = chunkBytes(MemoryFormat.KV_2LTD, SHAPE, "bfloat16")!;
const python = lmcachePeerPython();
const opts = {
  skip: python ? false : "needs python3 with zmq and msgspec, or /usr/bin/python3 with " +
    "python3-zmq and python3-msgpack (apt)",
};

const hexOf = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** A mock channel of this process whose metadata and page list a Python peer presents. */
async function decoy(pages = 4) {
  const ch = await MockMemoryChannel.create({ role: "both", pageSize: PAGE, pageCount: pages });
  const dp = ch as unknown as {
    dpLocalMetadata(): Promise<Uint8Array>;
    dpLocalPageList(): Promise<Uint8Array>;
  };
  return {
    ch,
    meta: hexOf(await dp.dpLocalMetadata()),
    dlist: hexOf(await dp.dpLocalPageList()),
    [Symbol.asyncDispose]: () => ch.close(),
  };
}

function receiver(pages: number) {
  return mockReceiver(pages, PAGE, 32, { allocationTimeoutMs: 300 });
}

interface Reply {
  type: string;
  fields: Record<string, unknown>;
  hex: string;
  order: string[];
}

const alloc = (keys: string[], shape = SHAPE, extra: Record<string, unknown> = {}) => ({
  keys,
  fmt: 1,
  shape,
  dtype: "bfloat16",
  last_chunk_toks: 32,
  ...extra,
});

for (const gen of ["pd-sync", "pd-async"] as const) {
  test(
    `LMCache ${gen} sender: refusals decode as AllocResponse -1 in its own field order`,
    opts,
    async () => {
      await using d = await decoy();
      await using rx = await receiver(2);
      const extra = gen === "pd-async"
        ? { req_id: "r1", is_last_batch: false, total_chunks: 2 }
        : {};
      const requests: Record<string, unknown>[] = [
        alloc([testKey("ok", 0)], SHAPE, extra),
        alloc([testKey("big", 0)], BIG, extra),
        alloc([testKey("many", 0), testKey("many", 1), testKey("many", 2)], SHAPE, extra),
      ];
      if (gen === "pd-async") {
        requests.push(alloc([testKey("tot", 0)], SHAPE, { ...extra, total_chunks: 9 }));
        requests.push({ type: "CancelNotif", req_id: "r1", keys: [testKey("ok", 0)] });
      }
      const peer = startLmcachePeer([
        "sender",
        gen,
        `127.0.0.1:${rx.initPort}`,
        `127.0.0.1:${rx.allocPort}`,
        JSON.stringify({ agents: 2, meta: d.meta, dlist: d.dlist, requests }),
      ]);
      try {
        const backend = await peer.line("BACKEND");
        // Our handshake answered two agents with two entries per list, as LMCache checks.
        const hs = JSON.parse(await peer.line("HANDSHAKE"));
        assert.equal(hs.agents, 2, backend);
        const replies: Reply[] = [];
        for (let i = 0; i < requests.length; i++) {
          const l = await peer.line(gen === "pd-sync" ? "REPLY" : "REPLY");
          replies.push(JSON.parse(l));
        }
        const r = await peer.done;
        assert.doesNotMatch(
          r.stdout,
          /DECODE_ERROR/,
          `LMCache's classes decode every reply (${backend})`,
        );
        const order = ALLOC_RESPONSE_ORDER[gen === "pd-sync" ? "sync" : "async"];
        for (const rep of replies) {
          assert.equal(rep.type, "AllocResponse");
          assert.deepEqual(
            rep.order.slice(0, 2),
            order,
            "the field order of the sender's generation",
          );
        }
        // 1: a page. Byte for byte what LMCache's own receiver of that generation writes.
        const page = (replies[0].fields.remote_indexes as number[])[0];
        assert.ok(page === 0 || page === 1);
        const own = withFieldOrder(
          { type: "AllocResponse", already_sent_indexes: [], remote_indexes: [page] },
          order,
        ) as LmcacheMessage;
        assert.equal(replies[0].hex, hexOf(encodeMessage(own)));
        // 2 and 3: refused, -1 for every key, and why (kvport's extra fields).
        assert.deepEqual(replies[1].fields.remote_indexes, [-1]);
        assert.deepEqual(replies[2].fields.remote_indexes, [-1, -1, -1]);
        assert.deepEqual(replies[1].fields.already_sent_indexes, []);
        assert.match(replies[1].order.join(","), /kvport_reason,kvport_detail$/);
        assert.match(
          Buffer.from(replies[1].hex, "hex").toString(),
          /chunk_too_large.*8192 bytes but pages are 4096/s,
        );
        assert.match(Buffer.from(replies[2].hex, "hex").toString(), /pool_too_small/);
        if (gen === "pd-async") {
          assert.deepEqual(replies[3].fields.remote_indexes, [-1]);
          assert.match(
            Buffer.from(replies[3].hex, "hex").toString(),
            /total_chunks 9 but the buffer has 2/,
          );
          // CancelNotif: the empty acknowledgement LMCache's async receiver sends, exactly.
          const ack = withFieldOrder({
            type: "AllocResponse",
            remote_indexes: [],
            already_sent_indexes: [],
          }, order);
          assert.equal(replies[4].hex, hexOf(encodeMessage(ack as LmcacheMessage)));
          assert.equal(rx.contains(testKey("ok", 0)), false, "the cancelled key is released");
          assert.equal(rx.stats.cancelled, 1);
        } else {
          assert.equal(rx.contains(testKey("ok", 0)), true);
        }
        assert.equal(rx.stats.keys, gen === "pd-async" ? 0 : 1);
        assert.ok(rx.stats.errors >= 2);
      } finally {
        peer.kill();
      }
    },
  );
}

test(
  "LMCache async receiver's plain -1 is a typed refusal; our request is its form",
  opts,
  async () => {
    await using d = await decoy();
    const peer = startLmcachePeer([
      "receiver",
      "pd-async",
      JSON.stringify({
        meta: d.meta,
        dlist: d.dlist,
        count: 2,
        replies: [{ remote: [-1, -1] }, { remote: [2] }],
      }),
    ]);
    try {
      await peer.line("BACKEND");
      const [initPort, allocPort] = (await peer.line("PORTS")).split(" ").map(Number);
      await using tx = await PdSender.create({
        bufferSize: 4 * PAGE,
        pageSize: PAGE,
        channelType: "mock_memory",
        allocTimeoutMs: 5000,
      });
      const spec = {
        reqId: "cmpl-9",
        receiverHost: "127.0.0.1",
        receiverInitPort: initPort,
        receiverAllocPort: allocPort,
        isLastPrefill: false,
        totalChunks: 3,
      };
      let pages = await tx.allocate(2);
      await assert.rejects(
        tx.send(spec, {
          keys: [testKey("a", 0), testKey("a", 1)],
          pages,
          shape: SHAPE,
          dtype: "bfloat16",
          lastChunkToks: 32,
        }),
        (e) => {
          assert.ok(e instanceof PdAllocRefusedError, String(e));
          assert.equal(e.reason, "unspecified");
          assert.equal(e.failed, 2);
          assert.match(e.message, /remote index -1 for 2 of 2 chunk\(s\) without a reason/);
          return true;
        },
      );
      const first = JSON.parse(await peer.line("REQUEST"));
      // Before the receiver's generation is known the async form goes out; LMCache's async
      // classes read req_id, is_last_batch and total_chunks from it.
      assert.deepEqual(first.keys_sent.slice(5), ["req_id", "is_last_batch", "total_chunks"]);
      assert.equal(first.fields.req_id, "cmpl-9");
      assert.equal(first.fields.total_chunks, 3);
      // A page this time: the data lands in the peer's (decoy's) page 2.
      pages = await tx.allocate(1);
      tx.channel.page(pages[0]).copyFrom(new Uint8Array(PAGE).fill(0x5a));
      const r = await tx.send({ ...spec, isLastPrefill: true }, {
        keys: [testKey("b", 0)],
        pages,
        shape: SHAPE,
        dtype: "bfloat16",
        lastChunkToks: 32,
      });
      assert.equal(r.sent, 1);
      assert.ok(
        d.ch.pages[2].every((b) => b === 0x5a),
        "the WRITE landed in the page the receiver gave",
      );
      const second = JSON.parse(await peer.line("REQUEST"));
      assert.equal(second.fields.is_last_batch, true);
      assert.match(await peer.line("OK"), /^$/);
    } finally {
      peer.kill();
    }
  },
);

test(
  "LMCache sync receiver: the sender learns its generation and writes its form",
  opts,
  async () => {
    await using d = await decoy();
    const peer = startLmcachePeer([
      "receiver",
      "pd-sync",
      JSON.stringify({
        meta: d.meta,
        dlist: d.dlist,
        count: 2,
        replies: [{ remote: [0] }, { remote: [1] }],
      }),
    ]);
    try {
      await peer.line("BACKEND");
      const [initPort, allocPort] = (await peer.line("PORTS")).split(" ").map(Number);
      await using tx = await PdSender.create({
        bufferSize: 4 * PAGE,
        pageSize: PAGE,
        channelType: "mock_memory",
      });
      const spec = {
        reqId: "r",
        receiverHost: "127.0.0.1",
        receiverInitPort: initPort,
        receiverAllocPort: allocPort,
        isLastPrefill: true,
      };
      for (const [i, fill] of [[0, 0x11], [1, 0x22]] as const) {
        const pages = await tx.allocate(1);
        tx.channel.page(pages[0]).copyFrom(new Uint8Array(PAGE).fill(fill));
        await tx.send({ ...spec, reqId: `r${i}` }, {
          keys: [testKey(`s${i}`, 0)],
          pages,
          shape: SHAPE,
          dtype: "bfloat16",
          lastChunkToks: 32,
        });
        assert.ok(d.ch.pages[i].every((b) => b === fill));
      }
      const first = JSON.parse(await peer.line("REQUEST"));
      const second = JSON.parse(await peer.line("REQUEST"));
      // The sync classes decode the async form (the extra fields are ignored)...
      assert.equal(first.keys_sent.length, 8);
      // ...and once its reply's order showed the sync generation, its own five fields.
      assert.deepEqual(second.keys_sent, ["keys", "fmt", "shape", "dtype", "last_chunk_toks"]);
      await peer.line("OK");
    } finally {
      peer.kill();
    }
  },
);

test("our sender and receiver: refusals say why (chunk, pool, total_chunks), no Python", async () => {
  await using rx = await receiver(2);
  await using tx = await PdSender.create({
    bufferSize: 4 * PAGE,
    pageSize: PAGE,
    channelType: "mock_memory",
    wireGeneration: "async",
  });
  const spec = {
    reqId: "q",
    receiverHost: "127.0.0.1",
    receiverInitPort: rx.initPort,
    receiverAllocPort: rx.allocPort,
    isLastPrefill: false,
  };
  const reasonOf = async (keys: number, shape: number[], totalChunks?: number) => {
    const pages = await tx.allocate(keys);
    const e = await tx.send({ ...spec, totalChunks }, {
      keys: Array.from({ length: keys }, (_, i) => testKey(`q${keys}${totalChunks}`, i)),
      pages,
      shape,
      dtype: "bfloat16",
      lastChunkToks: 32,
    }).then(() => null, (e) => e);
    assert.ok(e instanceof PdAllocRefusedError, String(e));
    return [e.reason, e.message];
  };
  const [r1, m1] = await reasonOf(1, BIG);
  assert.equal(r1, "chunk_too_large");
  assert.match(m1, /8192 bytes but pages are 4096 bytes/);
  const [r2, m2] = await reasonOf(3, SHAPE);
  assert.equal(r2, "pool_too_small");
  assert.match(m2, /3 page\(s\) wanted but the buffer has 2/);
  const [r3, m3] = await reasonOf(1, SHAPE, 5);
  assert.equal(r3, "pool_too_small");
  assert.match(m3, /total_chunks 5 but the buffer has 2/);
  assert.equal(rx.stats.keys, 0);
  // The receiver still serves.
  const pages = await tx.allocate(1);
  const ok = await tx.send({ ...spec, totalChunks: 1, isLastPrefill: true }, {
    keys: [testKey("fine", 0)],
    pages,
    shape: SHAPE,
    dtype: "bfloat16",
    lastChunkToks: 32,
  });
  assert.equal(ok.sent, 1);
});
