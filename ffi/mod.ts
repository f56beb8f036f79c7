/**
 * Finding and opening the native shim (`libkvport.so`) in Deno or Bun.
 *
 * Lookup order, absolute paths only, every tried path and why it failed listed in the
 * error:
 * 1. the explicit `path` option, or else the `KVPORT_LIB` environment variable: when one
 *    is given it is the only candidate (a wrong setting is an error, never silently
 *    replaced by another library);
 * 2. `native/build/libkvport.so` next to this module (a checkout: `deno task build`),
 *    when the module was loaded from a file;
 * 3. the cache directory that `kvport build` compiles into
 *    (`$XDG_CACHE_HOME/kvport/<version>/`, else `~/.cache/kvport/<version>/`): the way
 *    a package fetched from JSR or npm, which brings no binary, gets one;
 * 4. `$NIXL_PREFIX/lib/libkvport.so`.
 *
 * A library whose `kvp_abi_version()` is outside {@linkcode MIN_ABI_VERSION}..{@linkcode ABI_VERSION}
 * is refused.
 *
 * @example
 * ```ts
 * import { loadNativeLibrary } from "./mod.ts";
 * const lib = await loadNativeLibrary();
 * console.log(lib.path, lib.abiVersion, lib.runtime);
 * ```
 * @module
 */

import { NixlError, Status } from "../src/errors.ts";
import { openDeno } from "./deno.ts";
import type { NativeLib } from "./native.ts";
import { VERSION } from "./version.ts";

export type { NativeLib } from "./native.ts";
export { VERSION } from "./version.ts";

/** The `KVP_ABI_VERSION` of kvport.h this package was written against. */
export const ABI_VERSION = 5;

/** The oldest ABI version loaded: ABI 4 and 5 only added functions (`kvp_event_notify`,
 * `kvp_event_quiesce`; `kvp_grant_each`, `kvp_revoke_each`); without them waits keep the
 * mechanisms of ABI 3 and batch grants are made one native call per grant. */
export const MIN_ABI_VERSION = 3;

/** The file name of the shim. */
export const LIBRARY_NAME = "libkvport.so";

/** Which JavaScript runtime is running this code. */
export type Runtime = "deno" | "bun" | "other";

/**
 * The JavaScript runtime running this code.
 *
 * @example
 * ```ts
 * import { currentRuntime } from "./mod.ts";
 * console.log(currentRuntime()); // "deno" or "bun"
 * ```
 */
export function currentRuntime(): Runtime {
  const g = globalThis as { Bun?: unknown; Deno?: { dlopen?: unknown } };
  if (g.Bun !== undefined) return "bun";
  if (g.Deno?.dlopen !== undefined) return "deno";
  return "other";
}

/**
 * The runtime's name and version, e.g. `"Deno 2.9.6"` or `"Bun 1.4.5"`.
 *
 * @example
 * ```ts
 * import { runtimeVersion } from "./mod.ts";
 * console.log(runtimeVersion());
 * ```
 */
export function runtimeVersion(): string {
  const g = globalThis as {
    Bun?: { version: string };
    Deno?: { version: { deno: string } };
    process?: { version?: string };
  };
  if (g.Bun) return `Bun ${g.Bun.version}`;
  if (g.Deno) return `Deno ${g.Deno.version.deno}`;
  return `unknown runtime ${g.process?.version ?? ""}`.trim();
}

/**
 * An environment variable, or `undefined` when unset or not readable (Deno without
 * `--allow-env`).
 *
 * @example
 * ```ts
 * import { getEnv } from "./mod.ts";
 * console.log(getEnv("KVPORT_LIB") ?? "(unset)");
 * ```
 */
export function getEnv(name: string): string | undefined {
  const g = globalThis as {
    Deno?: { env: { get(n: string): string | undefined } };
    process?: { env: Record<string, string | undefined> };
  };
  try {
    if (g.Deno) return g.Deno.env.get(name) || undefined;
    return g.process?.env[name] || undefined;
  } catch {
    return undefined;
  }
}

/** One place the library was looked for. */
export interface LibraryCandidate {
  /** Absolute path (or `""` when the source gave none). */
  path: string;
  /** Where the candidate came from: `"option"`, `"KVPORT_LIB"`, `"module"`, `"cache"`,
   * `"NIXL_PREFIX"`. */
  source: string;
  /** Why it was not used (set when it was skipped before trying). */
  skipped?: string;
}

function cwd(): string {
  const g = globalThis as { Deno?: { cwd(): string }; process?: { cwd(): string } };
  try {
    return g.Deno ? g.Deno.cwd() : g.process?.cwd() ?? "/";
  } catch {
    return "/";
  }
}

