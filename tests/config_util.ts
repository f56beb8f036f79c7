// Helpers shared by the tests/config_*_test.ts files (not a test file itself).
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  ConfigError,
  type ConfigIssue,
  loadConfig,
  type LoadConfigOptions,
  type LoadedConfig,
} from "../src/config/mod.ts";

/** Absolute path of a file under tests/fixtures/config/. */
export function fixture(name: string): string {
  return fileURLToPath(new URL(`./fixtures/config/${name}`, import.meta.url));
}

let dir: string | null = null;
let n = 0;
/**
 * Writes `text` to a fresh temporary .yaml file and returns its path. A file that uses it
 * calls `after(removeTmpYamls)` at its top level.
 */
export function tmpYaml(text: string): string {
  if (dir === null || !existsSync(dir)) dir = mkdtempSync(join(tmpdir(), "kvport-config-test-"));
  const path = join(dir, `c${n++}.yaml`);
  writeFileSync(path, text);
  return path;
}

/** Removes the files of {@linkcode tmpYaml} (and their directory). */
export function removeTmpYamls(): void {
  if (dir !== null) rmSync(dir, { recursive: true, force: true });
  dir = null;
}

/** loadConfig with an empty environment unless one is given. */
export function load(options: LoadConfigOptions = {}): LoadedConfig {
  return loadConfig({ env: {}, ...options });
}

/** Runs `fn`, asserts it throws a ConfigError, returns it. */
export function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
    return e;
  }
  assert.fail("expected a ConfigError, but the configuration loaded");
}

/** The issue about `key`, asserting there is one. */
export function issueFor(e: ConfigError, key: string): ConfigIssue {
  const issue = e.issues.find((i) => i.key === key);
  assert.ok(issue, `no issue for ${key}; issues: ${e.issues.map((i) => i.message).join(" | ")}`);
  return issue;
}

/** A valid PD sender configuration, as overrides. */
export const SENDER: Readonly<Record<string, unknown>> = {
  enable_pd: true,
  pd_role: "sender",
  pd_buffer_size: 1 << 20,
  pd_buffer_device: "cpu",
  pd_proxy_host: "127.0.0.1",
  pd_proxy_port: 7500,
};

/** A valid PD receiver configuration, as overrides. */
export const RECEIVER: Readonly<Record<string, unknown>> = {
  enable_pd: true,
  pd_role: "receiver",
  pd_buffer_size: 1 << 20,
  pd_buffer_device: "cuda:1",
  pd_peer_host: "127.0.0.1",
  pd_peer_init_port: [7300],
  pd_peer_alloc_port: [7400],
};
