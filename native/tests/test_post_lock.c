/* test_post_lock.c - kvp_xfer_post of a VRAM WRITE over TCP waits for the staging
 * ring's device-to-host copies without holding the agent's mutex (issue 12): calls
 * that need it (here kvp_notif_take) go on meanwhile. CUDA is the stand-in runtime of
 * tools/fake_cudart.c (built next to the tests), whose copies take a set time. */
#include <pthread.h>
#include <unistd.h>

#include "t.h"

typedef struct probe {
    uint64_t agent;
    double delay, took;
} probe;

static void *probe_main(void *arg) {
    probe *p = arg;
    usleep((useconds_t)(p->delay * 1e6));
    uint8_t buf[64];
    uint64_t len, cnt;
    double t0 = t_now();
    OK(kvp_notif_take(p->agent, buf, sizeof buf, &len, &cnt));
    p->took = t_now() - t0;
    return NULL;
}

TEST(vram_tcp_post_does_not_hold_the_agent_lock_across_copies) {
    t_peer p;
    const uint64_t size = 8 << 20;
    t_peer_start(&p, "T", NULL, NULL, size, 0); /* forked before any CUDA use */
    char lib[4200];
    t_use_fake_cudart(lib, sizeof lib);
    setenv("FAKE_CUDA_DELAY_US", "400000", 1); /* each copy: 0.4 s */
    int32_t devs = 0;
    OK(kvp_cuda_device_count(&devs));
    CHECK(devs >= 1);
    uint64_t a = t_agent("I", "TCP", NULL), v, reg, dev0 = 0, len = size;
    t_load(a, p.md, p.mdlen);
    OK(kvp_mem_alloc(KVP_VRAM, 0, size, &v));
    OK(kvp_register(a, KVP_VRAM, &v, &len, &dev0, 1, NULL, &reg));
    uint64_t dl, lp;
    OK(kvp_dlist_create(KVP_VRAM, &v, &len, &dev0, 1, &dl));
    OK(kvp_prep_dlist(a, "", dl, &lp));
    OK(kvp_dlist_release(dl));
    uint64_t rp = t_prep_pages(a, "T", p.base, size, 1);
    uint32_t z = 0;
    uint64_t req;
    OK(kvp_xfer_create(a, KVP_WRITE, lp, &z, rp, &z, 1, NULL, 0, &req));
    probe pr = {a, 0.15, 0};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, probe_main, &pr) == 0);
    double t0 = t_now();
    int32_t st = kvp_xfer_post(a, req);
    double post = t_now() - t0;
    pthread_join(th, NULL);
    CHECK_MSG(post > 0.3, "the post took %.3fs: the copies did not take their time", post);
    CHECK_MSG(pr.took < 0.1,
              "kvp_notif_take took %.3fs while the post (%.3fs) waited for a copy: the agent "
              "mutex is held across CUDA waits",
              pr.took, post);
    if (st == KVP_IN_PROG) st = kvp_xfer_wait(a, req, 20000, NULL, 0, NULL);
    OK(st);
    OK(kvp_xfer_release(a, req));
    OK(kvp_prepped_release(a, lp));
    OK(kvp_prepped_release(a, rp));
    OK(kvp_deregister(a, reg));
    OK(kvp_agent_destroy(a));
    OK(kvp_mem_free(v));
    t_peer_stop(&p);
}
