/**
 * "Did you mean" for misspelt keys: the nearest known name by edit distance.
 *
 * @module
 */

/**
 * Edit distance between two strings (optimal string alignment: insertions, deletions,
 * substitutions and swaps of neighbours each cost 1).
 *
 * @example
 * ```ts
 * import { editDistance } from "@kvport/nixl/config";
 * editDistance("pd_rloe", "pd_role"); // 1
 * ```
 */
export function editDistance(a: string, b: string): number {
  const m = a.length;
  const n = b.length;
  if (m === 0) return n;
  if (n === 0) return m;
  let prev2 = new Array<number>(n + 1).fill(0);
  let prev = Array.from({ length: n + 1 }, (_, j) => j);
  let cur = new Array<number>(n + 1).fill(0);
  for (let i = 1; i <= m; i++) {
    cur[0] = i;
    for (let j = 1; j <= n; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, prev2[j - 2] + 1);
      }
      cur[j] = d;
    }
    [prev2, prev, cur] = [prev, cur, prev2];
  }
  return prev[n];
}

/**
 * The candidate nearest to `word`, or `null` when none is close enough (at most a third
 * of the word's length, and at most 4 edits). Case and `-`/`_` differences are ignored.
 *
 * @example
 * ```ts
 * import { suggestKey } from "@kvport/nixl/config";
 * suggestKey("chunk_sise", ["chunk_size", "local_cpu"]); // "chunk_size"
 * suggestKey("zzz", ["chunk_size"]); // null
 * ```
 */
export function suggestKey(word: string, candidates: Iterable<string>): string | null {
  const w = word.toLowerCase().replaceAll("-", "_");
  const limit = Math.min(4, Math.max(1, Math.floor(w.length / 3)));
  let best: string | null = null;
  let bestD = Infinity;
  for (const c of candidates) {
    if (Math.abs(c.length - w.length) > limit) continue;
    const d = editDistance(w, c);
    if (d < bestD) {
      best = c;
      bestD = d;
    }
  }
  return bestD <= limit ? best : null;
}
