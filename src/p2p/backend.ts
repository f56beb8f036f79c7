/**
 * `P2PBackend`: one instance of P2P KV sharing (LMCache's `P2PBackend`): a channel whose
 * pages hold chunks, a local chunk store, the lookup port peers fetch from, and the
 * registry client that reports what it holds and finds holders for what it lacks.
 *
 * @module
 */

import { ChannelError, ChannelTimeoutError, timeoutOf } from "../channel/errors.ts";
import { openRequester, type Requester } from "../channel/control.ts";
import { errorMessage, joinHostPort } from "../channel/_util.ts";
import { checkBufferSizes, createTransferChannel } from "../channel/factory.ts";
import type { SideChannelCurve } from "../channel/curve_config.ts";
import { PageGrantBook } from "../channel/grants.ts";
import type { SideMessage, TransferChannel } from "../channel/types.ts";
import {
  type BatchedLookupAndGetMsg,
  encodeMessage,
  type LmcacheMessage,
  P2PErrorCode,
  RepSocket,
  toSafeInt,
  WireMessageError,
} from "../channel/wire/mod.ts";
import { LeasePool, type PageLease } from "../channel/lease_pool.ts";
import { type P2PConfigLike, p2pOptionsFromConfig } from "./config.ts";
import { P2PError } from "./errors.ts";
import { chunkHashOf } from "./hash.ts";
import { RegistryClient } from "./registry_client.ts";
import { ChunkStore } from "./store.ts";
import { collectP2PBackend, type P2PMetrics, p2pMetrics } from "./metrics.ts";
import { type MetricsRegistry, metricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, weakly } from "../metrics/source.ts";
import { countMessageError } from "../channel/wire/metrics.ts";
import { decodeGetRequest, encodeGetReply } from "../channel/wire/get_codec.ts";
import type { P2PTimelineHook } from "./timeline.ts";

/** Options of {@linkcode P2PBackend.create}. */
export interface P2PBackendOptions {
  /** `lmcache_instance_id`: this instance's id at the registry. */
  instanceId: string;
  /** Tensor-parallel rank: the worker id (default 0). */
  tpRank?: number;
  /** `p2p_host`: the host peers reach this instance at (also bound). */
  host: string;
  /** `p2p_init_ports[tpRank]`: the handshake port (0: any free port, for tests). */
  initPort: number;
  /** `p2p_lookup_ports[tpRank]`: the lookup port (0: any free port). */
  lookupPort: number;
  /** Address to bind (default: `host`). */
  bindHost?: string;
  /** Bytes of one full KV chunk: the page size. */
  pageSize: number;
  /** Bytes of the page buffer (aligned down to `pageSize`): chunks held plus fetches. */
  bufferSize: number;
  /** `transfer_channel`: `"nixl"` (default) or `"mock_memory"`. */
  channelType?: "nixl" | "mock_memory";
  /** `nixl_backends` (null: `["UCX"]`). */
  backends?: readonly string[] | null;
  /** Buffer device: only `"cpu"` for now. */
  device?: string | null;
  /** Engine of the NIXL channel: `"auto"` (default), `"builtin"`, `"nixl"`. */
  engine?: "auto" | "builtin" | "nixl";
  /** Handshake deadline, ms (default 10000). */
  handshakeTimeoutMs?: number;
  /**
   * Deadline of the holder's WRITE of one lookup, ms (default 80% of
   * `lookupRecvTimeoutMs`, so the holder answers before the requester gives up).
   */
  transferTimeoutMs?: number;
  /** Path of libkvport.so. */
  libraryPath?: string;
  /** Extra agent parameters. */
  agentParams?: Readonly<Record<string, string>>;
  /**
   * Enforce page grants on the channel (default true; `extra_config.kvport_page_grants`):
   * a holder reaches only the pages this instance offered for that lookup, until the
   * reply; nobody reaches this instance's chunks. Enforced by the builtin engine; the
   * nixl engine cannot (the channel warns).
   */
  pageGrants?: boolean;
  /** `controller_pull_url`: where reports go (null: no reports). */
  registryPullUrl?: string | null;
  /** `controller_reply_url`: where lookups go (null: no lookups). */
  registryReplyUrl?: string | null;
  /** IP named in RegisterMsg (default `host`). */
  workerIp?: string;
  /** Port named in RegisterMsg (`lmcache_worker_ports[tpRank]`, default 0). */
  workerPort?: number;
  /** Storage location named in reports (default `"LocalCPUBackend"`, as LMCache). */
  location?: string;
  /** Heartbeat period, ms (default 10000; null: none). */
  heartbeatIntervalMs?: number | null;
  /** Delay before the first heartbeat, ms (default: one period). */
  heartbeatDelayMs?: number;
  /** `p2p_socket_recv_timeout_ms`: deadline of a lookup's reply (default 30000). */
  lookupRecvTimeoutMs?: number;
  /** `p2p_socket_send_timeout_ms`: deadline of a send or connection (default 10000). */
  lookupSendTimeoutMs?: number;
  /** `p2p_max_retry_count`: retries after error 3 or a lost reply (default 3). */
  maxRetryCount?: number;
  /**
   * CURVE on the handshake and lookup side channels (`extra_config.curve_*`): `server`
   * for the listeners, `client` for the connections to holders. Default NULL.
   */
  curve?: SideChannelCurve;
  /**
   * How long the pages of a request whose reply never came stay out of use (the holder may
   * still be writing into them; a retry takes fresh pages), ms (default
   * `lookupRecvTimeoutMs`, which covers a holder with the same settings: its WRITE
   * deadline is 80% of it).
   */
  quarantineMs?: number;
  /** After a failed handshake, fetches from that holder fail at once for this long (ms, default 5000). */
  deadPeerBackoffMs?: number;
  /** Longest wait for free pages for a fetch, ms (default 5000). */
  allocTimeoutMs?: number;
  /** The chunk hash of a key (default {@linkcode chunkHashOf}). */
  hashOf?: (key: string) => bigint;
  /** Registry this instance and its channel are counted in (default: `metricsRegistry()`). */
  metrics?: MetricsRegistry;
  /** Timing hook called at each stage of a retrieve or a served request (`timeline.ts`). */
  timeline?: P2PTimelineHook;
}

