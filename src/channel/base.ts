/**
 * The control plane every channel type shares: the responder's handshake loop on the
 * init URL and the initiator's two-stage handshake, peer bookkeeping, restarts,
 * timeouts and the agent's serial queue. Channel types supply the data plane.
 *
 * @module
 */

import type { TransferChannelType } from "../config/mod.ts";
import { ChannelError, ChannelTimeoutError, timeoutOf } from "./errors.ts";
import { errorMessage, SerialQueue } from "./_util.ts";
import { type ControlServer, openRequester, serveRequests } from "./control.ts";
import type { SideChannelCurve } from "./curve_config.ts";
import { type BufferDevice, type ChannelPage, ViewPage } from "./page.ts";
import { type ChannelMetrics, channelMetrics, collectChannel } from "./metrics.ts";
import { type MetricsRegistry, metricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, weakly } from "../metrics/source.ts";
import type {
  ChannelNotification,
  ChannelRole,
  ConnectOptions,
  LocalPages,
  SideMessage,
  SideMessageHandler,
  TransferChannel,
  TransferSpec,
} from "./types.ts";

/** Default deadline of a handshake, in milliseconds. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/** Default deadline of a transfer, in milliseconds. */
export const DEFAULT_TRANSFER_TIMEOUT_MS = 30_000;

/** What a channel type's data plane keeps per peer (a prepared page list). */
export interface PeerHandle {
  /** The peer's agent name. */
  agentName: string;
  /** Number of pages the peer registered. */
  pageCount: number;
}

/** Settings shared by every channel type. */
export interface ChannelBaseInit {
  /** `"nixl"` or `"mock_memory"`. */
  channelType: TransferChannelType;
  /** Role of the channel. */
  role: ChannelRole;
  /** Id peers store this channel under. */
  localId: string;
  /** Agent name. */
  agentName: string;
  /** Engine name. */
  engine: string;
  /** Bytes per page. */
  pageSize: number;
  /** The page views (empty for a GPU buffer: give `pageCount` and `pageHandle`). */
  pages: Uint8Array[];
  /** Number of pages when `pages` is empty (GPU buffers). */
  pageCount?: number;
  /** Where the buffer lives (default host memory). */
  device?: BufferDevice;
  /** Makes the handle of page `index` (default: a handle over `pages[index]`). */
  pageHandle?: (index: number) => ChannelPage;
  /** Warnings for the creator. */
  warnings: string[];
  /** Default handshake deadline, ms. */
  handshakeTimeoutMs?: number;
  /** Default transfer deadline, ms. */
  transferTimeoutMs?: number;
  /** Largest control message accepted (default 64 MiB). */
  maxMessageBytes?: number;
  /**
   * Most peers known at once (default {@linkcode DEFAULT_MAX_PEERS}). A handshake beyond
   * it forgets the least recently used peer (which handshakes again when it comes back).
   */
  maxPeers?: number;
  /** Registry the channel's transfers are counted in (default: `metricsRegistry()`). */
  metrics?: MetricsRegistry;
  /** CURVE on the handshake side channel (default NULL). */
  curve?: SideChannelCurve;
}

/**
 * Default bound of a channel's peer table: a decoder facing restarting prefillers for
 * weeks would otherwise keep one entry (and one prepared page list) per sender it ever
 * saw. Far above any live fan-in (8 prefillers x TP 8 is 64).
 */
export const DEFAULT_MAX_PEERS = 4096;

