// `kvport check`: the report of the shim, engines, NIXL and CUDA, and its exit codes.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { checkCommand, formatCheck, runCheck } from "../cli/check_cmd.ts";
import { nativeSkip } from "./helpers/agent_pair.ts";
import { ABI_VERSION } from "../ffi/mod.ts";

if (nativeSkip) console.log(`agent_check_test (native part) skipped: ${nativeSkip}`);

test(
  "check --engine builtin: the shim loads and an agent is created",
  { skip: nativeSkip },
  async () => {
    const r = await runCheck({ engine: "builtin" });
    assert.deepEqual(r.errors, []);
    assert.equal(r.ok, true);
    assert.match(r.runtime, /^(Deno|Bun) \d/);
    assert.ok(r.shim?.path.endsWith("libkvport.so"));
    assert.equal(r.shim?.abiVersion, ABI_VERSION);
    assert.ok(r.enginesBuilt.includes("builtin"));
    assert.ok(r.engine.probe?.available);
    assert.ok(r.agent && "engine" in r.agent && r.agent.engine === "builtin");
    const text = formatCheck(r);
    assert.match(text, /^runtime: +(Deno|Bun)/m);
    assert.match(text, new RegExp(`^shim: .*libkvport\\.so \\(ABI ${ABI_VERSION}\\)$`, "m"));
    assert.match(text, /^CUDA: /m);
    assert.match(text, /^ok: engine builtin works$/m);
  },
);

test("check --engine auto names who serves the backends", { skip: nativeSkip }, async () => {
  const r = await runCheck({ engine: "auto" });
  assert.equal(r.ok, true, r.errors.join("\n"));
  if (r.nixl && !r.nixl.available) {
    assert.match(
      r.engine.note,
      /served by the builtin engine \(NIXL not found: see the NIXL line\)/,
    );
  } else {
    assert.match(r.engine.note, /served by the (nixl|builtin) engine/);
  }
});

test(
  "check --engine nixl fails with the reason when NIXL is absent",
  { skip: nativeSkip },
  async () => {
    const r = await runCheck({ engine: "nixl" });
    if (r.nixl?.available) return; // NIXL installed here: nothing to check
    assert.equal(r.ok, false);
    assert.ok(r.agent && "error" in r.agent);
    assert.match(r.agent.error, /NIXL_ERR_NOT_SUPPORTED/);
    assert.match(formatCheck(r), /^FAILED: engine nixl$/m);
  },
);

test("check without a loadable shim exits 1 and lists the paths tried", async () => {
  const r = await runCheck({ engine: "builtin", libraryPath: "/nonexistent/libkvport.so" });
  assert.equal(r.ok, false);
  assert.equal(r.shim, null);
  assert.match(r.errors[0], /\/nonexistent\/libkvport\.so/);
  assert.match(formatCheck(r), /^shim: +not loaded$/m);
  assert.equal(await checkCommand.run(["--lib", "/nonexistent/libkvport.so", "--json"]), 1);
});

test("check usage errors exit 2", async () => {
  assert.equal(await checkCommand.run(["--engine", "cuda"]), 2);
  assert.equal(await checkCommand.run(["--bogus"]), 2);
  assert.equal(await checkCommand.run(["--help"]), 0);
});
