/**
 * The data path the storage backend drives: a staging buffer of pages, files opened for
 * FILE registration, and one transfer request per batch between pages and files. The
 * default implementation is an agent (`agent_io.ts`); tests may pass their own.
 *
 * @module
 */

/**
 * A file opened for FILE registration (NIXL: addr = offset, devId = fd).
 *
 * @example
 * ```ts
 * import type { StorageFile } from "@kvport/nixl";
 * const f: StorageFile = { fd: 7, direct: false, path: "/kv/obj_0.bin" };
 * ```
 */
export interface StorageFile {
  /** The file's descriptor. */
  readonly fd: number;
  /** Whether it is open with `O_DIRECT`. */
  readonly direct: boolean;
  /** Its path. */
  readonly path: string;
}

/**
 * A registered and prepared set of files, one descriptor (offset 0) per file.
 *
 * @example
 * ```ts
 * import type { StorageFileSet, StorageIo } from "@kvport/nixl";
 * declare const io: StorageIo;
 * const set: StorageFileSet = io.registerFiles([], 4096);
 * ```
 */
export interface StorageFileSet {
  /** Number of files (descriptors). */
  readonly count: number;
  /** Bytes of each descriptor. */
  readonly length: number;
}

/**
 * One file registered on its own (see {@linkcode StorageIo.registerFile}).
 *
 * @example
 * ```ts
 * import type { StorageIo } from "@kvport/nixl";
 * declare const io: StorageIo;
 * const f = io.openFile("/kv/obj_0.bin", { create: true, direct: false, size: 4096 });
 * const reg = io.registerFile(f, 4096);
 * reg.release();
 * io.closeFile(f);
 * ```
 */
export interface StorageRegistration {
  /** Deregisters the file. Idempotent. */
  release(): void;
}

/**
 * How {@linkcode StorageIo.openFile} opens a file.
 *
 * @example
 * ```ts
 * import type { StorageOpenOptions } from "@kvport/nixl";
 * const o: StorageOpenOptions = { create: true, direct: true, size: 1 << 21 };
 * ```
 */
export interface StorageOpenOptions {
  /** Create it when missing. */
  create: boolean;
  /** Ask for `O_DIRECT` (refused by some file systems: then `direct` is false). */
  direct: boolean;
  /** Make it at least this many bytes (0: leave the size). */
  size: number;
  /** Truncate it to 0 first. */
  truncate?: boolean;
}

/**
 * What {@linkcode NixlStorageBackend} needs from a transfer engine. The default is an
 * agent with a POSIX (or NIXL storage) backend and a DRAM staging buffer; pass your own
 * as `io` in the options to run the backend over something else (a test double).
 *
 * @example
 * ```ts
 * import type { StorageIo } from "@kvport/nixl";
 * function describe(io: StorageIo): string {
 *   return `${io.staging.length} bytes of staging over ${io.name}`;
 * }
 * ```
 */
export interface StorageIo {
  /** A name for messages ("agent kvport-storage-1 (builtin engine, POSIX)"). */
  readonly name: string;
  /** The staging buffer (DRAM), page-aligned. */
  readonly staging: Uint8Array;
  /** Opens a file for registration. Throws with the path and the system's reason. */
  openFile(path: string, options: StorageOpenOptions): StorageFile;
  /** Makes a file's data durable (fdatasync). */
  syncFile(file: StorageFile): Promise<void>;
  /** Closes a file from {@linkcode openFile}. */
  closeFile(file: StorageFile): void;
  /** Registers files and prepares their descriptor list (`length` bytes at offset 0 each). */
  registerFiles(files: readonly StorageFile[], length: number): StorageFileSet;
  /**
   * Registers one file (`length` bytes at offset 0) for sets from
   * {@linkcode prepareFiles}; release it only once no set that uses it is in use.
   */
  registerFile(file: StorageFile, length: number): StorageRegistration;
  /**
   * Prepares the descriptor list of files registered with {@linkcode registerFile}
   * (`length` bytes at offset 0 each), without registering them again.
   */
  prepareFiles(files: readonly StorageFile[], length: number): StorageFileSet;
  /** Releases a set (and deregisters its files when it came from `registerFiles`). */
  releaseFiles(set: StorageFileSet): void;
  /**
   * One transfer request: for every i, staging page `pages[i]` (`pageStride` bytes at
   * `pages[i] * pageStride`) and file `files[i]` of `set`. WRITE: pages to files; READ:
   * files to pages. Resolves when done; rejects with the engine's message.
   */
  transfer(
    op: "READ" | "WRITE",
    pageStride: number,
    pages: readonly number[],
    set: StorageFileSet,
    files: readonly number[],
  ): Promise<void>;
  /** Releases everything (the staging buffer included). Idempotent. */
  close(): Promise<void>;
}
