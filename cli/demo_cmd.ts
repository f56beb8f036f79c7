/**
 * `kvport demo`: a prefill -> decode transfer between two processes, checked byte for
 * byte. It writes LMCache-style prefiller and decoder configurations to a temporary
 * directory, starts `kvport pd-receiver` and `kvport pd-sender` as child processes,
 * collects the proxy notification itself, and prints the throughput next to memcpy
 * measured in the same run.
 *
 * @module
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { shimCacheDir } from "../ffi/mod.ts";
import { ProxyNotifier } from "../src/pd/proxy.ts";
import { guard, int, parse, UsageError } from "./args.ts";
import type { Command } from "./commands.ts";
import { interrupted, onInterrupt, temporaryDirectory } from "./interrupt.ts";
import { err, out } from "./io.ts";
import { defaultShape, kvGeometry } from "./pd_cmd.ts";
import { LIMITS_NAME } from "./shim_build.ts";
import { type Child, nextEvent, spawnKvport } from "./spawn.ts";
import { type BatchStages, describeBatch } from "./stage_clock.ts";

const HELP = `Usage: kvport demo [--chunks N] [--batch B] [--requests R] [--kv-shape S] [--device D]
                  [--keep]

Runs disaggregated prefill between two processes on this machine: a decoder
(kvport pd-receiver) and a prefiller (kvport pd-sender), configured by LMCache-style YAML
files written to a temporary directory. The prefiller sends R requests of N chunks of a
realistic KV shape (28 layers x 2 x 256 tokens x 8 heads x 128 x bf16 = 28 MiB a
chunk), the decoder checks every byte, this process collects the ProxyNotif, and the
throughput of each request is printed next to memcpy measured in the same run; the
figure is the last request's (warm: its code paths have run before, as in a server).

Options:
      --chunks N     chunks per request (default: 16, fewer when memory is short)
      --batch B      chunks per AllocRequest + WRITE (default 8)
      --requests R   requests sent one after the other (default 4, at least 2): the
                     first maps the decoder's buffer, the second is the first on page
                     credits, the last is the figure
      --kv-shape S   shape of one chunk (default 2,28,256,1024)
      --device D     pd_buffer_device of both sides: cpu (default), cuda, cuda:N;
                     with a GPU the pages move VRAM to VRAM (CUDA IPC on one host)
                     and the ratio is to cudaMemcpy device to device; every request's
                     pages are filled before the first is sent, as a model's kernels
                     would have written them (a host fill right before each request
                     would slow the CPU work that follows)
      --timeout S    give up after S seconds (default 120)
      --keep         keep the temporary directory with the configurations
      --json         print the result as one JSON line at the end
  -h, --help         this help

The decoder binds free ports and reports them; the prefiller is started with those.
Ctrl-C stops both processes, removes the temporary directory and exits 130.`;

// The process helpers live in spawn.ts; re-exported here for the tests and callers.
export { type Child, nextEvent, spawnKvport };

/**
 * A TCP port free on 127.0.0.1 right now.
 *
 * @example
 * ```ts
 * import { freePort } from "./demo_cmd.ts";
 * console.log(await freePort());
 * ```
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * The `kvport-limits` tool next to the shim: `native/build/` of a checkout, else the
 * cache directory `kvport build` fills; `undefined` when neither has it.
 *
 * @example
 * ```ts
 * import { limitsTool } from "./demo_cmd.ts";
 * console.log(limitsTool() ?? "not built");
 * ```
 */
export function limitsTool(): string | undefined {
  const here = new URL(`../native/build/${LIMITS_NAME}`, import.meta.url);
  const candidates = here.protocol === "file:" ? [fileURLToPath(here)] : [];
  const cache = shimCacheDir().path;
  if (cache !== undefined) candidates.push(path.join(cache, LIMITS_NAME));
  return candidates.find((p) => fs.existsSync(p));
}

/**
 * memcpy bandwidth (bytes/s) over `bytes`, measured by `kvport-limits` (see
 * {@linkcode limitsTool}) when built, else in-process with `TypedArray.set`.
 *
 * @example
 * ```ts
 * import { measureMemcpy } from "./demo_cmd.ts";
 * const { bps, source } = await measureMemcpy(256 << 20);
 * console.log((bps / 1e9).toFixed(1), "GB/s by", source);
 * ```
 */
