/**
 * The instance's side of the registry (LMCache's `LMCacheWorker`, the part P2P needs):
 * registration, heartbeats and admit/evict reports over PUSH, prefix lookups over REQ.
 *
 * @module
 */

import { errorMessage } from "../channel/_util.ts";
import { after, every, type Timer } from "../deadline.ts";
import {
  type BatchedP2PLookupRetMsg,
  encodeMessage,
  type ErrorMsg,
  type KVOpEvent,
  type LmcacheMessage,
  type PeerInfo,
  PushSocket,
  ReqSocket,
} from "../channel/wire/mod.ts";
import { decodeLookupReply, encodeLookup } from "../channel/wire/lookup_codec.ts";

/** Settings of a {@linkcode RegistryClient}. */
export interface RegistryClientOptions {
  /** `controller_pull_url` (reports), or null for none. */
  pullUrl: string | null;
  /** `controller_reply_url` (lookups), or null for none. */
  replyUrl: string | null;
  /** LMCache instance id. */
  instanceId: string;
  /** Worker id (TP rank). */
  workerId: number;
  /** IP reported in RegisterMsg / HeartbeatMsg. */
  ip: string;
  /** Port reported in RegisterMsg / HeartbeatMsg. */
  port: number;
  /** This worker's P2P init URL. */
  peerInitUrl: string;
  /** Storage location named in reports. */
  location: string;
  /** Heartbeat period, ms (null: none). */
  heartbeatIntervalMs: number | null;
  /** Delay before the first heartbeat, ms. */
  heartbeatDelayMs: number;
  /** Deadline of a lookup round trip, ms. */
  requestTimeoutMs: number;
  /** Deadline of one push, ms. */
  sendTimeoutMs: number;
  /** Every hash held now (sent again after the registry restarted). */
  snapshot: () => Iterable<bigint>;
}

const BATCH = 1000;
/**
 * Admit/evict reports queued while a push is under way (a slow or absent registry). Beyond,
 * the queue is dropped for a resync (RegisterMsg + a snapshot of what is held), which
 * says the same in at most one entry per held chunk: the queue never outgrows the store.
 */
const MAX_QUEUED_REPORTS = 65536;

/**
 * Registration, heartbeats, admit/evict reports (batched, in order, as
 * `BatchedKVOperationMsg`) and lookups. Reports are asynchronous: `flush()` resolves once
 * the queued ones are written to the socket. When the registry restarts (the PUSH socket
 * reconnects to a new peer) or a push fails, the next flush registers again and sends
 * every held hash, so the registry relearns what this instance holds.
 *
 * @example
 * ```ts
 * import { RegistryClient } from "./registry_client.ts";
 *
 * const client = new RegistryClient({
 *   pullUrl: "127.0.0.1:8300", replyUrl: "127.0.0.1:8301", instanceId: "a", workerId: 0,
 *   ip: "127.0.0.1", port: 0, peerInitUrl: "127.0.0.1:8400", location: "LocalCPUBackend",
 *   heartbeatIntervalMs: 10_000, heartbeatDelayMs: 0, requestTimeoutMs: 5000,
 *   sendTimeoutMs: 5000, snapshot: () => [],
 * });
 * client.start();
 * client.admit(42n);
 * await client.flush();
 * await client.close();
 * ```
 */
export class RegistryClient {
  readonly #o: RegistryClientOptions;
  readonly #push: PushSocket | null;
  readonly #req: ReqSocket | null;
  #ops: KVOpEvent[] = [];
  #seq = 0;
  #resync = true;
  #peer: PeerInfo | undefined;
  #flushing: Promise<void> | null = null;
  #again = false;
  #timer: Timer | undefined;
  #beat: Timer | undefined;
  #closed = false;
  #beating = false;
  /** Pushes that failed (the data is sent again with the next resync). */
  failures = 0;
  /** The last push failure, or null. */
  lastError: string | null = null;

  /**
   * Connects the sockets (in the background; nothing waits for the registry).
   *
   * @param options the settings
   */
  constructor(options: RegistryClientOptions) {
    this.#o = options;
    const sockOpts = {
      timeoutMs: options.sendTimeoutMs,
      connectTimeoutMs: Math.min(options.sendTimeoutMs, 5000),
      reconnectIntervalMs: 50,
      reconnectMaxIntervalMs: 1000,
    };
    this.#push = options.pullUrl ? PushSocket.connect(tcp(options.pullUrl), sockOpts) : null;
    this.#req = options.replyUrl ? ReqSocket.connect(tcp(options.replyUrl), sockOpts) : null;
  }

  /** Admit/evict reports queued, not yet written (at most 65536: beyond, a resync). */
  get queuedReports(): number {
    return this.#ops.length;
  }

  /** Whether lookups can be asked (a reply URL is configured). */
  get canLookup(): boolean {
    return this.#req !== null;
  }

