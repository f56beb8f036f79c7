/**
 * Deadlines and timeouts (issue 12, smaller defects): a delay above 2^31-1 ms must not
 * fire at once (setTimeout's limit), timeouts are told by their type (never by their
 * text), and a transfer timeout says what became of the request.
 */
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  ChannelError,
  ChannelTimeoutError,
  createTransferChannel,
  LeasePool,
  MockMemoryChannel,
  nativeLibrary,
  P2PError,
  PdReceiver,
  ProxyNotifier,
} from "../mod.ts";
import { RepSocket, ReqSocket, WireTimeoutError } from "../src/channel/wire/mod.ts";
import {
  after,
  clampDelay,
  deadlineSignal,
  every,
  MAX_TIMER_DELAY_MS,
  SharedDeadlines,
  sleep,
} from "../src/deadline.ts";
import { instance, silentHolder } from "./helpers/p2p_util.ts";
import { startPeerProcess } from "./helpers/peer_process.ts";

const LONG = 2 ** 31 + 1000; // just past setTimeout's limit
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resolves `"pending"` if `p` has not settled within `ms`. */
function settledWithin<T>(p: Promise<T>, ms: number): Promise<string> {
  return Promise.race([
    p.then(() => "resolved", (e) => `rejected: ${e}`),
    pause(ms).then(() => "pending"),
  ]);
}

test("deadline: timers past 2^31-1 ms do not fire at once; Infinity never fires", async () => {
  assert.equal(MAX_TIMER_DELAY_MS, 2147483647);
  assert.deepEqual(
    [clampDelay(2 ** 40), clampDelay(-1), clampDelay(NaN), clampDelay(5)],
    [2147483647, 0, 0, 5],
  );
  let fired = 0;
  const a = after(LONG, () => fired++);
  const b = after(Infinity, () => fired++);
  const c = every(LONG, () => fired++);
  using d = deadlineSignal(LONG);
  const ctl = new AbortController();
  const s = sleep(LONG, ctl.signal);
  const short = after(5, () => fired += 100);
  await pause(80);
  assert.equal(fired, 100, "only the 5 ms timer fired");
  assert.equal(a.fired, false);
  assert.equal(short.fired, true);
  assert.equal(d.signal.aborted, false);
  assert.ok(d.left > 2 ** 31, `left ${d.left}`);
  ctl.abort(new Error("stop"));
  await assert.rejects(s, /stop/);
  a.clear();
  b.clear();
  c.clear();
  // A deadline signal aborts with a TimeoutError when it is due.
  using e = deadlineSignal(10);
  await pause(60);
  assert.equal(e.signal.aborted, true);
  assert.equal((e.signal.reason as DOMException).name, "TimeoutError");
});

test("deadline: waits of the library with a 2^31+ ms timeout do not time out at once", async () => {
  await using rx = await PdReceiver.create({
    host: "127.0.0.1",
    initPort: 0,
    allocPort: 0,
    bufferSize: 4 * 4096,
    pageSize: 4096,
    channelType: "mock_memory",
  });
  const wait = rx.waitFor(["vllm@m@1@0@ab@bfloat16"], LONG);
  assert.equal(await settledWithin(wait, 80), "pending", "PdReceiver.waitFor");
  const pool = new LeasePool(1);
  const held = pool.tryAcquire(1, { owner: "a" })!;
  const acquire = pool.acquire(1, { owner: "b", timeoutMs: LONG });
  assert.equal(await settledWithin(acquire, 50), "pending", "LeasePool.acquire");
  held.release();
  assert.deepEqual((await acquire).pages, [0]);
  pool.close();
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  const notified = proxy.waitFor("r1", { timeoutMs: LONG });
  assert.equal(await settledWithin(notified, 50), "pending", "ProxyNotifier.waitFor");
  await using mute = await RepSocket.bind("tcp://127.0.0.1:0");
  await using req = ReqSocket.connect(`tcp://127.0.0.1:${mute.port}`);
  const asked = req.request(new Uint8Array([1]), { timeoutMs: LONG });
  assert.equal(await settledWithin(asked, 80), "pending", "ReqSocket.request");
  await req.close();
  await asked.catch(() => {});
  await rx.close();
  await wait.catch(() => {});
  await proxy.close();
  await notified.catch(() => {});
});

