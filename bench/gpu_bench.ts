/**
 * GPU benchmarks (builtin engine, CUDA device 0; the nixl engine and raw NIXL beside it
 * for VRAM -> VRAM where NIXL is there), each figure printed as a ratio to the physical
 * limit measured in the same run, then one JSON line:
 * - VRAM -> VRAM between two processes through CUDA IPC, 64 consecutive pages of 4 MiB
 *   and of 28 MiB per request (merged into one copy) vs cudaMemcpy device to device of
 *   the same bytes (`kvport-limits cuda-memcpy`), goal >= 0.8; the same with the 64 pages
 *   scattered (the library's copy kernel, one launch; for 4 MiB also the runtime's copies,
 *   vram_copy=memcpy), with two requests in flight, and as READ;
 * - the same merged and scattered WRITEs on the nixl engine (NIXL's UCX, cuda_ipc) and
 *   on raw NIXL (native/build/nixl-raw), each vs cudaMemcpy d2d, and nixl / raw (goal
 *   >= 0.95); skipped, saying why, without the nixl engine;
 * - with 2+ devices, the same 64 pages of 28 MiB from cuda:0 here into a peer process's
 *   cuda:1 (vram_ipc_write_28MiB_x64_cross_device, the usual PD layout of one host) vs
 *   cudaMemcpyPeer of the same bytes (`kvport-limits cuda-memcpy-peer`); skipped, saying
 *   why, with one device;
 * - VRAM -> pinned host -> TCP -> pinned host -> VRAM between two processes (backends
 *   TCP, as between hosts) vs a raw TCP stream of the same message size, goal >= 0.8.
 * Every mode ends by checking the moved pages by checksum on both sides.
 * Without a CUDA device it prints why and a JSON line with no results (exit 0).
 *
 * ```sh
 * deno run -A bench/gpu_bench.ts [--quick]
 * bun bench/gpu_bench.ts [--quick]
 * ```
 * @module
 */
import process from "node:process";
import { Buffer } from "node:buffer";
import { spawnSync } from "node:child_process";
import {
  cudaDevices,
  DescList,
  type DeviceBuffer,
  NixlAgent,
  type PreparedDescList,
  probeEngine,
  type TransferRequest,
} from "../src/agent.ts";
import { type Peer, spawnPeer } from "../tests/helpers/agent_pair.ts";
import { nativeLimit, Report, timeLoop } from "./lib.ts";

