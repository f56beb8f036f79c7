import { test } from "node:test";
import assert from "node:assert/strict";
import {
  chunkBytes,
  type DisaggSpec,
  formatCacheKey,
  loadConfig,
  MemoryFormat,
  parseCacheKey,
  PdAllocRefusedError,
  PdReceiver,
  type PdReceiverOptions,
  PdSender,
  type PdSenderOptions,
  PdSendError,
  ProxyNotifier,
} from "../mod.ts";
import { PagePool } from "../src/pd/page_pool.ts";
import { encodeMessage } from "../src/channel/wire/mod.ts";
import {
  checkFor,
  fillFor,
  rawExchange,
  testKey,
  zmtpFrame,
  zmtpGreeting,
  zmtpReady,
  zmtpRequest,
} from "./helpers/pd_util.ts";

const SHAPE = [2, 2, 16, 32] as const; // KV_2LTD: 2 x layers x tokens x hidden
const CHUNK_TOKENS = 16;
const PAGE = chunkBytes(MemoryFormat.KV_2LTD, SHAPE, "bfloat16")!; // 4096
const fixture = (name: string) => new URL(`./fixtures/pd/${name}`, import.meta.url).pathname;

function receiver(extra: Partial<PdReceiverOptions> = {}): Promise<PdReceiver> {
  return PdReceiver.create({
    host: "127.0.0.1",
    initPort: 0,
    allocPort: 0,
    bufferSize: 16 * PAGE,
    pageSize: PAGE,
    chunkSize: CHUNK_TOKENS,
    channelType: "mock_memory",
    ...extra,
  });
}

function sender(proxy: ProxyNotifier | null, extra: Partial<PdSenderOptions> = {}) {
  return PdSender.create({
    bufferSize: 16 * PAGE,
    pageSize: PAGE,
    channelType: "mock_memory",
    proxyHost: proxy ? "127.0.0.1" : null,
    proxyPort: proxy ? proxy.port : null,
    allocTimeoutMs: 3000,
    ...extra,
  });
}

function spec(rx: PdReceiver | PdReceiver[], reqId: string, isLastPrefill = true): DisaggSpec {
  const list = Array.isArray(rx) ? rx : [rx];
  return {
    reqId,
    receiverHost: "127.0.0.1",
    receiverInitPort: list.map((r) => r.initPort),
    receiverAllocPort: list.map((r) => r.allocPort),
    isLastPrefill,
  };
}

/** Sends `keys` (content from fillFor) in one batch; the last chunk has `lastToks` tokens. */
async function sendKeys(
  tx: PdSender,
  s: DisaggSpec,
  keys: string[],
  lastToks = CHUNK_TOKENS,
) {
  const pages = await tx.allocate(keys.length);
  keys.forEach((k, i) => fillFor(k, tx.channel.pages[pages[i]]));
  return tx.send(s, { keys, pages, shape: SHAPE, dtype: "bfloat16", lastChunkToks: lastToks });
}

test("pd: keys format and parse as fmt@model@world_size@worker_id@hash_hex@dtype", () => {
  const k = {
    fmt: "vllm",
    model: "org/m@v2",
    worldSize: 2,
    workerId: 1,
    hashHex: "-1a2b",
    dtype: "bfloat16",
  };
  const s = formatCacheKey(k);
  assert.equal(s, "vllm@org/m@v2@2@1@-1a2b@bfloat16");
  assert.deepEqual(parseCacheKey(s), k);
  assert.throws(() => parseCacheKey("vllm@m@1@0@abc"), /expected fmt@model@world_size/);
  assert.throws(() => parseCacheKey("vllm@m@x@0@abc@bf16"), /integers/);
});

test("pd: page pool takes pages all at once and waits a bounded time", async () => {
  const pool = new PagePool(4);
  assert.deepEqual(await pool.allocate(3), [0, 1, 2]);
  assert.equal(pool.tryAllocate(2), null);
  const waiting = pool.allocate(2, 1000);
  pool.release([0]);
  assert.deepEqual((await waiting).sort(), [0, 3]);
  await assert.rejects(pool.allocate(1, 50), { code: "TIMEOUT" });
  assert.throws(() => pool.release([3, 3]), /not allocated/);
  assert.throws(() => pool.allocate(5), /only 4/);
  pool.close();
});

