/**
 * Channel settings of the PD classes and their mapping from a loaded configuration.
 *
 * @module
 */

import { ChannelError } from "../channel/errors.ts";
import type { MetricsRegistry } from "../metrics/registry.ts";
import {
  type CurveConfigLike,
  type SideChannelCurve,
  sideChannelCurveFromConfig,
} from "../channel/curve_config.ts";
import { agentParamsOf } from "../channel/agent_params.ts";

/** Channel settings shared by {@linkcode PdSender} and {@linkcode PdReceiver}. */
export interface PdChannelSettings {
  /** `pd_buffer_size`: bytes of the page buffer (aligned down to `pageSize`). */
  bufferSize: number;
  /** Bytes of one full KV chunk: the page size (LMCache's `align_bytes`). */
  pageSize: number;
  /** Tensor-parallel rank (default 0). */
  tpRank?: number;
  /** `transfer_channel`: `"nixl"` (default) or `"mock_memory"`. */
  channelType?: "nixl" | "mock_memory";
  /** `nixl_backends` (null: `["UCX"]`). */
  backends?: readonly string[] | null;
  /** `pd_buffer_device`: `"cpu"` (default), `"cuda"`, `"cuda:N"`. */
  device?: string | null;
  /** Engine of the NIXL channel: `"auto"` (default), `"builtin"`, `"nixl"`. */
  engine?: "auto" | "builtin" | "nixl";
  /** Handshake deadline, ms. */
  handshakeTimeoutMs?: number;
  /** Transfer deadline, ms. */
  transferTimeoutMs?: number;
  /** Path of libkvport.so. */
  libraryPath?: string;
  /** Extra agent parameters. */
  agentParams?: Readonly<Record<string, string>>;
  /**
   * Enforce page grants on the channel (default true; `extra_config.kvport_page_grants`):
   * a receiver's peers reach only the pages of their own `AllocResponse`, a sender's none.
   * Enforced by the builtin engine; the nixl engine cannot (the channel warns).
   */
  pageGrants?: boolean;
  /** Registry this side and its channel are counted in (default: `metricsRegistry()`). */
  metrics?: MetricsRegistry;
  /**
   * CURVE on the side channels (handshake and allocation): the receiver listens with
   * `server`, the sender connects with `client`. Default NULL, as LMCache.
   */
  curve?: SideChannelCurve;
}

/** The configuration keys the PD classes read (a `KvportConfig` has them all). */
export interface PdConfigLike {
  /** PD on. */
  readonly enable_pd?: boolean;
  /** `sender`, `receiver` or `both`. */
  readonly pd_role?: string | null;
  /** Bytes of the page buffer. */
  readonly pd_buffer_size: number | null;
  /** `cpu`, `cuda` or `cuda:N`. */
  readonly pd_buffer_device: string | null;
  /** The decoder's host. */
  readonly pd_peer_host: string | null;
  /** Handshake port per TP rank. */
  readonly pd_peer_init_port: readonly number[] | null;
  /** Allocation port per TP rank. */
  readonly pd_peer_alloc_port: readonly number[] | null;
  /** The proxy's host. */
  readonly pd_proxy_host: string | null;
  /** The proxy's port. */
  readonly pd_proxy_port: number | null;
  /** Sender: do not notify a proxy. */
  readonly pd_skip_proxy_notification?: boolean;
  /** Longest wait for free pages, seconds. */
  readonly pd_allocation_timeout_sec?: number;
  /** `nixl` or `mock_memory`. */
  readonly transfer_channel: string | null;
  /** NIXL backends (null: UCX). */
  readonly nixl_backends: readonly string[] | null;
  /** Tokens per full chunk. */
  readonly chunk_size: number;
  /**
   * `curve_*` entries (CURVE on the side channels), `kvport_agent_params`, and
   * `kvport_page_grants` (default true), the page-credit limits `kvport_pd_credit_pages`
   * (sender), `kvport_pd_credit_max` and `kvport_pd_credit_total` (receiver).
   */
  readonly extra_config?:
    | (CurveConfigLike & {
      readonly kvport_agent_params?: Readonly<Record<string, string>>;
      readonly kvport_page_grants?: boolean;
      readonly kvport_pd_credit_pages?: number;
      readonly kvport_pd_credit_max?: number;
      readonly kvport_pd_credit_total?: number | null;
    })
    | null;
}

