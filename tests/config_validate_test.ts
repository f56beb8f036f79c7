import assert from "node:assert/strict";
import { test } from "node:test";
import { storageOptionsFromConfig } from "../mod.ts";
import { configError, issueFor, load, RECEIVER, SENDER } from "./config_util.ts";

const P2P: Readonly<Record<string, unknown>> = {
  enable_p2p: true,
  p2p_host: "127.0.0.1",
  p2p_init_ports: [8200],
  p2p_lookup_ports: [8201],
  transfer_channel: "nixl",
  enable_controller: true,
  lmcache_instance_id: "a",
  controller_pull_url: "127.0.0.1:8300",
  controller_reply_url: "127.0.0.1:8400",
  lmcache_worker_ports: [8500],
};

const STORAGE: Readonly<Record<string, unknown>> = {
  nixl_buffer_size: 1 << 20,
  nixl_buffer_device: "cpu",
  extra_config: {
    enable_nixl_storage: true,
    nixl_backend: "POSIX",
    nixl_pool_size: 8,
    nixl_path: "/tmp/kvport",
  },
};

const storage = (extra: Record<string, unknown>, top: Record<string, unknown> = {}) => ({
  ...STORAGE,
  ...top,
  extra_config: { ...(STORAGE.extra_config as object), ...extra },
});

test("rules: valid sender, receiver, both, P2P and storage configurations load", () => {
  assert.equal(load({ overrides: SENDER }).config.pd_role, "sender");
  assert.equal(load({ overrides: RECEIVER }).config.pd_role, "receiver");
  assert.equal(
    load({ overrides: { ...SENDER, ...RECEIVER, pd_role: "both" } }).config.pd_role,
    "both",
  );
  assert.equal(load({ overrides: P2P }).config.enable_p2p, true);
  assert.equal(load({ overrides: STORAGE }).config.extra_config.nixl_backend, "POSIX");
});

test("rules: PD needs pd_role, pd_buffer_size and pd_buffer_device", () => {
  const e = configError(() => load({ env: { LMCACHE_ENABLE_PD: "1" } }));
  assert.deepEqual(e.issues.map((i) => i.key).sort(), [
    "pd_buffer_device",
    "pd_buffer_size",
    "pd_role",
  ]);
  const i = issueFor(e, "pd_role");
  assert.equal(i.source, "default");
  assert.equal(i.received, "null");
  assert.match(i.expected, /"sender", "receiver", "both"/);
  assert.match(i.message, /enable_pd from env:LMCACHE_ENABLE_PD/);
  assert.match(i.message, /LMCACHE_PD_ROLE/);
});

test("rules: pd_buffer_device is cpu, cuda or cuda:N", () => {
  for (const d of ["cpu", "cuda", "cuda:0", "cuda:12"]) {
    assert.equal(
      load({ overrides: { ...SENDER, pd_buffer_device: d } }).config.pd_buffer_device,
      d,
    );
  }
  for (const d of ["gpu", "CUDA", "cuda:", "cuda:x", "npu", "cpu:0"]) {
    const i = issueFor(
      configError(() => load({ overrides: { ...SENDER, pd_buffer_device: d } })),
      "pd_buffer_device",
    );
    assert.match(i.expected, /"cpu", "cuda" or "cuda:N"/);
  }
});

test("rules: a receiver needs pd_peer_host, pd_peer_init_port, pd_peer_alloc_port", () => {
  const e = configError(() =>
    load({
      overrides: {
        enable_pd: true,
        pd_role: "receiver",
        pd_buffer_size: 1,
        pd_buffer_device: "cpu",
        pd_peer_init_port: [],
      },
    })
  );
  assert.deepEqual(e.issues.map((i) => i.key).sort(), [
    "pd_peer_alloc_port",
    "pd_peer_host",
    "pd_peer_init_port",
  ]);
  assert.match(issueFor(e, "pd_peer_host").message, /pd_role is "receiver"/);
  assert.equal(issueFor(e, "pd_peer_init_port").received, "[]");
});

