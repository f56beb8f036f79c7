/**
 * `nixl`: the transfer channel over a {@linkcode NixlAgent} (NIXL when installed, else
 * the built-in engine: shared memory on one host, TCP between hosts).
 *
 * @module
 */

import type { SideChannelCurve } from "./curve_config.ts";
import {
  cudaDevices,
  DescList,
  type GrantOptions,
  HostBuffer,
  type NativeBuffer,
  NixlAgent,
  NixlError,
  NixlTimeoutError,
  type PageGrant,
  type PreparedDescList,
  probeEngine,
  type Registration,
  Status,
  type TransferRequest,
} from "../agent.ts";
import { ChannelBase, type PeerHandle } from "./base.ts";
import type { MetricsRegistry } from "../metrics/registry.ts";
import { ChannelError } from "./errors.ts";
import { parseEndpoint } from "./wire/endpoint.ts";
import { errorMessage } from "./_util.ts";
import { clampDelay, every, sleep, type Timer } from "../deadline.ts";
import { type BufferDevice, NativePage } from "./page.ts";
import type { ChannelRole } from "./types.ts";

/** Options of {@linkcode NixlChannel.create}. */
export interface NixlChannelOptions {
  /** Role of the channel. */
  role: ChannelRole;
  /** Bytes per page. */
  pageSize: number;
  /** Number of pages. */
  pageCount: number;
  /** NIXL backends, e.g. `["UCX"]`. */
  backends: readonly string[];
  /** Where the buffer lives (default host memory; `{ kind: "cuda", ordinal }`: VRAM of
   * that CUDA device, whose pages are handles: see `page(i)`). */
  device?: BufferDevice;
  /** `"auto"` (default), `"builtin"` or `"nixl"`. */
  engine?: "auto" | "builtin" | "nixl";
  /** Id peers store this channel under (default: the agent name). */
  localId?: string;
  /** `host:port` to answer handshakes on, or null/undefined for none. */
  peerInitUrl?: string | null;
  /** Things to report to the creator. */
  warnings?: string[];
  /** Handshake deadline, ms. */
  handshakeTimeoutMs?: number;
  /** Transfer deadline, ms. */
  transferTimeoutMs?: number;
  /** Path of libkvport.so. */
  libraryPath?: string;
  /** Extra agent parameters. */
  agentParams?: Readonly<Record<string, string>>;
  /** Touch every page of the buffer at creation (default true), as pinning would. */
  prefault?: boolean;
  /** Registry the channel and its agent are counted in (default: `metricsRegistry()`). */
  metrics?: MetricsRegistry;
  /** CURVE on the handshake side channel: server keys to listen, client keys to connect. */
  curve?: SideChannelCurve;
  /**
   * Enforce page grants (default false: every page is reachable by a handshaken peer, as
   * in LMCache): peers then reach only the pages {@linkcode NixlChannel.grantPages} gave
   * them. The builtin engine enforces them (agent param `page_grants=on`); the nixl
   * engine cannot, which a warning says (engine `"auto"` is not steered by this).
   */
  pageGrants?: boolean;
}

/**
 * The warning a channel that was asked for page grants gives on the nixl engine.
 *
 * @example
 * ```ts
 * import { NIXL_GRANTS_WARNING } from "./nixl.ts";
 * console.log(NIXL_GRANTS_WARNING.startsWith("page grants are not enforced")); // true
 * ```
 */
export const NIXL_GRANTS_WARNING = "page grants are not enforced by the nixl engine: a peer " +
  "holding this channel's agent metadata can READ and WRITE its whole buffer (use the builtin " +
  "engine to enforce them; see docs/SECURITY.md)";

/** Whether the agent of these options will be asked for `page_grants=on`. */
async function grantsParam(options: NixlChannelOptions): Promise<boolean> {
  if (!options.pageGrants || options.agentParams?.page_grants !== undefined) return false;
  const engine = options.engine ?? "auto";
  if (engine === "builtin") return true;
  if (engine === "nixl") return false;
  // "auto": page_grants=on would make auto refuse NIXL and take the builtin engine, so ask
  // only when auto resolves to builtin anyway.
  const probe = await probeEngine("auto", { libraryPath: options.libraryPath }).catch(() => null);
  return probe?.raw.resolved !== "nixl";
}

