/**
 * {@linkcode NixlStorageBackend}: KV chunks on files through an agent's FILE segments,
 * durable, at disk speed. See `mod.ts` for the overview.
 *
 * @module
 */
import { createAgentIo } from "./agent_io.ts";
import type { NixlStorageBackendName } from "../config/mod.ts";
import {
  checkBackendDevice,
  type FromConfigOptions,
  type NixlStorageOptions,
  type StorageConfigSource,
  storageOptionsFromConfig,
} from "./config.ts";
import { DynamicStore, MAX_DYNAMIC_KEY_BYTES } from "./dynamic_store.ts";
import { StorageError } from "./errors.ts";
import type { StorageIo } from "./io.ts";
import { decodeHeader, JOURNAL_VERSION } from "./journal.ts";
import { JOURNAL_NAME } from "./naming.ts";
import { defaultMaxOpenFiles } from "./slot_files.ts";
import { StaticPool } from "./static_pool.ts";
import { PagePool } from "./staging.ts";
import { IO_ALIGN, type PutResult, roundUp, type Store, type StoreCounters } from "./store.ts";
import * as fsp from "node:fs/promises";
import { collectStorage, type StorageView } from "./metrics.ts";
import { type MetricsRegistry, metricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, weakly } from "../metrics/source.ts";

export type { PutResult } from "./store.ts";

const enc = new TextEncoder();

/**
 * A chunk in the backend's staging buffer: a view of registered memory, no copy. Release
 * it (or `using` it) when done; until then its page is not reused.
 *
 * @example
 * ```ts ignore
 * const [page] = await backend.getPages(["key"]);
 * if (page) {
 *   console.log(page.bytes.length);
 *   page.release();
 * }
 * ```
 */
export class StoragePage implements Disposable {
  /** Page index in the staging buffer. */
  readonly index: number;
  /** The chunk's bytes (a read: its data length; an allocated page: the page size). */
  readonly bytes: Uint8Array;
  #release: (() => void) | undefined;

  /** @internal */
  constructor(index: number, bytes: Uint8Array, release: () => void) {
    this.index = index;
    this.bytes = bytes;
    this.#release = release;
  }

  /** True until {@linkcode release}. */
  get held(): boolean {
    return this.#release !== undefined;
  }

  /** Gives the page back to the backend. Idempotent. */
  release(): void {
    const r = this.#release;
    this.#release = undefined;
    r?.();
  }

  /** Same as {@linkcode release}. */
  [Symbol.dispose](): void {
    this.release();
  }
}

/**
 * Statistics of a backend (`kvport storage stats`).
 *
 * @example
 * ```ts
 * import type { StorageStats } from "@kvport/nixl";
 * const show = (s: StorageStats) => `${s.used}/${s.slots ?? "-"} used, ${s.hits} hits`;
 * ```
 */
export interface StorageStats {
  /** "static" (pool) or "dynamic" (file per key). */
  mode: "static" | "dynamic";
  /** Directory. */
  path: string;
  /** Storage plugin. */
  backend: string;
  /** Bytes of one chunk. */
  pageSize: number;
  /** Slots of the pool (null in dynamic mode). */
  slots: number | null;
  /** Keys stored. */
  used: number;
  /** Free slots (null in dynamic mode). */
  free: number | null;
  /** Keys with a user pin. */
  pinned: number;
  /** Data bytes stored. */
  bytes: number;
  /** Reads that found their key. */
  hits: number;
  /** Reads that did not. */
  misses: number;
  /** Keys stored since open. */
  puts: number;
  /** Puts refused because every slot was pinned. */
  dropped: number;
  /** Keys evicted. */
  evictions: number;
  /** Reads whose data failed its checksum (counted as misses). */
  corrupt: number;
  /** Asynchronous puts still writing. */
  pendingPuts: number;
  /** Pages of the staging buffer. */
  stagingPages: number;
  /** Whether files are open with O_DIRECT. */
  direct: boolean;
  /** Other mode-specific facts (journal size, presence cache size ...). */
  details: Record<string, number | string | boolean | null>;
}

/**
 * Options of `contains` and `batchedContains`.
 *
 * @example
 * ```ts
 * import type { ContainsOptions, NixlStorageBackend } from "@kvport/nixl";
 * declare const store: NixlStorageBackend;
 * const opts: ContainsOptions = { pin: true };
 * console.log(await store.batchedContains(["k0", "k1"], opts));
 * ```
 */
