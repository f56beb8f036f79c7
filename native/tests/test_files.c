/* test_files.c - FILE segments: DRAM <-> FILE through loopback, O_DIRECT with aligned
 * and unaligned pieces, errors with paths. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t.h"

static uint64_t prep_file(uint64_t a, const char *remote, int fd, uint64_t off0,
                          uint64_t page, uint32_t n) {
    uint64_t *addrs = malloc(n * 8), *lens = malloc(n * 8), *devs = malloc(n * 8);
    for (uint32_t i = 0; i < n; i++) {
        addrs[i] = off0 + (uint64_t)i * page;
        lens[i] = page;
        devs[i] = (uint64_t)fd;
    }
    uint64_t dl, pp;
    OK(kvp_dlist_create(KVP_FILE, addrs, lens, devs, n, &dl));
    OK(kvp_prep_dlist(a, remote, dl, &pp));
    OK(kvp_dlist_release(dl));
    free(addrs);
    free(lens);
    free(devs);
    return pp;
}

static void roundtrip(uint32_t flags, uint64_t page, uint32_t n, uint64_t file_off,
                      uint64_t mem_off) {
    char path[] = "/tmp/kvport-test-XXXXXX";
    int tmp = mkstemp(path);
    CHECK(tmp >= 0);
    close(tmp);
    uint64_t total = page * n;
    int32_t fd = -1, direct = -1;
    uint64_t fh;
    OK(kvp_file_open(path, KVP_FILE_CREATE | KVP_FILE_TRUNCATE | flags, file_off + total, &fh,
                     &fd, &direct));
    CHECK(fd >= 0);
    if (flags & KVP_FILE_DIRECT) CHECK(direct == 1 || direct == 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && (uint64_t)st.st_size >= file_off + total);
    uint64_t a = t_agent("F", "UCX,POSIX", NULL);
    uint64_t m, msize = mem_off + total;
    OK(kvp_mem_alloc(KVP_DRAM, 0, msize, &m));
    uint64_t reg, freg, zero = 0, fdev = (uint64_t)fd;
    OK(kvp_register(a, KVP_DRAM, &m, &msize, NULL, 1, NULL, &reg));
    OK(kvp_register(a, KVP_FILE, &zero, &zero, &fdev, 1, NULL, &freg)); /* len 0: whole file */
    uint64_t lp = t_prep_pages(a, "", m + mem_off, page, n);
    uint64_t fp = prep_file(a, "F", fd, file_off, page, n);
    uint32_t *idx = malloc(n * sizeof *idx);
    for (uint32_t i = 0; i < n; i++) idx[i] = i;
    t_fill((void *)(uintptr_t)(m + mem_off), total, 41);
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, fp, idx, n, (const uint8_t *)"saved", 5, &req));
    int32_t s = kvp_xfer_post(a, req);
    CHECK(s == KVP_SUCCESS || s == KVP_IN_PROG);
    OK(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL));
    OK(kvp_file_sync(fh));
    /* The bytes are in the file, read back with plain pread. */
    uint8_t *chk = malloc(total);
    int rfd = open(path, O_RDONLY);
    CHECK(rfd >= 0);
    CHECK(pread(rfd, chk, total, (off_t)file_off) == (ssize_t)total);
    close(rfd);
    CHECK(t_verify(chk, total, 41));
    free(chk);
    /* The loopback notification. */
    OK(kvp_notif_wait(a, 1000, NULL, 0, NULL));
    uint8_t nb[64];
    uint64_t nl, cnt;
    OK(kvp_notif_take(a, nb, sizeof nb, &nl, &cnt));
    CHECK(cnt == 1 && memcmp(nb + 4, "F", 1) == 0 && memcmp(nb + 9, "saved", 5) == 0);
    /* READ back into zeroed memory. */
    memset((void *)(uintptr_t)(m + mem_off), 0, total);
    uint64_t rreq;
    OK(kvp_xfer_create(a, KVP_READ, lp, idx, fp, idx, n, NULL, 0, &rreq));
    s = kvp_xfer_post(a, rreq);
    CHECK(s == KVP_SUCCESS || s == KVP_IN_PROG);
    OK(kvp_xfer_wait(a, rreq, 10000, NULL, 0, NULL));
    CHECK(t_verify((void *)(uintptr_t)(m + mem_off), total, 41));
    /* The other orientation: FILE as the local list, DRAM as the loopback remote. */
    uint64_t flp = prep_file(a, "", fd, file_off, page, n);
    uint64_t mrp = t_prep_pages(a, "F", m + mem_off, page, n);
    memset((void *)(uintptr_t)(m + mem_off), 0, total);
    uint64_t oreq;
    OK(kvp_xfer_create(a, KVP_WRITE, flp, idx, mrp, idx, n, NULL, 0, &oreq)); /* file -> mem */
    s = kvp_xfer_post(a, oreq);
    CHECK(s == KVP_SUCCESS || s == KVP_IN_PROG);
    OK(kvp_xfer_wait(a, oreq, 10000, NULL, 0, NULL));
    CHECK(t_verify((void *)(uintptr_t)(m + mem_off), total, 41));
    free(idx);
    OK(kvp_agent_destroy(a));
    OK(kvp_file_close(fh));
    OK(kvp_mem_free(m));
    unlink(path);
}

