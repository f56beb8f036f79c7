// encodeFrames writes small messages' headers in place (one buffer, no header arrays):
// the bytes are those of the frame-by-frame form (ZMTP 3: flags, 1-byte size up to 255,
// else LONG and an 8-byte size), for every size boundary and count of frames, on both
// sides of the 64 KiB coalescing limit.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeFrames } from "../src/channel/wire/mod.ts";

/** The message as ZMTP 3 spells it, frame by frame. */
function reference(frames: Uint8Array[]): Uint8Array {
  const parts: number[] = [];
  frames.forEach((f, i) => {
    const more = i < frames.length - 1 ? 0x01 : 0;
    if (f.length <= 255) parts.push(more, f.length);
    else {
      parts.push(more | 0x02);
      const size = BigInt(f.length);
      for (let b = 7; b >= 0; b--) parts.push(Number((size >> BigInt(8 * b)) & 0xffn));
    }
    for (const x of f) parts.push(x);
  });
  return Uint8Array.from(parts);
}

const frame = (n: number, seed: number) =>
  Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

test("encodeFrames: the frame-by-frame bytes for every size boundary, one to four frames, small and large", () => {
  const sizes = [0, 1, 254, 255, 256, 257, 65535, 65536, 70000];
  for (const a of sizes) {
    for (const frames of [[a], [0, a], [a, 5, 0], [300, a, 255, 1]]) {
      const msg = frames.map((n, i) => frame(n, i + a));
      const pieces = encodeFrames(msg);
      const total = pieces.reduce((x, p) => x + p.length, 0);
      const joined = new Uint8Array(total);
      let off = 0;
      for (const p of pieces) {
        joined.set(p, off);
        off += p.length;
      }
      assert.deepEqual(joined, reference(msg), `frames ${frames.join(",")}`);
      const small = total <= 64 * 1024;
      if (small) assert.equal(pieces.length, 1, `frames ${frames.join(",")}: one buffer`);
      if (!small) assert.ok(pieces.every((p) => p.length > 0), "no empty piece");
    }
  }
});