interface PeerEntry {
  handle: PeerHandle;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Bytes or a string, as a string (agent names travel as msgpack bin). */
function nameOf(v: unknown): string {
  if (typeof v === "string") return v;
  if (v instanceof Uint8Array) return dec.decode(v);
  throw new ChannelError("HANDSHAKE_FAILED", `expected an agent name, got ${typeof v}`);
}

/**
 * Most NIXL agents one handshake may list (LMCache runs one per NIC).
 *
 * @example
 * ```ts
 * import { MAX_HANDSHAKE_AGENTS } from "./base.ts";
 * console.log(MAX_HANDSHAKE_AGENTS); // 64
 * ```
 */
export const MAX_HANDSHAKE_AGENTS = 64;

/**
 * A per-agent list of a handshake message as newer LMCache reads it: the list when it
 * has entries, else the single field (`list or [single]`). `listed` tells whether the
 * peer sent the list form, which the reply then mirrors.
 */
function agentList(
  msg: SideMessage,
  listField: string,
  single: string,
): { list: Uint8Array[]; listed: boolean } {
  const v = msg[listField];
  if (Array.isArray(v) && v.length > 0) {
    if (v.length > MAX_HANDSHAKE_AGENTS) {
      throw new ChannelError(
        "HANDSHAKE_FAILED",
        `${msg.type} field ${listField} lists ${v.length} NIXL agents; at most ` +
          `${MAX_HANDSHAKE_AGENTS} are served`,
      );
    }
    v.forEach((x, i) => {
      if (!(x instanceof Uint8Array)) {
        throw new ChannelError(
          "HANDSHAKE_FAILED",
          `${msg.type} field ${listField}[${i}]: expected bytes, got ${typeof x}`,
        );
      }
    });
    return { list: v as Uint8Array[], listed: true };
  }
  return { list: [bytesField(msg, single)], listed: v !== undefined };
}

function bytesField(msg: SideMessage, field: string): Uint8Array {
  const v = msg[field];
  if (v instanceof Uint8Array) return v;
  throw new ChannelError(
    "HANDSHAKE_FAILED",
    `${msg.type} field ${field}: expected bytes, got ${v === null ? "null" : typeof v}`,
  );
}

/** `pages` of a GPU channel: its length, and an error naming the fix on any index. */
function devicePages(ordinal: number, count: number): readonly Uint8Array[] {
  const fail = (): never => {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `the channel's pages live in GPU memory (cuda:${ordinal}) and have no Uint8Array ` +
        "view: use channel.page(i).copyFrom / copyTo / read / checksum, and page indexes " +
        "for transfers",
    );
  };
  // The target stays an empty, unfrozen array (a frozen one would pin `length` to 0);
  // writes are refused by the traps.
  return new Proxy([] as Uint8Array[], {
    get(target, prop, receiver) {
      if (prop === "length") return count;
      if (typeof prop === "string" && /^\d+$/.test(prop)) return fail();
      if (prop === Symbol.iterator || prop === "map" || prop === "forEach") return fail;
      return Reflect.get(target, prop, receiver);
    },
    set: () => false,
    defineProperty: () => false,
    deleteProperty: () => false,
  });
}

/**
 * Base class of the channel types: the control plane (handshake responder and
 * initiator, peers, restarts, timeouts, notifications, close). A channel type extends it
 * and implements the `dp*` data-plane methods; every call on an agent goes through
 * {@linkcode ChannelBase.agentQueue}.
 *
 * @example
 * ```ts
 * import { MockMemoryChannel } from "@kvport/nixl";
 * import { ChannelBase } from "./base.ts";
 *
 * await using ch = await MockMemoryChannel.create({ role: "both", pageSize: 64, pageCount: 2 });
 * console.log(ch instanceof ChannelBase); // true
 * ```
 * @ignore
 */
