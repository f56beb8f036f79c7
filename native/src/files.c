/*
 * files.c - FILE segments: kvp_file_open/sync/close and the pread/pwrite loop the copy
 * workers run.
 *
 * Files are handles like every other object (KVP_H_FILE): the descriptor stays open
 * until kvp_file_close, which refuses while a registration uses it (api.c pins the
 * file for the lifetime of each FILE registration), and a second close is a stale
 * handle (NIXL_ERR_NOT_FOUND). So a pread/pwrite of the engine can never reach a
 * descriptor number that was closed and reused for something else.
 *
 * O_DIRECT: a piece whose memory address, file offset and length are all multiples of
 * 4096 goes through the O_DIRECT fd; any other piece goes through a buffered twin of
 * the same open file (reopened through /proc/self/fd/N for that piece), and an EINVAL
 * from the direct fd falls back the same way, so alignment is never an error.
 *
 * io_uring is not used (yet): the workers issue synchronous pread/pwrite, which for
 * the sizes of KV pages (MiBs) already reaches the device or page-cache bandwidth;
 * io_uring would mainly save threads at high queue depths of small I/O.
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "builtin.h"
#include "errors.h"
#include "files.h"
#include "stage.h"

#define DIRECT_ALIGN 4096u

static int reopen_buffered(int fd) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return open(path, O_RDWR | O_CLOEXEC);
}

int32_t bi_file_rw(bool to_file, int fd, bool direct, uint8_t *mem, uint64_t off, uint64_t len,
                   char *msg, size_t cap) {
    bool aligned = ((uintptr_t)mem % DIRECT_ALIGN) == 0 && off % DIRECT_ALIGN == 0 &&
                   len % DIRECT_ALIGN == 0;
    int use = fd, twin = -1;
    if (direct && !aligned) {
        twin = reopen_buffered(fd);
        if (twin < 0) {
            snprintf(msg, cap, "fd %d has O_DIRECT and the piece (offset %llu, %llu bytes) is "
                     "not 4096-aligned; reopening it without O_DIRECT failed: %s",
                     fd, (unsigned long long)off, (unsigned long long)len, strerror(errno));
            return KVP_ERR_BACKEND;
        }
        use = twin;
    }
    uint64_t done = 0;
    int32_t st = KVP_SUCCESS;
    while (done < len) {
        size_t want = (size_t)KVP_MIN(len - done, (uint64_t)1 << 30);
        ssize_t n = to_file ? pwrite(use, mem + done, want, (off_t)(off + done))
                            : pread(use, mem + done, want, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EINVAL && direct && twin < 0) {
                /* The device wants a stricter alignment than 4096: go buffered. */
                twin = reopen_buffered(fd);
                if (twin >= 0) {
                    use = twin;
                    continue;
                }
            }
            snprintf(msg, cap, "%s of %zu bytes at offset %llu of fd %d failed: %s",
                     to_file ? "pwrite" : "pread", want, (unsigned long long)(off + done), fd,
                     strerror(errno));
            st = KVP_ERR_BACKEND;
            break;
        }
        if (n == 0) {
            snprintf(msg, cap, "%s at offset %llu of fd %d made no progress (%s)",
                     to_file ? "pwrite" : "pread", (unsigned long long)(off + done), fd,
                     to_file ? "device full?" : "end of file: the file is shorter than the "
                     "registered region");
            st = KVP_ERR_BACKEND;
            break;
        }
        done += (uint64_t)n;
    }
    kvp_close(twin);
    return st;
}

/* ------------------------------------------------------------ FILE <-> VRAM ---- */

/* A pair of staging rings for one job (an agent keeps the idle ones for reuse). */
typedef struct bi_fstage {
    struct bi_fstage *next;
    kvp_stx tx;
    kvp_srx rx;
} bi_fstage;

static bi_fstage *fstage_get(bi_agent *a) {
    pthread_mutex_lock(&a->stage_mu);
    bi_fstage *f = a->fstage;
    if (f) a->fstage = f->next;
    pthread_mutex_unlock(&a->stage_mu);
    if (f) return f;
    f = calloc(1, sizeof *f);
    if (!f) return NULL;
    kvp_stx_init(&f->tx, &kvp_stage_cuda_ops, 0, 0);
    kvp_srx_init(&f->rx, &kvp_stage_cuda_ops, 0, 0);
    return f;
}

