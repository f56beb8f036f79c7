/**
 * What the user-path tests share: the repository's tools, running a command with its
 * output captured, the file list of `deno publish --dry-run`, and an HTTP server that
 * serves exactly those files as JSR would.
 *
 * @module
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

/** The repository root (absolute, with a trailing slash). */
export const ROOT: string = fileURLToPath(new URL("../../", import.meta.url));

/** The pinned Deno of the checkout. */
export const DENO: string = path.join(ROOT, "node_modules/deno/deno");
/** The checkout's bin directory (deno, bun, bunx). */
export const BIN_DIR: string = path.join(ROOT, "node_modules/.bin");

/** The result of {@linkcode run}. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `cmd args` in `cwd` with `env` (added to a copy of this process's environment,
 * `undefined` values removed), within `timeoutMs`.
 */
export function run(
  cmd: string,
  args: string[],
  options: { cwd: string; env?: Record<string, string | undefined>; timeoutMs?: number },
): Promise<RunResult> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...options.env })) {
    if (v !== undefined) env[k] = v;
  }
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: options.cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d: Uint8Array) => (stdout += new TextDecoder().decode(d)));
    child.stderr!.on("data", (d: Uint8Array) => (stderr += new TextDecoder().decode(d)));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 180_000);
    child.on("error", (e: Error) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code: number | null, signal: string | null) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
  });
}

/** `r` as text for an assertion message. */
export function show(what: string, r: RunResult): string {
  return `${what}: exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

/** A fresh directory under the system's temporary directory. */
export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Environment variables that would let a user project find a library other than its own. */
export const CLEAN_ENV: Record<string, undefined> = {
  KVPORT_LIB: undefined,
  NIXL_PREFIX: undefined,
  LMCACHE_CONFIG_FILE: undefined,
  NO_COLOR: undefined,
};

/**
 * The files `deno publish --dry-run` would upload, relative to the root, sorted.
 */
export async function publishedFiles(): Promise<string[]> {
  const r = await run(DENO, ["publish", "--dry-run", "--allow-dirty"], {
    cwd: ROOT,
    env: { NO_COLOR: "1" },
  });
  if (r.code !== 0) throw new Error(show("deno publish --dry-run", r));
  const prefix = new URL(".", `file://${ROOT}`).href;
  const files: string[] = [];
  for (const m of (r.stdout + r.stderr).matchAll(/(file:\/\/\S+) \([^)]*\)/g)) {
    if (m[1].startsWith(prefix)) files.push(decodeURIComponent(m[1].slice(prefix.length)));
  }
  if (files.length === 0) throw new Error(show("deno publish --dry-run listed no files", r));
  return files.sort();
}

/**
 * Rewrites the bare specifiers of a module that deno.json's `imports` maps (`"yaml"` ->
 * `"npm:yaml@^2.9.1"`), as `deno publish` does for the copy JSR serves: a module fetched
 * over https is resolved without the package's deno.json.
 */
export function unfurl(source: string, imports: Record<string, string>): string {
  return source.replace(
    /(\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(["'])([^"'\n]+)\2/g,
    (all, lead: string, quote: string, spec: string) => {
      for (const [key, target] of Object.entries(imports)) {
        if (spec === key) return `${lead}${quote}${target}${quote}`;
        if (spec.startsWith(`${key}/`)) {
          return `${lead}${quote}${target}${spec.slice(key.length)}${quote}`;
        }
      }
      return all;
    },
  );
}

/** A running package server. */
export interface PackageServer {
  /** `http://127.0.0.1:PORT/` */
  readonly url: string;
  /** Paths asked for, in order. */
  readonly requests: string[];
  /** Paths asked for that are not in the package (answered 404). */
  readonly missing: string[];
  close(): Promise<void>;
}

/**
 * Serves `files` (relative to the root) on 127.0.0.1 at an ephemeral port: modules
 * unfurled with deno.json's `imports`, other files as they are, anything else 404.
 */
export async function servePackage(files: readonly string[]): Promise<PackageServer> {
  const allowed = new Set(files);
  const config = JSON.parse(fs.readFileSync(path.join(ROOT, "deno.json"), "utf8"));
  const imports: Record<string, string> = config.imports ?? {};
  const requests: string[] = [];
  const missing: string[] = [];
  const server = http.createServer((req, res) => {
    const rel = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname.slice(1));
    requests.push(rel);
    if (req.method !== "GET" || !allowed.has(rel)) {
      missing.push(rel);
      res.writeHead(404, { "content-type": "text/plain" }).end(`not in the package: ${rel}`);
      return;
    }
    const bytes = fs.readFileSync(path.join(ROOT, rel));
    if (rel.endsWith(".ts")) {
      res.writeHead(200, { "content-type": "application/typescript; charset=utf-8" });
      res.end(unfurl(new TextDecoder().decode(bytes), imports));
    } else {
      res.writeHead(200, {
        "content-type": rel.endsWith(".json") ? "application/json" : "application/octet-stream",
      });
      res.end(bytes);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    requests,
    missing,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

/** The checksum `fixtures/user_pd_pair.ts` prints, computed here from its pattern. */
export function expectedPdChecksum(chunks: number, pageSize: number): number {
  let checksum = 0;
  for (let chunk = 0; chunk < chunks; chunk++) {
    for (let i = 0; i < pageSize; i++) {
      checksum = (checksum * 31 + ((chunk * 131 + i * 7 + (i >> 8)) & 0xff)) >>> 0;
    }
  }
  return checksum;
}

/** The last line of `text` that parses as a JSON object. */
export function lastJson(text: string): Record<string, unknown> {
  const lines = text.trim().split("\n").reverse();
  for (const line of lines) {
    try {
      const v = JSON.parse(line);
      if (v && typeof v === "object") return v;
    } catch {
      // not JSON
    }
  }
  throw new Error(`no JSON line in:\n${text}`);
}
