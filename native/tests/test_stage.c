/* test_stage.c - the VRAM staging pipelines (stage.c) without a GPU: "device" memory is
 * host memory and every copy is deferred until its event is waited on, so a slot read
 * before its copy completed, or refilled while its copy is still queued, shows up as
 * wrong bytes. Also checks that copies really run ahead of the consumer (the overlap). */
#include "stage.h"
#include "t.h"

/* ---------------------------------------------------------- fake runtime ---- */

typedef struct fake_copy {
    uint64_t dst, src, len;
} fake_copy;

typedef struct fake_ev {
    fake_copy q[8];
    int n;
    int dev;
} fake_ev;

static int g_pending;      /* copies queued, not yet run */
static int g_max_pending;  /* high-water mark */
static int g_copies;       /* copies queued so far */
static int g_fail_at = -1; /* the g_copies-th copy fails */
static int g_events_live;
static int g_hosts_live;

static int32_t f_host_alloc(uint64_t size, void **out) {
    *out = aligned_alloc(4096, (size + 4095) / 4096 * 4096);
    if (!*out) return KVP_ERR_BACKEND;
    memset(*out, 0xEE, size); /* garbage, so unwritten bytes are visible */
    g_hosts_live++;
    return KVP_SUCCESS;
}
static void f_host_free(void *p) {
    if (p) g_hosts_live--;
    free(p);
}
static int32_t f_event_create(int32_t dev, void **ev) {
    fake_ev *e = calloc(1, sizeof *e);
    e->dev = dev;
    *ev = e;
    g_events_live++;
    return KVP_SUCCESS;
}
static void f_event_destroy(int32_t dev, void *ev) {
    fake_ev *e = ev;
    CHECK(e->n == 0); /* never destroyed with copies pending */
    CHECK(e->dev == dev);
    g_events_live--;
    free(e);
}
static int32_t f_copy(int32_t dev, int dir, uint64_t dst, uint64_t src, uint64_t len, void *ev) {
    KVP_UNUSED(dir);
    fake_ev *e = ev;
    CHECK_MSG(e->dev == dev, "event of device %d used for a copy on device %d", e->dev, dev);
    if (g_copies++ == g_fail_at) return KVP_ERR_BACKEND;
    CHECK(e->n < 8);
    e->q[e->n++] = (fake_copy){dst, src, len};
    g_pending++;
    if (g_pending > g_max_pending) g_max_pending = g_pending;
    return KVP_SUCCESS;
}
static int32_t f_wait(int32_t dev, void *ev) {
    fake_ev *e = ev;
    CHECK(e->dev == dev);
    for (int i = 0; i < e->n; i++)
        memcpy((void *)(uintptr_t)e->q[i].dst, (const void *)(uintptr_t)e->q[i].src,
               (size_t)e->q[i].len);
    g_pending -= e->n;
    e->n = 0;
    return KVP_SUCCESS;
}

static const kvp_stage_ops g_fake = {f_host_alloc, f_host_free, f_event_create,
                                     f_event_destroy, f_copy, f_wait};

static uint32_t g_rng = 12345;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 17;
    g_rng ^= g_rng << 5;
    return g_rng;
}

/* Consumes sources through a tx pipeline the way tcp_send.c does: keep the ring fed from the
 * current position, take what the head gives in random bites. */
static void drain_sources(kvp_stx *s, uint8_t **src, const uint64_t *len, int nsrc, int dev,
                          uint8_t *out) {
    int cur = 0;       /* source being consumed */
    uint64_t pos = 0;  /* consumed bytes of it */
    uint64_t wrote = 0;
    while (cur < nsrc) {
        /* Feed from the tail (or from the consumer's position when empty). */
        const void *tk;
        uint64_t tend;
        int fi;
        uint64_t from;
        if (kvp_stx_tail(s, &tk, &tend)) {
            fi = (int)((uint8_t **)tk - src);
            from = tend;
        } else {
            fi = cur;
            from = pos;
        }
        while (fi < nsrc && !kvp_stx_full(s)) {
            if (from < len[fi]) {
                uint64_t taken;
                OK(kvp_stx_feed(s, &src[fi], dev, (uint64_t)(uintptr_t)src[fi], from,
                                len[fi] - from, &taken));
                if (taken < len[fi] - from) break;
            }
            fi++;
            from = 0;
        }
        if (len[cur] == pos) {
            cur++;
            pos = 0;
            continue;
        }
        const uint8_t *p;
        uint64_t n;
        OK(kvp_stx_front(s, &src[cur], pos, &p, &n));
        CHECK(n > 0);
        uint64_t bite = 1 + rnd() % n;
        memcpy(out + wrote, p, (size_t)bite);
        kvp_stx_consume(s, bite);
        wrote += bite;
        pos += bite;
    }
}