test("pd: mock channel flow, several batches, every byte checked, proxy notified", async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  await using rx = await receiver();
  await using tx = await sender(proxy);
  assert.equal(rx.id, `127.0.0.1:${rx.initPort}`);
  const keys = Array.from({ length: 10 }, (_, i) => testKey("req-a", i));
  const r1 = await sendKeys(tx, spec(rx, "req-a", false), keys.slice(0, 4));
  assert.deepEqual(r1, {
    receiverId: rx.id,
    sent: 4,
    skipped: 0,
    notified: false,
    handshook: true,
  });
  const r2 = await sendKeys(tx, spec(rx, "req-a", false), keys.slice(4, 8));
  assert.equal(r2.handshook, false);
  const r3 = await sendKeys(tx, spec(rx, "req-a"), keys.slice(8), 5);
  assert.equal(r3.notified, true);
  await proxy.waitFor("req-a", { timeoutMs: 2000 });
  await rx.waitFor(keys, 2000);
  assert.equal(tx.pool.free, 16, "the sender's pages are released after each send");
  for (const k of keys.slice(0, 9)) {
    const got = rx.retrieve(k)!;
    assert.equal(got.info.tokens, CHUNK_TOKENS);
    assert.equal(got.data.length, PAGE);
    assert.ok(checkFor(k, got.data), `content of ${k}`);
  }
  // The last, partial chunk: 5 tokens of 16.
  const last = rx.info(keys[9])!;
  assert.equal(last.tokens, 5);
  assert.deepEqual(last.shape, [2, 2, 5, 32]);
  assert.equal(last.bytes, chunkBytes(MemoryFormat.KV_2LTD, SHAPE, "bfloat16", 5));
  assert.ok(rx.remove(keys[9]));
  assert.equal(rx.stats.freePages, 16);
  assert.equal(rx.stats.keys, 0);
});

test("pd: a request shorter than one chunk (nothing to send) still notifies the proxy", async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  await using rx = await receiver();
  await using tx = await sender(proxy);
  const r = await tx.send(spec(rx, "tiny"), {
    keys: [],
    pages: [],
    shape: SHAPE,
    dtype: "bfloat16",
    lastChunkToks: 0,
  });
  assert.deepEqual(r, { receiverId: rx.id, sent: 0, skipped: 0, notified: true, handshook: false });
  await proxy.waitFor("tiny", { timeoutMs: 2000 });
  // A one-chunk prompt whose only chunk is partial: sent, and notified.
  const k = testKey("short", 0);
  const r2 = await sendKeys(tx, spec(rx, "short"), [k], 3);
  assert.equal(r2.sent, 1);
  await proxy.waitFor("short", { timeoutMs: 2000 });
  await rx.waitFor([k], 2000);
  assert.equal(rx.info(k)!.tokens, 3);
  assert.ok(checkFor(k, rx.view(k)!));
});

test("pd: keys the receiver already holds are skipped, and still notified", async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  await using rx = await receiver();
  await using tx = await sender(proxy);
  const shared = [testKey("prefix", 0), testKey("prefix", 1)];
  await sendKeys(tx, spec(rx, "first"), shared);
  await proxy.waitFor("first", { timeoutMs: 2000 });
  const own = testKey("second", 2);
  const r = await sendKeys(tx, spec(rx, "second"), [...shared, own]);
  assert.equal(r.sent, 1);
  assert.equal(r.skipped, 2);
  await proxy.waitFor("second", { timeoutMs: 2000 });
  await rx.waitFor([...shared, own], 2000);
  assert.equal(rx.stats.keys, 3);
  // Everything already there: nothing written, the proxy still hears about it.
  const r3 = await sendKeys(tx, spec(rx, "third"), [...shared]);
  assert.deepEqual([r3.sent, r3.skipped, r3.notified], [0, 2, true]);
  await proxy.waitFor("third", { timeoutMs: 2000 });
  // A key twice in one batch is written once.
  const dup = testKey("dup", 0);
  const r4 = await sendKeys(tx, spec(rx, "dup"), [dup, dup]);
  assert.deepEqual([r4.sent, r4.skipped], [1, 1]);
  await rx.waitFor([dup], 2000);
  assert.ok(checkFor(dup, rx.view(dup)!));
});

