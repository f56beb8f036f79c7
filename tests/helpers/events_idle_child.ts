// A process that creates an agent, lets one notification wait run out (a read of the
// event descriptor, or a deadline timer of the wake callback, was pending then), is
// woken once by a notification to itself (the wake callback ran), prints "waited" and
// ends its script without closing the agent: it must exit by itself
// (tests/agent_events_test.ts). With "legacy" the agent waits as with an ABI-3 library.
import process from "node:process";
import { NixlAgent } from "../../src/agent.ts";
import { setWakeMode } from "../../src/agent/events.ts";

if (process.argv[process.argv.length - 1] === "legacy") setWakeMode("legacy");
const agent = await NixlAgent.create({ name: `idle-${Date.now()}`, engine: "builtin" });
const notes = await agent.waitNotifications(30);
const woken = agent.waitNotifications(5_000);
agent.sendNotification(agent.name, "x");
const got = await woken;
console.log(notes.length === 0 && got.length === 1 ? "waited" : "unexpected notifications");
