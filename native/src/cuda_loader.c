/* cuda_loader.c - see cuda_loader.h. */
#include "cuda_loader.h"

#include <dlfcn.h>
#include <stdio.h>

#include "cuda_kernels_fatbin.h"
#include "cuda_kernels_ptx.h"
#include "errors.h"

typedef int cuda_err;
typedef struct { char reserved[KVP_CUDA_IPC_BYTES]; } cuda_ipc_handle;

#define CUDA_MEMCPY_DEFAULT 4
#define CUDA_IPC_LAZY_ENABLE_PEER_ACCESS 1
#define CUDA_STREAM_NON_BLOCKING 1
#define CUDA_EVENT_BLOCKING_SYNC 1
#define CUDA_EVENT_DISABLE_TIMING 2

/* How a thread waits for a copy's event: events are made with cudaEventBlockingSync, so
 * the waiter sleeps until the device's interrupt. Without it cudaEventSynchronize spins
 * for the copy's whole duration on a host with more cores than CUDA contexts: on the H200
 * host the PD sender used 1000-1500 us of CPU per 16 x 28 MiB request with four in flight
 * against 500 us blocking, for the same figures (2026-12-04: 1 x 256 KiB added p50 79-82
 * spinning, 74-88 blocking; four streams 0.79-0.87 / 0.80-1.2 of cudaMemcpy).
 * KVPORT_CUDA_WAIT=spin gives the runtime its default back. Read once: events are pooled. */
static pthread_once_t g_wait_once = PTHREAD_ONCE_INIT;
static unsigned g_event_flags = CUDA_EVENT_DISABLE_TIMING | CUDA_EVENT_BLOCKING_SYNC;
static void wait_mode_once(void) {
    const char *w = getenv("KVPORT_CUDA_WAIT");
    if (w && strcmp(w, "spin") == 0) g_event_flags = CUDA_EVENT_DISABLE_TIMING;
}

static struct {
    void *lib;
    const char *lib_name;
    cuda_err (*get_device_count)(int *);
    cuda_err (*set_device)(int);
    cuda_err (*malloc_)(void **, size_t);
    cuda_err (*free_)(void *);
    cuda_err (*memcpy_)(void *, const void *, size_t, int);
    cuda_err (*ipc_get)(cuda_ipc_handle *, void *);
    cuda_err (*ipc_open)(void **, cuda_ipc_handle, unsigned);
    cuda_err (*ipc_close)(void *);
    cuda_err (*host_register)(void *, size_t, unsigned);
    cuda_err (*malloc_host)(void **, size_t);
    cuda_err (*free_host)(void *);
    cuda_err (*stream_create)(void **, unsigned);
    cuda_err (*stream_sync)(void *);
    cuda_err (*memcpy_async)(void *, const void *, size_t, int, void *);
    cuda_err (*event_create)(void **, unsigned);
    cuda_err (*event_record)(void *, void *);
    cuda_err (*event_sync)(void *);
    cuda_err (*event_destroy)(void *);
    cuda_err (*event_query)(void *);
    /* optional (NULL when the runtime lacks them) */
    cuda_err (*runtime_version)(int *);
    void *memcpy_batch;   /* cudaMemcpyBatchAsync; signature by runtime version */
    int version;          /* cudaRuntimeGetVersion, 0 when unknown */
    const char *(*error_string)(cuda_err);
    int32_t status;       /* result of loading + cudaGetDeviceCount */
    int count;
    char msg[768];        /* the reason when status != SUCCESS */
} g_cuda;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static atomic_bool g_loaded;

/* The library's own streams, per device and queue (created on first use, kept until
 * the process exits: destroying them at unload would race with other threads). */
static pthread_mutex_t g_stream_mu = PTHREAD_MUTEX_INITIALIZER;
static void *_Atomic g_streams[KVP_CUDA_MAX_DEVS][KVP_CUDA_NQ];

static const char *cerr(cuda_err e) {
    const char *s = g_cuda.error_string ? g_cuda.error_string(e) : NULL;
    return s ? s : "unknown CUDA error";
}

