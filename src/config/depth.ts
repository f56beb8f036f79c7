/**
 * How deeply a configuration value may nest. LMCache's configuration is at most three
 * levels deep (`extra_config` -> `nixl_backend_params` -> a string); a value nested
 * thousands of levels deep is a mistake or an attack, and walking it recursively (to
 * validate, compare, print or freeze it) overflows the stack. Every value is measured
 * here, without recursion, before anything else looks at it.
 *
 * @module
 */

/**
 * The deepest nesting of lists and maps a configuration value may have (a scalar is 0,
 * `{}` and `[]` are 1, `{"a": [1]}` is 2).
 *
 * @example
 * ```ts
 * import { MAX_CONFIG_DEPTH } from "./depth.ts";
 * console.log(MAX_CONFIG_DEPTH); // 32
 * ```
 */
export const MAX_CONFIG_DEPTH = 32;

/**
 * The nesting depth of `value` (see {@linkcode MAX_CONFIG_DEPTH}), counted without
 * recursion and only up to `limit + 1`: a deeper value reports `limit + 1`. A value that
 * contains itself is as deep as the limit allows, plus one.
 *
 * @example
 * ```ts
 * import { valueDepth } from "./depth.ts";
 * valueDepth({ a: [1, { b: 2 }] }, 32); // 3
 * valueDepth(7, 32); // 0
 * ```
 */
export function valueDepth(value: unknown, limit: number = MAX_CONFIG_DEPTH): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== "object") continue;
    const here = depth + 1;
    if (here > deepest) deepest = here;
    if (deepest > limit) return limit + 1;
    for (const child of Object.values(v)) {
      if (child !== null && typeof child === "object") stack.push([child, here]);
    }
  }
  return deepest;
}

/**
 * Why `value` is too deep for a configuration, or `undefined` when it is not.
 *
 * @example
 * ```ts
 * import { depthProblem } from "./depth.ts";
 * depthProblem([[[1]]]); // undefined
 * ```
 */
export function depthProblem(value: unknown, limit: number = MAX_CONFIG_DEPTH): string | undefined {
  return valueDepth(value, limit) > limit
    ? `nested more than ${limit} levels deep; configuration values nest at most ${limit} levels`
    : undefined;
}
