/**
 * Page grants (`kvp_grant` / `kvp_revoke`): with the agent param `page_grants=on` (builtin
 * engine) a remote agent may WRITE or READ only the ranges of this agent's registered
 * memory granted to it, until the grant is revoked or expires. The engine checks every
 * piece when it is served (TCP target, same-process and same-host peers); a refused piece
 * fails that request with `NIXL_ERR_NOT_ALLOWED` naming the agent, address and length.
 * Internal: the public surface is `NixlAgent.grant` and {@linkcode PageGrant}.
 *
 * @example
 * ```ts
 * import { NixlAgent } from "@kvport/nixl";
 *
 * await using rx = await NixlAgent.create({
 *   name: "decoder", engine: "builtin", params: { page_grants: "on" },
 * });
 * await using tx = await NixlAgent.create({ name: "prefill", engine: "builtin" });
 * const buf = rx.allocate(16 * 4096);
 * rx.registerMemory(buf);
 * rx.addRemoteAgent(tx.localMetadata());
 * // "prefill" may WRITE pages 2 and 3 only, for 30 s at most.
 * using grant = rx.grant("prefill", [{ address: buf.address + 8192n, length: 8192 }], {
 *   write: true,
 *   expiresMs: 30_000,
 * });
 * ```
 * @module
 */

import { check, lastError } from "../../ffi/native.ts";
import { NixlError, Status } from "../errors.ts";
import { type AgentCore, type MemType, memTypeCode, orNull, toU64 } from "./common.ts";

/** A DRAM/VRAM range to grant: an address (or device address) and a length. */
export interface GrantRange {
  /** Host address (DRAM) or device address (VRAM). */
  address: bigint | number;
  /** Length in bytes (> 0). */
  length: bigint | number;
  /** CUDA ordinal for VRAM (default 0). */
  device?: number;
}

/** Ranges as parallel typed arrays (one entry per range). */
export interface GrantArrays {
  /** Addresses. */
  addrs: BigUint64Array;
  /** Lengths. */
  lens: BigUint64Array;
  /** CUDA ordinals for VRAM (default all 0). */
  devs?: BigUint64Array;
}

/** Options of {@linkcode NixlAgent.grant}: at least one of `read` and `write`. */
export interface GrantOptions {
  /** The peer may READ the ranges (default false). */
  read?: boolean;
  /** The peer may WRITE into the ranges (default false). */
  write?: boolean;
  /** Milliseconds until the grant lapses by itself; 0 or absent: until revoked. */
  expiresMs?: number;
  /** `"DRAM"` (default) or `"VRAM"`: the memory the ranges lie in. */
  memType?: "DRAM" | "VRAM";
}

const ACCESS_READ = 1; // KVP_GRANT_READ
const ACCESS_WRITE = 2; // KVP_GRANT_WRITE

/**
 * What one `NixlAgent.grant` call granted: `revoke()` (or `using`, or the agent's
 * `close()`) ends it. Once `revoke()` returns, no byte of the peer lands in or leaves its
 * ranges over TCP or from a peer of this process; a same-host peer's post that started
 * before it may still finish (one post: keep such pages out of use a while).
 *
 * @example
 * ```ts
 * import { NixlAgent, type PageGrant } from "@kvport/nixl";
 * declare const agent: NixlAgent;
 * declare const address: bigint;
 * const grant: PageGrant = agent.grant("prefill", [{ address, length: 4096 }], { write: true });
 * console.log(grant.remote, grant.count, grant.access); // prefill 1 write
 * grant.revoke();
 * grant.revoke(); // no-op
 * ```
 */
export class PageGrant {
  /** The peer the ranges were granted to (bound to its current token). */
  readonly remote: string;
  /** Number of ranges. */
  readonly count: number;
  /** Bytes granted in all. */
  readonly bytes: bigint;
  /** `"read"`, `"write"` or `"read-write"`. */
  readonly access: "read" | "write" | "read-write";
  /** When it lapses by itself (`Date.now()` milliseconds), or `null`: until revoked. */
  readonly expiresAt: number | null;
  #core: AgentCore;
  #handle: bigint;
  #revoked = false;

