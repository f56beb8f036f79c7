/**
 * Deprecated key names, LMCache keys kvport does not use, and retired keys.
 *
 * @module
 */

/**
 * A deprecated key name and the key that replaced it.
 *
 * @example
 * ```ts
 * import { CONFIG_ALIASES } from "@kvport/nixl/config";
 * const a = CONFIG_ALIASES.find((a) => a.from === "nixl_role");
 * console.log(a?.to); // "pd_role"
 * ```
 */
export interface ConfigAlias {
  /** The deprecated name. */
  readonly from: string;
  /** The current name. */
  readonly to: string;
  /**
   * `true` when the old name is also a key of its own and only maps under a rule
   * (`nixl_buffer_size`: see {@link NIXL_BUFFER_SIZE_RULE}).
   */
  readonly conditional: boolean;
}

/**
 * Every deprecated name kvport maps, as LMCache lists them (`_CONFIG_ALIASES` and
 * `_DEPRECATED_CONFIGS`), limited to the keys kvport knows. (`nixl_peer_port` is not one:
 * current LMCache deprecates it for `nixl_receiver_port`, which it no longer defines, and
 * reads neither; both are in {@link RETIRED_KEYS}.)
 *
 * @example
 * ```ts
 * import { CONFIG_ALIASES } from "@kvport/nixl/config";
 * for (const a of CONFIG_ALIASES) console.log(`${a.from} -> ${a.to}`);
 * ```
 */
export const CONFIG_ALIASES: readonly ConfigAlias[] = Object.freeze([
  { from: "nixl_peer_host", to: "pd_peer_host", conditional: false },
  { from: "nixl_peer_init_port", to: "pd_peer_init_port", conditional: false },
  { from: "nixl_peer_alloc_port", to: "pd_peer_alloc_port", conditional: false },
  { from: "nixl_proxy_host", to: "pd_proxy_host", conditional: false },
  { from: "nixl_proxy_port", to: "pd_proxy_port", conditional: false },
  { from: "nixl_buffer_size", to: "pd_buffer_size", conditional: true },
  { from: "nixl_role", to: "pd_role", conditional: false },
  { from: "enable_xpyd", to: "enable_pd", conditional: false },
  { from: "controller_url", to: "controller_pull_url", conditional: false },
  { from: "lmcache_worker_port", to: "lmcache_worker_ports", conditional: false },
].map((a) => Object.freeze(a)));

/**
 * How `nixl_buffer_size` resolves, in words (it is both the NIXL storage buffer size and
 * the deprecated name of `pd_buffer_size`). Shown in the README and `--help`.
 *
 * @example
 * ```ts
 * import { NIXL_BUFFER_SIZE_RULE } from "@kvport/nixl/config";
 * console.log(NIXL_BUFFER_SIZE_RULE);
 * ```
 */
export const NIXL_BUFFER_SIZE_RULE: string =
  "`nixl_buffer_size` is always the NIXL storage buffer size. When `enable_pd` is true " +
  "and `pd_buffer_size` is not set, it also fills `pd_buffer_size`, with a deprecation " +
  "warning (old PD configs used that name). When PD and NIXL storage " +
  "(`extra_config.enable_nixl_storage`) are both on, `pd_buffer_size` must be given " +
  "explicitly: `nixl_buffer_size` alone is an error, since one value cannot size both " +
  "buffers. With PD on, storage off and both keys set to different values, " +
  "`pd_buffer_size` wins and `nixl_buffer_size` is reported unused.";

/** Lookup: deprecated name -> alias entry. */
export const ALIAS_BY_NAME: ReadonlyMap<string, ConfigAlias> = new Map(
  CONFIG_ALIASES.map((a) => [a.from, a]),
);

/**
 * LMCache configuration keys that kvport accepts and ignores (they configure parts of
 * LMCache kvport does not implement), so a file shared with LMCache loads with an
 * `ignored_key` warning instead of an `unknown_key` one.
 */
