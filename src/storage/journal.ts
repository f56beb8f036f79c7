/**
 * The durable key -> slot index of a static pool: an append-only journal with a CRC-32 on
 * every record and on the data of every chunk it names.
 *
 * On-disk format (all integers little endian), file `<nixl_path>/.kvport-index`:
 *
 * ```text
 * header, 64 bytes
 *   0  8  magic "KVPORTIX"
 *   8  4  version (1)
 *  12  4  header length (64)
 *  16  8  page size: bytes of one chunk
 *  24  4  pool size: number of slot files obj_<i>.bin
 *  28  4  slot bytes: bytes of one slot file (the page size rounded up to 4096)
 *  32  8  generation: incremented by every compaction
 *  40  8  creation time, ms since the epoch
 *  48 12  reserved (0)
 *  60  4  CRC-32 of bytes 0..59
 * records, one after another, 36 + key bytes each
 *   0  4  record length (36 + key length)
 *   4  1  type: 1 = PUT (key now lives in slot), 2 = REMOVE (key no longer in slot)
 *   5  1  flags (0)
 *   6  2  key length in bytes (UTF-8, at most 4096)
 *   8  8  sequence number (increasing)
 *  16  4  slot
 *  20  4  CRC-32 of the chunk's data bytes (PUT; 0 for REMOVE)
 *  24  8  data length in bytes, <= page size (PUT; 0 for REMOVE)
 *  32  n  key
 *  32+n 4 CRC-32 of bytes 0..31+n of the record
 * ```
 *
 * Rules that make it crash-safe:
 *  - a put writes the chunk into its slot file and `fdatasync`s it before the PUT record
 *    is appended and `fdatasync`ed: a PUT record never names data that is not on disk;
 *  - a slot that a committed PUT names is only overwritten after a REMOVE of that key
 *    (or a compaction without it) is durable: a crash mid-write never tears a live key;
 *  - replay reads records until the first one that is short, oversized or fails its CRC
 *    (a write torn by a crash can only be the tail), truncates the file there and applies
 *    the records before it: the torn put's key is absent, every other key is intact;
 *  - every read checks the chunk's CRC-32 against the record as a last line of defence
 *    (bit rot, a disk that lies about flushes): a mismatch is a miss, never wrong bytes;
 *  - when the journal grows past four times its live size (and 1 MiB) it is compacted:
 *    the live records are written to `.kvport-index.tmp`, synced, renamed over the
 *    journal and the directory synced; a crash leaves either the old or the new file.
 *
 * @module
 */
import * as fsp from "node:fs/promises";
import { crc32 } from "./checksum.ts";
import { StorageError, toStorageError } from "./errors.ts";

/** Magic bytes at the start of a journal. */
export const JOURNAL_MAGIC = "KVPORTIX";
/** Format version written in the header. */
export const JOURNAL_VERSION = 1;
/** Bytes of the header. */
export const HEADER_BYTES = 64;
/** Bytes of a record without its key. */
export const RECORD_FIXED_BYTES = 36;
/** Longest key, in UTF-8 bytes. */
export const MAX_KEY_BYTES = 4096;

const TYPE_PUT = 1;
const TYPE_REMOVE = 2;
const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });
const MAGIC_BYTES = enc.encode(JOURNAL_MAGIC);

/** Bytes as text for a message, one character per byte (never throws). */
function latin1(b: Uint8Array): string {
  return String.fromCharCode(...b);
}

/** The pool-wide facts in the header. */
export interface JournalHeader {
  /** Bytes of one chunk. */
  pageSize: number;
  /** Number of slots. */
  poolSize: number;
  /** Bytes of one slot file. */
  slotBytes: number;
  /** Compactions so far. */
  generation: bigint;
  /** Creation time (ms since the epoch). */
  createdMs: number;
}

/** One journal record. */
export type JournalRecord =
  | { type: "put"; key: string; slot: number; dataLen: number; dataCrc: number; seq?: bigint }
  | { type: "remove"; key: string; slot: number; seq?: bigint };

