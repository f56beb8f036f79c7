/**
 * `extra_config.kvport_agent_params` as the `agentParams` option of the PD and P2P
 * classes: the engine parameters (limits such as `max_remotes` or `max_read_queue`) of the
 * agents their channels create.
 *
 * @module
 */

/**
 * `{ agentParams }` when the configuration gives any parameter, else `{}` (so spreading
 * it keeps an `agentParams` option given elsewhere).
 *
 * @param params `extra_config.kvport_agent_params`
 * @returns the option to spread into PD or P2P options
 *
 * @example
 * ```ts
 * import { agentParamsOf } from "./agent_params.ts";
 * console.log(agentParamsOf({ max_remotes: "64" })); // { agentParams: { max_remotes: "64" } }
 * console.log(agentParamsOf({})); // {}
 * ```
 */
export function agentParamsOf(
  params: Readonly<Record<string, string>> | undefined,
): { agentParams?: Readonly<Record<string, string>> } {
  return params && Object.keys(params).length > 0 ? { agentParams: { ...params } } : {};
}
