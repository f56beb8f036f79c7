// Disaggregated prefill with GPU buffers (pd_buffer_device cuda) on both sides, over the
// nixl channel and the builtin engine: pages filled by copies into VRAM, sent in batches,
// checked byte for byte on the decoder through page handles, the proxy notified; and a
// host prefiller into a GPU decoder. Skips, saying why, without a CUDA device.
import { skipFor, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { cudaDevices, nativeLibrary, PdReceiver, PdSender, ProxyNotifier } from "../mod.ts";
import { checkFor, fillFor, testKey } from "./helpers/pd_util.ts";
import { GPU_PD_PAGE, GPU_PD_SHAPE, gpuPdCommon, gpuPdSpec } from "./helpers/pd_gpu.ts";

const noLib = await nativeLibrary().then(() => undefined, (e) => String(e).split("\n")[0]);
const cuda = noLib ? { count: 0, reason: noLib } : await cudaDevices();
const skip = noLib ??
  (cuda.count > 0 ? undefined : skipFor("needs GPU", `no CUDA device: ${cuda.reason}`));
if (skip) console.log(`pd_vram_test skipped: ${skip}`);

for (const txDevice of ["cuda", "cpu"] as const) {
  test(`pd: ${txDevice} prefiller -> cuda decoder, every byte checked`, { skip }, async () => {
    await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
    await using rx = await PdReceiver.create({
      ...gpuPdCommon,
      host: "127.0.0.1",
      initPort: 0,
      allocPort: 0,
      bufferSize: 24 * GPU_PD_PAGE,
      chunkSize: 16,
      device: "cuda",
      backends: ["UCX"],
    });
    await using tx = await PdSender.create({
      ...gpuPdCommon,
      bufferSize: 8 * GPU_PD_PAGE,
      device: txDevice,
      backends: ["UCX"],
      proxyHost: "127.0.0.1",
      proxyPort: proxy.port,
    });
    assert.equal(rx.channel.device.kind, "cuda");
    assert.equal(tx.channel.device.kind, txDevice);
    const keys = Array.from({ length: 20 }, (_, i) => testKey(`gpu-${txDevice}`, i));
    const host = new Uint8Array(GPU_PD_PAGE);
    for (let at = 0; at < keys.length; at += 8) {
      const batch = keys.slice(at, at + 8);
      const pages = await tx.allocate(batch.length);
      batch.forEach((k, i) => {
        fillFor(k, host);
        tx.channel.page(pages[i]).copyFrom(host);
      });
      const last = at + 8 >= keys.length;
      const r = await tx.send(gpuPdSpec(rx, `gpu-${txDevice}`, last), {
        keys: batch,
        pages,
        shape: GPU_PD_SHAPE,
        dtype: "bfloat16",
        lastChunkToks: 16,
      });
      assert.equal(r.sent, batch.length);
    }
    await proxy.waitFor(`gpu-${txDevice}`, { timeoutMs: 5000 });
    await rx.waitFor(keys, 5000);
    for (const k of keys.slice(0, 10)) {
      const held = rx.page(k)!;
      assert.equal(held.page.device.kind, "cuda");
      assert.ok(checkFor(k, held.page.read(0, held.bytes)), `content of ${k}`);
    }
    for (const k of keys.slice(10)) {
      const got = rx.retrieve(k)!; // copied out of the GPU page
      assert.ok(checkFor(k, got.data), `content of ${k}`);
    }
    assert.throws(() => rx.view(keys[0]), /GPU memory/);
  });
}
