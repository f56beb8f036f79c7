/**
 * The one schema of kvport's configuration: every key LMCache's NIXL surface uses, with
 * its type, default, constraints and description. The key table
 * ({@link configKeys}), the README reference and `kvport config --help` are all
 * generated from it.
 *
 * @module
 */
import { z } from "zod";

/** How a key's value is written and converted (from YAML, env or overrides). */
export type KeyKind =
  | "bool"
  | "int"
  | "float"
  | "str"
  | "int_list"
  | "str_list"
  | "str_map"
  | "map";

/** The part of the configuration a key belongs to. */
export type KeyGroup =
  | "core"
  | "pd"
  | "transfer"
  | "p2p"
  | "controller"
  | "storage"
  | "security";

/** Metadata kept next to each key's zod schema (internal; read it through configKeys). */
export interface KeyMeta {
  kind: KeyKind;
  group: KeyGroup;
  description: string;
  /** The allowed values of a string key, when there is a fixed set. */
  values?: readonly string[];
  /** Inclusive bounds of a number (or of each item of a list). */
  min?: number;
  max?: number;
  /** Exclusive lower bound of a number. */
  gt?: number;
  /** A pattern the string must match, described in words. */
  pattern?: string;
  /** Unit of a number, for the docs. */
  unit?: string;
}

/** The schema registry that carries each key's {@link KeyMeta}. */
export const keyRegistry: z.core.$ZodRegistry<KeyMeta> = z.registry<KeyMeta>();

/** PD roles: `sender` (prefiller), `receiver` (decoder), `both`. */
export type PdRole = "sender" | "receiver" | "both";
/** PD backend implementation selector kept from LMCache. */
export type PdBackendMode = "sync" | "async";
/** Transfer channel types ({@link TransferChannel} factories accept these). */
export type TransferChannelType = "nixl" | "mock_memory";
/** The NIXL storage plugins the storage backend accepts in `extra_config.nixl_backend`. */
export type NixlStorageBackendName = "GDS" | "GDS_MT" | "POSIX" | "HF3FS" | "OBJ" | "AZURE_BLOB";

/** Values of `pd_role`. */
export const PD_ROLES: readonly PdRole[] = ["sender", "receiver", "both"];
/** Values of `pd_backend_mode`. */
export const PD_BACKEND_MODES: readonly PdBackendMode[] = ["sync", "async"];
/** Values of `transfer_channel`. */
export const TRANSFER_CHANNELS: readonly TransferChannelType[] = ["nixl", "mock_memory"];
/** Values of `extra_config.nixl_backend`. */
export const NIXL_STORAGE_BACKENDS: readonly NixlStorageBackendName[] = [
  "GDS",
  "GDS_MT",
  "POSIX",
  "HF3FS",
  "OBJ",
  "AZURE_BLOB",
];
/** Storage backends that keep data in files under `extra_config.nixl_path`. */
export const FILE_STORAGE_BACKENDS: readonly NixlStorageBackendName[] = [
  "GDS",
  "GDS_MT",
  "POSIX",
  "HF3FS",
];
/** Which buffer devices each storage backend accepts (`cuda` covers `cuda:N`). */
export const STORAGE_BACKEND_DEVICES: Readonly<
  Record<NixlStorageBackendName, readonly ("cpu" | "cuda")[]>
> = {
  GDS: ["cpu", "cuda"],
  GDS_MT: ["cpu", "cuda"],
  POSIX: ["cpu"],
  HF3FS: ["cpu"],
  OBJ: ["cpu", "cuda"],
  AZURE_BLOB: ["cpu"],
};

const DEVICE_RE = /^(cpu|cuda(:\d+)?)$/;
const DEVICE_TEXT = '"cpu", "cuda" or "cuda:N"';

interface Opts {
  group: KeyGroup;
  description: string;
  unit?: string;
}
interface NumOpts extends Opts {
  min?: number;
  max?: number;
  gt?: number;
}

