// LMCache message catalogue: byte-exact against real msgspec output (golden fixture),
// round trips, and typed validation errors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Encoder } from "@msgpack/msgpack";
import {
  decodeMessage,
  encodeMessage,
  isMessageType,
  type LmcacheMessage,
  MESSAGE_FIELDS,
  MESSAGE_TYPES,
  P2PErrorCode,
  toSafeInt,
  WireMessageError,
} from "../src/channel/wire/mod.ts";
import { digestForm, hex, loadGolden, loadSamples } from "./wire/samples.ts";

const samples = loadSamples();
const golden = loadGolden();
const raw = new Encoder({ useBigInt64: true });

function errorOf(fn: () => unknown): WireMessageError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof WireMessageError, `expected WireMessageError, got ${e}`);
    return e;
  }
  assert.fail("no error thrown");
}

test("catalogue: every message type has a sample, and field names match LMCache", () => {
  const sampled = new Set(samples.map((s) => s.type));
  for (const t of MESSAGE_TYPES) assert.ok(sampled.has(t), `no sample of ${t}`);
  assert.equal(MESSAGE_TYPES.length, 26);
  const names = (t: keyof typeof MESSAGE_FIELDS) => MESSAGE_FIELDS[t].map((f) => f.name);
  assert.deepEqual(names("NixlInitResponse"), [
    "remote_agent_name",
    "remote_meta_bytes",
    "remote_agent_names",
    "remote_meta_bytes_list",
  ]);
  assert.deepEqual(names("NixlMemRegRequest"), [
    "remote_agent_name",
    "local_id",
    "local_xfer_dlist_bytes",
    "remote_agent_names",
    "local_xfer_dlist_bytes_list",
  ]);
  // The fields newer LMCache added have defaults: old peers' messages still decode.
  assert.ok(MESSAGE_FIELDS.NixlInitRequest[1].optional);
  assert.ok(
    MESSAGE_FIELDS.AllocResponse.every((f) => f.optional !== (f.name === "remote_indexes")),
  );
  assert.deepEqual(names("AllocRequest").slice(0, 5), [
    "keys",
    "fmt",
    "shape",
    "dtype",
    "last_chunk_toks",
  ]);
  assert.deepEqual(names("BatchedLookupAndGetMsg"), [
    "lookup_id",
    "receiver_id",
    "keys",
    "mem_indexes",
  ]);
  assert.deepEqual(names("BatchedP2PLookupMsg"), ["hashes", "instance_id", "worker_id"]);
  assert.equal(P2PErrorCode.REMOTE_XFER_HANDLER_NOT_INITIALIZED, 3);
  assert.ok(isMessageType("CancelNotif") && !isMessageType("toString"));
});

test("encoding is byte-identical to msgspec's (golden fixture) for every sample", async () => {
  assert.match(golden.generator, /^msgspec /);
  for (const [i, sample] of samples.entries()) {
    const bytes = encodeMessage(sample);
    const want = golden.hex[String(i)];
    const got = want.startsWith("sha256:") ? await digestForm(bytes) : hex(bytes);
    assert.equal(got, want, `sample ${i} (${sample.type})`);
  }
});

test("encoding: map with 'type' first, then fields in declaration order", () => {
  const bytes = encodeMessage({ type: "ProxyNotif", req_id: "r" });
  // fixmap(2) "type" "ProxyNotif" "req_id" "r"
  assert.equal(
    hex(bytes),
    "82a474797065aa50726f78794e6f746966a67265715f6964a172",
  );
  // Key order of the input object does not matter.
  const shuffled = {
    remote_meta_bytes: new Uint8Array([1]),
    remote_agent_name: new Uint8Array([2]),
    type: "NixlInitResponse",
  } as LmcacheMessage;
  const ordered = encodeMessage({
    type: "NixlInitResponse",
    remote_agent_name: new Uint8Array([2]),
    remote_meta_bytes: new Uint8Array([1]),
  });
  assert.deepEqual(encodeMessage(shuffled), ordered);
  // bytes are msgpack bin (0xc4), never str.
  assert.ok(hex(ordered).includes("c40102"));
});

