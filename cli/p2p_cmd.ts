/**
 * `kvport p2p-registry`, `kvport p2p-peer` and `kvport p2p-demo`: the lookup service of
 * P2P KV sharing, one instance driven by JSON lines on stdin (synthetic chunks whose
 * every byte the requester checks), and a three-process demo of both.
 *
 * @module
 */
import { sleep } from "../src/deadline.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import * as readline from "node:readline";
import { P2PBackend, type P2PFetchResult, type P2PLookupResult } from "../src/p2p/backend.ts";
import { P2PRegistry } from "../src/p2p/registry.ts";
import { checkPattern, fillPattern } from "../src/pd/pattern.ts";
import { crc32, fnv1a64Hex } from "../src/storage/checksum.ts";
import { configured, emit, guard, int, load, parse, untilSignal, UsageError } from "./args.ts";
import type { Command } from "./commands.ts";
import { measureMemcpy } from "./demo_cmd.ts";
import { onInterrupt, temporaryDirectory } from "./interrupt.ts";
import { err, out } from "./io.ts";
import { dataPlaneAddress } from "./data_plane.ts";
import { kvGeometry } from "./pd_cmd.ts";
import { nextEvent, spawnWithStdin, type StdinChild } from "./spawn.ts";
import { checkMetricsFlags, METRICS_HELP, METRICS_OPTIONS, startMetrics } from "./metrics_opt.ts";

/**
 * The key of chunk `index` of synthetic document `doc` (TP rank `rank`):
 * `vllm@p2p-demo@1@<rank>@<fnv1a64(doc/index)>@bfloat16`. Two documents share a prefix
 * by sharing the leading documents' keys; the content of a key is
 * {@linkcode fillPattern}'s.
 *
 * @example
 * ```ts
 * import { p2pDemoKey } from "./p2p_cmd.ts";
 * console.log(p2pDemoKey("A", 0)); // vllm@p2p-demo@1@0@...@bfloat16
 * ```
 */
export function p2pDemoKey(doc: string, index: number, rank = 0): string {
  return `vllm@p2p-demo@1@${rank}@${fnv1a64Hex(`${doc}/${index}`)}@bfloat16`;
}

/** The geometry of `--kv-shape`/`--dtype` (a mistake is a usage error, exit 2). */
const geometry = kvGeometry;

function engineOf(text: unknown): "auto" | "builtin" | "nixl" {
  if (text === "auto" || text === "builtin" || text === "nixl") return text;
  throw new UsageError(`--engine expects auto, builtin or nixl, got ${JSON.stringify(text)}`);
}

// ------------------------------------------------------------------ registry --

const REGISTRY_HELP =
  `Usage: kvport p2p-registry [--config F] [--pull-url U] [--reply-url U] [options]

Runs the lookup service of P2P KV sharing (LMCache's cache controller, the part P2P
needs): instances push RegisterMsg, HeartbeatMsg, KVAdmitMsg/KVEvictMsg and
BatchedKVOperationMsg to the PULL socket on controller_pull_url; BatchedP2PLookupMsg on
the ROUTER socket on controller_reply_url is answered with the instance holding the
longest prefix. Instances silent for the heartbeat timeout are forgotten.

Options:
  -c, --config F             LMCache configuration (default: $LMCACHE_CONFIG_FILE)
      --pull-url U           override controller_pull_url (host:port; port 0: any)
      --reply-url U          override controller_reply_url (host:port; port 0: any)
      --heartbeat-timeout S  forget an instance silent for S seconds
                             (default 3 x lmcache_worker_heartbeat_time, else 30)
${METRICS_HELP}
      --json                 one JSON object per line (ready, register, forget, ...);
                             stdin takes {"cmd":"instances"} and {"cmd":"exit"}
  -h, --help                 this help`;

