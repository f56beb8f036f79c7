/**
 * The JSR user's path, proven without JSR: the files `deno publish --dry-run` lists are
 * served over HTTP (modules unfurled as JSR serves them), and a separate Deno project in
 * a temporary directory imports the package by that URL only. It type-checks, runs a
 * mock-channel `deno test`, meets the "build the shim" error on first native use, builds
 * the shim with the package's own command (C sources fetched over HTTP), and runs a PD
 * pair over the built-in engine with every byte checked.
 *
 * Run by `deno task test:package` (a CI step of .ci/run); needs a C compiler and the npm
 * registry (the user project resolves yaml, zod and msgpack as a JSR user's would).
 *
 * ```sh
 * deno test -A tests/package/jsr_user.ts
 * ```
 * @module
 */
import { ABI_VERSION } from "../../ffi/mod.ts";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, test } from "node:test";
import { NATIVE_FILES } from "../../cli/native_files.ts";
import { VERSION } from "../../ffi/version.ts";
import {
  CLEAN_ENV,
  DENO,
  expectedPdChecksum,
  lastJson,
  type PackageServer,
  publishedFiles,
  ROOT,
  run,
  servePackage,
  show,
  tempDir,
} from "./helpers.ts";

let server: PackageServer;
let files: string[];
let project: string;
let env: Record<string, string | undefined>;
let allowImport: string;

before(async () => {
  files = await publishedFiles();
  server = await servePackage(files);
  project = tempDir("kvport-jsr-user-");
  const exports = JSON.parse(fs.readFileSync(path.join(ROOT, "deno.json"), "utf8")).exports;
  // What `deno add jsr:@kvport/nixl` gives a project: the package name and its entry points.
  const imports: Record<string, string> = {};
  for (const [sub, target] of Object.entries(exports as Record<string, string>)) {
    imports[`@kvport/nixl${sub === "." ? "" : sub.slice(1)}`] = new URL(target, server.url).href;
  }
  fs.writeFileSync(path.join(project, "deno.json"), JSON.stringify({ imports }, null, 2));
  const fixture = (name: string) => path.join(ROOT, "tests/package/fixtures", name);
  fs.copyFileSync(fixture("user_mock_channel.ts"), path.join(project, "mock_channel_test.ts"));
  fs.copyFileSync(fixture("user_pd_pair.ts"), path.join(project, "pd_pair.ts"));
  fs.copyFileSync(fixture("user_first_use.ts"), path.join(project, "first_use.ts"));
  env = {
    ...CLEAN_ENV,
    NO_COLOR: "1",
    XDG_CACHE_HOME: path.join(project, "cache"),
    // Its own Deno cache: nothing of the checkout's is reused, the modules come over HTTP.
    DENO_DIR: path.join(project, "deno-dir"),
  };
  allowImport = `--allow-import=${new URL(server.url).host}`;
});

after(async () => {
  await server?.close();
  if (project) fs.rmSync(project, { recursive: true, force: true });
});

const deno = (args: string[], timeoutMs = 300_000) =>
  run(DENO, args, { cwd: project, env, timeoutMs });

test("the package ships the native sources kvport build fetches", () => {
  const missing = NATIVE_FILES.filter((f) => !files.includes(`native/${f}`));
  assert.deepEqual(missing, [], "published files lack build inputs");
  assert.ok(files.includes("cli/native_files.ts") && files.includes("mod.ts"));
  assert.ok(!files.some((f) => f.startsWith("native/build/")), "no binaries are published");
});

test("a JSR user's project type-checks against the served package", async () => {
  const r = await deno([
    "check",
    allowImport,
    "mock_channel_test.ts",
    "pd_pair.ts",
    "first_use.ts",
  ]);
  assert.equal(r.code, 0, show("deno check", r));
  assert.doesNotMatch(r.stderr, /TS2307|bun-types/);
  assert.ok(server.requests.includes("ffi/bun.ts"), "the Bun loader was type-checked too");
});

test("a JSR user's deno test runs a mock-channel test with no native library", async () => {
  const r = await deno(["test", allowImport, "--allow-net", "mock_channel_test.ts"]);
  assert.equal(r.code, 0, show("deno test", r));
  assert.match(r.stdout, /ok \| 1 passed \| 0 failed/);
});

test("first native use without a shim names the command that builds it", async () => {
  const r = await deno(["run", "-A", "first_use.ts"]);
  assert.equal(r.code, 0, show("first_use.ts", r));
  const res = lastJson(r.stdout);
  assert.equal(res.loaded, false, "a shim was found before one was built");
  assert.equal(res.name, "NativeLibraryError");
  const message = String(res.message);
  assert.ok(
    message.includes(`deno run -A ${server.url}cli/main.ts build`),
    `the error does not name the build command:\n${message}`,
  );
  assert.ok(message.includes(`cache: ${env.XDG_CACHE_HOME}/kvport/${VERSION}/libkvport.so`));
  assert.doesNotMatch(message, /Could not open library: Could not open library/);
});

test("kvport build fetches the C sources over HTTP and builds the shim into the cache", async () => {
  const before = server.requests.length;
  const r = await deno(["run", "-A", `${server.url}cli/main.ts`, "build", "--json"]);
  assert.equal(r.code, 0, show("kvport build", r));
  const built = lastJson(r.stdout);
  const dir = `${env.XDG_CACHE_HOME}/kvport/${VERSION}`;
  assert.equal(built.library, `${dir}/libkvport.so`);
  assert.equal(built.abiVersion, ABI_VERSION);
  assert.equal(built.source, `${server.url}native/`);
  const fetched = new Set(server.requests.slice(before));
  const notFetched = NATIVE_FILES.filter((f) => !fetched.has(`native/${f}`));
  assert.deepEqual(notFetched, [], "build inputs not fetched over HTTP");
  assert.deepEqual(server.missing, [], "something outside the package was asked for");
  assert.ok(fs.statSync(`${dir}/libkvport.so`).size > 100_000);
  assert.deepEqual(fs.readdirSync(dir).sort(), ["kvport-limits", "libkvport.so"]);
});

test("a JSR user's PD pair runs over the built-in engine, every byte checked", async () => {
  const r = await deno(["run", "-A", "pd_pair.ts"], 120_000);
  assert.equal(r.code, 0, show("pd_pair.ts", r));
  const res = lastJson(r.stdout);
  assert.deepEqual(res, {
    chunks: 6,
    bytes: 6 * (256 << 10),
    checksum: expectedPdChecksum(6, 256 << 10),
    engine: "builtin",
  });
});
