/**
 * `NixlAgent`: NIXL's agent model (LMCache's `nixl_agent`) in idiomatic TypeScript, over
 * the native shim. An agent registers memory, publishes its metadata, loads its peers',
 * prepares descriptor lists and moves pages with one-sided READ and WRITE, with
 * notifications on the side. Every wait has a timeout; every handle is released by
 * `close()` (or `await using`).
 *
 * @example
 * ```ts
 * import { DescList, NixlAgent } from "@kvport/nixl";
 *
 * await using a = await NixlAgent.create({ name: "prefill", engine: "builtin" });
 * await using b = await NixlAgent.create({ name: "decode", engine: "builtin" });
 * const src = a.allocate(64 * 4096), dst = b.allocate(64 * 4096);
 * a.registerMemory(src);
 * b.registerMemory(dst);
 * src.bytes.fill(42);
 *
 * const peer = a.addRemoteAgent(b.localMetadata()); // "decode"
 * using mine = DescList.pages(src, 4096, 64);
 * using theirs = DescList.deserialize(DescList.pages(dst, 4096, 64).serialize());
 * const local = a.prepDescList("", mine);
 * const remote = a.prepDescList(peer, theirs);
 * await a.transfer("WRITE", local, [0, 1, 2], remote, [7, 8, 9], { notification: "done" });
 * console.log(await b.waitNotifications(1000)); // [{ agent: "prefill", message: ... }]
 * ```
 * @module
 */

import type { NativeLib } from "../ffi/mod.ts";
import { currentRuntime, runtimeVersion } from "../ffi/mod.ts";
import {
  CallMessage,
  check,
  cString,
  lastError,
  OUT_I32,
  OUT_U64,
  OUT_U64_B,
  parseKeyValues,
  sizedOut,
  text,
} from "../ffi/native.ts";
import { NixlError, NixlTimeoutError, Status } from "./errors.ts";
import {
  allocateBuffer,
  type AllocateOptions,
  defaultShared,
  type DeviceBuffer,
  type HostBuffer,
  NativeBuffer,
} from "./agent/buffers.ts";
import {
  type AgentCore,
  library,
  type LibraryOptions,
  type MemType,
  memTypeCode,
  orNull,
  type Releasable,
  toIndices,
  toU64,
} from "./agent/common.ts";
import { AgentEvents } from "./agent/events.ts";
import { agentLibraries, DescList, PreparedDescList } from "./agent/desc_list.ts";
import {
  type GrantArrays,
  grantEachRange,
  type GrantOptions,
  type GrantRange,
  grantRanges,
  PageGrant,
} from "./agent/grants.ts";
import { agentMetrics, collectAgentInfo } from "./agent/metrics.ts";
import { type MetricsRegistry, metricsRegistry } from "./metrics/registry.ts";
import { type CollectedSource, weakly } from "./metrics/source.ts";
import {
  checkTimeout,
  NO_SPIN_BYTES,
  type TransferOp,
  TransferRequest,
  type WaitOptions,
  waitStatus,
} from "./agent/transfer.ts";

export { NixlError, NixlTimeoutError, Status, statusName } from "./errors.ts";
export { NativeLibraryError, runtimeVersion } from "../ffi/mod.ts";
export type { StatusCode, TimeoutDetails } from "./errors.ts";
export { type AllocateOptions, DeviceBuffer, HostBuffer, NativeBuffer } from "./agent/buffers.ts";
export type { LibraryOptions, MemType } from "./agent/common.ts";
export {
  type DescArrays,
  DescList,
  type DescListOptions,
  type PageSource,
  PreparedDescList,
} from "./agent/desc_list.ts";
export { type GrantArrays, type GrantOptions, type GrantRange, PageGrant } from "./agent/grants.ts";
export {
  type TransferOp,
  TransferRequest,
  type TransferState,
  type WaitOptions,
} from "./agent/transfer.ts";

/** Engines of the shim: `"builtin"` (always there), `"nixl"` (over libnixl), `"auto"`. */
export type EngineName = "auto" | "builtin" | "nixl";

/** Options of {@linkcode NixlAgent.create}. */
export interface AgentOptions extends LibraryOptions {
  /** Unique agent name (1..255 bytes). */
  name: string;
  /** `"auto"` (default: NIXL when found, else builtin), `"builtin"` or `"nixl"`. */
  engine?: EngineName;
  /** Backends to create (default `["UCX"]`). The builtin engine serves UCX, TCP, POSIX. */
  backends?: readonly string[];
  /** Engine parameters: `{ listen_host: "127.0.0.1" }`, `"UCX.key": value` for one
   * backend; or the shim's `"key=value"` lines as one string. */
  params?: Record<string, string | number | boolean> | string;
  /** Registry the agent's transfers are counted in (default: `metricsRegistry()`). */
  metrics?: MetricsRegistry;
}

/** A DRAM/VRAM region to register: an address (or device address) and a length. */
export interface MemoryRegion {
  /** Host address (DRAM) or device address (VRAM). */
  address: bigint | number;
  /** Length in bytes. */
  length: bigint | number;
  /** CUDA ordinal for VRAM (default 0). */
  device?: number;
}

/** A file region to register (FILE): an open fd, an offset and a length (0: to EOF). */
export interface FileRegion {
  /** The descriptor of a file from `openFile` (`kvp_file_open`: other descriptors are refused). */
  fd: number;
  /** Offset in bytes (default 0). */
  offset?: bigint | number;
  /** Length in bytes; 0 means up to the file's size. */
  length: bigint | number;
}

/** An object region to register (OBJ): an object key, a length and a slot id. */
export interface ObjectRegion {
  /** The object's key. */
  key: string;
  /** Offset in the object (default 0). */
  offset?: bigint | number;
  /** Length in bytes. */
  length: bigint | number;
  /** Slot id (default 0). */
  device?: number;
}

/** What {@linkcode NixlAgent.registerMemory} takes. */
export type RegisterInput =
  | NativeBuffer
  | ArrayBufferView
  | readonly MemoryRegion[]
  | readonly FileRegion[]
  | readonly ObjectRegion[]
  | DescArraysInput;

/** Regions as parallel typed arrays (bulk registration). */
export interface DescArraysInput {
  /** Addresses (or file offsets). */
  addrs: BigUint64Array;
  /** Lengths. */
  lens: BigUint64Array;
  /** Devices (CUDA ordinal, fd); default all 0. */
  devs?: BigUint64Array;
}

