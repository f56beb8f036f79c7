// Waits without polling timers: transfer and notification waits sleep until the agent's
// wake callback runs (kvp_event_notify, both runtimes); with the mechanisms of an ABI-3
// library ("legacy": Bun reads the kvp_event_fd descriptor, Deno runs kvp_xfer_wait /
// kvp_notif_wait on its thread pool) likewise. Either way a wait of milliseconds arms no
// short timers and no event-loop-turn polls; an abort and a close still end a wait at
// once; nothing outlives its agent, an idle agent keeps no process alive, and agents
// and the library close while wakes are pending.
import { describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { spawnSync } from "node:child_process";
import process from "node:process";
import { DescList, NixlAgent } from "../src/agent.ts";
import { library } from "../src/agent/common.ts";
import { setWakeMode, type WakeMode } from "../src/agent/events.ts";
import { nativeSkip, spawnPeer } from "./helpers/agent_pair.ts";
import { linkPeer } from "./helpers/pair_checks.ts";
import { countPolls } from "./helpers/poll_count.ts";

const MiB = 1 << 20;
const SIZE = 64 * MiB;

/** Creates an agent with wake mode `mode` (read when its events open). */
async function agentWith(mode: WakeMode, name: string): Promise<NixlAgent> {
  setWakeMode(mode);
  try {
    return await NixlAgent.create({ name, engine: "builtin" });
  } finally {
    setWakeMode("auto");
  }
}

const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";

/** Runs a helper script in a child process of this runtime. */
function child(name: string, ...args: string[]) {
  const script = new URL(`./helpers/${name}`, import.meta.url).pathname;
  const argv = isDeno ? ["run", "-A", script, ...args] : [script, ...args];
  return spawnSync(process.execPath, argv, { encoding: "utf8", timeout: 30_000 });
}

describe("agent waits without polling timers", { skip: nativeSkip }, () => {
  for (const mode of ["auto", "legacy"] as WakeMode[]) {
    test(`a WRITE of 64 MiB to another process (${mode}): the wait sleeps until the engine says done`, async () => {
      const stamp = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
      const peer = await spawnPeer({ name: `ev-peer-${stamp}`, size: SIZE });
      await using agent = await agentWith(mode, `ev-${mode}-${stamp}`);
      const lib = await library();
      const poolWaits = () => lib.pendingCalls; // Deno's nonblocking calls in flight
      try {
        const buf = await linkPeer(agent, peer, SIZE);
        using l = DescList.pages(buf, SIZE, 1);
        using r = DescList.pages({ address: peer.address }, SIZE, 1);
        using local = agent.prepDescList("", l);
        using remote = agent.prepDescList(peer.name, r);
        using req = agent.createTransfer("WRITE", local, [0], remote, [0]);
        let pending = 0, pooled = 0;
        for (let round = 0; round < 5; round++) {
          buf.bytes.fill(round + 1, 0, 4096);
          const { polls } = await countPolls(async () => {
            if (req.post() === "pending") {
              pending++;
              const waiting = req.wait(10_000);
              pooled += poolWaits();
              await waiting;
            }
          });
          assert.equal(polls, 0, `round ${round}: ${polls} short timers / event-loop polls`);
        }
        assert.ok(pending > 0, "every 64 MiB WRITE finished inside post: no wait was tested");
        if (mode === "auto" && lib.wakes) {
          assert.equal(pooled, 0, "the waits ran on Deno's thread pool, not the wake callback");
        } else if (mode === "legacy" && lib.runtime === "deno") {
          assert.ok(pooled > 0, "legacy Deno waits run kvp_xfer_wait on the thread pool");
        }
        const sums = (await peer.call("sums", { ranges: [[0, 4096]] })).sums as string[];
        assert.equal(sums[0], buf.checksum(0, 4096).toString(16), "the last WRITE landed");
      } finally {
        await peer.call("exit").catch(() => {});
      }
    });
  }

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

  for (const mode of ["auto", "legacy"] as WakeMode[]) {
    test(`onNotifications hands notifications over in the turn of the wake (${mode})`, async () => {
      const stamp = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
      const peer = await spawnPeer({ name: `evo-peer-${stamp}`, size: MiB });
      await using agent = await agentWith(mode, `evo-${mode}-${stamp}`);
      const lib = await library();
      try {
        await linkPeer(agent, peer, MiB);
        const got: { agent: string; text: string }[] = [];
        let arrived = () => {};
        const stop = agent.onNotifications((notes) => {
          for (const n of notes) {
            got.push({ agent: n.agent, text: new TextDecoder().decode(n.message) });
          }
          if (got.length >= 3) arrived();
        });
        if (mode === "legacy" || !lib.wakes) {
          // No wake callback (Deno's pool-thread waits, Bun's descriptor): nothing to
          // listen to, and waits still work.
          assert.equal(stop, null, "onNotifications without a wake callback");
          await peer.call("notify", { remote: agent.name, message: "w" });
          const notes = await agent.waitNotifications(10_000);
          assert.equal(new TextDecoder().decode(notes[0].message), "w");
          return;
        }
        assert.ok(stop, "the wake callback is there but onNotifications gave no listener");
        const { polls } = await countPolls(async () => {
          const all = new Promise<void>((r) => arrived = r);
          for (const m of ["m0", "m1", "m2"]) {
            await peer.call("notify", { remote: agent.name, message: m });
          }
          await Promise.race([
            all,
            new Promise((_, reject) =>
              setTimeout(() => reject(new Error(`only ${got.length} of 3 came`)), 10_000)
            ),
          ]);
        });
        assert.deepEqual(got.map((g) => g.text), ["m0", "m1", "m2"], "in order, each once");
        assert.ok(got.every((g) => g.agent === peer.name), `from ${got[0].agent}`);
        assert.equal(polls, 0, `${polls} short timers / event-loop polls`);
        assert.deepEqual(agent.takeNotifications(), [], "the listener took them");
        // Stopped: the next one waits for whoever asks.
        stop();
        await peer.call("notify", { remote: agent.name, message: "after" });
        const later = await agent.waitNotifications(10_000);
        assert.equal(new TextDecoder().decode(later[0].message), "after");
        assert.equal(got.length, 3, "a stopped listener was called");
      } finally {
        await peer.call("exit").catch(() => {});
      }
    });
  }

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

  for (const mode of ["auto", "legacy"]) {
    test(`a process with an open, idle agent exits by itself (${mode})`, () => {
      // Three times: an exit right after a wake once crashed Deno one time in three
      // (a notifier still returning from the callback; the loader quiesces at unload).
      for (let run = 0; run < 3; run++) {
        const r = child("events_idle_child.ts", mode);
        assert.equal(r.stdout.trim(), "waited", r.stderr);
        assert.equal(r.signal, null, `run ${run}: killed by ${r.signal} (a crash or 30 s)`);
        assert.equal(r.status, 0, r.stderr);
      }
    });
  }

  test("200 agents closed right after a WRITE and a wake: no hang, no crash, data lands", async () => {
    const stamp = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
    const size = 4 * MiB;
    await using target = await NixlAgent.create({ name: `evc-t-${stamp}`, engine: "builtin" });
    const dst = target.allocate(size);
    target.registerMemory(dst);
    const t0 = performance.now();
    let checked = 0;
    for (let i = 0; i < 200; i++) {
      const agent = await NixlAgent.create({ name: `evc-${i}-${stamp}`, engine: "builtin" });
      const src = agent.allocate(size);
      agent.registerMemory(src);
      agent.addRemoteAgent(target.localMetadata());
      src.bytes.fill(i & 0xff);
      using l = DescList.pages(src, size, 1);
      using r = DescList.pages({ address: dst.address }, size, 1);
      const req = agent.createTransfer(
        "WRITE",
        agent.prepDescList("", l),
        [0],
        agent.prepDescList(target.name, r),
        [0],
      );
      const state = req.post();
      // A wake queued (Deno: a notifier blocked in the callback until this thread is
      // free) while the agent closes.
      agent.sendNotification(agent.name, "x");
      if (i % 20 === 19) {
        if (state === "pending") await req.wait(10_000);
        assert.equal(dst.checksum(0, size), src.checksum(0, size), `round ${i}: the WRITE landed`);
        checked++;
      } else {
        const waiting = state === "pending" ? req.wait(10_000).catch((e) => e) : null;
        await agent.close(); // cancels the pending WRITE
        const ended = await waiting;
        assert.ok(
          ended === undefined || ended === null || /cancel|closed/i.test(String(ended)),
          `round ${i}: the wait ended with ${ended}`,
        );
        continue;
      }
      await agent.close();
    }
    assert.equal(checked, 10);
    assert.ok(performance.now() - t0 < 60_000, "200 rounds took over a minute");
  });

  // Only after its agents: an agent still open has threads of its own in the library
  // (progress, workers), which no library close can stop.
  for (const mode of ["after"]) {
    test(`the library closes after its agents woke through the callback (${mode})`, () => {
      const r = child("events_close_child.ts", mode);
      assert.equal(r.signal, null, `the process hung or crashed: ${r.stderr}`);
      assert.equal(r.status, 0, r.stderr);
      const m = r.stdout.trim().match(/^wakes=(\w+) waited=(\d+) landed=(\w+) closed=(\w+)$/);
      assert.ok(m, `unexpected output: ${r.stdout} ${r.stderr}`);
      assert.equal(m[3], "true", "the WRITEs landed");
      assert.equal(m[4], "true", "the library is closed");
      if (m[1] === "true") assert.ok(Number(m[2]) > 0, "no wait went through the callback");
    });
  }
});