const quick = process.argv.includes("--quick");
const MiB = 1 << 20;
const PAGES = 64;
const SIZES = [4 * MiB, 28 * MiB];
const SIZE = PAGES * 28 * MiB; // the largest batch; also 2 x 64 pages of 4 MiB
const MIN_MS = quick ? 300 : 1500;
const TCP_PARAMS = { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" };

const report = new Report("gpu");
const gbps = (bytes: number, ms: number) => bytes / ms / 1e6;

const cuda = await cudaDevices().catch((e) => ({ count: 0, reason: String(e).split("\n")[0] }));
if (cuda.count === 0) {
  console.log(`gpu bench skipped: no CUDA device (${cuda.reason})`);
  report.finish({ skipped: `no CUDA device: ${cuda.reason}` });
  process.exit(0);
}

function gpuName(): string {
  const r = spawnSync("nvidia-smi", ["--query-gpu=name,driver_version", "--format=csv,noheader"], {
    encoding: "utf8",
  });
  return r.status === 0 ? r.stdout.trim().split("\n")[0] : "? (nvidia-smi not available)";
}
const gpu = gpuName();
console.log(`gpu: ${gpu}, ${cuda.count} device(s)`);

// ---- limits measured in this run ---------------------------------------------------
function cudaLimit(bytes: number, kind: "d2d" | "h2d" | "d2h"): number | undefined {
  const reps = Math.max(10, Math.ceil((quick ? 1e11 : 4e11) / bytes));
  const probe = nativeLimit(["cuda-memcpy", String(bytes), String(reps), kind, "0"]);
  if (probe && typeof probe.gbps === "number") return probe.gbps;
  console.log(`cudaMemcpy ${kind} limit not measured: ${JSON.stringify(probe)}`);
  return undefined;
}
const d2d = new Map(SIZES.map((p) => [p * PAGES, cudaLimit(p * PAGES, "d2d")]));
const h2d = cudaLimit(256 * MiB, "h2d");
const d2h = cudaLimit(256 * MiB, "d2h");
console.log(
  `pinned host <-> device (cudaMemcpy, 256 MiB): h2d ${h2d?.toFixed(1)} GB/s, ` +
    `d2h ${d2h?.toFixed(1)} GB/s`,
);

// ---- helpers ------------------------------------------------------------------------
interface Pair {
  peer: Peer;
  agent: NixlAgent;
  gpu: DeviceBuffer;
  /** The CUDA ordinal of the peer's buffer (ours is always cuda:0). */
  peerDevice: number;
}

async function pair(
  tag: string,
  backends: string[],
  params?: Record<string, string>,
  peerDevice = 0,
  engine: "builtin" | "nixl" = "builtin",
) {
  const stamp = `${process.pid}-${Date.now()}`;
  const peer = await spawnPeer({
    name: `gpu-bench-peer-${tag}-${stamp}`,
    backends,
    params,
    size: SIZE,
    memType: "VRAM",
    device: peerDevice,
    engine,
  });
  const agent = await NixlAgent.create({
    name: `gpu-bench-${tag}-${stamp}`,
    engine,
    backends,
    params,
  });
  const gpu = agent.allocate(SIZE, { device: "cuda:0" });
  agent.registerMemory(gpu);
  agent.addRemoteAgent(peer.meta);
  await peer.call("load", { meta: Buffer.from(agent.localMetadata()).toString("base64") });
  // Distinct content per page: a random block, stamped with the page number.
  const block = new Uint8Array(4 * MiB);
  for (let at = 0; at < block.length; at += 65536) {
    crypto.getRandomValues(block.subarray(at, at + 65536));
  }
  for (let off = 0, n = 0; off < SIZE; off += block.length, n++) {
    new DataView(block.buffer).setUint32(0, n, true);
    gpu.copyFrom(block.subarray(0, Math.min(block.length, SIZE - off)), off);
  }
  return { peer, agent, gpu, peerDevice } as Pair;
}

interface Lists {
  local: PreparedDescList;
  remote: PreparedDescList;
}

function lists(p: Pair, page: number, count: number): Lists {
  using l = DescList.pages(p.gpu, page, count);
  using r = DescList.pages(
    { address: p.peer.address, memType: "VRAM", device: p.peerDevice },
    page,
    count,
  );
  return { local: p.agent.prepDescList("", l), remote: p.agent.prepDescList(p.peer.name, r) };
}

async function run(req: TransferRequest): Promise<void> {
  if (req.post() === "pending") await req.wait(60_000);
}

/** Checks that the peer's pages hold what ours hold (checksums on both sides). */
async function verify(p: Pair, page: number, localIdx: number[], remoteIdx: number[]) {
  const ranges = remoteIdx.map((i) => [i * page, page]);
  const { sums } = await p.peer.call("sums", { ranges }, 120_000) as unknown as {
    sums: string[];
  };
  const bad = localIdx.filter((li, k) => p.gpu.checksum(li * page, page).toString(16) !== sums[k]);
  if (bad.length > 0) {
    throw new Error(`${bad.length} of ${localIdx.length} pages differ after the transfers`);
  }
  return localIdx.length;
}

const seq = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);
let verified = 0;

