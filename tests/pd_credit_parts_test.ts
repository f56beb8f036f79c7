/**
 * The parts of PD page credits that need no peer: the bind notification's codec refuses
 * every malformed field before anything is created, and a sender's credit stock uses a
 * lot only while usable, gives back what it stops using, and never gives back a page the
 * receiver has given again.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  bindEncoder,
  decodeBind,
  encodeBind,
  groupForBind,
  isBind,
} from "../src/pd/bind_notify.ts";
import { chunkForm, CreditStock } from "../src/pd/credit_stock.ts";
import { groupForNotification, MAX_NOTIFICATION_BYTES } from "../src/pd/notify.ts";
import { PdReceiver, PdSender } from "../mod.ts";
import { defaultCreditTotal } from "../src/pd/receiver.ts";

const enc = new TextEncoder();
const raw = (body: string) => enc.encode("kvport.pd.bind\n" + body);
const good = {
  reqId: "r1",
  fmt: 1,
  shape: [2, 1, 256, 64],
  dtype: "bfloat16",
  lastChunkToks: 100,
  keys: ["k0", "k1"],
  pages: [7, 3],
};

test("bind notification: round trip, and not a bind", () => {
  const bytes = encodeBind(good);
  assert.ok(isBind(bytes));
  assert.deepEqual(decodeBind(bytes), good);
  assert.equal(decodeBind(enc.encode("kvport.pd.landed\nk0")), null);
  assert.equal(decodeBind(new Uint8Array(3)), null);
});

test("bind notification: the batch encoder writes the bytes of the whole object's JSON", () => {
  const fields = { reqId: 'r"\\é', fmt: 2, shape: [2, 1, 256, 64], dtype: "float16" };
  const encode = bindEncoder(fields);
  for (
    const [keys, pages, last] of [
      [["k0"], [3], 17],
      [['a"b', "ключ", "k\u0001"], [9, 0, 4], null],
    ] as [string[], number[], number | null][]
  ) {
    const bytes = encode(keys, pages, last);
    const json = JSON.stringify({
      r: fields.reqId,
      f: fields.fmt,
      s: fields.shape,
      d: fields.dtype,
      t: last,
      k: keys,
      p: pages,
    });
    assert.equal(new TextDecoder().decode(bytes), "kvport.pd.bind\n" + json);
    assert.deepEqual(
      encodeBind({ ...fields, lastChunkToks: last, keys, pages }),
      bytes,
      "encodeBind",
    );
    assert.deepEqual(decodeBind(bytes), { ...fields, lastChunkToks: last, keys, pages });
  }
});

test("bind notification: groups count a key's escaped UTF-8 bytes", () => {
  // Keys of 99-100 bytes as JSON (plain, escaped, two-byte UTF-8): 2 fit a group of 2 * 118
  // bytes, 3 do not (counting characters, or unescaped, 3 would).
  const plain = "p".repeat(98);
  const escaped = '"'.repeat(49); // 49 * 2 + 2 quotes
  const wide = "é".repeat(49); // 49 * 2 bytes + 2 quotes
  for (const k of [plain, escaped, wide]) {
    const keys = [k + "0", k + "1", k + "2", k + "3"].map((x) => x.slice(1));
    const base = "kvport.pd.bind\n".length + 64;
    assert.deepEqual(groupForBind(keys, [0, 1, 2, 3], 0, base + 2 * 118), [[0, 1], [2, 3]], k);
  }
});

test("bind and landed notifications: a batch whose bound fits is one group, as counting says", () => {
  // Escaped keys (2 bytes each as JSON) and two-byte UTF-8 keys: at a limit below the
  // bound (6 bytes per character for a bind, 3 for a landed notification) the bytes are
  // counted, above it they are not; either way the batch is one group, of fresh lists.
  const quoted = '"'.repeat(40);
  const wide = "é".repeat(40);
  for (const k of [quoted, wide]) {
    const keys = [k + "a", k + "b", k + "c"];
    const positions = [0, 1, 2];
    const base = "kvport.pd.bind\n".length + 64;
    const exact = keys.reduce(
      (n, x) => n + new TextEncoder().encode(JSON.stringify(x)).length + 18,
      base,
    );
    for (const max of [exact, 10 * exact]) {
      const groups = groupForBind(keys, positions, 0, max);
      assert.deepEqual(groups, [[0, 1, 2]], `${k.slice(0, 1)} at ${max}`);
      assert.notEqual(groups[0], positions);
    }
    assert.deepEqual(groupForBind(keys, positions, 0, exact - 1), [[0, 1], [2]]);
    const landed = keys.reduce(
      (n, x) => n + new TextEncoder().encode(x).length + 1,
      "kvport.pd.landed\n".length,
    );
    for (const max of [landed, 10 * landed]) {
      assert.deepEqual(groupForNotification(keys, positions, max), [[0, 1, 2]]);
    }
    assert.deepEqual(groupForNotification(keys, positions, landed - 1), [[0, 1], [2]]);
  }
  assert.deepEqual(groupForBind(["a"], [], 0), []);
  assert.deepEqual(groupForNotification(["a"], []), []);
});

test("bind notification: every malformed field is refused, naming it", () => {
  const obj = (o: Record<string, unknown>) =>
    raw(JSON.stringify({ r: "r", f: 1, s: [2, 1, 256, 64], d: "bfloat16", t: null, ...o }));
  const cases: [Uint8Array, RegExp][] = [
    [raw("{nope"), /not UTF-8 JSON/],
    [raw("[1]"), /expected an object/],
    [Uint8Array.of(...raw(""), 0xff, 0xfe), /not UTF-8 JSON/],
    [obj({ k: ["a"], p: [-1] }), /p\[0\] must be an integer >= 0/],
    [obj({ k: ["a"], p: [1.5] }), /p\[0\]/],
    [obj({ k: ["a", "b"], p: [1] }), /one length/],
    [obj({ k: [], p: [] }), /no keys/],
    [obj({ k: ["a\nb"], p: [1] }), /k\[0\]/],
    [obj({ k: [""], p: [1] }), /k\[0\]/],
    [obj({ k: ["a", "a"], p: [1, 2] }), /a key twice/],
    [obj({ k: ["a", "b"], p: [1, 1] }), /a page twice/],
    [obj({ k: ["a"], p: [1], s: [] }), /shape/],
    [obj({ k: ["a"], p: [1], s: [1, 2, 3, 4, 5, 6, 7, 8, 9] }), /shape/],
    [obj({ k: ["a"], p: [1], s: [2, -1] }), /s\[1\]/],
    [obj({ k: ["a"], p: [1], d: 5 }), /dtype/],
    [obj({ k: ["a"], p: [1], f: "x" }), /fmt/],
    [obj({ k: ["a"], p: [1], t: -3 }), /last_chunk_toks/],
    [obj({ k: ["a"], p: [1], r: 9 }), /req_id/],
    [raw("x".repeat(MAX_NOTIFICATION_BYTES)), /at most/],
  ];
  for (const [bytes, why] of cases) assert.throws(() => decodeBind(bytes), why);
});

test("bind notification: groups fit the engine's notification limit", () => {
  const keys = Array.from({ length: 3000 }, (_, i) => `vllm@model@1@0@${"ab".repeat(16)}${i}@bf16`);
  const groups = groupForBind(keys, keys.map((_, i) => i), 200);
  assert.ok(groups.length > 1);
  assert.deepEqual(groups.flat(), keys.map((_, i) => i));
  for (const g of groups) {
    const bytes = encodeBind({
      ...good,
      reqId: "r".repeat(30),
      keys: g.map((i) => keys[i]),
      pages: g.map((i) => 1_000_000 + i),
    });
    assert.ok(bytes.length <= MAX_NOTIFICATION_BYTES - 1024, `${bytes.length} bytes`);
  }
});

test("credit stock: usable lots only, soonest first, all or nothing, stale ones given back", () => {
  const f = chunkForm(1, [2, 1, 256, 64], "bfloat16");
  const g = chunkForm(1, [2, 1, 128, 64], "bfloat16");
  const s = new CreditStock();
  const now = 1000;
  s.add([1, 2, 3], f, now + 500);
  s.add([4, 5], f, now + 100);
  s.add([9], g, now + 500);
  assert.equal(s.count(f, now), 5);
  assert.equal(s.take(6, f, now), null, "not enough: nothing taken");
  assert.deepEqual(s.take(3, f, now), { pages: [4, 5, 1], usableUntil: now + 100 });
  assert.equal(s.take(1, chunkForm(2, [2], "x"), now), null, "another form");
  // Past the first lot's end: it is dropped, to be given back.
  s.add([6], f, now + 50);
  assert.equal(s.count(f, now + 200), 2);
  assert.deepEqual(s.takeDropped(), [6]);
  assert.deepEqual(s.takeDropped(), []);
  // A reset gives back everything held.
  s.clear();
  assert.deepEqual(s.takeDropped().sort(), [2, 3, 9]);
  assert.equal(s.count(), 0);
});

test("credit stock: a page given again is the new credit; its pending give-back is dropped", () => {
  const f = chunkForm(1, [2, 1, 256, 64], "bfloat16");
  const s = new CreditStock();
  const now = performance.now();
  s.add([1, 2], f, now + 10);
  assert.equal(s.count(f, now + 20), 0); // stale: 1 and 2 to give back
  s.add([2, 3], f, now + 60_000); // the receiver gave 2 again
  assert.deepEqual(s.takeDropped(), [1], "giving 2 back now would end the new credit");
  assert.deepEqual(s.take(2, f, now + 30)?.pages, [2, 3]);
  // Pages of a batch that never ran come back as they were.
  s.putBack([2, 3], f, now + 60_000);
  assert.equal(s.count(f, now + 30), 2);
});

test("credit options: a bad value is refused, naming the option and the value", async () => {
  const base = { bufferSize: 4 * 4096, pageSize: 4096, channelType: "mock_memory" as const };
  await assert.rejects(PdSender.create({ ...base, creditPages: -1 }), /creditPages .*got -1/);
  await assert.rejects(PdSender.create({ ...base, creditPages: 1.5 }), /creditPages .*got 1.5/);
  await assert.rejects(PdSender.create({ ...base, creditTtlMs: 0 }), /creditTtlMs .*got 0/);
  const rx = { ...base, host: "127.0.0.1", initPort: 0, allocPort: 0 };
  await assert.rejects(
    PdReceiver.create({ ...rx, creditMaxPerSender: -2 }),
    /creditMaxPerSender .*got -2/,
  );
  await assert.rejects(
    PdReceiver.create({ ...rx, creditMaxTotal: NaN }),
    /creditMaxTotal .*got NaN/,
  );
});

test("credit total default: a quarter of the pages, at least 16 or half of them if less", () => {
  assert.deepEqual(
    [1, 6, 20, 32, 64, 65, 400].map(defaultCreditTotal),
    [0, 3, 10, 16, 16, 16, 100],
  );
});

test("chunk form: made again for a shape changed in place, the same string for the same form", () => {
  const shape = [2, 1, 256, 64];
  const a = chunkForm(1, shape, "bfloat16");
  assert.equal(chunkForm(1, [2, 1, 256, 64], "bfloat16"), a);
  shape[2] = 128; // the caller's array: the form remembered is of a copy
  assert.equal(chunkForm(1, shape, "bfloat16"), "1|2,1,128,64|bfloat16");
  assert.equal(chunkForm(1, [2, 1, 128], "bfloat16"), "1|2,1,128|bfloat16");
  assert.equal(chunkForm(2, [2, 1, 128], "bfloat16"), "2|2,1,128|bfloat16");
  assert.equal(chunkForm(2, [2, 1, 128], "float16"), "2|2,1,128|float16");
});

test("bind notification: the fields written once per form follow a shape changed in place", () => {
  const shape = [2, 1, 256, 64];
  const n = { reqId: "r1", fmt: 1, shape, dtype: "bfloat16" };
  assert.deepEqual(decodeBind(bindEncoder(n)(["k0"], [7], 100))?.shape, [2, 1, 256, 64]);
  shape[2] = 128;
  const again = decodeBind(bindEncoder({ ...n, reqId: "r2" })(["k0"], [7], 100));
  assert.deepEqual([again?.reqId, again?.shape], ["r2", [2, 1, 128, 64]]);
  const other = decodeBind(bindEncoder({ ...n, fmt: 2, dtype: "float16" })(["k0"], [7], null));
  assert.deepEqual([other?.fmt, other?.dtype, other?.lastChunkToks], [2, "float16", null]);
});
