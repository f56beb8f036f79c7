/**
 * The report format of the benchmarks: each figure is printed as one human line with
 * its ratio to the physical limit measured in the same run (memcpy, raw socket, ...),
 * and the whole run ends with ONE JSON line for machines.
 *
 * @example
 * ```ts
 * import { Report } from "./lib.ts";
 * const report = new Report("agent");
 * report.add({ name: "write_1MiB", value: 9.1, unit: "GB/s", limit: 10.2, limitName: "memcpy",
 *   goal: { op: ">=", ratio: 0.8 } });
 * report.finish();
 * ```
 * @module
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import process from "node:process";
import { Buffer } from "node:buffer";
import {
  DescList,
  type HostBuffer,
  type NixlAgent,
  type PreparedDescList,
  type TransferRequest,
} from "../src/agent.ts";
import type { NativeLib } from "../ffi/mod.ts";
import { type KvportConfig, loadConfig } from "../src/config/mod.ts";

/** A goal on the ratio (value / limit) or on the value itself. */
export interface Goal {
  /** `">="` (at least) or `"<="` (at most). */
  op: ">=" | "<=";
  /** Goal on value / limit. */
  ratio?: number;
  /** Goal on the value, in its unit. */
  value?: number;
}

/** One figure. */
export interface Result {
  /** Short machine name, e.g. `"same_host_write_1MiB"`. */
  name: string;
  /** The measured figure. */
  value: number;
  /** Its unit: `"GB/s"`, `"us"`, `"ns"`, `"ms"`. */
  unit: string;
  /** The physical limit measured in the same run, in the same unit. */
  limit?: number;
  /** What the limit is, e.g. `"memcpy (1 thread)"`. */
  limitName?: string;
  /** value / limit as measured otherwise (e.g. the median of per-round ratios), used
   * instead of value / limit for the printed ratio and the goal. */
  ratio?: number;
  /** The goal. */
  goal?: Goal;
  /** Anything else worth keeping (sizes, counts, iterations). */
  extra?: Record<string, unknown>;
}

/** A result as printed in the JSON line: with its ratio and whether the goal was met. */
export interface Scored extends Result {
  /** value / limit, when there is a limit. */
  ratio?: number;
  /** Whether the goal was met (absent without a goal). */
  pass?: boolean;
}

const fmt = (v: number) =>
  v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toPrecision(3);

/**
 * Collects figures, prints a human line for each, and one JSON line at the end.
 *
 * @example
 * ```ts
 * import { Report } from "./lib.ts";
 * const r = new Report("demo");
 * r.add({ name: "x", value: 1, unit: "us", goal: { op: "<=", value: 10 } });
 * r.finish({ note: "example" });
 * ```
 */
export class Report {
  /** The suite's name. */
  readonly suite: string;
  /** Every figure so far. */
  readonly results: Scored[] = [];

  /** A report of suite `suite`, e.g. `"agent"`. */
  constructor(suite: string) {
    this.suite = suite;
  }

  /** Scores a figure and prints its human line. */
  add(result: Result): Scored {
    const s: Scored = { ...result };
    if (result.ratio === undefined && result.limit !== undefined && result.limit > 0) {
      s.ratio = result.value / result.limit;
    }
    const g = result.goal;
    if (g) {
      const x = g.ratio !== undefined ? s.ratio : result.value;
      const target = g.ratio ?? g.value;
      if (x !== undefined && target !== undefined) {
        s.pass = g.op === ">=" ? x >= target : x <= target;
      }
    }
    this.results.push(s);
    let line = `${result.name}: ${fmt(result.value)} ${result.unit}`;
    if (s.ratio !== undefined) {
      line += ` = ${fmt(s.ratio)} x ${result.limitName ?? "limit"} (${fmt(result.limit!)} ` +
        `${result.unit})`;
    }
    if (g) {
      const target = g.ratio !== undefined ? `${g.ratio} x limit` : `${g.value} ${result.unit}`;
      line += `; goal ${g.op} ${target}: ${
        s.pass === undefined ? "n/a" : s.pass ? "met" : "MISSED"
      }`;
    }
    console.log(line);
    return s;
  }

