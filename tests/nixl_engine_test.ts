// The nixl engine itself, against a real NIXL: what the probe and kvp_agent_info report
// (NIXL's version, plugins, library, UCX), engine "auto" choosing nixl, backends and
// "BACKEND.key" params passed to NIXL's createBackend, refusals with NIXL's own status
// and words, and a destroy that ends a blocked wait. Skips (saying why) without NIXL.
import { describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { engines, NixlAgent, NixlError, probeEngine } from "../src/agent.ts";
import { nixlSkip, reportSkip, uniqueName } from "./helpers/nixl_env.ts";

reportSkip("nixl_engine_test");

const isError = (name: string, re?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof NixlError, String(e));
  assert.equal(e.statusName, name, e.message);
  if (re) assert.match(e.message, re);
  return true;
};

describe("nixl engine: probe, selection, parameters, errors", { skip: nixlSkip }, () => {
  test("the shim lists the nixl engine and the probe names NIXL's version and plugins", async () => {
    assert.deepEqual(await engines(), ["builtin", "nixl"]);
    const p = await probeEngine("nixl");
    assert.equal(p.available, true);
    assert.match(p.version, /^\d+\.\d+\.\d+/);
    assert.ok(p.plugins.includes("UCX"), `plugins: ${p.plugins}`);
    assert.ok(p.plugins.includes("POSIX"), `plugins: ${p.plugins}`);
    assert.match(p.raw.nixl_lib ?? "", /libnixl\.so$/);
    assert.match(p.raw.plugin_dir ?? "", /plugins/);
    assert.match(p.raw["plugin.UCX"] ?? "", /mems:DRAM\+VRAM/);
    const auto = await probeEngine("auto");
    assert.equal(auto.raw.resolved, "nixl");
  });

  test("auto takes the nixl engine and says so", async () => {
    await using a = await NixlAgent.create({ name: uniqueName("nixl-auto") });
    assert.equal(a.engine, "nixl");
    const info = a.info();
    assert.equal(info.requested_engine, "auto");
    assert.match(info.nixl_version, /^\d+\.\d+/);
    assert.match(info.ucx_version ?? "", /^\d+\.\d+/, "UCX is loaded once a UCX backend exists");
  });

  test("auto falls back to the builtin engine when NIXL cannot serve, and says why", async () => {
    // NIXL has no plugin "TCPX"; neither has the builtin engine: the error names both.
    await assert.rejects(
      NixlAgent.create({ name: uniqueName("nixl-nope"), backends: ["TCPX"] }),
      isError("NIXL_ERR_NOT_FOUND", /createBackend\(TCPX\).*plugins found in .*UCX/s),
    );
  });

  test("BACKEND.key params reach createBackend; agent keys are checked", async () => {
    await using a = await NixlAgent.create({
      name: uniqueName("nixl-params"),
      engine: "nixl",
      backends: ["UCX"],
      params: { "UCX.num_workers": 2, pthr_delay_us: 500, listen_port: 0 },
    });
    const info = a.info();
    assert.match(info["backend.UCX"], /num_workers=2/);
    assert.equal(info.pthr_delay_us, "500");
    assert.equal(info.ignored_params, "listen_port", "builtin-only keys are accepted, ignored");
    await assert.rejects(
      NixlAgent.create({ name: uniqueName("x"), engine: "nixl", params: { bogus: 1 } }),
      isError("NIXL_ERR_INVALID_PARAM", /bogus/),
    );
    {
      // Params of a backend not asked for are ignored, as on the builtin engine, and said.
      await using b = await NixlAgent.create({
        name: uniqueName("x"),
        engine: "nixl",
        backends: ["UCX"],
        params: { "POSIX.x": 1 },
      });
      assert.equal(b.info().ignored_params, "POSIX.x");
    }
    await assert.rejects(
      NixlAgent.create({ name: uniqueName("x"), engine: "nixl", backends: ["UCX", "TCP"] }),
      isError("NIXL_ERR_INVALID_PARAM", /one of each type/),
    );
    await assert.rejects(
      NixlAgent.create({ name: uniqueName("x"), engine: "nixl", params: { pthr_delay_us: 0 } }),
      isError("NIXL_ERR_INVALID_PARAM", /spin/),
    );
  });

  test("an unknown plugin is NIXL's NOT_FOUND with the plugins it has", async () => {
    await assert.rejects(
      NixlAgent.create({ name: uniqueName("x"), engine: "nixl", backends: ["NO_SUCH_PLUGIN"] }),
      isError(
        "NIXL_ERR_NOT_FOUND",
        /createBackend\(NO_SUCH_PLUGIN\).*plugins found in .*(POSIX.*UCX|UCX.*POSIX)/s,
      ),
    );
  });

  test("metadata that does not parse is NIXL_ERR_MISMATCH, never a crash", async () => {
    await using a = await NixlAgent.create({ name: uniqueName("nixl-md"), engine: "nixl" });
    assert.throws(
      () => a.addRemoteAgent(new TextEncoder().encode("not nixl metadata")),
      isError("NIXL_ERR_MISMATCH"),
    );
    assert.throws(() => a.addRemoteAgent(new Uint8Array(0)), isError("NIXL_ERR_MISMATCH"));
    // Our own metadata is refused by NIXL itself (INVALID_PARAM), with its words.
    assert.throws(
      () => a.addRemoteAgent(a.localMetadata()),
      isError("NIXL_ERR_INVALID_PARAM", /same as local agent/),
    );
  });

  test("close() ends a blocked notification wait at once", async () => {
    const a = await NixlAgent.create({ name: uniqueName("nixl-close"), engine: "nixl" });
    const t0 = performance.now();
    const waiting = a.waitNotifications(20_000);
    await new Promise((r) => setTimeout(r, 100));
    await a.close();
    assert.deepEqual(await waiting, []);
    assert.ok(performance.now() - t0 < 5_000, "the wait ended with the agent");
    await a.close(); // idempotent
  });

  test("two agents in one process transfer through NIXL (loopback between agents)", async () => {
    await using a = await NixlAgent.create({ name: uniqueName("nixl-a"), engine: "nixl" });
    await using b = await NixlAgent.create({ name: uniqueName("nixl-b"), engine: "nixl" });
    const src = a.allocate(1 << 20);
    const dst = b.allocate(1 << 20);
    a.registerMemory(src);
    b.registerMemory(dst);
    src.bytes.fill(7);
    const { DescList } = await import("../src/agent.ts");
    const peer = a.addRemoteAgent(b.localMetadata());
    using mine = DescList.pages(src, 4096, 256);
    using theirs = DescList.pages(dst, 4096, 256);
    const local = a.prepDescList("", mine);
    const remote = a.prepDescList(peer, theirs);
    await a.transfer("WRITE", local, [0, 1, 2], remote, [7, 8, 9], { notification: "done" });
    assert.equal(dst.bytes[7 * 4096], 7);
    assert.equal(dst.bytes[6 * 4096], 0);
    const notes = await b.waitNotifications(5000);
    assert.equal(new TextDecoder().decode(notes[0].message), "done");
  });
});