/** A notification from a peer. */
export interface Notification {
  /** The sending agent's name. */
  agent: string;
  /** The message bytes. */
  message: Uint8Array;
}

/** Options of {@linkcode NixlAgent.transfer}. */
export interface TransferOptions extends WaitOptions {
  /** Delivered to the peer after all the data has landed. */
  notification?: Uint8Array | string;
  /** Milliseconds before the request is cancelled (default 30 000). */
  timeoutMs?: number;
}

/**
 * What one `registerMemory` call registered; `deregister()` (or the agent's `close()`)
 * ends it. The memory must stay allocated until then: a registered `Uint8Array` is
 * referenced here so it cannot be collected meanwhile.
 *
 * @example
 * ```ts
 * import { NixlAgent } from "@kvport/nixl";
 * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
 * const pages = new Uint8Array(1 << 20);
 * using reg = agent.registerMemory(pages);
 * console.log(reg.memType, reg.count); // DRAM 1
 * ```
 */
export class Registration {
  /** Memory type of the regions. */
  readonly memType: MemType;
  /** Number of regions. */
  readonly count: number;
  #core: AgentCore;
  #handle: bigint;
  #keep: unknown; // the registered JavaScript memory, held until deregistered
  #buffer: NativeBuffer | undefined;
  #released = false;

  /** @internal Use `NixlAgent.registerMemory`. */
  constructor(
    core: AgentCore,
    handle: bigint,
    memType: MemType,
    count: number,
    keep: unknown,
    buffer?: NativeBuffer,
  ) {
    this.#core = core;
    this.#handle = handle;
    this.memType = memType;
    this.count = count;
    this.#keep = keep;
    this.#buffer = buffer;
    buffer?.retain(1);
  }

  /** True once deregistered. */
  get released(): boolean {
    return this.#released;
  }

  /** Deregisters (NIXL's `deregisterMem`). A second call is `NIXL_ERR_NOT_FOUND`. */
  deregister(): void {
    if (this.#released) {
      const lib = this.#core.lib;
      // Let the shim answer for the stale handle: the same error a C caller gets.
      check(
        lib,
        lib.symbols.kvp_deregister(this.#core.handle("deregister"), this.#handle),
        "kvp_deregister",
      );
      return;
    }
    this.release();
  }

  /** @internal Deregisters, idempotently (the agent's close). */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#core.forget(this);
    try {
      if (!this.#core.closed) {
        const lib = this.#core.lib;
        check(
          lib,
          lib.symbols.kvp_deregister(this.#core.handle("deregister"), this.#handle),
          "kvp_deregister",
        );
      }
    } finally {
      this.#buffer?.retain(-1);
      this.#buffer = undefined;
      this.#keep = undefined;
    }
  }

  /** Deregisters (`using reg = agent.registerMemory(...)`). */
  [Symbol.dispose](): void {
    this.release();
  }
}

function paramsText(params: AgentOptions["params"]): string {
  if (params === undefined) return "";
  if (typeof params === "string") return params;
  const lines: string[] = [];
  for (const [key, value] of Object.entries(params)) {
    const v = typeof value === "boolean" ? (value ? "1" : "0") : String(value);
    if (!key || /[=\n]/.test(key) || v.includes("\n")) {
      throw new NixlError(
        Status.ERR_INVALID_PARAM,
        "NixlAgent.create",
        `params key ${JSON.stringify(key)} = ${JSON.stringify(v)}: keys must be non-empty ` +
          `without "=" or newlines, values without newlines`,
      );
    }
    lines.push(`${key}=${v}`);
  }
  return lines.join("\n");
}

const NOTIF_RECORDS = 1 << 17;

/** The largest record `kvp_notif_take` makes on the builtin engine: a name of at most
 * 255 bytes (`KVP_NAME_MAX`, also the wire's bound) and a message of at most 64 KiB (every
 * way in refuses more: kvp_notif_send, the post, the wire's frame bound). */
const MAX_BUILTIN_RECORD = 4 + 255 + 4 + 64 * 1024;

/** The little-endian u32 at `at` of `b` (a record's length field: no DataView per take). */
function u32le(b: Uint8Array, at: number): number {
  return (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;
}
const encoder = new TextEncoder();

/**
 * A NIXL agent (`nixl_agent`): one per process and role, named uniquely among its peers.
 *
 * @example
 * ```ts
 * import { NixlAgent } from "@kvport/nixl";
 * await using agent = await NixlAgent.create({ name: "worker-0", backends: ["UCX"] });
 * console.log(agent.name, agent.engine, agent.backends);
 * const meta = agent.localMetadata(); // send to peers
 * ```
 */
export class NixlAgent {
  /** The agent's name. */
  readonly name: string;
  /** The engine serving it, resolved (`"builtin"` or `"nixl"`). */
  readonly engine: string;
  /** The backends created. */
  readonly backends: readonly string[];
  /** `host:port` the builtin engine listens on (`""` when none). */
  readonly listen: string;
  #lib: NativeLib;
  #handle: bigint;
  #closed = false;
  #closing: Promise<void> | undefined;
  #parts = new Set<Releasable>();
  #remotes = new Set<string>();
  #buffers = new Set<NativeBuffer>();
  #inflight = new Set<Promise<unknown>>();
  #names = new Map<string, Uint8Array>();
  #notifBuf: Uint8Array | undefined;
  #lastPeer: { bytes: Uint8Array; name: string } | null = null;
  #core: AgentCore;
  #metricsSource: CollectedSource;
  /** undefined: not opened yet; null: not used here. */
  #events: AgentEvents | null | undefined;

  private constructor(lib: NativeLib, handle: bigint, name: string, metrics: MetricsRegistry) {
    this.#lib = lib;
    this.#handle = handle;
    this.name = name;
    const info = this.info();
    this.engine = info.engine ?? "";
    this.backends = info.backends ? info.backends.split(",").filter((s) => s) : [];
    this.listen = info.listen ?? "";
    // deno-lint-ignore no-this-alias
    const self = this;
    this.#core = {
      lib,
      name,
      metrics: agentMetrics(metrics),
      get closed() {
        return self.#closed;
      },
      handle: (fn) => this.#native(fn),
      forget: (part) => this.#parts.delete(part),
      track: <T>(call: Promise<T>): Promise<T> => {
        this.#inflight.add(call);
        call.then(() => this.#inflight.delete(call), () => this.#inflight.delete(call));
        return call;
      },
      events: () => {
        if (this.#events === undefined) {
          this.#events = this.#closed ? null : AgentEvents.open(lib, this.#handle, this.engine);
        }
        return this.#events;
      },
    };
    // The events (wake callback, or Bun's descriptor) from the start, before any post: a
    // GPU post made before they were asked for would complete only when polled (see
    // kvp_event_fd, kvp_event_notify).
    this.#events = AgentEvents.open(lib, handle, this.engine);
    agentLibraries.set(this, lib);
    // Held weakly: the process-wide registry must not keep a dropped agent alive (the
    // read is a static method: a closure made here would share this constructor's
    // context, which holds `this`).
    this.#metricsSource = collectAgentInfo(metrics, this.engine, weakly(this, NixlAgent.#info));
  }

  /**
   * Creates an agent: loads the shim (see `loadNativeLibrary` for the lookup), creates
   * the backends on the chosen engine. `engine: "nixl"` without NIXL fails
   * `NIXL_ERR_NOT_SUPPORTED` with the paths searched.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * const agent = await NixlAgent.create({
   *   name: "decoder-0",
   *   engine: "builtin",
   *   backends: ["TCP"],
   *   params: { listen_host: "127.0.0.1" },
   * });
   * await agent.close();
   * ```
   */
  static async create(options: AgentOptions): Promise<NixlAgent> {
    const { name, engine = "auto", backends = ["UCX"] } = options;
    if (typeof name !== "string" || name.length === 0) {
      throw new NixlError(
        Status.ERR_INVALID_PARAM,
        "NixlAgent.create",
        "name must be a " +
          `non-empty string, got ${JSON.stringify(name)}`,
      );
    }
    const lib = await library(options);
    const out = new BigUint64Array(1);
    check(
      lib,
      lib.symbols.kvp_agent_create(
        cString(name, "name"),
        cString(engine, "engine"),
        cString(backends.join(","), "backends"),
        cString(paramsText(options.params), "params"),
        out,
      ),
      "kvp_agent_create",
      `creating agent "${name}" (engine ${engine}, backends ${backends.join(",")})`,
    );
    return new NixlAgent(lib, out[0], name, options.metrics ?? metricsRegistry());
  }

  static #info(agent: NixlAgent): Record<string, string> {
    return agent.info();
  }

  #native(fn: string): bigint {
    if (this.#closed) {
      throw new NixlError(Status.ERR_NOT_FOUND, fn, `agent "${this.name}" is closed`);
    }
    return this.#handle;
  }

