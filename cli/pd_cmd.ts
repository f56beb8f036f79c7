/**
 * `kvport pd-receiver` and `kvport pd-sender`: each side of disaggregated prefill on
 * its own, from an LMCache configuration file, with synthetic KV chunks whose every
 * byte the receiver can check. `kvport demo` runs both.
 *
 * @module
 */
import { after, every, sleep, type Timer } from "../src/deadline.ts";
import process from "node:process";
import { chunkBytes, MemoryFormat } from "../src/pd/keys.ts";
import { checkPattern, fillPattern } from "../src/pd/pattern.ts";
import { PdReceiver } from "../src/pd/receiver.ts";
import { PdSender } from "../src/pd/sender.ts";
import type { BufferDevice } from "../src/channel/page.ts";
import { configured, emit, guard, int, load, parse, untilSignal, UsageError } from "./args.ts";
import type { Command } from "./commands.ts";
import { err, out } from "./io.ts";
import { dataPlaneAddress } from "./data_plane.ts";
import { describeBatch, StageClock } from "./stage_clock.ts";
import { checkMetricsFlags, METRICS_HELP, METRICS_OPTIONS, startMetrics } from "./metrics_opt.ts";

/** KV chunk geometry of the synthetic requests. */
export interface KvGeometry {
  /** LMCache `MemoryFormat` value. */
  fmt: number;
  /** Shape of one full chunk. */
  shape: number[];
  /** Data type name. */
  dtype: string;
  /** Bytes of one full chunk (the page size). */
  pageSize: number;
}

/** Default KV shape: 2 (K, V) x 28 layers x chunk_size tokens x 8 heads x 128 (bf16). */
export function defaultShape(chunkSize: number): number[] {
  return [2, 28, chunkSize, 8 * 128];
}

/**
 * The geometry from `--kv-shape`/`--dtype` and the configuration's chunk size. The shape
 * is LMCache's `KV_2LTD`: 2 (K and V), layers, tokens of a full chunk, hidden size.
 *
 * @example
 * ```ts
 * import { kvGeometry } from "./pd_cmd.ts";
 * console.log(kvGeometry(undefined, "bfloat16", 256).pageSize); // 29360128 (28 MiB)
 * ```
 */
export function kvGeometry(
  shapeText: string | undefined,
  dtype: string,
  chunkSize: number,
): KvGeometry {
  const shape = shapeText === undefined
    ? defaultShape(chunkSize)
    : shapeText.split(/[,x]/).map((s) => Number(s.trim()));
  if (
    shape.length !== 4 || shape[0] !== 2 ||
    shape.some((n) => !Number.isSafeInteger(n) || n <= 0)
  ) {
    throw new UsageError(
      "--kv-shape expects 2,LAYERS,TOKENS,HIDDEN (K and V, layers, tokens of a full chunk, " +
        `heads x head size: 4 positive integers, the first 2), e.g. 2,28,256,1024; got ${
          JSON.stringify(shapeText)
        }`,
    );
  }
  const fmt = MemoryFormat.KV_2LTD;
  const pageSize = chunkBytes(fmt, shape, dtype);
  if (pageSize === undefined) throw new UsageError(`--dtype ${dtype} is not a known dtype`);
  return { fmt, shape, dtype, pageSize };
}

/**
 * A PD buffer (`pd_buffer_size`) must hold at least one chunk of `--kv-shape`: said in
 * the command's terms before the library would say it in its own.
 */
function checkBufferHoldsAChunk(bufferSize: number | null, geo: KvGeometry): void {
  if (bufferSize !== null && bufferSize < geo.pageSize) {
    throw new UsageError(
      `pd_buffer_size ${bufferSize} is smaller than one chunk of --kv-shape ` +
        `${geo.shape.join(",")} ${geo.dtype} (${geo.pageSize} bytes): raise pd_buffer_size ` +
        "or pass a smaller --kv-shape",
    );
  }
}