interface NixlPeer extends PeerHandle {
  prepped: PreparedDescList;
}

const MD_MAGIC = [0x4b, 0x56, 0x50, 0x4d]; // "KVPM", the built-in engine's metadata

/** How long one wait of the notification pump lasts, and the period of the backstop of
 * the wake callback, ms. */
const PUMP_SLICE_MS = 200;

/**
 * The agent's parameters: the data plane listens where the channel's handshake does
 * (`peerInitUrl`'s host: `pd_peer_host`, `p2p_host`), unless `agentParams` says where;
 * without either the engine's default (127.0.0.1) applies.
 */
function dataPlaneParams(
  options: NixlChannelOptions,
  grants: boolean,
): Record<string, string> | undefined {
  const params: Record<string, string> = { ...options.agentParams };
  if (grants) params.page_grants = "on";
  if (params.listen_host === undefined && options.peerInitUrl) {
    params.listen_host = parseEndpoint(options.peerInitUrl, "bind").host;
  }
  return Object.keys(params).length > 0 ? params : undefined;
}

/** The agent name inside a built-in engine metadata blob, or `undefined`. */
function metadataName(meta: Uint8Array): string | undefined {
  if (meta.length < 10 || MD_MAGIC.some((b, i) => meta[i] !== b)) return undefined;
  const len = meta[8];
  if (len === 0 || 9 + len > meta.length) return undefined;
  return new TextDecoder().decode(meta.subarray(9, 9 + len));
}

/**
 * A channel whose pages live in memory registered with a {@linkcode NixlAgent}. Every
 * use of the agent goes through one serial queue; transfer waits happen outside it, so
 * transfers to several peers overlap, and every request and prepared list is released.
 *
 * @example
 * ```ts
 * import { NixlChannel } from "@kvport/nixl";
 *
 * await using ch = await NixlChannel.create({
 *   role: "receiver", pageSize: 1 << 20, pageCount: 16, backends: ["UCX"],
 *   peerInitUrl: "127.0.0.1:0",
 * });
 * console.log(ch.engine, ch.initUrl);
 * ```
 */
export class NixlChannel extends ChannelBase {
  /** The agent (for inspection; use the channel's methods to move data). */
  readonly agent: NixlAgent;
  readonly #buffer: NativeBuffer;
  readonly #registration: Registration;
  readonly #local: PreparedDescList;
  readonly #pageList: Uint8Array;
  readonly #pageSize: number;
  readonly #pageGrants: "on" | "off" | "unsupported";
  #pump: Promise<void> | null = null;
  /** With a wake callback: its stop function and the backstop timer (no pump then). */
  #offWake: (() => void) | null = null;
  #backstop: Timer | null = null;
  #pumping = false;
  #stopping = false;

  private constructor(
    options: NixlChannelOptions,
    agent: NixlAgent,
    buffer: NativeBuffer,
    registration: Registration,
    local: PreparedDescList,
    pageList: Uint8Array,
  ) {
    const pages: Uint8Array[] = [];
    if (buffer instanceof HostBuffer) {
      const bytes = buffer.bytes;
      for (let i = 0; i < options.pageCount; i++) {
        pages.push(bytes.subarray(i * options.pageSize, (i + 1) * options.pageSize));
      }
    }
    super({
      device: buffer.memType === "VRAM" ? { kind: "cuda", ordinal: buffer.device } : undefined,
      pageCount: options.pageCount,
      pageHandle: (i) => new NativePage(buffer, i, i * options.pageSize, options.pageSize),
      channelType: "nixl",
      role: options.role,
      localId: options.localId ?? agent.name,
      agentName: agent.name,
      engine: agent.engine,
      pageSize: options.pageSize,
      pages,
      warnings: options.warnings ?? [],
      handshakeTimeoutMs: options.handshakeTimeoutMs,
      transferTimeoutMs: options.transferTimeoutMs,
      metrics: options.metrics,
      curve: options.curve,
    });
    this.agent = agent;
    this.#buffer = buffer;
    this.#registration = registration;
    this.#local = local;
    this.#pageList = pageList;
    this.#pageSize = options.pageSize;
    this.#pageGrants = agent.pageGrants;
  }

  /**
   * Whether peers reach only the pages granted to them: `"on"` (builtin engine with page
   * grants), `"off"` (every page reachable by a handshaken peer), `"unsupported"` (the nixl
   * engine enforces none).
   */
  get pageGrants(): "on" | "off" | "unsupported" {
    return this.#pageGrants;
  }

