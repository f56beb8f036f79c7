/**
 * `kvport`: the command line of `@kvport/nixl`.
 *
 * ```sh
 * deno run -A cli/main.ts config --file lmcache.yaml
 * bun cli/main.ts config --help
 * ```
 *
 * Exit codes: 0 success, 1 failure while running, 2 usage error or invalid
 * configuration.
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
import { type Command, commands } from "./commands.ts";
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
    "",
    "Commands:",
    ...table.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    "",
    "Exit codes: 0 success, 1 failure, 2 usage error or invalid configuration.",
  ].join("\n");
}

/**
 * Runs `kvport` with `args` (the arguments after the program name) and resolves to the
 * exit code. `--help` (or `-h`, or `help`) prints the command list; `help <command>`
 * the command's help; an unknown command exits 2 with the list.
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
  const command = table.find((c) => c.name === name);
  if (command === undefined) {
    err(`kvport: unknown command "${name}"\n\n${usage(table)}`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    err(`kvport ${name}: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
