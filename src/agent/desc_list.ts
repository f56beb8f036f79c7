/**
 * Descriptor lists: {@linkcode DescList} (a native list of `(address, length, device)`
 * built in one call from typed arrays, serializable for a peer) and
 * {@linkcode PreparedDescList} (a list prepared by an agent for transfers, NIXL's
 * `prepXferDlist`).
 *
 * @example
 * ```ts
 * import { DescList, NixlAgent } from "@kvport/nixl";
 * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
 * const buf = agent.allocate(64 * 4096);
 * agent.registerMemory(buf);
 * using pages = DescList.pages(buf, 4096, 64);
 * const local = agent.prepDescList("", pages);
 * console.log(local.count); // 64
 * ```
 * @module
 */

import type { NativeLib } from "../../ffi/mod.ts";
import { check, OUT_I32, OUT_U64, OUT_U64_B, sizedOut } from "../../ffi/native.ts";
import { NixlError, Status } from "../errors.ts";
import type { NixlAgent } from "../agent.ts";
import { NativeBuffer } from "./buffers.ts";
import {
  type AgentCore,
  loadedLibrary,
  type MemType,
  memTypeCode,
  memTypeName,
  orNull,
  releasedError,
  toU64,
} from "./common.ts";

/** The native library of each agent, for `{ agent }` options. */
export const agentLibraries: WeakMap<NixlAgent, NativeLib> = new WeakMap();

/** Descriptors as three parallel arrays: addresses (or file offsets), lengths, devices
 * (CUDA ordinal, fd for FILE, 0 for DRAM; default all 0). */
export interface DescArrays {
  /** Addresses (DRAM/VRAM) or offsets (FILE). */
  addrs: BigUint64Array;
  /** Lengths in bytes. */
  lens: BigUint64Array;
  /** Device ids; default all 0. */
  devs?: BigUint64Array;
}

/** Options of the {@linkcode DescList} constructors. */
export interface DescListOptions {
  /** Use this agent's native library (default: the one loaded first). */
  agent?: NixlAgent;
}

/** Where {@linkcode DescList.pages} cuts pages from. */
export type PageSource =
  | NativeBuffer
  | Uint8Array
  | { address: bigint | number; memType?: MemType; device?: number }
  | { fd: number; offset?: bigint | number };

function libFor(options: DescListOptions, fn: string, buffer?: unknown): NativeLib {
  if (options.agent) {
    const lib = agentLibraries.get(options.agent);
    if (lib) return lib;
  }
  if (buffer instanceof NativeBuffer) return buffer.lib;
  return loadedLibrary(fn);
}

/**
 * A native descriptor list of one memory type (NIXL's `nixl_xfer_dlist_t`). Release it
 * when done (`release()` or `using`); prepared copies ({@linkcode PreparedDescList})
 * do not depend on it.
 *
 * @example
 * ```ts
 * import { DescList, NixlAgent } from "@kvport/nixl";
 * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
 * using list = DescList.fromArrays("DRAM", {
 *   addrs: new BigUint64Array([0x1000n, 0x2000n]),
 *   lens: new BigUint64Array([4096n, 4096n]),
 * }, { agent });
 * const bytes = list.serialize();
 * using copy = DescList.deserialize(bytes, { agent });
 * console.log(copy.count, copy.memType); // 2 DRAM
 * ```
 */
export class DescList {
  /** Memory type of every descriptor. */
  readonly memType: MemType;
  /** Number of descriptors. */
  readonly count: number;
  #lib: NativeLib;
  #handle: bigint;
  #released = false;
  #lens: BigUint64Array | undefined;

  private constructor(lib: NativeLib, handle: bigint, lens?: BigUint64Array) {
    this.#lib = lib;
    this.#handle = handle;
    this.#lens = lens;
    check(lib, lib.symbols.kvp_dlist_info(handle, OUT_U64, OUT_I32), "kvp_dlist_info");
    this.count = Number(OUT_U64[0]);
    this.memType = memTypeName(OUT_I32[0]);
  }

  /**
   * Builds a list from parallel typed arrays in one native call.
   *
   * @example
   * ```ts
   * import { DescList } from "@kvport/nixl";
   * const addrs = new BigUint64Array(10_000).map((_, i) => 0x10000n + BigInt(i) * 4096n);
   * using list = DescList.fromArrays("DRAM", { addrs, lens: new BigUint64Array(10_000).fill(4096n) });
   * ```
   */
  static fromArrays(memType: MemType, arrays: DescArrays, options?: DescListOptions): DescList {
    options ??= {};
    return DescList.#build(libFor(options, "DescList.fromArrays"), memType, arrays);
  }

