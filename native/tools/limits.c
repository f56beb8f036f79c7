/*
 * kvport-limits - physical limits the benchmarks compare the engine against. Each probe
 * prints one JSON line on stdout.
 *
 *   kvport-limits memcpy <bytes> <reps>
 *       single-thread memcpy between two pre-faulted buffers, GB/s (1e9 bytes/s)
 *   kvport-limits tcp <bytes_per_msg> <total_bytes> [window_bytes]
 *       raw TCP stream over loopback between two processes (fork), GB/s, with the same
 *       socket options as the engine (TCP_NODELAY, autotuned buffers). Each side cycles
 *       through window_bytes of memory (default: one message buffer, cache-hot)
 *   kvport-limits file <dir> <bytes> <count> [direct] [distinct] [4k]
 *       sequential write (fdatasync included) then read of count chunks of bytes in a
 *       temporary file in dir, GB/s each. Without "direct" the read is served by the
 *       page cache (dropping it needs privileges this tool does not assume).
 *       distinct: every chunk has its own buffer (count x bytes of memory, as an engine
 *       moving distinct pages has), instead of one cache-hot buffer reused.
 *       4k: buffers without transparent huge pages, like kvp_mem_alloc's shared memory
 *       on systems where shmem THP is off (O_DIRECT then builds requests from 4 KiB
 *       segments, which some VMs serve at half speed).
 *   kvport-limits cuda-memcpy <bytes> <reps> [d2d|h2d|d2h] [device]
 *       cudaMemcpy of bytes between two cudaMalloc buffers (d2d, default) or between
 *       pinned host memory (cudaMallocHost) and the device, each copy followed by
 *       cudaDeviceSynchronize, through libcudart loaded at run time (KVPORT_CUDART or
 *       the usual names), GB/s counting the bytes once. Exit 3 without CUDA.
 *   kvport-limits cuda-memcpy-peer <bytes> <reps> [src_device] [dst_device]
 *       cudaMemcpyPeer of bytes from a cudaMalloc buffer on src_device (default 0) to one
 *       on dst_device (default 1), each copy followed by cudaDeviceSynchronize on both
 *       devices, peer access enabled both ways where cudaDeviceCanAccessPeer allows it
 *       ("peer_access" in the output says whether it was). Exit 3 without two devices.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *probe, const char *what) {
    printf("{\"probe\":\"%s\",\"error\":\"%s: %s\"}\n", probe, what, strerror(errno));
    exit(1);
}

static uint64_t parse_size(const char *s, const char *probe) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || !end || end == s) {
        printf("{\"probe\":\"%s\",\"error\":\"not a number: %s\"}\n", probe, s);
        exit(2);
    }
    /* Accept k/m/g suffixes (binary). */
    if (*end == 'k' || *end == 'K') v <<= 10;
    else if (*end == 'm' || *end == 'M') v <<= 20;
    else if (*end == 'g' || *end == 'G') v <<= 30;
    return v;
}

static int g_small_pages; /* file ... 4k */

/* Page-aligned, pre-faulted memory (huge pages advised where available, unless 4k). */
static uint8_t *big_buffer(uint64_t n, const char *probe) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die(probe, "mmap");
    (void)madvise(p, n, g_small_pages ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
    memset(p, 1, n);
    return p;
}

static int probe_memcpy(uint64_t bytes, uint64_t reps) {
    if (bytes == 0 || reps == 0) {
        printf("{\"probe\":\"memcpy\",\"error\":\"bytes and reps must be > 0\"}\n");
        return 2;
    }
    uint8_t *a = big_buffer(bytes, "memcpy"), *b = big_buffer(bytes, "memcpy");
    memcpy(b, a, bytes); /* warm-up */
    double t0 = now();
    for (uint64_t i = 0; i < reps; i++) {
        memcpy(i % 2 ? a : b, i % 2 ? b : a, bytes);
        __asm__ __volatile__("" ::: "memory"); /* keep every copy */
    }
    double dt = now() - t0;
    printf("{\"probe\":\"memcpy\",\"bytes\":%llu,\"reps\":%llu,\"seconds\":%.6f,\"gbps\":%.3f}\n",
           (unsigned long long)bytes, (unsigned long long)reps, dt,
           (double)bytes * (double)reps / dt / 1e9);
    return 0;
}