function ports(name: string, text: string | undefined, dflt: readonly number[] | null): number[] {
  if (text === undefined) {
    if (!dflt || dflt.length === 0) {
      throw new UsageError(`--${name} is required (not in the configuration)`);
    }
    return [...dflt];
  }
  return text.split(",").map((p) => int(name, p.trim(), 0));
}

const RECEIVER_HELP = `Usage: kvport pd-receiver --config F [--tp-rank R] [options]

Runs the decoder side of disaggregated prefill: answers handshakes on
pd_peer_host:pd_peer_init_port[R] and AllocRequests on pd_peer_alloc_port[R], takes the
chunks senders WRITE, checks each (with --verify) and frees its page.

Options:
  -c, --config F          LMCache configuration (default: $LMCACHE_CONFIG_FILE)
  -r, --tp-rank R         TP rank: picks the ports of the port lists (default 0)
      --kv-shape S        shape of one chunk (default 2,28,chunk_size,1024)
      --dtype T           dtype (default bfloat16)
      --init-port P       override pd_peer_init_port[R] (0: any free port)
      --alloc-port P      override pd_peer_alloc_port[R] (0: any free port)
      --verify            check every byte of each chunk (kvport pd-sender content)
      --hold-ms N         keep each landed chunk N ms before freeing its page, as a
                          decoder does while the model reads it (default 0)
      --expect N          exit after N chunks have landed (0 when all were good)
      --timeout S         with --expect: give up after S seconds (default 120)
${METRICS_HELP}
      --progress          print landed chunks and GB/s every second (the default on a
                          terminal, without --json)
      --json              one JSON object per line (ready, landed, done)
  -h, --help              this help

Without --expect it runs until stopped: Ctrl-C (exit 130) or SIGTERM (143).`;

/** `cpu` or `cuda:N`, for messages. */
function deviceName(d: BufferDevice): string {
  return d.kind === "cuda" ? `cuda:${d.ordinal}` : "cpu";
}