/** A key's location as the journal knows it. */
export interface JournalEntry {
  /** Slot index. */
  slot: number;
  /** Data bytes of the chunk. */
  dataLen: number;
  /** CRC-32 of the data bytes. */
  dataCrc: number;
  /** Sequence number of the PUT. */
  seq: bigint;
}

/** Encodes a header. */
export function encodeHeader(h: JournalHeader): Uint8Array {
  const b = new Uint8Array(HEADER_BYTES);
  const v = new DataView(b.buffer);
  b.set(enc.encode(JOURNAL_MAGIC), 0);
  v.setUint32(8, JOURNAL_VERSION, true);
  v.setUint32(12, HEADER_BYTES, true);
  v.setBigUint64(16, BigInt(h.pageSize), true);
  v.setUint32(24, h.poolSize, true);
  v.setUint32(28, h.slotBytes, true);
  v.setBigUint64(32, h.generation, true);
  v.setBigUint64(40, BigInt(Math.max(0, Math.floor(h.createdMs))), true);
  v.setUint32(60, crc32(b.subarray(0, 60)), true);
  return b;
}

/** Decodes a header; a string says why it is not one. */
export function decodeHeader(b: Uint8Array): JournalHeader | string {
  if (b.length < HEADER_BYTES) return `file is ${b.length} bytes, shorter than the header`;
  // Compared as bytes: a damaged magic need not be UTF-8 (the fatal decoder would throw).
  if (!MAGIC_BYTES.every((m, i) => b[i] === m)) {
    return `magic is ${JSON.stringify(latin1(b.subarray(0, 8)))}, not "${JOURNAL_MAGIC}"`;
  }
  const v = new DataView(b.buffer, b.byteOffset, HEADER_BYTES);
  if (v.getUint32(60, true) !== crc32(b.subarray(0, 60))) return "header checksum mismatch";
  const version = v.getUint32(8, true);
  if (version !== JOURNAL_VERSION) return `version ${version}, this library reads version 1`;
  return {
    pageSize: Number(v.getBigUint64(16, true)),
    poolSize: v.getUint32(24, true),
    slotBytes: v.getUint32(28, true),
    generation: v.getBigUint64(32, true),
    createdMs: Number(v.getBigUint64(40, true)),
  };
}

/** UTF-8 bytes of a key, refusing empty and over-long keys. */
export function keyBytes(key: string): Uint8Array {
  const kb = enc.encode(key);
  if (kb.length === 0 || kb.length > MAX_KEY_BYTES) {
    throw new StorageError("TOO_LARGE", `key of ${kb.length} bytes`, {
      fix: `Keys must be 1..${MAX_KEY_BYTES} bytes of UTF-8`,
    });
  }
  return kb;
}

/** Encodes records (each must carry its `seq`) into one buffer. */
export function encodeRecords(records: readonly JournalRecord[]): Uint8Array {
  const keys = records.map((r) => keyBytes(r.key));
  let total = 0;
  for (const k of keys) total += RECORD_FIXED_BYTES + k.length;
  const out = new Uint8Array(total);
  const v = new DataView(out.buffer);
  let off = 0;
  records.forEach((r, i) => {
    const k = keys[i];
    const len = RECORD_FIXED_BYTES + k.length;
    v.setUint32(off, len, true);
    v.setUint8(off + 4, r.type === "put" ? TYPE_PUT : TYPE_REMOVE);
    v.setUint8(off + 5, 0);
    v.setUint16(off + 6, k.length, true);
    v.setBigUint64(off + 8, r.seq ?? 0n, true);
    v.setUint32(off + 16, r.slot, true);
    v.setUint32(off + 20, r.type === "put" ? r.dataCrc >>> 0 : 0, true);
    v.setBigUint64(off + 24, BigInt(r.type === "put" ? r.dataLen : 0), true);
    out.set(k, off + 32);
    v.setUint32(off + 32 + k.length, crc32(out.subarray(off, off + 32 + k.length)), true);
    off += len;
  });
  return out;
}