// ---- VRAM -> VRAM through CUDA IPC ----------------------------------------------------
{
  const p = await pair("ipc", ["UCX"]);
  try {
    for (const page of SIZES) {
      const bytes = page * PAGES;
      const { local, remote } = lists(p, page, PAGES);
      const idx = new Uint32Array(seq(PAGES));
      const req = p.agent.createTransfer("WRITE", local, idx, remote, idx);
      await run(req); // opens the peer's IPC handle
      const { iters, ms } = await timeLoop(() => run(req), { minMs: MIN_MS, minIters: 5 });
      req.release();
      report.add({
        name: `vram_ipc_write_${page / MiB}MiB_x${PAGES}`,
        value: gbps(bytes * iters, ms),
        unit: "GB/s",
        limit: d2d.get(bytes),
        limitName: "cudaMemcpy d2d",
        goal: { op: ">=", ratio: 0.8 },
        extra: { bytesPerRequest: bytes, requests: iters, path: "CUDA IPC, pages merged" },
      });
      verified += await verify(p, page, seq(PAGES), seq(PAGES));
      // Scattered: page i -> (i * 37 + 11) % 64, no two consecutive: 64 copies, by the
      // library's copy kernel (one launch) ...
      const perm = seq(PAGES).map((i) => (i * 37 + 11) % PAGES);
      const sreq = p.agent.createTransfer("WRITE", local, idx, remote, perm);
      await run(sreq);
      const s = await timeLoop(() => run(sreq), { minMs: MIN_MS, minIters: 5 });
      sreq.release();
      report.add({
        name: `vram_ipc_write_${page / MiB}MiB_x${PAGES}_scattered`,
        value: gbps(bytes * s.iters, s.ms),
        unit: "GB/s",
        limit: d2d.get(bytes),
        limitName: "cudaMemcpy d2d",
        extra: { path: "CUDA IPC, 64 scattered pages, vram_copy=auto (copy kernel)" },
      });
      verified += await verify(p, page, seq(PAGES), perm);
      if (page === 4 * MiB) {
        // ... and, for comparison, by the runtime's copies (vram_copy=memcpy: one
        // cudaMemcpyBatchAsync, else one cudaMemcpyAsync per page).
        const a2 = await NixlAgent.create({
          name: `gpu-bench-memcpy-${process.pid}`,
          engine: "builtin",
          params: { vram_copy: "memcpy" },
        });
        try {
          a2.registerMemory(p.gpu);
          a2.addRemoteAgent(p.peer.meta);
          using l2 = DescList.pages(p.gpu, page, PAGES);
          using r2 = DescList.pages(
            { address: p.peer.address, memType: "VRAM", device: 0 },
            page,
            PAGES,
          );
          const pl = a2.prepDescList("", l2), pr = a2.prepDescList(p.peer.name, r2);
          const mreq = a2.createTransfer("WRITE", pl, idx, pr, perm);
          await run(mreq);
          const m = await timeLoop(() => run(mreq), { minMs: MIN_MS, minIters: 5 });
          mreq.release();
          report.add({
            name: `vram_ipc_write_${page / MiB}MiB_x${PAGES}_scattered_memcpy`,
            value: gbps(bytes * m.iters, m.ms),
            unit: "GB/s",
            limit: d2d.get(bytes),
            limitName: "cudaMemcpy d2d",
            extra: { path: "CUDA IPC, 64 scattered pages, vram_copy=memcpy" },
          });
        } finally {
          await a2.close();
        }
        // Two requests in flight (pages 0..63 and 64..127).
        const two = lists(p, page, 2 * PAGES);
        const hi = new Uint32Array(seq(PAGES, PAGES));
        const ra = p.agent.createTransfer("WRITE", two.local, idx, two.remote, idx);
        const rb = p.agent.createTransfer("WRITE", two.local, hi, two.remote, hi);
        await Promise.all([run(ra), run(rb)]);
        const d = await timeLoop(() => Promise.all([run(ra), run(rb)]), {
          minMs: MIN_MS,
          minIters: 5,
        });
        ra.release();
        rb.release();
        two.local.release();
        two.remote.release();
        report.add({
          name: `vram_ipc_write_${page / MiB}MiB_x${PAGES}_depth2`,
          value: gbps(2 * bytes * d.iters, d.ms),
          unit: "GB/s",
          limit: d2d.get(bytes),
          limitName: "cudaMemcpy d2d",
          extra: { path: "CUDA IPC, two requests of 64 pages in flight" },
        });
      }
      if (page === 28 * MiB) {
        const rreq = p.agent.createTransfer("READ", local, idx, remote, idx);
        await run(rreq);
        const r = await timeLoop(() => run(rreq), { minMs: MIN_MS, minIters: 5 });
        rreq.release();
        report.add({
          name: `vram_ipc_read_${page / MiB}MiB_x${PAGES}`,
          value: gbps(bytes * r.iters, r.ms),
          unit: "GB/s",
          limit: d2d.get(bytes),
          limitName: "cudaMemcpy d2d",
          extra: { path: "CUDA IPC, pages merged" },
        });
      }
      local.release();
      remote.release();
    }
    const info = p.agent.info();
    console.log(
      `ipc agent: posts_cuda=${info.posts_cuda} posts_staged=${info.posts_staged}, copy ` +
        `kernel: ${info.vram_copy_note ?? "in use"}`,
    );
  } finally {
    await p.peer.stop();
    await p.agent.close();
  }
}

// ---- the same VRAM -> VRAM on the nixl engine (UCX cuda_ipc), and on raw NIXL ----------
// Both engines in one run: the builtin rows above, the nixl engine's here (NIXL's UCX
// backend, UCX's cuda_ipc transport), merged and scattered, each against cudaMemcpy d2d,
// and bench/nixl_raw.cpp on the same shapes (nothing of ours between the program and
// nixlAgent; its scattered order is the reverse one, as unmergeable as the permutation).
const nixlProbe = await probeEngine("nixl").catch(() => undefined);
let nixlSkipped = !nixlProbe?.available
  ? `nixl engine not available: ${nixlProbe?.reason ?? "probe failed"}`
  : undefined;