function reg<T extends z.ZodType>(schema: T, meta: KeyMeta): T {
  keyRegistry.add(schema, meta);
  return schema;
}
function num(o: NumOpts, int: boolean): z.ZodNumber {
  let n = int ? z.number().int() : z.number();
  if (o.min !== undefined) n = n.min(o.min);
  if (o.max !== undefined) n = n.max(o.max);
  if (o.gt !== undefined) n = n.gt(o.gt);
  return n;
}
function bool(def: boolean, o: Opts) {
  return reg(z.boolean().default(def), { kind: "bool", ...o });
}
function boolOrNull(o: Opts) {
  return reg(z.boolean().nullable().default(null), { kind: "bool", ...o });
}
function int(def: number, o: NumOpts) {
  return reg(num(o, true).default(def), { kind: "int", ...o });
}
function intOrNull(o: NumOpts) {
  return reg(num(o, true).nullable().default(null), { kind: "int", ...o });
}
function float(def: number, o: NumOpts) {
  return reg(num(o, false).default(def), { kind: "float", ...o });
}
/** A float that may also be infinite (a timeout with no limit). */
function floatOrInf(def: number, o: NumOpts) {
  return reg(z.union([num(o, false), z.literal(Infinity)]).default(def), { kind: "float", ...o });
}
function strOrNull(o: Opts) {
  return reg(z.string().min(1).nullable().default(null), { kind: "str", ...o });
}
function enumOf<const T extends readonly [string, ...string[]]>(
  values: T,
  def: T[number],
  o: Opts,
) {
  return reg(z.enum(values).default(def as never), { kind: "str", values, ...o });
}
function enumOrNull<const T extends readonly [string, ...string[]]>(values: T, o: Opts) {
  return reg(z.enum(values).nullable().default(null), { kind: "str", values, ...o });
}
function deviceOrNull(o: Opts) {
  return reg(z.string().regex(DEVICE_RE).nullable().default(null), {
    kind: "str",
    pattern: DEVICE_TEXT,
    ...o,
  });
}
const PORT: NumOpts = { group: "core", description: "", min: 1, max: 65535 };
function port(o: Opts) {
  return reg(num(PORT, true).nullable().default(null), { kind: "int", min: 1, max: 65535, ...o });
}
function portList(o: Opts) {
  return reg(z.array(num(PORT, true)).nullable().default(null), {
    kind: "int_list",
    min: 1,
    max: 65535,
    ...o,
  });
}
function intList(o: NumOpts) {
  return reg(z.array(num(o, true)).nullable().default(null), { kind: "int_list", ...o });
}
function strList(o: Opts) {
  return reg(z.array(z.string().min(1)).nullable().default(null), { kind: "str_list", ...o });
}

