/**
 * Which peer may WRITE which pages of a channel, and until when: the PD receiver grants a
 * sender the pages of its `AllocResponse`, the P2P requester grants a holder the pages it
 * offered for one lookup, and each gives them back when they landed, were cancelled or
 * dropped. On a channel that does not enforce grants (mock, nixl engine, grants off)
 * every call is a no-op: pages are reachable anyway.
 *
 * One book per channel. Its calls run in call order (each waits for the one before), so
 * a page released and then granted to another peer is revoked before the new grant
 * exists; the new holder of a page is told about it only after its grant resolved.
 *
 * @example
 * ```ts
 * import { PageGrantBook } from "./grants.ts";
 * import type { TransferChannel } from "./types.ts";
 * declare const channel: TransferChannel;
 *
 * const grants = new PageGrantBook(channel);
 * await grants.grantWrite("kvport-sender-1", [4, 5], 60_000); // before telling the peer
 * // ... the peer WRITEs pages 4 and 5 ...
 * grants.release([4, 5]); // landed: no longer writable
 * ```
 * @module
 */

import type { PageGrant } from "../agent.ts";
import { errorMessage } from "./_util.ts";
import { ChannelError } from "./errors.ts";
import { NixlChannel } from "./nixl.ts";
import type { TransferChannel } from "./types.ts";

interface Held {
  agent: string;
  pages: Set<number>;
  grant: PageGrant | null;
  /** `performance.now()` when the grant lapses, or null: until released. */
  deadline: number | null;
}

/**
 * The grants of one channel's pages to its peers (see the module doc).
 *
 * @example
 * ```ts
 * import { PageGrantBook } from "./grants.ts";
 * import type { TransferChannel } from "./types.ts";
 * declare const channel: TransferChannel;
 * const book = new PageGrantBook(channel);
 * console.log(book.enforced); // true on a builtin-engine channel with page grants
 * ```
 */
export class PageGrantBook {
  readonly #channel: NixlChannel | null;
  readonly #byPage = new Map<number, Held>();
  #tail: Promise<unknown> = Promise.resolve();
  #failures = 0;
  #lastError: string | null = null;

  /** A book over `channel`'s pages. */
  constructor(channel: TransferChannel) {
    this.#channel = channel instanceof NixlChannel && channel.pageGrants === "on" ? channel : null;
  }

  /** Whether the channel enforces grants (else every method is a no-op). */
  get enforced(): boolean {
    return this.#channel !== null;
  }

  /** Pages granted now (to any peer). */
  get grantedPages(): number {
    return this.#byPage.size;
  }

  /** Revocations that failed (the grant then lapses at its expiry), and the last reason. */
  get failures(): { count: number; lastError: string | null } {
    return { count: this.#failures, lastError: this.#lastError };
  }

  /** Runs `f` after every call made before it (whatever they did). */
  #serial<T>(f: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(f, f);
    this.#tail = run.catch(() => {});
    return run;
  }

