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
export * from "./src/config/mod.ts";
export * from "./src/agent.ts";
export * from "./src/channel/mod.ts";
export * from "./src/pd/mod.ts";
export * from "./src/storage/mod.ts";
export * from "./src/p2p/mod.ts";
export * from "./src/metrics/mod.ts";