async function runReceiver(args: string[]): Promise<number> {
  const v = parse(args, {
    config: { type: "string", short: "c" },
    "tp-rank": { type: "string", short: "r" },
    "kv-shape": { type: "string" },
    dtype: { type: "string" },
    "init-port": { type: "string" },
    "alloc-port": { type: "string" },
    verify: { type: "boolean", default: false },
    "hold-ms": { type: "string" },
    expect: { type: "string" },
    timeout: { type: "string" },
    ...METRICS_OPTIONS,
    progress: { type: "boolean" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  });
  if (v.help) {
    out(RECEIVER_HELP);
    return 0;
  }
  const json = v.json === true;
  checkMetricsFlags(v);
  const config = load(v.config as string | undefined, {});
  const tpRank = int("tp-rank", v["tp-rank"] as string | undefined, 0, 0);
  const geo = kvGeometry(
    v["kv-shape"] as string | undefined,
    (v.dtype as string) ?? "bfloat16",
    config.chunk_size,
  );
  const expect = v.expect === undefined ? undefined : int("expect", v.expect as string, 1);
  const timeoutS = int("timeout", v.timeout as string | undefined, 1, 120);
  const portOverride: { initPort?: number; allocPort?: number } = {};
  if (v["init-port"] !== undefined) {
    portOverride.initPort = int("init-port", v["init-port"] as string, 0);
  }
  if (v["alloc-port"] !== undefined) {
    portOverride.allocPort = int("alloc-port", v["alloc-port"] as string, 0);
  }
  const holdMs = int("hold-ms", v["hold-ms"] as string | undefined, 0, 0);
  checkBufferHoldsAChunk(config.pd_buffer_size, geo);
  const metrics = await startMetrics(v);
  let rx: PdReceiver;
  try {
    rx = await configured(config, () =>
      PdReceiver.fromConfig(config, {
        tpRank,
        pageSize: geo.pageSize,
        ...portOverride,
      }));
  } catch (e) {
    await metrics?.close();
    throw e;
  }
  const holding = new Set<Timer>();
  const showProgress = v.progress === true ||
    (v.progress === undefined && !json && process.stdout.isTTY === true);
  let progress: LandedProgress | undefined;
  try {
    for (const w of rx.channel.warnings) err(`warning: ${w}`);
    emit(
      json,
      {
        event: "ready",
        id: rx.id,
        init: rx.initUrl,
        alloc: rx.allocUrl,
        data: dataPlaneAddress(rx.channel),
        engine: rx.channel.engine,
        device: deviceName(rx.channel.device),
        pages: rx.channel.pageCount,
        pageSize: rx.channel.pageSize,
        metrics: metrics?.url ?? null,
        pid: process.pid,
      },
      `pd-receiver ${rx.initUrl}: handshakes on ${rx.initUrl}, allocations on ${rx.allocUrl}` +
        (dataPlaneAddress(rx.channel) ? `, data plane on ${dataPlaneAddress(rx.channel)} ` : " ") +
        `(${rx.channel.engine} engine, ${rx.channel.pageCount} pages of ${rx.channel.pageSize} ` +
        `bytes on ${deviceName(rx.channel.device)})` +
        (metrics ? `; metrics on ${metrics.url}` : ""),
    );
    let landed = 0;
    let bad = 0;
    let bytes = 0;
    if (showProgress) progress = new LandedProgress(process.stdout.isTTY === true);
    let resolveDone!: () => void;
    const done = new Promise<void>((r) => (resolveDone = r));
    const t0 = performance.now();
    const onGpu = rx.channel.device.kind === "cuda";
    const check = (key: string): number => {
      // GPU pages have no view: copy the chunk out (only to check it).
      const held = rx.page(key)!;
      const view = onGpu ? held.page.read(0, held.bytes) : rx.view(key)!;
      let ok = true;
      if (v.verify) {
        const at = checkPattern(key, view);
        ok = at < 0;
        if (!ok) {
          bad++;
          err(`pd-receiver: chunk ${key} differs from the expected content at byte ${at}`);
        }
      }
      if (holdMs === 0) rx.remove(key);
      else {
        const t = after(holdMs, () => {
          holding.delete(t);
          rx.remove(key);
        });
        holding.add(t);
      }
      return view.length;
    };
    // Checking a chunk (on a GPU: copying it to host memory first) holds this event loop,
    // and so the next AllocRequest or credit refill, far longer than the transfer: when
    // every expected chunk fits in the buffer, the checks wait until all have landed.
    const deferred: string[] = [];
    const defer = v.verify === true && expect !== undefined && expect <= rx.pool.pageCount;
    rx.onLanded((keys) => {
      for (const key of keys) {
        landed++;
        progress?.landed(rx.info(key)?.bytes ?? rx.channel.pageSize);
        if (defer) {
          deferred.push(key);
          emit(json, { event: "landed", key, ok: null, n: landed }, "");
        } else {
          const n = check(key);
          bytes += n;
          emit(json, { event: "landed", key, ok: true, bytes: n, n: landed }, "");
        }
        if (expect !== undefined && landed >= expect) {
          for (const k of deferred.splice(0)) bytes += check(k);
          resolveDone();
        }
      }
    });
    if (expect === undefined) {
      const sig = await untilSignal();
      progress?.stop();
      emit(
        json,
        { event: "done", landed, bad, bytes, signal: sig },
        `pd-receiver: ${landed} chunk(s) received (${bad} bad); stopping on ${sig}`,
      );
      return bad > 0 ? 1 : 0;
    }
    let timer: Timer | undefined;
    const timedOut = await Promise.race([
      done.then(() => false),
      new Promise<boolean>((r) => (timer = after(timeoutS * 1000, () => r(true)))),
    ]);
    timer?.clear();
    progress?.stop();
    const seconds = (performance.now() - t0) / 1000;
    emit(
      json,
      { event: "done", landed, bad, bytes, seconds, timedOut, verified: v.verify === true },
      `pd-receiver: ${landed} of ${expect} chunk(s) landed` +
        (v.verify ? `, ${landed - bad} verified byte for byte, ${bad} bad` : "") +
        (timedOut ? ` (gave up after ${timeoutS} s)` : ""),
    );
    return bad > 0 || timedOut ? 1 : 0;
  } finally {
    for (const t of holding) t.clear();
    progress?.stop();
    await rx.close();
    await metrics?.close();
  }
}

/**
 * The receiver's progress: chunks landed and the rate over the last second, redrawn in
 * place on a terminal, one line a second (only when something landed) elsewhere.
 */
class LandedProgress {
  #count = 0;
  #bytes = 0;
  #windowBytes = 0;
  #windowStart = performance.now();
  #gbps = 0;
  #drawn = "";
  #timer: Timer;

  constructor(readonly tty: boolean) {
    this.#timer = every(1000, () => this.#tick(), { ref: false });
  }

  /** One chunk of `bytes` landed. */
  landed(bytes: number): void {
    this.#count++;
    this.#bytes += bytes;
    this.#windowBytes += bytes;
    if (this.tty) this.#draw();
  }

  #tick(): void {
    const now = performance.now();
    const seconds = (now - this.#windowStart) / 1000;
    const moved = this.#windowBytes;
    this.#gbps = seconds > 0 ? moved / seconds / 1e9 : 0;
    this.#windowBytes = 0;
    this.#windowStart = now;
    if (this.tty) this.#draw();
    else if (moved > 0) out(this.#line());
  }

  #line(): string {
    return `pd-receiver: ${this.#count} chunk(s) landed, ` +
      `${(this.#bytes / 2 ** 20).toFixed(1)} MiB, ${this.#gbps.toFixed(2)} GB/s`;
  }

  #draw(): void {
    const line = this.#line();
    if (line === this.#drawn) return;
    process.stdout.write(`\r${line}\x1b[K`);
    this.#drawn = line;
  }

  /** Stops the timer (and ends the redrawn line). Idempotent. */
  stop(): void {
    this.#timer.clear();
    if (this.tty && this.#drawn) process.stdout.write("\n");
    this.#drawn = "";
  }
}

const SENDER_HELP = `Usage: kvport pd-sender --config F --init-port P --alloc-port P [options]

Runs the prefiller side of disaggregated prefill with synthetic chunks: for each request
it asks the receiver for pages (AllocRequest), WRITEs the chunks, and on the last batch
notifies the proxy (pd_proxy_host:pd_proxy_port) with ProxyNotif{req_id}.

Options:
  -c, --config F           LMCache configuration (default: $LMCACHE_CONFIG_FILE)
  -r, --tp-rank R          TP rank (default 0)
      --receiver-host H    decoder host (default: pd_peer_host, else localhost)
      --init-port P[,P]    decoder handshake port per TP rank (default: pd_peer_init_port)
      --alloc-port P[,P]   decoder allocation port per TP rank (default: pd_peer_alloc_port)
      --chunks N           chunks per request (default 16)
      --batch B            chunks per AllocRequest/WRITE (default 8)
      --requests N         number of requests (default 1)
      --req-id ID          request id (default demo-<pid>; -<n> appended when N > 1)
      --kv-shape S         shape of one chunk (default 2,28,chunk_size,1024)
      --dtype T            dtype (default bfloat16)
      --last-chunk-tokens T  tokens of the last chunk (default: a full chunk)
      --pace-ms N          pause N ms between requests (spreads a run over time)
      --fill-ahead         fill the pages of every request before the first is sent
                           (the buffer must hold them all): on a GPU, a model's KV is
                           written there by its kernels, while filling from host memory
                           right before each request streams every byte through the
                           CPU caches of both processes and slows what follows
      --linger S           after the last request, keep running (and serving metrics)
                           for S seconds or until SIGINT/SIGTERM (default 0)
${METRICS_HELP}
      --timeline           after each request, the stages of each batch (AllocRequest
                           round trip, write, landed, ProxyNotif), ms after its send()
      --json               one JSON object per line (ready, progress, timeline, done)
  -h, --help               this help`;

async function runSender(args: string[]): Promise<number> {
  const v = parse(args, {
    config: { type: "string", short: "c" },
    "tp-rank": { type: "string", short: "r" },
    "receiver-host": { type: "string" },
    "init-port": { type: "string" },
    "alloc-port": { type: "string" },
    chunks: { type: "string" },
    batch: { type: "string" },
    requests: { type: "string" },
    "req-id": { type: "string" },
    "kv-shape": { type: "string" },
    dtype: { type: "string" },
    "last-chunk-tokens": { type: "string" },
    "pace-ms": { type: "string" },
    "fill-ahead": { type: "boolean", default: false },
    linger: { type: "string" },
    ...METRICS_OPTIONS,
    timeline: { type: "boolean", default: false },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  });
  if (v.help) {
    out(SENDER_HELP);
    return 0;
  }
  const json = v.json === true;
  checkMetricsFlags(v);
  const config = load(v.config as string | undefined, {});
  const tpRank = int("tp-rank", v["tp-rank"] as string | undefined, 0, 0);
  const geo = kvGeometry(
    v["kv-shape"] as string | undefined,
    (v.dtype as string) ?? "bfloat16",
    config.chunk_size,
  );
  const host = (v["receiver-host"] as string | undefined) ?? config.pd_peer_host ?? "localhost";
  const initPorts = ports(
    "init-port",
    v["init-port"] as string | undefined,
    config.pd_peer_init_port,
  );
  const allocPorts = ports(
    "alloc-port",
    v["alloc-port"] as string | undefined,
    config.pd_peer_alloc_port,
  );
  const chunks = int("chunks", v.chunks as string | undefined, 0, 16);
  const batch = int("batch", v.batch as string | undefined, 1, 8);
  const requests = int("requests", v.requests as string | undefined, 1, 1);
  const lastToks = int(
    "last-chunk-tokens",
    v["last-chunk-tokens"] as string | undefined,
    1,
    geo.shape[2],
  );
  const baseId = (v["req-id"] as string | undefined) ?? `demo-${process.pid}`;
  const paceMs = int("pace-ms", v["pace-ms"] as string | undefined, 0, 0);
  const lingerS = int("linger", v.linger as string | undefined, 0, 0);
  checkBufferHoldsAChunk(config.pd_buffer_size, geo);
  const clock = v.timeline === true ? new StageClock() : undefined;
  const metrics = await startMetrics(v);
  let tx: PdSender;
  try {
    tx = await configured(
      config,
      () => PdSender.fromConfig(config, { tpRank, pageSize: geo.pageSize, timeline: clock?.hook }),
    );
  } catch (e) {
    await metrics?.close();
    throw e;
  }
  try {
    for (const w of tx.channel.warnings) err(`warning: ${w}`);
    const perBatch = Math.min(batch, tx.channel.pageCount);
    const spec = { receiverHost: host, receiverInitPort: initPorts, receiverAllocPort: allocPorts };
    const h0 = performance.now();
    await tx.connect(spec);
    const handshakeMs = performance.now() - h0;
    emit(
      json,
      {
        event: "ready",
        engine: tx.channel.engine,
        device: deviceName(tx.channel.device),
        pages: tx.channel.pageCount,
        handshakeMs,
        metrics: metrics?.url ?? null,
      },
      `pd-sender: handshook with ${host}:${initPorts[tpRank]} in ${
        handshakeMs.toFixed(1)
      } ms (${tx.channel.engine} engine)` + (metrics ? `; metrics on ${metrics.url}` : ""),
    );
    let totalSent = 0;
    let totalBytes = 0;
    let sendMs = 0;
    let scratch: Uint8Array | undefined;
    const reqIdOf = (r: number) => requests > 1 ? `${baseId}-${r}` : baseId;
    const keysOf = (reqId: string) =>
      Array.from({ length: chunks }, (_, i) => demoKey(reqId, i, tpRank, initPorts.length));
    type Window = { keys: string[]; pages: number[]; last: boolean }[];
    // The batches of a request from chunk `from` on, as many as the buffer holds, their pages
    // filled (the KV is ready).
    const fillWindow = async (keys: string[], from: number): Promise<Window> => {
      const window: Window = [];
      let free = tx.pool.free;
      for (let at = from; at < keys.length;) {
        const n = Math.min(perBatch, keys.length - at);
        if (n > free && window.length > 0) break;
        window.push({
          keys: keys.slice(at, at + n),
          pages: await tx.allocate(n),
          last: at + n === keys.length,
        });
        free -= n;
        at += n;
      }
      for (const w of window) {
        w.keys.forEach((k, i) => {
          const bytes = w.last && i === w.keys.length - 1
            ? chunkBytes(geo.fmt, geo.shape, geo.dtype, lastToks)!
            : tx.channel.pageSize;
          if (tx.channel.device.kind === "cuda") {
            // A GPU page is filled by a copy from host memory (what a model's KV cache
            // would already hold on the device).
            scratch ??= new Uint8Array(tx.channel.pageSize);
            fillPattern(k, scratch.subarray(0, bytes));
            tx.channel.page(w.pages[i]).copyFrom(scratch.subarray(0, bytes));
          } else {
            fillPattern(k, tx.channel.pages[w.pages[i]].subarray(0, bytes));
          }
        });
      }
      return window;
    };
    // --fill-ahead: every request's pages filled now, each request in one window.
    const ahead = new Map<string, Window>();
    if (v["fill-ahead"] === true && chunks > 0) {
      const need = requests * chunks;
      if (need > tx.pool.free) {
        throw new UsageError(
          `--fill-ahead needs the pages of every request (${requests} x ${chunks} = ${need}), ` +
            `the prefiller's buffer has ${tx.pool.free} free: raise pd_buffer_size`,
        );
      }
      for (let r = 0; r < requests; r++) {
        const reqId = reqIdOf(r);
        ahead.set(reqId, await fillWindow(keysOf(reqId), 0));
      }
    }
    const w0 = performance.now();
    for (let r = 0; r < requests; r++) {
      if (r > 0 && paceMs > 0) await sleep(paceMs);
      const reqId = reqIdOf(r);
      const reqMs0 = sendMs;
      const reqBytes0 = totalBytes;
      const keys = keysOf(reqId);
      let done = 0;
      if (keys.length === 0) {
        await tx.send({ ...spec, reqId, isLastPrefill: true }, {
          keys: [],
          pages: [],
          fmt: geo.fmt,
          shape: geo.shape,
          dtype: geo.dtype,
          lastChunkToks: 0,
        });
      }
      // The batches of a request are filled first (the KV is ready), as many as the
      // buffer holds, then sent all at once: the sender pipelines them (the AllocRequest
      // of one batch goes out while the one before it is written). The time counted is
      // from the first send() to the last one settled.
      while (done < keys.length) {
        const window = ahead.get(reqId) ?? await fillWindow(keys, done);
        ahead.delete(reqId);
        const t = performance.now();
        const results = await Promise.all(window.map(async (w) => {
          const res = await tx.send({ ...spec, reqId, isLastPrefill: w.last }, {
            keys: w.keys,
            pages: w.pages,
            fmt: geo.fmt,
            shape: geo.shape,
            dtype: geo.dtype,
            lastChunkToks: w.last ? lastToks : geo.shape[2],
          });
          done += w.keys.length;
          emit(json, {
            event: "progress",
            req: reqId,
            sent: done,
            total: keys.length,
            skipped: res.skipped,
          }, "");
          return res;
        }));
        sendMs += performance.now() - t;
        for (const res of results) {
          totalSent += res.sent;
          totalBytes += res.sent * geo.pageSize;
        }
      }
      const reqSeconds = (sendMs - reqMs0) / 1000;
      const reqBytes = totalBytes - reqBytes0;
      if (clock) {
        const batches = clock.take(reqId);
        emit(
          json,
          { event: "timeline", req: reqId, batches },
          batches.map((b) => `pd-sender: request ${reqId}, ${describeBatch(b)}`).join("\n"),
        );
      }
      emit(
        json,
        {
          event: "request",
          req: reqId,
          chunks: keys.length,
          bytes: reqBytes,
          seconds: reqSeconds,
          gbps: reqSeconds > 0 ? reqBytes / reqSeconds / 1e9 : 0,
        },
        requests > 1
          ? `pd-sender: request ${reqId}: ${keys.length} chunk(s) in ${
            (reqSeconds * 1000).toFixed(1)
          } ms`
          : "",
      );
    }
    const wallMs = performance.now() - w0;
    const seconds = sendMs / 1000;
    const result = {
      event: "done",
      requests,
      chunks: totalSent,
      bytes: totalBytes,
      seconds,
      wallSeconds: wallMs / 1000,
      gbps: seconds > 0 ? totalBytes / seconds / 1e9 : 0,
      chunksPerSec: seconds > 0 ? totalSent / seconds : 0,
      handshakeMs,
    };
    emit(
      json,
      result,
      `pd-sender: ${totalSent} chunk(s), ${(totalBytes / 2 ** 20).toFixed(1)} MiB in ` +
        `${(seconds * 1000).toFixed(1)} ms: ${result.gbps.toFixed(2)} GB/s, ` +
        `${result.chunksPerSec.toFixed(0)} chunks/s`,
    );
    if (lingerS > 0) {
      // Until the time is up or a signal comes, whichever is first; no listener stays.
      await new Promise<void>((ok) => {
        const done = () => {
          timer.clear();
          process.off("SIGINT", done);
          process.off("SIGTERM", done);
          ok();
        };
        const timer = after(lingerS * 1000, done);
        process.on("SIGINT", done);
        process.on("SIGTERM", done);
      });
    }
    return 0;
  } finally {
    await tx.close();
    await metrics?.close();
  }
}

/** The key of chunk `i` of a synthetic request. */
export function demoKey(reqId: string, i: number, worker = 0, world = 1): string {
  let h = 0x811c9dc5;
  const s = `${reqId}/${i}`;
  for (let j = 0; j < s.length; j++) h = Math.imul(h ^ s.charCodeAt(j), 0x01000193);
  const hex = (h >>> 0).toString(16).padStart(8, "0") + i.toString(16).padStart(4, "0");
  return `vllm@kvport-demo@${world}@${worker}@${hex}@bfloat16`;
}

/**
 * `kvport pd-receiver`.
 *
 * @example
 * ```ts
 * import { pdReceiverCommand } from "./pd_cmd.ts";
 * await pdReceiverCommand.run(["--config", "decoder.yaml", "--verify", "--expect", "16"]);
 * ```
 */
export const pdReceiverCommand: Command = {
  name: "pd-receiver",
  summary: "run the decoder side of disaggregated prefill from an LMCache configuration",
  run: (args) => guard("pd-receiver", () => runReceiver(args)),
};

/**
 * `kvport pd-sender`.
 *
 * @example
 * ```ts
 * import { pdSenderCommand } from "./pd_cmd.ts";
 * await pdSenderCommand.run(["--config", "prefiller.yaml", "--init-port", "7300", "--alloc-port", "7400"]);
 * ```
 */
export const pdSenderCommand: Command = {
  name: "pd-sender",
  summary: "send synthetic KV chunks to a decoder, as a prefiller does (then notify the proxy)",
  run: (args) => guard("pd-sender", () => runSender(args)),
};