static void tcp_opts(int fd) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* window: bytes of distinct memory each side cycles through (default msg: one buffer,
 * cache-hot when small; the engine streams from and into whole pools, so a window of
 * the transfer's size is the like-for-like comparison). */
static int probe_tcp(uint64_t msg, uint64_t total, uint64_t window) {
    if (window < msg) window = msg;
    if (msg == 0 || total == 0) {
        printf("{\"probe\":\"tcp\",\"error\":\"sizes must be > 0\"}\n");
        return 2;
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) die("tcp", "socket");
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&sa, &sl) != 0)
        die("tcp", "listen");
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) die("tcp", "fork");
    if (pid == 0) {
        /* Sender: streams total bytes in msg-sized send() calls. */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) _exit(1);
        tcp_opts(fd);
        uint8_t *win = big_buffer(window, "tcp");
        uint64_t sent = 0, pos = 0;
        while (sent < total) {
            uint64_t want = total - sent < msg ? total - sent : msg;
            if (pos + want > window) pos = 0;
            uint8_t *buf = win + pos;
            pos += want;
            uint64_t off = 0;
            while (off < want) {
                ssize_t k = send(fd, buf + off, want - off, MSG_NOSIGNAL);
                if (k < 0 && errno == EINTR) continue;
                if (k <= 0) _exit(1);
                off += (uint64_t)k;
            }
            sent += want;
        }
        close(fd);
        _exit(0);
    }
    int fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) die("tcp", "accept");
    tcp_opts(fd);
    uint8_t *win = big_buffer(window, "tcp");
    uint64_t got = 0, pos = 0;
    double t0 = 0;
    while (got < total) {
        if (pos + msg > window) pos = 0;
        ssize_t k = recv(fd, win + pos, msg, 0);
        if (k > 0) pos += (uint64_t)k;
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) die("tcp", "recv");
        if (got == 0) t0 = now();
        got += (uint64_t)k;
    }
    double dt = now() - t0;
    int st = 0;
    waitpid(pid, &st, 0);
    close(fd);
    close(l);
    printf("{\"probe\":\"tcp\",\"msg_bytes\":%llu,\"total_bytes\":%llu,\"window_bytes\":%llu,"
           "\"seconds\":%.6f,\"gbps\":%.3f,\"note\":\"loopback, two processes, timed from the "
           "first byte\"}\n",
           (unsigned long long)msg, (unsigned long long)total, (unsigned long long)window, dt,
           (double)total / dt / 1e9);
    return 0;
}

