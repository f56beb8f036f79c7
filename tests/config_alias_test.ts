import assert from "node:assert/strict";
import { after, test } from "node:test";
import { CONFIG_ALIASES, configKeys } from "../src/config/mod.ts";
import {
  configError,
  issueFor,
  load,
  RECEIVER,
  removeTmpYamls,
  SENDER,
  tmpYaml,
} from "./config_util.ts";

after(removeTmpYamls);

const plain = [
  ["nixl_peer_host", "pd_peer_host", "10.0.0.2", "10.0.0.2"],
  ["nixl_peer_init_port", "pd_peer_init_port", [7300], [7300]],
  ["nixl_peer_alloc_port", "pd_peer_alloc_port", [7400, 7401], [7400, 7401]],
  ["nixl_proxy_host", "pd_proxy_host", "proxy", "proxy"],
  ["nixl_proxy_port", "pd_proxy_port", 7500, 7500],
  ["nixl_role", "pd_role", "both", "both"],
  ["enable_xpyd", "enable_pd", false, false],
  ["controller_url", "controller_pull_url", "h:1", "h:1"],
  ["lmcache_worker_port", "lmcache_worker_ports", 8500, [8500]],
] as const;

test("aliases: the table lists every deprecated name of the reference", () => {
  const names = CONFIG_ALIASES.map((a) => `${a.from}->${a.to}`).sort();
  assert.deepEqual(names, [
    "controller_url->controller_pull_url",
    "enable_xpyd->enable_pd",
    "lmcache_worker_port->lmcache_worker_ports",
    "nixl_buffer_size->pd_buffer_size",
    "nixl_peer_alloc_port->pd_peer_alloc_port",
    "nixl_peer_host->pd_peer_host",
    "nixl_peer_init_port->pd_peer_init_port",
    "nixl_proxy_host->pd_proxy_host",
    "nixl_proxy_port->pd_proxy_port",
    "nixl_role->pd_role",
  ]);
  for (const a of CONFIG_ALIASES) {
    assert.ok(configKeys.find((k) => k.name === a.to)?.aliases.includes(a.from), a.from);
  }
});

for (const [from, to, value, expected] of plain) {
  test(`aliases: ${from} maps to ${to} from a file, with one warning naming the source`, () => {
    const path = tmpYaml(`${from}: ${JSON.stringify(value)}\n`);
    const { config, warnings, sources } = load({ file: path });
    assert.deepEqual((config as unknown as Record<string, unknown>)[to], expected);
    assert.equal(sources[to], `file:${path}`);
    const w = warnings.filter((w) => w.code === "deprecated_alias");
    assert.equal(w.length, 1);
    assert.equal(w[0].key, from);
    assert.ok(w[0].message.includes(`"${to}"`), w[0].message);
    assert.ok(w[0].message.includes(`file:${path}`), w[0].message);
  });
}

test("aliases: from env and overrides too; one warning per name listing every source", () => {
  const path = tmpYaml("nixl_role: sender\n");
  const { config, warnings, sources } = load({
    file: path,
    env: { LMCACHE_NIXL_ROLE: "receiver", LMCACHE_LMCACHE_WORKER_PORT: "8500" },
    overrides: { nixl_role: "both" },
  });
  assert.equal(config.pd_role, "both");
  assert.equal(sources.pd_role, "override");
  assert.deepEqual(config.lmcache_worker_ports, [8500]);
  const roleWarnings = warnings.filter((w) => w.key === "nixl_role");
  assert.equal(roleWarnings.length, 1);
  assert.equal(roleWarnings[0].source, `file:${path}, env:LMCACHE_NIXL_ROLE, override`);
  assert.match(
    warnings.find((w) => w.key === "lmcache_worker_port")!.message,
    /single port becomes a list/,
  );
});

test("aliases: old and new names with different values in one source is an error naming both", () => {
  const path = tmpYaml("nixl_role: sender\npd_role: receiver\n");
  const i = issueFor(configError(() => load({ file: path })), "pd_role");
  assert.match(i.message, /nixl_role \(file:.*\) = "sender"/);
  assert.match(i.message, /pd_role \(file:.*\) = "receiver"/);
  assert.equal(i.source, `file:${path}`);
  const e = configError(() =>
    load({ env: { LMCACHE_NIXL_PEER_HOST: "a", LMCACHE_PD_PEER_HOST: "b" } })
  );
  const j = issueFor(e, "pd_peer_host");
  assert.match(j.message, /env:LMCACHE_NIXL_PEER_HOST/);
  assert.match(j.message, /env:LMCACHE_PD_PEER_HOST/);
  const k = issueFor(
    configError(() => load({ overrides: { controller_url: "a:1", controller_pull_url: "b:1" } })),
    "controller_pull_url",
  );
  assert.match(k.message, /controller_url \(override\)/);
});