export interface ContainsOptions {
  /** Pin the keys found (static mode), as LMCache's `contains(key, pin=True)`. */
  pin?: boolean;
}

let agentCounter = 0;

/**
 * KV chunks in files: a static pool of slot files with a durable LRU index, or one file
 * per key (dynamic mode). Data moves between a registered DRAM staging buffer and FILE
 * segments in one transfer request per batch.
 *
 * @example
 * ```ts
 * import { NixlStorageBackend } from "@kvport/nixl";
 *
 * await using store = await NixlStorageBackend.create({
 *   path: await Deno.makeTempDir(),
 *   pageSize: 64 * 1024,
 *   poolSize: 16,
 * });
 * await store.put("chunk-0", new Uint8Array(64 * 1024).fill(7));
 * const bytes = await store.get("chunk-0"); // Uint8Array, or undefined for a miss
 * console.log(bytes?.[0], (await store.stats()).used);
 * ```
 */
export class NixlStorageBackend implements AsyncDisposable {
  /** "static" (pool of slots, LRU) or "dynamic" (one file per key). */
  readonly mode: "static" | "dynamic";
  /** Directory of the pool or of the files. */
  readonly path: string;
  /** Bytes of one chunk. */
  readonly pageSize: number;
  /** Storage plugin. */
  readonly backend: NixlStorageBackendName;
  /**
   * Things worth knowing that are not errors: O_DIRECT refused by the file system, a torn
   * index tail recovered on open, a damaged chunk dropped. Never printed by the library.
   */
  readonly warnings: string[];
  #store: Store;
  #io: StorageIo;
  #pages: PagePool;
  #asyncPut: boolean;
  #timeoutMs: number;
  #held = 0;
  #inflight = new Map<string, Promise<void>>();
  #pending = new Set<Promise<void>>();
  #asyncErrors: unknown[] = [];
  #closed: Promise<void> | undefined;
  #metricsSource: CollectedSource;

  private constructor(
    store: Store,
    io: StorageIo,
    opts: Required<Pick<NixlStorageOptions, "path" | "backend">> & {
      pageSize: number;
      pages: number;
      asyncPut: boolean;
      timeoutMs: number;
      metrics?: MetricsRegistry;
    },
    warnings: string[],
  ) {
    this.#store = store;
    this.#io = io;
    this.mode = store.mode;
    this.path = opts.path;
    this.pageSize = opts.pageSize;
    this.backend = opts.backend;
    this.#pages = new PagePool(opts.pages);
    this.#asyncPut = opts.asyncPut;
    this.#timeoutMs = opts.timeoutMs;
    this.warnings = warnings;
    this.#metricsSource = collectStorage(
      opts.metrics ?? metricsRegistry(),
      this.backend,
      this.mode,
      weakly(this, NixlStorageBackend.#view),
    );
  }

  // Static: a closure made in the constructor would hold `this` (its context does).
  static async #view(b: NixlStorageBackend): Promise<StorageView> {
    const d = await b.#store.stats();
    return {
      counters: { ...b.#store.counters },
      used: d.used as number,
      pinned: d.pinned as number,
      bytes: d.bytes as number,
      free: d.free as number | null,
      pendingPuts: b.#pending.size,
    };
  }