TEST(file_roundtrip_buffered) { roundtrip(0, 1 << 20, 16, 0, 0); }

TEST(file_roundtrip_large_in_workers) { roundtrip(0, 4 << 20, 16, 4096, 0); }

TEST(file_roundtrip_direct_aligned) { roundtrip(KVP_FILE_DIRECT, 1 << 20, 16, 0, 0); }

TEST(file_roundtrip_direct_unaligned_pieces) {
    /* Odd sizes and offsets through an O_DIRECT fd: served by a buffered twin. */
    roundtrip(KVP_FILE_DIRECT, 1000, 37, 333, 17);
}

TEST(file_errors_name_the_path) {
    int32_t fd, d;
    uint64_t fh;
    CHECK_ST(kvp_file_open("/nonexistent-dir/x", KVP_FILE_CREATE, 0, &fh, &fd, &d), KVP_ERR_BACKEND);
    CHECK_ERR_HAS("/nonexistent-dir/x");
    CHECK_ERR_HAS("No such file");
    CHECK_ST(kvp_file_open("/tmp", 0, 0, &fh, &fd, &d), KVP_ERR_BACKEND); /* EISDIR */
    CHECK_ERR_HAS("Is a directory");
    CHECK_ST(kvp_file_sync(0), KVP_ERR_NOT_FOUND);
    CHECK_ST(kvp_file_close(12345), KVP_ERR_NOT_FOUND);
    /* A registration past the end of the file: reads fail with a clear message. */
    char path[] = "/tmp/kvport-test-XXXXXX";
    int tmp = mkstemp(path);
    CHECK(tmp >= 0);
    close(tmp);
    OK(kvp_file_open(path, KVP_FILE_CREATE | KVP_FILE_TRUNCATE, 4096, &fh, &fd, &d));
    uint64_t a = t_agent("F", NULL, NULL);
    uint64_t off = 0, len = 8192, dev = (uint64_t)fd, freg;
    OK(kvp_register(a, KVP_FILE, &off, &len, &dev, 1, NULL, &freg));
    uint64_t m, ml = 8192, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, ml, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &ml, NULL, 1, NULL, &reg));
    uint64_t lp = t_prep_pages(a, "", m, 8192, 1), fp = prep_file(a, "F", fd, 0, 8192, 1);
    uint32_t z = 0;
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_READ, lp, &z, fp, &z, 1, NULL, 0, &req));
    int32_t s = kvp_xfer_post(a, req);
    if (s == KVP_IN_PROG) s = kvp_xfer_wait(a, req, 5000, NULL, 0, NULL);
    CHECK_ST(s, KVP_ERR_BACKEND);
    CHECK_ERR_HAS("end of file");
    /* FILE without the POSIX backend; a read-only fd; offset past the end with len 0. */
    uint64_t b = t_agent("G", "UCX", NULL);
    CHECK_ST(kvp_register(b, KVP_FILE, &off, &len, &dev, 1, NULL, &freg), KVP_ERR_NOT_SUPPORTED);
    int ro = open(path, O_RDONLY);
    uint64_t rodev = (uint64_t)ro;
    CHECK_ST(kvp_register(a, KVP_FILE, &off, &len, &rodev, 1, NULL, &freg), KVP_ERR_INVALID_PARAM);
    close(ro);
    uint64_t far = 1 << 20, zero = 0;
    CHECK_ST(kvp_register(a, KVP_FILE, &far, &zero, &dev, 1, NULL, &freg), KVP_ERR_INVALID_PARAM);
    /* Remote FILE lists are not reachable: only loopback. */
    OK(kvp_agent_destroy(b));
    OK(kvp_agent_destroy(a));
    OK(kvp_file_close(fh));
    OK(kvp_mem_free(m));
    unlink(path);
}

