/**
 * `mock_memory`: a channel whose control plane is the real one (ZeroMQ REQ/REP
 * handshake, LMCache messages) and whose data plane is a process-global map, so tests
 * run without the native library. Only peers of one process can exchange pages.
 *
 * @module
 */

import { sleep } from "../deadline.ts";
import type { SideChannelCurve } from "./curve_config.ts";
import type { MetricsRegistry } from "../metrics/registry.ts";
import { ChannelBase, type PeerHandle } from "./base.ts";
import { ChannelError } from "./errors.ts";
import type { ChannelNotification, ChannelRole } from "./types.ts";

/**
 * The data plane of `mock_memory` channels: agent name, then page index, to the page
 * view of that agent's buffer. A WRITE copies into the peer's page, a READ out of it.
 *
 * @example
 * ```ts
 * import { mockMemoryStore } from "./mock_memory.ts";
 *
 * console.log(mockMemoryStore.size); // number of live mock agents in this process
 * ```
 */
export const mockMemoryStore: Map<string, Map<number, Uint8Array>> = new Map();

const deliveries = new Map<string, (n: ChannelNotification) => void>();

interface MockPeer extends PeerHandle {
  released: boolean;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function parseJson(bytes: Uint8Array, what: string): Record<string, unknown> {
  try {
    const v = JSON.parse(dec.decode(bytes));
    if (v && typeof v === "object" && v.kind === "kvport-mock") return v;
  } catch {
    // fall through
  }
  throw new ChannelError(
    "HANDSHAKE_FAILED",
    `${what} is not a mock_memory blob: both sides of a handshake must use the same ` +
      "channel type (mock_memory talks only to mock_memory in the same process)",
  );
}

/** Options of {@linkcode MockMemoryChannel.create}. */
export interface MockMemoryChannelOptions {
  /** Role of the channel. */
  role: ChannelRole;
  /** Bytes per page. */
  pageSize: number;
  /** Number of pages. */
  pageCount: number;
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
  /** Most peers known at once (default 4096; the least recently used goes first). */
  maxPeers?: number;
  /** Registry the channel is counted in (default: `metricsRegistry()`). */
  metrics?: MetricsRegistry;
  /** CURVE on the handshake side channel: server keys to listen, client keys to connect. */
  curve?: SideChannelCurve;
}

/**
 * An in-process channel for tests: the same handshake over TCP as `nixl`, data moved
 * by copying between the page views of channels of this process.
 *
 * @example
 * ```ts
 * import { MockMemoryChannel } from "@kvport/nixl";
 *
 * await using ch = await MockMemoryChannel.create({
 *   role: "both", pageSize: 256, pageCount: 4, peerInitUrl: "127.0.0.1:0",
 * });
 * console.log(ch.initUrl, ch.pages.length);
 * ```
 */
export class MockMemoryChannel extends ChannelBase {
  private constructor(options: MockMemoryChannelOptions, pages: Uint8Array[], name: string) {
    super({
      channelType: "mock_memory",
      role: options.role,
      localId: options.localId ?? name,
      agentName: name,
      engine: "mock",
      pageSize: options.pageSize,
      pages,
      warnings: options.warnings ?? [],
      handshakeTimeoutMs: options.handshakeTimeoutMs,
      transferTimeoutMs: options.transferTimeoutMs,
      maxPeers: options.maxPeers,
      metrics: options.metrics,
      curve: options.curve,
    });
  }

  /** Creates the channel, its buffer, and (with `peerInitUrl`) its handshake listener. */
  static async create(options: MockMemoryChannelOptions): Promise<MockMemoryChannel> {
    const { pageSize, pageCount } = options;
    const buf = new ArrayBuffer(pageSize * pageCount);
    const pages: Uint8Array[] = [];
    for (let i = 0; i < pageCount; i++) pages.push(new Uint8Array(buf, i * pageSize, pageSize));
    const name = `mock-${options.role}-${crypto.randomUUID()}`;
    const ch = new MockMemoryChannel(options, pages, name);
    mockMemoryStore.set(name, new Map(pages.map((p, i) => [i, p])));
    deliveries.set(name, (n) => ch.emitNotification(n));
    if (options.peerInitUrl) {
      try {
        await ch.listen(options.peerInitUrl);
      } catch (e) {
        await ch.close();
        throw e;
      }
    }
    return ch;
  }

