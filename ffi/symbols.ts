/**
 * The one table of every C function in `native/include/kvport.h`, each parameter
 * commented with its C declaration, typed once in a runtime-neutral vocabulary and
 * turned into the forms `Deno.dlopen` and `bun:ffi`'s `dlopen` want.
 *
 * Neutral types and their JavaScript values:
 * - `"i32"`, `"u32"`: `number`;
 * - `"u64"`, `"i64"`: `bigint` (always, in both runtimes);
 * - `"buffer"`: a typed array (or `null`) whose bytes C reads or writes during the call;
 * - `"function"`: a C function pointer, the runtime's own callback pointer
 *   (`Deno.UnsafeCallback.pointer`, Bun's `JSCallback.ptr`);
 * - `"cstring"`: a result only, a static NUL-terminated string, returned as `string`.
 *
 * @example
 * ```ts
 * import { SYMBOLS, toBunSymbols, toDenoSymbols } from "./symbols.ts";
 * console.log(Object.keys(SYMBOLS).length, toDenoSymbols().kvp_abi_version);
 * console.log(toBunSymbols().kvp_xfer_wait.args);
 * ```
 * @module
 */

/** A parameter type of the neutral table. */
export type ParamType = "i32" | "u32" | "i64" | "u64" | "buffer" | "function";
/** A result type of the neutral table. */
export type ResultType = "i32" | "u32" | "u64" | "cstring";

/** One C function: its parameter types, result type, and whether it may block. */
export interface SymbolDef {
  /** Parameter types, in C order. */
  readonly parameters: readonly ParamType[];
  /** Result type. */
  readonly result: ResultType;
  /** The call may block up to a timeout: Deno gets a `nonblocking: true` twin. */
  readonly blocking?: boolean;
  /** The ABI version that added it (absent: every version the loaders accept); a
   * library of an older version is bound without it. */
  readonly since?: number;
}

/**
 * Every C function of kvport.h (ABI version 5). `blocking` marks the calls that wait
 * with a timeout; Deno also binds them `nonblocking: true` (see {@link toDenoSymbols}).
 * `since` marks the functions an older library (ABI 3 or 4) lacks.
 *
 * @example
 * ```ts
 * import { SYMBOLS } from "./symbols.ts";
 * console.log(SYMBOLS.kvp_register.parameters.length); // 8
 * ```
 */