/** Channel settings from a configuration, for `role` at `tpRank`. */
export function pdChannelSettingsFromConfig(
  config: PdConfigLike,
  role: "sender" | "receiver",
  tpRank: number,
): Omit<PdChannelSettings, "pageSize"> {
  if (config.pd_role && config.pd_role !== role && config.pd_role !== "both") {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `this configuration has pd_role "${config.pd_role}", not "${role}"`,
    );
  }
  if (config.pd_buffer_size === null || config.pd_buffer_size === undefined) {
    throw new ChannelError("INVALID_ARGUMENT", `a PD ${role} needs pd_buffer_size`);
  }
  const channelType = config.transfer_channel ?? "nixl";
  if (channelType !== "nixl" && channelType !== "mock_memory") {
    throw new ChannelError(
      "UNSUPPORTED_CHANNEL_TYPE",
      `Unsupported channel type: ${channelType} (supported: nixl, mock_memory)`,
    );
  }
  return {
    bufferSize: config.pd_buffer_size,
    tpRank,
    channelType,
    backends: config.nixl_backends,
    device: config.pd_buffer_device ?? "cpu",
    ...agentParamsOf(config.extra_config?.kvport_agent_params),
    curve: sideChannelCurveFromConfig(config.extra_config, {
      listen: role === "receiver",
      connect: role === "sender",
    }),
    pageGrants: config.extra_config?.kvport_page_grants ?? true,
  };
}

/** A sender's deadline for one AllocRequest round trip when none is configured, ms. */
export const DEFAULT_PD_ALLOC_TIMEOUT_MS = 30_000;

/** Share of the sender's round trip a receiver may spend waiting for free pages. */
const RECEIVER_WAIT_SHARE = 0.8;

/**
 * The two allocation deadlines, derived from one setting so that a receiver always
 * gives up before its sender does: a receiver that found pages after the sender stopped
 * waiting would hold them for a reply nobody reads (and LMCache's sender sends no
 * CancelNotif then). `allocTimeoutMs` is the sender's round trip (`Infinity` or
 * undefined: {@linkcode DEFAULT_PD_ALLOC_TIMEOUT_MS}: every wait has a limit); the
 * receiver waits 80% of it for free pages, leaving the rest for the reply's way back.
 *
 * @example
 * ```ts
 * import { pdAllocDeadlines } from "./config.ts";
 * console.log(pdAllocDeadlines(10_000)); // { senderMs: 10000, receiverWaitMs: 8000 }
 * ```
 */
export function pdAllocDeadlines(
  allocTimeoutMs?: number,
): { senderMs: number; receiverWaitMs: number } {
  const senderMs = allocTimeoutMs === undefined || !Number.isFinite(allocTimeoutMs)
    ? DEFAULT_PD_ALLOC_TIMEOUT_MS
    : allocTimeoutMs;
  if (!(senderMs > 0)) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `the allocation timeout (pd_allocation_timeout_sec) must be > 0, got ${senderMs} ms`,
    );
  }
  return { senderMs, receiverWaitMs: Math.floor(senderMs * RECEIVER_WAIT_SHARE) };
}

/** `pd_allocation_timeout_sec` in ms for {@linkcode pdAllocDeadlines} (undefined: unset/inf). */
export function pdAllocTimeoutFromConfig(config: PdConfigLike): number | undefined {
  const secs = config.pd_allocation_timeout_sec;
  return secs === undefined || !Number.isFinite(secs) ? undefined : secs * 1000;
}
