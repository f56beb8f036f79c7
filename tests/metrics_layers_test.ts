// Each layer records into the registry it is handed, and what it records is what moved:
// the agent (transfers by op and status, bytes, latency, notifications, the engine's
// data paths), PD over mock channels (chunks, bytes, batches, allocation waits and
// timeouts, pages), the side channel (connections, refused peers), storage (puts, gets,
// evictions, keys, bytes) and P2P (lookups, hits, fetched bytes, errors by code). A
// disabled registry records nothing.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  chunkBytes,
  DescList,
  MemoryFormat,
  nativeLibrary,
  NixlAgent,
  NixlError,
  PdReceiver,
  PdSender,
  PdSendError,
} from "../mod.ts";
import { type FamilySnapshot, MetricsRegistry, sumOf } from "../src/metrics/mod.ts";
import { RepSocket, ReqSocket } from "../src/channel/wire/mod.ts";
import { NixlStorageBackend } from "../src/storage/mod.ts";
import { FsStorageIo } from "./helpers/storage_fs_io.ts";
import { pattern, tempDir } from "./helpers/storage_util.ts";
import { fillFor, rawExchange, testKey, zmtpFrame, zmtpGreeting } from "./helpers/pd_util.ts";
import { docKeys, instance, startRegistry, storeDoc, waitForHits } from "./helpers/p2p_util.ts";