/** Result of {@linkcode decodeRecords}. */
export interface DecodedRecords {
  /** The valid records, in order. */
  records: (JournalRecord & { seq: bigint })[];
  /** Offset just after the last valid record. */
  end: number;
  /** Why decoding stopped before the end of the bytes (a torn or corrupt tail). */
  stopReason?: string;
}

/** Decodes records from `offset` until the end or the first invalid one. */
export function decodeRecords(b: Uint8Array, offset: number): DecodedRecords {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const records: (JournalRecord & { seq: bigint })[] = [];
  let off = offset;
  while (off < b.length) {
    const left = b.length - off;
    if (left < RECORD_FIXED_BYTES) {
      return { records, end: off, stopReason: `${left} trailing bytes (torn record)` };
    }
    const len = v.getUint32(off, true);
    const keyLen = v.getUint16(off + 6, true);
    if (len !== RECORD_FIXED_BYTES + keyLen || keyLen === 0 || keyLen > MAX_KEY_BYTES) {
      return { records, end: off, stopReason: `bad record length ${len} at offset ${off}` };
    }
    if (len > left) {
      return { records, end: off, stopReason: `record at offset ${off} cut short (torn)` };
    }
    if (v.getUint32(off + len - 4, true) !== crc32(b.subarray(off, off + len - 4))) {
      return { records, end: off, stopReason: `record checksum mismatch at offset ${off}` };
    }
    const type = v.getUint8(off + 4);
    let key: string;
    try {
      key = dec.decode(b.subarray(off + 32, off + 32 + keyLen));
    } catch {
      return { records, end: off, stopReason: `key is not UTF-8 at offset ${off}` };
    }
    const seq = v.getBigUint64(off + 8, true);
    const slot = v.getUint32(off + 16, true);
    if (type === TYPE_PUT) {
      records.push({
        type: "put",
        key,
        slot,
        seq,
        dataCrc: v.getUint32(off + 20, true),
        dataLen: Number(v.getBigUint64(off + 24, true)),
      });
    } else if (type === TYPE_REMOVE) {
      records.push({ type: "remove", key, slot, seq });
    } else {
      return { records, end: off, stopReason: `unknown record type ${type} at offset ${off}` };
    }
    off += len;
  }
  return { records, end: off };
}

/**
 * Applies records to a state map (insertion order = order of the latest PUT). A PUT into a
 * slot that another key holds evicts that key; a PUT outside `[0, poolSize)` or larger
 * than `pageSize` is ignored.
 */
export function applyRecords(
  state: Map<string, JournalEntry>,
  slotOwner: Map<number, string>,
  records: readonly JournalRecord[],
  poolSize: number,
  pageSize: number,
): number {
  let ignored = 0;
  for (const r of records) {
    const seq = r.seq ?? 0n;
    if (r.type === "put") {
      if (r.slot >= poolSize || r.dataLen > pageSize) {
        ignored++;
        continue;
      }
      const holder = slotOwner.get(r.slot);
      if (holder !== undefined && holder !== r.key) state.delete(holder);
      const old = state.get(r.key);
      if (old && old.slot !== r.slot && slotOwner.get(old.slot) === r.key) {
        slotOwner.delete(old.slot);
      }
      state.delete(r.key);
      state.set(r.key, { slot: r.slot, dataLen: r.dataLen, dataCrc: r.dataCrc, seq });
      slotOwner.set(r.slot, r.key);
    } else {
      const cur = state.get(r.key);
      if (cur && cur.slot === r.slot) {
        state.delete(r.key);
        slotOwner.delete(r.slot);
      }
    }
  }
  return ignored;
}

