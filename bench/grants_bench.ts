/**
 * What page grants cost at the channel level: PD end to end (a prefiller here, decoders as
 * `kvport pd-receiver` processes, as `bench/pd_bench.ts`) on the same-host path
 * (`nixl_backends: [UCX]`) and over TCP (`[TCP]`), with page grants on (the default: the
 * decoder grants the sender each AllocResponse's pages before replying, the engine checks
 * every piece, the grant is revoked when the pages land) and off
 * (`extra_config.kvport_page_grants: false`), plus a second pipeline without grants as
 * a control. The pipelines run side by side and the requests rotate between them one by
 * one, so the drift of a shared machine hits all alike; the figure is the GB/s with grants
 * as a ratio to the same transfer without them in the same run (median of the per-round
 * ratios; goal >= 0.98: grants cost under 2%), with the control's ratio (A/A: the noise of
 * the method on this machine), the ratio to memcpy and the spread alongside. Then the
 * receiver's grant bookkeeping alone per request (grant + revoke of its pages through the
 * channel's grant book), as a ratio to that request's time; then one JSON line.
 *
 * ```sh
 * deno run -A bench/grants_bench.ts [--pairs 20] [--sizes 8,64] [--chunk-mib 4] [--transports same_host,tcp]
 * bun bench/grants_bench.ts
 * ```
 *
 * @module
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import { benchSenderConfig, Report } from "./lib.ts";
import { chunkBytes, MemoryFormat } from "../src/pd/keys.ts";
import { fillPattern } from "../src/pd/pattern.ts";
import { PdSender } from "../src/pd/sender.ts";
import { type Child, freePort, measureMemcpy, nextEvent, spawnKvport } from "../cli/demo_cmd.ts";
import { demoKey } from "../cli/pd_cmd.ts";
import { NixlChannel } from "../src/channel/nixl.ts";
import { PageGrantBook } from "../src/channel/grants.ts";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

interface Pipeline {
  tx: PdSender;
  rx: Child;
  spec: { receiverHost: string; receiverInitPort: number[]; receiverAllocPort: number[] };
  dir: string;
}

/** A decoder process and a sender here, both with page grants `grants`. */
async function pipeline(
  grants: boolean,
  backends: string[],
  chunk: number,
  shape: number[],
  maxChunks: number,
): Promise<Pipeline> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvport-grants-bench-"));
  const [initPort, allocPort] = [await freePort(), await freePort()];
  const yaml = path.join(dir, "decoder.yaml");
  fs.writeFileSync(
    yaml,
    [
      "enable_pd: true",
      "transfer_channel: nixl",
      "pd_buffer_device: cpu",
      `nixl_backends: [${backends.join(", ")}]`,
      `extra_config: {kvport_page_grants: ${grants}}`,
      "pd_role: receiver",
      "pd_peer_host: 127.0.0.1",
      `pd_peer_init_port: [${initPort}]`,
      `pd_peer_alloc_port: [${allocPort}]`,
      `pd_buffer_size: ${2 * maxChunks * chunk}`,
      "pd_allocation_timeout_sec: 60",
    ].join("\n"),
  );
  const rx = spawnKvport("pd-receiver", [
    "pd-receiver",
    "--config",
    yaml,
    "--kv-shape",
    shape.join(","),
    "--json",
  ]);
  await nextEvent(rx, "ready", 30_000);
  (async () => {
    for await (const _ of rx.lines) { /* landed events: keep the pipe drained */ }
  })();
  const config = benchSenderConfig(maxChunks * chunk, {
    nixl_backends: backends,
    extra_config: { kvport_page_grants: grants },
  });
  const engine = (process.env.KVPORT_ENGINE ??= "builtin") as "auto" | "builtin" | "nixl";
  const tx = await PdSender.fromConfig(config, { pageSize: chunk, engine });
  const spec = {
    receiverHost: "127.0.0.1",
    receiverInitPort: [initPort],
    receiverAllocPort: [allocPort],
  };
  await tx.connect(spec);
  return { tx, rx, spec, dir };
}

async function closePipeline(p: Pipeline): Promise<void> {
  await p.tx.close();
  p.rx.kill();
  await p.rx.exited;
  fs.rmSync(p.dir, { recursive: true, force: true });
}

let reqNo = 0;