const noLib: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (make -C native): ${String(e).split("\n")[0]}`,
);
if (noLib) console.log(`metrics_layers_test: agent tests skipped: ${noLib}`);

async function families(r: MetricsRegistry): Promise<Map<string, FamilySnapshot>> {
  return new Map((await r.collect()).map((f) => [f.name, f]));
}

async function value(
  r: MetricsRegistry,
  name: string,
  match: Record<string, string> = {},
): Promise<number | undefined> {
  return sumOf((await families(r)).get(name), match);
}

test("metrics agent: transfers by op and status, their bytes, latency, notifications, paths", {
  skip: noLib,
}, async () => {
  const metrics = new MetricsRegistry();
  const a = await NixlAgent.create({
    name: `ma-${crypto.randomUUID()}`,
    engine: "builtin",
    metrics,
  });
  const b = await NixlAgent.create({
    name: `mb-${crypto.randomUUID()}`,
    engine: "builtin",
    metrics,
  });
  try {
    const PAGE = 1 << 20;
    const src = a.allocate(PAGE * 16);
    const dst = b.allocate(PAGE * 16);
    a.registerMemory(src);
    b.registerMemory(dst);
    const peer = a.addRemoteAgent(b.localMetadata());
    const local = a.prepDescList("", DescList.pages(src, PAGE, 16));
    using theirs = DescList.deserialize(DescList.pages(dst, PAGE, 16).serialize());
    const remote = a.prepDescList(peer, theirs);
    src.bytes.fill(9);
    await a.transfer("WRITE", local, [0, 1, 2, 3], remote, [4, 5, 6, 7], { notification: "n" });
    await a.transfer("READ", local, [8], remote, [9]);
    // A reusable request, posted three times: each post is one transfer.
    using again = a.createTransfer("WRITE", local, [10], remote, [11]);
    for (let i = 0; i < 3; i++) if (again.post() === "pending") await again.wait(5000);
    assert.equal(dst.bytes[4 * PAGE], 9);
    assert.equal((await b.waitNotifications(5000)).length, 1);
    a.sendNotification(peer, "side note");
    assert.equal((await b.waitNotifications(5000)).length, 1);

    const op = (o: string, status = "SUCCESS") => ({ op: o, status });
    assert.equal(await value(metrics, "kvport_agent_transfers_total", op("WRITE")), 4);
    assert.equal(await value(metrics, "kvport_agent_transfers_total", op("READ")), 1);
    assert.equal(
      await value(metrics, "kvport_agent_transfer_bytes_total", { op: "WRITE" }),
      7 * PAGE,
    );
    assert.equal(await value(metrics, "kvport_agent_transfer_bytes_total", { op: "READ" }), PAGE);
    // Every request here is >= 1 MiB, so each is timed, whether it completed in the post.
    assert.equal(await value(metrics, "kvport_agent_transfer_seconds", { op: "WRITE" }), 4);
    assert.equal(await value(metrics, "kvport_agent_transfers_in_flight"), 0);
    const notes = (d: string) =>
      value(metrics, "kvport_agent_notifications_total", { direction: d });
    assert.equal(await notes("received"), 2);
    assert.equal(await notes("sent"), 1);
    assert.equal(await value(metrics, "kvport_agents", { engine: "builtin" }), 2);
    const mem = await value(metrics, "kvport_agent_posts_total", { path: "mem" });
    assert.equal(mem, 5, "five same-host posts, each through shared memory");
  } finally {
    await a.close();
    await b.close();
  }
  // The engine's counters outlive the agents; the live-agent gauge does not.
  assert.equal(await value(metrics, "kvport_agent_posts_total", { path: "mem" }), 5);
  assert.equal(await value(metrics, "kvport_agents"), undefined);
});

test(
  "metrics agent: a failed post is counted under its NIXL status name",
  { skip: noLib },
  async () => {
    const metrics = new MetricsRegistry();
    await using a = await NixlAgent.create({
      name: `fa-${crypto.randomUUID()}`,
      engine: "builtin",
      metrics,
    });
    await using b = await NixlAgent.create({
      name: `fb-${crypto.randomUUID()}`,
      engine: "builtin",
      metrics,
    });
    const src = a.allocate(1 << 16);
    const dst = b.allocate(1 << 16);
    a.registerMemory(src);
    const regB = b.registerMemory(dst);
    const peer = a.addRemoteAgent(b.localMetadata());
    const local = a.prepDescList("", DescList.pages(src, 4096, 16));
    using theirs = DescList.deserialize(DescList.pages(dst, 4096, 16).serialize());
    const remote = a.prepDescList(peer, theirs);
    regB.deregister(); // the peer's pages are gone: the post must fail
    const e = await a.transfer("WRITE", local, [0], remote, [0]).then(() => null, (x) => x);
    assert.ok(e instanceof NixlError, `expected a NixlError, got ${e}`);
    assert.equal(await value(metrics, "kvport_agent_transfers_total", { status: e.statusName }), 1);
    assert.equal(await value(metrics, "kvport_agent_transfers_total", { status: "SUCCESS" }), 0);
    assert.equal(await value(metrics, "kvport_agent_transfer_bytes_total"), 0);
  },
);

test("metrics agent: a disabled registry records nothing", { skip: noLib }, async () => {
  const metrics = new MetricsRegistry({ enabled: false });
  await using a = await NixlAgent.create({
    name: `da-${crypto.randomUUID()}`,
    engine: "builtin",
    metrics,
  });
  const buf = a.allocate(1 << 16);
  a.registerMemory(buf);
  const local = a.prepDescList("", DescList.pages(buf, 4096, 16));
  const self = a.prepDescList(a.name, DescList.pages(buf, 4096, 16));
  await a.transfer("WRITE", local, [0], self, [1]);
  const names = [...(await families(metrics)).keys()];
  assert.deepEqual(names, ["kvport_metrics_collector_errors_total"]);
});

// ------------------------------------------------------------------------ PD --

const SHAPE = [2, 2, 16, 32] as const;
const PAGE = chunkBytes(MemoryFormat.KV_2LTD, SHAPE, "bfloat16")!; // 4096

test("metrics pd: chunks and bytes sent and landed, batches, allocation waits and timeouts, pages", async () => {
  const metrics = new MetricsRegistry();
  const rx = await PdReceiver.create({
    host: "127.0.0.1",
    initPort: 0,
    allocPort: 0,
    bufferSize: 4 * PAGE,
    pageSize: PAGE,
    chunkSize: 16,
    channelType: "mock_memory",
    allocationTimeoutMs: 300,
    tpRank: 1,
    metrics,
  });
  const tx = await PdSender.create({
    bufferSize: 8 * PAGE,
    pageSize: PAGE,
    channelType: "mock_memory",
    allocTimeoutMs: 3000,
    tpRank: 1,
    metrics,
  });
  try {
    const spec = (reqId: string) => ({
      reqId,
      receiverHost: "127.0.0.1",
      receiverInitPort: [0, rx.initPort],
      receiverAllocPort: [0, rx.allocPort],
      isLastPrefill: true,
    });
    const send = async (reqId: string, n: number) => {
      const pages = await tx.allocate(n);
      const keys = pages.map((_, i) => testKey(reqId, i, 1, 2));
      keys.forEach((k, i) => fillFor(k, tx.channel.pages[pages[i]]));
      return await tx.send(spec(reqId), {
        keys,
        pages,
        shape: SHAPE,
        dtype: "bfloat16",
        lastChunkToks: 16,
      });
    };
    await send("r1", 3);
    await rx.waitFor([0, 1, 2].map((i) => testKey("r1", i, 1, 2)), 5000);
    // One page left: a batch of 2 waits for pages; one is freed 100 ms later.
    setTimeout(() => rx.remove(testKey("r1", 0, 1, 2)), 100);
    await send("r2", 2);
    // Nothing is freed now: the next batch times out (answered -1, the batch fails).
    await assert.rejects(send("r3", 4), (e) => e instanceof PdSendError && e.stage === "alloc");

    const rank = { tp_rank: "1" };
    assert.equal(await value(metrics, "kvport_pd_sent_chunks_total", { ...rank, peer: rx.id }), 5);
    assert.equal(await value(metrics, "kvport_pd_sent_bytes_total", rank), 5 * PAGE);
    assert.equal(await value(metrics, "kvport_pd_received_chunks_total", rank), 5);
    assert.equal(await value(metrics, "kvport_pd_received_bytes_total", rank), 5 * PAGE);
    assert.equal(await value(metrics, "kvport_pd_send_batches_total", { result: "ok" }), 2);
    assert.equal(await value(metrics, "kvport_pd_send_batches_total", { result: "alloc" }), 1);
    assert.equal(await value(metrics, "kvport_pd_send_seconds", rank), 2);
    assert.equal(await value(metrics, "kvport_pd_alloc_requests_total", { result: "ok" }), 2);
    assert.equal(await value(metrics, "kvport_pd_alloc_requests_total", { result: "timeout" }), 1);
    assert.equal(await value(metrics, "kvport_pd_alloc_waits_total", rank), 2, "r2 and r3 waited");
    const wait = (await families(metrics)).get("kvport_pd_alloc_wait_seconds")!;
    const w = wait.samples[0] as { sum: number; count: number };
    assert.equal(w.count, 2);
    assert.ok(w.sum >= 0.3 + 0.05, `waited ~0.1 s and ~0.3 s, summed ${w.sum}`);
    assert.equal(await value(metrics, "kvport_pd_handshakes_total", { kind: "first" }), 1);
    assert.equal(
      await value(metrics, "kvport_channel_pages_total", {
        role: "sender",
        op: "WRITE",
        peer: rx.id,
      }),
      5,
    );
    assert.equal(await value(metrics, "kvport_channel_bytes_total", { role: "sender" }), 5 * PAGE);
    assert.equal(
      await value(metrics, "kvport_channel_handshakes_total", { side: "initiator", result: "ok" }),
      1,
    );
    assert.equal(
      await value(metrics, "kvport_channel_handshakes_total", { side: "responder", result: "ok" }),
      1,
    );
    // Pages now: the receiver holds 4 keys (r1/1, r1/2, r2/0, r2/1), all its pages.
    assert.equal(await value(metrics, "kvport_pd_pages", { role: "receiver", state: "leased" }), 4);
    assert.equal(await value(metrics, "kvport_pd_pages", { role: "receiver", state: "free" }), 0);
    assert.equal(await value(metrics, "kvport_pd_keys", { state: "landed" }), 4);
    assert.equal(await value(metrics, "kvport_pd_pages", { role: "sender", state: "free" }), 8);
  } finally {
    await tx.close();
    await rx.close();
  }
  assert.equal(await value(metrics, "kvport_pd_pages"), undefined, "closed: no pages reported");
  assert.equal(await value(metrics, "kvport_pd_sent_chunks_total"), 5, "counters stay");
});

// ---------------------------------------------------------------- side channel --

test("metrics wire: connections made and open, a peer announcing a frame over the limit refused", async () => {
  const metrics = new MetricsRegistry();
  const rep = await RepSocket.bind("tcp://127.0.0.1:0", { metrics, maxMessageBytes: 1024 });
  try {
    const req = ReqSocket.connect(`tcp://127.0.0.1:${rep.port}`, { metrics });
    await req.waitForPeer({ timeoutMs: 5000 });
    await rep.waitForPeer({ timeoutMs: 5000 });
    assert.equal(await value(metrics, "kvport_wire_connections_total", { socket: "REQ" }), 1);
    assert.equal(await value(metrics, "kvport_wire_connections_total", { socket: "REP" }), 1);
    assert.equal(await value(metrics, "kvport_wire_connections_open"), 2);
    await req.close();
    const deadline = Date.now() + 5000;
    while (rep.peers.length > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(await value(metrics, "kvport_wire_connections_open"), 0);

    // A greeting, then a frame announcing 1 MiB to a socket that takes 1 KiB.
    const ready = zmtpFrame(
      new Uint8Array([
        5,
        ..."READY".split("").map((c) => c.charCodeAt(0)),
        11,
        ..."Socket-Type"
          .split("").map((c) => c.charCodeAt(0)),
        0,
        0,
        0,
        3,
        82,
        69,
        81,
      ]),
      { command: true },
    );
    const big = zmtpFrame(new Uint8Array(0), { announce: 1 << 20 });
    const { closedByPeer } = await rawExchange(rep.port, [zmtpGreeting(), ready, big], 1000);
    assert.ok(closedByPeer, "the peer was disconnected");
    assert.equal(
      await value(metrics, "kvport_wire_refused_total", { socket: "REP", reason: "protocol" }),
      1,
    );
  } finally {
    await rep.close();
  }
});

