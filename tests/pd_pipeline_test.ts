// PD sends pipelined: the AllocRequest of batch k+1 goes out while batch k is written.
// Every byte arrives in order, a failure or timeout mid-pipeline releases every page on
// both sides, and the allocation socket carries exactly the messages LMCache's (serial)
// sender would write, in the same order.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  ChannelError,
  chunkBytes,
  MemoryFormat,
  PdSender,
  type PdSenderStage,
  ProxyNotifier,
  type SendBatch,
} from "../mod.ts";
import { allocRequest, allocResponse } from "../src/pd/mod.ts";
import { serveRequests } from "../src/channel/control.ts";
import { createTransferChannel } from "../src/channel/factory.ts";
import type { SideMessage } from "../src/channel/types.ts";
import { checkFor, fillFor, mockReceiver, portOf, testKey } from "./helpers/pd_util.ts";

const SHAPE = [2, 2, 16, 32]; // KV_2LTD bf16, 16 tokens: 4096 bytes
const PAGE = chunkBytes(MemoryFormat.KV_2LTD, SHAPE, "bfloat16")!;

function receiver(pages: number, allocationTimeoutMs = 5000) {
  return mockReceiver(pages, PAGE, 16, { allocationTimeoutMs });
}

function spec(initPort: number, allocPort: number, reqId: string, last: boolean) {
  return {
    reqId,
    receiverHost: "127.0.0.1",
    receiverInitPort: initPort,
    receiverAllocPort: allocPort,
    isLastPrefill: last,
  };
}

/** Pages for `keys`, filled with their content, as one batch. */
async function batchOf(tx: PdSender, keys: string[]): Promise<SendBatch> {
  const pages = await tx.allocate(keys.length, 1000);
  keys.forEach((k, i) => fillFor(k, tx.channel.pages[pages[i]]));
  return { keys, pages, shape: SHAPE, dtype: "bfloat16", lastChunkToks: 16 };
}

test("pd pipeline: batches sent without waiting land in order, every byte checked", async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  await using rx = await receiver(32);
  const stages: [PdSenderStage, number][] = [];
  await using tx = await PdSender.create({
    bufferSize: 16 * PAGE,
    pageSize: PAGE,
    channelType: "mock_memory",
    proxyHost: "127.0.0.1",
    proxyPort: proxy.port,
    timeline: (stage, _req, keys) =>
      stages.push([stage, parseInt(keys[0].split("@")[4].at(-1)!, 16)]),
  });
  const landedOrder: string[] = [];
  rx.onLanded((keys) => landedOrder.push(...keys));
  const keys = Array.from({ length: 16 }, (_, i) => testKey("pipe", i));
  const batches: SendBatch[] = [];
  for (let b = 0; b < 8; b++) batches.push(await batchOf(tx, keys.slice(2 * b, 2 * b + 2)));
  // All eight in flight at once; the first handshakes.
  const results = await Promise.all(
    batches.map((batch, b) => tx.send(spec(rx.initPort, rx.allocPort, "pipe", b === 7), batch)),
  );
  assert.deepEqual(results.map((r) => r.sent), [2, 2, 2, 2, 2, 2, 2, 2]);
  assert.deepEqual(results.map((r) => r.handshook), [true, ...Array(7).fill(false)]);
  assert.deepEqual(results.map((r) => r.notified), [...Array(7).fill(false), true]);
  await proxy.waitFor("pipe", { timeoutMs: 2000 });
  await rx.waitFor(keys, 2000);
  assert.deepEqual(landedOrder, keys, "the receiver saw the batches land in send order");
  for (const k of keys) assert.ok(checkFor(k, rx.retrieve(k)!.data), `content of ${k}`);
  assert.equal(tx.pool.free, 16, "every sender page is back");
  assert.equal(rx.stats.freePages, 32);
  // Overlap: some batch's AllocRequest went out before the batch ahead of it was written
  // (batch b's first key ends in hex digit 2b).
  const at = (stage: PdSenderStage, digit: number) =>
    stages.findIndex(([s, d]) => s === stage && d === digit);
  const overlapped = [0, 1, 2, 3, 4, 5, 6].filter((b) => {
    const next = (2 * (b + 1)) % 16;
    return at("alloc_sent", next) >= 0 && at("alloc_sent", next) < at("written", 2 * b);
  });
  assert.ok(overlapped.length > 0, "no AllocRequest overlapped the write of the batch before it");
  // Stages in order per batch: alloc before write, writes in send order.
  const written = stages.filter(([s]) => s === "written").map(([, d]) => d);
  assert.deepEqual(written, [0, 2, 4, 6, 8, 10, 12, 14]);
});