static void fstage_put(bi_agent *a, bi_fstage *f) {
    pthread_mutex_lock(&a->stage_mu);
    f->next = a->fstage;
    a->fstage = f;
    pthread_mutex_unlock(&a->stage_mu);
}

void bi_fstage_free_all(bi_agent *a) {
    pthread_mutex_lock(&a->stage_mu);
    bi_fstage *f = a->fstage;
    a->fstage = NULL;
    pthread_mutex_unlock(&a->stage_mu);
    while (f) {
        bi_fstage *n = f->next;
        kvp_stx_fini(&f->tx);
        kvp_srx_fini(&f->rx);
        free(f);
        f = n;
    }
}

/* VRAM -> file: device-to-host copies of the next chunks run while a chunk is written;
 * file -> VRAM: a chunk is read while the previous one is copied to the device. */
int32_t bi_file_rw_vram(bi_agent *a, bool to_file, int fd, bool direct, int32_t ldev,
                        uint64_t mem, uint64_t off, uint64_t len, char *msg, size_t cap) {
    bi_fstage *f = fstage_get(a);
    if (!f) {
        snprintf(msg, cap, "out of memory staging VRAM for a file transfer");
        return KVP_ERR_BACKEND;
    }
    int32_t st = KVP_SUCCESS;
    uint64_t done = 0;
    if (to_file) {
        uint64_t fed = 0;
        while (done < len && st == KVP_SUCCESS) {
            if (fed < len && !kvp_stx_full(&f->tx)) {
                uint64_t taken = 0;
                st = kvp_stx_feed(&f->tx, f, ldev, mem, fed, len - fed, &taken);
                fed += taken;
                if (st != KVP_SUCCESS) break;
            }
            const uint8_t *p;
            uint64_t n;
            st = kvp_stx_front(&f->tx, f, done, &p, &n);
            if (st != KVP_SUCCESS) break;
            st = bi_file_rw(true, fd, direct, (uint8_t *)p, off + done, n, msg, cap);
            if (st != KVP_SUCCESS) break;
            kvp_stx_consume(&f->tx, n);
            done += n;
        }
        if (st != KVP_SUCCESS && !msg[0])
            snprintf(msg, cap, "staging VRAM (device %d) to fd %d: %s", ldev, fd,
                     f->tx.r.msg[0] ? f->tx.r.msg : kvp_err_text());
        kvp_stx_reset(&f->tx);
    } else {
        st = kvp_srx_begin(&f->rx, ldev, mem);
        while (st == KVP_SUCCESS && done < len) {
            uint8_t *p;
            uint64_t room;
            st = kvp_srx_space(&f->rx, &p, &room);
            if (st != KVP_SUCCESS) break;
            uint64_t n = KVP_MIN(room, len - done);
            st = bi_file_rw(false, fd, direct, p, off + done, n, msg, cap);
            if (st != KVP_SUCCESS) break;
            done += n;
            st = kvp_srx_commit(&f->rx, n, done == len);
        }
        int32_t s2 = kvp_srx_drain(&f->rx);
        if (st == KVP_SUCCESS) st = s2;
        if (st != KVP_SUCCESS && !msg[0])
            snprintf(msg, cap, "staging fd %d into VRAM (device %d): %s", fd, ldev,
                     f->rx.r.msg[0] ? f->rx.r.msg : kvp_err_text());
    }
    f->tx.r.msg[0] = f->rx.r.msg[0] = '\0';
    fstage_put(a, f);
    return st;
}

/* ------------------------------------------------------------ file handles ---- */

typedef struct kvp_file {
    kvp_obj obj;
    int fd;
    bool direct;
    bool closed;      /* (g_fmu) */
    uint32_t regs;    /* registrations using it (g_fmu) */
    uint64_t handle;
    char path[512];
} kvp_file;