static void load_once(void) {
    /* KVPORT_CUDART: an explicit libcudart path, tried first (a CUDA install outside
     * the loader's path, or a test double). */
    static const char *names[] = {
        NULL, "libcudart.so", "libcudart.so.13", "libcudart.so.12",
        "/usr/local/cuda/lib64/libcudart.so", "/usr/local/cuda/lib64/libcudart.so.13",
        "/usr/local/cuda/lib64/libcudart.so.12",
    };
    const char *env = getenv("KVPORT_CUDART");
    names[0] = env && *env ? env : NULL;
    char tried[640] = "";
    size_t off = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !g_cuda.lib; i++) {
        if (!names[i]) continue;
        g_cuda.lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (g_cuda.lib) g_cuda.lib_name = names[i];
        int n = snprintf(tried + off, sizeof tried - off, "%s%s", off ? ", " : "", names[i]);
        if (n > 0 && (size_t)n < sizeof tried - off) off += (size_t)n;
    }
    if (!g_cuda.lib) {
        g_cuda.status = KVP_ERR_NOT_SUPPORTED;
        snprintf(g_cuda.msg, sizeof g_cuda.msg,
                 "no CUDA: libcudart not found (tried %s); VRAM needs the CUDA runtime and a GPU",
                 tried);
        return;
    }
#define SYM(field, name)                                                                  \
    do {                                                                                  \
        *(void **)&g_cuda.field = dlsym(g_cuda.lib, name);                                \
        if (!g_cuda.field) {                                                              \
            g_cuda.status = KVP_ERR_NOT_SUPPORTED;                                        \
            snprintf(g_cuda.msg, sizeof g_cuda.msg, "no CUDA: %s lacks the symbol %s",    \
                     g_cuda.lib_name, name);                                              \
            return;                                                                       \
        }                                                                                 \
    } while (0)
    SYM(error_string, "cudaGetErrorString");
    SYM(get_device_count, "cudaGetDeviceCount");
    SYM(set_device, "cudaSetDevice");
    SYM(malloc_, "cudaMalloc");
    SYM(free_, "cudaFree");
    SYM(memcpy_, "cudaMemcpy");
    SYM(ipc_get, "cudaIpcGetMemHandle");
    SYM(ipc_open, "cudaIpcOpenMemHandle");
    SYM(ipc_close, "cudaIpcCloseMemHandle");
    SYM(host_register, "cudaHostRegister");
    SYM(malloc_host, "cudaMallocHost");
    SYM(free_host, "cudaFreeHost");
    SYM(stream_create, "cudaStreamCreateWithFlags");
    SYM(stream_sync, "cudaStreamSynchronize");
    SYM(memcpy_async, "cudaMemcpyAsync");
    SYM(event_create, "cudaEventCreateWithFlags");
    SYM(event_record, "cudaEventRecord");
    SYM(event_sync, "cudaEventSynchronize");
    SYM(event_destroy, "cudaEventDestroy");
    SYM(event_query, "cudaEventQuery");
#undef SYM
    *(void **)&g_cuda.runtime_version = dlsym(g_cuda.lib, "cudaRuntimeGetVersion");
    if (g_cuda.runtime_version && g_cuda.runtime_version(&g_cuda.version) != 0) g_cuda.version = 0;
    /* 12.8 added it with a failIdx argument before the stream; 13.0 dropped that one. */
    if (g_cuda.version >= 12080) g_cuda.memcpy_batch = dlsym(g_cuda.lib, "cudaMemcpyBatchAsync");
    int n = 0;
    cuda_err e = g_cuda.get_device_count(&n);
    if (e != 0 || n <= 0) {
        g_cuda.status = KVP_ERR_NOT_SUPPORTED;
        snprintf(g_cuda.msg, sizeof g_cuda.msg,
                 "no CUDA device: cudaGetDeviceCount returned %d (%s) with %s", e,
                 e ? cerr(e) : "zero devices", g_cuda.lib_name);
        return;
    }
    g_cuda.count = n;
    g_cuda.status = KVP_SUCCESS;
    atomic_store(&g_loaded, true);
}

int32_t kvp_cuda_devices(int32_t *count) {
    pthread_once(&g_once, load_once);
    if (count) *count = g_cuda.status == KVP_SUCCESS ? g_cuda.count : 0;
    if (g_cuda.status != KVP_SUCCESS) return kvp_err(g_cuda.status, "%s", g_cuda.msg);
    return KVP_SUCCESS;
}

