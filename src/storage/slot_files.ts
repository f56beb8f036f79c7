/**
 * The open slot files of a static pool: a bounded cache, so that a pool of any size
 * needs a bounded number of descriptors (a pool of 10,000 slots under `ulimit -n 256`).
 *
 * A pool that fits the capacity opens every slot file at the first transfer and registers
 * them as one set that every transfer uses (no work per transfer). A larger pool opens
 * slot files on demand: a transfer takes a {@linkcode SlotLease} on the slots it moves,
 * whose files are opened (or found open), pinned while the transfer and its syncs run,
 * and prepared as one set for that transfer. Each file is registered once, when it is
 * opened, and deregistered before it is closed. Files that no lease pins are closed,
 * least recently used first, whenever more than `capacity` are open. Since every slot in
 * flight has a staging page of its own, a capacity of at least the staging buffer's
 * pages is never exceeded; a smaller one is exceeded by what is in flight, and trimmed
 * when it lands.
 *
 * Measured (64 KiB chunks on tmpfs, batches of 64, where the per-file cost shows most):
 * registering 10,000 files one by one made every transfer 3-7x slower than one set (the
 * builtin engine's prepare scans every registration), a cache of 64 costs about 10 us
 * per slot file opened, and a pool within the capacity runs as fast as one set.
 *
 * Works over {@linkcode StorageIo}'s files (open, close, register), whatever the engine
 * identifies a file by.
 *
 * @module
 */
import { StorageError, toStorageError } from "./errors.ts";
import { openFileLimits } from "./fd_limit.ts";
import type { StorageFile, StorageFileSet, StorageIo, StorageRegistration } from "./io.ts";

/** Options of {@linkcode SlotFiles}. */
export interface SlotFilesOptions {
  /** Path of slot `i`'s file. */
  pathOf: (slot: number) => string;
  /** Bytes of one slot file (what is registered of each). */
  slotBytes: number;
  /** Open with O_DIRECT. */
  direct: boolean;
  /** Most files kept open while no transfer needs them. */
  capacity: number;
  /** Slots of the pool: one set of all of them when they fit `capacity`. */
  poolSize: number;
}

/** Slots pinned open for one transfer; release it once the transfer and syncs are done. */
export interface SlotLease {
  /** The prepared set: descriptor `index[i]` is the file of `slots[i]`. */
  readonly set: StorageFileSet;
  /** For every slot asked for, its descriptor in {@linkcode set}. */
  readonly index: readonly number[];
  /** The distinct files, in descriptor order. */
  readonly files: readonly StorageFile[];
  /** Releases the set and unpins the files. Idempotent. */
  release(): void;
}

interface Open {
  file: StorageFile;
  reg: StorageRegistration;
  pins: number;
}

/**
 * The cache (see the module doc).
 *
 * @example
 * ```ts ignore
 * const files = new SlotFiles(io, {
 *   pathOf: (i) => `${dir}/obj_${i}.bin`, slotBytes, direct, capacity: 64, poolSize: 10_000,
 * });
 * const lease = files.lease([3, 7], false);
 * try {
 *   await io.transfer("READ", slotBytes, [0, 1], lease.set, lease.index);
 * } finally {
 *   lease.release();
 * }
 * ```
 */
export class SlotFiles {
  #io: StorageIo;
  #opts: SlotFilesOptions;
  /** Open files by slot, least recently used first (Map order). */
  #open = new Map<number, Open>();
  /** The pool within the capacity: every file, one registered and prepared set. */
  #whole: { files: StorageFile[]; set: StorageFileSet } | undefined;
  #opens = 0;
  #directRefused = 0;
  #closed = false;

  constructor(io: StorageIo, opts: SlotFilesOptions) {
    if (!Number.isInteger(opts.capacity) || opts.capacity < 1) {
      throw new StorageError("CONFIG", "NIXL storage configuration", {
        reason: `maxOpenFiles ${opts.capacity}: expected an integer >= 1`,
      });
    }
    this.#io = io;
    this.#opts = opts;
  }

  /** Files open now. */
  get openCount(): number {
    return this.#whole?.files.length ?? this.#open.size;
  }

  /** Files opened since the cache was made (a miss of the cache opens one). */
  get opens(): number {
    return this.#opens;
  }

  /** The capacity. */
  get capacity(): number {
    return this.#opts.capacity;
  }

  /** How many opens asked for O_DIRECT and got a buffered file (the file system refused). */
  get directRefused(): number {
    return this.#directRefused;
  }

