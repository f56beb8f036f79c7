/**
 * The engine the GPU tests run on: the builtin engine, unless `KVPORT_ENGINE=nixl` asks
 * for the nixl engine (scripts/gpu_nixl.sh does, on a GPU machine with NIXL and UCX built
 * with CUDA). Checks of the builtin engine's own counters (`posts_cuda`, ...) run only on
 * the builtin engine.
 *
 * @example
 * ```ts
 * import { testEngine } from "./test_engine.ts";
 * console.log(testEngine); // "builtin" or "nixl"
 * ```
 * @module
 */
import process from "node:process";

/** `"nixl"` when `KVPORT_ENGINE=nixl`, else `"builtin"`. */
export const testEngine: "builtin" | "nixl" = process.env.KVPORT_ENGINE === "nixl"
  ? "nixl"
  : "builtin";