export async function measureMemcpy(bytes: number): Promise<{ bps: number; source: string }> {
  const tool = limitsTool();
  if (tool !== undefined) {
    const size = Math.min(bytes, 512 * 2 ** 20);
    const reps = Math.max(3, Math.ceil(bytes / size));
    const line = await new Promise<string>((resolve) => {
      const p = spawn(tool, ["memcpy", String(size), String(reps)], {
        stdio: ["ignore", "pipe", "ignore"],
      });
      let text = "";
      p.stdout!.on("data", (d: Uint8Array) => (text += new TextDecoder().decode(d)));
      p.on("exit", () => resolve(text.trim().split("\n").pop() ?? ""));
      p.on("error", () => resolve(""));
    });
    const bps = bytesPerSecond(line);
    if (bps > 0) return { bps, source: "kvport-limits memcpy" };
  }
  // In-process fallback: TypedArray.set between two large buffers is a memcpy.
  const size = Math.min(bytes, 256 * 2 ** 20);
  const a = new Uint8Array(size).fill(1);
  const b = new Uint8Array(size);
  b.set(a); // fault the pages in
  const reps = Math.max(3, Math.ceil(bytes / size));
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) (i & 1 ? a : b).set(i & 1 ? b : a);
  const s = (performance.now() - t0) / 1000;
  return { bps: (size * reps) / s, source: "TypedArray.set (kvport-limits not built)" };
}

/**
 * cudaMemcpy device-to-device bandwidth (bytes/s) over `bytes` on `device` (`cuda` or
 * `cuda:N`), measured by `kvport-limits cuda-memcpy`; 0 with the reason as `source` when
 * it cannot be measured.
 *
 * @example
 * ```ts
 * import { measureCudaMemcpy } from "./demo_cmd.ts";
 * const { bps, source } = await measureCudaMemcpy(256 << 20, "cuda:0");
 * console.log((bps / 1e9).toFixed(1), "GB/s by", source);
 * ```
 */
