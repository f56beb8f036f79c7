// chunkHashOf: the chunk hashes the registry indexes, pinned per form of key (the
// hex part read as LMCache prints it, negative, folded beyond 64 bits; FNV-1a for a key
// of another form), as the RegExp/Number() code before the char-code parser gave them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chunkHashOf } from "../src/p2p/hash.ts";

const PINNED: [string, bigint][] = [
  ["vllm@m@1@0@1f@bfloat16", 31n],
  ["vllm@m@1@0@-a@bfloat16", -10n],
  ["vllm@m@1@0@FF@bfloat16", 255n],
  ["vllm@m@1@0@fFfFfFfFfFfFfFfF@bfloat16", 18446744073709551615n],
  ["vllm@m@1@0@10000000000000000@bfloat16", 0n],
  ["vllm@m@1@0@-8000000000000001@bfloat16", 9223372036854775807n],
  ["vllm@m@1@0@ffffffffffffffffff@bfloat16", -1n],
  ["vllm@m@1@0@@bfloat16", 2021965146014839379n],
  ["vllm@m@1@0@-@bfloat16", 10643504421039699646n],
  ["vllm@m@1@0@1g@bfloat16", 4153567599116226095n],
  ["vllm@m@1@0@1\u0010@bfloat16", 16381114722569498660n],
  ["vllm@m@x@0@1f@bfloat16", 4353333308084861497n],
  ["vllm@m@@0@1f@bfloat16", 31n],
  ["vllm@m@ 1 @1e3@1f@bfloat16", 31n],
  ["vllm@m@0x10@1.0@1f@bfloat16", 31n],
  ["vllm@m@1.5@0@1f@bfloat16", 7646576635549089959n],
  ["vllm@m@Infinity@0@1f@bfloat16", 10826360600769968047n],
  ["vllm@m@a@b@1@0@abc@bf16", 2748n],
  ["@m@1@0@1f@bfloat16", 31n],
  ["m@1@0@1f@bfloat16", 14139939628091351977n],
  ["plain key", 4507137644988304268n],
  ["", 14695981039346656037n],
  ["vllm@m@1@0@1f@", 31n],
  ["vllm@m@1@0@--1@bfloat16", 5488627914386902568n],
  ["vllm@m@1@0@\u0661@bfloat16", 7474639445350637213n],
  ["vllm@m@\u0661@0@1@bf", 4622731137476369608n],
  ["vllm@m@1@0@ffffffff@bfloat16", 4294967295n],
  ["vllm@m@1@0@100000000@bfloat16", 4294967296n],
  ["vllm@m@1@0@-ffffffffffffffff@bfloat16", 1n],
  ["vllm@m@1@0@8000000000000000@bfloat16", 9223372036854775808n],
  ["vllm@m@1@0@-8000000000000000@bfloat16", -9223372036854775808n],
  ["vllm@m@1@0@0000000000000000001@bfloat16", 1n],
  ["vllm@m@1@0@ABCDEF0123456789@bfloat16", 12379813738877118345n],
  ["vllm@m@1@0@abcdefg123456789@bfloat16", 18101191431406034090n],
];

test("chunkHashOf: every form of key hashes as pinned", () => {
  for (const [key, want] of PINNED) assert.equal(chunkHashOf(key), want, JSON.stringify(key));
});