test("rules: a sender needs pd_proxy_host and pd_proxy_port unless pd_skip_proxy_notification", () => {
  const { pd_proxy_host: _h, pd_proxy_port: _p, ...bare } = SENDER;
  const e = configError(() => load({ overrides: bare }));
  assert.deepEqual(e.issues.map((i) => i.key).sort(), ["pd_proxy_host", "pd_proxy_port"]);
  assert.match(issueFor(e, "pd_proxy_port").message, /pd_skip_proxy_notification is false/);
  const ok = load({ overrides: bare, env: { LMCACHE_PD_SKIP_PROXY_NOTIFICATION: "true" } });
  assert.equal(ok.config.pd_proxy_host, null);
});

test("rules: role both needs the receiver's and the sender's keys", () => {
  const e = configError(() =>
    load({
      overrides: { enable_pd: true, pd_role: "both", pd_buffer_size: 1, pd_buffer_device: "cpu" },
    })
  );
  assert.equal(e.issues.length, 5);
});

test("rules: PD forces save_unfull_chunk to true with a warning", () => {
  const { config, warnings, sources } = load({ overrides: SENDER });
  assert.equal(config.save_unfull_chunk, true);
  assert.equal(sources.save_unfull_chunk, "derived:enable_pd");
  const w = warnings.find((w) => w.code === "forced_value")!;
  assert.equal(w.key, "save_unfull_chunk");
  const set = load({ overrides: { ...SENDER, save_unfull_chunk: true } });
  assert.deepEqual(set.warnings, []);
  assert.equal(set.sources.save_unfull_chunk, "override");
});

test("rules: PD excludes P2P", () => {
  const i = issueFor(configError(() => load({ overrides: { ...SENDER, ...P2P } })), "enable_p2p");
  assert.match(i.message, /must be false when enable_pd/);
});

test("rules: pd_bidirectional needs pd_peer_query_port; ports may not collide", () => {
  assert.ok(issueFor(
    configError(() => load({ overrides: { ...RECEIVER, pd_bidirectional: true } })),
    "pd_peer_query_port",
  ));
  const clash = configError(() => load({ overrides: { ...RECEIVER, pd_peer_alloc_port: [7300] } }));
  assert.match(issueFor(clash, "pd_peer_alloc_port").message, /port 7300/);
  const twice = configError(() => load({ overrides: { ...RECEIVER, pd_peer_init_port: [1, 1] } }));
  assert.match(issueFor(twice, "pd_peer_init_port").message, /lists twice/);
});

test("rules: P2P needs host, ports, transfer_channel and the controller", () => {
  const e = configError(() => load({ overrides: { enable_p2p: true } }));
  assert.deepEqual(e.issues.map((i) => i.key).sort(), [
    "enable_controller",
    "p2p_host",
    "p2p_init_ports",
    "p2p_lookup_ports",
    "transfer_channel",
  ]);
  const clash = configError(() => load({ overrides: { ...P2P, p2p_lookup_ports: [8200] } }));
  assert.ok(issueFor(clash, "p2p_lookup_ports"));
});

test("rules: the controller needs its id, URLs and worker ports", () => {
  const e = configError(() => load({ overrides: { enable_controller: true } }));
  assert.deepEqual(e.issues.map((i) => i.key).sort(), [
    "controller_pull_url",
    "controller_reply_url",
    "lmcache_instance_id",
    "lmcache_worker_ports",
  ]);
});

test("rules: transfer_channel is nixl or mock_memory", () => {
  assert.equal(
    load({ overrides: { transfer_channel: "mock_memory" } }).config.transfer_channel,
    "mock_memory",
  );
  const i = issueFor(
    configError(() => load({ env: { LMCACHE_TRANSFER_CHANNEL: "tcp" } })),
    "transfer_channel",
  );
  assert.match(i.expected, /"nixl", "mock_memory"/);
});

