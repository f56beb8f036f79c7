/**
 * The timeline of one PD request: a prefiller (this process, {@linkcode PdSender} with a
 * timeline hook) sends requests of one batch to a decoder in another process
 * (`bench/latency_peer.ts`, a {@linkcode PdReceiver} with its own hook), one request at a
 * time, and a {@linkcode ProxyNotifier} here takes the ProxyNotif. Every stage on both
 * sides is timed with `performance.now()` (absolute, `timeOrigin +`, so the two
 * processes' marks compare) and printed as p50 / p99; the end-to-end time (`send()`
 * called -> the decoder's landed event) is set against the copy time of the same bytes
 * (one synchronous memcpy on CPU, cudaMemcpy device to device with `--device cuda`, timed
 * right after each request so that both see the same load; p50), and the difference is
 * the added latency (goal: p50 <= 100 us for one chunk). The AllocRequest round trip is
 * set against a bare REQ/REP echo of our ZeroMQ wire between the same two processes, of
 * the same bytes, pinged once right after each request (what the wire itself costs; the
 * rest is PD code, event-loop turns and wake-ups: issue 15). After the warm-up a request
 * normally takes page credits instead (no AllocRequest at all, see `credit_stock.ts`);
 * the bench says how many measured requests did, and `--credit-pages 0` turns them off
 * (every request asks, as before). The engine copies host pages
 * with two threads, so on CPU a large chunk can land faster than one memcpy thread
 * copies it (a negative added latency). Then one JSON line.
 *
 * ```sh
 * deno run -A bench/latency_bench.ts [--device cpu|cuda] [--sizes 1x28,1x0.25,16x28] [--reps N]
 *   [--credit-pages N] [--inflight N] [--warmup N]
 * bun bench/latency_bench.ts --device cuda
 * ```
 * `--inflight N` (also 1, to compare) adds, for sizes of 8 chunks or more, two throughput
 * phases with N streams of requests: `inflightN` (a stream's next request starts once its
 * last one landed at the decoder) and `streamsN` (once its last `send()` settled; the
 * decoder's page credits hold the prefiller back), each timed until every request landed
 * at the decoder, at least 100 requests each. Each line says how many went on credits, the CPU time
 * per request of each process (when one nears the wall time per request, that process is
 * what the requests queue for) and the p50 of each stage (`refillWait`: a batch waited
 * for a credit refill; `queue` / `alloc`: the link's queue and the AllocRequest round
 * trip; `post`, `copy`; `rxNotif`, `rxLanded`: the decoder's side; `rxRefill`: the
 * decoder serving a refill; each line also counts the credit refills and the requests that
 * waited for one, and gives refillWait's p99 and its mean over every request).
 * `KVPORT_BENCH_CREDIT_MAX=N` sets the decoder's credit cap (`kvport_pd_credit_max`; default
 * room for the sender's stock as it grows with requests in flight, see `measure`).
 * `KVPORT_BENCH_AGENT_PARAMS=mem_inline_max=0,vram_inline_max=0`
 * sets engine parameters of the sender's agent (here: copies on the engine's workers,
 * not inside the post on this thread; small copies run inline by default).
 * `--sizes` lists `<chunks>x<MiB per chunk>`: each request is one batch of that many
 * chunks.
 *
 * @module
 */
import { spawn } from "node:child_process";
import * as net from "node:net";
import * as readline from "node:readline";
import * as os from "node:os";
import * as fs from "node:fs";
import process from "node:process";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { PdSender } from "../src/pd/sender.ts";
import { ProxyNotifier } from "../src/pd/proxy.ts";
import { fillPattern } from "../src/pd/pattern.ts";
import type { PdReceiverStage, PdSenderStage } from "../src/pd/timeline.ts";
import { measureCudaMemcpy, measureMemcpy } from "../cli/demo_cmd.ts";
import { demoKey } from "../cli/pd_cmd.ts";
import { benchAgentParams, engineStamps, percentile, Report, timedMemCopy } from "./lib.ts";
import { setWakeMode, type WakeMode } from "../src/agent/events.ts";