export const SYMBOLS = {
  // ------------------------------------------------------------------ library
  /** KVP_ABI_VERSION of the compiled library. C: `uint32_t kvp_abi_version(void)`. */
  kvp_abi_version: { parameters: [], result: "u32" },
  /** Static name of a status, e.g. "NIXL_ERR_NOT_FOUND". C result: `const char *`. */
  kvp_status_name: {
    parameters: [
      "i32", // int32_t status
    ],
    result: "cstring",
  },
  /** Copies the calling thread's last error (NUL-terminated, truncated); returns its full length. */
  kvp_last_error: {
    parameters: [
      "buffer", // char *buf
      "u64", // uint64_t cap
    ],
    result: "u64",
  },
  /** Comma-separated engines compiled in: "builtin" or "builtin,nixl" (sized out). */
  kvp_engines: {
    parameters: [
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
    ],
    result: "i32",
  },
  /** "key=value" report on one engine: available, reason, plugins, searched, version. */
  kvp_engine_probe: {
    parameters: [
      "buffer", // const char *engine
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
    ],
    result: "i32",
  },
  /** Number of CUDA devices; KVP_ERR_NOT_SUPPORTED without libcudart or GPU. */
  kvp_cuda_device_count: {
    parameters: [
      "buffer", // int32_t *count
    ],
    result: "i32",
  },

  // ------------------------------------------------------------------- memory
  /** Allocates DRAM (shared-memory file, page-aligned) or VRAM (cudaMalloc). */
  kvp_mem_alloc: {
    parameters: [
      "i32", // int32_t mem_type
      "i32", // int32_t dev
      "u64", // uint64_t size
      "buffer", // uint64_t *out_addr
    ],
    result: "i32",
  },
  /** Frees memory from kvp_mem_alloc. */
  kvp_mem_free: {
    parameters: [
      "u64", // uint64_t addr
    ],
    result: "i32",
  },
  /** Copies len bytes between any two DRAM/VRAM addresses. */
  kvp_mem_copy: {
    parameters: [
      "i32", // int32_t dst_type
      "i32", // int32_t dst_dev
      "u64", // uint64_t dst
      "i32", // int32_t src_type
      "i32", // int32_t src_dev
      "u64", // uint64_t src
      "u64", // uint64_t len
    ],
    result: "i32",
  },
  /** 64-bit FNV-1a checksum of len bytes (VRAM staged through host memory). */
  kvp_mem_checksum: {
    parameters: [
      "i32", // int32_t mem_type
      "i32", // int32_t dev
      "u64", // uint64_t addr
      "u64", // uint64_t len
      "buffer", // uint64_t *out_sum
    ],
    result: "i32",
  },

  // -------------------------------------------------------------------- agent
  /** Creates an agent on an engine with comma-separated backends and "key=value" params. */
  kvp_agent_create: {
    parameters: [
      "buffer", // const char *name
      "buffer", // const char *engine
      "buffer", // const char *backends
      "buffer", // const char *params
      "buffer", // uint64_t *out_agent
    ],
    result: "i32",
  },
  /** Destroys an agent, releasing everything and waking its waiters (KVP_ERR_CANCELED). */
  kvp_agent_destroy: {
    parameters: [
      "u64", // uint64_t agent
    ],
    result: "i32",
  },
  /** "key=value" facts: name, engine, backends, listen (sized out). */
  kvp_agent_info: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
    ],
    result: "i32",
  },

  // ------------------------------------------------------------- registration
  /** Registers count regions of one memory type in one call. */
  kvp_register: {
    parameters: [
      "u64", // uint64_t agent
      "i32", // int32_t mem_type
      "buffer", // const uint64_t *addrs
      "buffer", // const uint64_t *lens
      "buffer", // const uint64_t *devs
      "u64", // uint64_t count
      "buffer", // const char *meta
      "buffer", // uint64_t *out_reg
    ],
    result: "i32",
  },
  /** Deregisters what one kvp_register call registered. */
  kvp_deregister: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t reg
    ],
    result: "i32",
  },

  // ----------------------------------------------------------------- metadata
  /** This agent's metadata blob (sized out). */
  kvp_local_metadata: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
    ],
    result: "i32",
  },
  /** Loads a peer's metadata; writes the peer's name (sized out). */
  kvp_load_remote_metadata: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // const uint8_t *blob
      "u64", // uint64_t len
      "buffer", // uint8_t *name_buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *name_len
    ],
    result: "i32",
  },
  /** Forgets a peer and closes its connection. */
  kvp_invalidate_remote: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // const char *remote_name
    ],
    result: "i32",
  },

  // --------------------------------------------------------- descriptor lists
  /** Builds a descriptor list of count (addr, len, dev) in one call. */
  kvp_dlist_create: {
    parameters: [
      "i32", // int32_t mem_type
      "buffer", // const uint64_t *addrs
      "buffer", // const uint64_t *lens
      "buffer", // const uint64_t *devs
      "u64", // uint64_t count
      "buffer", // uint64_t *out_dlist
    ],
    result: "i32",
  },
  /** Serialized form of a list, for a peer (sized out). */
  kvp_dlist_serialize: {
    parameters: [
      "u64", // uint64_t dlist
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
    ],
    result: "i32",
  },
  /** Rebuilds a list from bytes; malformed bytes are KVP_ERR_MISMATCH. */
  kvp_dlist_deserialize: {
    parameters: [
      "buffer", // const uint8_t *buf
      "u64", // uint64_t len
      "buffer", // uint64_t *out_dlist
    ],
    result: "i32",
  },
  /** Number of descriptors and memory type of a list. */
  kvp_dlist_info: {
    parameters: [
      "u64", // uint64_t dlist
      "buffer", // uint64_t *count
      "buffer", // int32_t *mem_type
    ],
    result: "i32",
  },
  /** Releases a list built by kvp_dlist_create or kvp_dlist_deserialize. */
  kvp_dlist_release: {
    parameters: [
      "u64", // uint64_t dlist
    ],
    result: "i32",
  },
  /** Prepares a list for transfers: "" local, a peer's name, or own name (loopback). */
  kvp_prep_dlist: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // const char *remote
      "u64", // uint64_t dlist
      "buffer", // uint64_t *out_prepped
    ],
    result: "i32",
  },
  /** Releases a prepared list. */
  kvp_prepped_release: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t prepped
    ],
    result: "i32",
  },

  // ---------------------------------------------------------------- transfers
  /** Makes a transfer request pairing local_idx[i] with remote_idx[i]. */
  kvp_xfer_create: {
    parameters: [
      "u64", // uint64_t agent
      "i32", // int32_t op
      "u64", // uint64_t local_prepped
      "buffer", // const uint32_t *local_idx
      "u64", // uint64_t remote_prepped
      "buffer", // const uint32_t *remote_idx
      "u64", // uint64_t count
      "buffer", // const uint8_t *notif
      "u64", // uint64_t notif_len
      "buffer", // uint64_t *out_req
    ],
    result: "i32",
  },
  /** Posts a request: KVP_IN_PROG, KVP_SUCCESS (inline) or an error. */
  kvp_xfer_post: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t req
    ],
    result: "i32",
  },
  /** Current state without blocking: KVP_IN_PROG, KVP_SUCCESS or the error. */
  kvp_xfer_status: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t req
    ],
    result: "i32",
  },
  /** Blocks up to timeout_ms: KVP_SUCCESS, the error, or KVP_IN_PROG on timeout; the
   * message of a failure comes back with the call (it may run on another thread). */
  kvp_xfer_wait: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t req
      "i64", // int64_t timeout_ms
      "buffer", // uint8_t *msg
      "u64", // uint64_t cap
      "buffer", // uint64_t *msg_len
    ],
    result: "i32",
    blocking: true,
  },
  /** The message of a failed request (sized out). */
  kvp_xfer_message: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t req
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
    ],
    result: "i32",
  },
  /** Releases a request, cancelling it first when active. */
  kvp_xfer_release: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t req
    ],
    result: "i32",
  },

  // ------------------------------------------------------------ notifications
  /** Sends a notification (at most 64 KiB) to a loaded peer. */
  kvp_notif_send: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // const char *remote
      "buffer", // const uint8_t *msg
      "u64", // uint64_t len
    ],
    result: "i32",
  },
  /** Takes queued notifications as records: u32le name_len, name, u32le msg_len, msg. */
  kvp_notif_take: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
      "buffer", // uint64_t *count
    ],
    result: "i32",
  },
  /** Blocks up to timeout_ms until a notification is queued (KVP_IN_PROG on timeout); the
   * message of a failure comes back with the call. */
  kvp_notif_wait: {
    parameters: [
      "u64", // uint64_t agent
      "i64", // int64_t timeout_ms
      "buffer", // uint8_t *msg
      "u64", // uint64_t cap
      "buffer", // uint64_t *msg_len
    ],
    result: "i32",
    blocking: true,
  },
  /** A descriptor readable whenever a request finishes or a notification is queued
   * (one byte per event, coalesced), end of file at destroy; the caller owns it. Once
   * per agent; builtin engine only. */
  kvp_event_fd: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // int32_t *fd
    ],
    result: "i32",
  },
  /** Calls fn(ctx) on the agent's notifier thread after its events (as kvp_event_fd's),
   * coalesced, no lock held; stopped (never joined) at destroy. Once per agent. Flags:
   * KVP_EVENT_DIRECT (1): fn never blocks, call it on the thread of the event. */
  kvp_event_notify: {
    parameters: [
      "u64", // uint64_t agent
      "function", // kvp_event_fn fn
      "u64", // uint64_t ctx
      "u32", // uint32_t flags
    ],
    result: "i32",
    since: 4,
  },
  /** KVP_EVENT_DIRECT: the call was run (before the status checks); the next event calls
   * fn again (until then events coalesce). */
  kvp_event_ack: {
    parameters: [
      "u64", // uint64_t agent
    ],
    result: "i32",
    since: 4,
  },
  /** Stops every notifier calling fn and waits up to timeout_ms for their threads to
   * exit (NIXL_IN_PROG: one is still inside fn); before fn's code goes. */
  kvp_event_quiesce: {
    parameters: [
      "function", // kvp_event_fn fn
      "i64", // int64_t timeout_ms
    ],
    result: "i32",
    blocking: true,
    since: 4,
  },

  // ------------------------------------------------------------------- grants
  /** Grants a loaded remote agent READ (1) and/or WRITE (2) of count ranges of registered
   * memory, for expires_ms (0: until revoked); needs the agent param page_grants=on. */
  kvp_grant: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // const char *remote
      "i32", // int32_t mem_type
      "buffer", // const uint64_t *addrs
      "buffer", // const uint64_t *lens
      "buffer", // const uint64_t *devs
      "u64", // uint64_t count
      "u32", // uint32_t access
      "i64", // int64_t expires_ms
      "buffer", // uint64_t *out_grant
    ],
    result: "i32",
  },
  /** Revokes a grant; no byte lands in or leaves its ranges once it returns (TCP). */
  kvp_revoke: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t grant
    ],
    result: "i32",
  },
  /** kvp_grant for each range on its own (range i: out_grants[i]), all or nothing, with
   * one table rebuild for the call. */
  kvp_grant_each: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // const char *remote
      "i32", // int32_t mem_type
      "buffer", // const uint64_t *addrs
      "buffer", // const uint64_t *lens
      "buffer", // const uint64_t *devs
      "u64", // uint64_t count
      "u32", // uint32_t access
      "i64", // int64_t expires_ms
      "buffer", // uint64_t *out_grants
    ],
    result: "i32",
    since: 5,
  },
  /** Revokes count grants with one table rebuild: every valid one, whatever the others
   * are; the status names the first that was not. */
  kvp_revoke_each: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // const uint64_t *grants
      "u64", // uint64_t count
    ],
    result: "i32",
    since: 5,
  },

  // -------------------------------------------------------------------- files
  /** Opens a file for FILE registration as a handle, with its fd (flags KVP_FILE_*). */
  kvp_file_open: {
    parameters: [
      "buffer", // const char *path
      "u32", // uint32_t flags
      "u64", // uint64_t size
      "buffer", // uint64_t *out_file
      "buffer", // int32_t *out_fd
      "buffer", // int32_t *out_direct
    ],
    result: "i32",
  },
  /** fdatasync of a file from kvp_file_open. */
  kvp_file_sync: {
    parameters: [
      "u64", // uint64_t file
    ],
    result: "i32",
  },
  /** Closes a file from kvp_file_open (refused while registered). */
  kvp_file_close: {
    parameters: [
      "u64", // uint64_t file
    ],
    result: "i32",
  },
} as const satisfies Record<string, SymbolDef>;

