/**
 * Static mode (`nixl_pool_size` > 0): a pool of slot files `obj_<i>.bin` in `nixl_path`,
 * one chunk per slot at offset 0, a key -> slot index in LRU order that survives a
 * restart (see `journal.ts` for the on-disk format and its crash rules), LRU eviction
 * that never evicts a pinned key. Slot files are opened on demand through a bounded
 * cache (`slot_files.ts`).
 *
 * @module
 */
import * as fsp from "node:fs/promises";
import { crc32 } from "./checksum.ts";
import { checkPoolFits } from "./disk_space.ts";
import { StorageError, toStorageError } from "./errors.ts";
import type { StorageFile, StorageIo } from "./io.ts";
import { decodeHeader, HEADER_BYTES, Journal, type JournalRecord, syncDir } from "./journal.ts";
import { acquireLock, type PoolLock } from "./lock.ts";
import { LruSlotIndex, type SlotEntry } from "./lru.ts";
import { JOURNAL_NAME, JOURNAL_TMP_NAME, LOCK_NAME, slotFileName } from "./naming.ts";
import { SlotFiles } from "./slot_files.ts";
import {
  IO_ALIGN,
  makeStoreDir,
  type PutResult,
  type ReadChunk,
  removeFilesWhere,
  type Store,
  type StoreCounters,
  type VerifyReads,
  zeroCounters,
} from "./store.ts";

/** Options of {@linkcode StaticPool.open}. */
export interface StaticPoolOptions {
  /** The pool directory (`nixl_path`). */
  dir: string;
  /** Number of slots (`nixl_pool_size`). */
  poolSize: number;
  /** Bytes of one chunk. */
  pageSize: number;
  /** Bytes of one slot file and of one staging page (page size rounded up to 4096). */
  slotBytes: number;
  /** Open slot files with O_DIRECT. */
  direct: boolean;
  /** Most slot files kept open between transfers (see `slot_files.ts`). */
  maxOpenFiles: number;
  /** Smallest journal that is compacted. */
  compactMinBytes?: number;
  /** When reads check CRCs (default "first"). */
  verifyReads?: VerifyReads;
}

interface Live extends SlotEntry {
  /** Replaced or removed while a read was in flight: free the slot after the last read. */
  retired: boolean;
  /** Its data is known good: written in this session, or checked by a read. */
  verified: boolean;
}

/**
 * Why a put is dropped when every slot is taken by a pinned (or busy) key.
 *
 * @example
 * ```ts
 * import { NixlStorageBackend, NO_EVICTION_CANDIDATE } from "@kvport/nixl";
 * declare const store: NixlStorageBackend;
 * const r = await store.put("k", new Uint8Array(16));
 * if (r.reason === NO_EVICTION_CANDIDATE) console.log("every slot is pinned");
 * ```
 */
export const NO_EVICTION_CANDIDATE = "no eviction candidate: every slot is pinned";

/** What an open found in the pool directory before it wrote anything. */
interface Survey {
  /** The directory existed. */
  dirExisted: boolean;
  /** The index file existed. */
  journalExisted: boolean;
  /** Slot files `obj_<i>.bin` there, by index: their size and allocated bytes. */
  slots: Map<number, { size: number; allocated: number }>;
}

/**
 * The static pool (see the module doc).
 *
 * @example
 * ```ts ignore
 * const pool = await StaticPool.open(io, {
 *   dir, poolSize: 8, pageSize, slotBytes, direct, maxOpenFiles: 64,
 * }, warnings);
 * ```
 */
export class StaticPool implements Store {
  /** "static". */
  readonly mode = "static" as const;
  /** Counters. */
  readonly counters: StoreCounters = zeroCounters();
  #io: StorageIo;
  #opts: StaticPoolOptions;
  #journal: Journal;
  #index: LruSlotIndex;
  #files: SlotFiles;
  #direct: boolean;
  #lock: PoolLock;
  #warnings: string[];
  #closed = false;

