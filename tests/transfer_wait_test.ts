// The transfer wait's synchronous window (src/agent/transfer.ts): a wait checks the
// status back to back for at most its spin window, never longer than SPIN_MAX_MICROS,
// then hands over (Deno: the native wait on the pool; Bun: the event descriptor or
// timers); the window follows the request's typical wait, so a request that usually ends
// in 60 us stops paying the hand-over, while a long one keeps the 50 us. Driven by a fake
// clock and a fake engine (no native library), so every count below is exact; real
// requests over TCP check the bytes of every wait (tests/agent_events_test.ts and the
// NIXL pair tests check the same waits end to end).
import { describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { DescList, NixlAgent } from "../src/agent.ts";
import {
  SPIN_MAX_MICROS,
  SPIN_MICROS,
  spinWindow,
  TransferRequest,
  typicalWait,
  waitStatus,
} from "../src/agent/transfer.ts";
import type { AgentCore } from "../src/agent/common.ts";
import { AgentEvents } from "../src/agent/events.ts";
import { Status } from "../src/errors.ts";
import { nativeSkip } from "./helpers/agent_pair.ts";

/** Replaces performance.now with a clock that moves `stepUs` per reading (kept in
 * whole microseconds, so the counts below are exact). */
function fakeClock(stepUs: number) {
  const perf = globalThis.performance;
  const real = perf.now;
  let us = 1_000_000;
  Object.defineProperty(perf, "now", {
    value: () => (us += stepUs) / 1000,
    configurable: true,
    writable: true,
  });
  return {
    get us() {
      return us;
    },
    advance(by: number) {
      us += by;
    },
    [Symbol.dispose]() {
      Object.defineProperty(perf, "now", { value: real, configurable: true, writable: true });
    },
  };
}

describe("the transfer wait's spin window", () => {
  test("1.5 x the typical wait, between 50 and 200 us; 50 us past the bound", () => {
    assert.equal(SPIN_MICROS, 50);
    assert.equal(SPIN_MAX_MICROS, 200);
    assert.equal(spinWindow(45), 67.5);
    assert.equal(spinWindow(0), 50);
    assert.equal(spinWindow(10), 50);
    assert.equal(spinWindow(133), 199.5);
    assert.equal(spinWindow(150), 200);
    assert.equal(spinWindow(200), 200);
    assert.equal(spinWindow(201), 50);
    assert.equal(spinWindow(5000), 50);
    assert.equal(spinWindow(NaN), 50);
    assert.equal(spinWindow(undefined), 50, "no history yet");
    // One stall moves the typical wait by at most (400 - typical) / 8.
    assert.equal(typicalWait(undefined, 45), 45);
    assert.equal(typicalWait(45, 3000), 45 + (400 - 45) / 8);
    assert.equal(typicalWait(undefined, 3000), 400);
    assert.equal(typicalWait(80, 40), 75);
  });

  test("waitStatus polls only inside its window, then hands over once", async () => {
    for (const spin of [SPIN_MICROS, SPIN_MAX_MICROS]) {
      using clock = fakeClock(10); // every reading moves the clock by 10 us
      let polls = 0;
      let blocking = 0;
      let firstPollUs = 0;
      let lastSyncPollUs = 0;
      const took = { us: -1 };
      const s = await waitStatus(
        () => {
          polls++;
          if (blocking === 0) lastSyncPollUs = clock.us;
          return Status.IN_PROG;
        },
        (ms) => {
          blocking++;
          assert.ok(ms >= 999 && ms <= 1000, `the native wait got ${ms} ms of 1000`);
          clock.advance(500);
          firstPollUs ||= 1; // handed over
          return Promise.resolve(Status.SUCCESS);
        },
        1000,
        () => false,
        spin,
        null,
        took,
      );
      assert.equal(s, Status.SUCCESS);
      assert.equal(blocking, 1, "handed over exactly once");
      // The first check, then one per 10 us of the window.
      const want = 1 + spin / 10;
      assert.ok(
        polls >= want && polls <= want + 1,
        `${polls} synchronous polls in a ${spin} us window (expected ${want})`,
      );
      const start = clock.us - took.us - 10; // took was read one step before the last
      assert.ok(lastSyncPollUs - start <= spin + 10, `polled ${lastSyncPollUs - start} us in`);
      assert.ok(took.us >= spin + 500, `took ${took.us} us`);
    }
  });

  test("a wait that ends inside the window reports when, and never hands over", async () => {
    using _clock = fakeClock(10);
    let polls = 0;
    const took = { us: -1 };
    const s = await waitStatus(
      () => (++polls < 4 ? Status.IN_PROG : Status.SUCCESS),
      () => Promise.reject(new Error("handed over")),
      1000,
      () => false,
      SPIN_MICROS,
      null,
      took,
    );
    assert.equal(s, Status.SUCCESS);
    assert.equal(polls, 4);
    assert.ok(Math.abs(took.us - 20) < 1e-6, `took ${took.us} us`); // 2 steps after the start
    const done = await waitStatus(() => Status.SUCCESS, null, 1000, () => false, 50, null, took);
    assert.equal(done, Status.SUCCESS);
    assert.equal(took.us, 0, "done at the first check");
  });

  /** A request on a fake engine whose transfer ends `endUs` after its post. */
  function fakeRequest(clock: ReturnType<typeof fakeClock>, endUs: number) {
    let postedAt = 0;
    let nativeWaits = 0;
    let polls = 0;
    const done = () => clock.us - postedAt >= endUs;
    const lib = {
      symbols: {
        kvp_xfer_post: () => {
          postedAt = clock.us;
          return Status.IN_PROG;
        },
        kvp_xfer_status: () => {
          polls++;
          return done() ? Status.SUCCESS : Status.IN_PROG;
        },
      },
      nonblocking: {
        kvp_xfer_wait: () => {
          nativeWaits++;
          // The native wait sleeps until the end (plus a wake-up), then reports it.
          const left = endUs - (clock.us - postedAt);
          if (left > 0) clock.advance(left + 30);
          return Promise.resolve(Status.SUCCESS);
        },
      },
    };
    const core = {
      lib,
      name: "fake",
      closed: false,
      handle: () => 1n,
      forget: () => {},
      track: <T>(p: Promise<T>) => p,
      events: () => null,
      metrics: undefined,
    } as unknown as AgentCore;
    const req = new TransferRequest(core, 2n, "WRITE", "peer", 1, []);
    return {
      req,
      get nativeWaits() {
        return nativeWaits;
      },
      get polls() {
        return polls;
      },
    };
  }

  test("a request that usually ends in 60 us learns to end inside its window", async () => {
    using clock = fakeClock(1);
    const f = fakeRequest(clock, 60);
    for (let i = 0; i < 20; i++) {
      assert.equal(f.req.post(), "pending");
      await f.req.wait(1000);
    }
    // The first wait hands over at 50 us (no history yet); from then on the window is
    // 1.5 x ~90 us and every wait ends inside it.
    assert.equal(f.nativeWaits, 1, `${f.nativeWaits} hand-overs in 20 waits`);
  });

  test("a request that takes milliseconds spins 50 us per wait, never more", async () => {
    using clock = fakeClock(1);
    const f = fakeRequest(clock, 3000);
    for (let i = 0; i < 10; i++) {
      f.req.post();
      const before = f.polls;
      await f.req.wait(1000);
      // One clock step per poll here: 50 us of window is at most ~52 synchronous polls
      // (two readings per loop turn), plus the poll after the hand-over.
      assert.ok(f.polls - before <= 60, `wait ${i}: ${f.polls - before} polls`);
    }
    assert.equal(f.nativeWaits, 10, "every wait handed over");
  });
});

describe("the transfer wait on a real request", { skip: nativeSkip }, () => {
  test("4 KiB WRITEs and READs over TCP: every wait lands its bytes", async () => {
    const params = { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" };
    const stamp = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
    const open = (n: string) =>
      NixlAgent.create({ name: `tw-${n}-${stamp}`, engine: "builtin", backends: ["TCP"], params });
    await using c = await open("c");
    await using d = await open("d");
    const src = c.allocate(1 << 16);
    const dst = d.allocate(1 << 16);
    c.registerMemory(src);
    d.registerMemory(dst);
    c.addRemoteAgent(d.localMetadata());
    using l = DescList.pages(src, 4096, 16);
    using r = DescList.pages(dst, 4096, 16);
    using local = c.prepDescList("", l);
    using remote = c.prepDescList(d.name, r);
    using write = c.createTransfer("WRITE", local, [0], remote, [3]);
    using read = c.createTransfer("READ", local, [1], remote, [5]);
    const posts0 = Number(c.info().posts_tcp);
    for (let round = 0; round < 40; round++) {
      const v = (round * 7 + 1) & 0xff;
      src.bytes.fill(v, 0, 4096);
      if (write.post() === "pending") await write.wait(10_000);
      assert.ok(dst.bytes.subarray(3 * 4096, 4 * 4096).every((b) => b === v), `WRITE ${round}`);
      dst.bytes.fill(v ^ 0x5a, 5 * 4096, 6 * 4096);
      if (read.post() === "pending") await read.wait(10_000);
      assert.ok(src.bytes.subarray(4096, 2 * 4096).every((b) => b === (v ^ 0x5a)), `READ ${round}`);
    }
    assert.ok(Number(c.info().posts_tcp) - posts0 >= 80, "the transfers went over TCP");
  });
});

describe("two waits on one agent's events", () => {
  // An engine whose signal a caller's own poll consumes (the nixl engine's watcher leaves
  // a request unsignalled when a caller's status call saw its end first): a fake library
  // whose wake callback never fires, so only the waiters themselves can wake each other.
  test("a wait whose own poll saw the end wakes the other waits (no sleep to the slice)", async () => {
    const lib = {
      runtime: "bun",
      wakes: { watch: () => ({ status: Status.SUCCESS, unwatch: () => {} }) },
    } as unknown as Parameters<typeof AgentEvents.open>[0];
    const events = AgentEvents.open(lib, 1n, "nixl");
    assert.ok(events, "a live AgentEvents");
    let done = false;
    let pollsB = 0;
    // B waits on the request and sleeps (its spin window is 0 us).
    const b = waitStatus(
      () => {
        pollsB++;
        return done ? Status.SUCCESS : Status.IN_PROG;
      },
      null,
      5000,
      () => false,
      0,
      events,
    );
    await new Promise((r) => setTimeout(r, 5));
    // A's first poll sees the end (the request finished meanwhile; nothing signalled).
    done = true;
    const a = await waitStatus(() => Status.SUCCESS, null, 5000, () => false, 0, events);
    assert.equal(a, Status.SUCCESS);
    // One event-loop turn later (long before B's 100 ms slice could end) B has polled
    // again and seen the end: its first poll, then the one after A's wake.
    await new Promise((r) => setImmediate(r));
    assert.equal(pollsB, 2, "B still sleeps: nobody woke it");
    assert.equal(await b, Status.SUCCESS);
  });
});
