/**
 * Page leases of PD (issue 12): a sender that gives up never leaves pages reserved on
 * the receiver, a cancelled WRITE that lands late never reaches the page's next owner,
 * and a reservation with a deadline comes back by itself. Every check reads bytes or
 * page counts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ChannelTimeoutError,
  chunkBytes,
  createTransferChannel,
  type DisaggSpec,
  loadConfig,
  MemoryFormat,
  PdAllocRefusedError,
  PdReceiver,
  type PdReceiverOptions,
  PdSender,
  PdSendError,
} from "../mod.ts";
import { openRequester } from "../src/channel/control.ts";
import { allocRequest, readAllocResponse } from "../src/pd/alloc_wire.ts";
import { checkFor, fillFor, loopbackSpec, mockReceiver, testKey } from "./helpers/pd_util.ts";

const SHAPE = [2, 2, 16, 32] as const;
const TOKENS = 16;
const PAGE = chunkBytes(MemoryFormat.KV_2LTD, SHAPE, "bfloat16")!; // 4096

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function eventually(cond: () => boolean, ms = 3000): Promise<boolean> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (cond()) return true;
    await pause(5);
  }
  return cond();
}

function receiver(pages: number, extra: Partial<PdReceiverOptions> = {}) {
  return mockReceiver(pages, PAGE, TOKENS, extra);
}

function sender(allocTimeoutMs: number) {
  return PdSender.create({
    bufferSize: 8 * PAGE,
    pageSize: PAGE,
    channelType: "mock_memory",
    allocTimeoutMs,
  });
}

const spec = loopbackSpec;

async function sendKeys(tx: PdSender, s: DisaggSpec, keys: string[]) {
  const pages = await tx.allocate(keys.length);
  keys.forEach((k, i) => fillFor(k, tx.channel.pages[pages[i]]));
  return tx.send(s, { keys, pages, shape: SHAPE, dtype: "bfloat16", lastChunkToks: TOKENS });
}

/** An AllocRequest written by hand, as an (async-generation) sender writes it. */
function allocFor(keys: string[], reqId: string) {
  return allocRequest("async", {
    keys,
    fmt: MemoryFormat.KV_2LTD,
    shape: [...SHAPE],
    dtype: "bfloat16",
    last_chunk_toks: TOKENS,
  }, { reqId, isLastBatch: true, totalChunks: keys.length });
}

test("pd leases: a sender that gives up mid-allocation leaves no pages; 1,000 more requests never starve", async () => {
  await using rx = await receiver(4);
  await using tx = await sender(3000);
  // Fill the receiver: every page holds a landed key.
  const held = Array.from({ length: 4 }, (_, i) => testKey("held", i));
  await sendKeys(tx, spec(rx, "held"), held);
  await rx.waitFor(held, 2000);
  assert.equal(rx.stats.freePages, 0);
  // A sender with a short deadline asks for the whole buffer and gives up.
  {
    await using quitter = await sender(300);
    const gaveUp = [0, 1, 2, 3].map((i) => testKey("quitter", i));
    await assert.rejects(sendKeys(quitter, spec(rx, "quitter"), gaveUp), (e) => {
      assert.ok(e instanceof PdSendError);
      assert.equal(e.stage, "alloc");
      assert.equal(e.code, "TIMEOUT");
      return true;
    });
  }
  // The pages come free after the sender left: none may be reserved for it.
  // (Each AllocRequest it made and gave up on counts as abandoned on the receiver.)
  assert.ok(
    await eventually(() => rx.stats.abandoned >= 1 && rx.pool.waiting === 0),
    `the receiver saw it give up: ${JSON.stringify(rx.stats)}`,
  );
  for (const k of held) assert.ok(rx.remove(k));
  await pause(50);
  assert.equal(rx.stats.freePages, 4, "no page is reserved for the sender that left");
  assert.deepEqual(rx.keys(), []);
  // 1,000 more requests of 1..4 chunks: each one is served, every byte checked.
  for (let r = 0; r < 1000; r++) {
    const n = 1 + (r % 4);
    const keys = Array.from({ length: n }, (_, i) => testKey(`after-${r}`, i));
    const res = await sendKeys(tx, spec(rx, `after-${r}`), keys);
    assert.equal(res.sent, n);
    await rx.waitFor(keys, 2000);
    for (const k of keys) {
      const got = rx.retrieve(k);
      assert.ok(got && checkFor(k, got.data), `bytes of ${k}`);
    }
  }
  assert.equal(rx.stats.freePages, 4);
  assert.equal(rx.stats.quarantinedPages, 0);
  assert.equal(rx.pool.leases, 0);
  assert.equal(tx.pool.free, tx.pool.pageCount, "the sender's staging pages all came back");
});

