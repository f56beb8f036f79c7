/**
 * Scaling (issue 19): each figure shows a resource staying flat, or bounded by a
 * documented limit, as peers, buffers, slots and hashes grow. Every figure is a ratio to
 * a limit measured in the same run (mostly the same figure at the smallest scale, so
 * 1.0 is flat), then one JSON line.
 *
 * - `fanin_<n>_senders`: 1, 2, 4, 8 sender processes push 256 KiB chunks into one
 *   decoder (this process) for the same few seconds; total GB/s over the 1-sender total
 *   of the same run, and fairness (Jain's index of the per-sender rates, 1.0 = equal
 *   shares). Every byte that lands is checked.
 * - `sender_rss_vs_receiver_<g>GiB`: a sender's RSS growth for one 256 MiB same-host
 *   WRITE into a receiver buffer of 1, 4, 8 GiB (`kvport-bench rss`: sparse memfds, so
 *   the machine needs only what is written), over the bytes the request touches.
 * - `static_pool_open_<n>_slots`: reopening a static pool of 1,000 and 10,000 slots
 *   (every slot written), in ms over a `stat` of every slot file; `fds` in `extra`
 *   (bounded by `maxOpenFiles`).
 * - `registry_lookup_p50_<n>_hashes`: a 64-hash lookup round trip with 1k, 10k, 100k
 *   hashes held, over an empty lookup's round trip interleaved with it (the wire and the
 *   registry's loop alone); `overSmallest` in `extra` compares with 1k.
 * - `receiver_fds_after_<n>_senders`: a decoder's open descriptors after that many sender
 *   processes came and went one after another, over its count before the first.
 * - `p2p_holder_rss_growth_<n>_chunks`: a holder process's RSS growth beyond its page
 *   buffer with 10k and 100k chunks of 1 KiB held (reported to a registry), over the
 *   documented bound: 32 MiB + 2 KiB per held chunk (`heapRetainedBytesPerChunk` in
 *   `extra`: what the heap still holds per chunk after a full GC).
 *
 * ```sh
 * deno run -A bench/scale_bench.ts [--quick] [--only fanin,rss,pool,registry,churn,holder]
 * bun bench/scale_bench.ts
 * ```
 *
 * @module
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import * as readline from "node:readline";
import { spawn, spawnSync } from "node:child_process";
import { parseArgs } from "node:util";
import { checkPattern, fillPattern } from "../src/pd/pattern.ts";
import { PdReceiver } from "../src/pd/receiver.ts";
import { PdSender } from "../src/pd/sender.ts";
import { P2PBackend } from "../src/p2p/backend.ts";
import { P2PRegistry } from "../src/p2p/registry.ts";
import { NixlStorageBackend } from "../src/storage/backend.ts";
import { decodeMessage, encodeMessage, ReqSocket } from "../src/channel/wire/mod.ts";
import { measureMemcpy } from "../cli/demo_cmd.ts";
import { benchSenderConfig, percentile, Report, type Scored } from "./lib.ts";

const CHUNK = 256 * 1024; // 2 x 1 layer x 256 tokens x 256 x bf16
const SHAPE = [2, 1, 256, 256];
const BATCH = 8;
/** The fixed part of a P2P holder's documented RSS bound beyond its buffer (heap headroom). */
const HOLDER_FIXED_MIB = 32;
/** The per-chunk part of that bound, bytes: retained data is ~200 B, the rest is the heap
 * the runtime keeps after the garbage of storing (V8 about 0.7 KiB, JSC about 1.3 KiB). */
const HOLDER_PER_CHUNK = 2048;
const ENGINE = "builtin" as const;
const self = new URL(import.meta.url).pathname;
const isBun = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined";

