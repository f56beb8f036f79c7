/**
 * Skips that say why, in a form scripts/test_all.sh can count: `test`, `describe` and the
 * hooks of `node:test`, plus {@linkcode skipFor} to make a categorized skip reason.
 *
 * A test may skip only for a reason of an allowed category: it needs a GPU, it needs
 * NIXL, or it tests behaviour that exists in the other runtime only (the other runtime's
 * run covers it). Any other reason (no native library, no Python peer, not root) is a
 * plain skip on a developer's machine, but under CI (`CI=true`, or
 * `KVPORT_REQUIRE_NATIVE=1`, which .ci/run sets) the test runs and fails with the
 * reason instead: what CI does not test must not look green.
 *
 * Every skipped test is one line in `$KVPORT_SKIP_LOG` (when set):
 * `<category>\t<runtime>\t<test name>\t<reason>`. Each skipped test is registered
 * as a skipped test of its own (a skipped `describe` skips each of its tests, and its
 * hooks do not run), so Deno's and Bun's counts match the log: Bun does not even count
 * the tests of a `describe` that node:test itself skips.
 *
 * @module
 */
import { appendFileSync } from "node:fs";
import process from "node:process";
import * as nodeTest from "node:test";

/** Why a test may skip; only the first four may skip under CI. */
export type SkipCategory = "needs GPU" | "needs NIXL" | "needs Deno" | "needs Bun" | "other";

/** The categories that may skip under CI. */
export const ALLOWED_SKIPS: readonly SkipCategory[] = [
  "needs GPU",
  "needs NIXL",
  "needs Deno",
  "needs Bun",
];

const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
const runtime = isDeno ? "deno" : "bun";

/** True under CI: every test that needs only the CPU must run (and pass). */
export const requireAll: boolean = (() => {
  const env = process.env;
  const on = (v: string | undefined) => v !== undefined && /^(1|true|yes)$/i.test(v.trim());
  return on(env.CI) || on(env.KVPORT_REQUIRE_NATIVE);
})();

/**
 * A skip reason of an allowed category (pass it as `skip`), or `undefined` when
 * `reason` is: "needs GPU: no CUDA device (...)".
 */
export function skipFor(
  category: Exclude<SkipCategory, "other">,
  reason: string | undefined | false,
): string | undefined {
  return reason ? `${category}: ${reason}` : undefined;
}

/** Skip for a test of one runtime's behaviour, when running under the other. */
export function onlyUnder(wanted: "deno" | "bun", what: string): string | undefined {
  if (runtime === wanted) return undefined;
  return skipFor(wanted === "deno" ? "needs Deno" : "needs Bun", what);
}

function categoryOf(reason: string): SkipCategory {
  for (const c of ALLOWED_SKIPS) if (reason.startsWith(`${c}: `)) return c;
  return "other";
}

type Skip = string | boolean | undefined | null;
type TestFn = (t: nodeTest.TestContext) => void | Promise<void>;
type SuiteFn = () => void | Promise<void>;
/** The options our tests use (node:test's, of which `skip` is handled here). */
export interface TestOptions {
  /** A reason (see {@linkcode skipFor}); true or a bare string counts as "other". */
  skip?: Skip;
  /** node:test's timeout, in ms. */
  timeout?: number;
  /** node:test's concurrency. */
  concurrency?: number | boolean;
}

/** Skip reasons of the enclosing skipped `describe`s (innermost last) and their names. */
const skipping: { name: string; reason: string }[] = [];

function reasonText(skip: Skip): string | undefined {
  if (skip === undefined || skip === null || skip === false) return undefined;
  return skip === true || skip === "" ? "(no reason given)" : skip;
}

function record(category: SkipCategory, name: string, reason: string): void {
  const log = process.env.KVPORT_SKIP_LOG;
  if (!log) return;
  const clean = (s: string) => s.replace(/[\t\n]+/g, " ");
  try {
    appendFileSync(log, `${category}\t${runtime}\t${clean(name)}\t${clean(reason)}\n`);
  } catch { /* the count of the runner still shows the skip */ }
}

function split<F>(a: TestOptions | F | undefined, b: F | undefined): [TestOptions, F | undefined] {
  return typeof a === "function" ? [{}, a as F] : [(a as TestOptions) ?? {}, b];
}

/**
 * `node:test`'s `test`, with `skip` handled as the module doc says.
 *
 * @example
 * ```ts ignore
 * test("VRAM round trip", { skip: skipFor("needs GPU", gpuMissing) }, async () => {});
 * ```
 */
export function test(name: string, fn: TestFn): void;
export function test(name: string, options: TestOptions, fn: TestFn): void;
export function test(name: string, a: TestOptions | TestFn, b?: TestFn): void {
  const [options, fn] = split<TestFn>(a, b);
  const { skip, ...rest } = options;
  const outer = skipping.at(-1);
  const reason = reasonText(skip) ?? outer?.reason;
  const fullName = [...skipping.map((s) => s.name), name].join(" > ");
  if (reason === undefined) {
    nodeTest.test(name, rest, fn as TestFn);
    return;
  }
  const category = categoryOf(reason);
  if (category === "other" && requireAll) {
    // CI: the test fails with the reason it would have skipped for (a failure, not a
    // skip: the runner counts it, the log does not).
    nodeTest.test(outer ? fullName : name, rest, () => {
      throw new Error(
        `this test would skip (${reason}), and under CI (CI=true or KVPORT_REQUIRE_NATIVE=1) ` +
          "only tests that need a GPU or NIXL may skip: provide what it needs",
      );
    });
    return;
  }
  record(category, fullName, reason);
  nodeTest.test(outer ? fullName : name, { ...rest, skip: reason }, fn as TestFn);
}

/**
 * `node:test`'s `describe`. A skipped one registers each of its tests as skipped (its
 * hooks are not run): see the module doc.
 *
 * @example
 * ```ts ignore
 * describe("GPU channels", { skip: skipFor("needs GPU", gpuMissing) }, () => {
 *   test("cuda -> cuda", async () => {});
 * });
 * ```
 */
export function describe(name: string, fn: SuiteFn): void;
export function describe(name: string, options: TestOptions, fn: SuiteFn): void;
export function describe(name: string, a: TestOptions | SuiteFn, b?: SuiteFn): void {
  const [options, fn] = split<SuiteFn>(a, b);
  const { skip, ...rest } = options;
  const reason = reasonText(skip) ?? skipping.at(-1)?.reason;
  if (reason === undefined) {
    nodeTest.describe(name, rest, fn as SuiteFn);
    return;
  }
  // Skipped: its tests are registered here and now, each skipped, under this name.
  skipping.push({ name, reason });
  try {
    fn!();
  } finally {
    skipping.pop();
  }
}

type Hook = (fn: () => unknown, options?: { timeout?: number }) => void;

/** A hook that is dropped inside a skipped `describe` (nothing there runs). */
function hook(real: Hook): Hook {
  return (fn, options) => {
    if (skipping.length === 0) real(fn, options);
  };
}

/** `node:test`'s `before` (dropped inside a skipped `describe`). */
export const before: Hook = hook(nodeTest.before as Hook);
/** `node:test`'s `after` (dropped inside a skipped `describe`). */
export const after: Hook = hook(nodeTest.after as Hook);
/** `node:test`'s `beforeEach` (dropped inside a skipped `describe`). */
export const beforeEach: Hook = hook(nodeTest.beforeEach as Hook);
/** `node:test`'s `afterEach` (dropped inside a skipped `describe`). */
export const afterEach: Hook = hook(nodeTest.afterEach as Hook);
