// The FFI layer against the real library: ABI, status names, last error, check(), the
// sized-out convention, native memory views, stale handles, and closing a library only
// after its nonblocking calls have returned.
import { onlyUnder, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ABI_VERSION, loadNativeLibrary, type NativeLib } from "../ffi/mod.ts";
import { check, cString, lastError, OUT_U64, sizedOut, text } from "../ffi/native.ts";
import { NixlError, Status, statusName } from "../src/errors.ts";
import { nativeSkip } from "./helpers/agent_pair.ts";

if (nativeSkip) console.log(`ffi_native_test skipped: ${nativeSkip}`);

const lib: NativeLib | undefined = nativeSkip ? undefined : await loadNativeLibrary();

function createAgent(l: NativeLib, name: string): bigint {
  const out = new BigUint64Array(1);
  check(
    l,
    l.symbols.kvp_agent_create(cString(name), cString("builtin"), cString("UCX"), null, out),
    "kvp_agent_create",
  );
  return out[0];
}

test("ABI version, cached load, status names from C equal ours", { skip: nativeSkip }, async () => {
  assert.equal(lib!.symbols.kvp_abi_version(), ABI_VERSION);
  assert.equal(lib!.abiVersion, ABI_VERSION);
  assert.equal(await loadNativeLibrary(), lib, "one load per path");
  for (let s = -13; s <= 2; s++) assert.equal(lib!.symbols.kvp_status_name(s), statusName(s));
});

test("check() names the function, the status and the shim's message", { skip: nativeSkip }, () => {
  const status = lib!.symbols.kvp_mem_free(0x1234n);
  assert.equal(status, Status.ERR_NOT_FOUND);
  assert.notEqual(lastError(lib!), "", "the shim set a last error");
  assert.throws(() => check(lib!, status, "kvp_mem_free", "freeing a stray address"), (e) => {
    assert.ok(e instanceof NixlError);
    assert.equal(e.statusName, "NIXL_ERR_NOT_FOUND");
    assert.equal(e.fn, "kvp_mem_free");
    assert.notEqual(e.nativeMessage, "");
    assert.match(e.message, /^freeing a stray address: kvp_mem_free failed: NIXL_ERR_NOT_FOUND/);
    return true;
  });
  assert.equal(check(lib!, Status.IN_PROG, "x"), Status.IN_PROG);
});

test("sized out: a too small buffer is retried with the length C asked for", () => {
  const blob = new Uint8Array(2 << 20).map((_, i) => i % 251); // above the kept scratch
  let calls = 0;
  const fake = {} as NativeLib; // check() needs the library only for failures
  const got = sizedOut(fake, "fake", (buf, cap, len) => {
    calls++;
    len[0] = BigInt(blob.length);
    if (cap >= BigInt(blob.length)) buf.set(blob);
    return Status.SUCCESS;
  });
  assert.deepEqual(got, blob);
  assert.equal(calls, 2);
  const empty = sizedOut(fake, "fake", (_b, _c, len) => {
    len[0] = 0n;
    return Status.SUCCESS;
  });
  assert.equal(empty.length, 0);
});

