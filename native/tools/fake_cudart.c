/*
 * fake_cudart.c - a stand-in for libcudart.so, for testing every VRAM path of the shim
 * (and the TypeScript layers above it) on machines without a GPU:
 *
 *   KVPORT_CUDART=$PWD/native/build/fake/libcudart.so deno test -A tests/
 *
 * Build: sh native/tools/fake-cudart.sh (prints the library's path).
 *
 * "Device memory" is a memfd mapped twice: the address handed out is a PROT_NONE
 * mapping, so host code that dereferences a device pointer crashes (as it would on a
 * GPU), and copies go through a second, private-to-this-file mapping. IPC handles carry
 * (pid, fd, inode): another process opens /proc/<pid>/fd/<fd>, as CUDA IPC lets a peer
 * on the same host map the allocation. Streams are worker threads that run queued
 * copies in order, after FAKE_CUDA_DELAY_US (default 50) microseconds each, so that code
 * which reads a staging slot before waiting for its copy sees stale bytes.
 * FAKE_CUDA_DEVICES sets the device count (default 1; 0 = no device).
 *
 * Only what libkvport.so and kvport-limits call is implemented.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

typedef int cudaError_t;
enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
    cudaErrorNotReady = 600,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorMapBufferObjectFailed = 205,
};
typedef struct { char reserved[64]; } cudaIpcMemHandle_t;

/* ----------------------------------------------------------- allocations ---- */

typedef struct alloc {
    uintptr_t dev;   /* the PROT_NONE address handed out */
    uint8_t *shadow; /* the readable/writable mapping of the same memfd */
    size_t size;
    int fd;          /* -1 for IPC-opened memory */
    int device;
    struct alloc *next;
} alloc;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static alloc *g_allocs;
static __thread int t_device;
static int g_batches; /* cudaMemcpyBatchAsync calls (FAKE_CUDA_REPORT=1 prints it at exit) */

__attribute__((destructor)) static void report(void) {
    const char *e = getenv("FAKE_CUDA_REPORT");
    if (e && *e == '1') fprintf(stderr, "fake_cudart: %d batched copy calls\n", g_batches);
}

static int ndev(void) {
    const char *e = getenv("FAKE_CUDA_DEVICES");
    return e && *e ? atoi(e) : 1;
}

static alloc *find_locked(uintptr_t p, size_t len) {
    for (alloc *a = g_allocs; a; a = a->next)
        if (p >= a->dev && p - a->dev <= a->size && len <= a->size - (p - a->dev)) return a;
    return NULL;
}

/* Host address to copy through: device addresses map to their shadow. NULL when a
 * range starts in device memory and runs past its allocation. */