test("round trip: decode(encode(x)) equals x for every sample", () => {
  for (const s of samples) assert.deepEqual(decodeMessage(encodeMessage(s)), s, s.type);
});

test("decode: any key order, unknown keys ignored (newer LMCache fields)", () => {
  const bytes = raw.encode({
    remote_indexes: [1, 2],
    extra_future_field: "x",
    type: "AllocResponse",
    already_sent_indexes: [],
  });
  assert.deepEqual(decodeMessage(bytes, ["AllocResponse"]), {
    type: "AllocResponse",
    already_sent_indexes: [],
    remote_indexes: [1, 2],
  });
});

test("decode: optional fields stay absent; their LMCache defaults are implied", () => {
  const old = decodeMessage(encodeMessage(samples[7]), ["AllocRequest"]);
  assert.equal("req_id" in old, false);
  const newer = decodeMessage(encodeMessage(samples[8]), ["AllocRequest"]);
  assert.equal(newer.req_id, "cmpl-7f1e");
  assert.equal(newer.is_last_batch, true);
});

test("decode: 64-bit hashes come back as bigint, exactly", () => {
  const m = decodeMessage(
    encodeMessage({
      type: "BatchedP2PLookupMsg",
      hashes: [0n, -1n, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n],
      instance_id: "i",
      worker_id: 0,
    }),
    ["BatchedP2PLookupMsg"],
  );
  assert.deepEqual(m.hashes, [0n, -1n, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n]);
  const e = errorOf(() =>
    encodeMessage({
      type: "KVAdmitMsg",
      instance_id: "i",
      worker_id: 0,
      key: 2n ** 64n,
      location: "x",
    })
  );
  assert.equal(e.field, "key");
});

test("errors: unknown type, unexpected type, missing tag", () => {
  let e = errorOf(() => decodeMessage(raw.encode({ type: "Foo", x: 1 })));
  assert.equal(e.messageType, "Foo");
  assert.match(e.message, /unknown type "Foo"/);
  e = errorOf(() => decodeMessage(encodeMessage(samples[0]), ["AllocRequest", "ProxyNotif"]));
  assert.equal(e.expected, "one of AllocRequest, ProxyNotif");
  assert.equal(e.got, "NixlInitRequest");
  e = errorOf(() => decodeMessage(raw.encode({ req_id: "x" })));
  assert.equal(e.field, "type");
  e = errorOf(() => decodeMessage(raw.encode([1, 2]), undefined, { peer: "tcp://h:1" }));
  assert.match(e.message, /expected a map with a "type" key, got array \(2 elements\)/);
  assert.equal(e.peer, "tcp://h:1");
});

test("errors: missing field and wrong field types name the field, expected and got", () => {
  let e = errorOf(() => decodeMessage(raw.encode({ type: "ProxyNotif" })));
  assert.deepEqual([e.messageType, e.field], ["ProxyNotif", "req_id"]);
  assert.match(e.got, /absent/);
  e = errorOf(() =>
    decodeMessage(raw.encode({ type: "NixlInitRequest", local_meta_bytes: "not bytes" }))
  );
  assert.deepEqual([e.field, e.expected, e.got], [
    "local_meta_bytes",
    "bin (bytes)",
    'str "not bytes"',
  ]);
  e = errorOf(() =>
    decodeMessage(
      raw.encode({ type: "CancelNotif", req_id: "r", keys: ["a", "b", 7] }),
    )
  );
  assert.equal(e.field, "keys[2]");
  assert.equal(e.got, "int 7");
  e = errorOf(() =>
    decodeMessage(raw.encode({ type: "BatchedLookupAndGetRetMsg", num_hit_chunks: 1.5 }))
  );
  assert.equal(e.got, "float 1.5");
  e = errorOf(() =>
    decodeMessage(
      raw.encode({
        type: "RegisterMsg",
        instance_id: "i",
        worker_id: 0,
        ip: "h",
        port: 1,
        peer_init_url: 5,
      }),
    )
  );
  assert.equal(e.expected, "str or nil");
  e = errorOf(() =>
    decodeMessage(
      raw.encode({ type: "BatchedP2PLookupRetMsg", layout_info: [["a", "b", "c", "d"]] }),
    )
  );
  assert.equal(e.field, "layout_info[0][2]");
  e = errorOf(() =>
    decodeMessage(raw.encode({
      type: "BatchedKVOperationMsg",
      instance_id: "i",
      worker_id: 0,
      location: "l",
      operations: [{ op_type: "move", key: 1, seq_num: 0 }],
    }))
  );
  assert.equal(e.field, "operations[0].op_type");
  // Encoding validates too (for JavaScript callers).
  e = errorOf(() => encodeMessage({ type: "ProxyNotif" } as unknown as LmcacheMessage));
  assert.equal(e.field, "req_id");
});