export abstract class ChannelBase implements TransferChannel {
  /** `"nixl"` or `"mock_memory"`. */
  readonly channelType: TransferChannelType;
  /** Role given at creation. */
  readonly role: ChannelRole;
  /** The id peers store this channel's page list under. */
  readonly localId: string;
  /** The agent name of this channel. */
  readonly agentName: string;
  /** Engine serving the data plane. */
  readonly engine: string;
  /** Bytes per page. */
  readonly pageSize: number;
  /** Number of pages. */
  readonly pageCount: number;
  /** Page views over the buffer (host memory; indexing throws for a GPU buffer). */
  readonly pages: readonly Uint8Array[];
  /** Where the buffer lives. */
  readonly device: BufferDevice;
  /** Things the creator may want to print. */
  readonly warnings: readonly string[];
  /** Serializes every use of the agent: callers never touch it at once.
   * @ignore */
  protected readonly agentQueue: SerialQueue = new SerialQueue();
  /** Default handshake deadline, ms. */
  protected readonly handshakeTimeoutMs: number;
  /** Default transfer deadline, ms. */
  protected readonly transferTimeoutMs: number;
  /** Largest control message accepted. */
  protected readonly maxMessageBytes: number;
  #server: ControlServer | null = null;
  #curve: SideChannelCurve | undefined;
  #peers = new Map<string, PeerEntry>();
  /** The peer last in `#peers` (the most recently used), or undefined when not known: a
   * transfer to it leaves the order as it is (no delete and set per transfer). */
  #lastPeer: string | undefined;
  readonly #maxPeers: number;
  #connecting = new Map<string, Promise<unknown>>();
  #listeners = new Set<(n: ChannelNotification) => void>();
  #sideHandler: SideMessageHandler | null = null;
  #inflight = new Set<Promise<unknown>>();
  #closing: Promise<void> | null = null;
  #handles: (ChannelPage | undefined)[];
  #pageHandle: (index: number) => ChannelPage;
  #metrics: ChannelMetrics | undefined;
  #metricsSource: CollectedSource;

  /**
   * Stores the settings shared by every channel type.
   *
   * @param init the settings
   */
  protected constructor(init: ChannelBaseInit) {
    this.channelType = init.channelType;
    this.role = init.role;
    this.localId = init.localId;
    this.agentName = init.agentName;
    this.engine = init.engine;
    this.pageSize = init.pageSize;
    this.device = Object.freeze(init.device ?? { kind: "cpu" });
    this.pageCount = init.pages.length > 0 ? init.pages.length : init.pageCount ?? 0;
    this.pages = this.device.kind === "cpu"
      ? Object.freeze(init.pages)
      : devicePages(this.device.ordinal, this.pageCount);
    this.#handles = new Array(this.pageCount);
    this.#pageHandle = init.pageHandle ?? ((i) => new ViewPage(init.pages[i], i));
    this.warnings = Object.freeze(init.warnings);
    this.handshakeTimeoutMs = init.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    this.transferTimeoutMs = init.transferTimeoutMs ?? DEFAULT_TRANSFER_TIMEOUT_MS;
    this.maxMessageBytes = init.maxMessageBytes ?? 64 * 1024 * 1024;
    this.#curve = init.curve;
    this.#maxPeers = Math.max(1, init.maxPeers ?? DEFAULT_MAX_PEERS);
    const registry = init.metrics ?? metricsRegistry();
    this.#metrics = channelMetrics(registry, this.role);
    // Held weakly (a static read, labels computed here): the registry outlives channels.
    this.#metricsSource = collectChannel(
      registry,
      { role: this.role, type: this.channelType },
      this.pageCount,
      weakly(this, ChannelBase.#peerCount),
    );
  }

