/**
 * Wake-up latency of waits (issue 15): how long after the engine finished something
 * JavaScript runs again, with the wake callback (`kvp_event_notify`: notifier thread ->
 * thread-safe callback -> event loop) and with the mechanism of an ABI-3 library (Deno:
 * `kvp_xfer_wait` / `kvp_notif_wait` on a pool thread; Bun: the event descriptor read as
 * a stream), in alternating rounds:
 * - notification ping-pong between two agents of this process over loopback TCP (no
 *   spin: each hop is a progress thread -> waiter wake-up): one-way p50/p99 as a ratio
 *   to the same ping-pong with the JavaScript thread blocked in `kvp_notif_wait` (the
 *   limit: one native wake per hop, no event loop), and callback / legacy;
 * - a WRITE of 4 MiB (one page, past the 50 us spin) to a peer process: post-to-resolved
 *   p50/p99 as a ratio to the single-thread memcpy time of 4 MiB (copy-bound: the wake is
 *   a small part), and callback / legacy;
 * then the JSON line.
 *
 * ```sh
 * deno run -A bench/wake_bench.ts [--quick]
 * bun bench/wake_bench.ts [--quick]
 * ```
 * @module
 */
import process from "node:process";
import { NixlAgent, type TransferRequest } from "../src/agent.ts";
import { loadNativeLibrary } from "../ffi/mod.ts";
import { setWakeMode, type WakeMode } from "../src/agent/events.ts";
import { spawnPeer } from "../tests/helpers/agent_pair.ts";
import { linkPeer, memcpyLimit, percentile, Report, writeRequest } from "./lib.ts";
import { check, cString, sizedOut } from "../ffi/native.ts";

const quick = process.argv.includes("--quick");
const MiB = 1 << 20;
const PAGE = 4 * MiB;
const ROUNDS = quick ? 4 : 20;
const PER_ROUND = quick ? 100 : 500;

const report = new Report("wake");
const lib = await loadNativeLibrary();
if (!lib.wakes) {
  console.log(
    `wake: the library (ABI ${lib.abiVersion}) has no kvp_event_notify; nothing to compare`,
  );
  report.finish();
  process.exit(0);
}

const stamp = `${process.pid}-${Date.now()}`;
const PINGS = quick ? 300 : 1000;
const TCP = { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" };

/** Two agents that know each other (notifications go over loopback TCP). */
async function notifPair(tag: string): Promise<[NixlAgent, NixlAgent]> {
  const x = await NixlAgent.create({
    name: `wake-${tag}-x-${stamp}`,
    engine: "builtin",
    params: TCP,
  });
  const y = await NixlAgent.create({
    name: `wake-${tag}-y-${stamp}`,
    engine: "builtin",
    params: TCP,
  });
  x.addRemoteAgent(y.localMetadata());
  y.addRemoteAgent(x.localMetadata());
  return [x, y];
}

/** One-way times (us) of `n` ping-pongs, each hop awaited with `wait`. */
async function pingPong(
  x: NixlAgent,
  y: NixlAgent,
  n: number,
  wait: (a: NixlAgent) => Promise<void> | void,
): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    x.sendNotification(y.name, "p");
    await wait(y);
    y.sendNotification(x.name, "q");
    await wait(x);
    out.push(((performance.now() - t0) * 1000) / 2);
  }
  return out;
}

const stats = (xs: number[]) => {
  const s = Float64Array.from(xs).sort();
  return { p50: percentile(s, 50), p99: percentile(s, 99) };
};

/** Two agents of the raw symbols, for the native ping-pong. */
function rawPair() {
  const sy = lib.symbols;
  const make = (n: string) => {
    const out = new BigUint64Array(1);
    const params = cString("listen_host=127.0.0.1\nadvertise_host=127.0.0.1");
    check(lib, sy.kvp_agent_create(cString(n), cString("builtin"), cString("UCX"), params, out), n);
    return out[0];
  };
  const names = [`wake-raw-x-${stamp}`, `wake-raw-y-${stamp}`];
  const [x, y] = names.map(make);
  const md = (h: bigint) =>
    sizedOut(lib, "kvp_local_metadata", (b, c, l) => sy.kvp_local_metadata(h, b, c, l));
  const nameBuf = new Uint8Array(256), nameLen = new BigUint64Array(1);
  for (const [a, b] of [[x, y], [y, x]]) {
    const blob = md(b);
    check(
      lib,
      sy.kvp_load_remote_metadata(a, blob, BigInt(blob.length), nameBuf, 256n, nameLen),
      "load",
    );
  }
  const to = names.map((n) => cString(n));
  const msg = new Uint8Array([112]);
  const take = new Uint8Array(4096), len = new BigUint64Array(1), count = new BigUint64Array(1);
  const hop = (from: bigint, dest: Uint8Array, at: bigint) => {
    check(lib, sy.kvp_notif_send(from, dest, msg, 1n), "kvp_notif_send");
    check(lib, sy.kvp_notif_wait(at, 10_000n, null, 0n, null), "kvp_notif_wait");
    check(lib, sy.kvp_notif_take(at, take, 4096n, len, count), "kvp_notif_take");
  };
  return {
    pingPong(n: number): number[] {
      const out: number[] = [];
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        hop(x, to[1], y);
        hop(y, to[0], x);
        out.push(((performance.now() - t0) * 1000) / 2);
      }
      return out;
    },
    close() {
      sy.kvp_agent_destroy(x);
      sy.kvp_agent_destroy(y);
    },
  };
}