test("typed timeouts: a handshake timeout is a ChannelTimeoutError; a peer's text is not", async () => {
  await using mute = await RepSocket.bind("tcp://127.0.0.1:0");
  await using tx = await MockMemoryChannel.create({ role: "sender", pageSize: 4096, pageCount: 2 });
  await assert.rejects(tx.connect("mute", `127.0.0.1:${mute.port}`, { timeoutMs: 150 }), (e) => {
    assert.ok(e instanceof ChannelTimeoutError, String(e));
    assert.equal(e.code, "TIMEOUT");
    assert.equal(e.op, "handshake");
    assert.equal(e.timeoutMs, 150);
    assert.ok(e.cause instanceof WireTimeoutError, "the wire layer's own typed error");
    return true;
  });
  // A peer whose refusal merely says "timed out" did not time us out.
  await using liar = await RepSocket.bind("tcp://127.0.0.1:0");
  const { encodeMessage } = await import("../src/channel/wire/mod.ts");
  liar.serve(() =>
    encodeMessage({ type: "ErrorMsg", error: "the disk timed out within 5 ms" } as never)
  );
  await assert.rejects(tx.connect("liar", `127.0.0.1:${liar.port}`, { timeoutMs: 2000 }), (e) => {
    assert.ok(e instanceof ChannelError);
    assert.ok(!(e instanceof ChannelTimeoutError), `not a timeout: ${e}`);
    assert.equal(e.code, "HANDSHAKE_FAILED");
    assert.match(e.message, /the disk timed out/);
    return true;
  });
});

test("typed timeouts: a P2P fetch whose reply never comes is TIMEOUT with its deadline", async () => {
  await using fake = await silentHolder();
  await using requester = await instance(null, "requester", {
    lookupRecvTimeoutMs: 120,
    maxRetryCount: 0,
    quarantineMs: 50,
  });
  const r = await requester.fetchFrom(fake.initUrl, ["vllm@m@1@0@a1@bfloat16"]);
  assert.ok(r.error instanceof P2PError);
  assert.equal(r.error.code, "TIMEOUT");
  assert.equal(r.error.timeoutMs, 120);
  assert.ok(r.error.cause instanceof WireTimeoutError);
  // A registry that is not there: the lookup's error carries the deadline too.
  await using lonely = await instance(
    { pullUrl: "127.0.0.1:1", replyUrl: "127.0.0.1:1" },
    "lonely",
    { lookupRecvTimeoutMs: 150, lookupSendTimeoutMs: 100 },
  );
  const l = await lonely.lookup(["vllm@m@1@0@a1@bfloat16"]);
  assert.equal(l.error?.code, "TIMEOUT");
  assert.equal(typeof l.error?.timeoutMs, "number");
});

const nativeSkip = await nativeLibrary().then(
  () => false as const,
  (e) => `libkvport.so not loadable (make -C native): ${String(e).split("\n")[0]}`,
);

test("transfer timeout: the message says the request was cancelled and released, once", {
  skip: nativeSkip,
}, async () => {
  const PAGE = 4 << 20;
  const peer = await startPeerProcess(
    new URL("./helpers/channel_peer.ts", import.meta.url).pathname,
    { name: "stopped", pageSize: PAGE, pages: 16 } as { name: string },
    { readyMs: 30_000, callMs: 5000, ignoreNonJson: true, releaseOnExit: true },
  );
  const tx = await createTransferChannel({
    channelType: "nixl",
    engine: "builtin",
    backends: ["TCP"],
    role: "sender",
    bufferSize: 16 * PAGE,
    alignBytes: PAGE,
    tpRank: 0,
    peerInitUrl: null,
  });
  let outcome: unknown;
  try {
    const all = Array.from({ length: 16 }, (_, i) => i);
    await tx.connect("stopped", peer.ready.initUrl as string);
    await tx.write([0], { peerId: "stopped", remoteIndexes: [0], timeoutMs: 10_000 }); // warm
    peer.child.kill("SIGSTOP");
    const t0 = performance.now();
    outcome = await tx.write(all, { peerId: "stopped", remoteIndexes: all, timeoutMs: 300 })
      .then(() => "no timeout", (e) => e);
    assert.ok(performance.now() - t0 < 5000, "the timeout ended the wait");
  } finally {
    // Before the channel closes: a stopped peer would hold it up.
    peer.child.kill("SIGCONT");
    peer.child.kill("SIGKILL");
    await Promise.race([peer.exited, pause(2000)]);
    await tx.close();
  }
  await assert.rejects(
    Promise.reject(outcome),
    (e) => {
      assert.ok(e instanceof ChannelTimeoutError, String(e));
      assert.equal(e.op, "WRITE");
      assert.equal(e.timeoutMs, 300);
      assert.match(e.message, /the request was cancelled and released/);
      assert.doesNotMatch(e.message, /still active/, "one story, not two");
      assert.equal(e.message.match(/cancelled/g)?.length, 1, e.message);
      return true;
    },
  );
});

test("deadline: no timer of src/ or cli/ bypasses src/deadline.ts", async () => {
  const { readdirSync, readFileSync } = await import("node:fs");
  const root = new URL("..", import.meta.url).pathname;
  // Bun's poll pacing (0-2 ms, never configured) stays on setTimeout: it is the hot path
  // of every transfer wait there, and its delays are constants far below the limit.
  const allowed = new Set(["src/agent/transfer.ts", "src/deadline.ts"]);
  const raw = /\b(setTimeout|setInterval|AbortSignal\.timeout)\s*\(/;
  const offenders: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(root + dir, { withFileTypes: true })) {
      const rel = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(rel);
      else if (rel.endsWith(".ts") && !allowed.has(rel)) {
        readFileSync(root + rel, "utf8").split("\n").forEach((line, i) => {
          if (raw.test(line) && !/^\s*(\*|\/\/)/.test(line)) offenders.push(`${rel}:${i + 1}`);
        });
      }
    }
  };
  walk("src");
  walk("cli");
  assert.deepEqual(offenders, [], "use after/every/sleep/deadlineSignal of src/deadline.ts");
});

