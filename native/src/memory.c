/* memory.c - kvp_mem_alloc/free/copy/checksum (see memory.h). */
#include "memory.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cuda_loader.h"
#include "errors.h"

typedef struct alloc {
    uint64_t base, size;
    int32_t mem_type, dev;
    int fd;
    uint64_t ino;
} alloc;

/* Sorted by base; few entries (pools), so a sorted array with binary search is plenty. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static alloc *g_allocs;
static size_t g_n, g_cap;

#define HUGE_ALIGN (2u * 1024u * 1024u)

/* Index of the last allocation with base <= addr, or SIZE_MAX. Caller holds g_mu. */
static size_t find_le(uint64_t addr) {
    size_t lo = 0, hi = g_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g_allocs[mid].base <= addr) lo = mid + 1;
        else hi = mid;
    }
    return lo == 0 ? SIZE_MAX : lo - 1;
}

static int32_t table_add(const alloc *a) {
    pthread_mutex_lock(&g_mu);
    if (g_n == g_cap) {
        size_t nc = g_cap ? g_cap * 2 : 16;
        alloc *na = realloc(g_allocs, nc * sizeof *na);
        if (!na) {
            pthread_mutex_unlock(&g_mu);
            return kvp_err(KVP_ERR_BACKEND, "out of memory in the allocation table");
        }
        g_allocs = na;
        g_cap = nc;
    }
    size_t i = find_le(a->base);
    size_t pos = i == SIZE_MAX ? 0 : i + 1;
    memmove(&g_allocs[pos + 1], &g_allocs[pos], (g_n - pos) * sizeof *g_allocs);
    g_allocs[pos] = *a;
    g_n++;
    pthread_mutex_unlock(&g_mu);
    return KVP_SUCCESS;
}

bool kvp_mem_find_memfd(uint64_t addr, uint64_t len, kvp_memfd_info *out) {
    bool found = false;
    pthread_mutex_lock(&g_mu);
    size_t i = find_le(addr);
    if (i != SIZE_MAX && g_allocs[i].mem_type == KVP_DRAM && g_allocs[i].fd >= 0 &&
        kvp_range_ok(addr, len, g_allocs[i].base, g_allocs[i].size)) {
        out->base = g_allocs[i].base;
        out->size = g_allocs[i].size;
        out->fd = g_allocs[i].fd;
        out->ino = g_allocs[i].ino;
        found = true;
    }
    pthread_mutex_unlock(&g_mu);
    return found;
}

bool kvp_mem_find_vram(uint64_t addr, uint64_t len, int32_t dev, uint64_t *base) {
    bool found = false;
    pthread_mutex_lock(&g_mu);
    size_t i = find_le(addr);
    if (i != SIZE_MAX && g_allocs[i].mem_type == KVP_VRAM && g_allocs[i].dev == dev &&
        kvp_range_ok(addr, len, g_allocs[i].base, g_allocs[i].size)) {
        *base = g_allocs[i].base;
        found = true;
    }
    pthread_mutex_unlock(&g_mu);
    return found;
}

/* Faults every page of a fresh shared mapping in (like a pinned buffer), so the first
 * transfers do not pay for page faults. MADV_POPULATE_WRITE (Linux 5.14) does it in one
 * call; older kernels get a write of zero per page (the memory is zero anyway). */
static void populate(uint8_t *p, size_t size) {
#ifdef MADV_POPULATE_WRITE
    if (madvise(p, size, MADV_POPULATE_WRITE) == 0) return;
#endif
    long pg = sysconf(_SC_PAGESIZE);
    size_t step = pg > 0 ? (size_t)pg : 4096;
    for (size_t off = 0; off < size; off += step) ((volatile uint8_t *)p)[off] = 0;
}

/* Maps a memfd of `size` bytes (fd < 0: private anonymous memory); sizes of 2 MiB and
 * more get a 2 MiB-aligned address (reserve size + 2 MiB of address space, map at the
 * aligned point inside it, return the rest) so that huge pages can back it where THP is
 * enabled (the advice has to come before the pages are faulted in). */
