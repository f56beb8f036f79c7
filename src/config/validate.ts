/**
 * The rules across keys that LMCache checks with bare asserts, as messages: what PD,
 * P2P, the controller and NIXL storage each need, and the `nixl_buffer_size` rule.
 *
 * @module
 */
import { ALIAS_BY_NAME } from "./aliases.ts";
import type { ConfigIssue, ConfigSource, ConfigWarning } from "./errors.ts";
import { formatValue } from "./format.ts";
import { KEY_BY_NAME } from "./keys.ts";
import {
  FILE_STORAGE_BACKENDS,
  type KvportConfig,
  type NixlStorageBackendName,
  STORAGE_BACKEND_DEVICES,
} from "./schema.ts";

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** What the rules read and write besides the configuration itself. */
export interface RuleContext {
  /** Where a key's value came from. */
  source(key: string): ConfigSource;
  /** Records that a rule set `key`. */
  setSource(key: string, source: ConfigSource): void;
  /** The TP size the port lists must cover, if known. */
  tpSize?: number;
}

/** The result of {@link applyRules}. */
export interface RuleResult {
  issues: ConfigIssue[];
  warnings: ConfigWarning[];
}

function get(cfg: Mutable<KvportConfig>, key: string): unknown {
  if (key.startsWith("extra_config.")) return cfg.extra_config[key.slice(13)];
  return (cfg as unknown as Record<string, unknown>)[key];
}

function envHint(key: string): string {
  const info = KEY_BY_NAME.get(key);
  if (!info) return "";
  return info.inExtraConfig
    ? ` Set it under extra_config in the file (or in LMCACHE_EXTRA_CONFIG's JSON).`
    : ` Set it in the file, ${info.env}, or an override.`;
}

/**
 * Applies the cross-key rules to a type-checked configuration. May change `cfg` (for
 * example force `save_unfull_chunk` on under PD, or fill `pd_buffer_size` from
 * `nixl_buffer_size`) and records those changes through `ctx.setSource`.
 */
