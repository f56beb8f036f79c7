/**
 * Compiling the native shim from the package alone: the C sources listed in
 * {@linkcode NATIVE_FILES} are read next to this module (`file:` or `https:` alike: a
 * package imported from JSR has no files on disk), written to a scratch directory, and
 * compiled with the system C compiler, invoked directly (no make), into a directory the
 * loader searches: by default {@linkcode shimCacheDir}.
 *
 * @example
 * ```ts
 * import { buildShim } from "./shim_build.ts";
 * const built = await buildShim({ log: console.log });
 * console.log(built.library, built.abiVersion);
 * ```
 * @module
 */
import { deadlineSignal } from "../src/deadline.ts";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { ABI_VERSION, LIBRARY_NAME, loadNativeLibrary, shimCacheDir } from "../ffi/mod.ts";
import { NATIVE_FILES } from "./native_files.ts";

/**
 * The C flags of native/Makefile without `-Werror` (a user's newer compiler may warn
 * where ours does not; that must not stop the build) and without `$(SAN)`: a test checks
 * that this list and the Makefile's `CFLAGS` do not drift apart.
 */
export const SHIM_CFLAGS: readonly string[] = [
  "-std=c11",
  "-O2",
  "-g",
  "-Wall",
  "-Wextra",
  "-fPIC",
  "-pthread",
  "-fvisibility=hidden",
  "-D_GNU_SOURCE",
  "-Wshadow",
  "-Wstrict-prototypes",
  "-Wmissing-prototypes",
];

/** The libraries of native/Makefile's `LDLIBS`. */
export const SHIM_LDLIBS: readonly string[] = ["-ldl", "-pthread"];

/** The limits tool `kvport demo` measures memcpy with, next to the library. */
export const LIMITS_NAME = "kvport-limits";

/** A failure of {@linkcode buildShim}: what failed, and the compiler's output. */
export class ShimBuildError extends Error {
  /**
   * @param message what failed and how to fix it
   * @param output the compiler's output, when a compiler ran
   */
  constructor(message: string, readonly output: string = "") {
    super(output ? `${message}\n${output.trimEnd()}` : message);
    this.name = "ShimBuildError";
  }
}

/** Options of {@linkcode buildShim}. */
export interface BuildShimOptions {
  /** Where the library goes (default: {@linkcode shimCacheDir}). */
  outDir?: string;
  /** The C compiler (default: `$CC`, else the first of cc, gcc, clang found). */
  cc?: string;
  /** Where the C sources are read from (default: native/ next to this module). */
  sourceUrl?: URL;
  /** Progress lines. */
  log?: (line: string) => void;
  /** Aborts the build (the scratch directory is removed all the same). */
  signal?: AbortSignal;
  /** Per-file download timeout, ms (default 30 s). */
  fetchTimeoutMs?: number;
}

/** What {@linkcode buildShim} made. */
export interface BuiltShim {
  /** Absolute path of the library. */
  library: string;
  /** Absolute path of the limits tool. */
  limits: string;
  /** `kvp_abi_version()` of the new library, checked to be {@linkcode ABI_VERSION}. */
  abiVersion: number;
  /** The compiler that built it. */
  cc: string;
  /** Where the sources came from. */
  source: string;
  /** Seconds the whole build took. */
  seconds: number;
}

/**
 * Fetches the C sources, compiles `libkvport.so` and `kvport-limits`, checks that the
 * library loads with this package's ABI version, and moves both into `outDir` (a rename,
 * so a process that has the old library open keeps it intact).
 *
 * @example
 * ```ts
 * import { buildShim } from "./shim_build.ts";
 * const { library } = await buildShim({ outDir: "/tmp/kvport-lib" });
 * console.log(`KVPORT_LIB=${library}`);
 * ```
 */