test("pd pipeline: a write failing mid-pipeline fails the later batches and frees every page", async () => {
  await using rx = await receiver(32);
  await using tx = await PdSender.create({
    bufferSize: 16 * PAGE,
    pageSize: PAGE,
    channelType: "mock_memory",
  });
  // The second WRITE fails (as a dead peer would make it).
  const write = tx.channel.write.bind(tx.channel);
  let writes = 0;
  (tx.channel as { write: typeof write }).write = (local, s) =>
    ++writes === 2
      ? Promise.reject(new ChannelError("TRANSFER_FAILED", "injected failure"))
      : write(local, s);
  const keys = Array.from({ length: 8 }, (_, i) => testKey("fail", i));
  const batches: SendBatch[] = [];
  for (let b = 0; b < 4; b++) batches.push(await batchOf(tx, keys.slice(2 * b, 2 * b + 2)));
  const settled = await Promise.allSettled(
    batches.map((batch, b) => tx.send(spec(rx.initPort, rx.allocPort, "fail", b === 3), batch)),
  );
  assert.equal(settled[0].status, "fulfilled");
  assert.equal(settled[1].status, "rejected");
  const e1 = (settled[1] as PromiseRejectedResult).reason;
  assert.equal(e1.stage, "write");
  assert.match(e1.message, /injected failure/);
  for (const s of settled.slice(2)) {
    assert.equal(s.status, "rejected");
    assert.match(
      (s as PromiseRejectedResult).reason.message,
      /an earlier batch of this request failed/,
    );
  }
  // The failed batch's pages sit out the quarantine (its WRITE may still read them); the
  // batches after it never wrote, so theirs are free at once.
  assert.equal(tx.pool.quarantined, 2, "the failed WRITE's pages are quarantined");
  assert.equal(tx.pool.free, 14, "every other sender page is back");
  // The receiver holds the first batch only: what it allocated for the others was
  // cancelled (CancelNotif) or never asked for.
  await rx.waitFor(keys.slice(0, 2), 2000);
  assert.deepEqual(rx.keys().sort(), keys.slice(0, 2).sort());
  // Cancelled reservations sit out the receiver's quarantine (a late WRITE may land).
  assert.equal(rx.stats.freePages + rx.stats.quarantinedPages, 30);
  assert.ok(checkFor(keys[0], rx.retrieve(keys[0])!.data));
  assert.ok(checkFor(keys[1], rx.retrieve(keys[1])!.data));
  // The next request handshakes again and goes through.
  const again = await tx.send(
    spec(rx.initPort, rx.allocPort, "after", true),
    await batchOf(tx, [testKey("after", 0)]),
  );
  assert.equal(again.sent, 1);
  assert.equal(again.handshook, true);
  await rx.waitFor([testKey("after", 0)], 2000);
  assert.ok(checkFor(testKey("after", 0), rx.retrieve(testKey("after", 0))!.data));
});

