import assert from "node:assert/strict";
import { after, test } from "node:test";
import { configKeys } from "../src/config/mod.ts";
import { configSchema } from "../src/config/schema.ts";
import { configError, issueFor, load, removeTmpYamls, tmpYaml } from "./config_util.ts";

after(removeTmpYamls);

test("config defaults, sources, freezing: no file, no env: every key at its LMCache default, source default", () => {
  const { config, warnings, sources, file } = load();
  assert.equal(file, null);
  assert.deepEqual(warnings, []);
  assert.equal(config.chunk_size, 256);
  assert.equal(config.local_cpu, true);
  assert.equal(config.max_local_cpu_size, 5.0);
  assert.equal(config.save_unfull_chunk, false);
  assert.equal(config.enable_pd, false);
  assert.equal(config.pd_role, null);
  assert.equal(config.pd_backend_mode, "async");
  assert.equal(config.pd_allocation_timeout_sec, Infinity);
  assert.equal(config.nixl_backends, null);
  assert.equal(config.extra_config.enable_nixl_storage, false);
  assert.equal(config.extra_config.p2p_socket_recv_timeout_ms, 30000);
  assert.equal(config.extra_config.p2p_socket_send_timeout_ms, 10000);
  assert.equal(config.extra_config.p2p_max_retry_count, 3);
  for (const k of configKeys) assert.equal(sources[k.name], "default", k.name);
  assert.deepEqual(config, configSchema.parse({}));
});

test("config defaults, sources, freezing: the result is deeply frozen", () => {
  const { config, warnings, sources } = load({
    overrides: { pd_peer_init_port: [1, 2], extra_config: { custom: { a: [1] } } },
  });
  assert.ok(Object.isFrozen(config));
  assert.ok(Object.isFrozen(config.pd_peer_init_port));
  assert.ok(Object.isFrozen(config.extra_config));
  assert.ok(Object.isFrozen(config.extra_config.nixl_backend_params));
  assert.ok(Object.isFrozen((config.extra_config.custom as { a: number[] }).a));
  assert.ok(Object.isFrozen(warnings));
  assert.ok(Object.isFrozen(sources));
  assert.throws(() => {
    (config as { chunk_size: number }).chunk_size = 1;
  });
});

test("config defaults, sources, freezing: precedence: defaults < file < env < overrides, with sources", () => {
  const path = tmpYaml("chunk_size: 128\nlocal_cpu: false\nmax_local_cpu_size: 2.5\n");
  const { config, sources } = load({
    file: path,
    env: { LMCACHE_CHUNK_SIZE: "64", LMCACHE_LOCAL_CPU: "true" },
    overrides: { chunk_size: 32 },
  });
  assert.equal(config.chunk_size, 32);
  assert.equal(sources.chunk_size, "override");
  assert.equal(config.local_cpu, true);
  assert.equal(sources.local_cpu, "env:LMCACHE_LOCAL_CPU");
  assert.equal(config.max_local_cpu_size, 2.5);
  assert.equal(sources.max_local_cpu_size, `file:${path}`);
  assert.equal(sources.save_unfull_chunk, "default");
});

test("config defaults, sources, freezing: LMCACHE_CONFIG_FILE names the file; the file option wins over it", () => {
  const a = tmpYaml("chunk_size: 100\n");
  const b = tmpYaml("chunk_size: 200\n");
  assert.equal(load({ env: { LMCACHE_CONFIG_FILE: a } }).config.chunk_size, 100);
  assert.equal(load({ env: { LMCACHE_CONFIG_FILE: `"${a}"` } }).file, a);
  assert.equal(load({ file: b, env: { LMCACHE_CONFIG_FILE: a } }).config.chunk_size, 200);
  assert.equal(load({ env: { LMCACHE_CONFIG_FILE: "  " } }).file, null);
});

test("config defaults, sources, freezing: extra_config merges entry by entry across sources", () => {
  const path = tmpYaml("extra_config:\n  nixl_backend: POSIX\n  nixl_pool_size: 4\n  mine: 1\n");
  const { config, sources } = load({
    file: path,
    env: { LMCACHE_EXTRA_CONFIG: '{"nixl_pool_size": 8}' },
    overrides: { "extra_config.nixl_path": "/tmp/x" },
  });
  assert.equal(config.extra_config.nixl_backend, "POSIX");
  assert.equal(config.extra_config.nixl_pool_size, 8);
  assert.equal(config.extra_config.nixl_path, "/tmp/x");
  assert.equal(config.extra_config.mine, 1);
  assert.equal(sources["extra_config.nixl_backend"], `file:${path}`);
  assert.equal(sources["extra_config.nixl_pool_size"], "env:LMCACHE_EXTRA_CONFIG");
  assert.equal(sources["extra_config.nixl_path"], "override");
  assert.equal(sources["extra_config.mine"], `file:${path}`);
  assert.equal(sources.extra_config, "override");
});

