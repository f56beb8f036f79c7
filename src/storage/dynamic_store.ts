/**
 * Dynamic mode (`nixl_pool_size` = 0): one file per key in `nixl_path`, named by
 * {@linkcode objectName} (LMCache's URL-quoted key).
 *
 * File layout: the chunk's page at offset 0 (the page size rounded up to 4096 bytes, so
 * LMCache reading `page_size` bytes from offset 0 sees the chunk), then a 4096-byte
 * trailer:
 *
 * ```text
 *   0  8  magic "KVPOBJ01"
 *   8  4  version (1)
 *  12  4  key length n (UTF-8 bytes)
 *  16  8  data length (<= page size)
 *  24  4  CRC-32 of the data bytes
 *  28  4  reserved (0)
 *  32  n  key
 *  32+n 4 CRC-32 of trailer bytes 0..31+n
 * ```
 *
 * A put writes `.kvport-tmp-<host>-<pid>-<n>` files in one transfer request, `fdatasync`s
 * them, renames each to its key's name and syncs the directory: a put torn by a crash
 * leaves only a temporary file (removed by the next open once its process is gone), never
 * a file under a key's name. A read checks the trailer's key and the data's CRC-32: a
 * file of another key (a name collision) or with damaged data is a miss.
 *
 * @module
 */
import * as fsp from "node:fs/promises";
import * as os from "node:os";
import process from "node:process";
import { crc32 } from "./checksum.ts";
import { StorageError, toStorageError } from "./errors.ts";
import type { StorageFile, StorageIo } from "./io.ts";
import { syncDir, writeFileDurably } from "./journal.ts";
import { objectName, TMP_PREFIX } from "./naming.ts";
import {
  closeFilesQuietly,
  IO_ALIGN,
  makeStoreDir,
  type PutResult,
  type ReadChunk,
  removeFilesWhere,
  roundUp,
  type Store,
  type StoreCounters,
  type VerifyReads,
  zeroCounters,
} from "./store.ts";

/** Bytes of the trailer after the data page. */
export const TRAILER_BYTES = 4096;
/** Longest key a trailer holds. */
export const MAX_DYNAMIC_KEY_BYTES = TRAILER_BYTES - 36;
const TRAILER_MAGIC = "KVPOBJ01";
const MANIFEST_NAME = ".kvport-dynamic";
/** How many existence checks `contains` runs at once (LMCache's batch). */
export const CONTAINS_BATCH = 16;

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

/** Writes a trailer into `out` (TRAILER_BYTES long). */
export function encodeTrailer(out: Uint8Array, key: string, dataLen: number, dataCrc: number) {
  const kb = enc.encode(key);
  if (kb.length === 0 || kb.length > MAX_DYNAMIC_KEY_BYTES) {
    throw new StorageError("TOO_LARGE", `key of ${kb.length} bytes`, {
      fix: `Keys must be 1..${MAX_DYNAMIC_KEY_BYTES} bytes of UTF-8`,
    });
  }
  out.fill(0, 0, 36 + kb.length);
  const v = new DataView(out.buffer, out.byteOffset, TRAILER_BYTES);
  out.set(enc.encode(TRAILER_MAGIC), 0);
  v.setUint32(8, 1, true);
  v.setUint32(12, kb.length, true);
  v.setBigUint64(16, BigInt(dataLen), true);
  v.setUint32(24, dataCrc >>> 0, true);
  out.set(kb, 32);
  v.setUint32(32 + kb.length, crc32(out.subarray(0, 32 + kb.length)), true);
}

/** Parses a trailer; a string says why it is not one. */
export function decodeTrailer(
  t: Uint8Array,
): { key: string; dataLen: number; dataCrc: number } | string {
  if (t.length < 36) return "trailer too short";
  if (dec.decode(t.subarray(0, 8)) !== TRAILER_MAGIC) return "no kvport trailer";
  const v = new DataView(t.buffer, t.byteOffset, t.length);
  const n = v.getUint32(12, true);
  if (n === 0 || n > MAX_DYNAMIC_KEY_BYTES || 36 + n > t.length) return "bad key length";
  if (v.getUint32(32 + n, true) !== crc32(t.subarray(0, 32 + n))) return "trailer checksum";
  let key: string;
  try {
    key = dec.decode(t.subarray(32, 32 + n));
  } catch {
    return "key is not UTF-8";
  }
  return { key, dataLen: Number(v.getBigUint64(16, true)), dataCrc: v.getUint32(24, true) };
}

