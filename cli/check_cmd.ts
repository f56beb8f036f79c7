/**
 * `kvport check`: what this machine can do. Reports the runtime, the native shim (path,
 * ABI version, engines built), whether NIXL was found (its plugins, or what was
 * searched), which backends the chosen engine serves, and the CUDA devices (or why
 * none); then proves the engine works by creating and destroying an agent. Exits 0 when
 * it does, 1 otherwise.
 *
 * @example
 * ```ts
 * import { checkCommand } from "./check_cmd.ts";
 * const code = await checkCommand.run(["--engine", "builtin", "--json"]);
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import process from "node:process";
import {
  cudaDevices,
  type EngineName,
  type EngineProbe,
  engines,
  nativeLibrary,
  NixlAgent,
  probeEngine,
  runtimeVersion,
} from "../src/agent.ts";
import type { Command } from "./commands.ts";

export type { Command } from "./commands.ts";
import { err, out } from "./io.ts";

/**
 * The help of `kvport check`.
 *
 * @example
 * ```ts
 * import { checkHelp } from "./check_cmd.ts";
 * console.log(checkHelp());
 * ```
 */
export function checkHelp(): string {
  return [
    "Usage: kvport check [--engine auto|builtin|nixl] [--backends UCX,...] [--listen-host H]",
    "                    [--lib PATH] [--json]",
    "",
    "Reports the runtime, the native shim (path, ABI version, engines built), whether",
    "NIXL was found (its plugins, or what was searched), the backends the engine serves",
    "and the CUDA devices; then creates and destroys an agent on the engine to prove it",
    "works. Exits 0 when it does, 1 otherwise, 2 on a usage error.",
    "",
    "Options:",
    "      --engine E      auto (default), builtin or nixl",
    "      --backends B    backends of the test agent, comma-separated (default UCX)",
    "      --listen-host H the address the test agent's data plane binds (default",
    "                      127.0.0.1; the line 'listening on' shows where it really did)",
    "      --lib PATH      libkvport.so to load (default: KVPORT_LIB, native/build/, the",
    "                      kvport build cache, $NIXL_PREFIX/lib)",
    "      --json          print one JSON object instead of text",
    "  -h, --help          this help",
  ].join("\n");
}

/** What `kvport check` found, as printed with `--json`. */
export interface CheckReport {
  /** True when an agent was created and destroyed on the asked engine. */
  ok: boolean;
  /** Runtime and version, e.g. `"Deno 2.9.6"`. */
  runtime: string;
  /** The shim, or `null` when it could not be loaded. */
  shim: { path: string; abiVersion: number } | null;
  /** Engines compiled into the shim. */
  enginesBuilt: string[];
  /** The probe of the NIXL engine, `null` when not probed. */
  nixl: EngineProbe | null;
  /** The asked engine, its probe and the backends it serves. */
  engine: { asked: string; probe: EngineProbe | null; servedBy: string; note: string };
  /** CUDA devices, and why there are none. */
  cuda: { count: number; reason: string };
  /** The test agent: its engine, backends and listen address, or the error. */
  agent: { engine: string; backends: string[]; listen: string } | { error: string } | null;
  /** Every failure, in order. */
  errors: string[];
}

/**
 * Runs the checks (without printing).
 *
 * @example
 * ```ts
 * import { runCheck } from "./check_cmd.ts";
 * const report = await runCheck({ engine: "builtin" });
 * console.log(report.ok, report.shim?.path);
 * ```
 */
export async function runCheck(
  options: {
    engine?: EngineName;
    backends?: string[];
    libraryPath?: string;
    /** Where the test agent's data plane listens (default: the engine's, 127.0.0.1). */
    listenHost?: string;
  } = {},
): Promise<CheckReport> {
  const asked = options.engine ?? "auto";
  const lib = { libraryPath: options.libraryPath };
  const report: CheckReport = {
    ok: false,
    runtime: runtimeVersion(),
    shim: null,
    enginesBuilt: [],
    nixl: null,
    engine: { asked, probe: null, servedBy: "", note: "" },
    cuda: { count: 0, reason: "not checked: the shim did not load" },
    agent: null,
    errors: [],
  };
  const fail = (e: unknown) => report.errors.push(e instanceof Error ? e.message : String(e));
  try {
    const info = await nativeLibrary(lib);
    report.shim = { path: info.path, abiVersion: info.abiVersion };
  } catch (e) {
    fail(e);
    return report;
  }
  try {
    report.enginesBuilt = await engines(lib);
    report.nixl = await probeEngine("nixl", lib);
    const probe = asked === "nixl" ? report.nixl : await probeEngine(asked, lib);
    report.engine.probe = probe;
    const resolved = probe.raw.engine ??
      (asked === "auto" ? (report.nixl.available ? "nixl" : "builtin") : asked);
    report.engine.servedBy = resolved;
    const served = probe.plugins.join(", ") || "no backend";
    // The reason NIXL is missing is said once, on the NIXL line; the others point to it.
    report.engine.note = asked === "auto" && resolved === "builtin"
      ? `${served} served by the builtin engine (NIXL not found: see the NIXL line)`
      : probe.available
      ? `${served} served by the ${resolved} engine`
      : asked === "nixl"
      ? "none: the nixl engine is not available (see the NIXL line)"
      : `none: engine ${asked} is not available: ${probe.reason || "no reason given"}`;
  } catch (e) {
    fail(e);
  }
  try {
    report.cuda = await cudaDevices(lib);
  } catch (e) {
    fail(e);
  }
  try {
    const agent = await NixlAgent.create({
      name: `kvport-check-${process.pid}`,
      engine: asked,
      backends: options.backends ?? ["UCX"],
      libraryPath: options.libraryPath,
      params: options.listenHost ? { listen_host: options.listenHost } : undefined,
    });
    report.agent = {
      engine: agent.engine,
      backends: [...agent.backends],
      listen: agent.listen,
    };
    await agent.close();
    report.ok = report.errors.length === 0;
  } catch (e) {
    report.agent = { error: e instanceof Error ? e.message : String(e) };
    fail(e);
  }
  return report;
}

