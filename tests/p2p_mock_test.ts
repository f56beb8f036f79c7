// P2P sharing in one process over the mock_memory channel: a registry, holders and
// requesters on loopback sockets. Full, partial and missed prefixes with every byte
// checked; an eviction between lookup and fetch (and during the holder's WRITE); a
// holder restarted between lookups; error 3 -> re-handshake and retry, and its limit;
// concurrent fetches sharing one handshake; a silent instance forgotten; a restarted
// registry relearning what holders hold; unreachable registry and holders as misses.
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadConfig, MockMemoryChannel, P2PBackend, P2PError, P2PRegistry } from "../mod.ts";
import { ChunkStore } from "../src/p2p/store.ts";
import { LeasePool } from "../src/channel/lease_pool.ts";
import { fillPattern } from "../src/pd/pattern.ts";
import {
  checkFetched,
  crcOf,
  docKeys,
  instance,
  silentHolder,
  startRegistry,
  storeDoc,
  until,
  waitForHits,
} from "./helpers/p2p_util.ts";
import { decodeMessage, encodeMessage, RepSocket, ReqSocket } from "../src/channel/wire/mod.ts";
import { freePort } from "../cli/demo_cmd.ts";

test("p2p mock: full, partial and missed prefixes; every byte checked, CRC as the holder's", async () => {
  await using registry = await startRegistry();
  await using holder = await instance(registry, "holder");
  await using requester = await instance(registry, "requester");
  const a = await storeDoc(holder, "A", 8);
  await waitForHits(requester, a, 8);

  const full = await requester.retrieve(a);
  assert.equal(full.error, undefined);
  assert.deepEqual([full.hitChunks, full.promised, full.attempts, full.handshakes], [8, 8, 1, 1]);
  assert.deepEqual(full.keys, a);
  assert.equal(full.holder?.instanceId, "holder");
  assert.equal(full.holder?.peerInitUrl, holder.initUrl);
  const crc = crcOf(holder, a);
  assert.deepEqual(checkFetched(requester, full), { bad: 0, crc });

  const partial = [...a.slice(0, 3), ...docKeys("B", 5, 3)];
  const p = await requester.retrieve(partial);
  assert.deepEqual([p.hitChunks, p.promised, p.handshakes], [3, 3, 0]);
  assert.equal(checkFetched(requester, p).bad, 0);

  const miss = await requester.retrieve(docKeys("C", 4));
  assert.deepEqual([miss.hitChunks, miss.holder, miss.attempts, miss.error], [
    0,
    null,
    0,
    undefined,
  ]);

  assert.equal(requester.stats.freePages, requester.pool.pageCount, "every page returned");
  assert.deepEqual(
    [holder.stats.served, holder.stats.servedChunks, holder.stats.servedErrors],
    [2, 11, 0],
  );
});

test("p2p mock: the holder evicts between lookup and fetch: fewer chunks, never other bytes", async () => {
  await using registry = await startRegistry();
  await using holder = await instance(registry, "holder");
  await using requester = await instance(registry, "requester");
  const a = await storeDoc(holder, "A", 6);
  await waitForHits(requester, a, 6);
  const lookup = await requester.lookup(a);
  assert.equal(lookup.hitChunks, 6);
  // evict chunk 4 and reuse its page for another key with other bytes
  assert.equal(holder.evict(a[4]), true);
  await holder.store("intruder@x@1@0@ff@bfloat16", (page) => page.fill(0xee));
  const r = await requester.fetch(lookup);
  assert.deepEqual([r.promised, r.hitChunks], [6, 4]);
  assert.deepEqual(r.keys, a.slice(0, 4));
  assert.equal(checkFetched(requester, r).bad, 0);
  // the registry heard of the evict too
  await holder.flushReports();
  await waitForHits(requester, a, 4);
});