// -------------------------------------------------------------------- storage --

test("metrics storage: puts, gets by result, evictions, keys and bytes; counters outlive the store", async () => {
  const metrics = new MetricsRegistry();
  const { dir, cleanup } = tempDir();
  try {
    const SIZE = 8192;
    const store = await NixlStorageBackend.create({
      path: dir,
      pageSize: SIZE,
      poolSize: 2,
      bufferSize: SIZE * 4,
      io: new FsStorageIo(4 * (SIZE + 8192)),
      metrics,
    });
    try {
      for (const k of ["a", "b", "c"]) await store.put(k, pattern(SIZE, k.charCodeAt(0)));
      assert.equal(await store.get("a"), undefined, "evicted (2 slots)");
      assert.deepEqual(await store.get("c"), pattern(SIZE, "c".charCodeAt(0)));
      const l = { backend: "POSIX", mode: "static" };
      assert.equal(await value(metrics, "kvport_storage_puts_total", l), 3);
      assert.equal(await value(metrics, "kvport_storage_gets_total", { ...l, result: "hit" }), 1);
      assert.equal(await value(metrics, "kvport_storage_gets_total", { ...l, result: "miss" }), 1);
      assert.equal(await value(metrics, "kvport_storage_evictions_total", l), 1);
      assert.equal(await value(metrics, "kvport_storage_keys", l), 2);
      assert.equal(await value(metrics, "kvport_storage_bytes", l), 2 * SIZE);
      assert.equal(await value(metrics, "kvport_storage_free_slots", l), 0);
      assert.equal(await value(metrics, "kvport_storage_corrupt_total", l), 0);
      assert.ok(store.pin("b"));
      assert.equal(await value(metrics, "kvport_storage_pinned_keys", l), 1);
    } finally {
      await store.close();
    }
    assert.equal(await value(metrics, "kvport_storage_puts_total"), 3);
    assert.equal(await value(metrics, "kvport_storage_keys"), undefined);
  } finally {
    cleanup();
  }
});