/** A recorded setTimeout / clearTimeout and a settable performance.now(). */
interface FakeClock {
  now: number;
  armed: { fn: () => void; ms: number; id: number }[];
  cleared: number[];
}

/** Runs `fn` on a {@linkcode FakeClock} (starting at 1000 ms), then puts the real ones back. */
function withFakeClock(fn: (clock: FakeClock) => void): void {
  const g = globalThis as unknown as {
    setTimeout: (fn: () => void, ms: number) => number;
    clearTimeout: (id: number) => void;
  };
  const realSet = g.setTimeout;
  const realClear = g.clearTimeout;
  const realNow = performance.now;
  const clock: FakeClock = { now: 1000, armed: [], cleared: [] };
  g.setTimeout = (f, ms) => clock.armed.push({ fn: f, ms, id: clock.armed.length + 1 });
  g.clearTimeout = (id) => clock.cleared.push(id);
  performance.now = () => clock.now;
  try {
    fn(clock);
  } finally {
    g.setTimeout = realSet;
    g.clearTimeout = realClear;
    performance.now = realNow;
  }
}

test("deadline: a delay past the limit waits in steps and fires once it is due", () => {
  withFakeClock((clock) => {
    const { armed } = clock;
    let fired = 0;
    const t = after(2 ** 31 + 5000, () => fired++);
    assert.deepEqual(armed.map((a) => a.ms), [MAX_TIMER_DELAY_MS]);
    clock.now += MAX_TIMER_DELAY_MS; // the first step ran its course: 5001 ms are left
    armed[0].fn();
    assert.deepEqual([fired, armed.map((a) => a.ms)], [0, [MAX_TIMER_DELAY_MS, 5001]]);
    clock.now += 4000; // a timer that fires early re-arms for the rest
    armed[1].fn();
    assert.deepEqual([fired, armed[2].ms], [0, 1001]);
    clock.now += 1001;
    armed[2].fn();
    assert.deepEqual([fired, t.fired, armed.length], [1, true, 3]);
  });
});

test("deadline: shared deadlines run on one timer, armed for the earliest, re-armed when it fires", () => {
  withFakeClock((clock) => {
    const { armed, cleared } = clock;
    const q = new SharedDeadlines();
    const fired: string[] = [];
    const a = q.add(30_000, () => fired.push("a"));
    clock.now += 10;
    const b = q.add(30_000, () => fired.push("b"));
    // One timer, for the earliest deadline; the later one did not touch it.
    assert.deepEqual(armed.map((x) => x.ms), [30_000]);
    a.clear();
    q.idle(); // b is pending: the timer stays
    assert.deepEqual(cleared, []);
    clock.now += 29_990; // a's time: a was cleared, b is 10 ms away -> re-armed for it
    armed[0].fn();
    assert.deepEqual([fired, armed.map((x) => x.ms)], [[], [30_000, 10]]);
    clock.now += 9.5; // half a millisecond early counts as due, as with after()
    armed[1].fn();
    assert.deepEqual([fired, b.fired, a.fired, armed.length], [["b"], true, false, 2]);
    // An earlier deadline re-arms (the old timer is cleared); a cleared one never runs.
    const c = q.add(60_000, () => fired.push("c"));
    const d = q.add(5, () => fired.push("d"));
    assert.deepEqual(armed.slice(2).map((x) => x.ms), [60_000, 5]);
    assert.deepEqual(cleared, [3]);
    clock.now += 5;
    armed[3].fn();
    assert.deepEqual([fired, armed[4].ms], [["b", "d"], 59_995]);
    c.clear();
    c.clear(); // idempotent
    // Nothing pending: idle() disarms, so a process whose sockets closed can exit.
    q.idle();
    assert.deepEqual(cleared, [3, 5]);
    assert.equal(d.fired, true);
    // After idle the next deadline arms a fresh timer.
    q.add(100, () => fired.push("e"));
    assert.equal(armed.length, 6);
    assert.equal(armed[5].ms, 100);
  });
});

test("deadline: a REQ request still times out, typed and not before its deadline, on the shared timer", async () => {
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", { timeoutMs: 2000 });
  // A REP that never answers: the request's deadline must fire.
  const silent = rep.receive().catch(() => {});
  await using req = ReqSocket.connect(rep.endpoints[0], { timeoutMs: 2000 });
  const t0 = performance.now();
  await assert.rejects(req.request([new Uint8Array([1])], { timeoutMs: 60 }), (e: unknown) => {
    assert.ok(e instanceof WireTimeoutError, String(e));
    return true;
  });
  assert.ok(performance.now() - t0 >= 59, "not before its deadline");
  await silent;
});