test("config defaults, sources, freezing: YAML scalars are read leniently, as LMCache's converters do", () => {
  const path = tmpYaml(
    [
      "p2p_init_ports: 8200", // scalar -> list
      'p2p_lookup_ports: "8201, 8202"', // text -> list
      'pd_proxy_port: "7500"', // numeric text -> int
      "local_cpu: no", // YAML 1.1 boolean, as PyYAML
      "save_unfull_chunk: 'True'",
      "pd_allocation_timeout_sec: .inf",
      "nixl_backends: UCX,GDS",
      "lmcache_instance_id: 42",
    ].join("\n"),
  );
  const { config } = load({ file: path });
  assert.deepEqual(config.p2p_init_ports, [8200]);
  assert.deepEqual(config.p2p_lookup_ports, [8201, 8202]);
  assert.equal(config.pd_proxy_port, 7500);
  assert.equal(config.local_cpu, false);
  assert.equal(config.save_unfull_chunk, true);
  assert.equal(config.pd_allocation_timeout_sec, Infinity);
  assert.deepEqual(config.nixl_backends, ["UCX", "GDS"]);
  assert.equal(config.lmcache_instance_id, "42");
});

test("config defaults, sources, freezing: overrides accept strings like the environment, and 'inf'", () => {
  const { config } = load({
    overrides: {
      pd_allocation_timeout_sec: "inf",
      pd_peer_query_port: "7500,7501",
      local_cpu: "0",
    },
  });
  assert.equal(config.pd_allocation_timeout_sec, Infinity);
  assert.deepEqual(config.pd_peer_query_port, [7500, 7501]);
  assert.equal(config.local_cpu, false);
});

test("config the file: an empty file (or only comments) is an empty configuration", () => {
  assert.equal(load({ file: tmpYaml("") }).config.chunk_size, 256);
  assert.equal(load({ file: tmpYaml("# nothing\n---\n") }).config.chunk_size, 256);
});

test("config the file: a missing file is a ConfigError naming the path and its source", () => {
  const e = configError(() => load({ file: "/nonexistent/kvport.yaml" }));
  const i = issueFor(e, "config_file");
  assert.equal(i.source, "option:file");
  assert.match(i.message, /\/nonexistent\/kvport\.yaml/);
  assert.match(i.message, /no such file/);
  const e2 = configError(() => load({ env: { LMCACHE_CONFIG_FILE: "/nope.yaml" } }));
  assert.equal(issueFor(e2, "config_file").source, "env:LMCACHE_CONFIG_FILE");
});

test("config the file: a directory is not a file", () => {
  const dir = tmpYaml("x: 1").replace(/\/[^/]+$/, "");
  const e = configError(() => load({ file: dir }));
  assert.match(issueFor(e, "config_file").message, /directory|cannot be read/);
});

test("config the file: bad YAML is a ConfigError naming the path", () => {
  for (const text of ["a: [1, 2", "a: b: c", "\tbad: tab", "a: 1\na: 2\n", "- 1\n- 2\n", "42"]) {
    const path = tmpYaml(text);
    const e = configError(() => load({ file: path }));
    const i = issueFor(e, "config_file");
    assert.ok(i.message.includes(path), i.message);
    assert.equal(i.source, `file:${path}`);
  }
});

test("config the file: two YAML documents are refused", () => {
  const e = configError(() => load({ file: tmpYaml("a: 1\n---\nb: 2\n") }));
  assert.match(issueFor(e, "config_file").message, /2 YAML documents/);
});

test("config the file: extra_config must be a map", () => {
  const path = tmpYaml("extra_config: [1, 2]\n");
  const i = issueFor(configError(() => load({ file: path })), "extra_config");
  assert.equal(i.source, `file:${path}`);
  assert.equal(i.received, "[1,2]");
  assert.equal(load({ file: tmpYaml("extra_config:\n") }).config.extra_config.nixl_backend, null);
});

