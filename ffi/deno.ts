/**
 * The Deno loader: opens the shim with `Deno.dlopen` and returns a
 * {@linkcode NativeLib}. Only this file (and `ffi/bun.ts` for Bun) knows the runtime's
 * FFI.
 *
 * @example
 * ```ts
 * import { openDeno } from "./deno.ts";
 * const lib = openDeno("/abs/path/native/build/libkvport.so");
 * console.log(lib.abiVersion);
 * await lib.close();
 * ```
 * @module
 */

import type { NativeLib } from "./native.ts";
import { PendingCalls } from "./pending.ts";
import {
  type KvpNonblocking,
  type KvpSymbols,
  NONBLOCKING_SUFFIX,
  toDenoSymbols,
} from "./symbols.ts";

// deno-lint-ignore no-explicit-any
type AnyFn = (...args: any[]) => any;

/**
 * Opens the library at an absolute path with `Deno.dlopen` (needs `--allow-ffi`).
 * Throws what `Deno.dlopen` throws (missing file, missing symbol, permission).
 *
 * @example
 * ```ts
 * import { openDeno } from "./deno.ts";
 * const lib = openDeno("/opt/kvport/lib/libkvport.so");
 * console.log(lib.symbols.kvp_abi_version());
 * ```
 */
export function openDeno(path: string): NativeLib {
  const dl = Deno.dlopen(path, toDenoSymbols() as Deno.ForeignLibraryInterface);
  const raw = dl.symbols as unknown as Record<string, AnyFn>;
  const statusName = raw.kvp_status_name;
  const symbols = {
    ...raw,
    kvp_status_name: (status: number): string => {
      const p = statusName(status) as Deno.PointerValue;
      return p === null ? "" : Deno.UnsafePointerView.getCString(p);
    },
  } as unknown as KvpSymbols;
  const pending = new PendingCalls();
  const nonblocking: KvpNonblocking = {
    kvp_xfer_wait: pending.track(raw["kvp_xfer_wait" + NONBLOCKING_SUFFIX]),
    kvp_notif_wait: pending.track(raw["kvp_notif_wait" + NONBLOCKING_SUFFIX]),
  };
  let closed = false;
  return {
    runtime: "deno",
    path,
    abiVersion: symbols.kvp_abi_version(),
    symbols,
    nonblocking,
    // Deno waits on its thread pool (kvp_xfer_wait / kvp_notif_wait run there).
    eventStream: null,
    get pendingCalls() {
      return pending.count;
    },
    get closed() {
      return closed;
    },
    addressOf(view: ArrayBufferView): bigint {
      if (view.byteLength === 0) throw new RangeError("an empty buffer has no address");
      return BigInt(
        Deno.UnsafePointer.value(Deno.UnsafePointer.of(view as Uint8Array<ArrayBuffer>)),
      );
    },
    view(address: bigint, length: number): ArrayBuffer {
      const p = Deno.UnsafePointer.create(address);
      if (p === null) throw new RangeError("cannot view address 0");
      return Deno.UnsafePointerView.getArrayBuffer(p, length);
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await pending.drained();
      dl.close();
    },
  };
}
