/**
 * The runtime-neutral face of the native shim: the {@linkcode NativeLib} interface both
 * loaders return, and the helpers every caller uses on it: {@linkcode check} (statuses
 * into {@linkcode NixlError}), the sized-out convention ({@linkcode sizedOut}), C strings
 * ({@linkcode cString}) and scratch out-parameters.
 *
 * @example
 * ```ts
 * import { loadNativeLibrary } from "./mod.ts";
 * import { check, OUT_U64, sizedOut, text } from "./native.ts";
 *
 * const lib = await loadNativeLibrary();
 * console.log(text(sizedOut(lib, "kvp_engines", (buf, cap, len) =>
 *   lib.symbols.kvp_engines(buf, cap, len))));
 * check(lib, lib.symbols.kvp_mem_alloc(0, 0, 4096n, OUT_U64), "kvp_mem_alloc");
 * lib.symbols.kvp_mem_free(OUT_U64[0]);
 * ```
 * @module
 */

import { NixlError, Status } from "../src/errors.ts";
import type { KvpNonblocking, KvpSymbols } from "./symbols.ts";
import type { EventWakes } from "./wakes.ts";

/** The library as one runtime's loader opened it; everything above is runtime-neutral. */
export interface NativeLib {
  /** Which loader opened it. */
  readonly runtime: "deno" | "bun";
  /** Absolute path of the shared library. */
  readonly path: string;
  /** `kvp_abi_version()` of the library. */
  readonly abiVersion: number;
  /** Every C function, synchronous. */
  readonly symbols: KvpSymbols;
  /** The blocking waits as promises (Deno); `null` where the runtime has none (Bun):
   * callers poll instead. */
  readonly nonblocking: KvpNonblocking | null;
  /** Nonblocking calls that have not returned yet. */
  readonly pendingCalls: number;
  /** True once {@linkcode NativeLib.close} has been called. */
  readonly closed: boolean;
  /** Address of the first byte of a (non-empty) typed array's memory. */
  addressOf(view: ArrayBufferView): bigint;
  /** An ArrayBuffer over native memory (no copy); valid only while that memory is. */
  view(address: bigint, length: number): ArrayBuffer;
  /**
   * A stream of the bytes arriving on a descriptor from `kvp_event_fd` (Bun: the
   * runtime's own nonblocking reads, woken by its event loop), or `null` where the
   * runtime waits on its thread pool instead (Deno). The stream ends at end of file.
   */
  eventStream: ((fd: number) => ReadableStream<Uint8Array>) | null;
  /**
   * Wake-ups of waiters from the agents' notifier threads through one thread-safe
   * callback (`kvp_event_notify`, ABI 4; both runtimes), or `null` for a library of ABI
   * 3, which keeps the pool-thread waits (Deno) and the event descriptor (Bun).
   */
  readonly wakes: EventWakes | null;
  /** Closes the library after every pending nonblocking call has returned and every
   * notifier thread has exited (then the wake callback is closed). */
  close(): Promise<void>;
}

/** Scratch out-parameter for one `uint64_t *` (JavaScript is single-threaded and these
 * are only passed to synchronous calls). */
export const OUT_U64: BigUint64Array = new BigUint64Array(1);
/** Second scratch `uint64_t *` (for calls with two 64-bit out-parameters). */
export const OUT_U64_B: BigUint64Array = new BigUint64Array(1);
/** Scratch out-parameter for one `int32_t *`. */
export const OUT_I32: Int32Array = new Int32Array(1);
/** Second scratch `int32_t *`. */
export const OUT_I32_B: Int32Array = new Int32Array(1);

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * A NUL-terminated UTF-8 copy of a string, for `const char *` parameters. A string that
 * contains NUL is refused (C would see it cut short).
 *
 * @example
 * ```ts
 * import { cString } from "./native.ts";
 * console.log(cString("UCX")); // Uint8Array(4) [85, 67, 88, 0]
 * ```
 */
export function cString(value: string, what = "string"): Uint8Array {
  if (value.includes("\0")) {
    throw new NixlError(
      Status.ERR_INVALID_PARAM,
      what,
      `${JSON.stringify(value)} contains a NUL character, which C strings cannot hold`,
    );
  }
  const bytes = new Uint8Array(value.length * 3 + 1);
  const { written } = encoder.encodeInto(value, bytes);
  return bytes.subarray(0, written + 1);
}

/**
 * UTF-8 text of bytes from C.
 *
 * @example
 * ```ts
 * import { text } from "./native.ts";
 * console.log(text(new Uint8Array([111, 107]))); // ok
 * ```
 */