export const LMCACHE_ONLY_KEYS: ReadonlySet<string> = new Set([
  "reserve_local_cpu_size",
  "local_disk",
  "local_disk_path_sharding",
  "max_local_disk_size",
  "remote_url",
  "remote_serde",
  "use_layerwise",
  "save_decode_cache",
  "pre_caching_hash_algorithm",
  "enable_blending",
  "blend_recompute_ratios",
  "blend_thresholds",
  "blend_check_layers",
  "blend_min_tokens",
  "blend_special_str",
  "retrieve_locations",
  "store_location",
  "mp_host",
  "mp_port",
  "pd_condition_poll_interval_sec",
  "pd_pull_mode",
  "pd_delay_pull",
  "gds_path",
  "gds_path_sharding",
  "gds_buffer_size",
  "maru_path",
  "maru_pool_size",
  "use_gds",
  "gds_backend",
  "audit_actual_remote_url",
  "internal_api_server_host",
  "internal_api_server_enabled",
  "internal_api_server_port_start",
  "internal_api_server_include_index_list",
  "internal_api_server_socket_path_prefix",
  "blocking_timeout_secs",
  "external_lookup_client",
  "py_enable_gc",
  "cache_policy",
  "cost_aware_half_life_seconds",
  "cost_aware_ewma_alpha",
  "numa_mode",
  "enable_async_loading",
  "priority_limit",
  "runtime_plugin_locations",
  "plugin_locations",
  "storage_plugins",
  "external_backends",
  "remote_storage_plugins",
  "lookup_timeout_ms",
  "min_retrieve_tokens",
  "hit_miss_ratio",
  "lookup_server_worker_ids",
  "enable_scheduler_bypass_lookup",
  "script_allowed_imports",
  "enable_lazy_memory_allocator",
  "lazy_memory_initial_ratio",
  "lazy_memory_expand_trigger_ratio",
  "lazy_memory_step_ratio",
  "lazy_memory_safe_size",
  "enable_chunk_statistics",
  "chunk_statistics_auto_start_statistics",
  "chunk_statistics_auto_exit_timeout_hours",
  "chunk_statistics_auto_exit_target_unique_chunks",
  "chunk_statistics_strategy",
  "enable_kv_events",
  "use_gpu_connector_v3",
  "pin_timeout_sec",
  "pin_check_interval_sec",
  "remote_config_url",
  "app_id",
  "enable_hidden_state_cache",
  "max_hidden_state_cpu_size",
  "hidden_state_layers",
  "hidden_states_retrieve_mode",
]);

/**
 * Keys of LMCache's first NIXL connector that no longer exist and have no alias, with
 * what to write instead.
 */
export const RETIRED_KEYS: ReadonlyMap<string, string> = new Map([
  ["enable_nixl", "use enable_pd: true with pd_role (or extra_config.enable_nixl_storage)"],
  ["nixl_receiver_host", "use pd_peer_host"],
  ["nixl_enable_gc", "remove it; it has no effect"],
  [
    "nixl_peer_port",
    "current LMCache only warns that it is deprecated for nixl_receiver_port and reads " +
    "neither; the NIXL channel's ports are pd_peer_init_port (PD) and p2p_init_ports (P2P)",
  ],
  [
    "nixl_receiver_port",
    "current LMCache no longer defines it; the NIXL channel's ports are pd_peer_init_port " +
    "(PD) and p2p_init_ports (P2P)",
  ],
]);

/**
 * LMCACHE_* environment variables that are not configuration keys (LMCache reads them
 * elsewhere); never reported as unknown.
 */
export const NON_KEY_ENV: ReadonlySet<string> = new Set([
  "LMCACHE_CONFIG_FILE",
  "LMCACHE_USE_EXPERIMENTAL",
  "LMCACHE_LOG_LEVEL",
  "LMCACHE_TRACK_USAGE",
]);
