/**
 * `kvport` as a user runs it: a child process of the runtime running the tests
 * (`deno run -A cli/main.ts` or `bun cli/main.ts`), with its own environment (no
 * `LMCACHE_*` variables of the test's), its own temporary directory, and its output.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const MAIN = fileURLToPath(new URL("../../cli/main.ts", import.meta.url));
const IS_BUN = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined";

/** The environment of a `kvport` child: this one's, without `LMCACHE_*` variables or
 * `KVPORT_LIB`, plus `extra` (`undefined` removes). Other `KVPORT_*` variables pass
 * through: a test that sets `KVPORT_ENGINE` for itself (tests/helpers/env_scope.ts)
 * reaches its children so. */
export function cliEnv(extra: Record<string, string | undefined> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith("LMCACHE_") && k !== "KVPORT_LIB") env[k] = v;
  }
  env.NO_COLOR = "1";
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** A running `kvport`: its process, the lines it printed so far, and its exit. */
export interface KvportProcess {
  readonly child: ChildProcess;
  readonly stdout: string[];
  readonly stderr: string[];
  /** Exit code (128 + n for a signal that killed it without a handler). */
  readonly exited: Promise<number>;
  /** Resolves with the first stdout line matching `re` (rejects at exit or timeout). */
  line(re: RegExp, timeoutMs?: number): Promise<string>;
  /** Like {@linkcode line}, for lines printed from now on only. */
  next(re: RegExp, timeoutMs?: number): Promise<string>;
}

/**
 * Starts `kvport args` in `cwd` with `env` (see {@linkcode cliEnv}).
 */
export function startKvport(
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): KvportProcess {
  const cmd = process.execPath;
  const argv = IS_BUN ? [MAIN, ...args] : ["run", "-A", MAIN, ...args];
  const child = spawn(cmd, argv, {
    cwd: options.cwd ?? os.tmpdir(),
    env: options.env ?? cliEnv(),
    stdio: ["pipe", "pipe", "pipe"],
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  const split = (into: string[], onLine?: (l: string) => void) => {
    let rest = "";
    return (d: Uint8Array) => {
      rest += new TextDecoder().decode(d);
      const parts = rest.split(/\r|\n/);
      rest = parts.pop() ?? "";
      for (const l of parts) {
        into.push(l);
        onLine?.(l);
      }
    };
  };
  child.stdout!.on(
    "data",
    split(stdout, (l) => {
      for (const w of [...waiters]) {
        if (w.re.test(l)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(l);
        }
      }
    }),
  );
  child.stderr!.on("data", split(stderr));
  child.stdin!.on("error", () => {});
  const exited = new Promise<number>((resolve) => {
    child.on("close", (code, signal) => {
      resolve(code ?? (signal === "SIGINT" ? 130 : signal === "SIGTERM" ? 143 : 137));
    });
  });
  const wait = (re: RegExp, timeoutMs: number): Promise<string> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `no line ${re} within ${timeoutMs} ms:\n${stdout.join("\n")}\n${stderr.join("\n")}`,
          ),
        );
      }, timeoutMs);
      waiters.push({
        re,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
      void exited.then((code) => {
        clearTimeout(timer);
        reject(
          new Error(
            `kvport exited (${code}) before ${re}:\n${stdout.join("\n")}\n${stderr.join("\n")}`,
          ),
        );
      });
    });
  return {
    child,
    stdout,
    stderr,
    exited,
    line(re: RegExp, timeoutMs = 60_000): Promise<string> {
      const seen = stdout.find((l) => re.test(l));
      return seen !== undefined ? Promise.resolve(seen) : wait(re, timeoutMs);
    },
    next: (re: RegExp, timeoutMs = 60_000) => wait(re, timeoutMs),
  };
}

/** Runs `kvport args` to its end. */
export async function runKvport(
  args: string[],
  options: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = startKvport(args, options);
  p.child.stdin!.end();
  const timer = setTimeout(() => p.child.kill("SIGKILL"), options.timeoutMs ?? 120_000);
  const code = await p.exited;
  clearTimeout(timer);
  return { code, stdout: p.stdout.join("\n"), stderr: p.stderr.join("\n") };
}

/** A fresh directory under the system's temporary directory, and its removal. */
export function scratch(prefix: string): { dir: string; remove: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Processes alive now whose command line contains `text` (Linux /proc). */
export function processesMentioning(text: string): number[] {
  const pids: number[] = [];
  for (const name of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${name}/cmdline`, "utf8");
      if (cmdline.includes(text)) pids.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}