const extraShape = {
  enable_nixl_storage: bool(false, {
    group: "storage",
    description: "Turn on the NIXL storage backend (KV chunks in files or objects).",
  }),
  nixl_backend: enumOrNull(["GDS", "GDS_MT", "POSIX", "HF3FS", "OBJ", "AZURE_BLOB"], {
    group: "storage",
    description: "The one NIXL storage plugin to use. Required with enable_nixl_storage. " +
      "Devices: GDS, GDS_MT and OBJ take cpu or cuda; POSIX, HF3FS and AZURE_BLOB cpu only.",
  }),
  nixl_pool_size: intOrNull({
    group: "storage",
    min: 0,
    description: "Static mode: number of file or object slots opened at start (one chunk " +
      "each, LRU eviction). 0 selects dynamic mode (one object or file per key). " +
      "Required with enable_nixl_storage.",
  }),
  nixl_path: strOrNull({
    group: "storage",
    description: "Directory of the storage files. Required for the file backends " +
      "(GDS, GDS_MT, POSIX, HF3FS).",
  }),
  nixl_backend_params: reg(z.record(z.string(), z.string()).default(() => ({})), {
    kind: "str_map",
    group: "storage",
    description: "Parameters handed to the storage plugin as strings (for OBJ: bucket, " +
      "endpoint_override, access_key, ...).",
  }),
  use_direct_io: bool(false, {
    group: "storage",
    description: "Open storage files with O_DIRECT (file backends).",
  }),
  nixl_presence_cache: bool(false, {
    group: "storage",
    description: "Dynamic mode: remember keys known to exist so repeated lookups stay local.",
  }),
  nixl_presence_cache_only: bool(false, {
    group: "storage",
    description: "Dynamic mode: answer lookups from the presence cache only. Needs " +
      "nixl_presence_cache.",
  }),
  nixl_async_put: bool(false, {
    group: "storage",
    description: "Dynamic mode: do not wait for a put to reach storage before returning.",
  }),
  nixl_use_hugepages: boolOrNull({
    group: "storage",
    description: "Deprecated (current LMCache moves it to local_cpu_use_hugepages in CPU " +
      "mode, ignores it in GPU mode, and removes it). kvport applies the same rule and " +
      "then drops it; its storage staging buffer always asks for transparent huge pages.",
  }),
  p2p_socket_recv_timeout_ms: int(30000, {
    group: "p2p",
    min: 1,
    unit: "ms",
    description: "P2P lookup socket receive timeout.",
  }),
  p2p_socket_send_timeout_ms: int(10000, {
    group: "p2p",
    min: 1,
    unit: "ms",
    description: "P2P lookup socket send timeout.",
  }),
  kvport_page_grants: bool(true, {
    group: "transfer",
    description: "kvport: PD and P2P channels enforce page grants (builtin engine; the nixl " +
      "engine cannot, and warns): a PD sender may WRITE only its AllocResponse pages until " +
      "they land, a P2P holder only the pages offered for that lookup. false: all pages " +
      "reachable, as in LMCache.",
  }),
  kvport_pd_credit_pages: int(16, {
    group: "transfer",
    min: 0,
    description: "kvport: PD sender page credits. A kvport sender (builtin engine) asks a " +
      "kvport receiver for this many free pages ahead of its requests (more: twice its " +
      "largest batch, and with requests in flight what their next batches and a refill's " +
      "round trip take), so that a request of at most that many chunks needs no " +
      "AllocRequest round trip; it tops them up in the background. 0: off (every batch " +
      "asks). LMCache peers never see it.",
  }),
  kvport_pd_credit_max: int(64, {
    group: "transfer",
    min: 0,
    description: "kvport: PD receiver, most credit pages one sender agent may hold (taken " +
      "only from pages free at that moment; 0: give no credits).",
  }),
  kvport_pd_credit_total: intOrNull({
    group: "transfer",
    min: 0,
    description: "kvport: PD receiver, most credit pages all senders hold together " +
      "(null: a quarter of the buffer's pages, but at least 16, a sender's default " +
      "kvport_pd_credit_pages, or half of them if that is less: a sender uses credits " +
      "only for a whole batch, so a quarter of a small buffer left its batches asking " +
      "while its credit pages sat idle).",
  }),
  p2p_max_retry_count: int(3, {
    group: "p2p",
    min: 0,
    description: "How many times a P2P lookup re-handshakes and retries after the peer " +
      "answers 'remote handler not initialized'.",
  }),
  curve_enabled: bool(false, {
    group: "security",
    description: "CURVE security (ZMTP RFC 26, as libzmq's) on the side channels between " +
      "kvport peers (PD handshake and allocation, P2P handshake and lookup): peers prove " +
      "their keys, strangers are refused, and every control message (agent metadata and " +
      "data-plane tokens included) is encrypted. Off by default (NULL, as LMCache); both " +
      "ends must agree. Keys come from the curve_*_file entries, never inline.",
  }),
  curve_server_secret_key_file: strOrNull({
    group: "security",
    description: "Path of the secret key the listening side channels (PD receiver, P2P " +
      "peers) prove: a 40-character Z85 key, 32 raw bytes, or a ZeroMQ certificate " +
      "(secret-key); mode 600. Required with curve_enabled on a side that listens.",
  }),
  curve_allowed_clients_file: strOrNull({
    group: "security",
    description: "Path of the allow-list of client public keys: a file with one Z85 key " +
      "per line ('# ' comments), or a directory of *.key certificates. Any other client is " +
      "refused. Required with curve_enabled on a side that listens.",
  }),
  curve_client_secret_key_file: strOrNull({
    group: "security",
    description: "Path of the secret key the connecting side channels (PD sender, P2P " +
      "lookups) prove; its public key must be in the servers' allow-list. Required with " +
      "curve_enabled on a side that connects.",
  }),
  curve_server_public_key_file: strOrNull({
    group: "security",
    description: "Path of the public key of the servers this side connects to (Z85, raw " +
      "or certificate public-key). Default: the public key of " +
      "curve_server_secret_key_file (peers sharing one server key).",
  }),
  kvport_agent_params: reg(z.record(z.string(), z.string()).default(() => ({})), {
    kind: "str_map",
    group: "transfer",
    description: "Parameters of the engine agents of the PD and P2P channels, as strings " +
      "(builtin engine: native/README.md 'Agent params'), e.g. the limits max_remotes, " +
      "max_read_queue, max_inbound_conns, hello_timeout_ms, max_notifs, max_notif_bytes, " +
      "max_grants, dereg_timeout_ms, or io_threads, transport. listen_host defaults to " +
      "the channel's host (pd_peer_host, p2p_host).",
  }),
};