export function applyRules(cfg: Mutable<KvportConfig>, ctx: RuleContext): RuleResult {
  const issues: ConfigIssue[] = [];
  const warnings: ConfigWarning[] = [];
  const src = (k: string) => ctx.source(k);
  const at = (k: string) => `${k} (${src(k)})`;
  const expectedOf = (k: string) => {
    const e = KEY_BY_NAME.get(k)?.expected ?? "a value";
    return e.replace(/, or null$/, "");
  };
  const add = (key: string, expected: string, message: string, received?: unknown) => {
    if (issues.some((i) => i.key === key)) return; // one issue per key is enough
    const got = formatValue(received === undefined ? get(cfg, key) : received);
    issues.push({
      key,
      source: src(key),
      expected,
      received: got,
      message,
    });
  };
  const isMissing = (v: unknown) => v === null || v === undefined || v === "";
  /** `key` must be set because of `why` (a key name, true in cfg). */
  const need = (key: string, why: string, whyText = `${why} is true`) => {
    const v = get(cfg, key);
    if (!isMissing(v) && !(Array.isArray(v) && v.length === 0)) return;
    const expected = expectedOf(key);
    add(
      key,
      expected,
      `${key} is required when ${whyText} (${why} from ${src(why)}) but is not set ` +
        `(${src(key)}): expected ${expected}, got ${formatValue(v)}.${envHint(key)}`,
    );
  };
  const portsFor = (key: string, what: string) => {
    const v = get(cfg, key) as number[] | null;
    const tp = ctx.tpSize;
    if (!v || tp === undefined || v.length >= tp) return;
    add(
      key,
      `at least ${tp} ports (one per TP rank)`,
      `${at(key)} has ${v.length} port${v.length === 1 ? "" : "s"} but the TP size is ${tp}: ` +
        `${what} needs one port per TP rank (rank r uses ${key}[r]); got ${formatValue(v)}. ` +
        `Add ${tp - v.length} more.`,
    );
  };
  const distinct = (keys: string[]) => {
    const seen = new Map<number, string>();
    for (const key of keys) {
      const v = get(cfg, key) as number[] | null;
      if (!v) continue;
      for (const p of v) {
        const first = seen.get(p);
        if (first !== undefined) {
          add(
            key,
            `ports not used by ${first}`,
            `${at(key)} uses port ${p}, which ${
              first === key ? "it lists twice" : `${at(first)} also uses`
            }; ` +
              `each listener needs its own port; got ${formatValue(v)}.`,
          );
          return;
        }
        seen.set(p, key);
      }
    }
  };

  const storage = cfg.extra_config.enable_nixl_storage === true;

  // The nixl_buffer_size rule (see NIXL_BUFFER_SIZE_RULE).
  if (cfg.enable_pd && cfg.nixl_buffer_size !== null) {
    if (cfg.pd_buffer_size === null) {
      if (storage) {
        add(
          "pd_buffer_size",
          "an integer >= 1 (bytes)",
          `${at("pd_buffer_size")} must be set explicitly when both enable_pd ` +
            `(${src("enable_pd")}) and extra_config.enable_nixl_storage ` +
            `(${src("extra_config.enable_nixl_storage")}) are true: nixl_buffer_size ` +
            `(${src("nixl_buffer_size")}) = ${cfg.nixl_buffer_size} sizes the NIXL storage ` +
            `buffer and cannot also size the PD buffer; got null.`,
        );
      } else {
        cfg.pd_buffer_size = cfg.nixl_buffer_size;
        ctx.setSource("pd_buffer_size", src("nixl_buffer_size"));
        const alias = ALIAS_BY_NAME.get("nixl_buffer_size");
        warnings.push({
          code: "deprecated_alias",
          key: "nixl_buffer_size",
          source: src("nixl_buffer_size"),
          message: `"nixl_buffer_size" (${src("nixl_buffer_size")}) sets the PD buffer ` +
            `under its deprecated name; use "${alias?.to ?? "pd_buffer_size"}" ` +
            `(pd_buffer_size = ${cfg.nixl_buffer_size} taken from it).`,
        });
      }
    } else if (!storage && cfg.pd_buffer_size !== cfg.nixl_buffer_size) {
      warnings.push({
        code: "unused_value",
        key: "nixl_buffer_size",
        source: src("nixl_buffer_size"),
        message: `nixl_buffer_size (${src("nixl_buffer_size")}) = ${cfg.nixl_buffer_size} ` +
          `is not used: pd_buffer_size (${src("pd_buffer_size")}) = ${cfg.pd_buffer_size} ` +
          `sizes the PD buffer and NIXL storage is off.`,
      });
    }
  }

  // PD
  if (cfg.enable_pd) {
    need("pd_role", "enable_pd");
    need("pd_buffer_size", "enable_pd");
    need("pd_buffer_device", "enable_pd");
    if (cfg.enable_p2p) {
      add(
        "enable_p2p",
        "false when enable_pd is true",
        `${at("enable_p2p")} must be false when enable_pd (${src("enable_pd")}) is true: ` +
          `PD and P2P sharing cannot run together; got true.`,
      );
    }
    const role = cfg.pd_role;
    if (role === "receiver" || role === "both") {
      const why = `pd_role is "${role}"`;
      need("pd_peer_host", "pd_role", why);
      need("pd_peer_init_port", "pd_role", why);
      need("pd_peer_alloc_port", "pd_role", why);
      portsFor("pd_peer_init_port", "a PD receiver");
      portsFor("pd_peer_alloc_port", "a PD receiver");
      distinct(["pd_peer_init_port", "pd_peer_alloc_port", "pd_peer_query_port"]);
    }
    if ((role === "sender" || role === "both") && !cfg.pd_skip_proxy_notification) {
      const why = `pd_role is "${role}" and pd_skip_proxy_notification is false`;
      need("pd_proxy_host", "pd_role", why);
      need("pd_proxy_port", "pd_role", why);
    }
    if (cfg.pd_bidirectional) {
      need("pd_peer_query_port", "pd_bidirectional");
      portsFor("pd_peer_query_port", "bidirectional PD");
    }
    if (!cfg.save_unfull_chunk) {
      cfg.save_unfull_chunk = true;
      const from = src("save_unfull_chunk");
      ctx.setSource("save_unfull_chunk", "derived:enable_pd");
      warnings.push({
        code: "forced_value",
        key: "save_unfull_chunk",
        source: from,
        message: `save_unfull_chunk (${from}) is set to true because enable_pd ` +
          `(${src("enable_pd")}) is true: PD must send the last, partial chunk too.`,
      });
    }
  }

  // Controller
  if (cfg.enable_controller) {
    need("lmcache_instance_id", "enable_controller");
    need("controller_pull_url", "enable_controller");
    need("controller_reply_url", "enable_controller");
    need("lmcache_worker_ports", "enable_controller");
    const ids = cfg.lmcache_worker_ids;
    if (ids === null) portsFor("lmcache_worker_ports", "the controller worker");
    else if (ctx.tpSize !== undefined) {
      const badId = ids.find((i) => i >= ctx.tpSize!);
      if (badId !== undefined) {
        add(
          "lmcache_worker_ids",
          `ranks from 0 to ${ctx.tpSize - 1}`,
          `${at("lmcache_worker_ids")} names rank ${badId} but the TP size is ` +
            `${ctx.tpSize}; got ${formatValue(ids)}.`,
        );
      }
    }
  }

  // P2P
  if (cfg.enable_p2p) {
    if (!cfg.enable_controller) {
      add(
        "enable_controller",
        "true when enable_p2p is true",
        `${at("enable_controller")} must be true when enable_p2p (${src("enable_p2p")}) is ` +
          `true: P2P finds peers through the controller's lookup; got false.`,
      );
    }
    need("p2p_host", "enable_p2p");
    need("p2p_init_ports", "enable_p2p");
    need("p2p_lookup_ports", "enable_p2p");
    need("transfer_channel", "enable_p2p");
    portsFor("p2p_init_ports", "P2P");
    portsFor("p2p_lookup_ports", "P2P");
    distinct(["p2p_init_ports", "p2p_lookup_ports"]);
  }

  // NIXL storage
  if (storage) {
    const why = "extra_config.enable_nixl_storage";
    need("extra_config.nixl_backend", why);
    need("extra_config.nixl_pool_size", why);
    need("nixl_buffer_device", why);
    const cpuMode = cfg.nixl_buffer_device === "cpu";
    if (!cpuMode) {
      need("nixl_buffer_size", why);
    } else if (cfg.nixl_buffer_size !== null) {
      // Current LMCache rejects this pair; the older form is still accepted here.
      warnings.push({
        code: "deprecated_form",
        key: "nixl_buffer_size",
        source: src("nixl_buffer_size"),
        message: `${at("nixl_buffer_size")} = ${cfg.nixl_buffer_size} with ` +
          `nixl_buffer_device "cpu" is the older LMCache form: current LMCache rejects it, ` +
          "since in CPU mode its NIXL storage stages through LocalCPUBackend's pinned pool " +
          "(sized by max_local_cpu_size). kvport still takes it as the size of its own " +
          "staging buffer; remove it to match current LMCache (the staging buffer then " +
          "defaults to 64 pages, or the pool size when smaller).",
      });
    }
    if (cpuMode && cfg.max_local_cpu_size <= 0) {
      add(
        "max_local_cpu_size",
        'a size > 0 (GB) with nixl_buffer_device "cpu"',
        `${at("max_local_cpu_size")} must be > 0 when nixl_buffer_device ` +
          `(${src("nixl_buffer_device")}) is "cpu" and NIXL storage is on: LMCache stages ` +
          `CPU-mode storage through that pool; got ${cfg.max_local_cpu_size}.`,
      );
    }
    hugepagesRule(cfg, ctx, add, warnings);
    const backend = cfg.extra_config.nixl_backend as NixlStorageBackendName | null;
    if (backend && FILE_STORAGE_BACKENDS.includes(backend)) {
      need("extra_config.nixl_path", "extra_config.nixl_backend", `nixl_backend is ${backend}`);
    }
    const device = cfg.nixl_buffer_device;
    if (backend && device) {
      const kind = device.startsWith("cuda") ? "cuda" : "cpu";
      const allowed = STORAGE_BACKEND_DEVICES[backend];
      if (!allowed.includes(kind)) {
        add(
          "nixl_buffer_device",
          allowed.map((d) => `"${d}"`).join(" or ") + ` for ${backend}`,
          `${at("nixl_buffer_device")} = "${device}" does not work with nixl_backend ` +
            `${backend} (${src("extra_config.nixl_backend")}): ${backend} takes ` +
            `${allowed.join(" or ")} buffers; got "${device}".`,
        );
      }
    }
    if (cfg.extra_config.nixl_pool_size === 0 && cfg.save_unfull_chunk) {
      const forced = src("save_unfull_chunk") === "derived:enable_pd";
      add(
        "save_unfull_chunk",
        "false with dynamic NIXL storage (nixl_pool_size 0)",
        `${at("save_unfull_chunk")} must be false with dynamic NIXL storage ` +
          `(extra_config.nixl_pool_size = 0 from ${src("extra_config.nixl_pool_size")})` +
          (forced
            ? `, but enable_pd forces it to true; use a static pool (nixl_pool_size > 0)`
            : "") +
          `; got true.`,
      );
    }
    if (cfg.extra_config.nixl_presence_cache_only && !cfg.extra_config.nixl_presence_cache) {
      add(
        "extra_config.nixl_presence_cache",
        "true when nixl_presence_cache_only is true",
        `${at("extra_config.nixl_presence_cache")} must be true when ` +
          `extra_config.nixl_presence_cache_only (${
            src("extra_config.nixl_presence_cache_only")
          }) ` +
          `is true; got false.`,
      );
    }
  }
  return { issues, warnings };
}