/* Open files by descriptor (g_fmu): registrations name files by fd (NIXL's FILE
 * descriptors carry the fd), so the pins go through this table. */
static pthread_mutex_t g_fmu = PTHREAD_MUTEX_INITIALIZER;
static kvp_file **g_byfd;
static size_t g_nbyfd;

static void file_release(kvp_obj *o) { free(o); }

static kvp_file *byfd_locked(uint64_t fd) {
    return fd < g_nbyfd ? g_byfd[fd] : NULL;
}

int32_t kvp_files_pin(const uint64_t *fds, uint64_t n) {
    pthread_mutex_lock(&g_fmu);
    for (uint64_t i = 0; i < n; i++) {
        kvp_file *f = byfd_locked(fds[i]);
        if (!f || f->closed) {
            for (uint64_t k = 0; k < i; k++) byfd_locked(fds[k])->regs--;
            pthread_mutex_unlock(&g_fmu);
            return kvp_err(KVP_ERR_INVALID_PARAM,
                           "kvp_register: FILE region %llu: fd %llu is not a file opened with "
                           "kvp_file_open (files are handles: open them through it, so that a "
                           "registered descriptor cannot be closed under the engine)",
                           (unsigned long long)i, (unsigned long long)fds[i]);
        }
        f->regs++;
    }
    pthread_mutex_unlock(&g_fmu);
    return KVP_SUCCESS;
}

void kvp_files_unpin(const uint64_t *fds, uint64_t n) {
    pthread_mutex_lock(&g_fmu);
    for (uint64_t i = 0; i < n; i++) {
        kvp_file *f = byfd_locked(fds[i]);
        if (f && f->regs > 0) f->regs--;
    }
    pthread_mutex_unlock(&g_fmu);
}

static int32_t byfd_add(kvp_file *f) {
    pthread_mutex_lock(&g_fmu);
    size_t fd = (size_t)f->fd;
    if (fd >= g_nbyfd) {
        size_t nc = g_nbyfd ? g_nbyfd : 64;
        while (nc <= fd) nc *= 2;
        kvp_file **nb = realloc(g_byfd, nc * sizeof *nb);
        if (!nb) {
            pthread_mutex_unlock(&g_fmu);
            return kvp_err(KVP_ERR_BACKEND, "out of memory");
        }
        memset(nb + g_nbyfd, 0, (nc - g_nbyfd) * sizeof *nb);
        g_byfd = nb;
        g_nbyfd = nc;
    }
    g_byfd[fd] = f; /* the descriptor is ours and open: no other entry can hold it */
    pthread_mutex_unlock(&g_fmu);
    return KVP_SUCCESS;
}

static kvp_file *file_get(uint64_t h, const char *fn) {
    kvp_file *f = (kvp_file *)kvp_handle_get(h, KVP_H_FILE);
    if (!f) kvp_err_wrap(kvp_err_status(), "%s", fn);
    return f;
}

