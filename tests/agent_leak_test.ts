// 100,000 small transfers (each one creating, posting, waiting for and releasing its
// request) between two agents leave this process's memory (RSS) and open fds flat; so do
// 20,000 over TCP, where transfers are not done at post and are waited for.
import { after, before, describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { DescList, type HostBuffer, NixlAgent, type PreparedDescList } from "../src/agent.ts";
import { nativeSkip } from "./helpers/agent_pair.ts";
import { fullGc } from "./helpers/full_gc.ts";

if (nativeSkip) console.log(`agent_leak_test skipped: ${nativeSkip}`);

function rssKiB(): number {
  const m = readFileSync("/proc/self/status", "utf8").match(/VmRSS:\s+(\d+) kB/);
  return Number(m?.[1]);
}

const fdCount = () => readdirSync("/proc/self/fd").length;

describe("resources stay flat", { skip: nativeSkip }, () => {
  let a: NixlAgent;
  let b: NixlAgent;
  let bufA: HostBuffer;
  let local: PreparedDescList;
  let remote: PreparedDescList;

  before(async () => {
    a = await NixlAgent.create({ name: `leak-a-${Date.now()}`, engine: "builtin" });
    b = await NixlAgent.create({ name: `leak-b-${Date.now()}`, engine: "builtin" });
    bufA = a.allocate(1 << 20);
    const bufB = b.allocate(1 << 20);
    a.registerMemory(bufA);
    b.registerMemory(bufB);
    a.addRemoteAgent(b.localMetadata());
    local = a.prepDescList("", DescList.pages(bufA, 4096, 256));
    remote = a.prepDescList(b.name, DescList.pages(bufB, 4096, 256));
  });

  after(async () => {
    await a?.close();
    await b?.close();
  });

  test("100,000 transfers of 64 B to 4 KiB: RSS and fds flat", async () => {
    const idx = [new Uint32Array([0]), new Uint32Array([1, 2, 3])];
    const run = async (n: number) => {
      for (let i = 0; i < n; i++) {
        const li = idx[i & 1];
        await a.transfer(i & 1 ? "READ" : "WRITE", local, li, remote, li, { timeoutMs: 10_000 });
      }
    };
    await run(20_000); // warm up: JIT, allocator pools, connections
    fullGc();
    const rss0 = rssKiB();
    const fds0 = fdCount();
    await run(100_000);
    fullGc();
    const grown = rssKiB() - rss0;
    assert.ok(grown < 16 * 1024, `RSS grew by ${grown} KiB over 100,000 transfers`);
    assert.equal(fdCount(), fds0, "open file descriptors");
  });

  test("20,000 transfers over TCP (asynchronous waits): RSS and fds flat", async () => {
    const params = { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" };
    const stamp = Date.now();
    await using c = await NixlAgent.create({
      name: `leak-c-${stamp}`,
      engine: "builtin",
      backends: ["TCP"],
      params,
    });
    await using d = await NixlAgent.create({
      name: `leak-d-${stamp}`,
      engine: "builtin",
      backends: ["TCP"],
      params,
    });
    const bufC = c.allocate(1 << 16);
    const bufD = d.allocate(1 << 16);
    c.registerMemory(bufC);
    d.registerMemory(bufD);
    c.addRemoteAgent(d.localMetadata());
    const l = c.prepDescList("", DescList.pages(bufC, 4096, 16));
    const r = c.prepDescList(d.name, DescList.pages(bufD, 4096, 16));
    const idx = new Uint32Array([3]);
    const run = async (n: number) => {
      for (let i = 0; i < n; i++) {
        await c.transfer(i & 1 ? "READ" : "WRITE", l, idx, r, idx, { timeoutMs: 10_000 });
      }
    };
    await run(2_000);
    fullGc();
    const rss0 = rssKiB();
    const fds0 = fdCount();
    await run(20_000);
    fullGc();
    const grown = rssKiB() - rss0;
    assert.ok(grown < 16 * 1024, `RSS grew by ${grown} KiB over 20,000 TCP transfers`);
    assert.equal(fdCount(), fds0, "open file descriptors");
    assert.ok(Number(c.info().posts_tcp) >= 22_000, "the transfers went over TCP");
  });

  test("descriptor lists, prepared lists, registrations and requests are all released", () => {
    // One scratch array registered over and over: a fresh array per round made 20 MB of JS
    // garbage that the collector had not reclaimed yet, which RSS counted as growth.
    const scratch = new Uint8Array(4096);
    const churn = (n: number) => {
      for (let i = 0; i < n; i++) {
        const reg = a.registerMemory(scratch);
        using list = DescList.pages(bufA, 4096, 256);
        const p = a.prepDescList("", list);
        const req = a.createTransfer("WRITE", p, [0, 1], remote, [0, 1], { notification: "x" });
        req.release();
        p.release();
        reg.deregister();
        a.sendNotification(b.name, "y");
        if (i % 100 === 0) b.takeNotifications();
      }
      b.takeNotifications();
    };
    churn(200); // the first notification opens the connection to b (two sockets)
    // Collected before both readings: each round's lists and requests are garbage, a few
    // MB per 5,000 rounds, that RSS counted as growth until the collector ran.
    fullGc();
    const rss0 = rssKiB();
    const fds0 = fdCount();
    churn(5000);
    fullGc();
    const grown = rssKiB() - rss0;
    assert.ok(grown < 16 * 1024, `RSS grew by ${grown} KiB`);
    assert.equal(fdCount(), fds0, "open file descriptors");
  });
});
