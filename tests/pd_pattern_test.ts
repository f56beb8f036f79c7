// The deterministic test content (src/pd/pattern.ts): the same bytes as before pages
// shorter than a block stopped allocating a 64 KiB block per key (issue 19.5), and the
// shared scratch block never leaks one key's bytes into another's check.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { checkPattern, fillPattern } from "../src/pd/pattern.ts";

const KEY = "vllm@m@1@0@abc@bfloat16";
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

test("pattern: known bytes for a 1 KiB page and a multi-block page (unchanged format)", () => {
  const small = new Uint8Array(1024);
  fillPattern(KEY, small);
  assert.equal(sha(small), "890aec8d9d977d927a86b10c39c93e33cdb5723522c0ee87d1de791af8028a37");
  const big = new Uint8Array(200_000);
  fillPattern(KEY, big);
  assert.equal(sha(big), "493e88f35d5a2c5d272c4eda490ec7828070765cc0c056ee1882c5872ab27f86");
  // A short page holds the first bytes of its key's long content.
  assert.deepEqual(small, big.subarray(0, 1024));
});

test("pattern: checks of small pages of many keys, interleaved, see only their own key", () => {
  const keys = Array.from({ length: 300 }, (_, i) => `vllm@m@1@0@${i.toString(16)}@bfloat16`);
  const buf = new Uint8Array(keys.length * 1000 + 3);
  // Odd sizes and offsets: pages need not be 4-byte aligned.
  const pages = keys.map((_, i) => buf.subarray(3 + i * 1000, 3 + i * 1000 + 997));
  keys.forEach((k, i) => fillPattern(k, pages[i]));
  for (let i = 0; i < keys.length; i++) {
    assert.equal(checkPattern(keys[i], pages[i]), -1, `page ${i}`);
    assert.equal(checkPattern(keys[(i + 1) % keys.length], pages[i]), 0, `page ${i}, other key`);
  }
  pages[7][996] ^= 1;
  assert.equal(checkPattern(keys[7], pages[7]), 0, "a flipped last byte is found");
  assert.equal(checkPattern(keys[8], pages[8]), -1);
});