static void *map_aligned(int fd, size_t size, bool sparse) {
    uint8_t *a;
    int flags = fd >= 0 ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS;
    if (size < HUGE_ALIGN) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, fd, 0);
        if (p == MAP_FAILED) return NULL;
        a = p;
    } else {
        size_t span = size + HUGE_ALIGN;
        uint8_t *r = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                          -1, 0);
        if (r == MAP_FAILED) return NULL;
        uintptr_t al = ((uintptr_t)r + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1);
        a = (uint8_t *)al;
        void *p = mmap(a, size, PROT_READ | PROT_WRITE, flags | MAP_FIXED, fd, 0);
        if (p == MAP_FAILED) {
            munmap(r, span);
            return NULL;
        }
        if (a > r) munmap(r, (size_t)(a - r));
        size_t tail = (size_t)((r + span) - (a + size));
        if (tail) munmap(a + size, tail);
        (void)madvise(a, size, MADV_HUGEPAGE); /* advisory: ignored where THP is off */
    }
    if (!sparse) populate(a, size);
    return a;
}

static int32_t dram_alloc(uint64_t size, int32_t flags, uint64_t *out) {
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t psz = pg > 0 ? (uint64_t)pg : 4096;
    if (size > (UINT64_MAX >> 2))
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_mem_alloc: size %llu is too large",
                       (unsigned long long)size);
    if (flags & ~(KVP_DRAM_PRIVATE | KVP_DRAM_SPARSE))
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_mem_alloc: unknown DRAM flags 0x%x in dev (KVP_DRAM_PRIVATE = 1, "
                       "KVP_DRAM_SPARSE = 2)",
                       (unsigned)flags);
    bool sparse = (flags & KVP_DRAM_SPARSE) != 0;
    uint64_t rounded = (size + psz - 1) / psz * psz;
    if (flags & KVP_DRAM_PRIVATE) {
        void *p = map_aligned(-1, (size_t)rounded, sparse);
        if (!p)
            return kvp_err(KVP_ERR_BACKEND, "mmap of %llu bytes failed: %s",
                           (unsigned long long)rounded, strerror(errno));
        alloc a = {(uint64_t)(uintptr_t)p, rounded, KVP_DRAM, 0, -1, 0};
        int32_t s = table_add(&a);
        if (s != KVP_SUCCESS) {
            munmap(p, (size_t)rounded);
            return s;
        }
        *out = a.base;
        return KVP_SUCCESS;
    }
    int fd = memfd_create("kvport", MFD_CLOEXEC);
    if (fd < 0)
        return kvp_err(KVP_ERR_BACKEND, "memfd_create failed: %s", strerror(errno));
    if (ftruncate(fd, (off_t)rounded) != 0) {
        int e = errno;
        kvp_close(fd);
        return kvp_err(KVP_ERR_BACKEND, "ftruncate of a %llu-byte memfd failed: %s",
                       (unsigned long long)rounded, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        kvp_close(fd);
        return kvp_err(KVP_ERR_BACKEND, "fstat of a memfd failed: %s", strerror(e));
    }
    void *p = map_aligned(fd, (size_t)rounded, sparse);
    if (!p) {
        int e = errno;
        kvp_close(fd);
        return kvp_err(KVP_ERR_BACKEND, "mmap of %llu bytes failed: %s",
                       (unsigned long long)rounded, strerror(e));
    }
    alloc a = {(uint64_t)(uintptr_t)p, rounded, KVP_DRAM, 0, fd, (uint64_t)st.st_ino};
    int32_t s = table_add(&a);
    if (s != KVP_SUCCESS) {
        munmap(p, (size_t)rounded);
        kvp_close(fd);
        return s;
    }
    *out = a.base;
    return KVP_SUCCESS;
}

KVP_API int32_t kvp_mem_alloc(int32_t mem_type, int32_t dev, uint64_t size, uint64_t *out_addr) {
    kvp_err_clear();
    if (!out_addr) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_mem_alloc: out_addr is NULL");
    *out_addr = 0;
    if (size == 0) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_mem_alloc: size is 0");
    if (mem_type == KVP_DRAM) return dram_alloc(size, dev, out_addr);
    if (mem_type == KVP_VRAM) {
        uint64_t p = 0;
        int32_t s = kvp_cuda_malloc(dev, size, &p);
        if (s != KVP_SUCCESS) return s;
        alloc a = {p, size, KVP_VRAM, dev, -1, 0};
        s = table_add(&a);
        if (s != KVP_SUCCESS) {
            (void)kvp_cuda_free(dev, p);
            return s;
        }
        *out_addr = p;
        return KVP_SUCCESS;
    }
    return kvp_err(KVP_ERR_NOT_SUPPORTED,
                   "kvp_mem_alloc: memory type %d is not allocatable (DRAM=0 or VRAM=1)",
                   mem_type);
}