  /**
   * Pins the files of `slots` open (opening those that are not, creating missing files
   * when `create`) and registers them as one set.
   */
  lease(slots: readonly number[], create: boolean): SlotLease {
    if (this.#closed) throw new StorageError("CLOSED", "the pool is closed");
    if (this.#opts.capacity >= this.#opts.poolSize) return this.#wholeLease(slots);
    const pinned: Open[] = [];
    const files: StorageFile[] = [];
    const position = new Map<number, number>();
    const index: number[] = [];
    try {
      for (const slot of slots) {
        let at = position.get(slot);
        if (at === undefined) {
          const o = this.#pin(slot, create);
          pinned.push(o);
          at = files.length;
          files.push(o.file);
          position.set(slot, at);
        }
        index.push(at);
      }
      const set = this.#io.prepareFiles(files, this.#opts.slotBytes);
      let released = false;
      return {
        set,
        index,
        files,
        release: () => {
          if (released) return;
          released = true;
          try {
            this.#io.releaseFiles(set);
          } finally {
            this.#unpin(pinned);
          }
        },
      };
    } catch (e) {
      this.#unpin(pinned);
      throw e;
    }
  }

  /** Closes every file. Files still leased are closed too (the pool is closing). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    let first: unknown;
    if (this.#whole) {
      try {
        this.#io.releaseFiles(this.#whole.set);
      } catch (e) {
        first = e;
      }
      for (const f of this.#whole.files) {
        try {
          this.#io.closeFile(f);
        } catch (e) {
          first ??= e;
        }
      }
      this.#whole = undefined;
    }
    for (const o of this.#open.values()) {
      try {
        this.#dispose(o);
      } catch (e) {
        first ??= e;
      }
    }
    this.#open.clear();
    if (first !== undefined) throw first;
  }

  #pin(slot: number, create: boolean): Open {
    let o = this.#open.get(slot);
    if (o) {
      this.#open.delete(slot); // most recently used: to the end
      this.#open.set(slot, o);
    } else {
      this.#trim(this.#opts.capacity - 1);
      o = this.#openFile(slot, create);
      this.#open.set(slot, o);
    }
    o.pins++;
    return o;
  }

  #unpin(pinned: readonly Open[]): void {
    for (const o of pinned) o.pins--;
    this.#trim(this.#opts.capacity);
  }

  /** Closes unpinned files, least recently used first, until at most `keep` are open. */
  #trim(keep: number): void {
    for (const [slot, o] of this.#open) {
      if (this.#open.size <= keep) return;
      if (o.pins > 0) continue;
      this.#open.delete(slot);
      try {
        this.#dispose(o);
      } catch { /* the engine refused: nothing more this cache can do */ }
    }
  }

  #dispose(o: Open): void {
    try {
      o.reg.release();
    } finally {
      this.#io.closeFile(o.file);
    }
  }

  #wholeLease(slots: readonly number[]): SlotLease {
    const w = this.#whole ??= this.#openWhole();
    const seen = new Set<number>();
    const files: StorageFile[] = [];
    for (const s of slots) {
      if (seen.has(s)) continue;
      seen.add(s);
      files.push(w.files[s]);
    }
    return { set: w.set, index: slots, files, release: () => {} };
  }

  #openWhole(): { files: StorageFile[]; set: StorageFileSet } {
    const files: StorageFile[] = [];
    try {
      for (let i = 0; i < this.#opts.poolSize; i++) files.push(this.#openRaw(i, true));
      return { files, set: this.#io.registerFiles(files, this.#opts.slotBytes) };
    } catch (e) {
      for (const f of files) {
        try {
          this.#io.closeFile(f);
        } catch { /* already failing */ }
      }
      throw e;
    }
  }

  #openFile(slot: number, create: boolean): Open {
    const f = this.#openRaw(slot, create);
    const path = f.path;
    let reg: StorageRegistration;
    try {
      reg = this.#io.registerFile(f, this.#opts.slotBytes);
    } catch (e) {
      try {
        this.#io.closeFile(f);
      } catch { /* already failing */ }
      throw toStorageError(e, `registering slot file ${slot}`, path);
    }
    return { file: f, reg, pins: 0 };
  }

  #openRaw(slot: number, create: boolean): StorageFile {
    const path = this.#opts.pathOf(slot);
    const open = () =>
      this.#io.openFile(path, {
        create,
        direct: this.#opts.direct,
        size: create ? this.#opts.slotBytes : 0,
      });
    let f: StorageFile;
    try {
      f = open();
    } catch (e) {
      const err = toStorageError(e, `opening slot file ${slot}`, path);
      if (err.code !== "TOO_MANY_FILES") throw err;
      // Out of descriptors: give back every one this cache can, then try once more.
      this.#trim(0);
      try {
        f = open();
      } catch (e2) {
        throw toStorageError(
          e2,
          `opening slot file ${slot} (${this.#open.size} slot files open, all in use)`,
          path,
        );
      }
    }
    this.#opens++;
    if (this.#opts.direct && !f.direct) this.#directRefused++;
    return f;
  }
}

/**
 * The default capacity of {@linkcode SlotFiles}: a quarter of the open-file limit (the
 * rest is the runtime's, the engine's, sockets'), at most 1024, but never fewer than the
 * staging buffer's pages (the most slots one transfer moves) nor more than the pool has.
 *
 * @example
 * ```ts
 * import { defaultMaxOpenFiles } from "./slot_files.ts";
 * console.log(defaultMaxOpenFiles(64, 10_000)); // 256 under `ulimit -n 1024`
 * ```
 */
export function defaultMaxOpenFiles(stagingPages: number, poolSize: number): number {
  const soft = openFileLimits()?.soft ?? 1024;
  const share = Math.floor(Math.min(soft, 1 << 20) / 4);
  return Math.max(1, Math.min(poolSize, Math.max(stagingPages, Math.min(1024, share))));
}