  static #build(lib: NativeLib, memType: MemType, arrays: DescArrays): DescList {
    const { addrs, lens } = arrays;
    const count = addrs.length;
    const devs = arrays.devs ?? new BigUint64Array(count);
    if (lens.length !== count || devs.length !== count) {
      throw new NixlError(
        Status.ERR_MISMATCH,
        "DescList.fromArrays",
        `addrs, lens and devs must have the same length; got ${count}, ${lens.length}, ` +
          `${devs.length}`,
      );
    }
    check(
      lib,
      lib.symbols.kvp_dlist_create(
        memTypeCode(memType),
        orNull(addrs),
        orNull(lens),
        orNull(devs),
        BigInt(count),
        OUT_U64_B,
      ),
      "kvp_dlist_create",
      `building a ${memType} list of ${count} descriptors`,
    );
    return new DescList(lib, OUT_U64_B[0], lens);
  }

  /**
   * `count` consecutive pages of `pageSize` bytes from `offset` of a buffer: a buffer
   * from `allocate`, a `Uint8Array` (DRAM), a peer's `{ address, memType?, device? }`,
   * or a file `{ fd, offset? }`.
   *
   * @example
   * ```ts
   * import { DescList, NixlAgent } from "@kvport/nixl";
   * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
   * const buf = agent.allocate(1 << 20);
   * using pages = DescList.pages(buf, 4096, 256);
   * console.log(pages.count); // 256
   * ```
   */
  static pages(
    source: PageSource,
    pageSize: number | bigint,
    count: number,
    options?: DescListOptions & { offset?: number | bigint },
  ): DescList {
    options ??= {};
    const fn = "DescList.pages";
    const lib = libFor(options, fn, source);
    const size = toU64(pageSize, "pageSize");
    if (!Number.isSafeInteger(count) || count < 0) {
      throw new NixlError(Status.ERR_INVALID_PARAM, fn, `count must be >= 0, got ${count}`);
    }
    let base: bigint;
    let memType: MemType;
    let dev: bigint;
    let limit: bigint | undefined;
    if (source instanceof NativeBuffer) {
      source.assertLive(fn);
      base = source.address;
      memType = source.memType;
      dev = BigInt(source.device);
      limit = BigInt(source.size);
    } else if (source instanceof Uint8Array) {
      base = lib.addressOf(source);
      memType = "DRAM";
      dev = 0n;
      limit = BigInt(source.byteLength);
    } else if ("fd" in source) {
      base = toU64(source.offset ?? 0, "offset");
      memType = "FILE";
      dev = BigInt(source.fd);
    } else {
      base = toU64(source.address, "address");
      memType = source.memType ?? "DRAM";
      dev = BigInt(source.device ?? 0);
    }
    const offset = toU64(options.offset ?? 0, "offset");
    if (limit !== undefined && offset + size * BigInt(count) > limit) {
      throw new NixlError(
        Status.ERR_INVALID_PARAM,
        fn,
        `${count} pages of ${size} bytes from offset ${offset} need ` +
          `${offset + size * BigInt(count)} bytes; the buffer has ${limit}`,
      );
    }
    const addrs = new BigUint64Array(count);
    let a = base + offset;
    for (let i = 0; i < count; i++, a += size) addrs[i] = a;
    const lens = new BigUint64Array(count).fill(size);
    const devs = new BigUint64Array(count);
    if (dev !== 0n) devs.fill(dev);
    return DescList.#build(lib, memType, { addrs, lens, devs });
  }

  /**
   * Rebuilds a list from {@linkcode DescList.serialize} bytes (e.g. a peer's page list);
   * malformed bytes are `NIXL_ERR_MISMATCH`.
   *
   * @example
   * ```ts
   * import { DescList } from "@kvport/nixl";
   * declare const bytesFromPeer: Uint8Array;
   * using remotePages = DescList.deserialize(bytesFromPeer);
   * ```
   */
  static deserialize(bytes: Uint8Array, options?: DescListOptions): DescList {
    options ??= {};
    const lib = libFor(options, "DescList.deserialize");
    check(
      lib,
      lib.symbols.kvp_dlist_deserialize(orNull(bytes), BigInt(bytes.byteLength), OUT_U64_B),
      "kvp_dlist_deserialize",
    );
    return new DescList(lib, OUT_U64_B[0]);
  }

  /** @internal The native handle (throws once released). */
  handle(fn: string): bigint {
    if (this.#released) throw releasedError("this DescList", fn);
    return this.#handle;
  }

  /** @internal The descriptors' lengths, when built here (not deserialized): metrics
   * count a transfer's bytes from them. */
  get lengths(): BigUint64Array | undefined {
    return this.#lens;
  }

  /** @internal The library the list lives in. */
  get lib(): NativeLib {
    return this.#lib;
  }

  /** True once released. */
  get released(): boolean {
    return this.#released;
  }

  /** The list as bytes for a peer (NIXL's serialized form under the nixl engine). */
  serialize(): Uint8Array {
    const h = this.handle("serialize");
    return sizedOut(
      this.#lib,
      "kvp_dlist_serialize",
      (buf, cap, len) => this.#lib.symbols.kvp_dlist_serialize(h, buf, cap, len),
    );
  }

  /** Releases the native list (idempotent). */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    if (!this.#lib.closed) {
      check(this.#lib, this.#lib.symbols.kvp_dlist_release(this.#handle), "kvp_dlist_release");
    }
  }

  /** Same as {@linkcode DescList.release}. */
  [Symbol.dispose](): void {
    this.release();
  }
}