  static #peerCount(c: ChannelBase): number {
    return c.#peers.size;
  }

  /** `host:port` this channel answers handshakes on, or `null`. */
  get initUrl(): string | null {
    return this.#server?.url ?? null;
  }

  /** Whether {@linkcode close} has been called. */
  get closed(): boolean {
    return this.#closing !== null;
  }

  /** Starts answering handshakes on `url` (`host:port`; port 0 = any free port). */
  protected async listen(url: string): Promise<void> {
    if (this.#curve && !this.#curve.server) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `CURVE is on but this channel has no server key to listen on ${url} with ` +
          "(extra_config.curve_server_secret_key_file, curve_allowed_clients_file)",
      );
    }
    this.#server = await serveRequests(url, (msg, from) => this.#handle(msg, from), {
      maxMessageBytes: this.maxMessageBytes,
      curve: this.#curve?.server,
    });
  }

  // ---------------------------------------------------------------- data plane --

  /** This side's agent metadata blob. */
  protected abstract dpLocalMetadata(): Promise<Uint8Array>;
  /** Loads a peer's metadata; returns its agent name. A restarted peer replaces the old. */
  protected abstract dpLoadRemote(meta: Uint8Array): Promise<string>;
  /** This side's serialized page list. */
  protected abstract dpLocalPageList(): Promise<Uint8Array>;
  /** Prepares a peer's page list for transfers. */
  protected abstract dpPrepRemote(agentName: string, pageList: Uint8Array): Promise<PeerHandle>;
  /** Releases what {@linkcode dpPrepRemote} made; `invalidate`: also forget the agent. */
  protected abstract dpRelease(handle: PeerHandle, invalidate: boolean): Promise<void>;
  /** Moves pages; resolves when the data has landed (and the notification is queued). */
  protected abstract dpTransfer(
    op: "READ" | "WRITE",
    local: Uint32Array,
    handle: PeerHandle,
    remote: Uint32Array,
    timeoutMs: number,
    notification: Uint8Array | undefined,
    peerId: string,
    onPosted?: () => void,
  ): Promise<void>;
  /** Stops the data plane and frees the buffer and the agent. */
  protected abstract dpClose(): Promise<void>;

  /** Subclasses call this for every notification that arrives. */
  protected emitNotification(n: ChannelNotification): void {
    for (const l of this.#listeners) {
      try {
        l(n);
      } catch {
        // A listener's failure is its own; the others still run.
      }
    }
  }

  /** Number of notification listeners (the data plane polls only while > 0). */
  protected get notificationListeners(): number {
    return this.#listeners.size;
  }

  /** Called when the first listener subscribes and after the last leaves. */
  protected notificationInterestChanged(_interested: boolean): void {}

  // ------------------------------------------------------------------ control --

  async #handle(msg: SideMessage, from: string): Promise<SideMessage> {
    if (this.closed) throw new ChannelError("CLOSED", "channel is closing");
    switch (msg.type) {
      case "NixlInitRequest": {
        // A newer LMCache peer lists one metadata blob per NIXL agent. All its agents
        // register the same buffer, so loading the first one serves every transfer this
        // side starts; its other agents reach this one agent with our metadata, which
        // the reply lists once per agent as that peer requires.
        const metas = agentList(msg, "local_meta_bytes_list", "local_meta_bytes");
        const name = enc.encode(await this.dpLoadRemote(metas.list[0]));
        const meta = await this.dpLocalMetadata();
        const reply: SideMessage = {
          type: "NixlInitResponse",
          remote_agent_name: name,
          remote_meta_bytes: meta,
        };
        if (metas.listed) {
          reply.remote_agent_names = metas.list.map(() => name);
          reply.remote_meta_bytes_list = metas.list.map(() => meta);
        }
        return reply;
      }
      case "NixlMemRegRequest": {
        const localId = msg.local_id;
        if (typeof localId !== "string" || localId === "") {
          throw new ChannelError(
            "HANDSHAKE_FAILED",
            `NixlMemRegRequest from ${from}: local_id must be a non-empty string`,
          );
        }
        const names = agentList(msg, "remote_agent_names", "remote_agent_name");
        const lists = agentList(msg, "local_xfer_dlist_bytes_list", "local_xfer_dlist_bytes");
        if (names.listed && lists.listed && names.list.length !== lists.list.length) {
          throw new ChannelError(
            "HANDSHAKE_FAILED",
            `NixlMemRegRequest from ${from}: remote_agent_names lists ${names.list.length} ` +
              `agent(s) but local_xfer_dlist_bytes_list ${lists.list.length}: one page list ` +
              "per agent",
          );
        }
        const agent = nameOf(names.list[0]);
        await this.#setPeer(localId, () => this.dpPrepRemote(agent, lists.list[0]));
        this.#metrics?.handshake("responder", true);
        const ours = await this.dpLocalPageList();
        const reply: SideMessage = { type: "NixlMemRegResponse", remote_xfer_dlist_bytes: ours };
        if (lists.listed) reply.remote_xfer_dlist_bytes_list = lists.list.map(() => ours);
        return reply;
      }
      default: {
        const h = this.#sideHandler;
        if (!h) {
          throw new ChannelError(
            "HANDSHAKE_FAILED",
            `unexpected ${msg.type} on the init socket from ${from}: ` +
              "expected NixlInitRequest or NixlMemRegRequest (no side-message handler set)",
          );
        }
        return await h(msg);
      }
    }
  }

  /** Stores a peer's prepared list under `peerId`, releasing a previous one. */
  async #setPeer(peerId: string, prep: () => Promise<PeerHandle>): Promise<void> {
    const handle = await prep();
    const old = this.#peers.get(peerId);
    this.#peers.delete(peerId); // re-inserted last: the most recently used
    this.#peers.set(peerId, { handle });
    this.#lastPeer = peerId;
    if (old) this.#metrics?.rehandshake();
    while (this.#peers.size > this.#maxPeers) {
      // The table is bounded: the least recently used peer goes (it handshakes again).
      const [lru] = this.#peers.keys();
      await this.forgetPeer(lru).catch(() => {});
    }
    if (old) {
      // A re-handshake: a restarted peer brings a new agent, whose name differs (or
      // whose connection info does); the old one is gone for good.
      const stillUsed = [...this.#peers.values()].some((p) =>
        p.handle.agentName === old.handle.agentName
      );
      await this.dpRelease(old.handle, !stillUsed && old.handle.agentName !== handle.agentName)
        .catch(() => {});
    }
  }

  /** Handshakes with a peer; see {@linkcode TransferChannel.connect}. */
  connect(
    peerId: string,
    peerInitUrl: string,
    options: ConnectOptions = {},
  ): Promise<SideMessage | null> {
    try {
      this.#assertOpen("connect");
    } catch (e) {
      return Promise.reject(e);
    }
    if (typeof peerId !== "string" || peerId === "") {
      return Promise.reject(
        new ChannelError("INVALID_ARGUMENT", "connect: peerId must be a non-empty string"),
      );
    }
    // One handshake per peer at a time; a second waits for the first, then runs.
    const prev = this.#connecting.get(peerId) ?? Promise.resolve();
    const run = prev.catch(() => {}).then(() => this.#connect(peerId, peerInitUrl, options));
    this.#connecting.set(peerId, run);
    const done = () => {
      if (this.#connecting.get(peerId) === run) this.#connecting.delete(peerId);
    };
    run.then(done, done);
    const m = this.#metrics;
    if (m) run.then(() => m.handshake("initiator", true), () => m.handshake("initiator", false));
    return this.#track(run);
  }

  async #connect(
    peerId: string,
    url: string,
    options: ConnectOptions,
  ): Promise<SideMessage | null> {
    const timeoutMs = options.timeoutMs ?? this.handshakeTimeoutMs;
    const agents = options.peerAgents ?? 1;
    if (!Number.isInteger(agents) || agents < 1 || agents > MAX_HANDSHAKE_AGENTS) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `connect: peerAgents must be an integer from 1 to ${MAX_HANDSHAKE_AGENTS}, got ${agents}`,
      );
    }
    const deadline = performance.now() + timeoutMs;
    const left = () => Math.max(1, Math.round(deadline - performance.now()));
    let stage = "connection";
    if (this.#curve && !this.#curve.client) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `CURVE is on but this channel has no client key to connect to ${url} with ` +
          "(extra_config.curve_client_secret_key_file, curve_server_public_key_file)",
      );
    }
    const req = await openRequester(url, {
      timeoutMs: left(),
      maxMessageBytes: this.maxMessageBytes,
      curve: this.#curve?.client,
    })
      .catch((e) => {
        throw this.#handshakeError(peerId, url, stage, timeoutMs, e);
      });
    try {
      stage = agents === 1
        ? "NixlInitResponse"
        : `NixlInitResponse (listing ${agents} agents, as peerAgents asks)`;
      // Written as current LMCache writes it: the single fields and the per-agent lists
      // (an older peer ignores the lists). This channel has one agent, listed once per
      // agent of the peer.
      const meta = await this.dpLocalMetadata();
      const initResp = await req.request(
        {
          type: "NixlInitRequest",
          local_meta_bytes: meta,
          local_meta_bytes_list: new Array(agents).fill(meta),
        },
        left(),
      );
      expectType(initResp, "NixlInitResponse");
      const metas = agentList(initResp, "remote_meta_bytes_list", "remote_meta_bytes");
      expectAgents(metas.list.length, agents, "NixlInitResponse", "remote_meta_bytes_list");
      const agent = await this.dpLoadRemote(metas.list[0]);
      const peerNames = agentList(initResp, "remote_agent_names", "remote_agent_name").list;
      stage = "NixlMemRegResponse";
      const ours = await this.dpLocalPageList();
      const regResp = await req.request(
        {
          type: "NixlMemRegRequest",
          remote_agent_name: peerNames[0],
          local_id: this.localId,
          local_xfer_dlist_bytes: ours,
          remote_agent_names: peerNames,
          local_xfer_dlist_bytes_list: new Array(agents).fill(ours),
        },
        left(),
      );
      expectType(regResp, "NixlMemRegResponse");
      const lists = agentList(regResp, "remote_xfer_dlist_bytes_list", "remote_xfer_dlist_bytes");
      expectAgents(lists.list.length, agents, "NixlMemRegResponse", "remote_xfer_dlist_bytes_list");
      await this.#setPeer(peerId, () => this.dpPrepRemote(agent, lists.list[0]));
      if (!options.sideMessage) return null;
      stage = `reply to ${options.sideMessage.type}`;
      const reply = await req.request(options.sideMessage, left());
      if (reply.type === "ErrorMsg") {
        throw new ChannelError(
          "HANDSHAKE_FAILED",
          `the peer refused ${options.sideMessage.type}: ${String(reply.error)}`,
        );
      }
      return reply;
    } catch (e) {
      throw this.#handshakeError(peerId, url, stage, timeoutMs, e);
    } finally {
      await req.close().catch(() => {});
    }
  }

  #handshakeError(
    peerId: string,
    url: string,
    stage: string,
    timeoutMs: number,
    e: unknown,
  ): ChannelError {
    if (e instanceof ChannelError && e.peerId !== undefined) return e;
    if (timeoutOf(e)) {
      return new ChannelTimeoutError("handshake", timeoutMs, {
        peerId,
        url,
        hint: `waiting for ${stage}; is the peer listening on ${url}? A responder that runs ` +
          "several NIXL agents answers only a handshake listing as many (connect's " +
          `peerAgents). (${errorMessage(e)})`,
        cause: e,
      });
    }
    return new ChannelError(
      "HANDSHAKE_FAILED",
      `handshake with peer ${peerId} at ${url} failed waiting for ${stage}: ${errorMessage(e)}`,
      { peerId, url, op: "connect", cause: e },
    );
  }

  /** Whether the peer is known. */
  hasPeer(peerId: string): boolean {
    return this.#peers.has(peerId);
  }

  /** The agent name a known peer handshook with (what grants are given to), or
   * `undefined` when the peer is not known. */
  peerAgentName(peerId: string): string | undefined {
    return this.#peers.get(peerId)?.handle.agentName;
  }

  /** Peer ids known now. */
  get peerIds(): string[] {
    return [...this.#peers.keys()];
  }

  /** Forgets a peer, releasing its handles. */
  async forgetPeer(peerId: string): Promise<void> {
    const entry = this.#peers.get(peerId);
    if (!entry) return;
    this.#peers.delete(peerId);
    if (this.#lastPeer === peerId) this.#lastPeer = undefined;
    const stillUsed = [...this.#peers.values()].some((p) =>
      p.handle.agentName === entry.handle.agentName
    );
    await this.dpRelease(entry.handle, !stillUsed);
  }

  /** A handle on page `index` (host or GPU): copies in and out, checksum. */
  page(index: number): ChannelPage {
    if (!Number.isInteger(index) || index < 0 || index >= this.pageCount) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `page index ${index} is outside 0..${this.pageCount - 1}`,
      );
    }
    let h = this.#handles[index];
    if (!h) h = this.#handles[index] = this.#pageHandle(index);
    return h;
  }

  /** Page indexes of local pages. */
  localIndexes(pages: LocalPages): number[] {
    const out = new Array<number>(pages.length);
    for (let i = 0; i < pages.length; i++) out[i] = this.#localIndex(pages[i], i);
    return out;
  }

  /** The page index of local page `p` (at position `i` of a list), checked. */
  #localIndex(p: LocalPages[number], i: number): number {
    if (typeof p === "number") {
      if (!Number.isInteger(p) || p < 0 || p >= this.pageCount) {
        throw new ChannelError(
          "INVALID_ARGUMENT",
          `local page index ${p} (position ${i}) is outside 0..${this.pageCount - 1}`,
        );
      }
      return p;
    }
    if (p instanceof Uint8Array) return this.#indexOfView(p, i);
    if (this.#handles[p?.index] === p) return p.index;
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `local page at position ${i} is not a page of this channel ` +
        "(use channel.page(i) or a page index)",
    );
  }

  #indexOfView(view: Uint8Array, pos: number): number {
    const first = this.device.kind === "cpu" ? this.pages[0] : undefined;
    if (first && view.buffer === first.buffer) {
      const off = view.byteOffset - first.byteOffset;
      if (off >= 0 && off % this.pageSize === 0 && off / this.pageSize < this.pageCount) {
        return off / this.pageSize;
      }
    }
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `local page at position ${pos} is not a page view of this channel's buffer ` +
        "(use channel.pages[i] or a page index)",
    );
  }

  /** WRITEs local pages into the peer's pages. */
  write(local: LocalPages, spec: TransferSpec): Promise<number> {
    return this.#transfer("WRITE", local, spec);
  }

  /** READs the peer's pages into local pages. */
  read(local: LocalPages, spec: TransferSpec): Promise<number> {
    return this.#transfer("READ", local, spec);
  }

  #transfer(op: "READ" | "WRITE", localPages: LocalPages, spec: TransferSpec): Promise<number> {
    try {
      this.#assertOpen(op === "WRITE" ? "write" : "read");
      // Both index lists are checked here and copied to the typed arrays the agent
      // takes as they are (one pass each, no second copy or check there; a caller's
      // later change to its lists cannot reach a queued transfer).
      const local = new Uint32Array(localPages.length);
      for (let i = 0; i < local.length; i++) local[i] = this.#localIndex(localPages[i], i);
      const entry = this.#peers.get(spec?.peerId);
      if (entry && this.#lastPeer !== spec.peerId) {
        // Most recently used last: the bound of the table forgets the others first.
        this.#peers.delete(spec.peerId);
        this.#peers.set(spec.peerId, entry);
        this.#lastPeer = spec.peerId;
      }
      if (!entry) {
        throw new ChannelError(
          "UNKNOWN_PEER",
          `${op} to unknown peer ${JSON.stringify(spec?.peerId)}: connect() to it first` +
            ` (known: ${this.peerIds.join(", ") || "none"})`,
          { peerId: spec?.peerId, op },
        );
      }
      const wanted = spec.remoteIndexes;
      if (!Array.isArray(wanted) && !ArrayBuffer.isView(wanted)) {
        throw new ChannelError(
          "INVALID_ARGUMENT",
          `${op}: remoteIndexes must be a list of page indexes, got ${typeof wanted}`,
          { peerId: spec.peerId, op },
        );
      }
      const count = wanted.length;
      if (count !== local.length) {
        throw new ChannelError(
          "INVALID_ARGUMENT",
          `${op}: ${local.length} local page(s) but ${count} remote index(es)`,
          { peerId: spec.peerId, op },
        );
      }
      const remote = new Uint32Array(count);
      for (let i = 0; i < count; i++) {
        const r = wanted[i];
        if (!Number.isInteger(r) || r < 0 || r >= entry.handle.pageCount) {
          throw new ChannelError(
            "INVALID_ARGUMENT",
            `${op}: remote page index ${r} is outside 0..${entry.handle.pageCount - 1} ` +
              `of peer ${spec.peerId}`,
            { peerId: spec.peerId, op },
          );
        }
        remote[i] = r;
      }
      if (spec.notification && spec.notification.length > 65536) {
        throw new ChannelError(
          "INVALID_ARGUMENT",
          `${op}: notification of ${spec.notification.length} bytes exceeds 64 KiB`,
        );
      }
      if (local.length === 0) return Promise.resolve(0);
      const timeoutMs = spec.timeoutMs ?? this.transferTimeoutMs;
      const m = this.#metrics;
      const t0 = m ? performance.now() : 0;
      const p = this.dpTransfer(
        op,
        local,
        entry.handle,
        remote,
        timeoutMs,
        spec.notification,
        spec.peerId,
        spec.onPosted,
      ).then(
        () => {
          const n = local.length;
          m?.transferred(op, spec.peerId, n, n * this.pageSize, (performance.now() - t0) / 1000);
          return n;
        },
        (e) => {
          const err = transferError(op, spec.peerId, timeoutMs, local.length, e);
          m?.failed(op, err.code);
          throw err;
        },
      );
      return this.#track(p);
    } catch (e) {
      this.#metrics?.failed(op, e instanceof ChannelError ? e.code : "INVALID_ARGUMENT");
      return Promise.reject(e);
    }
  }

  /** Subscribes to notifications. */
  onNotification(handler: (n: ChannelNotification) => void): () => void {
    const before = this.#listeners.size;
    this.#listeners.add(handler);
    if (before === 0 && this.#listeners.size === 1) this.notificationInterestChanged(true);
    return () => {
      if (this.#listeners.delete(handler) && this.#listeners.size === 0) {
        this.notificationInterestChanged(false);
      }
    };
  }

  /** Sets the side-message handler. */
  onSideMessage(handler: SideMessageHandler | null): void {
    this.#sideHandler = handler;
  }

  #assertOpen(op: string): void {
    if (this.closed) {
      throw new ChannelError("CLOSED", `${op} on a closed ${this.channelType} channel`, { op });
    }
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#inflight.add(p);
    const drop = () => this.#inflight.delete(p);
    p.then(drop, drop);
    return p;
  }

  /** Releases everything; idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#metricsSource.retire();
    this.#listeners.clear();
    this.notificationInterestChanged(false);
    await this.#server?.close().catch(() => {});
    // Let running handshakes and transfers finish (each has its own deadline).
    await Promise.allSettled([...this.#inflight]);
    for (const id of [...this.#peers.keys()]) await this.forgetPeer(id).catch(() => {});
    await this.agentQueue.idle();
    await this.dpClose();
  }

  /** Same as {@linkcode ChannelBase.close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The peer's per-agent lists must have as many entries as this handshake listed. */
