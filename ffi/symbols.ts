/**
 * The one table of every C function in `native/include/kvport.h`, each parameter
 * commented with its C declaration, typed once in a runtime-neutral vocabulary and
 * turned into the forms `Deno.dlopen` and `bun:ffi`'s `dlopen` want.
 *
 * Neutral types and their JavaScript values:
 * - `"i32"`, `"u32"`: `number`;
 * - `"u64"`, `"i64"`: `bigint` (always, in both runtimes);
 * - `"buffer"`: a typed array (or `null`) whose bytes C reads or writes during the call;
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
export type ParamType = "i32" | "u32" | "i64" | "u64" | "buffer";
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
}

/**
 * Every C function of kvport.h (ABI version 1). `blocking` marks the calls that wait
 * with a timeout; Deno also binds them `nonblocking: true` (see {@link toDenoSymbols}).
 *
 * @example
 * ```ts
 * import { SYMBOLS } from "./symbols.ts";
 * console.log(SYMBOLS.kvp_register.parameters.length); // 8
 * ```
 */
export const SYMBOLS = {
  // ------------------------------------------------------------------ library
  /** uint32_t kvp_abi_version(void) */
  kvp_abi_version: { parameters: [], result: "u32" },
  /** const char *kvp_status_name(...) */
  kvp_status_name: {
    parameters: [
      "i32", // int32_t status
    ],
    result: "cstring",
  },
  /** uint64_t kvp_last_error(...): full length of the message */
  kvp_last_error: {
    parameters: [
      "buffer", // char *buf
      "u64", // uint64_t cap
    ],
    result: "u64",
  },
  /** int32_t kvp_engines(...) */
  kvp_engines: {
    parameters: [
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
    ],
    result: "i32",
  },
  /** int32_t kvp_engine_probe(...) */
  kvp_engine_probe: {
    parameters: [
      "buffer", // const char *engine
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
    ],
    result: "i32",
  },
  /** int32_t kvp_cuda_device_count(...) */
  kvp_cuda_device_count: {
    parameters: [
      "buffer", // int32_t *count
    ],
    result: "i32",
  },

  // ------------------------------------------------------------------- memory
  /** int32_t kvp_mem_alloc(...) */
  kvp_mem_alloc: {
    parameters: [
      "i32", // int32_t mem_type
      "i32", // int32_t dev
      "u64", // uint64_t size
      "buffer", // uint64_t *out_addr
    ],
    result: "i32",
  },
  /** int32_t kvp_mem_free(...) */
  kvp_mem_free: {
    parameters: [
      "u64", // uint64_t addr
    ],
    result: "i32",
  },
  /** int32_t kvp_mem_copy(...) */
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
  /** int32_t kvp_mem_checksum(...) */
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
  /** int32_t kvp_agent_create(...) */
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
  /** int32_t kvp_agent_destroy(...) */
  kvp_agent_destroy: {
    parameters: [
      "u64", // uint64_t agent
    ],
    result: "i32",
  },
  /** int32_t kvp_agent_info(...) */
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
  /** int32_t kvp_register(...) */
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
  /** int32_t kvp_deregister(...) */
  kvp_deregister: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t reg
    ],
    result: "i32",
  },

  // ----------------------------------------------------------------- metadata
  /** int32_t kvp_local_metadata(...) */
  kvp_local_metadata: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
    ],
    result: "i32",
  },
  /** int32_t kvp_load_remote_metadata(...) */
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
  /** int32_t kvp_invalidate_remote(...) */
  kvp_invalidate_remote: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // const char *remote_name
    ],
    result: "i32",
  },

  // --------------------------------------------------------- descriptor lists
  /** int32_t kvp_dlist_create(...) */
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
  /** int32_t kvp_dlist_serialize(...) */
  kvp_dlist_serialize: {
    parameters: [
      "u64", // uint64_t dlist
      "buffer", // uint8_t *buf
      "u64", // uint64_t cap
      "buffer", // uint64_t *len
    ],
    result: "i32",
  },
  /** int32_t kvp_dlist_deserialize(...) */
  kvp_dlist_deserialize: {
    parameters: [
      "buffer", // const uint8_t *buf
      "u64", // uint64_t len
      "buffer", // uint64_t *out_dlist
    ],
    result: "i32",
  },
  /** int32_t kvp_dlist_info(...) */
  kvp_dlist_info: {
    parameters: [
      "u64", // uint64_t dlist
      "buffer", // uint64_t *count
      "buffer", // int32_t *mem_type
    ],
    result: "i32",
  },
  /** int32_t kvp_dlist_release(...) */
  kvp_dlist_release: {
    parameters: [
      "u64", // uint64_t dlist
    ],
    result: "i32",
  },
  /** int32_t kvp_prep_dlist(...) */
  kvp_prep_dlist: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // const char *remote
      "u64", // uint64_t dlist
      "buffer", // uint64_t *out_prepped
    ],
    result: "i32",
  },
  /** int32_t kvp_prepped_release(...) */
  kvp_prepped_release: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t prepped
    ],
    result: "i32",
  },

  // ---------------------------------------------------------------- transfers
  /** int32_t kvp_xfer_create(...) */
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
  /** int32_t kvp_xfer_post(...) */
  kvp_xfer_post: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t req
    ],
    result: "i32",
  },
  /** int32_t kvp_xfer_status(...) */
  kvp_xfer_status: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t req
    ],
    result: "i32",
  },
  /** int32_t kvp_xfer_wait(...): blocks up to timeout_ms */
  kvp_xfer_wait: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t req
      "i64", // int64_t timeout_ms
    ],
    result: "i32",
    blocking: true,
  },
  /** int32_t kvp_xfer_message(...) */
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
  /** int32_t kvp_xfer_release(...) */
  kvp_xfer_release: {
    parameters: [
      "u64", // uint64_t agent
      "u64", // uint64_t req
    ],
    result: "i32",
  },

  // ------------------------------------------------------------ notifications
  /** int32_t kvp_notif_send(...) */
  kvp_notif_send: {
    parameters: [
      "u64", // uint64_t agent
      "buffer", // const char *remote
      "buffer", // const uint8_t *msg
      "u64", // uint64_t len
    ],
    result: "i32",
  },
  /** int32_t kvp_notif_take(...) */
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
  /** int32_t kvp_notif_wait(...): blocks up to timeout_ms */
  kvp_notif_wait: {
    parameters: [
      "u64", // uint64_t agent
      "i64", // int64_t timeout_ms
    ],
    result: "i32",
    blocking: true,
  },

  // -------------------------------------------------------------------- files
  /** int32_t kvp_file_open(...) */
  kvp_file_open: {
    parameters: [
      "buffer", // const char *path
      "u32", // uint32_t flags
      "u64", // uint64_t size
      "buffer", // int32_t *out_fd
      "buffer", // int32_t *out_direct
    ],
    result: "i32",
  },
  /** int32_t kvp_file_sync(...) */
  kvp_file_sync: {
    parameters: [
      "i32", // int32_t fd
    ],
    result: "i32",
  },
  /** int32_t kvp_file_close(...) */
  kvp_file_close: {
    parameters: [
      "i32", // int32_t fd
    ],
    result: "i32",
  },
} as const satisfies Record<string, SymbolDef>;

