/**
 * The setup the GPU PD tests share: a small KV shape, its page size, the channel options
 * of both sides (built-in engine unless KVPORT_ENGINE=nixl, loopback) and the request spec of a sender.
 *
 * @module
 */

import { chunkBytes, type DisaggSpec, MemoryFormat, type PdReceiver } from "../../mod.ts";
import { testEngine } from "./test_engine.ts";

/** KV_2LTD: 2 x layers x tokens x hidden (bf16). */
export const GPU_PD_SHAPE = [2, 4, 16, 1024] as const;

/** Bytes of one chunk of {@linkcode GPU_PD_SHAPE}: 256 KiB. */
export const GPU_PD_PAGE: number = chunkBytes(MemoryFormat.KV_2LTD, GPU_PD_SHAPE, "bfloat16")!;

/** Options both PD sides take in the GPU tests. */
export const gpuPdCommon = {
  pageSize: GPU_PD_PAGE,
  channelType: "nixl",
  engine: testEngine,
  agentParams: { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" },
} as const;

/** The spec of one send to `rx` on loopback. */
export function gpuPdSpec(rx: PdReceiver, reqId: string, isLastPrefill: boolean): DisaggSpec {
  return {
    reqId,
    receiverHost: "127.0.0.1",
    receiverInitPort: [rx.initPort],
    receiverAllocPort: [rx.allocPort],
    isLastPrefill,
  };
}
