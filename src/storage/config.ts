/**
 * From LMCache's configuration (`loadConfig` output, or any object with the same keys) to
 * {@linkcode NixlStorageOptions}, with LMCache's checks turned into messages: every
 * problem is reported at once, each naming the key, the value found and the fix.
 *
 * @module
 */
import type { MetricsRegistry } from "../metrics/registry.ts";
import {
  FILE_STORAGE_BACKENDS,
  type NixlStorageBackendName,
  STORAGE_BACKEND_DEVICES,
} from "../config/mod.ts";
import { StorageError } from "./errors.ts";
import type { StorageIo } from "./io.ts";
import type { VerifyReads } from "./store.ts";

/**
 * Options of {@linkcode NixlStorageBackend.create}: the storage keys of LMCache's
 * configuration in camelCase, plus what the configuration does not say (the chunk's
 * byte size, the engine, the library path).
 *
 * @example
 * ```ts
 * import type { NixlStorageOptions } from "@kvport/nixl";
 * const options: NixlStorageOptions = { path: "/data/kv", pageSize: 1 << 21, poolSize: 512 };
 * ```
 */
export interface NixlStorageOptions {
  /** Directory of the pool or of the per-key files (`extra_config.nixl_path`). */
  path: string;
  /**
   * Bytes of one KV chunk: the page size of the staging buffer and of every slot.
   * May be left out when `path` already holds a pool or a dynamic directory (its
   * recorded size is used).
   */
  pageSize?: number;
  /** Slots of the static pool; 0 selects dynamic mode (`extra_config.nixl_pool_size`). */
  poolSize: number;
  /**
   * Bytes of the staging buffer (`nixl_buffer_size`; current LMCache leaves that key out
   * in CPU mode): rounded up to whole pages. Default: 64 pages (or the pool size, when
   * smaller).
   */
  bufferSize?: number;
  /** Device of the staging buffer (`nixl_buffer_device`): "cpu" (default). */
  bufferDevice?: string;
  /** Storage plugin (`extra_config.nixl_backend`), default "POSIX". */
  backend?: NixlStorageBackendName;
  /** Parameters for the plugin (`extra_config.nixl_backend_params`). */
  backendParams?: Readonly<Record<string, string>>;
  /** Open files with O_DIRECT (`extra_config.use_direct_io`). */
  useDirectIo?: boolean;
  /** Dynamic mode: remember keys known present (`extra_config.nixl_presence_cache`). */
  presenceCache?: boolean;
  /** Dynamic mode: answer `contains` from the presence cache only. */
  presenceCacheOnly?: boolean;
  /** Return from `put` at once and write in the background (`extra_config.nixl_async_put`). */
  asyncPut?: boolean;
  /** Engine of the agent: "auto" (default), "builtin" or "nixl". */
  engine?: "auto" | "builtin" | "nixl";
  /** Path of libkvport.so (default: the usual lookup). */
  libraryPath?: string;
  /** Limit for one transfer, in ms (default 120000). */
  timeoutMs?: number;
  /**
   * Parameters of the agent's engine (builtin: `io_threads`, the number of threads that
   * run pread/pwrite, default half the cores, 2 to 8). Plugin parameters go in
   * `backendParams`.
   */
  engineParams?: Readonly<Record<string, string | number>>;
  /** Name of the backend's agent (default `kvport-storage-<pid>-<n>`). */
  agentName?: string;
  /** Smallest index journal that is compacted, in bytes (default 1 MiB). */
  compactMinBytes?: number;
  /**
   * When a read checks the chunk's CRC-32 (static mode): `"first"` (default) the first
   * read of a chunk this process did not write (left by an earlier run, a crash or
   * another process), `"always"`, or `"never"`. Dynamic mode checks every read unless
   * `"never"`.
   */
  verifyReads?: VerifyReads;
  /**
   * Static mode: the most slot files kept open between transfers (default: a quarter of
   * the process's open-file limit, at most 1024, at least the staging buffer's pages).
   * Slots are opened on demand, so a pool may hold more slots than the process may open
   * files.
   */
  maxOpenFiles?: number;
  /** A data path other than an agent (tests, mocks). */
  io?: StorageIo;
  /** Registry the store's figures are reported in (default: `metricsRegistry()`). */
  metrics?: MetricsRegistry;
}

