/**
 * `kvport build` and the loader's cache directory: the manifest of native files is
 * current, the flags are the Makefile's, a build from the package's own files loads with
 * the right ABI, failures (a missing source, no compiler) name what failed and leave
 * nothing behind, and the loader looks where the build puts the library.
 */
import { ABI_VERSION } from "../ffi/mod.ts";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import process from "node:process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { NATIVE_FILES } from "../cli/native_files.ts";
import { buildShim, findCompiler, SHIM_CFLAGS, ShimBuildError } from "../cli/shim_build.ts";
import {
  buildCommand,
  dlopenReason,
  libraryCandidates,
  shimCacheDir,
  VERSION,
} from "../ffi/mod.ts";
import { engines, nativeLibrary } from "../mod.ts";
import { nativeBuildFiles, renderNativeFiles } from "../scripts/gen_native_files.ts";
import { scratch } from "./helpers/kvport_cli.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

function withEnv<T>(vars: Record<string, string | undefined>, body: () => T): T {
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(vars)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return body();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

test("cli/native_files.ts lists exactly the build inputs under native/", () => {
  const current = fs.readFileSync(path.join(ROOT, "cli/native_files.ts"), "utf8");
  assert.equal(
    current,
    renderNativeFiles(nativeBuildFiles()),
    "stale: run deno run -A scripts/gen_native_files.ts",
  );
  assert.ok(NATIVE_FILES.includes("include/kvport.h"));
  assert.ok(NATIVE_FILES.includes("tools/limits.c"));
});

test("kvport build compiles with the Makefile's C flags (less -Werror)", () => {
  const makefile = fs.readFileSync(path.join(ROOT, "native/Makefile"), "utf8");
  const m = /^CFLAGS :=((?:.*\\\n)*.*)$/m.exec(makefile);
  assert.ok(m, "no CFLAGS := line in native/Makefile");
  const flags = m[1].replace(/\\\n/g, " ").split(/\s+/).filter(Boolean)
    .map((f) => (f === "$(OPT)" ? "-O2" : f))
    .filter((f) => f !== "$(SAN)" && f !== "-Werror");
  assert.match(makefile, /^OPT \?= -O2$/m);
  assert.deepEqual([...SHIM_CFLAGS], flags);
});

test("the loader looks in the build's cache directory, after the checkout's and before NIXL_PREFIX", () => {
  withEnv({ KVPORT_LIB: undefined, NIXL_PREFIX: "/opt/nixl", XDG_CACHE_HOME: "/x/cache" }, () => {
    assert.deepEqual(shimCacheDir(), { path: `/x/cache/kvport/${VERSION}` });
    assert.deepEqual(
      libraryCandidates().map((c) => [c.source, c.path]),
      [
        ["module", path.join(ROOT, "native/build/libkvport.so")],
        ["cache", `/x/cache/kvport/${VERSION}/libkvport.so`],
        ["NIXL_PREFIX", "/opt/nixl/lib/libkvport.so"],
      ],
    );
  });
  withEnv({ XDG_CACHE_HOME: undefined, HOME: "/home/u/" }, () => {
    assert.deepEqual(shimCacheDir(), { path: `/home/u/.cache/kvport/${VERSION}` });
  });
  withEnv({ XDG_CACHE_HOME: undefined, HOME: undefined }, () => {
    const c = libraryCandidates().find((x) => x.source === "cache")!;
    assert.match(c.skipped ?? "", /neither XDG_CACHE_HOME nor HOME/);
  });
});

test("the missing-shim error names the command that builds it for this copy of the package", () => {
  const cli = path.join(ROOT, "cli/main.ts");
  const isBun = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined";
  assert.equal(buildCommand(), isBun ? `bun ${cli} build` : `deno run -A ${cli} build`);
  assert.equal(
    dlopenReason(
      "Could not open library: Could not open library: /a/libkvport.so: cannot open shared object file: No such file or directory",
      "/a/libkvport.so",
    ),
    "cannot open shared object file: No such file or directory",
  );
  assert.equal(
    dlopenReason(
      'Failed to open library "/a/libkvport.so": /a/libkvport.so: bad ELF',
      "/a/libkvport.so",
    ),
    "bad ELF",
  );
});

test("buildShim builds a loadable libkvport.so and kvport-limits from the package's files", async () => {
  const out = scratch("kvport-build-");
  try {
    const lines: string[] = [];
    const built = await buildShim({ outDir: out.dir, log: (l) => lines.push(l) });
    assert.equal(built.library, path.join(out.dir, "libkvport.so"));
    assert.equal(built.abiVersion, ABI_VERSION);
    assert.equal(built.source, new URL("native/", `file://${ROOT}`).href);
    assert.deepEqual(fs.readdirSync(out.dir).sort(), ["kvport-limits", "libkvport.so"]);
    assert.ok((fs.statSync(built.limits).mode & 0o111) !== 0, "kvport-limits is not executable");
    const info = await nativeLibrary({ libraryPath: built.library });
    assert.equal(info.path, built.library);
    assert.deepEqual(await engines({ libraryPath: built.library }), ["builtin"]);
    assert.ok(
      lines.some((l) =>
        l.startsWith(
          `compiling ${
            NATIVE_FILES.filter((f) => f.endsWith(".c") && f.startsWith("src/")).length
          } files`,
        )
      ),
    );
  } finally {
    out.remove();
  }
});

test("a source that cannot be fetched fails the build naming its URL, leaving nothing behind", async () => {
  const out = scratch("kvport-build-404-");
  const server = http.createServer((req, res) => {
    const rel = (req.url ?? "/").slice("/native/".length);
    if (rel === "src/xfer.c" || !NATIVE_FILES.includes(rel)) res.writeHead(404).end();
    else res.end(fs.readFileSync(path.join(ROOT, "native", rel)));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const base = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/native/`);
  try {
    await assert.rejects(buildShim({ outDir: out.dir, sourceUrl: base }), (e: unknown) => {
      assert.ok(e instanceof ShimBuildError);
      assert.match(e.message, new RegExp(`cannot fetch ${base.href}src/xfer\\.c: HTTP 404`));
      return true;
    });
    assert.deepEqual(fs.readdirSync(out.dir), []);
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
    out.remove();
  }
});

test("no C compiler: the build says which were tried and how to get one", async () => {
  const out = scratch("kvport-build-cc-");
  try {
    await assert.rejects(
      buildShim({ outDir: out.dir, cc: "/nonexistent/cc" }),
      /cannot run \/nonexistent\/cc/,
    );
    assert.deepEqual(fs.readdirSync(out.dir), []);
    await withEnv({ CC: "/nonexistent/cc" }, async () => {
      await assert.rejects(findCompiler(), (e: unknown) => {
        assert.ok(e instanceof ShimBuildError);
        assert.match(e.message, /no C compiler found \(tried \/nonexistent\/cc from \$CC\)/);
        assert.match(e.message, /apt-get install gcc/);
        return true;
      });
    });
  } finally {
    out.remove();
  }
});
