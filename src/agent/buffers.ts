/**
 * Memory the shim allocates: {@linkcode HostBuffer} (DRAM, with a `Uint8Array` view over
 * the native memory, shareable with a same-host peer) and {@linkcode DeviceBuffer} (VRAM,
 * a handle: its bytes are reached through copies).
 *
 * @example
 * ```ts
 * import { NixlAgent } from "@kvport/nixl";
 * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
 * using buf = agent.allocate(1 << 20);
 * buf.bytes.fill(7);
 * console.log(buf.address, buf.checksum());
 * ```
 * @module
 */

import type { NativeLib } from "../../ffi/mod.ts";
import { check, OUT_U64 } from "../../ffi/native.ts";
import { NixlError, Status } from "../errors.ts";
import { type MemType, memTypeCode, toU64 } from "./common.ts";

/** What a buffer tells its owner (the agent) when it is freed. */
export type OnFree = (buffer: NativeBuffer) => void;

/**
 * Memory allocated by the shim (`kvp_mem_alloc`); freed by {@linkcode NativeBuffer.free},
 * `using`, or the agent's `close()`.
 *
 * @example
 * ```ts
 * import { NixlAgent, type NativeBuffer } from "@kvport/nixl";
 * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
 * const buf: NativeBuffer = agent.allocate(4096);
 * console.log(buf.memType, buf.size);
 * buf.free();
 * ```
 */
export abstract class NativeBuffer {
  /** Memory type: `"DRAM"` or `"VRAM"`. */
  abstract readonly memType: MemType;
  /** Address of the first byte (host address for DRAM, device address for VRAM). */
  readonly address: bigint;
  /** Size in bytes. */
  readonly size: number;
  /** CUDA ordinal for VRAM, 0 for DRAM. */
  readonly device: number;
  /** @internal The library that allocated it. */
  readonly lib: NativeLib;
  #onFree: OnFree | undefined;
  #freed = false;
  #registrations = 0;

  /** @internal Use `NixlAgent.allocate`. */
  constructor(lib: NativeLib, address: bigint, size: number, device: number, onFree?: OnFree) {
    this.lib = lib;
    this.address = address;
    this.size = size;
    this.device = device;
    this.#onFree = onFree;
  }

  /** True once freed. */
  get freed(): boolean {
    return this.#freed;
  }

  /** @internal Counts registrations, which must end before the memory is freed. */
  retain(delta: 1 | -1): void {
    this.#registrations += delta;
  }

  /** @internal Throws when the buffer is freed. */
  assertLive(fn: string): void {
    if (this.#freed) {
      throw new NixlError(Status.ERR_NOT_FOUND, fn, `buffer at ${this.address} was already freed`);
    }
  }

  /** Checks that [offset, offset + length) lies inside the buffer and returns its address. */
  protected range(offset: number, length: number, fn: string): bigint {
    this.assertLive(fn);
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 ||
      length < 0 || offset + length > this.size
    ) {
      throw new NixlError(
        Status.ERR_INVALID_PARAM,
        fn,
        `range [${offset}, ${offset + length}) is outside the buffer of ${this.size} bytes`,
      );
    }
    return this.address + BigInt(offset);
  }

  /**
   * 64-bit FNV-1a checksum of `length` bytes from `offset` (the shim's
   * `kvp_mem_checksum`; VRAM is staged through host memory).
   */
  checksum(offset?: number, length?: number): bigint {
    offset ??= 0;
    length ??= this.size - offset;
    const addr = this.range(offset, length, "checksum");
    check(
      this.lib,
      this.lib.symbols.kvp_mem_checksum(
        memTypeCode(this.memType),
        this.device,
        addr,
        BigInt(length),
        OUT_U64,
      ),
      "kvp_mem_checksum",
    );
    return OUT_U64[0];
  }

  /** Copies `src` into the buffer at `offset`. */
  copyFrom(src: Uint8Array, offset?: number): void {
    offset ??= 0;
    const dst = this.range(offset, src.byteLength, "copyFrom");
    if (src.byteLength === 0) return;
    check(
      this.lib,
      this.lib.symbols.kvp_mem_copy(
        memTypeCode(this.memType),
        this.device,
        dst,
        0,
        0,
        this.lib.addressOf(src),
        BigInt(src.byteLength),
      ),
      "kvp_mem_copy",
    );
  }

  /** Copies bytes from `offset` into `dst` (as many as `dst` holds). */
  copyTo(dst: Uint8Array, offset?: number): void {
    offset ??= 0;
    const src = this.range(offset, dst.byteLength, "copyTo");
    if (dst.byteLength === 0) return;
    check(
      this.lib,
      this.lib.symbols.kvp_mem_copy(
        0,
        0,
        this.lib.addressOf(dst),
        memTypeCode(this.memType),
        this.device,
        src,
        BigInt(dst.byteLength),
      ),
      "kvp_mem_copy",
    );
  }

  /**
   * Frees the memory (idempotent). A buffer still registered is refused
   * (`NIXL_ERR_NOT_ALLOWED`): deregister it first.
   */
  free(): void {
    if (this.#freed) return;
    if (this.#registrations > 0) {
      throw new NixlError(
        Status.ERR_NOT_ALLOWED,
        "free",
        `buffer at ${this.address} is still registered ${this.#registrations} time(s): ` +
          `deregister it first`,
      );
    }
    this.detach();
    this.#freed = true;
    if (!this.lib.closed) {
      check(this.lib, this.lib.symbols.kvp_mem_free(this.address), "kvp_mem_free");
    }
    this.#onFree?.(this);
    this.#onFree = undefined;
  }

  /** @internal Drops JavaScript views before the memory goes. */
  protected detach(): void {}

  /** Frees the memory (`using buf = agent.allocate(...)`). */
  [Symbol.dispose](): void {
    this.free();
  }
}

