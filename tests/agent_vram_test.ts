// VRAM through the agent (builtin engine, or nixl with KVPORT_ENGINE=nixl; CUDA device 0): DeviceBuffer copies and
// checksums, VRAM registration, loopback DRAM <-> VRAM, and a same-host peer's VRAM
// (CUDA IPC) written and read from this process's DRAM and VRAM. Skips, saying why,
// without a CUDA device.
import { after, before, describe, skipFor, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  cudaDevices,
  DescList,
  DeviceBuffer,
  type HostBuffer,
  NixlAgent,
  NixlError,
} from "../src/agent.ts";
import { fillRandom, nativeSkip, type Peer, spawnPeer } from "./helpers/agent_pair.ts";
import { testEngine } from "./helpers/test_engine.ts";

const cuda = nativeSkip ? { count: 0, reason: nativeSkip } : await cudaDevices();
const skip = nativeSkip ??
  (cuda.count > 0 ? undefined : skipFor("needs GPU", `no CUDA device: ${cuda.reason}`));
if (skip) console.log(`agent_vram_test skipped: ${skip}`);

const MiB = 1 << 20;
const PAGE = MiB;
const PAGES = 16;

describe("VRAM", { skip }, () => {
  let agent: NixlAgent;
  let host: HostBuffer;
  let gpu: DeviceBuffer;
  let peer: Peer;

  before(async () => {
    const stamp = `${Date.now()}`;
    agent = await NixlAgent.create({ name: `vram-main-${stamp}`, engine: testEngine });
    host = agent.allocate(PAGE * PAGES);
    gpu = agent.allocate(PAGE * PAGES, { memType: "VRAM", device: 0 });
    agent.registerMemory(host);
    agent.registerMemory(gpu);
    peer = await spawnPeer({ name: `vram-peer-${stamp}`, size: PAGE * PAGES, memType: "VRAM" });
    agent.addRemoteAgent(peer.meta);
    await peer.call("load", { meta: Buffer.from(agent.localMetadata()).toString("base64") });
  });

  after(async () => {
    await peer?.stop();
    await agent?.close();
  });

  test("DeviceBuffer: copies in and out, checksum staged through host memory", () => {
    assert.ok(gpu instanceof DeviceBuffer);
    assert.equal(gpu.memType, "VRAM");
    assert.equal("bytes" in gpu, false, "a GPU page is a handle, not a view");
    const src = new Uint8Array(3 * MiB + 5);
    fillRandom(src);
    gpu.copyFrom(src, 7);
    const back = new Uint8Array(src.length);
    gpu.copyTo(back, 7);
    assert.deepEqual(back, src);
    host.bytes.set(src, 7);
    assert.equal(gpu.checksum(7, src.length), host.checksum(7, src.length));
    assert.throws(() => gpu.copyTo(new Uint8Array(16), gpu.size - 8), NixlError);
  });

  test("loopback: DRAM -> VRAM -> DRAM within the agent", async () => {
    const hostPages = agent.prepDescList("", DescList.pages(host, PAGE, PAGES));
    const gpuPages = agent.prepDescList(agent.name, DescList.pages(gpu, PAGE, PAGES));
    fillRandom(host.bytes);
    const idx = Array.from({ length: PAGES }, (_, i) => i);
    const rev = idx.slice().reverse();
    await agent.transfer("WRITE", hostPages, idx, gpuPages, rev);
    for (let i = 0; i < PAGES; i++) {
      assert.equal(gpu.checksum(rev[i] * PAGE, PAGE), host.checksum(i * PAGE, PAGE));
    }
    const want = host.checksum();
    host.bytes.fill(0);
    await agent.transfer("READ", hostPages, rev, gpuPages, idx);
    assert.equal(host.checksum(), want);
    hostPages.release();
    gpuPages.release();
  });

  for (const from of ["DRAM", "VRAM"] as const) {
    test(`a same-host peer's VRAM: WRITE and READ from local ${from}`, async () => {
      const src = from === "DRAM" ? host : gpu;
      const local = agent.prepDescList("", DescList.pages(src, PAGE, PAGES));
      const remote = agent.prepDescList(
        peer.name,
        DescList.pages({ address: peer.address, memType: "VRAM", device: 0 }, PAGE, PAGES),
      );
      try {
        const data = new Uint8Array(PAGE * PAGES);
        fillRandom(data);
        src.copyFrom(data);
        const idx = Array.from({ length: PAGES }, (_, i) => i);
        await agent.transfer("WRITE", local, idx, remote, idx, { timeoutMs: 20_000 });
        const ranges = idx.map((i) => [i * PAGE, PAGE]);
        const { sums } = await peer.call("sums", { ranges });
        assert.deepEqual(sums, idx.map((i) => src.checksum(i * PAGE, PAGE).toString(16)));
        await peer.call("fill", { offset: 0, length: PAGE * PAGES });
        const fresh = await peer.call("sums", { ranges });
        await agent.transfer("READ", local, idx, remote, idx, { timeoutMs: 20_000 });
        assert.deepEqual(
          idx.map((i) => src.checksum(i * PAGE, PAGE).toString(16)),
          fresh.sums,
        );
      } finally {
        local.release();
        remote.release();
      }
    });
  }
});
