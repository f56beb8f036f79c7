// The FFI symbol table against kvport.h, the Deno/Bun forms, status names, and the
// library lookup's errors. None of these needs the native library.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import process from "node:process";
import { SYMBOLS, toBunSymbols, toDenoSymbols } from "../ffi/symbols.ts";
import {
  ABI_VERSION,
  libraryCandidates,
  loadNativeLibrary,
  NativeLibraryError,
} from "../ffi/mod.ts";
import { cString, parseKeyValues } from "../ffi/native.ts";
import { NixlError, NixlTimeoutError, Status, statusName } from "../src/errors.ts";

const header = readFileSync(new URL("../native/include/kvport.h", import.meta.url), "utf8");

/** Every function declaration of the header: name, C parameter list, C result type. */
function declarations(): Map<string, { result: string; params: string[] }> {
  const out = new Map<string, { result: string; params: string[] }>();
  const noComments = header.replace(/\/\*[\s\S]*?\*\//g, "");
  const re = /^([a-z_0-9 ]+?\**)\s*\b(kvp_[a-z_0-9]+)\s*\(([^)]*)\);/gm;
  for (const m of noComments.matchAll(re)) {
    const params = m[3].split(",").map((p) => p.replace(/\s+/g, " ").trim())
      .filter((p) => p && p !== "void");
    out.set(m[2], { result: m[1].trim(), params });
  }
  return out;
}

function neutral(cDecl: string): string {
  if (cDecl.includes("*")) return "buffer";
  const type = cDecl.split(" ")[0];
  const map: Record<string, string> = {
    int32_t: "i32",
    uint32_t: "u32",
    int64_t: "i64",
    uint64_t: "u64",
    kvp_event_fn: "function",
  };
  if (map[type]) return map[type];
  throw new Error(`no neutral type for ${cDecl}`);
}

test("the symbol table has every function of kvport.h, with the header's types", () => {
  const decls = declarations();
  assert.ok(decls.size >= 35, `parsed only ${decls.size} declarations from kvport.h`);
  assert.deepEqual([...Object.keys(SYMBOLS)].sort(), [...decls.keys()].sort());
  for (const [name, decl] of decls) {
    const def = SYMBOLS[name as keyof typeof SYMBOLS];
    assert.deepEqual(
      [...def.parameters],
      decl.params.map(neutral),
      `${name}: parameters differ from kvport.h (${decl.params.join(", ")})`,
    );
    const result = decl.result.includes("*") ? "cstring" : neutral(decl.result);
    assert.equal(def.result, result, `${name}: result differs from kvport.h`);
  }
});

test("every parameter in ffi/symbols.ts is commented with its C declaration", () => {
  const source = readFileSync(new URL("../ffi/symbols.ts", import.meta.url), "utf8");
  const decls = declarations();
  for (const [name, decl] of decls) {
    const start = source.indexOf(`  ${name}: {`);
    assert.ok(start > 0, `${name} is missing from ffi/symbols.ts`);
    const block = source.slice(start, source.indexOf("result:", start));
    for (const p of decl.params) {
      assert.ok(block.includes(`// ${p}`), `${name}: no "// ${p}" comment`);
    }
  }
});