async function runRegistry(args: string[]): Promise<number> {
  const v = parse(args, {
    config: { type: "string", short: "c" },
    "pull-url": { type: "string" },
    "reply-url": { type: "string" },
    "heartbeat-timeout": { type: "string" },
    ...METRICS_OPTIONS,
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  });
  if (v.help) {
    out(REGISTRY_HELP);
    return 0;
  }
  const json = v.json === true;
  checkMetricsFlags(v);
  const config = load(v.config as string | undefined, {}, !!(v["pull-url"] && v["reply-url"]));
  const timeoutS = v["heartbeat-timeout"] === undefined
    ? undefined
    : Number(v["heartbeat-timeout"]);
  if (timeoutS !== undefined && !(timeoutS > 0)) {
    throw new UsageError(
      `--heartbeat-timeout expects seconds > 0, got ${String(v["heartbeat-timeout"])}`,
    );
  }
  const metrics = await startMetrics(v);
  let registry: P2PRegistry;
  try {
    registry = await configured(config, () =>
      P2PRegistry.fromConfig(config, {
        ...(v["pull-url"] ? { pullUrl: v["pull-url"] as string } : {}),
        ...(v["reply-url"] ? { replyUrl: v["reply-url"] as string } : {}),
        ...(timeoutS ? { heartbeatTimeoutMs: timeoutS * 1000 } : {}),
      }));
  } catch (e) {
    await metrics?.close();
    throw e;
  }
  try {
    registry.onEvent((e) =>
      emit(
        json,
        { event: e.type, ...e, type: undefined },
        `p2p-registry: ${e.type} ${e.instanceId ?? ""}${
          e.workerId === undefined ? "" : `/${e.workerId}`
        }${e.peerInitUrl ? ` at ${e.peerInitUrl}` : ""}${e.detail ? ` (${e.detail})` : ""}`,
      )
    );
    emit(
      json,
      {
        event: "ready",
        pull: registry.pullUrl,
        reply: registry.replyUrl,
        heartbeatTimeoutMs: registry.heartbeatTimeoutMs,
        metrics: metrics?.url ?? null,
        pid: process.pid,
      },
      `p2p-registry: reports on ${registry.pullUrl} (PULL), lookups on ${registry.replyUrl} ` +
        `(ROUTER); instances silent for ${registry.heartbeatTimeoutMs / 1000} s are forgotten` +
        (metrics ? `; metrics on ${metrics.url}` : ""),
    );
    const rl = json ? readline.createInterface({ input: process.stdin }) : null;
    let stop: (why: string) => void = () => {};
    const stopped = new Promise<string>((r) => (stop = r));
    rl?.on("line", (line: string) => {
      let cmd: Record<string, unknown>;
      try {
        cmd = JSON.parse(line);
      } catch {
        emit(json, { event: "error", error: `not JSON: ${line}` }, "");
        return;
      }
      if (cmd.cmd === "instances") {
        emit(json, { event: "instances", stats: registry.stats, list: registry.instances() }, "");
      } else if (cmd.cmd === "exit") stop("exit");
      else emit(json, { event: "error", error: `unknown command ${String(cmd.cmd)}` }, "");
    });
    const why = await Promise.race([stopped, untilSignal()]);
    rl?.close();
    emit(
      json,
      { event: "done", reason: why, ...registry.stats },
      `p2p-registry: stopping (${why})`,
    );
    return 0;
  } finally {
    await registry.close();
    await metrics?.close();
    process.stdin.pause();
  }
}

// ---------------------------------------------------------------------- peer --