test("rules: tpSize - a port list shorter than the TP size is an error that says so", () => {
  const e = configError(() =>
    load({ overrides: { ...RECEIVER, pd_peer_init_port: [7300, 7301] }, tpSize: 2 })
  );
  assert.equal(e.issues.length, 1);
  const i = issueFor(e, "pd_peer_alloc_port");
  assert.match(i.message, /has 1 port but the TP size is 2/);
  assert.match(i.expected, /at least 2 ports/);
  assert.equal(i.received, "[7400]");
  assert.equal(load({ overrides: RECEIVER, tpSize: 1 }).config.pd_role, "receiver");
  assert.equal(load({ overrides: RECEIVER }).config.pd_role, "receiver"); // no tpSize, no check
  const p2p = configError(() => load({ overrides: P2P, tpSize: 4 }));
  assert.deepEqual(p2p.issues.map((i) => i.key).sort(), [
    "lmcache_worker_ports",
    "p2p_init_ports",
    "p2p_lookup_ports",
  ]);
  // a sender does not use the receiver's lists
  assert.ok(load({ overrides: { ...SENDER, pd_peer_init_port: [1] }, tpSize: 8 }));
  // explicit worker ids are checked against the TP size instead
  const ids = configError(() =>
    load({
      overrides: {
        ...P2P,
        p2p_init_ports: [1, 2],
        p2p_lookup_ports: [3, 4],
        lmcache_worker_ids: [0, 2],
      },
      tpSize: 2,
    })
  );
  assert.deepEqual(ids.issues.map((i) => i.key), ["lmcache_worker_ids"]);
});

test("rules: NIXL storage needs backend, pool size, buffer size and device", () => {
  const e = configError(() => load({ overrides: { extra_config: { enable_nixl_storage: true } } }));
  assert.deepEqual(e.issues.map((i) => i.key).sort(), [
    "extra_config.nixl_backend",
    "extra_config.nixl_pool_size",
    "nixl_buffer_device",
    "nixl_buffer_size",
  ]);
  assert.match(issueFor(e, "extra_config.nixl_pool_size").message, /under extra_config/);
});

test("rules: file backends need nixl_path; object backends do not", () => {
  for (const b of ["POSIX", "GDS", "GDS_MT", "HF3FS"]) {
    const e = configError(() => load({ overrides: storage({ nixl_backend: b, nixl_path: null }) }));
    assert.match(issueFor(e, "extra_config.nixl_path").message, new RegExp(`nixl_backend is ${b}`));
  }
  for (const b of ["OBJ", "AZURE_BLOB"]) {
    assert.ok(load({ overrides: storage({ nixl_backend: b, nixl_path: null }) }));
  }
});

test("rules: storage backend and buffer device must fit", () => {
  const fits: [string, string, boolean][] = [
    ["GDS", "cpu", true],
    ["GDS", "cuda", true],
    ["GDS_MT", "cuda:1", true],
    ["POSIX", "cpu", true],
    ["POSIX", "cuda", false],
    ["HF3FS", "cpu", true],
    ["HF3FS", "cuda:0", false],
    ["OBJ", "cpu", true],
    ["OBJ", "cuda", true],
    ["AZURE_BLOB", "cpu", true],
    ["AZURE_BLOB", "cuda", false],
  ];
  for (const [backend, device, ok] of fits) {
    const run = () =>
      load({ overrides: storage({ nixl_backend: backend }, { nixl_buffer_device: device }) });
    if (ok) assert.ok(run(), `${backend}/${device}`);
    else {
      const i = issueFor(configError(run), "nixl_buffer_device");
      assert.match(i.message, new RegExp(`does not work with nixl_backend ${backend}`));
    }
  }
});

test("rules: dynamic storage (pool 0) refuses save_unfull_chunk, and so PD", () => {
  const e = configError(() =>
    load({ overrides: storage({ nixl_pool_size: 0 }, { save_unfull_chunk: true }) })
  );
  assert.ok(issueFor(e, "save_unfull_chunk"));
  const pd = configError(() =>
    load({ overrides: { ...storage({ nixl_pool_size: 0, nixl_backend: "OBJ" }), ...SENDER } })
  );
  assert.match(issueFor(pd, "save_unfull_chunk").message, /enable_pd forces it/);
});