export async function measureCudaMemcpy(
  bytes: number,
  device: string,
): Promise<{ bps: number; source: string }> {
  const tool = limitsTool();
  if (tool === undefined) return { bps: 0, source: "kvport-limits not built" };
  const ordinal = device.includes(":") ? device.slice(device.indexOf(":") + 1) : "0";
  const size = Math.min(bytes, 2 * 2 ** 30);
  const line = await new Promise<string>((resolve) => {
    const p = spawn(tool, ["cuda-memcpy", String(size), "20", "d2d", ordinal], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    let text = "";
    p.stdout!.on("data", (d: Uint8Array) => (text += new TextDecoder().decode(d)));
    p.on("exit", () => resolve(text.trim().split("\n").pop() ?? ""));
    p.on("error", () => resolve(""));
  });
  const bps = bytesPerSecond(line);
  return bps > 0
    ? { bps, source: "kvport-limits cuda-memcpy d2d" }
    : { bps: 0, source: `cudaMemcpy not measured: ${line || "no output"}` };
}

/** Bytes per second from a kvport-limits JSON line, whatever its unit. */
function bytesPerSecond(line: string): number {
  try {
    const j = JSON.parse(line) as Record<string, number>;
    if (typeof j.bytes_per_sec === "number") return j.bytes_per_sec;
    if (typeof j.bytesPerSec === "number") return j.bytesPerSec;
    if (typeof j.gbps === "number") return j.gbps * 1e9;
    if (typeof j.GBps === "number") return j.GBps * 1e9;
    if (typeof j.gib_per_sec === "number") return j.gib_per_sec * 2 ** 30;
    if (typeof j.bytes === "number" && typeof j.seconds === "number" && j.seconds > 0) {
      return (j.bytes * (j.reps ?? 1)) / j.seconds;
    }
  } catch {
    // not JSON
  }
  return 0;
}

class Progress {
  #tty: boolean;
  #last = "";
  #lastPlain = -1;
  sent = 0;
  landed = 0;
  constructor(readonly total: number) {
    this.#tty = process.stdout.isTTY === true;
  }
  draw(): void {
    if (this.#tty) {
      const width = 30;
      const bar = (n: number) => {
        const f = this.total === 0 ? width : Math.round((n / this.total) * width);
        return "#".repeat(f) + ".".repeat(width - f);
      };
      const line = `  sent [${bar(this.sent)}] ${this.sent}/${this.total}   ` +
        `verified [${bar(this.landed)}] ${this.landed}/${this.total}`;
      if (line !== this.#last) {
        process.stdout.write(`\r${line}`);
        this.#last = line;
      }
    } else {
      const step = Math.max(1, Math.floor(this.total / 4));
      if (this.landed === this.total || this.landed - this.#lastPlain >= step) {
        out(`  ${this.sent}/${this.total} sent, ${this.landed}/${this.total} verified`);
        this.#lastPlain = this.landed;
      }
    }
  }
  end(): void {
    if (this.#tty && this.#last) process.stdout.write("\n");
  }
}

/**
 * How many of a request's batches were written into page credits (no AllocRequest) and
 * how many asked with an AllocRequest (a batch whose credits could not be used and that
 * asked after all counts as asking), from the sender's timeline marks.
 *
 * @example
 * ```ts
 * import { batchWays } from "./demo_cmd.ts";
 * const w = batchWays([
 *   { firstKey: "a", chunks: 8, stages: { send: 0, credits: 0.1, written: 9 } },
 *   { firstKey: "b", chunks: 8, stages: { send: 0, alloc_sent: 0.1, written: 12 } },
 * ]);
 * console.log(w); // { credits: 1, allocRequests: 1 }
 * ```
 */
export function batchWays(
  batches: readonly BatchStages[],
): { credits: number; allocRequests: number } {
  let credits = 0;
  let allocRequests = 0;
  for (const b of batches) {
    if (b.stages.alloc_sent !== undefined) allocRequests++;
    else if (b.stages.credits !== undefined) credits++;
  }
  return { credits, allocRequests };
}

function mib(n: number): string {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

async function runDemo(args: string[]): Promise<number> {
  const v = parse(args, {
    chunks: { type: "string" },
    batch: { type: "string" },
    requests: { type: "string" },
    "kv-shape": { type: "string" },
    device: { type: "string" },
    timeout: { type: "string" },
    keep: { type: "boolean", default: false },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  });
  if (v.help) {
    out(HELP);
    return 0;
  }
  const device = (v.device as string | undefined) ?? "cpu";
  if (!/^(cpu|cuda(:\d+)?)$/.test(device)) {
    err(`kvport demo: --device expects cpu, cuda or cuda:N, got ${device}`);
    return 2;
  }
  const onGpu = device !== "cpu";
  // Checked here, before any process starts: a child would only say it later, worse.
  const geo = kvGeometry(v["kv-shape"] as string | undefined, "bfloat16", 256);
  const timeoutMs = int("timeout", v.timeout, 1, 120) * 1000;
  const requests = int("requests", v.requests, 2, 4);
  if (requests > 16) {
    throw new UsageError(`--requests expects an integer from 2 to 16, got ${requests}`);
  }
  // The sender's buffer holds one request (on a GPU every request: it fills them all
  // first, see the prefiller's configuration below); the decoder's every request (it
  // checks them once all have landed: see pd-receiver) and three more, for the sender's
  // page credits: its stock of three requests' pages (back-to-back requests find theirs
  // while a refill is on its way) and those of the request in flight, which count as
  // credits until its bind lands (caps of four requests, below). On the host, R + 4 times
  // N chunks in all, within half of the free memory.
  const free = os.freemem();
  const fit = Math.max(1, Math.floor((free * 0.5) / ((requests + 4) * geo.pageSize)));
  const chunks = int("chunks", v.chunks, 1, Math.min(16, fit));
  const batch = Math.min(chunks, int("batch", v.batch, 1, 8));
  const bufferSize = chunks * geo.pageSize;
  const dir = temporaryDirectory("kvport-demo-", { keep: v.keep === true });
  const common = [
    "enable_pd: true",
    'transfer_channel: "nixl"',
    `pd_buffer_device: "${device}"`,
    "nixl_backends: [UCX]",
  ];
  // The proxy listens first (port 0), so the prefiller's configuration names its real
  // port; the decoder binds its own free ports and reports them on its ready line.
  const proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  const offProxy = onInterrupt(() => proxy.close());
  const decoderYaml = path.join(dir.path, "lmcache-decoder-config.yaml");
  const prefillerYaml = path.join(dir.path, "lmcache-prefiller-config.yaml");
  fs.writeFileSync(
    decoderYaml,
    [
      "# kvport demo: the decoder (LMCache keys). The ports below are LMCache's usual",
      "# ones; the demo starts the decoder with --init-port 0 --alloc-port 0 instead, so",
      "# that it binds free ports and reports them.",
      ...common,
      'pd_role: "receiver"',
      `pd_buffer_size: ${(requests + 3) * bufferSize}`,
      'pd_peer_host: "127.0.0.1"',
      "pd_peer_init_port: [7300]",
      "pd_peer_alloc_port: [7400]",
      "pd_allocation_timeout_sec: 30",
      "extra_config:",
      "  # Page credits (kvport to kvport): the prefiller's stock (three requests' pages)",
      "  # and the pages of the request in flight, which count as credits until its bind lands.",
      `  kvport_pd_credit_max: ${4 * chunks}`,
      `  kvport_pd_credit_total: ${4 * chunks}`,
      "",
    ].join("\n"),
  );
  fs.writeFileSync(
    prefillerYaml,
    [
      "# kvport demo: the prefiller (LMCache keys)",
      ...common,
      'pd_role: "sender"',
      // On a GPU the prefiller fills every request's pages before the first is sent
      // (pd-sender --fill-ahead): a model writes its KV there with kernels, which leave
      // the CPU caches alone, where a host fill right before each request made the next
      // request's CPU work in both processes about twice as slow.
      `pd_buffer_size: ${onGpu ? requests * bufferSize : bufferSize}`,
      'pd_proxy_host: "127.0.0.1"',
      `pd_proxy_port: ${proxy.port}`,
      "extra_config:",
      "  # Page credits: a stock of three requests' pages (the next requests find theirs",
      "  # while the refill after this one is on its way).",
      `  kvport_pd_credit_pages: ${3 * chunks}`,
      "",
    ].join("\n"),
  );
  const shape = (v["kv-shape"] as string | undefined) ?? defaultShape(256).join(",");
  const baseId = `demo-${process.pid}`;
  const reqIds = Array.from({ length: requests }, (_, i) => `${baseId}-${i}`);
  out(`kvport demo: disaggregated prefill between two processes, checked byte for byte`);
  out(
    `  ${requests} requests of ${chunks} chunk(s) of ${mib(geo.pageSize)} ` +
      `(KV shape [${geo.shape.join(", ")}] bfloat16) = ${mib(bufferSize)} each` +
      (v.chunks === undefined && chunks < 16 ? ` (fewer than 16: ${mib(free)} free)` : ""),
  );
  out(`  configurations: ${dir.path}` + (onGpu ? ` (pd_buffer_device: ${device})` : ""));

  const children: Child[] = [];
  const offChildren = onInterrupt(() => children.forEach((c) => c.kill()));
  try {
    const rx = spawnKvport("pd-receiver", [
      "pd-receiver",
      "--config",
      decoderYaml,
      "--init-port",
      "0",
      "--alloc-port",
      "0",
      "--kv-shape",
      shape,
      "--verify",
      "--expect",
      String(requests * chunks),
      "--timeout",
      String(Math.ceil(timeoutMs / 1000)),
      "--json",
    ]);
    children.push(rx);
    const ready = await nextEvent(rx, "ready", 30_000);
    const portOf = (url: unknown) => String(url).slice(String(url).lastIndexOf(":") + 1);
    out(
      `  decoder:   ${ready.engine} engine, handshakes on ${ready.init}, ` +
        `allocations on ${ready.alloc}`,
    );
    const proxyDone = Promise.all(reqIds.map((id) => proxy.waitFor(id, { timeoutMs })));
    proxyDone.catch(() => {});
    const tx = spawnKvport("pd-sender", [
      "pd-sender",
      "--config",
      prefillerYaml,
      "--receiver-host",
      "127.0.0.1",
      "--init-port",
      portOf(ready.init),
      "--alloc-port",
      portOf(ready.alloc),
      "--chunks",
      String(chunks),
      "--batch",
      String(batch),
      "--kv-shape",
      shape,
      "--req-id",
      baseId,
      "--requests",
      String(requests),
      ...(onGpu ? ["--fill-ahead"] : []),
      "--timeline",
      "--json",
    ]);
    children.push(tx);
    const txReady = await nextEvent(tx, "ready", 30_000);
    out(
      `  prefiller: ${txReady.engine} engine, handshake ${
        Number(txReady.handshakeMs).toFixed(1)
      } ms`,
    );
    const progress = new Progress(requests * chunks);
    const perRequest: Record<string, unknown>[] = [];
    const stages = new Map<string, BatchStages[]>();
    let txDone: Record<string, unknown> | undefined;
    let rxDone: Record<string, unknown> | undefined;
    const readTx = (async () => {
      for await (const e of tx.lines) {
        if (e.event === "progress") {
          progress.sent = perRequest.length * chunks + Number(e.sent);
          progress.draw();
        } else if (e.event === "request") perRequest.push(e);
        else if (e.event === "timeline") stages.set(String(e.req), e.batches as BatchStages[]);
        else if (e.event === "done") txDone = e;
      }
    })();
    const readRx = (async () => {
      for await (const e of rx.lines) {
        if (e.event === "landed") {
          progress.landed = Number(e.n);
          progress.draw();
        } else if (e.event === "done") rxDone = e;
      }
    })();
    const [txCode, rxCode] = await Promise.all([tx.exited, rx.exited]);
    await Promise.all([readTx, readRx]);
    progress.end();
    if (interrupted() !== null) return 130; // main exits with the signal's code
    if (txCode !== 0 || !txDone) {
      err(
        `kvport demo: the prefiller failed (exit ${txCode}):\n  ${
          tx.stderr.slice(-10).join("\n  ")
        }` + (rx.stderr.length > 0
          ? `\n  the decoder said:\n  ${rx.stderr.slice(-10).join("\n  ")}`
          : ""),
      );
      return 1;
    }
    if (!rxDone) {
      err(
        `kvport demo: the decoder failed (exit ${rxCode}):\n  ${rx.stderr.slice(-10).join("\n  ")}`,
      );
      return 1;
    }
    let notified = true;
    await proxyDone.catch(() => (notified = false));
    // Measured now that the children are done, so it competes with nothing.
    const mc = onGpu
      ? await measureCudaMemcpy(bufferSize, device)
      : await measureMemcpy(bufferSize);
    const warm = perRequest[perRequest.length - 1];
    const bps = Number(warm.bytes) / Number(warm.seconds);
    const ratio = bps / mc.bps;
    const landed = Number(rxDone.landed);
    const bad = Number(rxDone.bad);
    perRequest.forEach((r, i) => {
      const secs = Number(r.seconds);
      const what = i === 0
        ? "cold: the first request maps the decoder's buffer"
        : i === 1
        ? "the first on page credits: its code runs for the first time"
        : i === perRequest.length - 1
        ? "warm: the figure"
        : "warm";
      out(
        `  transfer: ${mib(Number(r.bytes))} in ${(secs * 1000).toFixed(1)} ms = ` +
          `${(Number(r.bytes) / secs / 1e9).toFixed(2)} GB/s, ` +
          `${(Number(r.chunks) / secs).toFixed(0)} chunks/s  (${what})`,
      );
    });
    // Where the warm request's time went, batch by batch (the sender's marks).
    for (const b of stages.get(String(warm.req)) ?? []) out(`            ${describeBatch(b)}`);
    // How each request's batches got their pages: page credits, or an AllocRequest.
    const ways = perRequest.map((r) => ({
      req: String(r.req),
      ...batchWays(stages.get(String(r.req)) ?? []),
    }));
    const warmWays = ways[ways.length - 1];
    out(
      `  batches:  ${
        ways.map((w, i) =>
          `${i === 0 ? "cold" : "warm"} ${w.credits} on page credits, ` +
          `${w.allocRequests} by AllocRequest`
        ).join("; ")
      }`,
    );
    out(
      `  ${onGpu ? "cudaMemcpy" : "memcpy:  "} ${(mc.bps / 1e9).toFixed(2)} GB/s (${mc.source}) ` +
        `-> ratio ${ratio.toFixed(2)}`,
    );
    out(
      `  decoder:  ${landed}/${requests * chunks} chunks landed, ${landed - bad} verified ` +
        "byte for byte" + (bad ? `, ${bad} BAD` : ""),
    );
    out(
      `  proxy:    ${
        notified
          ? `ProxyNotif received for ${reqIds.map((id) => `"${id}"`).join(", ")}`
          : "ProxyNotif MISSING"
      }`,
    );
    const ok = txCode === 0 && rxCode === 0 && bad === 0 && landed === requests * chunks &&
      notified;
    if (v.json) {
      out(JSON.stringify({
        ok,
        requests,
        chunks,
        chunkBytes: geo.pageSize,
        bytes: Number(warm.bytes),
        seconds: Number(warm.seconds),
        gbps: bps / 1e9,
        coldGbps: Number(perRequest[0].gbps),
        device,
        limit: mc.source,
        memcpyGbps: mc.bps / 1e9,
        ratio,
        verified: landed - bad,
        notified,
        // The warm request's batches by how they got their pages, then every request's.
        creditBatches: warmWays.credits,
        allocBatches: warmWays.allocRequests,
        batches: ways,
      }));
    }
    out(ok ? "  result:   OK" : "  result:   FAILED");
    return ok ? 0 : 1;
  } finally {
    offChildren();
    offProxy();
    for (const c of children) c.kill();
    await Promise.all(children.map((c) => c.exited));
    await proxy.close();
    dir.remove();
  }
}

/**
 * `kvport demo`.
 *
 * @example
 * ```ts
 * import { demoCommand } from "./demo_cmd.ts";
 * const code = await demoCommand.run(["--chunks", "4"]);
 * ```
 */
export const demoCommand: Command = {
  name: "demo",
  summary: "a prefill -> decode transfer between two processes, checked byte for byte",
  run: (args) => guard("demo", () => runDemo(args)),
};