/** The names of every C function of the table. */
export type SymbolName = keyof typeof SYMBOLS;

/** The names of the C functions that block up to a timeout. */
export type BlockingName = "kvp_xfer_wait" | "kvp_notif_wait";

/** The names of the C functions an ABI-3 library lacks (bound only from ABI 4, the
 * batch grants from ABI 5: see `since`). */
export type LaterName =
  | "kvp_event_notify"
  | "kvp_event_ack"
  | "kvp_event_quiesce"
  | "kvp_grant_each"
  | "kvp_revoke_each";

/** What a `"buffer"` parameter accepts: memory C reads or writes during the call. */
export type BufferArg = ArrayBufferView | null;

/** The JavaScript value of a neutral parameter type. */
export type ParamJs<T> = T extends "u64" | "i64" ? bigint
  : T extends "i32" | "u32" ? number
  : T extends "function" ? unknown
  : BufferArg;
/** The JavaScript value of a neutral result type. */
export type ResultJs<T> = T extends "u64" ? bigint : T extends "cstring" ? string : number;
/** The JavaScript arguments of a neutral parameter list. */
export type ParamsJs<P> = { -readonly [K in keyof P]: ParamJs<P[K]> };

/** Every C function as a runtime-neutral JavaScript function (synchronous); those of
 * {@linkcode LaterName} are absent from a library of an older ABI (see `since`). */