  /** @internal Use `NixlAgent.grant`. */
  constructor(
    core: AgentCore,
    handle: bigint,
    remote: string,
    count: number,
    bytes: bigint,
    access: number,
    expiresAt: number | null,
  ) {
    this.#core = core;
    this.#handle = handle;
    this.remote = remote;
    this.count = count;
    this.bytes = bytes;
    this.access = access === ACCESS_READ
      ? "read"
      : access === ACCESS_WRITE
      ? "write"
      : "read-write";
    this.expiresAt = expiresAt;
  }

  /** True once revoked (or its agent closed). An expired grant is not revoked yet. */
  get revoked(): boolean {
    return this.#revoked || this.#core.closed;
  }

  /** True while the engine still lets the peer in: not revoked and not expired. */
  get active(): boolean {
    return !this.revoked && (this.expiresAt === null || Date.now() < this.expiresAt);
  }

  /**
   * Revokes the grant (also one that expired). Idempotent: a second call, or one after
   * the agent closed (which ended every grant), does nothing.
   */
  revoke(): void {
    if (this.#revoked) return;
    this.#revoked = true;
    this.#core.forget(this);
    if (this.#core.closed) return;
    const lib = this.#core.lib;
    check(
      lib,
      lib.symbols.kvp_revoke(this.#core.handle("revoke"), this.#handle),
      "kvp_revoke",
      `revoking ${this.count} range(s) granted to peer "${this.remote}"`,
    );
  }

  /**
   * Revokes many grants, with one native call (`kvp_revoke_each`: one rebuild of the
   * grant table) per agent among them, where `pageGrant.revoke()` each would rebuild it
   * once per grant. Those already revoked (or whose agent closed) are skipped. Every
   * other one is revoked whatever happens to the rest: on a failure the error (typed
   * `NixlError`, the first failure; the native message names the index among the
   * grants still live) is thrown once all were tried. A library older than ABI 5 makes
   * one `kvp_revoke` call per grant instead.
   *
   * @example
   * ```ts
   * import { type NixlAgent, PageGrant } from "@kvport/nixl";
   * declare const agent: NixlAgent;
   * declare const base: bigint;
   * const each = agent.grantEach("prefill", [
   *   { address: base, length: 4096 },
   *   { address: base + 4096n, length: 4096 },
   * ], { write: true });
   * PageGrant.revokeAll(each); // one table rebuild for both
   * console.log(each.every((g) => g.revoked)); // true
   * ```
   */
  static revokeAll(grants: Iterable<PageGrant>): void {
    const byCore = new Map<AgentCore, Batch>();
    for (const g of grants) {
      if (!(g instanceof PageGrant)) {
        fail("revokeAll", `grants must be PageGrant objects, got ${typeof g}`);
      }
      if (g.#revoked) continue; // (also a grant given twice: its second time)
      g.#revoked = true;
      g.#core.forget(g);
      if (g.#core.closed) continue;
      let batch = byCore.get(g.#core);
      if (!batch) byCore.set(g.#core, batch = { handles: [], remotes: new Set() });
      batch.handles.push(g.#handle);
      batch.remotes.add(g.remote);
    }
    let first: unknown = null;
    for (const [core, batch] of byCore) {
      try {
        revokeBatch(core, batch);
      } catch (e) {
        first ??= e;
      }
    }
    if (first !== null) throw first;
  }

  /** @internal Same as `revoke()` (the agent's close). */
  release(): void {
    this.revoke();
  }

  /** Revokes (`using grant = agent.grant(...)`). */
  [Symbol.dispose](): void {
    this.revoke();
  }
}

function fail(fn: string, detail: string): never {
  throw new NixlError(Status.ERR_INVALID_PARAM, fn, detail);
}

/** The agent's library has `kvp_grant_each` / `kvp_revoke_each` (ABI 5). */
function hasBatch(core: AgentCore): boolean {
  return core.lib.abiVersion >= 5;
}

/** The grants of one agent that one `PageGrant.revokeAll` call revokes. */
interface Batch {
  handles: bigint[];
  remotes: Set<string>;
}

/** Revokes grants of one agent (already marked revoked): one `kvp_revoke_each`. */
function revokeBatch(core: AgentCore, batch: Batch): void {
  const lib = core.lib;
  const agent = core.handle("revoke");
  const n = batch.handles.length;
  const context = `revoking ${n} grant(s) of peer(s) ` +
    [...batch.remotes].map((r) => `"${r}"`).join(", ");
  if (!hasBatch(core) || n === 1) {
    let first: unknown = null;
    for (const h of batch.handles) {
      try {
        check(lib, lib.symbols.kvp_revoke(agent, h), "kvp_revoke", context);
      } catch (e) {
        first ??= e;
      }
    }
    if (first !== null) throw first;
    return;
  }
  const handles = BigUint64Array.from(batch.handles);
  check(lib, lib.symbols.kvp_revoke_each(agent, handles, BigInt(n)), "kvp_revoke_each", context);
}

/** Checked arguments of a grant call. */
interface GrantArgs {
  access: number;
  expiresMs: number;
  memType: MemType;
  addrs: BigUint64Array;
  lens: BigUint64Array;
  devs: BigUint64Array | null;
}

function grantArgs(
  fn: string,
  remote: string,
  ranges: readonly GrantRange[] | GrantArrays,
  options: GrantOptions,
): GrantArgs {
  if (typeof remote !== "string" || remote === "") {
    fail(fn, `remote must be the name of a loaded peer, got ${JSON.stringify(remote)}`);
  }
  const access = (options.read ? ACCESS_READ : 0) | (options.write ? ACCESS_WRITE : 0);
  if (access === 0) {
    fail(fn, "options: give read: true and/or write: true (nothing to grant otherwise)");
  }
  const expiresMs = options.expiresMs ?? 0;
  if (!Number.isSafeInteger(expiresMs) || expiresMs < 0) {
    fail(fn, `options.expiresMs must be an integer >= 0 (0: until revoked), got ${expiresMs}`);
  }
  const memType: MemType = options.memType ?? "DRAM";
  if (memType !== "DRAM" && memType !== "VRAM") {
    fail(fn, `options.memType must be "DRAM" or "VRAM", got ${JSON.stringify(memType)}`);
  }
  let addrs: BigUint64Array, lens: BigUint64Array, devs: BigUint64Array | null;
  if ("addrs" in ranges) {
    ({ addrs, lens } = ranges);
    devs = ranges.devs ?? null;
    if (lens.length !== addrs.length || (devs !== null && devs.length !== addrs.length)) {
      throw new NixlError(
        Status.ERR_MISMATCH,
        fn,
        `addrs, lens and devs must have the same length; got ${addrs.length}, ${lens.length}, ` +
          `${devs?.length ?? "none"}`,
      );
    }
  } else {
    const n = ranges.length;
    addrs = new BigUint64Array(n);
    lens = new BigUint64Array(n);
    devs = new BigUint64Array(n);
    for (let i = 0; i < n; i++) {
      const r = ranges[i];
      addrs[i] = toU64(r.address, `ranges[${i}].address`);
      lens[i] = toU64(r.length, `ranges[${i}].length`);
      devs[i] = toU64(r.device ?? 0, `ranges[${i}].device`);
    }
  }
  if (addrs.length === 0) fail(fn, "ranges is empty: grant at least one range");
  for (let i = 0; i < lens.length; i++) {
    if (lens[i] === 0n) fail(fn, `ranges[${i}] has length 0`);
  }
  return { access, expiresMs, memType, addrs, lens, devs };
}

function accessName(access: number): string {
  return access === ACCESS_READ ? "READ" : access === ACCESS_WRITE ? "WRITE" : "READ+WRITE";
}

function newGrant(
  core: AgentCore,
  handle: bigint,
  remote: string,
  count: number,
  bytes: bigint,
  a: GrantArgs,
): PageGrant {
  return new PageGrant(
    core,
    handle,
    remote,
    count,
    bytes,
    a.access,
    a.expiresMs > 0 ? Date.now() + a.expiresMs : null,
  );
}

/**
 * Checks the arguments of `NixlAgent.grant`, calls `kvp_grant`, and returns the handle.
 * `cName` turns the peer name into a C string (the agent caches them).
 *
 * @example
 * ```ts
 * import { grantRanges } from "./grants.ts";
 * // Called by NixlAgent.grant; see there.
 * console.log(typeof grantRanges); // function
 * ```
 */
export function grantRanges(
  core: AgentCore,
  cName: Uint8Array,
  remote: string,
  ranges: readonly GrantRange[] | GrantArrays,
  options: GrantOptions,
): PageGrant {
  const fn = "grant";
  const agent = core.handle(fn);
  const a = grantArgs(fn, remote, ranges, options);
  const out = new BigUint64Array(1);
  const lib = core.lib;
  check(
    lib,
    lib.symbols.kvp_grant(
      agent,
      cName,
      memTypeCode(a.memType),
      orNull(a.addrs),
      orNull(a.lens),
      orNull(a.devs),
      BigInt(a.addrs.length),
      a.access,
      BigInt(a.expiresMs),
      out,
    ),
    "kvp_grant",
    `granting peer "${remote}" ${accessName(a.access)} of ${a.addrs.length} ${a.memType} range(s)`,
  );
  let bytes = 0n;
  for (const l of a.lens) bytes += l;
  return newGrant(core, out[0], remote, a.addrs.length, bytes, a);
}

/**
 * Checks the arguments of `NixlAgent.grantEach`, calls `kvp_grant_each` (one grant per
 * range, one table rebuild), and returns the grants in range order. All or nothing: on a
 * failure none exists and the error names the range's index. A library older than ABI
 * 5: one `kvp_grant` per range, those made revoked again on a failure.
 *
 * @example
 * ```ts
 * import { grantEachRange } from "./grants.ts";
 * // Called by NixlAgent.grantEach; see there.
 * console.log(typeof grantEachRange); // function
 * ```
 */
export function grantEachRange(
  core: AgentCore,
  cName: Uint8Array,
  remote: string,
  ranges: readonly GrantRange[] | GrantArrays,
  options: GrantOptions,
): PageGrant[] {
  const fn = "grantEach";
  const agent = core.handle(fn);
  const a = grantArgs(fn, remote, ranges, options);
  const n = a.addrs.length;
  const lib = core.lib;
  const what = `granting peer "${remote}" ${accessName(a.access)} of ${n} ${a.memType} ` +
    `range(s), one grant each`;
  const out = new BigUint64Array(n);
  if (hasBatch(core)) {
    check(
      lib,
      lib.symbols.kvp_grant_each(
        agent,
        cName,
        memTypeCode(a.memType),
        a.addrs,
        a.lens,
        orNull(a.devs),
        BigInt(n),
        a.access,
        BigInt(a.expiresMs),
        out,
      ),
      "kvp_grant_each",
      what,
    );
  } else {
    const one = new BigUint64Array(1);
    for (let i = 0; i < n; i++) {
      const st = lib.symbols.kvp_grant(
        agent,
        cName,
        memTypeCode(a.memType),
        a.addrs.subarray(i, i + 1),
        a.lens.subarray(i, i + 1),
        a.devs === null ? null : a.devs.subarray(i, i + 1),
        1n,
        a.access,
        BigInt(a.expiresMs),
        one,
      );
      if (st < 0) {
        const err = new NixlError(st, "kvp_grant", lastError(lib), {
          context: `${what}: range ${i}`,
        });
        // Undo, all or nothing. A revoke refused here (the agent is closing) leaves
        // nothing to undo: the grant ends with the agent.
        let undone = 0;
        for (let k = 0; k < i; k++) if (lib.symbols.kvp_revoke(agent, out[k]) === 0) undone++;
        if (undone < i) err.message += ` (${i - undone} of the ${i} made could not be revoked)`;
        throw err;
      }
      out[i] = one[0];
    }
  }
  const made: PageGrant[] = [];
  for (let i = 0; i < n; i++) made.push(newGrant(core, out[i], remote, 1, a.lens[i], a));
  return made;
}
