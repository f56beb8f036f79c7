// Seeded fuzzing: thousands of random YAML documents, environments and overrides. Each
// load must return a valid, frozen configuration or throw a ConfigError with complete
// issues - never anything else.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { after, test } from "node:test";
import { configSchema } from "../src/config/schema.ts";
import { stringify } from "yaml";
import {
  CONFIG_ALIASES,
  ConfigError,
  configKeys,
  loadConfig,
  type LoadConfigOptions,
} from "../src/config/mod.ts";
import { removeTmpYamls, tmpYaml } from "./config_util.ts";

after(removeTmpYamls);

/** mulberry32: a small seeded PRNG. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TOP = configKeys.filter((k) => !k.inExtraConfig).map((k) => k.name);
const EXTRA = configKeys.filter((k) => k.inExtraConfig).map((k) => k.leaf);
const ALIASES = CONFIG_ALIASES.map((a) => a.from);
const ODD_KEYS = [
  "",
  "x",
  "chunk_sise",
  "PD_ROLE",
  "remote_url",
  "enable_nixl",
  "__proto__",
  "a.b",
];
const STRINGS = [
  "",
  " ",
  "sender",
  "receiver",
  "both",
  "cpu",
  "cuda",
  "cuda:1",
  "cuda:",
  "nixl",
  "mock_memory",
  "POSIX",
  "OBJ",
  "GDS",
  "UCX,GDS",
  "7300, 7301",
  "[1,2]",
  "true",
  "False",
  "1",
  "0",
  "yes",
  "inf",
  "-inf",
  "nan",
  "1e400",
  "12a",
  '"quoted"',
  "'q'",
  '{"a": 1}',
  "{",
  "null",
  "\u0000",
  "é",
  "1_000",
];

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)];
}

function value(r: () => number, depth: number): unknown {
  const k = Math.floor(r() * 14);
  switch (k) {
    case 0:
      return null;
    case 1:
      return r() < 0.5;
    case 2:
      return Math.floor(r() * 70000) - 100;
    case 3:
      return (r() - 0.5) * 1e6;
    case 4:
      return pick(r, [Infinity, -Infinity, NaN, 2 ** 60, -0, 0, 1, 65535, 65536]);
    case 5:
    case 6:
      return pick(r, STRINGS);
    case 7:
      return Array.from({ length: Math.floor(r() * 4) }, () => Math.floor(r() * 70000));
    case 8:
      return depth > 2 ? 1 : Array.from({ length: Math.floor(r() * 3) }, () => value(r, depth + 1));
    case 9:
      return depth > 2 ? "x" : map(r, depth + 1, EXTRA);
    case 10:
      return new Date(Math.floor(r() * 1e12));
    default:
      return Math.floor(r() * 10);
  }
}

function map(r: () => number, depth: number, keys: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const n = Math.floor(r() * 8);
  for (let i = 0; i < n; i++) {
    const key = r() < 0.8 ? pick(r, keys) : r() < 0.5 ? pick(r, ALIASES) : pick(r, ODD_KEYS);
    Object.defineProperty(out, key, {
      value: key === "extra_config" && r() < 0.7 ? map(r, depth + 1, EXTRA) : value(r, depth),
      enumerable: true,
      configurable: true,
      writable: true,
    });
  }
  return out;
}

function mutate(r: () => number, text: string): string {
  const chars = [...text];
  const n = Math.floor(r() * 4);
  for (let i = 0; i < n; i++) {
    const at = Math.floor(r() * (chars.length + 1));
    const what = r();
    if (what < 0.4) chars.splice(at, 1);
    else {chars.splice(
        at,
        0,
        pick(r, [":", "-", " ", "\n", "[", "{", "'", '"', "&a", "*a", "\t", "#", "!!"]),
      );}
  }
  return chars.join("");
}

function check(options: LoadConfigOptions, what: string): "ok" | "error" {
  let loaded;
  try {
    loaded = loadConfig(options);
  } catch (e) {
    if (!(e instanceof ConfigError)) {
      assert.fail(
        `${what}: threw ${e instanceof Error ? e.stack : e} for ${JSON.stringify(options)}`,
      );
    }
    assert.ok(e.issues.length > 0, what);
    for (const i of e.issues) {
      for (const f of ["key", "source", "expected", "received", "message"] as const) {
        assert.equal(typeof i[f], "string", `${what}: issue.${f}`);
      }
    }
    return "error";
  }
  assert.ok(configSchema.safeParse(loaded.config).success, what);
  assert.ok(Object.isFrozen(loaded.config) && Object.isFrozen(loaded.config.extra_config), what);
  for (const k of configKeys) assert.equal(typeof loaded.sources[k.name], "string", what);
  return "ok";
}

test("fuzz: random YAML documents load or fail with a ConfigError", () => {
  const r = rng(0x5eed);
  const path = tmpYaml("");
  const seen = { ok: 0, error: 0 };
  for (let i = 0; i < 2500; i++) {
    let text = stringify(map(r, 0, [...TOP, ...TOP]), { version: "1.1" });
    if (r() < 0.4) text = mutate(r, text);
    if (r() < 0.05) {
      text = pick(r, ["", "---", "- a", "~", "a: &x [*x]", "? [a]\n: b", "!!binary x"]);
    }
    writeFileSync(path, text);
    seen[check({ file: path, env: {} }, `yaml #${i}`)]++;
  }
  assert.ok(seen.ok > 100 && seen.error > 100, JSON.stringify(seen));
});

test("fuzz: random environments load or fail with a ConfigError", () => {
  const r = rng(42);
  const seen = { ok: 0, error: 0 };
  for (let i = 0; i < 2500; i++) {
    const env: Record<string, string> = {};
    const n = Math.floor(r() * 6);
    for (let j = 0; j < n; j++) {
      const key = r() < 0.8 ? pick(r, TOP) : r() < 0.5 ? pick(r, ALIASES) : pick(r, ODD_KEYS);
      let text = r() < 0.6 ? pick(r, STRINGS) : JSON.stringify(value(r, 1)) ?? "";
      if (key === "extra_config" && r() < 0.6) text = JSON.stringify(map(r, 1, EXTRA));
      if (r() < 0.2) text = mutate(r, text);
      if (r() < 0.1) text = `"${text}"`;
      env[`LMCACHE_${key.toUpperCase()}`] = text;
    }
    seen[check({ env }, `env #${i}`)]++;
  }
  assert.ok(seen.ok > 100 && seen.error > 100, JSON.stringify(seen));
});

test("fuzz: random overrides and tpSize load or fail with a ConfigError", () => {
  const r = rng(7);
  for (let i = 0; i < 1500; i++) {
    const tpSize = r() < 0.3 ? pick(r, [1, 2, 4, 0, -1, 1.5, NaN]) : undefined;
    check({ env: {}, overrides: map(r, 0, TOP), tpSize }, `overrides #${i}`);
  }
});