test("pd leases: the receiver's page wait ends before the sender's deadline (one setting)", async () => {
  const cpu = {
    pd_buffer_device: "cpu",
    pd_buffer_size: 2 * PAGE,
    transfer_channel: "mock_memory",
    pd_allocation_timeout_sec: 0.5,
  };
  const fixture = (name: string) => new URL(`./fixtures/pd/${name}`, import.meta.url).pathname;
  const dec =
    loadConfig({ file: fixture("lmcache-decoder-config.yaml"), env: {}, overrides: cpu }).config;
  const pre = loadConfig({
    file: fixture("lmcache-prefiller-config.yaml"),
    env: {},
    overrides: { ...cpu, pd_buffer_size: 8 * PAGE, pd_skip_proxy_notification: true },
  }).config;
  await using rx = await PdReceiver.fromConfig(dec, {
    pageSize: PAGE,
    initPort: 0,
    allocPort: 0,
    chunkSize: TOKENS,
  });
  await using tx = await PdSender.fromConfig(pre, { pageSize: PAGE });
  const s = { ...spec(rx, "fill"), receiverHost: "localhost" };
  const fill = [testKey("fill", 0), testKey("fill", 1)];
  await sendKeys(tx, s, fill);
  // The buffer is full: the receiver answers "no free pages" after 80% of 500 ms, while
  // the sender still listens (it would have given up at 500 ms).
  const t0 = performance.now();
  await assert.rejects(sendKeys(tx, { ...s, reqId: "starved" }, [testKey("starved", 0)]), (e) => {
    assert.ok(e instanceof PdAllocRefusedError, String(e));
    assert.equal(e.reason, "no_free_pages");
    assert.match(e.detail, /1 page\(s\) wanted, 0 of 2 free after 400 ms/);
    return true;
  });
  assert.ok(performance.now() - t0 < 500, `refused after ${performance.now() - t0} ms`);
  assert.equal(rx.stats.allocTimeouts, 1);
  assert.equal(rx.stats.freePages, 0);
  assert.deepEqual(rx.keys().sort(), [...fill].sort());
});

test("pd leases: CancelNotif while a WRITE is in flight: the page's next owner never sees the old bytes", async () => {
  await using rx = await receiver(2, { cancelQuarantineMs: 300 });
  // The cancelling sender: control plane by hand, data plane a channel of its own.
  await using ch = await createTransferChannel({
    channelType: "mock_memory",
    role: "sender",
    bufferSize: 2 * PAGE,
    alignBytes: PAGE,
    tpRank: 0,
    peerInitUrl: null,
  });
  await ch.connect(rx.id, rx.initUrl);
  const req = await openRequester(rx.allocUrl, { timeoutMs: 2000 });
  try {
    const stale = testKey("stale", 0);
    const got = readAllocResponse(await req.request(allocFor([stale], "stale"), 2000));
    assert.ok(got.ok);
    const [page] = got.remote;
    // The sender's WRITE is slow; it gives up and cancels. The WRITE is still on its way.
    fillFor(stale, ch.pages[0]);
    await req.request({ type: "CancelNotif", req_id: "stale", keys: [stale] }, 2000);
    assert.equal(rx.contains(stale), false);
    assert.equal(rx.stats.cancelled, 1);
    assert.equal(rx.stats.quarantinedPages, 1, "the cancelled page sits out the quarantine");
    assert.equal(rx.stats.freePages, 1);
    // Another request gets a page meanwhile: not the cancelled one.
    await using tx = await sender(3000);
    const fresh = testKey("fresh", 0);
    await sendKeys(tx, spec(rx, "fresh"), [fresh]);
    await rx.waitFor([fresh], 2000);
    assert.notEqual(rx.info(fresh)!.page, page);
    // The late WRITE lands now, in the page it was given.
    await ch.write([0], { peerId: rx.id, remoteIndexes: [page] });
    assert.ok(checkFor(fresh, rx.view(fresh)!), "the new owner's bytes are its own");
    // Once the quarantine is over the page is free again; its next owner gets new bytes.
    assert.ok(await eventually(() => rx.stats.quarantinedPages === 0));
    assert.equal(rx.stats.freePages, 1);
    const next = testKey("next", 0);
    await sendKeys(tx, spec(rx, "next"), [next]);
    await rx.waitFor([next], 2000);
    assert.equal(rx.info(next)!.page, page);
    assert.ok(checkFor(next, rx.view(next)!));
    // A CancelNotif of another request does not drop keys that are not its own.
    const other = testKey("other", 0);
    rx.remove(next);
    const mine = readAllocResponse(await req.request(allocFor([other], "owner"), 2000));
    assert.ok(mine.ok);
    await req.request({ type: "CancelNotif", req_id: "someone-else", keys: [other] }, 2000);
    assert.equal(rx.contains(other), true);
  } finally {
    await req.close();
  }
});