/**
 * A list prepared by an agent for transfers (NIXL's `prepXferDlist` handle): the local
 * side (`remote === ""`), a peer's side, or loopback (the agent's own name). Released by
 * `release()`, `using`, or the agent's `close()`.
 *
 * @example
 * ```ts
 * import { DescList, NixlAgent } from "@kvport/nixl";
 * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
 * const buf = agent.allocate(1 << 16);
 * agent.registerMemory(buf);
 * using list = DescList.pages(buf, 4096, 16);
 * using prepped = agent.prepDescList("", list);
 * console.log(prepped.remote === "", prepped.count);
 * ```
 */
export class PreparedDescList {
  /** The side it was prepared for: `""` local, a peer's name, or the agent's own name. */
  readonly remote: string;
  /** Number of descriptors (indices of a transfer run from 0 to count - 1). */
  readonly count: number;
  /** Memory type of its descriptors. */
  readonly memType: MemType;
  #core: AgentCore;
  #handle: bigint;
  #released = false;
  /** The descriptors' lengths as numbers (read per transfer: no BigInt made each time). */
  #lens: Float64Array | undefined;

  /** @internal Use `NixlAgent.prepDescList`. */
  constructor(
    core: AgentCore,
    handle: bigint,
    remote: string,
    count: number,
    memType: MemType,
    lens?: BigUint64Array,
  ) {
    this.#core = core;
    this.#handle = handle;
    this.remote = remote;
    this.count = count;
    this.memType = memType;
    this.#lens = lens && Float64Array.from(lens, Number);
  }

  /** @internal Bytes of the descriptors at `indices` (0 when the lengths are unknown). */
  bytesOf(indices: Uint32Array): number {
    const lens = this.#lens;
    if (lens === undefined) return 0;
    let n = 0;
    for (let i = 0; i < indices.length; i++) n += lens[indices[i]] ?? 0;
    return n;
  }

  /** @internal Whether the descriptors at `indices` hold at least `bytes` (false when
   * the lengths are unknown); stops counting once they do. */
  holdsAtLeast(indices: Uint32Array, bytes: number): boolean {
    const lens = this.#lens;
    if (lens === undefined) return false;
    let n = 0;
    for (let i = 0; i < indices.length && n < bytes; i++) n += lens[indices[i]] ?? 0;
    return n >= bytes;
  }

  /** @internal The native handle (throws once released). */
  handle(fn: string): bigint {
    if (this.#released) throw releasedError("this PreparedDescList", fn);
    return this.#handle;
  }

  /** @internal The agent that prepared it. */
  get core(): AgentCore {
    return this.#core;
  }

  /** True once released. */
  get released(): boolean {
    return this.#released;
  }

  /** Releases the prepared list (idempotent). */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#core.forget(this);
    if (this.#core.closed) return;
    const lib = this.#core.lib;
    check(
      lib,
      lib.symbols.kvp_prepped_release(this.#core.handle("release"), this.#handle),
      "kvp_prepped_release",
    );
  }

  /** Same as {@linkcode PreparedDescList.release}. */
  [Symbol.dispose](): void {
    this.release();
  }
}