test("rules: nixl_presence_cache_only needs nixl_presence_cache", () => {
  const e = configError(() => load({ overrides: storage({ nixl_presence_cache_only: true }) }));
  assert.ok(issueFor(e, "extra_config.nixl_presence_cache"));
  assert.ok(
    load({ overrides: storage({ nixl_presence_cache_only: true, nixl_presence_cache: true }) }),
  );
});

test("rules: nixl_backend_params values become strings; non-scalars are refused", () => {
  const { config } = load({
    overrides: storage({ nixl_backend: "OBJ", nixl_backend_params: { port: 9000, tls: false } }),
  });
  assert.deepEqual(config.extra_config.nixl_backend_params, { port: "9000", tls: "false" });
  const e = configError(() => load({ overrides: storage({ nixl_backend_params: { a: [1] } }) }));
  assert.ok(issueFor(e, "extra_config.nixl_backend_params"));
});

test("rules: type errors and rule errors are reported together, without doubles", () => {
  const e = configError(() =>
    load({ overrides: { enable_pd: true, pd_role: "leader", chunk_size: 0, enable_p2p: true } })
  );
  const keys = e.issues.map((i) => i.key).sort();
  // pd_role is reported once (its type), not again as "required"
  assert.deepEqual(keys, [
    "chunk_size",
    "enable_controller",
    "enable_p2p",
    "p2p_host",
    "p2p_init_ports",
    "p2p_lookup_ports",
    "pd_buffer_device",
    "pd_buffer_size",
    "pd_role",
    "transfer_channel",
  ]);
  for (const i of e.issues) {
    assert.ok(i.key && i.source && i.expected && i.received && i.message, JSON.stringify(i));
    assert.ok(e.message.includes(i.message));
  }
});

test("unknown keys: a warning suggesting the nearest key; LMCache-only and retired keys", () => {
  const { warnings } = load({
    overrides: {
      pd_rloe: "x",
      chunk_sise: 1,
      totally_unrelated_key: 1,
      remote_url: "redis://x",
      enable_nixl: true,
      extra_config: { nixl_pool_sise: 3, lookup_backoff_time: 0.1 },
    },
  });
  const by = (k: string) => warnings.find((w) => w.key === k)!;
  assert.match(by("pd_rloe").message, /did you mean "pd_role"/);
  assert.match(by("chunk_sise").message, /did you mean "chunk_size"/);
  assert.equal(by("totally_unrelated_key").code, "unknown_key");
  assert.doesNotMatch(by("totally_unrelated_key").message, /did you mean/);
  assert.equal(by("remote_url").code, "ignored_key");
  assert.equal(by("enable_nixl").code, "retired_key");
  assert.match(by("extra_config.nixl_pool_sise").message, /did you mean "nixl_pool_size"/);
  assert.equal(warnings.find((w) => w.key === "extra_config.lookup_backoff_time"), undefined);
  assert.equal(warnings.length, 6);
});

test("unknown keys: a misspelt deprecated name suggests the current name", () => {
  const { warnings } = load({ overrides: { nixl_rolle: "sender" } });
  assert.match(warnings[0].message, /did you mean "pd_role"/);
});