test("errors: truncated, trailing and lying msgpack never allocate what they announce", () => {
  const good = encodeMessage(samples[3]);
  for (const cut of [1, 5, good.length - 1]) {
    const e = errorOf(() => decodeMessage(good.subarray(0, cut)));
    assert.match(e.expected, /well-formed msgpack/);
  }
  errorOf(() => decodeMessage(new Uint8Array([...good, 0xc0])));
  // bin32 announcing 4 GiB with 3 bytes present; array32 / map32 announcing 4 billion items.
  errorOf(() => decodeMessage(new Uint8Array([0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3])));
  errorOf(() => decodeMessage(new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff, 1])));
  errorOf(() => decodeMessage(new Uint8Array([0xdf, 0xff, 0xff, 0xff, 0xff, 1])));
  errorOf(() => decodeMessage(new Uint8Array(0)));
  errorOf(() => decodeMessage(new Uint8Array([0xc1])));
  // An ext value where a field should be.
  const ext = new Uint8Array([
    0x82,
    0xa4,
    ...new TextEncoder().encode("type"),
    0xaa,
    ...new TextEncoder().encode("ProxyNotif"),
    0xa6,
    ...new TextEncoder().encode("req_id"),
    0xd4,
    0x01,
    0x00,
  ]);
  assert.match(errorOf(() => decodeMessage(ext)).got, /ext length/);
});

test("integers: the whole int64/uint64 range decodes exactly and round-trips", () => {
  const big = [-(2n ** 63n), -(2n ** 53n), 2n ** 53n, 2n ** 63n - 1n, 2n ** 64n - 1n];
  const bytes = raw.encode({
    type: "BatchedLookupAndPutMsg",
    sender_id: "s",
    keys: big.map(String),
    offsets: [0, 1, -1, 2 ** 32, 2 ** 53 - 1],
    mem_indexes: big,
  });
  const m = decodeMessage(bytes, ["BatchedLookupAndPutMsg"]);
  // Safe integers stay numbers; anything beyond 2^53 is an exact bigint.
  assert.deepEqual(m.offsets, [0, 1, -1, 2 ** 32, 2 ** 53 - 1]);
  assert.deepEqual(m.mem_indexes, big);
  const again = decodeMessage(encodeMessage(m), ["BatchedLookupAndPutMsg"]);
  assert.deepEqual(again, m);
  // msgspec writes positive 64-bit values as uint64 and negative ones as int64: so do we.
  assert.ok(hex(encodeMessage(m)).includes("cf7fffffffffffffff"));
  assert.ok(hex(encodeMessage(m)).includes("cfffffffffffffffff"));
  assert.ok(hex(encodeMessage(m)).includes("d38000000000000000"));
  // A number beyond 2^53 is not exact: encoding refuses it, naming the field.
  const e = errorOf(() =>
    encodeMessage({ type: "BatchedLookupAndGetRetMsg", num_hit_chunks: 2 ** 60 })
  );
  assert.equal(e.field, "num_hit_chunks");
  assert.match(e.expected, /bigint beyond 2\^53/);
  // Consumers that need a small number get a clear error instead of a rounded value.
  assert.equal(toSafeInt(12n, "port"), 12);
  const s = errorOf(() => toSafeInt(2n ** 60n, "worker_id", "RegisterMsg"));
  assert.match(s.message, /RegisterMsg field "worker_id".*int 1152921504606846976/);
});
