/**
 * `kvport` as people use it, each case a child process: --version, the positional forms
 * users guess, errors in command-line terms, one exit-code rule (2 usage and
 * configuration, 130 on SIGINT with temporary directories removed), p2p-peer's keys,
 * --kv-shape checked first, check's NIXL line, host:port ids, the receiver's progress.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { VERSION } from "../ffi/version.ts";
import { PdSender } from "../mod.ts";
import { withEnvDefaults } from "./helpers/env_scope.ts";
import {
  cliEnv,
  processesMentioning,
  runKvport,
  scratch,
  startKvport,
} from "./helpers/kvport_cli.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SHIM = path.join(ROOT, "native/build/libkvport.so");
const nativeSkip = fs.existsSync(SHIM) ? false : `no shim at ${SHIM} (deno task build)`;

// The pd-receiver and demo cases check the builtin engine's lines (its data-plane
// address, "builtin engine"), and `kvport pd-receiver` and `kvport demo` have no engine
// option: where NIXL is installed, `auto` would take the nixl engine in the children.
// They inherit KVPORT_ENGINE=builtin (through cliEnv), set for that test only (a
// file-level setting would reach every later file of the run).
function builtinTest(name: string, options: { skip: string | false }, fn: () => Promise<void>) {
  test(name, options, withEnvDefaults({ KVPORT_ENGINE: "builtin" }, fn));
}

function storageYaml(dir: string): string {
  const file = path.join(dir, "lmcache-storage.yaml");
  fs.writeFileSync(
    file,
    [
      "nixl_buffer_size: 65536",
      "nixl_buffer_device: cpu",
      "extra_config:",
      "  enable_nixl_storage: true",
      "  nixl_backend: POSIX",
      "  nixl_pool_size: 4",
      `  nixl_path: ${path.join(dir, "pool")}`,
      "",
    ].join("\n"),
  );
  return file;
}

function decoderYaml(dir: string, bufferSize: number | null): string {
  const file = path.join(dir, "decoder.yaml");
  fs.writeFileSync(
    file,
    [
      "enable_pd: true",
      'transfer_channel: "nixl"',
      'pd_role: "receiver"',
      'pd_peer_host: "127.0.0.1"',
      "pd_peer_init_port: [7300]",
      "pd_peer_alloc_port: [7400]",
      ...(bufferSize === null ? [] : [`pd_buffer_size: ${bufferSize}`]),
      'pd_buffer_device: "cpu"',
      "nixl_backends: [UCX]",
      "",
    ].join("\n"),
  );
  return file;
}

test("kvport --version prints the package version, the one of deno.json and package.json", async () => {
  for (const flag of ["--version", "-V"]) {
    const r = await runKvport([flag]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), `kvport ${VERSION} (@kvport/nixl)`);
  }
  for (const file of ["deno.json", "package.json"]) {
    assert.equal(JSON.parse(fs.readFileSync(path.join(ROOT, file), "utf8")).version, VERSION);
  }
  const help = await runKvport(["--help"]);
  assert.match(help.stdout, /kvport --version/);
  assert.match(help.stdout, /130 stopped by SIGINT/);
  assert.match(help.stdout, /^ {2}build {2,}/m);
});

test(
  "kvport storage: KEY and FILE in place work; a configuration in place is refused with the usage line",
  {
    skip: nativeSkip,
  },
  async () => {
    const s = scratch("kvport-cli-storage-");
    try {
      const yaml = storageYaml(s.dir);
      const input = path.join(s.dir, "chunk.bin");
      const bytes = new Uint8Array(5000).map((_, i) => (i * 13 + 7) & 0xff);
      fs.writeFileSync(input, bytes);
      const put = await runKvport(
        ["storage", "put", "--config", yaml, "mykey", input, "--chunk-bytes", "8192"],
        { cwd: s.dir },
      );
      assert.equal(put.code, 0, put.stderr);
      const out = path.join(s.dir, "back.bin");
      const get = await runKvport(["storage", "get", "--config", yaml, "mykey", "--file", out], {
        cwd: s.dir,
      });
      assert.equal(get.code, 0, get.stderr);
      assert.deepEqual(new Uint8Array(fs.readFileSync(out)), bytes);

      const guessed = await runKvport(["storage", "get", yaml, "mykey"], { cwd: s.dir });
      assert.equal(guessed.code, 2);
      assert.match(guessed.stderr, /looks like a configuration file, not a key: --config /);
      assert.match(
        guessed.stderr,
        /^Usage: kvport storage get +--config F \[--key\] K \[--file PATH\]$/m,
      );
      const extra = await runKvport(["storage", "get", "--config", yaml, "mykey", "more"]);
      assert.equal(extra.code, 2);
      assert.match(extra.stderr, /unexpected argument "more"/);
      const lsFile = await runKvport(["storage", "ls", yaml]);
      assert.equal(lsFile.code, 2);
      assert.match(lsFile.stderr, /it goes after --config: --config /);
      const bogus = await runKvport(["storage", "list", "--config", yaml]);
      assert.equal(bogus.code, 2);
      assert.match(bogus.stderr, /unknown operation "list": expected one of put, get, ls, stats/);
    } finally {
      s.remove();
    }
  },
);

test("kvport storage: chunk size errors say --chunk-bytes, never pageSize", {
  skip: nativeSkip,
}, async () => {
  const s = scratch("kvport-cli-chunk-");
  try {
    const yaml = storageYaml(s.dir);
    const input = path.join(s.dir, "in");
    fs.writeFileSync(input, "hello");
    const none = await runKvport(["storage", "put", "--config", yaml, "k", input]);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /Pass --chunk-bytes N/);
    assert.doesNotMatch(none.stderr, /pageSize|alignBytes/);
    assert.equal(
      (await runKvport(["storage", "put", "--config", yaml, "k", input, "--chunk-bytes", "8192"]))
        .code,
      0,
    );
    const other = await runKvport(
      ["storage", "put", "--config", yaml, "k2", input, "--chunk-bytes", "4096"],
    );
    assert.equal(other.code, 2);
    assert.match(other.stderr, /holds chunks of 8192 bytes .*--chunk-bytes is 4096/);
    assert.doesNotMatch(other.stderr, /pageSize|alignBytes|this backend/);
  } finally {
    s.remove();
  }
});

test("kvport config FILE is kvport config --file FILE; two files are refused with the usage line", async () => {
  const s = scratch("kvport-cli-config-");
  try {
    const yaml = decoderYaml(s.dir, 1 << 20);
    const a = await runKvport(["config", yaml, "--json"]);
    const b = await runKvport(["config", "--file", yaml, "--json"]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout, b.stdout);
    assert.equal(JSON.parse(a.stdout).config.pd_buffer_size, 1 << 20);
    const two = await runKvport(["config", yaml, yaml]);
    assert.equal(two.code, 2);
    assert.match(two.stderr, /one configuration file at a time\nUsage: kvport config /);
  } finally {
    s.remove();
  }
});

test("no --config and LMCACHE_CONFIG_FILE unset: every command that needs one says exactly that, exit 2", async () => {
  for (const args of [["storage", "ls"], ["pd-receiver"], ["pd-sender"], ["p2p-peer"]]) {
    const r = await runKvport(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(
      r.stderr,
      /no --config given and LMCACHE_CONFIG_FILE is unset/,
      `${args.join(" ")}: ${r.stderr}`,
    );
  }
});

test(
  "a configuration the library rejects exits 2 and names the file",
  { skip: nativeSkip },
  async () => {
    const s = scratch("kvport-cli-badconf-");
    try {
      // Valid for the loader, not for this command: a prefiller's configuration.
      const yaml = path.join(s.dir, "prefiller.yaml");
      fs.writeFileSync(
        yaml,
        fs.readFileSync(decoderYaml(s.dir, 1 << 20), "utf8").replace('"receiver"', '"sender"') +
          "pd_proxy_host: 127.0.0.1\npd_proxy_port: 7500\n",
      );
      const r = await runKvport(["pd-receiver", "--config", yaml, "--kv-shape", "2,4,256,128"]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(
        r.stderr,
        /pd_role "sender", not "receiver" \(configuration .*prefiller\.yaml\)/,
      );
      const small = decoderYaml(s.dir, 4096);
      const t = await runKvport([
        "pd-receiver",
        "--config",
        small,
        "--kv-shape",
        "2,4,256,128",
        "--init-port",
        "0",
        "--alloc-port",
        "0",
      ]);
      assert.equal(t.code, 2, t.stderr);
      assert.match(
        t.stderr,
        /pd_buffer_size 4096 is smaller than one chunk of --kv-shape 2,4,256,128/,
      );
    } finally {
      s.remove();
    }
  },
);

test("kvport demo --kv-shape 1,2 is refused up front: exit 2, no process started, no directory left", async () => {
  const s = scratch("kvport-cli-demo-shape-");
  try {
    const r = await runKvport(["demo", "--kv-shape", "1,2"], {
      env: cliEnv({ TMPDIR: s.dir }),
    });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--kv-shape expects 2,LAYERS,TOKENS,HIDDEN .*got "1,2"/);
    assert.doesNotMatch(r.stderr + r.stdout, /last-chunk-tokens/);
    assert.deepEqual(fs.readdirSync(s.dir), []);
  } finally {
    s.remove();
  }
});

for (const demo of ["demo", "p2p-demo"]) {
  test(`SIGINT during kvport ${demo}: exit 130, children stopped, temporary directory removed`, {
    skip: nativeSkip,
  }, async () => {
    const s = scratch(`kvport-cli-int-${demo}-`);
    try {
      const p = startKvport([demo, "--chunks", "4", "--kv-shape", "2,4,256,128"], {
        env: cliEnv({ TMPDIR: s.dir }),
      });
      const line = await p.line(/configurations: /);
      const dir = /configurations: (\S+)/.exec(line)![1];
      assert.ok(dir.startsWith(s.dir) && fs.existsSync(dir), line);
      // The first child is up (the second is still starting): stop everything now.
      await p.line(demo === "demo" ? /decoder: / : /registry: /);
      assert.ok(processesMentioning(s.dir).length > 0, "no child runs yet");
      p.child.kill("SIGINT");
      assert.equal(await p.exited, 130, p.stderr.join("\n"));
      assert.ok(!fs.existsSync(dir), `${dir} is still there`);
      // The children were started with files in that directory: none may outlive it.
      for (let i = 0; i < 50 && processesMentioning(s.dir).length > 0; i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.deepEqual(processesMentioning(s.dir), []);
    } finally {
      s.remove();
    }
  });
}

test("SIGINT during kvport build: exit 130, no scratch directory and no library left", async () => {
  const s = scratch("kvport-cli-int-build-");
  try {
    const p = startKvport(["build", "--out", s.dir]);
    await p.line(/compiling/);
    p.child.kill("SIGINT");
    assert.equal(await p.exited, 130, p.stderr.join("\n"));
    assert.deepEqual(fs.readdirSync(s.dir), []);
  } finally {
    s.remove();
  }
});

test("kvport p2p-peer: the help's doc-named chunks work, store A then retrieve A finds them all", {
  skip: nativeSkip,
}, async () => {
  const help = await runKvport(["p2p-peer", "--help"]);
  assert.match(help.stdout, /\{"cmd":"retrieve","doc":"A","count":8\}/);
  assert.match(help.stdout, /vllm@p2p-demo@1@R@<fnv1a64 of "A\/0">@bfloat16/);
  const s = scratch("kvport-cli-p2p-");
  const procs: ReturnType<typeof startKvport>[] = [];
  try {
    const registry = startKvport([
      "p2p-registry",
      "--pull-url",
      "127.0.0.1:0",
      "--reply-url",
      "127.0.0.1:0",
      "--json",
    ]);
    procs.push(registry);
    const ready = JSON.parse(await registry.line(/"event":"ready"/));
    const yaml = (id: string) => {
      const file = path.join(s.dir, `${id}.yaml`);
      fs.writeFileSync(
        file,
        [
          "chunk_size: 256",
          "max_local_cpu_size: 0.01",
          "enable_p2p: true",
          'p2p_host: "127.0.0.1"',
          "p2p_init_ports: [8200]",
          "p2p_lookup_ports: [8300]",
          'transfer_channel: "nixl"',
          "enable_controller: true",
          `lmcache_instance_id: "${id}"`,
          `controller_pull_url: "${ready.pull}"`,
          `controller_reply_url: "${ready.reply}"`,
          "lmcache_worker_ports: [8400]",
          "lmcache_worker_heartbeat_time: 1",
          "",
        ].join("\n"),
      );
      return file;
    };
    const peer = (id: string) =>
      startKvport([
        "p2p-peer",
        "--config",
        yaml(id),
        "--init-port",
        "0",
        "--lookup-port",
        "0",
        "--kv-shape",
        "2,2,256,128",
        "--engine",
        "builtin",
        "--json",
      ]);
    const holder = peer("holder");
    const requester = peer("requester");
    procs.push(holder, requester);
    await Promise.all([holder.line(/"event":"ready"/), requester.line(/"event":"ready"/)]);
    holder.child.stdin!.write('{"cmd":"store","doc":"A","count":4}\n');
    const stored = JSON.parse(await holder.line(/"event":"stored"/));
    assert.equal(stored.keys.length, 4);
    assert.match(stored.keys[0], /^vllm@p2p-demo@1@0@[0-9a-f]{16}@bfloat16$/);
    // Reports reach the registry asynchronously: ask until it knows all four.
    let retrieved: Record<string, unknown> = {};
    for (let i = 0; i < 50 && retrieved.hits !== 4; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 100));
      const answer = requester.next(/"event":"retrieved"/);
      requester.child.stdin!.write('{"cmd":"retrieve","doc":"A","count":4}\n');
      retrieved = JSON.parse(await answer);
    }
    assert.equal(retrieved.hits, 4, JSON.stringify(retrieved));
    assert.equal(retrieved.bad, 0);
    for (const p of procs) p.child.stdin!.write('{"cmd":"exit"}\n');
    assert.deepEqual(await Promise.all(procs.map((p) => p.exited)), [0, 0, 0]);
  } finally {
    for (const p of procs) p.child.kill("SIGKILL");
    s.remove();
  }
});

test("kvport check says once why NIXL is missing; the dlopen reason is not doubled", {
  skip: nativeSkip,
}, async () => {
  const r = await runKvport(["check", "--engine", "nixl"]);
  if (/^NIXL: +found/m.test(r.stdout)) return; // NIXL installed here: nothing to check
  assert.equal(r.code, 1);
  const reason = /^NIXL: +not available: ([^;(]+)/m.exec(r.stdout)?.[1]?.trim();
  assert.ok(reason, r.stdout);
  assert.equal(r.stdout.split(reason).length - 1, 1, `said more than once:\n${r.stdout}`);
  assert.equal((r.stdout.match(/NIXL is not available/g) ?? []).length, 0, r.stdout);
  const lib = await runKvport(["check", "--lib", "/nonexistent/libkvport.so"]);
  assert.equal(lib.code, 1);
  assert.match(lib.stdout, /option: \/nonexistent\/libkvport\.so: cannot open shared object file/);
  assert.doesNotMatch(lib.stdout, /Could not open library: Could not open library/);
  assert.doesNotMatch(lib.stdout, /Failed to open library/);
});

builtinTest(
  "kvport pd-receiver: host:port in its lines, progress without --verify, 130 on SIGINT",
  {
    skip: nativeSkip,
  },
  async () => {
    const s = scratch("kvport-cli-rx-");
    const page = 2 * 4 * 256 * 128 * 2;
    const p = startKvport([
      "pd-receiver",
      "--config",
      decoderYaml(s.dir, 16 * page),
      "--init-port",
      "0",
      "--alloc-port",
      "0",
      "--kv-shape",
      "2,4,256,128",
      "--progress",
    ]);
    let tx: PdSender | undefined;
    try {
      const ready = await p.line(/^pd-receiver /);
      const m =
        /^pd-receiver 127\.0\.0\.1:(\d+): handshakes on 127\.0\.0\.1:\1, allocations on 127\.0\.0\.1:(\d+)/
          .exec(ready);
      assert.ok(m, ready);
      tx = await PdSender.create({ pageSize: page, bufferSize: 8 * page, engine: "builtin" });
      const pages = await tx.allocate(8);
      const keys = pages.map((_, i) => `vllm@cli@1@0@${i.toString(16)}@bfloat16`);
      await tx.send(
        {
          reqId: "cli-progress",
          receiverHost: "127.0.0.1",
          receiverInitPort: Number(m[1]),
          receiverAllocPort: Number(m[2]),
          isLastPrefill: true,
        },
        { keys, pages, shape: [2, 4, 256, 128], dtype: "bfloat16", lastChunkToks: 256 },
      );
      const progress = await p.line(/8 chunk\(s\) landed/, 10_000);
      assert.match(progress, /^pd-receiver: 8 chunk\(s\) landed, 4\.0 MiB, \d+\.\d\d GB\/s$/);
      p.child.kill("SIGINT");
      assert.equal(await p.exited, 130, p.stderr.join("\n"));
      assert.ok(
        p.stdout.some((l) => /8 chunk\(s\) received \(0 bad\); stopping on SIGINT/.test(l)),
      );
    } finally {
      await tx?.close();
      p.child.kill("SIGKILL");
      s.remove();
    }
  },
);

builtinTest("kvport demo: the decoder's ports come from the decoder, shown as host:port", {
  skip: nativeSkip,
}, async () => {
  const r = await runKvport(["demo", "--chunks", "2", "--kv-shape", "2,4,256,128"], {
    env: cliEnv({ TMPDIR: process.env.TMPDIR }),
  });
  assert.equal(r.code, 0, r.stderr);
  const m =
    /decoder: +builtin engine, handshakes on 127\.0\.0\.1:(\d+), allocations on 127\.0\.0\.1:(\d+)/
      .exec(r.stdout);
  assert.ok(m, r.stdout);
  // The decoder's configuration names LMCache's usual ports; the decoder bound others.
  assert.notEqual(m[1], "7300");
  assert.notEqual(m[2], "7400");
  // The warm request (one batch of 2) took page credits: no AllocRequest.
  assert.match(
    r.stdout,
    /batches: +cold 0 on page credits, 1 by AllocRequest; warm 1 on page credits, 0 by AllocRequest/,
  );
  assert.match(r.stdout, /result: +OK/);
});

/** A prefiller's configuration with a buffer of `bufferSize` bytes, notifying no proxy. */
function senderYaml(dir: string, name: string, bufferSize: number): string {
  const file = path.join(dir, name);
  fs.writeFileSync(
    file,
    [
      "enable_pd: true",
      'transfer_channel: "nixl"',
      'pd_role: "sender"',
      "pd_skip_proxy_notification: true",
      `pd_buffer_size: ${bufferSize}`,
      'pd_buffer_device: "cpu"',
      "nixl_backends: [UCX]",
      "",
    ].join("\n"),
  );
  return file;
}