// KVPORT_BENCH_WAKE=legacy: the wake-ups of an ABI-3 library (Deno's pool-thread waits,
// Bun's event descriptor), to compare with the wake callback (issue 15).
if (process.env.KVPORT_BENCH_WAKE) setWakeMode(process.env.KVPORT_BENCH_WAKE as WakeMode);
import type { NixlChannel } from "../src/channel/nixl.ts";
import { loadNativeLibrary } from "../ffi/mod.ts";
import { encodeMessage, type LmcacheMessage, ReqSocket } from "../src/channel/wire/mod.ts";
import { allocRequest } from "../src/pd/alloc_wire.ts";

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    device: { type: "string", default: "cpu" },
    sizes: { type: "string" },
    reps: { type: "string" },
    "credit-pages": { type: "string" },
    inflight: { type: "string" },
    warmup: { type: "string" },
  },
});
const device = values.device!;
if (!/^(cpu|cuda(:\d+)?)$/.test(device)) {
  console.error(`latency bench: --device expects cpu, cuda or cuda:N, got ${device}`);
  process.exit(2);
}
const onGpu = device !== "cpu";
// How a request's pages get their bytes before send(): on the GPU the prefill writes them
// there, so by default one device-to-device copy per page from a pattern page made once
// ("device"); "host" fills each page in JavaScript and copies it up, as before: 28 MiB of
// CPU writes per page, which also evicts both processes' caches before every request.
const fillMode = process.env.KVPORT_BENCH_FILL ?? (onGpu ? "device" : "host");
if (fillMode !== "host" && fillMode !== "device") {
  console.error(`latency bench: KVPORT_BENCH_FILL expects host or device, got ${fillMode}`);
  process.exit(2);
}
// Requests kept in flight by the throughput phase of requests of 8 chunks or more (1: no
// such phase): what a decoder serving several prefillers at once receives.
const inflight = Number(values.inflight ?? 1);
if (!Number.isSafeInteger(inflight) || inflight < 1 || inflight > 16) {
  console.error(`latency bench: --inflight expects 1..16, got ${values.inflight}`);
  process.exit(2);
}
// Requests run before the measured ones (see `warmupOf`); --warmup N sets it for every size.
const warmupArg = values.warmup === undefined ? undefined : Number(values.warmup);
if (warmupArg !== undefined && (!Number.isSafeInteger(warmupArg) || warmupArg < 0)) {
  console.error(`latency bench: --warmup expects an integer >= 0, got ${values.warmup}`);
  process.exit(2);
}
/**
 * Warm-up requests of a size: a server's PD code runs optimized (V8 compiles a function
 * after some hundreds of calls; before, it runs in the interpreter or the baseline tier,
 * several times slower), so the measured requests should too: on the H200 host 1 x 28 MiB
 * on GPU pages read 220 us added latency after 3 warm-ups, 170-180 after 200 and 98-100
 * after 1000. 1000 where that costs about a second at most (GPU pages filled on the
 * device, or requests of at most 1 MiB), 200 up to 32 MiB (each filled in JavaScript),
 * else 3.
 */
function warmupOf(bytesPerReq: number): number {
  if (warmupArg !== undefined) return warmupArg;
  if ((onGpu && fillMode === "device") || bytesPerReq <= 2 ** 20) return 1000;
  return bytesPerReq <= 32 * 2 ** 20 ? 200 : 3;
}
const benchCreditMax = process.env.KVPORT_BENCH_CREDIT_MAX === undefined
  ? undefined
  : Number(process.env.KVPORT_BENCH_CREDIT_MAX);
if (
  benchCreditMax !== undefined && !(Number.isSafeInteger(benchCreditMax) && benchCreditMax >= 0)
) {
  console.error(
    `latency bench: KVPORT_BENCH_CREDIT_MAX expects an integer >= 0, got ` +
      process.env.KVPORT_BENCH_CREDIT_MAX,
  );
  process.exit(2);
}
const creditPages = values["credit-pages"] === undefined
  ? undefined
  : Number(values["credit-pages"]);
const sizes = (values.sizes ?? "1x28,1x0.25,16x28").split(",").map((s) => {
  const m = /^(\d+)x([\d.]+)$/.exec(s.trim());
  if (!m) {
    console.error(`latency bench: --sizes expects <chunks>x<MiB>, got ${s}`);
    process.exit(2);
  }
  const chunks = Number(m[1]);
  // A whole number of 4 KiB, as a KV chunk of bf16 would be.
  const bytes = Math.max(4096, Math.round((Number(m[2]) * 2 ** 20) / 4096) * 4096);
  return { chunks, bytes, label: `${chunks}x${fmtMiB(bytes)}` };
});
// KVPORT_BENCH_AGENT_PARAMS="mem_inline_max=0,vram_inline_max=0": engine parameters of the
// sender's agent, e.g. copies of small requests on the engine's workers rather than inside
// the post (on this process's thread), as the large GPU requests are.
const agentParams = benchAgentParams("latency bench");
const engine = (process.env.KVPORT_ENGINE ??= "builtin") as "auto" | "builtin" | "nixl";
const origin = performance.timeOrigin;
const abs = () => origin + performance.now();

function fmtMiB(bytes: number): string {
  const m = bytes / 2 ** 20;
  return m >= 1 ? `${Number(m.toFixed(2))}MiB` : `${Math.round(bytes / 1024)}KiB`;
}

// Each size gets its own decoder process and sender, with pages of that size: a WRITE
// moves whole pages, and nothing of one size (mappings, pools) skews the next.
for (const size of sizes) {
  if (!onGpu && 3 * size.chunks * size.bytes > os.freemem() / 2) {
    console.error(
      `latency bench: ${size.chunks} chunks of ${fmtMiB(size.bytes)} need ` +
        `${(3 * size.chunks * size.bytes / 2 ** 30).toFixed(1)} GiB; pick smaller --sizes`,
    );
    process.exit(2);
  }
}

/** The decoder process, with `pages` pages of `pageSize` bytes, `creditTotal` of them at
 * most held as page credits. */