  /**
   * Builds a backend from a configuration (`loadConfig(...).config`, or any object with
   * the storage keys). The chunk size is not in LMCache's configuration: pass `pageSize`,
   * or open a directory that already records it.
   *
   * @example
   * ```ts ignore
   * import { loadConfig, NixlStorageBackend } from "@kvport/nixl";
   * const { config } = loadConfig({ file: "lmcache.yaml" });
   * const store = await NixlStorageBackend.fromConfig(config, { pageSize: 2 * 1024 * 1024 });
   * ```
   */
  static fromConfig(
    config: StorageConfigSource,
    options?: FromConfigOptions,
  ): Promise<NixlStorageBackend> {
    options ??= {};
    try {
      return NixlStorageBackend.create(storageOptionsFromConfig(config, options));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Opens (creating when needed) a backend. Static mode replays the pool's index, so the
   * keys stored before a restart (or by another process, one at a time) are there.
   *
   * @example
   * ```ts ignore
   * const store = await NixlStorageBackend.create({ path: "/data/kv", pageSize: 1 << 21, poolSize: 1024 });
   * ```
   */
  static async create(options: NixlStorageOptions): Promise<NixlStorageBackend> {
    const backend = options.backend ?? "POSIX";
    const device = options.bufferDevice ?? "cpu";
    const problem = checkBackendDevice(backend, device);
    if (problem) {
      throw new StorageError("CONFIG", "NIXL storage configuration", { reason: problem });
    }
    if (!options.path) {
      throw new StorageError("CONFIG", "NIXL storage configuration", {
        reason: "no path (extra_config.nixl_path)",
        fix: "Set nixl_path to the directory the chunks go to",
      });
    }
    if (!Number.isInteger(options.poolSize) || options.poolSize < 0) {
      throw new StorageError("CONFIG", "NIXL storage configuration", {
        reason: `poolSize ${options.poolSize}: expected an integer >= 0`,
      });
    }
    const maxOpen = options.maxOpenFiles;
    if (maxOpen !== undefined && (!Number.isSafeInteger(maxOpen) || maxOpen < 1)) {
      throw new StorageError("CONFIG", "NIXL storage configuration", {
        reason: `maxOpenFiles ${maxOpen}: expected an integer >= 1`,
      });
    }
    if (!device.startsWith("cpu")) {
      throw new StorageError("NOT_SUPPORTED", `staging buffer on ${device}`, {
        reason: "this version stages chunks in DRAM only",
        fix: 'Use nixl_buffer_device: "cpu"',
      });
    }
    const mode = options.poolSize > 0 ? "static" : "dynamic";
    const pageSize = options.pageSize ?? await recordedPageSize(options.path, mode);
    if (pageSize === undefined || !Number.isInteger(pageSize) || pageSize <= 0) {
      throw new StorageError("CONFIG", "NIXL storage configuration", {
        reason: pageSize === undefined
          ? `no chunk size given and ${options.path} holds no ${mode} storage yet`
          : `pageSize ${pageSize}: expected the byte size of one KV chunk (integer > 0)`,
        fix: "Pass pageSize (bytes of one KV chunk)",
      });
    }
    const warnings: string[] = [];
    const bufferSize = options.bufferSize ??
      pageSize * (mode === "static" ? Math.max(1, Math.min(64, options.poolSize)) : 64);
    let pages = Math.ceil(bufferSize / pageSize);
    if (bufferSize % pageSize !== 0) {
      warnings.push(
        `nixl_buffer_size ${bufferSize} is not a multiple of the chunk size ${pageSize}: ` +
          `rounded up to ${pages * pageSize} (${pages} pages)`,
      );
    }
    pages = Math.max(1, pages);
    const stride = mode === "static"
      ? roundUp(pageSize, IO_ALIGN)
      : DynamicStore.pageStride(pageSize);
    let io = options.io;
    if (!io) {
      io = await createAgentIo({
        name: options.agentName ??
          `kvport-storage-${globalThis.process?.pid ?? 0}-${++agentCounter}`,
        backend,
        engine: options.engine ?? "auto",
        params: options.backendParams,
        engineParams: options.engineParams,
        libraryPath: options.libraryPath,
        stagingBytes: pages * stride,
        timeoutMs: options.timeoutMs ?? 120_000,
      });
    } else if (io.staging.length < pages * stride) {
      throw new StorageError("CONFIG", "the given io", {
        reason: `its staging buffer has ${io.staging.length} bytes, ${pages * stride} needed`,
      });
    }
    let store: Store;
    try {
      store = mode === "static"
        ? await StaticPool.open(io, {
          dir: options.path,
          poolSize: options.poolSize,
          pageSize,
          slotBytes: stride,
          direct: options.useDirectIo ?? false,
          maxOpenFiles: options.maxOpenFiles ?? defaultMaxOpenFiles(pages, options.poolSize),
          compactMinBytes: options.compactMinBytes,
          verifyReads: options.verifyReads,
        }, warnings)
        : await DynamicStore.open(io, {
          dir: options.path,
          pageSize,
          direct: options.useDirectIo ?? false,
          presenceCache: options.presenceCache ?? false,
          presenceOnly: options.presenceCacheOnly ?? false,
          verifyReads: options.verifyReads,
        }, warnings);
    } catch (e) {
      if (!options.io) await io.close().catch(() => {});
      throw e;
    }
    return new NixlStorageBackend(store, io, {
      path: options.path,
      backend,
      pageSize,
      pages,
      asyncPut: options.asyncPut ?? false,
      timeoutMs: options.timeoutMs ?? 120_000,
      metrics: options.metrics,
    }, warnings);
  }

  /** Pages of the staging buffer (the most chunks one transfer request moves). */
  get stagingPages(): number {
    return this.#pages.count;
  }

  /** Counters since open. */
  get counters(): Readonly<StoreCounters> {
    return { ...this.#store.counters };
  }

  /**
   * Whether a key is stored. A key whose asynchronous put is still writing is not (as in
   * LMCache). `{ pin: true }` pins it when found (static mode).
   */
  async contains(key: string, options?: ContainsOptions): Promise<boolean> {
    options ??= {};
    return (await this.batchedContains([key], options)) === 1;
  }

  /**
   * How many of `keys`, from the first, are stored: stops at the first miss (dynamic
   * mode checks 16 files at a time).
   */
  batchedContains(keys: readonly string[], options?: ContainsOptions): Promise<number> {
    options ??= {};
    this.#assertOpen();
    let n = 0;
    while (n < keys.length && !this.#inflight.has(keys[n])) n++;
    return this.#store.containsPrefix(keys.slice(0, n), options.pin ?? false);
  }

  /** Pins a stored key: it is not evicted until unpinned as often. False when absent. */
  pin(key: string): boolean {
    this.#assertOpen();
    return this.#store.pin(key);
  }

  /** Drops one pin of a key. False when absent. */
  unpin(key: string): boolean {
    this.#assertOpen();
    return this.#store.unpin(key);
  }

  /** Removes a key; false when it was not stored. */
  async remove(key: string): Promise<boolean> {
    this.#assertOpen();
    await this.#inflight.get(key)?.catch(() => {});
    return this.#store.remove(key);
  }

  /**
   * Stores one chunk (at most `pageSize` bytes; a shorter one is a partial chunk). See
   * {@linkcode batchedPut}.
   */
  async put(key: string, data: Uint8Array): Promise<PutResult> {
    return (await this.batchedPut([key], [data]))[0];
  }

  /**
   * Stores chunks in one transfer request (batches larger than the staging buffer take
   * one request per buffer-full). Each result says whether the key was stored; a key
   * that found no slot (every slot pinned) is `{ stored: false, reason }`. I/O failures
   * (a full disk, a denied permission) throw a {@linkcode StorageError}; keys stored
   * before stay intact. With `asyncPut`, resolves once the data is copied into staging
   * (`pending: true`); {@linkcode flush} waits for the writes and reports their errors.
   *
   * Data that already lies at the start of a staging page (a {@linkcode StoragePage}
   * from {@linkcode allocatePages}) is written without a copy.
   */
  async batchedPut(
    keys: readonly string[],
    data: readonly Uint8Array[],
  ): Promise<PutResult[]> {
    this.#assertOpen();
    if (keys.length !== data.length) {
      throw new StorageError("CONFIG", "batchedPut", {
        reason: `${keys.length} keys but ${data.length} chunks`,
      });
    }
    for (let i = 0; i < keys.length; i++) {
      checkKey(keys[i]);
      if (data[i].length > this.pageSize) {
        throw new StorageError("TOO_LARGE", `chunk of key ${JSON.stringify(keys[i])}`, {
          reason: `${data[i].length} bytes, a chunk holds at most ${this.pageSize}`,
          fix: "Split the data into chunks of pageSize bytes",
        });
      }
    }
    // Duplicates: the last item of a key wins.
    const last = new Map<string, number>();
    keys.forEach((k, i) => last.set(k, i));
    const results: PutResult[] = keys.map((key) => ({ key, stored: false, pending: false }));
    const order = [...last.values()].sort((a, b) => a - b);
    for (let i = 0; i < keys.length; i++) {
      if (last.get(keys[i]) !== i) {
        results[i].reason = "a later item of the same batch has this key";
      }
    }
    const max = this.#pages.count;
    for (let g = 0; g < order.length; g += max) {
      const group = order.slice(g, g + max);
      const staged = await this.#stage(group.map((i) => data[i]), this.#asyncPut);
      const gKeys = group.map((i) => keys[i]);
      const run = async () => {
        try {
          return await this.#store.putPages(gKeys, staged.pages, staged.lens);
        } finally {
          staged.release();
        }
      };
      if (this.#asyncPut) {
        this.#background(gKeys, run);
        for (const i of group) results[i].pending = true;
      } else {
        const r = await run();
        group.forEach((i, j) => (results[i] = r[j]));
      }
    }
    return results;
  }

  /** Copies chunks into staging pages (or uses them in place) and computes their CRCs. */
  async #stage(
    chunks: readonly Uint8Array[],
    forceCopy: boolean,
  ): Promise<{ pages: number[]; lens: number[]; release: () => void }> {
    const staging = this.#io.staging;
    const stride = this.#store.pageStride;
    const inPlace = chunks.map((c) => (forceCopy ? -1 : this.#pageOf(c)));
    const need = inPlace.filter((p) => p < 0).length;
    const own = need > 0 ? await this.#acquire(need) : [];
    let next = 0;
    const pages = inPlace.map((p) => (p >= 0 ? p : own[next++]));
    const lens: number[] = [];
    chunks.forEach((c, i) => {
      if (inPlace[i] < 0) staging.set(c, pages[i] * stride);
      lens.push(c.length);
    });
    let released = false;
    return {
      pages,
      lens,
      release: () => {
        if (!released) this.#pages.release(own);
        released = true;
      },
    };
  }

  /** Waits for `n` staging pages, at most the transfer timeout. */
  #acquire(n: number): Promise<number[]> {
    return this.#pages.acquire(
      n,
      this.#timeoutMs,
      () =>
        new StorageError("BUSY", `waiting for ${n} staging page(s)`, {
          reason: `none freed in ${this.#timeoutMs} ms; the caller holds ${this.#held} of ` +
            `${this.#pages.count} (pages from allocatePages/getPages not released yet)`,
          fix: "Release StoragePage objects when done with them, or raise nixl_buffer_size",
        }),
    );
  }

  /** A page handed to the caller; counted until released. */
  #lease(index: number, bytes: Uint8Array): StoragePage {
    this.#held++;
    return new StoragePage(index, bytes, () => {
      this.#held--;
      this.#pages.release([index]);
    });
  }

  /** The staging page a view starts at, or -1. */
  #pageOf(view: Uint8Array): number {
    const s = this.#io.staging;
    if (view.buffer !== s.buffer || view.length === 0) return -1;
    const off = view.byteOffset - s.byteOffset;
    const stride = this.#store.pageStride;
    if (off < 0 || off % stride !== 0 || off + view.length > s.length) return -1;
    return off / stride;
  }

  #background(keys: string[], run: () => Promise<PutResult[]>): void {
    const p: Promise<void> = (async () => {
      try {
        await run();
      } catch (e) {
        this.#asyncErrors.push(e);
      }
    })();
    for (const k of keys) this.#inflight.set(k, p);
    this.#pending.add(p);
    p.finally(() => {
      this.#pending.delete(p);
      for (const k of keys) if (this.#inflight.get(k) === p) this.#inflight.delete(k);
    });
  }

  /**
   * Waits for every asynchronous put; throws an AggregateError of the ones that failed
   * since the last flush.
   */
  async flush(): Promise<void> {
    while (this.#pending.size > 0) await Promise.all([...this.#pending]);
    if (this.#asyncErrors.length > 0) {
      const errors = this.#asyncErrors.splice(0);
      throw new AggregateError(errors, `${errors.length} asynchronous put(s) failed: ${errors[0]}`);
    }
  }

  /** Reads one chunk: a copy of its bytes, or undefined when the key is not stored. */
  async get(key: string): Promise<Uint8Array | undefined> {
    return (await this.batchedGet([key]))[0];
  }

  /**
   * Reads chunks in one transfer request (per buffer-full): copies of their bytes, in
   * order, undefined for each key not stored (or whose data failed its checksum).
   */
  async batchedGet(keys: readonly string[]): Promise<(Uint8Array | undefined)[]> {
    const out: (Uint8Array | undefined)[] = [];
    const max = this.#pages.count;
    for (let g = 0; g < keys.length; g += max) {
      const pages = await this.getPages(keys.slice(g, g + max));
      for (const p of pages) {
        out.push(p ? p.bytes.slice() : undefined);
        p?.release();
      }
    }
    return out;
  }

  /**
   * Reads chunks into staging pages without copying them out (at most
   * {@linkcode stagingPages} keys): release every page returned.
   */
  async getPages(keys: readonly string[]): Promise<(StoragePage | undefined)[]> {
    this.#assertOpen();
    if (keys.length > this.#pages.count) {
      throw new StorageError("TOO_LARGE", `getPages of ${keys.length} keys`, {
        reason: `the staging buffer has ${this.#pages.count} pages`,
        fix: "Ask for fewer keys at once, use batchedGet, or raise nixl_buffer_size",
      });
    }
    if (keys.length === 0) return [];
    await Promise.all(keys.map((k) => this.#inflight.get(k)?.catch(() => {})));
    const pages = await this.#acquire(keys.length);
    let chunks;
    try {
      chunks = await this.#store.getPages(keys, pages);
    } catch (e) {
      this.#pages.release(pages);
      throw e;
    }
    const stride = this.#store.pageStride;
    const staging = this.#io.staging;
    return chunks.map((c, i) => {
      if (!c) {
        this.#pages.release([pages[i]]);
        return undefined;
      }
      const at = c.page * stride;
      return this.#lease(c.page, staging.subarray(at, at + c.dataLen));
    });
  }

  /**
   * Takes `n` staging pages to fill and pass to {@linkcode batchedPut} without a copy
   * (`page.bytes` is `pageSize` long; pass a shorter `subarray(0, len)` for a partial
   * chunk). Release them after the put.
   */
  async allocatePages(n: number): Promise<StoragePage[]> {
    this.#assertOpen();
    const pages = await this.#acquire(n);
    const stride = this.#store.pageStride;
    return pages.map((p) =>
      this.#lease(p, this.#io.staging.subarray(p * stride, p * stride + this.pageSize))
    );
  }

  /** Keys stored (static mode: least recently used first). */
  keys(): Promise<string[]> {
    this.#assertOpen();
    return this.#store.keys();
  }

  /** Statistics: slots used/free/pinned, bytes, hits/misses, ... */
  async stats(): Promise<StorageStats> {
    this.#assertOpen();
    const d = await this.#store.stats();
    const c = this.#store.counters;
    return {
      mode: this.mode,
      path: this.path,
      backend: this.backend,
      pageSize: this.pageSize,
      slots: d.slots as number | null,
      used: d.used as number,
      free: d.free as number | null,
      pinned: d.pinned as number,
      bytes: d.bytes as number,
      hits: c.hits,
      misses: c.misses,
      puts: c.puts,
      dropped: c.dropped,
      evictions: c.evictions,
      corrupt: c.corrupt,
      pendingPuts: this.#pending.size,
      stagingPages: this.#pages.count,
      direct: d.direct as boolean,
      details: Object.fromEntries(
        Object.entries(d).filter(([k]) =>
          !["slots", "used", "free", "pinned", "bytes", "direct"].includes(k)
        ),
      ),
    };
  }

  /**
   * Waits for asynchronous puts, makes the index durable, releases the files, the staging
   * buffer and the agent. Idempotent. Throws the errors of asynchronous puts, if any.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      let err: unknown;
      try {
        await this.flush();
      } catch (e) {
        err = e;
      }
      await this.#metricsSource.retire(); // the store's counters, read before it closes
      this.#pages.close(new StorageError("CLOSED", "the storage backend is closed"));
      try {
        await this.#store.close();
      } catch (e) {
        err ??= e;
      }
      try {
        await this.#io.close();
      } catch (e) {
        err ??= e;
      }
      if (err !== undefined) throw err;
    })();
    return this.#closed;
  }

  /** Same as {@linkcode close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #assertOpen(): void {
    if (this.#closed) throw new StorageError("CLOSED", "the storage backend is closed");
  }
}

function checkKey(key: string): void {
  const n = typeof key === "string" ? enc.encode(key).length : 0;
  if (n === 0 || n > MAX_DYNAMIC_KEY_BYTES) {
    throw new StorageError("TOO_LARGE", `key ${JSON.stringify(String(key)).slice(0, 60)}`, {
      reason: `${n} bytes`,
      fix: `Keys must be 1..${MAX_DYNAMIC_KEY_BYTES} bytes of UTF-8`,
    });
  }
}

/** The page size recorded in an existing pool or dynamic directory. */
async function recordedPageSize(
  dir: string,
  mode: "static" | "dynamic",
): Promise<number | undefined> {
  if (mode === "dynamic") return await DynamicStore.pageSizeOf(dir);
  try {
    const fh = await fsp.open(`${dir}/${JOURNAL_NAME}`, "r");
    try {
      const buf = new Uint8Array(64);
      await fh.read(buf, 0, 64, 0);
      const h = decodeHeader(buf);
      return typeof h === "string" ? undefined : h.pageSize;
    } finally {
      await fh.close();
    }
  } catch {
    return undefined;
  }
}

/**
 * Version of the on-disk index format this library writes.
 *
 * @example
 * ```ts
 * import { STORAGE_FORMAT_VERSION } from "@kvport/nixl";
 * console.log(STORAGE_FORMAT_VERSION); // 1
 * ```
 */
export const STORAGE_FORMAT_VERSION: number = JOURNAL_VERSION;
