import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { configSchema } from "../src/config/schema.ts";
import { fileURLToPath } from "node:url";
import {
  configKeys,
  editDistance,
  formatValue,
  jsonReplacer,
  suggestKey,
} from "../src/config/mod.ts";
import {
  extractConfigReference,
  normalizeMarkdown,
  renderConfigReference,
  spliceConfigReference,
} from "../src/config/docs.ts";

// The keys of the reference (docs/shared lmcache.md "Configuration"), plus the NIXL storage
// and P2P extra_config keys.
const REFERENCE_KEYS = [
  "enable_pd",
  "pd_role",
  "pd_buffer_size",
  "pd_buffer_device",
  "pd_peer_host",
  "pd_peer_init_port",
  "pd_peer_alloc_port",
  "pd_peer_query_port",
  "pd_proxy_host",
  "pd_proxy_port",
  "pd_backend_mode",
  "pd_allocation_timeout_sec",
  "transfer_channel",
  "nixl_backends",
  "nixl_buffer_size",
  "nixl_buffer_device",
  "enable_p2p",
  "p2p_host",
  "p2p_init_ports",
  "p2p_lookup_ports",
  "enable_controller",
  "lmcache_instance_id",
  "controller_pull_url",
  "controller_reply_url",
  "lmcache_worker_ports",
  "chunk_size",
  "save_unfull_chunk",
  "local_cpu",
  "max_local_cpu_size",
  "extra_config",
  "extra_config.enable_nixl_storage",
  "extra_config.nixl_backend",
  "extra_config.nixl_pool_size",
  "extra_config.nixl_path",
  "extra_config.nixl_backend_params",
  "extra_config.use_direct_io",
  "extra_config.nixl_presence_cache",
  "extra_config.nixl_async_put",
  "extra_config.p2p_socket_recv_timeout_ms",
  "extra_config.p2p_socket_send_timeout_ms",
  "extra_config.p2p_max_retry_count",
];

test("keys: the table covers every key of the reference, with LMCache's types", () => {
  const names = new Set(configKeys.map((k) => k.name));
  for (const k of REFERENCE_KEYS) assert.ok(names.has(k), k);
  const t = (n: string) => configKeys.find((k) => k.name === n)!;
  assert.equal(t("enable_pd").type, "bool");
  assert.equal(t("pd_buffer_size").type, "int | null");
  assert.equal(t("pd_peer_init_port").type, "int list | null");
  assert.equal(t("nixl_backends").type, "str list | null");
  assert.equal(t("max_local_cpu_size").type, "float");
  assert.equal(t("pd_allocation_timeout_sec").defaultText, "inf");
  assert.equal(t("pd_backend_mode").type, '"sync" | "async"');
  assert.equal(t("extra_config").type, "map");
  assert.equal(t("chunk_size").env, "LMCACHE_CHUNK_SIZE");
  assert.equal(t("extra_config.nixl_backend").env, "LMCACHE_EXTRA_CONFIG");
});

test("keys: every entry is complete and agrees with the schema's defaults", () => {
  const defaults = configSchema.parse({}) as unknown as Record<string, unknown>;
  for (const k of configKeys) {
    assert.ok(k.description.length > 10, k.name);
    assert.ok(k.type && k.expected && k.defaultText && k.env, k.name);
    const d = k.inExtraConfig
      ? (defaults.extra_config as Record<string, unknown>)[k.leaf]
      : defaults[k.name];
    if (k.name !== "extra_config") assert.deepEqual(k.default, d, k.name);
    assert.equal(formatValue(k.default), k.defaultText, k.name);
  }
  assert.equal(new Set(configKeys.map((k) => k.name)).size, configKeys.length);
});

test("keys: README.md's configuration reference is current (run scripts/gen_config_docs.ts)", () => {
  const readme = readFileSync(fileURLToPath(new URL("../README.md", import.meta.url)), "utf8");
  const section = extractConfigReference(readme);
  assert.ok(section !== null, "README.md lacks the config-table markers");
  assert.equal(
    normalizeMarkdown(section),
    normalizeMarkdown(renderConfigReference()),
    "README.md is stale: run deno run -A scripts/gen_config_docs.ts",
  );
  for (const k of configKeys) assert.ok(section.includes(`\`${k.name}\``), k.name);
});

test("keys: the README splice keeps the rest of the file and is idempotent", () => {
  const readme =
    "# T\n\nintro\n\n<!-- config-table:start -->\nold\n<!-- config-table:end -->\n\nend\n";
  const once = spliceConfigReference(readme, "new");
  assert.equal(
    once,
    "# T\n\nintro\n\n<!-- config-table:start -->\nnew\n\n<!-- config-table:end -->\n\nend\n",
  );
  assert.equal(spliceConfigReference(once, "new"), once);
  assert.equal(extractConfigReference(once), "new");
  const appended = spliceConfigReference("# T\n", "body");
  assert.match(appended, /## Configuration reference\n\n<!-- config-table:start -->\nbody\n/);
});

test("suggest: edit distance and nearest key", () => {
  assert.equal(editDistance("", "abc"), 3);
  assert.equal(editDistance("abc", "abc"), 0);
  assert.equal(editDistance("pd_rloe", "pd_role"), 1);
  assert.equal(editDistance("kitten", "sitting"), 3);
  assert.equal(suggestKey("CHUNK_SIZE", ["chunk_size"]), "chunk_size");
  assert.equal(suggestKey("p2p-host", ["p2p_host"]), "p2p_host");
  assert.equal(suggestKey("ab", ["chunk_size"]), null);
  assert.equal(
    suggestKey("p2p_init_port", ["p2p_init_ports", "p2p_lookup_ports"]),
    "p2p_init_ports",
  );
});

test("format: values as one line of text; JSON keeps infinity readable", () => {
  assert.equal(formatValue(null), "null");
  assert.equal(formatValue(undefined), "nothing");
  assert.equal(formatValue("a"), '"a"');
  assert.equal(formatValue(-Infinity), "-inf");
  assert.equal(formatValue(NaN), "nan");
  assert.equal(formatValue("x".repeat(500)).length, 120);
  assert.equal(JSON.stringify({ t: Infinity }, jsonReplacer), '{"t":"inf"}');
});
