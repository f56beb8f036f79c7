// CURVE between two kvport peers: a PD receiver and sender configured through
// extra_config.curve_* key files move KV pages over the nixl channel (built-in engine,
// TCP data plane), bytes checked; a sender whose key is not allowed gets nothing through;
// the configuration keys are checked by name.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  chunkBytes,
  loadConfig,
  MemoryFormat,
  nativeLibrary,
  PdReceiver,
  PdSender,
  sideChannelCurveFromConfig,
} from "../mod.ts";
import { curveKeyPair, z85Encode } from "../src/channel/wire/mod.ts";
import { checkFor, fillFor, testKey } from "./helpers/pd_util.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);

const SHAPE = [2, 2, 16, 32] as const;
const PAGE = chunkBytes(MemoryFormat.KV_2LTD, SHAPE, "bfloat16")!;

interface Keys {
  dir: string;
  serverSecret: string;
  serverPublic: string;
  clientSecret: string;
  strangerSecret: string;
  allowed: string;
}

function makeKeys(): Keys {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvport-pd-curve-"));
  const write = (name: string, key: Uint8Array, mode = 0o600) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, z85Encode(key) + "\n", { mode });
    return p;
  };
  const server = curveKeyPair();
  const client = curveKeyPair();
  const stranger = curveKeyPair();
  const allowed = path.join(dir, "allowed_clients");
  fs.writeFileSync(allowed, `# prefill workers\n${z85Encode(client.publicKey)}\n`);
  return {
    dir,
    serverSecret: write("server.key_secret", server.secretKey),
    serverPublic: write("server.key", server.publicKey, 0o644),
    clientSecret: write("client.key_secret", client.secretKey),
    strangerSecret: write("stranger.key_secret", stranger.secretKey),
    allowed,
  };
}

function configs(keys: Keys, clientSecret: string) {
  const common = {
    enable_pd: true,
    pd_buffer_size: 16 * PAGE,
    pd_buffer_device: "cpu",
    transfer_channel: "nixl",
    nixl_backends: ["UCX"],
    chunk_size: 16,
  };
  const dec = loadConfig({
    env: {},
    overrides: {
      ...common,
      pd_role: "receiver",
      pd_peer_host: "127.0.0.1",
      pd_peer_init_port: [7300],
      pd_peer_alloc_port: [7400],
      extra_config: {
        curve_enabled: true,
        curve_server_secret_key_file: keys.serverSecret,
        curve_allowed_clients_file: keys.allowed,
      },
    },
  }).config;
  const pre = loadConfig({
    env: {},
    overrides: {
      ...common,
      pd_role: "sender",
      pd_skip_proxy_notification: true,
      extra_config: {
        curve_enabled: true,
        curve_client_secret_key_file: clientSecret,
        curve_server_public_key_file: keys.serverPublic,
      },
    },
  }).config;
  return { dec, pre };
}

test("pd curve: a transfer between CURVE peers configured by key files, bytes checked", {
  skip,
}, async () => {
  const keys = makeKeys();
  try {
    const { dec, pre } = configs(keys, keys.clientSecret);
    await using rx = await PdReceiver.fromConfig(dec, {
      pageSize: PAGE,
      initPort: 0,
      allocPort: 0,
      engine: "builtin",
    });
    await using tx = await PdSender.fromConfig(pre, { pageSize: PAGE, engine: "builtin" });
    const ks = Array.from({ length: 6 }, (_, i) => testKey("curve", i));
    const pages = await tx.allocate(ks.length);
    ks.forEach((k, i) => fillFor(k, tx.channel.pages[pages[i]]));
    const r = await tx.send(
      {
        reqId: "curve",
        receiverHost: "127.0.0.1",
        receiverInitPort: [rx.initPort],
        receiverAllocPort: [rx.allocPort],
        isLastPrefill: true,
      },
      { keys: ks, pages, shape: SHAPE, dtype: "bfloat16", lastChunkToks: 16 },
    );
    assert.equal(r.sent, ks.length);
    await rx.waitFor(ks, 5000);
    for (const k of ks) assert.ok(checkFor(k, rx.view(k)!), `content of ${k}`);
  } finally {
    fs.rmSync(keys.dir, { recursive: true, force: true });
  }
});

test("pd curve: a sender whose key is not in the allow-list gets no page", { skip }, async () => {
  const keys = makeKeys();
  try {
    const { dec, pre } = configs(keys, keys.strangerSecret);
    await using rx = await PdReceiver.fromConfig(dec, {
      pageSize: PAGE,
      initPort: 0,
      allocPort: 0,
      engine: "builtin",
    });
    await using tx = await PdSender.fromConfig(pre, {
      pageSize: PAGE,
      engine: "builtin",
      handshakeTimeoutMs: 800,
    });
    const k = testKey("stranger", 0);
    const pages = await tx.allocate(1);
    fillFor(k, tx.channel.pages[pages[0]]);
    await assert.rejects(
      tx.send(
        {
          reqId: "stranger",
          receiverHost: "127.0.0.1",
          receiverInitPort: [rx.initPort],
          receiverAllocPort: [rx.allocPort],
          isLastPrefill: true,
        },
        { keys: [k], pages, shape: SHAPE, dtype: "bfloat16", lastChunkToks: 16 },
      ),
      /timed out|handshake/i,
    );
    assert.equal(rx.stats.keys, 0);
    assert.equal(rx.info(k), undefined);
  } finally {
    fs.rmSync(keys.dir, { recursive: true, force: true });
  }
});

test("pd curve: missing or unusable curve_* keys are named", () => {
  const keys = makeKeys();
  try {
    assert.equal(sideChannelCurveFromConfig({}, { listen: true, connect: true }), undefined);
    assert.throws(
      () => sideChannelCurveFromConfig({ curve_enabled: true }, { listen: true, connect: false }),
      /extra_config\.curve_server_secret_key_file is not set/,
    );
    assert.throws(
      () =>
        sideChannelCurveFromConfig(
          { curve_enabled: true, curve_client_secret_key_file: keys.clientSecret },
          { listen: false, connect: true },
        ),
      /extra_config\.curve_server_public_key_file is not set/,
    );
    // Without a public key file, the server secret key's public key is used.
    const shared = sideChannelCurveFromConfig({
      curve_enabled: true,
      curve_client_secret_key_file: keys.clientSecret,
      curve_server_secret_key_file: keys.serverSecret,
      curve_allowed_clients_file: keys.allowed,
    }, { listen: true, connect: true })!;
    assert.ok(shared.server && shared.client);
    fs.chmodSync(keys.clientSecret, 0o644);
    assert.throws(
      () =>
        sideChannelCurveFromConfig({
          curve_enabled: true,
          curve_client_secret_key_file: keys.clientSecret,
          curve_server_public_key_file: keys.serverPublic,
        }, { listen: false, connect: true }),
      /readable by others \(mode 644\): chmod 600/,
    );
  } finally {
    fs.rmSync(keys.dir, { recursive: true, force: true });
  }
});
