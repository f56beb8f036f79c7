/**
 * PD end to end: a prefiller (this process) sends requests of 1, 8 and 64 chunks to a
 * decoder (a `kvport pd-receiver` child process) over the `nixl` channel (built-in engine
 * when NIXL is absent). For each size: chunks/s, GB/s, and the ratio to memcpy of the
 * same bytes measured in the same run, then one JSON line.
 *
 * ```sh
 * deno run -A bench/pd_bench.ts [--sizes 1,8,64] [--chunk-mib 28]
 * bun bench/pd_bench.ts
 * ```
 *
 * @module
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { benchSenderConfig, timedMemCopy } from "./lib.ts";
import { chunkBytes, MemoryFormat } from "../src/pd/keys.ts";
import { fillPattern } from "../src/pd/pattern.ts";
import { PdSender } from "../src/pd/sender.ts";
import type { NixlChannel } from "../src/channel/nixl.ts";
import { loadNativeLibrary } from "../ffi/mod.ts";
import { freePort, measureMemcpy, nextEvent, spawnKvport } from "../cli/demo_cmd.ts";
import { demoKey } from "../cli/pd_cmd.ts";

/** One measured request size. */
export interface PdBenchResult {
  /** `"pd"`. */
  bench: string;
  /** Chunks per request. */
  chunks: number;
  /** Bytes per chunk. */
  chunkBytes: number;
  /** Requests timed (the median is reported). */
  reps: number;
  /** Median seconds per request (AllocRequest round trips + WRITEs + ProxyNotif). */
  seconds: number;
  /** Chunks per second. */
  chunksPerSec: number;
  /** Bytes per second / 1e9. */
  gbps: number;
  /** memcpy of the same bytes, GB/s, same run. */
  memcpyGbps: number;
  /** gbps / memcpyGbps. */
  ratio: number;
  /** Engine of the channel. */
  engine: string;
  /** The figure's name in the house report format (bench/lib.ts). */
  name: string;
  /** Same as gbps. */
  value: number;
  /** "GB/s". */
  unit: string;
  /** What the ratio is taken against. */
  limitName: string;
  /** For 1 and 64 chunks: the goal on the ratio (>= 0.7 and >= 0.9). */
  goal?: { op: ">="; ratio: number };
  /** Whether the goal was met. */
  pass?: boolean;
  /**
   * Bytes of the decoder's pages that the sender faulted in during the timed requests
   * (builtin engine, same host; `kvp_agent_info`): `create` inside `kvp_xfer_create`,
   * on the request's path, and `ahead` by the prefault-ahead thread, off it.
   */
  prefault?: { createBytes: number; aheadBytes: number };
  /**
   * Requests of up to 8 chunks: one synchronous copy of the request's bytes right after
   * each timed request (`kvp_mem_copy` between two buffers of this process, as
   * `latency_bench` does), median GB/s, and gbps over it. The `memcpy` probe above copies
   * two buffers back and forth with nothing in between, so on a large last-level cache a
   * 28 MiB chunk's probe partly runs from the cache, where a request never does.
   */
  copyAfterEach?: { gbps: number; ratio: number };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/**
 * Runs the benchmark and returns one result per size (also printed, with one JSON line
 * each).
 *
 * @example
 * ```ts
 * import { runPdBench } from "./pd_bench.ts";
 * const results = await runPdBench({ sizes: [1, 8], chunkBytes: 1 << 20 });
 * console.log(results.map((r) => r.ratio));
 * ```
 */
export async function runPdBench(
  options: {
    sizes?: number[];
    chunkBytes?: number;
    batch?: number;
    /** `extra_config.kvport_page_grants` of both sides (default: the default, on). */
    pageGrants?: boolean;
    /** `nixl_backends` of both sides (default `["UCX"]`; `["TCP"]` forces TCP). */
    backends?: string[];
    /** Print nothing (the caller reports). */
    quiet?: boolean;
  } = {},
): Promise<PdBenchResult[]> {
  const log = options.quiet ? () => {} : console.log;
  const backends = options.backends ?? ["UCX"];
  const sizes = options.sizes ?? [1, 8, 64];
  const maxChunks = Math.max(...sizes);
  const full = chunkBytes(MemoryFormat.KV_2LTD, [2, 28, 256, 1024], "bfloat16")!;
  // Sender buffer: the largest request; receiver: twice that (it frees pages as they
  // land, a little behind). Keep all three under half of the free memory.
  const free = os.freemem();
  let chunk = options.chunkBytes ?? full;
  let layers = 28;
  while (options.chunkBytes === undefined && 3 * maxChunks * chunk > free / 2 && layers > 1) {
    layers = Math.max(1, Math.floor(layers / 2));
    chunk = chunkBytes(MemoryFormat.KV_2LTD, [2, layers, 256, 1024], "bfloat16")!;
  }
  const shape = options.chunkBytes === undefined
    ? [2, layers, 256, 1024]
    : [2, 1, 256, Math.max(1, Math.floor(chunk / 1024))]; // K and V: what pd-receiver takes
  chunk = chunkBytes(MemoryFormat.KV_2LTD, shape, "bfloat16")!;
  const note = chunk === full
    ? "28 MiB chunks (28 layers x 2 x 256 tokens x 8 heads x 128 x bf16)"
    : `${(chunk / 2 ** 20).toFixed(1)} MiB chunks (shape [${shape.join(", ")}]` +
      (options.chunkBytes === undefined
        ? `; smaller than 28 MiB because only ${(free / 2 ** 30).toFixed(1)} GiB are free)`
        : ")");
  // The built-in engine unless KVPORT_ENGINE says otherwise: where NIXL is installed `auto`
  // would pick it, and bench/nixl_bench.ts is where the two engines are compared. The
  // decoder child inherits the variable; this process names its engine (Bun's process.env
  // does not reach C's getenv).
  const engineName = (process.env.KVPORT_ENGINE ??= "builtin") as "auto" | "builtin" | "nixl";
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvport-pd-bench-"));
  const [initPort, allocPort] = [await freePort(), await freePort()];
  const base = [
    "enable_pd: true",
    "transfer_channel: nixl",
    "pd_buffer_device: cpu",
    `nixl_backends: [${backends.join(", ")}]`,
    ...(options.pageGrants === undefined
      ? []
      : [`extra_config: {kvport_page_grants: ${options.pageGrants}}`]),
  ];
  const dec = path.join(dir, "decoder.yaml");
  fs.writeFileSync(
    dec,
    [
      ...base,
      "pd_role: receiver",
      "pd_peer_host: 127.0.0.1",
      `pd_peer_init_port: [${initPort}]`,
      `pd_peer_alloc_port: [${allocPort}]`,
      `pd_buffer_size: ${2 * maxChunks * chunk}`,
      "pd_allocation_timeout_sec: 60",
    ].join("\n"),
  );
  const shapeArg = shape.join(",");
  const rx = spawnKvport("pd-receiver", [
    "pd-receiver",
    "--config",
    dec,
    "--kv-shape",
    shapeArg,
    "--json",
  ]);
  const results: PdBenchResult[] = [];
  let tx: PdSender | undefined;
  try {
    await nextEvent(rx, "ready", 30_000);
    // Drain the receiver's per-chunk lines so its pipe never fills.
    (async () => {
      for await (const _ of rx.lines) { /* landed events */ }
    })();
    const config = benchSenderConfig(maxChunks * chunk, {
      nixl_backends: backends,
      ...(options.pageGrants === undefined
        ? {}
        : { extra_config: { kvport_page_grants: options.pageGrants } }),
    });
    tx = await PdSender.fromConfig(config, { pageSize: chunk, engine: engineName });
    const spec = {
      receiverHost: "127.0.0.1",
      receiverInitPort: [initPort],
      receiverAllocPort: [allocPort],
    };
    await tx.connect(spec);
    const engine = tx.channel.engine;
    log(
      `pd bench: ${engine} engine, ${note}; decoder is another process on this host`,
    );
    let reqNo = 0;
    const lib = await loadNativeLibrary();
    for (const n of sizes) {
      const reps = n === 1 ? 30 : n <= 8 ? 10 : 5;
      const times: number[] = [];
      let infoAtStart: Record<string, string> = {};
      const agent = (tx.channel as NixlChannel).agent;
      // The copy after each request (sizes of up to 8 chunks: two more buffers of a
      // request each, filled once so that no copy pays for page faults).
      const copies: number[] = [];
      const cp = n <= 8 ? [agent.allocate(n * chunk), agent.allocate(n * chunk)] : undefined;
      cp?.forEach((b, i) => b.bytes.fill(i + 1));
      const copyOnce = (): number =>
        timedMemCopy(lib, 0, 0, cp![1].address, cp![0].address, n * chunk) / 1000;
      for (let r = -1; r < reps; r++) {
        if (r === 0) infoAtStart = agent.info();
        const reqId = `bench-${n}-${reqNo++}`;
        const pages = await tx.allocate(n, 60_000);
        const keys = pages.map((_, i) => demoKey(reqId, i));
        keys.forEach((k, i) => fillPattern(k, tx!.channel.pages[pages[i]]));
        const batch = options.batch ?? n;
        const t0 = performance.now();
        for (let at = 0; at < n; at += batch) {
          const m = Math.min(batch, n - at);
          await tx.send({ ...spec, reqId, isLastPrefill: at + m === n }, {
            keys: keys.slice(at, at + m),
            pages: pages.slice(at, at + m),
            shape,
            dtype: "bfloat16",
            lastChunkToks: 256,
          });
        }
        const dt = (performance.now() - t0) / 1000;
        if (r >= 0) times.push(dt); // r = -1: warm-up
        if (r >= 0 && cp) copies.push(copyOnce());
      }
      cp?.forEach((b) => b.free());
      const info = agent.info();
      const grew = (k: string) => Number(info[k]) - Number(infoAtStart[k]);
      const prefault = info.prefault_create_bytes === undefined ? undefined : {
        createBytes: grew("prefault_create_bytes"),
        aheadBytes: grew("prefault_ahead_bytes"),
      };
      const seconds = median(times);
      const bytes = n * chunk;
      const copyAfterEach = copies.length > 0
        ? {
          gbps: bytes / median(copies) / 1e9,
          ratio: (bytes / seconds) / (bytes / median(copies)),
        }
        : undefined;
      const mc = await measureMemcpy(bytes);
      const gbps = bytes / seconds / 1e9;
      const res: PdBenchResult = {
        bench: "pd",
        chunks: n,
        chunkBytes: chunk,
        reps,
        seconds,
        chunksPerSec: n / seconds,
        gbps,
        memcpyGbps: mc.bps / 1e9,
        ratio: gbps / (mc.bps / 1e9),
        engine,
        name: `pd_${n}x${(chunk / 2 ** 20).toFixed(0)}MiB`,
        value: gbps,
        unit: "GB/s",
        limitName: "memcpy (1 thread)",
        // Goals (issue 15): one chunk >= 0.7 of memcpy, 64 chunks >= 0.9.
        ...(n === 1 || n === 64
          ? {
            goal: { op: ">=", ratio: n === 1 ? 0.7 : 0.9 },
            pass: gbps / (mc.bps / 1e9) >= (n === 1 ? 0.7 : 0.9),
          }
          : {}),
        ...(prefault ? { prefault } : {}),
        ...(copyAfterEach ? { copyAfterEach } : {}),
      };
      log(
        `  ${String(n).padStart(3)} chunk(s): ${(seconds * 1000).toFixed(2)} ms, ` +
          `${res.chunksPerSec.toFixed(0)} chunks/s, ${gbps.toFixed(2)} GB/s; memcpy ` +
          `${res.memcpyGbps.toFixed(2)} GB/s (${mc.source}) -> ratio ${res.ratio.toFixed(2)}` +
          (copyAfterEach
            ? ` (a copy after each request: ${copyAfterEach.gbps.toFixed(2)} GB/s -> ` +
              `${copyAfterEach.ratio.toFixed(2)})`
            : "") +
          // Decoder pages the timed requests found unmapped here (each costs about as
          // much as its copy, on the request's path) and those the thread did ahead.
          (prefault
            ? `; decoder pages faulted in: ${(prefault.createBytes / 2 ** 20).toFixed(0)} MiB ` +
              `by the requests, ${(prefault.aheadBytes / 2 ** 20).toFixed(0)} MiB ahead`
            : ""),
      );
      log(JSON.stringify(res));
      results.push(res);
    }
  } finally {
    await tx?.close();
    rx.kill();
    await rx.exited;
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return results;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      sizes: { type: "string" },
      "chunk-mib": { type: "string" },
      batch: { type: "string" },
    },
  });
  await runPdBench({
    sizes: values.sizes?.split(",").map(Number),
    chunkBytes: values["chunk-mib"] ? Number(values["chunk-mib"]) * 2 ** 20 : undefined,
    batch: values.batch ? Number(values.batch) : undefined,
  });
}
