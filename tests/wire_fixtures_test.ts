// LMCache's messages as its own msgspec classes encode them, every type and both
// generations (tests/fixtures/lmcache_wire/messages.json, recorded by
// tests/helpers/py_gen_lmcache_fixtures.py): decoding gives the recorded field values
// exactly (integers beyond 2^53 as bigint), encoding gives the recorded bytes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  decodeMessage,
  encodeMessage,
  type LmcacheMessage,
  MESSAGE_TYPES,
  receivedFieldOrder,
  withFieldOrder,
} from "../src/channel/wire/mod.ts";
import {
  ALLOC_RESPONSE_ORDER,
  generationOfRequest,
  generationOfResponse,
  readAllocResponse,
} from "../src/pd/alloc_wire.ts";
import type { SideMessage } from "../src/channel/types.ts";

interface Fixture {
  name: string;
  generation: string;
  type: string;
  fields: Record<string, unknown>;
  hex: string;
}

const doc = JSON.parse(
  readFileSync(new URL("./fixtures/lmcache_wire/messages.json", import.meta.url), "utf8"),
) as { recorded_with: string; fixtures: Fixture[] };

const SAFE = BigInt(Number.MAX_SAFE_INTEGER);
/** Fields LMCache declares `int` that hold 64-bit chunk hashes (always bigint here). */
const HASH_FIELDS = new Set(["key", "hashes"]);

function value(v: unknown, field = ""): unknown {
  if (Array.isArray(v)) return v.map((x) => value(x, field));
  if (v !== null && typeof v === "object") {
    const o = v as Record<string, unknown>;
    if ("$bin" in o) {
      const h = o.$bin as string;
      return Uint8Array.from(
        { length: h.length / 2 },
        (_, i) => parseInt(h.slice(2 * i, 2 * i + 2), 16),
      );
    }
    if ("$int" in o) return BigInt(o.$int as string);
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, value(x, k)]));
  }
  if (typeof v === "number" && HASH_FIELDS.has(field)) return BigInt(v);
  return v;
}

const bytesOf = (hex: string) =>
  Uint8Array.from({ length: hex.length / 2 }, (_, i) => parseInt(hex.slice(2 * i, 2 * i + 2), 16));
const hexOf = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

test("fixtures: every message type, both generations where LMCache has two", () => {
  assert.match(doc.recorded_with, /^msgspec /);
  const types = new Set(doc.fixtures.map((f) => f.type));
  for (const t of MESSAGE_TYPES) {
    if (types.has(t)) continue;
    assert.fail(`no fixture of ${t}`);
  }
  const gens = (t: string) =>
    new Set(doc.fixtures.filter((f) => f.type === t).map((f) => f.generation));
  for (
    const t of ["NixlInitRequest", "NixlInitResponse", "NixlMemRegRequest", "NixlMemRegResponse"]
  ) {
    assert.deepEqual([...gens(t)].sort(), ["nixl-v1", "nixl-v2"], t);
  }
  for (const t of ["AllocRequest", "AllocResponse", "ProxyNotif"]) {
    assert.deepEqual([...gens(t)].sort(), ["pd-async", "pd-sync"], t);
  }
  assert.deepEqual([...gens("KVAdmitMsg")].sort(), ["controller-v1", "controller-v2"]);
});

for (const f of doc.fixtures) {
  test(`fixture ${f.name}: decode equals the recorded values, encode the recorded bytes`, () => {
    const want = value(f.fields) as Record<string, unknown>;
    const got = decodeMessage(bytesOf(f.hex)) as unknown as Record<string, unknown>;
    assert.deepStrictEqual(got, want);
    for (const [k, v] of Object.entries(got)) {
      // Exact integers: a number only when it is safe, else a bigint of the same value.
      if (typeof v === "bigint" && !HASH_FIELDS.has(k)) assert.ok(v > SAFE || v < -SAFE, k);
    }
    // The field order as it arrived is LMCache's declaration order of that generation.
    assert.deepEqual(receivedFieldOrder(got), Object.keys(want).filter((k) => k !== "type"));
    // Encoding the values: the catalogue's order, except AllocResponse of the async
    // generation, which declares its fields the other way round.
    const msg = { ...want } as unknown as LmcacheMessage;
    if (f.type === "AllocResponse" && f.generation === "pd-async") {
      withFieldOrder(msg, ALLOC_RESPONSE_ORDER.async);
    }
    assert.equal(hexOf(encodeMessage(msg)), f.hex);
    // And a decoded message re-encodes to the same bytes (round trip, order kept).
    assert.equal(hexOf(encodeMessage(got as unknown as LmcacheMessage)), f.hex);
  });
}

test("fixtures: the PD generation of each request and reply is recognised", () => {
  for (const f of doc.fixtures) {
    if (!f.generation.startsWith("pd-")) continue;
    const msg = decodeMessage(bytesOf(f.hex)) as unknown as SideMessage;
    const gen = f.generation === "pd-sync" ? "sync" : "async";
    if (f.type === "AllocRequest" || f.type === "CancelNotif") {
      assert.equal(generationOfRequest(msg), gen, f.name);
    }
    if (f.type === "AllocResponse") {
      assert.equal(generationOfResponse(msg), gen, f.name);
      const out = readAllocResponse(msg);
      const refused = (msg.remote_indexes as number[]).includes(-1);
      assert.equal(out.ok, !refused, f.name);
      if (!out.ok) assert.equal(out.reason, "unspecified");
    }
  }
});
