// NixlAgent.grantEach / revokeGrants (kvp_grant_each / kvp_revoke_each, ABI 5): one grant
// per range made, and many revoked, with ONE rebuild of the engine's grant table
// (`grant_tables` in the agent's info counts them). A peer's WRITE of every page is
// checked on bytes: granted pages hold its data, the others keep theirs. All or nothing,
// with the bad range's index named.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { DescList, nativeLibrary, NixlAgent, NixlError, PageGrant } from "../mod.ts";
import { loadNativeLibrary } from "../ffi/mod.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);

const PAGE = 4096;
const PAGES = 8;
let seq = 0;

async function pair(transport: "tcp" | "auto") {
  const n = ++seq;
  const rx = await NixlAgent.create({
    name: `gerx${n}`,
    engine: "builtin",
    params: { page_grants: "on", transport },
  });
  const tx = await NixlAgent.create({ name: `getx${n}`, engine: "builtin", params: { transport } });
  const dst = rx.allocate(PAGES * PAGE);
  dst.bytes.fill(0);
  rx.registerMemory(dst);
  const src = tx.allocate(PAGES * PAGE);
  tx.registerMemory(src);
  rx.addRemoteAgent(tx.localMetadata());
  const peer = tx.addRemoteAgent(rx.localMetadata());
  const local = tx.prepDescList("", DescList.pages(src, PAGE, PAGES));
  const list = DescList.pages(dst, PAGE, PAGES, { agent: rx });
  const remote = tx.prepDescList(peer, DescList.deserialize(list.serialize(), { agent: tx }));
  list.release();
  const range = (i: number) => ({ address: dst.address + BigInt(i * PAGE), length: PAGE });
  const page = (i: number) => dst.bytes.subarray(i * PAGE, (i + 1) * PAGE);
  const tables = () => Number(rx.info().grant_tables);
  /** tx WRITEs its page i (every byte `fill`) into rx's page i: whether it was let in. */
  const write = async (i: number, fill: number): Promise<boolean> => {
    src.bytes.subarray(i * PAGE, (i + 1) * PAGE).fill(fill);
    const e = await tx.transfer("WRITE", local, [i], remote, [i]).then(() => null, (e) => e);
    if (e === null) return true;
    assert.ok(e instanceof NixlError && e.statusName === "NIXL_ERR_NOT_ALLOWED", String(e));
    return false;
  };
  /** Every page WRITTEN with `round * 16 + i`: the granted ones must hold it, the others
   * what they held. */
  const held = new Uint8Array(PAGES);
  const check = async (granted: readonly number[], round: number) => {
    for (let i = 0; i < PAGES; i++) {
      const v = round * 16 + i;
      const ok = await write(i, v);
      const want = granted.includes(i);
      assert.equal(ok, want, `page ${i}: WRITE ${ok ? "let in" : "refused"}, granted: ${want}`);
      if (want) held[i] = v;
      assert.ok(page(i).every((b) => b === held[i]), `page ${i} holds the wrong bytes`);
    }
  };
  return { rx, tx, range, tables, check };
}

for (const transport of ["tcp", "auto"] as const) {
  test(
    `agent grantEach (${transport}): one grant per page in one table rebuild; revokeGrants ends several in one`,
    { skip },
    async () => {
      const { rx, tx, range, tables, check } = await pair(transport);
      try {
        const t0 = tables();
        const each = rx.grantEach(tx.name, [1, 3, 4, 6].map(range), {
          write: true,
          expiresMs: 60_000,
        });
        assert.equal(tables(), t0 + 1, "4 grants: one rebuild of the grant table");
        assert.equal(each.length, 4);
        for (const g of each) {
          assert.ok(g instanceof PageGrant);
          assert.deepEqual([g.remote, g.count, g.bytes, g.access], [
            tx.name,
            1,
            BigInt(PAGE),
            "write",
          ]);
        }
        assert.equal(Number(rx.info().grants), 4);
        await check([1, 3, 4, 6], 1);
        // Pages 3 and 6 end in one call; 1 and 4 stay writable throughout.
        const t1 = tables();
        rx.revokeGrants([each[1], each[3]]);
        assert.equal(tables(), t1 + 1, "2 revokes: one rebuild");
        assert.ok(each[1].revoked && each[3].revoked && !each[0].revoked);
        await check([1, 4], 2);
        // Revoked ones are skipped (no error, no rebuild); a grant given twice counts once.
        const t2 = tables();
        rx.revokeGrants([each[1], each[0], each[0]]);
        assert.equal(tables(), t2 + 1);
        await check([4], 3);
        each[2].revoke(); // each one is an ordinary grant
        await check([], 4);
        assert.equal(Number(rx.info().grants), 0);
        rx.revokeGrants(each); // all revoked: a no-op
        assert.equal(tables(), t2 + 2);
      } finally {
        await tx.close();
        await rx.close();
      }
    },
  );
}