/**
 * DRAM from the shim: page-aligned, from a shared-memory file a same-host peer can map.
 * `bytes` is a view over that memory (no copy); it is detached (length 0) once freed.
 *
 * @example
 * ```ts
 * import { NixlAgent } from "@kvport/nixl";
 * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
 * const buf = agent.allocate(8192);
 * buf.bytes.set([1, 2, 3]);
 * console.log(buf.bytes.subarray(0, 3));
 * ```
 */
export class HostBuffer extends NativeBuffer {
  /** Always `"DRAM"`. */
  readonly memType: "DRAM" = "DRAM";
  #view: ArrayBuffer | undefined;
  #bytes: Uint8Array | undefined;

  /** The memory as bytes (a view, no copy). */
  get bytes(): Uint8Array {
    if (this.#bytes === undefined) {
      this.assertLive("bytes");
      this.#view = this.lib.view(this.address, this.size);
      this.#bytes = new Uint8Array(this.#view);
    }
    return this.#bytes;
  }

  /** @internal */
  protected override detach(): void {
    // Detach the view so that a stale `bytes` reads as empty instead of freed memory.
    const view = this.#view;
    this.#view = undefined;
    this.#bytes = undefined;
    if (view && !view.detached) {
      try {
        view.transfer(0);
      } catch {
        // a runtime that cannot detach external memory: the view stays (documented risk)
      }
    }
  }
}

/**
 * VRAM from `cudaMalloc`, on CUDA device `device`. Not viewable from JavaScript: use
 * {@linkcode NativeBuffer.copyFrom} / {@linkcode NativeBuffer.copyTo} / `checksum`.
 *
 * @example
 * ```ts
 * import { cudaDeviceCount, NixlAgent } from "@kvport/nixl";
 * if ((await cudaDeviceCount()) > 0) {
 *   await using agent = await NixlAgent.create({ name: "g", engine: "builtin" });
 *   using gpu = agent.allocate(1 << 20, { memType: "VRAM", device: 0 });
 *   gpu.copyFrom(new Uint8Array(1024).fill(1));
 * }
 * ```
 */
export class DeviceBuffer extends NativeBuffer {
  /** Always `"VRAM"`. */
  readonly memType: "VRAM" = "VRAM";
}

/** Options of `NixlAgent.allocate`. */
export interface AllocateOptions {
  /** `"DRAM"` (default, or implied by `device`) or `"VRAM"`. */
  memType?: "DRAM" | "VRAM";
  /**
   * CUDA ordinal for VRAM (default 0), or a device string as LMCache writes them:
   * `"cpu"` (DRAM), `"cuda:N"` (VRAM of device N), `"cuda"` (device 0 here; channels
   * and PD map a bare `"cuda"` to the TP rank's device).
   */
  device?: number | string;
  /**
   * DRAM only. `true`: shared memory a same-host peer maps once and copies into.
   * `false`: private memory with transparent huge pages advised (`KVP_DRAM_PRIVATE`), for
   * buffers no peer maps, such as storage staging: O_DIRECT and copies run faster on huge
   * pages, which shared memory does not get. Peers still reach it, by cross-memory attach.
   * Default: what suits the agent's engine ({@linkcode defaultShared}).
   */
  shared?: boolean;
}

