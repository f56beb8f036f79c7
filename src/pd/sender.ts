/**
 * The prefiller side of disaggregated prefill: handshakes once per receiver, asks it
 * for pages per batch, WRITEs the pages it does not hold yet, and notifies the proxy
 * when a request's prefill is done.
 *
 * @module
 */

import { ChannelError, ChannelTimeoutError, timeoutOf } from "../channel/errors.ts";
import { openPusher, openRequester, type Pusher, type Requester } from "../channel/control.ts";
import { distinct, errorMessage, joinHostPort, SerialQueue } from "../channel/_util.ts";
import { checkBufferSizes, createTransferChannel } from "../channel/factory.ts";
import type { SideChannelCurve } from "../channel/curve_config.ts";
import type { SideMessage, TransferChannel } from "../channel/types.ts";
import { MemoryFormat } from "./keys.ts";
import { encodeLanded, groupForNotification } from "./notify.ts";
import { bindEncoder, groupForBind } from "./bind_notify.ts";
import { chunkForm, CreditStock } from "./credit_stock.ts";
import { LeasePool } from "../channel/lease_pool.ts";
import {
  collectPdPool,
  type PdPoolView,
  type PdSenderMetrics,
  pdSenderMetrics,
} from "./metrics.ts";
import { metricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, weakly } from "../metrics/source.ts";
import {
  allocRequest,
  type PdRefusalReason,
  type PdWireGeneration,
  readAllocResponse,
} from "./alloc_wire.ts";
import {
  DEFAULT_PD_ALLOC_TIMEOUT_MS,
  pdAllocDeadlines,
  pdAllocTimeoutFromConfig,
  type PdChannelSettings,
  pdChannelSettingsFromConfig,
  type PdConfigLike,
} from "./config.ts";
import type { PdSenderStage, PdTimelineHook } from "./timeline.ts";

/**
 * Where a request's KV goes (LMCache's `disagg_spec`, which the proxy puts in the
 * request's `kv_transfer_params`).
 */
export interface DisaggSpec {
  /** The request id the proxy waits for (`req_id`). */
  reqId: string;
  /** The decoder's host (`receiver_host`). */
  receiverHost: string;
  /** The decoder's handshake port per TP rank (`receiver_init_port`), or one port. */
  receiverInitPort: number | readonly number[];
  /** The decoder's allocation port per TP rank (`receiver_alloc_port`), or one port. */
  receiverAllocPort: number | readonly number[];
  /** Whether this is the request's last prefill step (then the proxy is notified). */
  isLastPrefill: boolean;
  /**
   * Chunks of the whole request, when known: sent as `total_chunks` (with `req_id` and
   * `is_last_batch`) to receivers of LMCache's async generation, which reserve that
   * many pages up front. Without it they get the defaults (no reservation).
   */
  totalChunks?: number;
}

/** One batch of chunks of a request. */
export interface SendBatch {
  /** Cache-engine keys, one per page. */
  keys: readonly string[];
  /** Local page indexes (from {@linkcode PdSender.allocate}) holding the chunks. */
  pages: readonly number[];
  /** LMCache `MemoryFormat` value (default `KV_2LTD` = 1). */
  fmt?: number;
  /** Shape of a full chunk, e.g. `[2, layers, chunk_size, heads * head_dim]`. */
  shape: readonly number[];
  /** Data type name, e.g. `"bfloat16"`. */
  dtype: string;
  /** Tokens of the last chunk of the batch. */
  lastChunkToks: number;
}

/** What {@linkcode PdSender.send} did. */
export interface SendResult {
  /** The receiver id: `host:init_port` (IPv6 hosts in brackets), as {@linkcode PdReceiver.id}. */
  receiverId: string;
  /** Pages written. */
  sent: number;
  /** Pages the receiver already held (not written). */
  skipped: number;
  /** Whether the proxy was notified. */
  notified: boolean;
  /** Whether this call handshook with the receiver. */
  handshook: boolean;
}

/** Options of {@linkcode PdSender.create}. */
export interface PdSenderOptions extends PdChannelSettings {
  /** `pd_proxy_host` (null: no proxy notification). */
  proxyHost?: string | null;
  /** `pd_proxy_port` (null: no proxy notification). */
  proxyPort?: number | null;
  /**
   * Deadline of one AllocRequest round trip, ms (default 30000; `fromConfig`:
   * `pd_allocation_timeout_sec`). Receivers created from the same setting wait 80% of
   * it for free pages, so they give up first.
   */
  allocTimeoutMs?: number;
  /** Deadline of one proxy notification, ms (default 5000). */
  notifyTimeoutMs?: number;
  /**
   * The LMCache generation of the receivers' allocation socket (see `alloc_wire.ts`):
   * `"auto"` (default) learns it from the field order of a receiver's first
   * `AllocResponse` and writes the async form until then (an older receiver ignores
   * its extra fields); `"sync"` or `"async"` fix it. `CancelNotif` goes only to async
   * receivers: LMCache's sync receiver cannot decode it and stops answering.
   */
  wireGeneration?: "auto" | PdWireGeneration;
  /**
   * Page credits (kvport receivers, builtin engine): receiver pages asked for ahead of
   * requests, so that a batch of at most that many chunks is written with no
   * AllocRequest round trip and bound to its keys by its notification; topped up in the
   * background after use. This is the floor of the stock: it also aims at twice the
   * largest batch sent on the link, and with requests in flight at twice what the batches
   * sent before a refill's credits arrive take (the next batch of each request in flight,
   * or as many pages as the last refills' round trips used up - measured - plus one
   * batch); a refill starts as soon as the stock falls below that half, not once a batch
   * finds it empty, and brings a lot of half the aim or more. The receiver caps what it
   * gives: its `kvport_pd_credit_max` should cover this stock and the pages of the
   * batches in flight (they count as its credits until their binds arrive), else refills
   * bring only what landed meanwhile and batches in flight wait for them. A batch that
   * finds too few while a refill is on its way waits for it rather than queueing an
   * AllocRequest behind it. Default 16
   * (`fromConfig`: `extra_config.kvport_pd_credit_pages`); 0: off, every batch asks.
   * LMCache receivers ignore the ask and give none.
   */
  creditPages?: number;
  /**
   * How long credits should live, ms (default 120000; the receiver caps it at 10
   * minutes). A credit is used only while more than a transfer timeout and 2 s of it are
   * left, counted from when the request that got it was sent.
   */
  creditTtlMs?: number;
  /** Timing hook called at each stage of a batch (see `timeline.ts`; benchmarks). */
  timeline?: PdTimelineHook<PdSenderStage>;
}

/** Default of {@linkcode PdSenderOptions.creditPages}. */
const DEFAULT_PD_CREDIT_PAGES = 16;

/** Default of {@linkcode PdSenderOptions.creditTtlMs}. */
const DEFAULT_CREDIT_TTL_MS = 120_000;

/** How much of a credit's life must be left, beyond one transfer timeout, to use it. */
const CREDIT_MARGIN_MS = 2_000;

/** Largest credit stock a link aims at (the receiver caps what it gives anyway). */
const MAX_CREDIT_TARGET = 1024;

/** Refills a batch that found no credits waits for at most, before it asks itself (each
 * brings pages, but batches that come later with credits in stock may take them first). */
const MAX_REFILL_WAITS = 4;

