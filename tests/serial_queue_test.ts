/**
 * The channel's serial queue: `runNow` starts a task in the caller's turn when nothing is
 * queued or running, keeps the order with tasks queued before and after it, and reports
 * its failure through its promise; `distinct` (pairwise for a few entries, a set beyond).
 *
 * @module
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { distinct, SerialQueue } from "../src/channel/_util.ts";

test("serial queue: runNow starts an idle queue's task in this turn, and waits behind others", async () => {
  const q = new SerialQueue();
  const log: string[] = [];
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const first = q.runNow(async () => {
    log.push("first starts");
    await gate;
    log.push("first ends");
    return 1;
  });
  assert.deepEqual(log, ["first starts"], "started in the caller's turn");
  assert.equal(q.pending, 1);
  // Busy: the next one waits its turn, as run() would.
  const second = q.runNow(() => {
    log.push("second");
    return Promise.resolve(2);
  });
  const third = q.run(() => {
    log.push("third");
    return 3;
  });
  await Promise.resolve();
  assert.deepEqual(log, ["first starts"]);
  release();
  assert.deepEqual(await Promise.all([first, second, third]), [1, 2, 3]);
  assert.deepEqual(log, ["first starts", "first ends", "second", "third"]);
  await q.idle();
  assert.equal(q.pending, 0);
  // A failure rejects its own promise; the queue goes on.
  const failed = q.runNow(() => Promise.reject(new Error("no")));
  const after = q.runNow(() => Promise.resolve("after"));
  await assert.rejects(failed, /no/);
  assert.equal(await after, "after");
  await q.idle();
  assert.equal(q.pending, 0);
  // A synchronous throw (not an async function) too: the queue is not left busy.
  const threw = q.runNow((): Promise<number> => {
    throw new Error("sync");
  });
  await assert.rejects(threw, /sync/);
  await q.idle();
  assert.equal(q.pending, 0);
  assert.equal(await q.runNow(() => Promise.resolve(7)), 7);
});

test("distinct: pairwise for a few entries, a set beyond, the same answer", () => {
  assert.equal(distinct([]), true);
  assert.equal(distinct(["a"]), true);
  assert.equal(distinct(["a", "b", "c"]), true);
  assert.equal(distinct(["a", "b", "a"]), false);
  assert.equal(distinct([0, -0]), false, "as a set counts them");
  for (const n of [32, 33, 200]) {
    const xs = Array.from({ length: n }, (_, i) => `k${i}`);
    assert.equal(distinct(xs), true, `${n} distinct`);
    xs[n - 1] = xs[0];
    assert.equal(distinct(xs), false, `${n} with a repeat at the end`);
  }
});
