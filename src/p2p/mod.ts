/**
 * Peer-to-peer KV-cache sharing between inference instances (LMCache's P2P backend and
 * the part of its cache controller P2P needs), over transfer channels.
 *
 * - {@linkcode P2PRegistry}: the lookup service (`kvport p2p-registry`): instances
 *   register, report admits and evicts, send heartbeats; it answers "who holds the
 *   longest prefix of these chunk hashes?" and forgets silent instances.
 * - {@linkcode P2PBackend}: one instance. As a holder it keeps chunks in its channel's
 *   pages and WRITEs the hit prefix into a requester's pages on request; as a requester
 *   it looks up, handshakes once per holder, fetches, re-handshakes and retries after a
 *   holder restart. A chunk evicted between lookup and fetch shortens the hit, never
 *   changes its bytes.
 * - {@linkcode ChunkStore}, {@linkcode RegistryClient}, {@linkcode chunkHashOf}: the
 *   pieces, for embedding.
 *
 * Flow (LMCache's messages): requester -> registry `BatchedP2PLookupMsg` ->
 * `BatchedP2PLookupRetMsg`; requester -> holder's init port: the channel handshake plus
 * `P2PInitSideMsg` -> `P2PInitSideRetMsg{peer_lookup_url}`; requester -> holder's lookup
 * port `BatchedLookupAndGetMsg{lookup_id, receiver_id, keys, mem_indexes}`; the holder
 * WRITEs, then replies `BatchedLookupAndGetRetMsg{num_hit_chunks}` or
 * `P2PErrorMsg{error_code}`.
 *
 * @example
 * ```ts
 * import { P2PBackend, P2PRegistry } from "@kvport/nixl";
 *
 * await using registry = await P2PRegistry.listen({ pullUrl: "127.0.0.1:0", replyUrl: "127.0.0.1:0" });
 * const base = {
 *   host: "127.0.0.1", initPort: 0, lookupPort: 0, pageSize: 1 << 16, bufferSize: 1 << 22,
 *   channelType: "mock_memory" as const, registryPullUrl: registry.pullUrl,
 *   registryReplyUrl: registry.replyUrl,
 * };
 * await using a = await P2PBackend.create({ ...base, instanceId: "a" });
 * await using b = await P2PBackend.create({ ...base, instanceId: "b" });
 * await a.store("vllm@m@1@0@1@bfloat16", (page) => page.fill(1));
 * await a.flushReports();
 * const got = await b.retrieve(["vllm@m@1@0@1@bfloat16", "vllm@m@1@0@2@bfloat16"]);
 * console.log(got.hitChunks); // 1
 * b.release(got.pages);
 * ```
 *
 * @module
 */

export {
  P2PBackend,
  type P2PBackendOptions,
  type P2PBackendStats,
  type P2PFetchResult,
  type P2PHolder,
  type P2PLookupResult,
} from "./backend.ts";
export type { P2PConfigLike } from "./config.ts";
export { P2PError } from "./errors.ts";
export { chunkHashOf } from "./hash.ts";
export {
  type P2PInstanceInfo,
  type P2PLookupAnswer,
  P2PRegistry,
  type P2PRegistryConfigLike,
  type P2PRegistryEvent,
  type P2PRegistryOptions,
  type P2PRegistryStats,
} from "./registry.ts";
export { RegistryClient, type RegistryClientOptions } from "./registry_client.ts";
export { ChunkStore, type StoredChunk } from "./store.ts";
export type { P2PStage, P2PTimelineHook } from "./timeline.ts";