test("aliases: old and new names with equal values load (with the warning)", () => {
  const path = tmpYaml("lmcache_worker_port: 8500\nlmcache_worker_ports: [8500]\n");
  const { config, warnings } = load({ file: path });
  assert.deepEqual(config.lmcache_worker_ports, [8500]);
  assert.equal(warnings.filter((w) => w.code === "deprecated_alias").length, 1);
});

test("aliases: across sources the usual precedence applies", () => {
  const path = tmpYaml("nixl_role: receiver\n");
  const { config } = load({ file: path, env: { LMCACHE_PD_ROLE: "sender" } });
  assert.equal(config.pd_role, "sender");
});

test("aliases: a bad value under an old name says so", () => {
  const i = issueFor(
    configError(() => load({ overrides: { nixl_proxy_port: "x" } })),
    "pd_proxy_port",
  );
  assert.match(i.message, /^nixl_proxy_port \(deprecated name of pd_proxy_port\) \(override\)/);
});

// The nixl_buffer_size rule.

test("nixl_buffer_size: without PD it is only the storage buffer size", () => {
  const { config, warnings } = load({ overrides: { nixl_buffer_size: 1024 } });
  assert.equal(config.nixl_buffer_size, 1024);
  assert.equal(config.pd_buffer_size, null);
  assert.deepEqual(warnings, []);
});

test("nixl_buffer_size: with PD and no pd_buffer_size it fills pd_buffer_size, warning", () => {
  const { pd_buffer_size: _, ...sender } = SENDER;
  const path = tmpYaml("nixl_buffer_size: 4096\n");
  const { config, warnings, sources } = load({ file: path, overrides: sender });
  assert.equal(config.pd_buffer_size, 4096);
  assert.equal(config.nixl_buffer_size, 4096);
  assert.equal(sources.pd_buffer_size, `file:${path}`);
  const w = warnings.find((w) => w.key === "nixl_buffer_size")!;
  assert.equal(w.code, "deprecated_alias");
  assert.match(w.message, /use "pd_buffer_size"/);
});

test("nixl_buffer_size: with PD and NIXL storage, nixl_buffer_size alone is an error", () => {
  const { pd_buffer_size: _, ...sender } = SENDER;
  const e = configError(() =>
    load({
      overrides: {
        ...sender,
        nixl_buffer_size: 4096,
        nixl_buffer_device: "cpu",
        extra_config: {
          enable_nixl_storage: true,
          nixl_backend: "POSIX",
          nixl_pool_size: 4,
          nixl_path: "/tmp",
        },
      },
    })
  );
  assert.equal(e.issues.length, 1);
  const i = issueFor(e, "pd_buffer_size");
  assert.match(i.message, /must be set explicitly/);
  assert.match(i.message, /nixl_buffer_size/);
});

test("nixl_buffer_size: PD and storage with both sizes given: each sizes its own buffer", () => {
  const { config, warnings } = load({
    overrides: {
      ...SENDER,
      nixl_buffer_size: 4096,
      nixl_buffer_device: "cuda",
      extra_config: {
        enable_nixl_storage: true,
        nixl_backend: "GDS",
        nixl_pool_size: 4,
        nixl_path: "/tmp",
      },
    },
  });
  assert.equal(config.pd_buffer_size, SENDER.pd_buffer_size);
  assert.equal(config.nixl_buffer_size, 4096);
  assert.ok(!warnings.some((w) => w.key === "nixl_buffer_size"));
});

test("nixl_buffer_size: PD without storage and two different sizes: unused warning", () => {
  const { config, warnings } = load({ overrides: { ...RECEIVER, nixl_buffer_size: 99 } });
  assert.equal(config.pd_buffer_size, RECEIVER.pd_buffer_size);
  assert.equal(warnings.find((w) => w.key === "nixl_buffer_size")?.code, "unused_value");
  const same = load({ overrides: { ...RECEIVER, nixl_buffer_size: RECEIVER.pd_buffer_size } });
  assert.ok(!same.warnings.some((w) => w.key === "nixl_buffer_size"));
});

test("nixl_peer_port and nixl_receiver_port: current LMCache reads neither; ignored with a warning", () => {
  const path = tmpYaml("nixl_peer_port: 55555\nnixl_receiver_port: 55556\n");
  const { config, warnings } = load({ file: path, env: { LMCACHE_NIXL_RECEIVER_PORT: "1" } });
  assert.equal("nixl_receiver_port" in config, false);
  const w = warnings.filter((w) => w.code === "retired_key").map((w) => `${w.key} ${w.source}`);
  assert.deepEqual(
    w.sort(),
    [
      "nixl_peer_port file:" + path,
      "nixl_receiver_port env:LMCACHE_NIXL_RECEIVER_PORT",
      "nixl_receiver_port file:" + path,
    ].sort(),
  );
  const peer = warnings.find((w) => w.key === "nixl_peer_port")!;
  assert.match(peer.message, /is ignored; current LMCache only warns .* reads neither/);
  assert.match(peer.message, /pd_peer_init_port \(PD\) and p2p_init_ports \(P2P\)/);
});
