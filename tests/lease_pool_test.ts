import { test } from "node:test";
import assert from "node:assert/strict";
import { ChannelError, ChannelTimeoutError, LeasePool, type LeaseReleaseEvent } from "../mod.ts";

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 5 ms for at most `ms`; true once it held. */
async function eventually(cond: () => boolean, ms = 2000): Promise<boolean> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (cond()) return true;
    await pause(5);
  }
  return cond();
}

test("lease pool: all-or-nothing, first come first served, bounded wait", async () => {
  const pool = new LeasePool(4);
  const a = await pool.acquire(3, { owner: "a" });
  assert.deepEqual(a.pages, [0, 1, 2]);
  assert.equal(pool.tryAcquire(2, { owner: "b" }), null);
  const waiting = pool.acquire(2, { owner: "b", timeoutMs: 1000 });
  a.release({ pages: [0] });
  const b = await waiting;
  assert.deepEqual([...b.pages].sort(), [0, 3]);
  assert.equal(pool.leaseOf(3), b);
  assert.equal(pool.leaseOf(1), a);
  await assert.rejects(pool.acquire(1, { owner: "c", timeoutMs: 30 }), (e) => {
    assert.ok(e instanceof ChannelTimeoutError);
    assert.equal(e.code, "TIMEOUT");
    assert.equal(e.op, "allocate");
    assert.equal(e.timeoutMs, 30);
    assert.match(e.message, /c: 1 page\(s\) wanted, 0 of 4 free, 0 in quarantine/);
    return true;
  });
  await assert.rejects(pool.acquire(5, { owner: "d" }), /only 4/);
  const none = pool.tryAcquire(0, { owner: "empty" })!;
  assert.deepEqual([none.pages, none.state, pool.leases], [[], "released", 2]);
  assert.equal(none.release({ pages: [] }), true);
  assert.throws(() => pool.tryAcquire(1, { owner: "" }), /needs an owner/);
  a.release();
  b.release();
  assert.equal(pool.free, 4);
  assert.equal(pool.leases, 0);
  pool.close();
});

test("lease pool: a double release throws and changes no count", () => {
  const pool = new LeasePool(3);
  const a = pool.tryAcquire(2, { owner: "req-a" })!;
  const b = pool.tryAcquire(1, { owner: "req-b" })!;
  assert.equal(a.release(), true);
  assert.equal(a.state, "released");
  assert.equal(pool.free, 2);
  assert.throws(() => a.release(), (e) => {
    assert.ok(e instanceof ChannelError);
    assert.equal(e.code, "INVALID_ARGUMENT");
    assert.match(e.message, /lease \d+ \(req-a\) was released already \(double release\)/);
    return true;
  });
  // A page of another lease cannot be released through this one.
  const c = pool.tryAcquire(1, { owner: "req-c" })!;
  assert.throws(() => c.release({ pages: [b.pages[0]] }), /held by lease \d+ \(req-b\)/);
  assert.throws(() => c.release({ pages: [c.pages[0], c.pages[0]] }), /double release/);
  assert.equal(pool.free, 1);
  assert.equal(pool.leased, 2);
  assert.equal(b.pages.length, 1);
  b.release();
  c.release();
  assert.equal(pool.free, 3);
  pool.close();
});

test("lease pool: a lease that expires returns its page; a release after expiry is a no-op", async () => {
  const pool = new LeasePool(1, { quarantineMs: 0 });
  const expired: number[][] = [];
  const a = pool.tryAcquire(1, {
    owner: "stale",
    ttlMs: 40,
    onExpire: (_l, pages) => expired.push([...pages]),
  })!;
  assert.equal(pool.free, 0);
  assert.ok(Number.isFinite(a.deadline));
  // Waits for the page: it comes back when `a` expires.
  const b = await pool.acquire(1, { owner: "next", timeoutMs: 2000 });
  assert.equal(a.state, "expired");
  assert.deepEqual(expired, [[0]]);
  assert.deepEqual(b.pages, [0]);
  // The late owner's release must not free the page now held by `b`.
  assert.equal(a.release(), false);
  assert.equal(pool.leaseOf(0), b);
  assert.equal(pool.free, 0);
  // Renewed to no deadline: it never expires.
  b.renew(Infinity);
  assert.equal(b.deadline, Infinity);
  await pause(60);
  assert.equal(b.state, "held");
  b.release();
  assert.equal(pool.free, 1);
  pool.close();
});

