/**
 * Placeholder.
 * @module
 */
export const placeholder = 1;
