// VRAM between two processes (the builtin engine; the nixl engine with KVPORT_ENGINE=nixl): random pages WRITTEN into a peer
// process's GPU buffer and READ back, compared by checksum, over CUDA IPC (same host,
// UCX) and over TCP staged through pinned host memory (backends TCP, as between hosts);
// and FILE <-> VRAM within one agent. Skips, saying why, without a CUDA device.
import { after, before, describe, skipFor, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { cudaDevices, DescList, type DeviceBuffer, type HostBuffer, NixlAgent } from "../mod.ts";
import { closeFile, openFile } from "../src/agent/files.ts";
import { fillRandom, nativeSkip, type Peer, spawnPeer } from "./helpers/agent_pair.ts";
import { testEngine } from "./helpers/test_engine.ts";

const cuda = nativeSkip ? { count: 0, reason: nativeSkip } : await cudaDevices();
const skip = nativeSkip ??
  (cuda.count > 0 ? undefined : skipFor("needs GPU", `no CUDA device: ${cuda.reason}`));
if (skip) console.log(`gpu_pair_test skipped: ${skip}`);

const MiB = 1 << 20;
const PAGE = 2 * MiB + 4096; // not a multiple of the 4 MiB staging slots
const PAGES = 16;
const SIZE = PAGE * PAGES;
const idx = Array.from({ length: PAGES }, (_, i) => i);
// A permutation: every page to another place (no two consecutive: one copy per page).
const perm = idx.map((i) => (i * 5 + 3) % PAGES);

function counter(agent: NixlAgent, key: string): number {
  return Number(agent.info()[key] ?? 0);
}

for (
  const mode of [
    { name: "CUDA IPC (same host)", backends: ["UCX"], path: "posts_cuda" },
    { name: "TCP, staged through pinned memory", backends: ["TCP"], path: "posts_staged" },
  ]
) {
  if (testEngine === "nixl" && mode.backends[0] === "TCP") {
    // NIXL's UCX restricted to TCP cannot move VRAM (no cuda_copy): a clear refusal.
    test(`VRAM between two processes: ${mode.name}: the nixl engine refuses, naming the fix`, {
      skip,
    }, async () => {
      await using agent = await NixlAgent.create({
        name: `gpu-tcp-${process.pid}`,
        engine: "nixl",
        backends: ["TCP"],
      });
      const gpu = agent.allocate(1 << 20, { device: "cuda:0" });
      assert.throws(() => agent.registerMemory(gpu), (e: Error) => {
        assert.match(e.message, /NIXL_ERR_NOT_SUPPORTED/);
        assert.match(e.message, /backend TCP/);
        assert.match(e.message, /Use backends UCX/);
        return true;
      });
      gpu.free();
    });
    continue;
  }
  describe(`VRAM between two processes: ${mode.name}`, { skip }, () => {
    let agent: NixlAgent;
    let host: HostBuffer;
    let gpu: DeviceBuffer;
    let peer: Peer;
    const params = { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" };

    before(async () => {
      const stamp = `${process.pid}-${Date.now()}`;
      peer = await spawnPeer({
        name: `gpu-peer-${stamp}`,
        size: SIZE,
        memType: "VRAM",
        backends: mode.backends,
        params,
      });
      agent = await NixlAgent.create({
        name: `gpu-main-${stamp}`,
        engine: testEngine,
        backends: mode.backends,
        params,
      });
      host = agent.allocate(SIZE);
      gpu = agent.allocate(SIZE, { device: "cuda:0" });
      agent.registerMemory(host);
      agent.registerMemory(gpu);
      agent.addRemoteAgent(peer.meta);
      await peer.call("load", { meta: Buffer.from(agent.localMetadata()).toString("base64") });
    });

    after(async () => {
      await peer?.stop();
      await agent?.close();
    });

    for (const from of ["VRAM", "DRAM"] as const) {
      test(`WRITE and READ random pages from local ${from}, scattered and consecutive`, async () => {
        const src = from === "VRAM" ? gpu : host;
        const local = agent.prepDescList("", DescList.pages(src, PAGE, PAGES));
        const remote = agent.prepDescList(
          peer.name,
          DescList.pages({ address: peer.address, memType: "VRAM", device: 0 }, PAGE, PAGES),
        );
        const ranges = idx.map((i) => [i * PAGE, PAGE]);
        const before = counter(agent, mode.path);
        try {
          const data = new Uint8Array(SIZE);
          fillRandom(data);
          src.copyFrom(data);
          const mine = idx.map((i) => src.checksum(i * PAGE, PAGE).toString(16));
          // Scattered: local page i -> peer page perm[i].
          await agent.transfer("WRITE", local, idx, remote, perm, { timeoutMs: 30_000 });
          const { sums } = await peer.call("sums", { ranges }) as unknown as { sums: string[] };
          for (const i of idx) assert.equal(sums[perm[i]], mine[i], `page ${i}`);
          // Consecutive: one merged piece.
          await agent.transfer("WRITE", local, idx, remote, idx, { timeoutMs: 30_000 });
          assert.deepEqual((await peer.call("sums", { ranges })).sums, mine);
          // The peer's fresh random pages, READ back (scattered).
          await peer.call("fill", { offset: 0, length: SIZE });
          const fresh = (await peer.call("sums", { ranges })).sums as string[];
          await agent.transfer("READ", local, idx, remote, perm, { timeoutMs: 30_000 });
          for (const i of idx) {
            assert.equal(src.checksum(i * PAGE, PAGE).toString(16), fresh[perm[i]], `page ${i}`);
          }
          if (testEngine === "builtin") {
            assert.equal(counter(agent, mode.path) - before, 3, `every transfer on ${mode.path}`);
          }
        } finally {
          local.release();
          remote.release();
        }
      });
    }
  });
}

// Always the builtin engine's staged FILE <-> VRAM path (NIXL's POSIX plugin moves DRAM
// only; NIXL's GDS moves VRAM: tests/nixl_gds_test.ts), also in a KVPORT_ENGINE=nixl run.
describe("FILE <-> VRAM within one agent (staged)", { skip }, () => {
  test("pages written from VRAM to a file and read back into other VRAM", async () => {
    await using agent = await NixlAgent.create({
      name: `gpu-file-${process.pid}`,
      engine: "builtin",
      backends: ["POSIX"],
    });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvport-gpu-file-"));
    const file = openFile(agent, path.join(dir, "pages.bin"), {
      create: true,
      direct: true,
      size: SIZE,
    });
    let fileReg: { deregister(): void } | undefined;
    try {
      const a = agent.allocate(SIZE, { device: "cuda:0" });
      const b = agent.allocate(SIZE, { device: "cuda:0" });
      agent.registerMemory(a);
      agent.registerMemory(b);
      fileReg = agent.registerMemory([{ fd: file.fd, offset: 0, length: SIZE }]);
      const data = new Uint8Array(SIZE);
      fillRandom(data);
      a.copyFrom(data);
      using la = agent.prepDescList("", DescList.pages(a, PAGE, PAGES));
      using lb = agent.prepDescList("", DescList.pages(b, PAGE, PAGES));
      using lf = agent.prepDescList(agent.name, DescList.pages({ fd: file.fd }, PAGE, PAGES));
      await agent.transfer("WRITE", la, idx, lf, perm);
      await agent.transfer("READ", lb, idx, lf, perm);
      assert.equal(b.checksum(), a.checksum());
      assert.equal(counter(agent, "posts_staged"), 2);
    } finally {
      fileReg?.deregister(); // a registered file cannot be closed
      closeFile(agent, file);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