/* Files are handles (issue 12): a double close and a close while registered are
 * errors, and only descriptors from kvp_file_open can be registered. */
TEST(file_handles_refuse_double_close_and_close_while_registered) {
    char path[] = "/tmp/kvport-test-XXXXXX";
    int tmp = mkstemp(path);
    CHECK(tmp >= 0);
    uint64_t a = t_agent("F", NULL, NULL), fh, freg, off = 0, len = 4096;
    int32_t fd, d;
    OK(kvp_file_open(path, KVP_FILE_TRUNCATE, 4096, &fh, &fd, &d));
    uint64_t dev = (uint64_t)fd;
    OK(kvp_register(a, KVP_FILE, &off, &len, &dev, 1, NULL, &freg));
    CHECK_ST(kvp_file_close(fh), KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("still registered");
    CHECK(fcntl(fd, F_GETFD) >= 0); /* still open */
    OK(kvp_deregister(a, freg));
    OK(kvp_file_close(fh));
    CHECK(fcntl(fd, F_GETFD) < 0 && errno == EBADF);
    CHECK_ST(kvp_file_close(fh), KVP_ERR_NOT_FOUND);
    CHECK_ST(kvp_file_sync(fh), KVP_ERR_NOT_FOUND);
    /* A descriptor of our own (mkstemp's): not a kvp file, refused. */
    uint64_t raw = (uint64_t)tmp;
    CHECK_ST(kvp_register(a, KVP_FILE, &off, &len, &raw, 1, NULL, &freg), KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("kvp_file_open");
    /* Destroying the agent releases its registrations' pins. */
    OK(kvp_file_open(path, 0, 0, &fh, &fd, &d));
    dev = (uint64_t)fd;
    OK(kvp_register(a, KVP_FILE, &off, &len, &dev, 1, NULL, &freg));
    OK(kvp_agent_destroy(a));
    OK(kvp_file_close(fh));
    close(tmp);
    unlink(path);
}

/* Deregister, close, and a new file gets the same descriptor number and is registered
 * again: a request made on the old list must fail, never write into the new file. */
TEST(file_post_never_reaches_a_reused_descriptor) {
    char pa[] = "/tmp/kvport-test-XXXXXX", pb[] = "/tmp/kvport-test-XXXXXX";
    int t1 = mkstemp(pa), t2 = mkstemp(pb);
    CHECK(t1 >= 0 && t2 >= 0);
    close(t1);
    close(t2);
    const uint64_t size = 64 << 10;
    uint64_t a = t_agent("F", NULL, NULL), fa, fb, rega, regb, off = 0, len = size, m, mreg;
    int32_t fda, fdb, d;
    OK(kvp_file_open(pa, KVP_FILE_TRUNCATE, size, &fa, &fda, &d));
    uint64_t dev = (uint64_t)fda;
    OK(kvp_register(a, KVP_FILE, &off, &len, &dev, 1, NULL, &rega));
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    t_fill((void *)(uintptr_t)m, size, 12);
    OK(kvp_register(a, KVP_DRAM, &m, &len, NULL, 1, NULL, &mreg));
    uint64_t lp = t_prep_pages(a, "", m, 4096, 16), fp = prep_file(a, "F", fda, 0, 4096, 16);
    uint32_t idx[16];
    for (uint32_t i = 0; i < 16; i++) idx[i] = i;
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, fp, idx, 16, NULL, 0, &req));
    OK(kvp_deregister(a, rega));
    OK(kvp_file_close(fa));
    OK(kvp_file_open(pb, KVP_FILE_TRUNCATE, size, &fb, &fdb, &d));
    CHECK_MSG(fdb == fda, "the new file got fd %d, not the old %d: cannot test reuse", fdb, fda);
    OK(kvp_register(a, KVP_FILE, &off, &len, &dev, 1, NULL, &regb));
    int32_t st = kvp_xfer_post(a, req);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 5000, NULL, 0, NULL);
    CHECK_ST(st, KVP_ERR_NOT_FOUND);
    uint8_t *chk = calloc(1, size);
    int rfd = open(pb, O_RDONLY);
    CHECK(rfd >= 0 && pread(rfd, chk, size, 0) == (ssize_t)size);
    close(rfd);
    for (uint64_t i = 0; i < size; i++)
        CHECK_MSG(chk[i] == 0, "byte %llu of the new file was written", (unsigned long long)i);
    free(chk);
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, fp));
    OK(kvp_deregister(a, regb));
    OK(kvp_file_close(fb));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
    unlink(pa);
    unlink(pb);
}