/** One request of `n` chunks; seconds from the first AllocRequest to the last WRITE. */
async function request(p: Pipeline, n: number, shape: number[]): Promise<number> {
  const reqId = `grants-bench-${reqNo++}`;
  const pages = await p.tx.allocate(n, 60_000);
  const keys = pages.map((_, i) => demoKey(reqId, i));
  keys.forEach((k, i) => fillPattern(k, p.tx.channel.pages[pages[i]]));
  const t0 = performance.now();
  await p.tx.send({ ...p.spec, reqId, isLastPrefill: true }, {
    keys,
    pages,
    shape,
    dtype: "bfloat16",
    lastChunkToks: 256,
  });
  return (performance.now() - t0) / 1000;
}

/**
 * The receiver's own work per request, measured alone: granting a sender `n` pages
 * through the channel's grant book and revoking them (what `PdReceiver` does per
 * AllocRequest and landed notification), pages scattered (every other page: `n` ranges,
 * the worst case) or contiguous (one range). Median microseconds of `reps`.
 */
async function grantCycle(n: number, scattered: boolean, reps: number): Promise<number> {
  const pageCount = 2 * n;
  const make = (role: "receiver" | "sender", peerInitUrl: string | null) =>
    NixlChannel.create({
      role,
      pageSize: 4096,
      pageCount,
      backends: ["UCX"],
      engine: "builtin",
      peerInitUrl,
      pageGrants: true,
    });
  const rx = await make("receiver", "127.0.0.1:0");
  const tx = await make("sender", null);
  try {
    await tx.connect("rx", rx.initUrl!);
    const book = new PageGrantBook(rx);
    const pages = Array.from({ length: n }, (_, i) => (scattered ? 2 * i : i));
    const times: number[] = [];
    for (let r = -5; r < reps; r++) {
      const t0 = performance.now();
      await book.grantWrite(tx.agentName, pages, 120_000);
      await book.release(pages);
      if (r >= 0) times.push((performance.now() - t0) * 1000);
    }
    return median(times);
  } finally {
    await tx.close();
    await rx.close();
  }
}

/**
 * Runs the comparison and reports it.
 *
 * @example
 * ```ts
 * import { runGrantsBench } from "./grants_bench.ts";
 * await runGrantsBench({ pairs: 4, sizes: [8], chunkBytes: 1 << 20 });
 * ```
 */
