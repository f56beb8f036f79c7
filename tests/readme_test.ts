/**
 * Every ```ts block of README.md is a whole program: each is run as written, in a
 * temporary working directory (holding the LMCache file the configuration example
 * reads), under the runtime running this test. A `console.log(...)` line that ends in
 * `// text` promises that output: the program's stdout lines must be those promises, in
 * order.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { scratch } from "./helpers/kvport_cli.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const IS_BUN = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined";
const SHIM = path.join(ROOT, "native/build/libkvport.so");
const nativeSkip = fs.existsSync(SHIM) ? false : `no shim at ${SHIM} (deno task build)`;

const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]);

/** The outputs a block promises: the `// text` after each `console.log(...)` line. */
function promises(block: string): string[] {
  return block.split("\n").filter((l) => /^\s*console\.log\(/.test(l)).map((l) => {
    const m = /\);\s*\/\/ (.*)$/.exec(l);
    assert.ok(m, `a console.log in README.md promises no output: ${l.trim()}`);
    return m[1].trim();
  });
}

test("README.md has the quick-start programs, and each says what it prints", () => {
  assert.equal(blocks.length, 4, "a ts block was added or removed: check this test");
  for (const b of blocks) assert.ok(promises(b).length > 0, b);
});

blocks.forEach((block, i) => {
  const first = block.split("\n").find((l) => l.startsWith("import {"))?.trim() ?? "";
  test(`README block ${i + 1} runs as written and prints what it says (${first})`, {
    skip: nativeSkip,
  }, () => {
    const work = scratch("kvport-readme-");
    // Inside the package, so that "@kvport/nixl" resolves to this checkout as it does for
    // a user who installed it; the working directory is elsewhere.
    const programDir = fs.mkdtempSync(path.join(ROOT, "tests", ".readme-"));
    try {
      fs.copyFileSync(
        path.join(ROOT, "tests/fixtures/pd/lmcache-decoder-config.yaml"),
        path.join(work.dir, "lmcache.yaml"),
      );
      const program = path.join(programDir, `block_${i + 1}.ts`);
      fs.writeFileSync(program, block);
      const args = IS_BUN
        ? [program]
        : ["run", "-A", `--config=${path.join(ROOT, "deno.json")}`, program];
      const env: Record<string, string | undefined> = { ...process.env, NO_COLOR: "1" };
      delete env.LMCACHE_CONFIG_FILE;
      const r = spawnSync(process.execPath, args, {
        cwd: work.dir,
        env,
        encoding: "utf8",
        timeout: 60_000,
      });
      assert.equal(r.status, 0, `block ${i + 1} failed:\n${r.stdout}\n${r.stderr}`);
      const printed = r.stdout.trim().split("\n").map((l) => l.trim());
      assert.deepEqual(printed, promises(block), r.stderr);
      // A program that left its data on disk would show here.
      assert.deepEqual(fs.readdirSync(work.dir), ["lmcache.yaml"]);
    } finally {
      fs.rmSync(programDir, { recursive: true, force: true });
      work.remove();
    }
  });
});