static uint8_t *xlate(const void *p, size_t len, bool *bad) {
    uintptr_t u = (uintptr_t)p;
    pthread_mutex_lock(&g_mu);
    alloc *a = NULL;
    for (alloc *x = g_allocs; x; x = x->next)
        if (u >= x->dev && u < x->dev + x->size) a = x;
    uint8_t *r = (uint8_t *)p;
    if (a) {
        if (len > a->size - (u - a->dev)) *bad = true;
        r = a->shadow + (u - a->dev);
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

static alloc *new_alloc(int fd, size_t size, int device, bool own) {
    void *d = mmap(NULL, size, PROT_NONE, MAP_SHARED, fd, 0);
    if (d == MAP_FAILED) return NULL;
    void *s = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (s == MAP_FAILED) {
        munmap(d, size);
        return NULL;
    }
    alloc *a = calloc(1, sizeof *a);
    a->dev = (uintptr_t)d;
    a->shadow = s;
    a->size = size;
    a->fd = own ? fd : -1;
    a->device = device;
    pthread_mutex_lock(&g_mu);
    a->next = g_allocs;
    g_allocs = a;
    pthread_mutex_unlock(&g_mu);
    return a;
}

static void drop_alloc(alloc *a) {
    munmap((void *)a->dev, a->size);
    munmap(a->shadow, a->size);
    if (a->fd >= 0) close(a->fd);
    free(a);
}

static alloc *take_alloc(uintptr_t p) {
    pthread_mutex_lock(&g_mu);
    alloc **pp = &g_allocs;
    while (*pp && (*pp)->dev != p) pp = &(*pp)->next;
    alloc *a = *pp;
    if (a) *pp = a->next;
    pthread_mutex_unlock(&g_mu);
    return a;
}

/* -------------------------------------------------------------- streams ---- */

typedef struct op {
    struct op *next;
    int kind; /* 0 copy, 1 event */
    void *dst;
    const void *src;
    size_t len;
    struct ev *ev;
    unsigned long long seq;
} op;

typedef struct ev {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long long recorded, done; /* record count / completed record count */
} ev;

typedef struct stream {
    pthread_mutex_t mu;
    pthread_cond_t cv, idle;
    op *head, *tail;
    bool busy;
    pthread_t th;
} stream;

static long delay_us(void) {
    const char *e = getenv("FAKE_CUDA_DELAY_US");
    return e && *e ? atol(e) : 50;
}

static void do_copy(void *dst, const void *src, size_t len) {
    bool bad = false;
    uint8_t *d = xlate(dst, len, &bad), *s = xlate(src, len, &bad);
    if (bad) {
        fprintf(stderr, "fake_cudart: copy of %zu bytes runs past a device allocation\n", len);
        abort();
    }
    memmove(d, s, len);
}

static void *stream_main(void *arg) {
    stream *s = arg;
    long us = delay_us();
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->head) {
            s->busy = false;
            pthread_cond_broadcast(&s->idle);
            pthread_cond_wait(&s->cv, &s->mu);
        }
        s->busy = true;
        op *o = s->head;
        s->head = o->next;
        if (!s->head) s->tail = NULL;
        pthread_mutex_unlock(&s->mu);
        if (o->kind == 0) {
            if (us > 0) {
                struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
                nanosleep(&ts, NULL);
            }
            do_copy(o->dst, o->src, o->len);
        } else {
            pthread_mutex_lock(&o->ev->mu);
            if (o->seq > o->ev->done) o->ev->done = o->seq;
            pthread_cond_broadcast(&o->ev->cv);
            pthread_mutex_unlock(&o->ev->mu);
        }
        free(o);
        pthread_mutex_lock(&s->mu);
    }
    return NULL;
}

static void push(stream *s, op *o) {
    pthread_mutex_lock(&s->mu);
    o->next = NULL;
    if (s->tail) s->tail->next = o;
    else s->head = o;
    s->tail = o;
    s->busy = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static stream *g_streams[64];
static int g_nstreams;

static void stream_sync(stream *s) {
    pthread_mutex_lock(&s->mu);
    while (s->busy || s->head) pthread_cond_wait(&s->idle, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

/* ---------------------------------------------------------------- the API ---- */

API const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (fake)";
    case cudaErrorMemoryAllocation: return "out of memory (fake)";
    case cudaErrorInvalidDevice: return "invalid device ordinal (fake)";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (fake)";
    case cudaErrorNotReady: return "device not ready (fake)";
    case cudaErrorMapBufferObjectFailed: return "mapping of buffer object failed (fake)";
    default: return "unknown error (fake)";
    }
}

API cudaError_t cudaGetDeviceCount(int *n) {
    *n = ndev();
    return *n > 0 ? cudaSuccess : cudaErrorNoDevice;
}

API cudaError_t cudaSetDevice(int d) {
    if (d < 0 || d >= ndev()) return cudaErrorInvalidDevice;
    t_device = d;
    return cudaSuccess;
}

API cudaError_t cudaGetDevice(int *d) {
    *d = t_device;
    return cudaSuccess;
}

API cudaError_t cudaMalloc(void **p, size_t size) {
    if (size == 0) return cudaErrorInvalidValue;
    int fd = memfd_create("fake-vram", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
        if (fd >= 0) close(fd);
        return cudaErrorMemoryAllocation;
    }
    alloc *a = new_alloc(fd, size, t_device, true);
    if (!a) {
        close(fd);
        return cudaErrorMemoryAllocation;
    }
    memset(a->shadow, 0xA5, size < 4096 ? size : 4096); /* uninitialised-looking */
    *p = (void *)a->dev;
    return cudaSuccess;
}

API cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    alloc *a = take_alloc((uintptr_t)p);
    if (!a) return cudaErrorInvalidValue;
    drop_alloc(a);
    return cudaSuccess;
}