const nixlFigures = new Map<string, number>();
// A failure of the nixl half (UCX without CUDA transports, ...) is reported, and the
// builtin figures still make the JSON line.
const nixlFailed = (e: unknown) => {
  nixlSkipped = `nixl engine VRAM rows failed: ${String(e).split("\n")[0]}`;
  console.log(nixlSkipped);
};
if (nixlSkipped) {
  console.log(`nixl engine VRAM rows skipped: ${nixlSkipped}`);
} else {
  await nixlRows().catch(nixlFailed);
}
async function nixlRows() {
  const p = await pair("nixl-ipc", ["UCX"], undefined, 0, "nixl");
  try {
    console.log(
      `nixl engine: NIXL ${nixlProbe!.version}, ${p.agent.info().ucx_version ?? "UCX ?"}`,
    );
    for (const page of SIZES) {
      const bytes = page * PAGES;
      const { local, remote } = lists(p, page, PAGES);
      const idx = new Uint32Array(seq(PAGES));
      const perm = seq(PAGES).map((i) => (i * 37 + 11) % PAGES);
      for (const [kind, ridx] of [["", idx], ["_scattered", new Uint32Array(perm)]] as const) {
        const req = p.agent.createTransfer("WRITE", local, idx, remote, ridx);
        await run(req); // opens the peer's IPC handle
        const { iters, ms } = await timeLoop(() => run(req), { minMs: MIN_MS, minIters: 5 });
        req.release();
        const name = `nixl_vram_ipc_write_${page / MiB}MiB_x${PAGES}${kind}`;
        const v = gbps(bytes * iters, ms);
        nixlFigures.set(`write_${page / MiB}MiB_x${PAGES}${kind}`, v);
        report.add({
          name,
          value: v,
          unit: "GB/s",
          limit: d2d.get(bytes),
          limitName: "cudaMemcpy d2d",
          extra: {
            engine: "nixl",
            bytesPerRequest: bytes,
            requests: iters,
            path: `NIXL UCX (cuda_ipc), pages ${kind ? "scattered" : "merged"}`,
          },
        });
        verified += await verify(p, page, seq(PAGES), Array.from(ridx));
      }
      local.release();
      remote.release();
    }
  } finally {
    await p.peer.stop();
    await p.agent.close();
  }
  const rawTool = new URL("../native/build/nixl-raw", import.meta.url).pathname;
  const args = [
    "--buffer",
    "vram:0",
    "--wait",
    "backoff",
    "--lat",
    "0",
    "--min-ms",
    String(MIN_MS),
  ];
  for (const page of SIZES) {
    args.push("--shape", `${page}x${PAGES}`, "--shape", `${page}x${PAGES}s`);
  }
  const r = spawnSync(rawTool, args, { encoding: "utf8", timeout: 300_000 });
  // The JSON line, not whatever UCX logs to stdout after it (it does, on exit).
  const line = r.stdout?.trim().split("\n").findLast((l) => l.startsWith("{")) ?? "";
  if (r.status !== 0 || !line.startsWith("{")) {
    console.log(
      `raw NIXL VRAM rows skipped: nixl-raw ${args.join(" ")} failed (${r.status}): ` +
        `${r.stderr?.trim()}`,
    );
  } else {
    for (
      const f of JSON.parse(line).results as {
        name: string;
        gbps: number;
        count: number;
        page: number;
      }[]
    ) {
      const bytes = f.page * f.count;
      report.add({
        name: `raw_nixl_vram_ipc_${f.name}`,
        value: f.gbps,
        unit: "GB/s",
        limit: d2d.get(bytes),
        limitName: "cudaMemcpy d2d",
        extra: { engine: "raw nixl", tool: "native/build/nixl-raw", wait: "backoff" },
      });
      const n = nixlFigures.get(f.name);
      if (n !== undefined) {
        report.add({
          name: `nixl_over_raw_vram_ipc_${f.name}`,
          value: n,
          unit: "GB/s",
          limit: f.gbps,
          limitName: "raw NIXL",
          goal: { op: ">=", ratio: 0.95 },
          extra: { engine: "nixl" },
        });
      }
    }
  }
}

