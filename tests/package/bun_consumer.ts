/**
 * The Bun (npm) user's path: `npm pack` makes the tarball a registry would serve, a
 * separate Bun project in a temporary directory installs it with `bun add` (no Deno,
 * no Bun binary comes along), runs a mock-channel `bun test`, meets the "build the shim"
 * error on first native use, builds the shim with `bunx kvport build`, and runs a PD
 * pair over the built-in engine with every byte checked; Node.js, which has no FFI,
 * gets one sentence.
 *
 * Run by `deno task test:package` (a CI step of .ci/run); needs a C compiler and the npm
 * registry (for yaml, zod and msgpack).
 *
 * ```sh
 * bun test ./tests/package/bun_consumer.ts
 * ```
 * @module
 */
import { ABI_VERSION } from "../../ffi/mod.ts";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { after, before, test } from "node:test";
import { NATIVE_FILES } from "../../cli/native_files.ts";
import { VERSION } from "../../ffi/version.ts";
import {
  BIN_DIR,
  CLEAN_ENV,
  expectedPdChecksum,
  lastJson,
  ROOT,
  run,
  show,
  tempDir,
} from "./helpers.ts";

const BUN = path.join(BIN_DIR, "bun");
let work: string;
let project: string;
let env: Record<string, string | undefined>;
let packed: string[];

before(async () => {
  work = tempDir("kvport-bun-user-");
  project = path.join(work, "app");
  fs.mkdirSync(project);
  env = {
    ...CLEAN_ENV,
    NO_COLOR: "1",
    XDG_CACHE_HOME: path.join(work, "cache"),
    // `bunx kvport` runs cli/main.ts by its `#!/usr/bin/env bun` line: bun on PATH, as
    // for any Bun user.
    PATH: `${BIN_DIR}:${process.env.PATH ?? ""}`,
  };
  const dry = await run("npm", ["pack", "--dry-run", "--json"], { cwd: ROOT, env });
  assert.equal(dry.code, 0, show("npm pack --dry-run", dry));
  packed = (JSON.parse(dry.stdout)[0].files as { path: string }[]).map((f) => f.path).sort();
  const pack = await run("npm", ["pack", "--json", "--pack-destination", work], { cwd: ROOT, env });
  assert.equal(pack.code, 0, show("npm pack", pack));
  const tarball = path.join(work, JSON.parse(pack.stdout)[0].filename);
  fs.writeFileSync(
    path.join(project, "package.json"),
    JSON.stringify({ name: "kvport-bun-user", private: true, type: "module" }, null, 2),
  );
  const add = await run(BUN, ["add", tarball], { cwd: project, env, timeoutMs: 300_000 });
  assert.equal(add.code, 0, show("bun add", add));
  const fixture = (name: string) => path.join(ROOT, "tests/package/fixtures", name);
  fs.copyFileSync(fixture("user_mock_channel.ts"), path.join(project, "mock_channel.test.ts"));
  fs.copyFileSync(fixture("user_pd_pair.ts"), path.join(project, "pd_pair.ts"));
  fs.copyFileSync(fixture("user_first_use.ts"), path.join(project, "first_use.ts"));
});

after(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

const inProject = (cmd: string, args: string[], timeoutMs = 300_000) =>
  run(cmd, args, { cwd: project, env, timeoutMs });

test("npm pack ships the sources, the CLI and the Node stub, nothing of the checkout's", () => {
  for (const f of ["mod.ts", "node.js", "cli/main.ts", "cli/native_files.ts", "package.json"]) {
    assert.ok(packed.includes(f), `${f} is not in the tarball`);
  }
  const missing = NATIVE_FILES.filter((f) => !packed.includes(`native/${f}`));
  assert.deepEqual(missing, [], "build inputs missing from the tarball");
  const stray = packed.filter((f) =>
    /^(native\/build|native\/tests|tests|bench|dev|scripts|node_modules|\.ci)\//.test(f)
  );
  assert.deepEqual(stray, []);
});

test("bun add installs the runtime dependencies only: no Deno, no Bun, no type packages", () => {
  const modules = path.join(project, "node_modules");
  const installed = fs.readdirSync(modules).filter((n) => !n.startsWith(".")).sort();
  assert.deepEqual(installed, ["@kvport", "@msgpack", "tweetnacl", "yaml", "zod"]);
  let bytes = 0;
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) bytes += fs.statSync(p).size;
    }
  };
  walk(modules);
  assert.ok(bytes < 40 << 20, `node_modules holds ${(bytes / 2 ** 20).toFixed(0)} MiB`);
});

test("a Bun user's bun test runs a mock-channel test with no native library", async () => {
  const r = await inProject(BUN, ["test", "./mock_channel.test.ts"]);
  assert.equal(r.code, 0, show("bun test", r));
  assert.match(r.stdout + r.stderr, /\b1 pass\b/);
  assert.match(r.stdout + r.stderr, /\b0 fail\b/);
});

test("first native use without a shim names the command that builds it", async () => {
  const r = await inProject(BUN, ["first_use.ts"]);
  assert.equal(r.code, 0, show("first_use.ts", r));
  const res = lastJson(r.stdout);
  assert.equal(res.loaded, false, "a shim was found before one was built");
  const cli = fs.realpathSync(path.join(project, "node_modules/@kvport/nixl/cli/main.ts"));
  const message = String(res.message);
  assert.ok(message.includes(`bun ${cli} build`), `no build command in:\n${message}`);
  assert.ok(message.includes(`cache: ${env.XDG_CACHE_HOME}/kvport/${VERSION}/libkvport.so`));
});

test("bunx kvport --version and bunx kvport build work from the installed package", async () => {
  const v = await inProject(path.join(BIN_DIR, "bunx"), ["kvport", "--version"]);
  assert.equal(v.code, 0, show("bunx kvport --version", v));
  assert.equal(v.stdout.trim(), `kvport ${VERSION} (@kvport/nixl)`);
  const r = await inProject(path.join(BIN_DIR, "bunx"), ["kvport", "build", "--json"]);
  assert.equal(r.code, 0, show("bunx kvport build", r));
  const built = lastJson(r.stdout);
  assert.equal(built.library, `${env.XDG_CACHE_HOME}/kvport/${VERSION}/libkvport.so`);
  assert.equal(built.abiVersion, ABI_VERSION);
  assert.match(String(built.source), /^file:\/\/.*\/node_modules\/@kvport\/nixl\/native\/$/);
});

test("a Bun user's PD pair runs over the built-in engine, every byte checked", async () => {
  const r = await inProject(BUN, ["pd_pair.ts"], 120_000);
  assert.equal(r.code, 0, show("pd_pair.ts", r));
  assert.deepEqual(lastJson(r.stdout), {
    chunks: 6,
    bytes: 6 * (256 << 10),
    checksum: expectedPdChecksum(6, 256 << 10),
    engine: "builtin",
  });
});

test("importing the package under Node.js fails with one sentence: no FFI", async () => {
  const r = await inProject("node", ["--input-type=module", "-e", 'await import("@kvport/nixl");']);
  assert.notEqual(r.code, 0, show("node", r));
  assert.match(
    r.stderr,
    /@kvport\/nixl runs on Deno and Bun only: it calls its native library through Deno\.dlopen or bun:ffi, and Node\.js has no FFI\./,
  );
});