int32_t kvp_cuda_check_dev(int64_t dev) {
    int32_t n = 0;
    int32_t st = kvp_cuda_devices(&n);
    if (st != KVP_SUCCESS) return st;
    if (dev < 0 || dev >= n)
        return kvp_err(KVP_ERR_INVALID_PARAM, "CUDA device %lld does not exist (%d devices)",
                       (long long)dev, n);
    return KVP_SUCCESS;
}

static int32_t set_dev(int32_t dev) {
    int32_t st = kvp_cuda_check_dev(dev);
    if (st != KVP_SUCCESS) return st;
    cuda_err e = g_cuda.set_device(dev);
    if (e) return kvp_err(KVP_ERR_BACKEND, "cudaSetDevice(%d) failed: %s", dev, cerr(e));
    return KVP_SUCCESS;
}

int32_t kvp_cuda_malloc(int32_t dev, uint64_t size, uint64_t *out) {
    int32_t st = set_dev(dev);
    if (st != KVP_SUCCESS) return st;
    void *p = NULL;
    cuda_err e = g_cuda.malloc_(&p, (size_t)size);
    if (e)
        return kvp_err(KVP_ERR_BACKEND, "cudaMalloc(%llu) on device %d failed: %s",
                       (unsigned long long)size, dev, cerr(e));
    *out = (uint64_t)(uintptr_t)p;
    return KVP_SUCCESS;
}

int32_t kvp_cuda_free(int32_t dev, uint64_t ptr) {
    int32_t st = set_dev(dev);
    if (st != KVP_SUCCESS) return st;
    cuda_err e = g_cuda.free_((void *)(uintptr_t)ptr);
    if (e) return kvp_err(KVP_ERR_BACKEND, "cudaFree failed: %s", cerr(e));
    return KVP_SUCCESS;
}

/* Synchronous copies run on the library's copy stream and are waited for by event:
 * plain cudaMemcpy may return before a device-to-device copy (or the DMA of a pageable
 * host-to-device one) has finished, and a later copy on our non-blocking streams would
 * not be ordered after it. */
int32_t kvp_cuda_memcpy(int32_t dev, uint64_t dst, uint64_t src, uint64_t len) {
    void *ev = NULL;
    int32_t st = kvp_cuda_event_get(dev, &ev);
    if (st != KVP_SUCCESS) return st;
    st = kvp_cuda_copy_async(dev, KVP_CUDA_Q_COPY, dst, src, len, ev);
    if (st == KVP_SUCCESS) st = kvp_cuda_event_wait(dev, ev);
    else kvp_cuda_quiesce(); /* the record may not have happened: wait for the streams */
    kvp_cuda_event_put(dev, ev);
    return st;
}

int32_t kvp_cuda_ipc_get(int32_t dev, uint64_t ptr, uint8_t out[KVP_CUDA_IPC_BYTES]) {
    int32_t st = set_dev(dev);
    if (st != KVP_SUCCESS) return st;
    cuda_ipc_handle h;
    memset(&h, 0, sizeof h);
    cuda_err e = g_cuda.ipc_get(&h, (void *)(uintptr_t)ptr);
    if (e) return kvp_err(KVP_ERR_BACKEND, "cudaIpcGetMemHandle failed: %s", cerr(e));
    memcpy(out, h.reserved, KVP_CUDA_IPC_BYTES);
    return KVP_SUCCESS;
}

int32_t kvp_cuda_ipc_open(int32_t dev, const uint8_t h[KVP_CUDA_IPC_BYTES], uint64_t *out) {
    int32_t st = set_dev(dev);
    if (st != KVP_SUCCESS) return st;
    cuda_ipc_handle ch;
    memcpy(ch.reserved, h, KVP_CUDA_IPC_BYTES);
    void *p = NULL;
    cuda_err e = g_cuda.ipc_open(&p, ch, CUDA_IPC_LAZY_ENABLE_PEER_ACCESS);
    if (e) return kvp_err(KVP_ERR_BACKEND, "cudaIpcOpenMemHandle failed: %s", cerr(e));
    *out = (uint64_t)(uintptr_t)p;
    return KVP_SUCCESS;
}

int32_t kvp_cuda_ipc_close(int32_t dev, uint64_t ptr) {
    int32_t st = set_dev(dev);
    if (st != KVP_SUCCESS) return st;
    cuda_err e = g_cuda.ipc_close((void *)(uintptr_t)ptr);
    if (e) return kvp_err(KVP_ERR_BACKEND, "cudaIpcCloseMemHandle failed: %s", cerr(e));
    return KVP_SUCCESS;
}

