/**
 * Shared pieces of the agent module: memory types, the library the module-level
 * functions use, and argument checks. Internal: the public surface is `src/agent.ts`.
 *
 * @example
 * ```ts
 * import { memTypeCode } from "./common.ts";
 * console.log(memTypeCode("VRAM")); // 1
 * ```
 * @module
 */

import { loadNativeLibrary, type NativeLib } from "../../ffi/mod.ts";
import { NixlError, Status } from "../errors.ts";
import type { AgentMetrics } from "./metrics.ts";
import type { AgentEvents } from "./events.ts";

/** NIXL's memory types (`nixl_mem_t`). One memory type per list or registration. */
export type MemType = "DRAM" | "VRAM" | "BLK" | "OBJ" | "FILE";

const MEM_CODES: Record<MemType, number> = { DRAM: 0, VRAM: 1, BLK: 2, OBJ: 3, FILE: 4 };
const MEM_NAMES: readonly MemType[] = ["DRAM", "VRAM", "BLK", "OBJ", "FILE"];

/**
 * The C value of a memory type; an unknown name is `NIXL_ERR_INVALID_PARAM`.
 *
 * @example
 * ```ts
 * import { memTypeCode } from "./common.ts";
 * console.log(memTypeCode("FILE")); // 4
 * ```
 */
export function memTypeCode(memType: MemType, what = "memType"): number {
  const code = MEM_CODES[memType];
  if (code === undefined) {
    throw new NixlError(
      Status.ERR_INVALID_PARAM,
      what,
      `unknown memory type ${JSON.stringify(memType)}; expected one of ${MEM_NAMES.join(", ")}`,
    );
  }
  return code;
}

/**
 * The name of a C memory type value.
 *
 * @example
 * ```ts
 * import { memTypeName } from "./common.ts";
 * console.log(memTypeName(0)); // DRAM
 * ```
 */
export function memTypeName(code: number): MemType {
  const name = MEM_NAMES[code];
  if (name === undefined) {
    throw new NixlError(Status.ERR_MISMATCH, "memTypeName", `unknown memory type value ${code}`);
  }
  return name;
}

/** Options naming the shim to load; see `loadNativeLibrary` in `ffi/mod.ts`. */
export interface LibraryOptions {
  /** Path of `libkvport.so`; default: `KVPORT_LIB`, `native/build/`, `$NIXL_PREFIX/lib`. */
  libraryPath?: string;
}

let defaultLib: NativeLib | undefined;

/**
 * Loads the shim and, the first time, makes it the library of the module-level
 * functions and of `DescList` built without an agent.
 *
 * @example
 * ```ts
 * import { library } from "./common.ts";
 * console.log((await library()).path);
 * ```
 */
export async function library(options: LibraryOptions = {}): Promise<NativeLib> {
  if (options.libraryPath === undefined && defaultLib && !defaultLib.closed) return defaultLib;
  const lib = await loadNativeLibrary({ path: options.libraryPath });
  if (!defaultLib || defaultLib.closed) defaultLib = lib;
  return lib;
}

/**
 * The library already loaded (by `NixlAgent.create` or any async module function), for
 * synchronous constructors; throws when none is.
 *
 * @example
 * ```ts
 * import { library, loadedLibrary } from "./common.ts";
 * await library();
 * console.log(loadedLibrary("DescList.fromArrays").abiVersion);
 * ```
 */
export function loadedLibrary(what: string): NativeLib {
  if (defaultLib && !defaultLib.closed) return defaultLib;
  throw new NixlError(
    Status.ERR_NOT_FOUND,
    what,
    "the native library is not loaded yet: create a NixlAgent first (or await " +
      "nativeLibrary()), or pass { agent } to use that agent's library",
  );
}

/**
 * A length or address as `bigint`, refusing negative, fractional or unsafe numbers.
 *
 * @example
 * ```ts
 * import { toU64 } from "./common.ts";
 * console.log(toU64(4096, "size")); // 4096n
 * ```
 */
export function toU64(value: number | bigint, what: string): bigint {
  if (typeof value === "bigint") {
    if (value >= 0n && value < 1n << 64n) return value;
  } else if (Number.isSafeInteger(value) && value >= 0) {
    return BigInt(value);
  }
  throw new NixlError(
    Status.ERR_INVALID_PARAM,
    what,
    `expected an integer in [0, 2^64), got ${String(value)}`,
  );
}

/**
 * Index arrays for transfers as `Uint32Array` (typed arrays pass through, plain arrays
 * are checked and copied).
 *
 * @example
 * ```ts
 * import { toIndices } from "./common.ts";
 * console.log(toIndices([0, 2, 4], "localIdx")); // Uint32Array(3) [0, 2, 4]
 * ```
 */
export function toIndices(value: Uint32Array | ArrayLike<number>, what: string): Uint32Array {
  if (value instanceof Uint32Array) return value;
  const out = new Uint32Array(value.length);
  for (let i = 0; i < value.length; i++) {
    const v = value[i];
    if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) {
      throw new NixlError(
        Status.ERR_INVALID_PARAM,
        what,
        `${what}[${i}] is ${v}, expected an integer index in [0, 2^32)`,
      );
    }
    out[i] = v;
  }
  return out;
}

/** `view`, or `null` when it is empty (C gets NULL; Bun cannot take an empty buffer). */
export function orNull<T extends ArrayBufferView>(view: T | null | undefined): T | null {
  return view && view.byteLength > 0 ? view : null;
}

/** The error for a use of something already released or closed. */
export function releasedError(what: string, fn: string): NixlError {
  return new NixlError(Status.ERR_NOT_FOUND, fn, `${what} was already released`);
}

/** Something an agent owns and releases on close. */
export interface Releasable {
  /** Releases it; idempotent. */
  release(): void;
}

/** What the agent's parts (lists, requests, registrations) need of their agent. */
export interface AgentCore {
  /** The library the agent was created with. */
  readonly lib: NativeLib;
  /** The agent's name. */
  readonly name: string;
  /** True once the agent is closing or closed. */
  readonly closed: boolean;
  /** The native handle; throws `NIXL_ERR_NOT_FOUND` naming `fn` once the agent is closed. */
  handle(fn: string): bigint;
  /** Drops a released part from the agent's books. */
  forget(part: Releasable): void;
  /** Keeps a nonblocking native call in the agent's books until it settles. */
  track<T>(call: Promise<T>): Promise<T>;
  /** The agent's event descriptor as a waitable (opened on first use; `null` where
   * waits use the thread pool or the engine has none: see `events.ts`). */
  events(): AgentEvents | null;
  /** Where the agent's transfers are counted (`undefined`: metrics off). */
  readonly metrics?: AgentMetrics;
}