function expectAgents(got: number, want: number, type: string, field: string): void {
  if (got === want) return;
  throw new ChannelError(
    "HANDSHAKE_FAILED",
    `${type} field ${field}: the peer runs ${got} NIXL agent(s) but this handshake listed ` +
      `${want}: connect with peerAgents: ${got}`,
  );
}

function expectType(msg: SideMessage, type: string): void {
  if (msg?.type === type) return;
  const detail = msg?.type === "ErrorMsg" && typeof msg.error === "string"
    ? `: the peer replied ErrorMsg: ${msg.error}`
    : "";
  throw new ChannelError(
    "HANDSHAKE_FAILED",
    `expected ${type}, got ${String(msg?.type)}${detail}`,
  );
}

function transferError(
  op: string,
  peerId: string,
  timeoutMs: number,
  count: number,
  e: unknown,
): ChannelError {
  if (e instanceof ChannelError) return e;
  if ((e as { statusName?: string })?.statusName === "NIXL_ERR_NOT_ALLOWED") {
    // The peer enforces page grants and these pages are not (or no longer) granted to us.
    return new ChannelError(
      "NOT_ALLOWED",
      `${op} of ${count} page(s) with peer ${peerId} was refused: ${errorMessage(e)}`,
      { peerId, op, cause: e },
    );
  }
  if (timeoutOf(e)) {
    // The data plane's own error says what became of the request (the NIXL channel
    // cancels and releases it before it reports the timeout).
    return new ChannelTimeoutError(op, timeoutMs, {
      peerId,
      hint: `${count} page(s): ${errorMessage(e)}`,
      cause: e,
    });
  }
  return new ChannelError(
    "TRANSFER_FAILED",
    `${op} of ${count} page(s) with peer ${peerId} failed: ${errorMessage(e)}`,
    { peerId, op, cause: e },
  );
}