interface Link {
  id: string;
  host: string;
  initPort: number;
  allocPort: number;
  alloc: Requester | null;
  generation: number;
  queue: SerialQueue;
  /** The receiver's LMCache generation, once a reply told it (or as configured). */
  wire: PdWireGeneration | undefined;
  /** Page credits at the receiver (emptied on a reset: the receiver ends them itself). */
  credits: CreditStock;
  /** The receiver answered a credit ask (a kvport receiver): refills may go to it. */
  givesCredits: boolean;
  /** The stock this link aims at. */
  creditTarget: number;
  /** The background refill in flight, if any: it resolves to the credit pages it brought
   * (0 when it failed, -1 when it asked nothing: the stock was full). */
  refill: Promise<number> | null;
  /** A refill was due while one was in flight: the chunk form to ask for once it ends. */
  refillAgain: { fmt: number; like: SendBatch } | null;
  /** Pages of batches waiting for a refill's credits (the next refill asks for them). */
  creditWaiting: number;
  /** Pages of batches sent to this receiver and not settled yet (the credit target
   * follows them: requests in flight at once each need a batch of credits). */
  pagesOut: number;
  /** The largest batch sent to this receiver (pages). */
  batchPages: number;
  /** Credit pages batches took in send() while the refill in flight was on its way (those
   * still waiting for it are added when it ends). */
  usedInRefill: number;
  /** Pages the last refills' round trips used up (see {@linkcode creditNeed}): the stock
   * left when a refill starts should cover as much, or a batch waits for it. */
  refillUse: number;
  /** Key-less credit asks answered on this link. */
  refills: number;
}

/**
 * What the credit stock of `link` should hold now: `low`, below which a refill starts
 * (whatever the lot), and `goal`, what a refill tops it up to. The stock left when a
 * refill starts must serve every batch taken until its credits arrive, else a batch waits
 * for them: the next batch of each request in flight, and as many pages as the last
 * refills' round trips used up (measured: a round trip grows when the receiver's one
 * JavaScript thread is busy landing other requests' pages, or this one posting them),
 * plus one batch. The goal is twice that, so that a refill brings a lot of `low` pages or
 * more (each refill is a round trip and a handler run on the receiver: one per batch
 * would cost it as much as the batches). One request at a time this is what it was: a
 * refill after each request, the stock twice the batch.
 */
function creditNeed(link: Link): { low: number; goal: number } {
  const b = link.batchPages;
  const low = Math.max(b, link.pagesOut, link.refillUse + b);
  const goal = Math.min(MAX_CREDIT_TARGET, Math.max(link.creditTarget, 2 * low));
  return { low, goal };
}

interface RequestTrack {
  receiverId: string;
  generation: number;
  /** Batches written. */
  batches: number;
  /** Batches the receiver gave pages for (ahead of `batches` while pipelined). */
  allocated: number;
  /** The form its first AllocRequest was written in; later batches keep it. */
  wire?: PdWireGeneration;
}

const MAX_TRACKED_REQUESTS = 65536;

/** Owner of the sender's staging leases. */
const STAGING = "PD sender staging";

/** What phase 1 of a batch learnt: where its pages go. */
interface Plan {
  /** Positions (into the batch) of the keys to write. */
  positions: number[];
  /** The receiver's page for each of them. */
  remote: number[];
  /** Keys the receiver already held. */
  skipped: number;
  handshook: boolean;
  /** Its keys were already cancelled on the receiver (an earlier batch failed). */
  cancelled: boolean;
  /** Set when `remote` are page credits (no AllocRequest): the WRITE binds them. */
  credit?: { form: string; usableUntil: number; generation: number };
}

/** The batches of one request in flight at once (pipelined sends). */
interface PdRun {
  /** The first failure: batches after it fail too. */
  failed: PdSendError | undefined;
  /** Batches not settled yet. */
  pending: number;
  /** Batches allocated on the receiver, not written yet. */
  planned: Set<{ plan: Plan; keys: string[] }> | null;
  /** The request's WRITEs, in send order (its last batch's ProxyNotif comes after every
   * earlier batch landed); other requests' WRITEs to the same receiver run meanwhile. */
  writes: SerialQueue;
}

/** The failure of a batch queued behind a failed batch of the same request. */
function aborted(first: PdSendError): PdSendError {
  return new PdSendError(
    first.reqId,
    first.receiverId,
    first.stage,
    `an earlier batch of this request failed, so this one was not sent: ${first.message}`,
    first,
  );
}

/**
 * A PD failure of one request, naming the request, the receiver and the stage.
 *
 * @example
 * ```ts
 * import { PdSendError } from "@kvport/nixl";
 *
 * const e = new PdSendError("r1", "localhost:7300", "alloc", "connection lost");
 * console.log(e.message);
 * ```
 */
export class PdSendError extends ChannelError {
  /** The request. */
  readonly reqId: string;
  /** The receiver id. */
  readonly receiverId: string;
  /** `"handshake"`, `"alloc"`, `"write"`, `"notify"` or `"restart"`. */
  readonly stage: string;

  /**
   * Creates the error.
   *
   * @param reqId the request
   * @param receiverId the receiver id
   * @param stage where it failed
   * @param detail what happened
   * @param cause the underlying error
   */
  constructor(reqId: string, receiverId: string, stage: string, detail: string, cause?: unknown) {
    const code = stage === "restart"
      ? "PEER_RESTARTED"
      : timeoutOf(cause)
      ? "TIMEOUT"
      : cause instanceof ChannelError
      ? cause.code
      : "TRANSFER_FAILED";
    super(
      code,
      `PD request ${reqId} to receiver ${receiverId} failed at ${stage}: ${detail}`,
      { peerId: receiverId, op: stage, cause },
    );
    this.name = "PdSendError";
    this.reqId = reqId;
    this.receiverId = receiverId;
    this.stage = stage;
  }
}

/**
 * The receiver refused to allocate pages for a batch (its `AllocResponse` had `-1`
 * indexes); `reason` says why (`unspecified` when an LMCache receiver did not say).
 *
 * @example
 * ```ts
 * import { PdAllocRefusedError } from "@kvport/nixl";
 *
 * const e = new PdAllocRefusedError("r1", "localhost:7300", "pool_too_small", "9 > 8 pages", 9);
 * console.log(e.reason, e.code); // pool_too_small REMOTE_ERROR
 * ```
 */
export class PdAllocRefusedError extends PdSendError {
  /** Why the receiver refused. */
  readonly reason: PdRefusalReason;
  /** The receiver's explanation. */
  readonly detail: string;
  /** Keys that got no page. */
  readonly failed: number;

  /**
   * Creates the error.
   *
   * @param reqId the request
   * @param receiverId the receiver id
   * @param reason why
   * @param detail the receiver's explanation
   * @param failed keys that got no page
   */
  constructor(
    reqId: string,
    receiverId: string,
    reason: PdRefusalReason,
    detail: string,
    failed: number,
  ) {
    super(
      reqId,
      receiverId,
      "alloc",
      `the receiver refused the allocation (${reason}): ${detail}`,
      new ChannelError("REMOTE_ERROR", detail, { peerId: receiverId, op: "alloc" }),
    );
    this.name = "PdAllocRefusedError";
    this.reason = reason;
    this.detail = detail;
    this.failed = failed;
  }
}