// ---- VRAM(cuda:0) -> VRAM(cuda:1) of another process through CUDA IPC ------------------
let crossSkipped: string | undefined;
if (cuda.count >= 2) {
  const page = 28 * MiB;
  const bytes = page * PAGES;
  const reps = Math.max(10, Math.ceil((quick ? 1e11 : 4e11) / bytes));
  const probe = nativeLimit(["cuda-memcpy-peer", String(bytes), String(reps), "0", "1"]);
  const peerLimit = probe && typeof probe.gbps === "number" ? probe.gbps : undefined;
  if (peerLimit === undefined) {
    console.log(`cudaMemcpyPeer 0 -> 1 limit not measured: ${JSON.stringify(probe)}`);
  }
  const p = await pair("cross", ["UCX"], undefined, 1);
  try {
    const { local, remote } = lists(p, page, PAGES);
    const idx = new Uint32Array(seq(PAGES));
    const req = p.agent.createTransfer("WRITE", local, idx, remote, idx);
    await run(req); // opens the peer's IPC handle (on cuda:0, peer access enabled lazily)
    const { iters, ms } = await timeLoop(() => run(req), { minMs: MIN_MS, minIters: 5 });
    req.release();
    report.add({
      name: `vram_ipc_write_${page / MiB}MiB_x${PAGES}_cross_device`,
      value: gbps(bytes * iters, ms),
      unit: "GB/s",
      limit: peerLimit,
      limitName: "cudaMemcpyPeer 0 -> 1",
      extra: {
        bytesPerRequest: bytes,
        requests: iters,
        path: "CUDA IPC, cuda:0 -> peer process's cuda:1, pages merged",
        peerAccess: probe?.peer_access,
      },
    });
    verified += await verify(p, page, seq(PAGES), seq(PAGES));
    local.release();
    remote.release();
  } finally {
    await p.peer.stop();
    await p.agent.close();
  }
} else {
  crossSkipped = `needs 2 CUDA devices, found ${cuda.count}`;
  console.log(`vram_ipc_write_28MiB_x${PAGES}_cross_device skipped: ${crossSkipped}`);
}

// ---- VRAM -> pinned -> TCP -> pinned -> VRAM ------------------------------------------
{
  const tcp = new Map(SIZES.map((page) => {
    const probe = nativeLimit(["tcp", String(page), String(2 * 1024 * MiB)]);
    return [page, probe && typeof probe.gbps === "number" ? probe.gbps : undefined];
  }));
  const p = await pair("tcp", ["TCP"], TCP_PARAMS);
  try {
    for (const page of SIZES) {
      const bytes = page * PAGES;
      const { local, remote } = lists(p, page, PAGES);
      const idx = new Uint32Array(seq(PAGES));
      // Scattered pages: one WRITE frame per page (the common case of a KV batch).
      const perm = seq(PAGES).map((i) => (i * 37 + 11) % PAGES);
      const req = p.agent.createTransfer("WRITE", local, idx, remote, perm);
      await run(req); // connects, allocates the staging rings
      const { iters, ms } = await timeLoop(() => run(req), {
        minMs: MIN_MS,
        minIters: quick ? 2 : 3,
      });
      req.release();
      report.add({
        name: `vram_tcp_write_${page / MiB}MiB_x${PAGES}`,
        value: gbps(bytes * iters, ms),
        unit: "GB/s",
        limit: tcp.get(page),
        limitName: "raw TCP stream",
        goal: { op: ">=", ratio: 0.8 },
        extra: {
          bytesPerRequest: bytes,
          requests: iters,
          path: "VRAM -> pinned -> TCP (loopback) -> pinned -> VRAM, both sides staged",
          pinnedH2dGbps: h2d,
          pinnedD2hGbps: d2h,
        },
      });
      verified += await verify(p, page, seq(PAGES), perm);
      local.release();
      remote.release();
    }
    const info = p.agent.info();
    console.log(`tcp agent: posts_tcp=${info.posts_tcp} posts_staged=${info.posts_staged}`);
  } finally {
    await p.peer.stop();
    await p.agent.close();
  }
}

console.log(`verified: ${verified} pages matched by checksum on both sides`);
report.finish({
  gpu,
  devices: cuda.count,
  quick,
  verifiedPages: verified,
  ...(nixlSkipped ? { nixlSkipped } : { nixl: nixlProbe?.version }),
  ...(crossSkipped ? { crossDeviceSkipped: crossSkipped } : {}),
});