  /** Registers (on the next flush) and starts the heartbeat. */
  start(): void {
    this.#schedule();
    const interval = this.#o.heartbeatIntervalMs;
    if (interval === null || !this.#push) return;
    this.#timer = after(this.#o.heartbeatDelayMs, () => {
      this.#heartbeat();
      this.#beat = every(interval, () => this.#heartbeat());
    });
  }

  /** Queues an admit report. */
  admit(hash: bigint): void {
    this.#op("admit", hash);
  }

  /** Queues an evict report. */
  evict(hash: bigint): void {
    this.#op("evict", hash);
  }

  #op(op_type: "admit" | "evict", key: bigint): void {
    if (!this.#push || this.#closed) return;
    if (!this.#resync && this.#ops.length >= MAX_QUEUED_REPORTS) {
      this.#ops = [];
      this.#resync = true;
    }
    if (!this.#resync) this.#ops.push({ op_type, key, seq_num: this.#seq++ });
    this.#schedule();
  }

  #schedule(): void {
    if (!this.#push || this.#closed) return;
    if (this.#flushing) {
      this.#again = true;
      return;
    }
    this.flush().catch(() => {});
  }

  #heartbeat(): void {
    // One heartbeat at a time: while the registry is away they do not pile up.
    if (this.#closed || !this.#push || this.#beating) return;
    const o = this.#o;
    this.#beating = true;
    this.#send([
      {
        type: "HeartbeatMsg",
        instance_id: o.instanceId,
        worker_id: o.workerId,
        ip: o.ip,
        port: o.port,
        peer_init_url: o.peerInitUrl,
      },
    ]).catch(() => {}).finally(() => (this.#beating = false));
    this.#schedule();
  }

  /** Sends every queued report (a registration and full snapshot when one is due). */
  flush(): Promise<void> {
    if (!this.#push || this.#closed) return Promise.resolve();
    if (this.#flushing) {
      this.#again = true;
      return this.#flushing;
    }
    this.#flushing = (async () => {
      try {
        do {
          this.#again = false;
          await this.#flushOnce();
        } while (this.#again && !this.#closed);
      } finally {
        this.#flushing = null;
      }
    })();
    return this.#flushing;
  }

  async #flushOnce(): Promise<void> {
    const peer = this.#push!.peers[0];
    if (peer && this.#peer && peer !== this.#peer) this.#resync = true; // registry restarted
    if (this.#resync) {
      this.#resync = false;
      this.#ops = [];
      const o = this.#o;
      const msgs: LmcacheMessage[] = [{
        type: "RegisterMsg",
        instance_id: o.instanceId,
        worker_id: o.workerId,
        ip: o.ip,
        port: o.port,
        peer_init_url: o.peerInitUrl,
      }];
      let ops: KVOpEvent[] = [];
      for (const key of o.snapshot()) {
        ops.push({ op_type: "admit", key, seq_num: this.#seq++ });
        if (ops.length === BATCH) {
          msgs.push(this.#batch(ops));
          ops = [];
        }
      }
      if (ops.length > 0) msgs.push(this.#batch(ops));
      try {
        await this.#send(msgs);
      } catch (e) {
        this.#resync = true;
        throw e;
      }
    }
    while (this.#ops.length > 0) {
      const ops = this.#ops.splice(0, BATCH);
      try {
        await this.#send([this.#batch(ops)]);
      } catch (e) {
        this.#resync = true;
        this.#ops = [];
        throw e;
      }
    }
  }

  #batch(operations: KVOpEvent[]): LmcacheMessage {
    return {
      type: "BatchedKVOperationMsg",
      instance_id: this.#o.instanceId,
      worker_id: this.#o.workerId,
      location: this.#o.location,
      operations,
    };
  }

  async #send(msgs: LmcacheMessage[]): Promise<void> {
    try {
      await this.#push!.send(msgs.map(encodeMessage), { timeoutMs: this.#o.sendTimeoutMs });
      const peer = this.#push!.peers[0];
      if (peer && this.#peer && peer !== this.#peer) {
        // Written to a new connection: the registry may have restarted under us.
        this.#peer = peer;
        if (!msgs.some((m) => m.type === "RegisterMsg")) {
          this.#resync = true;
          this.#again = true;
        }
      }
      this.#peer ??= peer;
    } catch (e) {
      this.failures++;
      this.lastError = errorMessage(e);
      throw e;
    }
  }

  /**
   * Asks the registry who holds the longest prefix of `hashes`; resolves to its reply
   * (`BatchedP2PLookupRetMsg`, or `ErrorMsg`). Rejects on a timeout or a lost connection.
   */
  async lookup(hashes: readonly bigint[]): Promise<BatchedP2PLookupRetMsg | ErrorMsg> {
    if (!this.#req) throw new Error("no registry reply URL (controller_reply_url) configured");
    // The lookup's own codec: encodeMessage's bytes and decodeMessage's result, without
    // the generic path (most of a lookup's JavaScript).
    const [reply] = await this.#req.request(
      encodeLookup(hashes, this.#o.instanceId, this.#o.workerId),
      { timeoutMs: this.#o.requestTimeoutMs },
    );
    return decodeLookupReply(reply, { peer: this.#o.replyUrl ?? undefined });
  }

  /** Deregisters (best effort, within `timeoutMs`) and closes both sockets. */
  async close(timeoutMs = 500): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#timer?.clear();
    this.#beat?.clear();
    await this.#flushing?.catch(() => {});
    if (this.#push && this.#push.peers.length > 0) {
      const o = this.#o;
      await this.#push.send(
        encodeMessage({
          type: "DeRegisterMsg",
          instance_id: o.instanceId,
          worker_id: o.workerId,
          ip: o.ip,
          port: o.port,
        }),
        { timeoutMs },
      ).catch(() => {});
    }
    await Promise.allSettled([this.#push?.close(), this.#req?.close()]);
  }
}

function tcp(url: string): string {
  return url.startsWith("tcp://") ? url : `tcp://${url}`;
}
