// A restarted peer over a real NIXL (engine "nixl", UCX): the peer process is killed
// and started again under the same name. Loading its new metadata is
// NIXL_ERR_NOT_ALLOWED until the old one is invalidated (NIXL's rule); lists and
// requests prepared for the old process fail NIXL_ERR_NOT_FOUND; after invalidate +
// load, transfers to the new process work. A transfer to a killed peer ends (error or
// timeout) within its timeout, never hangs. Skips (saying why) without NIXL.
import { after, before, describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { DescList, type HostBuffer, NixlAgent, NixlError } from "../src/agent.ts";
import {
  fillRandom,
  type NixlPeer,
  nixlSkip,
  reportSkip,
  spawnNixlPeer,
  uniqueName,
} from "./helpers/nixl_env.ts";

reportSkip("nixl_restart_test");

const PAGE = 4096;
const PAGES = 64;
const SIZE = PAGE * PAGES;

const isError = (name: string) => (e: unknown) => e instanceof NixlError && e.statusName === name;

describe("nixl engine: peer restart", { skip: nixlSkip }, () => {
  let agent: NixlAgent;
  let buf: HostBuffer;
  const peers: NixlPeer[] = [];
  const peerName = uniqueName("nixl-restart-peer");
  before(async () => {
    agent = await NixlAgent.create({ name: uniqueName("nixl-restart-main"), engine: "nixl" });
    buf = agent.allocate(SIZE);
    agent.registerMemory(buf);
  });
  after(async () => {
    for (const p of peers) await p.kill();
    await agent?.close();
  });

  async function start(): Promise<NixlPeer> {
    const p = await spawnNixlPeer({ name: peerName, size: SIZE });
    peers.push(p);
    return p;
  }

  async function writeAndCheck(peer: NixlPeer, remoteList: DescList) {
    using l = DescList.pages(buf, PAGE, PAGES);
    const local = agent.prepDescList("", l);
    const remote = agent.prepDescList(peer.name, remoteList);
    try {
      fillRandom(buf.bytes);
      const idx = Array.from({ length: PAGES }, (_, i) => i);
      await agent.transfer("WRITE", local, idx, remote, idx.toReversed(), { timeoutMs: 10_000 });
      const { sums } = await peer.call("sums", {
        ranges: idx.map((i) => [(PAGES - 1 - i) * PAGE, PAGE]),
      });
      assert.deepEqual(sums, idx.map((i) => buf.checksum(i * PAGE, PAGE).toString(16)));
    } finally {
      remote.release();
      local.release();
    }
  }

  test("restart: NOT_ALLOWED until invalidated, stale lists NOT_FOUND, then transfers work", async () => {
    const first = await start();
    assert.equal(agent.addRemoteAgent(first.meta), peerName);
    assert.equal(
      agent.addRemoteAgent(first.meta),
      peerName,
      "loading the same metadata is a no-op",
    );
    using firstList = DescList.pages({ address: first.address }, PAGE, PAGES);
    await writeAndCheck(first, firstList);
    using l = DescList.pages(buf, PAGE, PAGES);
    const staleLocal = agent.prepDescList("", l);
    const staleRemote = agent.prepDescList(peerName, firstList);

    await first.kill();
    const second = await start();
    assert.notEqual(second.pid, first.pid);
    assert.throws(() => agent.addRemoteAgent(second.meta), (e: unknown) => {
      assert.ok(isError("NIXL_ERR_NOT_ALLOWED")(e), String(e));
      assert.match((e as Error).message, /invalidate/);
      return true;
    });

    agent.invalidateRemoteAgent(peerName);
    assert.throws(
      () => agent.createTransfer("WRITE", staleLocal, [0], staleRemote, [0]),
      isError("NIXL_ERR_NOT_FOUND"),
      "a list prepared for the old process is refused",
    );
    staleRemote.release();
    staleLocal.release();

    assert.equal(agent.addRemoteAgent(second.meta), peerName);
    await second.call("load", { meta: Buffer.from(agent.localMetadata()).toString("base64") });
    using secondList = DescList.pages({ address: second.address }, PAGE, PAGES);
    await writeAndCheck(second, secondList);
    await second.stop();
    agent.invalidateRemoteAgent(peerName);
  });

  test("a transfer to a killed peer ends within its timeout, and the peer can come back", async () => {
    const third = await start();
    agent.addRemoteAgent(third.meta);
    using list = DescList.pages({ address: third.address }, PAGE, PAGES);
    using l = DescList.pages(buf, PAGE, PAGES);
    const local = agent.prepDescList("", l);
    const remote = agent.prepDescList(peerName, list);
    await agent.transfer("WRITE", local, [0], remote, [0], { timeoutMs: 10_000 });
    await third.kill();
    const t0 = performance.now();
    let outcome = "completed";
    try {
      // Several rounds: UCX may complete a first small write into the socket buffer.
      for (let i = 0; i < 20; i++) {
        await agent.transfer("WRITE", local, [i % PAGES], remote, [i % PAGES], {
          timeoutMs: 2_000,
        });
      }
    } catch (e) {
      outcome = e instanceof NixlError ? e.statusName : String(e);
    }
    const took = performance.now() - t0;
    assert.ok(took < 20 * 2_000 + 5_000, `ended in ${took.toFixed(0)} ms`);
    console.log(`  transfer to a killed peer: ${outcome} after ${took.toFixed(0)} ms`);
    try {
      remote.release();
    } catch { /* NIXL may have dropped the peer already */ }
    local.release();

    // The peer comes back: load works, after an invalidate if NIXL still knows the old one.
    const fourth = await start();
    try {
      agent.addRemoteAgent(fourth.meta);
    } catch (e) {
      assert.ok(isError("NIXL_ERR_NOT_ALLOWED")(e), String(e));
      agent.invalidateRemoteAgent(peerName);
      agent.addRemoteAgent(fourth.meta);
    }
    using fourthList = DescList.pages({ address: fourth.address }, PAGE, PAGES);
    await writeAndCheck(fourth, fourthList);
    await fourth.stop();
  });
});
