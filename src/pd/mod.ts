/**
 * Disaggregated prefill (LMCache's PD backend, push model): {@linkcode PdSender} on the
 * prefiller, {@linkcode PdReceiver} on the decoder, {@linkcode ProxyNotifier} where the
 * proxy waits for "prefill done".
 *
 * @example
 * ```ts
 * import { PdReceiver, PdSender, ProxyNotifier } from "@kvport/nixl";
 *
 * const pageSize = 1 << 16;
 * await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
 * await using rx = await PdReceiver.create({
 *   host: "127.0.0.1", initPort: 0, allocPort: 0, bufferSize: 8 * pageSize, pageSize,
 *   channelType: "mock_memory",
 * });
 * await using tx = await PdSender.create({
 *   bufferSize: 8 * pageSize, pageSize, channelType: "mock_memory",
 *   proxyHost: "127.0.0.1", proxyPort: proxy.port,
 * });
 * const pages = await tx.allocate(1);
 * tx.channel.pages[pages[0]].fill(9);
 * const key = "vllm@m@1@0@cafe@bfloat16";
 * await tx.send(
 *   { reqId: "r1", receiverHost: "127.0.0.1", receiverInitPort: rx.initPort,
 *     receiverAllocPort: rx.allocPort, isLastPrefill: true },
 *   { keys: [key], pages, shape: [2, 2, 256, 32], dtype: "bfloat16", lastChunkToks: 256 },
 * );
 * await proxy.waitFor("r1");
 * await rx.waitFor([key]);
 * console.log(rx.retrieve(key)!.data[0]); // 9
 * ```
 *
 * @module
 */

export {
  type CacheKey,
  chunkBytes,
  dtypeBytes,
  formatCacheKey,
  MemoryFormat,
  parseCacheKey,
} from "./keys.ts";
export type { PdChannelSettings, PdConfigLike } from "./config.ts";
export {
  PdReceiver,
  type PdReceiverOptions,
  type PdReceiverStats,
  type ReceivedChunk,
} from "./receiver.ts";
export {
  type DisaggSpec,
  PdAllocRefusedError,
  PdSender,
  type PdSenderOptions,
  PdSendError,
  type SendBatch,
  type SendResult,
} from "./sender.ts";
export {
  ALLOC_RESPONSE_ORDER,
  type AllocOutcome,
  AllocRefusal,
  allocRequest,
  allocResponse,
  generationOfRequest,
  generationOfResponse,
  type PdRefusalReason,
  type PdWireGeneration,
  readAllocResponse,
  refusalReasonOf,
  refusalReply,
} from "./alloc_wire.ts";
export { ProxyNotifier, type ProxyNotifierOptions } from "./proxy.ts";
export type { PdReceiverStage, PdSenderStage, PdTimelineHook } from "./timeline.ts";
export { checkPattern, fillPattern } from "./pattern.ts";
