/**
 * The same transfers through the builtin engine, through the nixl engine (NIXL's UCX
 * backend) and straight on NIXL (`native/build/nixl-raw`, bench/nixl_raw.cpp: our own
 * program on `nixlAgent` with nothing of ours in between), side by side in one run; each
 * figure is printed as a ratio to what bounds it, measured in the same run, then one JSON
 * line (with NIXL's and UCX's versions):
 * - on two kinds of DRAM, each row says which: `shared` (memfd `MAP_SHARED`, 4 KiB pages
 *   where shmem gets no huge pages: the builtin engine's default) and `private`
 *   (anonymous memory with `MADV_HUGEPAGE`: the nixl engine's default), every engine on
 *   both;
 * - same host (backend UCX): WRITE of 64 pages of 1 MiB and of 4 MiB per request, of 4096
 *   pages of 4 KiB (consecutive, so both engines merge them into one message) and of the
 *   same 4096 pages scattered (the peer's pages in reverse order: nothing merges), vs
 *   single-thread memcpy of the same bytes;
 * - TCP on loopback (backend TCP: the builtin engine's TCP, NIXL's UCX restricted to TCP)
 *   for the same requests, vs a raw TCP stream of the messages that go on the wire: the
 *   whole request when its pages merge, one page when they do not;
 * - 4 KiB WRITE post-to-completion latency, p50 and p99;
 * - the nixl engine against raw NIXL on the same buffer and transport, waiting the same
 *   way (polls for 50 us, then sleeps of 2 us doubling to 1 ms): bandwidth (goal >= 0.95
 *   of raw), 4 KiB p50 (goal <= 1.1 x raw) and p99 (goal <= 1.3 x raw); raw NIXL polling
 *   back to back (`raw_nixl_spin_*`) is printed beside it;
 * - for each figure on each buffer, nixl / builtin.
 * Without NIXL the builtin half runs and the rest is reported as skipped.
 *
 * ```sh
 * deno run -A bench/nixl_bench.ts [--quick]
 * bun bench/nixl_bench.ts [--quick]
 * ```
 * @module
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
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
interface Shape {
  page: number;
  count: number;
  scattered: boolean;
}
const SHAPES: Shape[] = [
  { page: 4096, count: 4096, scattered: false },
  { page: 4096, count: 4096, scattered: true },
  { page: 1 * MiB, count: 64, scattered: false },
  { page: 4 * MiB, count: 64, scattered: false },
];
const SIZE = 256 * MiB;
const MIN_MS = quick ? 300 : 1500;
const LAT_N = quick ? 3_000 : 20_000;

type Engine = "builtin" | "nixl";
const ENGINES: Engine[] = nixlSkip ? ["builtin"] : ["builtin", "nixl"];
const TRANSPORTS = [
  { tag: "same_host", backends: ["UCX"], raw: "UCX" },
  { tag: "tcp_loopback", backends: ["TCP"], raw: "TCP" },
];
/** The two kinds of DRAM; `default` says whose default each is. */
const BUFFERS = [
  { kind: "shared", shared: true, note: "memfd MAP_SHARED, 4 KiB pages", defaultOf: "builtin" },
  { kind: "private", shared: false, note: "private, MADV_HUGEPAGE", defaultOf: "nixl" },
] as const;
type BufferKind = (typeof BUFFERS)[number]["kind"];

/** The builtin engine listens and advertises on loopback; NIXL's UCX stays on loopback
 * through UCX_NET_DEVICES=lo (set by tests/helpers/nixl_env.ts unless already set). */
