/**
 * `kvport build`: compiles the native shim from the package's own C sources with the
 * system C compiler, into the directory the loader searches. This is how a package
 * fetched from JSR (`deno run -A jsr:@kvport/nixl/cli build`) or npm
 * (`bunx kvport build`) gets its `libkvport.so`.
 *
 * @example
 * ```ts
 * import { buildCommand } from "./build_cmd.ts";
 * const code = await buildCommand.run(["--out", "/tmp/kvport-lib"]);
 * ```
 * @module
 */
import { shimCacheDir } from "../ffi/mod.ts";
import { emit, guard, parse, UsageError, whileInterruptible } from "./args.ts";
import type { Command } from "./commands.ts";
import { err, out } from "./io.ts";
import { buildShim, ShimBuildError } from "./shim_build.ts";

/**
 * The help of `kvport build`.
 *
 * @example
 * ```ts
 * import { buildHelp } from "./build_cmd.ts";
 * console.log(buildHelp());
 * ```
 */
export function buildHelp(): string {
  const cache = shimCacheDir();
  return [
    "Usage: kvport build [--out DIR] [--cc CC] [--json]",
    "",
    "Compiles the native shim (libkvport.so, the builtin engine) and kvport-limits from",
    "the C sources of this package, fetched next to the command's own URL (file: or",
    "https:), with the system C compiler called directly (no make needed). The library",
    "is loaded once to check its ABI, then moved into DIR, where the library looks for",
    "it. Set KVPORT_LIB to use a library elsewhere.",
    "",
    "Options:",
    `      --out DIR   where to put it (default: ${
      cache.path ?? "$XDG_CACHE_HOME/kvport/<version>"
    })`,
    "      --cc CC     the C compiler (default: $CC, else cc, gcc or clang)",
    "      --json      print the result as one JSON line",
    "  -h, --help      this help",
    "",
    "The nixl engine (over an installed NVIDIA NIXL) is built from a checkout: see",
    "docs/NIXL.md.",
  ].join("\n");
}

async function runBuild(args: string[]): Promise<number> {
  const v = parse(args, {
    out: { type: "string" },
    cc: { type: "string" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  });
  if (v.help) {
    out(buildHelp());
    return 0;
  }
  if (v.out === "" || v.cc === "") throw new UsageError("--out and --cc need a value");
  const json = v.json === true;
  try {
    const built = await whileInterruptible((signal) =>
      buildShim({
        outDir: v.out as string | undefined,
        cc: v.cc as string | undefined,
        signal,
        log: json ? undefined : (line) => out(`kvport build: ${line}`),
      })
    );
    emit(
      json,
      { event: "built", ok: true, ...built },
      `kvport build: ${built.library} (ABI ${built.abiVersion}, builtin engine) and ` +
        `${built.limits} in ${built.seconds.toFixed(1)} s\n` +
        `kvport build: the library finds it there; elsewhere, set KVPORT_LIB=${built.library}`,
    );
    return 0;
  } catch (e) {
    if (e instanceof ShimBuildError) {
      err(`kvport build: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

/**
 * The `kvport build` command.
 *
 * @example
 * ```ts
 * import { buildCommand } from "./build_cmd.ts";
 * console.log(buildCommand.summary);
 * ```
 */
export const buildCommand: Command = {
  name: "build",
  summary: "compile the native shim from this package's C sources into the loader's cache",
  run: (args) => guard("build", () => runBuild(args)),
};
