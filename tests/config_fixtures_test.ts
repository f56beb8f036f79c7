// LMCache's example configurations (rewritten with our values, under
// tests/fixtures/config/) load to the expected values.
import assert from "node:assert/strict";
import { test } from "node:test";
import { configError, fixture, issueFor, load } from "./config_util.ts";

test("fixtures: 1p1d prefiller (PD sender)", () => {
  const path = fixture("pd_prefiller.yaml");
  const { config, warnings, sources } = load({ file: path, tpSize: 1 });
  assert.deepEqual(warnings, []);
  assert.equal(config.enable_pd, true);
  assert.equal(config.pd_role, "sender");
  assert.equal(config.transfer_channel, "nixl");
  assert.equal(config.pd_proxy_host, "127.0.0.1");
  assert.equal(config.pd_proxy_port, 7601);
  assert.equal(config.pd_buffer_size, 2147483648);
  assert.equal(config.pd_buffer_device, "cuda");
  assert.deepEqual(config.nixl_backends, ["UCX"]);
  assert.equal(config.local_cpu, false);
  assert.equal(config.save_unfull_chunk, true);
  assert.equal(sources.save_unfull_chunk, `file:${path}`);
  assert.equal(config.chunk_size, 256);
  assert.equal(sources.chunk_size, "default");
});

test("fixtures: 1p1d decoder (PD receiver), scalar ports become lists", () => {
  const { config, warnings } = load({ file: fixture("pd_decoder.yaml"), tpSize: 1 });
  assert.equal(config.pd_role, "receiver");
  assert.equal(config.pd_peer_host, "127.0.0.1");
  assert.deepEqual(config.pd_peer_init_port, [7401]);
  assert.deepEqual(config.pd_peer_alloc_port, [7402]);
  assert.equal(config.pd_buffer_device, "cuda:0");
  assert.equal(config.save_unfull_chunk, true);
  assert.deepEqual(warnings.map((w) => w.code), ["forced_value"]);
});

test("fixtures: the 1p1d decoder with TP size 2 fails, naming both short lists", () => {
  const e = configError(() => load({ file: fixture("pd_decoder.yaml"), tpSize: 2 }));
  assert.deepEqual(e.issues.map((i) => i.key).sort(), ["pd_peer_alloc_port", "pd_peer_init_port"]);
  assert.match(issueFor(e, "pd_peer_init_port").message, /TP size is 2/);
});

test("fixtures: a TP-2 decoder loads with tpSize 2", () => {
  const { config } = load({ file: fixture("pd_decoder_tp2.yaml"), tpSize: 2 });
  assert.deepEqual(config.pd_peer_init_port, [7401, 7411]);
  assert.deepEqual(config.pd_peer_alloc_port, [7402, 7412]);
  assert.equal(config.pd_peer_host, "10.1.2.3");
});

test("fixtures: a legacy decoder with nixl_* names loads with deprecation warnings", () => {
  const path = fixture("pd_decoder_legacy.yaml");
  const { config, warnings, sources } = load({ file: path });
  assert.equal(config.enable_pd, true);
  assert.equal(config.pd_role, "receiver");
  assert.equal(config.pd_peer_host, "localhost");
  assert.deepEqual(config.pd_peer_init_port, [7300]);
  assert.deepEqual(config.pd_peer_alloc_port, [7400]);
  assert.equal(config.pd_buffer_size, 1073741824);
  assert.equal(sources.pd_buffer_size, `file:${path}`);
  assert.equal(config.max_local_cpu_size, 0);
  const codes = warnings.map((w) => `${w.code}:${w.key}`).sort();
  assert.deepEqual(codes, [
    "deprecated_alias:enable_xpyd",
    "deprecated_alias:nixl_buffer_size",
    "deprecated_alias:nixl_peer_alloc_port",
    "deprecated_alias:nixl_peer_host",
    "deprecated_alias:nixl_peer_init_port",
    "deprecated_alias:nixl_role",
    "forced_value:save_unfull_chunk",
    "ignored_key:max_local_disk_size",
    "ignored_key:remote_serde",
  ]);
});