test("pd pipeline: an AllocRequest timing out mid-pipeline frees the sender's pages; the receiver keeps nothing half-done", async () => {
  // 4 pages: the first two batches fill them, the third waits for pages that never come.
  await using rx = await receiver(4, 600);
  await using tx = await PdSender.create({
    bufferSize: 16 * PAGE,
    pageSize: PAGE,
    channelType: "mock_memory",
    allocTimeoutMs: 300,
  });
  const keys = Array.from({ length: 8 }, (_, i) => testKey("slow", i));
  const batches: SendBatch[] = [];
  for (let b = 0; b < 4; b++) batches.push(await batchOf(tx, keys.slice(2 * b, 2 * b + 2)));
  const settled = await Promise.allSettled(
    batches.map((batch, b) => tx.send(spec(rx.initPort, rx.allocPort, "slow", b === 3), batch)),
  );
  assert.deepEqual(settled.map((s) => s.status), [
    "fulfilled",
    "fulfilled",
    "rejected",
    "rejected",
  ]);
  const e2 = (settled[2] as PromiseRejectedResult).reason;
  assert.equal(e2.stage, "alloc");
  assert.equal(e2.code, "TIMEOUT");
  assert.match((settled[3] as PromiseRejectedResult).reason.message, /an earlier batch/);
  assert.equal(tx.pool.free, 16, "every sender page is back");
  await rx.waitFor(keys.slice(0, 4), 2000);
  // The receiver's own wait for pages ends (pd_allocation_timeout_sec): no waiter stays,
  // and it holds only the four chunks that landed, each intact.
  const deadline = Date.now() + 3000;
  while (rx.pool.waiting > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal(rx.pool.waiting, 0);
  assert.deepEqual(rx.keys().sort(), keys.slice(0, 4).sort());
  for (const k of keys.slice(0, 4)) assert.ok(checkFor(k, rx.retrieve(k)!.data));
  assert.equal(rx.stats.freePages, 4);
});

test("pd pipeline: the allocation socket carries LMCache's serial message sequence", async () => {
  // A decoder made of parts: a mock channel answering handshakes, and a REP socket that
  // records every message and answers as LMCache's receiver does (fresh pages).
  const ch = await createTransferChannel({
    channelType: "mock_memory",
    role: "receiver",
    bufferSize: 16 * PAGE,
    alignBytes: PAGE,
    tpRank: 0,
    peerInitUrl: "127.0.0.1:0",
    backends: null,
    device: "cpu",
  });
  await using _ch = { [Symbol.asyncDispose]: () => ch.close() };
  const seen: SideMessage[] = [];
  let next = 0;
  const rep = await serveRequests("127.0.0.1:0", (msg) => {
    seen.push(msg);
    const n = (msg.keys as string[]).length;
    const pages = Array.from({ length: n }, () => next++);
    return Promise.resolve(allocResponse("async", pages, []));
  });
  await using _rep = { [Symbol.asyncDispose]: () => rep.close() };
  await using tx = await PdSender.create({
    bufferSize: 16 * PAGE,
    pageSize: PAGE,
    channelType: "mock_memory",
  });
  const initPort = portOf(ch.initUrl!);
  const allocPort = portOf(rep.url);
  const keys = Array.from({ length: 12 }, (_, i) => testKey("seq", i));
  const batches: SendBatch[] = [];
  for (let b = 0; b < 4; b++) batches.push(await batchOf(tx, keys.slice(3 * b, 3 * b + 3)));
  await Promise.all(
    batches.map((batch, b) => tx.send(spec(initPort, allocPort, "seq", b === 3), batch)),
  );
  // What a serial sender writes: one AllocRequest per batch, in batch order, nothing else.
  const expected = batches.map((b) =>
    allocRequest("async", {
      keys: b.keys as string[],
      fmt: MemoryFormat.KV_2LTD,
      shape: SHAPE,
      dtype: "bfloat16",
      last_chunk_toks: 16,
    }, { reqId: "seq", isLastBatch: false })
  );
  const plain = (m: SideMessage) =>
    JSON.parse(JSON.stringify(m, (_k, v) => typeof v === "bigint" ? Number(v) : v));
  assert.deepEqual(seen.map(plain), expected.map(plain));
  // And the data is where the AllocResponses said, byte for byte.
  keys.forEach((k, i) => assert.ok(checkFor(k, ch.pages[i]), `content of ${k} in page ${i}`));
});

test("pd pipeline: another request's WRITE to the same receiver does not wait for one in flight", async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  await using rx = await receiver(32);
  await using tx = await PdSender.create({
    bufferSize: 16 * PAGE,
    pageSize: PAGE,
    channelType: "mock_memory",
    proxyHost: "127.0.0.1",
    proxyPort: proxy.port,
  });
  // Request "slow"'s WRITE is held until "fast" has landed (a long copy, a slow link).
  const write = tx.channel.write.bind(tx.channel);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let held = 0;
  (tx.channel as { write: typeof write }).write = async (local, s) => {
    if (local.some((p) => typeof p === "number" && slowPages.has(p))) {
      held++;
      await gate;
    }
    return write(local, s);
  };
  const slowKeys = [testKey("slow", 0), testKey("slow", 1)];
  const fastKeys = [testKey("fast", 0), testKey("fast", 1)];
  const slow = await batchOf(tx, slowKeys);
  const slowPages = new Set(slow.pages);
  const fast = await batchOf(tx, fastKeys);
  const slowSent = tx.send(spec(rx.initPort, rx.allocPort, "slow", true), slow);
  // Whatever fails below, the held WRITE goes on (else closing the sender waits for it).
  await using _open = { [Symbol.asyncDispose]: () => Promise.resolve(release()) };
  let timer: ReturnType<typeof setTimeout> | undefined;
  const fastResult = await Promise.race([
    tx.send(spec(rx.initPort, rx.allocPort, "fast", true), fast),
    new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error("the fast request waited behind the held WRITE")),
        5000,
      );
    }),
  ]).finally(() => clearTimeout(timer));
  assert.equal(held, 1, "the slow request's WRITE is in flight, held");
  assert.equal(fastResult.sent, 2);
  assert.equal(fastResult.notified, true);
  await proxy.waitFor("fast", { timeoutMs: 2000 });
  await rx.waitFor(fastKeys, 2000);
  for (const k of fastKeys) assert.ok(checkFor(k, rx.retrieve(k)!.data), `content of ${k}`);
  assert.notEqual(rx.info(slowKeys[0])?.landed, true, "nothing of the held request landed yet");
  release();
  const slowResult = await slowSent;
  assert.equal(slowResult.sent, 2);
  await rx.waitFor(slowKeys, 2000);
  for (const k of slowKeys) assert.ok(checkFor(k, rx.retrieve(k)!.data), `content of ${k}`);
  assert.equal(tx.pool.free, 16, "every sender page is back");
});
