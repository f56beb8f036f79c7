/**
 * The decoder of `bench/latency_bench.ts`: a {@linkcode PdReceiver} in its own process
 * whose timeline hook records when each stage happened (absolute milliseconds,
 * `performance.timeOrigin + performance.now()`, comparable across processes of one
 * host), and that prints, once every key of a request has landed, one JSON line with
 * the request's marks; it then frees the request's pages.
 *
 * ```sh
 * deno run -A bench/latency_peer.ts '{"pageSize":29360128,"pages":48,"creditTotal":32,"device":"cpu"}'
 * ```
 * Prints `{"event":"ready","initPort":..,"allocPort":..,"echoUrl":..}` (a bare REQ/REP echo,
 * the limit of the AllocRequest round trip), then
 * `{"event":"landed","key":<first key>,"marks":{"alloc_received":..,...,"landed":..},
 * "native":{"last_notif_in_ns":..,...},"refills":[[received, replied], ...]}` per request
 * (the engine's stamps, see `engineStamps` in lib.ts; the last credit refills served).
 * Answers `{"ping":n}` lines on stdin with `{"event":"pong","n":n,"t":<its clock>}`.
 * Ends on stdin EOF or SIGTERM.
 *
 * @module
 */
import * as net from "node:net";
import process from "node:process";
import { PdReceiver } from "../src/pd/receiver.ts";
import { RepSocket } from "../src/channel/wire/mod.ts";
import type { PdReceiverStage } from "../src/pd/timeline.ts";
import { setWakeMode, type WakeMode } from "../src/agent/events.ts";
import type { NixlChannel } from "../src/channel/nixl.ts";
import { engineStamps } from "./lib.ts";

// KVPORT_BENCH_WAKE=legacy: the wake-ups of an ABI-3 library (Deno's pool-thread waits,
// Bun's event descriptor), to compare with the wake callback (issue 15).
if (process.env.KVPORT_BENCH_WAKE) setWakeMode(process.env.KVPORT_BENCH_WAKE as WakeMode);

const args = JSON.parse(process.argv[2] ?? "{}") as {
  pageSize: number;
  pages: number;
  creditTotal?: number;
  device?: string;
  engine?: "auto" | "builtin" | "nixl";
};
const origin = performance.timeOrigin;
const abs = () => origin + performance.now();

interface Pending {
  marks: Partial<Record<PdReceiverStage, number>>;
  keys: readonly string[];
  left: Set<string>;
}
/** Requests by their first key (an AllocRequest of LMCache's sync form, and of the async
 * form without `total_chunks`, carries no request id). */
const byFirst = new Map<string, Pending>();
const firstOf = new Map<string, string>();
/** The last credit refills served (key-less AllocRequests): [received, replied] in
 * absolute ms, so that the bench can tell when one kept this process busy while a
 * request's notification was waiting for it. */
const refills: [number, number][] = [];
let refillAt: number | undefined;

const rx = await PdReceiver.create({
  host: "127.0.0.1",
  initPort: 0,
  allocPort: 0,
  pageSize: args.pageSize,
  bufferSize: args.pageSize * args.pages,
  channelType: "nixl",
  engine: args.engine ?? "builtin",
  device: args.device ?? "cpu",
  allocationTimeoutMs: 30_000,
  pageGrants: process.env.KVPORT_BENCH_GRANTS !== "off",
  creditMaxTotal: args.creditTotal,
  // One prefiller here: it may hold the whole credit room (credits taken for requests in
  // flight count until their binds arrive; the default of 64 pages leaves 4 requests of
  // 16 chunks in flight none in stock).
  creditMaxPerSender: args.creditTotal,
  timeline: (stage, _reqId, keys) => {
    const t = abs();
    if (keys.length === 0) {
      if (stage === "alloc_received") refillAt = t;
      else if (stage === "alloc_replied" && refillAt !== undefined) {
        refills.push([refillAt, t]);
        if (refills.length > 8) refills.shift();
        refillAt = undefined;
      }
      return;
    }
    let first = firstOf.get(keys[0]);
    // A request begins with its AllocRequest, or (page credits) with its bind notification.
    if (first === undefined && (stage === "alloc_received" || stage === "notification")) {
      first = keys[0];
      byFirst.set(first, { marks: {}, keys: [...keys], left: new Set(keys) });
      for (const k of keys) firstOf.set(k, first);
    }
    const p = first === undefined ? undefined : byFirst.get(first);
    if (!p) return;
    // The first AllocRequest's marks, the last notification's.
    if (stage.startsWith("alloc") || stage === "pages_reserved") p.marks[stage] ??= t;
    else p.marks[stage] = t;
    if (stage === "landed") {
      for (const k of keys) p.left.delete(k);
      if (p.left.size === 0) queueMicrotask(() => finish(first!, p));
    }
  },
});