/**
 * The storage-related keys of a configuration (what `loadConfig` returns has them).
 *
 * @example
 * ```ts
 * import type { StorageConfigSource } from "@kvport/nixl";
 * const cfg: StorageConfigSource = {
 *   nixl_buffer_size: 1 << 26,
 *   nixl_buffer_device: "cpu",
 *   extra_config: { enable_nixl_storage: true, nixl_backend: "POSIX", nixl_pool_size: 0, nixl_path: "/kv" },
 * };
 * ```
 */
export interface StorageConfigSource {
  /** Bytes of the staging buffer. */
  readonly nixl_buffer_size?: number | null;
  /** Device of the staging buffer. */
  readonly nixl_buffer_device?: string | null;
  /** `save_unfull_chunk`: must be false in dynamic mode (LMCache's rule). */
  readonly save_unfull_chunk?: boolean;
  /** The `extra_config` map. */
  readonly extra_config?: Readonly<Record<string, unknown>> | null;
}

/**
 * What {@linkcode storageOptionsFromConfig} needs besides the configuration.
 *
 * @example
 * ```ts
 * import type { FromConfigOptions } from "@kvport/nixl";
 * const extra: FromConfigOptions = { pageSize: 1 << 21, engine: "builtin" };
 * ```
 */
export type FromConfigOptions = Partial<
  Pick<
    NixlStorageOptions,
    | "pageSize"
    | "engine"
    | "libraryPath"
    | "timeoutMs"
    | "agentName"
    | "compactMinBytes"
    | "maxOpenFiles"
    | "io"
    | "verifyReads"
    | "engineParams"
  >
>;

/**
 * Checks a backend/device pair as LMCache does (GDS, GDS_MT, OBJ: cpu or cuda; POSIX,
 * HF3FS, AZURE_BLOB: cpu). Returns undefined when valid, else the reason.
 *
 * @example
 * ```ts
 * import { checkBackendDevice } from "./config.ts";
 * console.log(checkBackendDevice("POSIX", "cuda:0")); // POSIX takes cpu buffers only ...
 * console.log(checkBackendDevice("GDS", "cuda")); // undefined
 * ```
 */
export function checkBackendDevice(backend: string, device: string): string | undefined {
  const allowed = (STORAGE_BACKEND_DEVICES as Record<string, readonly string[]>)[backend];
  if (!allowed) {
    return `unknown storage backend ${JSON.stringify(backend)}: expected one of ` +
      Object.keys(STORAGE_BACKEND_DEVICES).join(", ");
  }
  const m = /^(cpu|cuda)(:\d+)?$/.exec(device);
  if (!m || (m[1] === "cpu" && m[2])) {
    return `buffer device ${JSON.stringify(device)} is not "cpu", "cuda" or "cuda:N"`;
  }
  if (!allowed.includes(m[1])) {
    return `${backend} takes ${allowed.join(" or ")} buffers only, got ${JSON.stringify(device)}`;
  }
  return undefined;
}

/**
 * Maps a configuration to {@linkcode NixlStorageOptions}. Throws one
 * {@linkcode StorageError} (code CONFIG) listing every problem.
 *
 * @example
 * ```ts
 * import { storageOptionsFromConfig } from "@kvport/nixl";
 * const opts = storageOptionsFromConfig({
 *   nixl_buffer_size: 1 << 20,
 *   nixl_buffer_device: "cpu",
 *   extra_config: {
 *     enable_nixl_storage: true,
 *     nixl_backend: "POSIX",
 *     nixl_pool_size: 16,
 *     nixl_path: "/tmp/kv",
 *   },
 * }, { pageSize: 1 << 16 });
 * console.log(opts.poolSize, opts.bufferSize); // 16 1048576
 * ```
 */
