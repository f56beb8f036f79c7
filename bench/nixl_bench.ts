/**
 * The same transfers through NIXL (engine "nixl": NIXL's UCX backend) and through the
 * builtin engine, side by side in one run, each figure printed as a ratio to the
 * physical limit measured in the same run, then one JSON line (with NIXL's and UCX's
 * versions):
 * - same host (backend UCX): WRITE of 64 pages of 1 MiB and of 4 MiB per request, and of
 *   4096 pages of 4 KiB, vs single-thread memcpy of the same bytes;
 * - TCP on loopback (backend TCP: the builtin engine's TCP, NIXL's UCX restricted to
 *   TCP) for the same requests, vs a raw TCP stream (native/build/kvport-limits);
 * - 4 KiB WRITE post-to-completion latency, p50 and p99, per engine and transport;
 * - for each figure, nixl / builtin.
 * Without NIXL the builtin half runs and the nixl half is reported as skipped.
 *
 * ```sh
 * deno run -A bench/nixl_bench.ts [--quick]
 * bun bench/nixl_bench.ts [--quick]
 * ```
 * @module
 */
import process from "node:process";
import { NixlAgent, probeEngine, type TransferRequest } from "../src/agent.ts";
import { loadNativeLibrary } from "../ffi/mod.ts";
import { nixlSkip, spawnNixlPeer } from "../tests/helpers/nixl_env.ts";
import {
  gbps,
  linkPeer,
  memcpyLimit,
  percentile,
  postLatency,
  Report,
  runTransfer,
  type Scored,
  tcpLimit,
  timeLoop,
  writeRequest,
} from "./lib.ts";

const quick = process.argv.includes("--quick");
const MiB = 1 << 20;
const SHAPES = [
  { page: 4096, count: 4096 },
  { page: 1 * MiB, count: 64 },
  { page: 4 * MiB, count: 64 },
];
const SIZE = 256 * MiB;
const MIN_MS = quick ? 300 : 1500;
const LAT_N = quick ? 3_000 : 20_000;

type Engine = "builtin" | "nixl";
const ENGINES: Engine[] = nixlSkip ? ["builtin"] : ["builtin", "nixl"];
const TRANSPORTS = [
  { tag: "same_host", backends: ["UCX"] },
  { tag: "tcp_loopback", backends: ["TCP"] },
];
/** The builtin engine listens and advertises on loopback; NIXL's UCX stays on loopback
 * through UCX_NET_DEVICES=lo (set by tests/helpers/nixl_env.ts unless already set). */
function paramsFor(engine: Engine, backends: string[]): Record<string, string> | undefined {
  if (engine !== "builtin") return undefined;
  return backends.includes("TCP")
    ? { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" }
    : { listen_host: "127.0.0.1" };
}

const report = new Report("nixl");
const lib = await loadNativeLibrary();

// ---- physical limits measured in this run ----------------------------------------
const scratch = await NixlAgent.create({ name: `nb-scratch-${process.pid}`, engine: "builtin" });
const s1 = scratch.allocate(SIZE);
const s2 = scratch.allocate(SIZE);
s1.bytes.fill(1);
s2.bytes.fill(2);
const limits = {
  memcpy: new Map(
    SHAPES.map((s) => [s.page * s.count, memcpyLimit(lib, s.page * s.count, s1, s2, MIN_MS / 2)]),
  ),
  tcp: new Map(SHAPES.map((s) => [s.page * s.count, tcpLimit(s.page, 1024 * MiB)])),
};
await scratch.close();
if ([...limits.tcp.values()].some((v) => v === undefined)) {
  console.log("tcp limit: native/build/kvport-limits tcp not available; TCP ratios not computed");
}

// ---- versions ------------------------------------------------------------------
const versions: Record<string, string> = {};
if (nixlSkip) {
  console.log(`nixl half skipped: ${nixlSkip}`);
} else {
  const p = await probeEngine("nixl");
  versions.nixl = p.version;
  versions.nixl_lib = p.raw.nixl_lib ?? "";
}

// ---- one engine x transport ----------------------------------------------------
async function pair(engine: Engine, tag: string, backends: string[]) {
  const stamp = `${process.pid}-${Date.now()}`;
  const params = paramsFor(engine, backends);
  const peer = await spawnNixlPeer({
    name: `nb-peer-${engine}-${tag}-${stamp}`,
    engine,
    backends,
    params,
    size: SIZE,
  });
  const agent = await NixlAgent.create({
    name: `nb-${engine}-${tag}-${stamp}`,
    engine,
    backends,
    params,
  });
  const buf = await linkPeer(agent, peer, SIZE);
  if (engine === "nixl") {
    const info = agent.info();
    if (info.ucx_version) versions.ucx = info.ucx_version;
  }
  return { peer, agent, buf };
}

const request = writeRequest;
const run = (req: TransferRequest) => runTransfer(req, 60_000);

const figures = new Map<string, Scored>();

for (const { tag, backends } of TRANSPORTS) {
  for (const engine of ENGINES) {
    const { peer, agent, buf } = await pair(engine, tag, backends);
    try {
      for (const { page, count } of SHAPES) {
        const bytes = page * count;
        const { req, local, remote } = request(agent, buf, peer, page, count);
        await run(req); // connect, fault in
        const { iters, ms } = await timeLoop(() => run(req), { minMs: MIN_MS, minIters: 3 });
        req.release();
        local.release();
        remote.release();
        const label = page >= MiB ? `${page / MiB}MiB` : `${page / 1024}KiB`;
        const name = `${tag}_write_${label}_x${count}`;
        const limit = tag === "same_host" ? limits.memcpy.get(bytes) : limits.tcp.get(bytes);
        figures.set(
          `${engine}:${name}`,
          report.add({
            name: `${engine}_${name}`,
            value: gbps(bytes * iters, ms),
            unit: "GB/s",
            limit,
            limitName: tag === "same_host" ? "memcpy (1 thread)" : "raw TCP stream",
            extra: { engine, backends, bytesPerRequest: bytes, requests: iters },
          }),
        );
      }
      // 4 KiB latency
      const { req, local, remote } = request(agent, buf, peer, 4096, 1);
      const { samples, inline } = await postLatency(req, LAT_N, 1000, () => run(req));
      req.release();
      local.release();
      remote.release();
      for (const p of [50, 99]) {
        figures.set(
          `${engine}:${tag}_write_4KiB_p${p}`,
          report.add({
            name: `${engine}_${tag}_write_4KiB_p${p}`,
            value: percentile(samples, p),
            unit: "us",
            extra: { engine, backends, samples: LAT_N, completedInPost: inline },
          }),
        );
      }
    } finally {
      await peer.stop();
      await agent.close();
    }
  }
}

// ---- nixl / builtin --------------------------------------------------------------
const comparisons: Record<string, number> = {};
if (ENGINES.includes("nixl")) {
  for (const [key, b] of figures) {
    if (!key.startsWith("builtin:")) continue;
    const n = figures.get(`nixl:${key.slice(8)}`);
    if (!n) continue;
    const r = n.value / b.value;
    comparisons[key.slice(8)] = r;
    const better = b.unit === "us" ? r < 1 : r > 1;
    console.log(
      `${key.slice(8)}: nixl/builtin = ${r.toFixed(2)} (${better ? "nixl" : "builtin"} ahead)`,
    );
  }
}

report.finish({
  library: lib.path,
  quick,
  engines: ENGINES,
  nixlSkipped: nixlSkip ?? null,
  versions,
  nixlOverBuiltin: comparisons,
});