export type KvpSymbols = {
  [K in SymbolName]: (
    ...args: ParamsJs<(typeof SYMBOLS)[K]["parameters"]>
  ) => ResultJs<(typeof SYMBOLS)[K]["result"]>;
};

/** The blocking functions as promises (Deno's `nonblocking: true` twins); the waits only
 * (kvp_event_quiesce's twin is the loader's own). */
export type KvpNonblocking = {
  [K in BlockingName]: (
    ...args: ParamsJs<(typeof SYMBOLS)[K]["parameters"]>
  ) => Promise<number>;
};

/** One symbol in the form `Deno.dlopen` takes. */
export interface DenoSymbolDef {
  /** The C name, when the key differs from it. */
  name?: string;
  /** Deno parameter types. */
  parameters: ("i32" | "u32" | "i64" | "u64" | "buffer" | "function")[];
  /** Deno result type. */
  result: "i32" | "u32" | "u64" | "pointer";
  /** Run on Deno's blocking thread pool and return a promise. */
  nonblocking?: boolean;
}

/** Whether a function of the table exists in a library of ABI version `abi`. */
function inAbi(def: SymbolDef, abi: number | undefined): boolean {
  return abi === undefined || (def.since ?? 0) <= abi;
}

/** Suffix of the keys under which Deno binds the nonblocking twins. */
export const NONBLOCKING_SUFFIX = "_nonblocking";