test("p2p mock: an eviction during the holder's WRITE cannot free or reuse the page it reads", async () => {
  await using registry = await startRegistry();
  await using holder = await instance(registry, "holder", { bufferSize: 4 * 64 * 1024 });
  await using requester = await instance(registry, "requester");
  const a = await storeDoc(holder, "A", 4); // the holder's buffer is full
  await waitForHits(requester, a, 4);
  const ch = holder.channel as MockMemoryChannel;
  const write = ch.write.bind(ch);
  let stored: number | undefined;
  let storing: Promise<unknown> = Promise.resolve();
  ch.write = async (local, spec) => {
    // Mid-transfer: evict every chunk and store a new one. With the pins, the new chunk
    // gets no page the WRITE is reading (none is free), so storing it waits.
    for (const k of a) holder.evict(k);
    storing = holder.store("late@x@1@0@1@bfloat16", (page) => page.fill(0x55))
      .then((page) => (stored = page));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(stored, undefined, "no page was free while the WRITE held them");
    return await write(local, spec);
  };
  const r = await requester.retrieve(a);
  assert.equal(r.hitChunks, 4);
  assert.equal(checkFetched(requester, r).bad, 0);
  await storing;
  assert.notEqual(stored, undefined, "the page came free once the WRITE ended");
  assert.equal(holder.has(a[0]), false);
});

test("p2p mock: a holder restarted between lookups is handshaken again", async () => {
  await using registry = await startRegistry();
  let holder = await instance(registry, "holder");
  const ports = {
    initPort: Number(holder.initUrl.split(":")[1]),
    lookupPort: Number(holder.lookupUrl.split(":")[1]),
  };
  await using requester = await instance(registry, "requester");
  try {
    const a = await storeDoc(holder, "A", 5);
    await waitForHits(requester, a, 5);
    const r1 = await requester.retrieve(a);
    assert.deepEqual([r1.hitChunks, r1.handshakes], [5, 1]);
    assert.equal(checkFetched(requester, r1).bad, 0);
    const oldAgent = holder.channel.agentName;

    await holder.close();
    holder = await instance(registry, "holder", ports); // same ports, new agent
    assert.notEqual(holder.channel.agentName, oldAgent);
    await storeDoc(holder, "A", 3);
    await waitForHits(requester, a, 3);
    const r2 = await requester.retrieve(a);
    assert.equal(r2.error, undefined);
    assert.deepEqual([r2.hitChunks, r2.handshakes], [3, 1]);
    assert.equal(checkFetched(requester, r2).bad, 0);
    assert.equal(requester.stats.handshakes, 2);
  } finally {
    await holder.close();
  }
});

test("p2p mock: error 3 (the holder forgot us) re-handshakes and retries", async () => {
  await using registry = await startRegistry();
  await using holder = await instance(registry, "holder");
  await using requester = await instance(registry, "requester");
  const a = await storeDoc(holder, "A", 4);
  await waitForHits(requester, a, 4);
  const first = await requester.retrieve(a);
  assert.equal(first.hitChunks, 4);
  checkFetched(requester, first);
  await holder.channel.forgetPeer(requester.receiverId);
  const r = await requester.retrieve(a);
  assert.equal(r.error, undefined);
  assert.deepEqual([r.hitChunks, r.attempts, r.handshakes], [4, 2, 1]);
  assert.equal(checkFetched(requester, r).bad, 0);
  assert.deepEqual([requester.stats.retries, holder.stats.servedErrors], [1, 1]);
});

test("p2p mock: a holder that keeps answering error 3 is tried 1 + p2p_max_retry_count times", async () => {
  // A fake holder: a real handshake responder whose lookup socket always answers 3.
  await using lookup = await RepSocket.bind("tcp://127.0.0.1:0");
  let asked = 0;
  lookup.serve(() => {
    asked++;
    return encodeMessage({ type: "P2PErrorMsg", error_code: 3 });
  });
  await using fake = await MockMemoryChannel.create({
    role: "both",
    pageSize: 64 * 1024,
    pageCount: 4,
    peerInitUrl: "127.0.0.1:0",
  });
  fake.onSideMessage(() => ({
    type: "P2PInitSideRetMsg",
    peer_lookup_url: `127.0.0.1:${lookup.port}`,
  }));
  await using requester = await instance(null, "requester", { maxRetryCount: 2 });
  const r = await requester.fetchFrom(fake.initUrl!, docKeys("A", 2));
  assert.ok(r.error instanceof P2PError);
  assert.equal(r.error.errorCode, 3);
  assert.match(r.error.message, /P2PErrorMsg 3 .* after 3 attempt\(s\)/);
  assert.deepEqual([r.hitChunks, r.attempts, r.handshakes, asked], [0, 3, 3, 3]);
  assert.equal(requester.stats.freePages, requester.pool.pageCount, "answered: pages free at once");
});