function startPeer(pageSize: number, pages: number, creditTotal: number) {
  const script = fileURLToPath(new URL("./latency_peer.ts", import.meta.url));
  const isBun = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined";
  const arg = JSON.stringify({ pageSize, pages, creditTotal, device, engine });
  // KVPORT_BENCH_PEER_ARGS: runtime flags for the decoder process, e.g. a V8 profile of it
  // under Deno: `--v8-flags=--prof,--logfile=/tmp/decoder-%p.log` (`node --prof-process`).
  const extra = (process.env.KVPORT_BENCH_PEER_ARGS ?? "").split(" ").filter((a) => a !== "");
  const child = spawn(
    process.execPath,
    isBun ? [...extra, script, arg] : ["run", "-A", ...extra, script, arg],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  const waiting = new Map<string, (e: Record<string, unknown>) => void>();
  const early = new Map<string, Record<string, unknown>>();
  let ready: (e: Record<string, unknown>) => void;
  const readyP = new Promise<Record<string, unknown>>((r) => (ready = r));
  readline.createInterface({ input: child.stdout! }).on("line", (line: string) => {
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line);
    } catch {
      return;
    }
    if (e.event === "ready") ready(e);
    else if (e.event === "pong") pong?.(e);
    else if (e.event === "landed") {
      const id = String(e.key);
      const w = waiting.get(id);
      if (w) {
        waiting.delete(id);
        w(e);
      } else early.set(id, e);
    }
  });
  const exited = new Promise<number>((r) => child.on("exit", (c: number | null) => r(c ?? 1)));
  let pong: ((e: Record<string, unknown>) => void) | undefined;
  return {
    ready: readyP,
    exited,
    pid: child.pid,
    /**
     * The decoder's clock minus ours, ms, from the ping with the shortest round trip
     * (NTP's estimate; the error is at most half that round trip, returned as `bound`).
     */
    async clockOffset(n: number): Promise<{ offset: number; bound: number }> {
      let best = { offset: 0, bound: Infinity };
      for (let i = 0; i < n; i++) {
        const t0 = abs();
        const reply = new Promise<Record<string, unknown>>((r) => (pong = r));
        child.stdin!.write(JSON.stringify({ ping: i }) + "\n");
        const e = await reply;
        const t1 = abs();
        if ((t1 - t0) / 2 < best.bound) {
          best = { offset: Number(e.t) - (t0 + t1) / 2, bound: (t1 - t0) / 2 };
        }
      }
      pong = undefined;
      return best;
    },
    /** The decoder's landed line of the request whose first key is `firstKey`. */
    landed(firstKey: string, timeoutMs: number): Promise<Record<string, unknown>> {
      const e = early.get(firstKey);
      if (e) {
        early.delete(firstKey);
        return Promise.resolve(e);
      }
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => {
          waiting.delete(firstKey);
          reject(
            new Error(`the decoder reported no landed event for ${firstKey} in ${timeoutMs} ms`),
          );
        }, timeoutMs);
        waiting.set(firstKey, (ev) => {
          clearTimeout(t);
          resolve(ev);
        });
      });
    },
    close() {
      child.stdin!.end();
      const t = setTimeout(() => child.kill(), 2000);
      (t as { unref?: () => void }).unref?.();
    },
  };
}

/** CPU time (user + system, ms) of process `pid` so far, from /proc (Linux), or NaN. */
function cpuMsOf(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) * 1000 / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}
/** Kernel clock ticks per second of /proc's times (USER_HZ, 100 on Linux). */
const CLOCK_TICKS = 100;

/** Durations of one request, microseconds, by name. */
type Sample = Record<string, number>;

/** The stage durations a request's marks give (sender `s`, receiver `r`, proxy at `p`;
 * the engines' own stamps of both sides, `tn` and `rn`, see `engineStamps`). */
function durations(
  s: Partial<Record<PdSenderStage, number>>,
  r: Partial<Record<PdReceiverStage, number>>,
  proxyAt: number,
  tn: Record<string, number>,
  rn: Record<string, number>,
): Sample {
  const d = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined ? NaN : (b - a) * 1000;
  return {
    "credits taken (send -> no AllocRequest)": d(s.send, s.credits),
    "sender queue (send -> its turn)": d(s.send, s.queued),
    "its turn -> AllocRequest sent (handshake if due)": d(s.queued, s.alloc_sent),
    "AllocRequest round trip": d(s.alloc_sent, s.alloc_reply),
    "  AllocRequest on the wire (tx -> rx handler)": d(s.alloc_sent, r.alloc_received),
    "  page reservation (rx)": d(r.alloc_received, r.pages_reserved),
    "  AllocResponse back (rx reply -> tx)": d(r.alloc_replied, s.alloc_reply),
    "reply (or credits) -> write starts (tx)": d(s.alloc_reply ?? s.credits, s.write),
    "write -> posted (create + post)": d(s.write, s.posted),
    "posted -> data landed (copy + wait)": d(s.posted, s.written),
    "data landed -> decoder sees notification": d(s.written, r.notification),
    "  posted -> tx engine finished (copy, notification sent)": d(s.posted, tn.last_done_ns),
    "  tx engine finished -> tx wake callback starts": d(tn.last_done_ns, tn.wake_call_ns),
    "  tx wake callback starts -> tx wait returned": d(tn.wake_call_ns, s.written),
    "  tx engine finished -> rx engine queued notification": d(
      tn.last_done_ns,
      rn.last_notif_in_ns,
    ),
    "  rx queued -> rx wake callback starts": d(rn.last_notif_in_ns, rn.wake_call_ns),
    "  rx wake callback starts -> its turn takes notifications": d(rn.wake_call_ns, rn.take_at),
    "  rx notifications taken (kvp_notif_take)": d(rn.take_at, rn.taken_at),
    "  rx notifications taken -> notification (JS)": d(rn.taken_at, r.notification),
    "notification -> landed event (rx bookkeeping)": d(r.notification, r.landed),
    "data landed -> ProxyNotif sent (tx)": d(s.written, s.notified),
    "ProxyNotif sent -> delivered (proxy)": d(s.notified, proxyAt),
    "end to end: send() -> decoder landed": d(s.send, r.landed),
    "end to end: send() -> ProxyNotif delivered": d(s.send, proxyAt),
  };
}