function absolute(path: string): string {
  if (path.startsWith("file:")) return decodeURIComponent(new URL(path).pathname);
  if (path.startsWith("/")) return path;
  const base = cwd();
  const joined = `${base.endsWith("/") ? base : base + "/"}${path}`;
  // Normalise "." and ".." so the path in messages is the one dlopen sees.
  const parts: string[] = [];
  for (const part of joined.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return "/" + parts.join("/");
}

/**
 * The directory `kvport build` compiles the shim into and the loader looks in:
 * `$XDG_CACHE_HOME/kvport/<version>`, else `$HOME/.cache/kvport/<version>`; a string
 * saying why there is none when neither variable can be read.
 *
 * @example
 * ```ts
 * import { shimCacheDir } from "./mod.ts";
 * const dir = shimCacheDir();
 * console.log(dir.path ?? dir.missing);
 * ```
 */
export function shimCacheDir(): { path: string; missing?: undefined } | {
  path?: undefined;
  missing: string;
} {
  const xdg = getEnv("XDG_CACHE_HOME");
  if (xdg && xdg.startsWith("/")) return { path: `${trimSlash(xdg)}/kvport/${VERSION}` };
  const home = getEnv("HOME");
  if (home && home.startsWith("/")) return { path: `${trimSlash(home)}/.cache/kvport/${VERSION}` };
  return {
    missing: "neither XDG_CACHE_HOME nor HOME is set to an absolute path (or readable: " +
      "Deno needs --allow-env)",
  };
}

function trimSlash(path: string): string {
  return path.length > 1 && path.endsWith("/") ? path.slice(0, -1) : path;
}

/**
 * The candidates {@linkcode loadNativeLibrary} tries, in order.
 *
 * @example
 * ```ts
 * import { libraryCandidates } from "./mod.ts";
 * for (const c of libraryCandidates()) console.log(c.source, c.path);
 * ```
 */
export function libraryCandidates(explicitPath?: string): LibraryCandidate[] {
  if (explicitPath) return [{ path: absolute(explicitPath), source: "option" }];
  const env = getEnv("KVPORT_LIB");
  if (env) return [{ path: absolute(env), source: "KVPORT_LIB" }];
  const out: LibraryCandidate[] = [];
  const here = new URL(`../native/build/${LIBRARY_NAME}`, import.meta.url);
  if (here.protocol === "file:") {
    out.push({ path: decodeURIComponent(here.pathname), source: "module" });
  } else {
    out.push({
      path: "",
      source: "module",
      skipped: `this package was loaded from ${here.origin}, which has no native/build/`,
    });
  }
  const cache = shimCacheDir();
  if (cache.path !== undefined) {
    out.push({ path: `${cache.path}/${LIBRARY_NAME}`, source: "cache" });
  } else out.push({ path: "", source: "cache", skipped: cache.missing });
  const prefix = getEnv("NIXL_PREFIX");
  if (prefix) out.push({ path: absolute(`${prefix}/lib/${LIBRARY_NAME}`), source: "NIXL_PREFIX" });
  else out.push({ path: "", source: "NIXL_PREFIX", skipped: "NIXL_PREFIX is not set" });
  return out;
}

/**
 * The command that builds the shim for this copy of the package, as its user would type
 * it: `deno run -A jsr:@kvport/nixl@<version>/cli build` when loaded from JSR, the CLI's
 * URL or path otherwise (`bun <path> build` under Bun).
 *
 * @example
 * ```ts
 * import { buildCommand } from "./mod.ts";
 * console.log(`run ${buildCommand()}`);
 * ```
 */
export function buildCommand(): string {
  const cli = new URL("../cli/main.ts", import.meta.url);
  if (cli.protocol === "file:") {
    const path = decodeURIComponent(cli.pathname);
    return currentRuntime() === "bun" ? `bun ${path} build` : `deno run -A ${path} build`;
  }
  const jsr = /^https:\/\/jsr\.io\/@kvport\/nixl\/([^/]+)\//.exec(cli.href);
  if (jsr) return `deno run -A jsr:@kvport/nixl@${jsr[1]}/cli build`;
  return `deno run -A ${cli.href} build`;
}

/** The library could not be found or opened; lists every candidate and its failure. */
export class NativeLibraryError extends NixlError {
  /** Every candidate, with why it failed. */
  readonly tried: readonly { path: string; source: string; reason: string }[];

  /**
   * The failure to load the library from any of `tried`.
   *
   * @param tried every candidate and its failure
   * @param status `ERR_NOT_FOUND` (nothing loadable) or `ERR_MISMATCH` (wrong ABI)
   */
  constructor(
    tried: readonly { path: string; source: string; reason: string }[],
    status: number = Status.ERR_NOT_FOUND,
  ) {
    const lines = tried.map((t) => `  - ${t.source}: ${t.path || "(no path)"}: ${t.reason}`);
    super(
      status,
      "loadNativeLibrary",
      `could not load ${LIBRARY_NAME}; tried:\n${lines.join("\n")}\n` +
        (status === Status.ERR_MISMATCH
          ? `Fix: rebuild it with \`${buildCommand()}\``
          : `Fix: build it with \`${buildCommand()}\``) +
        ` (in a checkout: \`deno task build\`), or set KVPORT_LIB to the absolute path of ` +
        `a ${LIBRARY_NAME} built for this version (${VERSION}).`,
    );
    this.name = "NativeLibraryError";
    this.tried = tried;
  }
}

async function open(path: string): Promise<NativeLib> {
  const rt = currentRuntime();
  if (rt === "deno") return openDeno(path);
  if (rt === "bun") {
    const { openBun } = await import("./bun.ts");
    return await openBun(path);
  }
  throw new Error("this runtime has no FFI loader (Deno and Bun are supported)");
}

const loaded = new Map<string, Promise<NativeLib>>();

/** Options of {@linkcode loadNativeLibrary}. */
export interface LoadOptions {
  /** Path of `libkvport.so` (made absolute against the working directory). When given,
   * it is the only candidate. */
  path?: string;
}

/**
 * Finds, opens and ABI-checks the shim (once per path; later calls share it).
 *
 * @example
 * ```ts
 * import { loadNativeLibrary } from "./mod.ts";
 * const lib = await loadNativeLibrary({ path: "native/build/libkvport.so" });
 * console.log(lib.symbols.kvp_abi_version());
 * ```
 */
export async function loadNativeLibrary(options: LoadOptions = {}): Promise<NativeLib> {
  const tried: { path: string; source: string; reason: string }[] = [];
  let mismatch = false;
  for (const c of libraryCandidates(options.path)) {
    if (c.skipped !== undefined) {
      tried.push({ path: c.path, source: c.source, reason: c.skipped });
      continue;
    }
    let pending = loaded.get(c.path);
    if (pending === undefined) {
      pending = open(c.path);
      loaded.set(c.path, pending);
    }
    let lib: NativeLib;
    try {
      lib = await pending;
    } catch (e) {
      if (loaded.get(c.path) === pending) loaded.delete(c.path);
      tried.push({ path: c.path, source: c.source, reason: describe(e, c.path) });
      continue;
    }
    if (lib.closed) {
      loaded.delete(c.path);
      lib = await reopen(c.path);
    }
    if (lib.abiVersion < MIN_ABI_VERSION || lib.abiVersion > ABI_VERSION) {
      mismatch = true;
      loaded.delete(c.path);
      await lib.close();
      tried.push({
        path: c.path,
        source: c.source,
        reason:
          `ABI version ${lib.abiVersion}, this package needs ${MIN_ABI_VERSION}..${ABI_VERSION} ` +
          `(a stale or foreign build: rebuild it)`,
      });
      continue;
    }
    return lib;
  }
  throw new NativeLibraryError(tried, mismatch ? Status.ERR_MISMATCH : Status.ERR_NOT_FOUND);
}

function reopen(path: string): Promise<NativeLib> {
  const p = open(path);
  loaded.set(path, p);
  return p;
}

function describe(e: unknown, path: string): string {
  const g = globalThis as { Deno?: { errors: { NotCapable?: new () => Error } } };
  const notCapable = g.Deno?.errors.NotCapable;
  if (notCapable && e instanceof notCapable) {
    return `${(e as Error).message} (run with --allow-ffi, or -A)`;
  }
  return dlopenReason(e instanceof Error ? e.message.split("\n")[0] : String(e), path);
}

/**
 * The reason of a failed `dlopen`, without the runtime's wrapping: Deno says "Could not
 * open library: Could not open library: PATH: why", Bun `Failed to open library "PATH":
 * PATH: why`; the path is printed next to the reason already.
 *
 * @example
 * ```ts
 * import { dlopenReason } from "./mod.ts";
 * console.log(dlopenReason("Could not open library: Could not open library: /x.so: gone", "/x.so"));
 * // gone
 * ```
 */
export function dlopenReason(message: string, path: string): string {
  let m = message.trim();
  for (;;) {
    const before = m;
    m = m.replace(/^Could not open library:\s*/, "");
    m = m.replace(/^Failed to open library\s+"[^"]*":\s*/, "");
    if (path && m.startsWith(`${path}: `)) m = m.slice(path.length + 2);
    if (m === before) return m || message;
  }
}
