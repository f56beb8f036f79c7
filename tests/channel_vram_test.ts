// Channels whose page buffer is GPU memory (`device: "cuda"` / `"cuda:N"`): pages are
// handles (no Uint8Array view), filled and read by copies; WRITE and READ between GPU
// channels, and from a host channel into a GPU channel over TCP (staged). The GPU tests
// skip, saying why, without a CUDA device; the page-handle checks on host memory run
// everywhere.
import { describe, skipFor, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  ChannelError,
  createTransferChannel,
  type CreateTransferChannelOptions,
  cudaDevices,
  nativeLibrary,
  NixlAgent,
  type TransferChannel,
} from "../mod.ts";
import { fnv1a64 } from "../src/channel/page.ts";
import { fillRandom } from "./helpers/agent_pair.ts";
import { testEngine } from "./helpers/test_engine.ts";

const noLib: string | undefined = await nativeLibrary().then(
  () => undefined,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);
const cuda = noLib ? { count: 0, reason: noLib } : await cudaDevices();
const skip = noLib ??
  (cuda.count > 0 ? undefined : skipFor("needs GPU", `no CUDA device: ${cuda.reason}`));
if (skip) console.log(`channel_vram_test: GPU cases skipped: ${skip}`);

const PAGE = 1 << 20;
const base = {
  channelType: "nixl",
  bufferSize: 8 * PAGE,
  alignBytes: PAGE,
  tpRank: 0,
  engine: testEngine, // builtin unless KVPORT_ENGINE=nixl
  agentParams: { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" },
} as const;

function open(
  role: "sender" | "receiver",
  extra: Partial<CreateTransferChannelOptions>,
): Promise<TransferChannel> {
  return createTransferChannel({
    ...base,
    role,
    backends: ["UCX"],
    peerInitUrl: role === "receiver" ? "127.0.0.1:0" : null,
    ...extra,
  });
}

test(
  "page handles of a host channel; fnv1a64 is the native checksum",
  { skip: noLib },
  async () => {
    await using ch = await open("sender", {});
    assert.equal(ch.device.kind, "cpu");
    const p = ch.page(2);
    assert.equal(p, ch.page(2), "one handle per page");
    const data = new Uint8Array(PAGE);
    fillRandom(data);
    p.copyFrom(data);
    assert.deepEqual(ch.pages[2], data, "a host page handle writes through the view");
    assert.equal(p.checksum(), fnv1a64(data));
    assert.deepEqual(p.read(5, 10), data.subarray(5, 15));
    assert.throws(() => p.copyFrom(new Uint8Array(8), PAGE - 4), ChannelError);
    assert.throws(() => ch.page(8), /outside 0\.\.7/);
    assert.deepEqual(ch.localIndexes([p, ch.page(0)]), [2, 0]);
    await using other = await open("sender", {});
    assert.throws(() => ch.localIndexes([other.page(1)]), /not a page of this channel/);
    // The JS FNV-1a matches kvp_mem_checksum on odd lengths too.
    await using agent = await NixlAgent.create({ name: `fnv-${process.pid}`, engine: "builtin" });
    const buf = agent.allocate(4099);
    fillRandom(buf.bytes);
    assert.equal(fnv1a64(buf.bytes.subarray(3, 4000)), buf.checksum(3, 3997));
  },
);

describe("GPU channels", { skip }, () => {
  test("pages are handles; WRITE and READ between two GPU channels (CUDA)", async () => {
    await using rx = await open("receiver", { device: "cuda" });
    await using tx = await open("sender", { device: "cuda:0" });
    assert.deepEqual(rx.device, { kind: "cuda", ordinal: 0 }, '"cuda" is the TP rank\'s device');
    assert.equal(tx.pages.length, 8);
    assert.throws(() => tx.pages[0], /GPU memory \(cuda:0\).*page\(i\)/);
    assert.throws(() => tx.localIndexes([new Uint8Array(PAGE)]), ChannelError);
    await tx.connect("rx", rx.initUrl!);
    const sums: bigint[] = [];
    for (let i = 0; i < 4; i++) {
      const data = new Uint8Array(PAGE);
      fillRandom(data);
      tx.page(i).copyFrom(data);
      sums.push(fnv1a64(data));
      assert.equal(tx.page(i).checksum(), sums[i]);
    }
    assert.equal(
      await tx.write([tx.page(0), tx.page(1), 2, 3], { peerId: "rx", remoteIndexes: [7, 5, 6, 0] }),
      4,
    );
    assert.deepEqual([7, 5, 6, 0].map((i) => rx.page(i).checksum()), sums);
    // READ back into other local pages.
    await tx.read([4, 5, 6, 7], { peerId: "rx", remoteIndexes: [7, 5, 6, 0] });
    assert.deepEqual([4, 5, 6, 7].map((i) => tx.page(i).checksum()), sums);
  });

  test("a host channel writes into a GPU channel over TCP (staged on the GPU side)", async () => {
    if (testEngine === "nixl") {
      // NIXL's UCX restricted to TCP cannot move VRAM: the channel says so when created.
      await assert.rejects(open("receiver", { device: "cuda", backends: ["TCP"] }), (e: Error) => {
        assert.match(e.message, /backend TCP/);
        assert.match(e.message, /Use backends UCX/);
        return true;
      });
      return;
    }
    await using rx = await open("receiver", { device: "cuda", backends: ["TCP"] });
    await using tx = await open("sender", { backends: ["TCP"] });
    await tx.connect("rx", rx.initUrl!);
    fillRandom(tx.pages[1]);
    fillRandom(tx.pages[2]);
    await tx.write([1, 2], { peerId: "rx", remoteIndexes: [3, 4] });
    assert.equal(rx.page(3).checksum(), fnv1a64(tx.pages[1]));
    assert.deepEqual(rx.page(4).read(), tx.pages[2]);
    tx.pages[1].fill(0);
    await tx.read([1], { peerId: "rx", remoteIndexes: [4] });
    assert.deepEqual(tx.pages[1], tx.pages[2]);
  });

  test("a CUDA device that is not there is a clear error", async () => {
    await assert.rejects(open("sender", { device: `cuda:${cuda.count}` }), (e) => {
      assert.ok(e instanceof ChannelError);
      assert.equal(e.code, "DEVICE_UNAVAILABLE");
      assert.match(e.message, new RegExp(`only ${cuda.count} CUDA device`));
      return true;
    });
  });
});
