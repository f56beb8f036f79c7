// docs/METRICS.md names every metric the code declares, and only those.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : e.name.endsWith(".ts") ? [p] : [];
  });
}

test("metrics docs: every declared metric is documented, every documented one declared", () => {
  const declared = new Set<string>();
  // Metrics are declared in each layer's metrics.ts (and the registry's own); other
  // files may use kvport_ names that are not metrics (wire fields such as kvport_reason).
  const declaring = (f: string) => /[/\\](metrics\.ts|metrics[/\\]registry\.ts)$/.test(f);
  for (const file of sources(path.join(root, "src")).filter(declaring)) {
    for (const m of fs.readFileSync(file, "utf8").matchAll(/"(kvport_[a-z0-9_]+)"/g)) {
      declared.add(m[1]);
    }
  }
  assert.ok(declared.size > 50, `found ${declared.size} metric names in src/`);
  const doc = fs.readFileSync(path.join(root, "docs/METRICS.md"), "utf8");
  const documented = new Set<string>();
  for (const m of doc.matchAll(/^\| `(kvport_[a-z0-9_]+)`/gm)) documented.add(m[1]);
  assert.deepEqual([...declared].filter((n) => !documented.has(n)), [], "declared, not documented");
  assert.deepEqual([...documented].filter((n) => !declared.has(n)), [], "documented, not declared");
});
