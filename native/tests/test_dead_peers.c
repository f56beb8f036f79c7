/* test_dead_peers.c - resources follow live peers only (issue 19.1): a receiver that
 * sees 100 sender processes come and go, one after another, keeps a flat descriptor
 * count (no pidfd, mapping or connection per departed sender) and a bounded remote
 * table. */
#include <dirent.h>
#include <unistd.h>

#include "t.h"

#define SENDERS 100

static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    CHECK(d);
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

static uint64_t info_u64(uint64_t a, const char *key) {
    char buf[8192];
    uint64_t len;
    OK(kvp_agent_info(a, (uint8_t *)buf, sizeof buf - 1, &len));
    buf[len] = '\0';
    char k[64];
    snprintf(k, sizeof k, "\n%s=", key);
    char *p = strstr(buf, k);
    CHECK_MSG(p, "no %s in agent info", key);
    return strtoull(p + strlen(k), NULL, 10);
}

TEST_T(receiver_keeps_nothing_of_departed_senders, 120) {
    static t_peer s[SENDERS];
    char name[32];
    for (int i = 0; i < SENDERS; i++) {
        snprintf(name, sizeof name, "S%d", i);
        t_peer_fork_gated(&s[i], name, NULL, NULL, 1 << 20, 0);
    }
    uint64_t a = t_agent("R", NULL, NULL), m, size = 1 << 20, reg;
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    t_fill((void *)(uintptr_t)m, size, 21);
    uint64_t lp = t_prep_pages(a, "", m, 64 << 10, 16);
    int fd_after10 = -1; /* the receiver's descriptors once 10 senders came and went */
    for (int i = 0; i < SENDERS; i++) {
        t_peer_go(&s[i]);
        t_load(a, s[i].md, s[i].mdlen);
        snprintf(name, sizeof name, "S%d", i);
        /* Same-host write with a notification: maps its memfd and its agent page, opens a
         * pidfd and a TCP connection to it. */
        uint64_t rp = t_prep_pages(a, name, s[i].base, 64 << 10, 16), req;
        uint32_t idx[16];
        for (uint32_t k = 0; k < 16; k++) idx[k] = k;
        OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 16, (const uint8_t *)"d", 1, &req));
        int32_t st = kvp_xfer_post(a, req);
        if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 5000, NULL, 0, NULL);
        OK(st);
        int verified = 0;
        CHECK(t_peer_notif(&s[i], 5000, 0, size, 21, &verified, NULL, NULL) == 1 && verified);
        OK(kvp_xfer_release(a, req));
        OK(kvp_prepped_release(a, rp));
        t_peer_stop(&s[i]); /* the sender exits */
        /* The receiver notices (pidfd, EOF) on its own; give its threads a moment. */
        for (int w = 0; w < 200 && info_u64(a, "remotes") > 1; w++) usleep(5000);
        /* The test's own socket pairs to the senders not started yet do not count. */
        if (i == 9) fd_after10 = count_fds() - (SENDERS - 10);
    }
    usleep(50000);
    int fds = count_fds();
    CHECK_MSG(fds <= fd_after10 + 1,
              "%d descriptors open after %d senders came and went, %d after 10", fds, SENDERS,
              fd_after10);
    uint64_t left = info_u64(a, "remotes"), released = info_u64(a, "remotes_released");
    CHECK_MSG(left <= 1, "%llu departed senders still in the remote table",
              (unsigned long long)left);
    CHECK_MSG(released >= SENDERS - 1, "only %llu departed senders were released",
              (unsigned long long)released);
    OK(kvp_prepped_release(a, lp));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(m));
}