const PEER_HELP = `Usage: kvport p2p-peer --config F [--tp-rank R] [options]

Runs one P2P instance from an LMCache configuration (enable_p2p, p2p_host,
p2p_init_ports, p2p_lookup_ports, lmcache_instance_id, controller_pull_url,
controller_reply_url, ...): it holds synthetic chunks whose every byte the requester
checks, answers other instances' lookups, and with --json takes commands as JSON lines
on stdin.

Chunks are named by document and index: chunk A/0 of TP rank R has the cache key
vllm@p2p-demo@1@R@<fnv1a64 of "A/0">@bfloat16 (the "keys" command prints them). Every
command that takes chunks takes either "doc" (with "from", default 0, and "count",
default 1) or "keys" (a list of cache keys):
  {"cmd":"store","doc":"A","count":8}              hold chunks A/0..A/7
  {"cmd":"keys","doc":"A","count":2}               print the keys of A/0 and A/1
  {"cmd":"lookup","doc":"A","count":8}             ask the registry who holds them
  {"cmd":"fetch"}                                  fetch what the last lookup found
  {"cmd":"retrieve","doc":"A","count":8}           lookup + fetch, every byte checked
  {"cmd":"retrieve","keys":["vllm@p2p-demo@..."]}  the same, by key
  {"cmd":"evict","doc":"A","from":4,"count":4}     drop chunks A/4..A/7
  {"cmd":"checksum","doc":"A","count":8}           CRC-32 of held chunks
  {"cmd":"forget","peer":"host:port"}              forget a peer's handshake
  {"cmd":"stats"} / {"cmd":"exit"}

Options:
  -c, --config F          LMCache configuration (default: $LMCACHE_CONFIG_FILE)
  -r, --tp-rank R         TP rank: picks the ports of the port lists (default 0)
      --kv-shape S        shape of one chunk (default 2,28,chunk_size,1024)
      --dtype T           dtype (default bfloat16)
      --buffer-mib N      page buffer (default: max_local_cpu_size)
      --instance-id ID    override lmcache_instance_id
      --init-port P       override p2p_init_ports[R] (0: any free port)
      --lookup-port P     override p2p_lookup_ports[R] (0: any free port)
      --store DOC:N       hold chunks DOC/0..DOC/N-1 from the start
      --engine E          engine of the nixl channel: auto (default), builtin, nixl
${METRICS_HELP}
      --json              JSON lines out (ready, stored, retrieved, ...), commands in
  -h, --help              this help`;

/**
 * The cache keys a p2p-peer command names: its `keys`, or chunks `from`..`from+count-1`
 * of its `doc` (TP rank `rank`).
 *
 * @example
 * ```ts
 * import { commandKeys } from "./p2p_cmd.ts";
 * console.log(commandKeys({ cmd: "retrieve", doc: "A", count: 2 }, 0).length); // 2
 * ```
 */
export function commandKeys(cmd: Record<string, unknown>, rank: number): string[] {
  if (Array.isArray(cmd.keys)) return cmd.keys.map(String);
  if (typeof cmd.doc !== "string") return [];
  const from = Number(cmd.from ?? 0);
  const count = Number(cmd.count ?? 1);
  if (!Number.isSafeInteger(from) || from < 0 || !Number.isSafeInteger(count) || count < 0) {
    throw new Error(`"from" and "count" must be integers >= 0, got ${cmd.from} and ${cmd.count}`);
  }
  if (count > 1_000_000) throw new Error(`"count" ${count} is more than 1000000 chunks`);
  return Array.from({ length: count }, (_, i) => p2pDemoKey(cmd.doc as string, from + i, rank));
}

interface Checked {
  bad: number;
  crc: number;
}

function verifyPages(p2p: P2PBackend, keys: readonly string[], pages: readonly number[]): Checked {
  let bad = 0;
  let crc = 0;
  for (let i = 0; i < pages.length; i++) {
    const view = p2p.channel.pages[pages[i]];
    if (checkPattern(keys[i], view) >= 0) bad++;
    crc = crc32(view, crc);
  }
  return { bad, crc };
}

