/**
 * Transfer channels: LMCache's `BaseTransferChannel` in TypeScript. A channel owns one
 * registered buffer cut into pages, answers handshakes on its init URL, handshakes with
 * peers (`NixlInitRequest` -> `NixlInitResponse`, `NixlMemRegRequest` ->
 * `NixlMemRegResponse`, then an optional side message), and moves page batches with
 * one-sided WRITE and READ.
 *
 * @example
 * ```ts
 * import { createTransferChannel } from "@kvport/nixl";
 *
 * await using rx = await createTransferChannel({
 *   channelType: "mock_memory", role: "receiver", bufferSize: 8192, alignBytes: 4096,
 *   tpRank: 0, peerInitUrl: "127.0.0.1:0",
 * });
 * await using tx = await createTransferChannel({
 *   channelType: "mock_memory", role: "sender", bufferSize: 8192, alignBytes: 4096,
 *   tpRank: 0, peerInitUrl: null,
 * });
 * await tx.connect("rx", rx.initUrl!);
 * tx.pages[1].fill(42);
 * await tx.write([1], { peerId: "rx", remoteIndexes: [0] });
 * console.log(rx.pages[0][0]); // 42
 * ```
 *
 * @module
 */

export type {
  ChannelNotification,
  ChannelRole,
  ConnectOptions,
  LocalPages,
  SideMessage,
  SideMessageHandler,
  TransferChannel,
  TransferSpec,
} from "./types.ts";
export { ChannelError, type ChannelErrorCode, ChannelTimeoutError } from "./errors.ts";
export {
  alignBuffer,
  type BufferDevice,
  createTransferChannel,
  type CreateTransferChannelOptions,
  parseDevice,
} from "./factory.ts";
export { ChannelBase, type ChannelBaseInit, type PeerHandle } from "./base.ts";
export { SerialQueue } from "./_util.ts";
export {
  MockMemoryChannel,
  type MockMemoryChannelOptions,
  mockMemoryStore,
} from "./mock_memory.ts";
export { NixlChannel, type NixlChannelOptions } from "./nixl.ts";
export {
  type CurveConfigLike,
  type SideChannelCurve,
  sideChannelCurveFromConfig,
} from "./curve_config.ts";
export { type ChannelPage, fnv1a64 } from "./page.ts";
export {
  type LeaseAcquireOptions,
  type LeaseHooks,
  type LeaseOptions,
  LeasePool,
  type LeasePoolOptions,
  type LeaseReleaseEvent,
  type LeaseReleaseOptions,
  type LeaseReleaseReason,
  type LeaseState,
  PageLease,
} from "./lease_pool.ts";