test("sized out against C: engines, probes, big metadata", { skip: nativeSkip }, () => {
  const engines = text(
    sizedOut(lib!, "kvp_engines", (b, c, l) => lib!.symbols.kvp_engines(b, c, l)),
  );
  assert.match(engines, /^builtin(,nixl)?$/);
  const agent = createAgent(lib!, `ffi-meta-${Date.now()}`);
  try {
    // 2,000 regions make metadata larger than the first scratch buffer.
    const n = 2000;
    const mem = new Uint8Array(n * 64);
    const base = lib!.addressOf(mem);
    const addrs = new BigUint64Array(n).map((_, i) => base + BigInt(i) * 64n);
    const lens = new BigUint64Array(n).fill(64n);
    check(
      lib!,
      lib!.symbols.kvp_register(
        agent,
        0,
        addrs,
        lens,
        new BigUint64Array(n),
        BigInt(n),
        null,
        OUT_U64,
      ),
      "kvp_register",
    );
    const meta = sizedOut(
      lib!,
      "kvp_local_metadata",
      (b, c, l) => lib!.symbols.kvp_local_metadata(agent, b, c, l),
    );
    assert.ok(meta.length > 4096, `metadata of ${meta.length} bytes`);
    assert.deepEqual(
      sizedOut(
        lib!,
        "kvp_local_metadata",
        (b, c, l) => lib!.symbols.kvp_local_metadata(agent, b, c, l),
      ),
      meta,
    );
  } finally {
    check(lib!, lib!.symbols.kvp_agent_destroy(agent), "kvp_agent_destroy");
  }
});

test("native memory: a view and an address see the same bytes", { skip: nativeSkip }, () => {
  check(lib!, lib!.symbols.kvp_mem_alloc(0, 0, 8192n, OUT_U64), "kvp_mem_alloc");
  const addr = OUT_U64[0];
  try {
    const view = new Uint8Array(lib!.view(addr, 8192));
    view.fill(0x11);
    const js = new Uint8Array(8192).fill(0x22);
    check(
      lib!,
      lib!.symbols.kvp_mem_copy(0, 0, addr + 100n, 0, 0, lib!.addressOf(js), 50n),
      "kvp_mem_copy",
    );
    assert.equal(view[99], 0x11);
    assert.equal(view[100], 0x22);
    assert.equal(view[149], 0x22);
    assert.equal(view[150], 0x11);
    assert.equal(lib!.addressOf(js.subarray(10)), lib!.addressOf(js) + 10n);
    assert.throws(() => lib!.addressOf(new Uint8Array(0)), RangeError);
  } finally {
    check(lib!, lib!.symbols.kvp_mem_free(addr), "kvp_mem_free");
  }
});

test("stale handles are NIXL_ERR_NOT_FOUND, never a crash", { skip: nativeSkip }, () => {
  const agent = createAgent(lib!, `ffi-stale-${Date.now()}`);
  check(lib!, lib!.symbols.kvp_agent_destroy(agent), "kvp_agent_destroy");
  assert.equal(lib!.symbols.kvp_agent_destroy(agent), Status.ERR_NOT_FOUND, "double destroy");
  assert.equal(lib!.symbols.kvp_xfer_post(agent, 42n), Status.ERR_NOT_FOUND);
  assert.equal(lib!.symbols.kvp_dlist_release(0xdeadn), Status.ERR_NOT_FOUND);
});

test("close() waits for pending nonblocking calls", {
  skip: nativeSkip ?? (lib?.nonblocking ? undefined : onlyUnder("deno", "nonblocking FFI calls")),
}, async () => {
  // A private copy of the library, so closing it leaves the shared one alone.
  const dir = mkdtempSync(join(tmpdir(), "kvport-ffi-"));
  const path = join(dir, "libkvport.so");
  copyFileSync(lib!.path, path);
  try {
    const own = await loadNativeLibrary({ path });
    assert.notEqual(own, lib);
    const agent = createAgent(own, `ffi-close-${Date.now()}`);
    const t0 = performance.now();
    const waiting = own.nonblocking!.kvp_notif_wait(agent, 10_000n, null, 0n, null);
    assert.equal(own.pendingCalls, 1);
    // The agent goes first (its threads run the library's code); destroying it wakes
    // the wait with NIXL_ERR_CANCELED.
    setTimeout(() => check(own, own.symbols.kvp_agent_destroy(agent), "kvp_agent_destroy"), 300);
    await own.close();
    assert.ok(performance.now() - t0 >= 250, "close returned before the wait did");
    assert.equal(await waiting, Status.ERR_CANCELED);
    assert.equal(own.pendingCalls, 0);
    assert.ok(own.closed);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