test("config type errors: every error names key, source, expected and received; all come together", () => {
  const path = tmpYaml("chunk_size: 2.5\npd_role: leader\npd_buffer_device: gpu\n");
  const e = configError(() =>
    load({
      file: path,
      env: { LMCACHE_PD_PROXY_PORT: "80a", LMCACHE_PD_PEER_INIT_PORT: "7300,x" },
      overrides: { max_local_cpu_size: -1, tpSize: 2 },
    })
  );
  const keys = e.issues.map((i) => i.key).sort();
  assert.deepEqual(keys, [
    "chunk_size",
    "max_local_cpu_size",
    "pd_buffer_device",
    "pd_peer_init_port",
    "pd_proxy_port",
    "pd_role",
  ]);
  const role = issueFor(e, "pd_role");
  assert.equal(role.source, `file:${path}`);
  assert.equal(role.received, '"leader"');
  assert.match(role.expected, /"sender", "receiver", "both"/);
  assert.match(role.message, /^pd_role \(file:.*\): expected one of/);
  const port = issueFor(e, "pd_proxy_port");
  assert.equal(port.source, "env:LMCACHE_PD_PROXY_PORT");
  assert.equal(port.received, '"80a"');
  assert.match(port.expected, /integer from 1 to 65535/);
  assert.equal(issueFor(e, "chunk_size").received, "2.5");
  assert.equal(issueFor(e, "max_local_cpu_size").source, "override");
  assert.match(e.message, /6 problems/);
  // the unknown override key is only a warning
  assert.ok(e.warnings.some((w) => w.key === "tpSize"));
});

test("config type errors: port range, list items and empty strings are checked", () => {
  const e = configError(() =>
    load({ overrides: { pd_peer_alloc_port: [7400, 70000], pd_peer_host: "", pd_proxy_port: 0 } })
  );
  assert.match(issueFor(e, "pd_peer_alloc_port").message, /item 1/);
  assert.equal(issueFor(e, "pd_peer_host").received, '""');
  assert.equal(issueFor(e, "pd_proxy_port").received, "0");
});

test("config type errors: null is refused for keys that cannot be null", () => {
  const e = configError(() => load({ file: tmpYaml("chunk_size:\nlocal_cpu: null\n") }));
  assert.equal(issueFor(e, "chunk_size").received, "null");
  assert.equal(issueFor(e, "local_cpu").received, "null");
});

test("config type errors: nullable keys accept null from a file", () => {
  const { config } = load({ file: tmpYaml("pd_role: null\nnixl_backends: ~\n") });
  assert.equal(config.pd_role, null);
  assert.equal(config.nixl_backends, null);
});

test("config type errors: a bad tpSize option is an issue", () => {
  for (const tpSize of [0, -1, 1.5, NaN]) {
    assert.equal(issueFor(configError(() => load({ tpSize })), "tp_size").source, "option:tpSize");
  }
});

test("config the file: __proto__ keys are ignored with a warning, nothing is polluted", () => {
  const path = tmpYaml("__proto__:\n  polluted: 1\nextra_config:\n  __proto__:\n    polluted: 2\n");
  const { config, warnings } = load({ file: path });
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
  assert.equal(Object.getPrototypeOf(config.extra_config), Object.prototype);
  assert.deepEqual(warnings.map((w) => w.key).sort(), ["__proto__", "extra_config.__proto__"]);
});

test("config depth: YAML and overrides nested too deeply are ConfigErrors naming the key, not stack overflows", () => {
  const deepYaml = (n: number) => `extra_config:\n  x: ${"[".repeat(n)}${"]".repeat(n)}\n`;
  for (const n of [33, 100_000]) {
    const path = tmpYaml(deepYaml(n));
    const e = configError(() => load({ file: path }));
    const i = e.issues[0];
    assert.equal(e.issues.length, 1);
    assert.ok(i.key === "extra_config.x" || i.key === "config_file", i.key);
    assert.ok(i.message.includes(path) || i.source === `file:${path}`, i.message);
    assert.match(i.message, /nested (more than 32 levels deep|too deeply)/);
  }
  // block mappings thousands of levels deep (the YAML parser itself recurses per level)
  const block = "a:\n" +
    Array.from({ length: 3000 }, (_, i) => `${" ".repeat(i + 1)}b${i}:`).join("\n") + " 1\n";
  assert.match(configError(() => load({ file: tmpYaml(block) })).message, /nested/);
  assert.deepEqual(load({ file: tmpYaml(deepYaml(31)) }).config.extra_config.x, nest(31));
  let o: unknown = 1;
  for (let i = 0; i < 100_000; i++) o = { a: o };
  for (const overrides of [{ extra_config: { deep: o } }, { "extra_config.deep": o }]) {
    const i = issueFor(configError(() => load({ overrides })), "extra_config.deep");
    assert.equal(i.source, "override");
    assert.match(i.message, /^extra_config\.deep \(override\): nested more than 32 levels/);
  }
});

function nest(n: number): unknown {
  let v: unknown = [];
  for (let i = 1; i < n; i++) v = [v];
  return v;
}