interface Pending {
  records: JournalRecord[];
  durable: boolean;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** Options of {@linkcode Journal.open}. */
export interface JournalOpenOptions {
  /** The journal file. */
  path: string;
  /** Temporary file for compaction, in the same directory. */
  tmpPath: string;
  /** The directory, synced after renames. */
  dirPath: string;
  /** Page size the caller uses; a journal with another page size is refused. */
  pageSize: number;
  /** Pool size the caller uses; a different one is adopted (slots beyond it dropped). */
  poolSize: number;
  /** Bytes of one slot file. */
  slotBytes: number;
  /** Smallest journal that is compacted (default 1 MiB). */
  compactMinBytes?: number;
}

/**
 * The journal: replayed on open, then appended to with group commit (concurrent commits
 * share one write and one `fdatasync`), compacted when it grows.
 *
 * @example
 * ```ts
 * import { Journal } from "./journal.ts";
 * const dir = await Deno.makeTempDir();
 * const j = await Journal.open({
 *   path: `${dir}/.kvport-index`, tmpPath: `${dir}/.kvport-index.tmp`, dirPath: dir,
 *   pageSize: 4096, poolSize: 2, slotBytes: 4096,
 * });
 * await j.commit([{ type: "put", key: "k", slot: 0, dataLen: 3, dataCrc: 0 }]);
 * await j.close();
 * ```
 */
export class Journal {
  /** What open found: a recovered tail, a changed pool size. */
  readonly warnings: string[] = [];
  #fh: fsp.FileHandle;
  #opts: JournalOpenOptions;
  #header: JournalHeader;
  #end: number;
  #seq: bigint;
  #state = new Map<string, JournalEntry>();
  #slotOwner = new Map<number, string>();
  #liveBytes = 0;
  #queue: Pending[] = [];
  #running: Promise<void> | undefined;
  #closed = false;
  #broken: StorageError | undefined;
  #compactions = 0;
  #found: "none" | "truncated" | "intact" = "intact";
  #lostReason: string | undefined;

  private constructor(
    fh: fsp.FileHandle,
    opts: JournalOpenOptions,
    header: JournalHeader,
    end: number,
  ) {
    this.#fh = fh;
    this.#opts = opts;
    this.#header = header;
    this.#end = end;
    this.#seq = 1n;
  }

