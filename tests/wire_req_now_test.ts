/**
 * A REQ request on an idle socket with a live peer is handed to its connection in the
 * `request()` call itself (issue 15: a PD credit refill's ask waited behind the
 * microtasks of other requests in flight, up to 1.5 ms on the 2-core machine), while
 * requests made meanwhile still go one at a time, in order. Checked by counting the
 * connection's sends during the call (no timing) and by the replies' bytes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { RepSocket, ReqSocket, ZmtpConnection } from "../src/channel/wire/mod.ts";
import { b, s } from "./wire/util.ts";

const FAST = { timeoutMs: 2000, reconnectIntervalMs: 20 };

/** Counts `ZmtpConnection.send` calls of requests (not the replies, whose body begins
 * with "re:") while `fn` runs; restores it. */
async function countingSends<T>(fn: (sends: () => number) => Promise<T>): Promise<T> {
  const proto = ZmtpConnection.prototype as unknown as {
    send: (this: ZmtpConnection, frames: readonly Uint8Array[]) => Promise<void>;
  };
  const original = proto.send;
  let n = 0;
  proto.send = function (frames) {
    if (!frames.some((f) => s(f).startsWith("re:"))) n++;
    return original.call(this, frames);
  };
  try {
    return await fn(() => n);
  } finally {
    proto.send = original;
  }
}

test("REQ: a request on an idle socket is sent in the call; requests made meanwhile wait their turn, in order", async () => {
  await using rep = await RepSocket.bind("127.0.0.1:0", FAST);
  let held: (() => void) | null = null;
  const order: string[] = [];
  const serving = rep.serve(async (frames) => {
    order.push(s(frames[0]));
    if (s(frames[0]) === "slow") await new Promise<void>((r) => (held = r));
    return [b("re:"), ...frames];
  });
  await using req = ReqSocket.connect(`127.0.0.1:${rep.port}`, FAST);
  await req.waitForPeer();
  await countingSends(async (sends) => {
    const before = sends();
    const first = req.request([b("slow")]);
    assert.equal(sends() - before, 1, "the first request was handed to the connection in the call");
    // Made while the first waits for its reply: queued, not sent.
    const second = req.request([b("two")]);
    const third = req.request([b("three")]);
    assert.equal(sends() - before, 1, "requests made meanwhile are not sent yet");
    while (held === null) await new Promise((r) => setTimeout(r, 1));
    (held as () => void)();
    assert.deepEqual((await first).map(s), ["re:", "slow"]);
    assert.deepEqual((await second).map(s), ["re:", "two"]);
    assert.deepEqual((await third).map(s), ["re:", "three"]);
    assert.equal(sends() - before, 3);
    // Idle again: the next one goes out in its call too.
    const fourth = req.request([b("four")]);
    assert.equal(sends() - before, 4, "idle again: sent in the call");
    assert.deepEqual((await fourth).map(s), ["re:", "four"]);
  });
  assert.deepEqual(order, ["slow", "two", "three", "four"]);
  await req.close();
  await rep.close();
  await serving;
});