/**
 * The table in `Deno.dlopen` form: `"cstring"` results become `"pointer"` (read back
 * with `Deno.UnsafePointerView.getCString`), and every blocking function gets a twin
 * `<name>_nonblocking` bound with `nonblocking: true`. With `abi`, only the functions a
 * library of that ABI version has.
 *
 * @example
 * ```ts
 * import { toDenoSymbols } from "./symbols.ts";
 * console.log(toDenoSymbols().kvp_xfer_wait_nonblocking.nonblocking); // true
 * console.log("kvp_event_notify" in toDenoSymbols(3)); // false
 * ```
 */
export function toDenoSymbols(abi?: number): Record<string, DenoSymbolDef> {
  const out: Record<string, DenoSymbolDef> = {};
  for (const [name, def] of Object.entries(SYMBOLS) as [string, SymbolDef][]) {
    if (!inAbi(def, abi)) continue;
    const result = def.result === "cstring" ? "pointer" : def.result;
    out[name] = { parameters: [...def.parameters], result };
    if (def.blocking) {
      out[name + NONBLOCKING_SUFFIX] = {
        name,
        parameters: [...def.parameters],
        result,
        nonblocking: true,
      };
    }
  }
  return out;
}

/** One symbol in the form `bun:ffi`'s `dlopen` takes (type names as strings). */
export interface BunSymbolDef {
  /** Bun argument types (a `"function"` pointer passes as `"ptr"`). */
  args: ("i32" | "u32" | "i64" | "u64" | "ptr")[];
  /** Bun return type. */
  returns: "i32" | "u32" | "u64" | "cstring";
}

/**
 * The table in `bun:ffi` form: `"buffer"` parameters become `"ptr"` (Bun passes a typed
 * array's address, or NULL for `null`). Bun has no nonblocking calls: blocking
 * functions are bound as they are and called with a timeout of 0 (a status check).
 * `"function"` parameters are `"ptr"` too (a `JSCallback`'s `ptr`). With `abi`, only
 * the functions a library of that ABI version has.
 *
 * @example
 * ```ts
 * import { toBunSymbols } from "./symbols.ts";
 * console.log(toBunSymbols().kvp_register.args[2]); // "ptr"
 * ```
 */
export function toBunSymbols(abi?: number): Record<string, BunSymbolDef> {
  const out: Record<string, BunSymbolDef> = {};
  for (const [name, def] of Object.entries(SYMBOLS) as [string, SymbolDef][]) {
    if (!inAbi(def, abi)) continue;
    out[name] = {
      args: def.parameters.map((p) => (p === "buffer" || p === "function" ? "ptr" : p)),
      returns: def.result,
    };
  }
  return out;
}