test("pd: TP=2, two receivers, two senders, the proxy waits for both ranks", async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0, tpSize: 2 });
  await using rx0 = await receiver({ tpRank: 0 });
  await using rx1 = await receiver({ tpRank: 1 });
  await using tx0 = await sender(proxy, { tpRank: 0 });
  await using tx1 = await sender(proxy, { tpRank: 1 });
  const s = spec([rx0, rx1], "tp2");
  const keys0 = [0, 1, 2].map((i) => testKey("tp2", i, 0, 2));
  const keys1 = [0, 1, 2].map((i) => testKey("tp2", i, 1, 2));
  const waiting = proxy.waitFor("tp2", { timeoutMs: 3000 });
  const r0 = await sendKeys(tx0, s, keys0);
  const r1 = await sendKeys(tx1, s, keys1);
  await waiting;
  assert.equal(r0.receiverId, rx0.id);
  assert.equal(r1.receiverId, rx1.id);
  await rx0.waitFor(keys0, 2000);
  await rx1.waitFor(keys1, 2000);
  assert.equal(rx0.contains(keys1[0]), false);
  for (const k of keys1) assert.ok(checkFor(k, rx1.view(k)!));
  // A port list shorter than the TP size is a clear error, not an index error.
  await assert.rejects(
    tx1.send({ ...s, receiverInitPort: [rx0.initPort] }, {
      keys: [],
      pages: [],
      shape: SHAPE,
      dtype: "bfloat16",
      lastChunkToks: 0,
    }),
    /receiverInitPort has 1 port\(s\) but TP rank 1 needs index 1/,
  );
});

/** Receivers on 127.0.0.1:P and 127.0.0.15:Q with P = 5Q, so LMCache's glued ids match. */
async function gluedTwins(): Promise<[PdReceiver, PdReceiver]> {
  let last: unknown;
  for (let attempt = 0; attempt < 40; attempt++) {
    const q = 1024 + Math.floor(Math.random() * (9999 - 1024));
    let b: PdReceiver | undefined;
    try {
      b = await receiver({ host: "127.0.0.15", initPort: q });
      const a = await receiver({ initPort: Number(`5${q}`) });
      return [a, b];
    } catch (e) {
      last = e; // a port in use: pick another pair
      await b?.close();
    }
  }
  throw new Error(`no free port pair for the glued-id test: ${String(last)}`);
}

test("pd: receivers whose glued host+port ids collide each get their own bytes", async () => {
  const [rxA, rxB] = await gluedTwins();
  await using _a = rxA;
  await using _b = rxB;
  assert.equal(
    `127.0.0.1${rxA.initPort}`,
    `127.0.0.15${rxB.initPort}`,
    "precondition: LMCache's glued ids are equal",
  );
  assert.notEqual(rxA.id, rxB.id);
  assert.deepEqual([rxA.id, rxB.id], [`127.0.0.1:${rxA.initPort}`, `127.0.0.15:${rxB.initPort}`]);
  await using tx = await sender(null);
  const specOf = (rx: PdReceiver, host: string, reqId: string): DisaggSpec => ({
    reqId,
    receiverHost: host,
    receiverInitPort: [rx.initPort],
    receiverAllocPort: [rx.allocPort],
    isLastPrefill: true,
  });
  const keysA = [0, 1, 2].map((i) => testKey("glued-a", i));
  const keysB = [0, 1, 2].map((i) => testKey("glued-b", i));
  const rA = await sendKeys(tx, specOf(rxA, "127.0.0.1", "glued-a"), keysA);
  const rB = await sendKeys(tx, specOf(rxB, "127.0.0.15", "glued-b"), keysB);
  assert.deepEqual([rA.receiverId, rA.sent, rA.handshook], [rxA.id, 3, true]);
  assert.deepEqual(
    [rB.receiverId, rB.sent, rB.handshook],
    [rxB.id, 3, true],
    "a handshake of its own",
  );
  await rxA.waitFor(keysA, 2000);
  await rxB.waitFor(keysB, 2000);
  for (const k of keysA) assert.ok(checkFor(k, rxA.view(k)!), `bytes of ${k} at A`);
  for (const k of keysB) assert.ok(checkFor(k, rxB.view(k)!), `bytes of ${k} at B`);
  assert.equal(rxA.stats.keys, 3);
  assert.equal(rxB.stats.keys, 3, "nothing of B's request landed at A");
  assert.deepEqual(tx.receivers.sort(), [rxA.id, rxB.id].sort());
  // The wire is LMCache's: each receiver stored the sender under the NixlMemRegRequest
  // local_id the sender sent (its own id), whatever the receiver's address.
  assert.ok(rxA.channel.hasPeer(tx.channel.localId));
  assert.ok(rxB.channel.hasPeer(tx.channel.localId));
  assert.equal(rxA.channel.hasPeer(rxA.id) || rxB.channel.hasPeer(rxB.id), false);
  // A second round reuses each link.
  const again = await sendKeys(tx, specOf(rxB, "127.0.0.15", "glued-b2"), [testKey("glued-b2", 0)]);
  assert.equal(again.handshook, false);
  assert.ok(
    checkFor(
      testKey("glued-b2", 0),
      (await rxB.waitFor([testKey("glued-b2", 0)], 2000), rxB.view(testKey("glued-b2", 0))!),
    ),
  );
  assert.equal(rxA.contains(testKey("glued-b2", 0)), false);
});

