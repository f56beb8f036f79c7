/* test_cuda_wait.c - the library's CUDA events block (cudaEventBlockingSync): a thread
 * that waits for a copy sleeps instead of spinning a core; KVPORT_CUDA_WAIT=spin gives
 * the runtime's default back. CUDA is the stand-in runtime of tools/fake_cudart.c,
 * which records the flags of the last event made. */
#include <dlfcn.h>
#include <unistd.h>

#include "t.h"

#define EVENT_BLOCKING_SYNC 1u
#define EVENT_DISABLE_TIMING 2u

/* A host -> VRAM -> host round trip of 64 KiB (bytes checked) under wait mode `mode`
 * (NULL: the default); returns the flags of the event its waits used. */
static unsigned flags_of_a_copy(const char *mode) {
    char lib[4200];
    t_use_fake_cudart(lib, sizeof lib);
    setenv("FAKE_CUDA_DELAY_US", "0", 1);
    if (mode) setenv("KVPORT_CUDA_WAIT", mode, 1);
    else unsetenv("KVPORT_CUDA_WAIT");
    const uint64_t size = 64 << 10;
    uint8_t *src = malloc(size), *back = malloc(size);
    CHECK(src && back);
    for (uint64_t i = 0; i < size; i++) src[i] = (uint8_t)(i * 7 + 3);
    memset(back, 0, size);
    uint64_t v;
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v));
    OK(kvp_mem_copy(KVP_VRAM, 0, v, KVP_DRAM, 0, (uint64_t)(uintptr_t)src, size));
    OK(kvp_mem_copy(KVP_DRAM, 0, (uint64_t)(uintptr_t)back, KVP_VRAM, 0, v, size));
    CHECK_MSG(memcmp(src, back, size) == 0, "the round trip through VRAM changed the bytes");
    OK(kvp_mem_free(v));
    free(src);
    free(back);
    void *h = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
    CHECK_MSG(h != NULL, "the stand-in runtime %s was not loaded", lib);
    unsigned (*last)(void) = (unsigned (*)(void))dlsym(h, "fake_cuda_last_event_flags");
    CHECK(last != NULL);
    unsigned flags = last();
    dlclose(h);
    return flags;
}

TEST(cuda_events_block_by_default) {
    unsigned f = flags_of_a_copy(NULL);
    CHECK_MSG(f == (EVENT_BLOCKING_SYNC | EVENT_DISABLE_TIMING),
              "events made with flags %u: expected cudaEventBlockingSync | "
              "cudaEventDisableTiming (3), a waiter would spin",
              f);
}

TEST(cuda_wait_spin_gives_the_runtime_default_back) {
    unsigned f = flags_of_a_copy("spin");
    CHECK_MSG(f == EVENT_DISABLE_TIMING, "KVPORT_CUDA_WAIT=spin: events made with flags %u, "
              "expected cudaEventDisableTiming (2) only", f);
}