/** How much a counter of `kvp_agent_info` grew between two snapshots (0 when absent). */
function infoDelta(before: Record<string, string>, after: Record<string, string>) {
  return (k: string) => Number(after[k] ?? 0) - Number(before[k] ?? 0);
}

/** Where the sender's GPU posts went, per post, from the engine's counters (`cuda_*` of
 * `kvp_agent_info`, builtin engine) between two snapshots; undefined without GPU posts. */
function gpuPostStages(before: Record<string, string>, after: Record<string, string>) {
  const delta = infoDelta(before, after);
  const posts = delta("cuda_launched");
  if (!(posts > 0)) return undefined;
  return {
    posts,
    queueUs: delta("cuda_queue_ns") / posts / 1e3,
    hopUs: delta("cuda_worker_hop_ns") / posts / 1e3,
    eventWaitUs: delta("cuda_event_wait_ns") / posts / 1e3,
  };
}

/** GPU jobs one thread queued and waited for (inside the post, up to vram_inline_max), and
 * the notification sends of finished requests, from the engine's counters (means, us). */
function directStages(before: Record<string, string>, after: Record<string, string>) {
  const delta = infoDelta(before, after);
  const jobs = delta("cuda_direct"), sends = delta("notif_sends");
  return {
    jobs,
    queueUs: jobs > 0 ? delta("cuda_direct_queue_ns") / jobs / 1e3 : NaN,
    waitUs: jobs > 0 ? delta("cuda_direct_wait_ns") / jobs / 1e3 : NaN,
    sends,
    sendUs: sends > 0 ? delta("notif_send_ns") / sends / 1e3 : NaN,
  };
}

/** The engine's own time per call in kvp_xfer_create and kvp_xfer_post (us, means) between
 * two snapshots of `kvp_agent_info` (builtin engine); undefined without such counters. */
function engineCallTimes(before: Record<string, string>, after: Record<string, string>) {
  const delta = infoDelta(before, after);
  const creates = delta("xfer_creates"), posts = delta("xfer_post_calls");
  if (!(creates > 0 && posts > 0)) return undefined;
  return {
    createUs: delta("xfer_create_ns") / creates / 1e3,
    postUs: delta("xfer_post_ns") / posts / 1e3,
  };
}

const report = new Report("latency");
const rows: Record<string, unknown>[] = [];
let reqNo = 0;
let engineName = engine as string;
for (const size of sizes) {
  const row = await measure(size);
  rows.push(row);
}