KVP_API int32_t kvp_file_open(const char *path, uint32_t flags, uint64_t size, uint64_t *out_file,
                              int32_t *out_fd, int32_t *out_direct) {
    kvp_err_clear();
    if (out_file) *out_file = 0;
    if (out_fd) *out_fd = -1;
    if (out_direct) *out_direct = 0;
    if (!path || !*path || !out_file)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_file_open: path and out_file are required");
    if (flags & ~(KVP_FILE_CREATE | KVP_FILE_DIRECT | KVP_FILE_TRUNCATE))
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_file_open: unknown flags 0x%x", flags);
    int of = O_RDWR | O_CLOEXEC;
    if (flags & KVP_FILE_CREATE) of |= O_CREAT;
    if (flags & KVP_FILE_TRUNCATE) of |= O_TRUNC;
    int fd = -1;
    bool direct = false;
    if (flags & KVP_FILE_DIRECT) {
        fd = open(path, of | O_DIRECT, 0644);
        if (fd >= 0) direct = true;
        else if (errno != EINVAL)
            return kvp_err(KVP_ERR_BACKEND, "cannot open %s: %s", path, strerror(errno));
        /* EINVAL: the file system refuses O_DIRECT (tmpfs...): open it buffered. */
    }
    if (fd < 0) {
        fd = open(path, of, 0644);
        if (fd < 0) return kvp_err(KVP_ERR_BACKEND, "cannot open %s: %s", path, strerror(errno));
    }
    if (size > 0) {
        struct stat st;
        if (fstat(fd, &st) != 0) {
            int e = errno;
            kvp_close(fd);
            return kvp_err(KVP_ERR_BACKEND, "cannot stat %s: %s", path, strerror(e));
        }
        if ((uint64_t)st.st_size < size) {
            int rc;
            do rc = posix_fallocate(fd, 0, (off_t)size);
            while (rc == EINTR);
            if (rc == EOPNOTSUPP || rc == EINVAL || rc == ENOSYS) {
                rc = ftruncate(fd, (off_t)size) == 0 ? 0 : errno;
            }
            if (rc != 0) {
                kvp_close(fd);
                return kvp_err(KVP_ERR_BACKEND, "cannot make %s %llu bytes long: %s", path,
                               (unsigned long long)size, strerror(rc));
            }
        }
    }
    kvp_file *f = calloc(1, sizeof *f);
    if (!f) {
        kvp_close(fd);
        return kvp_err(KVP_ERR_BACKEND, "out of memory");
    }
    kvp_obj_init(&f->obj, KVP_H_FILE, file_release);
    f->fd = fd;
    f->direct = direct;
    snprintf(f->path, sizeof f->path, "%s", path);
    int32_t st = kvp_handle_insert(&f->obj, &f->handle);
    if (st == KVP_SUCCESS) st = byfd_add(f);
    if (st != KVP_SUCCESS) {
        kvp_handle_drop(f->handle, &f->obj);
        kvp_obj_put(&f->obj);
        kvp_close(fd);
        return st;
    }
    *out_file = f->handle;
    if (out_fd) *out_fd = fd;
    if (out_direct) *out_direct = direct ? 1 : 0;
    kvp_obj_put(&f->obj); /* the table keeps it */
    return KVP_SUCCESS;
}

KVP_API int32_t kvp_file_sync(uint64_t file) {
    kvp_err_clear();
    kvp_file *f = file_get(file, "kvp_file_sync");
    if (!f) return kvp_err_status();
    int32_t st = KVP_SUCCESS;
    if (fdatasync(f->fd) != 0)
        st = kvp_err(KVP_ERR_BACKEND, "fdatasync of %s (fd %d) failed: %s", f->path, f->fd,
                     strerror(errno));
    kvp_obj_put(&f->obj);
    return st;
}

KVP_API int32_t kvp_file_close(uint64_t file) {
    kvp_err_clear();
    kvp_file *f = file_get(file, "kvp_file_close");
    if (!f) return kvp_err_status();
    pthread_mutex_lock(&g_fmu);
    if (f->closed || f->regs > 0) {
        uint32_t regs = f->regs;
        bool closed = f->closed;
        pthread_mutex_unlock(&g_fmu);
        int32_t st = closed ? kvp_err(KVP_ERR_NOT_FOUND,
                                      "kvp_file_close: %s is already being closed", f->path)
                            : kvp_err(KVP_ERR_NOT_ALLOWED,
                                      "kvp_file_close: %s (fd %d) is still registered (%u "
                                      "registration%s): deregister it first",
                                      f->path, f->fd, regs, regs == 1 ? "" : "s");
        kvp_obj_put(&f->obj);
        return st;
    }
    f->closed = true;
    if ((size_t)f->fd < g_nbyfd && g_byfd[f->fd] == f) g_byfd[f->fd] = NULL;
    pthread_mutex_unlock(&g_fmu);
    int32_t st = KVP_SUCCESS;
    if (close(f->fd) != 0 && errno != EINTR)
        st = kvp_err(KVP_ERR_BACKEND, "close of %s (fd %d) failed: %s", f->path, f->fd,
                     strerror(errno));
    kvp_handle_drop(file, &f->obj);
    kvp_obj_put(&f->obj);
    return st;
}