builtinTest(
  "kvport pd-sender --fill-ahead: every request's pages filled first, each chunk verified; too small a buffer is refused",
  { skip: nativeSkip },
  async () => {
    const s = scratch("kvport-cli-ahead-");
    const page = 2 * 4 * 256 * 128 * 2;
    const shape = ["--kv-shape", "2,4,256,128"];
    const rx = startKvport([
      "pd-receiver",
      "--config",
      decoderYaml(s.dir, 16 * page),
      "--init-port",
      "0",
      "--alloc-port",
      "0",
      ...shape,
      "--verify",
      "--expect",
      "6",
      "--json",
    ]);
    try {
      const ready = JSON.parse(await rx.line(/"event":"ready"/));
      const portOf = (url: string) => url.slice(url.lastIndexOf(":") + 1);
      const sender = (yaml: string) =>
        runKvport([
          "pd-sender",
          "--config",
          yaml,
          "--receiver-host",
          "127.0.0.1",
          "--init-port",
          portOf(ready.init),
          "--alloc-port",
          portOf(ready.alloc),
          "--chunks",
          "2",
          "--batch",
          "2",
          "--requests",
          "3",
          ...shape,
          "--fill-ahead",
        ]);
      // 3 requests x 2 chunks need 6 pages: a buffer of 4 is refused, naming both numbers.
      const small = await sender(senderYaml(s.dir, "small.yaml", 4 * page));
      assert.equal(small.code, 2, small.stdout + small.stderr);
      assert.match(
        small.stderr,
        /--fill-ahead needs the pages of every request \(3 x 2 = 6\), the prefiller's buffer has 4 free: raise pd_buffer_size/,
      );
      const ok = await sender(senderYaml(s.dir, "fits.yaml", 6 * page));
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assert.equal(await rx.exited, 0, rx.stderr.join("\n"));
      const done = JSON.parse(rx.stdout.find((l) => l.includes('"event":"done"'))!);
      // Every chunk of the three requests landed and matched its key's bytes.
      assert.equal(done.landed, 6);
      assert.equal(done.bad, 0);
      assert.equal(done.bytes, 6 * page);
      assert.equal(done.verified, true);
    } finally {
      rx.child.kill("SIGKILL");
      s.remove();
    }
  },
);
