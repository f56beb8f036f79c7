/**
 * `P2PRegistry`: the lookup service of P2P sharing, without Python. It speaks the part of
 * LMCache's cache controller that P2P needs, on the same sockets: a PULL socket on
 * `controller_pull_url` for worker reports and a ROUTER socket on `controller_reply_url`
 * for requests (REQ and DEALER clients both work).
 *
 * @module
 */

import { every, type Timer } from "../deadline.ts";
import { Encoder } from "@msgpack/msgpack";
import { ChannelError } from "../channel/errors.ts";
import { errorMessage } from "../channel/_util.ts";
import {
  type BatchedP2PLookupMsg,
  type BatchedP2PLookupRetMsg,
  decodeMessage,
  encodeMessage,
  type LmcacheMessage,
  PullSocket,
  RouterSocket,
  toSafeInt,
  type WireError,
} from "../channel/wire/mod.ts";
import { countMessageError } from "../channel/wire/metrics.ts";
import { decodeRequest, encodeLookupReply } from "../channel/wire/lookup_codec.ts";
import { type MetricsRegistry, metricsRegistry } from "../metrics/registry.ts";
import { type CollectedSource, weakly } from "../metrics/source.ts";
import { collectP2PRegistry } from "./metrics.ts";

/** Options of {@linkcode P2PRegistry.listen}. */
export interface P2PRegistryOptions {
  /** `host:port` of the PULL socket workers push reports to (`controller_pull_url`). */
  pullUrl: string;
  /** `host:port` of the ROUTER socket answering lookups (`controller_reply_url`). */
  replyUrl: string;
  /**
   * An instance that sends nothing (no heartbeat, no report) for this long is forgotten
   * with all its chunks. Default 30000 ms; `Infinity` never forgets.
   */
  heartbeatTimeoutMs?: number;
  /** How often silent instances are looked for (default: a quarter of the timeout, <= 1 s). */
  sweepIntervalMs?: number;
  /** Largest message accepted (default 64 MiB). */
  maxMessageBytes?: number;
  /**
   * `host:port` newer LMCache workers send heartbeats to (returned in `RegisterRetMsg`'s
   * `extra_config.heartbeat_url`); default the bound reply URL unless it is a wildcard.
   */
  heartbeatUrl?: string;
  /** Registry the registry's counters are reported in (default: `metricsRegistry()`). */
  metrics?: MetricsRegistry;
}

/** What the registry knows of one instance-worker. */
export interface P2PInstanceInfo {
  /** LMCache instance id. */
  instanceId: string;
  /** Worker id (TP rank). */
  workerId: number;
  /** Worker IP, as registered. */
  ip: string;
  /** Worker port, as registered. */
  port: number;
  /** Its P2P init URL (`host:port`), or `null` when it never said (not registered yet). */
  peerInitUrl: string | null;
  /** Chunks held, per location (`"LocalCPUBackend"`, ...). */
  chunks: Record<string, number>;
  /** Milliseconds since its last message. */
  silentMs: number;
  /** Heartbeats received. */
  heartbeats: number;
}

/** The answer to a prefix lookup. */
export interface P2PLookupAnswer {
  /** The holder's instance id (`""` on a miss). */
  instanceId: string;
  /** The holder's storage location (`""` on a miss). */
  location: string;
  /** Leading hashes the holder has (0 on a miss). */
  hitChunks: number;
  /** The holder's P2P init URL (`""` on a miss). */
  peerInitUrl: string;
}

/** Something the registry did, for logs. */
export interface P2PRegistryEvent {
  /** `"register"`, `"deregister"`, `"forget"` (silent too long), `"error"`. */
  type: "register" | "deregister" | "forget" | "error";
  /** The instance, when there is one. */
  instanceId?: string;
  /** The worker, when there is one. */
  workerId?: number;
  /** Its init URL, when known. */
  peerInitUrl?: string | null;
  /** Details (the error, or how long the instance was silent). */
  detail?: string;
}