async function runPeer(args: string[]): Promise<number> {
  const v = parse(args, {
    config: { type: "string", short: "c" },
    "tp-rank": { type: "string", short: "r" },
    "kv-shape": { type: "string" },
    dtype: { type: "string" },
    "buffer-mib": { type: "string" },
    "instance-id": { type: "string" },
    "init-port": { type: "string" },
    "lookup-port": { type: "string" },
    store: { type: "string" },
    engine: { type: "string" },
    ...METRICS_OPTIONS,
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  });
  if (v.help) {
    out(PEER_HELP);
    return 0;
  }
  const json = v.json === true;
  checkMetricsFlags(v);
  const config = load(v.config as string | undefined);
  const tpRank = int("tp-rank", v["tp-rank"], 0, 0);
  const geo = geometry(
    v["kv-shape"] as string | undefined,
    (v.dtype as string) ?? "bfloat16",
    config.chunk_size,
  );
  const overrides: Record<string, unknown> = {};
  if (v["buffer-mib"] !== undefined) {
    overrides.bufferSize = int("buffer-mib", v["buffer-mib"], 1) * 2 ** 20;
  }
  if (v["instance-id"] !== undefined) overrides.instanceId = v["instance-id"];
  if (v["init-port"] !== undefined) overrides.initPort = int("init-port", v["init-port"], 0);
  if (v["lookup-port"] !== undefined) {
    overrides.lookupPort = int("lookup-port", v["lookup-port"], 0);
  }
  if (v.engine !== undefined) overrides.engine = engineOf(v.engine);
  let initial: { doc: string; count: number } | undefined;
  if (v.store !== undefined) {
    const m = /^(.+):(\d+)$/.exec(v.store as string);
    if (!m) throw new UsageError(`--store expects DOC:N, got ${JSON.stringify(v.store)}`);
    initial = { doc: m[1], count: Number(m[2]) };
  }
  const metrics = await startMetrics(v);
  let p2p: P2PBackend;
  try {
    p2p = await configured(
      config,
      () => P2PBackend.fromConfig(config, { tpRank, pageSize: geo.pageSize, ...overrides }),
    );
  } catch (e) {
    await metrics?.close();
    throw e;
  }
  const storeDoc = async (doc: string, from: number, count: number) => {
    for (let i = from; i < from + count; i++) {
      const key = p2pDemoKey(doc, i, tpRank);
      await p2p.store(key, (page) => fillPattern(key, page));
    }
    await p2p.flushReports().catch((e) =>
      err(`warning: reports not delivered to the registry yet (sent again later): ${e.message}`)
    );
  };
  try {
    for (const w of p2p.channel.warnings) err(`warning: ${w}`);
    if (initial) await storeDoc(initial.doc, 0, initial.count);
    emit(
      json,
      {
        event: "ready",
        instanceId: p2p.instanceId,
        init: p2p.initUrl,
        lookup: p2p.lookupUrl,
        data: dataPlaneAddress(p2p.channel),
        engine: p2p.channel.engine,
        pages: p2p.channel.pageCount,
        pageSize: p2p.channel.pageSize,
        stored: p2p.stats.chunks,
        metrics: metrics?.url ?? null,
        pid: process.pid,
      },
      `p2p-peer ${p2p.instanceId}: handshakes on ${p2p.initUrl}, lookups on ${p2p.lookupUrl}` +
        (dataPlaneAddress(p2p.channel)
          ? `, data plane on ${dataPlaneAddress(p2p.channel)} `
          : " ") +
        `(${p2p.channel.engine} engine, ${p2p.channel.pageCount} pages of ${p2p.channel.pageSize} ` +
        `bytes, ${p2p.stats.chunks} chunk(s) held)` +
        (metrics ? `; metrics on ${metrics.url}` : ""),
    );
    if (!json) {
      const why = await untilSignal();
      out(`p2p-peer: stopping (${why})`);
      return 0;
    }
    const rl = readline.createInterface({ input: process.stdin });
    let last: P2PLookupResult | undefined;
    const report = (kind: string, keys: readonly string[], r: P2PFetchResult, t0: number) => {
      const seconds = (performance.now() - t0) / 1000;
      const checked = verifyPages(p2p, r.keys, r.pages);
      p2p.release(r.pages);
      emit(json, {
        event: kind,
        asked: keys.length,
        promised: r.promised,
        hits: r.hitChunks,
        bad: checked.bad,
        crc: checked.crc,
        bytes: r.hitChunks * p2p.channel.pageSize,
        seconds,
        fetchSeconds: r.seconds,
        attempts: r.attempts,
        handshakes: r.handshakes,
        holder: r.holder?.instanceId ?? null,
        error: r.error?.message ?? null,
        errorCode: r.error?.errorCode ?? null,
      }, "");
    };
    const handle = async (cmd: Record<string, unknown>): Promise<boolean> => {
      const keys = commandKeys(cmd, tpRank);
      switch (cmd.cmd) {
        case "store":
          if (typeof cmd.doc !== "string") throw new Error('store needs "doc" (and "count")');
          await storeDoc(cmd.doc, Number(cmd.from ?? 0), Number(cmd.count ?? 1));
          emit(json, { event: "stored", chunks: p2p.stats.chunks, keys }, "");
          return true;
        case "keys":
          emit(json, { event: "keys", keys }, "");
          return true;
        case "evict": {
          const n = keys.filter((k) => p2p.evict(k)).length;
          await p2p.flushReports();
          emit(json, { event: "evicted", n, chunks: p2p.stats.chunks }, "");
          return true;
        }
        case "lookup":
          last = await p2p.lookup(keys);
          emit(json, {
            event: "looked",
            hits: last.hitChunks,
            holder: last.holder?.instanceId ?? null,
            error: last.error?.message ?? null,
          }, "");
          return true;
        case "fetch": {
          if (!last) throw new Error("fetch: no lookup yet");
          const t0 = performance.now();
          report("fetched", last.keys, await p2p.fetch(last), t0);
          return true;
        }
        case "retrieve": {
          const t0 = performance.now();
          report("retrieved", keys, await p2p.retrieve(keys), t0);
          return true;
        }
        case "checksum": {
          let crc = 0;
          let held = 0;
          for (const k of keys) {
            const bytes = p2p.get(k);
            if (!bytes) break;
            crc = crc32(bytes, crc);
            held++;
          }
          emit(json, { event: "checksum", held, crc }, "");
          return true;
        }
        case "forget":
          // Drops what the handshake with that peer set up (as a restart of ours would).
          await p2p.channel.forgetPeer(String(cmd.peer));
          emit(json, { event: "forgot", peer: String(cmd.peer) }, "");
          return true;
        case "stats":
          emit(json, { event: "stats", ...p2p.stats }, "");
          return true;
        case "exit":
          return false;
        default:
          throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
      }
    };
    let reason = "stdin closed";
    for await (const line of rl) {
      if (line.trim() === "") continue;
      let cmd: Record<string, unknown>;
      try {
        cmd = JSON.parse(line);
      } catch {
        emit(json, { event: "error", error: `not JSON: ${line}` }, "");
        continue;
      }
      try {
        if (!(await handle(cmd))) {
          reason = "exit";
          break;
        }
      } catch (e) {
        emit(json, { event: "error", error: e instanceof Error ? e.message : String(e) }, "");
      }
    }
    rl.close();
    emit(json, { event: "done", reason, ...p2p.stats }, "");
    return 0;
  } finally {
    await p2p.close();
    await metrics?.close();
    process.stdin.pause();
  }
}