/**
 * `extra_config.nixl_use_hugepages`, as current LMCache handles it under NIXL storage: in
 * CPU mode its value moves to `local_cpu_use_hugepages` (a different value set there too
 * is an error), in GPU mode it has no effect; either way a warning says so and the key
 * is removed.
 */
function hugepagesRule(
  cfg: Mutable<KvportConfig>,
  ctx: RuleContext,
  add: (key: string, expected: string, message: string, received?: unknown) => void,
  warnings: ConfigWarning[],
): void {
  const key = "extra_config.nixl_use_hugepages";
  const value = cfg.extra_config.nixl_use_hugepages;
  if (value === null || value === undefined) return;
  const src = ctx.source(key);
  delete (cfg.extra_config as Record<string, unknown>).nixl_use_hugepages;
  if (cfg.nixl_buffer_device !== "cpu") {
    warnings.push({
      code: "deprecated_form",
      key,
      source: src,
      message: `${key} (${src}) is deprecated and has no effect with nixl_buffer_device ` +
        `${JSON.stringify(cfg.nixl_buffer_device)}: hugepages apply only to the CPU pool ` +
        "(local_cpu_use_hugepages); remove it.",
    });
    return;
  }
  const set = ctx.source("local_cpu_use_hugepages") !== "default";
  if (set && cfg.local_cpu_use_hugepages !== value) {
    add(
      "local_cpu_use_hugepages",
      `${value} (the value of ${key}), or remove ${key}`,
      `Conflicting hugepage settings: ${key} (${src}) = ${value} but local_cpu_use_hugepages ` +
        `(${ctx.source("local_cpu_use_hugepages")}) = ${cfg.local_cpu_use_hugepages}. ` +
        `${key} is deprecated: remove it and set local_cpu_use_hugepages only.`,
    );
    return;
  }
  cfg.local_cpu_use_hugepages = value;
  ctx.setSource("local_cpu_use_hugepages", src);
  warnings.push({
    code: "deprecated_form",
    key,
    source: src,
    message: `${key} (${src}) is deprecated; its value (${value}) is applied to ` +
      "local_cpu_use_hugepages, as LMCache does: set that instead. (kvport's storage " +
      "staging buffer asks for transparent huge pages either way.)",
  });
}