static int probe_file(const char *dir, uint64_t bytes, uint64_t count, int direct, int distinct) {
    if (bytes == 0 || count == 0) {
        printf("{\"probe\":\"file\",\"error\":\"sizes must be > 0\"}\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/kvport-limits-XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) die("file", "mkstemp");
    int used_direct = 0;
    if (direct) {
        int dfd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
        if (dfd >= 0) {
            close(fd);
            fd = dfd;
            used_direct = 1;
        }
    }
    if (direct && bytes % 4096) {
        printf("{\"probe\":\"file\",\"error\":\"direct I/O needs bytes to be a multiple of 4096\"}\n");
        unlink(path);
        return 2;
    }
    uint8_t *mem = big_buffer(distinct ? bytes * count : bytes, "file");
    double t0 = now();
    for (uint64_t i = 0; i < count; i++) {
        uint8_t *buf = distinct ? mem + i * bytes : mem;
        uint64_t off = 0;
        while (off < bytes) {
            ssize_t k = pwrite(fd, buf + off, bytes - off, (off_t)(i * bytes + off));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                unlink(path);
                die("file", "pwrite");
            }
            off += (uint64_t)k;
        }
    }
    if (fdatasync(fd) != 0) {
        unlink(path);
        die("file", "fdatasync");
    }
    double wt = now() - t0;
    t0 = now();
    for (uint64_t i = 0; i < count; i++) {
        uint8_t *buf = distinct ? mem + i * bytes : mem;
        uint64_t off = 0;
        while (off < bytes) {
            ssize_t k = pread(fd, buf + off, bytes - off, (off_t)(i * bytes + off));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                unlink(path);
                die("file", "pread");
            }
            off += (uint64_t)k;
        }
    }
    double rt = now() - t0;
    close(fd);
    unlink(path);
    double total = (double)bytes * (double)count;
    printf("{\"probe\":\"file\",\"dir\":\"%s\",\"bytes\":%llu,\"count\":%llu,\"direct\":%s,"
           "\"distinct\":%s,\"pages\":\"%s\",\"write_seconds\":%.6f,\"write_gbps\":%.3f,"
           "\"read_seconds\":%.6f,\"read_gbps\":%.3f,\"note\":\"%s\"}\n",
           dir, (unsigned long long)bytes, (unsigned long long)count,
           used_direct ? "true" : "false", distinct ? "true" : "false",
           g_small_pages ? "4k" : "thp-advised", wt, total / wt / 1e9, rt, total / rt / 1e9,
           used_direct ? "O_DIRECT: write includes fdatasync, read bypasses the page cache"
                       : "buffered: write includes fdatasync; read is from the page cache");
    return 0;
}

/* The CUDA runtime, looked up as the shim does ($KVPORT_CUDART first, e.g. the fake
 * runtime of the CPU tests); prints the probe's error line and returns NULL when absent. */
static void *open_cudart(const char *probe) {
    const char *env = getenv("KVPORT_CUDART");
    const char *names[] = {env && *env ? env : "libcudart.so", "libcudart.so",
                           "libcudart.so.13", "libcudart.so.12",
                           "/usr/local/cuda/lib64/libcudart.so"};
    void *lib = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !lib; i++)
        lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib) printf("{\"probe\":\"%s\",\"error\":\"no libcudart\"}\n", probe);
    return lib;
}

/* cudaMemcpy between device buffers (or pinned host and device), as the GPU benchmark's
 * limit: the engine's VRAM copies are compared with what the runtime itself does. */
static int probe_cuda_memcpy(uint64_t bytes, uint64_t reps, const char *kind, int dev) {
    void *lib = open_cudart("cuda-memcpy");
    if (!lib) return 3;
    typedef int (*f_count)(int *);
    typedef int (*f_set)(int);
    typedef int (*f_malloc)(void **, size_t);
    typedef int (*f_free)(void *);
    typedef int (*f_copy)(void *, const void *, size_t, int);
    typedef int (*f_sync)(void);
    typedef const char *(*f_str)(int);
    f_count count = (f_count)dlsym(lib, "cudaGetDeviceCount");
    f_set set = (f_set)dlsym(lib, "cudaSetDevice");
    f_malloc dmalloc = (f_malloc)dlsym(lib, "cudaMalloc");
    f_malloc hmalloc = (f_malloc)dlsym(lib, "cudaMallocHost");
    f_free dfree = (f_free)dlsym(lib, "cudaFree");
    f_free hfree = (f_free)dlsym(lib, "cudaFreeHost");
    f_copy copy = (f_copy)dlsym(lib, "cudaMemcpy");
    f_sync sync = (f_sync)dlsym(lib, "cudaDeviceSynchronize");
    f_str str = (f_str)dlsym(lib, "cudaGetErrorString");
    int n = 0;
    if (!count || !set || !dmalloc || !hmalloc || !dfree || !hfree || !copy || !sync || !str ||
        count(&n) != 0 || n <= dev) {
        printf("{\"probe\":\"cuda-memcpy\",\"error\":\"no CUDA device %d\"}\n", dev);
        return 3;
    }
    int d2d = strcmp(kind, "d2d") == 0, h2d = strcmp(kind, "h2d") == 0;
    if (!d2d && !h2d && strcmp(kind, "d2h") != 0) return 2;
    void *a = NULL, *b = NULL;
    int e = set(dev);
    if (!e) e = dmalloc(&a, bytes);
    if (!e) e = d2d ? dmalloc(&b, bytes) : hmalloc(&b, bytes);
    if (e) {
        printf("{\"probe\":\"cuda-memcpy\",\"error\":\"allocation: %s\"}\n", str(e));
        return 1;
    }
    void *dst = h2d ? a : b, *src = h2d ? b : a; /* d2d: a -> b; d2h: a -> b (host) */
    for (int w = 0; w < 2; w++) copy(dst, src, bytes, 4), sync();
    double t0 = now();
    for (uint64_t i = 0; i < reps; i++) {
        e = copy(dst, src, bytes, 4);
        if (!e) e = sync();
        if (e) break;
    }
    double t = now() - t0;
    if (e) {
        printf("{\"probe\":\"cuda-memcpy\",\"error\":\"cudaMemcpy: %s\"}\n", str(e));
        return 1;
    }
    printf("{\"probe\":\"cuda-memcpy\",\"kind\":\"%s\",\"device\":%d,\"bytes\":%llu,"
           "\"reps\":%llu,\"seconds\":%.6f,\"gbps\":%.3f}\n",
           kind, dev, (unsigned long long)bytes, (unsigned long long)reps, t,
           (double)bytes * (double)reps / t / 1e9);
    dfree(a);
    if (d2d) dfree(b);
    else hfree(b);
    return 0;
}

