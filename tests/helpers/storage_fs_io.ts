/**
 * A StorageIo over node:fs (pread/pwrite from a plain ArrayBuffer), for tests of the
 * storage logic that do not need the native library. Counts transfer requests, and can
 * fail or stall the next transfer on purpose.
 */
import * as fs from "node:fs";
import type {
  StorageFile,
  StorageFileSet,
  StorageIo,
  StorageOpenOptions,
  StorageRegistration,
} from "../../src/storage/io.ts";

interface FsSet extends StorageFileSet {
  files: StorageFile[];
}

export class FsStorageIo implements StorageIo {
  readonly name = "node:fs test io";
  readonly staging: Uint8Array;
  /** Transfer requests made, by op. */
  transfers = { READ: 0, WRITE: 0 };
  /** Descriptors moved per request, in order. */
  batches: { op: string; count: number }[] = [];
  /** While set, WRITE transfers wait for it: lets a test observe a put in flight. */
  writeGate: Promise<void> | undefined;
  /** Throw this from the next transfer. */
  failNext: Error | undefined;
  /** Write only half of each page of the next WRITE, then stall forever (a crash). */
  tearNext = false;
  syncs = 0;
  closed = false;
  openFiles = new Set<number>();
  /** Descriptors registered one by one (registerFile), not yet released. */
  registered = new Set<number>();
  /** Fail opens with EMFILE after this many more (a test of descriptor limits). */
  opensLeft = Infinity;

  constructor(bytes: number) {
    this.staging = new Uint8Array(new ArrayBuffer(bytes));
  }

  openFile(path: string, o: StorageOpenOptions): StorageFile {
    if (this.opensLeft-- <= 0) {
      throw Object.assign(new Error(`EMFILE: too many open files, open '${path}'`), {
        code: "EMFILE",
      });
    }
    let flags = fs.constants.O_RDWR;
    if (o.create) flags |= fs.constants.O_CREAT;
    if (o.truncate) flags |= fs.constants.O_TRUNC;
    const fd = fs.openSync(path, flags, 0o644);
    try {
      // allocate (as the shim's fallocate does), so a full disk shows at open
      const have = fs.fstatSync(fd).size;
      if (o.size > have) {
        const zeros = new Uint8Array(o.size - have);
        let off = 0;
        while (off < zeros.length) {
          off += fs.writeSync(fd, zeros, off, zeros.length - off, have + off);
        }
      }
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    this.openFiles.add(fd);
    return { fd, direct: false, path };
  }

  async syncFile(f: StorageFile): Promise<void> {
    this.syncs++;
    fs.fdatasyncSync(f.fd);
    await Promise.resolve();
  }

  closeFile(f: StorageFile): void {
    if (this.registered.has(f.fd)) throw new Error(`fd ${f.fd} (${f.path}) is still registered`);
    this.openFiles.delete(f.fd);
    fs.closeSync(f.fd);
  }

  registerFiles(files: readonly StorageFile[], length: number): StorageFileSet {
    return { count: files.length, length, files: [...files] } as FsSet;
  }

  registerFile(file: StorageFile, _length: number): StorageRegistration {
    this.registered.add(file.fd);
    let released = false;
    return {
      release: () => {
        if (!released) this.registered.delete(file.fd);
        released = true;
      },
    };
  }

  prepareFiles(files: readonly StorageFile[], length: number): StorageFileSet {
    for (const f of files) {
      if (!this.registered.has(f.fd)) throw new Error(`fd ${f.fd} (${f.path}) is not registered`);
    }
    return { count: files.length, length, files: [...files] } as FsSet;
  }

  releaseFiles(_set: StorageFileSet): void {}

  async transfer(
    op: "READ" | "WRITE",
    stride: number,
    pages: readonly number[],
    set: StorageFileSet,
    files: readonly number[],
  ): Promise<void> {
    await Promise.resolve();
    if (op === "WRITE" && this.writeGate) await this.writeGate;
    this.transfers[op]++;
    this.batches.push({ op, count: pages.length });
    if (this.failNext) {
      const e = this.failNext;
      this.failNext = undefined;
      throw e;
    }
    const s = set as FsSet;
    const tear = this.tearNext && op === "WRITE";
    for (let i = 0; i < pages.length; i++) {
      const f = s.files[files[i]];
      const len = tear ? Math.floor(s.length / 2) : s.length;
      const view = this.staging.subarray(pages[i] * stride, pages[i] * stride + len);
      if (op === "WRITE") {
        let off = 0;
        while (off < len) off += fs.writeSync(f.fd, view, off, len - off, off);
      } else {
        let off = 0;
        while (off < len) {
          const n = fs.readSync(f.fd, view, off, len - off, off);
          if (n <= 0) {
            view.fill(0, off);
            break;
          }
          off += n;
        }
      }
    }
    if (tear) await new Promise(() => {});
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}
