/**
 * @module
 */
export * from "./src/config/mod.ts";