  /** Opens (creating when missing) and replays a journal. */
  static async open(opts: JournalOpenOptions): Promise<Journal> {
    let bytes: Uint8Array | undefined;
    try {
      bytes = new Uint8Array(await fsp.readFile(opts.path));
    } catch (e) {
      // deno-lint-ignore no-explicit-any
      if ((e as any)?.code !== "ENOENT") throw toStorageError(e, "reading the index", opts.path);
    }
    // Shorter than a header: truncated (the journal is only ever replaced by a rename of a
    // complete file, so no crash of ours leaves it so). The keys it held are lost; the
    // slot files hold no keys of their own to rebuild it from. Start again, and say so.
    const lost = bytes !== undefined && bytes.length < HEADER_BYTES
      ? `${bytes.length} bytes, shorter than its ${HEADER_BYTES}-byte header (truncated)`
      : undefined;
    if (bytes === undefined || lost !== undefined) {
      const header: JournalHeader = {
        pageSize: opts.pageSize,
        poolSize: opts.poolSize,
        slotBytes: opts.slotBytes,
        generation: 0n,
        createdMs: Date.now(),
      };
      await writeFileDurably(opts.tmpPath, opts.path, opts.dirPath, encodeHeader(header));
      const fh = await openRw(opts.path);
      const j = new Journal(fh, opts, header, HEADER_BYTES);
      j.#found = lost === undefined ? "none" : "truncated";
      if (lost !== undefined) j.#lostReason = lost;
      return j;
    }
    const header = decodeHeader(bytes);
    if (typeof header === "string") {
      throw new StorageError("FORMAT", "reading the pool index", {
        path: opts.path,
        reason: header,
        fix: "This is not a kvport pool index (or its header is damaged): point nixl_path at " +
          "an empty directory, or delete the pool directory to start an empty pool",
      });
    }
    if (header.pageSize !== opts.pageSize || header.slotBytes !== opts.slotBytes) {
      throw new StorageError("CONFIG", "opening the pool", {
        path: opts.path,
        reason: `the pool holds chunks of ${header.pageSize} bytes (slot files of ` +
          `${header.slotBytes} bytes), this backend uses ${opts.pageSize} (${opts.slotBytes})`,
        fix: "Use the pool's chunk size, another nixl_path, or delete the pool directory",
      });
    }
    const decoded = decodeRecords(bytes, HEADER_BYTES);
    const fh = await openRw(opts.path);
    const j = new Journal(fh, opts, header, decoded.end);
    if (decoded.stopReason !== undefined) {
      j.warnings.push(
        `pool index ${opts.path}: ${decoded.stopReason}; ${bytes.length - decoded.end} bytes ` +
          `after offset ${decoded.end} dropped (a put interrupted by a crash is not stored)`,
      );
      try {
        await fh.truncate(decoded.end);
        await fh.datasync();
      } catch (e) {
        await fh.close().catch(() => {});
        throw toStorageError(e, "truncating the torn tail of the pool index", opts.path);
      }
    }
    const ignored = applyRecords(
      j.#state,
      j.#slotOwner,
      decoded.records,
      opts.poolSize,
      opts.pageSize,
    );
    for (const r of decoded.records) if (r.seq >= j.#seq) j.#seq = r.seq + 1n;
    for (const k of j.#state.keys()) j.#liveBytes += recordBytes(k);
    if (header.poolSize !== opts.poolSize) {
      j.warnings.push(
        `pool size changed from ${header.poolSize} to ${opts.poolSize}` +
          (ignored > 0 ? `; ${ignored} records for slots beyond the new size dropped` : ""),
      );
      j.#header = { ...header, poolSize: opts.poolSize };
      await j.#compactNow();
    }
    return j;
  }

  /**
   * What open found: `"intact"` (a journal, replayed), `"none"` (no journal: a new one was
   * written) or `"truncated"` (shorter than its header: the keys it held are lost, a new
   * one was written; {@linkcode lostReason} says why).
   */
  get found(): "none" | "truncated" | "intact" {
    return this.#found;
  }

  /** Why the journal found at open was unusable (with `found === "truncated"`). */
  get lostReason(): string | undefined {
    return this.#lostReason;
  }

  /** The header as last written. */
  get header(): JournalHeader {
    return this.#header;
  }

  /** Bytes of the journal file. */
  get bytes(): number {
    return this.#end;
  }

  /** Compactions done since open. */
  get compactions(): number {
    return this.#compactions;
  }

  /** The committed state, in order of the latest PUT (a copy). */
  entries(): Map<string, JournalEntry> {
    return new Map(this.#state);
  }

  /**
   * Appends records. `durable` (default): resolves once they are written and synced, in
   * one write and one `fdatasync` with every commit queued meanwhile. Not durable: queued
   * and resolved at once; they reach the disk with the next durable commit or `sync()`.
   */
  commit(records: JournalRecord[], durable = true): Promise<void> {
    if (this.#closed) return Promise.reject(new StorageError("CLOSED", "the pool is closed"));
    if (this.#broken) return Promise.reject(this.#broken);
    for (const r of records) keyBytes(r.key);
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ records, durable, resolve, reject });
      if (durable) this.#kick();
      else resolve();
    });
  }

  /** True while records are queued that are not on disk yet. */
  get dirty(): boolean {
    return this.#queue.length > 0 || this.#running !== undefined;
  }

  /** Makes every queued record durable. */
  async sync(): Promise<void> {
    if (this.#queue.length > 0) await this.commit([]);
    else if (this.#running) await this.#running;
  }

  /** Syncs and closes. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      if (!this.#broken) await this.sync();
    } finally {
      this.#closed = true;
      await this.#fh.close().catch(() => {});
    }
  }

  #kick(): void {
    if (this.#running) return;
    this.#running = this.#run().finally(() => {
      this.#running = undefined;
      if (this.#queue.some((p) => p.durable)) this.#kick();
    });
  }

  async #run(): Promise<void> {
    while (this.#queue.some((p) => p.durable)) {
      const batch = this.#queue;
      this.#queue = [];
      const records: JournalRecord[] = [];
      for (const p of batch) {
        for (const r of p.records) records.push({ ...r, seq: this.#seq++ });
      }
      const start = this.#end;
      try {
        if (records.length > 0) {
          const buf = encodeRecords(records);
          let off = 0;
          while (off < buf.length) {
            const { bytesWritten } = await this.#fh.write(buf, off, buf.length - off, start + off);
            if (bytesWritten <= 0) throw new Error("short write to the pool index");
            off += bytesWritten;
          }
          await this.#fh.datasync();
          this.#end = start + buf.length;
          this.#apply(records);
        }
        for (const p of batch) p.resolve();
      } catch (e) {
        const err = toStorageError(e, "writing the pool index", this.#opts.path);
        try {
          await this.#fh.truncate(start);
        } catch {
          this.#broken = err;
        }
        // lazy records (removals) are retried with the next commit
        this.#queue = [...batch.filter((p) => !p.durable), ...this.#queue];
        for (const p of batch) if (p.durable) p.reject(err);
        return;
      }
      if (this.#needsCompaction()) {
        try {
          await this.#compactNow();
        } catch (e) {
          this.warnings.push(`compacting ${this.#opts.path} failed, kept growing: ${e}`);
        }
      }
    }
  }

  #apply(records: JournalRecord[]): void {
    const keys = new Set(records.map((r) => r.key));
    for (const k of keys) if (this.#state.has(k)) this.#liveBytes -= recordBytes(k);
    applyRecords(this.#state, this.#slotOwner, records, this.#header.poolSize, 2 ** 53);
    for (const k of keys) if (this.#state.has(k)) this.#liveBytes += recordBytes(k);
    this.#liveBytes = Math.max(0, this.#liveBytes);
  }

  #needsCompaction(): boolean {
    const min = this.#opts.compactMinBytes ?? 1 << 20;
    return this.#end > min && this.#end > 4 * (HEADER_BYTES + this.#liveBytes);
  }

  /** Rewrites the journal with only the live records (see the module doc). */
  async #compactNow(): Promise<void> {
    const header: JournalHeader = {
      ...this.#header,
      generation: this.#header.generation + 1n,
    };
    const records: JournalRecord[] = [];
    for (const [key, e] of this.#state) {
      records.push({
        type: "put",
        key,
        slot: e.slot,
        dataLen: e.dataLen,
        dataCrc: e.dataCrc,
        seq: e.seq,
      });
    }
    const body = encodeRecords(records);
    const buf = new Uint8Array(HEADER_BYTES + body.length);
    buf.set(encodeHeader(header), 0);
    buf.set(body, HEADER_BYTES);
    await writeFileDurably(this.#opts.tmpPath, this.#opts.path, this.#opts.dirPath, buf);
    const old = this.#fh;
    this.#fh = await openRw(this.#opts.path);
    await old.close().catch(() => {});
    this.#header = header;
    this.#end = buf.length;
    this.#liveBytes = body.length;
    this.#compactions++;
  }
}

function recordBytes(key: string): number {
  return RECORD_FIXED_BYTES + enc.encode(key).length;
}

async function openRw(path: string): Promise<fsp.FileHandle> {
  try {
    return await fsp.open(path, "r+");
  } catch (e) {
    throw toStorageError(e, "opening the pool index", path);
  }
}

/** Writes `bytes` to `tmp`, syncs it, renames it to `path` and syncs the directory. */
export async function writeFileDurably(
  tmp: string,
  path: string,
  dir: string,
  bytes: Uint8Array,
): Promise<void> {
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(tmp, "w", 0o644);
    let off = 0;
    while (off < bytes.length) {
      const { bytesWritten } = await fh.write(bytes, off, bytes.length - off, off);
      if (bytesWritten <= 0) throw new Error("short write");
      off += bytesWritten;
    }
    await fh.datasync();
    await fh.close();
    fh = undefined;
    await fsp.rename(tmp, path);
  } catch (e) {
    await fh?.close().catch(() => {});
    await fsp.rm(tmp, { force: true }).catch(() => {});
    throw toStorageError(e, "writing the pool index", path);
  }
  await syncDir(dir);
}

/** fsync of a directory (makes creates and renames in it durable); best effort. */
export async function syncDir(dir: string): Promise<void> {
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(dir, "r");
    await fh.sync();
  } catch {
    // some file systems refuse fsync on directories; nothing more can be done
  } finally {
    await fh?.close().catch(() => {});
  }
}
