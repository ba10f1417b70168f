/*
 * echo_epoll.c - minimal single-threaded epoll TCP echo server.
 *
 * The "physical limit" peer of the trionet benchmark suite: same handler
 * shape as the Python servers (read up to 64 KiB, write it back), no
 * framework at all.  Level-triggered epoll; while a write is incomplete the
 * connection stops reading until the remainder is flushed (back-pressure).
 *
 * Usage: echo_epoll [--host 127.0.0.1] [--port 0] [--backlog 1024]
 * Prints "LISTENING <port>" on stdout once bound, then runs until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK 65536
#define MAX_EVENTS 256

struct conn {
    int fd;
    char *pending; /* unsent remainder of the last read, or NULL */
    size_t pending_len;
    size_t pending_off;
};

static int listen_fd = -1;
static char buf[CHUNK];

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void conn_close(int ep, struct conn *c) {
    (void)epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

static void set_interest(int ep, struct conn *c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl(MOD)");
}

/* Write what we can; keep the rest pending. Returns -1 on fatal error. */
static int conn_write(int ep, struct conn *c, const char *data, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, data + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            return -1;
        }
    }
    if (off < len) {
        if (c->pending == NULL) {
            c->pending = malloc(len - off);
            if (c->pending == NULL)
                return -1;
            memcpy(c->pending, data + off, len - off);
            c->pending_len = len - off;
            c->pending_off = 0;
            set_interest(ep, c, EPOLLOUT);
        } else {
            c->pending_off += off;
        }
    } else if (c->pending != NULL) {
        free(c->pending);
        c->pending = NULL;
        set_interest(ep, c, EPOLLIN);
    }
    return 0;
}

static void on_accept(int ep) {
    for (int i = 0; i < 1024; i++) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN, or EMFILE & co: try again on the next event */
        }
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

static void on_conn(int ep, struct conn *c, unsigned events) {
    if (c->pending != NULL) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
            size_t remaining = c->pending_len - c->pending_off;
            char *p = c->pending + c->pending_off;
            /* conn_write() frees/keeps c->pending as needed; copy the
             * pointer first so a partial write just advances the offset. */
            if (conn_write(ep, c, p, remaining) < 0)
                conn_close(ep, c);
        }
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        ssize_t n = recv(c->fd, buf, CHUNK, 0);
        if (n > 0) {
            if (conn_write(ep, c, buf, (size_t)n) < 0)
                conn_close(ep, c);
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            conn_close(ep, c);
        }
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, backlog = 1024;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc)
            host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--backlog") && i + 1 < argc)
            backlog = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--host H] [--port P] [--backlog N]\n", argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof ss);
    int family;
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((unsigned short)port);
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            die("inet_pton");
        family = AF_INET6;
        sslen = sizeof *a6;
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((unsigned short)port);
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            die("inet_pton");
        family = AF_INET;
        sslen = sizeof *a4;
    }
    listen_fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0)
        die("socket");
    int one = 1;
    (void)setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listen_fd, (struct sockaddr *)&ss, sslen) < 0)
        die("bind");
    if (listen(listen_fd, backlog) < 0)
        die("listen");
    sslen = sizeof ss;
    if (getsockname(listen_fd, (struct sockaddr *)&ss, &sslen) < 0)
        die("getsockname");
    int bound = family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                   : ntohs(((struct sockaddr_in *)&ss)->sin_port);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd, &lev) < 0)
        die("epoll_ctl(listen)");

    printf("LISTENING %d\n", bound);
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL)
                on_accept(ep);
            else
                on_conn(ep, events[i].data.ptr, events[i].events);
        }
    }
}