/* cudaMemcpyPeer between two devices, as the limit of the cross-device GPU figure. */
static int probe_cuda_memcpy_peer(uint64_t bytes, uint64_t reps, int sdev, int ddev) {
    void *lib = open_cudart("cuda-memcpy-peer");
    if (!lib) return 3;
    typedef int (*f_count)(int *);
    typedef int (*f_set)(int);
    typedef int (*f_malloc)(void **, size_t);
    typedef int (*f_free)(void *);
    typedef int (*f_peer)(void *, int, const void *, int, size_t);
    typedef int (*f_can)(int *, int, int);
    typedef int (*f_enable)(int, unsigned);
    typedef int (*f_sync)(void);
    typedef const char *(*f_str)(int);
    f_count count = (f_count)dlsym(lib, "cudaGetDeviceCount");
    f_set set = (f_set)dlsym(lib, "cudaSetDevice");
    f_malloc dmalloc = (f_malloc)dlsym(lib, "cudaMalloc");
    f_free dfree = (f_free)dlsym(lib, "cudaFree");
    f_peer peer = (f_peer)dlsym(lib, "cudaMemcpyPeer");
    f_can can = (f_can)dlsym(lib, "cudaDeviceCanAccessPeer");         /* optional */
    f_enable enable = (f_enable)dlsym(lib, "cudaDeviceEnablePeerAccess"); /* optional */
    f_sync sync = (f_sync)dlsym(lib, "cudaDeviceSynchronize");
    f_str str = (f_str)dlsym(lib, "cudaGetErrorString");
    int n = 0;
    if (!count || !set || !dmalloc || !dfree || !sync || !str || count(&n) != 0) n = 0;
    if (!peer) {
        printf("{\"probe\":\"cuda-memcpy-peer\",\"error\":\"libcudart lacks cudaMemcpyPeer\"}\n");
        return 3;
    }
    if (sdev == ddev || sdev < 0 || ddev < 0 || n <= sdev || n <= ddev) {
        printf("{\"probe\":\"cuda-memcpy-peer\",\"error\":\"needs CUDA devices %d and %d, "
               "found %d\"}\n", sdev, ddev, n);
        return 3;
    }
    int access = 0;
    if (can && enable) {
        int ab = 0, ba = 0;
        if (can(&ab, sdev, ddev) == 0 && can(&ba, ddev, sdev) == 0 && ab && ba) {
            /* 704 = cudaErrorPeerAccessAlreadyEnabled */
            int e1 = (set(sdev), enable(ddev, 0)), e2 = (set(ddev), enable(sdev, 0));
            access = (e1 == 0 || e1 == 704) && (e2 == 0 || e2 == 704);
        }
    }
    void *a = NULL, *b = NULL;
    int e = set(sdev);
    if (!e) e = dmalloc(&a, bytes);
    if (!e) e = set(ddev);
    if (!e) e = dmalloc(&b, bytes);
    if (e) {
        printf("{\"probe\":\"cuda-memcpy-peer\",\"error\":\"allocation: %s\"}\n", str(e));
        return 1;
    }
    double t0 = 0;
    for (uint64_t i = 0; i < reps + 2 && !e; i++) { /* the first two: warm-up */
        if (i == 2) t0 = now();
        e = peer(b, ddev, a, sdev, bytes);
        int devs[2] = {sdev, ddev};
        for (int k = 0; k < 2 && !e; k++) {
            e = set(devs[k]);
            if (!e) e = sync();
        }
    }
    double t = now() - t0;
    if (e) {
        printf("{\"probe\":\"cuda-memcpy-peer\",\"error\":\"cudaMemcpyPeer: %s\"}\n", str(e));
        return 1;
    }
    printf("{\"probe\":\"cuda-memcpy-peer\",\"src_device\":%d,\"dst_device\":%d,"
           "\"peer_access\":%s,\"bytes\":%llu,\"reps\":%llu,\"seconds\":%.6f,\"gbps\":%.3f}\n",
           sdev, ddev, access ? "true" : "false", (unsigned long long)bytes,
           (unsigned long long)reps, t, (double)bytes * (double)reps / t / 1e9);
    set(sdev);
    dfree(a);
    set(ddev);
    dfree(b);
    return 0;
}

