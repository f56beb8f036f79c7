/**
 * The value last made for one chunk form (fmt, shape, dtype): the requests of one model
 * share their form, so what is made from it on every request's path (the credit form's
 * string, the bind notification's fields) is made once and then only compared for.
 *
 * @module
 */

/**
 * One remembered value and the form it was made for.
 *
 * @example
 * ```ts
 * import { LastForm } from "./last_form.ts";
 * const last = new LastForm<string>();
 * const shape = [2, 1, 256, 64];
 * const s = last.get(1, shape, "bfloat16") ?? last.keep(1, shape, "bfloat16", "1|2,1,256,64");
 * console.log(s, last.get(1, [2, 1, 256, 64], "bfloat16")); // 1|2,1,256,64 1|2,1,256,64
 * ```
 */
export class LastForm<T> {
  #form: { fmt: number; shape: number[]; dtype: string; value: T } | null = null;

  /** The value kept for this form, or `undefined` (another form, or none kept). */
  get(fmt: number, shape: readonly number[], dtype: string): T | undefined {
    const l = this.#form;
    if (l === null || l.fmt !== fmt || l.dtype !== dtype || l.shape.length !== shape.length) {
      return undefined;
    }
    for (let i = 0; i < shape.length; i++) if (l.shape[i] !== shape[i]) return undefined;
    return l.value;
  }

  /** Keeps `value` for this form (a copy of the shape) and returns it. Only a shape of
   * numbers is kept: its elements compare as what is made of them does. */
  keep(fmt: number, shape: readonly number[], dtype: string, value: T): T {
    this.#form = shape.every((d) => typeof d === "number")
      ? { fmt, shape: [...shape], dtype, value }
      : null;
    return value;
  }
}
