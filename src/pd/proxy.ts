/**
 * The proxy side of PD notifications: a PULL socket that counts `ProxyNotif{req_id}`
 * messages and lets a caller wait until every TP rank of a request has reported.
 *
 * @module
 */

import { ChannelError, ChannelTimeoutError } from "../channel/errors.ts";
import { type ControlServer, servePull } from "../channel/control.ts";
import { joinHostPort } from "../channel/_util.ts";
import type { SideMessage } from "../channel/types.ts";
import { after, type Timer } from "../deadline.ts";

/** Options of {@linkcode ProxyNotifier.listen}. */
export interface ProxyNotifierOptions {
  /** `pd_proxy_host` to bind. */
  host: string;
  /** `pd_proxy_port` (0: any free port). */
  port: number;
  /** Notifications a request needs: the decoder's TP size (default 1). */
  tpSize?: number;
  /** Most request ids remembered before the oldest are dropped (default 65536). */
  maxPending?: number;
}

interface Waiter {
  count: number;
  resolve: () => void;
  reject: (e: unknown) => void;
  timer?: Timer;
}

/**
 * Collects prefill-done notifications (`ProxyNotif{req_id}`, pushed by every TP rank of
 * the prefiller) on `pd_proxy_host:pd_proxy_port`, as LMCache's proxy does before it
 * lets decode start. Messages that are not `ProxyNotif` are counted in `rejected` and
 * otherwise ignored.
 *
 * @example
 * ```ts
 * import { ProxyNotifier } from "@kvport/nixl";
 *
 * await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0, tpSize: 2 });
 * console.log(proxy.url);
 * // ... senders push ProxyNotif{req_id: "r1"} from both ranks ...
 * await proxy.waitFor("r1", { timeoutMs: 100 }).catch((e) => console.log(e.message));
 * ```
 */
export class ProxyNotifier implements AsyncDisposable {
  /** Notifications a request needs by default. */
  readonly tpSize: number;
  readonly #server: ControlServer;
  readonly #maxPending: number;
  readonly #counts = new Map<string, number>();
  readonly #waiters = new Map<string, Waiter[]>();
  #rejected = 0;
  #closed = false;

  private constructor(server: ControlServer, tpSize: number, maxPending: number) {
    this.#server = server;
    this.tpSize = tpSize;
    this.#maxPending = maxPending;
  }

  /** Binds the PULL socket. */
  static async listen(options: ProxyNotifierOptions): Promise<ProxyNotifier> {
    const tpSize = options.tpSize ?? 1;
    if (!Number.isInteger(tpSize) || tpSize < 1) {
      throw new ChannelError("INVALID_ARGUMENT", `tpSize must be an integer >= 1, got ${tpSize}`);
    }
    const early: SideMessage[] = [];
    const holder: { self?: ProxyNotifier } = {};
    const server = await servePull(
      joinHostPort(options.host, options.port),
      (msg) => {
        if (holder.self) holder.self.#onMessage(msg);
        else early.push(msg);
      },
      { maxMessageBytes: 64 * 1024 },
    );
    const self = new ProxyNotifier(server, tpSize, options.maxPending ?? 65536);
    holder.self = self;
    for (const m of early) self.#onMessage(m);
    return self;
  }

  /** `host:port` bound. */
  get url(): string {
    return this.#server.url;
  }

  /** Port bound. */
  get port(): number {
    return Number(this.url.slice(this.url.lastIndexOf(":") + 1));
  }

  /** Messages that were not a valid `ProxyNotif`. */
  get rejected(): number {
    return this.#rejected;
  }

  /** Notifications received so far for `reqId` (not yet consumed by a wait). */
  received(reqId: string): number {
    return this.#counts.get(reqId) ?? 0;
  }

  #onMessage(msg: SideMessage): void {
    if (msg.type !== "ProxyNotif" || typeof msg.req_id !== "string") {
      this.#rejected++;
      return;
    }
    const id = msg.req_id;
    const n = (this.#counts.get(id) ?? 0) + 1;
    this.#counts.delete(id);
    this.#counts.set(id, n);
    while (this.#counts.size > this.#maxPending) {
      const oldest = this.#counts.keys().next().value!;
      if (this.#waiters.has(oldest)) break;
      this.#counts.delete(oldest);
    }
    this.#settle(id);
  }

  #settle(id: string): void {
    const ws = this.#waiters.get(id);
    if (!ws) return;
    const n = this.#counts.get(id) ?? 0;
    const left = ws.filter((w) => {
      if (n < w.count) return true;
      w.timer?.clear();
      w.resolve();
      return false;
    });
    if (left.length === ws.length) return;
    this.#counts.delete(id);
    if (left.length > 0) this.#waiters.set(id, left);
    else this.#waiters.delete(id);
  }

  /**
   * Resolves once `count` (default `tpSize`) notifications for `reqId` have arrived,
   * then forgets the request. Rejects with a {@linkcode ChannelTimeoutError} after
   * `timeoutMs` (default 30000) saying how many arrived.
   */
  waitFor(reqId: string, options?: { count?: number; timeoutMs?: number }): Promise<void> {
    options ??= {};
    if (this.#closed) return Promise.reject(new ChannelError("CLOSED", "proxy notifier closed"));
    const count = options.count ?? this.tpSize;
    const timeoutMs = options.timeoutMs ?? 30_000;
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = { count, resolve, reject };
      const list = this.#waiters.get(reqId) ?? [];
      list.push(w);
      this.#waiters.set(reqId, list);
      if (Number.isFinite(timeoutMs)) {
        w.timer = after(timeoutMs, () => {
          const ws = (this.#waiters.get(reqId) ?? []).filter((x) => x !== w);
          if (ws.length > 0) this.#waiters.set(reqId, ws);
          else this.#waiters.delete(reqId);
          reject(
            new ChannelTimeoutError(`ProxyNotif for request ${reqId}`, timeoutMs, {
              url: this.url,
              hint: `${this.received(reqId)} of ${count} TP rank(s) reported`,
            }),
          );
        });
      }
      this.#settle(reqId);
    });
  }

  /** Stops listening; pending waits fail. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const ws of this.#waiters.values()) {
      for (const w of ws) {
        w.timer?.clear();
        w.reject(new ChannelError("CLOSED", "proxy notifier closed while waiting"));
      }
    }
    this.#waiters.clear();
    await this.#server.close();
  }

  /** Same as `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