test("pd: a receiver restarted mid-stream fails that request clearly, the next succeeds", async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  const rxA = await receiver();
  const initPort = rxA.initPort;
  const allocPort = rxA.allocPort;
  await using tx = await sender(proxy);
  const s = spec(rxA, "victim", false);
  await sendKeys(tx, s, [testKey("victim", 0)]);
  await rxA.close();
  await using rxB = await receiver({ initPort, allocPort });
  await assert.rejects(sendKeys(tx, { ...s, isLastPrefill: true }, [testKey("victim", 1)]), (e) => {
    assert.ok(e instanceof PdSendError, String(e));
    assert.equal(e.reqId, "victim");
    assert.equal(e.receiverId, `127.0.0.1:${initPort}`);
    assert.equal(e.stage, "restart");
    assert.equal(e.code, "PEER_RESTARTED");
    assert.match(e.message, /retry the whole request/);
    return true;
  });
  assert.equal(tx.pool.free, 16);
  const keys = [testKey("retry", 0), testKey("retry", 1)];
  const r = await sendKeys(tx, spec(rxB, "retry"), keys);
  assert.equal(r.handshook, true);
  await proxy.waitFor("retry", { timeoutMs: 2000 });
  await rxB.waitFor(keys, 2000);
  for (const k of keys) assert.ok(checkFor(k, rxB.view(k)!));
});

test("pd: a receiver that went away between requests is re-handshaken transparently", async () => {
  const rxA = await receiver();
  const { initPort, allocPort } = rxA;
  await using tx = await sender(null);
  await sendKeys(tx, spec(rxA, "one"), [testKey("one", 0)]);
  await rxA.close();
  await using rxB = await receiver({ initPort, allocPort });
  const k = testKey("two", 0);
  const r = await sendKeys(tx, spec(rxB, "two"), [k]);
  assert.equal(r.handshook, true);
  await rxB.waitFor([k], 2000);
});

test("pd: no free pages within pd_allocation_timeout_sec is an error reply, not a hang", async () => {
  await using rx = await receiver({ bufferSize: 2 * PAGE, allocationTimeoutMs: 200 });
  await using tx = await sender(null);
  const held = [testKey("hold", 0), testKey("hold", 1)];
  await sendKeys(tx, spec(rx, "hold"), held);
  const t0 = performance.now();
  await assert.rejects(sendKeys(tx, spec(rx, "starved"), [testKey("starved", 0)]), (e) => {
    assert.ok(e instanceof PdSendError);
    assert.equal(e.stage, "alloc");
    // A typed refusal that says why, read from the receiver's AllocResponse.
    assert.ok(e instanceof PdAllocRefusedError);
    assert.equal(e.reason, "no_free_pages");
    assert.equal(e.failed, 1);
    assert.equal(e.code, "REMOTE_ERROR");
    assert.match(e.message, /1 page\(s\) wanted, 0 of 2 free after 200 ms/);
    return true;
  });
  assert.ok(performance.now() - t0 < 2000);
  assert.equal(rx.stats.allocTimeouts, 1);
  assert.match(rx.lastError!, /1 page\(s\) wanted, 0 of 2 free after 200 ms/);
  // Freed pages make the next request succeed, over the same connection.
  await rx.waitFor(held, 2000);
  rx.remove(held[0]);
  const k = testKey("fed", 0);
  const r = await sendKeys(tx, spec(rx, "fed"), [k]);
  assert.equal(r.handshook, false);
  await rx.waitFor([k], 2000);
  // A request that waits gets pages as soon as they are freed.
  const slow = sendKeys(tx, spec(rx, "waiter"), [testKey("waiter", 0)]);
  setTimeout(() => rx.remove(held[1]), 50);
  assert.equal((await slow).sent, 1);
});