  /** Prints the one JSON line: suite, runtime, machine, every result. */
  finish(extra: Record<string, unknown> = {}): void {
    const g = globalThis as { Deno?: { version: { deno: string } }; Bun?: { version: string } };
    console.log(JSON.stringify({
      suite: this.suite,
      runtime: g.Bun ? `bun ${g.Bun.version}` : g.Deno ? `deno ${g.Deno.version.deno}` : "?",
      date: new Date().toISOString(),
      machine: machine(),
      ...extra,
      results: this.results,
    }));
  }
}

function machine(): Record<string, unknown> {
  let cpu = "";
  try {
    const info = spawnSync("sh", ["-c", "grep -m1 'model name' /proc/cpuinfo; nproc"], {
      encoding: "utf8",
    }).stdout.trim().split("\n");
    cpu = `${info[0]?.split(":")[1]?.trim() ?? "?"} x${info[1] ?? "?"}`;
  } catch {
    cpu = "?";
  }
  return { cpu, platform: `${process.platform}-${process.arch}` };
}

/**
 * Runs `native/build/kvport-limits <args>` (the native engineer's C probe of physical
 * limits) and returns its JSON line, or `null` when the tool is not built.
 *
 * @example
 * ```ts
 * import { nativeLimit } from "./lib.ts";
 * console.log(nativeLimit(["memcpy", "--size", "67108864"]));
 * ```
 */
export function nativeLimit(args: string[]): Record<string, unknown> | null {
  const tool = new URL("../native/build/kvport-limits", import.meta.url).pathname;
  if (!existsSync(tool)) return null;
  const r = spawnSync(tool, args, { encoding: "utf8", timeout: 60_000 });
  if (r.status !== 0) {
    console.error(`kvport-limits ${args.join(" ")} failed (${r.status}): ${r.stderr.trim()}`);
    return null;
  }
  const line = r.stdout.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line);
  } catch {
    console.error(`kvport-limits ${args.join(" ")}: not JSON: ${line}`);
    return null;
  }
}

/**
 * Runs `step` repeatedly for at least `minMs` (and `minIters` times), returns the
 * iterations and elapsed milliseconds.
 *
 * @example
 * ```ts
 * import { timeLoop } from "./lib.ts";
 * const { iters, ms } = await timeLoop(() => {}, { minMs: 10 });
 * console.log((ms * 1e6) / iters, "ns per step");
 * ```
 */
export async function timeLoop(
  step: () => unknown,
  options: { minMs?: number; minIters?: number; batch?: number } = {},
): Promise<{ iters: number; ms: number }> {
  const minMs = options.minMs ?? 500;
  const minIters = options.minIters ?? 1;
  const batch = options.batch ?? 1;
  let iters = 0;
  const t0 = performance.now();
  let now = t0;
  while (now - t0 < minMs || iters < minIters) {
    for (let i = 0; i < batch; i++) {
      const r = step();
      if (r instanceof Promise) await r;
    }
    iters += batch;
    now = performance.now();
  }
  return { iters, ms: now - t0 };
}

/**
 * The `p`-th percentile (0..100) of sorted samples.
 *
 * @example
 * ```ts
 * import { percentile } from "./lib.ts";
 * console.log(percentile([1, 2, 3, 4], 50)); // 2
 * ```
 */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

/** GB/s of `bytes` moved in `ms` milliseconds. */
export const gbps = (bytes: number, ms: number): number => bytes / ms / 1e6;

/**
 * Single-thread memcpy of `bytes`, GB/s: from kvport-limits when built, else timed here
 * with `kvp_mem_copy` from `src` to `dst` for at least `minMs` (and 3 copies).
 */
export function memcpyLimit(
  lib: NativeLib,
  bytes: number,
  src: HostBuffer,
  dst: HostBuffer,
  minMs: number,
): number {
  const probe = nativeLimit(["memcpy", String(bytes), String(Math.max(3, Math.ceil(2e9 / bytes)))]);
  if (probe && typeof probe.gbps === "number") return probe.gbps;
  let iters = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < minMs || iters < 3) {
    const s = lib.symbols.kvp_mem_copy(0, 0, dst.address, 0, 0, src.address, BigInt(bytes));
    if (s !== 0) throw new Error(`kvp_mem_copy failed: ${s}`);
    iters++;
  }
  return gbps(bytes * iters, performance.now() - t0);
}

