// CURVE on P2P's side channels: two instances sharing the cluster's server key, each
// with its own client key in the other's allow-list, look up and fetch chunks over the
// nixl channel (built-in engine), bytes checked; an instance whose client key is not
// allowed fetches nothing and the holder serves it nothing.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { nativeLibrary, sideChannelCurveFromConfig } from "../mod.ts";
import { curveKeyPair, z85Encode } from "../src/channel/wire/mod.ts";
import {
  checkFetched,
  instance,
  startRegistry,
  storeDoc,
  waitForHits,
} from "./helpers/p2p_util.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

test("p2p curve: lookup and fetch between CURVE instances; a stranger gets nothing", {
  skip,
}, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvport-p2p-curve-"));
  try {
    const write = (name: string, key: Uint8Array) => {
      const p = path.join(dir, name);
      fs.writeFileSync(p, z85Encode(key) + "\n", { mode: 0o600 });
      return p;
    };
    const server = curveKeyPair();
    const holderKey = curveKeyPair();
    const requesterKey = curveKeyPair();
    const strangerKey = curveKeyPair();
    const allowed = path.join(dir, "allowed");
    fs.writeFileSync(
      allowed,
      `${z85Encode(holderKey.publicKey)}\n${z85Encode(requesterKey.publicKey)}\n`,
    );
    const curveOf = (client: Uint8Array) =>
      sideChannelCurveFromConfig({
        curve_enabled: true,
        curve_server_secret_key_file: write("server.key_secret", server.secretKey),
        curve_allowed_clients_file: allowed,
        // Named by the key's hex: z85 text may hold "/", which no file name can.
        curve_client_secret_key_file: write(`client-${hex(client).slice(0, 16)}`, client),
      }, { listen: true, connect: true });
    const nixl = { channelType: "nixl", engine: "builtin" } as const;
    await using registry = await startRegistry();
    await using holder = await instance(registry, "holder", {
      ...nixl,
      curve: curveOf(holderKey.secretKey),
    });
    await using requester = await instance(registry, "requester", {
      ...nixl,
      curve: curveOf(requesterKey.secretKey),
    });
    await using stranger = await instance(registry, "stranger", {
      ...nixl,
      curve: curveOf(strangerKey.secretKey),
      handshakeTimeoutMs: 500,
      lookupSendTimeoutMs: 500,
      maxRetryCount: 0,
    });
    const keys = await storeDoc(holder, "A", 6);
    await waitForHits(requester, keys, 6);
    const r = await requester.retrieve(keys);
    assert.equal(r.error, undefined);
    assert.equal(r.hitChunks, 6);
    assert.equal(checkFetched(requester, r).bad, 0);

    await waitForHits(stranger, keys, 6);
    const s = await stranger.retrieve(keys);
    assert.equal(s.hitChunks, 0);
    assert.match(String(s.error), /handshake|timed out/i, String(s.error));
    assert.equal(holder.stats.served, 1, "the holder served the allowed requester only");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
