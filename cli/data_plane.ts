/**
 * The data-plane address of a channel for the ready lines: where its engine really
 * listens (`kvp_agent_info`'s `listen`), or `null` (a mock channel, or an engine that
 * does not listen itself).
 *
 * @module
 */
import { NixlChannel } from "../src/channel/nixl.ts";

/**
 * Where the channel's engine listens for data-plane connections.
 *
 * @param channel a PD or P2P channel
 * @returns `host:port` as bound, or `null`
 *
 * @example
 * ```ts
 * import { dataPlaneAddress } from "./data_plane.ts";
 * console.log(dataPlaneAddress({})); // null
 * ```
 */
export function dataPlaneAddress(channel: unknown): string | null {
  if (!(channel instanceof NixlChannel)) return null;
  return channel.agent.listen === "" ? null : channel.agent.listen;
}