TEST(stage_tx_pipeline_in_order_with_overlap) {
    const uint64_t slot = 64 << 10;
    kvp_stx s;
    kvp_stx_init(&s, &g_fake, 4, slot);
    enum { N = 5 };
    uint64_t len[N] = {slot * 3 + 17, 1, slot, 5 * slot - 3, 4096};
    uint8_t *src[N];
    uint64_t total = 0;
    for (int i = 0; i < N; i++) {
        src[i] = malloc(len[i]);
        t_fill(src[i], len[i], 100 + (uint32_t)i);
        total += len[i];
    }
    uint8_t *out = malloc(total);
    drain_sources(&s, src, len, N, 0, out);
    uint64_t at = 0;
    for (int i = 0; i < N; i++) {
        CHECK_MSG(memcmp(out + at, src[i], len[i]) == 0, "source %d differs", i);
        at += len[i];
    }
    /* While the consumer held the head chunk, the next chunks were already queued. */
    CHECK_MSG(g_max_pending >= 3, "copies ran ahead by only %d", g_max_pending);
    CHECK(g_pending == 0);
    kvp_stx_fini(&s);
    CHECK(g_events_live == 0 && g_hosts_live == 0);
    for (int i = 0; i < N; i++) free(src[i]);
    free(out);
}

TEST(stage_tx_reset_mid_stream_and_device_switch) {
    const uint64_t slot = 4096;
    kvp_stx s;
    kvp_stx_init(&s, &g_fake, 3, slot);
    uint8_t *a = malloc(10 * slot), *b = malloc(2 * slot);
    t_fill(a, 10 * slot, 1);
    t_fill(b, 2 * slot, 2);
    uint64_t taken;
    OK(kvp_stx_feed(&s, a, 0, (uint64_t)(uintptr_t)a, 0, 10 * slot, &taken));
    CHECK(taken == 3 * slot && kvp_stx_full(&s));
    CHECK(kvp_stx_holds(&s, a) && !kvp_stx_holds(&s, b));
    const uint8_t *p;
    uint64_t n;
    CHECK_ST(kvp_stx_front(&s, b, 0, &p, &n), KVP_ERR_NOT_FOUND); /* not the head */
    CHECK_ST(kvp_stx_front(&s, a, 5, &p, &n), KVP_ERR_NOT_FOUND); /* wrong offset */
    OK(kvp_stx_front(&s, a, 0, &p, &n));
    CHECK(n == slot && memcmp(p, a, slot) == 0);
    kvp_stx_consume(&s, 100);
    /* The source goes away (a cancelled frame): reset waits for queued copies. */
    kvp_stx_reset(&s);
    CHECK(g_pending == 0 && !kvp_stx_tail(&s, (const void **)&p, &n));
    /* Another device: only once the ring is empty; events move with it. */
    OK(kvp_stx_feed(&s, b, 1, (uint64_t)(uintptr_t)b, 0, 2 * slot, &taken));
    CHECK(taken == 2 * slot);
    OK(kvp_stx_feed(&s, a, 0, (uint64_t)(uintptr_t)a, 0, slot, &taken));
    CHECK(taken == 0); /* device 0 waits until the device-1 chunks are consumed */
    OK(kvp_stx_front(&s, b, 0, &p, &n));
    CHECK(memcmp(p, b, slot) == 0);
    kvp_stx_consume(&s, n);
    OK(kvp_stx_front(&s, b, slot, &p, &n));
    CHECK(memcmp(p, b + slot, slot) == 0);
    kvp_stx_consume(&s, n);
    OK(kvp_stx_feed(&s, a, 0, (uint64_t)(uintptr_t)a, 0, slot, &taken));
    CHECK(taken == slot);
    kvp_stx_fini(&s);
    CHECK(g_events_live == 0 && g_hosts_live == 0);
    free(a);
    free(b);
}

