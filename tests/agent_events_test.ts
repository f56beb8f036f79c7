// Waits without polling timers: under Bun (no nonblocking FFI) transfer and
// notification waits sleep on the agent's kvp_event_fd descriptor; under Deno they run
// kvp_xfer_wait / kvp_notif_wait on the thread pool. Either way a wait of milliseconds
// arms no short timers and no event-loop-turn polls; an abort and a close still end a
// wait at once; the descriptor does not outlive its agent.
import { describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { spawnSync } from "node:child_process";
import process from "node:process";
import { DescList, NixlAgent } from "../src/agent.ts";
import { nativeSkip, spawnPeer } from "./helpers/agent_pair.ts";
import { linkPeer } from "./helpers/pair_checks.ts";

const MiB = 1 << 20;
const SIZE = 64 * MiB;

/** Counts the short timers (< 10 ms) and setImmediate calls made while `fn` runs. */
async function countPolls<T>(fn: () => Promise<T>): Promise<{ value: T; polls: number }> {
  const g = globalThis as unknown as {
    setTimeout: (cb: () => void, ms?: number) => unknown;
    setImmediate?: (cb: () => void) => unknown;
  };
  const st = g.setTimeout;
  const si = g.setImmediate;
  let polls = 0;
  g.setTimeout = (cb: () => void, ms?: number) => {
    if ((ms ?? 0) < 10) polls++;
    return st(cb, ms);
  };
  if (si) {
    g.setImmediate = (cb: () => void) => {
      polls++;
      return si(cb);
    };
  }
  try {
    return { value: await fn(), polls };
  } finally {
    g.setTimeout = st;
    if (si) g.setImmediate = si;
  }
}

describe("agent waits without polling timers", { skip: nativeSkip }, () => {
  test("a WRITE of 64 MiB to another process: the wait sleeps until the engine says done", async () => {
    const stamp = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
    const peer = await spawnPeer({ name: `ev-peer-${stamp}`, size: SIZE });
    await using agent = await NixlAgent.create({ name: `ev-${stamp}`, engine: "builtin" });
    try {
      const buf = await linkPeer(agent, peer, SIZE);
      using l = DescList.pages(buf, SIZE, 1);
      using r = DescList.pages({ address: peer.address }, SIZE, 1);
      using local = agent.prepDescList("", l);
      using remote = agent.prepDescList(peer.name, r);
      using req = agent.createTransfer("WRITE", local, [0], remote, [0]);
      for (let round = 0; round < 5; round++) {
        buf.bytes.fill(round + 1, 0, 4096);
        const { polls } = await countPolls(async () => {
          if (req.post() === "pending") await req.wait(10_000);
        });
        assert.equal(polls, 0, `round ${round}: ${polls} short timers / event-loop polls`);
      }
      const sums = (await peer.call("sums", { ranges: [[0, 4096]] })).sums as string[];
      assert.equal(sums[0], buf.checksum(0, 4096).toString(16), "the last WRITE landed");
    } finally {
      await peer.call("exit").catch(() => {});
    }
  });

  test("a notification wait sleeps until one comes; an abort and a close end it", async () => {
    const stamp = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
    const peer = await spawnPeer({ name: `evn-peer-${stamp}`, size: MiB });
    const agent = await NixlAgent.create({ name: `evn-${stamp}`, engine: "builtin" });
    try {
      await linkPeer(agent, peer, MiB);
      const { value, polls } = await countPolls(async () => {
        const waiting = agent.waitNotifications(10_000);
        await new Promise((r) => setTimeout(r, 30)); // counted: one short timer
        await peer.call("notify", { remote: agent.name, message: "hello" });
        return await waiting;
      });
      assert.equal(new TextDecoder().decode(value[0].message), "hello");
      assert.ok(polls <= 1, `${polls} short timers / polls for one notification`);
      // An abort is no native event: it still ends the wait at once.
      const ac = new AbortController();
      const t0 = performance.now();
      const aborted = agent.waitNotifications(10_000, { signal: ac.signal });
      setTimeout(() => ac.abort(new Error("stop")), 20);
      assert.deepEqual(await aborted, [], "an aborted wait returns what came: nothing");
      assert.ok(performance.now() - t0 < 5000, "the abort did not end the wait");
      // A close ends a pending wait.
      const closing = agent.waitNotifications(10_000);
      setTimeout(() => agent.close(), 20);
      const got = await closing.then((n) => n.length, (e) => String(e));
      assert.ok(got === 0 || /closed|cancel/i.test(String(got)), `wait ended with ${got}`);
    } finally {
      await agent.close();
      await peer.call("exit").catch(() => {});
    }
  });

  test("the event descriptor does not outlive its agent", async () => {
    const fds = () => fs.readdirSync("/proc/self/fd").length;
    const stamp = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
    // Warm up whatever the runtime opens once.
    const warm = await NixlAgent.create({ name: `evf-w-${stamp}`, engine: "builtin" });
    await warm.waitNotifications(1);
    await warm.close();
    const before = fds();
    for (let i = 0; i < 20; i++) {
      const a = await NixlAgent.create({ name: `evf-${i}-${stamp}`, engine: "builtin" });
      assert.deepEqual(await a.waitNotifications(1), []); // opens the descriptor (Bun)
      await a.close();
    }
    assert.ok(fds() <= before + 2, `descriptors grew from ${before} to ${fds()}`);
  });

  test("a process whose wait ran out exits by itself (no read left pending)", () => {
    const script = new URL("./helpers/events_idle_child.ts", import.meta.url).pathname;
    const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
    const args = isDeno ? ["run", "-A", script] : [script];
    const r = spawnSync(process.execPath, args, { encoding: "utf8", timeout: 20_000 });
    assert.equal(r.stdout.trim(), "waited", r.stderr);
    assert.equal(r.signal, null, "the process did not exit by itself within 20 s");
    assert.equal(r.status, 0, r.stderr);
  });
});
