/**
 * The fast reading of bind notifications (`bind_fast.ts`): what our encoder writes is
 * read to the values `JSON.parse` gives, anything written otherwise is left to the JSON
 * path (`null`), and no byte changed anywhere in a bind makes the fast reading accept
 * something that JSON would read differently or refuse. The receiver's checks then see
 * the same values whichever way a bind was read.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { parsePlainBind } from "../src/pd/bind_fast.ts";
import { decodeBind, encodeBind } from "../src/pd/bind_notify.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const PREFIX = "kvport.pd.bind\n".length;

/** The body as JSON reads it, or `undefined` where JSON refuses it. */
function viaJson(bytes: Uint8Array, start: number): unknown {
  try {
    return JSON.parse(dec.decode(bytes.subarray(start)));
  } catch {
    return undefined;
  }
}

const notices = [
  {
    reqId: "cmpl-8d3f1e2a",
    fmt: 1,
    shape: [2, 32, 256, 1024],
    dtype: "bfloat16",
    lastChunkToks: 256,
    keys: ["vllm@/models/llama@1@0@a1b2c3d4"],
    pages: [17],
  },
  { reqId: "", fmt: 0, shape: [0], dtype: "x", lastChunkToks: null, keys: ["k"], pages: [0] },
  {
    reqId: "r",
    fmt: 3,
    shape: [2, 1, 256, 64],
    dtype: "float16",
    lastChunkToks: 0,
    keys: ["a", "b", "c"],
    pages: [999_999_999_999_999, 10, 3],
  },
  {
    reqId: "long",
    fmt: 1,
    shape: [1, 2, 3, 4, 5, 6, 7, 8],
    dtype: "bfloat16",
    lastChunkToks: 7,
    keys: ["k".repeat(5000), "x y~!#$%&'()*+,-./:;<=>?@[]^_`{|}"],
    pages: [1, 2],
  },
];

test("bind fast reading: what the encoder writes reads as JSON reads it", () => {
  for (const n of notices) {
    const bytes = encodeBind(n);
    const fast = parsePlainBind(bytes, PREFIX);
    assert.notEqual(fast, null, n.reqId);
    assert.deepEqual(fast, viaJson(bytes, PREFIX));
    assert.deepEqual(decodeBind(bytes), n);
  }
});

test("bind fast reading: escapes, non-ASCII, white space, other orders go the JSON way", () => {
  const escaped = [
    { ...notices[0], keys: ['a"b'] },
    { ...notices[0], keys: ["a\\b"] },
    { ...notices[0], reqId: "r\u00e9" },
    { ...notices[0], dtype: "\u{1F600}" },
    { ...notices[0], keys: ["a\u007fb"] },
  ];
  for (const n of escaped) {
    const bytes = encodeBind(n);
    assert.equal(parsePlainBind(bytes, PREFIX), null, JSON.stringify(n.keys));
    assert.deepEqual(decodeBind(bytes), n); // read by the JSON path, checked the same
  }
  const others = [
    '{"r":"r","f":1,"s":[2],"d":"x","t":null,"k":["k"],"p":[1] }',
    '{ "r":"r","f":1,"s":[2],"d":"x","t":null,"k":["k"],"p":[1]}',
    '{"f":1,"r":"r","s":[2],"d":"x","t":null,"k":["k"],"p":[1]}',
    '{"r":"r","f":1.0,"s":[2],"d":"x","t":null,"k":["k"],"p":[1]}',
    '{"r":"r","f":1e0,"s":[2],"d":"x","t":null,"k":["k"],"p":[1]}',
    '{"r":"r","f":-1,"s":[2],"d":"x","t":null,"k":["k"],"p":[1]}',
    '{"r":"r","f":01,"s":[2],"d":"x","t":null,"k":["k"],"p":[1]}',
    '{"r":"r","f":1,"s":[2],"d":"x","t":null,"k":["k"],"p":[1234567890123456]}',
    '{"r":"r","f":1,"s":[2],"d":"x","t":null,"k":["k"],"p":[1],"x":0}',
    '{"r":"r","f":1,"s":[2],"d":"x","t":null,"k":["k"],"p":[1]}x',
    '{"r":"r","f":1,"s":[2],"d":"x","t":"1","k":["k"],"p":[1]}',
  ];
  for (const body of others) assert.equal(parsePlainBind(enc.encode(body), 0), null, body);
});

test("bind fast reading: no changed byte makes it read what JSON reads otherwise", () => {
  // Every position, every byte of a set that matters to the syntax: what the fast reading
  // accepts, JSON reads the same; the rest goes to JSON (which refuses, or reads it).
  const base = encodeBind(notices[2]);
  const swaps = enc.encode('0123456789"\\,[]{}:-.e n\x00\x7f');
  let accepted = 0;
  let checked = 0;
  for (let i = PREFIX; i <= base.length; i++) {
    for (const b of [...swaps, 0xc3]) {
      for (const mode of ["replace", "insert", "cut"] as const) {
        let bytes: Uint8Array;
        if (mode === "replace") {
          if (i === base.length) continue;
          bytes = base.slice();
          bytes[i] = b;
        } else if (mode === "insert") {
          bytes = new Uint8Array(base.length + 1);
          bytes.set(base.subarray(0, i));
          bytes[i] = b;
          bytes.set(base.subarray(i), i + 1);
        } else {
          bytes = base.slice(0, i); // truncated (the same for every b)
        }
        const fast = parsePlainBind(bytes, PREFIX);
        checked++;
        if (fast === null) continue;
        accepted++;
        assert.deepEqual(fast, viaJson(bytes, PREFIX), `${mode} ${b} at ${i}`);
      }
    }
  }
  // Digits swapped for digits (and such) still read: the test saw both outcomes.
  assert.ok(accepted > 50 && accepted < checked, `${accepted} of ${checked}`);
});
