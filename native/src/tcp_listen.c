/*
 * tcp_listen.c - the agent's TCP listener: binding, accepting connections (with a
 * reserve descriptor for EMFILE), and starting and stopping the transport (see tcp.h).
 */
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "errors.h"
#include "tcp.h"

void tcp_accept_all(bi_agent *a) {
    for (;;) {
        int fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if ((errno == EMFILE || errno == ENFILE) && a->spare_fd >= 0) {
                /* Out of descriptors: the pending connection would keep the (level-
                 * triggered) listener readable and this thread spinning. Free the
                 * reserve fd, take the connection, refuse it, take the reserve back. */
                kvp_close(a->spare_fd);
                int drop = accept4(a->lfd, NULL, NULL, SOCK_CLOEXEC);
                kvp_close(drop);
                a->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (drop >= 0) continue;
            }
            return; /* EAGAIN (or nothing more can be done now) */
        }
        /* Bounded: strangers cannot open connections without end. */
        pthread_mutex_lock(&a->mu);
        bool full = a->n_inbound >= a->max_inbound_conns;
        pthread_mutex_unlock(&a->mu);
        if (full) {
            atomic_fetch_add(&a->n_conns_refused, 1);
            kvp_close(fd);
            continue;
        }
        tcp_set_sockopts(fd);
        bi_conn *c = tcp_conn_new(a, fd, true);
        if (!c) {
            kvp_close(fd);
            continue;
        }
        c->hello_deadline_ns = kvp_now_ns() + (uint64_t)a->hello_timeout_ms * 1000000ull;
        pthread_mutex_lock(&a->mu);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c->ev};
        if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            pthread_mutex_unlock(&a->mu);
            bi_conn_put(c);
            continue;
        }
        c->next = a->conns; /* the list's reference is the one from tcp_conn_new */
        a->conns = c;
        a->n_inbound++;
        a->n_unhello++;
        pthread_mutex_unlock(&a->mu);
    }
}


/* ----------------------------------------------------------- start / stop ---- */

static int32_t listen_on(bi_agent *a) {
    char ps[8];
    snprintf(ps, sizeof ps, "%u", a->port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(a->listen_host, ps, &hints, &res);
    if (rc != 0)
        return kvp_err(KVP_ERR_INVALID_PARAM, "listen_host \"%s\" does not resolve: %s",
                       a->listen_host, gai_strerror(rc));
    int32_t st = KVP_SUCCESS;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) {
        st = kvp_err(KVP_ERR_BACKEND, "socket: %s", strerror(errno));
    } else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
               bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 128) != 0) {
        st = kvp_err(KVP_ERR_BACKEND, "cannot listen on %s:%u: %s", a->listen_host, a->port,
                     strerror(errno));
    } else {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
            st = kvp_err(KVP_ERR_BACKEND, "getsockname: %s", strerror(errno));
        } else if (ss.ss_family == AF_INET) {
            a->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else {
            a->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    freeaddrinfo(res);
    if (st != KVP_SUCCESS) {
        kvp_close(fd);
        return st;
    }
    a->lfd = fd;
    return KVP_SUCCESS;
}

int32_t bi_tcp_start(bi_agent *a) {
    a->ev_wake.kind = EV_WAKE;
    a->ev_listen.kind = EV_LISTEN;
    int32_t st = listen_on(a);
    if (st != KVP_SUCCESS) return st;
    a->epfd = epoll_create1(EPOLL_CLOEXEC);
    a->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    a->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (a->epfd < 0 || a->wakefd < 0) {
        st = kvp_err(KVP_ERR_BACKEND, "epoll/eventfd: %s", strerror(errno));
    } else {
        struct epoll_event e1 = {.events = EPOLLIN, .data.ptr = &a->ev_wake};
        struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = &a->ev_listen};
        if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, a->wakefd, &e1) != 0 ||
            epoll_ctl(a->epfd, EPOLL_CTL_ADD, a->lfd, &e2) != 0)
            st = kvp_err(KVP_ERR_BACKEND, "epoll_ctl: %s", strerror(errno));
    }
    if (st == KVP_SUCCESS) {
        int rc = pthread_create(&a->progress, NULL, tcp_progress_main, a);
        if (rc != 0) st = kvp_err(KVP_ERR_BACKEND, "cannot start the progress thread: %s",
                                  strerror(rc));
        else a->progress_started = true;
    }
    if (st != KVP_SUCCESS) {
        kvp_close(a->lfd);
        kvp_close(a->wakefd);
        kvp_close(a->epfd);
        kvp_close(a->spare_fd);
        a->lfd = a->wakefd = a->epfd = a->spare_fd = -1;
    }
    return st;
}

void bi_tcp_stop(bi_agent *a) {
    if (a->progress_started) {
        atomic_store(&a->stopping, true);
        uint64_t one = 1;
        ssize_t w = write(a->wakefd, &one, sizeof one);
        KVP_UNUSED(w);
        pthread_join(a->progress, NULL);
        a->progress_started = false;
    }
    /* Now the only thread: close every connection, failing what was pending. */
    for (;;) {
        pthread_mutex_lock(&a->mu);
        bi_conn *c = a->conns;
        pthread_mutex_unlock(&a->mu);
        if (!c) break;
        tcp_conn_fail(c, KVP_ERR_CANCELED, "agent destroyed");
        bi_conn_put(c);
    }
    kvp_close(a->lfd);
    kvp_close(a->wakefd);
    kvp_close(a->spare_fd);
    a->lfd = a->wakefd = a->spare_fd = -1;
}
