/**
 * `createTransferChannel`: LMCache's `CreateTransferChannel` with options by name.
 *
 * @module
 */

import type { SideChannelCurve } from "./curve_config.ts";
import { TRANSFER_CHANNELS } from "../config/mod.ts";
import { ChannelError } from "./errors.ts";
import { MockMemoryChannel } from "./mock_memory.ts";
import { NixlChannel } from "./nixl.ts";
import type { ChannelRole, TransferChannel } from "./types.ts";
import type { BufferDevice } from "./page.ts";
import type { MetricsRegistry } from "../metrics/registry.ts";

/** Options of {@linkcode createTransferChannel}. */
export interface CreateTransferChannelOptions {
  /** `"nixl"` or `"mock_memory"`; anything else is refused. */
  channelType: string;
  /** `"sender"`, `"receiver"` or `"both"`. */
  role: ChannelRole;
  /** Bytes of the page buffer the channel allocates; aligned down to `alignBytes`. */
  bufferSize: number;
  /** Bytes per page: one full KV chunk. */
  alignBytes: number;
  /** Tensor-parallel rank (the device ordinal of a GPU buffer). */
  tpRank: number;
  /** `host:port` to answer handshakes on (port 0: any free port), or null for none. */
  peerInitUrl: string | null;
  /**
   * NIXL backends (`["UCX"]`, `["TCP"]`, ...). Required for `"nixl"`, as in LMCache;
   * an explicit `null`/`undefined` value means `["UCX"]`.
   */
  backends?: readonly string[] | null;
  /** Where the buffer lives: `"cpu"` (default), `"cuda"`, `"cuda:N"`. */
  device?: string | null;
  /** `"auto"` (default), `"builtin"` or `"nixl"`. */
  engine?: "auto" | "builtin" | "nixl";
  /** Id peers store this channel under (default: the agent name). */
  localId?: string;
  /** Deadline of a handshake, ms (default 10000). */
  handshakeTimeoutMs?: number;
  /** Deadline of a transfer, ms (default 30000). */
  transferTimeoutMs?: number;
  /** Path of libkvport.so (default: looked up by the agent). */
  libraryPath?: string;
  /** Extra agent parameters (`listen_host`, `advertise_host`, ...). */
  agentParams?: Readonly<Record<string, string>>;
  /**
   * `"nixl"` only: enforce page grants (default false; see `NixlChannel`'s `pageGrants`).
   * The PD and P2P classes turn it on (config `extra_config.kvport_page_grants`).
   */
  pageGrants?: boolean;
  /** Ignored: every channel is asynchronous. Kept for LMCache's signature. */
  asyncMode?: boolean;
  /** Registry the channel is counted in (default: `metricsRegistry()`). */
  metrics?: MetricsRegistry;
  /** CURVE on the handshake side channel: server keys to listen, client keys to connect. */
  curve?: SideChannelCurve;
}

/**
 * Checks the page and buffer sizes a PD or P2P class was given, in that class's terms
 * (`pageSize`, `bufferSize`), before the channel underneath would name them as LMCache's
 * `alignBytes` does.
 *
 * @example
 * ```ts
 * import { checkBufferSizes } from "./factory.ts";
 * checkBufferSizes(1 << 20, 64 << 20); // fine
 * try {
 *   checkBufferSizes(0, 64 << 20);
 * } catch (e) {
 *   console.log((e as Error).message); // pageSize must be a positive integer ...
 * }
 * ```
 */
export function checkBufferSizes(pageSize: number, bufferSize: number): void {
  if (!Number.isSafeInteger(pageSize) || pageSize <= 0) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `pageSize must be a positive integer of bytes (one KV chunk), got ${pageSize}`,
    );
  }
  if (!Number.isSafeInteger(bufferSize) || bufferSize <= 0) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `bufferSize must be a positive integer of bytes, got ${bufferSize}`,
    );
  }
  if (bufferSize < pageSize) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `bufferSize ${bufferSize} is smaller than one page (pageSize ${pageSize}): give at ` +
        `least ${pageSize} bytes`,
    );
  }
}

/** The share of a buffer left over by aligning down that is worth a warning. */
const UNUSED_WARNING_SHARE = 0.1;

/**
 * Pages of a buffer: `bufferSize` aligned down to `alignBytes` (as LMCache's PD does),
 * with a warning only when a tenth or more of the buffer is left over (LMCache's own
 * 2 GB buffer of 28 MiB chunks leaves 0.2%: no warning).
 *
 * @example
 * ```ts
 * import { alignBuffer } from "./factory.ts";
 * console.log(alignBuffer(10_000, 4096)); // { pageCount: 2, warnings: ["the buffer of 10000 bytes ..."] }
 * console.log(alignBuffer(2 ** 31, 28 << 20).warnings); // []
 * ```
 */
