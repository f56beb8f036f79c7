/**
 * The default data path of the storage backend: its own agent with one storage backend
 * (POSIX on the builtin engine; GDS, GDS_MT, HF3FS, OBJ ... with NIXL), a registered DRAM
 * staging buffer, and loopback transfers (the agent's own name as the remote side)
 * between staging pages and FILE segments.
 *
 * @module
 */
import * as fsp from "node:fs/promises";
import {
  DescList,
  NixlAgent,
  NixlError,
  type PreparedDescList,
  type Registration,
  Status,
} from "../agent.ts";
import type { HostBuffer } from "../agent/buffers.ts";
import { closeFile, type NativeFile, openFile } from "../agent/files.ts";
import { StorageError, toStorageError } from "./errors.ts";
import type {
  StorageFile,
  StorageFileSet,
  StorageIo,
  StorageOpenOptions,
  StorageRegistration,
} from "./io.ts";

/** Options of {@linkcode createAgentIo}. */
export interface AgentIoOptions {
  /** Agent name. */
  name: string;
  /** Storage plugin. */
  backend: string;
  /** Engine. */
  engine: "auto" | "builtin" | "nixl";
  /** Parameters for the plugin (sent as `BACKEND.key=value`). */
  params?: Readonly<Record<string, string>>;
  /** Parameters of the engine itself (`io_threads`, `listen_host`, ...). */
  engineParams?: Readonly<Record<string, string | number>>;
  /** Path of libkvport.so. */
  libraryPath?: string;
  /** Bytes of the staging buffer. */
  stagingBytes: number;
  /** Limit of one transfer. */
  timeoutMs: number;
}

class AgentFileSet implements StorageFileSet {
  constructor(
    readonly count: number,
    readonly length: number,
    /** The set's own registration (sets from registerFiles), else undefined. */
    readonly reg: Registration | undefined,
    readonly prepped: PreparedDescList,
  ) {}
}

/** FILE descriptors (addr = offset 0, dev = fd) of `files`, `length` bytes each. */
function fileDescs(files: readonly StorageFile[], length: number) {
  const n = files.length;
  const addrs = new BigUint64Array(n);
  const lens = new BigUint64Array(n).fill(BigInt(length));
  const devs = new BigUint64Array(n);
  files.forEach((f, i) => (devs[i] = BigInt(f.fd)));
  return { addrs, lens, devs };
}

class AgentIo implements StorageIo {
  readonly name: string;
  readonly staging: Uint8Array;
  #agent: NixlAgent;
  #buffer: HostBuffer;
  #reg: Registration;
  #local = new Map<number, PreparedDescList>();
  #timeoutMs: number;
  #closed: Promise<void> | undefined;

  constructor(agent: NixlAgent, buffer: HostBuffer, reg: Registration, timeoutMs: number) {
    this.#agent = agent;
    this.#buffer = buffer;
    this.#reg = reg;
    this.staging = buffer.bytes;
    this.#timeoutMs = timeoutMs;
    this.name = `agent ${agent.name} (${agent.engine} engine, ${agent.backends.join(",")})`;
  }