/**
 * Raw TCP loopback stream of `msgBytes` messages, `totalBytes` in all, GB/s, from
 * kvport-limits (undefined when not built).
 */
export function tcpLimit(msgBytes: number, totalBytes: number): number | undefined {
  const probe = nativeLimit(["tcp", String(msgBytes), String(totalBytes)]);
  return probe && typeof probe.gbps === "number" ? probe.gbps : undefined;
}

/** What the pairing helpers need of a spawned peer process (tests/helpers). */
export interface BenchPeer {
  /** The peer agent's name. */
  name: string;
  /** Its metadata. */
  meta: Uint8Array;
  /** Address of its registered buffer. */
  address: bigint;
  /** Sends a command to it. */
  call(cmd: string, args?: Record<string, unknown>): Promise<unknown>;
}

/**
 * Pairs `agent` with a spawned `peer`: allocates (with `alloc`: `shared` picks the kind of
 * DRAM, default the engine's) and registers `size` bytes, loads each side's metadata into
 * the other, fills the buffer with 0x5a.
 *
 * @returns the registered buffer
 */
export async function linkPeer(
  agent: NixlAgent,
  peer: BenchPeer,
  size: number,
  alloc: { shared?: boolean } = {},
): Promise<HostBuffer> {
  const buf = agent.allocate(size, alloc);
  agent.registerMemory(buf);
  agent.addRemoteAgent(peer.meta);
  await peer.call("load", { meta: Buffer.from(agent.localMetadata()).toString("base64") });
  buf.bytes.fill(0x5a);
  return buf;
}

/**
 * A WRITE of pages `0..count` of `page` bytes from `buf` to the same pages of the peer's
 * buffer (`scattered`: to the peer's pages in reverse order, so that no two consecutive
 * descriptors can be merged into one message), with the prepared lists (the caller
 * releases what it wants to).
 */
export function writeRequest(
  agent: NixlAgent,
  buf: HostBuffer,
  peer: BenchPeer,
  page: number,
  count: number,
  scattered = false,
): { req: TransferRequest; local: PreparedDescList; remote: PreparedDescList } {
  using l = DescList.pages(buf, page, count);
  using r = DescList.pages({ address: peer.address }, page, count);
  const local = agent.prepDescList("", l);
  const remote = agent.prepDescList(peer.name, r);
  const idx = new Uint32Array(count).map((_, i) => i);
  const ridx = scattered ? idx.map((i) => count - 1 - i) : idx;
  return { req: agent.createTransfer("WRITE", local, idx, remote, ridx), local, remote };
}

/** Posts `req` and waits up to `timeoutMs` for it when it did not complete in the post. */
export async function runTransfer(req: TransferRequest, timeoutMs: number): Promise<void> {
  if (req.post() === "pending") await req.wait(timeoutMs);
}

/**
 * Post-to-completion latency of `req`, in microseconds, over `n` runs (each waiting up
 * to 10 s), after `warm()` was awaited `warmup` times.
 *
 * @returns the samples, sorted, and how many completed inside the post
 */
export async function postLatency(
  req: TransferRequest,
  n: number,
  warmup: number,
  warm: () => Promise<void>,
): Promise<{ samples: Float64Array; inline: number }> {
  for (let i = 0; i < warmup; i++) await warm();
  const samples = new Float64Array(n);
  let inline = 0;
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    if (req.post() === "pending") await req.wait(10_000);
    else inline++;
    samples[i] = (performance.now() - t0) * 1000;
  }
  samples.sort();
  return { samples, inline };
}

/**
 * The configuration of a benchmark's PD sender: the nixl channel on a CPU buffer of
 * `bufferBytes`, no proxy notification, plus `extra` keys (backends, extra_config).
 */