static int usage(void) {
    fprintf(stderr,
            "usage: kvport-limits memcpy <bytes> <reps>\n"
            "       kvport-limits tcp <bytes_per_msg> <total_bytes> [window_bytes]\n"
            "       kvport-limits file <dir> <bytes> <count> [direct] [distinct] [4k]\n"
            "       kvport-limits cuda-memcpy <bytes> <reps> [d2d|h2d|d2h] [device]\n"
            "       kvport-limits cuda-memcpy-peer <bytes> <reps> [src_device] [dst_device]\n"
            "sizes accept k/m/g suffixes\n");
    return 2;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 4 && strcmp(argv[1], "memcpy") == 0)
        return probe_memcpy(parse_size(argv[2], "memcpy"), parse_size(argv[3], "memcpy"));
    if (argc >= 4 && strcmp(argv[1], "tcp") == 0)
        return probe_tcp(parse_size(argv[2], "tcp"), parse_size(argv[3], "tcp"),
                         argc >= 5 ? parse_size(argv[4], "tcp") : 0);
    if (argc >= 5 && strcmp(argv[1], "file") == 0) {
        int direct = 0, distinct = 0;
        for (int i = 5; i < argc; i++) {
            if (strcmp(argv[i], "direct") == 0) direct = 1;
            else if (strcmp(argv[i], "distinct") == 0) distinct = 1;
            else if (strcmp(argv[i], "4k") == 0) g_small_pages = 1;
            else return usage();
        }
        return probe_file(argv[2], parse_size(argv[3], "file"), parse_size(argv[4], "file"),
                          direct, distinct);
    }
    if (argc >= 4 && strcmp(argv[1], "cuda-memcpy") == 0)
        return probe_cuda_memcpy(parse_size(argv[2], "cuda-memcpy"),
                                 parse_size(argv[3], "cuda-memcpy"), argc >= 5 ? argv[4] : "d2d",
                                 argc >= 6 ? atoi(argv[5]) : 0);
    if (argc >= 4 && strcmp(argv[1], "cuda-memcpy-peer") == 0)
        return probe_cuda_memcpy_peer(parse_size(argv[2], "cuda-memcpy-peer"),
                                      parse_size(argv[3], "cuda-memcpy-peer"),
                                      argc >= 5 ? atoi(argv[4]) : 0,
                                      argc >= 6 ? atoi(argv[5]) : 1);
    return usage();
}
