// Listen where configured (issue 13.2): every listener of a PD receiver (handshake,
// allocation, data plane), a P2P instance (handshake, lookup, data plane), the P2P
// registry and the PD proxy binds the configured host, and is not reachable on another
// local address (127.0.0.2 vs 127.0.0.1: both are on lo). The addresses reported are the
// ones really bound; the CLI's ready line shows them.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import {
  nativeLibrary,
  NixlChannel,
  P2PBackend,
  P2PRegistry,
  PdReceiver,
  ProxyNotifier,
} from "../mod.ts";
import { RepSocket } from "../src/channel/wire/mod.ts";
import { cliEnv, startKvport } from "./helpers/kvport_cli.ts";
import { withEnvDefaults } from "./helpers/env_scope.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);

/** Whether a TCP connection to host:port is accepted (false: refused). */
function reachable(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ host, port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

function split(hostPort: string): { host: string; port: number } {
  const i = hostPort.lastIndexOf(":");
  return {
    host: hostPort.slice(0, i).replace(/^tcp:\/\//, ""),
    port: Number(hostPort.slice(i + 1)),
  };
}

/** Each `host:port` is bound on `host` exactly: reachable there, refused on `other`. */
async function boundOnly(urls: string[], host: string, other: string): Promise<void> {
  for (const url of urls) {
    const ep = split(url);
    assert.equal(ep.host, host, `${url} is not bound on ${host}`);
    assert.ok(await reachable(host, ep.port), `${url} not reachable on ${host}`);
    assert.equal(await reachable(other, ep.port), false, `${url} is reachable on ${other}`);
  }
}

const PAGE = 4096;

test("listen: a PD receiver binds handshake, allocation and data plane to pd_peer_host", {
  skip,
}, async () => {
  for (const [host, other] of [["127.0.0.2", "127.0.0.1"], ["127.0.0.1", "127.0.0.2"]]) {
    await using rx = await PdReceiver.create({
      host,
      initPort: 0,
      allocPort: 0,
      bufferSize: 8 * PAGE,
      pageSize: PAGE,
      chunkSize: 16,
      engine: "builtin",
    });
    assert.ok(rx.channel instanceof NixlChannel);
    const data = rx.channel.agent.listen;
    await boundOnly([rx.initUrl, rx.allocUrl, data], host, other);
  }
});

test(
  "listen: a P2P instance binds handshake, lookup and data plane to p2p_host; the registry its URLs",
  {
    skip,
  },
  async () => {
    await using registry = await P2PRegistry.listen({
      pullUrl: "127.0.0.2:0",
      replyUrl: "127.0.0.2:0",
    });
    await boundOnly([registry.pullUrl, registry.replyUrl], "127.0.0.2", "127.0.0.1");
    await using p2p = await P2PBackend.create({
      instanceId: "listen-test",
      host: "127.0.0.2",
      initPort: 0,
      lookupPort: 0,
      pageSize: PAGE,
      bufferSize: 8 * PAGE,
      engine: "builtin",
      registryPullUrl: registry.pullUrl,
      registryReplyUrl: registry.replyUrl,
    });
    assert.ok(p2p.channel instanceof NixlChannel);
    await boundOnly(
      [p2p.initUrl, p2p.lookupUrl, p2p.channel.agent.listen],
      "127.0.0.2",
      "127.0.0.1",
    );
  },
);

test("listen: the PD proxy binds its host; a host name is reported as the address bound", async () => {
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.2", port: 0 });
  await boundOnly([proxy.url], "127.0.0.2", "127.0.0.1");
  await using rep = await RepSocket.bind("tcp://localhost:0");
  const { host } = split(rep.endpoints[0]);
  assert.ok(host === "127.0.0.1" || host === "[::1]", rep.endpoints[0]);
});

// `kvport pd-receiver` has no engine option: under `auto`, with NIXL installed, the child
// would take the nixl engine, which has no data-plane listener of its own (`data` is
// null). It inherits KVPORT_ENGINE=builtin (through cliEnv), set for this test only.
test(
  "listen: kvport pd-receiver's ready line shows the addresses really bound",
  {
    skip,
  },
  withEnvDefaults({ KVPORT_ENGINE: "builtin" }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvport-listen-"));
    const yaml = path.join(dir, "decoder.yaml");
    fs.writeFileSync(
      yaml,
      [
        "enable_pd: true",
        'transfer_channel: "nixl"',
        'pd_role: "receiver"',
        'pd_peer_host: "127.0.0.2"',
        "pd_peer_init_port: [7300]",
        "pd_peer_alloc_port: [7400]",
        `pd_buffer_size: ${16 * 2 * 4 * 256 * 128 * 2}`,
        'pd_buffer_device: "cpu"',
        "nixl_backends: [UCX]",
        "",
      ].join("\n"),
    );
    const p = startKvport(
      [
        "pd-receiver",
        "--config",
        yaml,
        "--init-port",
        "0",
        "--alloc-port",
        "0",
        "--kv-shape",
        "2,4,256,128",
        "--json",
      ],
      { env: cliEnv() },
    );
    try {
      const ready = JSON.parse(await p.line(/"event":"ready"/, 30_000));
      await boundOnly([ready.init, ready.alloc, ready.data], "127.0.0.2", "127.0.0.1");
    } finally {
      p.child.kill("SIGKILL");
      await p.exited;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }),
);

test("listen: extra_config.kvport_agent_params reach the agents of PD and P2P channels", {
  skip,
}, async () => {
  const { loadConfig } = await import("../mod.ts");
  const params = { max_remotes: "7", max_read_queue: "99", max_inbound_conns: "5" };
  const dec = loadConfig({
    env: {},
    overrides: {
      enable_pd: true,
      pd_role: "receiver",
      pd_buffer_size: 8 * PAGE,
      pd_buffer_device: "cpu",
      pd_peer_host: "127.0.0.2",
      pd_peer_init_port: [7300],
      pd_peer_alloc_port: [7400],
      transfer_channel: "nixl",
      extra_config: { kvport_agent_params: params },
    },
  }).config;
  await using rx = await PdReceiver.fromConfig(dec, {
    pageSize: PAGE,
    initPort: 0,
    allocPort: 0,
    engine: "builtin",
  });
  assert.ok(rx.channel instanceof NixlChannel);
  const info = rx.channel.agent.info();
  assert.deepEqual(
    [info.max_remotes, info.max_read_queue, info.max_inbound_conns],
    ["7", "99", "5"],
  );
  // listen_host still follows pd_peer_host when the parameters do not name it.
  assert.match(info.listen, /^127\.0\.0\.2:\d+$/);
});
