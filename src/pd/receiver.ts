/**
 * The decoder side of disaggregated prefill: answers handshakes and AllocRequests,
 * holds received KV chunks in its pages until they are retrieved or removed.
 *
 * @module
 */

import { ChannelError, ChannelTimeoutError } from "../channel/errors.ts";
import { type ControlServer, serveRequests } from "../channel/control.ts";
import { errorMessage, joinHostPort } from "../channel/_util.ts";
import { checkBufferSizes, createTransferChannel } from "../channel/factory.ts";
import type { SideMessage, TransferChannel } from "../channel/types.ts";
import type { ChannelPage } from "../channel/page.ts";
import { chunkBytes, withTokens } from "./keys.ts";
import { decodeLanded } from "./notify.ts";
import { type BindNotice, isBind, readBind } from "./bind_notify.ts";
import { CreditBook } from "./credit_book.ts";
import { ChannelBase } from "../channel/base.ts";
import { PageGrantBook } from "../channel/grants.ts";
import { LeasePool, type PageLease } from "../channel/lease_pool.ts";
import { after, type Timer } from "../deadline.ts";
import {
  collectPdPool,
  type PdPoolView,
  type PdReceiverMetrics,
  pdReceiverMetrics,
} from "./metrics.ts";
import { metricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, weakly } from "../metrics/source.ts";
import {
  AllocRefusal,
  allocResponse,
  generationOfRequest,
  refusalReasonOf,
  refusalReply,
} from "./alloc_wire.ts";
import { toSafeInt, type WireInt } from "../channel/wire/mod.ts";
import {
  pdAllocDeadlines,
  pdAllocTimeoutFromConfig,
  type PdChannelSettings,
  pdChannelSettingsFromConfig,
  type PdConfigLike,
} from "./config.ts";
import type { PdReceiverStage, PdTimelineHook } from "./timeline.ts";

/** A chunk the receiver holds. */
export interface ReceivedChunk {
  /** The cache-engine key. */
  key: string;
  /** Page index in the receiver's buffer. */
  page: number;
  /** Whether the sender's WRITE notification has arrived (the data is complete). */
  landed: boolean;
  /** LMCache `MemoryFormat` value of the AllocRequest. */
  fmt: number;
  /** Shape of the chunk (token dimension set to this chunk's tokens). */
  shape: readonly number[];
  /** Data type name. */
  dtype: string;
  /** Tokens in this chunk. */
  tokens: number;
  /** Meaningful bytes at the start of the page. */
  bytes: number;
}

/** The longest reservation a sender's `kvport_ttl_ms` can ask for (a peer's claim). */
const MAX_DECLARED_TTL_MS = 600_000;

/** Default of {@linkcode PdReceiverOptions.creditMaxPerSender}. */
const DEFAULT_PD_CREDIT_MAX = 64;

/** Lifetime of credits when the sender declares none, ms. */
const DEFAULT_CREDIT_TTL_MS = 120_000;

/** Options of {@linkcode PdReceiver.create}. */
export interface PdReceiverOptions extends PdChannelSettings {
  /** `pd_peer_host`: the host senders reach this receiver at (also bound). */
  host: string;
  /** `pd_peer_init_port[tpRank]` (0: any free port, for tests). */
  initPort: number;
  /** `pd_peer_alloc_port[tpRank]` (0: any free port). */
  allocPort: number;
  /** Address to bind (default: `host`). */
  bindHost?: string;
  /** Tokens of a full chunk (`chunk_size`, default 256). */
  chunkSize?: number;
  /**
   * Longest wait for free pages, ms. Default: 80% of the senders' round trip
   * (`pd_allocation_timeout_sec`, 30 s when unset; see `pdAllocDeadlines`), so the
   * receiver gives up before its senders do and never reserves pages for a sender that
   * stopped waiting.
   */
  allocationTimeoutMs?: number;
  /**
   * With page grants on: how long a sender may WRITE the pages of an `AllocResponse`
   * that never landed nor was cancelled, ms (default 120000; 0: until landed or dropped).
   */
  pageGrantTtlMs?: number;
  /**
   * How long pages a sender cancelled (`CancelNotif`) stay out of use, ms: its WRITE may
   * still land (control and data planes are separate connections). Default: the
   * transfer timeout (`transferTimeoutMs`, else 30 s).
   */
  cancelQuarantineMs?: number;
  /**
   * Lifetime of a reservation whose data has not landed, ms: at its end the key is
   * dropped and its page returns to the pool (through the quarantine: a WRITE may still
   * be on its way). Default: what a kvport sender declares with its request
   * (`kvport_ttl_ms`: its round trip plus one transfer timeout, at most 10 minutes), so a
   * sender whose link died mid-WRITE leaves nothing reserved; `Infinity` for LMCache's
   * senders, which send no landed notification (their keys would expire however
   * complete: the decoder's retrieve or remove ends them).
   */
  reservationTtlMs?: number;
  /**
   * Page credits (kvport senders only): most pages one sender agent may hold ahead of
   * its requests (default 64; `fromConfig`: `extra_config.kvport_pd_credit_max`; 0: no
   * credits). A credit is taken only from pages free at that moment. A page a batch took
   * counts until its bind arrives: for a sender with requests in flight, room for its
   * stock and the pages of those requests. Such a sender's stock grows past its
   * `kvport_pd_credit_pages` to twice what its batches take during a refill's round trip
   * (see `PdSenderOptions.creditPages`): with N requests of B chunks in flight, about
   * (3 N + 2) B pages in all; less works, with batches waiting for refills.
   */
  creditMaxPerSender?: number;
  /**
   * Most credit pages all senders hold together (default a quarter of the pages, but at
   * least a sender's default stock of 16 or half of them, whichever is less: see
   * {@linkcode defaultCreditTotal}; `fromConfig`: `extra_config.kvport_pd_credit_total`).
   */
  creditMaxTotal?: number;
  /** Timing hook called at each stage (see `timeline.ts`; benchmarks). */
  timeline?: PdTimelineHook<PdReceiverStage>;
}

