/**
 * The interface both storage modes (static pool, dynamic files) implement for the
 * backend facade, and the types they share.
 *
 * @module
 */
import * as fsp from "node:fs/promises";
import { toStorageError } from "./errors.ts";
import type { StorageFile, StorageIo } from "./io.ts";

/**
 * The outcome of storing one key.
 *
 * @example
 * ```ts
 * import type { NixlStorageBackend, PutResult } from "@kvport/nixl";
 * declare const store: NixlStorageBackend;
 * const r: PutResult = await store.put("k", new Uint8Array(16));
 * if (!r.stored && !r.pending) console.warn(r.reason);
 * ```
 */
export interface PutResult {
  /** The key. */
  key: string;
  /** True once the chunk is durable and readable. */
  stored: boolean;
  /** True when an asynchronous put accepted it and is still writing it. */
  pending: boolean;
  /** Why it was not stored (e.g. "no eviction candidate: every slot is pinned"). */
  reason?: string;
}

/** A chunk read into a staging page. */
export interface ReadChunk {
  /** The page it was read into. */
  page: number;
  /** Bytes of data at the start of the page. */
  dataLen: number;
}

/**
 * Counters every mode keeps (`NixlStorageBackend.counters`).
 *
 * @example
 * ```ts
 * import type { NixlStorageBackend, StoreCounters } from "@kvport/nixl";
 * declare const store: NixlStorageBackend;
 * const c: Readonly<StoreCounters> = store.counters;
 * console.log(c.hits / Math.max(1, c.hits + c.misses));
 * ```
 */
export interface StoreCounters {
  /** Reads that found the key. */
  hits: number;
  /** Reads that did not. */
  misses: number;
  /** Keys stored. */
  puts: number;
  /** Puts refused (nothing evictable). */
  dropped: number;
  /** Keys evicted to make room. */
  evictions: number;
  /** Reads whose data failed its checksum (treated as misses, key removed). */
  corrupt: number;
}

/** What a mode implements; data moves through staging pages chosen by the facade. */
export interface Store {
  /** "static" (pool of slots) or "dynamic" (one file per key). */
  readonly mode: "static" | "dynamic";
  /** Bytes between the starts of two staging pages. */
  readonly pageStride: number;
  /** Counters. */
  readonly counters: StoreCounters;
  /** Whether each key is present (checked in order, stopping at the first miss). */
  containsPrefix(keys: readonly string[], pin: boolean): Promise<number>;
  /** Pins a key against eviction. */
  pin(key: string): boolean;
  /** Drops one pin. */
  unpin(key: string): boolean;
  /** Removes a key. */
  remove(key: string): Promise<boolean>;
  /**
   * Stores keys whose data is already in staging pages (`lens[i]` bytes of page
   * `pages[i]`); the store computes the CRC-32s. Keys are distinct.
   */
  putPages(
    keys: readonly string[],
    pages: readonly number[],
    lens: readonly number[],
  ): Promise<PutResult[]>;
  /** Reads keys into the given pages; undefined for a miss. */
  getPages(keys: readonly string[], pages: readonly number[]): Promise<(ReadChunk | undefined)[]>;
  /** Keys stored (static: least recently used first). */
  keys(): Promise<string[]>;
  /** Mode-specific statistics. */
  stats(): Promise<Record<string, number | string | boolean | null>>;
  /** Makes everything durable and releases files. */
  close(): Promise<void>;
}

/**
 * When reads check a chunk's CRC-32: `"always"`; `"first"` (default): the first read of
 * a chunk that this process did not write itself (what a previous run, a crash or another
 * process left), since a chunk written and synced in this session is known good;
 * `"never"`.
 *
 * @example
 * ```ts
 * import type { VerifyReads } from "@kvport/nixl";
 * const paranoid: VerifyReads = "always";
 * ```
 */
export type VerifyReads = "always" | "first" | "never";

/** Rounds up to a multiple of `align`. */
export function roundUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** File offsets and lengths are aligned to this for O_DIRECT. */
export const IO_ALIGN = 4096;

/** Counters at zero: where each mode's {@linkcode StoreCounters} start. */
export function zeroCounters(): StoreCounters {
  return { hits: 0, misses: 0, puts: 0, dropped: 0, evictions: 0, corrupt: 0 };
}

/**
 * Creates a mode's directory (and its parents) when missing.
 *
 * @param what what is being done, for the error (e.g. "creating the pool directory")
 * @throws {StorageError} when it cannot be created
 */
export async function makeStoreDir(dir: string, what: string): Promise<void> {
  try {
    await fsp.mkdir(dir, { recursive: true });
  } catch (e) {
    throw toStorageError(e, what, dir);
  }
}

/** Closes `files`, ignoring their errors: for a path that is already failing or finished. */
export function closeFilesQuietly(io: StorageIo, files: readonly StorageFile[]): void {
  for (const f of files) {
    try {
      io.closeFile(f);
    } catch { /* already failing, or nothing to do */ }
  }
}

/**
 * Deletes, one after the other, the entries of `dir` whose names `doomed` picks; a
 * directory that cannot be listed, or an entry that cannot be removed, is left as it is.
 */
export async function removeFilesWhere(
  dir: string,
  doomed: (name: string) => boolean,
): Promise<void> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return;
  }
  for (const name of names) {
    if (doomed(name)) await fsp.rm(`${dir}/${name}`, { force: true }).catch(() => {});
  }
}
