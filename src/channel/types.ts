/**
 * The transfer-channel contract shared by every channel type (LMCache's
 * `BaseTransferChannel`).
 *
 * @module
 */

import type { TransferChannelType } from "../config/mod.ts";
import type { BufferDevice, ChannelPage } from "./page.ts";

/** Role of a channel, as LMCache names it. */
export type ChannelRole = "sender" | "receiver" | "both";

/** A control-plane message: a msgpack map whose `type` is LMCache's class name. */
export interface SideMessage {
  /** LMCache class name, e.g. `"P2PInitSideMsg"`. */
  type: string;
  /** Other fields, in declaration order. */
  [field: string]: unknown;
}

/** Options of {@linkcode TransferChannel.connect}. */
export interface ConnectOptions {
  /**
   * A message sent on the handshake's connection after the two stages; its reply is
   * what `connect` resolves to (P2P: `P2PInitSideMsg` -> `P2PInitSideRetMsg`).
   */
  sideMessage?: SideMessage;
  /** Deadline of the whole handshake, in milliseconds (default: the channel's). */
  timeoutMs?: number;
  /**
   * How many NIXL agents the peer's channel runs (newer LMCache can run several over
   * one buffer, one per NIC: its `num_agents`); default 1. Such a responder answers only
   * a handshake that lists that many agents, so this channel's one agent is listed that
   * many times; the lengths the peer answers with must match.
   */
  peerAgents?: number;
}

/** Which pages of the peer a batch goes to or comes from. */
export interface TransferSpec {
  /** The peer, as given to `connect` (or the id a peer handshook with us under). */
  peerId: string;
  /** The peer's page indexes; `remoteIndexes[i]` pairs with the i-th local page. */
  remoteIndexes: readonly number[];
  /** Deadline of the transfer, in milliseconds (default: the channel's). */
  timeoutMs?: number;
  /**
   * Bytes delivered to the peer after the data has landed (at most 64 KiB); the peer
   * sees it through {@linkcode TransferChannel.onNotification}.
   */
  notification?: Uint8Array;
  /** Called once the transfer has been posted to the engine (timing hooks; must be
   * cheap and must not throw). */
  onPosted?: () => void;
}

/** A notification from a peer. */
export interface ChannelNotification {
  /** The peer agent that sent it. */
  from: string;
  /** Its bytes. */
  message: Uint8Array;
}

/** Local pages of a batch: page indexes, page views of this channel's (host) buffer, or
 * page handles from {@linkcode TransferChannel.page}. */
export type LocalPages =
  | readonly number[]
  | readonly Uint8Array[]
  | readonly (number | ChannelPage)[];

/** Handler of a side message arriving on the handshake socket (responder side). */
export type SideMessageHandler = (
  message: SideMessage,
) => SideMessage | Promise<SideMessage>;

/**
 * A transfer channel: one registered buffer cut into pages, a handshake that exchanges
 * agent metadata and page lists with peers, and one-sided page-batch WRITE and READ.
 *
 * The responder side listens on its init URL (when it has one) and answers handshakes;
 * the initiator calls {@linkcode connect}. After a handshake both sides may address
 * the other's pages by index.
 *
 * @example
 * ```ts
 * import { createTransferChannel } from "@kvport/nixl";
 *
 * await using rx = await createTransferChannel({
 *   channelType: "mock_memory", role: "receiver", bufferSize: 4096, alignBytes: 1024,
 *   tpRank: 0, peerInitUrl: "127.0.0.1:0",
 * });
 * await using tx = await createTransferChannel({
 *   channelType: "mock_memory", role: "sender", bufferSize: 4096, alignBytes: 1024,
 *   tpRank: 0, peerInitUrl: null,
 * });
 * await tx.connect("rx", rx.initUrl!);
 * tx.pages[0].fill(7);
 * await tx.write([0], { peerId: "rx", remoteIndexes: [3] });
 * console.log(rx.pages[3][0]); // 7
 * ```
 */
export interface TransferChannel extends AsyncDisposable {
  /** `"nixl"` or `"mock_memory"`. */
  readonly channelType: TransferChannelType;
  /** Role given at creation. */
  readonly role: ChannelRole;
  /** The id peers store this channel's page list under (sent as `local_id`). */
  readonly localId: string;
  /** The agent name of this channel (what peers see as the notification sender). */
  readonly agentName: string;
  /** Bytes per page (`alignBytes`). */
  readonly pageSize: number;
  /** Number of pages. */
  readonly pageCount: number;
  /**
   * Page views over the registered buffer, for host memory. A GPU channel's pages are
   * not viewable: indexing `pages` there throws (use {@linkcode page}).
   */
  readonly pages: readonly Uint8Array[];
  /** Where the buffer lives: `{ kind: "cpu" }` or `{ kind: "cuda", ordinal }`. */
  readonly device: BufferDevice;
  /**
   * A handle on page `index` (host or GPU): `copyFrom`, `copyTo`, `read`, `checksum`.
   * The same object for the same index.
   */
  page(index: number): ChannelPage;
  /** `host:port` this channel answers handshakes on, or `null` when it does not listen. */
  readonly initUrl: string | null;
  /** Things the creator may want to print (e.g. a buffer size aligned down). */
  readonly warnings: readonly string[];
  /** Engine serving the data plane: `"builtin"`, `"nixl"` or `"mock"`. */
  readonly engine: string;

  /**
   * Handshakes with the peer listening on `peerInitUrl` and remembers its page list
   * under `peerId`. A second connect to a known peer re-handshakes (a restarted peer
   * brings a new agent: the old one is invalidated and its handles released).
   * Resolves to the reply of `options.sideMessage`, or `null`.
   */
  connect(
    peerId: string,
    peerInitUrl: string,
    options?: ConnectOptions,
  ): Promise<SideMessage | null>;
  /** Whether `peerId` is known (handshaken, in either direction). */
  hasPeer(peerId: string): boolean;
  /** Forgets a peer: its remote agent is invalidated and its handles released. */
  forgetPeer(peerId: string): Promise<void>;
  /** Page indexes of local pages given as indexes or as page views of this buffer. */
  localIndexes(pages: LocalPages): number[];
  /** WRITEs local pages into the peer's pages; resolves to the number of pages moved. */
  write(local: LocalPages, spec: TransferSpec): Promise<number>;
  /** READs the peer's pages into local pages; resolves to the number of pages moved. */
  read(local: LocalPages, spec: TransferSpec): Promise<number>;
  /** Subscribes to notifications from peers; returns the unsubscribe function. */
  onNotification(handler: (n: ChannelNotification) => void): () => void;
  /** Sets the handler of side messages arriving after a peer's handshake. */
  onSideMessage(handler: SideMessageHandler | null): void;
  /** Stops listening, releases every handle, the buffer and the agent. Idempotent. */
  close(): Promise<void>;
}