export async function buildShim(options: BuildShimOptions = {}): Promise<BuiltShim> {
  const t0 = performance.now();
  const log = options.log ?? (() => {});
  const outDir = options.outDir ?? cacheDirOrThrow();
  const base = options.sourceUrl ?? new URL("../native/", import.meta.url);
  const cc = options.cc ?? await findCompiler();
  fs.mkdirSync(outDir, { recursive: true });
  const work = fs.mkdtempSync(path.join(outDir, ".build-"));
  try {
    log(`sources: ${base.href} (${NATIVE_FILES.length} files)`);
    await fetchAll(base, work, options);
    const sources = NATIVE_FILES.filter((f) => /^src\/[^/]+\.c$/.test(f));
    const objects = sources.map((f) => `obj/${path.basename(f, ".c")}.o`);
    fs.mkdirSync(path.join(work, "obj"));
    log(`compiling ${sources.length} files with ${cc} ${SHIM_CFLAGS.join(" ")}`);
    await pool(
      sources.map((src, i) => () =>
        run(cc, [...SHIM_CFLAGS, "-c", src, "-o", objects[i]], work, options.signal)
      ),
      Math.max(1, Math.min(os.availableParallelism?.() ?? os.cpus().length, 16)),
    );
    await run(
      cc,
      [
        ...SHIM_CFLAGS,
        "-shared",
        `-Wl,-soname,${LIBRARY_NAME}`,
        "-Wl,--no-undefined",
        "-o",
        LIBRARY_NAME,
        ...objects,
        ...SHIM_LDLIBS,
      ],
      work,
      options.signal,
    );
    await run(
      cc,
      [...SHIM_CFLAGS, "-o", LIMITS_NAME, "tools/limits.c", ...SHIM_LDLIBS],
      work,
      options.signal,
    );
    // Prove the library loads and speaks this package's ABI before it replaces anything.
    const lib = await loadNativeLibrary({ path: path.join(work, LIBRARY_NAME) });
    const abiVersion = lib.abiVersion;
    await lib.close();
    if (abiVersion !== ABI_VERSION) {
      throw new ShimBuildError(
        `the library built has ABI version ${abiVersion}, this package needs ${ABI_VERSION}`,
      );
    }
    const library = path.join(outDir, LIBRARY_NAME);
    const limits = path.join(outDir, LIMITS_NAME);
    fs.renameSync(path.join(work, LIBRARY_NAME), library);
    fs.renameSync(path.join(work, LIMITS_NAME), limits);
    return {
      library,
      limits,
      abiVersion,
      cc,
      source: base.href,
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function cacheDirOrThrow(): string {
  const dir = shimCacheDir();
  if (dir.path === undefined) {
    throw new ShimBuildError(`no cache directory: ${dir.missing}; pass --out DIR`);
  }
  return dir.path;
}

/**
 * The C compiler: `$CC`, else the first of `cc`, `gcc`, `clang` that runs.
 *
 * @example
 * ```ts
 * import { findCompiler } from "./shim_build.ts";
 * console.log(await findCompiler()); // "cc"
 * ```
 */
export async function findCompiler(): Promise<string> {
  const fromEnv = process.env.CC?.trim();
  const tried = fromEnv ? [fromEnv] : ["cc", "gcc", "clang"];
  for (const cc of tried) {
    try {
      await run(cc, ["--version"], os.tmpdir());
      return cc;
    } catch {
      // try the next
    }
  }
  throw new ShimBuildError(
    `no C compiler found (tried ${tried.join(", ")}${fromEnv ? " from $CC" : ""}): install ` +
      "one (Debian/Ubuntu: apt-get install gcc libc6-dev), or name it with --cc or CC",
  );
}

async function fetchAll(base: URL, work: string, options: BuildShimOptions): Promise<void> {
  const timeoutMs = options.fetchTimeoutMs ?? 30_000;
  await pool(
    NATIVE_FILES.map((rel) => async () => {
      const url = new URL(rel, base);
      const bytes = await readSource(url, timeoutMs, options.signal);
      const to = path.join(work, rel);
      fs.mkdirSync(path.dirname(to), { recursive: true });
      fs.writeFileSync(to, bytes);
    }),
    8,
  );
}

async function readSource(url: URL, timeoutMs: number, signal?: AbortSignal): Promise<Uint8Array> {
  if (url.protocol === "file:") {
    try {
      return new Uint8Array(fs.readFileSync(fileURLToPath(url)));
    } catch (e) {
      throw new ShimBuildError(`cannot read ${fileURLToPath(url)}: ${(e as Error).message}`);
    }
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new ShimBuildError(`cannot fetch ${url.href}: only file:, http: and https: are read`);
  }
  using deadline = deadlineSignal(timeoutMs);
  const timeout = deadline.signal;
  let res: Response;
  try {
    res = await fetch(url, { signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
  } catch (e) {
    const why = timeout.aborted ? `no answer within ${timeoutMs} ms` : (e as Error).message;
    throw new ShimBuildError(`cannot fetch ${url.href}: ${why}`);
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw new ShimBuildError(`cannot fetch ${url.href}: HTTP ${res.status} ${res.statusText}`);
  }
  return new Uint8Array(await res.arrayBuffer());
}

/** Runs `cmd args` in `cwd`; rejects with its output when it fails. */
function run(cmd: string, args: string[], cwd: string, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new ShimBuildError("build aborted"));
    const child = spawn(cmd, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    const collect = (d: Uint8Array) => {
      if (output.length < 64 * 1024) output += new TextDecoder().decode(d);
    };
    child.stdout!.on("data", collect);
    child.stderr!.on("data", collect);
    const onAbort = () => child.kill("SIGTERM");
    signal?.addEventListener("abort", onAbort, { once: true });
    child.on("error", (e: Error) => {
      signal?.removeEventListener("abort", onAbort);
      reject(new ShimBuildError(`cannot run ${cmd}: ${e.message}`));
    });
    child.on("close", (code: number | null, sig: string | null) => {
      signal?.removeEventListener("abort", onAbort);
      if (code === 0) resolve();
      else if (signal?.aborted) reject(new ShimBuildError("build aborted"));
      else {
        reject(
          new ShimBuildError(
            `${cmd} ${args.join(" ")} failed (${sig ? `signal ${sig}` : `exit ${code}`})`,
            output,
          ),
        );
      }
    });
  });
}

/** Runs `jobs` with at most `limit` at a time; the first failure rejects (after the
 * running ones have finished, so no compiler outlives the scratch directory). */
async function pool(jobs: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  let failure: unknown;
  const worker = async () => {
    while (failure === undefined && next < jobs.length) {
      const job = jobs[next++];
      try {
        await job();
      } catch (e) {
        failure ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  if (failure !== undefined) throw failure;
}
