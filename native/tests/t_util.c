/* t_util.c - helpers shared by the tests. */
#include <errno.h>
#include <unistd.h>

#include "t.h"

uint64_t t_agent(const char *name, const char *backends, const char *extra) {
    char params[1024];
    snprintf(params, sizeof params, "listen_host=127.0.0.1\n%s", extra ? extra : "");
    uint64_t a = 0;
    OK(kvp_agent_create(name, "builtin", backends ? backends : "UCX,POSIX", params, &a));
    return a;
}

uint8_t *t_md(uint64_t agent, uint64_t *len) {
    uint64_t n = 0;
    OK(kvp_local_metadata(agent, NULL, 0, &n));
    uint8_t *b = malloc(n);
    CHECK(b);
    uint64_t n2 = 0;
    OK(kvp_local_metadata(agent, b, n, &n2));
    CHECK(n2 == n);
    *len = n;
    return b;
}

void t_load(uint64_t agent, const uint8_t *blob, uint64_t len) {
    char name[300];
    uint64_t nl = 0;
    OK(kvp_load_remote_metadata(agent, blob, len, (uint8_t *)name, sizeof name, &nl));
}

static void io_all(int fd, void *p, size_t n, int wr) {
    size_t d = 0;
    while (d < n) {
        ssize_t k = wr ? write(fd, (char *)p + d, n - d) : read(fd, (char *)p + d, n - d);
        if (k < 0 && errno == EINTR) continue;
        CHECK_MSG(k > 0, "pipe %s failed (peer process died?)", wr ? "write" : "read");
        d += (size_t)k;
    }
}

void t_send(int fd, const void *p, uint64_t len) {
    io_all(fd, &len, sizeof len, 1);
    if (len) io_all(fd, (void *)p, (size_t)len, 1);
}

uint8_t *t_recv(int fd, uint64_t *len) {
    io_all(fd, len, sizeof *len, 0);
    uint8_t *b = malloc(*len ? *len : 1);
    CHECK(b);
    if (*len) io_all(fd, b, (size_t)*len, 0);
    return b;
}

void t_send_u64(int fd, uint64_t v) { io_all(fd, &v, sizeof v, 1); }
uint64_t t_recv_u64(int fd) {
    uint64_t v;
    io_all(fd, &v, sizeof v, 0);
    return v;
}

uint64_t t_prep_pages(uint64_t agent, const char *remote, uint64_t base, uint64_t page,
                      uint32_t n) {
    uint64_t *addrs = malloc(n * sizeof *addrs), *lens = malloc(n * sizeof *lens);
    CHECK(addrs && lens);
    for (uint32_t i = 0; i < n; i++) {
        addrs[i] = base + (uint64_t)i * page;
        lens[i] = page;
    }
    uint64_t dl = 0, pp = 0;
    OK(kvp_dlist_create(KVP_DRAM, addrs, lens, NULL, n, &dl));
    OK(kvp_prep_dlist(agent, remote, dl, &pp));
    OK(kvp_dlist_release(dl));
    free(addrs);
    free(lens);
    return pp;
}

static uint32_t xs(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

void t_fill(void *p, uint64_t len, uint32_t seed) {
    uint32_t s = seed * 2654435761u + 1;
    uint8_t *b = p;
    uint64_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t v = xs(&s);
        memcpy(b + i, &v, 4);
    }
    for (; i < len; i++) b[i] = (uint8_t)xs(&s);
}

int t_verify(const void *p, uint64_t len, uint32_t seed) {
    uint32_t s = seed * 2654435761u + 1;
    const uint8_t *b = p;
    uint64_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t v = xs(&s);
        if (memcmp(b + i, &v, 4) != 0) return 0;
    }
    for (; i < len; i++)
        if (b[i] != (uint8_t)xs(&s)) return 0;
    return 1;
}