  /**
   * Grants the peer agent `agentName` (as loaded by a handshake) READ and/or WRITE of the
   * pages `pages` of this channel's buffer (contiguous pages become one range), for
   * `expiresMs` at most; resolves to the grant, or to `null` when this channel does not
   * enforce grants (`pageGrants` is not `"on"`: nothing to grant, every page is reachable).
   * Runs on the agent's queue. Revoke with {@linkcode NixlChannel.revokeGrant}.
   *
   * @example
   * ```ts
   * import { NixlChannel } from "@kvport/nixl";
   * declare const ch: NixlChannel;
   * const g = await ch.grantPages("kvport-sender-1", [4, 5, 9], { write: true, expiresMs: 60_000 });
   * // ... the peer WRITEs pages 4, 5 and 9; any other page is refused ...
   * await ch.revokeGrant(g);
   * ```
   */
  grantPages(
    agentName: string,
    pages: readonly number[],
    options: Omit<GrantOptions, "memType">,
  ): Promise<PageGrant | null> {
    if (this.#pageGrants !== "on") return Promise.resolve(null);
    let ranges: { addrs: BigUint64Array; lens: BigUint64Array; devs: BigUint64Array };
    try {
      ranges = this.#ranges(pages);
    } catch (e) {
      return Promise.reject(e);
    }
    const memType = this.#buffer.memType === "VRAM" ? "VRAM" : "DRAM";
    return this.agentQueue.run(() => this.agent.grant(agentName, ranges, { ...options, memType }));
  }

  /**
   * One grant per page of `pages` (each revoked on its own later), all made with one
   * native call (`NixlAgent.grantEach`: one rebuild of the grant table) in one turn of
   * the agent's queue: a credit refill grants a batch of pages at once. Grant `i` of the
   * result is page `pages[i]`'s. All or nothing: on a failure none exists and the error
   * (naming the range's index) is thrown. `[]` when grants are off.
   *
   * @example
   * ```ts
   * import type { NixlChannel } from "@kvport/nixl";
   * declare const ch: NixlChannel;
   * const grants = await ch.grantEachPage("kvport-sender-1", [7, 8], { write: true });
   * await ch.revokeGrants(grants);
   * ```
   */
  grantEachPage(
    agentName: string,
    pages: readonly number[],
    options: Omit<GrantOptions, "memType">,
  ): Promise<PageGrant[]> {
    if (this.#pageGrants !== "on") return Promise.resolve([]);
    let ranges: { addrs: BigUint64Array; lens: BigUint64Array; devs: BigUint64Array };
    try {
      ranges = this.#pageRanges(pages);
    } catch (e) {
      return Promise.reject(e);
    }
    const memType = this.#buffer.memType === "VRAM" ? "VRAM" : "DRAM";
    return this.agentQueue.run(() =>
      this.agent.grantEach(agentName, ranges, { ...options, memType })
    );
  }

  /** Revokes a grant of {@linkcode NixlChannel.grantPages} on the agent's queue;
   * idempotent, and `null` is accepted (nothing was granted). */
  revokeGrant(grant: PageGrant | null): Promise<void> {
    if (grant === null || grant.revoked) return Promise.resolve();
    return this.agentQueue.run(() => grant.revoke());
  }

  /**
   * Revokes grants of {@linkcode NixlChannel.grantPages} / {@linkcode NixlChannel.grantEachPage}
   * in one turn of the agent's queue with one native call (`NixlAgent.revokeGrants`: one
   * rebuild of the grant table). Those revoked already (and `null`s) are skipped; every
   * other one is revoked even when one fails, whose error then rejects the promise.
   *
   * @example
   * ```ts
   * import type { NixlChannel } from "@kvport/nixl";
   * declare const ch: NixlChannel;
   * const grants = await ch.grantEachPage("kvport-sender-1", [3, 4, 5], { write: true });
   * await ch.revokeGrants(grants.slice(0, 2)); // pages 3 and 4; 5 stays writable
   * ```
   */
  revokeGrants(grants: readonly (PageGrant | null)[]): Promise<void> {
    const live = grants.filter((g): g is PageGrant => g !== null && !g.revoked);
    if (live.length === 0) return Promise.resolve();
    return this.agentQueue.run(() => this.agent.revokeGrants(live));
  }

  /** One range per page, in the order of `pages` (not merged: one grant each). */
  #pageRanges(pages: readonly number[]) {
    const n = pages.length;
    if (n === 0) throw new ChannelError("INVALID_ARGUMENT", "grantEachPage: no pages given");
    const size = BigInt(this.#pageSize);
    const addrs = new BigUint64Array(n);
    for (let i = 0; i < n; i++) {
      const p = pages[i];
      if (!Number.isInteger(p) || p < 0 || p >= this.pageCount) {
        throw new ChannelError(
          "INVALID_ARGUMENT",
          `grantEachPage: page index ${p} is outside 0..${this.pageCount - 1}`,
        );
      }
      addrs[i] = this.#buffer.address + BigInt(p) * size;
    }
    return {
      addrs,
      lens: new BigUint64Array(n).fill(size),
      devs: new BigUint64Array(n).fill(BigInt(this.#buffer.device)),
    };
  }

  /** Page indexes as merged address ranges of the buffer. */
  #ranges(pages: readonly number[]) {
    const sorted = [...pages].sort((a, b) => a - b);
    const addrs: bigint[] = [];
    const lens: bigint[] = [];
    const size = BigInt(this.#pageSize);
    let prev = -2;
    for (const p of sorted) {
      if (!Number.isInteger(p) || p < 0 || p >= this.pageCount) {
        throw new ChannelError(
          "INVALID_ARGUMENT",
          `grantPages: page index ${p} is outside 0..${this.pageCount - 1}`,
        );
      }
      if (p === prev) continue;
      if (p === prev + 1) lens[lens.length - 1] += size;
      else {
        addrs.push(this.#buffer.address + BigInt(p) * size);
        lens.push(size);
      }
      prev = p;
    }
    if (addrs.length === 0) {
      throw new ChannelError("INVALID_ARGUMENT", "grantPages: no pages given");
    }
    const dev = BigInt(this.#buffer.device);
    return {
      addrs: BigUint64Array.from(addrs),
      lens: BigUint64Array.from(lens),
      devs: new BigUint64Array(addrs.length).fill(dev),
    };
  }

  /**
   * Creates the agent (`engine`, `backends`), allocates and registers the page buffer
   * (host memory, or VRAM of `device` through the shim's CUDA functions), prepares the
   * local page list, and (with `peerInitUrl`) starts answering handshakes. A CUDA device
   * that is not there fails with `DEVICE_UNAVAILABLE` saying why.
   */
  static async create(options: NixlChannelOptions): Promise<NixlChannel> {
    // Warnings are added below: to a copy, not to the caller's array.
    options = { ...options, warnings: [...(options.warnings ?? [])] };
    const device = options.device ?? { kind: "cpu" };
    if (device.kind === "cuda") {
      const cuda = await cudaDevices({ libraryPath: options.libraryPath }).catch((e) => ({
        count: 0,
        reason: errorMessage(e),
      }));
      if (cuda.count <= device.ordinal) {
        throw new ChannelError(
          "DEVICE_UNAVAILABLE",
          cuda.count === 0
            ? `device cuda:${device.ordinal} was asked for the page buffer but this machine ` +
              `has no usable CUDA device (${cuda.reason}): use pd_buffer_device "cpu" ` +
              '(channel device "cpu")'
            : `device cuda:${device.ordinal} was asked for the page buffer but there are ` +
              `only ${cuda.count} CUDA device(s) (0..${cuda.count - 1}); "cuda" alone ` +
              "means the TP rank's device",
          { op: "create" },
        );
      }
    }
    const size = options.pageSize * options.pageCount;
    const agent = await NixlAgent.create({
      name: `kvport-${options.role}-${crypto.randomUUID()}`,
      engine: options.engine ?? "auto",
      backends: [...options.backends],
      params: dataPlaneParams(options, await grantsParam(options)),
      libraryPath: options.libraryPath,
      metrics: options.metrics,
    });
    let ch: NixlChannel;
    try {
      if (options.pageGrants && agent.pageGrants !== "on") {
        options.warnings!.push(
          agent.engine === "nixl"
            ? NIXL_GRANTS_WARNING
            : `page grants are off (agent param page_grants=${agent.pageGrants}): every page ` +
              "is reachable by a handshaken peer",
        );
      }
      const buffer = device.kind === "cuda"
        ? agent.allocate(size, { memType: "VRAM", device: device.ordinal })
        : agent.allocate(size);
      // Touch every page now (as pinning does): the first transfer must not pay for the
      // page faults of a fresh buffer. (cudaMalloc memory needs no such thing.)
      if (options.prefault !== false && buffer instanceof HostBuffer) buffer.bytes.fill(0);
      const registration = agent.registerMemory(buffer);
      const list = DescList.pages(buffer, options.pageSize, options.pageCount, { agent });
      let local: PreparedDescList;
      let pageList: Uint8Array;
      try {
        local = agent.prepDescList("", list);
        pageList = list.serialize();
      } finally {
        list.release();
      }
      ch = new NixlChannel(options, agent, buffer, registration, local, pageList);
    } catch (e) {
      await agent.close().catch(() => {});
      throw e;
    }
    if (options.peerInitUrl) {
      try {
        await ch.listen(options.peerInitUrl);
      } catch (e) {
        await ch.close();
        throw new ChannelError(
          "INVALID_ARGUMENT",
          `cannot listen for handshakes on ${options.peerInitUrl}: ${errorMessage(e)}`,
          { url: options.peerInitUrl, cause: e },
        );
      }
    }
    return ch;
  }

  /** This side's agent metadata blob. (data plane of ChannelBase)
   * @ignore */
  protected dpLocalMetadata(): Promise<Uint8Array> {
    return this.agentQueue.run(() => this.agent.localMetadata());
  }

  /** Loads a peer's metadata; returns its agent name. (data plane of ChannelBase)
   * @ignore */
  protected dpLoadRemote(meta: Uint8Array): Promise<string> {
    return this.agentQueue.run(() => {
      try {
        return this.agent.addRemoteAgent(meta);
      } catch (e) {
        // A restarted peer that kept its name: forget the old incarnation, load the new.
        const name = metadataName(meta);
        // (Only a name that is loaded: other refusals, such as a blob carrying this agent's
        // own token, are the answer.)
        if (
          e instanceof NixlError && e.status === Status.ERR_NOT_ALLOWED && name &&
          this.agent.remoteAgents.includes(name)
        ) {
          this.agent.invalidateRemoteAgent(name);
          return this.agent.addRemoteAgent(meta);
        }
        throw e;
      }
    });
  }

  /** This side's serialized page list. (data plane of ChannelBase)
   * @ignore */
  protected dpLocalPageList(): Promise<Uint8Array> {
    return Promise.resolve(this.#pageList);
  }

  /** Prepares a peer's page list for transfers. (data plane of ChannelBase)
   * @ignore */
  protected dpPrepRemote(agentName: string, pageList: Uint8Array): Promise<PeerHandle> {
    return this.agentQueue.run(() => {
      const list = DescList.deserialize(pageList, { agent: this.agent });
      try {
        if (list.count > 0 && list.memType !== "DRAM" && list.memType !== "VRAM") {
          throw new ChannelError(
            "HANDSHAKE_FAILED",
            `peer ${agentName} sent a page list of ${list.memType}: expected DRAM or VRAM`,
          );
        }
        const prepped = this.agent.prepDescList(agentName, list);
        return { agentName, pageCount: list.count, prepped };
      } finally {
        list.release();
      }
    });
  }

  /** Releases a peer's prepared list (and forgets its agent when asked). (data plane of ChannelBase)
   * @ignore */
  protected dpRelease(peer: PeerHandle, invalidate: boolean): Promise<void> {
    const handle = peer as NixlPeer;
    return this.agentQueue.run(() => {
      if (this.agent.closed) return;
      try {
        handle.prepped.release();
      } finally {
        if (invalidate && this.agent.remoteAgents.includes(handle.agentName)) {
          this.agent.invalidateRemoteAgent(handle.agentName);
        }
      }
    });
  }

  /** Moves pages; resolves once the data has landed. (data plane of ChannelBase)
   * @ignore */
  protected async dpTransfer(
    op: "READ" | "WRITE",
    local: Uint32Array,
    peer: PeerHandle,
    remote: Uint32Array,
    timeoutMs: number,
    notification: Uint8Array | undefined,
    _peerId?: string,
    onPosted?: () => void,
  ): Promise<void> {
    const handle = peer as NixlPeer;
    const q = this.agentQueue;
    // Create and post as one task of the queue; wait outside it (a native wait on Deno's
    // thread pool, timer-paced polling on Bun); release under the queue, always. When
    // the queue is idle (nothing queued, nothing running) a task runs in this turn: the
    // calls into the agent stay one at a time, without the turns a queued task costs.
    let req: TransferRequest | undefined;
    const begin = () => {
      // (The index lists are the channel's checked copies, typed arrays that
      // createTransfer takes as they are.)
      req = this.agent.createTransfer(
        op,
        this.#local,
        local,
        handle.prepped,
        remote,
        { notification },
      );
      return req.post();
    };
    const release = () => {
      if (q.pending === 0) {
        try {
          req!.release();
        } catch { /* released in any case */ }
        return;
      }
      return q.run(() => req!.release()).catch(() => {});
    };
    try {
      const state = q.pending === 0 ? begin() : await q.run(begin);
      onPosted?.();
      if (state === "pending") await req!.wait(clampDelay(timeoutMs));
    } catch (e) {
      if (!(e instanceof NixlTimeoutError) || !req) throw e;
      // Cancel before reporting, so the error can say what became of the request.
      const released = release();
      if (released) await released;
      throw new NixlTimeoutError(
        { op: e.op, peer: e.peer, count: e.count, timeoutMs: e.timeoutMs },
        "the request was cancelled and released",
      );
    } finally {
      const released = req && release();
      if (released) await released;
    }
  }

  /** Starts or stops the notification pump. (data plane of ChannelBase)
   * @ignore */
  protected override notificationInterestChanged(interested: boolean): void {
    this.#pumping = interested;
    if (!interested) {
      this.#offWake?.();
      this.#offWake = null;
      this.#backstop?.clear();
      this.#backstop = null;
      return;
    }
    if (this.#stopping || this.#pump || this.#offWake) return;
    // Where the agent has a wake callback, notifications are handed to the listeners in
    // the turn of the wake (no promise or timer in between); a slow timer takes what a
    // wake would have missed and keeps the process alive while someone listens, as the
    // pump's waits do.
    const off = this.agent.onNotifications((notes) => this.#emitAll(notes));
    if (off) {
      this.#offWake = off;
      this.#backstop = every(PUMP_SLICE_MS, () => this.#takeNow());
      queueMicrotask(() => this.#takeNow()); // those queued before the listener came
      return;
    }
    this.#pump = this.#runPump().finally(() => {
      this.#pump = null;
    });
  }

  #emitAll(notes: readonly { agent: string; message: Uint8Array }[]): void {
    for (const n of notes) this.emitNotification({ from: n.agent, message: n.message });
  }

  /** What is queued now, to the listeners (the backstop of the wake callback). */
  #takeNow(): void {
    if (!this.#pumping || this.#stopping || this.agent.closed) return;
    let notes;
    try {
      notes = this.agent.takeNotifications();
    } catch {
      return; // closing: the next tick (if any) tries again
    }
    this.#emitAll(notes);
  }

  async #runPump(): Promise<void> {
    while (this.#pumping && !this.#stopping && !this.agent.closed) {
      let notes;
      try {
        notes = await this.agent.waitNotifications(PUMP_SLICE_MS);
      } catch {
        if (this.#stopping || this.agent.closed) return;
        await sleep(50);
        continue;
      }
      this.#emitAll(notes);
    }
  }

  /** Frees the buffer and the agent. (data plane of ChannelBase)
   * @ignore */
  protected async dpClose(): Promise<void> {
    this.#stopping = true;
    this.#pumping = false;
    this.#offWake?.();
    this.#offWake = null;
    this.#backstop?.clear();
    this.#backstop = null;
    await this.agentQueue.run(() => {
      try {
        this.#local.release();
      } catch { /* closing anyway */ }
      try {
        this.#registration.release();
      } catch { /* closing anyway */ }
    });
    // Destroying the agent wakes a notification wait at once (and waits for it to
    // return), so the pump ends now rather than at the end of its wait slice.
    await this.agent.close().catch(() => {});
    await this.#pump?.catch(() => {});
    try {
      this.#buffer.free();
    } catch { /* the agent frees what it allocated */ }
  }
}