  openFile(path: string, o: StorageOpenOptions): StorageFile {
    try {
      return openFile(this.#agent, path, {
        create: o.create,
        direct: o.direct,
        truncate: o.truncate,
        size: o.size,
      });
    } catch (e) {
      throw toStorageError(
        e,
        o.create ? "creating a storage file" : "opening a storage file",
        path,
      );
    }
  }

  async syncFile(f: StorageFile): Promise<void> {
    // fdatasync on the thread pool (the shim's kvp_file_sync would block the event loop);
    // it flushes the file, whichever descriptor asks.
    let fh: fsp.FileHandle | undefined;
    try {
      fh = await fsp.open(f.path, "r");
      await fh.datasync();
    } catch (e) {
      throw toStorageError(e, "syncing a storage file", f.path);
    } finally {
      await fh?.close().catch(() => {});
    }
  }

  closeFile(f: StorageFile): void {
    // Only files of openFile reach here: they are NativeFiles (with the shim's handle).
    closeFile(this.#agent, f as NativeFile);
  }

  registerFiles(files: readonly StorageFile[], length: number): StorageFileSet {
    const reg = this.#agent.registerMemory(fileDescs(files, length), "FILE");
    try {
      const set = this.prepareFiles(files, length) as AgentFileSet;
      return new AgentFileSet(set.count, length, reg, set.prepped);
    } catch (e) {
      reg.release();
      throw e;
    }
  }

  registerFile(file: StorageFile, length: number): StorageRegistration {
    return this.#agent.registerMemory(fileDescs([file], length), "FILE");
  }

  prepareFiles(files: readonly StorageFile[], length: number): StorageFileSet {
    const prepped = this.#agent.prepDescList(this.#agent.name, {
      memType: "FILE",
      ...fileDescs(files, length),
    });
    return new AgentFileSet(files.length, length, undefined, prepped);
  }

  releaseFiles(set: StorageFileSet): void {
    const s = set as AgentFileSet;
    s.prepped.release();
    s.reg?.release();
  }

  #localList(stride: number): PreparedDescList {
    let p = this.#local.get(stride);
    if (!p) {
      const count = Math.floor(this.#buffer.size / stride);
      using list = DescList.pages(this.#buffer, stride, count, { agent: this.#agent });
      p = this.#agent.prepDescList("", list);
      this.#local.set(stride, p);
    }
    return p;
  }

  async transfer(
    op: "READ" | "WRITE",
    stride: number,
    pages: readonly number[],
    set: StorageFileSet,
    files: readonly number[],
  ): Promise<void> {
    const s = set as AgentFileSet;
    await this.#agent.transfer(op, this.#localList(stride), pages, s.prepped, files, {
      timeoutMs: this.#timeoutMs,
    });
  }

  close(): Promise<void> {
    this.#closed ??= (async () => {
      for (const p of this.#local.values()) p.release();
      this.#local.clear();
      this.#reg.release();
      this.#buffer.free();
      await this.#agent.close();
    })();
    return this.#closed;
  }
}

/**
 * Creates the agent, allocates and registers the staging buffer. A backend other than
 * POSIX on the builtin engine fails with a message saying NIXL is needed.
 */
export async function createAgentIo(o: AgentIoOptions): Promise<StorageIo> {
  if (o.engine === "builtin" && o.backend !== "POSIX") throw needsNixl(o.backend, undefined);
  // A storage agent talks only to itself (loopback): its listener stays on 127.0.0.1.
  const params: Record<string, string | number> = {
    listen_host: "127.0.0.1",
    advertise_host: "127.0.0.1",
    ...o.engineParams,
  };
  for (const [k, v] of Object.entries(o.params ?? {})) params[`${o.backend}.${k}`] = v;
  let agent: NixlAgent;
  try {
    agent = await NixlAgent.create({
      name: o.name,
      engine: o.engine,
      backends: [o.backend],
      params,
      libraryPath: o.libraryPath,
    });
  } catch (e) {
    if (e instanceof NixlError && e.status === Status.ERR_NOT_SUPPORTED && o.backend !== "POSIX") {
      throw needsNixl(o.backend, e);
    }
    throw e;
  }
  try {
    // Private, huge-page memory: no peer maps the staging buffer, and O_DIRECT reads into
    // shared memory ran at half speed on 4 KiB pages.
    const buffer = agent.allocate(o.stagingBytes, { shared: false });
    const reg = agent.registerMemory(buffer);
    return new AgentIo(agent, buffer, reg, o.timeoutMs);
  } catch (e) {
    await agent.close().catch(() => {});
    throw toStorageError(e, `allocating a staging buffer of ${o.stagingBytes} bytes`);
  }
}

function needsNixl(backend: string, cause: unknown): StorageError {
  return new StorageError("NOT_SUPPORTED", `backend ${backend} needs the nixl engine`, {
    reason: "NIXL is not available" +
      (cause instanceof Error ? ` (${cause.message.split("\n")[0]})` : " to the builtin engine"),
    fix: "Install NIXL (NIXL_PREFIX, default /opt/nvidia/nvda_nixl) and rebuild the shim, " +
      'or use nixl_backend: "POSIX", which the builtin engine serves',
    cause,
  });
}