function paramsFor(engine: Engine, backends: string[]): Record<string, string> | undefined {
  if (engine !== "builtin") return undefined;
  return backends.includes("TCP")
    ? { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" }
    : { listen_host: "127.0.0.1" };
}

const shapeName = ({ page, count, scattered }: Shape) =>
  `write_${page >= MiB ? `${page / MiB}MiB` : `${page / 1024}KiB`}_x${count}` +
  (scattered ? "_scattered" : "");
/** Bytes per message on the wire: both engines merge descriptors that are consecutive on
 * both sides (the whole request here), scattered ones go one page at a time. */
const wireBytes = (s: Shape) => (s.scattered ? s.page : s.page * s.count);

const report = new Report("nixl");
const lib = await loadNativeLibrary();

// ---- physical limits measured in this run ----------------------------------------
const scratch = await NixlAgent.create({ name: `nb-scratch-${process.pid}`, engine: "builtin" });
const s1 = scratch.allocate(SIZE);
const s2 = scratch.allocate(SIZE);
s1.bytes.fill(1);
s2.bytes.fill(2);
const bytesOf = (s: Shape) => s.page * s.count;
const limits = {
  memcpy: new Map(
    SHAPES.map((s) => [bytesOf(s), memcpyLimit(lib, bytesOf(s), s1, s2, MIN_MS / 2)]),
  ),
  tcp: new Map(
    SHAPES.map((
      s,
    ) => [wireBytes(s), tcpLimit(wireBytes(s), Math.max(1024 * MiB, 4 * wireBytes(s)))]),
  ),
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

// ---- raw NIXL (bench/nixl_raw.cpp) ----------------------------------------------
interface RawFigure {
  name: string;
  gbps?: number;
  p50_us?: number;
  p99_us?: number;
}
const rawTool = new URL("../native/build/nixl-raw", import.meta.url).pathname;
function rawNixl(
  backend: string,
  buffer: BufferKind,
  wait: "spin" | "backoff",
): Map<string, RawFigure> | undefined {
  if (nixlSkip || !existsSync(rawTool)) return undefined;
  const args = ["--backend", backend, "--buffer", buffer, "--min-ms", String(MIN_MS)];
  args.push("--wait", wait);
  args.push("--lat", String(LAT_N));
  for (const s of SHAPES) args.push("--shape", `${s.page}x${s.count}${s.scattered ? "s" : ""}`);
  const r = spawnSync(rawTool, args, { encoding: "utf8", timeout: 300_000 });
  // The JSON line, not whatever UCX logs to stdout after it (it does, on exit).
  const line = r.stdout?.trim().split("\n").findLast((l) => l.startsWith("{")) ?? "";
  if (r.status !== 0 || !line.startsWith("{")) {
    console.log(`nixl-raw ${args.join(" ")} failed (${r.status}): ${r.stderr?.trim()}`);
    return undefined;
  }
  for (const l of r.stdout.trim().split("\n").slice(0, -1)) console.log(l);
  const out = new Map<string, RawFigure>();
  for (const f of JSON.parse(line).results as RawFigure[]) out.set(f.name, f);
  return out;
}

// ---- one engine x transport x buffer --------------------------------------------
async function pair(engine: Engine, tag: string, backends: string[], shared: boolean) {
  const stamp = `${process.pid}-${Date.now()}`;
  const params = paramsFor(engine, backends);
  const peer = await spawnNixlPeer({
    name: `nb-peer-${engine}-${tag}-${stamp}`,
    engine,
    backends,
    params,
    size: SIZE,
    shared,
  });
  const agent = await NixlAgent.create({
    name: `nb-${engine}-${tag}-${stamp}`,
    engine,
    backends,
    params,
  });
  const buf = await linkPeer(agent, peer, SIZE, { shared });
  if (engine === "nixl") {
    const info = agent.info();
    if (info.ucx_version) versions.ucx = info.ucx_version;
  }
  return { peer, agent, buf };
}

const run = (req: TransferRequest) => runTransfer(req, 60_000);
const figures = new Map<string, Scored>();

for (const { tag, backends, raw } of TRANSPORTS) {
  for (const b of BUFFERS) {
    const extraOf = (engine: string) => ({
      engine,
      backends,
      buffer: `${b.kind} (${b.note})`,
      engineDefault: b.defaultOf === engine,
    });
    for (const engine of ENGINES) {
      const { peer, agent, buf } = await pair(engine, tag, backends, b.shared);
      try {
        for (const shape of SHAPES) {
          const bytes = bytesOf(shape);
          const { req, local, remote } = writeRequest(
            agent,
            buf,
            peer,
            shape.page,
            shape.count,
            shape.scattered,
          );
          await run(req); // connect, fault in
          const { iters, ms } = await timeLoop(() => run(req), { minMs: MIN_MS, minIters: 3 });
          req.release();
          local.release();
          remote.release();
          const name = `${tag}_${b.kind}_${shapeName(shape)}`;
          const same = tag === "same_host";
          figures.set(
            `${engine}:${name}`,
            report.add({
              name: `${engine}_${name}`,
              value: gbps(bytes * iters, ms),
              unit: "GB/s",
              limit: same ? limits.memcpy.get(bytes) : limits.tcp.get(wireBytes(shape)),
              limitName: same
                ? "memcpy (1 thread)"
                : `raw TCP stream of ${
                  wireBytes(shape) >= MiB
                    ? `${wireBytes(shape) / MiB} MiB`
                    : `${wireBytes(shape) / 1024} KiB`
                } messages`,
              extra: { ...extraOf(engine), bytesPerRequest: bytes, requests: iters },
            }),
          );
        }
        // 4 KiB latency
        const { req, local, remote } = writeRequest(agent, buf, peer, 4096, 1);
        const { samples, inline } = await postLatency(req, LAT_N, 1000, () => run(req));
        req.release();
        local.release();
        remote.release();
        for (const p of [50, 99]) {
          figures.set(
            `${engine}:${tag}_${b.kind}_write_4KiB_p${p}`,
            report.add({
              name: `${engine}_${tag}_${b.kind}_write_4KiB_p${p}`,
              value: percentile(samples, p),
              unit: "us",
              extra: { ...extraOf(engine), samples: LAT_N, completedInPost: inline },
            }),
          );
        }
      } finally {
        await peer.stop();
        await agent.close();
      }
    }

    // raw NIXL on the same buffer and transport, and the nixl engine against it. The
    // yardstick waits the way the library does (backoff: 50 us of polls, then sleeps);
    // the spinning variant (getXferStatus back to back) is printed beside it.
    const rawSpin = ENGINES.includes("nixl") ? rawNixl(raw, b.kind, "spin") : undefined;
    const rawFigures = ENGINES.includes("nixl") ? rawNixl(raw, b.kind, "backoff") : undefined;
    if (!rawFigures) continue;
    for (const shape of SHAPES) {
      const r = rawFigures.get(shapeName(shape));
      const name = `${tag}_${b.kind}_${shapeName(shape)}`;
      const n = figures.get(`nixl:${name}`);
      if (!r?.gbps) continue;
      const spin = rawSpin?.get(shapeName(shape))?.gbps;
      if (spin !== undefined) {
        report.add({
          name: `raw_nixl_spin_${name}`,
          value: spin,
          unit: "GB/s",
          extra: { ...extraOf("raw nixl"), wait: "spin", tool: "native/build/nixl-raw" },
        });
      }
      const rawRow = report.add({
        name: `raw_nixl_${name}`,
        value: r.gbps,
        unit: "GB/s",
        extra: { ...extraOf("raw nixl"), wait: "backoff", tool: "native/build/nixl-raw" },
      });
      figures.set(`raw:${name}`, rawRow);
      if (n) {
        report.add({
          name: `nixl_over_raw_${name}`,
          value: n.value,
          unit: "GB/s",
          limit: r.gbps,
          limitName: "raw NIXL",
          goal: { op: ">=", ratio: 0.95 },
          extra: extraOf("nixl"),
        });
      }
    }
    const lat = rawFigures.get("write_4KiB_latency");
    for (const [p, key] of [[50, "p50_us"], [99, "p99_us"]] as const) {
      const v = lat?.[key];
      const n = figures.get(`nixl:${tag}_${b.kind}_write_4KiB_p${p}`);
      if (v === undefined) continue;
      const spin = rawSpin?.get("write_4KiB_latency")?.[key];
      if (spin !== undefined) {
        report.add({
          name: `raw_nixl_spin_${tag}_${b.kind}_write_4KiB_p${p}`,
          value: spin,
          unit: "us",
          extra: { ...extraOf("raw nixl"), wait: "spin", samples: LAT_N },
        });
      }
      report.add({
        name: `raw_nixl_${tag}_${b.kind}_write_4KiB_p${p}`,
        value: v,
        unit: "us",
        extra: { ...extraOf("raw nixl"), samples: LAT_N },
      });
      if (n) {
        report.add({
          name: `nixl_over_raw_${tag}_${b.kind}_write_4KiB_p${p}`,
          value: n.value,
          unit: "us",
          limit: v,
          limitName: "raw NIXL",
          goal: { op: "<=", ratio: p === 50 ? 1.1 : 1.3 },
          extra: extraOf("nixl"),
        });
      }
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
  buffers: Object.fromEntries(BUFFERS.map((b) => [b.kind, `${b.note}; default of ${b.defaultOf}`])),
  nixlSkipped: nixlSkip ?? null,
  rawNixl: existsSync(rawTool) ? rawTool : null,
  versions,
  nixlOverBuiltin: comparisons,
});
