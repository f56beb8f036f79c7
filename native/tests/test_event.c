/* test_event.c - kvp_event_fd: the descriptor event loops sleep on instead of polling
 * with timers (Bun): readable when a request finishes or a notification is queued, end
 * of file at destroy, never a SIGPIPE when the reader went away. */
#include <errno.h>
#include <poll.h>
#include <unistd.h>

#include "t.h"

/* Waits up to ms for fd to be readable; returns what one read gave (-1: nothing). */
static ssize_t wait_read(int fd, int ms) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int n = poll(&pf, 1, ms);
    if (n <= 0) return -1;
    char buf[256];
    ssize_t got = read(fd, buf, sizeof buf);
    return got < 0 && errno == EAGAIN ? -1 : got;
}

TEST_T(event_fd_wakes_on_finish_and_notification_and_ends_at_destroy, 60) {
    t_peer p;
    const uint64_t size = 8 << 20;
    t_peer_start(&p, "T", NULL, NULL, size, 4);
    uint64_t a = t_agent("I", NULL, NULL), m, reg;
    t_load(a, p.md, p.mdlen);
    CHECK_ST(kvp_event_fd(a, NULL), KVP_ERR_INVALID_PARAM);
    int32_t fd = -1;
    OK(kvp_event_fd(a, &fd));
    CHECK(fd >= 0);
    int32_t again = -1;
    CHECK_ST(kvp_event_fd(a, &again), KVP_ERR_NOT_ALLOWED);
    CHECK_ERR_HAS("already");
    CHECK(again == -1);
    CHECK_MSG(wait_read(fd, 0) == -1, "readable before anything happened");
    OK(kvp_mem_alloc(KVP_DRAM, 0, size, &m));
    t_fill((void *)(uintptr_t)m, size, 5);
    OK(kvp_register(a, KVP_DRAM, &m, &size, NULL, 1, NULL, &reg));
    /* 1. A request that finishes on a worker (8 MiB, with a notification). */
    uint64_t lp = t_prep_pages(a, "", m, 1 << 20, 8), rp = t_prep_pages(a, "T", p.base, 1 << 20, 8);
    uint32_t idx[8];
    for (uint32_t i = 0; i < 8; i++) idx[i] = i;
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, idx, rp, idx, 8, (const uint8_t *)"n", 1, &req));
    for (int round = 0; round < 20; round++) {
        int32_t st = kvp_xfer_post(a, req);
        if (st == KVP_IN_PROG) {
            CHECK_MSG(wait_read(fd, 10000) > 0, "no event for a request that finished");
            st = kvp_xfer_status(a, req);
        }
        OK(st);
        while (wait_read(fd, 0) > 0) {
        }
    }
    CHECK(t_peer_verify(&p, 0, size, 5));
    /* 2. A notification queued (loopback: to ourselves). */
    while (wait_read(fd, 0) > 0) {
    }
    OK(kvp_notif_send(a, "I", (const uint8_t *)"hi", 2));
    CHECK_MSG(wait_read(fd, 5000) > 0, "no event for a queued notification");
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    /* 3. Destroy: end of file (after the bytes still there). */
    OK(kvp_agent_destroy(a));
    ssize_t got;
    int reads = 0;
    while ((got = wait_read(fd, 5000)) > 0 && reads++ < 1000) {
    }
    CHECK_MSG(got == 0, "no end of file after kvp_agent_destroy (read gave %zd)", got);
    close(fd);
    OK(kvp_mem_free(m));
    t_peer_stop(&p);
}

TEST_T(event_fd_reader_gone_is_no_sigpipe, 30) {
    uint64_t a = t_agent("E", NULL, NULL);
    int32_t fd = -1;
    OK(kvp_event_fd(a, &fd));
    close(fd); /* the reader went away: signalling must neither fail nor kill us */
    for (int i = 0; i < 100; i++) OK(kvp_notif_send(a, "E", (const uint8_t *)"x", 1));
    uint8_t buf[4096];
    uint64_t len = 0, count = 0;
    OK(kvp_notif_take(a, buf, sizeof buf, &len, &count));
    CHECK(count == 100);
    OK(kvp_agent_destroy(a));
}

TEST_T(event_fd_coalesces_when_the_reader_is_behind, 30) {
    uint64_t a = t_agent("C", NULL, NULL);
    int32_t fd = -1;
    OK(kvp_event_fd(a, &fd));
    /* Far more events than the socket holds: the sends that find it full are dropped,
     * the reader still wakes, and nothing blocks. */
    for (int i = 0; i < 20000; i++) {
        OK(kvp_notif_send(a, "C", (const uint8_t *)"x", 1));
        if (i % 1000 == 999) {
            uint8_t buf[65536];
            uint64_t len = 0, count = 0;
            OK(kvp_notif_take(a, buf, sizeof buf, &len, &count));
        }
    }
    CHECK(wait_read(fd, 1000) > 0);
    OK(kvp_agent_destroy(a));
    ssize_t got;
    while ((got = wait_read(fd, 5000)) > 0) {
    }
    CHECK(got == 0);
    close(fd);
}
