// Page grants on the nixl engine: it enforces none, and says so. A channel asked for
// grants warns (and engine "auto" is not steered to the builtin engine by the request),
// NixlAgent.grant is NIXL_ERR_NOT_SUPPORTED, and a PD receiver on it still serves a
// sender (whose data is checked) without granting anything.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { nixlSkip } from "./helpers/nixl_env.ts";
import { NixlAgent, NixlChannel, NixlError, PdReceiver, PdSender } from "../mod.ts";
import { NIXL_GRANTS_WARNING } from "../src/channel/nixl.ts";
import { fillPattern } from "../src/pd/pattern.ts";

const skip = nixlSkip;
const PAGE = 64 * 1024;

test("nixl grants: the nixl engine enforces none, and the channel asked for them warns", {
  skip,
}, async () => {
  for (const engine of ["nixl", "auto"] as const) {
    await using ch = await NixlChannel.create({
      role: "receiver",
      pageSize: PAGE,
      pageCount: 4,
      backends: ["UCX"],
      engine,
      pageGrants: true,
    });
    assert.equal(ch.engine, "nixl", `engine ${engine} was steered away from NIXL`);
    assert.equal(ch.pageGrants, "unsupported");
    assert.ok(ch.warnings.includes(NIXL_GRANTS_WARNING), ch.warnings.join("; "));
    assert.equal(await ch.grantPages("anyone", [0], { write: true }), null);
  }
  await using a = await NixlAgent.create({ name: "nixl-grants", engine: "nixl" });
  const buf = a.allocate(PAGE);
  a.registerMemory(buf);
  assert.equal(a.pageGrants, "unsupported");
  assert.throws(
    () => a.grant("peer", [{ address: buf.address, length: PAGE }], { write: true }),
    (e) => e instanceof NixlError && e.statusName === "NIXL_ERR_NOT_SUPPORTED",
  );
});

test("nixl grants: a PD receiver on the nixl engine serves a sender without grants", {
  skip,
}, async () => {
  const common = {
    bufferSize: 8 * PAGE,
    pageSize: PAGE,
    channelType: "nixl",
    engine: "nixl",
  } as const;
  await using rx = await PdReceiver.create({
    host: "127.0.0.1",
    initPort: 0,
    allocPort: 0,
    ...common,
  });
  assert.equal((rx.channel as NixlChannel).pageGrants, "unsupported");
  assert.ok(rx.channel.warnings.includes(NIXL_GRANTS_WARNING));
  await using tx = await PdSender.create(common);
  const key = "vllm@m@1@0@dd01@bfloat16";
  const [p] = await tx.allocate(1);
  fillPattern(key, tx.channel.pages[p]);
  const want = tx.channel.pages[p].slice();
  await tx.send(
    {
      reqId: "r1",
      receiverHost: "127.0.0.1",
      receiverInitPort: rx.initPort,
      receiverAllocPort: rx.allocPort,
      isLastPrefill: true,
    },
    { keys: [key], pages: [p], shape: [2, 1, 256, 64], dtype: "bfloat16", lastChunkToks: 256 },
  );
  await rx.waitFor([key], 10_000);
  assert.deepEqual(rx.view(key), want);
});