  private constructor(
    io: StorageIo,
    opts: StaticPoolOptions,
    journal: Journal,
    index: LruSlotIndex,
    files: SlotFiles,
    direct: boolean,
    lock: PoolLock,
    warnings: string[],
  ) {
    this.#io = io;
    this.#opts = opts;
    this.#journal = journal;
    this.#index = index;
    this.#files = files;
    this.#direct = direct;
    this.#lock = lock;
    this.#warnings = warnings;
  }

  /** Bytes between two staging pages: one slot. */
  get pageStride(): number {
    return this.#opts.slotBytes;
  }

  /**
   * Opens (creating when needed) the pool in `opts.dir`; `warnings` receives notes. A pool
   * that would not fit the free space is refused before anything is written; a create
   * that fails part way removes what it created.
   */
  static async open(
    io: StorageIo,
    opts: StaticPoolOptions,
    warnings: string[],
  ): Promise<StaticPool> {
    const dir = opts.dir;
    const pathOf = (i: number) => `${dir}/${slotFileName(i)}`;
    const survey = await surveyDir(dir);
    let allocated = 0;
    let needed = survey.journalExisted ? 0 : IO_ALIGN;
    for (let i = 0; i < opts.poolSize; i++) {
      const have = survey.slots.get(i)?.allocated ?? 0;
      allocated += Math.min(have, opts.slotBytes);
      needed += Math.max(0, opts.slotBytes - have);
    }
    checkPoolFits({ dir, poolSize: opts.poolSize, slotBytes: opts.slotBytes, needed, allocated });

    await makeStoreDir(dir, "creating the pool directory");
    let lock: PoolLock;
    try {
      lock = await acquireLock(`${dir}/${LOCK_NAME}`, warnings);
    } catch (e) {
      if (!survey.dirExisted) await fsp.rmdir(dir).catch(() => {});
      throw e;
    }
    let journal: Journal | undefined;
    let files: SlotFiles | undefined;
    const created: string[] = [];
    const journalOptions = {
      path: `${dir}/${JOURNAL_NAME}`,
      tmpPath: `${dir}/${JOURNAL_TMP_NAME}`,
      dirPath: dir,
      pageSize: opts.pageSize,
      poolSize: opts.poolSize,
      slotBytes: opts.slotBytes,
      compactMinBytes: opts.compactMinBytes,
    };
    try {
      // An index this pool cannot use (damaged, other chunk size) is refused before the
      // slot files are touched; a usable one is only rewritten (new pool size, torn tail)
      // once they are all there, so a create that fails leaves the pool as it was.
      if (survey.journalExisted && !(await journalUsable(journalOptions))) {
        journal = await Journal.open(journalOptions); // throws the reason
      }

      // Slot files are created (or grown) one at a time and closed again: a pool needs
      // no more descriptors than the cache keeps, whatever its size.
      let refused = 0;
      let probed = false;
      for (let i = 0; i < opts.poolSize; i++) {
        const have = survey.slots.get(i);
        if (have && have.size >= opts.slotBytes) continue;
        const path = pathOf(i);
        let f: StorageFile;
        try {
          f = io.openFile(path, { create: true, direct: opts.direct, size: opts.slotBytes });
        } catch (e) {
          throw toStorageError(e, `creating slot file ${i} of ${opts.poolSize}`, path);
        }
        if (!have) created.push(path);
        probed = true;
        if (opts.direct && !f.direct) refused++;
        try {
          io.closeFile(f);
        } catch (e) {
          throw toStorageError(e, "closing a new slot file", path);
        }
      }
      journal = await Journal.open(journalOptions);
      if (journal.found === "none") created.push(journalOptions.path);
      warnings.push(...journal.warnings.splice(0));
      const lostNote = lostIndexNote(journal, survey, journalOptions.path);
      if (lostNote) warnings.push(lostNote);
      await syncDir(dir);
      await removeSlotsBeyond(dir, opts.poolSize);
      files = new SlotFiles(io, {
        pathOf,
        slotBytes: opts.slotBytes,
        direct: opts.direct,
        capacity: Math.max(1, Math.min(opts.maxOpenFiles, opts.poolSize)),
        poolSize: opts.poolSize,
      });
      if (opts.direct && !probed && opts.poolSize > 0) {
        files.lease([0], false).release(); // whether this file system grants O_DIRECT
        refused = files.directRefused;
      }
      if (refused > 0) {
        warnings.push(
          `use_direct_io: the file system of ${dir} refused O_DIRECT; slot files use ` +
            "buffered I/O",
        );
      }
      const entries = journal.entries();
      const index = LruSlotIndex.fromEntries(
        opts.poolSize,
        [...entries].map((
          [key, e],
        ) => [key, { ...e, pins: 0, readers: 0, retired: false, verified: false }]),
      );
      const direct = opts.direct && refused === 0;
      return new StaticPool(io, opts, journal, index, files, direct, lock, warnings);
    } catch (e) {
      try {
        files?.close();
      } catch { /* already failing */ }
      await journal?.close().catch(() => {});
      for (const path of created) await fsp.rm(path, { force: true }).catch(() => {});
      await lock.release();
      if (!survey.dirExisted) await fsp.rmdir(dir).catch(() => {});
      throw e;
    }
  }

