/**
 * Deno's permission check for listening sockets, done before `server.listen`: Deno's
 * `node:net` throws its `NotCapable` error from a later tick when net access is not
 * granted, where no caller can catch it, so a `bind` without `--allow-net` would leave
 * its promise pending forever. Other runtimes have no permissions: nothing to check.
 *
 * @example
 * ```ts
 * import { assertListenAllowed } from "./net_permission.ts";
 * assertListenAllowed("127.0.0.1", 0); // throws NotCapable without --allow-net
 * ```
 * @module
 */

interface DenoPermissions {
  permissions: {
    querySync(d: { name: "net"; host: string }): { state: string };
    requestSync(d: { name: "net"; host: string }): { state: string };
  };
  errors: { NotCapable: new (message: string) => Error };
}

/**
 * Throws Deno's own `NotCapable` error (the message Deno prints, naming `--allow-net`)
 * when this process may not listen on `host:port`; asks the user as Deno would when
 * the permission is "prompt".
 *
 * @example
 * ```ts
 * import { assertListenAllowed } from "./net_permission.ts";
 * try {
 *   assertListenAllowed("0.0.0.0", 7300);
 * } catch (e) {
 *   console.error((e as Error).message);
 * }
 * ```
 */
export function assertListenAllowed(host: string, port: number): void {
  const deno = (globalThis as { Deno?: DenoPermissions }).Deno;
  if (!deno?.permissions?.querySync) return;
  const target = `${host.includes(":") ? `[${host}]` : host}:${port}`;
  const descriptor = { name: "net" as const, host: target };
  let state = deno.permissions.querySync(descriptor).state;
  if (state === "prompt") state = deno.permissions.requestSync(descriptor).state;
  if (state !== "granted") {
    throw new deno.errors.NotCapable(
      `Requires net access to "${target}", run again with the --allow-net flag`,
    );
  }
}