test("fixtures: P2P sharing instance", () => {
  const path = fixture("p2p_instance_a.yaml");
  const { config, warnings, sources } = load({ file: path, tpSize: 1 });
  assert.equal(config.enable_p2p, true);
  assert.equal(config.p2p_host, "127.0.0.1");
  assert.deepEqual(config.p2p_init_ports, [8210]);
  assert.deepEqual(config.p2p_lookup_ports, [8211]);
  assert.equal(config.transfer_channel, "nixl");
  assert.equal(config.enable_controller, true);
  assert.equal(config.lmcache_instance_id, "kvport_instance_a");
  assert.equal(config.controller_pull_url, "127.0.0.1:8310");
  assert.equal(config.controller_reply_url, "127.0.0.1:8410");
  assert.deepEqual(config.lmcache_worker_ports, [8510]);
  assert.equal(config.max_local_cpu_size, 5);
  assert.equal(config.extra_config.lookup_backoff_time, 0.001);
  assert.equal(config.extra_config.p2p_socket_recv_timeout_ms, 20000);
  assert.equal(sources["extra_config.p2p_socket_recv_timeout_ms"], `file:${path}`);
  assert.equal(config.extra_config.p2p_socket_send_timeout_ms, 10000);
  assert.equal(config.extra_config.p2p_max_retry_count, 3);
  assert.deepEqual(warnings.map((w) => `${w.code}:${w.key}`), [
    "ignored_key:enable_async_loading",
  ]);
});

test("fixtures: NIXL storage on POSIX files, current LMCache's CPU mode (no buffer size)", () => {
  const { config, warnings } = load({ file: fixture("nixl_storage_posix_cpu.yaml") });
  assert.deepEqual(warnings, []);
  assert.equal(config.nixl_buffer_size, null);
  assert.equal(config.nixl_buffer_device, "cpu");
  assert.equal(config.local_cpu_use_hugepages, false);
});

test("fixtures: NIXL storage on POSIX files (static pool), the older CPU-mode form", () => {
  const { config, warnings } = load({ file: fixture("nixl_storage_posix.yaml") });
  // Accepted, with the warning saying what current LMCache changed.
  assert.deepEqual(warnings.map((w) => `${w.code}:${w.key}`), ["deprecated_form:nixl_buffer_size"]);
  assert.match(warnings[0].message, /current LMCache rejects it.*LocalCPUBackend's pinned pool/);
  assert.equal(config.nixl_buffer_size, 536870912);
  assert.equal(config.nixl_buffer_device, "cpu");
  assert.equal(config.pd_buffer_size, null);
  const x = config.extra_config;
  assert.equal(x.enable_nixl_storage, true);
  assert.equal(x.nixl_backend, "POSIX");
  assert.equal(x.nixl_pool_size, 32);
  assert.equal(x.nixl_path, "/var/tmp/kvport-nixl/");
  assert.equal(x.use_direct_io, true);
  assert.equal(x.nixl_presence_cache, false);
  assert.equal(x.nixl_async_put, false);
  assert.deepEqual(x.nixl_backend_params, {});
});

test("fixtures: NIXL storage on an object store (dynamic mode)", () => {
  const { config } = load({ file: fixture("nixl_storage_obj.yaml") });
  const x = config.extra_config;
  assert.equal(x.nixl_backend, "OBJ");
  assert.equal(x.nixl_pool_size, 0);
  assert.equal(x.nixl_presence_cache, true);
  assert.equal(x.nixl_async_put, true);
  assert.deepEqual(x.nixl_backend_params, {
    bucket: "kv-pages",
    region: "eu-west-1",
    endpoint_override: "http://127.0.0.1:9000",
    req_checksum: "0",
  });
});

test("fixtures: env overrides a fixture value and is named as its source", () => {
  const { config, sources } = load({
    file: fixture("pd_prefiller.yaml"),
    env: { LMCACHE_PD_PROXY_PORT: "7700", LMCACHE_PD_BUFFER_DEVICE: "cpu" },
  });
  assert.equal(config.pd_proxy_port, 7700);
  assert.equal(sources.pd_proxy_port, "env:LMCACHE_PD_PROXY_PORT");
  assert.equal(config.pd_buffer_device, "cpu");
});
