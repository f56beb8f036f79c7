// `kvport storage put|get|ls|stats`, spawned as a process under the runtime running the
// tests. Needs libkvport.so (skipped with a line saying why otherwise).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import process from "node:process";
import { describe, test } from "./helpers/skip.ts";
import { fileURLToPath } from "node:url";
import { nativeLibrary } from "../src/agent.ts";
import { pattern, tempDir } from "./helpers/storage_util.ts";

const skip = await nativeLibrary().then(
  () => undefined,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);
if (skip) console.log(`storage_cli_test skipped: ${skip}`);

const root = fileURLToPath(new URL("..", import.meta.url));
const isDeno = "Deno" in globalThis;

function kvport(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith("LMCACHE_")) env[k] = v;
  }
  const argv = isDeno ? ["run", "-A", "cli/main.ts", ...args] : ["cli/main.ts", ...args];
  const r = spawnSync(process.execPath, argv, {
    cwd: root,
    env,
    encoding: "utf8",
    timeout: 60_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("kvport storage", { skip }, () => {
  test("put, get (file and stdout), ls, stats on a static pool; errors exit 1 or 2", () => {
    const { dir, cleanup } = tempDir();
    try {
      const cfg = `${dir}/lmcache.yaml`;
      writeFileSync(
        cfg,
        [
          "nixl_buffer_size: 65536",
          "nixl_buffer_device: cpu",
          "extra_config:",
          "  enable_nixl_storage: true",
          "  nixl_backend: POSIX",
          "  nixl_pool_size: 4",
          `  nixl_path: ${dir}/pool`,
          "",
        ].join("\n"),
      );
      const data = pattern(10_000, 1);
      writeFileSync(`${dir}/in.bin`, data);
      // a fresh pool needs the chunk size
      let r = kvport(["storage", "put", "-c", cfg, "-k", "a@1", "-f", `${dir}/in.bin`]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /Pass pageSize|chunk size/);
      r = kvport([
        "storage",
        "put",
        "-c",
        cfg,
        "-k",
        "a@1",
        "-f",
        `${dir}/in.bin`,
        "--chunk-bytes",
        "16384",
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /stored a@1 \(10000 bytes\)/);
      r = kvport(["storage", "get", "-c", cfg, "-k", "a@1", "-f", `${dir}/out.bin`]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(new Uint8Array(readFileSync(`${dir}/out.bin`)), data);
      writeFileSync(`${dir}/small.txt`, "hello chunk");
      assert.equal(
        kvport(["storage", "put", "-c", cfg, "-k", "b", "-f", `${dir}/small.txt`]).code,
        0,
      );
      r = kvport(["storage", "get", "-c", cfg, "-k", "b"]);
      assert.equal(r.stdout, "hello chunk");
      r = kvport(["storage", "ls", "-c", cfg]);
      assert.equal(r.stdout, "a@1\nb\n");
      r = kvport(["storage", "stats", "-c", cfg, "--json"]);
      const s = JSON.parse(r.stdout);
      assert.equal(s.slots, 4);
      assert.equal(s.used, 2);
      assert.equal(s.bytes, 10_011);
      r = kvport(["storage", "stats", "-c", cfg]);
      assert.match(r.stdout, /slots {5}4: 2 used, 2 free, 0 pinned/);
      r = kvport(["storage", "get", "-c", cfg, "-k", "missing"]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /key "missing" is not stored/);
      writeFileSync(`${dir}/big.bin`, new Uint8Array(20_000));
      r = kvport(["storage", "put", "-c", cfg, "-k", "c", "-f", `${dir}/big.bin`]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /20000 bytes, a chunk holds at most 16384/);
      r = kvport(["storage", "frob", "-c", cfg]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /expected one of put, get, ls, stats/);
      assert.equal(kvport(["storage", "--help"]).code, 0);
    } finally {
      cleanup();
    }
  });
});