KVP_API int32_t kvp_mem_free(uint64_t addr) {
    kvp_err_clear();
    pthread_mutex_lock(&g_mu);
    size_t i = find_le(addr);
    if (i == SIZE_MAX || g_allocs[i].base != addr) {
        pthread_mutex_unlock(&g_mu);
        return kvp_err(KVP_ERR_NOT_FOUND,
                       "kvp_mem_free: 0x%llx is not an address returned by kvp_mem_alloc "
                       "(or it was freed already)",
                       (unsigned long long)addr);
    }
    alloc a = g_allocs[i];
    memmove(&g_allocs[i], &g_allocs[i + 1], (g_n - i - 1) * sizeof *g_allocs);
    g_n--;
    pthread_mutex_unlock(&g_mu);
    if (a.mem_type == KVP_DRAM) {
        munmap((void *)(uintptr_t)a.base, (size_t)a.size);
        kvp_close(a.fd); /* -1 for private memory */
        return KVP_SUCCESS;
    }
    return kvp_cuda_free(a.dev, a.base);
}

KVP_API int32_t kvp_mem_copy(int32_t dst_type, int32_t dst_dev, uint64_t dst, int32_t src_type,
                             int32_t src_dev, uint64_t src, uint64_t len) {
    kvp_err_clear();
    if (len == 0) return KVP_SUCCESS;
    if (dst == 0 || src == 0)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_mem_copy: NULL %s address",
                       dst == 0 ? "destination" : "source");
    if ((dst_type != KVP_DRAM && dst_type != KVP_VRAM) ||
        (src_type != KVP_DRAM && src_type != KVP_VRAM))
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_mem_copy: memory types must be DRAM (0) or VRAM (1), got %d and %d",
                       dst_type, src_type);
    if (dst_type == KVP_DRAM && src_type == KVP_DRAM) {
        memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, (size_t)len);
        return KVP_SUCCESS;
    }
    return kvp_cuda_memcpy(dst_type == KVP_VRAM ? dst_dev : src_dev, dst, src, len);
}

KVP_API int32_t kvp_mem_checksum(int32_t mem_type, int32_t dev, uint64_t addr, uint64_t len,
                                 uint64_t *out_sum) {
    kvp_err_clear();
    if (!out_sum) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_mem_checksum: out_sum is NULL");
    *out_sum = KVP_FNV_OFFSET;
    if (len == 0) return KVP_SUCCESS;
    if (addr == 0) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_mem_checksum: NULL address");
    if (mem_type == KVP_DRAM) {
        *out_sum = kvp_fnv1a(KVP_FNV_OFFSET, (const uint8_t *)(uintptr_t)addr, (size_t)len);
        return KVP_SUCCESS;
    }
    if (mem_type != KVP_VRAM)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_mem_checksum: memory type must be DRAM (0) or VRAM (1), got %d",
                       mem_type);
    int32_t st = kvp_cuda_check_dev(dev);
    if (st != KVP_SUCCESS) return st;
    const uint64_t chunk = 8u << 20;
    uint8_t *tmp = malloc((size_t)KVP_MIN(chunk, len));
    if (!tmp) return kvp_err(KVP_ERR_BACKEND, "kvp_mem_checksum: out of memory");
    uint64_t h = KVP_FNV_OFFSET;
    for (uint64_t off = 0; off < len; off += chunk) {
        uint64_t n = KVP_MIN(chunk, len - off);
        st = kvp_cuda_memcpy(dev, (uint64_t)(uintptr_t)tmp, addr + off, n);
        if (st != KVP_SUCCESS) break;
        h = kvp_fnv1a(h, tmp, (size_t)n);
    }
    free(tmp);
    if (st == KVP_SUCCESS) *out_sum = h;
    return st;
}
