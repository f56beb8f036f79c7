// NixlAgent.grant / PageGrant: what a peer may reach with page grants on, bad arguments
// named, typed refusals, idempotent revoke, `using`, and the agent's close ending grants.
// Every transfer's bytes are checked.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { DescList, nativeLibrary, NixlAgent, NixlError, PageGrant } from "../mod.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);

const PAGE = 4096;
let seq = 0;

async function pair(transport: "tcp" | "auto") {
  const n = ++seq;
  const rx = await NixlAgent.create({
    name: `rx${n}`,
    engine: "builtin",
    params: { page_grants: "on", transport },
  });
  const tx = await NixlAgent.create({ name: `tx${n}`, engine: "builtin", params: { transport } });
  const dst = rx.allocate(8 * PAGE);
  dst.bytes.fill(1);
  rx.registerMemory(dst);
  const src = tx.allocate(8 * PAGE);
  src.bytes.fill(7);
  tx.registerMemory(src);
  rx.addRemoteAgent(tx.localMetadata());
  const peer = tx.addRemoteAgent(rx.localMetadata());
  const local = tx.prepDescList("", DescList.pages(src, PAGE, 8));
  const list = DescList.pages(dst, PAGE, 8, { agent: rx });
  const remote = tx.prepDescList(peer, DescList.deserialize(list.serialize(), { agent: tx }));
  list.release();
  const write = (page: number) => tx.transfer("WRITE", local, [0], remote, [page]);
  const read = (page: number) => tx.transfer("READ", local, [1], remote, [page]);
  const page = (i: number) => dst.bytes.subarray(i * PAGE, (i + 1) * PAGE);
  return { rx, tx, dst, src, write, read, page };
}

async function refused(p: Promise<void>, what: string): Promise<string> {
  const e = await p.then(() => null, (e) => e);
  assert.ok(e instanceof NixlError, `${what}: expected NIXL_ERR_NOT_ALLOWED, got ${String(e)}`);
  assert.equal(e.statusName, "NIXL_ERR_NOT_ALLOWED", `${what}: ${e.message}`);
  return e.message;
}

for (const transport of ["tcp", "auto"] as const) {
  test(
    `agent grants (${transport}): a peer WRITEs and READs only what was granted, until revoked`,
    {
      skip,
    },
    async () => {
      const { rx, tx, dst, src, write, read, page } = await pair(transport);
      try {
        assert.equal(rx.pageGrants, "on");
        assert.equal(tx.pageGrants, "off");
        const g = rx.grant(tx.name, [{ address: dst.address + BigInt(2 * PAGE), length: PAGE }], {
          write: true,
        });
        assert.ok(g instanceof PageGrant);
        assert.deepEqual([g.remote, g.count, g.bytes, g.access, g.expiresAt], [
          tx.name,
          1,
          BigInt(PAGE),
          "write",
          null,
        ]);
        await write(2);
        assert.ok(page(2).every((b) => b === 7), "the granted page holds the data");
        const msg = await refused(write(3), "WRITE of an ungranted page");
        assert.match(msg, new RegExp(`agent ${rx.name} .*${tx.name}|${tx.name}.*${rx.name}`));
        assert.ok(page(3).every((b) => b === 1), "the ungranted page changed");
        await refused(read(2), "READ of a page granted for WRITE only");
        assert.ok(src.bytes.subarray(PAGE, 2 * PAGE).every((b) => b === 7), "bytes were read");
        const r = rx.grant(tx.name, {
          addrs: BigUint64Array.of(dst.address + BigInt(4 * PAGE)),
          lens: BigUint64Array.of(BigInt(PAGE)),
        }, {
          read: true,
          write: true,
        });
        assert.equal(r.access, "read-write");
        page(4).fill(9);
        await read(4);
        assert.ok(src.bytes.subarray(PAGE, 2 * PAGE).every((b) => b === 9), "the granted READ");
        g.revoke();
        g.revoke(); // idempotent
        assert.equal(g.revoked, true);
        assert.equal(g.active, false);
        src.bytes.fill(8);
        await refused(write(2), "WRITE after revoke");
        assert.ok(page(2).every((b) => b === 7), "a revoked page changed");
        {
          using _scoped = rx.grant(tx.name, [{ address: dst.address, length: PAGE }], {
            write: true,
          });
          await write(0);
        }
        await refused(write(0), "WRITE after the grant's scope ended");
        assert.ok(page(0).every((b) => b === 8));
        assert.equal(Number(rx.info().grants), 1); // r is still held
      } finally {
        await tx.close();
        await rx.close();
      }
    },
  );
}

test("agent grants: expiry, bad arguments named, typed refusals, close ends every grant", {
  skip,
}, async () => {
  const { rx, tx, dst, write, page } = await pair("tcp");
  await using off = await NixlAgent.create({ name: "off", engine: "builtin" });
  try {
    const one = [{ address: dst.address, length: PAGE }];
    const g = rx.grant(tx.name, one, { write: true, expiresMs: 150 });
    assert.ok(g.expiresAt !== null && g.active);
    await write(0);
    await new Promise((r) => setTimeout(r, 250));
    assert.equal(g.active, false);
    assert.equal(g.revoked, false);
    page(0).fill(1);
    await refused(write(0), "WRITE after expiry");
    assert.ok(page(0).every((b) => b === 1));
    g.revoke(); // an expired grant still revokes cleanly

    const status = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        assert.ok(e instanceof NixlError, String(e));
        return `${e.statusName}: ${e.message}`;
      }
      assert.fail("no error");
    };
    assert.match(
      status(() => rx.grant(tx.name, one, {})),
      /INVALID_PARAM.*read: true and\/or write: true/,
    );
    assert.match(
      status(() => rx.grant(tx.name, one, { write: true, expiresMs: -1 })),
      /INVALID_PARAM.*expiresMs.*-1/,
    );
    assert.match(status(() => rx.grant(tx.name, [], { write: true })), /INVALID_PARAM.*empty/);
    assert.match(
      status(() => rx.grant(tx.name, [{ address: dst.address, length: 0 }], { write: true })),
      /INVALID_PARAM.*length 0/,
    );
    assert.match(status(() => rx.grant("nobody", one, { write: true })), /NOT_FOUND.*nobody/);
    assert.match(
      status(() =>
        rx.grant(tx.name, [{ address: dst.address + BigInt(8 * PAGE), length: PAGE }], {
          write: true,
        })
      ),
      /INVALID_PARAM.*does not lie inside memory registered/,
    );
    assert.match(
      status(() => off.grant(tx.name, one, { write: true })),
      /INVALID_PARAM.*page_grants=on/,
    );
    const held = rx.grant(tx.name, one, { write: true });
    await write(0);
    await rx.close();
    assert.equal(held.revoked, true, "the agent's close ends its grants");
    held.revoke(); // and a revoke after it is a no-op
  } finally {
    await tx.close();
    await rx.close();
  }
});
