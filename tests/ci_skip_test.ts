// Honest tests: under CI (CI=true or KVPORT_REQUIRE_NATIVE=1) a native library that does
// not load fails the run instead of skipping half the suite; skips are counted by reason
// in the closing line "N passed, N failed, N skipped"; only GPU- and NIXL-dependent tests
// may skip under CI. Runs scripts/test_all.sh on a small suite (tests/fixtures/skip/).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import process from "node:process";
import { test } from "./helpers/skip.ts";
import { tempDir } from "./helpers/storage_util.ts";

const PROBE = "tests/fixtures/skip/probe.ts";

function suite(env: Record<string, string>): { rc: number | null; out: string; last: string } {
  const clean: Record<string, string | undefined> = { ...process.env };
  // Set to "" rather than deleted: Deno's node:child_process merges `env` into the
  // parent's environment, so a deleted key would come back from an outer CI run.
  for (const k of ["CI", "KVPORT_REQUIRE_NATIVE", "KVPORT_LIB", "KVPORT_SKIP_LOG"]) clean[k] = "";
  const r = spawnSync("bash", ["scripts/test_all.sh", "--no-native", PROBE], {
    encoding: "utf8",
    env: { ...clean, ...env },
    timeout: 120_000,
  });
  const out = `${r.stdout}${r.stderr}`;
  return { rc: r.status, out, last: out.trimEnd().split("\n").at(-1)! };
}

test("ci skips: a broken libkvport.so skips outside CI, fails the run under CI; a GPU skip is allowed", () => {
  const { dir, cleanup } = tempDir("kvport-ci-skip-");
  try {
    const bogus = `${dir}/libkvport.so`;
    writeFileSync(bogus, "not an ELF file\n");
    // a developer's machine: the run is green, and says what it did not test
    const dev = suite({ KVPORT_LIB: bogus });
    assert.equal(dev.rc, 0, dev.out);
    assert.equal(dev.last, "0 passed, 0 failed, 4 skipped");
    assert.match(dev.out, /skipped by reason: needs GPU 2, needs NIXL 0, .*other 2, unlabelled 0/);
    assert.match(dev.out, /1 deno: libkvport\.so not loadable/);
    assert.match(dev.out, /1 bun: libkvport\.so not loadable/);
    // CI: the same library is a failure, named; the GPU test still skips
    const modes: Record<string, string>[] = [{ CI: "true" }, { KVPORT_REQUIRE_NATIVE: "1" }];
    for (const ci of modes) {
      const r = suite({ KVPORT_LIB: bogus, ...ci });
      assert.notEqual(r.rc, 0, r.out);
      assert.equal(r.last, "0 passed, 2 failed, 2 skipped");
      assert.match(r.out, /this test would skip \(libkvport\.so not loadable/);
      assert.match(r.out, /skipped by reason: needs GPU 2, .*other 0, unlabelled 0/);
    }
  } finally {
    cleanup();
  }
});

test("ci skips: with the library built, CI passes with only the GPU skip; an unlabelled skip fails it", () => {
  const ok = suite({ CI: "true" });
  assert.equal(ok.rc, 0, ok.out);
  assert.equal(ok.last, "2 passed, 0 failed, 2 skipped");
  const bad = suite({ CI: "true", PROBE_UNLABELLED: "1" });
  assert.notEqual(bad.rc, 0, bad.out);
  assert.equal(bad.last, "2 passed, 0 failed, 4 skipped");
  assert.match(bad.out, /unlabelled 2/);
  assert.match(bad.out, /CI: 2 test\(s\) skipped for a reason other than a GPU or NIXL/);
  // outside CI the same skip is reported, not fatal
  assert.equal(suite({ PROBE_UNLABELLED: "1" }).rc, 0);
});