test("the ABI version matches the header", () => {
  const m = header.match(/#define KVP_ABI_VERSION (\d+)/);
  assert.equal(Number(m?.[1]), ABI_VERSION);
});

test("Deno form: buffers stay buffers, blocking waits get nonblocking twins", () => {
  const d = toDenoSymbols();
  assert.deepEqual(d.kvp_register.parameters, [
    "u64",
    "i32",
    "buffer",
    "buffer",
    "buffer",
    "u64",
    "buffer",
    "buffer",
  ]);
  assert.equal(d.kvp_status_name.result, "pointer");
  for (const name of ["kvp_xfer_wait", "kvp_notif_wait", "kvp_event_quiesce"]) {
    assert.equal(d[name].nonblocking, undefined);
    assert.deepEqual(d[`${name}_nonblocking`], { ...d[name], name, nonblocking: true });
  }
  assert.equal(Object.values(d).filter((s) => s.nonblocking).length, 3);
  assert.deepEqual(d.kvp_event_notify.parameters, ["u64", "function", "u64", "u32"]);
});

test("an ABI-3 library is bound without the functions of ABI 4 and 5", () => {
  const abi4 = ["kvp_event_notify", "kvp_event_ack", "kvp_event_quiesce"];
  const abi5 = ["kvp_grant_each", "kvp_revoke_each"];
  const since = (name: string) => (SYMBOLS as Record<string, { since?: number }>)[name].since;
  for (const name of abi4) assert.equal(since(name), 4, name);
  for (const name of abi5) assert.equal(since(name), 5, name);
  const later = [...abi4, ...abi5];
  const d3 = toDenoSymbols(3), b3 = toBunSymbols(3);
  for (const name of later) {
    assert.equal(d3[name], undefined, `Deno, ABI 3: ${name}`);
    assert.equal(d3[`${name}_nonblocking`], undefined, `Deno, ABI 3: ${name} twin`);
    assert.equal(b3[name], undefined, `Bun, ABI 3: ${name}`);
  }
  assert.equal(Object.keys(b3).length, Object.keys(SYMBOLS).length - later.length);
  assert.ok(d3.kvp_event_fd && b3.kvp_event_fd, "ABI 3 keeps kvp_event_fd");
  // ABI 4: the wake callback, not the batch grants.
  const b4 = toBunSymbols(4);
  assert.equal(Object.keys(b4).length, Object.keys(SYMBOLS).length - abi5.length);
  for (const name of abi5) assert.equal(b4[name], undefined, `Bun, ABI 4: ${name}`);
  assert.ok(b4.kvp_event_notify && b4.kvp_grant, "ABI 4 keeps kvp_event_notify and kvp_grant");
  assert.deepEqual(toBunSymbols(5), toBunSymbols());
  assert.deepEqual(toBunSymbols().kvp_event_notify.args, ["u64", "ptr", "u64", "u32"]);
  assert.deepEqual(toBunSymbols().kvp_revoke_each.args, ["u64", "ptr", "u64"]);
});

test("Bun form: buffers become ptr, cstring results stay cstring", () => {
  const b = toBunSymbols();
  assert.deepEqual(b.kvp_xfer_wait, {
    args: ["u64", "u64", "i64", "ptr", "u64", "ptr"],
    returns: "i32",
  });
  assert.deepEqual(b.kvp_last_error, { args: ["ptr", "u64"], returns: "u64" });
  assert.equal(b.kvp_status_name.returns, "cstring");
  assert.equal(Object.keys(b).length, Object.keys(SYMBOLS).length);
});

test("status names are NIXL's and match the header's values", () => {
  for (const m of header.matchAll(/#define KVP_(IN_PROG|SUCCESS|ERR_[A-Z_]+) \(?(-?\d+)\)?/g)) {
    const key = m[1] as keyof typeof Status;
    assert.equal(Status[key], Number(m[2]), `Status.${key}`);
    assert.equal(statusName(Number(m[2])), `NIXL_${key}`);
  }
  assert.equal(statusName(-99), "NIXL_ERR_UNKNOWN_STATUS");
});

test("NixlError carries status, name, function and native message", () => {
  const e = new NixlError(-4, "kvp_xfer_post", "no request 12", { context: "WRITE to b" });
  assert.equal(e.statusName, "NIXL_ERR_NOT_FOUND");
  assert.equal(e.status, Status.ERR_NOT_FOUND);
  assert.equal(e.fn, "kvp_xfer_post");
  assert.equal(e.nativeMessage, "no request 12");
  assert.match(e.message, /^WRITE to b: kvp_xfer_post failed: NIXL_ERR_NOT_FOUND \(-4\): no req/);
  const t = new NixlTimeoutError({ op: "WRITE", peer: "b", count: 64, timeoutMs: 5 }, "note");
  assert.ok(t instanceof NixlError);
  assert.equal(t.statusName, "NIXL_IN_PROG");
  assert.match(t.message, /WRITE of 64 descriptors with peer "b" timed out after 5 ms/);
});

test("C strings are NUL-terminated UTF-8 and refuse inner NULs", () => {
  assert.deepEqual([...cString("é")], [0xc3, 0xa9, 0]);
  assert.throws(() => cString("a\0b", "name"), (e: NixlError) => {
    assert.equal(e.statusName, "NIXL_ERR_INVALID_PARAM");
    return true;
  });
  assert.deepEqual(parseKeyValues("a=1\nb=x=y\n\nbad\n"), { a: "1", b: "x=y" });
});

test("library lookup: explicit path first and alone, absolute, every try in the error", async () => {
  const [only] = libraryCandidates("relative/libkvport.so");
  assert.equal(only.source, "option");
  assert.ok(only.path.startsWith("/") && only.path.endsWith("/relative/libkvport.so"));
  const saved = process.env.KVPORT_LIB;
  delete process.env.KVPORT_LIB;
  try {
    const all = libraryCandidates();
    assert.deepEqual(all.map((c) => c.source), ["module", "cache", "NIXL_PREFIX"]);
    assert.ok(all[0].path.endsWith("/native/build/libkvport.so"), all[0].path);
  } finally {
    if (saved !== undefined) process.env.KVPORT_LIB = saved;
  }
  await assert.rejects(
    loadNativeLibrary({ path: "/nonexistent/dir/libkvport.so" }),
    (e: NativeLibraryError) => {
      assert.ok(e instanceof NativeLibraryError);
      assert.equal(e.statusName, "NIXL_ERR_NOT_FOUND");
      assert.equal(e.tried.length, 1);
      assert.equal(e.tried[0].path, "/nonexistent/dir/libkvport.so");
      assert.match(e.message, /\/nonexistent\/dir\/libkvport\.so/);
      assert.match(e.message, /deno task build/);
      return true;
    },
  );
});

test("library lookup: KVPORT_LIB is used alone when set", async () => {
  const saved = process.env.KVPORT_LIB;
  process.env.KVPORT_LIB = "/nowhere/libkvport.so";
  try {
    assert.deepEqual(libraryCandidates(), [{
      path: "/nowhere/libkvport.so",
      source: "KVPORT_LIB",
    }]);
    await assert.rejects(loadNativeLibrary(), /KVPORT_LIB: \/nowhere\/libkvport\.so/);
  } finally {
    if (saved === undefined) delete process.env.KVPORT_LIB;
    else process.env.KVPORT_LIB = saved;
  }
});