test("lease pool: a lease handed to a peer that expires goes to quarantine first", async () => {
  const pool = new LeasePool(2, { quarantineMs: 80 });
  const a = pool.tryAcquire(2, { owner: "r", ttlMs: 20 })!;
  a.handTo("peer-1");
  assert.ok(await eventually(() => a.state === "expired"));
  assert.equal(pool.quarantined, 2);
  assert.equal(pool.free, 0);
  assert.ok(await eventually(() => pool.free === 2));
  assert.equal(pool.quarantined, 0);
  pool.close();
});

test("lease pool: quarantine keeps pages from every owner until it ends", async () => {
  const pool = new LeasePool(2, { quarantineMs: 150 });
  const a = pool.tryAcquire(2, { owner: "fetch" })!;
  a.release({ pages: [a.pages[0]], inFlight: true });
  a.release({ pages: [a.pages[0]], quarantineMs: 0 });
  assert.equal(pool.quarantined, 1);
  assert.equal(pool.free, 1);
  assert.equal(pool.leased, 0);
  // One page is free, but a request for two must wait for the quarantine.
  const t0 = performance.now();
  const b = await pool.acquire(2, { owner: "next", timeoutMs: 2000 });
  assert.ok(performance.now() - t0 >= 100, `got the pages after ${performance.now() - t0} ms`);
  assert.equal(pool.quarantined, 0);
  assert.deepEqual([...b.pages].sort(), [0, 1]);
  b.release();
  pool.close();
});

test("lease pool: hooks see grants, releases (with quarantine) and frees", () => {
  const pool = new LeasePool(3, { quarantineMs: 10_000 });
  const log: string[] = [];
  const off = pool.addHooks({
    onGrant: (l, pages, peer) => log.push(`grant ${l.owner} [${pages}] ${peer}`),
    onRelease: (e: LeaseReleaseEvent) =>
      log.push(`release ${e.lease.owner} [${e.pages}] ${e.peer} ${e.reason} ${e.quarantineMs}`),
    onFree: (pages) => log.push(`free [${pages}]`),
  });
  const a = pool.tryAcquire(2, { owner: "a" })!;
  a.handTo("p");
  assert.equal(a.peer, "p");
  const kept = a.moveTo([a.pages[1]], "chunk");
  a.release({ inFlight: true });
  kept.release();
  off();
  pool.tryAcquire(1, { owner: "b" })!.release();
  assert.deepEqual(log, [
    "grant a [0,1] p",
    "release a [1] p moved 0",
    "release a [0] p released 10000",
    "release chunk [1] undefined released 0",
    "free [1]",
  ]);
  // A failing grant hook stops the hand-over.
  pool.addHooks({
    onGrant: () => {
      throw new Error("no grant");
    },
  });
  const c = pool.tryAcquire(1, { owner: "c" })!;
  assert.throws(() => c.handTo("q"), /no grant/);
  assert.equal(c.peer, undefined);
  pool.close();
  assert.equal(c.state, "closed");
  assert.equal(c.release(), false);
});

test("lease pool: a wait ends on abort and on close; waiters are limited", async () => {
  const pool = new LeasePool(1, { maxWaiters: 1 });
  const a = pool.tryAcquire(1, { owner: "a" })!;
  const ctl = new AbortController();
  const w = pool.acquire(1, { owner: "w", signal: ctl.signal });
  await assert.rejects(pool.acquire(1, { owner: "x" }), /1 callers already wait.*maxWaiters 1/);
  ctl.abort(new Error("gave up"));
  await assert.rejects(w, /gave up/);
  assert.equal(pool.waiting, 0);
  const w2 = pool.acquire(1, { owner: "w2", timeoutMs: Infinity });
  pool.close();
  await assert.rejects(w2, { code: "CLOSED" });
  assert.equal(a.state, "closed");
});

test("lease pool: pages moved out one by one leave the rest, and an emptied lease never expires", async () => {
  const pool = new LeasePool(5, { quarantineMs: 0 });
  const expired: number[][] = [];
  const credits = pool.tryAcquire(4, {
    owner: "credits",
    ttlMs: 40,
    onExpire: (_l, pages) => expired.push([...pages]),
  })!;
  const all = credits.pages;
  assert.equal(all.length, 4);
  const [p0, p1, p2, p3] = all;
  // One page at a time (as binds do), from the middle, the front and the back.
  const k1 = credits.moveTo([p1], "k1");
  assert.deepEqual(credits.pages, [p0, p2, p3]);
  assert.deepEqual(all, [p0, p1, p2, p3], "a list read before the move stays as it was");
  const k0 = credits.moveTo([p0], "k0");
  assert.deepEqual(credits.pages, [p2, p3]);
  assert.ok(credits.release({ pages: [p3] }));
  assert.deepEqual(credits.pages, [p2]);
  assert.equal(pool.free, 2);
  assert.throws(() => credits.moveTo([p3], "again"), /not held by lease/);
  assert.throws(() => credits.moveTo([p1], "again"), /held by lease/);
  const k2 = credits.moveTo([p2], "k2");
  assert.deepEqual(credits.pages, []);
  assert.equal(credits.state, "released");
  assert.deepEqual([k0.pages, k1.pages, k2.pages], [[p0], [p1], [p2]]);
  assert.equal(pool.leaseOf(p1), k1);
  // The emptied lease's deadline passes: nothing expires, every moved page stays held.
  await pause(80);
  assert.deepEqual(expired, []);
  assert.deepEqual([k0.state, k1.state, k2.state], ["held", "held", "held"]);
  assert.equal(pool.free, 2);
  pool.close();
});