/** This file again in a child process of the same runtime, in `role`. */
function child(role: string, args: string[]) {
  const cmd = isBun
    ? [self, "--role", role, ...args]
    : ["run", "-A", self, "--role", role, ...args];
  const p = spawn(process.execPath, cmd, { stdio: ["pipe", "pipe", "inherit"] });
  const rl = readline.createInterface({ input: p.stdout! });
  const queue: Record<string, unknown>[] = [];
  const waiting: ((v: Record<string, unknown> | null) => void)[] = [];
  rl.on("line", (line: string) => {
    let v: Record<string, unknown>;
    try {
      v = JSON.parse(line);
    } catch {
      return;
    }
    const w = waiting.shift();
    if (w) w(v);
    else queue.push(v);
  });
  const exited = new Promise<number>((r) => p.on("exit", (c: number | null) => r(c ?? 1)));
  exited.then(() => {
    for (const w of waiting.splice(0)) w(null);
  });
  return {
    pid: p.pid!,
    exited,
    send: (line: string) => p.stdin!.write(`${line}\n`),
    kill: () => {
      if (p.exitCode === null) p.kill("SIGTERM");
    },
    /** The next JSON line, waiting at most `ms`. */
    next(ms: number): Promise<Record<string, unknown>> {
      const v = queue.shift();
      if (v) return Promise.resolve(v);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${role} child silent for ${ms} ms`)), ms);
        waiting.push((x) => {
          clearTimeout(t);
          if (x) resolve(x);
          else reject(new Error(`${role} child exited`));
        });
      });
    },
  };
}

function fdCount(pid: number | "self" = "self"): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

function rssKiB(field: "VmRSS" | "RssAnon" | "RssShmem" | "RssFile"): number {
  const m = new RegExp(`${field}:\\s+(\\d+)`).exec(fs.readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) : 0;
}

// ------------------------------------------------------------------ decoder --

/** A decoder in this process that checks and frees every chunk as it lands. */
async function decoder(pages: number) {
  const rx = await PdReceiver.create({
    host: "127.0.0.1",
    initPort: 0,
    allocPort: 0,
    bufferSize: pages * CHUNK,
    pageSize: CHUNK,
    chunkSize: 256,
    engine: ENGINE,
    allocationTimeoutMs: 30_000,
  });
  const tally = { landed: 0, bad: 0, bytes: 0 };
  rx.onLanded((keys) => {
    for (const k of keys) {
      const v = rx.view(k);
      if (!v || checkPattern(k, v) !== -1) tally.bad++;
      tally.landed++;
      tally.bytes += v?.length ?? 0;
      rx.remove(k);
    }
  });
  return { rx, tally };
}

function senderArgs(rx: PdReceiver, extra: string[]): string[] {
  return ["--init", String(rx.initPort), "--alloc", String(rx.allocPort), ...extra];
}

// -------------------------------------------------------------- child roles --

async function senderRole(v: Record<string, string | boolean | undefined>): Promise<void> {
  const config = benchSenderConfig(2 * BATCH * CHUNK);
  const tx = await PdSender.fromConfig(config, { pageSize: CHUNK, engine: ENGINE });
  const spec = {
    receiverHost: "127.0.0.1",
    receiverInitPort: [Number(v.init)],
    receiverAllocPort: [Number(v.alloc)],
  };
  const id = String(v.id ?? process.pid);
  const sendOne = async (reqId: string, n: number) => {
    const pages = await tx.allocate(n, 30_000);
    const keys = pages.map((_, i) =>
      `vllm@scale@1@0@${reqId}${i.toString(16).padStart(4, "0")}@bfloat16`
    );
    keys.forEach((k, i) => fillPattern(k, tx.channel.pages[pages[i]]));
    const r = await tx.send({ ...spec, reqId, isLastPrefill: true }, {
      keys,
      pages,
      shape: SHAPE,
      dtype: "bfloat16",
      lastChunkToks: 256,
    });
    return r.sent;
  };
  try {
    await tx.connect(spec);
    if (v.once) {
      const sent = await sendOne(`${Number(id).toString(16)}0`, 2);
      console.log(JSON.stringify({ event: "done", sent }));
      return;
    }
    console.log(JSON.stringify({ event: "ready" }));
    const rl = readline.createInterface({ input: process.stdin });
    const it = rl[Symbol.asyncIterator]();
    await it.next(); // "go"
    const seconds = Number(v.seconds ?? 3);
    let chunks = 0, req = 0;
    const t0 = performance.now();
    const hex = (Number(id) + 1).toString(16);
    while (performance.now() - t0 < seconds * 1000) {
      chunks += await sendOne(`${hex}0${(req++).toString(16)}0`, BATCH);
    }
    const dt = (performance.now() - t0) / 1000;
    console.log(JSON.stringify({ event: "done", chunks, bytes: chunks * CHUNK, seconds: dt }));
    rl.close();
  } finally {
    await tx.close();
  }
}

async function holderRole(v: Record<string, string | boolean | undefined>): Promise<void> {
  const counts = String(v.counts ?? "10000,100000").split(",").map(Number);
  const max = Math.max(...counts);
  const page = 1024;
  const p2p = await P2PBackend.create({
    instanceId: "scale-holder",
    host: "127.0.0.1",
    initPort: 0,
    lookupPort: 0,
    pageSize: page,
    bufferSize: (max + 64) * page,
    engine: ENGINE,
    heartbeatIntervalMs: null,
    registryPullUrl: typeof v.pull === "string" ? v.pull : null,
  });
  const gc = (globalThis as { gc?: () => void }).gc ??
    (globalThis as { Bun?: { gc(sync: boolean): void } }).Bun?.gc.bind(null, true);
  const sample = () => {
    gc?.();
    return {
      anonKiB: rssKiB("RssAnon"),
      shmemKiB: rssKiB("RssShmem"),
      rssKiB: rssKiB("VmRSS"),
      heapUsedKiB: process.memoryUsage().heapUsed / 1024,
    };
  };
  try {
    const idle = sample();
    console.log(JSON.stringify({ event: "sample", chunks: 0, ...idle }));
    let held = 0;
    for (const n of counts) {
      for (; held < n; held++) {
        const key = `vllm@scale-holder@1@0@${(0x10000000 + held).toString(16)}@bfloat16`;
        await p2p.store(key, (pg) => fillPattern(key, pg));
      }
      await p2p.flushReports();
      console.log(JSON.stringify({ event: "sample", chunks: held, ...sample() }));
    }
  } finally {
    await p2p.close();
  }
}

// --------------------------------------------------------------- the figures --

async function fanIn(report: Report, counts: number[], seconds: number): Promise<void> {
  const mc = await measureMemcpy(64 * CHUNK);
  let base: number | undefined;
  for (const n of counts) {
    const { rx, tally } = await decoder(Math.max(64, 4 * n * BATCH));
    const kids = Array.from(
      { length: n },
      (_, i) => child("sender", senderArgs(rx, ["--id", String(i), "--seconds", String(seconds)])),
    );
    try {
      for (const k of kids) await k.next(60_000); // ready: handshaken
      for (const k of kids) k.send("go");
      const done = await Promise.all(kids.map((k) => k.next(seconds * 1000 + 60_000)));
      const sent = done.reduce((a, d) => a + Number(d.chunks), 0);
      const deadline = Date.now() + 30_000;
      while (tally.landed < sent && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      const rates = done.map((d) => Number(d.bytes) / Number(d.seconds) / 1e9);
      const total = rates.reduce((a, b) => a + b, 0);
      const jain = total ** 2 / (n * rates.reduce((a, b) => a + b * b, 0));
      base ??= total;
      report.add({
        name: `fanin_${n}_senders`,
        value: total,
        unit: "GB/s",
        limit: base,
        limitName: "1 sender, same run",
        goal: n > 1 ? { op: ">=", ratio: 0.7 } : undefined,
        extra: {
          fairness: jain,
          minOverMax: Math.min(...rates) / Math.max(...rates),
          perSenderGbps: rates,
          chunks: sent,
          landed: tally.landed,
          bad: tally.bad,
          chunkBytes: CHUNK,
          seconds,
          memcpyGbps: mc.bps / 1e9,
        },
      });
      console.log(
        `  fairness ${jain.toFixed(3)} (Jain), ${tally.landed}/${sent} landed, ${tally.bad} bad`,
      );
      if (tally.bad > 0 || tally.landed < sent) {
        throw new Error(
          `fan-in of ${n}: ${tally.bad} bad chunk(s), ${tally.landed} of ${sent} landed`,
        );
      }
    } finally {
      for (const k of kids) k.kill();
      await Promise.all(kids.map((k) => k.exited));
      await rx.close();
    }
  }
}

function nativeBench(): string | undefined {
  const tool = new URL("../native/build/kvport-bench", import.meta.url).pathname;
  if (fs.existsSync(tool)) return tool;
  const make = spawnSync("make", ["-C", new URL("../native", import.meta.url).pathname, "bench"], {
    encoding: "utf8",
  });
  return make.status === 0 && fs.existsSync(tool) ? tool : undefined;
}

function senderRss(report: Report): void {
  const tool = nativeBench();
  if (!tool) {
    console.log("sender rss: skipped (kvport-bench not built: make -C native bench)");
    return;
  }
  const r = spawnSync(tool, ["rss"], { encoding: "utf8", timeout: 300_000 });
  for (const line of r.stdout.trim().split("\n")) {
    let c: Record<string, number | string>;
    try {
      c = JSON.parse(line);
    } catch {
      continue;
    }
    if (c.case !== "rss_sender_vs_receiver_buffer") continue;
    report.add({
      name: `sender_rss_vs_receiver_${c.receiver_gib}GiB`,
      value: Number(c.sender_rss_growth_mib),
      unit: "MiB",
      limit: Number(c.request_mib),
      limitName: "bytes the request touches",
      goal: { op: "<=", ratio: 1.1 },
      extra: { firstRequestMs: c.first_request_ms, warmRequestMs: c.warm_request_ms },
    });
  }
}

async function staticPool(report: Report, sizes: number[]): Promise<void> {
  const page = 4096;
  let limit: Scored | undefined;
  for (const slots of sizes) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvport-scale-pool-"));
    try {
      const open = () =>
        NixlStorageBackend.create({
          path: dir,
          pageSize: page,
          poolSize: slots,
          bufferSize: 256 * page,
          engine: ENGINE,
        });
      const t0 = performance.now();
      let store = await open();
      const createMs = performance.now() - t0;
      const body = new Uint8Array(page);
      for (let at = 0; at < slots; at += 256) {
        const keys = Array.from({ length: Math.min(256, slots - at) }, (_, i) => `slot-${at + i}`);
        await store.batchedPut(keys, keys.map(() => body));
      }
      const fdsFull = fdCount();
      const cap = (await store.stats()).details.maxOpenFiles as number;
      await store.close();
      const fds0 = fdCount();
      const t1 = performance.now();
      store = await open();
      const openMs = performance.now() - t1;
      const fdsOpen = fdCount() - fds0;
      const used = (await store.stats()).used;
      await store.close();
      // The filesystem's own cost of looking at every slot file once.
      const names = fs.readdirSync(dir).filter((n) => n.endsWith(".bin"));
      const t2 = performance.now();
      for (const n of names) fs.statSync(path.join(dir, n));
      const statMs = performance.now() - t2;
      const s = report.add({
        name: `static_pool_open_${slots}_slots`,
        value: openMs,
        unit: "ms",
        limit: statMs,
        limitName: "stat of every slot file",
        extra: {
          createMs,
          fdsOnOpen: fdsOpen,
          fdsWhileFull: fdsFull - fds0,
          maxOpenFiles: cap,
          used,
        },
      });
      console.log(
        `  fds: +${fdsOpen} on open, ${
          fdsFull - fds0
        } with every slot written (maxOpenFiles ${cap})`,
      );
      if (used !== slots) throw new Error(`pool of ${slots}: ${used} slots in use after reopen`);
      limit ??= s;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
}

async function registryLookups(report: Report, sizes: number[]): Promise<void> {
  const reg = await P2PRegistry.listen({ pullUrl: "127.0.0.1:0", replyUrl: "127.0.0.1:0" });
  const req = ReqSocket.connect(`tcp://${reg.replyUrl}`, { timeoutMs: 10_000 });
  try {
    reg.report({
      type: "RegisterMsg",
      instance_id: "holder",
      worker_id: 0,
      ip: "127.0.0.1",
      port: 1,
      peer_init_url: "127.0.0.1:2",
    });
    let held = 0, seq = 0, base: number | undefined;
    for (const n of sizes) {
      while (held < n) {
        const m = Math.min(1000, n - held);
        reg.report({
          type: "BatchedKVOperationMsg",
          instance_id: "holder",
          worker_id: 0,
          location: "LocalCPUBackend",
          operations: Array.from({ length: m }, (_, i) => ({
            op_type: "admit" as const,
            key: BigInt(held + i + 1),
            seq_num: seq++,
          })),
        });
        held += m;
      }
      // Interleaved with each lookup: an empty one (no hash to look at), the round trip of
      // the wire and the registry's loop alone, as the limit.
      const times: number[] = [];
      const empty: number[] = [];
      const ask = async (hashes: bigint[]) => {
        const t0 = performance.now();
        const [reply] = await req.request(
          encodeMessage({
            type: "BatchedP2PLookupMsg",
            hashes,
            instance_id: "asker",
            worker_id: 0,
          }),
        );
        const dt = performance.now() - t0;
        return { dt, msg: decodeMessage(reply, ["BatchedP2PLookupRetMsg"]) };
      };
      for (let r = 0; r < 300; r++) {
        const start = 1 + Math.floor(Math.random() * (n - 64));
        const { dt, msg } = await ask(Array.from({ length: 64 }, (_, i) => BigInt(start + i)));
        const hit = msg.layout_info[0]?.[2];
        if (Number(hit) !== 64) throw new Error(`lookup at ${n} hashes found ${String(hit)} of 64`);
        const e = await ask([]);
        if (r >= 20) {
          times.push(dt);
          empty.push(e.dt);
        }
      }
      const p50 = percentile(times.sort((a, b) => a - b), 50);
      const e50 = percentile(empty.sort((a, b) => a - b), 50);
      base ??= p50;
      report.add({
        name: `registry_lookup_p50_${n}_hashes`,
        value: p50,
        unit: "ms",
        limit: e50,
        limitName: "empty lookup round trip, same run",
        goal: { op: "<=", ratio: 3 },
        extra: {
          p99: percentile(times, 99),
          overSmallest: p50 / base,
          lookups: times.length,
          hashesPerLookup: 64,
        },
      });
    }
  } finally {
    await req.close();
    await reg.close();
  }
}

async function churn(report: Report, senders: number): Promise<void> {
  const { rx, tally } = await decoder(64);
  try {
    // One sender first, so the figure counts what stays per sender, not what the first
    // handshake sets up once (listeners' accepted sockets, the progress thread).
    const first = child("churn", senderArgs(rx, ["--once", "--id", "1"]));
    await first.next(60_000);
    await first.exited;
    await new Promise((r) => setTimeout(r, 500));
    const before = fdCount();
    for (let i = 0; i < senders; i++) {
      const k = child("churn", senderArgs(rx, ["--once", "--id", String(i + 2)]));
      await k.next(60_000);
      await k.exited;
    }
    // Dead peers are noticed through their pidfds and closed connections.
    await new Promise((r) => setTimeout(r, 1000));
    const after = fdCount();
    report.add({
      name: `receiver_fds_after_${senders}_senders`,
      value: after,
      unit: "fds",
      limit: before,
      limitName: "fds before the first of them",
      goal: { op: "<=", ratio: 1.1 },
      extra: {
        landed: tally.landed,
        bad: tally.bad,
        peersKnown: (rx.channel as unknown as { peerIds?: string[] }).peerIds?.length,
      },
    });
    if (tally.bad > 0 || tally.landed !== 2 * (senders + 1)) {
      throw new Error(`churn: ${tally.landed} chunks landed (${tally.bad} bad)`);
    }
  } finally {
    await rx.close();
  }
}

async function holderRss(report: Report, counts: number[]): Promise<void> {
  const reg = await P2PRegistry.listen({ pullUrl: "127.0.0.1:0", replyUrl: "127.0.0.1:0" });
  const flags = isBun ? [] : ["--v8-flags=--expose-gc"];
  const args = isBun
    ? [self, "--role", "holder", "--counts", counts.join(","), "--pull", reg.pullUrl]
    : [
      "run",
      "-A",
      ...flags,
      self,
      "--role",
      "holder",
      "--counts",
      counts.join(","),
      "--pull",
      reg.pullUrl,
    ];
  try {
    // Not spawnSync: the registry in this process must keep reading the holder's reports.
    const p = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    p.stdout!.on("data", (d: Uint8Array) => (out += new TextDecoder().decode(d)));
    p.stderr!.on("data", (d: Uint8Array) => (err += new TextDecoder().decode(d)));
    await new Promise((r) => p.on("exit", r));
    const samples = out.trim().split("\n").flatMap((l) => {
      try {
        const v = JSON.parse(l);
        return v.event === "sample" ? [v] : [];
      } catch {
        return [];
      }
    });
    if (samples.length !== counts.length + 1) {
      throw new Error(`holder child: ${samples.length} samples (${err.slice(-400)})`);
    }
    const idle = samples[0];
    let prev = idle;
    for (const s of samples.slice(1)) {
      // Beyond the buffer: anonymous memory (the heap, the allocator) grown since idle,
      // against the documented bound: a fixed 32 MiB of heap headroom + 2 KiB per chunk.
      const growth = (s.anonKiB - idle.anonKiB) / 1024;
      const marginal = (s.anonKiB - prev.anonKiB) * 1024 / (s.chunks - prev.chunks);
      prev = s;
      report.add({
        name: `p2p_holder_rss_growth_${s.chunks}_chunks`,
        value: growth,
        unit: "MiB",
        limit: HOLDER_FIXED_MIB + s.chunks * HOLDER_PER_CHUNK / 2 ** 20,
        limitName: "bound: 32 MiB + 2 KiB per held chunk",
        goal: { op: "<=", ratio: 1 },
        extra: {
          bytesPerChunkSincePrevious: marginal,
          heapRetainedBytesPerChunk: (s.heapUsedKiB - idle.heapUsedKiB) * 1024 / s.chunks,
          rssMiB: s.rssKiB / 1024,
          idleRssMiB: idle.rssKiB / 1024,
          bufferMiB: s.shmemKiB / 1024,
          chunkBytes: 1024,
        },
      });
    }
  } finally {
    await reg.close();
  }
}

// --------------------------------------------------------------------- main --

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    role: { type: "string" },
    init: { type: "string" },
    alloc: { type: "string" },
    id: { type: "string" },
    seconds: { type: "string" },
    once: { type: "boolean" },
    counts: { type: "string" },
    pull: { type: "string" },
    quick: { type: "boolean" },
    only: { type: "string" },
  },
});

if (values.role === "sender" || values.role === "churn") {
  await senderRole(values);
  process.exit(0);
} else if (values.role === "holder") {
  await holderRole(values);
  process.exit(0);
} else if (import.meta.main) {
  process.env.KVPORT_ENGINE ??= ENGINE;
  const quick = values.quick === true;
  const only = new Set((values.only ?? "fanin,rss,pool,registry,churn,holder").split(","));
  const report = new Report("scale");
  console.log(
    `scale bench: ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ` +
      "every figure against the same figure at the smallest scale or a limit of the same run",
  );
  if (only.has("fanin")) await fanIn(report, quick ? [1, 2] : [1, 2, 4, 8], quick ? 1 : 3);
  if (only.has("rss")) senderRss(report);
  if (only.has("pool")) await staticPool(report, quick ? [1000] : [1000, 10_000]);
  if (only.has("registry")) {
    await registryLookups(report, quick ? [1000, 10_000] : [1000, 10_000, 100_000]);
  }
  if (only.has("churn")) await churn(report, quick ? 10 : 100);
  if (only.has("holder")) await holderRss(report, quick ? [10_000] : [10_000, 100_000]);
  report.finish({ quick, engine: ENGINE });
  process.exit(0);
}