export function alignBuffer(
  bufferSize: number,
  alignBytes: number,
): { pageCount: number; warnings: string[] } {
  if (!Number.isSafeInteger(alignBytes) || alignBytes <= 0) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `alignBytes must be a positive integer (the bytes of one KV chunk), got ${alignBytes}`,
    );
  }
  if (!Number.isSafeInteger(bufferSize) || bufferSize <= 0) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `bufferSize must be a positive integer of bytes, got ${bufferSize}`,
    );
  }
  const pageCount = Math.floor(bufferSize / alignBytes);
  if (pageCount === 0) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `bufferSize ${bufferSize} is smaller than one page of ${alignBytes} bytes: ` +
        `give at least ${alignBytes} bytes`,
    );
  }
  // Aligning down is what LMCache does, silently; only the remainder is not allocated,
  // so it costs nothing unless it is a real share of what was asked for: then the
  // buffer holds noticeably fewer chunks than it was sized for, which is worth a line.
  const warnings: string[] = [];
  const unused = bufferSize - pageCount * alignBytes;
  if (unused >= bufferSize * UNUSED_WARNING_SHARE) {
    warnings.push(
      `the buffer of ${bufferSize} bytes holds ${pageCount} whole page(s) of ${alignBytes} ` +
        `bytes: ${unused} bytes (${Math.round((100 * unused) / bufferSize)}%) of it stay ` +
        "unused; size the buffer as a multiple of the page",
    );
  }
  return { pageCount, warnings };
}

/**
 * Creates a transfer channel (LMCache's `CreateTransferChannel`).
 *
 * - `"nixl"`: a {@linkcode NixlChannel} over a `NixlAgent` (engine `auto`: NIXL when
 *   installed, else the built-in engine, which serves `UCX` with shared memory on one
 *   host and TCP between hosts).
 * - `"mock_memory"`: a {@linkcode MockMemoryChannel}, same handshake, data copied within
 *   the process: for tests.
 *
 * @example
 * ```ts
 * import { createTransferChannel } from "@kvport/nixl";
 *
 * await using ch = await createTransferChannel({
 *   channelType: "nixl", role: "receiver", bufferSize: 64 << 20, alignBytes: 1 << 20,
 *   tpRank: 0, peerInitUrl: "127.0.0.1:7300", backends: ["UCX"],
 * });
 * console.log(ch.engine, ch.pageCount, ch.initUrl);
 * ```
 */
export async function createTransferChannel(
  options: CreateTransferChannelOptions,
): Promise<TransferChannel> {
  const type = options.channelType;
  if (!(TRANSFER_CHANNELS as readonly string[]).includes(type)) {
    throw new ChannelError(
      "UNSUPPORTED_CHANNEL_TYPE",
      `Unsupported channel type: ${type} (supported: ${TRANSFER_CHANNELS.join(", ")})`,
    );
  }
  if (!["sender", "receiver", "both"].includes(options.role)) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `role must be "sender", "receiver" or "both", got ${JSON.stringify(options.role)}`,
    );
  }
  const { pageCount, warnings } = alignBuffer(options.bufferSize, options.alignBytes);
  const device = parseDevice(options.device, options.tpRank);
  if (type === "nixl") {
    if (!("backends" in options)) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        "`backends` must be provided to create nixl transfer channel.",
      );
    }
    return await NixlChannel.create({
      role: options.role,
      pageSize: options.alignBytes,
      pageCount,
      warnings,
      backends: options.backends ?? ["UCX"],
      device,
      engine: options.engine ?? "auto",
      localId: options.localId,
      peerInitUrl: options.peerInitUrl,
      handshakeTimeoutMs: options.handshakeTimeoutMs,
      transferTimeoutMs: options.transferTimeoutMs,
      libraryPath: options.libraryPath,
      agentParams: options.agentParams,
      pageGrants: options.pageGrants,
      metrics: options.metrics,
      curve: options.curve,
    });
  }
  if (device.kind === "cuda") {
    throw new ChannelError(
      "DEVICE_UNAVAILABLE",
      `mock_memory keeps pages in host memory; device ${JSON.stringify(options.device)} is ` +
        'not supported: use device "cpu"',
    );
  }
  return await MockMemoryChannel.create({
    role: options.role,
    pageSize: options.alignBytes,
    pageCount,
    warnings,
    localId: options.localId,
    peerInitUrl: options.peerInitUrl,
    handshakeTimeoutMs: options.handshakeTimeoutMs,
    transferTimeoutMs: options.transferTimeoutMs,
    metrics: options.metrics,
    curve: options.curve,
  });
}

export type { BufferDevice } from "./page.ts";

/**
 * Parses `cpu`, `cuda`, `cuda:N` (`cuda` alone: the TP rank's device, as LMCache).
 *
 * @example
 * ```ts
 * import { parseDevice } from "@kvport/nixl";
 * console.log(parseDevice("cuda", 1)); // { kind: "cuda", ordinal: 1 }
 * ```
 */
export function parseDevice(device: string | null | undefined, tpRank: number): BufferDevice {
  if (device === undefined || device === null || device === "cpu") return { kind: "cpu" };
  const m = /^cuda(?::(\d+))?$/.exec(device);
  if (!m) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `device must be "cpu", "cuda" or "cuda:N", got ${JSON.stringify(device)}`,
    );
  }
  return { kind: "cuda", ordinal: m[1] === undefined ? tpRank : Number(m[1]) };
}