API cudaError_t cudaMallocHost(void **p, size_t size) {
    *p = aligned_alloc(4096, (size + 4095) / 4096 * 4096);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

API cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}

API cudaError_t cudaHostRegister(void *p, size_t n, unsigned f) {
    (void)p, (void)n, (void)f;
    return cudaSuccess;
}

API cudaError_t cudaHostUnregister(void *p) {
    (void)p;
    return cudaSuccess;
}

API cudaError_t cudaDeviceSynchronize(void) {
    pthread_mutex_lock(&g_mu);
    int n = g_nstreams;
    pthread_mutex_unlock(&g_mu);
    for (int i = 0; i < n; i++) stream_sync(g_streams[i]);
    return cudaSuccess;
}

API cudaError_t cudaMemcpy(void *dst, const void *src, size_t len, int kind) {
    (void)kind;
    /* Legacy default stream: after everything queued before it (approximation). */
    cudaDeviceSynchronize();
    do_copy(dst, src, len);
    return cudaSuccess;
}

/* Device ordinals do not matter here: one address space, as with unified addressing. */
API cudaError_t cudaMemcpyPeer(void *dst, int ddev, const void *src, int sdev, size_t len) {
    if (ddev < 0 || ddev >= ndev() || sdev < 0 || sdev >= ndev()) return cudaErrorInvalidDevice;
    return cudaMemcpy(dst, src, len, 4);
}

API cudaError_t cudaStreamCreateWithFlags(void **out, unsigned flags) {
    (void)flags;
    stream *s = calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_cond_init(&s->idle, NULL);
    pthread_mutex_lock(&g_mu);
    if (g_nstreams == 64) {
        pthread_mutex_unlock(&g_mu);
        free(s);
        return cudaErrorMemoryAllocation;
    }
    g_streams[g_nstreams++] = s;
    pthread_mutex_unlock(&g_mu);
    pthread_create(&s->th, NULL, stream_main, s);
    pthread_detach(s->th);
    *out = s;
    return cudaSuccess;
}

API cudaError_t cudaStreamSynchronize(void *s) {
    if (!s) return cudaDeviceSynchronize();
    stream_sync(s);
    return cudaSuccess;
}

API cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t len, int kind, void *s) {
    (void)kind;
    if (!s) return cudaMemcpy(dst, src, len, kind);
    bool bad = false;
    (void)xlate(dst, len, &bad);
    (void)xlate(src, len, &bad);
    if (bad) return cudaErrorInvalidValue;
    op *o = calloc(1, sizeof *o);
    o->dst = dst;
    o->src = src;
    o->len = len;
    push(s, o);
    return cudaSuccess;
}

API cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}

/* The CUDA 13 signature. Every attribute must ask for stream order (what the shim
 * passes); the copies run in order on the stream. */
typedef struct { int order, st, si, dt, di; unsigned flags; } fake_attrs;
API cudaError_t cudaMemcpyBatchAsync(void *const *dsts, const void *const *srcs,
                                     const size_t *sizes, size_t count, fake_attrs *attrs,
                                     size_t *idxs, size_t nattrs, void *s) {
    if (!s || count == 0 || nattrs != 1 || idxs[0] != 0 || attrs[0].order != 1)
        return cudaErrorInvalidValue;
    g_batches++;
    for (size_t i = 0; i < count; i++) {
        cudaError_t e = cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], 4, s);
        if (e) return e;
    }
    return cudaSuccess;
}

/* The flags of the last event made, for tests (fake_cuda_last_event_flags). */
static _Atomic unsigned g_last_event_flags;

/* Not a CUDA function: what the last cudaEventCreateWithFlags asked for
 * (tests/test_cuda_wait.c checks that the library's events block). */