export function text(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

let errorBuf = new Uint8Array(1024);

/**
 * Room for the message a wait (`kvp_xfer_wait`, `kvp_notif_wait`) hands back with the
 * call: `(msg, cap, msg_len)`. One per call in flight, since Deno runs those waits on a
 * thread of its pool, whose last error the JavaScript thread cannot read.
 *
 * @example
 * ```ts
 * import { CallMessage } from "./native.ts";
 * const m = new CallMessage();
 * // lib.nonblocking.kvp_xfer_wait(agent, req, 1000n, m.buf, m.cap, m.len)
 * console.log(m.text()); // "" until a call failed
 * ```
 */
export class CallMessage {
  /** The message bytes (NUL-terminated, truncated). */
  readonly buf: Uint8Array<ArrayBuffer> = new Uint8Array(1024);
  /** The message's full length. */
  readonly len: BigUint64Array<ArrayBuffer> = new BigUint64Array(1);
  /** `buf`'s size, as the C side takes it. */
  get cap(): bigint {
    return BigInt(this.buf.length);
  }
  /** The message of the last call that used this room ("" when it did not fail). */
  text(): string {
    const n = Math.min(Number(this.len[0]), this.buf.length - 1);
    return decoder.decode(this.buf.subarray(0, n));
  }
}

/**
 * The calling thread's last error message of the shim (`kvp_last_error`), `""` when there
 * is none.
 *
 * @example
 * ```ts
 * import { lastError } from "./native.ts";
 * import { loadNativeLibrary } from "./mod.ts";
 * console.log(lastError(await loadNativeLibrary()));
 * ```
 */
export function lastError(lib: NativeLib): string {
  let len = Number(lib.symbols.kvp_last_error(errorBuf, BigInt(errorBuf.length)));
  if (len >= errorBuf.length) {
    errorBuf = new Uint8Array(len + 1);
    len = Math.min(len, Number(lib.symbols.kvp_last_error(errorBuf, BigInt(errorBuf.length))));
  }
  return decoder.decode(errorBuf.subarray(0, len));
}

/**
 * Turns a status into a result: statuses >= 0 (`SUCCESS`, `IN_PROG`) are returned, a
 * negative one throws a {@linkcode NixlError} with its NIXL name, the shim's last error
 * and the function name (and `context`, what the caller was doing, in front).
 *
 * @example
 * ```ts
 * import { check } from "./native.ts";
 * import { loadNativeLibrary } from "./mod.ts";
 * const lib = await loadNativeLibrary();
 * check(lib, lib.symbols.kvp_mem_free(12345n), "kvp_mem_free"); // throws NIXL_ERR_NOT_FOUND
 * ```
 */
export function check(lib: NativeLib, status: number, fn: string, context?: string): number {
  if (status >= 0) return status;
  throw new NixlError(status, fn, lastError(lib), { context });
}

/** A C call following the sized-out convention (`buf`, `cap`, `*len`). */
export type SizedOutCall = (buf: Uint8Array, cap: bigint, len: BigUint64Array) => number;

let sizedBuf = new Uint8Array(4096);

/**
 * Runs a sized-out call: `*len` always gets the full size, the bytes are copied only
 * when they fit; a too small buffer is retried with the size C asked for (again, if
 * the value grew meanwhile). Returns a copy of exactly `*len` bytes.
 *
 * @example
 * ```ts
 * import { sizedOut, text } from "./native.ts";
 * import { loadNativeLibrary } from "./mod.ts";
 * const lib = await loadNativeLibrary();
 * const engines = text(sizedOut(lib, "kvp_engines", (b, c, l) => lib.symbols.kvp_engines(b, c, l)));
 * ```
 */
export function sizedOut(
  lib: NativeLib,
  fn: string,
  call: SizedOutCall,
  context?: string,
): Uint8Array {
  const lenOut = new BigUint64Array(1);
  let buf = sizedBuf;
  for (let attempt = 1;; attempt++) {
    check(lib, call(buf, BigInt(buf.length), lenOut), fn, context);
    const len = Number(lenOut[0]);
    // The shared scratch is copied out; a buffer made for this result is returned as is.
    if (len <= buf.length) return buf === sizedBuf ? buf.slice(0, len) : buf.subarray(0, len);
    if (attempt >= 8) {
      throw new NixlError(
        Status.ERR_UNKNOWN,
        fn,
        `the result kept growing (${len} bytes after ${attempt} tries)`,
        { context },
      );
    }
    buf = new Uint8Array(len);
    if (len <= 1 << 20) sizedBuf = buf; // keep a larger scratch for small results only
  }
}

/**
 * Parses the shim's `"key=value\n"` reports (engine probe, agent info).
 *
 * @example
 * ```ts
 * import { parseKeyValues } from "./native.ts";
 * console.log(parseKeyValues("available=1\nplugins=UCX,TCP\n").plugins); // UCX,TCP
 * ```
 */
export function parseKeyValues(report: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of report.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}
