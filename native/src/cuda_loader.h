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

#endif