/** Counters of a {@linkcode PdReceiver}. */
export interface PdReceiverStats {
  /** Pages in the buffer. */
  pages: number;
  /** Pages free. */
  freePages: number;
  /** Pages out of use after a CancelNotif or an expiry, until a late WRITE can no longer land. */
  quarantinedPages: number;
  /** Keys held (allocated). */
  keys: number;
  /** Keys whose data has landed. */
  landed: number;
  /** AllocRequests answered with pages. */
  allocRequests: number;
  /**
   * Requests refused (answered `AllocResponse` with index -1 and a `kvport_reason`) and
   * peers dropped for breaking the protocol.
   */
  errors: number;
  /** AllocRequests that found no free pages in time (answered with index -1). */
  allocTimeouts: number;
  /** AllocRequests whose sender gave up (closed its connection) while they waited. */
  abandoned: number;
  /** Keys dropped by a sender's CancelNotif before their data landed. */
  cancelled: number;
  /** Reservations dropped because their data did not land within `reservationTtlMs`. */
  expired: number;
  /** Key-less AllocRequests of kvport senders that only asked for page credits. */
  creditRefills: number;
  /** Credit pages held by senders now (not bound yet). */
  creditPages: number;
  /** Credit pages given so far. */
  creditsGiven: number;
  /** Credit pages that expired unused (back through the quarantine). */
  creditsExpired: number;
  /**
   * Credit pages their sender gave back (`kvport_credit_return`: stale, its link was
   * reset, or it closed), ended through the quarantine.
   */
  creditsReturned: number;
  /** Bind notifications accepted (keys created landed in credit pages). */
  binds: number;
  /**
   * Bind notifications refused, by why: `malformed` (not a bind this receiver can read),
   * `not_credit` (a page is not a live credit of the sending agent: another agent's,
   * expired, bound already, never given), `chunk_too_large` (the shape does not fit a
   * page). A refused bind touches no entry; `lastError` says more.
   */
  bindsRefused: { malformed: number; not_credit: number; chunk_too_large: number };
  /** Keys of landed notifications ignored: sent by an agent other than the key's sender. */
  landedRefused: number;
}

interface Waiter {
  keys: string[];
  resolve: () => void;
  reject: (e: unknown) => void;
  timer?: Timer;
}

/**
 * The decoder (receiver) of disaggregated prefill. It listens on
 * `pd_peer_host:pd_peer_init_port[tp]` for handshakes and on
 * `pd_peer_host:pd_peer_alloc_port[tp]` for `AllocRequest`s; for each request it skips
 * keys it already holds, takes pages for the others (waiting at most
 * `pd_allocation_timeout_sec`), records the keys, and replies `AllocResponse` in the
 * request's LMCache generation (see `alloc_wire.ts`). Senders then WRITE into those
 * pages. A request it cannot serve (a chunk larger than a page, more chunks than the
 * buffer has, no free page in time, a malformed request) is answered with an
 * `AllocResponse` of `-1` indexes and a `kvport_reason`: LMCache's senders decode only PD
 * message types there.
 *
 * @example
 * ```ts
 * import { PdReceiver } from "@kvport/nixl";
 *
 * await using rx = await PdReceiver.create({
 *   host: "127.0.0.1", initPort: 0, allocPort: 0, bufferSize: 1 << 20, pageSize: 1 << 16,
 *   channelType: "mock_memory",
 * });
 * console.log(rx.id, rx.initUrl, rx.allocUrl);
 * ```
 */
