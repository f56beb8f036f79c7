import assert from "node:assert/strict";
import { test } from "node:test";
import { convertEnvText, unquote } from "../src/config/mod.ts";
import { configError, issueFor, load } from "./config_util.ts";

const env = (vars: Record<string, string>) => load({ env: vars });

test("env: every key is read from LMCACHE_<KEY>", () => {
  const { config, sources } = env({
    LMCACHE_CHUNK_SIZE: "512",
    LMCACHE_PD_ROLE: "sender",
    LMCACHE_PD_PEER_INIT_PORT: "7300, 7301,7302",
    LMCACHE_NIXL_BACKENDS: "UCX,GDS",
    LMCACHE_MAX_LOCAL_CPU_SIZE: "0.5",
    LMCACHE_PD_ALLOCATION_TIMEOUT_SEC: "inf",
    LMCACHE_EXTRA_CONFIG: '{"nixl_backend": "OBJ", "nixl_backend_params": {"bucket": "b"}}',
  });
  assert.equal(config.chunk_size, 512);
  assert.equal(config.pd_role, "sender");
  assert.deepEqual(config.pd_peer_init_port, [7300, 7301, 7302]);
  assert.deepEqual(config.nixl_backends, ["UCX", "GDS"]);
  assert.equal(config.max_local_cpu_size, 0.5);
  assert.equal(config.pd_allocation_timeout_sec, Infinity);
  assert.equal(config.extra_config.nixl_backend, "OBJ");
  assert.deepEqual(config.extra_config.nixl_backend_params, { bucket: "b" });
  assert.equal(sources.pd_peer_init_port, "env:LMCACHE_PD_PEER_INIT_PORT");
});

test("env: booleans are true/1 and false/0 in any case; other words are errors", () => {
  for (const t of ["true", "TRUE", "True", "1", " true ", '"true"', "'1'"]) {
    assert.equal(
      env({ LMCACHE_LOCAL_CPU: "false", LMCACHE_SAVE_UNFULL_CHUNK: t }).config
        .save_unfull_chunk,
      true,
      t,
    );
  }
  for (const f of ["false", "FALSE", "0", " False"]) {
    assert.equal(env({ LMCACHE_LOCAL_CPU: f }).config.local_cpu, false, f);
  }
  for (const bad of ["yes", "no", "on", "off", "2", "truee", "t"]) {
    const i = issueFor(configError(() => env({ LMCACHE_LOCAL_CPU: bad })), "local_cpu");
    assert.equal(i.source, "env:LMCACHE_LOCAL_CPU");
    assert.equal(i.received, JSON.stringify(bad));
    assert.equal(i.expected, "true or false");
    assert.match(i.message, /true\/1 or false\/0/);
  }
});

test("env: one pair of surrounding quotes is stripped, whitespace trimmed", () => {
  assert.equal(unquote(`  "cuda:0"  `), "cuda:0");
  assert.equal(unquote(`'x'`), "x");
  assert.equal(unquote(`""x""`), `"x"`);
  assert.equal(unquote(`"x'`), `"x'`);
  assert.equal(unquote(`" spaced "`), "spaced");
  const { config } = env({
    LMCACHE_PD_BUFFER_DEVICE: ' "cuda:3" ',
    LMCACHE_PD_PEER_HOST: "'10.0.0.1'",
    LMCACHE_CHUNK_SIZE: '"128"',
    LMCACHE_P2P_INIT_PORTS: "'8200, 8201'",
  });
  assert.equal(config.pd_buffer_device, "cuda:3");
  assert.equal(config.pd_peer_host, "10.0.0.1");
  assert.equal(config.chunk_size, 128);
  assert.deepEqual(config.p2p_init_ports, [8200, 8201]);
});

test("env: an empty (or blank, or empty-quoted) variable is ignored with a warning", () => {
  for (const v of ["", "   ", '""', "''"]) {
    const { config, warnings, sources } = env({ LMCACHE_CHUNK_SIZE: v });
    assert.equal(config.chunk_size, 256);
    assert.equal(sources.chunk_size, "default");
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].code, "empty_env");
    assert.match(warnings[0].message, /LMCACHE_CHUNK_SIZE is empty/);
  }
});

test("env: bad numbers are errors naming the variable and the text", () => {
  const cases: [string, string][] = [
    ["LMCACHE_CHUNK_SIZE", "12a"],
    ["LMCACHE_CHUNK_SIZE", "1.5"],
    ["LMCACHE_CHUNK_SIZE", "1e3"],
    ["LMCACHE_CHUNK_SIZE", "0x10"],
    ["LMCACHE_CHUNK_SIZE", "99999999999999999999"],
    ["LMCACHE_MAX_LOCAL_CPU_SIZE", "five"],
    ["LMCACHE_MAX_LOCAL_CPU_SIZE", "nan"],
    ["LMCACHE_PD_PROXY_PORT", "-1"],
    ["LMCACHE_PD_PROXY_PORT", "65536"],
    ["LMCACHE_PD_PEER_INIT_PORT", "7300;7301"],
    ["LMCACHE_PD_PEER_INIT_PORT", "7300,,abc"],
  ];
  for (const [name, text] of cases) {
    const key = name.slice(8).toLowerCase();
    const i = issueFor(configError(() => env({ [name]: text })), key);
    assert.equal(i.source, `env:${name}`, `${name}=${text}`);
    assert.equal(i.received, JSON.stringify(text));
  }
});