test("pd leases: a reservation whose data never lands expires and returns its page", async () => {
  await using rx = await receiver(2, { reservationTtlMs: 150, cancelQuarantineMs: 100 });
  const req = await openRequester(rx.allocUrl, { timeoutMs: 2000 });
  try {
    const lost = testKey("lost", 0);
    const got = readAllocResponse(await req.request(allocFor([lost], "lost"), 2000));
    assert.ok(got.ok);
    assert.equal(rx.stats.freePages, 1);
    // The sender crashed before its WRITE: no data, no CancelNotif.
    assert.ok(await eventually(() => !rx.contains(lost)), "the reservation expired");
    assert.equal(rx.stats.expired, 1);
    // Handed to a peer, the page sits out the quarantine, then it is free.
    assert.ok(await eventually(() => rx.stats.freePages === 2));
  } finally {
    await req.close();
  }
  // Data that landed is kept past the reservation's lifetime.
  await using tx = await sender(3000);
  const kept = testKey("kept", 0);
  await sendKeys(tx, spec(rx, "kept"), [kept]);
  await rx.waitFor([kept], 2000);
  await pause(300);
  assert.ok(rx.contains(kept));
  assert.ok(checkFor(kept, rx.view(kept)!));
});

test("pd leases: a failed WRITE quarantines the sender's staging pages (it may still read them)", async () => {
  await using rx = await receiver(4, { cancelQuarantineMs: 200 });
  await using tx = await PdSender.create({
    bufferSize: 2 * PAGE,
    pageSize: PAGE,
    channelType: "mock_memory",
    allocTimeoutMs: 3000,
    transferTimeoutMs: 200,
  });
  const ch = tx.channel as { write: typeof tx.channel.write };
  const write = ch.write.bind(tx.channel);
  // The WRITE times out: as far as the sender knows, the transfer may still be running.
  ch.write = (_pages, spec) =>
    Promise.reject(new ChannelTimeoutError("WRITE", 200, { peerId: spec.peerId }));
  const keys = [testKey("late", 0), testKey("late", 1)];
  await assert.rejects(sendKeys(tx, spec(rx, "late"), keys), (e) => {
    assert.ok(e instanceof PdSendError);
    assert.equal(e.stage, "write");
    assert.equal(e.code, "TIMEOUT");
    return true;
  });
  assert.equal(tx.pool.quarantined, 2, "the staging pages sit out the quarantine");
  assert.equal(tx.pool.free, 0);
  await assert.rejects(tx.allocate(1, 50), { code: "TIMEOUT" });
  // The receiver was told (CancelNotif) and quarantines its pages too.
  assert.ok(await eventually(() => rx.stats.cancelled === 2));
  assert.equal(rx.stats.quarantinedPages, 2);
  assert.ok(await eventually(() => tx.pool.free === 2 && rx.stats.freePages === 4));
  ch.write = write;
  const again = await sendKeys(tx, spec(rx, "again"), keys);
  assert.equal(again.sent, 2);
  await rx.waitFor(keys, 2000);
  for (const k of keys) assert.ok(checkFor(k, rx.view(k)!));
});

test("pd leases: a sender's declared kvport_ttl_ms bounds its reservations, capped at 10 minutes; a bad claim sets none", async () => {
  await using rx = await receiver(4, { cancelQuarantineMs: 100 });
  const req = await openRequester(rx.allocUrl, { timeoutMs: 2000 });
  try {
    const reserve = async (reqId: string, ttl: unknown) => {
      const key = testKey(reqId, 0);
      const msg = { ...allocFor([key], reqId), kvport_ttl_ms: ttl };
      const got = readAllocResponse(await req.request(msg, 2000));
      assert.ok(got.ok, reqId);
      const lease = rx.pool.leaseOf(got.remote[0]);
      assert.ok(lease, `${reqId}: page ${got.remote[0]} is leased`);
      return { key, left: lease.deadline - performance.now() };
    };
    // Honoured: the key goes once the sender can no longer write, its page comes back.
    const short = await reserve("short", 200);
    assert.ok(short.left > 0 && short.left <= 200, `short: ${short.left} ms left`);
    assert.ok(await eventually(() => !rx.contains(short.key)), "the short reservation expired");
    // A peer's claim is capped: ten days, or an int beyond 2^53, become ten minutes.
    const long = await reserve("long", 10 * 86_400_000);
    assert.ok(long.left > 590_000 && long.left <= 600_000, `long: ${long.left} ms left`);
    const huge = await reserve("huge", 2n ** 60n);
    assert.ok(huge.left > 590_000 && huge.left <= 600_000, `huge: ${huge.left} ms left`);
    // Not positive: no deadline (as for LMCache's senders, which send none). A claim of
    // the wrong type cannot even be written: the wire's int field refuses it by name.
    for (const [id, bad] of [["neg", -5], ["zero", 0]] as const) {
      assert.equal((await reserve(id, bad)).left, Infinity, id);
      rx.remove(testKey(id, 0));
    }
    assert.ok(rx.contains(long.key));
    assert.equal(rx.stats.expired, 1);
  } finally {
    await req.close();
  }
});