// ---------------------------------------------------------------------- demo --

const DEMO_HELP = `Usage: kvport p2p-demo [--chunks N] [--kv-shape S] [--json]

Runs P2P KV sharing between three processes on this machine, configured by
LMCache-style YAML files in a temporary directory: a registry (kvport p2p-registry), a
holder instance (kvport p2p-peer) that stores N chunks of document A, and a requester
instance that looks up requests with a full prefix (A), a partial prefix (the first half
of A, then another document) and no prefix (a third document). Every fetched byte is
checked, the hit rate and the speed (next to memcpy of the same bytes) are printed.

Options:
      --chunks N     chunks of document A (default 16)
      --kv-shape S   shape of one chunk (default 2,8,256,1024: 8 MiB of bf16)
      --timeout S    give up after S seconds (default 60)
      --engine E     engine of the instances' channels: auto (default), builtin, nixl
      --keep         keep the temporary directory with the configurations
      --json         print the result as one JSON line at the end
  -h, --help         this help`;

interface Retrieved {
  asked: number;
  promised: number;
  hits: number;
  bad: number;
  crc: number;
  bytes: number;
  seconds: number;
  error: string | null;
}

async function runDemo(args: string[]): Promise<number> {
  const v = parse(args, {
    chunks: { type: "string" },
    "kv-shape": { type: "string" },
    timeout: { type: "string" },
    engine: { type: "string" },
    keep: { type: "boolean", default: false },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  });
  if (v.help) {
    out(DEMO_HELP);
    return 0;
  }
  const n = int("chunks", v.chunks, 2, 16);
  const shape = (v["kv-shape"] as string | undefined) ?? "2,8,256,1024";
  const geo = geometry(shape, "bfloat16", 256);
  const timeoutMs = int("timeout", v.timeout, 1, 60) * 1000;
  const engine = engineOf(v.engine ?? "auto");
  const half = Math.floor(n / 2);
  const bufferBytes = (n + 2) * geo.pageSize;
  const dir = temporaryDirectory("kvport-p2p-demo-", { keep: v.keep === true });
  // Every process binds port 0 and reports the port it got: the registry first, then
  // the instances' configurations name the registry's real addresses. The p2p ports in
  // those files are LMCache's usual ones; --init-port 0 --lookup-port 0 replace them.
  const instance = (id: string, pull: string, reply: string, worker: number) =>
    [
      `# kvport p2p-demo: instance ${id} (LMCache keys); started with --init-port 0`,
      "# --lookup-port 0, so the two p2p ports below are not the ones it binds.",
      "chunk_size: 256",
      `max_local_cpu_size: ${(bufferBytes / 2 ** 30).toFixed(6)}`,
      "enable_p2p: true",
      'p2p_host: "127.0.0.1"',
      "p2p_init_ports: [8200]",
      "p2p_lookup_ports: [8300]",
      'transfer_channel: "nixl"',
      "nixl_backends: [UCX]",
      "enable_controller: true",
      `lmcache_instance_id: "${id}"`,
      `controller_pull_url: "${pull}"`,
      `controller_reply_url: "${reply}"`,
      `lmcache_worker_ports: [${worker}]`,
      "lmcache_worker_heartbeat_time: 1",
      "lmcache_worker_heartbeat_delay_time: 1",
      "extra_config:",
      "  p2p_socket_recv_timeout_ms: 10000",
      "  p2p_socket_send_timeout_ms: 5000",
      "  p2p_max_retry_count: 3",
      "",
    ].join("\n");
  const files = {
    registry: path.join(dir.path, "lmcache-registry.yaml"),
    holder: path.join(dir.path, "lmcache-holder.yaml"),
    requester: path.join(dir.path, "lmcache-requester.yaml"),
  };
  fs.writeFileSync(
    files.registry,
    [
      "# kvport p2p-demo: the registry (LMCache's controller keys); its addresses are",
      "# given as --pull-url 127.0.0.1:0 --reply-url 127.0.0.1:0 (free ports, reported).",
      "lmcache_worker_heartbeat_time: 1",
      "",
    ].join("\n"),
  );
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  out("kvport p2p-demo: P2P KV sharing between three processes, checked byte for byte");
  out(
    `  holder stores ${n} chunk(s) of ${mib(geo.pageSize)} (KV shape [${
      geo.shape.join(", ")
    }] bfloat16); configurations: ${dir.path}`,
  );
  const children: StdinChild[] = [];
  const offChildren = onInterrupt(() => children.forEach((c) => c.kill()));
  const send = (c: StdinChild, cmd: Record<string, unknown>) => c.write(JSON.stringify(cmd));
  try {
    const registry = spawnWithStdin("p2p-registry", [
      "p2p-registry",
      "--config",
      files.registry,
      "--pull-url",
      "127.0.0.1:0",
      "--reply-url",
      "127.0.0.1:0",
      "--json",
    ]);
    children.push(registry);
    const rReady = await nextEvent(registry, "ready", 30_000);
    out(`  registry:  reports on ${rReady.pull}, lookups on ${rReady.reply}`);
    const [pull, reply] = [String(rReady.pull), String(rReady.reply)];
    fs.writeFileSync(files.holder, instance("holder", pull, reply, 8400));
    fs.writeFileSync(files.requester, instance("requester", pull, reply, 8401));
    const anyPorts = ["--init-port", "0", "--lookup-port", "0"];
    const holder = spawnWithStdin("p2p-peer", [
      "p2p-peer",
      "--config",
      files.holder,
      ...anyPorts,
      "--kv-shape",
      shape,
      "--store",
      `A:${n}`,
      "--engine",
      engine,
      "--json",
    ]);
    children.push(holder);
    const requester = spawnWithStdin("p2p-peer", [
      "p2p-peer",
      "--config",
      files.requester,
      ...anyPorts,
      "--kv-shape",
      shape,
      "--engine",
      engine,
      "--json",
    ]);
    children.push(requester);
    const [hReady, qReady] = await Promise.all([
      nextEvent(holder, "ready", 30_000),
      nextEvent(requester, "ready", 30_000),
    ]);
    out(
      `  holder:    ${hReady.engine} engine, handshakes on ${hReady.init}, lookups on ` +
        `${hReady.lookup}, ${hReady.stored} chunk(s) held`,
    );
    out(`  requester: ${qReady.engine} engine, handshakes on ${qReady.init}`);
    const docA = Array.from({ length: n }, (_, i) => p2pDemoKey("A", i));
    const partial = [
      ...docA.slice(0, half),
      ...Array.from(
        { length: n - half },
        (_, i) => p2pDemoKey("B", half + i),
      ),
    ];
    const miss = Array.from({ length: n }, (_, i) => p2pDemoKey("C", i));
    // Reports are asynchronous: wait until the registry has all of A.
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      send(requester, { cmd: "lookup", keys: docA });
      const l = await nextEvent(requester, "looked", 10_000);
      if (l.hits === n) break;
      if (performance.now() > deadline) throw new Error(`the registry never saw ${n} chunks`);
      await sleep(50);
    }
    const retrieve = async (keys: string[]): Promise<Retrieved> => {
      send(requester, { cmd: "retrieve", keys });
      return (await nextEvent(requester, "retrieved", timeoutMs)) as unknown as Retrieved;
    };
    const runs: { name: string; keys: string[]; expect: number; r: Retrieved }[] = [];
    for (
      const [name, keys, expect] of [
        ["full (cold)", docA, n],
        ["full", docA, n],
        ["partial", partial, half],
        ["miss", miss, 0],
        ["full (again)", docA, n],
      ] as const
    ) {
      runs.push({ name, keys: [...keys], expect, r: await retrieve([...keys]) });
    }
    send(holder, { cmd: "checksum", keys: docA });
    const sum = await nextEvent(holder, "checksum", 10_000);
    const mc = await measureMemcpy(n * geo.pageSize);
    let asked = 0;
    let hits = 0;
    let bad = 0;
    let ok = true;
    out("  request        asked  promised  hit  verified   time      speed");
    for (const { name, expect, r } of runs) {
      asked += r.asked;
      hits += r.hits;
      bad += r.bad;
      const good = r.hits === expect && r.bad === 0 && r.error === null;
      ok &&= good;
      const gbps = r.seconds > 0 ? r.bytes / r.seconds / 1e9 : 0;
      out(
        `  ${name.padEnd(13)} ${String(r.asked).padStart(6)} ${String(r.promised).padStart(9)} ` +
          `${String(r.hits).padStart(4)} ${String(r.hits - r.bad).padStart(9)}  ` +
          `${(r.seconds * 1000).toFixed(1).padStart(7)} ms ` +
          (r.hits > 0 ? `${gbps.toFixed(2).padStart(6)} GB/s` : "       -") +
          (good ? "" : `  UNEXPECTED (want ${expect} hits)${r.error ? `: ${r.error}` : ""}`),
      );
    }
    const warm = runs.filter((x) => x.name.startsWith("full") && x.name !== "full (cold)")
      .map((x) => x.r);
    const best = warm.reduce((a, b) => (b.seconds < a.seconds ? b : a));
    const bps = best.bytes / best.seconds;
    const crcOk = sum.held === n && sum.crc === runs[1].r.crc;
    ok &&= crcOk;
    out(
      `  hit rate:  ${hits}/${asked} chunks (${((100 * hits) / asked).toFixed(0)}%); ` +
        `expected ${3 * n + half}/${asked}`,
    );
    out(
      `  speed:     ${(bps / 1e9).toFixed(2)} GB/s warm (${n} chunks, ` +
        `${(best.seconds * 1000).toFixed(1)} ms end to end incl. lookup); memcpy ` +
        `${(mc.bps / 1e9).toFixed(2)} GB/s (${mc.source}) -> ratio ${(bps / mc.bps).toFixed(2)}`,
    );
    out(
      `  bytes:     ${hits - bad}/${hits} fetched chunks verified byte for byte; CRC-32 ` +
        `${(runs[1].r.crc >>> 0).toString(16)} ${crcOk ? "matches" : "DIFFERS FROM"} the holder's`,
    );
    if (v.json) {
      out(JSON.stringify({
        ok,
        chunks: n,
        chunkBytes: geo.pageSize,
        asked,
        hits,
        bad,
        hitRate: hits / asked,
        gbps: bps / 1e9,
        memcpyGbps: mc.bps / 1e9,
        ratio: bps / mc.bps,
        crcMatches: crcOk,
      }));
    }
    for (const c of [requester, holder, registry]) send(c, { cmd: "exit" });
    const codes = await Promise.all(children.map((c) => c.exited));
    ok &&= codes.every((c) => c === 0);
    out(ok ? "  result:    OK" : `  result:    FAILED (exit codes ${codes.join(", ")})`);
    return ok ? 0 : 1;
  } finally {
    offChildren();
    for (const c of children) c.kill();
    await Promise.all(children.map((c) => c.exited));
    dir.remove();
  }
}

