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
  SYMBOLS,
  toDenoSymbols,
} from "./symbols.ts";
import { assertQuiesced, EXIT_QUIESCE_MS, QUIESCE_MS, WakeTable } from "./wakes.ts";

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
  // The functions of a later ABI are optional: an ABI-3 library binds without them.
  const defs = toDenoSymbols();
  for (const [name, def] of Object.entries(defs)) {
    const key = (def.name ?? name) as keyof typeof SYMBOLS;
    if ((SYMBOLS[key] as { since?: number }).since) {
      (def as { optional?: boolean }).optional = true;
    }
  }
  const dl = Deno.dlopen(path, defs as Deno.ForeignLibraryInterface);
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
  // One thread-safe callback for every agent's notifier, made at the first watch and
  // unref'ed: it never keeps the event loop alive (a wait's deadline timer does). A call
  // from a notifier blocks that thread until the event loop ran it, so no thread that
  // other work waits for ever calls it (see kvp_event_notify).
  let callback: Deno.UnsafeCallback<{ parameters: ["u64"]; result: "void" }> | null = null;
  const notify = raw.kvp_event_notify as AnyFn | null;
  const quiesce = raw["kvp_event_quiesce" + NONBLOCKING_SUFFIX] as AnyFn | null;
  // At exit: a notifier still returning from the callback when the runtime tears down
  // crashes the process (seen: 1 exit in 3 right after a wake). Stop them and wait,
  // briefly and on this thread (the event loop is done), until they have left it.
  const onUnload = () => {
    if (callback) raw.kvp_event_quiesce(callback.pointer, BigInt(EXIT_QUIESCE_MS));
  };
  const wakes: WakeTable | null = notify && quiesce
    ? new WakeTable((agent, id): number => {
      if (!callback) {
        callback = Deno.UnsafeCallback.threadSafe(
          { parameters: ["u64"], result: "void" },
          (id: number | bigint): void => wakes!.dispatch(id),
        );
        callback.unref();
        globalThis.addEventListener("unload", onUnload);
      }
      // No KVP_EVENT_DIRECT: a Deno callback blocks its caller until the event loop
      // ran it, so it needs the notifier thread (nothing else waits for that one).
      return notify(agent, callback.pointer, id, 0) as number;
    })
    : null;
  let closed = false;
  return {
    runtime: "deno",
    path,
    abiVersion: symbols.kvp_abi_version(),
    symbols,
    nonblocking,
    // Deno waits on its thread pool (kvp_xfer_wait / kvp_notif_wait run there) or, from
    // ABI 4, for the wake callback.
    eventStream: null,
    wakes,
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
      if (callback) {
        // Off this thread: a notifier blocked in the callback returns once this event
        // loop ran it, which it does while the quiesce runs on the pool.
        // A notifier still inside the callback: unloading now would crash it.
        assertQuiesced(await quiesce!(callback.pointer, BigInt(QUIESCE_MS)) as number);
        globalThis.removeEventListener("unload", onUnload);
        callback.close();
        callback = null;
      }
      dl.close();
    },
  };
}