test("pd: a chunk larger than the receiver's page is refused with both sizes", async () => {
  await using rx = await receiver();
  await using tx = await sender(null);
  const pages = await tx.allocate(1);
  await assert.rejects(
    tx.send(spec(rx, "big"), {
      keys: [testKey("big", 0)],
      pages,
      shape: [2, 2, 32, 32],
      dtype: "bfloat16",
      lastChunkToks: 32,
    }),
    /8192 bytes but pages are 4096 bytes/,
  );
  assert.equal(rx.stats.keys, 0);
});

test("pd: malformed, truncated and oversize input on both ports is refused; service goes on", async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  await using rx = await receiver();
  await using tx = await sender(proxy);
  const enc = new TextEncoder();
  const ready = [zmtpGreeting(), zmtpReady("REQ")];
  const cases: Array<
    { name: string; chunks: Uint8Array[]; reply?: RegExp; closes?: boolean }
  > = [
    {
      name: "garbage instead of a greeting",
      closes: true,
      chunks: [enc.encode("GET / HTTP/1.1\r\n\r\n".repeat(8))],
    },
    { name: "truncated greeting", chunks: [zmtpGreeting().subarray(0, 20)] },
    {
      name: "frame announcing 1 GiB",
      closes: true,
      chunks: [...ready, zmtpFrame(new Uint8Array(16), { announce: 1 << 30 })],
    },
    {
      name: "frame announcing 2^63 bytes",
      closes: true,
      chunks: [...ready, zmtpFrame(new Uint8Array(8), { announce: 2 ** 62 })],
    },
    { name: "truncated frame", chunks: [...ready, zmtpFrame(new Uint8Array(100)).subarray(0, 40)] },
    {
      name: "not msgpack",
      chunks: [...ready, zmtpRequest(enc.encode("\xc1\xc1not msgpack"))],
      reply: /ErrorMsg/,
    },
    {
      name: "unknown message type",
      chunks: [...ready, zmtpRequest(encodeMessage({ type: "ProxyNotif", req_id: "x" }))],
      reply: /ErrorMsg/,
    },
    {
      name: "AllocRequest with a wrong field type",
      chunks: [
        ...ready,
        zmtpRequest(
          new Uint8Array([
            0x82,
            0xa4,
            ...enc.encode("type"),
            0xac,
            ...enc.encode("AllocRequest"),
            0xa4,
            ...enc.encode("keys"),
            0x05,
          ]),
        ),
      ],
      reply: /ErrorMsg/,
    },
    {
      name: "truncated msgpack",
      chunks: [
        ...ready,
        zmtpRequest(
          encodeMessage({ type: "NixlInitRequest", local_meta_bytes: new Uint8Array(64) }).subarray(
            0,
            30,
          ),
        ),
      ],
      reply: /ErrorMsg/,
    },
    {
      name: "NixlInitRequest with bytes that are not metadata",
      chunks: [
        ...ready,
        zmtpRequest(
          encodeMessage({ type: "NixlInitRequest", local_meta_bytes: new Uint8Array(64) }),
        ),
      ],
      reply: /ErrorMsg/,
    },
  ];
  const probe = async (port: number) => {
    for (const c of cases) {
      const out = await rawExchange(port, c.chunks, 100);
      const text = new TextDecoder().decode(out.received);
      if (c.reply) {
        // The allocation socket answers only with PD types (LMCache's sender decodes
        // nothing else there): an AllocResponse of -1 indexes that says why.
        const want = port === rx.allocPort ? /AllocResponse[\s\S]*kvport_reason/ : c.reply;
        assert.match(text, want, `${c.name} on port ${port}: an error reply`);
        if (port === rx.allocPort) assert.doesNotMatch(text, /ErrorMsg/);
      } else {
        // No reply: the connection is closed (at once, or when the handshake times out).
        assert.doesNotMatch(text, /Response/, `${c.name} on port ${port}: no reply`);
      }
      if (c.closes) assert.ok(out.closedByPeer, `${c.name} on port ${port}: connection closed`);
    }
  };
  await Promise.all([probe(rx.allocPort), probe(rx.initPort)]);
  await proxy.close().catch(() => {});
  // Both sides still work: a correct request is served with the right bytes.
  const keys = [testKey("after", 0), testKey("after", 1)];
  await sendKeys(tx, { ...spec(rx, "after"), isLastPrefill: false }, keys);
  await rx.waitFor(keys, 2000);
  for (const k of keys) assert.ok(checkFor(k, rx.view(k)!));
  assert.equal(rx.stats.keys, 2);
  assert.ok(rx.stats.errors >= 3);
});