int32_t kvp_cuda_host_alloc(uint64_t size, void **out) {
    int32_t st = kvp_cuda_devices(NULL);
    if (st != KVP_SUCCESS) return st;
    cuda_err e = g_cuda.malloc_host(out, (size_t)size);
    if (e) return kvp_err(KVP_ERR_BACKEND, "cudaMallocHost(%llu) failed: %s",
                          (unsigned long long)size, cerr(e));
    return KVP_SUCCESS;
}

void kvp_cuda_host_free(void *p) {
    if (p && g_cuda.free_host) (void)g_cuda.free_host(p);
}

bool kvp_cuda_loaded(void) { return atomic_load(&g_loaded); }

static int32_t stream_of(int32_t dev, int q, void **out) {
    if (dev < 0 || dev >= KVP_CUDA_MAX_DEVS || q < 0 || q >= KVP_CUDA_NQ)
        return kvp_err(KVP_ERR_INVALID_PARAM, "CUDA device %d is beyond the %d this library "
                       "keeps streams for", dev, KVP_CUDA_MAX_DEVS);
    void *s = atomic_load(&g_streams[dev][q]);
    if (s) {
        *out = s;
        return KVP_SUCCESS;
    }
    pthread_mutex_lock(&g_stream_mu);
    s = atomic_load(&g_streams[dev][q]);
    int32_t st = KVP_SUCCESS;
    if (!s) {
        cuda_err e = g_cuda.stream_create(&s, CUDA_STREAM_NON_BLOCKING);
        if (e) st = kvp_err(KVP_ERR_BACKEND, "cudaStreamCreateWithFlags on device %d failed: %s",
                            dev, cerr(e));
        else atomic_store(&g_streams[dev][q], s);
    }
    pthread_mutex_unlock(&g_stream_mu);
    if (st == KVP_SUCCESS) *out = s;
    return st;
}

int32_t kvp_cuda_event_create(int32_t dev, void **out) {
    int32_t st = set_dev(dev);
    if (st != KVP_SUCCESS) return st;
    void *ev = NULL;
    (void)pthread_once(&g_wait_once, wait_mode_once);
    cuda_err e = g_cuda.event_create(&ev, g_event_flags);
    if (e) return kvp_err(KVP_ERR_BACKEND, "cudaEventCreateWithFlags failed: %s", cerr(e));
    *out = ev;
    return KVP_SUCCESS;
}

void kvp_cuda_event_destroy(int32_t dev, void *ev) {
    if (!ev || !g_cuda.event_destroy) return;
    if (set_dev(dev) == KVP_SUCCESS) (void)g_cuda.event_destroy(ev);
}

int32_t kvp_cuda_copy_async(int32_t dev, int q, uint64_t dst, uint64_t src, uint64_t len,
                            void *ev) {
    int32_t st = set_dev(dev);
    if (st != KVP_SUCCESS) return st;
    void *s = NULL;
    st = stream_of(dev, q, &s);
    if (st != KVP_SUCCESS) return st;
    cuda_err e = g_cuda.memcpy_async((void *)(uintptr_t)dst, (const void *)(uintptr_t)src,
                                     (size_t)len, CUDA_MEMCPY_DEFAULT, s);
    if (e)
        return kvp_err(KVP_ERR_BACKEND, "cudaMemcpyAsync of %llu bytes (0x%llx <- 0x%llx) on "
                       "device %d failed: %s", (unsigned long long)len, (unsigned long long)dst,
                       (unsigned long long)src, dev, cerr(e));
    if (ev) {
        e = g_cuda.event_record(ev, s);
        if (e) return kvp_err(KVP_ERR_BACKEND, "cudaEventRecord failed: %s", cerr(e));
    }
    return KVP_SUCCESS;
}

/* struct cudaMemcpyAttributes (all 32-bit fields): srcAccessOrder, srcLocHint {type, id},
 * dstLocHint {type, id}, flags. */
typedef struct cuda_memcpy_attrs {
    int src_access_order;
    int src_type, src_id;
    int dst_type, dst_id;
    unsigned flags;
} cuda_memcpy_attrs;
#define CUDA_SRC_ACCESS_ORDER_STREAM 1
typedef cuda_err (*batch13_fn)(void *const *, const void *const *, const size_t *, size_t,
                               cuda_memcpy_attrs *, size_t *, size_t, void *);
