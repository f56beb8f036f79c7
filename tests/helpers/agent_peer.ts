/**
 * A peer process for the agent tests: creates an agent, allocates and registers one DRAM
 * buffer, prints `{ready, name, meta, address, size, pid}` as one JSON line on stdout,
 * then answers JSON-line commands from stdin (one reply line each, same `id`).
 *
 * Run: `deno run -A tests/helpers/agent_peer.ts '<json options>'` or
 * `bun tests/helpers/agent_peer.ts '<json options>'`; options: `name`, `backends`,
 * `params`, `size`.
 *
 * @module
 */
import process from "node:process";
import { createInterface } from "node:readline";
import { Buffer } from "node:buffer";
import { DescList, HostBuffer, NixlAgent, NixlError } from "../../src/agent.ts";

interface Options {
  name: string;
  backends?: string[];
  params?: Record<string, string>;
  size: number;
  /** "DRAM" (default) or "VRAM" (CUDA device 0): the buffer's memory. */
  memType?: "DRAM" | "VRAM";
}

const options = JSON.parse(process.argv[process.argv.length - 1]) as Options;
const agent = await NixlAgent.create({
  name: options.name,
  engine: "builtin",
  backends: options.backends ?? ["UCX"],
  params: options.params,
});
const buf = agent.allocate(options.size, { memType: options.memType ?? "DRAM" });
agent.registerMemory(buf);

function send(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + "\n");
}

function fillRandom(offset: number, length: number): void {
  const bytes = buf instanceof HostBuffer
    ? buf.bytes.subarray(offset, offset + length)
    : new Uint8Array(length);
  for (let at = 0; at < bytes.length; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, Math.min(at + 65536, bytes.length)));
  }
  if (!(buf instanceof HostBuffer)) buf.copyFrom(bytes, offset);
}

const sums = (ranges: [number, number][]) =>
  ranges.map(([off, len]) => buf.checksum(off, len).toString(16));

const decoder = new TextDecoder();

type Command = Record<string, unknown> & { id: number; cmd: string };

async function handle(c: Command): Promise<Record<string, unknown>> {
  switch (c.cmd) {
    case "load":
      return { name: agent.addRemoteAgent(Buffer.from(c.meta as string, "base64")) };
    case "fill":
      fillRandom(c.offset as number, c.length as number);
      return {};
    case "sums":
      return { sums: sums(c.ranges as [number, number][]) };
    case "dlist": {
      using list = DescList.pages(buf, c.pageSize as number, c.count as number);
      return { bytes: Buffer.from(list.serialize()).toString("base64") };
    }
    case "notify":
      agent.sendNotification(c.remote as string, c.message as string);
      return {};
    case "waitNotif": {
      // Wait for `expect`; checksum `ranges` the moment it arrives (the data must be
      // there already); then linger to count duplicates.
      const expect = c.expect as string;
      const deadline = Date.now() + (c.timeoutMs as number);
      const seen: string[] = [];
      let at: string[] | null = null;
      while (at === null && Date.now() < deadline) {
        for (const n of await agent.waitNotifications(Math.max(1, deadline - Date.now()))) {
          const text = decoder.decode(n.message);
          seen.push(`${n.agent}:${text}`);
          if (text === expect && at === null) at = sums(c.ranges as [number, number][]);
        }
      }
      const lingerUntil = Date.now() + ((c.lingerMs as number) ?? 50);
      while (Date.now() < lingerUntil) {
        for (const n of await agent.waitNotifications(Math.max(1, lingerUntil - Date.now()))) {
          seen.push(`${n.agent}:${decoder.decode(n.message)}`);
        }
      }
      return { sums: at, seen };
    }
    case "exit":
      await agent.close();
      setTimeout(() => process.exit(0), 10);
      return {};
    default:
      throw new Error(`unknown command ${c.cmd}`);
  }
}

send({
  ready: true,
  name: agent.name,
  pid: process.pid,
  meta: Buffer.from(agent.localMetadata()).toString("base64"),
  address: buf.address.toString(),
  size: buf.size,
  memType: buf.memType,
  listen: agent.listen,
});

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  const c = JSON.parse(line) as Command;
  try {
    send({ id: c.id, ok: true, ...(await handle(c)) });
  } catch (e) {
    send({
      id: c.id,
      ok: false,
      error: e instanceof Error ? e.message : String(e),
      statusName: e instanceof NixlError ? e.statusName : undefined,
    });
  }
}
await agent.close();
process.exit(0);
