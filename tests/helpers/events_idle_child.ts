// A process that creates an agent, lets one notification wait run out (a read of the
// event descriptor was pending then), prints "waited" and ends its script without
// closing the agent: it must exit by itself (tests/agent_events_test.ts).
import { NixlAgent } from "../../src/agent.ts";

const agent = await NixlAgent.create({ name: `idle-${Date.now()}`, engine: "builtin" });
const notes = await agent.waitNotifications(30);
console.log(notes.length === 0 ? "waited" : "unexpected notification");
