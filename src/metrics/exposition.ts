/**
 * The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` lines,
 * then one line per sample; a histogram's series are `_bucket{le=...}` (cumulative,
 * ending with `+Inf`), `_sum` and `_count`.
 *
 * @example
 * ```ts
 * import { formatExposition } from "./exposition.ts";
 * console.log(formatExposition([{
 *   name: "app_requests_total", help: "Requests.", type: "counter",
 *   samples: [{ labels: { status: "ok" }, value: 3 }],
 * }]));
 * // # HELP app_requests_total Requests.
 * // # TYPE app_requests_total counter
 * // app_requests_total{status="ok"} 3
 * ```
 * @module
 */

import { type FamilySnapshot, isHistogramSample } from "./snapshot.ts";

/**
 * A number as the text format writes it (`+Inf`, `-Inf`, `NaN`, else JavaScript's form).
 *
 * @example
 * ```ts
 * import { formatSampleValue } from "./exposition.ts";
 * console.log(formatSampleValue(Infinity), formatSampleValue(0.25)); // +Inf 0.25
 * ```
 */
export function formatSampleValue(v: number): string {
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  if (Number.isNaN(v)) return "NaN";
  return String(v);
}

/**
 * A label value escaped for the text format (backslash, double quote, newline).
 *
 * @example
 * ```ts
 * import { escapeLabelValue } from "./exposition.ts";
 * console.log(escapeLabelValue('say "hi"')); // say \"hi\"
 * ```
 */
export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function labelText(labels: Record<string, string>, extra?: [string, string]): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabelValue(v)}"`);
  if (extra) parts.push(`${extra[0]}="${escapeLabelValue(extra[1])}"`);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

/**
 * Writes families in the text format. Families without series still get their HELP and
 * TYPE lines.
 *
 * @example
 * ```ts
 * import { formatExposition } from "./exposition.ts";
 * const text = formatExposition([{ name: "app_up", help: "Up.", type: "gauge", samples: [] }]);
 * ```
 */
export function formatExposition(families: readonly FamilySnapshot[]): string {
  const lines: string[] = [];
  for (const f of families) {
    lines.push(`# HELP ${f.name} ${escapeHelp(f.help)}`);
    lines.push(`# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      if (isHistogramSample(s)) {
        for (const [le, count] of s.buckets) {
          lines.push(
            `${f.name}_bucket${labelText(s.labels, ["le", formatSampleValue(le)])} ${
              formatSampleValue(count)
            }`,
          );
        }
        lines.push(`${f.name}_sum${labelText(s.labels)} ${formatSampleValue(s.sum)}`);
        lines.push(`${f.name}_count${labelText(s.labels)} ${formatSampleValue(s.count)}`);
      } else {
        lines.push(`${f.name}${labelText(s.labels)} ${formatSampleValue(s.value)}`);
      }
    }
  }
  return lines.length === 0 ? "" : `${lines.join("\n")}\n`;
}
