/**
 * NIXL storage: KV-cache chunks in files, LMCache's `NixlStorageBackend` for Deno and
 * Bun, durable across restarts.
 *
 * - **Static mode** (`nixl_pool_size` > 0): a pool of slot files `obj_<i>.bin` with stable
 *   names, one chunk per slot, a key -> slot index in LRU order, LRU eviction that never
 *   evicts a pinned key. Unlike LMCache the pool survives a restart: the index is an
 *   append-only journal (`.kvport-index`) with a CRC-32 per record and per chunk; a put
 *   writes and syncs the data before it commits the record, so a put torn by a crash is
 *   absent after reopen and every other key is intact.
 * - **Dynamic mode** (`nixl_pool_size` = 0): one file per key, named like LMCache's (the
 *   URL-quoted key), written to a temporary name and renamed when durable; `contains`
 *   checks 16 files at a time and stops at the first miss; optional presence cache and
 *   asynchronous put.
 *
 * Data moves between a registered DRAM staging buffer (`nixl_buffer_size`, cut into
 * pages of one chunk, aligned for `O_DIRECT`) and FILE segments of the backend's own
 * agent, one transfer request per batch. The on-disk formats are documented in
 * `docs/STORAGE.md`.
 *
 * @example
 * ```ts
 * import { NixlStorageBackend } from "@kvport/nixl";
 *
 * await using store = await NixlStorageBackend.fromConfig({
 *   nixl_buffer_size: 8 << 20,
 *   nixl_buffer_device: "cpu",
 *   extra_config: {
 *     enable_nixl_storage: true,
 *     nixl_backend: "POSIX",
 *     nixl_pool_size: 64,
 *     nixl_path: await Deno.makeTempDir(),
 *   },
 * }, { pageSize: 1 << 20 });
 *
 * const chunk = new Uint8Array(1 << 20).fill(1);
 * console.log(await store.batchedPut(["k0", "k1"], [chunk, chunk])); // one transfer request
 * console.log(await store.batchedContains(["k0", "k1", "k2"])); // 2
 * store.pin("k0"); // never evicted until unpinned
 * console.log((await store.get("k1"))?.length); // 1048576
 * ```
 *
 * @module
 */
export {
  type ContainsOptions,
  NixlStorageBackend,
  type PutResult,
  STORAGE_FORMAT_VERSION,
  StoragePage,
  type StorageStats,
} from "./backend.ts";
export {
  checkBackendDevice,
  type FromConfigOptions,
  type NixlStorageOptions,
  type StorageConfigSource,
  storageOptionsFromConfig,
} from "./config.ts";
export { StorageError, type StorageErrorCode, toStorageError } from "./errors.ts";
export type {
  StorageFile,
  StorageFileSet,
  StorageIo,
  StorageOpenOptions,
  StorageRegistration,
} from "./io.ts";
export { objectName } from "./naming.ts";
export { NO_EVICTION_CANDIDATE } from "./static_pool.ts";
export type { StoreCounters, VerifyReads } from "./store.ts";
