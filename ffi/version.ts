/**
 * The version of this package, the same as `version` in deno.json and package.json (a
 * test checks it). It names the directory of the shim that `kvport build` compiles, so
 * a library built for one release is never loaded by another.
 *
 * @example
 * ```ts
 * import { VERSION } from "./version.ts";
 * console.log(`@kvport/nixl ${VERSION}`);
 * ```
 * @module
 */

/** This package's version. */
export const VERSION = "0.1.0";
