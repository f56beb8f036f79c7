/**
 * `kvport` child processes of the same runtime (Deno: `deno run -A cli/main.ts`, Bun:
 * `bun cli/main.ts`) whose stdout lines are parsed as JSON, used by `kvport demo`,
 * `kvport p2p-demo` and the process tests.
 *
 * @module
 */
import { after, type Timer } from "../src/deadline.ts";
import { spawn } from "node:child_process";
import process from "node:process";
import * as readline from "node:readline";
import { fileURLToPath } from "node:url";

/** A `kvport` child process and the JSON lines it prints. */
export interface Child {
  name: string;
  lines: AsyncIterableIterator<Record<string, unknown>>;
  exited: Promise<number>;
  stderr: string[];
  kill(): void;
}

/** A `kvport` child process whose stdin takes lines (see {@linkcode spawnWithStdin}). */
export interface StdinChild extends Child {
  /** Writes one line to the child's stdin. */
  write(line: string): void;
}

function cliEntry(): { cmd: string; args: string[] } {
  const main = new URL("./main.ts", import.meta.url);
  const script = main.protocol === "file:" ? fileURLToPath(main) : main.href;
  const isBun = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined";
  return isBun
    ? { cmd: process.execPath, args: [script] }
    : { cmd: process.execPath, args: ["run", "-A", script] };
}

function start(name: string, args: string[], withStdin: boolean): StdinChild {
  const entry = cliEntry();
  const child = spawn(entry.cmd, [...entry.args, ...args], {
    stdio: [withStdin ? "pipe" : "ignore", "pipe", "pipe"],
    env: process.env,
  });
  const stderr: string[] = [];
  readline.createInterface({ input: child.stderr! }).on("line", (l: string) => {
    stderr.push(l);
    if (stderr.length > 50) stderr.shift();
  });
  const rl = readline.createInterface({ input: child.stdout! });
  async function* lines(): AsyncIterableIterator<Record<string, unknown>> {
    for await (const line of rl) {
      try {
        yield JSON.parse(line);
      } catch {
        stderr.push(line);
      }
    }
  }
  const exited = new Promise<number>((resolve) => {
    child.on(
      "exit",
      (code: number | null, signal: string | null) => resolve(code ?? (signal ? 128 : 1)),
    );
    child.on("error", (e: Error) => {
      stderr.push(e.message);
      resolve(127);
    });
  });
  if (withStdin) child.stdin!.on("error", () => {});
  return {
    name,
    lines: lines(),
    exited,
    stderr,
    write: (line: string) => {
      if (withStdin && child.exitCode === null && child.stdin!.writable) {
        child.stdin!.write(`${line}\n`);
      }
    },
    kill: () => {
      if (child.exitCode === null) child.kill("SIGTERM");
    },
  };
}

/**
 * Starts `kvport <args>` as a child process of the same runtime, stdin closed; its
 * stdout lines are parsed as JSON.
 *
 * @example
 * ```ts
 * import { nextEvent, spawnKvport } from "./spawn.ts";
 * const rx = spawnKvport("receiver", ["pd-receiver", "--config", "d.yaml", "--json"]);
 * console.log(await nextEvent(rx, "ready", 10_000));
 * rx.kill();
 * ```
 */
export function spawnKvport(name: string, args: string[]): Child {
  const { write: _, ...child } = start(name, args, false);
  return child;
}

/**
 * Starts `kvport <args>` like {@linkcode spawnKvport}, with a stdin that takes lines
 * (the JSON commands of `p2p-peer` and `p2p-registry`).
 *
 * @example
 * ```ts
 * import { nextEvent, spawnWithStdin } from "./spawn.ts";
 * const reg = spawnWithStdin("registry", ["p2p-registry", "--pull-url", "127.0.0.1:0",
 *   "--reply-url", "127.0.0.1:0", "--json"]);
 * console.log(await nextEvent(reg, "ready", 10_000));
 * reg.write(JSON.stringify({ cmd: "exit" }));
 * ```
 */
export function spawnWithStdin(name: string, args: string[]): StdinChild {
  return start(name, args, true);
}

/**
 * The next line of `child` whose `event` field is `event`, within `timeoutMs`; an exit
 * first rejects with the child's last stderr lines.
 *
 * @example
 * ```ts
 * import { nextEvent, spawnKvport } from "./spawn.ts";
 * const tx = spawnKvport("sender", ["pd-sender", "--help"]);
 * await nextEvent(tx, "ready", 1000).catch((e) => console.log(e.message));
 * ```
 */
export async function nextEvent(
  child: Child,
  event: string,
  timeoutMs: number,
): Promise<Record<string, unknown>> {
  let timer: Timer | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = after(
      timeoutMs,
      () => reject(new Error(`${child.name} did not report "${event}" within ${timeoutMs} ms`)),
    );
  });
  const read = (async () => {
    for (;;) {
      const r = await child.lines.next();
      if (r.done) {
        const code = await child.exited;
        throw new Error(
          `${child.name} exited (code ${code}) before "${event}"` +
            (child.stderr.length ? `:\n  ${child.stderr.slice(-8).join("\n  ")}` : ""),
        );
      }
      if (r.value.event === event) return r.value;
    }
  })();
  try {
    return await Promise.race([read, timeout]);
  } finally {
    timer?.clear();
  }
}