/** Counters of a {@linkcode P2PRegistry}. */
export interface P2PRegistryStats {
  /** Instance-workers known. */
  instances: number;
  /** Chunk entries held (one per holder and location). */
  chunks: number;
  /** Reports taken (register, heartbeat, admit, evict, ...). */
  reports: number;
  /** Lookups answered. */
  lookups: number;
  /** Lookups that found a holder. */
  hits: number;
  /** Instances forgotten for silence. */
  forgotten: number;
  /** Messages that could not be used (undecodable, unexpected). */
  errors: number;
}

interface Holder {
  instanceId: string;
  workerId: number;
  ip: string;
  port: number;
  peerInitUrl: string | null;
  lastSeen: number;
  heartbeats: number;
  locations: Map<string, Set<bigint>>;
}

const raw = new Encoder({ useBigInt64: true });
const MISS: [string, string, number, string] = ["", "", 0, ""];

function holderKey(instanceId: string, workerId: number): string {
  return `${instanceId}\u0000${workerId}`;
}

/**
 * The lookup service of P2P KV sharing: keeps which instance holds which chunk hashes
 * and answers "who holds the longest prefix of these hashes?".
 *
 * - Reports arrive on a PULL socket (`controller_pull_url`), one message per frame of a
 *   multipart message as LMCache's workers batch them: `RegisterMsg` (a new incarnation:
 *   its old chunks are dropped), `HeartbeatMsg`, `DeRegisterMsg`, `KVAdmitMsg`,
 *   `KVEvictMsg`, `BatchedKVOperationMsg`.
 * - Requests arrive on a ROUTER socket (`controller_reply_url`):
 *   `BatchedP2PLookupMsg` -> `BatchedP2PLookupRetMsg{layout_info: [[instance_id,
 *   location, num_hit_chunks, peer_init_url]]}` naming the instance (not the asker, same
 *   worker id) holding the longest prefix, or `[["", "", 0, ""]]` on a miss, as LMCache's
 *   controller answers. Newer LMCache workers' `RegisterMsg` / `HeartbeatMsg` requests are
 *   answered too.
 * - An instance silent for `heartbeatTimeoutMs` is forgotten with its chunks.
 *
 * The registry's view is advisory: a holder checks its own store when asked for the
 * chunks, so a stale entry costs a shorter hit, never wrong bytes.
 *
 * @example
 * ```ts
 * import { P2PRegistry } from "@kvport/nixl";
 *
 * await using registry = await P2PRegistry.listen({
 *   pullUrl: "127.0.0.1:0", replyUrl: "127.0.0.1:0", heartbeatTimeoutMs: 30_000,
 * });
 * console.log(`reports on ${registry.pullUrl}, lookups on ${registry.replyUrl}`);
 * console.log(registry.lookup([1n, 2n], "asker", 0)); // a miss: hitChunks 0
 * ```
 */
export class P2PRegistry implements AsyncDisposable {
  /** `host:port` of the PULL socket (reports). */
  readonly pullUrl: string;
  /** `host:port` of the ROUTER socket (lookups). */
  readonly replyUrl: string;
  /** Silence after which an instance is forgotten, ms. */
  readonly heartbeatTimeoutMs: number;
  readonly #registerReply: Uint8Array;
  readonly #pull: PullSocket;
  readonly #router: RouterSocket;
  readonly #holders = new Map<string, Holder>();
  readonly #index = new Map<bigint, Set<Holder>>();
  readonly #listeners = new Set<(e: P2PRegistryEvent) => void>();
  readonly #stats = { reports: 0, lookups: 0, hits: 0, forgotten: 0, errors: 0 };
  #chunkEntries = 0;
  #sweep: Timer | undefined;
  #loops: Promise<void>[] = [];
  #closing: Promise<void> | null = null;
  #metricsSource: CollectedSource;