TEST(stage_tx_copy_error_is_reported) {
    kvp_stx s;
    kvp_stx_init(&s, &g_fake, 4, 4096);
    uint8_t *a = malloc(4 * 4096);
    t_fill(a, 4 * 4096, 3);
    g_fail_at = 2;
    uint64_t taken;
    CHECK(kvp_stx_feed(&s, a, 0, (uint64_t)(uintptr_t)a, 0, 4 * 4096, &taken) != KVP_SUCCESS);
    CHECK(taken == 2 * 4096); /* the chunks queued before the failure stay valid */
    const uint8_t *p;
    uint64_t n;
    OK(kvp_stx_front(&s, a, 0, &p, &n));
    CHECK(memcmp(p, a, 4096) == 0);
    kvp_stx_fini(&s);
    free(a);
}

TEST(stage_rx_pipeline_random_bites) {
    const uint64_t slot = 8192;
    kvp_srx s;
    kvp_srx_init(&s, &g_fake, 3, slot);
    enum { N = 4 };
    uint64_t len[N] = {slot * 7 + 5, 3, slot, 2 * slot + slot / 2};
    for (int i = 0; i < N; i++) {
        uint8_t *src = malloc(len[i]), *dst = malloc(len[i] + 64);
        t_fill(src, len[i], 50 + (uint32_t)i);
        memset(dst, 0, len[i] + 64);
        OK(kvp_srx_begin(&s, 0, (uint64_t)(uintptr_t)(dst + 32)));
        uint64_t at = 0;
        while (at < len[i]) {
            uint8_t *p;
            uint64_t room;
            OK(kvp_srx_space(&s, &p, &room));
            CHECK(room > 0);
            uint64_t bite = 1 + rnd() % (2 * slot); /* (KVP_MIN evaluates twice) */
            uint64_t n = KVP_MIN(room, KVP_MIN(len[i] - at, bite));
            memcpy(p, src + at, (size_t)n); /* the "recv" */
            at += n;
            OK(kvp_srx_commit(&s, n, at == len[i]));
        }
        if (len[i] > 2 * slot) CHECK(g_pending >= 1); /* copies still running here */
        OK(kvp_srx_drain(&s));
        CHECK(g_pending == 0);
        CHECK_MSG(memcmp(dst + 32, src, len[i]) == 0, "payload %d differs", i);
        for (int k = 0; k < 32; k++) CHECK(dst[k] == 0 && dst[32 + len[i] + k] == 0);
        free(src);
        free(dst);
    }
    kvp_srx_fini(&s);
    CHECK(g_events_live == 0 && g_hosts_live == 0);
}

TEST(stage_rx_dropped_payload_and_copy_error) {
    kvp_srx s;
    kvp_srx_init(&s, &g_fake, 2, 4096);
    uint8_t *dst = calloc(1, 3 * 4096), *src = malloc(3 * 4096);
    t_fill(src, 3 * 4096, 9);
    /* A payload abandoned half-way (cancelled READ): its uncommitted bytes never land. */
    OK(kvp_srx_begin(&s, 0, (uint64_t)(uintptr_t)dst));
    uint8_t *p;
    uint64_t room;
    OK(kvp_srx_space(&s, &p, &room));
    memcpy(p, src, 100);
    OK(kvp_srx_commit(&s, 100, false));
    OK(kvp_srx_begin(&s, 0, (uint64_t)(uintptr_t)(dst + 4096)));
    OK(kvp_srx_space(&s, &p, &room));
    CHECK(room == 4096);
    memcpy(p, src, 4096);
    OK(kvp_srx_commit(&s, 4096, true));
    OK(kvp_srx_drain(&s));
    CHECK(dst[0] == 0 && memcmp(dst + 4096, src, 4096) == 0);
    /* A failing copy is an error of commit, and the next payload works again. */
    g_fail_at = g_copies;
    OK(kvp_srx_begin(&s, 0, (uint64_t)(uintptr_t)dst));
    OK(kvp_srx_space(&s, &p, &room));
    CHECK(kvp_srx_commit(&s, 10, true) != KVP_SUCCESS);
    OK(kvp_srx_begin(&s, 0, (uint64_t)(uintptr_t)dst));
    OK(kvp_srx_space(&s, &p, &room));
    memcpy(p, src + 8192, 4096);
    OK(kvp_srx_commit(&s, 4096, true));
    OK(kvp_srx_drain(&s));
    CHECK(memcmp(dst, src + 8192, 4096) == 0);
    kvp_srx_fini(&s);
    free(dst);
    free(src);
}
