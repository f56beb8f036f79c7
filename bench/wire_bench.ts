/**
 * The control plane's cost, NULL against CURVE: REQ/REP round trips of 1 MiB messages
 * (each way) and of 64-byte messages over loopback, each as a ratio to the raw TCP socket
 * doing the same exchange in the same run; CURVE's throughput also as a ratio to its
 * crypto alone (tweetnacl seal + open of the same bytes, both ways).
 *
 * Run: `deno run -A bench/wire_bench.ts` or `bun bench/wire_bench.ts`.
 *
 * @module
 */
import * as net from "node:net";
import nacl from "tweetnacl";
import {
  curveKeyPair,
  RepSocket,
  ReqSocket,
  type WireSocketOptions,
} from "../src/channel/wire/mod.ts";
import { Report } from "./lib.ts";

const BIG = 1 << 20;
const SMALL = 64;
const MIN_MS = 1500;

/** Raw TCP: the client writes `size` bytes, the server answers `size` bytes; round trips/s. */
async function rawTcp(size: number): Promise<number> {
  const server = net.createServer((s) => {
    let got = 0;
    const reply = new Uint8Array(size);
    s.setNoDelay(true);
    s.on("data", (d: Uint8Array) => {
      got += d.length;
      while (got >= size) {
        got -= size;
        s.write(reply);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const c = net.createConnection({ host: "127.0.0.1", port });
  c.setNoDelay(true);
  await new Promise<void>((r) => c.once("connect", () => r()));
  const body = new Uint8Array(size);
  let got = 0;
  let wake: () => void = () => {};
  c.on("data", (d: Uint8Array) => {
    got += d.length;
    if (got >= size) {
      got -= size;
      wake();
    }
  });
  const once = () =>
    new Promise<void>((r) => {
      wake = r;
      c.write(body);
    });
  for (let i = 0; i < 20; i++) await once();
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < MIN_MS) {
    await once();
    n++;
  }
  const rate = n / ((performance.now() - t0) / 1000);
  c.destroy();
  await new Promise<void>((r) => server.close(() => r()));
  return rate;
}

/** REQ/REP echo of `size`-byte messages; round trips/s. */
async function reqRep(size: number, curve: boolean): Promise<number> {
  const s = curveKeyPair();
  const c = curveKeyPair();
  const serverOpts: WireSocketOptions = curve
    ? { curve: { server: true, secretKey: s.secretKey, allowedClients: [c.publicKey] } }
    : {};
  const clientOpts: WireSocketOptions = curve
    ? { curve: { secretKey: c.secretKey, serverKey: s.publicKey } }
    : {};
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", serverOpts);
  const reply = new Uint8Array(size);
  rep.serve(() => [reply]).catch(() => {});
  await using req = ReqSocket.connect(rep.endpoints[0], { timeoutMs: 10_000, ...clientOpts });
  const body = new Uint8Array(size);
  for (let i = 0; i < 20; i++) await req.request([body]);
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < MIN_MS) {
    await req.request([body]);
    n++;
  }
  return n / ((performance.now() - t0) / 1000);
}

/** tweetnacl alone: seal and open `size` bytes once each way; round trips/s. */
function cryptoOnly(size: number): number {
  const a = nacl.box.keyPair();
  const b = nacl.box.keyPair();
  const k = nacl.box.before(b.publicKey, a.secretKey);
  const nonce = new Uint8Array(24);
  const plain = new Uint8Array(size + 1);
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < MIN_MS) {
    for (let way = 0; way < 2; way++) {
      const box = nacl.box.after(plain, nonce, k);
      if (!nacl.box.open.after(box, nonce, k)) throw new Error("box does not open");
    }
    n++;
  }
  return n / ((performance.now() - t0) / 1000);
}

const report = new Report("wire");
const gbps = (rate: number, size: number) => (rate * 2 * size) / 1e9;

const rawBig = await rawTcp(BIG);
const nullBig = await reqRep(BIG, false);
const curveBig = await reqRep(BIG, true);
const cryptoBig = cryptoOnly(BIG);
report.add({
  name: "null_reqrep_1MiB",
  value: gbps(nullBig, BIG),
  unit: "GB/s",
  limit: gbps(rawBig, BIG),
  limitName: "raw TCP echo",
});
report.add({
  name: "curve_reqrep_1MiB",
  value: gbps(curveBig, BIG),
  unit: "GB/s",
  limit: gbps(rawBig, BIG),
  limitName: "raw TCP echo",
});
report.add({
  name: "curve_reqrep_1MiB_vs_crypto",
  value: gbps(curveBig, BIG),
  unit: "GB/s",
  limit: gbps(cryptoBig, BIG),
  limitName: "tweetnacl seal+open",
});

const rawSmall = await rawTcp(SMALL);
const nullSmall = await reqRep(SMALL, false);
const curveSmall = await reqRep(SMALL, true);
// Latencies: the limit is the smaller figure, so the ratio reads "x slower than raw".
report.add({
  name: "null_reqrep_64B_rtt",
  value: 1e6 / nullSmall,
  unit: "us",
  limit: 1e6 / rawSmall,
  limitName: "raw TCP ping-pong",
});
report.add({
  name: "curve_reqrep_64B_rtt",
  value: 1e6 / curveSmall,
  unit: "us",
  limit: 1e6 / rawSmall,
  limitName: "raw TCP ping-pong",
});
report.finish({ sizes: { big: BIG, small: SMALL }, minMs: MIN_MS });
