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
 * - 4 KiB WRITE post-to-completion latency, p50 and p99 (the stopwatch's own cost, measured
 *   in the same run, taken out of every sample here and in nixl-raw);
 * - the nixl engine against raw NIXL on the same buffer and transport, waiting the same
 *   way (polls for 50 us, then sleeps of 2 us doubling to 1 ms): bandwidth (goal >= 0.95
 *   of raw), 4 KiB p50 (goal <= 1.1 x raw) and p99 (goal <= 1.3 x raw); raw NIXL polling
 *   back to back (`raw_nixl_spin_*`) is printed beside it. Raw NIXL runs as
 *   `nixl-raw --serve` beside the engine's agents, and every figure is taken in
 *   `--rounds` rounds (5; 3 with `--quick`) alternating with raw NIXL's (engine then raw,
 *   raw then engine, ...), so a load on the machine hits both; the 4 KiB latency in
 *   four times as many shorter rounds (20 of 1,000 samples; 6 of 500 with `--quick`);
 *   each row prints the per-round ratios, and the nixl / raw ratio is their median;
 * - for each figure on each buffer, nixl / builtin.
 * Without NIXL the builtin half runs and the rest is reported as skipped.
 *
 * `--only a,b` keeps the rows whose names contain every one of the words (of the
 * transport, buffer, engine and shape: `tcp_loopback`, `private`, `nixl`, `4KiB_x4096`),
 * e.g. for before/after pairs of one figure; the 4 KiB latency runs with any shape kept.
 *
 * ```sh
 * deno run -A bench/nixl_bench.ts [--quick] [--rounds N] [--only tcp_loopback,private,nixl]
 * bun bench/nixl_bench.ts [--quick] [--rounds N] [--only ...]
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
import { RAW_TOOL, type RawLatency, startRawNixl } from "./raw_nixl.ts";

const quick = process.argv.includes("--quick");
/** Rounds of each nixl-engine figure, alternated with rounds of raw NIXL. */
const ROUNDS = (() => {
  const i = process.argv.indexOf("--rounds");
  if (i < 0) return quick ? 3 : 5;
  const n = Number(process.argv[i + 1]);
  if (!Number.isInteger(n) || n < 1 || n > 100) {
    throw new Error(`--rounds: expected an integer 1..100, got ${process.argv[i + 1]}`);
  }
  return n;
})();
/** `--only`: words a row's transport, buffer, engine and shape must all match. */
const ONLY: string[] = (() => {
  const i = process.argv.indexOf("--only");
  if (i < 0) return [];
  const v = process.argv[i + 1];
  if (!v || v.startsWith("--")) throw new Error("--only: expected words, e.g. tcp_loopback,nixl");
  return v.split(",").filter((w) => w.length > 0);
})();
/** Whether every `--only` word is one of `parts` or inside the shape's name. */
const kept = (parts: string[], shape: string) =>
  ONLY.every((w) => parts.includes(w) || shape.includes(w));
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
/** Rounds of the nixl engine's 4 KiB latency, each alternated with a round of raw NIXL:
 * four per bandwidth round (20; 6 with `--quick`), at least 500 samples each (so a
 * round's p99 is its 5th-slowest sample, not its slowest). Short rounds put the engine's
 * samples and raw NIXL's close in time: on a shared machine a p99 taken from 4,000
 * samples of one side and then 4,000 of the other mostly compared two moments of load. */
const LAT_ROUNDS = Math.max(1, Math.min(4 * ROUNDS, Math.floor(LAT_N / 500)));
/** What reading the clock twice costs this runtime (us, the median of 20,000 pairs): part
 * of every latency sample, taken out of each (nixl-raw does the same with its C++ clock),
 * so that a slower stopwatch is not billed to the engine. */
const STOPWATCH_US = (() => {
  const d = new Float64Array(20_000);
  for (let i = 0; i < d.length; i++) {
    const t0 = performance.now();
    d[i] = (performance.now() - t0) * 1000;
  }
  return percentile(d.sort(), 50);
})();
console.log(`stopwatch: ${(STOPWATCH_US * 1000).toFixed(0)} ns per sample, taken out of latencies`);

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
const median = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const spread = (xs: number[]) => `${fmt2(Math.min(...xs))}-${fmt2(Math.max(...xs))}`;
const fmt2 = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

/** One engine's figures for one transport and buffer, each shape timed `rounds` times
 * for `MIN_MS / rounds` (and the 4 KiB latency in LAT_ROUNDS batches when `rounds` > 1,
 * else in one), with `between`
 * awaited before (even rounds) or after (odd rounds) each of ours: the rounds of raw
 * NIXL, so that both see the same moments of the machine. */
interface Rounds {
  gbps: Map<string, number[]>;
  p50: number[];
  p99: number[];
  inline: number;
}
type Between = (round: number, what: { shape?: Shape; lat?: number }) => Promise<void>;
/** The transport, buffer and engine being measured (for `--only`). */
let ONLY_PARTS: string[] = [];

async function measure(
  agent: NixlAgent,
  buf: Awaited<ReturnType<typeof pair>>["buf"],
  peer: Awaited<ReturnType<typeof pair>>["peer"],
  rounds: number,
  between: Between,
): Promise<Rounds> {
  const out: Rounds = { gbps: new Map(), p50: [], p99: [], inline: 0 };
  for (const shape of SHAPES.filter((sh) => kept(ONLY_PARTS, shapeName(sh)))) {
    const { req, local, remote } = writeRequest(
      agent,
      buf,
      peer,
      shape.page,
      shape.count,
      shape.scattered,
    );
    await run(req); // connect, fault in
    const per: number[] = [];
    for (let r = 0; r < rounds; r++) {
      if (r % 2 === 0) await between(r, { shape });
      const { iters, ms } = await timeLoop(() => run(req), {
        minMs: MIN_MS / rounds,
        minIters: 3,
      });
      per.push(gbps(bytesOf(shape) * iters, ms));
      if (r % 2 === 1) await between(r, { shape });
    }
    out.gbps.set(shapeName(shape), per);
    req.release();
    local.release();
    remote.release();
  }
  const { req, local, remote } = writeRequest(agent, buf, peer, 4096, 1);
  const latRounds = rounds === 1 ? 1 : LAT_ROUNDS;
  const n = Math.ceil(LAT_N / latRounds);
  for (let r = 0; r < latRounds; r++) {
    if (r % 2 === 0) await between(r, { lat: n });
    const { samples, inline } = await postLatency(req, n, r === 0 ? 1000 : 200, () => run(req));
    out.p50.push(percentile(samples, 50) - STOPWATCH_US);
    out.p99.push(percentile(samples, 99) - STOPWATCH_US);
    out.inline += inline;
    if (r % 2 === 1) await between(r, { lat: n });
  }
  req.release();
  local.release();
  remote.release();
  return out;
}

for (const { tag, backends, raw } of TRANSPORTS) {
  for (const b of BUFFERS) {
    const extraOf = (engine: string) => ({
      engine,
      backends,
      buffer: `${b.kind} (${b.note})`,
      engineDefault: b.defaultOf === engine,
    });
    const same = tag === "same_host";
    const limitOf = (shape: Shape) => ({
      limit: same ? limits.memcpy.get(bytesOf(shape)) : limits.tcp.get(wireBytes(shape)),
      limitName: same
        ? "memcpy (1 thread)"
        : `raw TCP stream of ${
          wireBytes(shape) >= MiB
            ? `${wireBytes(shape) / MiB} MiB`
            : `${wireBytes(shape) / 1024} KiB`
        } messages`,
    });
    for (const engine of ENGINES) {
      if (!SHAPES.some((sh) => kept([tag, b.kind, engine], shapeName(sh)))) continue;
      ONLY_PARTS = [tag, b.kind, engine];
      const { peer, agent, buf } = await pair(engine, tag, backends, b.shared);
      // raw NIXL on the same buffer and transport beside the nixl engine, its rounds
      // interleaved with the engine's: backoff (waits the way the library does: the
      // yardstick) and spin (getXferStatus back to back, printed beside it).
      const rawNixl = engine === "nixl"
        ? await startRawNixl({ backend: raw, buffer: b.kind, size: SIZE })
        : undefined;
      const rawGbps = new Map<string, { backoff: number[]; spin: number[] }>();
      const rawLat = { backoff: [] as RawLatency[], spin: [] as RawLatency[] };
      const between: Between = async (_round, { shape, lat }) => {
        if (!rawNixl) return;
        if (shape) {
          const row = rawGbps.get(shapeName(shape)) ?? { backoff: [], spin: [] };
          rawGbps.set(shapeName(shape), row);
          for (const w of ["backoff", "spin"] as const) {
            row[w].push((await rawNixl.bandwidth(shape, MIN_MS / ROUNDS, w)).gbps);
          }
        } else if (lat) {
          for (const w of ["backoff", "spin"] as const) {
            rawLat[w].push(await rawNixl.latency(lat, _round === 0 ? 1000 : 200, w));
          }
        }
      };
      let m: Rounds;
      try {
        m = await measure(agent, buf, peer, engine === "nixl" ? ROUNDS : 1, between);
      } finally {
        await rawNixl?.close();
        await peer.stop();
        await agent.close();
      }
      for (const shape of SHAPES) {
        const name = `${tag}_${b.kind}_${shapeName(shape)}`;
        const per = m.gbps.get(shapeName(shape));
        if (!per) continue; // left out by --only
        figures.set(
          `${engine}:${name}`,
          report.add({
            name: `${engine}_${name}`,
            value: median(per),
            unit: "GB/s",
            ...limitOf(shape),
            extra: { ...extraOf(engine), bytesPerRequest: bytesOf(shape), rounds: per },
          }),
        );
      }
      for (const [p, per] of [[50, m.p50], [99, m.p99]] as const) {
        figures.set(
          `${engine}:${tag}_${b.kind}_write_4KiB_p${p}`,
          report.add({
            name: `${engine}_${tag}_${b.kind}_write_4KiB_p${p}`,
            value: median(per),
            unit: "us",
            extra: { ...extraOf(engine), samples: LAT_N, completedInPost: m.inline, rounds: per },
          }),
        );
      }
      if (engine !== "nixl" || !rawNixl) continue;

      // nixl / raw: per round (the engine's round against the raw rounds next to it),
      // then the median of those ratios, so a load that hit one round moves one ratio.
      const compare = (
        name: string,
        unit: string,
        ours: number[],
        theirs: { backoff: number[]; spin: number[] },
        goal: { op: ">=" | "<="; ratio: number },
        extra: Record<string, unknown>,
      ) => {
        const ratios = ours.map((v, i) => v / theirs.backoff[i]);
        report.add({
          name: `raw_nixl_spin_${name}`,
          value: median(theirs.spin),
          unit,
          extra: { ...extraOf("raw nixl"), wait: "spin", rounds: theirs.spin, ...extra },
        });
        figures.set(
          `raw:${name}`,
          report.add({
            name: `raw_nixl_${name}`,
            value: median(theirs.backoff),
            unit,
            extra: { ...extraOf("raw nixl"), wait: "backoff", rounds: theirs.backoff, ...extra },
          }),
        );
        console.log(
          `  nixl / raw per round: ${ratios.map((r) => r.toFixed(2)).join(" ")} ` +
            `(nixl ${spread(ours)}, raw ${spread(theirs.backoff)} ${unit})`,
        );
        report.add({
          name: `nixl_over_raw_${name}`,
          value: median(ours),
          unit,
          limit: median(theirs.backoff),
          limitName: "raw NIXL (median of rounds)",
          ratio: median(ratios),
          goal,
          extra: { ...extraOf("nixl"), ratio: "median of per-round ratios", rounds: ratios },
        });
      };
      for (const shape of SHAPES) {
        const name = `${tag}_${b.kind}_${shapeName(shape)}`;
        const theirs = rawGbps.get(shapeName(shape));
        if (!theirs) continue;
        compare(name, "GB/s", m.gbps.get(shapeName(shape))!, theirs, { op: ">=", ratio: 0.95 }, {
          tool: "native/build/nixl-raw --serve",
        });
      }
      for (const [p, key] of [[50, "p50_us"], [99, "p99_us"]] as const) {
        compare(
          `${tag}_${b.kind}_write_4KiB_p${p}`,
          "us",
          p === 50 ? m.p50 : m.p99,
          { backoff: rawLat.backoff.map((l) => l[key]), spin: rawLat.spin.map((l) => l[key]) },
          { op: "<=", ratio: p === 50 ? 1.1 : 1.3 },
          { samples: LAT_N },
        );
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
  rawNixl: RAW_TOOL,
  rounds: ROUNDS,
  latencyRounds: LAT_ROUNDS,
  stopwatchNs: STOPWATCH_US * 1000,
  versions,
  nixlOverBuiltin: comparisons,
});