test("pd: the proxy collector counts per TP rank and times out saying how many came", async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0, tpSize: 2 });
  await using rx = await receiver();
  await using tx = await sender(proxy);
  await tx.send(spec(rx, "half"), {
    keys: [],
    pages: [],
    shape: SHAPE,
    dtype: "bfloat16",
    lastChunkToks: 0,
  });
  await assert.rejects(proxy.waitFor("half", { timeoutMs: 200 }), /1 of 2 TP rank\(s\) reported/);
  // A garbage message is counted, not fatal.
  const out = await rawExchange(proxy.port, [
    zmtpGreeting(),
    zmtpReady("PUSH"),
    zmtpFrame(new Uint8Array([1, 2, 3])),
  ], 100);
  assert.equal(out.closedByPeer, false);
  assert.equal(proxy.rejected, 1);
});

test("pd: receiver waitFor times out naming what is missing", async () => {
  await using rx = await receiver();
  await assert.rejects(
    rx.waitFor([testKey("never", 0)], 100),
    /1 of 1 key\(s\) have not landed \(1 never allocated\)/,
  );
});

test("pd: LMCache's example configs load as they are; the cuda buffer is a clear error", async () => {
  const dec = loadConfig({ file: fixture("lmcache-decoder-config.yaml"), env: {} }).config;
  const pre = loadConfig({ file: fixture("lmcache-prefiller-config.yaml"), env: {} }).config;
  assert.deepEqual(dec.nixl_backends, ["UCX"]);
  await assert.rejects(
    PdReceiver.fromConfig(dec, {
      pageSize: PAGE,
      channelType: "mock_memory",
      initPort: 0,
      allocPort: 0,
    }),
    /device "cuda" is not supported: use device "cpu"/,
  );
  // The same files with the buffer on the host run as they are.
  const cpu = {
    pd_buffer_device: "cpu",
    pd_buffer_size: 16 * PAGE,
    transfer_channel: "mock_memory",
  };
  const decCpu =
    loadConfig({ file: fixture("lmcache-decoder-config.yaml"), env: {}, overrides: cpu }).config;
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  const preCpu = loadConfig({
    file: fixture("lmcache-prefiller-config.yaml"),
    env: {},
    overrides: { ...cpu, pd_proxy_host: "127.0.0.1", pd_proxy_port: proxy.port },
  }).config;
  await using rx = await PdReceiver.fromConfig(decCpu, {
    pageSize: PAGE,
    initPort: 0,
    allocPort: 0,
    chunkSize: 16,
  });
  assert.equal(rx.id, `localhost:${rx.initPort}`);
  await using tx = await PdSender.fromConfig(preCpu, { pageSize: PAGE });
  const k = testKey("cfg", 0);
  const pages = await tx.allocate(1);
  fillFor(k, tx.channel.pages[pages[0]]);
  await tx.send(
    {
      reqId: "cfg",
      receiverHost: "localhost",
      receiverInitPort: [rx.initPort],
      receiverAllocPort: [rx.allocPort],
      isLastPrefill: true,
    },
    { keys: [k], pages, shape: SHAPE, dtype: "bfloat16", lastChunkToks: 16 },
  );
  await proxy.waitFor("cfg", { timeoutMs: 2000 });
  await rx.waitFor([k], 2000);
  assert.ok(checkFor(k, rx.view(k)!));
  // The wrong role and a port list shorter than the TP rank are named.
  await assert.rejects(
    PdSender.fromConfig(decCpu, { pageSize: PAGE }),
    /pd_role "receiver", not "sender"/,
  );
  await assert.rejects(
    PdReceiver.fromConfig(decCpu, { pageSize: PAGE, tpRank: 1 }),
    /pd_peer_init_port has 1 port\(s\) \[7300\] but TP rank 1 needs index 1/,
  );
  void pre;
});