test("env: integers allow a sign and Python's underscores; floats exponents", () => {
  assert.equal(env({ LMCACHE_CHUNK_SIZE: "+1_024" }).config.chunk_size, 1024);
  assert.equal(env({ LMCACHE_MAX_LOCAL_CPU_SIZE: "2.5e1" }).config.max_local_cpu_size, 25);
  assert.equal(env({ LMCACHE_MAX_LOCAL_CPU_SIZE: ".5" }).config.max_local_cpu_size, 0.5);
  assert.equal(env({ LMCACHE_MAX_LOCAL_CPU_SIZE: "3" }).config.max_local_cpu_size, 3);
});

test("env: lists drop empty items and accept brackets", () => {
  assert.deepEqual(env({ LMCACHE_P2P_INIT_PORTS: " 1, 2 ,,3, " }).config.p2p_init_ports, [1, 2, 3]);
  assert.deepEqual(env({ LMCACHE_P2P_INIT_PORTS: "[8200, 8201]" }).config.p2p_init_ports, [
    8200,
    8201,
  ]);
  assert.deepEqual(env({ LMCACHE_NIXL_BACKENDS: '["UCX", "POSIX"]' }).config.nixl_backends, [
    "UCX",
    "POSIX",
  ]);
  assert.deepEqual(env({ LMCACHE_NIXL_BACKENDS: "UCX" }).config.nixl_backends, ["UCX"]);
  assert.deepEqual(convertEnvText("int_list", ","), { ok: true, value: [] });
});

test("env: bad JSON in LMCACHE_EXTRA_CONFIG is an error", () => {
  for (const text of ["{", "[1]", "42", "{'a': 1}", "null", "nixl_backend=POSIX"]) {
    const i = issueFor(configError(() => env({ LMCACHE_EXTRA_CONFIG: text })), "extra_config");
    assert.equal(i.source, "env:LMCACHE_EXTRA_CONFIG");
    assert.equal(i.expected, "a JSON object");
    assert.equal(i.received, JSON.stringify(text));
  }
});

test("env: typed entries inside LMCACHE_EXTRA_CONFIG are checked", () => {
  const e = configError(() =>
    env({ LMCACHE_EXTRA_CONFIG: '{"nixl_pool_size": "many", "nixl_backend": "S3"}' })
  );
  assert.equal(issueFor(e, "extra_config.nixl_pool_size").source, "env:LMCACHE_EXTRA_CONFIG");
  assert.equal(issueFor(e, "extra_config.nixl_backend").received, '"S3"');
  // quoted JSON is unquoted once
  const { config } = env({ LMCACHE_EXTRA_CONFIG: `'{"nixl_pool_size": 3}'` });
  assert.equal(config.extra_config.nixl_pool_size, 3);
});

test("env: unrelated LMCACHE_* variables are ignored; near misses warn", () => {
  const { warnings } = env({
    LMCACHE_USE_EXPERIMENTAL: "True",
    LMCACHE_LOG_LEVEL: "DEBUG",
    LMCACHE_SOMETHING_ELSE_ENTIRELY: "1",
    LMCACHE_CHUNK_SISE: "3",
    PATH: "/usr/bin",
    LMCACHE_: "x",
  });
  assert.equal(warnings.length, 1);
  assert.equal(warnings[0].code, "unknown_key");
  assert.match(warnings[0].message, /LMCACHE_CHUNK_SISE.*did you mean "chunk_size"/);
});

test("env: a str key keeps inner text as given", () => {
  const { config } = env({ LMCACHE_CONTROLLER_PULL_URL: "tcp://h:1,2" });
  assert.equal(config.controller_pull_url, "tcp://h:1,2");
});

test("env: a deeply nested LMCACHE_EXTRA_CONFIG is a ConfigError naming the variable, not a stack overflow", () => {
  for (const depth of [33, 1_000, 200_000]) {
    const text = '{"a":'.repeat(depth) + "1" + "}".repeat(depth);
    const i = issueFor(configError(() => env({ LMCACHE_EXTRA_CONFIG: text })), "extra_config");
    assert.equal(i.source, "env:LMCACHE_EXTRA_CONFIG");
    assert.match(i.message, /^extra_config \(env:LMCACHE_EXTRA_CONFIG\)/);
    assert.match(i.message, /nested more than 32 levels deep/);
    assert.ok(i.message.length < 400, `${i.message.length} characters`);
  }
  // 32 levels pass (the outer object is one of them), and every entry inside is kept
  const ok = '{"a":'.repeat(31) + '{"b":"x"}' + "}".repeat(31);
  let v: unknown = env({ LMCACHE_EXTRA_CONFIG: ok }).config.extra_config;
  for (let i = 0; i < 31; i++) v = (v as Record<string, unknown>).a;
  assert.deepEqual(v, { b: "x" });
  // a typed entry too deep inside: the entry's name and the variable
  const params = JSON.stringify({ nixl_backend_params: "[".repeat(40) + "]".repeat(40) });
  const e = configError(() => env({ LMCACHE_EXTRA_CONFIG: params }));
  assert.equal(issueFor(e, "extra_config.nixl_backend_params").source, "env:LMCACHE_EXTRA_CONFIG");
});