/**
 * The prefiller (sender) of disaggregated prefill.
 *
 * Fill pages from {@linkcode allocate}, then {@linkcode send} them with their keys and
 * the request's {@linkcode DisaggSpec}. The first send to a receiver handshakes; each
 * batch is an `AllocRequest` -> `AllocResponse` round trip and one WRITE of the pages
 * the receiver does not hold; the last batch of a request pushes `ProxyNotif{req_id}` -
 * also when nothing needed sending. A failure (receiver restarted, timeout) fails that
 * request with a {@linkcode PdSendError}; the next request handshakes again.
 *
 * @example
 * ```ts
 * import { PdReceiver, PdSender } from "@kvport/nixl";
 *
 * const pageSize = 4096;
 * await using rx = await PdReceiver.create({
 *   host: "127.0.0.1", initPort: 0, allocPort: 0, bufferSize: 16 * pageSize, pageSize,
 *   channelType: "mock_memory",
 * });
 * await using tx = await PdSender.create({
 *   bufferSize: 16 * pageSize, pageSize, channelType: "mock_memory",
 * });
 * const pages = await tx.allocate(1);
 * tx.channel.pages[pages[0]].fill(1);
 * await tx.send(
 *   { reqId: "r1", receiverHost: "127.0.0.1", receiverInitPort: rx.initPort,
 *     receiverAllocPort: rx.allocPort, isLastPrefill: true },
 *   { keys: ["vllm@m@1@0@ab@bfloat16"], pages, shape: [2, 1, 256, 4], dtype: "bfloat16",
 *     lastChunkToks: 256 },
 * );
 * ```
 */
export class PdSender implements AsyncDisposable {
  /** The channel holding the local pages. */
  readonly channel: TransferChannel;
  /** Local staging pages and who holds them (one lease per `allocate`). */
  readonly pool: LeasePool;
  /** TP rank: picks the port of each port list. */
  readonly tpRank: number;
  readonly #proxyUrl: string | null;
  readonly #allocTimeoutMs: number;
  readonly #curve: SideChannelCurve | undefined;
  readonly #notifyTimeoutMs: number;
  readonly #transferTimeoutMs: number | undefined;
  readonly #wireGeneration: "auto" | PdWireGeneration;
  readonly #tl: PdTimelineHook<PdSenderStage> | undefined;
  readonly #creditPages: number;
  readonly #creditTtlMs: number;
  #creditErrors = 0;
  #creditBatches = 0;
  #pusher: Pusher | null = null;
  #links = new Map<string, Link>();
  #requests = new Map<string, RequestTrack>();
  #runs = new Map<string, PdRun>();
  #closing: Promise<void> | null = null;
  #metrics: PdSenderMetrics | undefined;
  #metricsSource: CollectedSource;

  private constructor(channel: TransferChannel, options: PdSenderOptions) {
    this.channel = channel;
    // A WRITE that failed or timed out may still read its pages: they sit out a
    // transfer timeout before a caller can refill them.
    this.pool = new LeasePool(channel.pageCount, {
      quarantineMs: options.transferTimeoutMs ?? 30_000,
    });
    this.tpRank = options.tpRank ?? 0;
    this.#proxyUrl = options.proxyHost && options.proxyPort
      ? joinHostPort(options.proxyHost, options.proxyPort)
      : null;
    this.#allocTimeoutMs = options.allocTimeoutMs ?? DEFAULT_PD_ALLOC_TIMEOUT_MS;
    this.#curve = options.curve;
    this.#notifyTimeoutMs = options.notifyTimeoutMs ?? 5_000;
    this.#transferTimeoutMs = options.transferTimeoutMs;
    const registry = options.metrics ?? metricsRegistry();
    this.#metrics = pdSenderMetrics(registry, this.tpRank);
    this.#metricsSource = collectPdPool(
      registry,
      "sender",
      this.tpRank,
      weakly(this, PdSender.#poolView),
    );
    this.#wireGeneration = options.wireGeneration ?? "auto";
    this.#tl = options.timeline;
    const credits = options.creditPages ?? DEFAULT_PD_CREDIT_PAGES;
    // Only a builtin-engine sender names its agent, and only such a receiver gives credits.
    this.#creditPages = channel.engine === "builtin" ? credits : 0;
    this.#creditTtlMs = options.creditTtlMs ?? DEFAULT_CREDIT_TTL_MS;
  }

  /**
   * Page credits: usable credit pages held now (all links), batches sent with credits,
   * credit refills answered (key-less AllocRequests, `connect()`'s ask included), whether
   * one is on its way now, and background refills that failed.
   *
   * @example
   * ```ts
   * import type { PdSender } from "@kvport/nixl";
   * declare const tx: PdSender;
   * const { pages, refills, refilling } = tx.credits;
   * console.log(`${pages} credit pages, ${refills} refills${refilling ? ", one on its way" : ""}`);
   * ```
   */
  get credits(): {
    pages: number;
    batches: number;
    refills: number;
    refilling: boolean;
    refillErrors: number;
  } {
    let pages = 0;
    let refills = 0;
    let refilling = false;
    for (const l of this.#links.values()) {
      pages += l.credits.count();
      refills += l.refills;
      refilling ||= l.refill !== null;
    }
    return {
      pages,
      batches: this.#creditBatches,
      refills,
      refilling,
      refillErrors: this.#creditErrors,
    };
  }