test("p2p mock: concurrent fetches from one holder share one handshake", async () => {
  await using registry = await startRegistry();
  await using holder = await instance(registry, "holder");
  await using requester = await instance(registry, "requester");
  const a = await storeDoc(holder, "A", 4);
  await waitForHits(requester, a, 4);
  const results = await Promise.all([1, 2, 3, 4, 5].map(() => requester.retrieve(a)));
  assert.deepEqual(results.map((r) => r.hitChunks), [4, 4, 4, 4, 4]);
  assert.equal(requester.stats.handshakes, 1);
  assert.equal(results.reduce((n, r) => n + r.handshakes, 0), 1);
  for (const r of results) assert.equal(checkFetched(requester, r).bad, 0);
});

test("p2p mock: a silent instance is forgotten; a registry restart is relearned", async () => {
  await using registry = await startRegistry(400);
  await using silent = await instance(registry, "silent");
  await using alive = await instance(registry, "alive", {
    heartbeatIntervalMs: 50,
    heartbeatDelayMs: 0,
  });
  await using requester = await instance(registry, "requester");
  const s = await storeDoc(silent, "S", 2);
  const a = await storeDoc(alive, "A", 3);
  await waitForHits(requester, s, 2);
  await until(() => registry.stats.forgotten >= 1, 3000, "the silent instance forgotten");
  assert.equal((await requester.lookup(s)).hitChunks, 0);
  assert.equal((await requester.lookup(a)).hitChunks, 3);
  assert.ok(registry.instances().every((i) => i.instanceId !== "silent"));

  // The registry restarts on the same ports: the heartbeating holder registers again and
  // sends what it holds.
  const urls = { pullUrl: registry.pullUrl, replyUrl: registry.replyUrl };
  await registry.close();
  await using again = await P2PRegistry.listen({ ...urls, heartbeatTimeoutMs: 10_000 });
  await waitForHits(requester, a, 3, 5000);
  assert.equal(again.instances().find((i) => i.instanceId === "alive")?.chunks.LocalCPUBackend, 3);
});

test("p2p mock: the holder's lookup port answers unknown messages 2 and strangers 3", async () => {
  await using holder = await instance(null, "holder");
  await using req = ReqSocket.connect(`tcp://${holder.lookupUrl}`, { timeoutMs: 2000 });
  const ask = async (body: Uint8Array) => decodeMessage((await req.request(body))[0]);
  assert.deepEqual(await ask(encodeMessage({ type: "ProxyNotif", req_id: "x" })), {
    type: "P2PErrorMsg",
    error_code: 2,
  });
  assert.deepEqual(await ask(encodeMessage({ type: "ErrorMsg", error: "?" })), {
    type: "P2PErrorMsg",
    error_code: 2,
  });
  const get = encodeMessage({
    type: "BatchedLookupAndGetMsg",
    lookup_id: "l",
    receiver_id: "127.0.0.1:1",
    keys: ["k"],
    mem_indexes: [0],
  });
  assert.deepEqual(await ask(get), { type: "P2PErrorMsg", error_code: 3 });
  assert.deepEqual(await ask(new Uint8Array([0xc1])), { type: "P2PErrorMsg", error_code: 1 });
});

