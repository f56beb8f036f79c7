#!/usr/bin/env bun
/**
 * `kvport`: the command line of `@kvport/nixl`.
 *
 * ```sh
 * deno run -A jsr:@kvport/nixl/cli build        # compile the native shim (once)
 * deno run -A jsr:@kvport/nixl/cli config --file lmcache.yaml
 * deno install -g -A -n kvport jsr:@kvport/nixl/cli   # then: kvport --help
 * bunx kvport --help                            # npm/Bun install (the bin)
 * ```
 *
 * Exit codes: 0 success, 1 failure while running, 2 usage error or invalid
 * configuration, 130 stopped by SIGINT (143 by SIGTERM).
 *
 * @example
 * ```ts
 * import { main } from "@kvport/nixl/cli";
 * const code = await main(["config", "--json"]);
 * ```
 *
 * @module
 */
import process from "node:process";
import { VERSION } from "../ffi/version.ts";
import { type Command, commands } from "./commands.ts";
import {
  installInterruptHandlers,
  Interrupted,
  interrupted,
  SIGNAL_EXIT_CODES,
} from "./interrupt.ts";
import { err, out } from "./io.ts";

export { type Command, commands } from "./commands.ts";

/**
 * The top-level help: usage and the command list.
 *
 * @example
 * ```ts
 * import { usage } from "@kvport/nixl/cli";
 * console.log(usage());
 * ```
 */
export function usage(table: readonly Command[] = commands): string {
  const width = Math.max(...table.map((c) => c.name.length), 4);
  return [
    "kvport - move KV-cache pages between LLM inference processes (LMCache-compatible)",
    "",
    "Usage: kvport <command> [options]",
    "       kvport <command> --help",
    "       kvport --version",
    "",
    "Commands:",
    ...table.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    "",
    "Exit codes: 0 success, 1 failure, 2 usage error or invalid configuration,",
    "130 stopped by SIGINT (143 by SIGTERM).",
  ].join("\n");
}

/**
 * Runs `kvport` with `args` (the arguments after the program name) and resolves to the
 * exit code. `--help` (or `-h`, or `help`) prints the command list; `help <command>`
 * the command's help; `--version` (or `-V`, `version`) the package version; an unknown
 * command exits 2 with the list.
 *
 * @example
 * ```ts
 * import { main } from "@kvport/nixl/cli";
 * const code = await main(["--help"]); // prints the command list
 * console.log(code); // 0
 * ```
 */
export async function main(args: string[], table: readonly Command[] = commands): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined) {
    err(usage(table));
    return 2;
  }
  if (name === "--help" || name === "-h" || name === "help") {
    if (name === "help" && rest.length > 0) return main([rest[0], "--help"], table);
    out(usage(table));
    return 0;
  }
  if (name === "--version" || name === "-V" || name === "version") {
    out(`kvport ${VERSION} (@kvport/nixl)`);
    return 0;
  }
  const command = table.find((c) => c.name === name);
  if (command === undefined) {
    err(
      name.startsWith("-")
        ? `kvport: unknown option "${name}" before the command\n\n${usage(table)}`
        : `kvport: unknown command "${name}"\n\n${usage(table)}`,
    );
    return 2;
  }
  let code: number;
  try {
    code = await command.run(rest);
  } catch (e) {
    if (e instanceof Interrupted) return e.exitCode;
    err(`kvport ${name}: ${e instanceof Error ? e.message : String(e)}`);
    code = 1;
  }
  // A command stopped by a signal exits as stopped, whatever it returned.
  const signal = interrupted();
  return signal === null ? code : SIGNAL_EXIT_CODES[signal];
}

if (import.meta.main) {
  installInterruptHandlers();
  const code = await main(process.argv.slice(2));
  // After a signal, exit now: what the command left open must not keep the process up.
  if (interrupted() !== null) process.exit(code);
  process.exitCode = code;
}
