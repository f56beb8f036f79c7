// Two CUDA devices of one host, the common PD deployment (prefill on cuda:0, decode on
// cuda:1): disaggregated prefill with the sender's pages on cuda:0 and the receiver's on
// cuda:1, every byte checked on the decoder; and VRAM(cuda:0) -> VRAM(cuda:1) WRITE and
// READ between two processes (the builtin engine, CUDA IPC), scattered and consecutive,
// compared by checksum. Skips, saying why, unless there are at least 2 CUDA devices.
import { after, before, describe, skipFor, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  cudaDevices,
  DescList,
  type DeviceBuffer,
  NixlAgent,
  PdReceiver,
  PdSender,
  ProxyNotifier,
} from "../mod.ts";
import { fillRandom, nativeSkip, type Peer, spawnPeer } from "./helpers/agent_pair.ts";
import { checkFor, fillFor, testKey } from "./helpers/pd_util.ts";
import { GPU_PD_PAGE, GPU_PD_SHAPE, gpuPdCommon, gpuPdSpec } from "./helpers/pd_gpu.ts";

const cuda = nativeSkip ? { count: 0, reason: nativeSkip } : await cudaDevices();
const skip = nativeSkip ?? (cuda.count >= 2 ? undefined : skipFor(
  "needs GPU",
  `needs 2 CUDA devices, found ${cuda.count}${cuda.reason ? ` (${cuda.reason})` : ""}`,
));
if (skip) console.log(`gpu_two_devices_test skipped: ${skip}`);

// ---- PD: prefiller on cuda:0, decoder on cuda:1 ---------------------------------------

test("pd: cuda:0 prefiller -> cuda:1 decoder, every byte checked", { skip }, async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  await using rx = await PdReceiver.create({
    ...gpuPdCommon,
    host: "127.0.0.1",
    initPort: 0,
    allocPort: 0,
    bufferSize: 24 * GPU_PD_PAGE,
    chunkSize: 16,
    device: "cuda:1",
    backends: ["UCX"],
  });
  await using tx = await PdSender.create({
    ...gpuPdCommon,
    bufferSize: 8 * GPU_PD_PAGE,
    device: "cuda:0",
    backends: ["UCX"],
    proxyHost: "127.0.0.1",
    proxyPort: proxy.port,
  });
  assert.equal(rx.channel.device.kind, "cuda");
  assert.equal(tx.channel.device.kind, "cuda");
  assert.equal(rx.channel.device.ordinal, 1);
  assert.equal(tx.channel.device.ordinal, 0);
  // 20 pages in batches of 8: scattered pages on both sides (several copies per batch).
  const keys = Array.from({ length: 20 }, (_, i) => testKey("gpu-two-devices", i));
  const host = new Uint8Array(GPU_PD_PAGE);
  for (let at = 0; at < keys.length; at += 8) {
    const batch = keys.slice(at, at + 8);
    const pages = await tx.allocate(batch.length);
    batch.forEach((k, i) => {
      fillFor(k, host);
      tx.channel.page(pages[i]).copyFrom(host);
    });
    const last = at + 8 >= keys.length;
    const r = await tx.send(gpuPdSpec(rx, "gpu-two-devices", last), {
      keys: batch,
      pages,
      shape: GPU_PD_SHAPE,
      dtype: "bfloat16",
      lastChunkToks: 16,
    });
    assert.equal(r.sent, batch.length);
  }
  await proxy.waitFor("gpu-two-devices", { timeoutMs: 5000 });
  await rx.waitFor(keys, 5000);
  for (const k of keys.slice(0, 10)) {
    const held = rx.page(k)!;
    assert.equal(held.page.device.kind, "cuda");
    assert.ok(checkFor(k, held.page.read(0, held.bytes)), `content of ${k}`);
  }
  for (const k of keys.slice(10)) {
    const got = rx.retrieve(k)!; // copied out of the cuda:1 page
    assert.ok(checkFor(k, got.data), `content of ${k}`);
  }
});

// ---- agent level: VRAM(cuda:0) here <-> VRAM(cuda:1) in a peer process ----------------

const MiB = 1 << 20;
const PAGE = 2 * MiB + 4096;
const PAGES = 16;
const SIZE = PAGE * PAGES;
const idx = Array.from({ length: PAGES }, (_, i) => i);
// A permutation: every page to another place (no two consecutive: one copy per page, so
// the request has many pieces, the case the library's copy kernel would otherwise take).
const perm = idx.map((i) => (i * 5 + 3) % PAGES);

describe("VRAM(cuda:0) <-> VRAM(cuda:1) between two processes (CUDA IPC)", { skip }, () => {
  let agent: NixlAgent;
  let gpu: DeviceBuffer;
  let peer: Peer;
  const params = { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" };

  before(async () => {
    const stamp = `${process.pid}-${Date.now()}`;
    peer = await spawnPeer({
      name: `gpu2-peer-${stamp}`,
      size: SIZE,
      memType: "VRAM",
      device: 1,
      backends: ["UCX"],
      params,
    });
    agent = await NixlAgent.create({
      name: `gpu2-main-${stamp}`,
      engine: "builtin",
      backends: ["UCX"],
      params,
    });
    gpu = agent.allocate(SIZE, { device: "cuda:0" });
    agent.registerMemory(gpu);
    agent.addRemoteAgent(peer.meta);
    await peer.call("load", { meta: Buffer.from(agent.localMetadata()).toString("base64") });
  });

  after(async () => {
    await peer?.stop();
    await agent?.close();
  });

  test("WRITE and READ random pages, scattered and consecutive, by checksum", async () => {
    const local = agent.prepDescList("", DescList.pages(gpu, PAGE, PAGES));
    const remote = agent.prepDescList(
      peer.name,
      DescList.pages({ address: peer.address, memType: "VRAM", device: 1 }, PAGE, PAGES),
    );
    const ranges = idx.map((i) => [i * PAGE, PAGE]);
    const before = Number(agent.info().posts_cuda ?? 0);
    try {
      const data = new Uint8Array(SIZE);
      fillRandom(data);
      gpu.copyFrom(data);
      const mine = idx.map((i) => gpu.checksum(i * PAGE, PAGE).toString(16));
      // Scattered: local page i -> peer page perm[i].
      await agent.transfer("WRITE", local, idx, remote, perm, { timeoutMs: 30_000 });
      const { sums } = await peer.call("sums", { ranges }) as unknown as { sums: string[] };
      for (const i of idx) assert.equal(sums[perm[i]], mine[i], `page ${i} (scattered WRITE)`);
      // Consecutive: one merged piece.
      await agent.transfer("WRITE", local, idx, remote, idx, { timeoutMs: 30_000 });
      assert.deepEqual((await peer.call("sums", { ranges })).sums, mine);
      // The peer's fresh random pages, READ back (scattered), then consecutive.
      await peer.call("fill", { offset: 0, length: SIZE });
      const fresh = (await peer.call("sums", { ranges })).sums as string[];
      await agent.transfer("READ", local, idx, remote, perm, { timeoutMs: 30_000 });
      for (const i of idx) {
        assert.equal(gpu.checksum(i * PAGE, PAGE).toString(16), fresh[perm[i]], `page ${i}`);
      }
      await agent.transfer("READ", local, idx, remote, idx, { timeoutMs: 30_000 });
      assert.deepEqual(idx.map((i) => gpu.checksum(i * PAGE, PAGE).toString(16)), fresh);
      assert.equal(Number(agent.info().posts_cuda ?? 0) - before, 4, "every transfer on CUDA");
    } finally {
      local.release();
      remote.release();
    }
  });
});