// ------------------------------------------------------------------------ P2P --

test("metrics p2p: lookups, hits, fetched chunks and bytes; a failed lookup by its code", async () => {
  const metrics = new MetricsRegistry();
  await using registry = await startRegistry();
  await using holder = await instance(registry, "m-holder", { metrics });
  await using requester = await instance(registry, "m-requester", { metrics });
  const keys = await storeDoc(holder, "M", 4);
  await waitForHits(requester, keys, 4);
  const before = await value(metrics, "kvport_p2p_lookups_total", { tp_rank: "0" }) ?? 0;
  const got = await requester.retrieve(keys);
  assert.equal(got.hitChunks, 4);
  requester.release(got.pages);
  const miss = await requester.retrieve(docKeys("nothing", 2));
  assert.equal(miss.hitChunks, 0);
  const page = requester.channel.pageSize;
  assert.equal(await value(metrics, "kvport_p2p_lookups_total"), before + 2);
  assert.ok((await value(metrics, "kvport_p2p_lookup_hits_total"))! >= 1);
  assert.equal(await value(metrics, "kvport_p2p_fetched_chunks_total"), 4);
  assert.equal(await value(metrics, "kvport_p2p_fetched_bytes_total"), 4 * page);
  assert.equal(await value(metrics, "kvport_p2p_served_chunks_total"), 4);
  assert.equal(await value(metrics, "kvport_p2p_served_total", { result: "ok" }), 1);
  assert.equal(await value(metrics, "kvport_p2p_admitted_chunks_total"), 4);
  assert.equal(await value(metrics, "kvport_p2p_chunks"), 4);

  // No registry to ask: a miss with an error, counted by its code.
  await using lonely = await instance(null, "m-lonely", { metrics });
  const r = await lonely.lookup(keys);
  assert.equal(r.error?.code, "INVALID_ARGUMENT");
  assert.equal(
    await value(metrics, "kvport_p2p_errors_total", { op: "lookup", code: "INVALID_ARGUMENT" }),
    1,
  );
});
