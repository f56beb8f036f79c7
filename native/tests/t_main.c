/* t_main.c - test runner: runs every registered test in its own process. Usage:
 *   kvport-tests [substring]   run the tests whose name contains substring
 * Prints one line per test and a final "N passed, N failed"; exits 1 on failure. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "t.h"

typedef struct t_case {
    const char *name;
    t_fn fn;
    int timeout;
} t_case;

static t_case g_cases[256];
static int g_n;

void t_register(const char *name, t_fn fn, int timeout_s) {
    if (g_n < (int)(sizeof g_cases / sizeof g_cases[0]))
        g_cases[g_n++] = (t_case){name, fn, timeout_s};
}

const char *t_lasterr(void) {
    static char buf[1024];
    kvp_last_error(buf, sizeof buf);
    return buf;
}

void t_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "    %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    _exit(1);
}

double t_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int t_wait_child(int pid) {
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

static int cmp_case(const void *a, const void *b) {
    return strcmp(((const t_case *)a)->name, ((const t_case *)b)->name);
}

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    qsort(g_cases, (size_t)g_n, sizeof g_cases[0], cmp_case);
    int passed = 0, failed = 0;
    double t0 = t_now();
    signal(SIGPIPE, SIG_IGN);
    /* KVP_TEST_TIMEOUT_SCALE=N multiplies every test's time limit (slow sanitizers). */
    const char *sc = getenv("KVP_TEST_TIMEOUT_SCALE");
    int scale = sc && atoi(sc) > 0 ? atoi(sc) : 1;
    for (int i = 0; i < g_n; i++) {
        if (filter && !strstr(g_cases[i].name, filter)) continue;
        fflush(stdout);
        double s = t_now();
        pid_t pid = fork();
        if (pid == 0) {
            /* Own process group, so a hung test's helpers die with it. */
            setpgid(0, 0);
            alarm((unsigned)(g_cases[i].timeout * scale));
            g_cases[i].fn();
            fflush(stdout);
            exit(0); /* exit (not _exit): LeakSanitizer checks at exit under make asan */
        }
        int rc = t_wait_child(pid);
        kill(-pid, SIGKILL); /* leftovers of the test, if any */
        double el = t_now() - s;
        if (rc == 0) {
            passed++;
            printf("ok   %-44s %6.2fs\n", g_cases[i].name, el);
        } else {
            failed++;
            printf("FAIL %-44s %6.2fs (exit %d%s)\n", g_cases[i].name, el, rc,
                   rc == 128 + SIGALRM ? ": timed out" : "");
        }
    }
    printf("total %.2fs\n", t_now() - t0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
