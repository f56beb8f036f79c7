// takeNotifications on the builtin engine: one native take when everything queued fit
// (the wake path of every notification makes no second call to find nothing), and still
// every notification, in order, when they do not fit at once (64 KiB ones, the largest
// a record holds, with a name of the longest length).
import { describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { NixlAgent } from "../src/agent.ts";
import { loadNativeLibrary } from "../ffi/mod.ts";
import { nativeSkip } from "./helpers/agent_pair.ts";

if (nativeSkip) console.log(`agent_notif_take_test skipped: ${nativeSkip}`);

/** Counts the native takes made while `fn` runs. */
async function countTakes<T>(fn: () => T): Promise<{ result: T; takes: number }> {
  const symbols = (await loadNativeLibrary()).symbols as unknown as Record<
    string,
    (...a: unknown[]) => unknown
  >;
  const take = symbols.kvp_notif_take;
  let takes = 0;
  symbols.kvp_notif_take = (...a: unknown[]) => {
    takes++;
    return take(...a);
  };
  try {
    return { result: fn(), takes };
  } finally {
    symbols.kvp_notif_take = take;
  }
}

describe("takeNotifications (builtin engine)", { skip: nativeSkip }, () => {
  test("what fits is taken with one native call; the rest in order with more", async () => {
    // The longest name an agent may have (255 bytes): the largest record there is.
    const name = `take-${Date.now()}-`.padEnd(255, "x");
    const agent = await NixlAgent.create({ name, engine: "builtin" });
    try {
      agent.sendNotification(name, "one"); // loopback: queued at once
      const small = await countTakes(() => agent.takeNotifications());
      assert.deepEqual(small.result.map((n) => new TextDecoder().decode(n.message)), ["one"]);
      assert.equal(small.result[0].agent, name);
      assert.equal(small.takes, 1, "one native take, no second one to find nothing");

      // Three of 64 KiB and two small ones: the 128 KiB room takes one large record at a
      // time, so the take goes on until all came, in the order sent.
      const sizes = [65536, 5, 65536, 65536, 7];
      sizes.forEach((n, i) => agent.sendNotification(name, new Uint8Array(n).fill(i + 1)));
      const big = await countTakes(() => agent.takeNotifications());
      assert.deepEqual(big.result.map((n) => n.message.length), sizes);
      big.result.forEach((n, i) => {
        assert.ok(n.message.every((b) => b === i + 1), `message ${i} intact`);
        assert.equal(n.agent, name);
      });
      assert.ok(big.takes >= 3, `${big.takes} takes`);
      assert.deepEqual(agent.takeNotifications(), [], "each delivered once");
    } finally {
      await agent.close();
    }
  });
});