export async function runGrantsBench(
  options: { pairs?: number; sizes?: number[]; chunkBytes?: number; transports?: string[] } = {},
): Promise<void> {
  const pairs = options.pairs ?? 20;
  const sizes = options.sizes ?? [8, 64];
  const maxChunks = Math.max(...sizes);
  const heads = Math.max(1, Math.floor((options.chunkBytes ?? 4 * 2 ** 20) / 1024));
  const shape = [2, 1, 256, heads]; // K and V, one layer, 256 tokens, bf16
  const chunk = chunkBytes(MemoryFormat.KV_2LTD, shape, "bfloat16")!;
  const transports = (options.transports ?? ["same_host", "tcp"]).map((t) => {
    if (t !== "same_host" && t !== "tcp") throw new Error(`unknown transport ${t}`);
    return [t, t === "tcp" ? ["TCP"] : ["UCX"]] as const;
  });
  const report = new Report("grants");
  const requestSeconds = new Map<number, number>();
  console.log(
    `grants bench: PD requests of ${sizes.join(", ")} chunk(s) of ${chunk / 2 ** 20} MiB, ` +
      `${pairs} rounds (with, without, without again) per size over two sessions`,
  );
  for (const [transport, backends] of transports) {
    type Runs = { tOn: number[]; tOff: number[]; paired: number[]; aa: number[] };
    const runs = new Map<number, Runs>(
      sizes.map((n) => [n, { tOn: [], tOff: [], paired: [], aa: [] }]),
    );
    let grants: string | undefined, engine = "";
    // Two sessions, the pipelines created in opposite orders (the order they were started
    // in biases them on a busy machine); half of the rounds in each.
    for (const session of [0, 1]) {
      const make = (g: boolean) => pipeline(g, [...backends], chunk, shape, maxChunks);
      const first = await make(session === 0);
      const second = await make(session !== 0);
      const [on, off] = session === 0 ? [first, second] : [second, first];
      // A second pipeline without grants: its ratio to the first is the noise band (A/A).
      const ctl = await make(false);
      try {
        grants = (on.tx.channel as { pageGrants?: string }).pageGrants;
        engine = on.tx.channel.engine;
        const all = [on, off, ctl];
        for (const n of sizes) {
          const r = runs.get(n)!;
          for (const p of all) await request(p, n, shape); // warm-up
          for (let i = 0; i < Math.ceil(pairs / 2); i++) {
            // A round runs each pipeline once, in an order that rotates: none is always first.
            const t = new Map<Pipeline, number>();
            for (let k = 0; k < 3; k++) {
              const p = all[(i + k) % 3];
              t.set(p, await request(p, n, shape));
            }
            r.tOn.push(t.get(on)!);
            r.tOff.push(t.get(off)!);
            r.paired.push(t.get(off)! / t.get(on)!); // GB/s with / without
            r.aa.push(t.get(off)! / t.get(ctl)!); // GB/s without / without
          }
        }
      } finally {
        for (const p of [first, second, ctl]) await closePipeline(p);
      }
    }
    if (grants !== "on") {
      console.log(`  (${transport}: the channel's page grants are ${grants}: nothing to measure)`);
    }
    for (const n of sizes) {
      const { tOn, tOff, paired, aa } = runs.get(n)!;
      const bytes = n * chunk;
      const gOn = bytes / median(tOn) / 1e9, gOff = bytes / median(tOff) / 1e9;
      const mc = (await measureMemcpy(bytes)).bps / 1e9;
      const ratio = median(paired);
      if (transport === "same_host") requestSeconds.set(n, median(tOff));
      const spread = (xs: number[]) => (Math.max(...xs) - Math.min(...xs)) / median(xs);
      // The figure: the with-grants GB/s whose ratio to the limit is the paired median.
      report.add({
        name: `grants_pd_${transport}_${n}x${(chunk / 2 ** 20).toFixed(0)}MiB`,
        value: gOff * ratio,
        unit: "GB/s",
        limit: gOff,
        limitName: "the same transfer without page grants",
        goal: { op: ">=", ratio: 0.98 },
        extra: {
          engine,
          pageGrants: grants,
          rounds: paired.length,
          withGbps: gOn,
          withoutGbps: gOff,
          memcpyGbps: mc,
          ratioToMemcpy: gOn / mc,
          spreadWith: spread(tOn),
          spreadWithout: spread(tOff),
          pairedRatioMin: Math.min(...paired),
          pairedRatioMax: Math.max(...paired),
          controlRatio: median(aa),
        },
      });
      console.log(
        `  (${transport}, ${n} chunk(s): medians ${gOn.toFixed(2)} GB/s with, ` +
          `${gOff.toFixed(2)} without; with = ${(gOn / mc).toFixed(2)} x memcpy ` +
          `${mc.toFixed(2)} GB/s; per-round ratios ${Math.min(...paired).toFixed(2)}..` +
          `${Math.max(...paired).toFixed(2)}; A/A control (two pipelines without grants) ` +
          `${median(aa).toFixed(3)}; spread ${(100 * spread(tOn)).toFixed(0)}% / ` +
          `${(100 * spread(tOff)).toFixed(0)}%)`,
      );
    }
  }
  // The bookkeeping alone, against the time of the request it serves (the transfer's
  // median without grants, same-host, measured above): an upper bound of what grants add
  // on the TypeScript side (the engine's per-piece checks: native/tools/bench.c grants).
  for (const n of sizes) {
    const base = requestSeconds.get(n);
    for (const scattered of [false, true]) {
      const us = await grantCycle(n, scattered, 200);
      report.add({
        name: `grants_cycle_${n}_pages${scattered ? "_scattered" : ""}`,
        value: us,
        unit: "us",
        ...(base === undefined
          ? {}
          : { limit: base * 1e6, limitName: `one ${n}-chunk request without grants` }),
        goal: base === undefined ? undefined : { op: "<=", ratio: 0.02 },
        extra: { ranges: scattered ? n : 1 },
      });
    }
  }
  report.finish({
    note: "ratio = GB/s with page grants / without, median of alternating request pairs",
  });
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      pairs: { type: "string" },
      sizes: { type: "string" },
      "chunk-mib": { type: "string" },
      transports: { type: "string" },
    },
  });
  await runGrantsBench({
    pairs: values.pairs ? Number(values.pairs) : undefined,
    sizes: values.sizes?.split(",").map(Number),
    chunkBytes: values["chunk-mib"] ? Number(values["chunk-mib"]) * 2 ** 20 : undefined,
    transports: values.transports?.split(","),
  });
}
