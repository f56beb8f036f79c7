/**
 * The root's export list is deliberate: one name per thing, what users need, no
 * module internals. A name added or removed at the root fails here until the list
 * below changes with it (review the addition: does a user need it? under this name?).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import process from "node:process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import * as root from "../mod.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DENO = "Deno" in globalThis ? process.execPath : path.join(ROOT, "node_modules/deno/deno");

/** Runtime values at the root. */
const VALUES = [
  "ChannelError",
  "ChannelTimeoutError",
  "ConfigError",
  "DescList",
  "DeviceBuffer",
  "FILE_STORAGE_BACKENDS",
  "HostBuffer",
  "LeasePool",
  "MemoryFormat",
  "MockMemoryChannel",
  "NIXL_STORAGE_BACKENDS",
  "NO_EVICTION_CANDIDATE",
  "NativeBuffer",
  "NativeLibraryError",
  "NixlAgent",
  "NixlChannel",
  "NixlError",
  "NixlStorageBackend",
  "NixlTimeoutError",
  "P2PBackend",
  "P2PError",
  "PageGrant",
  "P2PRegistry",
  "PageLease",
  "MetricsRegistry",
  "metricsRegistry",
  "serveMetrics",
  "PdAllocRefusedError",
  "PD_BACKEND_MODES",
  "PD_ROLES",
  "PdReceiver",
  "PdSendError",
  "PdSender",
  "PreparedDescList",
  "ProxyNotifier",
  "Registration",
  "STORAGE_BACKEND_DEVICES",
  "STORAGE_FORMAT_VERSION",
  "Status",
  "StorageError",
  "StoragePage",
  "TRANSFER_CHANNELS",
  "TransferRequest",
  "VERSION",
  "chunkBytes",
  "chunkHashOf",
  "createTransferChannel",
  "sideChannelCurveFromConfig",
  "cudaDeviceCount",
  "cudaDevices",
  "dtypeBytes",
  "engines",
  "formatCacheKey",
  "loadConfig",
  "nativeLibrary",
  "parseCacheKey",
  "parseDevice",
  "probeEngine",
  "statusName",
  "storageOptionsFromConfig",
];

/** Types only (interfaces, aliases) at the root. */
const TYPES = [
  "AgentOptions",
  "AllocateOptions",
  "BufferDevice",
  "CacheKey",
  "ChannelErrorCode",
  "ChannelNotification",
  "ChannelPage",
  "ChannelRole",
  "ConfigIssue",
  "ConfigSource",
  "ConfigWarning",
  "ConfigWarningCode",
  "ConnectOptions",
  "ContainsOptions",
  "CreateTransferChannelOptions",
  "CudaInfo",
  "DescArrays",
  "DescArraysInput",
  "DescListOptions",
  "DisaggSpec",
  "EngineName",
  "EngineProbe",
  "EnvMap",
  "ExtraConfig",
  "FileRegion",
  "FromConfigOptions",
  "GrantArrays",
  "GrantOptions",
  "GrantRange",
  "KvportConfig",
  "LeaseAcquireOptions",
  "LeaseHooks",
  "LeaseOptions",
  "LeasePoolOptions",
  "LeaseReleaseEvent",
  "LeaseReleaseOptions",
  "LeaseReleaseReason",
  "LeaseState",
  "LibraryOptions",
  "LoadConfigOptions",
  "LoadedConfig",
  "LocalPages",
  "MemType",
  "MemoryRegion",
  "MockMemoryChannelOptions",
  "NativeLibraryInfo",
  "NixlChannelOptions",
  "NixlStorageBackendName",
  "NixlStorageOptions",
  "Notification",
  "ObjectRegion",
  "P2PBackendOptions",
  "P2PBackendStats",
  "P2PConfigLike",
  "P2PFetchResult",
  "P2PHolder",
  "P2PInstanceInfo",
  "P2PLookupAnswer",
  "P2PLookupResult",
  "P2PRegistryConfigLike",
  "P2PRegistryEvent",
  "P2PRegistryOptions",
  "P2PRegistryStats",
  "P2PStage",
  "P2PTimelineHook",
  "PageSource",
  "PdBackendMode",
  "PdChannelSettings",
  "PdConfigLike",
  "PdReceiverOptions",
  "PdReceiverStage",
  "PdReceiverStats",
  "PdRefusalReason",
  "PdWireGeneration",
  "MetricsServer",
  "ServeMetricsOptions",
  "PdRole",
  "PdSenderOptions",
  "PdSenderStage",
  "PdTimelineHook",
  "ProxyNotifierOptions",
  "PutResult",
  "ReceivedChunk",
  "RegisterInput",
  "SendBatch",
  "SendResult",
  "SideChannelCurve",
  "CurveConfigLike",
  "SideMessage",
  "SideMessageHandler",
  "StatusCode",
  "StorageConfigSource",
  "StorageErrorCode",
  "StorageFile",
  "StorageFileSet",
  "StorageIo",
  "StorageRegistration",
  "StorageOpenOptions",
  "StorageStats",
  "StoreCounters",
  "TimeoutDetails",
  "TransferChannel",
  "TransferChannelType",
  "TransferOp",
  "TransferOptions",
  "TransferSpec",
  "TransferState",
  "VerifyReads",
  "WaitOptions",
];