/* A buffered READ of a file the page cache holds (cached_read_max, default 4 MiB): done
 * inside kvp_xfer_post, no worker; the same READ with cached_read_max=0, or of data the
 * cache dropped, goes to the workers. Every case checks the bytes. */
static void cached_read(const char *params, uint64_t page, uint32_t n, bool drop_cache,
                        bool want_inline) {
    char path[] = "/tmp/kvport-test-XXXXXX";
    int tmp = mkstemp(path);
    CHECK(tmp >= 0);
    close(tmp);
    uint64_t total = page * n;
    int32_t fd = -1, direct = -1;
    uint64_t fh;
    OK(kvp_file_open(path, KVP_FILE_CREATE | KVP_FILE_TRUNCATE, total, &fh, &fd, &direct));
    uint8_t *src = malloc(total);
    t_fill(src, total, 77);
    CHECK(pwrite(fd, src, total, 0) == (ssize_t)total);
    free(src);
    if (drop_cache) {
        CHECK(fdatasync(fd) == 0);
        CHECK(posix_fadvise(fd, 0, (off_t)total, POSIX_FADV_DONTNEED) == 0);
    }
    uint64_t a = t_agent("C", "UCX,POSIX", params);
    uint64_t m, msize = total;
    OK(kvp_mem_alloc(KVP_DRAM, 0, msize, &m));
    memset((void *)(uintptr_t)m, 0, total);
    uint64_t reg, freg, zero = 0, fdev = (uint64_t)fd;
    OK(kvp_register(a, KVP_DRAM, &m, &msize, NULL, 1, NULL, &reg));
    OK(kvp_register(a, KVP_FILE, &zero, &zero, &fdev, 1, NULL, &freg));
    uint64_t lp = t_prep_pages(a, "", m, page, n);
    uint64_t fp = prep_file(a, "C", fd, 0, page, n);
    uint32_t *idx = malloc(n * sizeof *idx);
    for (uint32_t i = 0; i < n; i++) idx[i] = i;
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_READ, lp, idx, fp, idx, n, NULL, 0, &req));
    uint64_t inl = t_info_num(a, "posts_inline");
    int32_t s = kvp_xfer_post(a, req);
    /* Done inside the post (SUCCESS, counted inline), or by the workers (either status:
     * they may finish before the post returns). */
    if (want_inline) {
        CHECK_ST(s, KVP_SUCCESS);
        CHECK(t_info_num(a, "posts_inline") == inl + 1);
    } else {
        CHECK(s == KVP_SUCCESS || s == KVP_IN_PROG);
        /* Data the cache dropped: it may keep a few pages, never all of them. */
        CHECK(t_info_num(a, "posts_inline") == inl);
    }
    OK(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL));
    CHECK(t_verify((void *)(uintptr_t)m, total, 77));
    /* Posted again (the pages zeroed): the same bytes again. */
    memset((void *)(uintptr_t)m, 0, total);
    s = kvp_xfer_post(a, req);
    CHECK(s == KVP_SUCCESS || s == KVP_IN_PROG);
    OK(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL));
    CHECK(t_verify((void *)(uintptr_t)m, total, 77));
    OK(kvp_xfer_release(a, req));
    free(idx);
    OK(kvp_agent_destroy(a));
    OK(kvp_file_close(fh));
    OK(kvp_mem_free(m));
    unlink(path);
}