const shape = {
  // core
  chunk_size: int(256, {
    group: "core",
    min: 1,
    unit: "tokens",
    description: "Tokens per KV chunk; one chunk fills one page of a transfer buffer.",
  }),
  local_cpu: bool(true, {
    group: "core",
    description: "Keep a CPU (DRAM) cache of chunks in this process.",
  }),
  max_local_cpu_size: float(5.0, {
    group: "core",
    min: 0,
    unit: "GB",
    description: "Size of the local CPU cache, in GB.",
  }),
  local_cpu_use_hugepages: bool(false, {
    group: "core",
    description: "LMCache: back its local CPU cache with HugeTLB pages. kvport keeps no such " +
      "cache and does not use it; read only to check extra_config.nixl_use_hugepages against " +
      "it, as LMCache does.",
  }),
  save_unfull_chunk: bool(false, {
    group: "core",
    description: "Also keep and send the last, partial chunk of a prompt. Forced to true " +
      "when enable_pd is true.",
  }),
  // PD
  enable_pd: bool(false, {
    group: "pd",
    description: "Disaggregated prefill: a prefiller (sender) pushes KV pages to a decoder " +
      "(receiver).",
  }),
  pd_role: enumOrNull(["sender", "receiver", "both"], {
    group: "pd",
    description: "This instance's PD role. Required with enable_pd.",
  }),
  pd_buffer_size: intOrNull({
    group: "pd",
    min: 1,
    unit: "bytes",
    description: "Size of the PD transfer buffer; aligned down to whole pages. Required " +
      "with enable_pd.",
  }),
  pd_buffer_device: deviceOrNull({
    group: "pd",
    description: "Where the PD buffer lives. Required with enable_pd.",
  }),
  pd_peer_host: strOrNull({
    group: "pd",
    description: "Receiver: the host it listens on (and senders connect to). Required for " +
      "a receiver.",
  }),
  pd_peer_init_port: portList({
    group: "pd",
    description: "Receiver: handshake port per TP rank. Required for a receiver; needs " +
      "one port per rank.",
  }),
  pd_peer_alloc_port: portList({
    group: "pd",
    description: "Receiver: allocation port per TP rank. Required for a receiver; needs " +
      "one port per rank.",
  }),
  pd_peer_query_port: portList({
    group: "pd",
    description: "Cache-query port per TP rank. Required with pd_bidirectional.",
  }),
  pd_proxy_host: strOrNull({
    group: "pd",
    description: "Sender: host of the proxy told when a request's KV has been sent. " +
      "Required for a sender unless pd_skip_proxy_notification.",
  }),
  pd_proxy_port: port({
    group: "pd",
    description: "Sender: port of that proxy. Required for a sender unless " +
      "pd_skip_proxy_notification.",
  }),
  pd_skip_proxy_notification: bool(false, {
    group: "pd",
    description: "Sender: do not notify a proxy (no pd_proxy_host/pd_proxy_port needed).",
  }),
  pd_backend_mode: enumOf(["sync", "async"], "async", {
    group: "pd",
    description: "LMCache's PD implementation selector; kept for compatibility.",
  }),
  pd_bidirectional: bool(false, {
    group: "pd",
    description: "Let a decoder query a prefiller's cache and READ hits (needs " +
      "pd_peer_query_port).",
  }),
  pd_allocation_timeout_sec: floatOrInf(Infinity, {
    group: "pd",
    gt: 0,
    unit: "s",
    description: "Deadline of one PD allocation round trip: a sender gives up after it, a " +
      "receiver stops waiting for free pages at 80% of it, so it always gives up first " +
      "(inf: 30 s; every wait has a limit).",
  }),
  pd_shutdown_timeout_sec: floatOrInf(5.0, {
    group: "pd",
    min: 0,
    unit: "s",
    description: "How long closing waits for in-flight PD work.",
  }),
  pd_max_prefill_len: int(0, {
    group: "pd",
    min: 0,
    unit: "tokens",
    description: "If > 0, fail at start when the PD buffer cannot hold this many tokens.",
  }),
  // transfer channel, NIXL
  transfer_channel: enumOrNull(["nixl", "mock_memory"], {
    group: "transfer",
    description: "Transfer channel type for PD and P2P. Required with enable_p2p.",
  }),
  nixl_backends: strList({
    group: "transfer",
    description: "NIXL transfer backends of the channel (null means [UCX]).",
  }),
  nixl_buffer_size: intOrNull({
    group: "storage",
    min: 1,
    unit: "bytes",
    description: "Size of the NIXL storage buffer. Required with " +
      "extra_config.enable_nixl_storage and a cuda buffer; with a cpu buffer current LMCache " +
      "forbids it (kvport still takes it as the staging size, with a deprecation warning). " +
      "Also the deprecated name of pd_buffer_size (see the nixl_buffer_size rule).",
  }),
  nixl_buffer_device: deviceOrNull({
    group: "storage",
    description: "Where the NIXL storage buffer lives. Required with " +
      "extra_config.enable_nixl_storage.",
  }),
  // P2P
  enable_p2p: bool(false, {
    group: "p2p",
    description: "Peer-to-peer KV sharing between instances through the controller's " +
      "lookup. Excludes enable_pd; needs enable_controller.",
  }),
  p2p_host: strOrNull({
    group: "p2p",
    description: "Host this instance's P2P ports listen on. Required with enable_p2p.",
  }),
  p2p_init_ports: portList({
    group: "p2p",
    description: "P2P handshake port per TP rank. Required with enable_p2p.",
  }),
  p2p_lookup_ports: portList({
    group: "p2p",
    description: "P2P lookup port per TP rank. Required with enable_p2p.",
  }),
  // controller
  enable_controller: bool(false, {
    group: "controller",
    description: "Register with an LMCache controller (needed by P2P lookups).",
  }),
  lmcache_instance_id: strOrNull({
    group: "controller",
    description: "This instance's id at the controller. Required with enable_controller.",
  }),
  controller_pull_url: strOrNull({
    group: "controller",
    description: "Controller address workers push to (host:port). Required with " +
      "enable_controller.",
  }),
  controller_reply_url: strOrNull({
    group: "controller",
    description: "Controller address for request/reply (host:port). Required with " +
      "enable_controller.",
  }),
  lmcache_worker_ports: portList({
    group: "controller",
    description: "Worker port per TP rank for controller commands. Required with " +
      "enable_controller.",
  }),
  lmcache_worker_ids: intList({
    group: "controller",
    min: 0,
    description: "TP ranks that run a controller worker (null = all ranks).",
  }),
  lmcache_worker_heartbeat_delay_time: int(10, {
    group: "controller",
    min: 0,
    unit: "s",
    description: "Delay before the first heartbeat to the controller.",
  }),
  lmcache_worker_heartbeat_time: intOrNull({
    group: "controller",
    min: 1,
    unit: "s",
    description: "Heartbeat period (null = no heartbeat).",
  }),
  extra_config: reg(z.object(extraShape).catchall(z.unknown()).prefault({}), {
    kind: "map",
    group: "core",
    description: "Open map of further settings (the extra_config.* keys below); " +
      "unknown entries are kept as given.",
  }),
};

