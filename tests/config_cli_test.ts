// The kvport CLI, spawned as a process under the runtime running the tests
// (`deno run -A cli/main.ts ...` under Deno, `bun cli/main.ts ...` under Bun).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import process from "node:process";
import { after, onlyUnder, test } from "./helpers/skip.ts";
import { fileURLToPath } from "node:url";
import { configKeys } from "../src/config/mod.ts";
import { fixture, removeTmpYamls, tmpYaml } from "./config_util.ts";

after(removeTmpYamls);

const root = fileURLToPath(new URL("..", import.meta.url));
const isDeno = "Deno" in globalThis;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function kvport(args: string[], env: Record<string, string> = {}): Run {
  const base: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith("LMCACHE_")) base[k] = v;
  }
  const argv = isDeno ? ["run", "-A", "cli/main.ts", ...args] : ["cli/main.ts", ...args];
  const r = spawnSync(process.execPath, argv, {
    cwd: root,
    env: { ...base, NO_COLOR: "1", ...env },
    encoding: "utf8",
    timeout: 60_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("cli: kvport --help lists the commands, exit 0", () => {
  const r = kvport(["--help"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Usage: kvport <command>/);
  assert.match(r.stdout, /\n {2}config {2}/);
});

test("cli: no command prints the usage to stderr, exit 2", () => {
  const r = kvport([]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /Commands:/);
});

test("cli: an unknown command exits 2 with the list", () => {
  const r = kvport(["confgi"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown command "confgi"/);
  assert.match(r.stderr, /config/);
});

test("cli: config --help is generated from the key table", () => {
  const r = kvport(["config", "--help"]);
  assert.equal(r.code, 0, r.stderr);
  for (const k of configKeys) {
    assert.ok(r.stdout.includes(`  ${k.name}: `), k.name);
    assert.ok(r.stdout.includes(k.inExtraConfig ? "LMCACHE_EXTRA_CONFIG" : k.env), k.env);
  }
  assert.match(r.stdout, /--tp-size N/);
  assert.match(r.stdout, /Deprecated names: nixl_role/);
  assert.match(r.stdout, /nixl_buffer_size is always the NIXL storage buffer size/);
  assert.deepEqual(kvport(["help", "config"]).stdout, r.stdout);
});

test("cli: config prints values with their sources; warnings go to stderr", () => {
  const path = fixture("pd_decoder_legacy.yaml");
  const r = kvport(["config", "--file", path], { LMCACHE_CHUNK_SIZE: "128" });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^pd_role +"receiver" +file:${path}$`, "m"));
  assert.match(r.stdout, /^chunk_size +128 +env:LMCACHE_CHUNK_SIZE$/m);
  assert.match(r.stdout, /^save_unfull_chunk +true +derived:enable_pd$/m);
  assert.match(r.stdout, /^pd_allocation_timeout_sec +inf +default$/m);
  assert.match(r.stdout, /^extra_config\.nixl_pool_size +null +default$/m);
  assert.match(r.stderr, /warning: "nixl_role" is deprecated; use "pd_role"/);
  assert.doesNotMatch(r.stdout, /warning/);
});

test("cli: config --json; LMCACHE_CONFIG_FILE; --set overrides", () => {
  const path = fixture("pd_prefiller.yaml");
  const r = kvport(
    ["config", "--json", "--set", "pd_proxy_port=7777", "-s", "extra_config.foo=1"],
    {
      LMCACHE_CONFIG_FILE: path,
    },
  );
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.ok, true);
  assert.equal(j.file, path);
  assert.equal(j.config.pd_role, "sender");
  assert.equal(j.config.pd_proxy_port, 7777);
  assert.equal(j.sources.pd_proxy_port, "override");
  assert.equal(j.sources.pd_role, `file:${path}`);
  assert.equal(j.config.pd_allocation_timeout_sec, "inf");
  assert.equal(j.config.extra_config.foo, "1");
  assert.deepEqual(j.warnings, []);
});

test("cli: an invalid config exits 2 listing every error", () => {
  const path = tmpYaml("enable_pd: true\npd_role: receiver\nchunk_size: -3\n");
  const r = kvport(["config", "-f", path]);
  assert.equal(r.code, 2);
  assert.equal(r.stdout, "");
  assert.match(r.stderr, /error: invalid kvport configuration \(6 problems\)/);
  for (const key of ["chunk_size", "pd_buffer_size", "pd_buffer_device", "pd_peer_host"]) {
    assert.match(r.stderr, new RegExp(`- ${key} `));
  }
  const j = kvport(["config", "-f", path, "--json"]);
  assert.equal(j.code, 2);
  const body = JSON.parse(j.stdout);
  assert.equal(body.ok, false);
  assert.equal(body.issues.length, 6);
  assert.deepEqual(Object.keys(body.issues[0]).sort(), [
    "expected",
    "key",
    "message",
    "received",
    "source",
  ]);
});

test("cli: --tp-size checks port lists", () => {
  const r = kvport(["config", "-f", fixture("pd_decoder.yaml"), "--tp-size", "2"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /pd_peer_init_port .* has 1 port but the TP size is 2/);
  assert.equal(kvport(["config", "-f", fixture("pd_decoder.yaml"), "--tp-size", "1"]).code, 0);
});

test("cli: bad options exit 2", () => {
  for (
    const args of [
      ["config", "--bogus"],
      ["config", "--tp-size", "x"],
      ["config", "--tp-size", "0"],
      ["config", "extra"],
      ["config", "--set", "novalue"],
      ["config", "--file", "/nonexistent.yaml"],
    ]
  ) {
    const r = kvport(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.ok(r.stderr.length > 0);
  }
});

test("cli: under Deno without --allow-env the error says how to fix it", {
  skip: onlyUnder("deno", "Deno's permissions"),
}, () => {
  const r = spawnSync(
    process.execPath,
    ["run", "--no-prompt", "--allow-read", "cli/main.ts", "config"],
    { cwd: root, encoding: "utf8", timeout: 60_000 },
  );
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--allow-env/);
});