test("p2p mock: an unreachable registry or holder is a miss with an error, never a throw", async () => {
  await using requester = await instance(
    { pullUrl: "127.0.0.1:1", replyUrl: "127.0.0.1:1" },
    "requester",
    { lookupRecvTimeoutMs: 300, lookupSendTimeoutMs: 200, handshakeTimeoutMs: 300 },
  );
  const l = await requester.lookup(docKeys("A", 2));
  assert.equal(l.hitChunks, 0);
  assert.ok(l.error instanceof P2PError);
  assert.match(l.error.message, /lookup at the registry failed/);
  const t0 = performance.now();
  const r = await requester.fetchFrom("127.0.0.1:1", docKeys("A", 2));
  assert.equal(r.hitChunks, 0);
  assert.match(r.error!.message, /handshake with holder 127\.0\.0\.1:1 failed|timed out/);
  // the next fetch from that holder fails at once (no second handshake timeout)
  const t1 = performance.now();
  const again = await requester.fetchFrom("127.0.0.1:1", docKeys("A", 2));
  assert.ok(again.error);
  assert.ok(performance.now() - t1 < 100, `failed fast (first took ${t1 - t0} ms)`);
  assert.equal(requester.stats.freePages, requester.pool.pageCount);
  await assert.rejects(requester.lookup([""]), /non-empty string/);
});

test("p2p mock: a reply that never comes quarantines the pages, then frees them", async () => {
  await using fake = await silentHolder();
  await using requester = await instance(null, "requester", {
    lookupRecvTimeoutMs: 150,
    maxRetryCount: 1,
    quarantineMs: 300,
  });
  const r = await requester.fetchFrom(fake.initUrl, docKeys("A", 3));
  assert.equal(r.error?.code, "TIMEOUT");
  assert.equal(r.attempts, 2);
  // each unanswered attempt's pages (the retry took fresh ones)
  assert.equal(requester.stats.quarantinedPages, 6, "the holder might still write there");
  await until(() => requester.stats.quarantinedPages === 0, 2000, "quarantine over");
  assert.equal(requester.stats.freePages, requester.pool.pageCount);
});

test("p2p mock: fromConfig reads LMCache's keys; a short port list is a clear error", async () => {
  await using registry = await startRegistry();
  const ports = await Promise.all([1, 2, 3, 4].map(() => freePort()));
  const { config } = loadConfig({
    env: {},
    overrides: {
      enable_p2p: true,
      p2p_host: "127.0.0.1",
      p2p_init_ports: [ports[0], ports[1]],
      p2p_lookup_ports: [ports[2], ports[3]],
      transfer_channel: "mock_memory",
      enable_controller: true,
      lmcache_instance_id: "cfg",
      controller_pull_url: registry.pullUrl,
      controller_reply_url: registry.replyUrl,
      lmcache_worker_ports: [8001, 8002],
      max_local_cpu_size: 0.001,
      extra_config: { p2p_max_retry_count: 5 },
    },
  });
  await using p2p = await P2PBackend.fromConfig(config, { tpRank: 1, pageSize: 64 * 1024 });
  assert.equal(p2p.workerId, 1);
  assert.equal(p2p.initUrl, `127.0.0.1:${ports[1]}`);
  assert.equal(p2p.lookupUrl, `127.0.0.1:${ports[3]}`);
  assert.equal(p2p.receiverId, p2p.initUrl, "peers know us by our init URL, as LMCache");
  assert.equal(p2p.channel.pageCount, Math.floor((0.001 * 2 ** 30) / (64 * 1024)));
  await until(
    () => registry.instances().some((i) => i.instanceId === "cfg" && i.workerId === 1),
    2000,
    "registered as worker 1",
  );
  const info = registry.instances().find((i) => i.instanceId === "cfg")!;
  assert.deepEqual([info.port, info.peerInitUrl], [8002, p2p.initUrl]);
  await assert.rejects(
    P2PBackend.fromConfig(config, { tpRank: 2, pageSize: 64 * 1024 }),
    /p2p_init_ports has 2 port\(s\) but TP rank 2 needs index 2/,
  );
  await assert.rejects(
    P2PBackend.fromConfig({ ...config, lmcache_instance_id: null }, { pageSize: 4096 }),
    /needs lmcache_instance_id/,
  );
});

