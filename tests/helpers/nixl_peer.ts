/**
 * A peer process for the NIXL tests: creates an agent (engine `nixl` unless told
 * otherwise), allocates and registers one DRAM buffer, prints
 * `{ready, name, meta, address, size, pid, info}` as one JSON line on stdout, then
 * answers JSON-line commands from stdin (one reply line each, same `id`; see
 * `peer_serve.ts`, plus `invalidate`).
 *
 * Run: `deno run -A tests/helpers/nixl_peer.ts '<json options>'` (or under Bun);
 * options: `name`, `engine`, `backends`, `params`, `size`, `shared` (the kind of DRAM:
 * `allocate`'s option; default the engine's).
 *
 * @module
 */
import process from "node:process";
import { NixlAgent } from "../../src/agent.ts";
import { servePeer } from "./peer_serve.ts";

interface Options {
  name: string;
  engine?: "nixl" | "builtin" | "auto";
  backends?: string[];
  params?: Record<string, string>;
  size: number;
  shared?: boolean;
}

const options = JSON.parse(process.argv[process.argv.length - 1]) as Options;
const agent = await NixlAgent.create({
  name: options.name,
  engine: options.engine ?? "nixl",
  backends: options.backends ?? ["UCX"],
  params: options.params,
});
const buf = agent.allocate(options.size, { shared: options.shared });
agent.registerMemory(buf);

await servePeer(agent, buf, { info: agent.info() }, {
  invalidate: (c) => {
    agent.invalidateRemoteAgent(c.name as string);
    return {};
  },
});
