/**
 * `@kvport/nixl`: move KV-cache pages between LLM inference processes, and into storage,
 * LMCache-compatible, over NVIDIA NIXL when installed and a built-in engine when not.
 *
 * - {@linkcode loadConfig}: LMCache's YAML files and `LMCACHE_*` variables.
 * - {@linkcode NixlAgent}: NIXL's agent model (memory, metadata, descriptor lists,
 *   one-sided READ/WRITE, notifications).
 * - {@linkcode createTransferChannel}: LMCache's transfer channels (`nixl`,
 *   `mock_memory`): handshake with peers, move page batches.
 * - {@linkcode PdSender} / {@linkcode PdReceiver} / {@linkcode ProxyNotifier}:
 *   disaggregated prefill, prefiller to decoder.
 * - {@linkcode NixlStorageBackend}: KV chunks in files (and, with NIXL, object stores).
 * - {@linkcode P2PBackend} / {@linkcode P2PRegistry}: KV sharing between instances.
 * - {@linkcode metricsRegistry} / {@linkcode serveMetrics}: every layer's metrics in
 *   Prometheus's text format (also `@kvport/nixl/metrics`, without the native library).
 *
 * @example
 * ```ts
 * import { loadConfig, PdReceiver } from "@kvport/nixl";
 *
 * const { config, warnings } = loadConfig({ file: "lmcache-decoder-config.yaml" });
 * for (const w of warnings) console.warn(w.message);
 * await using rx = await PdReceiver.fromConfig(config, { tpRank: 0, pageSize: 28 << 20 });
 * console.log(`decoder ${rx.id} listening on ${rx.initUrl} and ${rx.allocUrl}`);
 * ```
 *
 * @module
 */

// The root exports what a user of the library needs, one name each; helpers the
// modules share stay in their modules (tests/public_surface_test.ts holds the list).

export { VERSION } from "./ffi/version.ts";

// Configuration (the `./config` entry point has the key table and parsing helpers too).
export {
  ConfigError,
  FILE_STORAGE_BACKENDS,
  loadConfig,
  NIXL_STORAGE_BACKENDS,
  PD_BACKEND_MODES,
  PD_ROLES,
  STORAGE_BACKEND_DEVICES,
  TRANSFER_CHANNELS,
} from "./src/config/mod.ts";
export type {
  ConfigIssue,
  ConfigSource,
  ConfigWarning,
  ConfigWarningCode,
  EnvMap,
  ExtraConfig,
  KvportConfig,
  LoadConfigOptions,
  LoadedConfig,
  NixlStorageBackendName,
  PdBackendMode,
  PdRole,
  TransferChannelType,
} from "./src/config/mod.ts";

// The NIXL agent model and the native library.
export {
  cudaDeviceCount,
  cudaDevices,
  DescList,
  DeviceBuffer,
  engines,
  HostBuffer,
  NativeBuffer,
  nativeLibrary,
  NativeLibraryError,
  NixlAgent,
  NixlError,
  NixlTimeoutError,
  PageGrant,
  PreparedDescList,
  probeEngine,
  Registration,
  Status,
  statusName,
  TransferRequest,
} from "./src/agent.ts";
export type {
  AgentOptions,
  AllocateOptions,
  CudaInfo,
  DescArrays,
  DescArraysInput,
  DescListOptions,
  EngineName,
  EngineProbe,
  FileRegion,
  GrantArrays,
  GrantOptions,
  GrantRange,
  LibraryOptions,
  MemoryRegion,
  MemType,
  NativeLibraryInfo,
  Notification,
  ObjectRegion,
  PageSource,
  RegisterInput,
  StatusCode,
  TimeoutDetails,
  TransferOp,
  TransferOptions,
  TransferState,
  WaitOptions,
} from "./src/agent.ts";

// Transfer channels.
export {
  ChannelError,
  ChannelTimeoutError,
  createTransferChannel,
  LeasePool,
  MockMemoryChannel,
  NixlChannel,
  PageLease,
  parseDevice,
  sideChannelCurveFromConfig,
} from "./src/channel/mod.ts";
export type {
  BufferDevice,
  ChannelErrorCode,
  ChannelNotification,
  ChannelPage,
  ChannelRole,
  ConnectOptions,
  CreateTransferChannelOptions,
  CurveConfigLike,
  LeaseAcquireOptions,
  LeaseHooks,
  LeaseOptions,
  LeasePoolOptions,
  LeaseReleaseEvent,
  LeaseReleaseOptions,
  LeaseReleaseReason,
  LeaseState,
  LocalPages,
  MockMemoryChannelOptions,
  NixlChannelOptions,
  SideChannelCurve,
  SideMessage,
  SideMessageHandler,
  TransferChannel,
  TransferSpec,
} from "./src/channel/mod.ts";

// Disaggregated prefill.
export {
  chunkBytes,
  dtypeBytes,
  formatCacheKey,
  MemoryFormat,
  parseCacheKey,
  PdAllocRefusedError,
  PdReceiver,
  PdSender,
  PdSendError,
  ProxyNotifier,
} from "./src/pd/mod.ts";
export type {
  CacheKey,
  DisaggSpec,
  PdChannelSettings,
  PdConfigLike,
  PdReceiverOptions,
  PdReceiverStage,
  PdReceiverStats,
  PdRefusalReason,
  PdSenderOptions,
  PdSenderStage,
  PdTimelineHook,
  PdWireGeneration,
  ProxyNotifierOptions,
  ReceivedChunk,
  SendBatch,
  SendResult,
} from "./src/pd/mod.ts";

// Storage.
export {
  NixlStorageBackend,
  NO_EVICTION_CANDIDATE,
  STORAGE_FORMAT_VERSION,
  StorageError,
  storageOptionsFromConfig,
  StoragePage,
} from "./src/storage/mod.ts";
export type {
  ContainsOptions,
  FromConfigOptions,
  NixlStorageOptions,
  PutResult,
  StorageConfigSource,
  StorageErrorCode,
  StorageFile,
  StorageFileSet,
  StorageIo,
  StorageOpenOptions,
  StorageRegistration,
  StorageStats,
  StoreCounters,
  VerifyReads,
} from "./src/storage/mod.ts";

// Peer-to-peer sharing.
export { chunkHashOf, P2PBackend, P2PError, P2PRegistry } from "./src/p2p/mod.ts";
export type {
  P2PBackendOptions,
  P2PBackendStats,
  P2PConfigLike,
  P2PFetchResult,
  P2PHolder,
  P2PInstanceInfo,
  P2PLookupAnswer,
  P2PLookupResult,
  P2PRegistryConfigLike,
  P2PRegistryEvent,
  P2PRegistryOptions,
  P2PRegistryStats,
  P2PStage,
  P2PTimelineHook,
} from "./src/p2p/mod.ts";

// Metrics (the `./metrics` entry point has the metric types and the text format too).
export { MetricsRegistry, metricsRegistry, serveMetrics } from "./src/metrics/mod.ts";
export type { MetricsServer, ServeMetricsOptions } from "./src/metrics/mod.ts";