API unsigned fake_cuda_last_event_flags(void) { return g_last_event_flags; }

API cudaError_t cudaEventCreateWithFlags(void **out, unsigned flags) {
    g_last_event_flags = flags;
    ev *e = calloc(1, sizeof *e);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    *out = e;
    return cudaSuccess;
}

API cudaError_t cudaEventDestroy(void *p) {
    ev *e = p;
    pthread_mutex_lock(&e->mu);
    bool pending = e->done < e->recorded;
    pthread_mutex_unlock(&e->mu);
    if (pending) {
        fprintf(stderr, "fake_cudart: event destroyed with a record pending\n");
        abort();
    }
    free(e);
    return cudaSuccess;
}

API cudaError_t cudaEventRecord(void *p, void *s) {
    ev *e = p;
    if (!s) {
        cudaDeviceSynchronize();
        pthread_mutex_lock(&e->mu);
        e->done = ++e->recorded;
        pthread_mutex_unlock(&e->mu);
        return cudaSuccess;
    }
    op *o = calloc(1, sizeof *o);
    o->kind = 1;
    o->ev = e;
    pthread_mutex_lock(&e->mu);
    o->seq = ++e->recorded;
    pthread_mutex_unlock(&e->mu);
    push(s, o);
    return cudaSuccess;
}

API cudaError_t cudaEventSynchronize(void *p) {
    ev *e = p;
    pthread_mutex_lock(&e->mu);
    while (e->done < e->recorded) pthread_cond_wait(&e->cv, &e->mu);
    pthread_mutex_unlock(&e->mu);
    return cudaSuccess;
}

API cudaError_t cudaEventQuery(void *p) {
    ev *e = p;
    pthread_mutex_lock(&e->mu);
    bool done = e->done >= e->recorded;
    pthread_mutex_unlock(&e->mu);
    return done ? cudaSuccess : cudaErrorNotReady;
}

typedef struct fake_ipc {
    char magic[8];
    uint32_t pid;
    int32_t fd;
    uint64_t ino, size, device;
} fake_ipc;

API cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t *h, void *p) {
    pthread_mutex_lock(&g_mu);
    alloc *a = find_locked((uintptr_t)p, 1);
    fake_ipc f;
    memset(&f, 0, sizeof f);
    bool ok = a && a->fd >= 0;
    if (ok) {
        struct stat st;
        fstat(a->fd, &st);
        memcpy(f.magic, "FAKEIPC", 8);
        f.pid = (uint32_t)getpid();
        f.fd = a->fd;
        f.ino = (uint64_t)st.st_ino;
        f.size = a->size;
        f.device = (uint64_t)a->device;
    }
    pthread_mutex_unlock(&g_mu);
    if (!ok) return cudaErrorInvalidValue;
    memset(h, 0, sizeof *h);
    memcpy(h->reserved, &f, sizeof f);
    return cudaSuccess;
}

API cudaError_t cudaIpcOpenMemHandle(void **out, cudaIpcMemHandle_t h, unsigned flags) {
    (void)flags;
    fake_ipc f;
    memcpy(&f, h.reserved, sizeof f);
    if (memcmp(f.magic, "FAKEIPC", 8) != 0) return cudaErrorInvalidValue;
    if (f.pid == (uint32_t)getpid()) return cudaErrorInvalidResourceHandle; /* as CUDA */
    char path[64];
    snprintf(path, sizeof path, "/proc/%u/fd/%d", f.pid, f.fd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return cudaErrorMapBufferObjectFailed;
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_ino != f.ino) {
        close(fd);
        return cudaErrorMapBufferObjectFailed;
    }
    alloc *a = new_alloc(fd, (size_t)f.size, (int)f.device, false);
    close(fd);
    if (!a) return cudaErrorMapBufferObjectFailed;
    *out = (void *)a->dev;
    return cudaSuccess;
}

API cudaError_t cudaIpcCloseMemHandle(void *p) {
    alloc *a = take_alloc((uintptr_t)p);
    if (!a) return cudaErrorInvalidValue;
    drop_alloc(a);
    return cudaSuccess;
}
