/**
 * The peer side of the JSON-line peer protocol that `agent_peer.ts` and `nixl_peer.ts`
 * share: print the `ready` line, then answer commands from stdin, one reply line each
 * with the command's `id`, until stdin ends or `exit` comes.
 *
 * Commands: `load` (a remote agent's metadata), `fill` (random bytes), `sums` (checksums
 * of ranges), `dlist` (the buffer's pages, serialized), `notify`, `waitNotif` (wait for a
 * notification, checksum `ranges` on its arrival, then linger to count duplicates),
 * `exit`; a peer script adds its own.
 *
 * @module
 */
import process from "node:process";
import { createInterface } from "node:readline";
import { Buffer } from "node:buffer";
import {
  DescList,
  HostBuffer,
  type NativeBuffer,
  type NixlAgent,
  NixlError,
} from "../../src/agent.ts";

/** A command line. */
export type PeerCommand = Record<string, unknown> & { id: number; cmd: string };

/** Handles one command of a peer script's own; returns the reply's fields. */
export type PeerHandler = (
  c: PeerCommand,
) => Record<string, unknown> | Promise<Record<string, unknown>>;

function send(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + "\n");
}

/**
 * Serves the protocol for `agent` and its registered `buf`, then closes the agent and
 * exits the process.
 *
 * @param ready fields of the `ready` line besides `ready`, `name`, `pid`, `meta`,
 *   `address` and `size`
 * @param own the peer script's own commands
 */
export async function servePeer(
  agent: NixlAgent,
  buf: NativeBuffer,
  ready: Record<string, unknown>,
  own: Record<string, PeerHandler> = {},
): Promise<void> {
  const fillRandom = (offset: number, length: number): void => {
    const bytes = buf instanceof HostBuffer
      ? buf.bytes.subarray(offset, offset + length)
      : new Uint8Array(length);
    for (let at = 0; at < bytes.length; at += 65536) {
      crypto.getRandomValues(bytes.subarray(at, Math.min(at + 65536, bytes.length)));
    }
    if (!(buf instanceof HostBuffer)) buf.copyFrom(bytes, offset);
  };
  const sums = (ranges: [number, number][]) =>
    ranges.map(([off, len]) => buf.checksum(off, len).toString(16));
  const decoder = new TextDecoder();

  const handle = async (c: PeerCommand): Promise<Record<string, unknown>> => {
    const mine = Object.hasOwn(own, c.cmd) ? own[c.cmd] : undefined;
    if (mine) return await mine(c);
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
            if (text === expect && at === null) {
              at = sums((c.ranges as [number, number][]) ?? []);
            }
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
  };

  send({
    ready: true,
    name: agent.name,
    pid: process.pid,
    meta: Buffer.from(agent.localMetadata()).toString("base64"),
    address: buf.address.toString(),
    size: buf.size,
    ...ready,
  });

  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (!line.trim()) continue;
    const c = JSON.parse(line) as PeerCommand;
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
}