/** Options of {@linkcode DynamicStore.open}. */
export interface DynamicStoreOptions {
  /** The directory (`nixl_path`). */
  dir: string;
  /** Bytes of one chunk. */
  pageSize: number;
  /** Open files with O_DIRECT. */
  direct: boolean;
  /** Remember keys known present (`nixl_presence_cache`). */
  presenceCache: boolean;
  /** Answer `contains` from the presence cache only (`nixl_presence_cache_only`). */
  presenceOnly?: boolean;
  /** "never" skips the data CRC check of reads (any other value checks every read: the
   * files may come from other processes). */
  verifyReads?: VerifyReads;
}

function hostname(): string {
  try {
    return os.hostname().replace(/[^A-Za-z0-9.]/g, "_");
  } catch {
    return "host";
  }
}

/**
 * The dynamic store (see the module doc).
 *
 * @example
 * ```ts ignore
 * const store = await DynamicStore.open(io, { dir, pageSize, direct: false, presenceCache: true }, []);
 * ```
 */
export class DynamicStore implements Store {
  /** "dynamic". */
  readonly mode = "dynamic" as const;
  /** Counters. */
  readonly counters: StoreCounters = zeroCounters();
  #io: StorageIo;
  #opts: DynamicStoreOptions;
  #warnings: string[];
  #presence: Set<string> | undefined;
  #dataStride: number;
  #tmpSeq = 0;
  #tmpPrefix: string;
  #directRefusedNoted = false;
  #directSeen = false;
  #closed = false;
  /** Existence checks that went to the file system (for tests and stats). */
  fileChecks = 0;

  private constructor(io: StorageIo, opts: DynamicStoreOptions, warnings: string[]) {
    this.#io = io;
    this.#opts = opts;
    this.#warnings = warnings;
    this.#presence = opts.presenceCache ? new Set() : undefined;
    this.#dataStride = roundUp(opts.pageSize, IO_ALIGN);
    this.#tmpPrefix = `${TMP_PREFIX}${hostname()}-${process.pid}-`;
  }

  /** Bytes of a page in staging and of the data part of a file. */
  static pageStride(pageSize: number): number {
    return roundUp(pageSize, IO_ALIGN) + TRAILER_BYTES;
  }

  /** Bytes between two staging pages: data page plus trailer. */
  get pageStride(): number {
    return this.#dataStride + TRAILER_BYTES;
  }

  /** Opens the directory (creating it), checks its page size, removes stale temp files. */
  static async open(
    io: StorageIo,
    opts: DynamicStoreOptions,
    warnings: string[],
  ): Promise<DynamicStore> {
    const dir = opts.dir;
    await makeStoreDir(dir, "creating the storage directory");
    const manifest = `${dir}/${MANIFEST_NAME}`;
    let text: string | undefined;
    try {
      text = await fsp.readFile(manifest, "utf8");
    } catch (e) {
      // deno-lint-ignore no-explicit-any
      if ((e as any)?.code !== "ENOENT") throw toStorageError(e, "reading", manifest);
    }
    if (text === undefined) {
      const body = JSON.stringify({
        format: "kvport-dynamic",
        version: 1,
        pageSize: opts.pageSize,
      });
      await writeFileDurably(`${manifest}.tmp`, manifest, dir, enc.encode(body + "\n"));
    } else {
      let pageSize: unknown;
      try {
        pageSize = JSON.parse(text).pageSize;
      } catch { /* handled below */ }
      if (pageSize !== opts.pageSize) {
        throw new StorageError("CONFIG", "opening the storage directory", {
          path: manifest,
          reason: `it holds chunks of ${pageSize} bytes, this backend uses ${opts.pageSize}`,
          fix: "Use the directory's chunk size, another nixl_path, or empty the directory",
        });
      }
    }
    const store = new DynamicStore(io, opts, warnings);
    await store.#removeStaleTemps();
    return store;
  }

  /** The page size of an existing dynamic directory, from its manifest. */
  static async pageSizeOf(dir: string): Promise<number | undefined> {
    try {
      const v = JSON.parse(await fsp.readFile(`${dir}/${MANIFEST_NAME}`, "utf8")).pageSize;
      return typeof v === "number" ? v : undefined;
    } catch {
      return undefined;
    }
  }

  /** Path of a key's file. */
  pathOf(key: string): string {
    return `${this.#opts.dir}/${objectName(key)}`;
  }