// When the wake turn that hands notifications over began and when they were taken (the
// channel's listener takes them first thing): splits the decoder's wake-up from its
// JavaScript. The agent's own method, wrapped on this instance only.
const rxAgent = (rx.channel as NixlChannel).agent;
const wakeTurn = { takeAt: 0, takenAt: 0 };
const take = rxAgent.takeNotifications.bind(rxAgent);
rxAgent.takeNotifications = () => {
  const t = abs();
  const notes = take();
  if (notes.length > 0) {
    wakeTurn.takeAt = t;
    wakeTurn.takenAt = abs();
  }
  return notes;
};

function finish(first: string, p: Pending): void {
  // The engine's own stamps of the notification that finished the request (when it was
  // queued, when the wake callback ran), on this process's clock.
  const native = { ...engineStamps(rxAgent), take_at: wakeTurn.takeAt, taken_at: wakeTurn.takenAt };
  byFirst.delete(first);
  for (const k of p.keys) {
    firstOf.delete(k);
    rx.remove(k);
  }
  process.stdout.write(
    JSON.stringify({ event: "landed", key: first, marks: p.marks, native, refills }) + "\n",
  );
}

// The limit of the AllocRequest round trip: a bare REQ/REP echo of our ZeroMQ wire in this
// process, with no PD code behind it (the bench pings it once after each request).
const echo = await RepSocket.bind("tcp://127.0.0.1:0");
echo.serve((frames) => frames).catch(() => {});
// And a bare TCP echo (what the kernel and the runtime's sockets cost).
const tcpEcho = net.createServer((s) => {
  s.setNoDelay(true);
  s.on("data", (d: Uint8Array) => s.write(d));
});
await new Promise<void>((r) => tcpEcho.listen(0, "127.0.0.1", () => r()));

process.stdout.write(
  JSON.stringify({
    event: "ready",
    initPort: rx.initPort,
    allocPort: rx.allocPort,
    echoUrl: echo.endpoints[0],
    tcpEchoPort: (tcpEcho.address() as net.AddressInfo).port,
    engine: rx.channel.engine,
  }) + "\n",
);
let closing = false;
const stop = async () => {
  if (closing) return;
  closing = true;
  await echo.close();
  tcpEcho.close();
  await rx.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.stdin.on("end", stop);
// Clock pings: `{"ping":n}` is answered with this process's clock, so that the bench
// can put both processes' marks on one time line (see latency_bench.ts).
let pending = "";
process.stdin.on("data", (d: Uint8Array | string) => {
  pending += typeof d === "string" ? d : new TextDecoder().decode(d);
  let nl: number;
  while ((nl = pending.indexOf("\n")) >= 0) {
    const line = pending.slice(0, nl);
    pending = pending.slice(nl + 1);
    try {
      const m = JSON.parse(line) as { ping?: number };
      if (m.ping !== undefined) {
        process.stdout.write(JSON.stringify({ event: "pong", n: m.ping, t: abs() }) + "\n");
      }
    } catch {
      // not a command
    }
  }
});
process.stdin.resume();