async function measure(size: { chunks: number; bytes: number; label: string }) {
  const pageSize = size.bytes;
  const parallel = size.chunks >= 8 ? inflight : 1;
  // `--inflight 1` given: the same throughput phase one request at a time (to compare).
  const throughput = size.chunks >= 8 && values.inflight !== undefined;
  // The sender's credits: enough for the requests in flight and one batch more (a
  // prefiller sending several at once would set kvport_pd_credit_pages so), else the
  // sender's default. The decoder lets its one sender hold what its stock grows to and the
  // pages of the requests in flight besides: a credit page a batch took counts as held
  // there until its bind arrives, so a cap of just the sender's stock makes each refill
  // bring only what landed meanwhile (the stock then runs dry with every round of requests
  // in flight). The stock aims at twice what the batches to come before a refill's credits
  // arrive take (the requests in flight, and what the last round trips used up: see
  // `creditNeed` in sender.ts), so with N in flight it reaches 2 (N + 1) batches when a
  // round trip takes as long as a request; the cap leaves room for that and N batches
  // landing.
  const txCredits = creditPages ?? (parallel > 1 ? (parallel + 1) * size.chunks : undefined);
  // KVPORT_BENCH_CREDIT_MAX=N: the decoder's cap instead (kvport_pd_credit_max), e.g. to
  // see what a tighter or looser one costs.
  const rxCredits = benchCreditMax ?? Math.max(
    (parallel + 2) * size.chunks,
    (txCredits ?? 0) + parallel * size.chunks,
    parallel > 1 ? (3 * parallel + 2) * size.chunks : 0,
  );
  // The decoder's pages: its credits, and room for the requests in flight (their pages
  // stay the decoder's until it has seen them land) and a refill that overtakes a bind. A
  // decoder with fewer free pages than the credits plus the requests in flight makes a
  // refill bring less than was used, so requests wait for pages, not for the path measured.
  const peer = startPeer(pageSize, rxCredits + (parallel + 2) * size.chunks, rxCredits);
  const proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  const marks = new Map<string, Partial<Record<PdSenderStage, number>>>();
  let tx: PdSender | undefined;
  let echo: ReqSocket | undefined;
  let tcp: net.Socket | undefined;
  try {
    const ready = await Promise.race([
      peer.ready,
      peer.exited.then((c) => Promise.reject(new Error(`decoder exited (${c}) before ready`))),
    ]);
    tx = await PdSender.create({
      pageSize,
      bufferSize: pageSize * size.chunks * parallel,
      channelType: "nixl",
      engine,
      device,
      proxyHost: "127.0.0.1",
      proxyPort: proxy.port,
      agentParams,
      creditPages: txCredits,
      timeline: (stage, reqId) => {
        let m = marks.get(reqId);
        if (!m) marks.set(reqId, m = {});
        m[stage] = abs();
      },
    });
    engineName = tx.channel.engine;
    const spec = {
      receiverHost: "127.0.0.1",
      receiverInitPort: Number(ready.initPort),
      receiverAllocPort: Number(ready.allocPort),
    };
    await tx.connect(spec);
    // The decoder's marks on this process's clock.
    const clock = await peer.clockOffset(50);
    echo = ReqSocket.connect(String(ready.echoUrl), { timeoutMs: 30_000 });
    const conn = tcp = net.createConnection({
      host: "127.0.0.1",
      port: Number(ready.tcpEchoPort),
    });
    conn.setNoDelay(true);
    await new Promise<void>((r, j) => conn.once("connect", () => r()).once("error", j));
    let tcpWant = 0;
    let tcpWake = () => {};
    conn.on("data", (d: Uint8Array) => {
      tcpWant -= d.length;
      if (tcpWant <= 0) tcpWake();
    });
    const tcpPingOnce = (body: Uint8Array): Promise<number> => {
      const t0 = performance.now();
      return new Promise<number>((resolve) => {
        tcpWant = body.length;
        tcpWake = () => resolve((performance.now() - t0) * 1000);
        conn.write(body);
      });
    };
    const pingOnce = async (body: Uint8Array): Promise<number> => {
      const t0 = performance.now();
      const [back] = await echo!.request([body]);
      const us = (performance.now() - t0) * 1000;
      if (back.length !== body.length) throw new Error("the echo answered other bytes");
      return us;
    };
    const scratch = onGpu ? new Uint8Array(pageSize) : undefined;
    // The copy of the same bytes, timed right after each request (same noise as the
    // request: this machine's memcpy moves by 2x within a minute): one synchronous
    // kvp_mem_copy between two buffers of the sender's agent, host or the GPU's.
    const agent = (tx.channel as NixlChannel).agent;
    const bytesPerReq = size.chunks * size.bytes;
    const ordinal = Number(device.split(":")[1] ?? 0);
    const cpSrc = onGpu
      ? agent.allocate(bytesPerReq, { memType: "VRAM", device: ordinal })
      : agent.allocate(bytesPerReq);
    const cpDst = onGpu
      ? agent.allocate(bytesPerReq, { memType: "VRAM", device: ordinal })
      : agent.allocate(bytesPerReq);
    const lib = await loadNativeLibrary();
    const memType: 0 | 1 = onGpu ? 1 : 0;
    const dev = onGpu ? ordinal : 0;
    const copyOnce = (): number =>
      timedMemCopy(lib, memType, dev, cpDst.address, cpSrc.address, bytesPerReq) * 1000;
    if (!onGpu) {
      (cpSrc as { bytes: Uint8Array }).bytes.fill(1);
      (cpDst as { bytes: Uint8Array }).bytes.fill(2);
    }
    copyOnce();
    // The pattern page of the "device" fill: the first chunk's bytes of a fixed key.
    let pattern: bigint | undefined;
    if (onGpu && fillMode === "device") {
      const host = agent.allocate(pageSize);
      fillPattern(demoKey("pattern", 0), (host as { bytes: Uint8Array }).bytes);
      const st = lib.symbols.kvp_mem_copy(
        1,
        dev,
        cpSrc.address,
        0,
        0,
        host.address,
        BigInt(pageSize),
      );
      if (st !== 0) throw new Error(`kvp_mem_copy (pattern) failed: status ${st}`);
      pattern = cpSrc.address;
    }
    const copies: number[] = [];
    const pings: number[] = [];
    const tcpPings: number[] = [];
    const reps = values.reps
      ? Number(values.reps)
      : size.chunks * size.bytes > 64 * 2 ** 20
      ? 20
      : 200;
    const samples: Sample[] = [];
    let handshakes = 0; // after the warm-up: each one is a cost a request should not pay
    let withCredits = 0; // measured requests that took page credits (no AllocRequest)
    let infoAtStart: Record<string, string> = {};
    const refillBusy: number[] = [];
    const warmup = warmupOf(bytesPerReq);
    for (let r = -warmup; r < reps; r++) {
      if (r === 0) infoAtStart = agent.info();
      const reqId = `lat-${process.pid}-${reqNo++}`;
      const pages = await tx.allocate(size.chunks, 30_000);
      const keys = pages.map((_, i) => demoKey(reqId, i));
      keys.forEach((k, i) => {
        if (pattern) {
          const page = tx!.channel.page(pages[i]);
          const st = lib.symbols.kvp_mem_copy(
            1,
            dev,
            page.address,
            1,
            dev,
            pattern,
            BigInt(pageSize),
          );
          if (st !== 0) throw new Error(`kvp_mem_copy (page fill) failed: status ${st}`);
        } else if (scratch) {
          fillPattern(k, scratch);
          tx!.channel.page(pages[i]).copyFrom(scratch);
        } else fillPattern(k, tx!.channel.pages[pages[i]]);
      });
      const proxied = proxy.waitFor(reqId, { timeoutMs: 30_000 }).then(abs);
      const landed = peer.landed(keys[0], 30_000);
      const res = await tx.send({ ...spec, reqId, isLastPrefill: true }, {
        keys,
        pages,
        shape: [2, 1, size.bytes / 512, 128], // KV_2LTD: K and V x 1 layer x tokens x 128 bf16
        dtype: "bfloat16",
        lastChunkToks: size.bytes / 512,
      });
      if (res.handshook && r >= 0) handshakes++;
      const [proxyAt, ev] = await Promise.all([proxied, landed]);
      const txNative = engineStamps(agent);
      const s = marks.get(reqId)!;
      marks.delete(reqId);
      if (r >= 0 && s.credits !== undefined) withCredits++;
      if (r >= 0) copies.push(copyOnce());
      // The same bytes as this request's AllocRequest, over the bare wire.
      const wireBytes = encodeMessage(
        allocRequest("async", {
          keys,
          fmt: 1,
          shape: [2, 1, size.bytes / 512, 128],
          dtype: "bfloat16",
          last_chunk_toks: size.bytes / 512,
        }, { reqId, isLastBatch: true, totalChunks: size.chunks }) as unknown as LmcacheMessage,
      );
      // Whichever goes second finds both processes awake: the order alternates.
      const tcpFirst = (r & 1) === 1 ? await tcpPingOnce(wireBytes) : NaN;
      const ping = await pingOnce(wireBytes);
      const tcpPing = Number.isNaN(tcpFirst) ? await tcpPingOnce(wireBytes) : tcpFirst;
      if (r >= 0) {
        pings.push(ping);
        tcpPings.push(tcpPing);
      }
      if (r >= 0) {
        const rxMarks: Partial<Record<PdReceiverStage, number>> = {};
        for (const [k, v] of Object.entries(ev.marks as Record<string, number>)) {
          rxMarks[k as PdReceiverStage] = v - clock.offset;
        }
        const rxNative: Record<string, number> = {};
        for (const [k, v] of Object.entries((ev.native ?? {}) as Record<string, number>)) {
          rxNative[k] = v - clock.offset;
        }
        samples.push(durations(s, rxMarks, proxyAt, txNative, rxNative));
        // Time the decoder spent serving a credit refill (JavaScript on its only thread)
        // between this request's post and the moment it saw the notification.
        const from = s.posted, to = rxMarks.notification;
        let busy = 0;
        if (from !== undefined && to !== undefined) {
          for (const [a, b] of (ev.refills ?? []) as [number, number][]) {
            busy += Math.max(0, Math.min(b - clock.offset, to) - Math.max(a - clock.offset, from));
          }
        }
        refillBusy.push(busy * 1000);
      }
    }
    const infoAtEnd = agent.info();
    const native = gpuPostStages(infoAtStart, infoAtEnd);
    const calls = engineCallTimes(infoAtStart, infoAtEnd);
    const direct = directStages(infoAtStart, infoAtEnd);
    const bytes = size.chunks * size.bytes;
    const copyUs = percentile(Float64Array.from(copies).sort(), 50);
    const limit = {
      bps: bytes / (copyUs / 1e6),
      source: onGpu
        ? "cudaMemcpy d2d, one after each request"
        : "memcpy (1 thread), one after each request",
    };
    // The long-run probe, for reference (measured once, after the requests).
    const probe = onGpu ? await measureCudaMemcpy(bytes, device) : await measureMemcpy(bytes);
    const stats: Record<string, { p50: number; p99: number }> = {};
    console.log(
      `\n${size.label}: ${reps} requests after ${warmup} warm-up ones, ${engineName} engine, ` +
        `${onGpu ? `GPU buffers (${device})` : "host buffers"}, decoder in another process; ` +
        `copy of the same bytes ${copyUs.toFixed(1)} us (${limit.source}); the two ` +
        `processes' clocks agree within ${(clock.bound * 1000).toFixed(0)} us; ` +
        `${handshakes} handshake(s) after the warm-up; ${withCredits} of ${reps} requests ` +
        `used page credits, ${reps - withCredits} an AllocRequest`,
    );
    console.log(`  ${"stage".padEnd(48)} ${"p50 us".padStart(9)} ${"p99 us".padStart(9)}`);
    for (const name of Object.keys(samples[0])) {
      // Stages a request did not go through (credits or AllocRequest) are left out.
      const xs = Float64Array.from(samples.map((x) => x[name]).filter(Number.isFinite)).sort();
      if (xs.length === 0) continue;
      const p50 = percentile(xs, 50);
      const p99 = percentile(xs, 99);
      stats[name] = { p50, p99 };
      console.log(
        `  ${name.padEnd(48)} ${p50.toFixed(1).padStart(9)} ${p99.toFixed(1).padStart(9)}`,
      );
    }
    const busyOnes = Float64Array.from(refillBusy.filter((x) => x > 0)).sort();
    console.log(
      `  decoder serving a credit refill between the post and the notification: ` +
        `${busyOnes.length} of ${refillBusy.length} requests` +
        (busyOnes.length > 0 ? ` (p50 ${percentile(busyOnes, 50).toFixed(1)} us of it)` : ""),
    );
    if (calls) {
      console.log(
        `  sender's engine, mean per call: kvp_xfer_create ${calls.createUs.toFixed(1)} us, ` +
          `kvp_xfer_post ${calls.postUs.toFixed(1)} us (inside "create + post")`,
      );
    }
    if (direct.jobs > 0 || direct.sends > 0) {
      console.log(
        `  sender's engine, means: ${direct.jobs} GPU jobs queued and waited for by one thread ` +
          `(inside the post) ${direct.queueUs.toFixed(1)} us queueing + ` +
          `${direct.waitUs.toFixed(1)} us waiting; ${direct.sends} notification sends ` +
          `${direct.sendUs.toFixed(1)} us each`,
      );
    }
    if (native) {
      console.log(
        `  sender's engine, mean of ${native.posts} GPU posts: copies queued in the post ` +
          `${native.queueUs.toFixed(1)} us; its worker started ${native.hopUs.toFixed(1)} us ` +
          `later (while the GPU copies); the worker's wait for the copies ` +
          `${native.eventWaitUs.toFixed(1)} us`,
      );
    }
    const e2e = Float64Array.from(samples.map((x) => x["end to end: send() -> decoder landed"]))
      .sort();
    const added = Float64Array.from(e2e, (x) => x - copyUs).sort();
    const e2eP50 = percentile(e2e, 50);
    const pingP50 = percentile(Float64Array.from(pings).sort(), 50);
    const tcpP50 = percentile(Float64Array.from(tcpPings).sort(), 50);
    console.log(
      `  bare REQ/REP echo of the AllocRequest's bytes, same processes: p50 ` +
        `${pingP50.toFixed(1)} us round trip (bare TCP echo: ${tcpP50.toFixed(1)} us)`,
    );
    report.add({
      name: `pd_latency_${size.label}_e2e`,
      value: bytes / e2eP50 / 1e3,
      unit: "GB/s",
      limit: limit.bps / 1e9,
      limitName: onGpu ? "cudaMemcpy d2d (interleaved)" : "memcpy (interleaved)",
      extra: {
        e2eP50Us: e2eP50,
        e2eP99Us: percentile(e2e, 99),
        copyUs,
        reps,
        device,
        probeGbps: probe.bps / 1e9,
        probe: probe.source,
        withCredits,
        withAllocRequest: reps - withCredits,
        warmup,
      },
    });
    const rt = stats["AllocRequest round trip"];
    if (rt) {
      report.add({
        name: `pd_latency_${size.label}_alloc_round_trip_p50`,
        value: rt.p50,
        unit: "us",
        limit: pingP50,
        limitName: "bare REQ/REP echo of the same bytes (interleaved)",
        extra: { p99: rt.p99, echoP50Us: pingP50, tcpP50Us: tcpP50, samples: reps - withCredits },
      });
    }
    report.add({
      name: `pd_latency_${size.label}_added_p50`,
      value: percentile(added, 50),
      unit: "us",
      goal: size.chunks === 1 ? { op: "<=", value: 100 } : undefined,
    });
    report.add({
      name: `pd_latency_${size.label}_added_p99`,
      value: percentile(added, 99),
      unit: "us",
    });
    // Throughput with `parallel` requests in flight, two ways: "landed" (each stream's next
    // request starts when its last one landed at the decoder, as requests of several
    // prefill workers that each wait for the decode would) and "sent" (it starts when its
    // last send() settled, the prefiller's pages free again: a prefiller that does not wait
    // for the decoder; the decoder's credits hold it back). Both run until every request
    // landed at the decoder; the same bytes per request, against the same copy time. The
    // pages are not filled (the latency rounds above do that).
    const throughputPhase = async (mode: "landed" | "sent") => {
      // At least 100 requests: with 20 (the measured rounds of a large size) a phase's
      // figure moved by 2x between runs of the same code on one H200 host.
      const total = Math.max(reps, 100, 4 * parallel);
      let started = 0;
      const rxOf = new Map<string, Partial<Record<PdReceiverStage, number>>>();
      // The decoder's credit refills served meanwhile: received -> replied, by start.
      const refillsSeen = new Map<number, number>();
      const one = async () => {
        while (started < total) {
          started++;
          const reqId = `tput-${process.pid}-${reqNo++}`;
          const pages = await tx!.allocate(size.chunks, 30_000);
          const keys = pages.map((_, i) => demoKey(reqId, i));
          const landed = peer.landed(keys[0], 30_000);
          await tx!.send({ ...spec, reqId, isLastPrefill: true }, {
            keys,
            pages,
            shape: [2, 1, size.bytes / 512, 128],
            dtype: "bfloat16",
            lastChunkToks: size.bytes / 512,
          });
          const seen = landed.then((ev) => {
            for (const [a, b] of (ev.refills ?? []) as [number, number][]) refillsSeen.set(a, b);
            const rx: Partial<Record<PdReceiverStage, number>> = {};
            for (const [k, v] of Object.entries(ev.marks as Record<string, number>)) {
              rx[k as PdReceiverStage] = v - clock.offset;
            }
            rxOf.set(reqId, rx);
          });
          if (mode === "landed") await seen;
          else arrivals.push(seen);
        }
      };
      const arrivals: Promise<void>[] = [];
      const t0 = performance.now();
      const refills0 = tx!.credits.refills;
      const cpu0 = [cpuMsOf(process.pid), cpuMsOf(peer.pid)];
      await Promise.all(Array.from({ length: parallel }, one));
      await Promise.all(arrivals);
      const wallUs = (performance.now() - t0) * 1000;
      // CPU per request of each process (every thread): where it nears the wall time per
      // request, that process is what the requests in flight queue for.
      const cpuUs = [cpuMsOf(process.pid), cpuMsOf(peer.pid)].map((c, i) =>
        (c - cpu0[i]) * 1000 / total
      );
      const gbs = (total * bytes) / wallUs / 1e3;
      const refills = tx!.credits.refills - refills0;
      let onCredits = 0;
      let refillWaits = 0;
      // Where the requests in flight spent their time (p50 over the requests that went
      // through the stage, us): what keeps them from overlapping.
      const waits: Record<string, number[]> = {};
      const put = (name: string, a: number | undefined, b: number | undefined) => {
        if (a !== undefined && b !== undefined) (waits[name] ??= []).push((b - a) * 1000);
      };
      for (const [id, m] of marks) {
        if (!id.startsWith("tput-")) continue;
        if (m.credits !== undefined) onCredits++;
        if (m.refill_wait !== undefined) refillWaits++;
        const r = rxOf.get(id) ?? {};
        put("refillWait", m.refill_wait, m.credits ?? m.queued);
        put("queue", m.refill_wait ?? m.send, m.queued);
        put("alloc", m.alloc_sent, m.alloc_reply);
        put("post", m.write, m.posted);
        put("copy", m.posted, m.written);
        put("rxNotif", m.written, r.notification);
        put("rxLanded", r.notification, r.landed);
        put("proxy", m.written, m.notified);
        put("e2e", m.send, r.landed);
        marks.delete(id);
      }
      for (const [a, b] of refillsSeen) if (a - clock.offset >= t0 + origin) put("rxRefill", a, b);
      const where: Record<string, number> = {};
      for (const [k, xs] of Object.entries(waits)) {
        where[k] = percentile(Float64Array.from(xs).sort(), 50);
      }
      const waited = Float64Array.from(waits.refillWait ?? []).sort();
      const refillWaitP99 = waited.length > 0 ? percentile(waited, 99) : 0;
      // The p50 counts only the requests that waited; this is every request's share.
      const refillWaitMean = waited.reduce((a, b) => a + b, 0) / total;
      const show = Object.entries(where).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ") +
        (waited.length > 0
          ? ` (refillWait p99 ${refillWaitP99.toFixed(0)}, mean over all requests ` +
            `${refillWaitMean.toFixed(0)})`
          : "");
      console.log(
        `  ${total} requests, ${parallel} in flight (next ${
          mode === "landed" ? "once landed" : "once sent"
        }): ${(wallUs / total).toFixed(1)} us per ` +
          `request, ${gbs.toFixed(1)} GB/s = ${(gbs / (limit.bps / 1e9)).toFixed(2)} x ` +
          `the copy of the same bytes (${onCredits} of ${total} on page credits; ${refills} ` +
          `credit refills, ${refillWaits} requests waited for one); CPU per ` +
          `request: sender ${cpuUs[0].toFixed(0)} us, decoder ${cpuUs[1].toFixed(0)} us; ` +
          `p50 us: ${show}`,
      );
      report.add({
        name: `pd_latency_${size.label}_${mode === "landed" ? "inflight" : "streams"}${parallel}`,
        value: gbs,
        unit: "GB/s",
        limit: limit.bps / 1e9,
        limitName: onGpu ? "cudaMemcpy d2d (interleaved)" : "memcpy (interleaved)",
        extra: {
          requests: total,
          inflight: parallel,
          next: mode === "landed" ? "once landed at the decoder" : "once send() settled",
          usPerRequest: wallUs / total,
          onCredits,
          refills,
          refillWaits,
          refillWaitP99Us: refillWaitP99,
          refillWaitMeanUs: refillWaitMean,
          cpuUsPerRequest: { sender: cpuUs[0], decoder: cpuUs[1] },
          stagesP50Us: where,
        },
      });
    };
    if (throughput) {
      for (const mode of ["landed", "sent"] as const) await throughputPhase(mode);
    }
    return {
      size: size.label,
      chunks: size.chunks,
      chunkBytes: size.bytes,
      copyUs,
      clockBoundUs: clock.bound * 1000,
      handshakes,
      withCredits,
      stats,
      native,
      engineCalls: calls,
      direct,
      refillBusy: {
        requests: busyOnes.length,
        p50Us: busyOnes.length ? percentile(busyOnes, 50) : 0,
      },
    };
  } finally {
    await echo?.close();
    tcp?.destroy();
    await tx?.close();
    await proxy.close();
    peer.close();
    await peer.exited;
  }
}
report.finish({ device, engine: engineName, stages: rows });