test("p2p mock: ChunkStore pins keep a removed chunk's page until the last unpin", () => {
  const pool = new LeasePool(2, { quarantineMs: 60_000 });
  const store = new ChunkStore(pool);
  const l0 = pool.tryAcquire(1, { owner: "a" })!;
  const l1 = pool.tryAcquire(1, { owner: "b" })!;
  store.add("a", 1n, l0, 10);
  store.add("b", 2n, l1, 10);
  const pin = store.pin("a")!;
  assert.equal(store.victim()?.key, "b", "a pinned chunk is never the victim");
  store.remove("a");
  assert.deepEqual([store.has("a"), pool.free], [false, 0]);
  store.unpin(pin);
  assert.equal(pool.free, 1);
  assert.throws(() => store.unpin(pin), /not pinned/);
  store.add("b", 3n, l1, 20); // same page again: in place
  assert.deepEqual([store.peek("b")?.hash, pool.free], [3n, 1]);
  // A pin whose WRITE timed out sends the removed chunk's page to quarantine.
  const late = store.pin("b")!;
  store.remove("b");
  store.unpin(late, true);
  assert.deepEqual([pool.free, pool.quarantined], [1, 1]);
  pool.close();
});

test("p2p mock: random fetches while holders evict and store: every fetched byte is right", async () => {
  await using registry = await startRegistry();
  const small = { bufferSize: 12 * 64 * 1024 };
  await using h1 = await instance(registry, "h1", small);
  await using h2 = await instance(registry, "h2", small);
  await using requester = await instance(registry, "requester", {
    bufferSize: 64 * 64 * 1024,
  });
  let seed = 7;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const docs = ["A", "B", "C"];
  for (const h of [h1, h2]) await storeDoc(h, docs[rand(3)], 8);
  let fetched = 0;
  let hits = 0;
  const churn = async () => {
    for (let i = 0; i < 60; i++) {
      const h = rand(2) ? h1 : h2;
      const doc = docs[rand(3)];
      const k = docKeys(doc, 1, rand(10))[0];
      if (rand(2)) h.evict(k);
      else await h.store(k, (page) => fillPattern(k, page)); // evicts the LRU when full
      await new Promise((r) => setTimeout(r, rand(3)));
    }
  };
  const fetcher = async () => {
    for (let i = 0; i < 25; i++) {
      const r = await requester.retrieve(docKeys(docs[rand(3)], 1 + rand(10)));
      assert.equal(r.error, undefined, String(r.error));
      assert.ok(r.hitChunks <= r.promised);
      assert.equal(checkFetched(requester, r).bad, 0, "a fetched chunk had other bytes");
      fetched++;
      hits += r.hitChunks;
    }
  };
  await Promise.all([churn(), fetcher(), fetcher()]);
  assert.equal(fetched, 50);
  assert.ok(hits > 0, "some chunks were found");
  assert.equal(requester.stats.freePages, requester.pool.pageCount);
});

test("p2p mock: the timeline hook sees every stage of a retrieve, in order, on both sides", async () => {
  await using registry = await startRegistry();
  const served: [string, string][] = [];
  const asked: [string, string][] = [];
  await using holder = await instance(registry, "holder", {
    timeline: (stage, id) => served.push([stage, id]),
  });
  await using requester = await instance(registry, "requester", {
    timeline: (stage, id) => asked.push([stage, id]),
  });
  const a = await storeDoc(holder, "A", 3);
  await waitForHits(requester, a, 3);
  asked.length = 0;
  const got = await requester.retrieve(a);
  assert.equal(got.hitChunks, 3);
  assert.equal(checkFetched(requester, got).bad, 0);
  const id = got.lookupId;
  assert.deepEqual(asked, [
    ["lookup", id],
    ["lookup_reply", id],
    ["fetch", id],
    ["pages", id],
    ["granted", id],
    ["reply", id],
    ["done", id],
  ]);
  // The holder's stages of the same lookup (its WRITE over, its reply handed back).
  assert.deepEqual(served.filter(([, l]) => l === id), [
    ["request", id],
    ["write", id],
    ["written", id],
    ["replied", id],
  ]);
  // A miss stops after the registry's answer; a holder with nothing writes nothing.
  asked.length = 0;
  const miss = await requester.retrieve(docKeys("Z", 2));
  assert.equal(miss.hitChunks, 0);
  assert.deepEqual(asked.map(([s]) => s), ["lookup", "lookup_reply"]);
  served.length = 0;
  const none = await requester.fetchFrom(holder.initUrl, docKeys("Z", 2));
  assert.equal(none.hitChunks, 0);
  assert.deepEqual(served.map(([s]) => s), ["request", "replied"]);
});
