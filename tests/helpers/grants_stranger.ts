/**
 * A stranger against a PD receiver, following our own wire formats: it handshakes with
 * its own agent's blob (`NixlInitRequest`, `NixlMemRegRequest`: anyone can), gets the
 * receiver's metadata and page list, then READs the whole buffer and WRITEs its last
 * page (never allocated to it). Used in the test's process ({@linkcode attack}) and as a
 * process of its own (`deno run -A tests/helpers/grants_stranger.ts '<json>'`, which
 * prints the {@linkcode AttackResult} as one JSON line), so that the same-host paths
 * (memfd, cross-memory attach) are tried too.
 *
 * @module
 */
import process from "node:process";
import { DescList, NixlAgent, NixlError } from "../../mod.ts";
import { openRequester } from "../../src/channel/control.ts";
import { parseKvpm } from "./kvpm_blob.ts";

/** What the attack saw. */
export interface AttackResult {
  /** The receiver's agent name (from the handshake). */
  victim: string;
  /** Its buffer's address (from its metadata). */
  base: string;
  /** The READ of every page: `"ok"` or the NIXL status name, and the message. */
  read: { status: string; message: string };
  /** The WRITE of the last page. */
  write: { status: string; message: string };
  /** Whether the stranger's own buffer still holds only its own bytes (nothing read). */
  untouched: boolean;
  /** The stranger's engine counters of the paths it used. */
  posts: { mem: number; cma: number; tcp: number };
}

/** Runs the attack against the receiver answering handshakes on `initUrl`. */
export async function attack(options: {
  initUrl: string;
  pages: number;
  pageSize: number;
  transport: "tcp" | "auto";
  name?: string;
}): Promise<AttackResult> {
  const { pages, pageSize } = options;
  const name = options.name ?? "evil";
  await using evil = await NixlAgent.create({
    name,
    engine: "builtin",
    params: { transport: options.transport },
  });
  const mine = evil.allocate(pages * pageSize);
  mine.bytes.fill(0xee);
  evil.registerMemory(mine);
  using list = DescList.pages(mine, pageSize, pages, { agent: evil });
  const req = await openRequester(options.initUrl, { timeoutMs: 5000 });
  let meta: Uint8Array, pageList: Uint8Array;
  try {
    const init = await req.request(
      { type: "NixlInitRequest", local_meta_bytes: evil.localMetadata() },
      5000,
    );
    if (init.type !== "NixlInitResponse") throw new Error(`handshake: ${JSON.stringify(init)}`);
    meta = init.remote_meta_bytes as Uint8Array;
    const reg = await req.request({
      type: "NixlMemRegRequest",
      remote_agent_name: init.remote_agent_name,
      local_id: name,
      local_xfer_dlist_bytes: list.serialize(),
    }, 5000);
    if (reg.type !== "NixlMemRegResponse") throw new Error(`handshake: ${JSON.stringify(reg)}`);
    pageList = reg.remote_xfer_dlist_bytes as Uint8Array;
  } finally {
    await req.close();
  }
  const victim = evil.addRemoteAgent(meta);
  using local = evil.prepDescList("", list);
  using remote = evil.prepDescList(victim, DescList.deserialize(pageList, { agent: evil }));
  const all = Array.from({ length: pages }, (_, i) => i);
  const outcome = (p: Promise<void>) =>
    p.then(
      () => ({ status: "ok", message: "" }),
      (e) => ({
        status: e instanceof NixlError ? e.statusName : "not a NixlError",
        message: String((e as Error)?.message ?? e),
      }),
    );
  const [read, write] = await Promise.all([
    outcome(evil.transfer("READ", local, all, remote, all, { timeoutMs: 5000 })),
    outcome(evil.transfer("WRITE", local, [0], remote, [pages - 1], { timeoutMs: 5000 })),
  ]);
  const info = evil.info();
  return {
    victim,
    base: `0x${parseKvpm(meta).regions[0].addr.toString(16)}`,
    read,
    write,
    untouched: mine.bytes.every((b) => b === 0xee),
    posts: {
      mem: Number(info.posts_mem),
      cma: Number(info.posts_cma),
      tcp: Number(info.posts_tcp),
    },
  };
}

if (import.meta.main) {
  const options = JSON.parse(process.argv[process.argv.length - 1]);
  const result = await attack(options);
  process.stdout.write(JSON.stringify(result) + "\n");
}
