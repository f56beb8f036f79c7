/**
 * The Bun loader: opens the shim with `bun:ffi`'s `dlopen` and returns a
 * {@linkcode NativeLib}. `bun:ffi` is imported with a literal dynamic import inside
 * {@linkcode openBun}, so Deno never evaluates it.
 *
 * Bun has no nonblocking FFI calls: `nonblocking` is `null`; waits sleep until the
 * agent's notifier thread calls the library's threadsafe `JSCallback` (`wakes`, ABI 4),
 * or, with an ABI-3 library, on the agent's `kvp_event_fd` descriptor read through
 * `eventStream` (no polling timers either way).
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
import { assertQuiesced, QUIESCE_MS, WakeTable } from "./wakes.ts";

/** KVP_EVENT_DIRECT of kvport.h. */
const EVENT_DIRECT = 1;

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
  /** A C function pointer calling `fn`; `threadsafe`: callable from any thread (the call
   * is queued to the event loop and returns at once). */
  JSCallback: new (
    fn: (...args: never[]) => void,
    def: { args: string[]; returns: string; threadsafe?: boolean },
  ) => { readonly ptr: number | null; close(): void };
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
  // The ABI first: an ABI-3 library lacks the functions of a later one (Bun refuses a
  // table with a missing symbol).
  const probe = ffi.dlopen(path, { kvp_abi_version: { args: [], returns: "u32" } });
  const abi = (probe.symbols.kvp_abi_version as () => number)();
  probe.close();
  const dl = ffi.dlopen(path, toBunSymbols(abi));
  // deno-lint-ignore no-explicit-any
  const raw = dl.symbols as unknown as Record<string, (...args: any[]) => any>;
  const statusName = raw.kvp_status_name;
  const symbols = {
    ...raw,
    kvp_status_name: (status: number): string => String(statusName(status) ?? ""),
  } as unknown as KvpSymbols;
  // One threadsafe callback for every agent, made at the first watch. Bun queues each
  // call to the event loop and returns at once; the callback keeps nothing alive (a
  // wait's deadline timer does).
  let callback: { readonly ptr: number | null; close(): void } | null = null;
  const notify = raw.kvp_event_notify;
  const wakes: WakeTable | null = notify
    ? new WakeTable((agent, id): number => {
      callback ??= new ffi.JSCallback(
        ((id: number | bigint): void => wakes!.dispatch(id)) as (...args: never[]) => void,
        { args: ["u64"], returns: "void", threadsafe: true },
      );
      // KVP_EVENT_DIRECT: Bun queues the call and returns at once, so the thread of the
      // event calls it (no notifier thread, one hop fewer); one call until acknowledged.
      return notify(agent, callback.ptr, id, EVENT_DIRECT) as number;
    }, (agent) => {
      // Direct calls coalesce until acknowledged (else a burst of events would queue
      // one call each while the event loop is busy).
      symbols.kvp_event_ack(agent);
    })
    : null;
  let closed = false;
  return {
    runtime: "bun",
    path,
    abiVersion: symbols.kvp_abi_version(),
    symbols,
    nonblocking: null,
    eventStream: (fd: number) => bunFile(fd).stream(),
    wakes,
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
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      if (callback) {
        // Bun's callback never blocks its caller, so the calls in progress end at once.
        assertQuiesced(symbols.kvp_event_quiesce(callback.ptr, BigInt(QUIESCE_MS)));
        // Calls already queued run on the next turns of the event loop: let them run
        // before the callback goes.
        for (let i = 0; i < 2; i++) await new Promise((r) => setTimeout(r, 0));
        callback.close();
        callback = null;
      }
      dl.close();
    },
  };
}