TEST(file_read_from_page_cache_completes_inside_post) {
    cached_read(NULL, 4 << 20, 1, false, true);
    cached_read(NULL, 1 << 20, 4, false, true);
}

TEST(file_read_beyond_cached_read_max_goes_to_workers) {
    cached_read("cached_read_max=0", 4 << 20, 1, false, false);
    cached_read(NULL, 1 << 20, 8, false, false); /* 8 MiB > the default 4 MiB */
}

TEST(file_read_not_in_page_cache_goes_to_workers) { cached_read(NULL, 4 << 20, 1, true, false); }

TEST(file_cached_read_max_is_checked) {
    uint64_t a = 0;
    CHECK_ST(kvp_agent_create("C2", "builtin", "UCX,POSIX", "cached_read_max=99999999999", &a),
             KVP_ERR_INVALID_PARAM);
    CHECK_ERR_HAS("cached_read_max");
}

TEST(file_cached_read_of_a_short_file_reports_the_workers_error) {
    /* The page cache cannot serve it all (the file ends early): the workers read it and
     * say why it failed. */
    char path[] = "/tmp/kvport-test-XXXXXX";
    int tmp = mkstemp(path);
    CHECK(tmp >= 0);
    close(tmp);
    uint64_t page = 1 << 20;
    int32_t fd = -1, direct = -1;
    uint64_t fh;
    OK(kvp_file_open(path, KVP_FILE_CREATE | KVP_FILE_TRUNCATE, page, &fh, &fd, &direct));
    uint64_t a = t_agent("C3", "UCX,POSIX", NULL);
    uint64_t m, msize = page;
    OK(kvp_mem_alloc(KVP_DRAM, 0, msize, &m));
    uint64_t reg, freg, zero = 0, fdev = (uint64_t)fd;
    OK(kvp_register(a, KVP_DRAM, &m, &msize, NULL, 1, NULL, &reg));
    OK(kvp_register(a, KVP_FILE, &zero, &zero, &fdev, 1, NULL, &freg));
    uint64_t lp = t_prep_pages(a, "", m, page, 1);
    uint64_t fp = prep_file(a, "C3", fd, 0, page, 1);
    CHECK(ftruncate(fd, (off_t)(page / 2)) == 0);
    uint32_t idx = 0;
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_READ, lp, &idx, fp, &idx, 1, NULL, 0, &req));
    int32_t s = kvp_xfer_post(a, req); /* a worker may fail it before the post returns */
    CHECK_MSG(s == KVP_IN_PROG || s == KVP_ERR_BACKEND, "post returned %s", kvp_status_name(s));
    if (s == KVP_IN_PROG) CHECK_ST(kvp_xfer_wait(a, req, 10000, NULL, 0, NULL), KVP_ERR_BACKEND);
    CHECK_ERR_HAS("end of file");
    CHECK(t_info_num(a, "posts_inline") == 0);
    OK(kvp_xfer_release(a, req));
    OK(kvp_agent_destroy(a));
    OK(kvp_file_close(fh));
    OK(kvp_mem_free(m));
    unlink(path);
}
