// The nixl engine's waits sleep until the engine says something happened: the module's
// watcher thread (native/src/engine_nixl_watch.cpp) polls NIXL for the agent and wakes
// the runtime through kvp_event_notify, as the builtin engine's notifier does. So a
// transfer wait and a notification wait of a nixl agent arm no short timers and no
// event-loop-turn polls (Bun) and run nothing on the thread pool (Deno), every byte still
// checked; the wake callback is live for it (`onNotifications` delivers without a wait);
// the agent's info says its watcher runs, and that it signalled. Skips (saying why)
// without NIXL, as every nixl test does (CI has none).
import { describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { DescList, type HostBuffer, NixlAgent, type Notification } from "../src/agent.ts";
import { library } from "../src/agent/common.ts";
import { DENO_NIXL_POOL, setWakeMode, type WakeMode } from "../src/agent/events.ts";
import { fillRandom, nixlSkip, reportSkip, uniqueName } from "./helpers/nixl_env.ts";
import { countPolls } from "./helpers/poll_count.ts";

reportSkip("nixl_watch_test");

const MiB = 1 << 20;
const SIZE = 16 * MiB;
const PAGE = 4096;
const PAGES = SIZE / PAGE;

/** Two nixl agents of this process, each with the other's metadata and 16 MiB, waiting
 * with wake mode `mode` ("wake": the watcher's wake callback in both runtimes). */
async function pair(tag: string, backends: string[] = ["UCX"], mode: WakeMode = "wake") {
  setWakeMode(mode);
  let a: NixlAgent, b: NixlAgent;
  try {
    a = await NixlAgent.create({ name: uniqueName(`${tag}-a`), engine: "nixl", backends });
    b = await NixlAgent.create({ name: uniqueName(`${tag}-b`), engine: "nixl", backends });
  } finally {
    setWakeMode("auto");
  }
  const ma: HostBuffer = a.allocate(SIZE);
  const mb: HostBuffer = b.allocate(SIZE);
  a.registerMemory(ma);
  b.registerMemory(mb);
  assert.equal(a.addRemoteAgent(b.localMetadata()), b.name);
  assert.equal(b.addRemoteAgent(a.localMetadata()), a.name);
  return {
    a,
    b,
    ma,
    mb,
    async [Symbol.asyncDispose]() {
      await a.close();
      await b.close();
    },
  };
}

const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";

describe("nixl engine: waits wake on the watcher", { skip: nixlSkip }, () => {
  test("transfer waits sleep until the watcher says done; every page checked", async () => {
    await using p = await pair("nw-x", ["TCP"]); // over TCP a 16 MiB WRITE outlasts its post
    const lib = await library();
    using l = DescList.pages(p.ma, PAGE, PAGES);
    using r = DescList.pages(p.mb, PAGE, PAGES);
    using local = p.a.prepDescList("", l);
    using remote = p.a.prepDescList(p.b.name, r);
    // Scattered: page i lands in slot PAGES-1-i (NIXL cannot merge them into one message).
    const li = Uint32Array.from({ length: PAGES }, (_, i) => i);
    const ri = Uint32Array.from({ length: PAGES }, (_, i) => PAGES - 1 - i);
    using req = p.a.createTransfer("WRITE", local, li, remote, ri);
    let pending = 0, pooled = 0;
    for (let round = 0; round < 5; round++) {
      fillRandom(p.ma.bytes);
      const { polls } = await countPolls(async () => {
        if (req.post() === "pending") {
          pending++;
          const waiting = req.wait(10_000);
          pooled += lib.pendingCalls; // Deno's nonblocking calls in flight
          await waiting;
        }
      });
      assert.equal(polls, 0, `round ${round}: ${polls} short timers / event-loop polls`);
      assert.equal(pooled, 0, `round ${round}: the wait ran on Deno's thread pool`);
      for (const i of [0, 1, PAGES / 2, PAGES - 1]) {
        const want = p.ma.bytes.subarray(i * PAGE, (i + 1) * PAGE);
        const got = p.mb.bytes.subarray((PAGES - 1 - i) * PAGE, (PAGES - i) * PAGE);
        assert.ok(Buffer.compare(want, got) === 0, `round ${round}: page ${i} differs`);
      }
      assert.equal(
        p.mb.checksum(0, SIZE),
        checksumReversed(p.a, p.ma),
        `round ${round}: b's pages are a's, reversed`,
      );
    }
    assert.ok(pending > 0, "every 16 MiB WRITE finished inside post: no wait was tested");
    assert.equal(p.a.info().watcher, "1", "kvp_event_notify started the agent's watcher");
    // (A wait that saw the end in its own poll is not signalled: fewer signals than waits.)
    const signals = Number(p.a.info().watcher_signals);
    assert.ok(signals >= 1, `the watcher signalled ${signals} times for ${pending} waits`);
    console.log(`nixl_watch_test: ${pending} waits, ${signals} signals`);
  });

  test("notification waits and listeners are woken by the watcher", async () => {
    await using p = await pair("nw-n");
    const heard: Notification[] = [];
    const stop = p.b.onNotifications((notes) => heard.push(...notes));
    assert.ok(stop, "onNotifications: the nixl agent has a wake callback now");
    try {
      // A notification bound to a WRITE reaches b's listener after the data.
      using l = DescList.pages(p.ma, PAGE, 16);
      using r = DescList.pages(p.mb, PAGE, 16);
      using local = p.a.prepDescList("", l);
      using remote = p.a.prepDescList(p.b.name, r);
      fillRandom(p.ma.bytes.subarray(0, 16 * PAGE));
      await p.a.transfer("WRITE", local, [3, 4], remote, [9, 2], { notification: "landed" });
      const until = Date.now() + 10_000;
      while (heard.length === 0 && Date.now() < until) {
        await new Promise((res) => setTimeout(res, 20));
      }
      assert.equal(heard.length, 1, "the listener heard the WRITE's notification");
      assert.equal(heard[0].agent, p.a.name);
      assert.equal(new TextDecoder().decode(heard[0].message), "landed");
      assert.equal(p.mb.checksum(9 * PAGE, PAGE), p.ma.checksum(3 * PAGE, PAGE));
      assert.equal(p.mb.checksum(2 * PAGE, PAGE), p.ma.checksum(4 * PAGE, PAGE));
    } finally {
      stop?.();
    }
    // A wait on a for a notification from b: no short timers, no pool thread.
    const lib = await library();
    let pooled = 0;
    const { value, polls } = await countPolls(async () => {
      const waiting = p.a.waitNotifications(10_000);
      pooled = lib.pendingCalls;
      p.b.sendNotification(p.a.name, "hello a");
      return await waiting;
    });
    assert.equal(polls, 0, `${polls} short timers / event-loop polls in the wait`);
    assert.equal(pooled, 0, "the notification wait ran on Deno's thread pool");
    assert.equal(value.length, 1);
    assert.equal(value[0].agent, p.b.name);
    assert.equal(new TextDecoder().decode(value[0].message), "hello a");
  });
  test("under auto: Bun waits on the watcher, Deno on its thread pool (DENO_NIXL_POOL)", async () => {
    await using p = await pair("nw-auto", ["TCP"], "auto");
    const lib = await library();
    using l = DescList.pages(p.ma, PAGE, PAGES);
    using r = DescList.pages(p.mb, PAGE, PAGES);
    using local = p.a.prepDescList("", l);
    using remote = p.a.prepDescList(p.b.name, r);
    using req = p.a.createTransfer("WRITE", local, [0], remote, [0]);
    let pending = 0, pooled = 0, polls = 0;
    for (let round = 0; round < 5; round++) {
      p.ma.bytes.fill(round + 1, 0, PAGE);
      polls += (await countPolls(async () => {
        if (req.post() === "pending") {
          pending++;
          const waiting = req.wait(10_000);
          pooled += lib.pendingCalls;
          await waiting;
        }
      })).polls;
      assert.equal(p.mb.checksum(0, PAGE), p.ma.checksum(0, PAGE), `round ${round}: page 0`);
    }
    const denoPool = isDeno && DENO_NIXL_POOL;
    assert.equal(p.a.info().watcher, denoPool ? "0" : "1");
    assert.equal(p.b.onNotifications(() => {}) === null, denoPool);
    assert.equal(polls, 0, `${polls} short timers / event-loop polls`);
    if (pending > 0) assert.equal(pooled > 0, denoPool, `pool-thread waits in flight: ${pooled}`);
  });
});

/** The checksum b's buffer must have: a's pages in reverse order. */
function checksumReversed(a: NixlAgent, ma: HostBuffer): bigint {
  using rev = a.allocate(SIZE);
  for (let i = 0; i < PAGES; i++) {
    rev.bytes.set(ma.bytes.subarray(i * PAGE, (i + 1) * PAGE), (PAGES - 1 - i) * PAGE);
  }
  return rev.checksum(0, SIZE);
}