/**
 * Starts `kvport <args>` with a stdin that takes lines: {@linkcode spawnWithStdin} of
 * spawn.ts, under its earlier name.
 */
export { spawnWithStdin as spawnP2p, type StdinChild };

/**
 * `kvport p2p-registry`.
 *
 * @example
 * ```ts
 * import { p2pRegistryCommand } from "./p2p_cmd.ts";
 * const code = await p2pRegistryCommand.run(["--pull-url", "127.0.0.1:8300", "--reply-url", "127.0.0.1:8301"]);
 * ```
 */
export const p2pRegistryCommand: Command = {
  name: "p2p-registry",
  summary: "the lookup service of P2P KV sharing (LMCache controller's P2P part)",
  run: (args) => guard("p2p-registry", () => runRegistry(args)),
};

/**
 * `kvport p2p-peer`.
 *
 * @example
 * ```ts
 * import { p2pPeerCommand } from "./p2p_cmd.ts";
 * const code = await p2pPeerCommand.run(["--config", "lmcache-p2p.yaml", "--store", "A:8"]);
 * ```
 */
export const p2pPeerCommand: Command = {
  name: "p2p-peer",
  summary: "one P2P instance holding synthetic chunks, driven by JSON lines",
  run: (args) => guard("p2p-peer", () => runPeer(args)),
};

/**
 * `kvport p2p-demo`.
 *
 * @example
 * ```ts
 * import { p2pDemoCommand } from "./p2p_cmd.ts";
 * const code = await p2pDemoCommand.run(["--chunks", "8"]);
 * ```
 */
export const p2pDemoCommand: Command = {
  name: "p2p-demo",
  summary: "P2P sharing between three processes: full, partial and missed prefixes",
  run: (args) => guard("p2p-demo", () => runDemo(args)),
};