export function storageOptionsFromConfig(
  config: StorageConfigSource,
  options?: FromConfigOptions,
): NixlStorageOptions {
  options ??= {};
  const issues: string[] = [];
  const extra = config.extra_config ?? {};
  const get = (k: string): unknown => extra[k];
  if (get("enable_nixl_storage") !== true) {
    issues.push(
      `extra_config.enable_nixl_storage is ${
        JSON.stringify(get("enable_nixl_storage") ?? null)
      }: ` +
        "set it to true to use the NIXL storage backend",
    );
  }
  const backend = get("nixl_backend");
  if (typeof backend !== "string" || !(backend in STORAGE_BACKEND_DEVICES)) {
    issues.push(
      `extra_config.nixl_backend is ${JSON.stringify(backend ?? null)}: expected one of ` +
        Object.keys(STORAGE_BACKEND_DEVICES).join(", "),
    );
  }
  const poolSize = get("nixl_pool_size");
  if (typeof poolSize !== "number" || !Number.isInteger(poolSize) || poolSize < 0) {
    issues.push(
      `extra_config.nixl_pool_size is ${JSON.stringify(poolSize ?? null)}: expected an ` +
        "integer >= 0 (0 = dynamic mode, one file per key)",
    );
  }
  const device = config.nixl_buffer_device;
  // Current LMCache: no nixl_buffer_size in CPU mode (its storage shares LocalCPUBackend's
  // pool); here the staging buffer then takes its default size. The older form (a size
  // with "cpu") still sizes it; loadConfig warns about it.
  const bufferSize = config.nixl_buffer_size ?? undefined;
  const sizeOk = typeof bufferSize === "number" && Number.isInteger(bufferSize) &&
    bufferSize > 0;
  if (bufferSize === undefined ? device !== "cpu" : !sizeOk) {
    issues.push(
      `nixl_buffer_size is ${JSON.stringify(bufferSize ?? null)}: expected the staging ` +
        "buffer's size in bytes (an integer > 0)" +
        (bufferSize === undefined
          ? ` (required with nixl_buffer_device ${JSON.stringify(device ?? null)})`
          : ""),
    );
  }
  if (typeof device !== "string") {
    issues.push(`nixl_buffer_device is ${JSON.stringify(device ?? null)}: expected "cpu"`);
  } else if (typeof backend === "string" && backend in STORAGE_BACKEND_DEVICES) {
    const why = checkBackendDevice(backend, device);
    if (why) issues.push(`nixl_buffer_device / extra_config.nixl_backend: ${why}`);
  }
  const path = get("nixl_path");
  const fileBackend = FILE_STORAGE_BACKENDS.includes(backend as NixlStorageBackendName);
  if (fileBackend && (typeof path !== "string" || path === "")) {
    issues.push(
      `extra_config.nixl_path is ${JSON.stringify(path ?? null)}: the ${backend} backend ` +
        "stores files there; set it to a directory",
    );
  }
  const params = get("nixl_backend_params") ?? {};
  const backendParams: Record<string, string> = {};
  if (typeof params !== "object" || params === null || Array.isArray(params)) {
    issues.push(
      `extra_config.nixl_backend_params is ${JSON.stringify(params)}: expected a map of strings`,
    );
  } else {
    for (const [k, v] of Object.entries(params)) {
      if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") {
        backendParams[k] = String(v);
      } else {
        issues.push(
          `extra_config.nixl_backend_params.${k} is ${JSON.stringify(v)}: expected a string`,
        );
      }
    }
  }
  const flag = (k: string): boolean => {
    const v = get(k);
    if (v === undefined || v === null) return false;
    if (typeof v !== "boolean") {
      issues.push(`extra_config.${k} is ${JSON.stringify(v)}: expected true or false`);
    }
    return v === true;
  };
  const useDirectIo = flag("use_direct_io");
  const presenceCache = flag("nixl_presence_cache");
  const presenceCacheOnly = flag("nixl_presence_cache_only");
  const asyncPut = flag("nixl_async_put");
  if (presenceCacheOnly && !presenceCache) {
    issues.push(
      "extra_config.nixl_presence_cache_only needs extra_config.nixl_presence_cache: true",
    );
  }
  if (poolSize === 0 && config.save_unfull_chunk === true) {
    issues.push(
      "save_unfull_chunk is true: LMCache requires it false with dynamic storage " +
        "(nixl_pool_size 0); set it false or use a static pool",
    );
  }
  const pageSize = options.pageSize;
  if (pageSize !== undefined && (!Number.isInteger(pageSize) || pageSize <= 0)) {
    issues.push(`pageSize is ${pageSize}: expected the byte size of one KV chunk (integer > 0)`);
  }
  if (issues.length > 0) {
    throw new StorageError("CONFIG", "NIXL storage configuration", {
      reason: `${issues.length} problem(s):\n  - ${issues.join("\n  - ")}`,
      fix: "See the storage keys in the README's configuration table",
    });
  }
  return {
    path: typeof path === "string" ? path : "",
    poolSize: poolSize as number,
    ...(bufferSize === undefined ? {} : { bufferSize }),
    bufferDevice: device as string,
    backend: backend as NixlStorageBackendName,
    backendParams,
    useDirectIo,
    presenceCache,
    presenceCacheOnly,
    asyncPut,
    ...options,
  };
}