typedef cuda_err (*batch128_fn)(void *const *, const void *const *, const size_t *, size_t,
                                cuda_memcpy_attrs *, size_t *, size_t, size_t *, void *);

int32_t kvp_cuda_copy_batch(int32_t dev, int q, void *const *dsts, const void *const *srcs,
                            const size_t *sizes, size_t count) {
    if (count == 0) return KVP_SUCCESS;
    int32_t st = set_dev(dev);
    if (st != KVP_SUCCESS) return st;
    void *s = NULL;
    st = stream_of(dev, q, &s);
    if (st != KVP_SUCCESS) return st;
    if (count > 1 && g_cuda.memcpy_batch) {
        cuda_memcpy_attrs at;
        memset(&at, 0, sizeof at);
        at.src_access_order = CUDA_SRC_ACCESS_ORDER_STREAM;
        size_t idx0 = 0, fail = 0;
        cuda_err e = g_cuda.version >= 13000
                         ? ((batch13_fn)g_cuda.memcpy_batch)(dsts, srcs, sizes, count, &at, &idx0,
                                                             1, s)
                         : ((batch128_fn)g_cuda.memcpy_batch)(dsts, srcs, sizes, count, &at,
                                                              &idx0, 1, &fail, s);
        if (e == 0) return KVP_SUCCESS;
        /* Refused (the arguments are validated before anything is queued; e.g. host
         * memory it does not take in stream order): one copy at a time below. */
    }
    for (size_t i = 0; i < count; i++) {
        cuda_err e = g_cuda.memcpy_async(dsts[i], srcs[i], sizes[i], CUDA_MEMCPY_DEFAULT, s);
        if (e)
            return kvp_err(KVP_ERR_BACKEND, "cudaMemcpyAsync of %zu bytes on device %d failed: %s",
                           sizes[i], dev, cerr(e));
    }
    return KVP_SUCCESS;
}

/* ----------------------------------------------------------- copy kernel ---- */

/* The kernel's parameter (struct KvpBatch of batch_copy.cu): 8 + 128 x 24 bytes. */
#define KBATCH 128
typedef struct kbatch {
    uint32_t n, pad;
    struct {
        uint64_t dst, src, len;
    } d[KBATCH];
} kbatch;

typedef int cu_res;
static struct {
    pthread_once_t once;
    void *lib;
    cu_res (*module_load_data)(void **, const void *);
    cu_res (*module_get_function)(void **, void *, const char *);
    cu_res (*launch)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                     unsigned, void *, void **, void **);
    cu_res (*error_string)(cu_res, const char **);
    cu_res (*device_get)(int *, int);
    cu_res (*device_attribute)(int *, int, int);
    void *fn[KVP_CUDA_MAX_DEVS];
    int state[KVP_CUDA_MAX_DEVS]; /* 0 not tried, 1 loaded, -1 failed */
    const char *image[KVP_CUDA_MAX_DEVS]; /* what loaded: "sass" or "ptx" */
    int sm[KVP_CUDA_MAX_DEVS];            /* compute capability x 10 (90: sm_90), 0 unknown */
    char note[256];
} g_k = {.once = PTHREAD_ONCE_INIT};

static void kernel_lib_once(void) {
    const char *off = getenv("KVPORT_CUDA_COPY_KERNEL");
    if (off && *off == '0') {
        snprintf(g_k.note, sizeof g_k.note, "disabled by KVPORT_CUDA_COPY_KERNEL=0");
        return;
    }
    g_k.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!g_k.lib) g_k.lib = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
    if (!g_k.lib) {
        snprintf(g_k.note, sizeof g_k.note, "no libcuda.so.1 (the driver API)");
        return;
    }
    *(void **)&g_k.module_load_data = dlsym(g_k.lib, "cuModuleLoadData");
    *(void **)&g_k.module_get_function = dlsym(g_k.lib, "cuModuleGetFunction");
    *(void **)&g_k.launch = dlsym(g_k.lib, "cuLaunchKernel");
    *(void **)&g_k.error_string = dlsym(g_k.lib, "cuGetErrorString");
    *(void **)&g_k.device_get = dlsym(g_k.lib, "cuDeviceGet");
    *(void **)&g_k.device_attribute = dlsym(g_k.lib, "cuDeviceGetAttribute");
    if (!g_k.module_load_data || !g_k.module_get_function || !g_k.launch) {
        snprintf(g_k.note, sizeof g_k.note, "libcuda lacks cuModuleLoadData/cuLaunchKernel");
        g_k.lib = NULL;
    }
}