/** The holder a lookup found. */
export interface P2PHolder {
  /** Its instance id. */
  instanceId: string;
  /** Its storage location. */
  location: string;
  /** Its P2P init URL (also its peer id here). */
  peerInitUrl: string;
}

/** What {@linkcode P2PBackend.lookup} found. */
export interface P2PLookupResult {
  /** Id of the lookup (sent as `lookup_id`). */
  lookupId: string;
  /** The keys asked, in prefix order. */
  keys: readonly string[];
  /** Leading chunks the registry says the holder has (0: a miss). */
  hitChunks: number;
  /** The holder, or `null` on a miss. */
  holder: P2PHolder | null;
  /** Why the lookup failed, when it did (then it counts as a miss). */
  error?: P2PError;
}

/** What {@linkcode P2PBackend.fetch} got. */
export interface P2PFetchResult {
  /** Id of the lookup. */
  lookupId: string;
  /** Leading chunks now in `pages` (the holder's own count: it may be below `promised`). */
  hitChunks: number;
  /** Their keys. */
  keys: string[];
  /**
   * Local pages holding them, in key order. They are the caller's: `release()` them, or
   * `put()` them to keep the chunks (and hold them for others).
   */
  pages: number[];
  /** The holder asked, or `null`. */
  holder: P2PHolder | null;
  /** Chunks the registry promised. */
  promised: number;
  /** Requests sent to the holder (1 + retries). */
  attempts: number;
  /** Handshakes this fetch made (a re-handshake after error 3 or a restart counts). */
  handshakes: number;
  /** Seconds from the start of the fetch to the data in place. */
  seconds: number;
  /** Why the fetch failed, when it did (then `hitChunks` is 0). */
  error?: P2PError;
}

/** Counters of a {@linkcode P2PBackend}. */
export interface P2PBackendStats {
  /** Chunks held. */
  chunks: number;
  /** Pages free. */
  freePages: number;
  /** Pages held back after a fetch whose reply never came. */
  quarantinedPages: number;
  /** Registry lookups. */
  lookups: number;
  /** Chunks the registry promised, summed. */
  promisedChunks: number;
  /** Fetches that asked a holder. */
  fetches: number;
  /** Chunks fetched. */
  fetchedChunks: number;
  /** Lookups and fetches that failed. */
  errors: number;
  /** Handshakes made. */
  handshakes: number;
  /** Requests sent again (after error 3 or a lost reply). */
  retries: number;
  /** Lookup requests this instance answered as a holder. */
  served: number;
  /** Chunks it wrote to requesters. */
  servedChunks: number;
  /** Requests it answered with `P2PErrorMsg`. */
  servedErrors: number;
  /** Chunks admitted (reported). */
  admitted: number;
  /** Chunks evicted (reported). */
  evicted: number;
}

interface PeerLink {
  url: string;
  lookupUrl: string;
  requester: Requester;
  generation: number;
}

/** Owner prefix of the leases of chunks held. */
const CHUNK = "chunk ";

const RETRYABLE_WRITE = new Set(["UNKNOWN_PEER", "TRANSFER_FAILED", "TIMEOUT", "PEER_RESTARTED"]);

/**
 * One instance of P2P KV-cache sharing.
 *
 * As a **holder** it keeps chunks in pages of its channel ({@linkcode store} /
 * {@linkcode put}, {@linkcode evict}), reports each admit and evict to the registry, and
 * answers `BatchedLookupAndGetMsg` on its lookup port: it pins the leading chunks it
 * still has, WRITEs them into the requester's pages, and replies
 * `BatchedLookupAndGetRetMsg{num_hit_chunks}`. A chunk evicted after the registry's
 * answer is simply not in that prefix; a pinned chunk's page is never reused before the
 * WRITE ends.
 *
 * As a **requester** it {@linkcode lookup}s a request's keys at the registry, handshakes
 * once with the holder (concurrent fetches share one handshake; the side message
 * `P2PInitSideMsg` returns the holder's lookup URL), and {@linkcode fetch}es: the holder
 * writes the hit prefix into freshly allocated pages. `P2PErrorMsg` 3 (the holder does
 * not know us: it restarted) or a lost reply re-handshakes and retries, at most
 * `maxRetryCount` times. Failures are misses with an `error`, never wrong bytes.
 *
 * @example
 * ```ts
 * import { P2PBackend, P2PRegistry } from "@kvport/nixl";
 *
 * await using registry = await P2PRegistry.listen({ pullUrl: "127.0.0.1:0", replyUrl: "127.0.0.1:0" });
 * const common = {
 *   host: "127.0.0.1", initPort: 0, lookupPort: 0, pageSize: 4096, bufferSize: 64 * 4096,
 *   channelType: "mock_memory" as const, registryPullUrl: registry.pullUrl,
 *   registryReplyUrl: registry.replyUrl,
 * };
 * await using holder = await P2PBackend.create({ ...common, instanceId: "holder" });
 * await using requester = await P2PBackend.create({ ...common, instanceId: "requester" });
 * const keys = ["vllm@m@1@0@a1@bfloat16", "vllm@m@1@0@a2@bfloat16"];
 * for (const k of keys) await holder.store(k, new Uint8Array(4096).fill(7));
 * await holder.flushReports();
 * const got = await requester.retrieve(keys);
 * console.log(got.hitChunks, requester.channel.pages[got.pages[0]][0]); // 2 7
 * requester.release(got.pages);
 * ```
 */