test("rules: NIXL storage in CPU mode follows current LMCache; the older form warns", () => {
  const current = { ...storage({}), nixl_buffer_size: null };
  const ok = load({ overrides: current });
  assert.equal(ok.config.nixl_buffer_size, null);
  assert.deepEqual(ok.warnings, []);
  // GPU mode still needs the size.
  const gpu = configError(() =>
    load({
      overrides: {
        ...storage({ nixl_backend: "GDS" }),
        nixl_buffer_device: "cuda",
        nixl_buffer_size: null,
      },
    })
  );
  assert.match(
    issueFor(gpu, "nixl_buffer_size").message,
    /required when extra_config.enable_nixl_storage/,
  );
  // The older form: accepted, one warning naming what changed and where it came from.
  const old = load({ overrides: STORAGE });
  assert.deepEqual(old.warnings.map((w) => w.code), ["deprecated_form"]);
  assert.equal(old.warnings[0].source, "override");
  assert.match(old.warnings[0].message, /older LMCache form: current LMCache rejects it/);
  assert.equal(old.config.nixl_buffer_size, 1 << 20);
  // LMCache's other CPU-mode rule: the CPU pool must exist.
  const none = configError(() => load({ overrides: { ...current, max_local_cpu_size: 0 } }));
  assert.match(issueFor(none, "max_local_cpu_size").message, /must be > 0 when nixl_buffer_device/);
});

test("rules: extra_config.nixl_use_hugepages is handled as LMCache does, then removed", () => {
  const cpu = { ...storage({ nixl_use_hugepages: true }), nixl_buffer_size: null };
  const a = load({ overrides: cpu });
  assert.equal(a.config.local_cpu_use_hugepages, true);
  assert.equal(a.sources.local_cpu_use_hugepages, "override");
  assert.equal("nixl_use_hugepages" in a.config.extra_config, false);
  assert.match(
    a.warnings.find((w) => w.key === "extra_config.nixl_use_hugepages")!.message,
    /applied to local_cpu_use_hugepages/,
  );
  // Same value set in both places: fine; different values: LMCache's conflict error.
  assert.ok(load({ overrides: { ...cpu, local_cpu_use_hugepages: true } }));
  const clash = configError(() => load({ overrides: { ...cpu, local_cpu_use_hugepages: false } }));
  assert.match(issueFor(clash, "local_cpu_use_hugepages").message, /Conflicting hugepage settings/);
  // GPU mode: no effect, said so; local_cpu_use_hugepages keeps its value.
  const gpu = load({
    overrides: {
      ...storage({ nixl_backend: "GDS", nixl_use_hugepages: true }),
      nixl_buffer_device: "cuda",
    },
  });
  assert.equal(gpu.config.local_cpu_use_hugepages, false);
  assert.match(
    gpu.warnings.find((w) => w.key === "extra_config.nixl_use_hugepages")!.message,
    /no effect with nixl_buffer_device "cuda"/,
  );
  // From the environment's JSON too; a non-boolean is refused by name.
  const env = load({
    env: { LMCACHE_EXTRA_CONFIG: JSON.stringify({ ...(cpu.extra_config as object) }) },
    overrides: { nixl_buffer_device: "cpu" },
  });
  assert.equal(env.config.local_cpu_use_hugepages, true);
  const bad = configError(() =>
    load({ overrides: { ...storage({ nixl_use_hugepages: "yes" }), nixl_buffer_size: null } })
  );
  assert.ok(bad.issues.some((i) => i.key === "extra_config.nixl_use_hugepages"));
});

test("storage options: CPU mode without nixl_buffer_size leaves the staging size to the backend", () => {
  const extra = {
    enable_nixl_storage: true,
    nixl_backend: "POSIX",
    nixl_pool_size: 4,
    nixl_path: "/tmp/x",
  };
  const cpu = storageOptionsFromConfig({ nixl_buffer_device: "cpu", extra_config: extra }, {
    pageSize: 4096,
  });
  assert.equal("bufferSize" in cpu, false);
  const old = storageOptionsFromConfig({
    nixl_buffer_size: 1 << 16,
    nixl_buffer_device: "cpu",
    extra_config: extra,
  });
  assert.equal(old.bufferSize, 1 << 16);
  assert.throws(
    () =>
      storageOptionsFromConfig({
        nixl_buffer_device: "cuda",
        extra_config: { ...extra, nixl_backend: "GDS" },
      }),
    /nixl_buffer_size is null: .*required with nixl_buffer_device "cuda"/,
  );
});