const schemaObject = z.object(shape);

/** Internal: the keys' zod schemas, for the key table and the loader. */
export const topShape: Readonly<Record<string, z.ZodType>> = shape;
/** Internal: the `extra_config` keys' zod schemas. */
export const extraShapeMap: Readonly<Record<string, z.ZodType>> = extraShape;

/**
 * The typed keys of `extra_config` (NIXL storage, P2P timeouts); other entries are kept
 * as given.
 */
export interface ExtraConfig {
  /** Turn on the NIXL storage backend. Default `false`. */
  readonly enable_nixl_storage: boolean;
  /** The storage plugin. Default `null`. */
  readonly nixl_backend: NixlStorageBackendName | null;
  /** Slots of the static pool; 0 = dynamic mode. Default `null`. */
  readonly nixl_pool_size: number | null;
  /** Directory of the storage files. Default `null`. */
  readonly nixl_path: string | null;
  /** Plugin parameters. Default `{}`. */
  readonly nixl_backend_params: Readonly<Record<string, string>>;
  /** O_DIRECT for storage files. Default `false`. */
  readonly use_direct_io: boolean;
  /** Dynamic-mode presence cache. Default `false`. */
  readonly nixl_presence_cache: boolean;
  /** Dynamic mode: presence cache answers alone. Default `false`. */
  readonly nixl_presence_cache_only: boolean;
  /** Dynamic mode: asynchronous put. Default `false`. */
  readonly nixl_async_put: boolean;
  /** Deprecated hugepage switch; removed by the rules (always `null` after loading). */
  readonly nixl_use_hugepages?: boolean | null;
  /** P2P lookup receive timeout in ms. Default `30000`. */
  readonly p2p_socket_recv_timeout_ms: number;
  /** P2P lookup send timeout in ms. Default `10000`. */
  readonly p2p_socket_send_timeout_ms: number;
  /** P2P retries after "remote handler not initialized". Default `3`. */
  readonly p2p_max_retry_count: number;
  /** CURVE on the side channels. Default `false`. */
  readonly curve_enabled: boolean;
  /** Secret key file of the listening side. Default `null`. */
  readonly curve_server_secret_key_file: string | null;
  /** Allow-list of client public keys (file or directory). Default `null`. */
  readonly curve_allowed_clients_file: string | null;
  /** Secret key file of the connecting side. Default `null`. */
  readonly curve_client_secret_key_file: string | null;
  /** Public key file of the servers connected to. Default `null`. */
  readonly curve_server_public_key_file: string | null;
  /** Engine agent parameters of the PD and P2P channels. Default `{}`. */
  readonly kvport_agent_params: Readonly<Record<string, string>>;
  /** kvport: PD and P2P channels enforce page grants. Default `true`. */
  readonly kvport_page_grants: boolean;
  /** kvport: PD sender page credits asked for ahead of requests. Default `16`. */
  readonly kvport_pd_credit_pages: number;
  /** kvport: PD receiver, most credit pages per sender agent. Default `64`. */
  readonly kvport_pd_credit_max: number;
  /** kvport: PD receiver, most credit pages in all. Default `null` (a quarter of the pages). */
  readonly kvport_pd_credit_total: number | null;
  /** Any other entry, kept as given. */
  readonly [key: string]: unknown;
}

