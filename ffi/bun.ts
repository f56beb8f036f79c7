/**
 * The Bun loader: opens the shim with `bun:ffi`'s `dlopen` and returns a
 * {@linkcode NativeLib}. `bun:ffi` is imported with a literal dynamic import inside
 * {@linkcode openBun}, so Deno never evaluates it.
 *
 * Bun has no nonblocking FFI calls: `nonblocking` is `null`; waits sleep on the agent's
 * `kvp_event_fd` descriptor instead, read through `eventStream` (no polling timers).
 *
 * @example
 * ```ts
 * import { openBun } from "./bun.ts";
 * const lib = await openBun("/abs/path/native/build/libkvport.so");
 * console.log(lib.abiVersion);
 * ```
 * @module
 */

import type { NativeLib } from "./native.ts";
import { type BunSymbolDef, type KvpSymbols, toBunSymbols } from "./symbols.ts";

/**
 * The part of `bun:ffi` this loader uses, declared here rather than taken from
 * `bun-types`: a `/// <reference types>` in published code makes every consumer without
 * `bun-types` in its own dependencies fail `deno check` and `deno test` (TS2307).
 */
interface BunFfi {
  /** Opens a shared library and binds `symbols`. */
  dlopen(
    path: string,
    symbols: Record<string, BunSymbolDef>,
  ): { symbols: Record<string, unknown>; close(): void };
  /** The address of a typed array's first byte (a number in Bun). */
  ptr(view: ArrayBufferView): number;
  /** An ArrayBuffer over native memory at `address`, without a copy. */
  toArrayBuffer(address: number, byteOffset: number, byteLength: number): ArrayBuffer;
}

/** `Bun.file(fd)`: a descriptor's bytes as a stream read by Bun's event loop. */
function bunFile(fd: number): { stream(): ReadableStream<Uint8Array> } {
  const g = globalThis as { Bun?: { file(fd: number): { stream(): ReadableStream<Uint8Array> } } };
  return g.Bun!.file(fd);
}

/** `bun:ffi`, typed as {@linkcode BunFfi}. The specifier stays a literal (a computed one
 * fails `deno publish`); only Bun ever calls this. */
async function importBunFfi(): Promise<BunFfi> {
  // @ts-ignore: `bun:ffi` exists only under Bun, which alone runs this function.
  return (await import("bun:ffi")) as BunFfi;
}

/**
 * Opens the library at an absolute path with `bun:ffi`. Throws what `dlopen` throws.
 *
 * @example
 * ```ts
 * import { openBun } from "./bun.ts";
 * const lib = await openBun("/opt/kvport/lib/libkvport.so");
 * console.log(lib.symbols.kvp_abi_version());
 * ```
 */
export async function openBun(path: string): Promise<NativeLib> {
  const ffi = await importBunFfi();
  const dl = ffi.dlopen(path, toBunSymbols());
  // deno-lint-ignore no-explicit-any
  const raw = dl.symbols as unknown as Record<string, (...args: any[]) => any>;
  const statusName = raw.kvp_status_name;
  const symbols = {
    ...raw,
    kvp_status_name: (status: number): string => String(statusName(status) ?? ""),
  } as unknown as KvpSymbols;
  let closed = false;
  return {
    runtime: "bun",
    path,
    abiVersion: symbols.kvp_abi_version(),
    symbols,
    nonblocking: null,
    eventStream: (fd: number) => bunFile(fd).stream(),
    pendingCalls: 0,
    get closed() {
      return closed;
    },
    addressOf(view: ArrayBufferView): bigint {
      if (view.byteLength === 0) throw new RangeError("an empty buffer has no address");
      return BigInt(ffi.ptr(view));
    },
    view(address: bigint, length: number): ArrayBuffer {
      if (address === 0n) throw new RangeError("cannot view address 0");
      return ffi.toArrayBuffer(Number(address), 0, length);
    },
    close(): Promise<void> {
      if (!closed) {
        closed = true;
        dl.close();
      }
      return Promise.resolve();
    },
  };
}
