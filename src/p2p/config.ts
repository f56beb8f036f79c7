/**
 * The configuration keys P2P reads, and their mapping to {@linkcode P2PBackendOptions}.
 *
 * @module
 */

import { sideChannelCurveFromConfig } from "../channel/curve_config.ts";
import { agentParamsOf } from "../channel/agent_params.ts";
import { ChannelError } from "../channel/errors.ts";
import type { P2PBackendOptions } from "./backend.ts";

/** The configuration keys {@linkcode P2PBackend.fromConfig} reads (a `KvportConfig` has all). */
export interface P2PConfigLike {
  /** P2P on (informational: `fromConfig` works without it). */
  readonly enable_p2p?: boolean;
  /** Host the P2P ports listen on and peers reach. */
  readonly p2p_host: string | null;
  /** Handshake port per TP rank. */
  readonly p2p_init_ports: readonly number[] | null;
  /** Lookup port per TP rank. */
  readonly p2p_lookup_ports: readonly number[] | null;
  /** This instance's id at the registry. */
  readonly lmcache_instance_id: string | null;
  /** Where reports are pushed. */
  readonly controller_pull_url: string | null;
  /** Where lookups are asked. */
  readonly controller_reply_url: string | null;
  /** Worker port per TP rank (reported in RegisterMsg). */
  readonly lmcache_worker_ports?: readonly number[] | null;
  /** Heartbeat period, seconds (null: 10 s). */
  readonly lmcache_worker_heartbeat_time?: number | null;
  /** Delay before the first heartbeat, seconds. */
  readonly lmcache_worker_heartbeat_delay_time?: number;
  /** `nixl` or `mock_memory`. */
  readonly transfer_channel: string | null;
  /** NIXL backends (null: UCX). */
  readonly nixl_backends: readonly string[] | null;
  /** Where the buffer lives (P2P takes it from the NIXL buffer device, as LMCache). */
  readonly nixl_buffer_device?: string | null;
  /** Local CPU cache size, GB: the P2P page buffer, as LMCache shares that buffer. */
  readonly max_local_cpu_size?: number;
  /** `p2p_socket_recv_timeout_ms`, `p2p_socket_send_timeout_ms`, `p2p_max_retry_count`. */
  readonly extra_config?: {
    readonly p2p_socket_recv_timeout_ms?: number;
    readonly p2p_socket_send_timeout_ms?: number;
    readonly p2p_max_retry_count?: number;
    readonly kvport_agent_params?: Readonly<Record<string, string>>;
    readonly kvport_page_grants?: boolean;
    readonly [key: string]: unknown;
  } | null;
}

function need<T>(value: T | null | undefined, key: string): T {
  if (value === null || value === undefined || value === "") {
    throw new ChannelError("INVALID_ARGUMENT", `a P2P instance needs ${key} (it is not set)`);
  }
  return value;
}

function portOf(list: readonly number[] | null | undefined, key: string, tpRank: number): number {
  const ports = need(list, key);
  if (tpRank >= ports.length) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `${key} has ${ports.length} port(s) but TP rank ${tpRank} needs index ${tpRank}: ` +
        "give one port per TP rank",
    );
  }
  return ports[tpRank];
}

/** Backend options from a configuration, for `tpRank` (everything but `pageSize`). */
export function p2pOptionsFromConfig(
  config: P2PConfigLike,
  tpRank: number,
): Omit<P2PBackendOptions, "pageSize"> {
  const channelType = config.transfer_channel ?? "nixl";
  if (channelType !== "nixl" && channelType !== "mock_memory") {
    throw new ChannelError(
      "UNSUPPORTED_CHANNEL_TYPE",
      `Unsupported channel type: ${channelType} (supported: nixl, mock_memory)`,
    );
  }
  const device = config.nixl_buffer_device ?? "cpu";
  if (device !== "cpu") {
    throw new ChannelError(
      "DEVICE_UNAVAILABLE",
      `P2P keeps its chunks in host memory; nixl_buffer_device ${JSON.stringify(device)} ` +
        'is not supported yet: use "cpu"',
    );
  }
  const host = need(config.p2p_host, "p2p_host");
  const extra = config.extra_config ?? {};
  const beatS = config.lmcache_worker_heartbeat_time ?? 10;
  const workerPorts = config.lmcache_worker_ports;
  return {
    instanceId: need(config.lmcache_instance_id, "lmcache_instance_id"),
    tpRank,
    host,
    initPort: portOf(config.p2p_init_ports, "p2p_init_ports", tpRank),
    lookupPort: portOf(config.p2p_lookup_ports, "p2p_lookup_ports", tpRank),
    bufferSize: Math.floor((config.max_local_cpu_size ?? 5) * 2 ** 30),
    channelType,
    backends: config.nixl_backends,
    device,
    registryPullUrl: need(config.controller_pull_url, "controller_pull_url"),
    registryReplyUrl: need(config.controller_reply_url, "controller_reply_url"),
    workerIp: host,
    workerPort: workerPorts && tpRank < workerPorts.length ? workerPorts[tpRank] : 0,
    heartbeatIntervalMs: beatS * 1000,
    heartbeatDelayMs: (config.lmcache_worker_heartbeat_delay_time ?? 10) * 1000,
    lookupRecvTimeoutMs: extra.p2p_socket_recv_timeout_ms ?? 30_000,
    lookupSendTimeoutMs: extra.p2p_socket_send_timeout_ms ?? 10_000,
    maxRetryCount: extra.p2p_max_retry_count ?? 3,
    curve: sideChannelCurveFromConfig(extra, { listen: true, connect: true }),
    ...agentParamsOf(extra.kvport_agent_params),
    pageGrants: extra.kvport_page_grants ?? true,
  };
}
