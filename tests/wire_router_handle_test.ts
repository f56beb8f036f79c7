/**
 * `RouterSocket.handle`: messages handed to a handler in the turn their bytes were read
 * while it is idle, queued (in order) while a call's promise is unsettled, failures
 * reported; the P2P registry, which answers its lookups that way, queues no request of an
 * idle socket (it queued each one for its `for await` loop before); and `RepSocket.serve`
 * likewise hands requests over unqueued, in order per connection. Checked by the order of
 * the bytes answered and by counting the inbound queue's pushes, not by time.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DealerSocket,
  Inbox,
  RepSocket,
  ReqSocket,
  RouterSocket,
  WireError,
} from "../src/channel/wire/mod.ts";
import { askingClient, reportHolder, startRegistry } from "./helpers/p2p_util.ts";
import { b, s, until } from "./wire/util.ts";

const FAST = { timeoutMs: 2000, reconnectIntervalMs: 20 };
const E = new Uint8Array(0);

/** Counts `Inbox.push` calls (items queued for a receiver) while `fn` runs. */
async function countingQueued(fn: () => Promise<void>): Promise<number> {
  const proto = Inbox.prototype as unknown as { push: (item: unknown) => void };
  const original = proto.push;
  let n = 0;
  proto.push = function (item) {
    n++;
    original.call(this, item);
  };
  try {
    await fn();
  } finally {
    proto.push = original;
  }
  return n;
}

test("ROUTER handle: idle messages go to the handler unqueued, those arriving during a call wait their turn, in order", async () => {
  const errors: WireError[] = [];
  await using router = await RouterSocket.bind("127.0.0.1:0", {
    ...FAST,
    onError: (e) => errors.push(e),
  });
  const seen: string[] = [];
  let release: (() => void) | null = null;
  const stop = router.handle((message) => {
    const body = s(message[message.length - 1]);
    seen.push(body);
    if (body === "boom") throw new Error("handler broke");
    if (body === "reject") return Promise.reject(new Error("handler rejected"));
    const answer = () => router.send([message[0], E, b(`re:${body}`)]);
    if (body === "slow") return new Promise<void>((r) => (release = r)).then(answer);
    return answer();
  });
  await using dealer = DealerSocket.connect(`127.0.0.1:${router.port}`, FAST);
  await dealer.waitForPeer();
  await until(() => router.peers.length === 1);
  const replies: string[] = [];
  const take = async (n: number) => {
    for (let i = 0; i < n; i++) replies.push(s((await dealer.receive())[1]));
  };
  const queued = await countingQueued(async () => {
    await dealer.send([E, b("one")]);
    await take(1);
  });
  assert.equal(queued, 1, "only the DEALER's reply was queued (for receive()), not the request");
  // A slow call holds the next ones back; they are handed over in order once it settles.
  for (const m of ["slow", "two", "boom", "reject", "three"]) await dealer.send([E, b(m)]);
  await until(() => seen.length >= 2);
  assert.deepEqual(seen, ["one", "slow"], "nothing handed over while the slow call runs");
  (release as unknown as () => void)();
  await take(3);
  assert.deepEqual(replies, ["re:one", "re:slow", "re:two", "re:three"]);
  assert.deepEqual(seen, ["one", "slow", "two", "boom", "reject", "three"]);
  assert.deepEqual(errors.map((e) => e.message), [
    "ROUTER message handler failed: handler broke",
    "ROUTER message handler failed: handler rejected",
  ]);
  assert.throws(() => router.handle(() => {}), WireError);
  // Stopped: messages queue for receive() again.
  stop();
  await dealer.send([E, b("four")]);
  const got = await router.receive();
  assert.equal(s(got[got.length - 1]), "four");
});

test("ROUTER handle: messages queued before the handler is set are handed over first, in order", async () => {
  await using router = await RouterSocket.bind("127.0.0.1:0", FAST);
  await using req = ReqSocket.connect(`127.0.0.1:${router.port}`, FAST);
  const reply = req.request([b("early")]);
  await until(() => (router as unknown as { _inbox: Inbox<unknown> })._inbox.size === 1);
  router.handle((m) => router.send([...m.slice(0, -1), b(`re:${s(m[m.length - 1])}`)]));
  assert.deepEqual((await reply).map(s), ["re:early"]);
  assert.deepEqual((await req.request([b("late")])).map(s), ["re:late"]);
});

test("P2P registry: a lookup on an idle registry is answered without queueing the request (one queued per request before)", async () => {
  await using registry = await startRegistry();
  reportHolder(registry, "h", [1n, 2n]);
  const client = askingClient(registry.replyUrl);
  try {
    await client.lookup([1n]);
    const replies: unknown[] = [];
    const queued = await countingQueued(async () => {
      for (const hashes of [[1n, 2n, 3n], [9n]]) replies.push(await client.lookup(hashes));
    });
    assert.deepEqual(replies, [
      { type: "BatchedP2PLookupRetMsg", layout_info: [["h", "LocalCPUBackend", 2, "h:1"]] },
      { type: "BatchedP2PLookupRetMsg", layout_info: [["", "", 0, ""]] },
    ]);
    assert.equal(queued, 0, "requests queued by the registry's ROUTER socket");
    assert.equal(registry.stats.lookups, 3);
  } finally {
    await client.close();
  }
});

test("REP serve: requests are handed over unqueued (one queued per request before), in order per connection; those queued before serve() first", async () => {
  await using rep = await RepSocket.bind("127.0.0.1:0", FAST);
  await using early = ReqSocket.connect(`127.0.0.1:${rep.port}`, FAST);
  const first = early.request([b("early")]);
  await until(() => (rep as unknown as { _inbox: Inbox<unknown> })._inbox.size === 1);
  const order: string[] = [];
  let release: (() => void) | null = null;
  const serving = rep.serve(async (frames) => {
    const body = s(frames[0]);
    order.push(body);
    if (body === "slow") await new Promise<void>((r) => (release = r));
    return [b(`re:${body}`)];
  });
  assert.deepEqual((await first).map(s), ["re:early"]);
  await using a = DealerSocket.connect(`127.0.0.1:${rep.port}`, FAST);
  await using c = ReqSocket.connect(`127.0.0.1:${rep.port}`, FAST);
  await a.waitForPeer();
  await c.waitForPeer();
  await until(() => rep.peers.length === 3);
  const queued = await countingQueued(async () => {
    // One DEALER pipelines two requests: the second waits for the slow first.
    await a.send([E, b("slow")]);
    await a.send([E, b("after-slow")]);
    await until(() => order.length === 2);
    // Another connection is not held back by it.
    assert.deepEqual((await c.request([b("other")])).map(s), ["re:other"]);
    assert.deepEqual(order, ["early", "slow", "other"]);
    (release as unknown as () => void)();
    assert.deepEqual((await a.receive()).map(s), ["", "re:slow"]);
    assert.deepEqual((await a.receive()).map(s), ["", "re:after-slow"]);
  });
  assert.deepEqual(order, ["early", "slow", "other", "after-slow"]);
  assert.equal(queued, 2, "only the DEALER's two replies were queued (for its receive())");
  await rep.close();
  await serving;
});