  private constructor(
    pull: PullSocket,
    router: RouterSocket,
    options: P2PRegistryOptions,
  ) {
    this.#pull = pull;
    this.#router = router;
    this.pullUrl = boundUrl(pull, options.pullUrl);
    this.replyUrl = boundUrl(router, options.replyUrl);
    this.heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? 30_000;
    const beatUrl = options.heartbeatUrl ??
      (/^(0\.0\.0\.0|\*|\[::\]):/.test(this.replyUrl) ? undefined : this.replyUrl);
    this.#registerReply = raw.encode({
      type: "RegisterRetMsg",
      extra_config: beatUrl ? { heartbeat_url: beatUrl } : {},
    });
    const sweepMs = options.sweepIntervalMs ??
      Math.max(10, Math.min(1000, this.heartbeatTimeoutMs / 4));
    if (Number.isFinite(this.heartbeatTimeoutMs)) {
      this.#sweep = every(sweepMs, () => this.sweep());
    }
    this.#loops.push(this.#pullLoop());
    router.handle((frames) => this.#onRequest(frames));
    this.#metricsSource = collectP2PRegistry(
      options.metrics ?? metricsRegistry(),
      weakly(this, P2PRegistry.#stats_),
    );
  }

  // Static: a closure made in the constructor would hold `this` (its context does).
  static #stats_(r: P2PRegistry): P2PRegistryStats {
    return r.stats;
  }

  /**
   * Binds both sockets and starts serving.
   *
   * @example
   * ```ts
   * import { P2PRegistry } from "@kvport/nixl";
   *
   * const registry = await P2PRegistry.listen({ pullUrl: "0.0.0.0:8300", replyUrl: "0.0.0.0:8301" });
   * await registry.close();
   * ```
   */
  static async listen(options: P2PRegistryOptions): Promise<P2PRegistry> {
    const t = options.heartbeatTimeoutMs;
    if (t !== undefined && !(typeof t === "number" && t > 0)) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        `heartbeatTimeoutMs must be a positive number of ms (Infinity: never), got ${t}`,
      );
    }
    const sockOpts = { maxMessageBytes: options.maxMessageBytes, timeoutMs: 10_000 };
    const pull = await PullSocket.bind(tcp(options.pullUrl), sockOpts).catch((e) => {
      throw bindError("pullUrl (controller_pull_url)", options.pullUrl, e);
    });
    let router: RouterSocket;
    try {
      router = await RouterSocket.bind(tcp(options.replyUrl), sockOpts);
    } catch (e) {
      await pull.close();
      throw bindError("replyUrl (controller_reply_url)", options.replyUrl, e);
    }
    return new P2PRegistry(pull, router, options);
  }

  /**
   * A registry from a loaded configuration: binds `controller_pull_url` and
   * `controller_reply_url`; forgets an instance after three missed heartbeats
   * (`lmcache_worker_heartbeat_time`, 10 s when unset) unless `heartbeatTimeoutMs` says
   * otherwise.
   *
   * @example
   * ```ts
   * import { loadConfig, P2PRegistry } from "@kvport/nixl";
   *
   * const { config } = loadConfig({ file: "lmcache-controller.yaml" });
   * await using registry = await P2PRegistry.fromConfig(config);
   * console.log(registry.pullUrl, registry.replyUrl);
   * ```
   */
  static async fromConfig(
    config: P2PRegistryConfigLike,
    overrides?: Partial<P2PRegistryOptions>,
  ): Promise<P2PRegistry> {
    overrides ??= {};
    const pullUrl = overrides.pullUrl ?? config.controller_pull_url;
    const replyUrl = overrides.replyUrl ?? config.controller_reply_url;
    if (!pullUrl || !replyUrl) {
      throw new ChannelError(
        "INVALID_ARGUMENT",
        "a P2P registry needs controller_pull_url and controller_reply_url " +
          `(got ${JSON.stringify(pullUrl ?? null)} and ${JSON.stringify(replyUrl ?? null)})`,
      );
    }
    const beatS = config.lmcache_worker_heartbeat_time ?? 10;
    return await P2PRegistry.listen({
      heartbeatTimeoutMs: 3 * beatS * 1000,
      ...overrides,
      pullUrl,
      replyUrl,
    });
  }

  /** Counters. */
  get stats(): P2PRegistryStats {
    return { instances: this.#holders.size, chunks: this.#chunkEntries, ...this.#stats };
  }

  /** Subscribes to events (register, deregister, forget, error); returns the unsubscribe. */
  onEvent(listener: (e: P2PRegistryEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Every instance-worker known. */
  instances(): P2PInstanceInfo[] {
    const now = performance.now();
    return [...this.#holders.values()].map((h) => ({
      instanceId: h.instanceId,
      workerId: h.workerId,
      ip: h.ip,
      port: h.port,
      peerInitUrl: h.peerInitUrl,
      chunks: Object.fromEntries([...h.locations].map(([loc, s]) => [loc, s.size])),
      silentMs: now - h.lastSeen,
      heartbeats: h.heartbeats,
    }));
  }

  /**
   * The instance (other than `instanceId`, same `workerId`, with an init URL) holding
   * the longest prefix of `hashes` in one location.
   */
  lookup(hashes: readonly bigint[], instanceId: string, workerId: number): P2PLookupAnswer {
    this.#stats.lookups++;
    let best: P2PLookupAnswer = { instanceId: "", location: "", hitChunks: 0, peerInitUrl: "" };
    if (hashes.length === 0) return best;
    for (const h of this.#index.get(hashes[0]) ?? []) {
      if (h.instanceId === instanceId || h.workerId !== workerId || !h.peerInitUrl) continue;
      for (const [location, set] of h.locations) {
        let n = 0;
        while (n < hashes.length && set.has(hashes[n])) n++;
        if (n > best.hitChunks) {
          best = { instanceId: h.instanceId, location, hitChunks: n, peerInitUrl: h.peerInitUrl };
        }
      }
    }
    if (best.hitChunks > 0) this.#stats.hits++;
    return best;
  }

  /** Takes one worker message as if it came on the PULL socket (for embedding, tests;
   * the message types are in the `./wire` entry point).
   * @ignore */
  report(message: LmcacheMessage): void {
    this.#stats.reports++;
    const now = performance.now();
    // A TP rank beyond 2^53 is no rank: refuse it by name rather than round it.
    const workerId = "worker_id" in message
      ? toSafeInt(message.worker_id, "worker_id", message.type)
      : 0;
    switch (message.type) {
      case "RegisterMsg": {
        const h = this.#holder(message.instance_id, workerId, now);
        // A registration is a new incarnation: what the old one held is gone.
        this.#clearChunks(h);
        h.ip = message.ip;
        h.port = toSafeInt(message.port, "port", message.type);
        h.peerInitUrl = message.peer_init_url;
        this.#emit({
          type: "register",
          instanceId: h.instanceId,
          workerId: h.workerId,
          peerInitUrl: h.peerInitUrl,
        });
        return;
      }
      case "HeartbeatMsg": {
        const known = this.#holders.has(holderKey(message.instance_id, workerId));
        const h = this.#holder(message.instance_id, workerId, now);
        h.heartbeats++;
        h.ip = message.ip;
        h.port = toSafeInt(message.port, "port", message.type);
        if (message.peer_init_url !== null) h.peerInitUrl = message.peer_init_url;
        if (!known) {
          this.#emit({
            type: "register",
            instanceId: h.instanceId,
            workerId: h.workerId,
            peerInitUrl: h.peerInitUrl,
            detail: "from a heartbeat",
          });
        }
        return;
      }
      case "DeRegisterMsg": {
        const h = this.#holders.get(holderKey(message.instance_id, workerId));
        if (h) {
          this.#forget(h);
          this.#emit({
            type: "deregister",
            instanceId: h.instanceId,
            workerId: h.workerId,
            peerInitUrl: h.peerInitUrl,
          });
        }
        return;
      }
      case "KVAdmitMsg":
        this.#admit(this.#holder(message.instance_id, workerId, now), message);
        return;
      case "KVEvictMsg":
        this.#evict(this.#holder(message.instance_id, workerId, now), message);
        return;
      case "BatchedKVOperationMsg": {
        const h = this.#holder(message.instance_id, workerId, now);
        for (const op of message.operations) {
          const m = { key: op.key, location: message.location };
          if (op.op_type === "admit") this.#admit(h, m);
          else this.#evict(h, m);
        }
        return;
      }
      default:
        this.#stats.reports--;
        this.#error(`unexpected ${message.type} on the report socket ${this.pullUrl}`);
    }
  }

  /** Forgets instances silent for longer than the heartbeat timeout (run periodically). */
  sweep(): void {
    const now = performance.now();
    for (const h of [...this.#holders.values()]) {
      const silent = now - h.lastSeen;
      if (silent > this.heartbeatTimeoutMs) {
        this.#forget(h);
        this.#stats.forgotten++;
        this.#emit({
          type: "forget",
          instanceId: h.instanceId,
          workerId: h.workerId,
          peerInitUrl: h.peerInitUrl,
          detail: `silent for ${Math.round(silent)} ms (timeout ${this.heartbeatTimeoutMs} ms)`,
        });
      }
    }
  }

  #holder(instanceId: string, workerId: number, now: number): Holder {
    const k = holderKey(instanceId, workerId);
    let h = this.#holders.get(k);
    if (!h) {
      h = {
        instanceId,
        workerId,
        ip: "",
        port: 0,
        peerInitUrl: null,
        lastSeen: now,
        heartbeats: 0,
        locations: new Map(),
      };
      this.#holders.set(k, h);
    }
    h.lastSeen = now;
    return h;
  }

  #admit(h: Holder, m: { key: bigint; location: string }): void {
    let set = h.locations.get(m.location);
    if (!set) h.locations.set(m.location, set = new Set());
    if (set.has(m.key)) return;
    set.add(m.key);
    this.#chunkEntries++;
    let holders = this.#index.get(m.key);
    if (!holders) this.#index.set(m.key, holders = new Set());
    holders.add(h);
  }

  #evict(h: Holder, m: { key: bigint; location: string }): void {
    const set = h.locations.get(m.location);
    if (!set || !set.delete(m.key)) return;
    this.#chunkEntries--;
    if (set.size === 0) h.locations.delete(m.location);
    for (const other of h.locations.values()) if (other.has(m.key)) return;
    this.#unindex(h, m.key);
  }

  #unindex(h: Holder, key: bigint): void {
    const holders = this.#index.get(key);
    if (!holders) return;
    holders.delete(h);
    if (holders.size === 0) this.#index.delete(key);
  }

  #clearChunks(h: Holder): void {
    for (const set of h.locations.values()) {
      this.#chunkEntries -= set.size;
      for (const key of set) this.#unindex(h, key);
    }
    h.locations.clear();
  }

  #forget(h: Holder): void {
    this.#clearChunks(h);
    this.#holders.delete(holderKey(h.instanceId, h.workerId));
  }

  #emit(e: P2PRegistryEvent): void {
    for (const l of this.#listeners) {
      try {
        l(e);
      } catch {
        // A listener's failure is its own.
      }
    }
  }

  #error(detail: string): void {
    this.#stats.errors++;
    this.#emit({ type: "error", detail });
  }

  async #pullLoop(): Promise<void> {
    try {
      for await (const frames of this.#pull) {
        // LMCache's workers push a batch of messages as the parts of one message.
        for (const frame of frames) {
          let msg: LmcacheMessage;
          try {
            msg = decodeMessage(frame);
          } catch (e) {
            countMessageError(metricsRegistry(), "PULL");
            this.#error(`undecodable report: ${errorMessage(e)}`);
            continue;
          }
          try {
            this.report(msg);
          } catch (e) {
            this.#error(`refused report: ${errorMessage(e)}`);
          }
        }
      }
    } catch {
      // closed
    }
  }

  /**
   * One request of the ROUTER socket, answered in the turn its bytes were read (the
   * socket's `handle`: no queue, no promise turn before the reply is written). The next
   * request waits until this reply's bytes were written, as a loop awaiting each send.
   */
  #onRequest(frames: Uint8Array[]): Promise<void> {
    // [identity, ...envelope, empty delimiter, body] from REQ and LMCache's DEALER.
    let d = -1;
    for (let i = 1; i < frames.length && d < 0; i++) if (frames[i].length === 0) d = i;
    const envelope = d > 0 ? frames.slice(0, d + 1) : frames.slice(0, 1);
    const body = frames[envelope.length];
    let reply: Uint8Array;
    try {
      if (body === undefined || frames.length !== envelope.length + 1) {
        throw new Error(
          `expected one body frame after the envelope, got ${frames.length - envelope.length}`,
        );
      }
      let msg: LmcacheMessage;
      try {
        msg = decodeRequest(body);
      } catch (e) {
        countMessageError(metricsRegistry(), "ROUTER");
        throw e;
      }
      reply = this.#request(msg);
    } catch (e) {
      this.#error(`request refused: ${errorMessage(e)}`);
      reply = encodeMessage({ type: "ErrorMsg", error: errorMessage(e) });
    }
    envelope.push(reply);
    return this.#router.send(envelope).catch((e: WireError) =>
      this.#error(`reply not delivered: ${e.message}`)
    );
  }

  #request(msg: LmcacheMessage): Uint8Array {
    switch (msg.type) {
      case "BatchedP2PLookupMsg":
        return encodeLookupReply(this.#lookupReply(msg));
      case "RegisterMsg":
        this.report(msg);
        return this.#registerReply;
      case "HeartbeatMsg":
        this.report(msg);
        return raw.encode({ type: "HeartbeatRetMsg", commands: [] });
      default:
        throw new Error(
          `${msg.type} is not a request this registry answers (expected BatchedP2PLookupMsg)`,
        );
    }
  }

  #lookupReply(msg: BatchedP2PLookupMsg): BatchedP2PLookupRetMsg {
    const a = this.lookup(
      msg.hashes,
      msg.instance_id,
      toSafeInt(msg.worker_id, "worker_id", msg.type),
    );
    return {
      type: "BatchedP2PLookupRetMsg",
      layout_info: [
        a.hitChunks > 0 ? [a.instanceId, a.location, a.hitChunks, a.peerInitUrl] : MISS,
      ],
    };
  }

  /** Stops serving and closes both sockets. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#metricsSource.retire();
      this.#sweep?.clear();
      await Promise.allSettled([this.#pull.close(), this.#router.close()]);
      await Promise.allSettled(this.#loops);
      this.#listeners.clear();
    })();
    return this.#closing;
  }

  /** Same as `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The configuration keys {@linkcode P2PRegistry.fromConfig} reads. */
export interface P2PRegistryConfigLike {
  /** Where workers push reports. */
  readonly controller_pull_url: string | null;
  /** Where workers send lookups. */
  readonly controller_reply_url: string | null;
  /** Workers' heartbeat period, seconds (null: 10 s assumed). */
  readonly lmcache_worker_heartbeat_time?: number | null;
}

function tcp(url: string): string {
  return url.startsWith("tcp://") ? url : `tcp://${url}`;
}

function boundUrl(sock: PullSocket | RouterSocket, asked: string): string {
  const ep = sock.endpoints[0];
  return (ep ?? asked).replace(/^tcp:\/\//, "");
}

function bindError(what: string, url: string, e: unknown): ChannelError {
  return new ChannelError(
    "INVALID_ARGUMENT",
    `P2P registry cannot bind ${what} ${url}: ${errorMessage(e)} ` +
      "(is another registry or controller running there?)",
    { url, op: "listen", cause: e },
  );
}