test("agent grantEach: all or nothing, the bad range's index named; close ends them", {
  skip,
}, async () => {
  const { rx, tx, range, tables, check } = await pair("auto");
  try {
    const t0 = tables();
    const outside = { address: range(0).address + BigInt(PAGES * PAGE), length: PAGE };
    const err = (() => {
      try {
        rx.grantEach(tx.name, [range(0), range(1), outside, range(3)], { write: true });
      } catch (e) {
        return e;
      }
      assert.fail("a range outside the registration was granted");
    })();
    assert.ok(err instanceof NixlError, String(err));
    assert.equal(err.statusName, "NIXL_ERR_INVALID_PARAM");
    assert.match(err.message, /range 2 \(0x[0-9a-f]+, 4096 bytes/);
    assert.match(err.message, /does not lie inside memory registered/);
    assert.equal(tables(), t0, "a refused call rebuilt the table");
    assert.equal(Number(rx.info().grants), 0);
    await check([], 1); // ranges 0, 1 and 3 were good: none of them is granted
    assert.throws(
      () =>
        rx.grantEach(tx.name, [range(0), { address: range(1).address, length: 0 }], {
          write: true,
        }),
      (e) => e instanceof NixlError && /ranges\[1\] has length 0/.test(e.message),
    );
    assert.throws(
      () => rx.grantEach("nobody", [range(0)], { write: true }),
      (e) => e instanceof NixlError && e.statusName === "NIXL_ERR_NOT_FOUND",
    );
    const left = rx.grantEach(tx.name, [range(5), range(7)], { write: true });
    await check([5, 7], 2);
    await rx.close();
    assert.ok(left.every((g) => g.revoked), "the agent's close ends every grant");
    rx.revokeGrants(left); // and a revoke after it is a no-op
  } finally {
    await tx.close();
    await rx.close();
  }
});

test("agent grantEach: max_grants counts every range before any is made", { skip }, async () => {
  await using rx = await NixlAgent.create({
    name: "ge-max",
    engine: "builtin",
    params: { page_grants: "on", max_grants: "3" },
  });
  await using tx = await NixlAgent.create({ name: "ge-max-tx", engine: "builtin" });
  const dst = rx.allocate(4 * PAGE);
  rx.registerMemory(dst);
  rx.addRemoteAgent(tx.localMetadata());
  const r = (i: number) => ({ address: dst.address + BigInt(i * PAGE), length: PAGE });
  const two = rx.grantEach(tx.name, [r(0), r(1)], { write: true });
  assert.throws(
    () => rx.grantEach(tx.name, [r(2), r(3)], { write: true }),
    (e) =>
      e instanceof NixlError && e.statusName === "NIXL_ERR_NOT_ALLOWED" &&
      /holds 2 granted ranges; 2 more exceed max_grants=3/.test(e.message),
  );
  assert.equal(Number(rx.info().grants), 2);
  rx.revokeGrants(two);
  assert.equal(rx.grantEach(tx.name, [r(1), r(2), r(3)], { write: true }).length, 3);
});

test("agent grantEach on an ABI-4 library: one kvp_grant per range, the same grants", {
  skip,
}, async () => {
  // The loaded library, taken for one of ABI 4 (no kvp_grant_each / kvp_revoke_each).
  const lib = await loadNativeLibrary() as { abiVersion: number };
  const abi = lib.abiVersion;
  lib.abiVersion = 4;
  const { rx, tx, range, tables, check } = await pair("auto");
  try {
    const t0 = tables();
    const each = rx.grantEach(tx.name, [0, 2, 7].map(range), { write: true });
    assert.equal(tables(), t0 + 3, "not the ABI-4 path: one rebuild per grant expected");
    await check([0, 2, 7], 1);
    rx.revokeGrants([each[0], each[2]]);
    assert.equal(tables(), t0 + 5);
    await check([2], 2);
    // All or nothing here too: the grants made before the bad range are revoked again.
    const outside = { address: range(0).address + BigInt(PAGES * PAGE), length: PAGE };
    assert.throws(
      () => rx.grantEach(tx.name, [range(4), range(5), outside], { write: true }),
      (e) => e instanceof NixlError && /range 2/.test(e.message),
    );
    assert.equal(Number(rx.info().grants), 1);
    await check([2], 3);
  } finally {
    lib.abiVersion = abi;
    await tx.close();
    await rx.close();
  }
});