export function benchSenderConfig(
  bufferBytes: number,
  extra: Readonly<Record<string, unknown>> = {},
): KvportConfig {
  return loadConfig({
    env: {},
    overrides: {
      enable_pd: true,
      pd_role: "sender",
      transfer_channel: "nixl",
      pd_buffer_size: bufferBytes,
      pd_buffer_device: "cpu",
      pd_skip_proxy_notification: true,
      ...extra,
    },
  }).config;
}

/**
 * The engine's stamps of an agent (`*_ns` of `kvp_agent_info`, builtin engine: on the
 * host's monotonic clock) as absolute milliseconds of this process's clock
 * (`performance.timeOrigin + performance.now()`), the offset taken from the info's own
 * `clock_ns` read between two marks: `last_done_ns` (the last request finished),
 * `last_notif_in_ns` (the last notification queued), `wake_call_ns` (the last wake
 * callback started: by the notifier's thread, or under Bun by the signalling thread).
 * Stamps not set yet are left out; `{}` for an engine without them.
 *
 * @example
 * ```ts
 * import { engineStamps } from "./lib.ts";
 * // An engine without stamps (anything with an info() method will do):
 * const agent = { info: (): Record<string, string> => ({ engine: "nixl" }) };
 * console.log(engineStamps(agent)); // {}
 * ```
 */
export function engineStamps(agent: { info(): Record<string, string> }): Record<string, number> {
  const before = performance.timeOrigin + performance.now();
  const info = agent.info();
  const after = performance.timeOrigin + performance.now();
  const clock = Number(info.clock_ns);
  if (!(clock > 0)) return {};
  const offsetMs = (before + after) / 2 - clock / 1e6;
  const out: Record<string, number> = {};
  for (const k of ["last_done_ns", "last_notif_in_ns", "wake_call_ns"]) {
    const v = Number(info[k]);
    if (v > 0) out[k] = v / 1e6 + offsetMs;
  }
  return out;
}

/**
 * Engine parameters from `KVPORT_BENCH_AGENT_PARAMS` (`k=v,k=v`, e.g.
 * `mem_inline_max=0,io_threads=4`) for the agents a benchmark creates, or `undefined`
 * when it is not set. Exits with status 2, naming the entry, on one without `=`.
 *
 * @example
 * ```ts
 * import { benchAgentParams } from "./lib.ts";
 * const agentParams = benchAgentParams("latency bench"); // { mem_inline_max: "0" } or undefined
 * ```
 */
export function benchAgentParams(bench: string): Record<string, string> | undefined {
  const spec = process.env.KVPORT_BENCH_AGENT_PARAMS;
  if (!spec) return undefined;
  return Object.fromEntries(
    spec.split(",").map((kv) => {
      const at = kv.indexOf("=");
      if (at <= 0) {
        console.error(`${bench}: KVPORT_BENCH_AGENT_PARAMS expects k=v,..., got ${kv}`);
        process.exit(2);
      }
      return [kv.slice(0, at).trim(), kv.slice(at + 1).trim()];
    }),
  );
}

/**
 * One synchronous `kvp_mem_copy` of `bytes` from `src` to `dst`, both of one memory type
 * (`0` DRAM, `1` VRAM) and device, timed: milliseconds. The physical limit the PD
 * benchmarks take right after each request (the same noise as the request).
 *
 * @example
 * ```ts
 * import { timedMemCopy } from "./lib.ts";
 * import { loadNativeLibrary } from "../ffi/mod.ts";
 * import { NixlAgent } from "../src/agent.ts";
 * const lib = await loadNativeLibrary();
 * await using agent = await NixlAgent.create({ name: "copy", engine: "builtin" });
 * const [a, b] = [agent.allocate(1 << 20), agent.allocate(1 << 20)];
 * console.log(timedMemCopy(lib, 0, 0, b.address, a.address, 1 << 20) >= 0); // true
 * ```
 */
export function timedMemCopy(
  lib: NativeLib,
  memType: 0 | 1,
  device: number,
  dst: bigint,
  src: bigint,
  bytes: number,
): number {
  const t0 = performance.now();
  const st = lib.symbols.kvp_mem_copy(memType, device, dst, memType, device, src, BigInt(bytes));
  if (st !== 0) throw new Error(`kvp_mem_copy failed: status ${st}`);
  return performance.now() - t0;
}