  /** This side's agent metadata blob. (data plane of ChannelBase)
   * @ignore */
  protected dpLocalMetadata(): Promise<Uint8Array> {
    return Promise.resolve(
      enc.encode(JSON.stringify({ kind: "kvport-mock", name: this.agentName })),
    );
  }

  /** Loads a peer's metadata; returns its agent name. (data plane of ChannelBase)
   * @ignore */
  protected dpLoadRemote(meta: Uint8Array): Promise<string> {
    try {
      const m = parseJson(meta, "peer metadata");
      const name = String(m.name);
      if (!mockMemoryStore.has(name)) {
        throw new ChannelError(
          "HANDSHAKE_FAILED",
          `mock_memory peer ${name} is not alive in this process ` +
            "(mock_memory moves data only between channels of one process)",
        );
      }
      return Promise.resolve(name);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** This side's serialized page list. (data plane of ChannelBase)
   * @ignore */
  protected dpLocalPageList(): Promise<Uint8Array> {
    return Promise.resolve(
      enc.encode(
        JSON.stringify({
          kind: "kvport-mock",
          name: this.agentName,
          pageSize: this.pageSize,
          pageCount: this.pageCount,
        }),
      ),
    );
  }

  /** Prepares a peer's page list for transfers. (data plane of ChannelBase)
   * @ignore */
  protected dpPrepRemote(agentName: string, pageList: Uint8Array): Promise<PeerHandle> {
    try {
      const l = parseJson(pageList, "peer page list");
      if (l.name !== agentName) {
        throw new ChannelError(
          "HANDSHAKE_FAILED",
          `page list of ${String(l.name)} does not belong to agent ${agentName}`,
        );
      }
      if (l.pageSize !== this.pageSize) {
        throw new ChannelError(
          "HANDSHAKE_FAILED",
          `peer ${agentName} has pages of ${String(l.pageSize)} bytes, this channel of ` +
            `${this.pageSize}: both sides must use the same align_bytes`,
        );
      }
      return Promise.resolve({ agentName, pageCount: Number(l.pageCount), released: false });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Releases a peer's prepared list (and forgets its agent when asked). (data plane of ChannelBase)
   * @ignore */
  protected dpRelease(peer: PeerHandle): Promise<void> {
    (peer as MockPeer).released = true;
    return Promise.resolve();
  }

  /** Moves pages; resolves once the data has landed. (data plane of ChannelBase)
   * @ignore */
  protected dpTransfer(
    op: "READ" | "WRITE",
    local: Uint32Array,
    peer: PeerHandle,
    remote: Uint32Array,
    _timeoutMs: number,
    notification: Uint8Array | undefined,
    _peerId?: string,
    onPosted?: () => void,
  ): Promise<void> {
    const handle = peer as MockPeer;
    return this.agentQueue.run(async () => {
      onPosted?.();
      const peerPages = mockMemoryStore.get(handle.agentName);
      if (handle.released || !peerPages) {
        throw new ChannelError(
          "TRANSFER_FAILED",
          `mock_memory peer ${handle.agentName} is gone (closed or forgotten)`,
        );
      }
      // Yield once: a transfer completes asynchronously, as a real one does.
      await sleep(0);
      for (let i = 0; i < local.length; i++) {
        const mine = this.pages[local[i]];
        const theirs = peerPages.get(remote[i])!;
        if (op === "WRITE") theirs.set(mine);
        else mine.set(theirs);
      }
      if (notification) {
        const deliver = deliveries.get(handle.agentName);
        const message = notification.slice();
        const from = this.agentName;
        queueMicrotask(() => deliver?.({ from, message }));
      }
    });
  }

  /** Frees the buffer and the agent. (data plane of ChannelBase)
   * @ignore */
  protected dpClose(): Promise<void> {
    mockMemoryStore.delete(this.agentName);
    deliveries.delete(this.agentName);
    return Promise.resolve();
  }
}