/** Names that must never be at the root again: internals, and second names of one thing. */
const NEVER = [
  "PagePool",
  "editDistance",
  "suggestKey",
  "unquote",
  "jsonReplacer",
  "formatValue",
  "coerceValue",
  "convertEnvText",
  "processEnv",
  "parseConfigYaml",
  "readYamlFile",
  "fnv1a64",
  "mockMemoryStore",
  "SerialQueue",
  "ChannelBase",
  "PeerHandle",
  "alignBuffer",
  "checkPattern",
  "fillPattern",
  "RegistryClient",
  "ChunkStore",
  "checkBackendDevice",
  "toStorageError",
  "objectName",
  "runtimeVersion",
  "BACKEND_DEVICES",
  "FILE_BACKENDS",
  "StorageBackendName",
  "SUPPORTED_CHANNEL_TYPES",
  "ChannelType",
];

interface DocParam {
  kind: string;
  name?: string;
  left?: { name?: string };
}
interface DocFn {
  params?: DocParam[];
}

function docSymbols(): { name: string; declarations: Record<string, unknown>[] }[] {
  const r = spawnSync(DENO, ["doc", "--json", "mod.ts"], {
    cwd: ROOT,
    encoding: "utf8",
    maxBuffer: 64 << 20,
  });
  assert.equal(r.status, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as { nodes: Record<string, { symbols: never[] }> };
  return Object.values(doc.nodes)[0].symbols;
}

test("the root exports exactly the listed values", () => {
  assert.deepEqual(Object.keys(root).sort(), [...VALUES].sort());
});

test("deno doc of the root lists exactly the listed values and types, no internals", () => {
  const names = docSymbols().map((s) => s.name).sort();
  assert.deepEqual(names, [...VALUES, ...TYPES].sort());
  for (const n of NEVER) assert.ok(!names.includes(n), `${n} is back at the root`);
});

test("no public signature has a defaulted parameter that deno doc would show as required", () => {
  const required: string[] = [];
  const scan = (where: string, fn: DocFn | undefined) => {
    for (const p of fn?.params ?? []) {
      if (p.kind === "assign") required.push(`${where}(${p.left?.name ?? "?"} = ...)`);
    }
  };
  for (const s of docSymbols()) {
    for (const d of s.declarations) {
      const def = d.def as Record<string, unknown> | undefined;
      if (d.kind === "function") scan(s.name, def as DocFn);
      if (d.kind === "class") {
        for (const m of (def?.methods ?? []) as { name: string; functionDef: DocFn }[]) {
          scan(`${s.name}.${m.name}`, m.functionDef);
        }
      }
    }
  }
  assert.deepEqual(required, [], "write `name?: T` and apply the default in the body");
});

test("without --allow-net, a listening mock channel rejects with Deno's permission message", () => {
  const r = spawnSync(
    DENO,
    ["run", "--allow-read", "--allow-env", "tests/fixtures/user/listen_without_net.ts"],
    { cwd: ROOT, encoding: "utf8", timeout: 60_000, env: { ...process.env, NO_COLOR: "1" } },
  );
  assert.equal(r.status, 0, `exit ${r.status}\n${r.stdout}\n${r.stderr}`);
  const line = JSON.parse(r.stdout.trim().split("\n").pop()!);
  assert.equal(line.rejected, "NotCapable", r.stdout);
  assert.match(line.message, /Requires net access to "127\.0\.0\.1:0".*--allow-net/);
});

test("PD and P2P size errors name pageSize and bufferSize, not the channel's alignBytes", async () => {
  for (const pageSize of [0, 1.5, -1]) {
    await assert.rejects(
      root.PdSender.create({ pageSize, bufferSize: 1 << 20, channelType: "mock_memory" }),
      (e: unknown) => {
        assert.ok(e instanceof root.ChannelError);
        assert.equal(e.code, "INVALID_ARGUMENT");
        assert.match(
          e.message,
          new RegExp(`^pageSize must be a positive integer .*got ${pageSize}$`),
        );
        return true;
      },
    );
  }
  await assert.rejects(
    root.PdReceiver.create({
      host: "127.0.0.1",
      initPort: 0,
      allocPort: 0,
      pageSize: 1 << 20,
      bufferSize: 1000,
      channelType: "mock_memory",
    }),
    /bufferSize 1000 is smaller than one page \(pageSize 1048576\)/,
  );
  await assert.rejects(
    root.P2PBackend.create({
      instanceId: "x",
      host: "127.0.0.1",
      initPort: 0,
      lookupPort: 0,
      pageSize: 0,
      bufferSize: 1 << 20,
      registryPullUrl: "127.0.0.1:1",
      registryReplyUrl: "127.0.0.1:1",
      channelType: "mock_memory",
    }),
    (e: unknown) => {
      assert.doesNotMatch(String(e), /alignBytes/);
      assert.match(String(e), /pageSize must be a positive integer/);
      return true;
    },
  );
});