export class PdReceiver implements AsyncDisposable {
  /**
   * Receiver id: `host:init_port` (`"localhost:7300"`, IPv6 hosts in brackets), the key
   * senders know it by. LMCache glues them (`"localhost7300"`), which makes
   * `127.0.0.1:54003` and `127.0.0.15:4003` one id; ours keeps them apart.
   */
  readonly id: string;
  /** The channel holding the pages. */
  readonly channel: TransferChannel;
  /** Pages of the buffer and who holds them: one lease per key held. */
  readonly pool: LeasePool;
  readonly #alloc: ControlServer;
  readonly #chunkSize: number;
  readonly #allocTimeoutMs: number;
  readonly #grants: PageGrantBook;
  readonly #grantTtlMs: number;
  readonly #entries = new Map<string, ReceivedChunk>();
  readonly #leases = new Map<
    string,
    { lease: PageLease; reqId: string | undefined; agent: string | undefined }
  >();
  readonly #credits: CreditBook;
  readonly #reservationTtlMs: number | undefined;
  #waiters: Waiter[] = [];
  #landedListeners = new Set<(keys: string[]) => void>();
  #unsubscribe: () => void;
  #stats = {
    allocRequests: 0,
    errors: 0,
    allocTimeouts: 0,
    abandoned: 0,
    cancelled: 0,
    expired: 0,
    creditRefills: 0,
    creditsReturned: 0,
    binds: 0,
    landedRefused: 0,
  };
  #bindsRefused = { malformed: 0, not_credit: 0, chunk_too_large: 0 };
  #lastError: string | null = null;
  #closing: Promise<void> | null = null;
  #metrics: PdReceiverMetrics | undefined;
  #metricsSource: CollectedSource;
  readonly #tl: PdTimelineHook<PdReceiverStage> | undefined;

  private constructor(
    id: string,
    channel: TransferChannel,
    alloc: ControlServer,
    options: PdReceiverOptions,
  ) {
    this.id = id;
    this.channel = channel;
    this.#alloc = alloc;
    this.pool = new LeasePool(channel.pageCount, {
      quarantineMs: options.cancelQuarantineMs ?? options.transferTimeoutMs ?? 30_000,
    });
    this.#chunkSize = options.chunkSize ?? 256;
    this.#allocTimeoutMs = options.allocationTimeoutMs ?? pdAllocDeadlines().receiverWaitMs;
    this.#reservationTtlMs = options.reservationTtlMs; // undefined: per request
    this.#grants = new PageGrantBook(channel);
    this.#grantTtlMs = options.pageGrantTtlMs ?? 120_000;
    this.#credits = new CreditBook(this.pool, this.#grants, {
      maxPerAgent: options.creditMaxPerSender ?? DEFAULT_PD_CREDIT_MAX,
      maxTotal: options.creditMaxTotal ?? defaultCreditTotal(channel.pageCount),
    });
    const tl = this.#tl = options.timeline;
    const offNotify = channel.onNotification((n) => {
      if (isBind(n.message)) {
        this.#bind(n.message, n.from);
        return;
      }
      const keys = decodeLanded(n.message);
      if (!keys) return;
      tl?.("notification", "", keys);
      this.#landed(keys, n.from);
      tl?.("landed", "", keys);
    });
    this.#unsubscribe = offNotify;
    const registry = options.metrics ?? metricsRegistry();
    this.#metrics = pdReceiverMetrics(registry, options.tpRank ?? 0);
    this.#metricsSource = collectPdPool(
      registry,
      "receiver",
      options.tpRank ?? 0,
      weakly(this, PdReceiver.#poolView),
    );
  }

  // Static: a closure made in the constructor would hold `this` (its context does).
  static #poolView(rx: PdReceiver): PdPoolView {
    const s = rx.stats;
    return { pages: s.pages, free: s.freePages, keys: { held: s.keys, landed: s.landed } };
  }

  /** Creates the channel (listening for handshakes) and the allocation listener. */
  static async create(options: PdReceiverOptions): Promise<PdReceiver> {
    checkBufferSizes(options.pageSize, options.bufferSize);
    for (const name of ["creditMaxPerSender", "creditMaxTotal"] as const) {
      const v = options[name];
      if (v !== undefined && (!Number.isSafeInteger(v) || v < 0)) {
        throw new ChannelError(
          "INVALID_ARGUMENT",
          `PdReceiver ${name} must be an integer >= 0 (0: no credits), got ${v}`,
        );
      }
    }
    const bindHost = options.bindHost ?? options.host;
    const channel = await createTransferChannel({
      channelType: options.channelType ?? "nixl",
      role: "receiver",
      bufferSize: options.bufferSize,
      alignBytes: options.pageSize,
      tpRank: options.tpRank ?? 0,
      peerInitUrl: joinHostPort(bindHost, options.initPort),
      backends: options.backends ?? null,
      device: options.device ?? "cpu",
      engine: options.engine,
      localId: undefined,
      handshakeTimeoutMs: options.handshakeTimeoutMs,
      transferTimeoutMs: options.transferTimeoutMs,
      libraryPath: options.libraryPath,
      agentParams: options.agentParams,
      pageGrants: options.pageGrants ?? true,
      metrics: options.metrics,
      curve: options.curve,
    });
    const initPort = Number(channel.initUrl!.slice(channel.initUrl!.lastIndexOf(":") + 1));
    const id = joinHostPort(options.host, initPort);
    const holder: { rx?: PdReceiver } = {};
    let alloc: ControlServer;
    try {
      alloc = await serveRequests(
        joinHostPort(bindHost, options.allocPort),
        (msg, from, gone) => {
          if (!holder.rx) throw new ChannelError("CLOSED", "PD receiver is starting");
          return holder.rx.#handleAlloc(msg, from, gone);
        },
        {
          maxMessageBytes: 16 * 1024 * 1024,
          onError: (e) => {
            if (holder.rx) holder.rx.#noteError(e);
          },
          errorReply: (e, request) => refusalReply(request, refusalReasonOf(e), e.message),
          curve: options.curve?.server,
        },
      );
    } catch (e) {
      await channel.close();
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `PD receiver cannot listen for AllocRequests on ` +
          `${joinHostPort(bindHost, options.allocPort)}: ${errorMessage(e)}`,
        { cause: e, url: joinHostPort(bindHost, options.allocPort) },
      );
    }
    const rx = new PdReceiver(id, channel, alloc, options);
    holder.rx = rx;
    return rx;
  }

  /**
   * Creates a receiver from a loaded configuration (`pd_peer_host`,
   * `pd_peer_init_port[tpRank]`, `pd_peer_alloc_port[tpRank]`, `pd_buffer_size`,
   * `pd_buffer_device`, `transfer_channel`, `nixl_backends`, `chunk_size`,
   * `pd_allocation_timeout_sec`, `extra_config.kvport_page_grants`,
   * `extra_config.kvport_pd_credit_max`, `extra_config.kvport_pd_credit_total`). `pageSize`
   * is the bytes of one full chunk.
   *
   * @example
   * ```ts
   * import { loadConfig, PdReceiver } from "@kvport/nixl";
   *
   * const { config } = loadConfig({ file: "lmcache-decoder-config.yaml" });
   * await using rx = await PdReceiver.fromConfig(config, { tpRank: 0, pageSize: 28 << 20 });
   * console.log(rx.id);
   * ```
   */
  static async fromConfig(
    config: PdConfigLike,
    options: { tpRank?: number; pageSize: number } & Partial<PdReceiverOptions>,
  ): Promise<PdReceiver> {
    const tpRank = options.tpRank ?? 0;
    const s = pdChannelSettingsFromConfig(config, "receiver", tpRank);
    const port = (list: readonly number[] | null, name: string): number => {
      if (!list || list.length === 0) {
        throw new ChannelError("INVALID_ARGUMENT", `a PD receiver needs ${name}`);
      }
      if (tpRank >= list.length) {
        throw new ChannelError(
          "INVALID_ARGUMENT",
          `${name} has ${list.length} port(s) [${list.join(", ")}] but TP rank ${tpRank} ` +
            `needs index ${tpRank}: give one port per TP rank`,
        );
      }
      return list[tpRank];
    };
    if (!config.pd_peer_host) {
      throw new ChannelError("INVALID_ARGUMENT", "a PD receiver needs pd_peer_host");
    }
    return await PdReceiver.create({
      ...s,
      host: config.pd_peer_host,
      initPort: port(config.pd_peer_init_port, "pd_peer_init_port"),
      allocPort: port(config.pd_peer_alloc_port, "pd_peer_alloc_port"),
      chunkSize: config.chunk_size,
      allocationTimeoutMs: pdAllocDeadlines(pdAllocTimeoutFromConfig(config)).receiverWaitMs,
      creditMaxPerSender: config.extra_config?.kvport_pd_credit_max,
      creditMaxTotal: config.extra_config?.kvport_pd_credit_total ?? undefined,
      ...options,
    });
  }

  /** `host:port` of the handshake listener. */
  get initUrl(): string {
    return this.channel.initUrl!;
  }

  /** `host:port` of the allocation listener. */
  get allocUrl(): string {
    return this.#alloc.url;
  }

  /** Port of the handshake listener. */
  get initPort(): number {
    return portOf(this.initUrl);
  }

  /** Port of the allocation listener. */
  get allocPort(): number {
    return portOf(this.allocUrl);
  }

  /** Counters. */
  get stats(): PdReceiverStats {
    let landed = 0;
    for (const e of this.#entries.values()) if (e.landed) landed++;
    return {
      pages: this.pool.pageCount,
      freePages: this.pool.free,
      quarantinedPages: this.pool.quarantined,
      keys: this.#entries.size,
      landed,
      ...this.#stats,
      creditPages: this.#credits.held(),
      creditsGiven: this.#credits.counts.given,
      creditsExpired: this.#credits.counts.expired,
      bindsRefused: { ...this.#bindsRefused },
    };
  }

  /** The last error a request was answered with, or `null`. */
  get lastError(): string | null {
    return this.#lastError;
  }

  /** Whether `key` is held (allocated; its data may still be on the way). */
  contains(key: string): boolean {
    return this.#entries.has(key);
  }

  /** Metadata of a held key, or `undefined`. */
  info(key: string): ReceivedChunk | undefined {
    const e = this.#entries.get(key);
    return e ? { ...e } : undefined;
  }

  /** Keys held now. */
  keys(): string[] {
    return [...this.#entries.keys()];
  }

  /**
   * A view of a held key's bytes in its page (only the chunk's meaningful bytes). Valid
   * until the key is retrieved or removed. Host buffers only: with `pd_buffer_device`
   * `cuda` the pages have no view and this throws; use {@linkcode PdReceiver.page}.
   */
  view(key: string): Uint8Array | undefined {
    const e = this.#entries.get(key);
    return e ? this.channel.pages[e.page].subarray(0, e.bytes) : undefined;
  }

  /**
   * The page holding a key (host or GPU: copy out of it with `read`/`copyTo`, or
   * `checksum` it) and the chunk's meaningful bytes in it; `undefined` when not held.
   *
   * @example
   * ```ts
   * import { PdReceiver } from "@kvport/nixl";
   * declare const rx: PdReceiver;
   * const held = rx.page("vllm@m@1@0@ab@bfloat16");
   * if (held) console.log(held.page.checksum(0, held.bytes));
   * ```
   */
  page(key: string): { page: ChannelPage; bytes: number } | undefined {
    const e = this.#entries.get(key);
    return e ? { page: this.channel.page(e.page), bytes: e.bytes } : undefined;
  }

  /**
   * Resolves once every key in `keys` has been allocated and its data has landed;
   * rejects with a {@linkcode ChannelTimeoutError} naming how many are missing after
   * `timeoutMs` (default 30000).
   */
  waitFor(keys: readonly string[], timeoutMs?: number): Promise<void> {
    timeoutMs ??= 30_000;
    if (this.#closing) {
      return Promise.reject(new ChannelError("CLOSED", "PD receiver is closed"));
    }
    const missing = keys.filter((k) => !this.#entries.get(k)?.landed);
    if (missing.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = { keys: missing, resolve, reject };
      if (Number.isFinite(timeoutMs)) {
        w.timer = after(timeoutMs, () => {
          this.#waiters = this.#waiters.filter((x) => x !== w);
          const left = w.keys.filter((k) => !this.#entries.get(k)?.landed);
          const notAllocated = left.filter((k) => !this.#entries.has(k)).length;
          reject(
            new ChannelTimeoutError("waitFor", timeoutMs, {
              peerId: this.id,
              hint: `${left.length} of ${keys.length} key(s) have not landed ` +
                `(${notAllocated} never allocated), first: ${left[0]}`,
            }),
          );
        });
      }
      this.#waiters.push(w);
    });
  }

  /**
   * Takes a key out: returns a copy of its bytes and metadata and frees its page.
   * `undefined` when the key is not held.
   */
  retrieve(key: string): { data: Uint8Array; info: ReceivedChunk } | undefined {
    const e = this.#entries.get(key);
    if (!e) return undefined;
    const data = this.channel.page(e.page).read(0, e.bytes);
    void this.#drop(key);
    return { data, info: e };
  }

  /** Frees a key's page; `false` when the key is not held. */
  remove(key: string): boolean {
    const e = this.#entries.get(key);
    if (!e) return false;
    void this.#drop(key);
    return true;
  }

  /**
   * Forgets a key; `inFlight`: its page may still receive a WRITE (quarantine). The
   * sender's grant on the page is revoked before the page can be granted again (the
   * grant book runs in call order); the promise settles when it is.
   */
  #drop(key: string, inFlight = false): Promise<void> {
    const e = this.#entries.get(key);
    this.#entries.delete(key);
    const held = this.#leases.get(key);
    this.#leases.delete(key);
    const revoked = e ? this.#grants.release([e.page]) : Promise.resolve();
    held?.lease.release({ inFlight });
    return revoked;
  }

  /**
   * Calls `handler` with the keys of every WRITE whose data has landed (from the
   * sender's notification; LMCache senders send none). Returns the unsubscribe function.
   */
  onLanded(handler: (keys: string[]) => void): () => void {
    this.#landedListeners.add(handler);
    return () => {
      this.#landedListeners.delete(handler);
    };
  }

  #landed(keys: string[], from: string): void {
    const fresh: string[] = [];
    for (const k of keys) {
      const e = this.#entries.get(k);
      if (e && !e.landed) {
        const held = this.#leases.get(k);
        // Only the agent the pages were given to says its data is there (keys of an
        // LMCache sender name no agent: anyone's word, as before).
        if (held?.agent !== undefined && held.agent !== from) {
          this.#stats.landedRefused++;
          this.#lastError = `landed notification from agent ${from} for key ${k}, whose ` +
            `pages were given to agent ${held.agent}: ignored`;
          continue;
        }
        e.landed = true;
        held?.lease.renew(Infinity); // complete: no deadline any more
        fresh.push(k);
      }
    }
    // Landed: the sender is done with these pages.
    if (fresh.length > 0) void this.#grants.release(fresh.map((k) => this.#entries.get(k)!.page));
    this.#announce(fresh);
  }

  /** Tells metrics, listeners and waiters that `fresh` keys landed. */
  #announce(fresh: string[]): void {
    const m = this.#metrics;
    if (m !== undefined && fresh.length > 0) {
      let bytes = 0;
      for (const k of fresh) bytes += this.#entries.get(k)!.bytes;
      m.receivedBytes.inc(bytes);
      m.receivedChunks.inc(fresh.length);
    }
    if (fresh.length > 0) {
      for (const l of this.#landedListeners) {
        try {
          l(fresh);
        } catch {
          // A listener's failure is its own.
        }
      }
    }
    if (this.#waiters.length === 0) return;
    this.#waiters = this.#waiters.filter((w) => {
      w.keys = w.keys.filter((k) => !this.#entries.get(k)?.landed);
      if (w.keys.length > 0) return true;
      w.timer?.clear();
      w.resolve();
      return false;
    });
  }

  async #handleAlloc(msg: SideMessage, from: string, gone: AbortSignal): Promise<SideMessage> {
    try {
      switch (msg.type) {
        case "AllocRequest": {
          const tl = this.#tl;
          if (!tl) return await this.#allocate(msg, from, gone);
          const reqId = typeof msg.req_id === "string" ? msg.req_id : "";
          const keys = Array.isArray(msg.keys) ? msg.keys as string[] : [];
          tl("alloc_received", reqId, keys);
          const reply = await this.#allocate(msg, from, gone);
          tl("alloc_replied", reqId, keys);
          return reply;
        }
        case "CancelNotif":
          return await this.#cancel(msg);
        default:
          throw new AllocRefusal(
            "bad_request",
            `unexpected ${msg.type} on the allocation socket (expected AllocRequest or ` +
              "CancelNotif)",
          );
      }
    } catch (e) {
      this.#lastError = errorMessage(e);
      if (msg.type === "AllocRequest") this.#metrics?.allocError.inc();
      throw e;
    }
  }

  #noteError(e: Error): void {
    this.#stats.errors++;
    this.#lastError = e.message;
  }

  async #allocate(msg: SideMessage, from: string, gone: AbortSignal): Promise<SideMessage> {
    const generation = generationOfRequest(msg);
    // Integers arrive exact (bigint beyond 2^53); none of these can be that large.
    const int = (v: unknown, field: string): number => {
      try {
        return toSafeInt(v as WireInt, field, "AllocRequest");
      } catch (e) {
        throw new AllocRefusal("bad_request", `AllocRequest from ${from}: ${errorMessage(e)}`);
      }
    };
    const keys = msg.keys as string[];
    const fmt = int(msg.fmt, "fmt");
    const shape = (msg.shape as WireInt[]).map((x, i) => int(x, `shape[${i}]`));
    const dtype = msg.dtype as string;
    const lastToks = int(msg.last_chunk_toks, "last_chunk_toks");
    const totalChunks = msg.total_chunks === undefined ? 0 : int(msg.total_chunks, "total_chunks");
    const full = chunkBytes(fmt, shape, dtype);
    if (full !== undefined && full > this.channel.pageSize) {
      throw new AllocRefusal(
        "chunk_too_large",
        `AllocRequest from ${from}: a chunk of shape [${shape.join(", ")}] ${dtype} is ` +
          `${full} bytes but pages are ${this.channel.pageSize} bytes: ` +
          "sender and receiver must use the same chunk size and KV shape",
      );
    }
    if (totalChunks > this.pool.pageCount) {
      throw new AllocRefusal(
        "pool_too_small",
        `AllocRequest from ${from}: request ${JSON.stringify(msg.req_id ?? "")} declares ` +
          `total_chunks ${totalChunks} but the buffer has ${this.pool.pageCount} pages: ` +
          "give the receiver a larger pd_buffer_size",
      );
    }
    const already: number[] = [];
    const need: number[] = [];
    const seen = new Set<string>();
    keys.forEach((k, i) => {
      if (this.#entries.has(k) || seen.has(k)) already.push(i);
      else need.push(i);
      seen.add(k);
    });
    if (need.length > this.pool.pageCount) {
      throw new AllocRefusal(
        "pool_too_small",
        `AllocRequest from ${from}: ${need.length} page(s) wanted but the buffer has ` +
          `${this.pool.pageCount}: send smaller batches or give the receiver a larger ` +
          "pd_buffer_size",
      );
    }
    const reqId = typeof msg.req_id === "string" && msg.req_id !== "" ? msg.req_id : undefined;
    const agent = typeof msg.kvport_agent === "string" && msg.kvport_agent !== ""
      ? msg.kvport_agent
      : undefined;
    const creditWant = msg.kvport_credit_want === undefined
      ? undefined
      : int(msg.kvport_credit_want, "kvport_credit_want");
    // Credits the sender no longer uses (of that agent only: other pages are ignored).
    if (agent !== undefined && Array.isArray(msg.kvport_credit_return)) {
      const back = (msg.kvport_credit_return as unknown[]).filter((p): p is number =>
        typeof p === "number" && Number.isSafeInteger(p)
      );
      this.#stats.creditsReturned += this.#credits.giveBack(agent, back);
    }
    const reservationTtl = this.#reservationTtlFor(msg);
    let lease: PageLease | undefined;
    if (need.length > 0) {
      const m = this.#metrics;
      const t0 = m !== undefined && this.pool.free < need.length ? performance.now() : 0;
      try {
        // Waits no longer than the sender does (see pdAllocDeadlines), and not at all
        // once the sender's connection closed: pages found then would be reserved for a
        // reply nobody reads, and held until the pool starves.
        lease = await this.pool.acquire(need.length, {
          owner: `AllocRequest ${reqId ?? ""} from ${from}`,
          timeoutMs: this.#allocTimeoutMs,
          signal: gone,
        });
      } catch (e) {
        if (t0) {
          m!.allocWaits.inc();
          m!.allocWaitSeconds.observe((performance.now() - t0) / 1000);
        }
        if (gone.aborted) throw this.#abandoned(from, need.length, e);
        if (!(e instanceof ChannelTimeoutError)) throw e;
        m?.allocTimeout.inc();
        // LMCache's answer to a failed allocation: remote index -1 for each such key.
        this.#stats.errors++;
        this.#stats.allocTimeouts++;
        this.#lastError = `AllocRequest from ${from}: ${need.length} page(s) wanted, ` +
          `${this.pool.free} of ${this.pool.pageCount} free after ${this.#allocTimeoutMs} ms ` +
          "(pd_allocation_timeout_sec)";
        return refusalReply(
          msg,
          "no_free_pages",
          `${this.#lastError}: retrieve or remove keys on the receiver, or give it a ` +
            "larger pd_buffer_size",
        );
      }
      if (t0) {
        m!.allocWaits.inc();
        m!.allocWaitSeconds.observe((performance.now() - t0) / 1000);
      }
      if (gone.aborted) {
        lease.release();
        throw this.#abandoned(from, need.length, gone.reason);
      }
      this.#tl?.("pages_reserved", typeof msg.req_id === "string" ? msg.req_id : "", keys);
    }
    // Keys allocated by another request while this one waited are already there now.
    const remote: number[] = [];
    const granted: { key: string; entry: ReceivedChunk }[] = [];
    const spare: number[] = [];
    let pi = 0;
    const finalAlready = [...already];
    const pages = lease ? [...lease.pages] : [];
    for (const i of need) {
      const page = pages[pi++];
      const key = keys[i];
      if (this.#entries.has(key)) {
        finalAlready.push(i);
        spare.push(page);
        continue;
      }
      const tokens = i === keys.length - 1 ? lastToks : this.#chunkSize;
      const bytes = chunkBytes(fmt, shape, dtype, tokens) ?? this.channel.pageSize;
      const entry: ReceivedChunk = {
        key,
        page,
        landed: false,
        fmt,
        shape: withTokens(fmt, shape, tokens),
        dtype,
        tokens,
        bytes: Math.min(bytes, this.channel.pageSize),
      };
      this.#entries.set(key, entry);
      // One lease per key: retrieve, remove, cancel and expiry each end exactly its own.
      const own = lease!.moveTo([page], key, {
        ttlMs: reservationTtl,
        onExpire: () => this.#expired(key),
      });
      own.handTo(from);
      this.#leases.set(key, { lease: own, reqId, agent });
      granted.push({ key, entry });
      remote.push(page);
    }
    if (spare.length > 0) lease!.release({ pages: spare });
    if (remote.length > 0 && this.#grants.enforced) await this.#grantSender(msg, from, granted);
    finalAlready.sort((a, b) => a - b);
    if (keys.length > 0) this.#stats.allocRequests++;
    else if (creditWant !== undefined) this.#stats.creditRefills++;
    this.#metrics?.allocOk.inc();
    const reply = allocResponse(generation, remote, finalAlready);
    // Only a kvport sender asks; LMCache's reply bytes stay LMCache's.
    if (creditWant !== undefined) {
      const ttlMs = this.#creditTtlFor(msg);
      const credits = await this.#giveCredits(agent, creditWant, ttlMs);
      // Nobody reads the reply of a sender that gave up: its credits are no one's.
      if (gone.aborted && agent !== undefined) this.#credits.giveBack(agent, credits);
      reply.kvport_credit = gone.aborted ? [] : credits;
      reply.kvport_credit_ttl_ms = ttlMs;
    }
    return reply;
  }

  /**
   * Page credits for `agent`: only to a named agent this receiver knows (it handshook;
   * with grants enforced the grant itself checks that), only from pages free now, within
   * the limits. Never fails the request that asked: none is none.
   */
  #giveCredits(agent: string | undefined, want: number, ttlMs: number): Promise<number[]> {
    if (agent === undefined || want <= 0 || this.#closing) return Promise.resolve([]);
    if (!this.#grants.enforced) {
      const ch = this.channel;
      const known = ch instanceof ChannelBase &&
        ch.peerIds.some((id) => ch.peerAgentName(id) === agent);
      if (!known) return Promise.resolve([]);
    }
    return this.#credits.give(agent, want, ttlMs);
  }

  /** How long credits live: what the sender declared (capped), else 2 minutes. */
  #creditTtlFor(msg: SideMessage): number {
    const declared = msg.kvport_credit_ttl_ms;
    if (typeof declared === "bigint") return MAX_DECLARED_TTL_MS;
    if (typeof declared !== "number" || !Number.isSafeInteger(declared) || declared <= 0) {
      return DEFAULT_CREDIT_TTL_MS;
    }
    return Math.min(declared, MAX_DECLARED_TTL_MS);
  }

  /**
   * A bind notification from agent `from`: its data is in `from`'s credit pages (the
   * notification comes after the data), so the keys are created landed. All or nothing:
   * a bind with a page that is not a live credit of `from`, a shape larger than a page,
   * or bytes that do not decode is refused and touches no entry.
   */
  #bind(bytes: Uint8Array, from: string): void {
    let n: BindNotice;
    try {
      n = readBind(bytes); // the caller asked isBind: the prefix is there
    } catch (e) {
      this.#refuseBind("malformed", `from agent ${from}: ${errorMessage(e)}`);
      return;
    }
    const { keys, pages } = n;
    const count = keys.length;
    for (let i = 0; i < count; i++) {
      if (!this.#credits.isCreditOf(pages[i], from)) {
        this.#refuseBind(
          "not_credit",
          `from agent ${from}: page ${pages[i]} is not a live credit of that agent (another ` +
            "agent's, expired, bound already, or never given)",
        );
        return;
      }
    }
    const pageSize = this.channel.pageSize;
    const full = chunkBytes(n.fmt, n.shape, n.dtype);
    if (full !== undefined && full > pageSize) {
      this.#refuseBind(
        "chunk_too_large",
        `from agent ${from}: a chunk of shape [${n.shape.join(", ")}] ${n.dtype} is ${full} ` +
          `bytes but pages are ${pageSize} bytes`,
      );
      return;
    }
    const tl = this.#tl;
    tl?.("notification", n.reqId, keys);
    const reqId = n.reqId === "" ? undefined : n.reqId;
    const fresh: string[] = [];
    // Every key but perhaps the last is a full chunk: its size and shape are worked out
    // once (the shape is shared by those entries: it is read-only).
    const chunk = this.#chunkSize;
    const chunkSize = Math.min(chunkBytes(n.fmt, n.shape, n.dtype, chunk) ?? pageSize, pageSize);
    const fullShape = withTokens(n.fmt, n.shape, chunk);
    // The pages go out of their lots (a lease per reply of credits; usually one for the
    // whole bind), then each lot moves its pages to a lease per key in one pass.
    let lot: PageLease | undefined;
    const lotPages: number[] = [];
    const lotKeys: string[] = [];
    let others: Map<PageLease, { pages: number[]; keys: string[] }> | undefined;
    for (let i = 0; i < count; i++) {
      const key = keys[i];
      const page = pages[i];
      const lease = this.#credits.take(page);
      if (this.#entries.has(key)) {
        // Held already: the page was written (completely), so it is simply free again.
        lease.release({ pages: [page] });
        continue;
      }
      const tokens = n.lastChunkToks !== null && i === count - 1 ? n.lastChunkToks : chunk;
      const full = tokens === chunk;
      this.#entries.set(key, {
        key,
        page,
        landed: true,
        fmt: n.fmt,
        shape: full ? fullShape : withTokens(n.fmt, n.shape, tokens),
        dtype: n.dtype,
        tokens,
        bytes: full
          ? chunkSize
          : Math.min(chunkBytes(n.fmt, n.shape, n.dtype, tokens) ?? pageSize, pageSize),
      });
      if (lot === undefined) lot = lease;
      if (lease === lot) {
        lotPages.push(page);
        lotKeys.push(key);
      } else {
        others ??= new Map();
        let g = others.get(lease);
        if (!g) others.set(lease, g = { pages: [], keys: [] });
        g.pages.push(page);
        g.keys.push(key);
      }
      fresh.push(key);
    }
    if (lot !== undefined) this.#bindLot(lot, lotPages, lotKeys, reqId, from);
    if (others) { for (const [l, g] of others) this.#bindLot(l, g.pages, g.keys, reqId, from); }
    // Bound (or spare): the sender is done with these pages. The grant book runs in call
    // order, so a spare page is revoked before it can be granted to anyone again.
    void this.#grants.release(pages);
    this.#stats.binds++;
    this.#announce(fresh);
    tl?.("landed", n.reqId, keys);
  }

  /** Moves `pages` of credit lot `lot` to a lease per key (`keys`, one per page). */
  #bindLot(
    lot: PageLease,
    pages: number[],
    keys: string[],
    reqId: string | undefined,
    agent: string,
  ): void {
    const moved = lot.moveEach(pages, keys);
    for (let i = 0; i < keys.length; i++) {
      this.#leases.set(keys[i], { lease: moved[i], reqId, agent });
    }
  }

  #refuseBind(why: keyof PdReceiver["stats"]["bindsRefused"], detail: string): void {
    this.#bindsRefused[why]++;
    this.#lastError = `bind notification refused (${why}) ${detail}`;
  }

  /**
   * Grants the sender named by the request (`kvport_agent`) WRITE on exactly `pages`,
   * before the reply tells it them; refuses the request (dropping its pages) when the
   * sender is not named or not known.
   */
  async #grantSender(
    msg: SideMessage,
    from: string,
    held: readonly { key: string; entry: ReceivedChunk }[],
  ): Promise<void> {
    const agent = msg.kvport_agent;
    const pages = held.map((h) => h.entry.page);
    let why: string | undefined;
    if (typeof agent !== "string" || agent === "") {
      why = "it names no kvport_agent: this receiver enforces page grants and grants the " +
        "pages to the sender's agent (an older kvport sender? or turn grants off with " +
        "extra_config.kvport_page_grants: false)";
    } else {
      try {
        await this.#grants.grantWrite(agent, pages, this.#grantTtlMs);
      } catch (e) {
        why = `granting agent ${agent} WRITE on ${pages.length} page(s) failed ` +
          `(handshake first): ${errorMessage(e)}`;
      }
    }
    if (why === undefined) return;
    for (const h of held) {
      // Only entries still ours: a CancelNotif during the wait may have dropped one.
      if (this.#entries.get(h.key) === h.entry) void this.#drop(h.key);
    }
    throw new AllocRefusal("bad_request", `AllocRequest from ${from}: ${why}`);
  }

  #abandoned(from: string, pages: number, cause: unknown): ChannelError {
    this.#stats.abandoned++;
    return new ChannelError(
      "CLOSED",
      `AllocRequest from ${from}: the sender gave up (its connection closed) while ` +
        `${pages} page(s) were wanted; none are kept for it`,
      { op: "alloc", cause },
    );
  }

  /**
   * The lifetime of this request's reservations: the option when set; else what a kvport
   * sender declared (`kvport_ttl_ms`, a positive integer, capped); else none (LMCache).
   */
  #reservationTtlFor(msg: SideMessage): number {
    if (this.#reservationTtlMs !== undefined) return this.#reservationTtlMs;
    const declared = msg.kvport_ttl_ms; // an int of the wire: a number, or a bigint past 2^53
    if (typeof declared === "bigint") return declared > 0n ? MAX_DECLARED_TTL_MS : Infinity;
    if (typeof declared !== "number" || !Number.isSafeInteger(declared) || declared <= 0) {
      return Infinity;
    }
    return Math.min(declared, MAX_DECLARED_TTL_MS);
  }

  /** A reservation whose data did not land in time: its page is back in the pool. */
  #expired(key: string): void {
    // The page went to quarantine with its lease (releasing it again is a no-op); the
    // key and the sender's grant go as on any drop.
    void this.#drop(key);
    this.#stats.expired++;
  }

  async #cancel(msg: SideMessage): Promise<SideMessage> {
    const keys = Array.isArray(msg.keys) ? msg.keys as string[] : [];
    const reqId = typeof msg.req_id === "string" && msg.req_id !== "" ? msg.req_id : undefined;
    const revoked: Promise<void>[] = [];
    for (const k of keys) {
      const e = this.#entries.get(k);
      const held = this.#leases.get(k);
      // A request cancels only its own reservations (a later request may hold the key).
      const mine = reqId === undefined || held?.reqId === undefined || held.reqId === reqId;
      if (e && !e.landed && mine) {
        // The cancelled WRITE may still land: the page sits out the quarantine, so the
        // next owner never sees those bytes.
        revoked.push(this.#drop(k, true));
        this.#stats.cancelled++;
        this.#metrics?.cancelledChunks.inc();
      }
    }
    // The acknowledgement comes once the sender can no longer write those pages.
    await Promise.all(revoked);
    // REP must answer; LMCache's async receiver acknowledges with an empty AllocResponse.
    return allocResponse("async", [], []);
  }

  /** Stops listening, fails pending waits, closes the channel. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#unsubscribe();
      await this.#metricsSource.retire();
      for (const w of this.#waiters.splice(0)) {
        w.timer?.clear();
        w.reject(new ChannelError("CLOSED", `PD receiver ${this.id} closed while waiting`));
      }
      this.#credits.close();
      this.pool.close();
      await this.#alloc.close().catch(() => {});
      await this.channel.close();
    })();
    return this.#closing;
  }

  /** Same as `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * The default of {@linkcode PdReceiverOptions.creditMaxTotal} for a buffer of `pages`
 * pages: a quarter of them, but at least 16 (a sender's default stock,
 * `kvport_pd_credit_pages`) or half of them, whichever is less. A sender uses credits
 * only for a whole batch, so with a quarter of a small buffer (8 of 32 pages, 1 of 6)
 * a sender's batches of more than that always asked, and the credit pages it held sat
 * idle; half of the buffer still leaves the other half to AllocRequests.
 *
 * @example
 * ```ts
 * import { defaultCreditTotal } from "./receiver.ts";
 * console.log(defaultCreditTotal(6), defaultCreditTotal(32), defaultCreditTotal(400)); // 3 16 100
 * ```
 */
export function defaultCreditTotal(pages: number): number {
  return Math.max(
    Math.floor(pages / 4),
    Math.min(DEFAULT_SENDER_CREDIT_STOCK, Math.floor(pages / 2)),
  );
}

/** A sender's default stock of credits (`kvport_pd_credit_pages`'s default). */
const DEFAULT_SENDER_CREDIT_STOCK = 16;

function portOf(url: string): number {
  return Number(url.slice(url.lastIndexOf(":") + 1));
}