  /**
   * Grants peer agent `agent` WRITE on `pages` for `expiresMs` at most (0: until
   * released). Resolve it before telling the peer the pages. Rejects (typed
   * `NixlError`: unknown agent, `max_grants`) and then nothing was granted.
   */
  grantWrite(agent: string, pages: readonly number[], expiresMs: number): Promise<void> {
    const ch = this.#channel;
    if (ch === null || pages.length === 0) return Promise.resolve();
    const list = [...pages];
    return this.#serial(async () => {
      const grant = await ch.grantPages(agent, list, { write: true, expiresMs });
      const deadline = expiresMs > 0 ? performance.now() + expiresMs : null;
      const held: Held = { agent, pages: new Set(list), grant, deadline };
      for (const p of list) this.#byPage.set(p, held);
    });
  }

  /**
   * Like {@linkcode grantWrite}, but one grant per page: releasing one page later revokes
   * only its own grant, so the peer's WRITEs into the others never meet the moment a
   * shared grant is revoked and made again (the PD receiver's page credits, which a
   * sender writes while others of the same lot are being bound). Made with one native
   * call (one rebuild of the engine's grant table for the lot). All or nothing: when one
   * grant fails, none exists and the promise rejects.
   *
   * @example
   * ```ts
   * import { PageGrantBook } from "./grants.ts";
   * import type { TransferChannel } from "./types.ts";
   * declare const channel: TransferChannel;
   * const book = new PageGrantBook(channel);
   * await book.grantWriteEach("kvport-sender-1", [7, 8, 9], 120_000);
   * await book.release([8]); // 7 and 9 stay writable throughout
   * ```
   */
  grantWriteEach(agent: string, pages: readonly number[], expiresMs: number): Promise<void> {
    const ch = this.#channel;
    if (ch === null || pages.length === 0) return Promise.resolve();
    const list = [...new Set(pages)];
    return this.#serial(async () => {
      // One native call for all (one rebuild of the grant table), all or nothing.
      const made = await ch.grantEachPage(agent, list, { write: true, expiresMs });
      const deadline = expiresMs > 0 ? performance.now() + expiresMs : null;
      list.forEach((p, i) => {
        this.#byPage.set(p, { agent, pages: new Set([p]), grant: made[i] ?? null, deadline });
      });
    });
  }

  /**
   * {@linkcode grantWrite} to the agent the peer `peerId` handshook with (a
   * `ChannelError` `UNKNOWN_PEER` when it is not known).
   */
  grantWriteToPeer(peerId: string, pages: readonly number[], expiresMs: number): Promise<void> {
    const ch = this.#channel;
    if (ch === null || pages.length === 0) return Promise.resolve();
    const agent = ch.peerAgentName(peerId);
    if (agent === undefined) {
      return Promise.reject(
        new ChannelError(
          "UNKNOWN_PEER",
          `cannot grant pages to peer ${peerId}: it has not handshaken with this channel`,
          { peerId, op: "grant" },
        ),
      );
    }
    return this.grantWrite(agent, pages, expiresMs);
  }

  /**
   * Takes back whatever grant covers `pages` (they landed, were cancelled, or are being
   * freed): once the returned promise resolves, no TCP or same-process byte of the peer
   * reaches them (a same-host post that started before may finish: one post). Other
   * pages of the same grant stay granted (the grant is revoked and made again for them).
   * The grants left with no page (per-page grants: a bind's, a credit's) are revoked
   * with one native call, one rebuild of the grant table for them all. Never rejects: a
   * failed revocation is counted in {@linkcode failures}.
   */
  release(pages: readonly number[]): Promise<void> {
    const ch = this.#channel;
    if (ch === null || pages.length === 0) return Promise.resolve();
    const list = [...pages];
    return this.#serial(async () => {
      const touched = new Set<Held>();
      for (const p of list) {
        const held = this.#byPage.get(p);
        if (!held) continue;
        this.#byPage.delete(p);
        held.pages.delete(p);
        touched.add(held);
      }
      // Grants with no page left: all at once (every valid one is revoked even if one
      // fails); the shared ones below are revoked and made again for their other pages.
      const ended = [...touched].filter((h) => h.pages.size === 0);
      if (ended.length > 0) {
        try {
          await ch.revokeGrants(ended.map((h) => h.grant));
        } catch (e) {
          this.#failures++;
          const agents = [...new Set(ended.map((h) => h.agent))].join(", ");
          this.#lastError = `page grants of ${agents}: ${errorMessage(e)}`;
        }
        for (const held of ended) held.grant = null;
      }
      for (const held of touched) {
        if (held.pages.size === 0) continue;
        try {
          await ch.revokeGrant(held.grant);
          held.grant = null;
          // The rest keeps the deadline it had (a shrunk grant is not a longer one).
          const left = held.deadline === null ? 0 : Math.ceil(held.deadline - performance.now());
          if (held.pages.size > 0 && (held.deadline === null || left > 0)) {
            held.grant = await ch.grantPages(held.agent, [...held.pages], {
              write: true,
              expiresMs: left,
            });
          } else {
            for (const p of held.pages) this.#byPage.delete(p);
          }
        } catch (e) {
          this.#failures++;
          this.#lastError = `page grants of ${held.agent}: ${errorMessage(e)}`;
          if (held.grant === null) { for (const p of held.pages) this.#byPage.delete(p); }
        }
      }
    });
  }

  /** Revokes every grant (the channel's close would end them too). */
  close(): Promise<void> {
    return this.release([...this.#byPage.keys()]);
  }
}
