/**
 * The `kvport` command table. To add a command, write a module exporting a
 * {@link Command} and list it in {@link commands}.
 *
 * @module
 */
import { buildCommand } from "./build_cmd.ts";
import { checkCommand } from "./check_cmd.ts";
import { configCommand } from "./config_cmd.ts";
import { demoCommand } from "./demo_cmd.ts";
import { p2pDemoCommand, p2pPeerCommand, p2pRegistryCommand } from "./p2p_cmd.ts";
import { pdReceiverCommand, pdSenderCommand } from "./pd_cmd.ts";
import { statsCommand } from "./stats_cmd.ts";
import { storageCommand } from "./storage_cmd.ts";

/**
 * One `kvport` subcommand.
 *
 * @example
 * ```ts
 * import type { Command } from "@kvport/nixl/cli";
 * const hello: Command = {
 *   name: "hello",
 *   summary: "Say hello",
 *   run: async (args) => {
 *     console.log("hello", ...args);
 *     return 0;
 *   },
 * };
 * ```
 */
export interface Command {
  /** What the user types after `kvport`. */
  readonly name: string;
  /** One line for `kvport --help`. */
  readonly summary: string;
  /** Runs the command with the arguments after its name; resolves to the exit code. */
  run(args: string[]): Promise<number>;
}

/**
 * Every `kvport` command, in the order `kvport --help` lists them.
 *
 * @example
 * ```ts
 * import { commands } from "@kvport/nixl/cli";
 * for (const c of commands) console.log(c.name, c.summary);
 * ```
 */
export const commands: Command[] = [
  configCommand,
  demoCommand,
  pdReceiverCommand,
  pdSenderCommand,
  p2pRegistryCommand,
  p2pPeerCommand,
  p2pDemoCommand,
  storageCommand,
  statsCommand,
  checkCommand,
  buildCommand,
];