/**
 * The report as text, one fact per line.
 *
 * @example
 * ```ts
 * import { formatCheck, runCheck } from "./check_cmd.ts";
 * console.log(formatCheck(await runCheck()));
 * ```
 */
export function formatCheck(r: CheckReport): string {
  const lines = [`runtime:  ${r.runtime}`];
  if (r.shim === null) {
    lines.push("shim:     not loaded");
  } else {
    lines.push(`shim:     ${r.shim.path} (ABI ${r.shim.abiVersion})`);
    lines.push(`engines:  ${r.enginesBuilt.join(", ") || "(none reported)"} built`);
    if (r.nixl) {
      const n = r.nixl;
      lines.push(
        n.available
          ? `NIXL:     found${n.version ? ` (version ${n.version})` : ""}; plugins ` +
            `${n.plugins.join(", ") || "(none)"}`
          : `NIXL:     not available${n.reason ? `: ${withoutPrefix(n.reason)}` : ""}` +
            (n.searched.length ? `; searched ${n.searched.join(", ")}` : ""),
      );
    }
    if (r.engine.note) lines.push(`backends: ${r.engine.note}`);
    lines.push(
      r.cuda.count > 0
        ? `CUDA:     ${r.cuda.count} device${r.cuda.count === 1 ? "" : "s"}`
        : `CUDA:     none (${r.cuda.reason})`,
    );
  }
  // Creating an agent on an engine the probe found missing fails for the reason already
  // printed: say so instead of printing it again.
  const known = r.engine.asked === "nixl" && r.nixl !== null && !r.nixl.available;
  if (r.agent && "error" in r.agent) {
    lines.push(
      known
        ? "agent:    not created: the nixl engine is not available (see the NIXL line)"
        : `agent:    failed on engine ${r.engine.asked}`,
    );
  } else if (r.agent) {
    lines.push(
      `agent:    created and destroyed on engine ${r.agent.engine} (backends ` +
        `${r.agent.backends.join(", ")}${
          r.agent.listen ? `, listening on ${r.agent.listen}` : ""
        })`,
    );
  }
  for (const e of r.errors) {
    if (known && r.agent && "error" in r.agent && e === r.agent.error) continue;
    lines.push(`error:    ${e.replaceAll("\n", "\n          ")}`);
  }
  lines.push(r.ok ? `ok: engine ${r.engine.asked} works` : `FAILED: engine ${r.engine.asked}`);
  return lines.join("\n");
}

/** `reason` without the engine's leading "NIXL is not available: " (the line says it). */
function withoutPrefix(reason: string): string {
  return reason.replace(/^NIXL is not available:\s*/, "");
}

async function runCheckCommand(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        engine: { type: "string", default: "auto" },
        backends: { type: "string" },
        lib: { type: "string" },
        "listen-host": { type: "string" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    err(`kvport check: ${e instanceof Error ? e.message : String(e)}\n\n${checkHelp()}`);
    return 2;
  }
  if (values.help) {
    out(checkHelp());
    return 0;
  }
  const engine = values.engine as string;
  if (engine !== "auto" && engine !== "builtin" && engine !== "nixl") {
    err(`kvport check: --engine must be auto, builtin or nixl, got "${engine}"`);
    return 2;
  }
  const report = await runCheck({
    engine,
    backends: values.backends?.split(",").map((s) => s.trim()).filter((s) => s),
    libraryPath: values.lib,
    listenHost: values["listen-host"],
  });
  if (values.json) out(JSON.stringify(report));
  else out(formatCheck(report));
  return report.ok ? 0 : 1;
}

/**
 * The `kvport check` command for the command table.
 *
 * @example
 * ```ts
 * import { checkCommand } from "./check_cmd.ts";
 * console.log(checkCommand.summary);
 * ```
 */
export const checkCommand: Command = {
  name: "check",
  summary: "Check the native shim, engines, NIXL, CUDA; create an agent to prove it works",
  run: runCheckCommand,
};