const char *kvp_cuda_kernel_note(void) { return g_k.note; }

const char *kvp_cuda_kernel_image(int32_t dev, int *sm) {
    *sm = 0;
    if (dev < 0 || dev >= KVP_CUDA_MAX_DEVS) return "";
    pthread_mutex_lock(&g_stream_mu);
    const char *image = g_k.state[dev] == 1 ? g_k.image[dev] : "";
    if (image[0]) *sm = g_k.sm[dev];
    pthread_mutex_unlock(&g_stream_mu);
    return image;
}

/* The kernel on device dev (the runtime's primary context is current: set_dev ran). */
static void *kernel_of(int32_t dev) {
    pthread_once(&g_k.once, kernel_lib_once);
    if (!g_k.lib || dev < 0 || dev >= KVP_CUDA_MAX_DEVS) return NULL;
    pthread_mutex_lock(&g_stream_mu);
    if (g_k.state[dev] == 0) {
        void *mod = NULL, *fn = NULL;
        /* Machine code first (a millisecond); the PTX, JIT-compiled by the driver (tens to
         * hundreds of milliseconds), only for a GPU or a driver the fat binary does not
         * serve. */
        const char *image = "sass";
        cu_res e = g_k.module_load_data(&mod, kvp_batch_copy_fatbin);
        if (e != 0) {
            image = "ptx";
            e = g_k.module_load_data(&mod, kvp_batch_copy_ptx);
        }
        if (e == 0) e = g_k.module_get_function(&fn, mod, "kvp_batch_copy");
        if (e == 0) {
            g_k.fn[dev] = fn;
            g_k.image[dev] = image;
            g_k.state[dev] = 1;
            int d = 0, major = 0, minor = 0;
            /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR (for the agent's info) */
            if (g_k.device_get && g_k.device_attribute && g_k.device_get(&d, dev) == 0 &&
                g_k.device_attribute(&major, 75, d) == 0 && g_k.device_attribute(&minor, 76, d) == 0)
                g_k.sm[dev] = major * 10 + minor;
        } else {
            const char *why = NULL;
            if (g_k.error_string) g_k.error_string(e, &why);
            snprintf(g_k.note, sizeof g_k.note, "loading the copy kernel on device %d failed: "
                     "CUresult %d (%s)", dev, e, why ? why : "?");
            g_k.state[dev] = -1;
        }
    }
    void *fn = g_k.state[dev] == 1 ? g_k.fn[dev] : NULL;
    pthread_mutex_unlock(&g_stream_mu);
    return fn;
}

void kvp_cuda_prepare_copy_kernel(int32_t dev) {
    if (set_dev(dev) != KVP_SUCCESS) {
        kvp_err_clear();
        return;
    }
    (void)kernel_of(dev);
}

int32_t kvp_cuda_copy_device_batch(int32_t dev, int q, void *const *dsts,
                                   const void *const *srcs, const size_t *sizes, size_t count) {
    if (count < 2) return kvp_cuda_copy_batch(dev, q, dsts, srcs, sizes, count);
    int32_t st = set_dev(dev);
    if (st != KVP_SUCCESS) return st;
    void *s = NULL;
    st = stream_of(dev, q, &s); /* (also makes sure the primary context is up) */
    if (st != KVP_SUCCESS) return st;
    void *fn = kernel_of(dev);
    if (!fn) return kvp_cuda_copy_batch(dev, q, dsts, srcs, sizes, count);
    kbatch b;
    for (size_t at = 0; at < count; at += KBATCH) {
        size_t n = KVP_MIN((size_t)KBATCH, count - at);
        uint64_t longest = 0;
        memset(&b, 0, sizeof b);
        b.n = (uint32_t)n;
        for (size_t i = 0; i < n; i++) {
            b.d[i].dst = (uint64_t)(uintptr_t)dsts[at + i];
            b.d[i].src = (uint64_t)(uintptr_t)srcs[at + i];
            b.d[i].len = (uint64_t)sizes[at + i];
            if (sizes[at + i] > longest) longest = sizes[at + i];
        }
        /* About 1024 blocks of 512 threads in all (a few waves on a large GPU), no more
         * per copy than it has 32 KiB slices (4 x 16 bytes per thread per round). */
        uint64_t per = (1024 + n - 1) / n, need = (longest + 32767) / 32768;
        unsigned gx = (unsigned)KVP_MAX(1, KVP_MIN(per, KVP_MAX(need, 1)));
        void *args[] = {&b};
        cu_res e = g_k.launch(fn, gx, (unsigned)n, 1, 512, 1, 1, 0, s, args, NULL);
        if (e != 0) {
            const char *why = NULL;
            if (g_k.error_string) g_k.error_string(e, &why);
            if (at == 0) { /* nothing queued yet: copy the usual way */
                snprintf(g_k.note, sizeof g_k.note, "cuLaunchKernel failed: CUresult %d (%s)", e,
                         why ? why : "?");
                return kvp_cuda_copy_batch(dev, q, dsts, srcs, sizes, count);
            }
            return kvp_err(KVP_ERR_BACKEND, "launching the copy kernel failed: CUresult %d (%s)",
                           e, why ? why : "?");
        }
    }
    return KVP_SUCCESS;
}

int32_t kvp_cuda_event_query(int32_t dev, void *ev) {
    KVP_UNUSED(dev);
    cuda_err e = g_cuda.event_query(ev);
    if (e == 0) return KVP_SUCCESS;
    if (e == 600) return KVP_IN_PROG; /* cudaErrorNotReady */
    return kvp_err(KVP_ERR_BACKEND, "a CUDA copy failed: %s", cerr(e));
}

int32_t kvp_cuda_record(int32_t dev, int q, void *ev) {
    int32_t st = set_dev(dev);
    if (st != KVP_SUCCESS) return st;
    void *s = NULL;
    st = stream_of(dev, q, &s);
    if (st != KVP_SUCCESS) return st;
    cuda_err e = g_cuda.event_record(ev, s);
    if (e) return kvp_err(KVP_ERR_BACKEND, "cudaEventRecord failed: %s", cerr(e));
    return KVP_SUCCESS;
}

#define EV_POOL 16
static void *g_ev_pool[KVP_CUDA_MAX_DEVS][EV_POOL];
static int g_ev_n[KVP_CUDA_MAX_DEVS];

int32_t kvp_cuda_event_get(int32_t dev, void **out) {
    if (dev >= 0 && dev < KVP_CUDA_MAX_DEVS) {
        pthread_mutex_lock(&g_stream_mu);
        void *ev = g_ev_n[dev] > 0 ? g_ev_pool[dev][--g_ev_n[dev]] : NULL;
        pthread_mutex_unlock(&g_stream_mu);
        if (ev) {
            *out = ev;
            return KVP_SUCCESS;
        }
    }
    return kvp_cuda_event_create(dev, out);
}

void kvp_cuda_event_put(int32_t dev, void *ev) {
    if (!ev) return;
    if (dev >= 0 && dev < KVP_CUDA_MAX_DEVS) {
        pthread_mutex_lock(&g_stream_mu);
        bool kept = g_ev_n[dev] < EV_POOL;
        if (kept) g_ev_pool[dev][g_ev_n[dev]++] = ev;
        pthread_mutex_unlock(&g_stream_mu);
        if (kept) return;
    }
    kvp_cuda_event_destroy(dev, ev);
}

int32_t kvp_cuda_event_wait(int32_t dev, void *ev) {
    KVP_UNUSED(dev);
    cuda_err e = g_cuda.event_sync(ev);
    if (e) return kvp_err(KVP_ERR_BACKEND, "waiting for a CUDA copy failed: %s", cerr(e));
    return KVP_SUCCESS;
}

void kvp_cuda_quiesce(void) {
    if (!g_cuda.stream_sync) return;
    for (int d = 0; d < KVP_CUDA_MAX_DEVS; d++) {
        for (int q = 0; q < KVP_CUDA_NQ; q++) {
            void *s = atomic_load(&g_streams[d][q]);
            if (s && set_dev(d) == KVP_SUCCESS) (void)g_cuda.stream_sync(s);
        }
    }
}

KVP_API int32_t kvp_cuda_device_count(int32_t *count) {
    kvp_err_clear();
    int32_t n = 0;
    int32_t st = kvp_cuda_devices(&n);
    if (count) *count = n;
    return st;
}