  get #fileBytes(): number {
    return this.#dataStride + TRAILER_BYTES;
  }

  async #exists(key: string): Promise<boolean> {
    if (this.#presence?.has(key)) return true;
    if (this.#presence && this.#opts.presenceOnly) return false;
    this.fileChecks++;
    try {
      const st = await fsp.stat(this.pathOf(key));
      const ok = st.isFile() && st.size === this.#fileBytes;
      if (ok) this.#presence?.add(key);
      return ok;
    } catch {
      return false;
    }
  }

  async containsPrefix(keys: readonly string[], _pin: boolean): Promise<number> {
    let n = 0;
    for (let i = 0; i < keys.length; i += CONTAINS_BATCH) {
      const batch = keys.slice(i, i + CONTAINS_BATCH);
      const found = await Promise.all(batch.map((k) => this.#exists(k)));
      for (const ok of found) {
        if (!ok) return n;
        n++;
      }
    }
    return n;
  }

  /** Dynamic mode never evicts: pinning has nothing to protect, so it reports false. */
  pin(_key: string): boolean {
    return false;
  }

  /** See {@linkcode pin}. */
  unpin(_key: string): boolean {
    return false;
  }

  async remove(key: string): Promise<boolean> {
    this.#assertOpen();
    this.#presence?.delete(key);
    try {
      await fsp.unlink(this.pathOf(key));
      return true;
    } catch (e) {
      // deno-lint-ignore no-explicit-any
      if ((e as any)?.code === "ENOENT") return false;
      throw toStorageError(e, `removing key ${JSON.stringify(key)}`, this.pathOf(key));
    }
  }

  #open(path: string, create: boolean): StorageFile {
    let f: StorageFile;
    try {
      f = this.#io.openFile(path, {
        create,
        truncate: create,
        direct: this.#opts.direct,
        size: create ? this.#fileBytes : 0,
      });
    } catch (e) {
      throw toStorageError(e, create ? "creating a file" : "opening a file", path);
    }
    if (f.direct) this.#directSeen = true;
    if (this.#opts.direct && !f.direct && !this.#directRefusedNoted) {
      this.#directRefusedNoted = true;
      this.#warnings.push(
        `use_direct_io: the file system of ${this.#opts.dir} refused O_DIRECT; using buffered I/O`,
      );
    }
    return f;
  }

  async putPages(
    keys: readonly string[],
    pages: readonly number[],
    lens: readonly number[],
  ): Promise<PutResult[]> {
    this.#assertOpen();
    const stride = this.pageStride;
    const staging = this.#io.staging;
    keys.forEach((key, i) => {
      const base = pages[i] * stride;
      const crc = crc32(staging.subarray(base, base + lens[i]));
      const at = base + this.#dataStride;
      encodeTrailer(staging.subarray(at, at + TRAILER_BYTES), key, lens[i], crc);
    });
    const tmps = keys.map(() => `${this.#opts.dir}/${this.#tmpPrefix}${this.#tmpSeq++}`);
    const files: StorageFile[] = [];
    let renamed = 0;
    try {
      for (const t of tmps) files.push(this.#open(t, true));
      const set = this.#io.registerFiles(files, this.#fileBytes);
      try {
        await this.#io.transfer("WRITE", stride, pages, set, files.map((_, i) => i));
      } finally {
        this.#io.releaseFiles(set);
      }
      await Promise.all(files.map((f) => this.#io.syncFile(f)));
      for (const f of files.splice(0)) this.#io.closeFile(f);
      for (let i = 0; i < keys.length; i++) {
        await fsp.rename(tmps[i], this.pathOf(keys[i]));
        renamed++;
      }
      await syncDir(this.#opts.dir);
    } catch (e) {
      closeFilesQuietly(this.#io, files);
      for (const t of tmps.slice(renamed)) await fsp.rm(t, { force: true }).catch(() => {});
      throw toStorageError(e, `storing ${keys.length} chunk(s)`, this.#opts.dir);
    }
    for (const k of keys) this.#presence?.add(k);
    this.counters.puts += keys.length;
    return keys.map((key) => ({ key, stored: true, pending: false }));
  }

  async getPages(
    keys: readonly string[],
    pages: readonly number[],
  ): Promise<(ReadChunk | undefined)[]> {
    this.#assertOpen();
    const out: (ReadChunk | undefined)[] = new Array(keys.length).fill(undefined);
    const present = await Promise.all(keys.map((k) => this.#existsOnDisk(k)));
    const files: StorageFile[] = [];
    const idx: number[] = [];
    try {
      for (let i = 0; i < keys.length; i++) {
        if (!present[i]) continue;
        try {
          files.push(this.#open(this.pathOf(keys[i]), false));
          idx.push(i);
        } catch {
          // removed since the check: a miss
        }
      }
      if (files.length > 0) {
        const set = this.#io.registerFiles(files, this.#fileBytes);
        try {
          await this.#io.transfer(
            "READ",
            this.pageStride,
            idx.map((i) => pages[i]),
            set,
            files.map((_, j) => j),
          );
        } finally {
          this.#io.releaseFiles(set);
        }
      }
    } catch (e) {
      throw toStorageError(e, `reading ${files.length} chunk(s)`, this.#opts.dir);
    } finally {
      closeFilesQuietly(this.#io, files);
    }
    const staging = this.#io.staging;
    const stride = this.pageStride;
    for (const i of idx) {
      const base = pages[i] * stride;
      const t = decodeTrailer(
        staging.subarray(base + this.#dataStride, base + this.#dataStride + TRAILER_BYTES),
      );
      let bad: string | undefined;
      if (typeof t === "string") bad = t;
      else if (t.key !== keys[i]) bad = "";
      else if (t.dataLen > this.#opts.pageSize) bad = "data length beyond the page";
      else if (
        this.#opts.verifyReads !== "never" &&
        crc32(staging.subarray(base, base + t.dataLen)) !== t.dataCrc
      ) bad = "data checksum";
      if (bad === undefined && typeof t !== "string") {
        out[i] = { page: pages[i], dataLen: t.dataLen };
        this.#presence?.add(keys[i]);
        continue;
      }
      this.#presence?.delete(keys[i]);
      if (bad !== "") {
        this.counters.corrupt++;
        this.#warnings.push(
          `file ${this.pathOf(keys[i])} of key ${JSON.stringify(keys[i])} is damaged (${bad}): ` +
            "treated as a miss",
        );
      }
    }
    for (const r of out) r ? this.counters.hits++ : this.counters.misses++;
    return out;
  }

  async #existsOnDisk(key: string): Promise<boolean> {
    try {
      const st = await fsp.stat(this.pathOf(key));
      return st.isFile() && st.size === this.#fileBytes;
    } catch {
      return false;
    }
  }

  async keys(): Promise<string[]> {
    const out: string[] = [];
    for (const name of await this.#dataFiles()) {
      const t = await this.#readTrailer(`${this.#opts.dir}/${name}`);
      if (t) out.push(t.key);
    }
    return out;
  }

  async #dataFiles(): Promise<string[]> {
    try {
      return (await fsp.readdir(this.#opts.dir)).filter((n) => !n.startsWith(".")).sort();
    } catch (e) {
      throw toStorageError(e, "listing", this.#opts.dir);
    }
  }

  async #readTrailer(path: string): Promise<{ key: string; dataLen: number } | undefined> {
    let fh: fsp.FileHandle | undefined;
    try {
      fh = await fsp.open(path, "r");
      const st = await fh.stat();
      if (st.size !== this.#fileBytes) return undefined;
      const buf = new Uint8Array(TRAILER_BYTES);
      await fh.read(buf, 0, TRAILER_BYTES, this.#dataStride);
      const t = decodeTrailer(buf);
      return typeof t === "string" ? undefined : t;
    } catch {
      return undefined;
    } finally {
      await fh?.close().catch(() => {});
    }
  }

  async stats(): Promise<Record<string, number | string | boolean | null>> {
    let used = 0;
    let bytes = 0;
    for (const name of await this.#dataFiles()) {
      const t = await this.#readTrailer(`${this.#opts.dir}/${name}`);
      if (t) {
        used++;
        bytes += t.dataLen;
      }
    }
    return {
      slots: null,
      used,
      free: null,
      pinned: 0,
      bytes,
      presenceCached: this.#presence ? this.#presence.size : null,
      fileChecks: this.fileChecks,
      direct: this.#directSeen,
    };
  }

  close(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }

  async #removeStaleTemps(): Promise<void> {
    const host = hostname();
    await removeFilesWhere(this.#opts.dir, (name) => {
      if (!name.startsWith(TMP_PREFIX)) return false;
      const parts = name.slice(TMP_PREFIX.length).split("-");
      if (parts.length < 3) return false;
      const pid = Number(parts[parts.length - 2]);
      const h = parts.slice(0, -2).join("-");
      if (h !== host || !Number.isInteger(pid)) return false;
      let alive = pid === process.pid;
      if (!alive) {
        try {
          process.kill(pid, 0);
          alive = true;
        } catch (e) {
          // deno-lint-ignore no-explicit-any
          alive = (e as any)?.code === "EPERM";
        }
      }
      return !alive;
    });
  }

  #assertOpen(): void {
    if (this.#closed) throw new StorageError("CLOSED", "the storage backend is closed");
  }
}
