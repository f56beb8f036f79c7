/**
 * The "pages landed" notification our PD sender attaches to each WRITE, so the
 * receiver knows when a key's data is in its pages (the notification is delivered
 * after the data). Not an LMCache message: LMCache senders send none, and their keys
 * are then known to be complete only through the proxy notification.
 *
 * @module
 */

const PREFIX = "kvport.pd.landed\n";
const enc = new TextEncoder();
const dec = new TextDecoder();
const PREFIX_BYTES = enc.encode(PREFIX);

/** Largest notification the engines carry. */
export const MAX_NOTIFICATION_BYTES = 64 * 1024;

/** Encodes keys into one notification: `kvport.pd.landed\n` then keys joined by `\n`. */
export function encodeLanded(keys: readonly string[]): Uint8Array {
  return enc.encode(PREFIX + keys.join("\n"));
}

/** Keys of a landed notification, or `null` when the bytes are something else. */
export function decodeLanded(bytes: Uint8Array): string[] | null {
  if (bytes.length < PREFIX_BYTES.length) return null;
  for (let i = 0; i < PREFIX_BYTES.length; i++) if (bytes[i] !== PREFIX_BYTES[i]) return null;
  const body = dec.decode(bytes.subarray(PREFIX_BYTES.length));
  return body === "" ? [] : body.split("\n");
}

/**
 * Splits a batch into groups whose landed notification fits `maxBytes`: each group is
 * one WRITE with its own notification. Returns groups of positions into `keys`.
 */
export function groupForNotification(
  keys: readonly string[],
  positions: readonly number[],
  maxBytes: number = MAX_NOTIFICATION_BYTES - 1024,
): number[][] {
  // A key takes at most 3 UTF-8 bytes per UTF-16 unit: when even that bound fits, the
  // batch is one group (no key encoded).
  let bound = PREFIX_BYTES.length;
  for (const p of positions) bound += 3 * keys[p].length + 1;
  if (bound <= maxBytes) return positions.length > 0 ? [positions.slice()] : [];
  const groups: number[][] = [];
  let cur: number[] = [];
  let size = PREFIX_BYTES.length;
  for (const p of positions) {
    const k = enc.encode(keys[p]).length + 1;
    if (cur.length > 0 && size + k > maxBytes) {
      groups.push(cur);
      cur = [];
      size = PREFIX_BYTES.length;
    }
    cur.push(p);
    size += k;
  }
  if (cur.length > 0) groups.push(cur);
  return groups;
}