  containsPrefix(keys: readonly string[], pin: boolean): Promise<number> {
    let n = 0;
    for (const key of keys) {
      const e = this.#index.peek(key);
      if (!e) break;
      if (pin) e.pins++;
      n++;
    }
    return Promise.resolve(n);
  }

  pin(key: string): boolean {
    const e = this.#index.peek(key);
    if (!e) return false;
    e.pins++;
    return true;
  }

  unpin(key: string): boolean {
    const e = this.#index.peek(key);
    if (!e) return false;
    if (e.pins > 0) e.pins--;
    return true;
  }

  async remove(key: string): Promise<boolean> {
    this.#assertOpen();
    const e = this.#index.delete(key) as Live | undefined;
    if (!e) return false;
    this.#retire(e);
    // Durable before the slot is overwritten (putPages syncs a dirty journal first).
    await this.#journal.commit([{ type: "remove", key, slot: e.slot }], false);
    return true;
  }

  async putPages(
    keys: readonly string[],
    pages: readonly number[],
    lens: readonly number[],
  ): Promise<PutResult[]> {
    this.#assertOpen();
    const n = keys.length;
    const results: PutResult[] = keys.map((key) => ({ key, stored: false, pending: false }));
    const protect = new Set(keys);
    const slots: number[] = [];
    const removals: JournalRecord[] = [];
    for (let i = 0; i < n; i++) {
      const s = this.#index.takeFree();
      if (s === undefined) break;
      slots.push(s);
    }
    // Evict least recently used keys. Keys of this batch keep their old slot (the
    // replacement is atomic) unless nothing else is left: then their own slot is reused.
    for (const guard of [protect, undefined]) {
      if (slots.length >= n) break;
      for (const victim of this.#index.evictionCandidates(n - slots.length, guard)) {
        const e = this.#index.delete(victim)!;
        removals.push({ type: "remove", key: victim, slot: e.slot });
        slots.push(e.slot);
        if (!protect.has(victim)) this.counters.evictions++;
      }
    }
    const stored = slots.length; // the first `stored` keys get a slot, in order
    for (let i = stored; i < n; i++) {
      results[i].reason = NO_EVICTION_CANDIDATE;
      this.counters.dropped++;
    }
    if (stored === 0) return results;
    const crcs: number[] = [];
    try {
      if (removals.length > 0) await this.#journal.commit(removals, false);
      // A slot named by a committed PUT is overwritten only once its REMOVE is durable.
      if (this.#journal.dirty) await this.#journal.sync();
      const usePages = pages.slice(0, stored);
      const lease = this.#files.lease(slots, true);
      try {
        // The CRCs are computed while the engine's threads write the same pages.
        const writing = this.#io.transfer(
          "WRITE",
          this.pageStride,
          usePages,
          lease.set,
          lease.index,
        );
        const staging = this.#io.staging;
        const stride = this.pageStride;
        try {
          for (let i = 0; i < stored; i++) {
            crcs.push(
              crc32(staging.subarray(usePages[i] * stride, usePages[i] * stride + lens[i])),
            );
          }
        } finally {
          await writing;
        }
        await Promise.all(lease.files.map((f) => this.#io.syncFile(f)));
      } finally {
        lease.release();
      }
      const records: JournalRecord[] = [];
      for (let i = 0; i < stored; i++) {
        records.push({
          type: "put",
          key: keys[i],
          slot: slots[i],
          dataLen: lens[i],
          dataCrc: crcs[i],
        });
      }
      await this.#journal.commit(records);
    } catch (e) {
      for (const s of slots) this.#index.release(s);
      throw toStorageError(e, `storing ${stored} chunk(s) in the pool`, this.#opts.dir);
    }
    for (let i = 0; i < stored; i++) {
      const old = this.#index.delete(keys[i]) as Live | undefined;
      if (old) this.#retire(old);
      const entry: Live = {
        slot: slots[i],
        dataLen: lens[i],
        dataCrc: crcs[i],
        seq: 0n,
        pins: old?.pins ?? 0,
        readers: 0,
        retired: false,
        verified: true,
      };
      this.#index.set(keys[i], entry);
      results[i].stored = true;
      this.counters.puts++;
    }
    return results;
  }

  async getPages(
    keys: readonly string[],
    pages: readonly number[],
  ): Promise<(ReadChunk | undefined)[]> {
    this.#assertOpen();
    const out: (ReadChunk | undefined)[] = new Array(keys.length).fill(undefined);
    const hits: { i: number; e: Live }[] = [];
    keys.forEach((key, i) => {
      const e = this.#index.touch(key) as Live | undefined;
      if (e) {
        e.readers++;
        hits.push({ i, e });
      }
    });
    this.counters.misses += keys.length - hits.length;
    if (hits.length === 0) return out;
    try {
      const lease = this.#files.lease(hits.map((h) => h.e.slot), false);
      try {
        await this.#io.transfer(
          "READ",
          this.pageStride,
          hits.map((h) => pages[h.i]),
          lease.set,
          lease.index,
        );
      } finally {
        lease.release();
      }
    } catch (e) {
      throw toStorageError(e, `reading ${hits.length} chunk(s) from the pool`, this.#opts.dir);
    } finally {
      for (const h of hits) {
        h.e.readers--;
        if (h.e.retired && h.e.readers === 0) this.#index.release(h.e.slot);
      }
    }
    const stride = this.pageStride;
    const verify = this.#opts.verifyReads ?? "first";
    for (const { i, e } of hits) {
      const start = pages[i] * stride;
      const check = verify === "always" || (verify === "first" && !e.verified);
      const got = check ? crc32(this.#io.staging.subarray(start, start + e.dataLen)) : e.dataCrc;
      if (got === e.dataCrc) e.verified = true;
      if (got !== e.dataCrc) {
        this.counters.corrupt++;
        this.counters.misses++;
        this.#warnings.push(
          `chunk of key ${JSON.stringify(keys[i])} in ${this.#slotPath(e.slot)} failed its ` +
            `checksum (crc32 ${hex(got)}, index says ${hex(e.dataCrc)}): dropped`,
        );
        if (this.#index.peek(keys[i]) === e) await this.remove(keys[i]);
        continue;
      }
      this.counters.hits++;
      out[i] = { page: pages[i], dataLen: e.dataLen };
    }
    return out;
  }

  keys(): Promise<string[]> {
    return Promise.resolve([...this.#index.keys()]);
  }

  stats(): Promise<Record<string, number | string | boolean | null>> {
    let bytes = 0;
    for (const [, e] of this.#index.entries()) bytes += e.dataLen;
    return Promise.resolve({
      slots: this.#index.size,
      used: this.#index.count,
      free: this.#index.size - this.#index.count,
      pinned: this.#index.pinnedCount,
      bytes,
      journalBytes: this.#journal.bytes,
      journalGeneration: Number(this.#journal.header.generation),
      compactions: this.#journal.compactions,
      direct: this.#direct,
      openFiles: this.#files.openCount,
      maxOpenFiles: this.#files.capacity,
      fileOpens: this.#files.opens,
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    let first: unknown;
    try {
      await this.#journal.close();
    } catch (e) {
      first = e;
    }
    try {
      this.#files.close();
    } catch (e) {
      first ??= e;
    }
    await this.#lock.release();
    if (first !== undefined) throw toStorageError(first, "closing the pool", this.#opts.dir);
  }

  #slotPath(slot: number): string {
    return `${this.#opts.dir}/${slotFileName(slot)}`;
  }

  #retire(e: Live): void {
    if (e.readers > 0) e.retired = true;
    else this.#index.release(e.slot);
  }

  #assertOpen(): void {
    if (this.#closed) throw new StorageError("CLOSED", "the pool is closed");
  }
}

function hex(n: number): string {
  return (n >>> 0).toString(16).padStart(8, "0");
}

const SLOT_FILE = /^obj_(\d+)\.bin$/;

/** What is in the pool directory, before anything is written. */
async function surveyDir(dir: string): Promise<Survey> {
  const survey: Survey = { dirExisted: false, journalExisted: false, slots: new Map() };
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (e) {
    // deno-lint-ignore no-explicit-any
    if ((e as any)?.code === "ENOENT") return survey;
    throw toStorageError(e, "listing the pool directory", dir);
  }
  survey.dirExisted = true;
  for (const name of names) {
    if (name === JOURNAL_NAME) {
      survey.journalExisted = true;
      continue;
    }
    const m = SLOT_FILE.exec(name);
    if (!m) continue;
    try {
      const st = await fsp.stat(`${dir}/${name}`);
      // st_blocks counts 512-byte units actually allocated (a sparse file has fewer)
      const allocated = typeof st.blocks === "number" ? st.blocks * 512 : st.size;
      survey.slots.set(Number(m[1]), { size: st.size, allocated });
    } catch { /* removed meanwhile: it will be created */ }
  }
  return survey;
}

/**
 * Whether the index at `o.path` has a header this pool can open (else Journal.open says
 * why), read without writing anything.
 */
async function journalUsable(o: { path: string; pageSize: number; slotBytes: number }) {
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(o.path, "r");
    const b = new Uint8Array(HEADER_BYTES);
    const { bytesRead } = await fh.read(b, 0, HEADER_BYTES, 0);
    if (bytesRead < HEADER_BYTES) return true; // truncated: Journal.open starts anew
    const h = decodeHeader(b);
    return typeof h !== "string" && h.pageSize === o.pageSize && h.slotBytes === o.slotBytes;
  } catch {
    return false; // unreadable: Journal.open names the reason
  } finally {
    await fh?.close().catch(() => {});
  }
}

/** The warning for an index that is gone while slot files remain (see journal.ts). */
function lostIndexNote(journal: Journal, survey: Survey, path: string): string | undefined {
  const slots = survey.slots.size;
  if (journal.found === "truncated") {
    return `pool index ${path} was ${journal.lostReason}: the keys it held are lost and the ` +
      `pool starts empty; its ${slots} slot file(s) hold no keys of their own, so nothing ` +
      "can be rebuilt from them (their slots are reused)";
  }
  if (journal.found === "none" && slots > 0) {
    return `pool index ${path} is missing but ${slots} slot file(s) remain: the keys they ` +
      "held are lost and the pool starts empty (their slots are reused)";
  }
  return undefined;
}

/** Deletes slot files `obj_<i>.bin` with i >= size (left by a larger pool). */
function removeSlotsBeyond(dir: string, size: number): Promise<void> {
  return removeFilesWhere(dir, (name) => {
    const m = SLOT_FILE.exec(name);
    return m !== null && Number(m[1]) >= size;
  });
}