  #sized(
    fn: string,
    call: (buf: Uint8Array, cap: bigint, len: BigUint64Array) => number,
  ): string {
    return text(sizedOut(this.#lib, fn, call));
  }

  #cName(name: string, what: string): Uint8Array {
    let c = this.#names.get(name);
    if (c === undefined) {
      c = cString(name, what);
      if (this.#names.size > 1024) this.#names.clear();
      this.#names.set(name, c);
    }
    return c;
  }

  /** True once `close()` was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The engine's facts about this agent (`name`, `engine`, `backends`, `listen`, ...). */
  info(): Record<string, string> {
    const h = this.#native("info");
    return parseKeyValues(
      this.#sized("kvp_agent_info", (b, c, l) => this.#lib.symbols.kvp_agent_info(h, b, c, l)),
    );
  }

  /**
   * Allocates memory through the shim: DRAM (a {@linkcode HostBuffer} with `bytes`; by
   * default shared memory a same-host peer can map on the builtin engine, private
   * huge-page memory on the nixl engine: `shared` chooses) or VRAM (a
   * {@linkcode DeviceBuffer}). The agent frees what is still allocated when it closes.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
   * const host = agent.allocate(1 << 20);
   * host.bytes[0] = 1;
   * // VRAM: agent.allocate(1 << 20, { device: "cuda:0" }) -> DeviceBuffer
   * ```
   */
  allocate(
    size: number | bigint,
    options?: AllocateOptions & { memType?: "DRAM"; device?: number | "cpu" },
  ): HostBuffer;
  /** Allocates VRAM on CUDA device `options.device`. */
  allocate(size: number | bigint, options: AllocateOptions & { memType: "VRAM" }): DeviceBuffer;
  /** Allocates VRAM on the CUDA device named like LMCache does (`"cuda:N"`). */
  allocate(
    size: number | bigint,
    options: AllocateOptions & { device: "cuda" | `cuda:${number}` },
  ): DeviceBuffer;
  /** Allocates DRAM or VRAM. */
  allocate(size: number | bigint, options?: AllocateOptions): NativeBuffer;
  allocate(size: number | bigint, options?: AllocateOptions): NativeBuffer {
    options ??= {};
    this.#native("allocate");
    const opts = { ...options, shared: options.shared ?? defaultShared(this.engine) };
    const buf = allocateBuffer(this.#lib, size, opts, (b) => this.#buffers.delete(b));
    this.#buffers.add(buf);
    return buf;
  }

  /**
   * Registers memory with the agent in one native call (NIXL's `registerMem`): a buffer
   * from {@linkcode NixlAgent.allocate}, a `Uint8Array` (DRAM, kept referenced until
   * deregistered), DRAM/VRAM regions `{ address, length, device? }`, FILE regions
   * `{ fd, offset?, length }`, OBJ regions `{ key, length, device? }`, or parallel typed
   * arrays `{ addrs, lens, devs? }`. `memType` overrides the inferred type (DRAM for
   * addresses, FILE for fds, OBJ for keys).
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
   * const buf = agent.allocate(1 << 20);
   * const reg = agent.registerMemory(buf);
   * agent.deregisterMemory(reg);
   * ```
   */
  registerMemory(regions: RegisterInput, memType?: MemType): Registration {
    const fn = "registerMemory";
    const agent = this.#native(fn);
    let addrs: BigUint64Array, lens: BigUint64Array, devs: BigUint64Array;
    let type: MemType;
    let meta: Uint8Array | null = null;
    let keep: unknown = regions;
    let buffer: NativeBuffer | undefined;
    if (regions instanceof NativeBuffer) {
      regions.assertLive(fn);
      buffer = regions;
      type = memType ?? regions.memType;
      addrs = new BigUint64Array([regions.address]);
      lens = new BigUint64Array([BigInt(regions.size)]);
      devs = new BigUint64Array([BigInt(regions.device)]);
    } else if (ArrayBuffer.isView(regions)) {
      if (regions.byteLength === 0) {
        throw new NixlError(Status.ERR_INVALID_PARAM, fn, "cannot register an empty buffer");
      }
      type = memType ?? "DRAM";
      addrs = new BigUint64Array([this.#lib.addressOf(regions)]);
      lens = new BigUint64Array([BigInt(regions.byteLength)]);
      devs = new BigUint64Array(1);
    } else if ("addrs" in regions) {
      ({ addrs, lens } = regions);
      devs = regions.devs ?? new BigUint64Array(addrs.length);
      type = memType ?? "DRAM";
      if (lens.length !== addrs.length || devs.length !== addrs.length) {
        throw new NixlError(
          Status.ERR_MISMATCH,
          fn,
          `addrs, lens and devs must have the same length; got ${addrs.length}, ` +
            `${lens.length}, ${devs.length}`,
        );
      }
    } else {
      const list = regions as readonly (MemoryRegion | FileRegion | ObjectRegion)[];
      const n = list.length;
      addrs = new BigUint64Array(n);
      lens = new BigUint64Array(n);
      devs = new BigUint64Array(n);
      const first = list[0];
      const kind = first === undefined
        ? "address"
        : "fd" in first
        ? "fd"
        : "key" in first
        ? "key"
        : "address";
      type = memType ?? (kind === "fd" ? "FILE" : kind === "key" ? "OBJ" : "DRAM");
      const keys: string[] = [];
      for (let i = 0; i < n; i++) {
        const r = list[i] as Partial<MemoryRegion & FileRegion & ObjectRegion>;
        const where = `regions[${i}]`;
        if (!(kind in r)) {
          throw new NixlError(
            Status.ERR_INVALID_PARAM,
            fn,
            `${where} has no "${kind}" like ` +
              `regions[0]: one kind of region per call`,
          );
        }
        lens[i] = toU64(r.length ?? -1, `${where}.length`);
        if (kind === "fd") {
          addrs[i] = toU64(r.offset ?? 0, `${where}.offset`);
          devs[i] = toU64(r.fd!, `${where}.fd`);
        } else if (kind === "key") {
          addrs[i] = toU64(r.offset ?? 0, `${where}.offset`);
          devs[i] = toU64(r.device ?? 0, `${where}.device`);
          if (r.key!.includes("\n")) {
            throw new NixlError(Status.ERR_INVALID_PARAM, fn, `${where}.key contains a newline`);
          }
          keys.push(r.key!);
        } else {
          addrs[i] = toU64(r.address!, `${where}.address`);
          devs[i] = toU64(r.device ?? 0, `${where}.device`);
        }
      }
      if (kind === "key") meta = cString(keys.join("\n"), "keys");
      keep = undefined; // plain numbers: nothing of JavaScript's to keep alive
    }
    const out = new BigUint64Array(1);
    check(
      this.#lib,
      this.#lib.symbols.kvp_register(
        agent,
        memTypeCode(type),
        orNull(addrs),
        orNull(lens),
        orNull(devs),
        BigInt(addrs.length),
        meta,
        out,
      ),
      "kvp_register",
      `registering ${addrs.length} ${type} region${addrs.length === 1 ? "" : "s"}`,
    );
    const reg = new Registration(this.#core, out[0], type, addrs.length, keep, buffer);
    this.#parts.add(reg);
    return reg;
  }

  /**
   * Whether the engine enforces page grants for this agent: `"on"` (builtin engine created
   * with the param `page_grants=on`: peers reach only what {@linkcode NixlAgent.grant}
   * gave them), `"off"` (every registered byte is reachable by a peer holding this
   * agent's metadata, as in NIXL), `"unsupported"` (the nixl engine enforces none).
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * await using a = await NixlAgent.create({ name: "a", engine: "builtin" });
   * console.log(a.pageGrants); // off
   * ```
   */
  get pageGrants(): "on" | "off" | "unsupported" {
    const v = this.info().page_grants;
    return v === "on" ? "on" : v === "off" ? "off" : "unsupported";
  }

  /**
   * Grants the loaded peer `remote` READ and/or WRITE of `ranges` of this agent's
   * registered DRAM (or VRAM: `memType`), for `expiresMs` (default: until revoked). Needs
   * an agent created with the param `page_grants=on` (else `NIXL_ERR_INVALID_PARAM`); the
   * nixl engine enforces no grants (`NIXL_ERR_NOT_SUPPORTED`). A peer not loaded is
   * `NIXL_ERR_NOT_FOUND`, a range outside registered memory `NIXL_ERR_INVALID_PARAM`, more
   * than `max_grants` ranges held `NIXL_ERR_NOT_ALLOWED`. The grant is bound to the
   * peer's current token (a restarted peer needs a new one) and dies with the
   * registration it lies in. Anything the peer does outside its grants fails that
   * request with `NIXL_ERR_NOT_ALLOWED` naming the agent, address and length.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * await using rx = await NixlAgent.create({
   *   name: "decoder", engine: "builtin", params: { page_grants: "on" },
   * });
   * await using tx = await NixlAgent.create({ name: "prefill", engine: "builtin" });
   * const buf = rx.allocate(16 * 4096);
   * rx.registerMemory(buf);
   * rx.addRemoteAgent(tx.localMetadata());
   * {
   *   using grant = rx.grant("prefill", [{ address: buf.address, length: 4096 }], {
   *     write: true,
   *     expiresMs: 10_000,
   *   });
   *   // ... "prefill" WRITEs page 0; any other page is refused ...
   * } // revoked here
   * ```
   */
  grant(
    remote: string,
    ranges: readonly GrantRange[] | GrantArrays,
    options: GrantOptions,
  ): PageGrant {
    this.#native("grant");
    const g = grantRanges(
      this.#core,
      this.#cName(remote, "remote"),
      remote,
      ranges,
      options ?? {},
    );
    this.#parts.add(g);
    return g;
  }

  /**
   * Like {@linkcode NixlAgent.grant}, but one grant per range (range `i` is grant `i` of
   * the result), each revoked on its own later, all made with one native call and one
   * rebuild of the agent's grant table (`kvp_grant_each`; `grant` per range rebuilds it
   * every time). All or nothing: on a failure no grant of the call exists and the
   * error's message names the range's index. The same options and refusals as `grant`;
   * `max_grants` counts every range. End them with {@linkcode NixlAgent.revokeGrants}
   * (one native call) or each with `revoke()`.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * await using rx = await NixlAgent.create({
   *   name: "decoder", engine: "builtin", params: { page_grants: "on" },
   * });
   * await using tx = await NixlAgent.create({ name: "prefill", engine: "builtin" });
   * const buf = rx.allocate(4 * 4096);
   * rx.registerMemory(buf);
   * rx.addRemoteAgent(tx.localMetadata());
   * const pages = rx.grantEach(
   *   "prefill",
   *   [0, 1, 2, 3].map((i) => ({ address: buf.address + BigInt(i * 4096), length: 4096 })),
   *   { write: true, expiresMs: 60_000 },
   * );
   * pages[1].revoke(); // page 1 only
   * rx.revokeGrants(pages); // the rest, in one call
   * ```
   */
  grantEach(
    remote: string,
    ranges: readonly GrantRange[] | GrantArrays,
    options: GrantOptions,
  ): PageGrant[] {
    this.#native("grantEach");
    const made = grantEachRange(
      this.#core,
      this.#cName(remote, "remote"),
      remote,
      ranges,
      options ?? {},
    );
    for (const g of made) this.#parts.add(g);
    return made;
  }

  /**
   * Revokes `grants` (of {@linkcode NixlAgent.grant} or {@linkcode NixlAgent.grantEach})
   * with one native call and one rebuild of the grant table (`kvp_revoke_each`); see
   * {@linkcode PageGrant.revokeAll}. Those already revoked are skipped; every other one
   * is revoked even when one fails (the first failure is thrown after).
   *
   * @example
   * ```ts
   * import type { NixlAgent } from "@kvport/nixl";
   * declare const rx: NixlAgent;
   * declare const base: bigint;
   * const g = rx.grantEach("prefill", [{ address: base, length: 4096 }], { write: true });
   * rx.revokeGrants(g);
   * ```
   */
  revokeGrants(grants: Iterable<PageGrant>): void {
    PageGrant.revokeAll(grants);
  }

  /**
   * Deregisters what {@linkcode NixlAgent.registerMemory} registered (same as
   * `reg.deregister()`); a second time is `NIXL_ERR_NOT_FOUND`.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
   * const reg = agent.registerMemory(new Uint8Array(4096));
   * agent.deregisterMemory(reg);
   * ```
   */
  deregisterMemory(registration: Registration): void {
    registration.deregister();
  }

  /**
   * This agent's metadata (name, how to reach it, registered memory): give it to peers'
   * {@linkcode NixlAgent.addRemoteAgent}. Fetch it again after registering more memory.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
   * const meta: Uint8Array = agent.localMetadata();
   * ```
   */
  localMetadata(): Uint8Array {
    const h = this.#native("localMetadata");
    return sizedOut(
      this.#lib,
      "kvp_local_metadata",
      (b, c, l) => this.#lib.symbols.kvp_local_metadata(h, b, c, l),
    );
  }

  /**
   * Loads a peer's metadata and returns its name. Loading the same peer again is a
   * no-op; a restarted peer (new connection info) is `NIXL_ERR_NOT_ALLOWED` until
   * {@linkcode NixlAgent.invalidateRemoteAgent}. Bytes that do not parse are
   * `NIXL_ERR_MISMATCH`.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * await using a = await NixlAgent.create({ name: "a", engine: "builtin" });
   * await using b = await NixlAgent.create({ name: "b", engine: "builtin" });
   * console.log(a.addRemoteAgent(b.localMetadata())); // "b"
   * ```
   */
  addRemoteAgent(metadata: Uint8Array): string {
    const h = this.#native("addRemoteAgent");
    const lib = this.#lib;
    const blob = orNull(metadata);
    const name = this.#sized(
      "kvp_load_remote_metadata",
      (b, c, l) =>
        lib.symbols.kvp_load_remote_metadata(h, blob, BigInt(metadata.byteLength), b, c, l),
    );
    this.#remotes.add(name);
    return name;
  }

  /**
   * Forgets a peer: its connection closes, and lists and requests towards it fail
   * `NIXL_ERR_NOT_FOUND` from then on. An unknown name is `NIXL_ERR_NOT_FOUND`.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * declare const agent: NixlAgent;
   * agent.invalidateRemoteAgent("decoder-0");
   * ```
   */
  invalidateRemoteAgent(name: string): void {
    const h = this.#native("invalidateRemoteAgent");
    const status = this.#lib.symbols.kvp_invalidate_remote(h, cString(name, "remote name"));
    // The builtin engine releases on its own a peer that exited once nothing refers to
    // it: forgetting it then is done already.
    if (status !== Status.ERR_NOT_FOUND || !this.#remotes.has(name)) {
      check(this.#lib, status, "kvp_invalidate_remote", `forgetting peer "${name}"`);
    }
    this.#remotes.delete(name);
    this.#names.delete(name);
  }

  /** The peers loaded with {@linkcode NixlAgent.addRemoteAgent} and not invalidated. */
  get remoteAgents(): string[] {
    return [...this.#remotes];
  }

  /**
   * Prepares a list for transfers (NIXL's `prepXferDlist`): `remote` is `""` for the
   * local side, a loaded peer's name for its side, or this agent's own name for
   * loopback. Every descriptor must lie in memory registered by that side
   * (`NIXL_ERR_INVALID_PARAM` names the first that does not). `list` may also be the
   * arrays of a list; a list built here is released at once.
   *
   * @example
   * ```ts
   * import { DescList, NixlAgent } from "@kvport/nixl";
   * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
   * const buf = agent.allocate(1 << 20);
   * agent.registerMemory(buf);
   * const local = agent.prepDescList("", DescList.pages(buf, 4096, 256));
   * ```
   */
  prepDescList(
    remote: string,
    list: DescList | (DescArraysInput & { memType: MemType }),
  ): PreparedDescList {
    const fn = "prepDescList";
    const h = this.#native(fn);
    const own = list instanceof DescList
      ? undefined
      : DescList.fromArrays(list.memType, list, { agent: this });
    const dl = own ?? (list as DescList);
    try {
      if (dl.lib !== this.#lib) {
        throw new NixlError(
          Status.ERR_MISMATCH,
          fn,
          "the list was built by another native " +
            `library (${dl.lib.path}) than this agent's (${this.#lib.path})`,
        );
      }
      const out = OUT_U64;
      const status = this.#lib.symbols.kvp_prep_dlist(
        h,
        this.#cName(remote, "remote"),
        dl.handle(fn),
        out,
      );
      if (status !== Status.SUCCESS) {
        check(
          this.#lib,
          status,
          "kvp_prep_dlist",
          `preparing ${dl.count} ${dl.memType} descriptors for ` +
            (remote === "" ? "the local side" : `peer "${remote}"`),
        );
      }
      const prepped = new PreparedDescList(
        this.#core,
        out[0],
        remote,
        dl.count,
        dl.memType,
        dl.lengths,
      );
      this.#parts.add(prepped);
      return prepped;
    } finally {
      own?.release();
    }
  }

  /**
   * Makes a reusable transfer request (NIXL's `makeXferReq`): `localIdx[i]` of `local`
   * pairs with `remoteIdx[i]` of `remote`; lengths must match pairwise
   * (`NIXL_ERR_MISMATCH`), indices must be in range (`NIXL_ERR_INVALID_PARAM`).
   * Consecutive descriptors are merged. Post, wait, post again; release when done.
   *
   * @example
   * ```ts
   * import { NixlAgent, type PreparedDescList } from "@kvport/nixl";
   * declare const agent: NixlAgent;
   * declare const local: PreparedDescList, remote: PreparedDescList;
   * using req = agent.createTransfer("WRITE", local, new Uint32Array([0, 1]), remote, [2, 3]);
   * req.post();
   * await req.wait(5000);
   * ```
   */
  createTransfer(
    op: TransferOp,
    local: PreparedDescList,
    localIdx: Uint32Array | ArrayLike<number>,
    remote: PreparedDescList,
    remoteIdx: Uint32Array | ArrayLike<number>,
    options?: { notification?: Uint8Array | string },
  ): TransferRequest {
    options ??= {};
    const fn = "createTransfer";
    const h = this.#native(fn);
    if (op !== "READ" && op !== "WRITE") {
      throw new NixlError(
        Status.ERR_INVALID_PARAM,
        fn,
        `op must be "READ" or "WRITE", got ` +
          JSON.stringify(op),
      );
    }
    const li = toIndices(localIdx, "localIdx");
    const ri = toIndices(remoteIdx, "remoteIdx");
    if (li.length !== ri.length) {
      throw new NixlError(
        Status.ERR_MISMATCH,
        fn,
        `localIdx has ${li.length} indices, remoteIdx ${ri.length}: they pair one to one`,
      );
    }
    this.#checkOwn(local, fn);
    this.#checkOwn(remote, fn);
    const n = options.notification;
    const notif = typeof n === "string" ? encoder.encode(n) : n;
    const peer = remote.remote || this.name;
    const out = OUT_U64;
    const status = this.#lib.symbols.kvp_xfer_create(
      h,
      op === "READ" ? 0 : 1,
      local.handle(fn),
      orNull(li),
      remote.handle(fn),
      orNull(ri),
      BigInt(li.length),
      orNull(notif),
      BigInt(notif?.byteLength ?? 0),
      out,
    );
    if (status !== Status.SUCCESS) {
      check(
        this.#lib,
        status,
        "kvp_xfer_create",
        `${op} of ${li.length} descriptor${li.length === 1 ? "" : "s"} with peer "${peer}"`,
      );
    }
    const bytes = this.#core.metrics ? local.bytesOf(li) : 0;
    const req = new TransferRequest(
      this.#core,
      out[0],
      op,
      peer,
      li.length,
      [li, ri, notif],
      bytes,
      bytes > 0 ? bytes >= NO_SPIN_BYTES : local.holdsAtLeast(li, NO_SPIN_BYTES),
    );
    this.#parts.add(req);
    return req;
  }

  /** Throws unless prepared list `p` is this agent's. */
  #checkOwn(p: PreparedDescList, fn: string): void {
    if (p.core.lib !== this.#lib || p.core.name !== this.name) {
      throw new NixlError(
        Status.ERR_INVALID_PARAM,
        fn,
        `the prepared list belongs to agent "${p.core.name}", not "${this.name}"`,
      );
    }
  }

  /**
   * One transfer: creates the request, posts it, waits up to `timeoutMs` (default
   * 30 s), and always releases it. On timeout the request is cancelled and the promise
   * rejects with a {@linkcode NixlTimeoutError} naming the op, peer, count and timeout;
   * a failed transfer rejects with its {@linkcode NixlError} (e.g.
   * `NIXL_ERR_REMOTE_DISCONNECT` when the peer died). `notification` reaches the peer
   * after all the data.
   *
   * @example
   * ```ts
   * import { NixlAgent, type PreparedDescList } from "@kvport/nixl";
   * declare const agent: NixlAgent;
   * declare const local: PreparedDescList, remote: PreparedDescList;
   * await agent.transfer("WRITE", local, [0, 1, 2], remote, [5, 6, 7], {
   *   notification: "req-42",
   *   timeoutMs: 5000,
   * });
   * ```
   */
  async transfer(
    op: TransferOp,
    local: PreparedDescList,
    localIdx: Uint32Array | ArrayLike<number>,
    remote: PreparedDescList,
    remoteIdx: Uint32Array | ArrayLike<number>,
    options?: TransferOptions,
  ): Promise<void> {
    options ??= {};
    const timeoutMs = checkTimeout(options.timeoutMs ?? 30_000, "transfer");
    options.signal?.throwIfAborted();
    const req = this.createTransfer(op, local, localIdx, remote, remoteIdx, options);
    try {
      if (req.post() === "done") return;
      await req.wait(timeoutMs, options);
    } catch (e) {
      if (e instanceof NixlTimeoutError) {
        req.release(); // cancel before reporting
        throw new NixlTimeoutError(
          { op, peer: req.peer, count: req.count, timeoutMs },
          "the request was cancelled and released",
        );
      }
      throw e;
    } finally {
      req.release();
    }
  }

  /**
   * Sends a notification (bytes or UTF-8 text, at most 64 KiB) to a loaded peer.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * declare const agent: NixlAgent;
   * agent.sendNotification("decoder-0", "kv-ready:42");
   * ```
   */
  sendNotification(remote: string, message: Uint8Array | string): void {
    const h = this.#native("sendNotification");
    const msg = typeof message === "string" ? encoder.encode(message) : message;
    check(
      this.#lib,
      this.#lib.symbols.kvp_notif_send(
        h,
        this.#cName(remote, "remote"),
        orNull(msg),
        BigInt(msg.byteLength),
      ),
      "kvp_notif_send",
      `notifying peer "${remote}"`,
    );
    this.#core.metrics?.notifSent.inc();
  }

  /**
   * Takes every notification queued so far (each is delivered once), oldest first.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * declare const agent: NixlAgent;
   * for (const n of agent.takeNotifications()) {
   *   console.log(n.agent, new TextDecoder().decode(n.message));
   * }
   * ```
   */
  takeNotifications(): Notification[] {
    const h = this.#native("takeNotifications");
    const lib = this.#lib;
    const out: Notification[] = [];
    const len = OUT_U64;
    const count = OUT_U64_B;
    for (;;) {
      const buf = this.#notifBuf ??= new Uint8Array(NOTIF_RECORDS);
      check(
        lib,
        lib.symbols.kvp_notif_take(h, buf, BigInt(buf.byteLength), len, count),
        "kvp_notif_take",
      );
      const n = Number(count[0]);
      const bytes = Number(len[0]);
      if (n === 0) {
        if (bytes <= buf.byteLength) return out; // nothing queued
        this.#notifBuf = new Uint8Array(bytes); // the first record did not fit
        continue;
      }
      this.#core.metrics?.notifReceived.inc(n);
      let at = 0;
      for (let i = 0; i < n; i++) {
        const nameLen = u32le(buf, at);
        const agent = this.#peerName(buf.subarray(at + 4, at + 4 + nameLen));
        at += 4 + nameLen;
        const msgLen = u32le(buf, at);
        out.push({ agent, message: buf.slice(at + 4, at + 4 + msgLen) });
        at += 4 + msgLen;
      }
      // Room for any record was left: nothing else was queued, and a second call would
      // only say so (on the wake path of every notification). Only where records are
      // bounded (the builtin engine); others look again.
      if (this.engine === "builtin" && buf.byteLength - bytes >= MAX_BUILTIN_RECORD) return out;
    }
  }

  /**
   * Calls `handler` with the notifications queued so far at every wake of this agent, in
   * the turn of the wake: no promise, timer or poll between the engine's signal and the
   * handler (a wake with none queued calls nothing). Returns the function that stops it,
   * or `null` where this agent has no wake callback (an ABI-3 library, Deno on the nixl
   * engine, the `"legacy"` wake mode): wait with {@linkcode waitNotifications} there. The
   * callback keeps nothing alive: a process that only listens needs a timer or a wait of
   * its own (the channel's notification pump keeps one). Notifications queued before
   * the call are taken at the next wake (or by {@linkcode takeNotifications}).
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * declare const agent: NixlAgent;
   * const stop = agent.onNotifications((notes) => {
   *   for (const n of notes) console.log(n.agent, n.message.length);
   * });
   * if (stop === null) console.log("no wake callback: use waitNotifications");
   * stop?.();
   * ```
   */
  onNotifications(handler: (notes: Notification[]) => void): (() => void) | null {
    if (this.#closed) return null;
    const events = this.#core.events();
    if (!events) return null;
    return events.onWake(() => {
      if (this.#closed) return;
      let notes: Notification[];
      try {
        notes = this.takeNotifications();
      } catch {
        return; // the agent is going away; the waits see it too
      }
      if (notes.length > 0) handler(notes);
    });
  }

  /** The name in `bytes` (a notification's sender): the last one read is kept, as the
   * next notification is most likely from the same peer (no decoding then). */
  #peerName(bytes: Uint8Array): string {
    const last = this.#lastPeer;
    if (last !== null && last.bytes.length === bytes.length) {
      let same = true;
      for (let i = 0; i < bytes.length; i++) {
        if (last.bytes[i] !== bytes[i]) {
          same = false;
          break;
        }
      }
      if (same) return last.name;
    }
    const name = text(bytes);
    this.#lastPeer = { bytes: bytes.slice(), name };
    return name;
  }

  /**
   * Waits up to `timeoutMs` for at least one notification and takes them all; resolves
   * `[]` when the time runs out (or the signal aborts).
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * declare const agent: NixlAgent;
   * const notes = await agent.waitNotifications(5000);
   * if (notes.length === 0) console.log("nothing within 5 s");
   * ```
   */
  async waitNotifications(timeoutMs?: number, options?: WaitOptions): Promise<Notification[]> {
    timeoutMs ??= 30_000;
    options ??= {};
    checkTimeout(timeoutMs, "waitNotifications");
    const first = this.takeNotifications();
    if (first.length > 0 || timeoutMs === 0) return first;
    const h = this.#native("waitNotifications");
    const signal = options.signal;
    let pending: Notification[] = [];
    const call = new CallMessage(); // the native wait's message, handed back with the call
    // The agent's events where it has them (an abort is no native event, so it wakes
    // them), else Deno's pool-thread wait.
    const events = this.#core.events();
    const nb = events ? null : this.#lib.nonblocking;
    const poke = () => events?.poke();
    signal?.addEventListener("abort", poke, { once: true });
    const waiting = waitStatus(
      () => {
        if (this.#closed) return Status.ERR_CANCELED;
        pending = this.takeNotifications();
        return pending.length > 0 ? Status.SUCCESS : Status.IN_PROG;
      },
      // Slices of at most 250 ms, so that an abort is seen without waking the thread.
      nb && ((ms) =>
        this.#core.track(
          nb.kvp_notif_wait(h, BigInt(Math.min(ms, 250)), call.buf, call.cap, call.len),
        )),
      timeoutMs,
      () => this.#closed || signal?.aborted === true,
      0, // no spinning: notifications are not expected within microseconds
      events,
    );
    // (No signal, nothing to remove: the wait's result is taken without the turns of a
    // `finally`, which every notification would pay for.)
    const status = signal
      ? await waiting.finally(() => signal.removeEventListener("abort", poke))
      : await waiting;
    if (pending.length > 0) return pending;
    if (status === Status.SUCCESS && !this.#closed) return this.takeNotifications();
    if (status < 0 && status !== Status.ERR_CANCELED) {
      // Only the native wait returns an error here; it ran on another thread.
      throw new NixlError(status, "kvp_notif_wait", call.text());
    }
    return [];
  }

  /**
   * Releases everything (requests, prepared lists, registrations, peers), destroys the
   * native agent, waits for native waits to return, and frees the buffers it allocated.
   * Idempotent; pending transfers reject with `NIXL_ERR_CANCELED`.
   *
   * @example
   * ```ts
   * import { NixlAgent } from "@kvport/nixl";
   * const agent = await NixlAgent.create({ name: "a", engine: "builtin" });
   * await agent.close();
   * await agent.close(); // no-op
   * ```
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const errors: unknown[] = [];
    const attempt = (f: () => void) => {
      try {
        f();
      } catch (e) {
        errors.push(e);
      }
    };
    // Requests first (they use lists), then lists, then registrations, then peers.
    const parts = [...this.#parts];
    const order = [TransferRequest, PreparedDescList, PageGrant, Registration];
    for (const kind of order) {
      if (kind === PageGrant) {
        // One native call (one rebuild of the grant table) for every grant still held.
        const grants = parts.filter((p): p is PageGrant => p instanceof PageGrant);
        if (grants.length > 0) attempt(() => PageGrant.revokeAll(grants));
        continue;
      }
      for (const p of parts) if (p instanceof kind) attempt(() => p.release());
    }
    for (const name of [...this.#remotes]) attempt(() => this.invalidateRemoteAgent(name));
    await this.#metricsSource.retire(); // the engine's counters, read before they are gone
    this.#closed = true;
    attempt(() =>
      check(this.#lib, this.#lib.symbols.kvp_agent_destroy(this.#handle), "kvp_agent_destroy")
    );
    await Promise.allSettled([...this.#inflight]);
    await this.#events?.close();
    for (const p of this.#parts) attempt(() => p.release());
    this.#parts.clear();
    for (const b of [...this.#buffers]) attempt(() => b.free());
    if (errors.length > 0) {
      throw errors.length === 1
        ? errors[0]
        : new AggregateError(errors, `closing agent "${this.name}": ${errors.length} errors`);
    }
  }

  /** Same as {@linkcode NixlAgent.close} (`await using agent = ...`). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Facts about the loaded shim. */
export interface NativeLibraryInfo {
  /** Absolute path of `libkvport.so`. */
  path: string;
  /** Its ABI version. */
  abiVersion: number;
  /** `"deno"` or `"bun"`. */
  runtime: string;
  /** The runtime and its version, e.g. `"Deno 2.9.6"`. */
  runtimeVersion: string;
}

/**
 * Loads the shim (if not yet) and tells which file it is.
 *
 * @example
 * ```ts
 * import { nativeLibrary } from "@kvport/nixl";
 * const info = await nativeLibrary();
 * console.log(info.path, info.abiVersion);
 * ```
 */
export async function nativeLibrary(options?: LibraryOptions): Promise<NativeLibraryInfo> {
  options ??= {};
  const lib = await library(options);
  return {
    path: lib.path,
    abiVersion: lib.abiVersion,
    runtime: currentRuntime(),
    runtimeVersion: runtimeVersion(),
  };
}

/**
 * The engines compiled into the shim: `["builtin"]` or `["builtin", "nixl"]`.
 *
 * @example
 * ```ts
 * import { engines } from "@kvport/nixl";
 * console.log(await engines());
 * ```
 */
export async function engines(options?: LibraryOptions): Promise<string[]> {
  options ??= {};
  const lib = await library(options);
  return text(sizedOut(lib, "kvp_engines", (b, c, l) => lib.symbols.kvp_engines(b, c, l)))
    .split(",").filter((s) => s);
}

/** What {@linkcode probeEngine} reports. */
export interface EngineProbe {
  /** The engine asked for. */
  engine: string;
  /** Whether it can create agents here. */
  available: boolean;
  /** Why not (or a note), `""` when none. */
  reason: string;
  /** Backends it serves, e.g. `["UCX", "TCP", "POSIX"]`. */
  plugins: string[];
  /** Paths looked at for NIXL. */
  searched: string[];
  /** Version of the engine (NIXL's version for "nixl"). */
  version: string;
  /** Every key the shim reported. */
  raw: Record<string, string>;
}

/**
 * Asks the shim about an engine (`"builtin"`, `"nixl"`, `"auto"`): available or why
 * not, the backends it serves, where NIXL was searched for.
 *
 * @example
 * ```ts
 * import { probeEngine } from "@kvport/nixl";
 * const nixl = await probeEngine("nixl");
 * if (!nixl.available) console.log("NIXL not found:", nixl.reason, nixl.searched);
 * ```
 */
export async function probeEngine(
  engine: EngineName | string,
  options?: LibraryOptions,
): Promise<EngineProbe> {
  options ??= {};
  const lib = await library(options);
  const name = cString(engine, "engine");
  const raw = parseKeyValues(
    text(
      sizedOut(lib, "kvp_engine_probe", (b, c, l) => lib.symbols.kvp_engine_probe(name, b, c, l)),
    ),
  );
  const list = (v: string | undefined) => (v ? v.split(/[,:]/).filter((s) => s) : []);
  return {
    engine,
    available: raw.available === "1",
    reason: raw.reason ?? "",
    plugins: list(raw.plugins),
    searched: raw.searched ? raw.searched.split(",").filter((s) => s) : [],
    version: raw.version ?? "",
    raw,
  };
}

/** CUDA devices, and why there are none. */
export interface CudaInfo {
  /** Number of CUDA devices (0 without CUDA or GPU). */
  count: number;
  /** Why there are none (what was tried), `""` when there are some. */
  reason: string;
}

/**
 * CUDA devices visible to the shim, with the reason when there are none.
 *
 * @example
 * ```ts
 * import { cudaDevices } from "@kvport/nixl";
 * const { count, reason } = await cudaDevices();
 * console.log(count > 0 ? `${count} GPU(s)` : `no GPU: ${reason}`);
 * ```
 */
export async function cudaDevices(options?: LibraryOptions): Promise<CudaInfo> {
  options ??= {};
  const lib = await library(options);
  const status = lib.symbols.kvp_cuda_device_count(OUT_I32);
  const count = OUT_I32[0];
  if (status === Status.SUCCESS) return { count, reason: count > 0 ? "" : "no CUDA device" };
  return { count: 0, reason: lastError(lib) || `status ${status}` };
}

/**
 * Number of CUDA devices visible to the shim (0 without CUDA or GPU).
 *
 * @example
 * ```ts
 * import { cudaDeviceCount } from "@kvport/nixl";
 * if ((await cudaDeviceCount()) === 0) console.log("DRAM only");
 * ```
 */
export async function cudaDeviceCount(options?: LibraryOptions): Promise<number> {
  options ??= {};
  return (await cudaDevices(options)).count;
}
