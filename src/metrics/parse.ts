/**
 * Reads the Prometheus text exposition format back into families: what `kvport stats`
 * shows from a `/metrics` URL, and how tests check the text a process serves. Histogram
 * series (`_bucket`, `_sum`, `_count`) are gathered under their family; samples of
 * families without a `# TYPE` line are `"untyped"`. A malformed line is an error naming
 * its number.
 *
 * @example
 * ```ts
 * import { parseExposition } from "./parse.ts";
 * const [f] = parseExposition('# TYPE a_total counter\na_total{op="WRITE"} 3\n');
 * console.log(f.name, f.samples); // a_total [ { labels: { op: "WRITE" }, value: 3 } ]
 * ```
 * @module
 */

import { MetricsError } from "./family.ts";
import type { FamilySnapshot, HistogramSample, ValueSample } from "./snapshot.ts";

function parseNumber(text: string, line: number): number {
  if (text === "+Inf" || text === "Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  const v = Number(text);
  if (text === "" || Number.isNaN(v)) {
    throw new MetricsError(`line ${line}: expected a number, got ${JSON.stringify(text)}`);
  }
  return v;
}

/** `name{labels} value [timestamp]` split into its parts. */
function parseSample(
  text: string,
  line: number,
): { name: string; labels: Record<string, string>; value: number } {
  const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(text);
  if (!m) throw new MetricsError(`line ${line}: expected a metric name, got ${text}`);
  const name = m[1];
  let at = name.length;
  const labels: Record<string, string> = {};
  if (text[at] === "{") {
    at++;
    for (;;) {
      while (text[at] === " ") at++;
      if (text[at] === "}") {
        at++;
        break;
      }
      const lm = /^([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"/.exec(text.slice(at));
      if (!lm) throw new MetricsError(`line ${line}: malformed labels in ${text}`);
      at += lm[0].length;
      let value = "";
      for (;;) {
        const c = text[at++];
        if (c === undefined) throw new MetricsError(`line ${line}: unterminated label value`);
        if (c === '"') break;
        if (c === "\\") {
          const e = text[at++];
          value += e === "n" ? "\n" : e;
        } else value += c;
      }
      labels[lm[1]] = value;
      while (text[at] === " ") at++;
      if (text[at] === ",") at++;
      else if (text[at] !== "}") {
        throw new MetricsError(`line ${line}: malformed labels in ${text}`);
      }
    }
  }
  const rest = text.slice(at).trim().split(/\s+/);
  if (rest.length < 1 || rest.length > 2 || rest[0] === "") {
    throw new MetricsError(`line ${line}: expected "value [timestamp]" after ${name}`);
  }
  return { name, labels, value: parseNumber(rest[0], line) };
}

/**
 * Parses text in the exposition format (0.0.4) into families, in order of appearance.
 *
 * @example
 * ```ts
 * import { parseExposition } from "./parse.ts";
 * const families = parseExposition("# TYPE app_up gauge\napp_up 1\n");
 * console.log(families[0].samples); // [{ labels: {}, value: 1 }]
 * ```
 */
export function parseExposition(text: string): FamilySnapshot[] {
  const families = new Map<string, FamilySnapshot>();
  const histo = new Map<string, HistogramSample>();
  const family = (name: string): FamilySnapshot => {
    let f = families.get(name);
    if (!f) {
      f = { name, help: "", type: "untyped", samples: [] };
      families.set(name, f);
    }
    return f;
  };
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].trim();
    const n = i + 1;
    if (raw === "") continue;
    if (raw.startsWith("#")) {
      const m = /^#\s*(HELP|TYPE)\s+([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(.*)$/.exec(raw);
      if (!m) continue; // a comment
      const f = family(m[2]);
      if (m[1] === "HELP") f.help = m[3].replace(/\\n/g, "\n").replace(/\\\\/g, "\\");
      else {
        const t = m[3].trim();
        if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(t)) {
          throw new MetricsError(`line ${n}: unknown type ${JSON.stringify(t)}`);
        }
        f.type = t === "summary" ? "untyped" : t as FamilySnapshot["type"];
      }
      continue;
    }
    const s = parseSample(raw, n);
    const base = /^(.*)_(bucket|sum|count)$/.exec(s.name);
    const hf = base ? families.get(base[1]) : undefined;
    if (base && hf?.type === "histogram") {
      const { le, ...labels } = s.labels;
      const key = `${base[1]}\u0000${JSON.stringify(Object.entries(labels).sort())}`;
      let h = histo.get(key);
      if (!h) {
        h = { labels, buckets: [], sum: 0, count: 0 };
        histo.set(key, h);
        hf.samples.push(h);
      }
      if (base[2] === "bucket") {
        if (le === undefined) throw new MetricsError(`line ${n}: ${s.name} without le`);
        h.buckets.push([parseNumber(le, n), s.value]);
      } else if (base[2] === "sum") h.sum = s.value;
      else h.count = s.value;
      continue;
    }
    const sample: ValueSample = { labels: s.labels, value: s.value };
    family(s.name).samples.push(sample);
  }
  for (const h of histo.values()) h.buckets.sort((a, b) => a[0] - b[0]);
  return [...families.values()];
}