// ---- notification ping-pong ------------------------------------------------------
{
  const pairs = new Map<WakeMode, [NixlAgent, NixlAgent]>();
  for (const mode of ["auto", "legacy"] as WakeMode[]) {
    setWakeMode(mode);
    pairs.set(mode, await notifPair(mode));
  }
  setWakeMode("auto");
  const got = (a: NixlAgent) =>
    a.waitNotifications(10_000).then((n) => {
      if (n.length === 0) throw new Error(`${a.name}: no notification within 10 s`);
    });
  // The limit: the same ping-pong between two agents made with the raw symbols, the
  // JavaScript thread blocked in kvp_notif_wait (one native wake per hop).
  const raw = rawPair();
  const samples = new Map<string, number[]>([["native", []], ["auto", []], ["legacy", []]]);
  for (const [x, y] of pairs.values()) await pingPong(x, y, 50, got); // connect
  raw.pingPong(50);
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 ? ["legacy", "auto", "native"] : ["native", "auto", "legacy"];
    for (const k of order) {
      if (k === "native") {
        samples.get(k)!.push(...raw.pingPong(PINGS / ROUNDS));
        continue;
      }
      const [x, y] = pairs.get(k as WakeMode)!;
      samples.get(k)!.push(...await pingPong(x, y, PINGS / ROUNDS, got));
    }
  }
  const lim = stats(samples.get("native")!);
  const st = new Map<string, { p50: number; p99: number }>();
  for (const k of ["auto", "legacy"]) {
    const s = stats(samples.get(k)!);
    st.set(k, s);
    const label = k === "auto" ? "callback" : "legacy";
    for (const q of ["p50", "p99"] as const) {
      report.add({
        name: `notif_one_way_${label}_${q}`,
        value: s[q],
        unit: "us",
        limit: lim[q],
        limitName: "blocking kvp_notif_wait",
        extra: { samples: samples.get(k)!.length },
      });
    }
  }
  for (const q of ["p50", "p99"] as const) {
    report.add({
      name: `notif_one_way_${q}_callback_vs_legacy`,
      value: st.get("auto")![q],
      unit: "us",
      limit: st.get("legacy")![q],
      limitName: "the legacy wait",
      goal: { op: "<=", ratio: 1 },
    });
  }
  for (const [x, y] of pairs.values()) {
    await x.close();
    await y.close();
  }
  raw.close();
}

// ---- 4 MiB WRITE to another process ------------------------------------------------
const peer = await spawnPeer({ name: `wake-peer-${stamp}`, size: PAGE });
const modes: WakeMode[] = ["auto", "legacy"];
const sides = [];
for (const mode of modes) {
  setWakeMode(mode); // read when the agent opens its events
  // mem_inline_max=0: a copy this size would otherwise run inside the post (nothing to
  // wait for, so nothing to measure); here the wait after a worker's copy is the point.
  const agent = await NixlAgent.create({
    name: `wake-${mode}-${stamp}`,
    engine: "builtin",
    params: { mem_inline_max: "0" },
  });
  const buf = await linkPeer(agent, peer, PAGE);
  const { req } = writeRequest(agent, buf, peer, PAGE, 1);
  sides.push({ mode, agent, buf, req, samples: [] as number[], inline: 0 });
}
setWakeMode("auto");

async function once(req: TransferRequest): Promise<number | null> {
  const t0 = performance.now();
  if (req.post() === "done") return null;
  await req.wait(10_000);
  return (performance.now() - t0) * 1000;
}

try {
  for (const s of sides) for (let i = 0; i < 50; i++) await once(s.req); // connect, fault in
  for (let round = 0; round < ROUNDS; round++) {
    for (const s of round % 2 ? [...sides].reverse() : sides) {
      for (let i = 0; i < PER_ROUND; i++) {
        const us = await once(s.req);
        if (us === null) s.inline++;
        else s.samples.push(us);
      }
    }
  }
  const scratch = await NixlAgent.create({ name: `wake-scratch-${stamp}`, engine: "builtin" });
  const a = scratch.allocate(PAGE), b = scratch.allocate(PAGE);
  a.bytes.fill(1);
  b.bytes.fill(2);
  const copyUs = PAGE / memcpyLimit(lib, PAGE, a, b, 300) / 1e3; // GB/s -> us
  await scratch.close();
  const byMode = new Map<WakeMode, { p50: number; p99: number }>();
  for (const s of sides) {
    const { p50, p99 } = stats(s.samples);
    byMode.set(s.mode, { p50, p99 });
    const label = s.mode === "auto" ? "callback" : "legacy";
    const how = s.mode === "auto"
      ? "kvp_event_notify callback"
      : lib.runtime === "deno"
      ? "nonblocking kvp_xfer_wait (pool thread)"
      : "kvp_event_fd stream";
    for (const [q, v] of [["p50", p50], ["p99", p99]] as const) {
      report.add({
        name: `write_4MiB_wait_${label}_${q}`,
        value: v,
        unit: "us",
        limit: copyUs,
        limitName: "memcpy of 4 MiB (1 thread)",
        extra: { mechanism: how, samples: s.samples.length, inline: s.inline },
      });
    }
    report.add({
      name: `write_4MiB_wait_${label}_p50_over_copy`,
      value: p50 - copyUs,
      unit: "us",
      extra: { mechanism: how },
    });
  }
  const cb = byMode.get("auto")!, old = byMode.get("legacy")!;
  for (const q of ["p50", "p99"] as const) {
    report.add({
      name: `write_4MiB_wait_${q}_callback_vs_legacy`,
      value: cb[q],
      unit: "us",
      limit: old[q],
      limitName: "the legacy wait",
      goal: { op: "<=", ratio: 1 },
    });
  }
} finally {
  for (const s of sides) {
    s.req.release();
    await s.agent.close();
  }
  await peer.stop();
}
report.finish({ page: PAGE, rounds: ROUNDS, perRound: PER_ROUND, pings: PINGS });