test("lease pool: moveEach gives each page a lease of its own in one pass, all or nothing", () => {
  const pool = new LeasePool(8, { quarantineMs: 0 });
  const moved: string[] = [];
  pool.addHooks({
    onRelease: (e: LeaseReleaseEvent) => moved.push(`${e.reason} [${e.pages}] ${e.peer}`),
  });
  const lot = pool.tryAcquire(6, { owner: "credits", ttlMs: 60_000 })!;
  lot.handTo("sender-1");
  const [p0, p1, p2, p3, p4, p5] = lot.pages;
  const before = lot.pages;
  // A page it does not hold, or one given twice: nothing moves, nothing changes.
  const outside = [...Array(8).keys()].find((p) => !lot.pages.includes(p))!;
  assert.throws(() => lot.moveEach([p1, outside], ["a", "b"]), /not held by lease .* it is free/);
  assert.throws(() => lot.moveEach([p1, p3, p1], ["a", "b", "c"]), /page .* not held by lease/);
  assert.throws(() => lot.moveEach([p1, p3], ["a"]), /2 page\(s\) but 1 owner/);
  assert.throws(() => lot.moveEach([p1], [""]), /needs an owner/);
  assert.deepEqual(lot.pages, [p0, p1, p2, p3, p4, p5]);
  for (const p of lot.pages) assert.equal(pool.leaseOf(p), lot);
  assert.deepEqual(moved, []);
  // Three pages out of the middle and the end.
  const [a, b, c] = lot.moveEach([p1, p3, p5], ["k1", "k3", "k5"]);
  assert.deepEqual([a.owner, b.owner, c.owner], ["k1", "k3", "k5"]);
  assert.deepEqual([a.pages, b.pages, c.pages], [[p1], [p3], [p5]]);
  assert.deepEqual([a.peer, a.deadline, a.state], [undefined, Infinity, "held"]);
  assert.deepEqual(lot.pages, [p0, p2, p4], "the rest, in order");
  assert.deepEqual(before, [p0, p1, p2, p3, p4, p5], "a list read before the move stays");
  assert.equal(pool.leaseOf(p3), b);
  assert.equal(pool.leaseOf(p2), lot);
  assert.deepEqual(moved, [`moved [${[p1, p3, p5]}] sender-1`], "one event for the batch");
  assert.equal(pool.leases, 4);
  // Each new lease ends exactly its own page.
  assert.ok(b.release());
  assert.equal(pool.leaseOf(p3), undefined);
  assert.equal(pool.free, 3);
  // The rest moved: the lot is released (and leaves the table).
  const rest = lot.moveEach([...lot.pages], ["k0", "k2", "k4"]);
  assert.equal(lot.state, "released");
  assert.equal(pool.leases, 5);
  assert.throws(() => lot.moveEach([p0], ["x"]), /is released/);
  for (const l of [a, c, ...rest]) assert.ok(l.release());
  assert.equal(pool.free, 8);
  pool.close();
});

test("lease pool: a release naming a page twice throws and releases none of them", () => {
  const pool = new LeasePool(4, { quarantineMs: 0 });
  const lease = pool.tryAcquire(3, { owner: "r" })!;
  const [p0, p1, p2] = lease.pages;
  assert.throws(() => lease.release({ pages: [p0, p1, p0] }), /page .* not held by lease/);
  assert.deepEqual(lease.pages, [p0, p1, p2]);
  assert.equal(pool.free, 1);
  for (const p of [p0, p1, p2]) assert.equal(pool.leaseOf(p), lease);
  assert.ok(lease.release({ pages: [p2, p0] }));
  assert.deepEqual(lease.pages, [p1]);
  assert.equal(pool.free, 3);
  pool.close();
});