/**
 * The resolved, validated configuration: LMCache's keys in LMCache's spelling. Objects
 * returned by {@link loadConfig} are deeply frozen. See the README's configuration
 * reference (or `kvport config --help`) for each key's meaning.
 */
export interface KvportConfig {
  /** Tokens per chunk. Default `256`. */
  readonly chunk_size: number;
  /** Local CPU cache on. Default `true`. */
  readonly local_cpu: boolean;
  /** Local CPU cache size in GB. Default `5`. */
  readonly max_local_cpu_size: number;
  /** LMCache's HugeTLB switch for its CPU cache; unused by kvport. Default `false`. */
  readonly local_cpu_use_hugepages: boolean;
  /** Keep the last partial chunk. Default `false`; `true` whenever PD is on. */
  readonly save_unfull_chunk: boolean;
  /** Disaggregated prefill on. Default `false`. */
  readonly enable_pd: boolean;
  /** PD role. Default `null`. */
  readonly pd_role: PdRole | null;
  /** PD buffer size in bytes. Default `null`. */
  readonly pd_buffer_size: number | null;
  /** PD buffer device (`cpu`, `cuda`, `cuda:N`). Default `null`. */
  readonly pd_buffer_device: string | null;
  /** Receiver host. Default `null`. */
  readonly pd_peer_host: string | null;
  /** Receiver handshake ports by TP rank. Default `null`. */
  readonly pd_peer_init_port: readonly number[] | null;
  /** Receiver allocation ports by TP rank. Default `null`. */
  readonly pd_peer_alloc_port: readonly number[] | null;
  /** Cache-query ports by TP rank. Default `null`. */
  readonly pd_peer_query_port: readonly number[] | null;
  /** Proxy host. Default `null`. */
  readonly pd_proxy_host: string | null;
  /** Proxy port. Default `null`. */
  readonly pd_proxy_port: number | null;
  /** Sender skips the proxy notification. Default `false`. */
  readonly pd_skip_proxy_notification: boolean;
  /** LMCache PD implementation selector. Default `"async"`. */
  readonly pd_backend_mode: PdBackendMode;
  /** Bidirectional cache query. Default `false`. */
  readonly pd_bidirectional: boolean;
  /** Allocation retry limit in seconds. Default `Infinity`. */
  readonly pd_allocation_timeout_sec: number;
  /** Close timeout in seconds. Default `5`. */
  readonly pd_shutdown_timeout_sec: number;
  /** Minimum tokens the PD buffer must hold (0 = no check). Default `0`. */
  readonly pd_max_prefill_len: number;
  /** Transfer channel type. Default `null`. */
  readonly transfer_channel: TransferChannelType | null;
  /** NIXL transfer backends (null = `["UCX"]`). Default `null`. */
  readonly nixl_backends: readonly string[] | null;
  /** NIXL storage buffer size in bytes. Default `null`. */
  readonly nixl_buffer_size: number | null;
  /** NIXL storage buffer device. Default `null`. */
  readonly nixl_buffer_device: string | null;
  /** Legacy receiver port. Default `null`. */
  /** P2P sharing on. Default `false`. */
  readonly enable_p2p: boolean;
  /** P2P host. Default `null`. */
  readonly p2p_host: string | null;
  /** P2P handshake ports by TP rank. Default `null`. */
  readonly p2p_init_ports: readonly number[] | null;
  /** P2P lookup ports by TP rank. Default `null`. */
  readonly p2p_lookup_ports: readonly number[] | null;
  /** Controller on. Default `false`. */
  readonly enable_controller: boolean;
  /** Instance id at the controller. Default `null`. */
  readonly lmcache_instance_id: string | null;
  /** Controller pull address. Default `null`. */
  readonly controller_pull_url: string | null;
  /** Controller reply address. Default `null`. */
  readonly controller_reply_url: string | null;
  /** Controller worker ports by TP rank. Default `null`. */
  readonly lmcache_worker_ports: readonly number[] | null;
  /** Ranks running a controller worker. Default `null`. */
  readonly lmcache_worker_ids: readonly number[] | null;
  /** Heartbeat start delay in seconds. Default `10`. */
  readonly lmcache_worker_heartbeat_delay_time: number;
  /** Heartbeat period in seconds. Default `null`. */
  readonly lmcache_worker_heartbeat_time: number | null;
  /** Further settings; the NIXL storage and P2P keys are typed. */
  readonly extra_config: ExtraConfig;
}

type Equals<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true
  : false;
type Mutable<T> = { -readonly [K in keyof T]: T[K] };
// Compile-time check that the hand-written interface is exactly the schema's output.
const _keysMatch: Equals<keyof z.output<typeof schemaObject>, keyof KvportConfig> = true;
const _outputFits: z.output<typeof schemaObject> extends Mutable<KvportConfig> ? true : false =
  true;
void _keysMatch;
void _outputFits;

/**
 * The zod schema of a resolved configuration (after env conversion and alias mapping).
 * Parsing `{}` gives the defaults. Use it to check a configuration object built by other
 * means, or to derive a JSON Schema with `z.toJSONSchema`.
 *
 * @example
 * ```ts
 * import { configSchema } from "./schema.ts";
 * const defaults = configSchema.parse({});
 * console.log(defaults.chunk_size); // 256
 * ```
 */
export const configSchema: z.ZodType<KvportConfig, unknown> = schemaObject as z.ZodType<
  KvportConfig,
  unknown
>;