/** The names of every C function of the table. */
export type SymbolName = keyof typeof SYMBOLS;

/** The names of the C functions that block up to a timeout. */
export type BlockingName = "kvp_xfer_wait" | "kvp_notif_wait";

/** What a `"buffer"` parameter accepts: memory C reads or writes during the call. */
export type BufferArg = ArrayBufferView | null;

type ParamJs<T> = T extends "u64" | "i64" ? bigint
  : T extends "i32" | "u32" ? number
  : BufferArg;
type ResultJs<T> = T extends "u64" ? bigint : T extends "cstring" ? string : number;
type ParamsJs<P> = { -readonly [K in keyof P]: ParamJs<P[K]> };

/** Every C function as a runtime-neutral JavaScript function (synchronous). */
export type KvpSymbols = {
  [K in SymbolName]: (
    ...args: ParamsJs<(typeof SYMBOLS)[K]["parameters"]>
  ) => ResultJs<(typeof SYMBOLS)[K]["result"]>;
};

/** The blocking functions as promises (Deno's `nonblocking: true` twins). */
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
  parameters: ("i32" | "u32" | "i64" | "u64" | "buffer")[];
  /** Deno result type. */
  result: "i32" | "u32" | "u64" | "pointer";
  /** Run on Deno's blocking thread pool and return a promise. */
  nonblocking?: boolean;
}

/** Suffix of the keys under which Deno binds the nonblocking twins. */
export const NONBLOCKING_SUFFIX = "_nonblocking";

/**
 * The table in `Deno.dlopen` form: `"cstring"` results become `"pointer"` (read back
 * with `Deno.UnsafePointerView.getCString`), and every blocking function gets a twin
 * `<name>_nonblocking` bound with `nonblocking: true`.
 *
 * @example
 * ```ts
 * import { toDenoSymbols } from "./symbols.ts";
 * console.log(toDenoSymbols().kvp_xfer_wait_nonblocking.nonblocking); // true
 * ```
 */
export function toDenoSymbols(): Record<string, DenoSymbolDef> {
  const out: Record<string, DenoSymbolDef> = {};
  for (const [name, def] of Object.entries(SYMBOLS) as [string, SymbolDef][]) {
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
  /** Bun argument types. */
  args: ("i32" | "u32" | "i64" | "u64" | "ptr")[];
  /** Bun return type. */
  returns: "i32" | "u32" | "u64" | "cstring";
}

/**
 * The table in `bun:ffi` form: `"buffer"` parameters become `"ptr"` (Bun passes a typed
 * array's address, or NULL for `null`). Bun has no nonblocking calls: blocking
 * functions are bound as they are and called with a timeout of 0 (a status check).
 *
 * @example
 * ```ts
 * import { toBunSymbols } from "./symbols.ts";
 * console.log(toBunSymbols().kvp_register.args[2]); // "ptr"
 * ```
 */
export function toBunSymbols(): Record<string, BunSymbolDef> {
  const out: Record<string, BunSymbolDef> = {};
  for (const [name, def] of Object.entries(SYMBOLS) as [string, SymbolDef][]) {
    out[name] = {
      args: def.parameters.map((p) => (p === "buffer" ? "ptr" : p)),
      returns: def.result,
    };
  }
  return out;
}
