/**
 * A `nixl` channel receiver in a process of its own (built-in engine), for tests that
 * stop it mid-transfer (SIGSTOP): prints `{ready, initUrl}` as one JSON line, then
 * serves handshakes until stdin ends. Its backend is TCP: a same-host copy would reach
 * even a stopped process's memory.
 *
 * Run: `deno run -A tests/helpers/channel_peer.ts '<json options>'` (or under Bun);
 * options: `name`, `pageSize`, `pages`.
 *
 * @module
 */
import process from "node:process";
import { createTransferChannel } from "../../mod.ts";

const o = JSON.parse(process.argv[process.argv.length - 1]) as {
  name: string;
  pageSize: number;
  pages: number;
};
const ch = await createTransferChannel({
  channelType: "nixl",
  engine: "builtin",
  // TCP, not the same-host copy: a stopped peer must be able to stall a WRITE.
  backends: ["TCP"],
  role: "receiver",
  bufferSize: o.pageSize * o.pages,
  alignBytes: o.pageSize,
  tpRank: 0,
  peerInitUrl: "127.0.0.1:0",
});
process.stdout.write(JSON.stringify({ ready: true, name: o.name, initUrl: ch.initUrl }) + "\n");
process.stdin.resume();
await new Promise<void>((resolve) => process.stdin.on("end", () => resolve()));
await ch.close();
process.exit(0);
