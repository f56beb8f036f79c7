/**
 * A peer process for the agent tests: creates an agent, allocates and registers one DRAM
 * buffer, prints `{ready, name, meta, address, size, pid}` as one JSON line on stdout,
 * then answers JSON-line commands from stdin (one reply line each, same `id`; see
 * `peer_serve.ts`). The engine is the builtin one unless `KVPORT_ENGINE=nixl`
 * (`test_engine.ts`).
 *
 * Run: `deno run -A tests/helpers/agent_peer.ts '<json options>'` or
 * `bun tests/helpers/agent_peer.ts '<json options>'`; options: `name`, `backends`,
 * `params`, `size`, `memType`, `device`, `engine`.
 *
 * @module
 */
import process from "node:process";
import { NixlAgent } from "../../src/agent.ts";
import { servePeer } from "./peer_serve.ts";
import { testEngine } from "./test_engine.ts";

interface Options {
  name: string;
  /** The engine (default: builtin, or nixl with KVPORT_ENGINE=nixl). */
  engine?: "builtin" | "nixl";
  backends?: string[];
  params?: Record<string, string>;
  size: number;
  /** "DRAM" (default) or "VRAM" (CUDA device `device`): the buffer's memory. */
  memType?: "DRAM" | "VRAM";
  /** CUDA ordinal of a VRAM buffer (default 0). */
  device?: number;
}

const options = JSON.parse(process.argv[process.argv.length - 1]) as Options;
const agent = await NixlAgent.create({
  name: options.name,
  engine: options.engine ?? testEngine,
  backends: options.backends ?? ["UCX"],
  params: options.params,
});
const buf = agent.allocate(options.size, {
  memType: options.memType ?? "DRAM",
  ...(options.memType === "VRAM" && options.device !== undefined ? { device: options.device } : {}),
});
agent.registerMemory(buf);

await servePeer(agent, buf, { memType: buf.memType, listen: agent.listen });