export class P2PBackend implements AsyncDisposable {
  /** The channel whose pages hold the chunks. */
  readonly channel: TransferChannel;
  /**
   * The pages of the buffer and who holds them: a lease per chunk held (owner
   * `chunk <key>`), per `allocate`, per fetch (handed to the holder writing into it).
   */
  readonly pool: LeasePool;
  /** This instance's id at the registry. */
  readonly instanceId: string;
  /** Worker id (TP rank). */
  readonly workerId: number;
  /** `host:port` peers handshake with (sent to the registry as `peer_init_url`). */
  readonly initUrl: string;
  /** `host:port` peers send lookups to (returned by `P2PInitSideRetMsg`). */
  readonly lookupUrl: string;
  readonly #store: ChunkStore;
  readonly #lookupServer: RepSocket;
  readonly #registry: RegistryClient;
  readonly #hashOf: (key: string) => bigint;
  readonly #tl: P2PTimelineHook | undefined;
  readonly #recvTimeoutMs: number;
  readonly #sendTimeoutMs: number;
  readonly #curve: SideChannelCurve | undefined;
  readonly #handshakeTimeoutMs: number | undefined;
  readonly #writeTimeoutMs: number;
  readonly #maxRetry: number;
  readonly #quarantineMs: number;
  readonly #deadBackoffMs: number;
  readonly #allocTimeoutMs: number;
  readonly #grants: PageGrantBook;
  readonly #links = new Map<string, PeerLink>();
  readonly #connecting = new Map<string, Promise<PeerLink>>();
  readonly #deadUntil = new Map<string, { until: number; error: P2PError }>();
  readonly #inflight = new Set<Promise<unknown>>();
  readonly #stats = {
    lookups: 0,
    promisedChunks: 0,
    fetches: 0,
    fetchedChunks: 0,
    errors: 0,
    handshakes: 0,
    retries: 0,
    served: 0,
    servedChunks: 0,
    servedErrors: 0,
    admitted: 0,
    evicted: 0,
  };
  #lookupSeq = 0;
  #closing: Promise<void> | null = null;
  #metrics: P2PMetrics | undefined;
  #metricsSource: CollectedSource;

  private constructor(
    channel: TransferChannel,
    lookupServer: RepSocket,
    initUrl: string,
    lookupUrl: string,
    options: P2PBackendOptions,
  ) {
    this.channel = channel;
    this.#quarantineMs = options.quarantineMs ?? options.lookupRecvTimeoutMs ?? 30_000;
    this.pool = new LeasePool(channel.pageCount, { quarantineMs: this.#quarantineMs });
    this.#store = new ChunkStore(this.pool);
    this.#grants = new PageGrantBook(channel);
    this.#lookupServer = lookupServer;
    this.instanceId = options.instanceId;
    this.workerId = options.tpRank ?? 0;
    this.initUrl = initUrl;
    this.lookupUrl = lookupUrl;
    this.#hashOf = options.hashOf ?? chunkHashOf;
    this.#tl = options.timeline;
    this.#recvTimeoutMs = options.lookupRecvTimeoutMs ?? 30_000;
    this.#sendTimeoutMs = options.lookupSendTimeoutMs ?? 10_000;
    this.#curve = options.curve;
    this.#handshakeTimeoutMs = options.handshakeTimeoutMs;
    this.#writeTimeoutMs = options.transferTimeoutMs ??
      Math.max(100, Math.floor(this.#recvTimeoutMs * 0.8));
    this.#maxRetry = options.maxRetryCount ?? 3;
    this.#deadBackoffMs = options.deadPeerBackoffMs ?? 5000;
    this.#allocTimeoutMs = options.allocTimeoutMs ?? 5000;
    const beat = options.heartbeatIntervalMs === undefined ? 10_000 : options.heartbeatIntervalMs;
    this.#registry = new RegistryClient({
      pullUrl: options.registryPullUrl ?? null,
      replyUrl: options.registryReplyUrl ?? null,
      instanceId: this.instanceId,
      workerId: this.workerId,
      ip: options.workerIp ?? options.host,
      port: options.workerPort ?? 0,
      peerInitUrl: initUrl,
      location: options.location ?? "LocalCPUBackend",
      heartbeatIntervalMs: beat,
      heartbeatDelayMs: options.heartbeatDelayMs ?? beat ?? 0,
      requestTimeoutMs: this.#recvTimeoutMs,
      sendTimeoutMs: this.#sendTimeoutMs,
      snapshot: () => this.#store.chunks().map((c) => c.hash),
    });
    const registry = options.metrics ?? metricsRegistry();
    this.#metrics = p2pMetrics(registry, this.workerId);
    this.#metricsSource = collectP2PBackend(
      registry,
      this.workerId,
      channel.pageSize,
      weakly(this, P2PBackend.#stats_),
    );
    channel.onSideMessage((m) => this.#onSideMessage(m));
    lookupServer.serve((frames) => this.#serveLookup(frames)).catch(() => {});
    this.#registry.start();
  }

  // Static: a closure made in the constructor would hold `this` (its context does).
  static #stats_(p: P2PBackend): P2PBackendStats {
    return p.stats;
  }

  /**
   * Binds the lookup port, creates the channel (answering handshakes on the init port),
   * registers with the registry and starts the heartbeat.
   *
   * @example
   * ```ts
   * import { P2PBackend } from "@kvport/nixl";
   *
   * await using p2p = await P2PBackend.create({
   *   instanceId: "inst-a", host: "127.0.0.1", initPort: 8200, lookupPort: 8201,
   *   pageSize: 1 << 20, bufferSize: 256 << 20, registryPullUrl: "127.0.0.1:8300",
   *   registryReplyUrl: "127.0.0.1:8301",
   * });
   * console.log(p2p.initUrl, p2p.lookupUrl, p2p.channel.engine);
   * ```
   */
  static async create(options: P2PBackendOptions): Promise<P2PBackend> {
    validate(options);
    checkBufferSizes(options.pageSize, options.bufferSize);
    const bindHost = options.bindHost ?? options.host;
    const lookupServer = await RepSocket.bind(
      `tcp://${joinHostPort(bindHost, options.lookupPort)}`,
      {
        maxFrames: 4,
        timeoutMs: options.lookupSendTimeoutMs ?? 10_000,
        curve: options.curve?.server,
      },
    ).catch((e) => {
      throw new P2PError(
        "INVALID_ARGUMENT",
        `P2P instance cannot listen for lookups on ${
          joinHostPort(bindHost, options.lookupPort)
        } (p2p_lookup_ports): ${errorMessage(e)}`,
        { op: "listen", cause: e },
      );
    });
    let channel: TransferChannel;
    // Peers store our pages under our init URL (LMCache's receiver_id); with port 0 the
    // port is not known before the channel listens, so a unique suffix stands in.
    const localId = options.initPort === 0
      ? `${joinHostPort(options.host, 0)}#${crypto.randomUUID().slice(0, 8)}`
      : joinHostPort(options.host, options.initPort);
    try {
      channel = await createTransferChannel({
        channelType: options.channelType ?? "nixl",
        role: "both",
        bufferSize: options.bufferSize,
        alignBytes: options.pageSize,
        tpRank: options.tpRank ?? 0,
        peerInitUrl: joinHostPort(bindHost, options.initPort),
        backends: options.backends ?? null,
        device: options.device ?? "cpu",
        engine: options.engine,
        localId,
        handshakeTimeoutMs: options.handshakeTimeoutMs,
        transferTimeoutMs: options.transferTimeoutMs,
        libraryPath: options.libraryPath,
        agentParams: options.agentParams,
        pageGrants: options.pageGrants ?? true,
        metrics: options.metrics,
        curve: options.curve,
      });
    } catch (e) {
      await lookupServer.close();
      throw e;
    }
    const initPort = Number(channel.initUrl!.slice(channel.initUrl!.lastIndexOf(":") + 1));
    return new P2PBackend(
      channel,
      lookupServer,
      joinHostPort(options.host, initPort),
      joinHostPort(options.host, lookupServer.port),
      options,
    );
  }

  /**
   * An instance from a loaded configuration: `p2p_host`, `p2p_init_ports[tpRank]`,
   * `p2p_lookup_ports[tpRank]`, `lmcache_instance_id`, `controller_pull_url`,
   * `controller_reply_url`, `transfer_channel`, `nixl_backends`, the heartbeat keys, and
   * `extra_config`'s `p2p_socket_recv_timeout_ms`, `p2p_socket_send_timeout_ms`,
   * `p2p_max_retry_count`, `kvport_page_grants`. The page buffer is `max_local_cpu_size` GB, as LMCache shares
   * its local CPU buffer, unless `bufferSize` is given. `pageSize` is one chunk's bytes.
   *
   * @example
   * ```ts
   * import { loadConfig, P2PBackend } from "@kvport/nixl";
   *
   * const { config } = loadConfig({ file: "lmcache-p2p.yaml" });
   * await using p2p = await P2PBackend.fromConfig(config, { tpRank: 0, pageSize: 28 << 20 });
   * console.log(p2p.initUrl, p2p.lookupUrl);
   * ```
   */
  static async fromConfig(
    config: P2PConfigLike,
    options: { tpRank?: number; pageSize: number } & Partial<P2PBackendOptions>,
  ): Promise<P2PBackend> {
    const tpRank = options.tpRank ?? 0;
    return await P2PBackend.create({
      ...p2pOptionsFromConfig(config, tpRank),
      ...options,
      tpRank,
    });
  }

  /** Id this instance is known under in holders' channels (`receiver_id`). */
  get receiverId(): string {
    return this.channel.localId;
  }

  /** Counters. */
  get stats(): P2PBackendStats {
    return {
      chunks: this.#store.size,
      freePages: this.pool.free,
      quarantinedPages: this.pool.quarantined,
      ...this.#stats,
    };
  }

  // ------------------------------------------------------------------ holder --

  /** Whether `key` is held here. */
  has(key: string): boolean {
    return this.#store.has(key);
  }

  /** Keys held here, least recently used first. */
  keys(): string[] {
    return this.#store.keys();
  }

  /**
   * The bytes of a held chunk (a view of its page), or `undefined`. Pin it while reading
   * it across an `await` (an eviction could free the page otherwise).
   */
  get(key: string): Uint8Array | undefined {
    const c = this.#store.get(key);
    return c ? this.channel.pages[c.page].subarray(0, c.bytes) : undefined;
  }

  /**
   * Pins a held chunk: its page stays valid (not freed, not reused) until the returned
   * function is called, even if the chunk is evicted meanwhile. `undefined` if not held.
   */
  pin(key: string): (() => void) | undefined {
    const c = this.#store.pin(key);
    if (!c) return undefined;
    let done = false;
    return () => {
      if (!done) this.#store.unpin(c);
      done = true;
    };
  }

  /**
   * Takes `count` pages for chunks, evicting least recently used chunks when none are
   * free, waiting at most `timeoutMs` for pages to free up.
   */
  async allocate(count: number, timeoutMs?: number): Promise<number[]> {
    return [...(await this.#acquire(count, "allocate", timeoutMs)).pages];
  }

  /** A lease of `count` pages, evicting least recently used chunks to make room. */
  async #acquire(count: number, owner: string, timeoutMs?: number): Promise<PageLease> {
    timeoutMs ??= this.#allocTimeoutMs;
    this.#assertOpen("allocate");
    const now = this.pool.tryAcquire(count, { owner });
    if (now) return now;
    while (this.pool.free < count) {
      const v = this.#store.victim();
      if (!v) break;
      this.evict(v.key);
    }
    return await this.pool.acquire(count, { owner, timeoutMs });
  }

  /**
   * Returns pages (from `allocate` or a fetch) that hold nothing to keep; a page not
   * taken that way (or released twice) throws.
   */
  release(pages: readonly number[]): void {
    for (const p of pages) {
      const lease = this.pool.leaseOf(p);
      if (!lease || lease.owner.startsWith(CHUNK)) {
        throw new P2PError(
          "INVALID_ARGUMENT",
          `release: page ${p} is ${lease ? `the page of ${lease.owner}` : "not allocated"} ` +
            "(double release, or a page not from allocate() or a fetch)",
        );
      }
      lease.release({ pages: [p] });
    }
  }

  /**
   * Keeps `page` (allocated from this backend, filled) as the chunk of `key`, and reports
   * the admit. A chunk already held under `key` is replaced.
   */
  put(key: string, page: number, bytes?: number): void {
    bytes ??= this.channel.pageSize;
    this.#assertOpen("put");
    if (typeof key !== "string" || key === "") {
      throw new P2PError("INVALID_ARGUMENT", "put: key must be a non-empty string");
    }
    const lease = this.pool.leaseOf(page);
    const same = lease !== undefined && this.#store.peek(key)?.lease === lease;
    if (!lease || (!same && lease.owner.startsWith(CHUNK))) {
      throw new P2PError(
        "INVALID_ARGUMENT",
        `put: page ${page} is ${lease ? `the page of ${lease.owner}` : "not allocated"} ` +
          "(take pages from allocate() or a fetch)",
      );
    }
    if (!Number.isInteger(bytes) || bytes < 0 || bytes > this.channel.pageSize) {
      throw new P2PError(
        "INVALID_ARGUMENT",
        `put: bytes must be 0..${this.channel.pageSize}, got ${bytes}`,
      );
    }
    const hash = this.#hashOf(key);
    const own = same ? lease : lease.moveTo([page], CHUNK + key);
    const old = this.#store.add(key, hash, own, bytes);
    if (old && old.hash !== hash) this.#registry.evict(old.hash);
    this.#stats.admitted++;
    this.#registry.admit(hash);
  }

  /**
   * Stores one chunk: takes a page (evicting the least recently used chunk when full),
   * copies `data` in (or lets `fill` write the page), keeps it under `key` and reports the
   * admit. Resolves to the page.
   */
  async store(key: string, data: Uint8Array | ((page: Uint8Array) => void)): Promise<number> {
    if (data instanceof Uint8Array && data.length > this.channel.pageSize) {
      throw new P2PError(
        "INVALID_ARGUMENT",
        `store: ${data.length} bytes do not fit a page of ${this.channel.pageSize}`,
      );
    }
    const [page] = await this.allocate(1);
    try {
      const view = this.channel.pages[page];
      if (data instanceof Uint8Array) {
        view.set(data);
        // A short chunk still travels as a whole page: no bytes of the page's last owner.
        if (data.length < view.length) view.fill(0, data.length);
      } else data(view);
      this.put(key, page, data instanceof Uint8Array ? data.length : view.length);
    } catch (e) {
      const lease = this.pool.leaseOf(page);
      if (lease && !lease.owner.startsWith(CHUNK)) lease.release({ pages: [page] });
      throw e;
    }
    return page;
  }

  /**
   * Drops a held chunk and reports the evict. A transfer reading it keeps its page until
   * it ends. Returns whether it was held.
   */
  evict(key: string): boolean {
    const c = this.#store.remove(key);
    if (!c) return false;
    this.#stats.evicted++;
    this.#registry.evict(c.hash);
    return true;
  }

  /** Resolves once queued admit/evict reports are written to the registry's socket. */
  flushReports(): Promise<void> {
    return this.#registry.flush();
  }

  #onSideMessage(m: SideMessage): SideMessage {
    if (m.type === "P2PInitSideMsg") {
      return { type: "P2PInitSideRetMsg", peer_lookup_url: this.lookupUrl };
    }
    throw new P2PError(
      "INVALID_ARGUMENT",
      `unexpected side message ${m.type} on the P2P init socket (expected P2PInitSideMsg)`,
    );
  }

  async #serveLookup(frames: Uint8Array[]): Promise<Uint8Array> {
    const error = (code: number): Uint8Array => {
      this.#stats.servedErrors++;
      this.#metrics?.refused(code);
      return encodeMessage({ type: "P2PErrorMsg", error_code: code });
    };
    if (frames.length !== 1) return error(P2PErrorCode.P2P_SERVER_ERROR);
    let msg: LmcacheMessage;
    try {
      // The fetch's own codec: decodeMessage's result or error, without the generic path.
      msg = decodeGetRequest(frames[0]);
    } catch (e) {
      countMessageError(metricsRegistry(), "REP");
      const unknown = e instanceof WireMessageError && e.field === "type";
      return error(unknown ? P2PErrorCode.UNKNOWN_MSG_TYPE : P2PErrorCode.P2P_SERVER_ERROR);
    }
    if (msg.type !== "BatchedLookupAndGetMsg") return error(P2PErrorCode.UNKNOWN_MSG_TYPE);
    if (this.#closing) return error(P2PErrorCode.P2P_SERVER_ERROR);
    const tl = this.#tl;
    tl?.("request", msg.lookup_id);
    const p = this.#serveGet(msg);
    this.#track(p);
    const code = await p;
    if (typeof code === "number") {
      const out = error(code);
      tl?.("replied", msg.lookup_id);
      return out;
    }
    this.#stats.served++;
    this.#stats.servedChunks += code.num_hit_chunks;
    const out = encodeGetReply(code.num_hit_chunks);
    tl?.("replied", msg.lookup_id);
    return out;
  }

  async #serveGet(
    msg: BatchedLookupAndGetMsg,
  ): Promise<number | { type: "BatchedLookupAndGetRetMsg"; num_hit_chunks: number }> {
    const receiver = msg.receiver_id;
    if (!this.channel.hasPeer(receiver)) return P2PErrorCode.REMOTE_XFER_HANDLER_NOT_INITIALIZED;
    if (msg.keys.length !== msg.mem_indexes.length) return P2PErrorCode.P2P_SERVER_ERROR;
    // Pin the leading chunks still held: from here their pages can be neither freed nor
    // reused, whatever is evicted while the WRITE runs.
    const pinned = [];
    // Whether the WRITE ended without an answer (timed out): it may still read the pages.
    let inDoubt = false;
    for (const key of msg.keys) {
      const c = this.#store.pin(key);
      if (!c) break;
      pinned.push(c);
    }
    try {
      if (pinned.length > 0) {
        this.#tl?.("write", msg.lookup_id);
        await this.channel.write(pinned.map((c) => c.page), {
          peerId: receiver,
          remoteIndexes: msg.mem_indexes.slice(0, pinned.length).map((x, i) =>
            toSafeInt(x, `mem_indexes[${i}]`, msg.type)
          ),
          timeoutMs: this.#writeTimeoutMs,
        });
        this.#tl?.("written", msg.lookup_id);
      }
      return { type: "BatchedLookupAndGetRetMsg", num_hit_chunks: pinned.length };
    } catch (e) {
      inDoubt = e instanceof ChannelTimeoutError;
      if (e instanceof ChannelError && RETRYABLE_WRITE.has(e.code)) {
        // The requester we knew is gone or unreachable (a restart brings a new agent):
        // forget it, so it handshakes again and retries.
        await this.channel.forgetPeer(receiver).catch(() => {});
        return P2PErrorCode.REMOTE_XFER_HANDLER_NOT_INITIALIZED;
      }
      return P2PErrorCode.P2P_SERVER_ERROR;
    } finally {
      for (const c of pinned) this.#store.unpin(c, inDoubt);
    }
  }

  // --------------------------------------------------------------- requester --

  /**
   * Asks the registry who holds the longest prefix of `keys` (by their chunk hashes).
   * Never rejects for a remote failure: an unreachable registry is a miss with `error`.
   */
  async lookup(keys: readonly string[]): Promise<P2PLookupResult> {
    this.#assertOpen("lookup");
    validateKeys(keys, "lookup");
    const lookupId = `${this.instanceId}-${this.workerId}-${++this.#lookupSeq}`;
    this.#tl?.("lookup", lookupId);
    const miss: P2PLookupResult = { lookupId, keys: [...keys], hitChunks: 0, holder: null };
    if (keys.length === 0) return miss;
    this.#stats.lookups++;
    if (!this.#registry.canLookup) {
      this.#stats.errors++;
      miss.error = new P2PError(
        "INVALID_ARGUMENT",
        "no registry to look up in: set controller_reply_url (registryReplyUrl)",
        { op: "lookup" },
      );
      this.#metrics?.failed("lookup", miss.error.code);
      return miss;
    }
    let reply;
    try {
      reply = await this.#track(this.#registry.lookup(keys.map((k) => this.#hashOf(k))));
    } catch (e) {
      this.#stats.errors++;
      const timeout = timeoutOf(e);
      miss.error = new P2PError(
        timeout ? "TIMEOUT" : "REMOTE_ERROR",
        `P2P lookup at the registry failed: ${errorMessage(e)}`,
        { op: "lookup", cause: e, timeoutMs: timeout?.timeoutMs },
      );
      this.#metrics?.failed("lookup", miss.error.code);
      return miss;
    }
    if (reply.type === "ErrorMsg") {
      this.#stats.errors++;
      miss.error = new P2PError("REMOTE_ERROR", `the registry refused the lookup: ${reply.error}`, {
        op: "lookup",
      });
      this.#metrics?.failed("lookup", miss.error.code);
      return miss;
    }
    this.#tl?.("lookup_reply", lookupId);
    const first = reply.layout_info[0];
    if (!first || first[2] <= 0 || first[3] === "") return miss;
    const [instanceId, location, n, peerInitUrl] = first;
    const hitChunks = Math.min(toSafeInt(n, "layout_info[0][2]", reply.type), keys.length);
    this.#stats.promisedChunks += hitChunks;
    this.#metrics?.hit();
    return { lookupId, keys: [...keys], hitChunks, holder: { instanceId, location, peerInitUrl } };
  }

  /**
   * Fetches the prefix a {@linkcode lookup} found from its holder into fresh local
   * pages. The holder checks its own store, so the result may hold fewer chunks than the
   * lookup promised (evicted meanwhile), never other bytes. Never rejects for a remote
   * failure: it is a miss with `error`.
   */
  fetch(lookup: P2PLookupResult): Promise<P2PFetchResult> {
    try {
      this.#assertOpen("fetch");
    } catch (e) {
      return Promise.reject(e);
    }
    if (!lookup.holder || lookup.hitChunks <= 0) {
      return Promise.resolve(emptyFetch(lookup.lookupId, lookup.holder, 0, lookup.error));
    }
    return this.#track(
      this.#fetch(
        lookup.lookupId,
        lookup.holder,
        lookup.keys.slice(0, lookup.hitChunks),
        lookup.hitChunks,
      ),
    );
  }

  /** {@linkcode lookup} then {@linkcode fetch}: the longest prefix of `keys` held elsewhere. */
  async retrieve(keys: readonly string[]): Promise<P2PFetchResult> {
    return await this.fetch(await this.lookup(keys));
  }

  /**
   * Fetches the leading chunks of `keys` that the instance whose init URL is
   * `peerInitUrl` holds, without asking the registry.
   */
  fetchFrom(peerInitUrl: string, keys: readonly string[]): Promise<P2PFetchResult> {
    try {
      this.#assertOpen("fetch");
      validateKeys(keys, "fetchFrom");
    } catch (e) {
      return Promise.reject(e);
    }
    const lookupId = `${this.instanceId}-${this.workerId}-${++this.#lookupSeq}`;
    const holder = { instanceId: "", location: "", peerInitUrl };
    if (keys.length === 0) return Promise.resolve(emptyFetch(lookupId, holder, 0));
    return this.#track(this.#fetch(lookupId, holder, [...keys], keys.length));
  }

  async #fetch(
    lookupId: string,
    holder: P2PHolder,
    keys: string[],
    promised: number,
  ): Promise<P2PFetchResult> {
    const t0 = performance.now();
    const tl = this.#tl;
    tl?.("fetch", lookupId);
    const url = holder.peerInitUrl;
    const result = emptyFetch(lookupId, holder, promised);
    this.#stats.fetches++;
    let lease: PageLease | undefined;
    // Whether the last request went unanswered: the holder may still write into its pages.
    let inDoubt = false;
    const takePages = () =>
      this.#acquire(keys.length, `fetch ${lookupId} from ${url}`).catch((e) => {
        throw new P2PError(
          e instanceof ChannelError ? e.code : "REMOTE_ERROR",
          `no ${keys.length} free page(s) for the fetch: ${errorMessage(e)}`,
          { op: "fetch", cause: e, timeoutMs: timeoutOf(e)?.timeoutMs },
        );
      });
    try {
      lease = await takePages();
      tl?.("pages", lookupId);
      let link = await this.#ensurePeer(url, undefined, result);
      for (;;) {
        result.attempts++;
        if (link.requester.lost !== null) {
          // The lookup connection broke (the holder restarted): handshake again first.
          link = await this.#ensurePeer(url, link, result);
        }
        const msg: LmcacheMessage = {
          type: "BatchedLookupAndGetMsg",
          lookup_id: lookupId,
          receiver_id: this.receiverId,
          keys,
          mem_indexes: [...lease.pages],
        };
        if (lease.peer !== url) lease.handTo(url); // the holder writes into these pages
        const pages = [...lease.pages];
        let reply: SideMessage | undefined;
        let failure: unknown;
        try {
          // The holder may WRITE exactly these pages, for this lookup only.
          await this.#grants.grantWriteToPeer(url, pages, this.#recvTimeoutMs + 1000);
          inDoubt = true;
          tl?.("granted", lookupId);
          reply = await link.requester.request(msg as unknown as SideMessage, this.#recvTimeoutMs);
          tl?.("reply", lookupId);
          inDoubt = false;
        } catch (e) {
          failure = e;
        }
        // Answered or given up on: from here no byte of the holder reaches these pages
        // over TCP (a same-host post already running may finish: quarantine covers it).
        await this.#grants.release(pages);
        if (reply?.type === "BatchedLookupAndGetRetMsg") {
          const n = reply.num_hit_chunks;
          if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > keys.length) {
            throw new P2PError(
              "REMOTE_ERROR",
              `holder ${url} answered num_hit_chunks ${String(n)} for ${keys.length} key(s)`,
              { peerId: url, op: "fetch" },
            );
          }
          result.hitChunks = n;
          result.keys = keys.slice(0, n);
          // The holder answered: its WRITE is over, nothing more can land anywhere. The
          // hit pages are the caller's now (a lease no peer holds), the rest are free.
          const hit = lease.pages.slice(0, n);
          if (n > 0) lease.moveTo(hit, `fetched ${lookupId}`);
          result.pages = [...hit];
          if (lease.state === "held") lease.release();
          lease = undefined;
          this.#stats.fetchedChunks += n;
          result.seconds = (performance.now() - t0) / 1000;
          tl?.("done", lookupId);
          return result;
        }
        const code = reply?.type === "P2PErrorMsg" ? Number(reply.error_code) : undefined;
        const retryable = failure !== undefined ||
          code === P2PErrorCode.REMOTE_XFER_HANDLER_NOT_INITIALIZED;
        if (!retryable || result.attempts > this.#maxRetry) {
          throw fetchError(url, result.attempts, reply, failure, code);
        }
        this.#stats.retries++;
        if (inDoubt) {
          // A late WRITE of the unanswered request may still land in these pages: the
          // retry gets fresh ones, these stay out of use for a while.
          this.#releaseOrQuarantine(lease, true);
          lease = undefined;
          lease = await takePages();
          inDoubt = false;
        }
        link = await this.#ensurePeer(url, link, result);
      }
    } catch (e) {
      this.#stats.errors++;
      result.error = e instanceof P2PError ? e : new P2PError(
        e instanceof ChannelError ? e.code : "REMOTE_ERROR",
        `P2P fetch from ${url} failed: ${errorMessage(e)}`,
        { peerId: url, op: "fetch", cause: e },
      );
      this.#metrics?.failed("fetch", result.error.code);
      this.#releaseOrQuarantine(lease, inDoubt);
      result.seconds = (performance.now() - t0) / 1000;
      return result;
    }
  }

  #releaseOrQuarantine(lease: PageLease | undefined, inDoubt: boolean): void {
    if (!lease || lease.state !== "held") return;
    lease.release({ inFlight: inDoubt && !this.#closing });
  }

  /**
   * The link to the holder at `url`: the current one, or a new handshake (`stale`: the
   * link that just failed). Concurrent callers share one handshake.
   */
  async #ensurePeer(url: string, stale: PeerLink | undefined, result: P2PFetchResult) {
    const cur = this.#links.get(url);
    if (cur && cur !== stale && this.channel.hasPeer(url) && cur.requester.lost === null) {
      return cur;
    }
    const pending = this.#connecting.get(url);
    if (pending) return await pending;
    const dead = this.#deadUntil.get(url);
    if (dead && performance.now() < dead.until) throw dead.error;
    const p = this.#handshake(url, cur);
    this.#connecting.set(url, p);
    try {
      result.handshakes++;
      return await p;
    } finally {
      this.#connecting.delete(url);
    }
  }

  async #handshake(url: string, old: PeerLink | undefined): Promise<PeerLink> {
    this.#stats.handshakes++;
    let requester: Requester | undefined;
    try {
      const reply = await this.channel.connect(url, url, {
        sideMessage: { type: "P2PInitSideMsg" },
        timeoutMs: this.#handshakeTimeoutMs,
      });
      const lookupUrl = reply?.type === "P2PInitSideRetMsg" ? reply.peer_lookup_url : undefined;
      if (typeof lookupUrl !== "string" || lookupUrl === "") {
        throw new P2PError(
          "HANDSHAKE_FAILED",
          `holder ${url} answered P2PInitSideMsg with ${String(reply?.type)}, expected ` +
            "P2PInitSideRetMsg{peer_lookup_url}",
          { peerId: url, url, op: "connect" },
        );
      }
      requester = await openRequester(lookupUrl, {
        timeoutMs: this.#sendTimeoutMs,
        curve: this.#curve?.client,
      });
      const link = { url, lookupUrl, requester, generation: (old?.generation ?? 0) + 1 };
      this.#links.set(url, link);
      this.#deadUntil.delete(url);
      await old?.requester.close().catch(() => {});
      return link;
    } catch (e) {
      await requester?.close().catch(() => {});
      const error = e instanceof P2PError ? e : new P2PError(
        e instanceof ChannelError ? e.code : "HANDSHAKE_FAILED",
        `P2P handshake with holder ${url} failed: ${errorMessage(e)}`,
        { peerId: url, url, op: "connect", cause: e },
      );
      if (this.#deadBackoffMs > 0) {
        this.#deadUntil.set(url, { until: performance.now() + this.#deadBackoffMs, error });
      }
      throw error;
    }
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#inflight.add(p);
    const drop = () => this.#inflight.delete(p);
    p.then(drop, drop);
    return p;
  }

  #assertOpen(op: string): void {
    if (this.#closing) throw new P2PError("CLOSED", `${op} on a closed P2P backend`, { op });
  }

  /**
   * Deregisters, stops answering lookups, waits for running fetches and WRITEs, closes
   * every socket and the channel. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#lookupServer.close().catch(() => {});
      await Promise.allSettled([...this.#inflight]);
      await this.#metricsSource.retire();
      await this.#registry.close().catch(() => {});
      for (const link of this.#links.values()) await link.requester.close().catch(() => {});
      this.#links.clear();
      this.#store.clear();
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

function emptyFetch(
  lookupId: string,
  holder: P2PHolder | null,
  promised: number,
  error?: P2PError,
): P2PFetchResult {
  const r: P2PFetchResult = {
    lookupId,
    hitChunks: 0,
    keys: [],
    pages: [],
    holder,
    promised,
    attempts: 0,
    handshakes: 0,
    seconds: 0,
  };
  if (error) r.error = error;
  return r;
}

function fetchError(
  url: string,
  attempts: number,
  reply: SideMessage | undefined,
  failure: unknown,
  code: number | undefined,
): P2PError {
  const tries = `${attempts} attempt(s)`;
  if (failure !== undefined) {
    const timeout = timeoutOf(failure);
    return new P2PError(
      timeout ? "TIMEOUT" : "REMOTE_ERROR",
      `no reply from holder ${url} after ${tries}: ${errorMessage(failure)}`,
      { peerId: url, op: "fetch", cause: failure, timeoutMs: timeout?.timeoutMs },
    );
  }
  if (code !== undefined) {
    const what = code === 1
      ? "server error"
      : code === 2
      ? "unknown message type"
      : code === 3
      ? "remote handler not initialized, even after a fresh handshake"
      : "unknown error code";
    return new P2PError(
      "REMOTE_ERROR",
      `holder ${url} answered P2PErrorMsg ${code} (${what}) after ${tries}`,
      { peerId: url, op: "fetch", errorCode: code },
    );
  }
  const detail = reply?.type === "ErrorMsg" ? `: ${String(reply.error)}` : "";
  return new P2PError(
    "REMOTE_ERROR",
    `holder ${url} answered ${String(reply?.type)}${detail}, expected BatchedLookupAndGetRetMsg`,
    { peerId: url, op: "fetch" },
  );
}

function validateKeys(keys: readonly string[], op: string): void {
  if (!Array.isArray(keys)) {
    throw new P2PError("INVALID_ARGUMENT", `${op}: keys must be an array of strings`);
  }
  for (const k of keys) {
    if (typeof k !== "string" || k === "") {
      throw new P2PError(
        "INVALID_ARGUMENT",
        `${op}: every key must be a non-empty string, got ${JSON.stringify(k)}`,
      );
    }
  }
}

function validate(o: P2PBackendOptions): void {
  const bad = (msg: string) => new P2PError("INVALID_ARGUMENT", msg);
  if (typeof o.instanceId !== "string" || o.instanceId === "") {
    throw bad("instanceId (lmcache_instance_id) must be a non-empty string");
  }
  if (typeof o.host !== "string" || o.host === "") {
    throw bad("host (p2p_host) must be a non-empty string");
  }
  for (const [name, v] of [["initPort", o.initPort], ["lookupPort", o.lookupPort]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 65535) {
      throw bad(`${name} must be a port 0..65535, got ${v}`);
    }
  }
  const r = o.maxRetryCount;
  if (r !== undefined && (!Number.isInteger(r) || r < 0)) {
    throw bad(`maxRetryCount (p2p_max_retry_count) must be an integer >= 0, got ${r}`);
  }
}
