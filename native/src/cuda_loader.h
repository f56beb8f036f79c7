/*
 * cuda_loader.h - libcudart loaded at run time with dlopen, so the library needs no
 * CUDA at build time and a machine without a GPU still does DRAM and FILE work. Every
 * function returns a KVP status and sets the last error; without CUDA the status is
 * KVP_ERR_NOT_SUPPORTED and the message says what was tried.
 */
#ifndef KVP_CUDA_LOADER_H
#define KVP_CUDA_LOADER_H
#include "common.h"

#define KVP_CUDA_IPC_BYTES 64

/* Loads libcudart and asks for the device count (once per process). */
int32_t kvp_cuda_devices(int32_t *count);
/* Ensures device dev exists (ordinal < count). */
int32_t kvp_cuda_check_dev(int64_t dev);
int32_t kvp_cuda_malloc(int32_t dev, uint64_t size, uint64_t *out);
int32_t kvp_cuda_free(int32_t dev, uint64_t ptr);
/* cudaMemcpy with cudaMemcpyDefault (unified addressing decides the direction). */
int32_t kvp_cuda_memcpy(int32_t dev, uint64_t dst, uint64_t src, uint64_t len);
int32_t kvp_cuda_ipc_get(int32_t dev, uint64_t ptr, uint8_t out[KVP_CUDA_IPC_BYTES]);
int32_t kvp_cuda_ipc_open(int32_t dev, const uint8_t h[KVP_CUDA_IPC_BYTES], uint64_t *out);
int32_t kvp_cuda_ipc_close(int32_t dev, uint64_t ptr);
/* Pinned host staging memory (cudaMallocHost / cudaFreeHost). */
int32_t kvp_cuda_host_alloc(uint64_t size, void **out);
void kvp_cuda_host_free(void *p);

/* Asynchronous copies. The library keeps, per device, a few non-blocking streams of its
 * own (never the legacy default stream, so an application's kernels are not serialised
 * behind our copies): KVP_CUDA_Q_D2H and KVP_CUDA_Q_H2D for staging through pinned host
 * memory (one per direction, so both copy engines work), KVP_CUDA_Q_COPY for direct
 * copies (DRAM<->VRAM, VRAM<->VRAM, a peer's VRAM through CUDA IPC). */
enum { KVP_CUDA_Q_COPY = 0, KVP_CUDA_Q_D2H = 1, KVP_CUDA_Q_H2D = 2, KVP_CUDA_NQ = 3 };
#define KVP_CUDA_MAX_DEVS 64
/* Events: created with timing disabled; recorded after a copy, waited on by the host. */
int32_t kvp_cuda_event_create(int32_t dev, void **out);
void kvp_cuda_event_destroy(int32_t dev, void *ev);
/* Queues a copy of len bytes (cudaMemcpyDefault: unified addressing picks the
 * direction) on queue q of device dev, then records ev (may be NULL) after it. */
int32_t kvp_cuda_copy_async(int32_t dev, int q, uint64_t dst, uint64_t src, uint64_t len,
                            void *ev);
/* Queues count copies (dsts[i] <- srcs[i], sizes[i] bytes) on queue q of device dev:
 * one cudaMemcpyBatchAsync where the runtime has it (CUDA 12.8 and later: one call for a
 * batch of scattered pages instead of one launch each), else one cudaMemcpyAsync each. */
int32_t kvp_cuda_copy_batch(int32_t dev, int q, void *const *dsts, const void *const *srcs,
                            const size_t *sizes, size_t count);
/* The same for copies whose both ends are device memory (ours or a peer's opened through
 * CUDA IPC): one launch of the library's copy kernel (src/kernels/batch_copy.cu, loaded
 * through the driver API: machine code for the GPU, else its PTX) per 128 copies, which moves a batch of scattered pages
 * at close to a single large copy's bandwidth where one copy each pays a launch per page.
 * Falls back to kvp_cuda_copy_batch when the kernel cannot be loaded. */
int32_t kvp_cuda_copy_device_batch(int32_t dev, int q, void *const *dsts,
                                   const void *const *srcs, const size_t *sizes, size_t count);
/* Loads the copy kernel on device dev now (when VRAM is registered), so that the first
 * transfer of scattered pages does not wait for it; failures are left for that transfer
 * to see (it falls back to one copy per page). */
void kvp_cuda_prepare_copy_kernel(int32_t dev);
/* What copy kernel device dev runs: "sass" (machine code of the fat binary), "ptx"
 * (JIT-compiled), or "" (not loaded); *sm gets the device's compute capability x 10
 * (0 when unknown or not loaded). */
const char *kvp_cuda_kernel_image(int32_t dev, int *sm);
/* Why the copy kernel is not used ("" when it is, or was never tried). */
const char *kvp_cuda_kernel_note(void);
/* cudaEventQuery: KVP_SUCCESS when done, KVP_IN_PROG when not yet, else the error. */
int32_t kvp_cuda_event_query(int32_t dev, void *ev);
/* Records ev on queue q of device dev, after everything queued there so far. */
int32_t kvp_cuda_record(int32_t dev, int q, void *ev);
/* An event of device dev from a small per-process pool (kvp_cuda_event_put returns it). */
int32_t kvp_cuda_event_get(int32_t dev, void **out);
void kvp_cuda_event_put(int32_t dev, void *ev);
/* Blocks until ev has completed. */
int32_t kvp_cuda_event_wait(int32_t dev, void *ev);
/* Waits until every copy queued so far on the library's streams has completed (every
 * device). Deregistration of VRAM calls it so that no staged copy still touches the
 * memory once kvp_deregister returns. No-op when CUDA was never loaded. */
void kvp_cuda_quiesce(void);
/* True once libcudart was loaded successfully (without loading it). */
bool kvp_cuda_loaded(void);

#endif
