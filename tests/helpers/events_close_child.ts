// A process whose agents woke through the wake callback (kvp_event_notify), then closes
// the library after closing its agents ("after"; "open" leaves one open, whose notifier
// the close stops, but whose own threads stay: not tested). Prints what it saw; it must
// exit by itself (tests/agent_events_test.ts).
import process from "node:process";
import { DescList, NixlAgent } from "../../src/agent.ts";
import { library } from "../../src/agent/common.ts";

const mode = process.argv[process.argv.length - 1];
const lib = await library();
const stamp = `${process.pid}-${Date.now()}`;
const target = await NixlAgent.create({ name: `close-t-${stamp}`, engine: "builtin" });
const agent = await NixlAgent.create({ name: `close-a-${stamp}`, engine: "builtin" });
const size = 8 << 20;
const dst = target.allocate(size), src = agent.allocate(size);
target.registerMemory(dst);
agent.registerMemory(src);
agent.addRemoteAgent(target.localMetadata());
src.bytes.fill(7);
using l = DescList.pages(src, size, 1);
using r = DescList.pages({ address: dst.address }, size, 1);
const req = agent.createTransfer(
  "WRITE",
  agent.prepDescList("", l),
  [0],
  agent.prepDescList(target.name, r),
  [0],
);
let waited = 0;
for (let i = 0; i < 20; i++) {
  if (req.post() === "pending") {
    await req.wait(10_000);
    waited++;
  }
}
const landed = dst.checksum(0, size) === src.checksum(0, size);
// A notification wait is always woken through the callback (the posts above may all
// have finished inside post).
const woken = agent.waitNotifications(5_000);
agent.sendNotification(agent.name, "wake");
if ((await woken).length === 1) waited++;
// A wake queued right before the close: delivered or dropped, never a hang or a crash.
agent.sendNotification(agent.name, "bye");
req.release();
await target.close();
if (mode !== "open") await agent.close();
await lib.close();
console.log(`wakes=${lib.wakes !== null} waited=${waited} landed=${landed} closed=${lib.closed}`);