/** kvp_mem_alloc's DRAM flag for private memory (kvport.h `KVP_DRAM_PRIVATE`). */
const DRAM_PRIVATE = 1;

/**
 * The kind of DRAM an agent of `engine` allocates when `shared` is not given. The builtin
 * engine: shared memory, because its same-host path maps the peer's buffer once and
 * copies straight into it. The nixl engine: private huge-page memory, because NIXL's UCX
 * never maps a peer's memory (it copies by cross-memory attach or through its own
 * segments), and those copies run 1.5-2.5x faster on huge pages than on shared memory's
 * 4 KiB pages where shmem gets no huge pages (`shmem_enabled` `never`, the usual setting;
 * see BENCHMARKS.md).
 *
 * @example
 * ```ts
 * import { defaultShared } from "./buffers.ts";
 * console.log(defaultShared("builtin"), defaultShared("nixl")); // true false
 * ```
 */
export function defaultShared(engine: string): boolean {
  return engine !== "nixl";
}

/**
 * Memory type and CUDA ordinal of allocate options (`device` strings included).
 *
 * @example
 * ```ts
 * import { resolveAllocation } from "./buffers.ts";
 * console.log(resolveAllocation({ device: "cuda:1" })); // { memType: "VRAM", device: 1 }
 * ```
 */
export function resolveAllocation(
  options: AllocateOptions,
): { memType: "DRAM" | "VRAM"; device: number } {
  const d = options.device;
  if (typeof d === "string") {
    const m = /^(?:(cpu)|cuda(?::(\d+))?)$/.exec(d);
    if (!m) {
      throw new NixlError(
        Status.ERR_INVALID_PARAM,
        "allocate",
        `device must be "cpu", "cuda" or "cuda:N", got ${JSON.stringify(d)}`,
      );
    }
    const memType = m[1] ? "DRAM" : "VRAM";
    if (options.memType !== undefined && options.memType !== memType) {
      throw new NixlError(
        Status.ERR_INVALID_PARAM,
        "allocate",
        `memType ${options.memType} contradicts device ${JSON.stringify(d)}: drop one of them`,
      );
    }
    return { memType, device: m[1] ? 0 : Number(m[2] ?? 0) };
  }
  return { memType: options.memType ?? "DRAM", device: d ?? 0 };
}

/**
 * Allocates `size` bytes through `kvp_mem_alloc`.
 *
 * @example
 * ```ts
 * import { allocateBuffer } from "./buffers.ts";
 * import { library } from "./common.ts";
 * const buf = allocateBuffer(await library(), 4096);
 * buf.free();
 * ```
 */
export function allocateBuffer(
  lib: NativeLib,
  size: number | bigint,
  options: AllocateOptions = {},
  onFree?: OnFree,
): NativeBuffer {
  const { memType, device } = resolveAllocation(options);
  if (memType !== "DRAM" && memType !== "VRAM") {
    throw new NixlError(
      Status.ERR_INVALID_PARAM,
      "allocate",
      `memType must be "DRAM" or "VRAM", got ${JSON.stringify(memType)}`,
    );
  }
  const bytes = toU64(size, "allocate size");
  if (bytes === 0n || bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new NixlError(Status.ERR_INVALID_PARAM, "allocate", `size must be > 0, got ${size}`);
  }
  if (!Number.isInteger(device) || device < 0) {
    throw new NixlError(Status.ERR_INVALID_PARAM, "allocate", `bad device ${device}`);
  }
  // For DRAM, kvp_mem_alloc's device argument carries its flags.
  const devArg = memType === "DRAM" ? (options.shared === false ? DRAM_PRIVATE : 0) : device;
  check(
    lib,
    lib.symbols.kvp_mem_alloc(memTypeCode(memType), devArg, bytes, OUT_U64),
    "kvp_mem_alloc",
    `allocating ${bytes} bytes of ${memType}${memType === "VRAM" ? ` on device ${device}` : ""}`,
  );
  const address = OUT_U64[0];
  return memType === "DRAM"
    ? new HostBuffer(lib, address, Number(bytes), 0, onFree)
    : new DeviceBuffer(lib, address, Number(bytes), device, onFree);
}