  // Static: a closure made in the constructor would hold `this` (its context does).
  static #poolView(tx: PdSender): PdPoolView {
    return { pages: tx.pool.pageCount, free: tx.pool.free };
  }

  /** Creates the sender and its channel (which does not listen). */
  static async create(options: PdSenderOptions): Promise<PdSender> {
    checkBufferSizes(options.pageSize, options.bufferSize);
    const { creditPages, creditTtlMs } = options;
    if (creditPages !== undefined && (!Number.isSafeInteger(creditPages) || creditPages < 0)) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `PdSender creditPages must be an integer >= 0 (0: no credits), got ${creditPages}`,
      );
    }
    if (creditTtlMs !== undefined && (!Number.isSafeInteger(creditTtlMs) || creditTtlMs <= 0)) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `PdSender creditTtlMs must be a positive integer (ms), got ${creditTtlMs}`,
      );
    }
    const channel = await createTransferChannel({
      channelType: options.channelType ?? "nixl",
      role: "sender",
      bufferSize: options.bufferSize,
      alignBytes: options.pageSize,
      tpRank: options.tpRank ?? 0,
      peerInitUrl: null,
      backends: options.backends ?? null,
      device: options.device ?? "cpu",
      engine: options.engine,
      handshakeTimeoutMs: options.handshakeTimeoutMs,
      transferTimeoutMs: options.transferTimeoutMs,
      libraryPath: options.libraryPath,
      agentParams: options.agentParams,
      pageGrants: options.pageGrants ?? true,
      metrics: options.metrics,
      curve: options.curve,
    });
    return new PdSender(channel, options);
  }

  /**
   * Creates a sender from a loaded configuration (`pd_proxy_host`, `pd_proxy_port`,
   * `pd_skip_proxy_notification`, `pd_buffer_size`, `pd_buffer_device`,
   * `transfer_channel`, `nixl_backends`, `extra_config.kvport_page_grants`,
   * `extra_config.kvport_pd_credit_pages`). `pageSize` is
   * the bytes of one full chunk.
   *
   * @example
   * ```ts
   * import { loadConfig, PdSender } from "@kvport/nixl";
   *
   * const { config } = loadConfig({ file: "lmcache-prefiller-config.yaml" });
   * await using tx = await PdSender.fromConfig(config, { tpRank: 0, pageSize: 28 << 20 });
   * console.log(tx.channel.pageCount);
   * ```
   */
  static async fromConfig(
    config: PdConfigLike,
    options: { tpRank?: number; pageSize: number } & Partial<PdSenderOptions>,
  ): Promise<PdSender> {
    const tpRank = options.tpRank ?? 0;
    const s = pdChannelSettingsFromConfig(config, "sender", tpRank);
    const skip = config.pd_skip_proxy_notification === true;
    if (!skip && (!config.pd_proxy_host || !config.pd_proxy_port)) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        "a PD sender needs pd_proxy_host and pd_proxy_port (or pd_skip_proxy_notification: true)",
      );
    }
    return await PdSender.create({
      ...s,
      proxyHost: skip ? null : config.pd_proxy_host,
      proxyPort: skip ? null : config.pd_proxy_port,
      allocTimeoutMs: pdAllocDeadlines(pdAllocTimeoutFromConfig(config)).senderMs,
      creditPages: config.extra_config?.kvport_pd_credit_pages,
      ...options,
    });
  }

  /** Takes `count` local pages, waiting at most `timeoutMs` (default 30000) for free ones. */
  async allocate(count: number, timeoutMs?: number): Promise<number[]> {
    timeoutMs ??= 30_000;
    const lease = await this.pool.acquire(count, { owner: STAGING, timeoutMs });
    return [...lease.pages];
  }

  /** Returns local pages (from {@linkcode allocate}) to the pool. */
  release(pages: readonly number[]): void {
    for (const p of pages) {
      const lease = this.pool.leaseOf(p);
      if (!lease) throw new RangeError(`page ${p} is not allocated (double free or foreign index)`);
      lease.release({ pages: [p] });
    }
  }

  /** Receiver ids this sender has handshaken with. */
  get receivers(): string[] {
    return [...this.#links.values()].filter((l) => this.channel.hasPeer(l.id)).map((l) => l.id);
  }

  /**
   * Sends one batch of a request. The batch's pages are released when the call settles
   * (they came from {@linkcode allocate}). Resolves when the data has landed in the
   * receiver's pages (and, on the last batch, the proxy has been notified).
   */
  send(spec: DisaggSpec, batch: SendBatch): Promise<SendResult> {
    if (this.#closing) {
      return Promise.reject(new ChannelError("CLOSED", "PD sender is closed"));
    }
    let link: Link;
    try {
      validateBatch(batch);
      link = this.#link(spec);
    } catch (e) {
      this.#releasePages(batch?.pages ?? []);
      return Promise.reject(e);
    }
    this.#tl?.("send", spec.reqId, batch.keys);
    const m = this.#metrics;
    const t0 = m ? performance.now() : 0;
    // Batches of one request sent while earlier ones are in flight share a run: a failure
    // of one fails those after it (they never write).
    let run = this.#runs.get(spec.reqId);
    if (!run || run.failed) {
      // (`planned` is made by the first AllocRequest: a request on credits has none.)
      run = { failed: undefined, pending: 0, planned: null, writes: new SerialQueue() };
      this.#runs.set(spec.reqId, run);
    }
    const r = run;
    r.pending++;
    const out = batch.keys.length;
    link.pagesOut += out;
    if (this.#creditPages > 0) {
      // Every request in flight to this receiver holds a batch of pages, and the next
      // one should find a batch of credits meanwhile (one request at a time: twice the
      // batch, as before).
      link.creditTarget = Math.min(
        MAX_CREDIT_TARGET,
        Math.max(link.creditTarget, link.pagesOut + out),
      );
    }
    if (out > link.batchPages) link.batchPages = out;
    // With credits enough for the batch: no AllocRequest, and no wait behind the queue.
    const credit = this.#creditPlan(link, spec, batch);
    // (A batch that waits for a refill is counted by the refill it waits for.)
    if (credit && link.refill !== null) link.usedInRefill += out;
    const writes = r.writes;
    let written: Promise<SendResult>;
    if (credit && !r.failed && writes.pending === 0) {
      // Credits, and nothing ahead in the request's write order: the WRITE starts in this
      // call (no queue turns between the credits and the post).
      this.#tl?.("credits", spec.reqId, batch.keys);
      written = writes.runNow(() => this.#write(link, spec, batch, r, credit));
    } else {
      let planned: Promise<Plan>;
      if (credit) planned = this.#creditBatch(spec, batch, r, credit, link);
      else if (link.refill !== null && this.#creditForm(link, spec, batch) !== null) {
        // A refill is on its way: an AllocRequest would queue behind it anyway, so wait
        // for it and take its credits; the AllocRequest only if they are too few.
        this.#tl?.("refill_wait", spec.reqId, batch.keys);
        planned = this.#afterRefills(link, spec, batch, r);
      } else planned = this.#planAtTurn(link, spec, batch, r);
      planned.catch(() => {}); // settled through `sent`
      written = writes.run(() => planned.then((plan) => this.#write(link, spec, batch, r, plan)));
    }
    if (credit && (link.credits.count(credit.credit!.form) < out || link.pagesOut > out)) {
      // What is left cannot serve another batch like this one, or other batches are in
      // flight to this receiver (requests sent at once use the stock faster than one
      // refill's round trip): top up now, after this batch's post, rather than once it is
      // done - the next batch would otherwise wait for the whole refill round trip. (One
      // batch at a time, the refill waits until the request is done, so that the receiver
      // is not serving it when this batch's notification comes.)
      this.#refill(link, batch.fmt ?? MemoryFormat.KV_2LTD, batch);
    }
    const sent = written.finally(() => {
      link.pagesOut -= out;
      if (--r.pending === 0 && this.#runs.get(spec.reqId) === r) this.#runs.delete(spec.reqId);
    });
    if (m) {
      sent.then(
        (r) =>
          m.batch(
            "ok",
            r.receiverId,
            r.sent,
            r.skipped,
            r.sent * this.channel.pageSize,
            (performance.now() - t0) / 1000,
          ),
        (e) => m.batch(e instanceof PdSendError ? e.stage : "error", link.id, 0, 0, 0, 0),
      );
    }
    return sent.then(
      (r) => {
        this.#releasePages(batch.pages);
        return r;
      },
      (e) => {
        // A failed WRITE may still be reading the pages: quarantine, not free. A batch
        // failed because an earlier one did (its cause) never wrote: free at once.
        const wrote = e instanceof PdSendError && e.stage === "write" &&
          !(e.cause instanceof PdSendError);
        this.#releasePages(batch.pages, wrote);
        throw e;
      },
    );
  }

  #releasePages(pages: readonly number[], inFlight = false): void {
    for (const p of pages) {
      if (Number.isInteger(p)) this.pool.leaseOf(p)?.release({ pages: [p], inFlight });
    }
  }

  #link(spec: DisaggSpec): Link {
    const initPort = portOfRank(spec.receiverInitPort, "receiverInitPort", this.tpRank);
    const allocPort = portOfRank(spec.receiverAllocPort, "receiverAllocPort", this.tpRank);
    // Keyed by (host, port): LMCache's glued `host + port` id makes 127.0.0.1:54003 and
    // 127.0.0.15:4003 one receiver. That form never travels on the wire (each side sends
    // its own local_id), so nothing of ours needs it.
    const id = joinHostPort(spec.receiverHost, initPort);
    let link = this.#links.get(id);
    if (!link) {
      link = {
        id,
        host: spec.receiverHost,
        initPort,
        allocPort,
        alloc: null,
        generation: 0,
        queue: new SerialQueue(),
        wire: this.#wireGeneration === "auto" ? undefined : this.#wireGeneration,
        credits: new CreditStock(),
        givesCredits: false,
        creditTarget: this.#creditPages,
        refill: null,
        refillAgain: null,
        creditWaiting: 0,
        pagesOut: 0,
        batchPages: 0,
        usedInRefill: 0,
        refillUse: 0,
        refills: 0,
      };
      this.#links.set(id, link);
    }
    link.allocPort = allocPort;
    return link;
  }

  /**
   * Handshakes with the receiver of `spec` now (a send would do it on first use), so the
   * first request does not pay for it. Resolves `true` when a handshake happened. With
   * `credits` (the chunk form of the requests to come) and page credits on, it also asks
   * the receiver for credits, so that even the first request needs no AllocRequest (best
   * effort: a receiver that gives none, or fails to answer, fails nothing here).
   *
   * @example
   * ```ts
   * import type { PdSender } from "@kvport/nixl";
   * declare const tx: PdSender;
   * await tx.connect(
   *   { receiverHost: "127.0.0.1", receiverInitPort: 7300, receiverAllocPort: 7400 },
   *   { credits: { shape: [2, 32, 256, 1024], dtype: "bfloat16" } },
   * );
   * ```
   */
  connect(
    spec: Omit<DisaggSpec, "reqId" | "isLastPrefill">,
    options?: { credits?: { shape: readonly number[]; dtype: string; fmt?: number } },
  ): Promise<boolean> {
    if (this.#closing) {
      return Promise.reject(new ChannelError("CLOSED", "PD sender is closed"));
    }
    let link: Link;
    try {
      link = this.#link({ ...spec, reqId: "", isLastPrefill: false });
    } catch (e) {
      return Promise.reject(e);
    }
    return link.queue.run(async () => {
      if (link.alloc !== null && link.alloc.lost === null && this.channel.hasPeer(link.id)) {
        return false;
      }
      try {
        await this.#handshake(link);
      } catch (e) {
        throw new PdSendError("(connect)", link.id, "handshake", errorMessage(e), e);
      }
      return true;
    }).then(async (handshook) => {
      const want = options?.credits;
      if (want && this.#creditPages > 0) {
        const fmt = want.fmt ?? MemoryFormat.KV_2LTD;
        await link.queue.run(() =>
          this.#askCredits(link, fmt, [...want.shape], want.dtype, link.generation)
        ).catch(() => {
          this.#creditErrors++;
        });
      }
      return handshook;
    });
  }

  /**
   * Phase 1 of a batch, under the link's queue: handshake when needed, the AllocRequest
   * round trip, the receiver's answer checked. The link's queue is free again once this
   * settles, so the next batch's AllocRequest goes out while this batch is written.
   */
  async #allocate(link: Link, spec: DisaggSpec, batch: SendBatch, run: PdRun): Promise<Plan> {
    const reqId = spec.reqId;
    const tl = this.#tl;
    tl?.("queued", reqId, batch.keys);
    const fail = async (
      stage: string,
      detail: string,
      cause?: unknown,
      reset = true,
    ): Promise<never> => {
      const err = new PdSendError(reqId, link.id, stage, detail, cause);
      run.failed ??= err;
      this.#requests.delete(reqId);
      if (reset) await this.#reset(link);
      throw err;
    };
    if (run.failed) throw aborted(run.failed);
    let track = this.#requests.get(reqId);
    let handshook = false;
    const plan: Plan = { positions: [], remote: [], skipped: 0, handshook, cancelled: false };
    if (batch.keys.length === 0) return plan;
    // A request keeps the form of its first batch; until the receiver's generation is
    // known, the async form (an older receiver ignores the extra fields).
    const wireForm = track?.wire ?? link.wire ?? "async";
    const request = allocRequest(wireForm, {
      keys: [...batch.keys],
      fmt: batch.fmt ?? MemoryFormat.KV_2LTD,
      shape: [...batch.shape],
      dtype: batch.dtype,
      last_chunk_toks: batch.lastChunkToks,
    }, { reqId, isLastBatch: spec.isLastPrefill, totalChunks: spec.totalChunks });
    // A receiver enforcing page grants grants this agent WRITE on the pages it answers.
    // Only the builtin engine enforces them, and only a builtin-engine peer can reach a
    // builtin-engine receiver: other receivers (LMCache's, on NIXL) get LMCache's form.
    if (this.channel.engine === "builtin") {
      request.kvport_agent = this.channel.agentName;
      // How long this sender may still WRITE into what it is given (the rest of this
      // round trip, then one transfer): a receiver keeps pages reserved for a kvport
      // sender no longer than that, so a sender whose link died leaks nothing there.
      request.kvport_ttl_ms = this.#allocTimeoutMs + (this.#transferTimeoutMs ?? 30_000);
    }
    const form = chunkForm(request.fmt as number, batch.shape, batch.dtype);
    if (this.#creditPages > 0) {
      // Twice the largest batch: the next request finds credits while the refill after
      // this one is still on its way.
      link.creditTarget = Math.min(
        MAX_CREDIT_TARGET,
        Math.max(link.creditTarget, 2 * batch.keys.length),
      );
    }
    let sentAt = 0;
    const restarted = (why: string) =>
      fail(
        "restart",
        `the receiver was restarted or lost after ${track!.allocated} batch(es) of this ` +
          `request (${why}); the pages sent before are lost, so retry the whole request: ` +
          "the next one handshakes again",
      );
    let resp: SideMessage | undefined;
    for (let attempt = 0; resp === undefined; attempt++) {
      const lost = link.alloc?.lost ?? null;
      const healthy = link.alloc !== null && lost === null && this.channel.hasPeer(link.id);
      const midStream = track !== undefined && track.allocated > 0;
      if (midStream && (!healthy || track!.generation !== link.generation)) {
        await restarted(lost ?? "its connection is gone");
      }
      if (!healthy) {
        try {
          await this.#handshake(link);
        } catch (e) {
          await fail("handshake", errorMessage(e), e);
        }
        handshook = true;
      }
      if (!track) {
        track = {
          receiverId: link.id,
          generation: link.generation,
          batches: 0,
          allocated: 0,
          wire: wireForm,
        };
        if (this.#requests.size >= MAX_TRACKED_REQUESTS) {
          this.#requests.delete(this.#requests.keys().next().value!);
        }
        this.#requests.set(reqId, track);
      }
      track.generation = link.generation;
      try {
        // Page credits for the next requests (asked after any handshake: a reset empties
        // the stock).
        // Credits too few for this batch are given back with it: on a receiver whose
        // pool is tight they may be the very pages this request waits for.
        if (this.#creditPages > 0 && link.credits.count(form) < batch.keys.length) {
          link.credits.clear();
        }
        const want = this.#creditPages > 0 ? link.creditTarget - link.credits.count(form) : 0;
        if (want > 0) {
          request.kvport_credit_want = want;
          request.kvport_credit_ttl_ms = this.#creditTtlMs;
        } else delete request.kvport_credit_want;
        const back = link.credits.takeDropped();
        if (back.length > 0) request.kvport_credit_return = back;
        else delete request.kvport_credit_return;
        tl?.("alloc_sent", reqId, batch.keys);
        sentAt = performance.now();
        resp = await link.alloc!.request(request, this.#allocTimeoutMs);
        tl?.("alloc_reply", reqId, batch.keys);
      } catch (e) {
        if (run.failed) throw aborted(run.failed);
        // No answer in time is a timeout, whatever it did to the connection.
        if (timeoutOf(e)) {
          const t = new ChannelTimeoutError("AllocRequest", this.#allocTimeoutMs, {
            peerId: link.id,
            hint: "the receiver did not answer (no free pages in time? see its " +
              "pd_allocation_timeout_sec)",
            cause: e,
          });
          return await fail("alloc", t.message, t);
        }
        const gone = link.alloc?.lost ?? null;
        if (gone !== null && !midStream && attempt === 0) {
          // The connection predates a restart of the receiver: nothing of this request
          // was sent yet, so handshake again and retry once.
          await this.#reset(link);
          continue;
        }
        if (gone !== null && midStream) await restarted(gone);
        return await fail("alloc", errorMessage(e), e);
      }
    }
    if (resp.type !== "AllocResponse") {
      const why = resp.type === "ErrorMsg" ? String(resp.error) : `a ${resp.type} reply`;
      return await fail(
        "alloc",
        `the receiver refused the AllocRequest: ${why}`,
        undefined,
        false,
      );
    }
    let outcome;
    try {
      outcome = readAllocResponse(resp);
    } catch (e) {
      return await fail("alloc", `malformed AllocResponse: ${errorMessage(e)}`, e);
    }
    if (this.#wireGeneration === "auto" && outcome.generation) link.wire = outcome.generation;
    this.#stockCredits(link, resp, sentAt, form, link.generation);
    if (!outcome.ok) {
      this.#requests.delete(reqId);
      const err = new PdAllocRefusedError(
        reqId,
        link.id,
        outcome.reason,
        outcome.detail,
        outcome.failed,
      );
      run.failed ??= err;
      throw err;
    }
    const already = outcome.already;
    const remote = outcome.remote;
    const skip = new Set(already);
    const positions: number[] = [];
    for (let i = 0; i < batch.keys.length; i++) if (!skip.has(i)) positions.push(i);
    if (
      remote.length !== positions.length || already.some((i) => i < 0 || i >= batch.keys.length)
    ) {
      return await fail(
        "alloc",
        `AllocResponse does not match the request: ${batch.keys.length} key(s), ` +
          `${already.length} already sent, ${remote.length} page(s) given`,
      );
    }
    track!.allocated++;
    plan.positions = positions;
    plan.remote = remote;
    plan.skipped = already.length;
    plan.handshook = handshook;
    if (run.failed) {
      // An earlier batch of this request failed while this one was being allocated.
      await this.#cancelOnReceiver(link, reqId, positions.map((p) => batch.keys[p]));
      throw aborted(run.failed);
    }
    (run.planned ??= new Set()).add({ plan, keys: positions.map((p) => batch.keys[p]) });
    return plan;
  }

  /**
   * Phase 2 of a batch, in its request's write order (a request's batches are written in
   * the order they were sent; other requests' batches to the same receiver are written
   * meanwhile): the WRITE of the pages the receiver did not hold, then, on the last
   * batch, the ProxyNotif (every earlier batch of the request has landed by then).
   */
  async #write(
    link: Link,
    spec: DisaggSpec,
    batch: SendBatch,
    run: PdRun,
    plan: Plan,
  ): Promise<SendResult> {
    const reqId = spec.reqId;
    const tl = this.#tl;
    if (run.planned !== null) {
      for (const p of run.planned) if (p.plan === plan) run.planned.delete(p);
    }
    if (run.failed && plan.credit) {
      // Never written: the credits are as good as before.
      if (link.generation === plan.credit.generation) {
        link.credits.putBack(plan.remote, plan.credit.form, plan.credit.usableUntil);
      }
      throw aborted(run.failed);
    }
    if (run.failed) {
      if (!plan.cancelled) {
        await this.#cancelOnReceiver(link, reqId, plan.positions.map((p) => batch.keys[p]));
      }
      throw aborted(run.failed);
    }
    if (plan.credit && plan.credit.generation !== link.generation) {
      // The link was reset since the credits were taken: they belong to a connection
      // (perhaps a receiver) that is gone. Ask the current one.
      return await this.#write(link, spec, batch, run, await this.#replan(link, spec, batch, run));
    }
    const { positions, remote } = plan;
    const credit = plan.credit;
    const fmt = batch.fmt ?? MemoryFormat.KV_2LTD;
    const groups = credit
      ? groupForBind(
        batch.keys,
        positions,
        reqId.length * 6 + batch.dtype.length * 6 + 24 * batch.shape.length,
      )
      : groupForNotification(batch.keys, positions);
    let sent = 0;
    if (positions.length > 0) {
      try {
        // The fields every bind notification of the batch shares, encoded once.
        const bind = credit
          ? bindEncoder({ reqId, fmt, shape: batch.shape, dtype: batch.dtype })
          : null;
        const lastKey = batch.keys.length - 1;
        // Groups are consecutive runs of `positions`: `at` is where this one starts.
        let at = 0;
        for (const group of groups) {
          const len = group.length;
          let remoteIndexes = remote;
          let keys = batch.keys;
          let pages = batch.pages;
          // One group of every key (the usual batch) is the batch itself, in order: its
          // lists are read as they are (the channel copies what it keeps).
          if (len !== keys.length) {
            remoteIndexes = remote.slice(at, at + len);
            const k = new Array<string>(len);
            const p = new Array<number>(len);
            for (let i = 0; i < len; i++) {
              k[i] = batch.keys[group[i]];
              p[i] = batch.pages[group[i]];
            }
            keys = k;
            pages = p;
          }
          at += len;
          tl?.("write", reqId, batch.keys);
          // Credit pages are bound to their keys by the notification (it comes after the
          // data); pages of an AllocResponse were bound by it.
          const notification = bind
            ? bind(
              keys,
              remoteIndexes,
              len === batch.keys.length || group.includes(lastKey) ? batch.lastChunkToks : null,
            )
            : encodeLanded(keys);
          await this.channel.write(pages, {
            peerId: link.id,
            remoteIndexes,
            notification,
            timeoutMs: this.#transferTimeoutMs,
            onPosted: tl && (() => tl("posted", reqId, batch.keys)),
          });
          tl?.("written", reqId, batch.keys);
          sent += group.length;
        }
      } catch (e) {
        const fresh = this.#requests.get(reqId);
        const first = fresh === undefined || fresh.batches === 0;
        if (credit && sent === 0 && !run.failed && first && !timeoutOf(e)) {
          // Nothing of this request reached the receiver yet (a receiver that restarted
          // before we noticed, a connection gone, a credit it no longer honours): start
          // again the AllocRequest way, on a fresh connection. Not after a timeout: that
          // WRITE may still be moving (and reading our pages), so it fails as any.
          await link.queue.run(() => this.#reset(link));
          const again = await this.#replan(link, spec, batch, run);
          return await this.#write(link, spec, batch, run, again);
        }
        const err = new PdSendError(reqId, link.id, "write", errorMessage(e), e);
        run.failed ??= err;
        this.#requests.delete(reqId);
        // This batch's keys and those of later batches of the request that the receiver
        // has already given pages for: one CancelNotif, then a fresh connection (under
        // the link's queue, so no AllocRequest of this request is caught halfway). Keys
        // of credit pages were never given to the receiver (its credits end by their
        // expiry, or by the re-handshake).
        const keys = credit ? [] : positions.map((p) => batch.keys[p]);
        for (const p of run.planned ?? []) {
          p.plan.cancelled = true;
          keys.push(...p.keys);
        }
        await this.#cancelOnReceiver(link, reqId, keys);
        await link.queue.run(() => this.#reset(link));
        throw err;
      }
    }
    const track = this.#requests.get(reqId);
    if (track && batch.keys.length > 0) track.batches++;
    let notified = false;
    if (spec.isLastPrefill) {
      this.#requests.delete(reqId);
      if (this.#proxyUrl) {
        try {
          this.#pusher ??= await openPusher(this.#proxyUrl, { timeoutMs: this.#notifyTimeoutMs });
          await this.#pusher.send({ type: "ProxyNotif", req_id: reqId }, this.#notifyTimeoutMs);
          tl?.("notified", reqId, batch.keys);
          notified = true;
          this.#metrics?.proxyNotification(true);
        } catch (e) {
          this.#metrics?.proxyNotification(false);
          if (credit) this.#refill(link, fmt, batch);
          throw new PdSendError(
            reqId,
            link.id,
            "notify",
            `the KV is at the receiver but the proxy at ${this.#proxyUrl} was not notified: ` +
              errorMessage(e),
            e,
          );
        }
      }
    }
    // The credits used are topped up once this request is done with the CPU (the
    // ProxyNotif is out): the refill never delays it.
    if (credit) this.#refill(link, fmt, batch);
    return {
      receiverId: link.id,
      sent,
      skipped: plan.skipped,
      notified,
      handshook: plan.handshook,
    };
  }

  /**
   * Credits for a whole batch, taken now (in send order), or `null`: the batch then goes
   * the AllocRequest way. Only on a healthy link, for a batch of distinct keys of the
   * form the credits were given for, and for a request not begun on an older connection.
   */
  #creditPlan(link: Link, spec: DisaggSpec, batch: SendBatch): Plan | null {
    const form = this.#creditForm(link, spec, batch);
    if (form === null) return null;
    // Usable only while a WRITE begun now ends before the receiver takes the pages back.
    const got = link.credits.take(batch.keys.length, form);
    if (!got) return null;
    const track = this.#requests.get(spec.reqId);
    if (track) track.allocated++;
    else {
      if (this.#requests.size >= MAX_TRACKED_REQUESTS) {
        this.#requests.delete(this.#requests.keys().next().value!);
      }
      this.#requests.set(spec.reqId, {
        receiverId: link.id,
        generation: link.generation,
        batches: 0,
        allocated: 1,
        wire: link.wire ?? "async",
      });
    }
    this.#creditBatches++;
    return {
      positions: batch.keys.map((_, i) => i),
      remote: got.pages,
      skipped: 0,
      handshook: false,
      cancelled: false,
      credit: { form, usableUntil: got.usableUntil, generation: link.generation },
    };
  }

  /**
   * Phase 1 of a batch that found no credits while a refill was on its way: waits for the
   * refills (its pages counted in what the next one asks) and takes their credits; an
   * AllocRequest - which would have queued behind those refills anyway - only once no
   * refill is on its way, or one brought nothing (the receiver has no free pages to give:
   * the AllocRequest waits for some there).
   */
  async #afterRefills(link: Link, spec: DisaggSpec, batch: SendBatch, run: PdRun): Promise<Plan> {
    const n = batch.keys.length;
    link.creditWaiting += n;
    try {
      for (let i = 0; i < MAX_REFILL_WAITS && link.refill !== null; i++) {
        const form = this.#creditForm(link, spec, batch);
        if (form === null) break;
        const gave = await link.refill;
        const plan = this.#creditPlan(link, spec, batch);
        if (plan) return await this.#creditBatch(spec, batch, run, plan, link);
        // Nothing given and none coming: the receiver has no free page to give.
        if (gave === 0 && link.refill === null) break;
        // Too few for this batch: the refill that follows (one may be on its way
        // already: a refill asked while another was in flight) asks for it too.
        this.#refill(link, batch.fmt ?? MemoryFormat.KV_2LTD, batch);
      }
    } finally {
      link.creditWaiting -= n;
    }
    // At its turn in the link's queue, the refills ahead of it may have brought enough:
    // those credits are then used, not held while an AllocRequest waits for pages that
    // may be the very ones they stand for.
    return await this.#planAtTurn(link, spec, batch, run);
  }

  /**
   * Phase 1 of a batch the AllocRequest way, at its turn in the link's queue: if credits
   * came meanwhile (a refill ahead of it in the queue), the batch takes them instead - an
   * AllocRequest must not wait on the receiver for pages this sender holds as credits.
   */
  #planAtTurn(link: Link, spec: DisaggSpec, batch: SendBatch, run: PdRun): Promise<Plan> {
    return link.queue.run(() => {
      const plan = this.#creditPlan(link, spec, batch);
      return plan
        ? this.#creditBatch(spec, batch, run, plan, link)
        : this.#allocate(link, spec, batch, run);
    });
  }

  /**
   * The chunk form of `batch` when it may go on credits (a healthy link that gives them,
   * distinct keys, a request not begun on an older connection), else `null`.
   */
  #creditForm(link: Link, spec: DisaggSpec, batch: SendBatch): string | null {
    if (this.#creditPages === 0 || !link.givesCredits || batch.keys.length === 0) return null;
    if (link.alloc === null || link.alloc.lost !== null || !this.channel.hasPeer(link.id)) {
      return null;
    }
    const track = this.#requests.get(spec.reqId);
    if (track && track.generation !== link.generation) return null;
    if (!distinct(batch.keys)) return null;
    return chunkForm(batch.fmt ?? MemoryFormat.KV_2LTD, batch.shape, batch.dtype);
  }

  /**
   * A batch planned on credits that can no longer be used, sent the AllocRequest way. A
   * request none of whose batches was written yet starts over (its track is dropped);
   * one begun on the old connection fails as a restart there.
   */
  #replan(link: Link, spec: DisaggSpec, batch: SendBatch, run: PdRun): Promise<Plan> {
    const track = this.#requests.get(spec.reqId);
    if (track && track.batches === 0) this.#requests.delete(spec.reqId);
    return link.queue.run(() => this.#allocate(link, spec, batch, run));
  }

  /** Phase 1 of a batch sent with credits: nothing to ask; fails after a failed batch. */
  #creditBatch(
    spec: DisaggSpec,
    batch: SendBatch,
    run: PdRun,
    plan: Plan,
    link: Link,
  ): Promise<Plan> {
    this.#tl?.("credits", spec.reqId, batch.keys);
    if (run.failed) {
      if (link.generation === plan.credit!.generation) {
        link.credits.putBack(plan.remote, plan.credit!.form, plan.credit!.usableUntil);
      }
      return Promise.reject(aborted(run.failed));
    }
    return Promise.resolve(plan);
  }

  /** Usable credit pages of an AllocResponse (a kvport receiver's `kvport_credit`). */
  #stockCredits(
    link: Link,
    resp: SideMessage,
    sentAt: number,
    form: string,
    generation: number,
  ): void {
    const given = resp.kvport_credit;
    if (!Array.isArray(given)) return;
    link.givesCredits = true;
    const ttl = resp.kvport_credit_ttl_ms;
    if (typeof ttl !== "number" || !(ttl > 0) || link.generation !== generation) return;
    const pages = given.filter((p): p is number =>
      typeof p === "number" && Number.isSafeInteger(p) && p >= 0
    );
    // Counted from when the request was sent: the receiver's clock started later.
    const usableUntil = sentAt + ttl - (this.#transferTimeoutMs ?? 30_000) - CREDIT_MARGIN_MS;
    if (pages.length > 0 && usableUntil > performance.now()) {
      link.credits.add(pages, form, usableUntil);
    }
  }

  /**
   * Tops the link's credits up in the background after a batch used some: one key-less
   * AllocRequest through the link's queue. It never fails a send: errors are counted
   * (`credits.refillErrors`), and it handshakes never (a broken link waits for the next
   * send). `close()` waits for it (it waits for the queue).
   */
  #refill(link: Link, fmt: number, like: SendBatch): void {
    if (this.#closing || !link.givesCredits) return;
    const form = chunkForm(fmt, like.shape, like.dtype);
    const have = link.credits.count(form);
    const { low, goal } = creditNeed(link);
    const short = goal + link.creditWaiting - have;
    if (short <= 0) return;
    // A refill starts once the stock left falls below what the batches to come before its
    // credits arrive would take (`low`, see creditNeed), not when a batch finds it empty;
    // above that, only for a lot of half the goal or more: each refill is a round trip and
    // a handler run on the receiver's only JavaScript thread, which also lands every
    // request's pages, so one refill of 32 pages costs it far less than two of 16. (One
    // request at a time, the goal is twice the batch: every refill is due, as before.)
    if (link.creditWaiting === 0 && have >= low && 2 * short < goal) return;
    if (link.refill !== null) {
      // Credits were used after this refill counted what it asks for (requests in
      // flight at once): one more once it ends, else the stock runs dry and the next
      // requests make AllocRequests.
      link.refillAgain = { fmt, like };
      return;
    }
    const generation = link.generation;
    const shape = [...like.shape];
    const dtype = like.dtype;
    link.usedInRefill = 0;
    // In this call when nothing else is on the link's queue (the usual case: batches on
    // credits use no AllocRequest): a queued task starts only after the microtasks queued
    // before it, and with requests in flight those are other requests' continuations and
    // posts (0.4-1.4 ms of them on the 2-core machine, copies inside the posts), which
    // would all pass before the ask is written.
    link.refill = link.queue.runNow(() => this.#askCredits(link, fmt, shape, dtype, generation))
      .catch(() => {
        this.#creditErrors++;
        return 0;
      }).finally(() => {
        // What this round trip used up: the credits taken meanwhile and the batches still
        // waiting for it. The next refills start that much earlier (a larger use at once,
        // a smaller one by halves: one quiet round trip does not undo a busy one).
        const used = link.usedInRefill + link.creditWaiting;
        link.refillUse = Math.max(used, Math.floor((link.refillUse + used) / 2));
        link.usedInRefill = 0;
        link.refill = null;
        const again = link.refillAgain;
        link.refillAgain = null;
        // (It asks only if the stock is still short of the target.)
        if (again && link.generation === generation) this.#refill(link, again.fmt, again.like);
      });
  }

  /**
   * One key-less AllocRequest asking credits for chunks of (fmt, shape, dtype) up to the
   * link's target (plus the pages of batches waiting for them), under the link's queue
   * (the caller's), on the connection of `generation` only (never a handshake). Resolves
   * to the credit pages it brought, -1 when it asked nothing.
   */
  async #askCredits(
    link: Link,
    fmt: number,
    shape: number[],
    dtype: string,
    generation: number,
  ): Promise<number> {
    const form = chunkForm(fmt, shape, dtype);
    // (Batches waiting for credits hold no pages yet: they are beyond the goal.)
    const want = Math.min(
      MAX_CREDIT_TARGET,
      creditNeed(link).goal + link.creditWaiting - link.credits.count(form),
    );
    const healthy = link.alloc !== null && link.alloc.lost === null &&
      this.channel.hasPeer(link.id);
    if (this.#closing || want <= 0 || !healthy || link.generation !== generation) return -1;
    const request = allocRequest(link.wire ?? "async", {
      keys: [],
      fmt,
      shape,
      dtype,
      last_chunk_toks: 0,
    }, { reqId: "", isLastBatch: false });
    request.kvport_agent = this.channel.agentName;
    request.kvport_ttl_ms = this.#allocTimeoutMs + (this.#transferTimeoutMs ?? 30_000);
    request.kvport_credit_want = want;
    request.kvport_credit_ttl_ms = this.#creditTtlMs;
    const back = link.credits.takeDropped();
    if (back.length > 0) request.kvport_credit_return = back;
    const sentAt = performance.now();
    const resp = await link.alloc!.request(request, this.#allocTimeoutMs);
    if (resp.type !== "AllocResponse") {
      throw new ChannelError("REMOTE_ERROR", `credit request answered by a ${resp.type}`);
    }
    const had = link.credits.count(form);
    this.#stockCredits(link, resp, sentAt, form, generation);
    link.refills++;
    return link.credits.count(form) - had;
  }

  /** Best effort: tell the receiver to drop pages it gave for data that never came. */
  async #cancelOnReceiver(link: Link, reqId: string, keys: string[]): Promise<void> {
    if (!link.alloc || link.alloc.lost || keys.length === 0) return;
    // LMCache's sync receiver has no CancelNotif: it would fail to decode it and never
    // answer again on that socket.
    if (link.wire !== "async") return;
    await link.alloc.request({ type: "CancelNotif", req_id: reqId, keys }, 2000).catch(() => {});
  }

  /** Forgets what was known of the receiver, handshakes, opens the allocation socket. */
  async #handshake(link: Link): Promise<void> {
    await this.#reset(link);
    try {
      await this.channel.connect(link.id, joinHostPort(link.host, link.initPort));
      link.alloc = await openRequester(joinHostPort(link.host, link.allocPort), {
        timeoutMs: this.#allocTimeoutMs,
        curve: this.#curve?.client,
      });
    } catch (e) {
      await this.#reset(link);
      throw e;
    }
    this.#metrics?.handshake(link.generation > 0);
    link.generation++;
  }

  async #reset(link: Link): Promise<void> {
    const alloc = link.alloc;
    link.alloc = null;
    // A new connection (a restarted receiver, or one that dropped ours) starts without
    // credits: the receiver ends the old ones itself (expiry, or our re-handshake).
    link.credits.clear();
    link.givesCredits = false;
    await alloc?.close().catch(() => {});
    await this.channel.forgetPeer(link.id).catch(() => {});
  }

  /**
   * Closing: gives the receiver back the credits of `link` (best effort, 2 s at most),
   * so that they do not wait for their expiry.
   */
  async #returnCredits(link: Link): Promise<void> {
    link.credits.clear();
    const back = link.credits.takeDropped();
    if (back.length === 0 || link.alloc === null || link.alloc.lost !== null) return;
    const request = allocRequest(link.wire ?? "async", {
      keys: [],
      fmt: MemoryFormat.KV_2LTD,
      shape: [0],
      dtype: "bfloat16",
      last_chunk_toks: 0,
    }, { reqId: "", isLastBatch: false });
    request.kvport_agent = this.channel.agentName;
    request.kvport_credit_return = back;
    await link.alloc.request(request, Math.min(this.#allocTimeoutMs, 2000)).catch(() => {});
  }

  /** Closes every socket and the channel. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#links.values()].map((l) => l.queue.idle()));
      await Promise.allSettled([...this.#runs.values()].map((r) => r.writes.idle()));
      await Promise.allSettled(
        [...this.#links.values()].filter((l) => l.givesCredits).map((l) => this.#returnCredits(l)),
      );
      await this.#metricsSource.retire();
      for (const l of this.#links.values()) await l.alloc?.close().catch(() => {});
      await this.#pusher?.close().catch(() => {});
      this.pool.close();
      await this.channel.close();
    })();
    return this.#closing;
  }

  /** Same as `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The port of TP rank `tpRank` in `v` (one port, or one per rank). */
function portOfRank(v: number | readonly number[], name: string, tpRank: number): number {
  if (typeof v === "number") return v;
  if (!Array.isArray(v) || tpRank >= v.length) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `${name} has ${Array.isArray(v) ? v.length : 0} port(s) but TP rank ` +
        `${tpRank} needs index ${tpRank}: give one port per TP rank`,
    );
  }
  return v[tpRank];
}

function validateBatch(batch: SendBatch): void {
  if (!batch || !Array.isArray(batch.keys) || !Array.isArray(batch.pages)) {
    throw new ChannelError("INVALID_ARGUMENT", "send: batch needs keys[] and pages[]");
  }
  if (batch.keys.length !== batch.pages.length) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `send: ${batch.keys.length} key(s) but ${batch.pages.length} page(s); one page per key`,
    );
  }
  for (const k of batch.keys) {
    if (typeof k !== "string" || k === "" || k.includes("\n")) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `send: key ${JSON.stringify(k)} must be a non-empty string without newlines`,
      );
    }
  }
}
