/*
 * loadgen.c - single-threaded epoll load generator for the trionet
 * benchmark suite.  Loopback only; every phase is bounded in time.
 *
 * Modes:
 *   pingpong  --conns N --size S    N connections, one S-byte message in
 *                                   flight each (closed loop); msg/s and
 *                                   round-trip latency percentiles.
 *   bulk      --conns N --window B  N connections streaming 64 KiB chunks,
 *                                   at most B bytes un-echoed per connection;
 *                                   echoed MB/s.
 *   connrate  --concurrency K       K parallel loops of connect, 16 B echo,
 *                                   close; completed connections/s.
 *   hold      --conns N             open N connections (16 B echo each,
 *                                   --concurrency at a time), print a JSON
 *                                   line, wait for a line/EOF on stdin (at
 *                                   most --hold-timeout s), close, exit.
 *
 * --tls (OpenSSL, link with -lssl -lcrypto): every connection is a TLS client
 * that sends SNI "localhost" and completes its handshake before the workload.
 * The server certificate is not verified unless --tls-ca FILE is given (then
 * the chain is verified against FILE and the name against "localhost").
 *   pingpong  handshakes (one connection at a time, bounded) happen before
 *             the clock starts: only the echoes are measured.
 *   connrate  connect, full handshake (a fresh SSL per connection, session
 *             cache off: never a resumption), 16 B echo, close_notify
 *             (SSL_shutdown once), close.
 *   hold      handshake and 16 B echo on every held connection before it
 *             counts as held; close_notify before closing at the end.
 * bulk has no TLS variant.
 *
 * --proxy-v2: every connection first sends the 28-byte PROXY protocol v2
 * header a load balancer would (PROXY command, AF_INET, STREAM): client
 * 192.0.2.x:port (TEST-NET-1, a new address and port for every connection),
 * destination the server's address and port.  It goes out on its own, right
 * after connect, before the first message (over TLS: before the ClientHello),
 * as its own TCP segment (TCP_NODELAY).  Every mode.
 *
 * Timed modes run --warmup seconds (discarded) then --duration seconds and
 * print one JSON object on stdout.  The load generator's own CPU time
 * (getrusage) and, with --server-pid, the server's CPU time (/proc/PID/stat)
 * are reported for the measurement window as a fraction of one core.
 * --server-pid PID,PID,...: a server of several processes (a supervisor and
 * its workers): srv_cpu is their sum, and srv_cpus lists each one's share.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define CHUNK 65536
#define MAX_EVENTS 512
#define NBUCKETS 4096

/* ------------------------------------------------------------------ opts */

static const char *opt_mode = NULL;
static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static int opt_conns = 1;
static int opt_size = 64;
static int opt_concurrency = 32;
static long opt_window = 256 * 1024;
static double opt_warmup = 1.0;
static double opt_duration = 4.0;
static double opt_hold_timeout = 120.0;
#define MAX_SERVER_PIDS 64
static int opt_server_pids[MAX_SERVER_PIDS];
static int n_server_pids = 0;
static int opt_src_ips = 0;
static int opt_tls = 0;
static const char *opt_tls_ca = NULL;
static int opt_proxy_v2 = 0;

#define TLS_NAME "localhost"

/* ------------------------------------------------------------ utilities */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    int e = errno;
    printf("{\"error\": \"%s: %s\"}\n", what, strerror(e));
    fflush(stdout);
    exit(1);
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* utime+stime of another process, in seconds; -1 if unavailable. */
static double proc_cpu(int pid) {
    if (pid <= 0)
        return -1.0;
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1.0;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return -1.0;
    text[n] = '\0';
    char *p = strrchr(text, ')');
    if (p == NULL)
        return -1.0;
    /* after ')': state ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime stime */
    unsigned long long ut = 0, st = 0;
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1.0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* --server-pid PID[,PID...] into opt_server_pids; 0 on success. */
static int parse_server_pids(const char *text) {
    n_server_pids = 0;
    while (*text) {
        char *end;
        long pid = strtol(text, &end, 10);
        if (end == text || pid <= 0 || n_server_pids == MAX_SERVER_PIDS)
            return -1;
        opt_server_pids[n_server_pids++] = (int)pid;
        if (*end == ',')
            end++;
        else if (*end != '\0')
            return -1;
        text = end;
    }
    return n_server_pids > 0 ? 0 : -1;
}

/* Busy (user+nice+system+irq+softirq) and steal time of the whole machine,
 * in seconds summed over all CPUs, from /proc/stat. */
static void machine_cpu(double *busy, double *steal) {
    *busy = *steal = -1.0;
    FILE *f = fopen("/proc/stat", "re");
    if (f == NULL)
        return;
    unsigned long long us, ni, sy, id, io, irq, sirq, st;
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &us, &ni, &sy, &id, &io, &irq,
               &sirq, &st) == 8) {
        double hz = (double)sysconf(_SC_CLK_TCK);
        *busy = (double)(us + ni + sy + irq + sirq) / hz;
        *steal = (double)st / hz;
    }
    fclose(f);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---------------------------------------------------- latency histogram */
/* Log-linear buckets: exact below 128 ns, then 64 sub-buckets per power
 * of two (<1.6 % relative error). */

static uint64_t hist[NBUCKETS];
static uint64_t hist_n;
static uint64_t hist_max;

static int bucket_of(uint64_t v) {
    if (v < 128)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 6;
    int idx = shift * 64 + (int)(v >> shift);
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static double bucket_value(int idx) {
    if (idx < 128)
        return (double)idx;
    int shift = idx / 64 - 1;
    uint64_t top = (uint64_t)(idx - shift * 64);
    return (double)(top << shift) + (double)(1ull << shift) / 2.0;
}

static void hist_add(uint64_t v) {
    hist[bucket_of(v)]++;
    hist_n++;
    if (v > hist_max)
        hist_max = v;
}

static void hist_reset(void) {
    memset(hist, 0, sizeof hist);
    hist_n = 0;
    hist_max = 0;
}

static double hist_pct(double q) {
    if (hist_n == 0)
        return -1.0;
    uint64_t rank = (uint64_t)(q * (double)hist_n);
    if (rank >= hist_n)
        rank = hist_n - 1;
    uint64_t seen = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        seen += hist[i];
        if (seen > rank)
            return bucket_value(i);
    }
    return (double)hist_max;
}

/* ------------------------------------------------------------- sockets */

static struct sockaddr_storage dst;
static socklen_t dstlen;
static int dst_family;
static unsigned src_rr;

static void resolve(void) {
    memset(&dst, 0, sizeof dst);
    if (strchr(opt_host, ':') != NULL) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&dst;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)opt_port);
        if (inet_pton(AF_INET6, opt_host, &a->sin6_addr) != 1)
            die("inet_pton");
        dstlen = sizeof *a;
        dst_family = AF_INET6;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&dst;
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)opt_port);
        if (inet_pton(AF_INET, opt_host, &a->sin_addr) != 1)
            die("inet_pton");
        if ((ntohl(a->sin_addr.s_addr) >> 24) != 127) {
            errno = EINVAL;
            die("refusing non-loopback destination");
        }
        dstlen = sizeof *a;
        dst_family = AF_INET;
    }
}

/* PROXY v2 header (--proxy-v2) */

#define PROXY_V2_LEN 28

static unsigned proxy_seq; /* connections that sent a header so far */

/* The header for the next connection: client 192.0.2.(1..254), port
 * 1024.., one after the other (254 x 64512 pairs before they repeat). */
static void proxy_v2_header(unsigned char out[PROXY_V2_LEN]) {
    static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                          0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    unsigned n = proxy_seq++;
    uint32_t src = htonl((192u << 24) | (2u << 8) | (1u + n % 254u));
    uint16_t sport = htons((uint16_t)(1024u + (n / 254u) % 64512u));
    uint32_t daddr = dst_family == AF_INET ? ((struct sockaddr_in *)&dst)->sin_addr.s_addr
                                           : htonl(0x7F000001u); /* ::1: say 127.0.0.1 */
    uint16_t dport = htons((uint16_t)opt_port);
    memcpy(out, sig, sizeof sig);
    out[12] = 0x21; /* version 2, PROXY */
    out[13] = 0x11; /* AF_INET, STREAM */
    out[14] = 0;
    out[15] = 12; /* address block: 4 + 4 + 2 + 2 */
    memcpy(out + 16, &src, 4);
    memcpy(out + 20, &daddr, 4);
    memcpy(out + 24, &sport, 2);
    memcpy(out + 26, &dport, 2);
}

/* With --proxy-v2, send the header on a freshly connected socket (28 bytes
 * always fit its empty send buffer); 0 on success or without --proxy-v2. */
static int proxy_send(int fd) {
    if (!opt_proxy_v2)
        return 0;
    unsigned char h[PROXY_V2_LEN];
    proxy_v2_header(h);
    ssize_t n;
    do
        n = send(fd, h, sizeof h, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof h ? 0 : -1;
}

/* New non-blocking TCP socket with NODELAY; optionally bound to one of
 * 127.0.0.2 .. 127.0.0.(1+opt_src_ips) so that connection-rate runs do not
 * run out of ephemeral ports to TIME_WAIT. */
static int new_socket(void) {
    int fd = socket(dst_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt_src_ips > 0 && dst_family == AF_INET) {
        struct sockaddr_in src;
        memset(&src, 0, sizeof src);
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl((127u << 24) | (2u + (src_rr++ % (unsigned)opt_src_ips)));
        (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

/* Connect with a bounded wait (used for the long-lived connections of
 * pingpong/bulk, established before the clock starts). */
static int connect_blocking(void) {
    int fd = new_socket();
    if (fd < 0)
        die("socket");
    if (connect(fd, (struct sockaddr *)&dst, dstlen) < 0) {
        if (errno != EINPROGRESS)
            die("connect");
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 5000) != 1)
            die("connect timeout");
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0) {
            errno = err;
            die("connect");
        }
    }
    if (proxy_send(fd) < 0)
        die("PROXY v2 header");
    return fd;
}

static int ep;

static void ep_set(int fd, unsigned events, void *ptr, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    if (epoll_ctl(ep, op, fd, &ev) < 0)
        die("epoll_ctl");
}

/* ----------------------------------------------------------------- TLS */

static SSL_CTX *tls_ctx;
static char tls_first_error[200]; /* the first TLS failure, for the report */
static char tls_params[120];      /* version and cipher of the first handshake */

/* JSON-safe copy (no quotes, backslashes or control characters). */
static void json_copy(char *dst_buf, size_t size, const char *src) {
    size_t i = 0;
    for (; src[i] != '\0' && i + 1 < size; i++)
        dst_buf[i] = (src[i] == '"' || src[i] == '\\' || (unsigned char)src[i] < 0x20) ? '\''
                                                                                : src[i];
    dst_buf[i] = '\0';
}

/* Describe a failed SSL call (once per run), then empty OpenSSL's error queue. */
static void tls_note(const char *what, int ssl_err) {
    if (tls_first_error[0] == '\0') {
        char why[160];
        unsigned long e = ERR_peek_error();
        if (e != 0)
            ERR_error_string_n(e, why, sizeof why);
        else if (ssl_err == SSL_ERROR_SYSCALL)
            snprintf(why, sizeof why, "%s", errno ? strerror(errno) : "unexpected EOF");
        else if (ssl_err == SSL_ERROR_ZERO_RETURN)
            snprintf(why, sizeof why, "close_notify from the server");
        else
            snprintf(why, sizeof why, "SSL error %d", ssl_err);
        char text[sizeof tls_first_error];
        snprintf(text, sizeof text, "%s: %s", what, why);
        json_copy(tls_first_error, sizeof tls_first_error, text);
    }
    ERR_clear_error();
}

static void die_tls(const char *what, int ssl_err) {
    tls_note(what, ssl_err);
    printf("{\"error\": \"tls %s\"}\n", tls_first_error);
    fflush(stdout);
    exit(1);
}

/* Without --tls-ca: no chain building at all (OpenSSL would build and check
 * the chain even with SSL_VERIFY_NONE, then ignore the result). */
static int tls_skip_chain(X509_STORE_CTX *store, void *arg) {
    (void)store;
    (void)arg;
    return 1;
}

static void tls_init(int release_buffers) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (tls_ctx == NULL)
        die_tls("SSL_CTX_new", SSL_ERROR_SSL);
    /* No session is ever stored or offered: every handshake is a full one. */
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    /* One read() per batch of records instead of two per record. */
    SSL_CTX_set_read_ahead(tls_ctx, 1);
    if (release_buffers) /* hold: thousands of idle SSLs */
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_RELEASE_BUFFERS);
    if (opt_tls_ca != NULL) {
        if (SSL_CTX_load_verify_locations(tls_ctx, opt_tls_ca, NULL) != 1)
            die_tls("--tls-ca", SSL_ERROR_SSL);
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_cert_verify_callback(tls_ctx, tls_skip_chain, NULL);
    }
}

/* A fresh client SSL on fd (connected or connecting); NULL on failure. */
static SSL *tls_new(int fd) {
    SSL *s = SSL_new(tls_ctx);
    if (s == NULL)
        return NULL;
    if (SSL_set_fd(s, fd) != 1 || SSL_set_tlsext_host_name(s, TLS_NAME) != 1 ||
        (opt_tls_ca != NULL && SSL_set1_host(s, TLS_NAME) != 1)) {
        SSL_free(s);
        return NULL;
    }
    SSL_set_connect_state(s);
    return s;
}

static void tls_handshake_done(SSL *s) {
    if (tls_params[0] == '\0')
        snprintf(tls_params, sizeof tls_params, "%s %s", SSL_get_version(s),
                 SSL_get_cipher_name(s));
}

/* close_notify (SSL_shutdown once: not waiting for the server's), free. */
static void tls_close(SSL *s) {
    ERR_clear_error();
    (void)SSL_shutdown(s);
    SSL_free(s);
    ERR_clear_error();
}

/* Handshake on a connected socket, bounded in time (pingpong setup). */
static SSL *tls_handshake_blocking(int fd) {
    SSL *s = tls_new(fd);
    if (s == NULL)
        die_tls("SSL_new", SSL_ERROR_SSL);
    uint64_t deadline = now_ns() + 5000000000ull;
    for (;;) {
        ERR_clear_error();
        int r = SSL_do_handshake(s);
        if (r == 1) {
            tls_handshake_done(s);
            return s;
        }
        int e = SSL_get_error(s, r);
        short want = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
        if (want == 0)
            die_tls("handshake", e);
        uint64_t t = now_ns();
        struct pollfd p = {.fd = fd, .events = want};
        if (t >= deadline || poll(&p, 1, (int)((deadline - t) / 1000000ull) + 1) < 0) {
            errno = ETIMEDOUT;
            die_tls("handshake", SSL_ERROR_SYSCALL);
        }
    }
}

/* -------------------------------------------------------- measurement */

static uint64_t t_start, t_measure, t_end;
static int measuring;
static uint64_t count, bytes, errors;
static double cpu0, cpu1, busy0, busy1, steal0, steal1;
/* CPU seconds of each --server-pid process at the start and end of the window. */
static double srv0[MAX_SERVER_PIDS], srv1[MAX_SERVER_PIDS];

static void server_cpu(double *out) {
    for (int i = 0; i < n_server_pids; i++)
        out[i] = proc_cpu(opt_server_pids[i]);
}
static uint64_t m_begin, m_end;

static void phase_init(void) {
    t_start = now_ns();
    t_measure = t_start + (uint64_t)(opt_warmup * 1e9);
    t_end = t_measure + (uint64_t)(opt_duration * 1e9);
    measuring = 0;
    if (opt_warmup <= 0) {
        measuring = 1;
        m_begin = t_start;
        cpu0 = self_cpu();
        server_cpu(srv0);
        machine_cpu(&busy0, &steal0);
    }
}

/* Returns 0 when the run is over. */
static int phase_tick(void) {
    uint64_t t = now_ns();
    if (!measuring && t >= t_measure) {
        measuring = 1;
        count = bytes = 0;
        hist_reset();
        m_begin = t;
        cpu0 = self_cpu();
        server_cpu(srv0);
        machine_cpu(&busy0, &steal0);
    }
    if (t >= t_end) {
        m_end = t;
        cpu1 = self_cpu();
        server_cpu(srv1);
        machine_cpu(&busy1, &steal1);
        return 0;
    }
    return 1;
}

static int wait_ms(void) {
    uint64_t t = now_ns();
    uint64_t next = measuring ? t_end : t_measure;
    if (next <= t)
        return 0;
    uint64_t ms = (next - t) / 1000000ull + 1;
    return ms > 50 ? 50 : (int)ms;
}

/* ", "tls": ..., "tls_error": ..." for the JSON line; "" without --tls. */
static const char *tls_fields(void) {
    static char text[400];
    if (!opt_tls)
        return "";
    snprintf(text, sizeof text, ", \"tls\": \"%s\", \"tls_error\": \"%s\"", tls_params,
             tls_first_error);
    return text;
}

/* ", "proxy": "v2"" for the JSON line with --proxy-v2; "" otherwise. */
static const char *proxy_fields(void) {
    return opt_proxy_v2 ? ", \"proxy\": \"v2\"" : "";
}

static void report(int conns) {
    double secs = (double)(m_end - m_begin) / 1e9;
    /* Summed over the server's processes; -1 if any of them is unreadable. */
    double srv = n_server_pids > 0 ? 0.0 : -1.0;
    char each[MAX_SERVER_PIDS * 12 + 32] = "";
    size_t used = 0;
    for (int i = 0; i < n_server_pids; i++) {
        double one = (srv0[i] >= 0 && srv1[i] >= 0) ? (srv1[i] - srv0[i]) / secs : -1.0;
        srv = (srv < 0 || one < 0) ? -1.0 : srv + one;
        if (n_server_pids > 1)
            used += (size_t)snprintf(each + used, sizeof each - used, "%s%.4f",
                                     i ? ", " : ", \"srv_cpus\": [", one);
    }
    if (n_server_pids > 1)
        snprintf(each + used, sizeof each - used, "]");
    double busy = (busy0 >= 0 && busy1 >= 0) ? (busy1 - busy0) / secs : -1.0;
    double steal = (steal0 >= 0 && steal1 >= 0) ? (steal1 - steal0) / secs : -1.0;
    printf("{\"mode\": \"%s\", \"conns\": %d, \"size\": %d, \"seconds\": %.6f, "
           "\"count\": %llu, \"rate\": %.3f, \"bytes\": %llu, \"mbps\": %.3f, "
           "\"p50_us\": %.3f, \"p90_us\": %.3f, \"p99_us\": %.3f, \"max_us\": %.3f, "
           "\"lg_cpu\": %.4f, \"srv_cpu\": %.4f, \"machine_cpu\": %.4f, \"steal_cpu\": %.4f, "
           "\"errors\": %llu%s%s%s}\n",
           opt_mode, conns, opt_size, secs, (unsigned long long)count, (double)count / secs,
           (unsigned long long)bytes, (double)bytes / secs / 1e6, hist_pct(0.50) / 1e3,
           hist_pct(0.90) / 1e3, hist_pct(0.99) / 1e3, (double)hist_max / 1e3,
           (cpu1 - cpu0) / secs, srv, busy, steal, (unsigned long long)errors, tls_fields(),
           proxy_fields(), each);
    fflush(stdout);
}

/* ------------------------------------------------------------ pingpong */

struct pp_conn {
    int fd;
    int alive;
    int want_out;
    size_t sent, rcvd;
    uint64_t t0;
    SSL *ssl; /* --tls */
};

static char *pattern;
static char scratch[CHUNK];

static void pp_kill(struct pp_conn *c, int *alive) {
    if (!c->alive)
        return;
    c->alive = 0;
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
    }
    close(c->fd);
    errors++;
    (*alive)--;
}

static void pp_want_out(struct pp_conn *c, int want) {
    if (c->want_out != want) {
        c->want_out = want;
        ep_set(c->fd, want ? EPOLLIN | EPOLLOUT : EPOLLIN, c, EPOLL_CTL_MOD);
    }
}

/* TLS: one SSL_write of the whole message (no partial writes); when it has
 * to wait it is retried with the same arguments on the next event. */
static int pp_send_tls(struct pp_conn *c) {
    ERR_clear_error();
    int r = SSL_write(c->ssl, pattern, opt_size);
    if (r > 0) {
        c->sent = (size_t)opt_size;
        pp_want_out(c, 0);
        return 0;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE) {
        pp_want_out(c, 1);
        return 0;
    }
    if (e == SSL_ERROR_WANT_READ) /* retried on the next EPOLLIN */
        return 0;
    tls_note("write", e);
    return -1;
}

/* TLS: read the echo until it is complete (1) or the socket is drained
 * (0); -1 on failure.  With read-ahead, records may wait inside the SSL, so
 * read on until SSL_read wants the socket again. */
static int pp_recv_tls(struct pp_conn *c) {
    for (;;) {
        size_t want = (size_t)opt_size - c->rcvd;
        ERR_clear_error();
        int r = SSL_read(c->ssl, scratch, (int)want);
        if (r > 0) {
            if (c->rcvd + (size_t)r > c->sent || memcmp(scratch, pattern + c->rcvd, (size_t)r) != 0)
                return -1; /* corrupted echo */
            c->rcvd += (size_t)r;
            if (c->rcvd == (size_t)opt_size)
                return 1;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            pp_want_out(c, 0); /* the message is out: no write is waiting */
            return 0;
        }
        if (e == SSL_ERROR_WANT_WRITE) { /* a read that has to write: rare */
            pp_want_out(c, 1);
            return 0;
        }
        tls_note("read", e);
        return -1;
    }
}

static int pp_send(struct pp_conn *c) {
    if (c->ssl != NULL)
        return pp_send_tls(c);
    while (c->sent < (size_t)opt_size) {
        ssize_t n = send(c->fd, pattern + c->sent, (size_t)opt_size - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            if (!c->want_out) {
                c->want_out = 1;
                ep_set(c->fd, EPOLLIN | EPOLLOUT, c, EPOLL_CTL_MOD);
            }
            return 0;
        } else {
            return -1;
        }
    }
    if (c->want_out) {
        c->want_out = 0;
        ep_set(c->fd, EPOLLIN, c, EPOLL_CTL_MOD);
    }
    return 0;
}

static int run_pingpong(void) {
    struct pp_conn *cs = calloc((size_t)opt_conns, sizeof *cs);
    pattern = malloc((size_t)opt_size);
    if (cs == NULL || pattern == NULL)
        die("calloc");
    for (int i = 0; i < opt_size; i++)
        pattern[i] = (char)(i * 7 + 13);
    for (int i = 0; i < opt_conns; i++) {
        cs[i].fd = connect_blocking();
        cs[i].alive = 1;
        if (opt_tls) /* before the clock starts: handshakes are not measured */
            cs[i].ssl = tls_handshake_blocking(cs[i].fd);
        ep_set(cs[i].fd, EPOLLIN, &cs[i], EPOLL_CTL_ADD);
    }
    int alive = opt_conns;
    phase_init();
    for (int i = 0; i < opt_conns; i++) {
        cs[i].t0 = now_ns();
        if (pp_send(&cs[i]) < 0)
            pp_kill(&cs[i], &alive);
    }
    struct epoll_event evs[MAX_EVENTS];
    while (alive > 0 && phase_tick()) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, wait_ms());
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct pp_conn *c = evs[i].data.ptr;
            if (!c->alive)
                continue;
            if (c->ssl != NULL) {
                /* Any event may unblock a waiting write or read. */
                if (c->sent < (size_t)opt_size && pp_send(c) < 0) {
                    pp_kill(c, &alive);
                    continue;
                }
                if (c->sent < (size_t)opt_size)
                    continue; /* nothing to read before the message is out */
                int got = pp_recv_tls(c);
                if (got < 0) {
                    pp_kill(c, &alive);
                    continue;
                }
                if (got == 0)
                    continue;
                uint64_t t = now_ns();
                if (measuring) {
                    count++;
                    bytes += (uint64_t)opt_size;
                    hist_add(t - c->t0);
                }
                c->sent = c->rcvd = 0;
                c->t0 = t;
                if (pp_send(c) < 0)
                    pp_kill(c, &alive);
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && c->sent < (size_t)opt_size) {
                if (pp_send(c) < 0) {
                    pp_kill(c, &alive);
                    continue;
                }
            }
            if (!(evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                continue;
            size_t want = (size_t)opt_size - c->rcvd;
            if (want > sizeof scratch)
                want = sizeof scratch;
            ssize_t r = recv(c->fd, scratch, want, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0 || c->rcvd + (size_t)r > c->sent ||
                memcmp(scratch, pattern + c->rcvd, (size_t)r) != 0) {
                pp_kill(c, &alive); /* EOF, error, or corrupted echo */
                continue;
            }
            c->rcvd += (size_t)r;
            if (c->rcvd == (size_t)opt_size) {
                uint64_t t = now_ns();
                if (measuring) {
                    count++;
                    bytes += (uint64_t)opt_size;
                    hist_add(t - c->t0);
                }
                c->sent = c->rcvd = 0;
                c->t0 = t;
                if (pp_send(c) < 0)
                    pp_kill(c, &alive);
            }
        }
    }
    if (alive == 0 && !m_end) {
        printf("{\"error\": \"all connections failed%s%s\", \"errors\": %llu}\n",
               tls_first_error[0] ? "; first TLS error: " : "", tls_first_error,
               (unsigned long long)errors);
        return 1;
    }
    report(opt_conns);
    return 0;
}

/* ---------------------------------------------------------------- bulk */

struct bulk_conn {
    int fd;
    int alive;
    int want_out;
    uint64_t sent, rcvd;
};

static char chunk_out[CHUNK];

static int bulk_send(struct bulk_conn *c) {
    for (;;) {
        uint64_t inflight = c->sent - c->rcvd;
        if (inflight >= (uint64_t)opt_window)
            break;
        size_t len = (size_t)((uint64_t)opt_window - inflight);
        if (len > CHUNK)
            len = CHUNK;
        ssize_t n = send(c->fd, chunk_out, len, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (uint64_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            if (!c->want_out) {
                c->want_out = 1;
                ep_set(c->fd, EPOLLIN | EPOLLOUT, c, EPOLL_CTL_MOD);
            }
            return 0;
        } else {
            return -1;
        }
    }
    if (c->want_out) { /* window full: wait for echoes, not for POLLOUT */
        c->want_out = 0;
        ep_set(c->fd, EPOLLIN, c, EPOLL_CTL_MOD);
    }
    return 0;
}

static int run_bulk(void) {
    struct bulk_conn *cs = calloc((size_t)opt_conns, sizeof *cs);
    if (cs == NULL)
        die("calloc");
    memset(chunk_out, 'x', sizeof chunk_out);
    for (int i = 0; i < opt_conns; i++) {
        cs[i].fd = connect_blocking();
        cs[i].alive = 1;
        ep_set(cs[i].fd, EPOLLIN, &cs[i], EPOLL_CTL_ADD);
    }
    int alive = opt_conns;
    phase_init();
    for (int i = 0; i < opt_conns; i++)
        if (bulk_send(&cs[i]) < 0) {
            cs[i].alive = 0;
            alive--;
            errors++;
        }
    struct epoll_event evs[MAX_EVENTS];
    while (alive > 0 && phase_tick()) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, wait_ms());
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct bulk_conn *c = evs[i].data.ptr;
            if (!c->alive)
                continue;
            int dead = 0;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);
                if (r > 0) {
                    c->rcvd += (uint64_t)r;
                    if (measuring)
                        bytes += (uint64_t)r;
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    dead = 1;
                }
            }
            if (!dead && bulk_send(c) < 0)
                dead = 1;
            if (dead) {
                c->alive = 0;
                close(c->fd);
                alive--;
                errors++;
            }
        }
    }
    if (alive == 0 && !m_end) {
        printf("{\"error\": \"all connections failed\", \"errors\": %llu}\n",
               (unsigned long long)errors);
        return 1;
    }
    count = bytes / CHUNK;
    report(opt_conns);
    return 0;
}

/* ------------------------------------------------- connrate and hold */

enum { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_WRITING, S_READING };

struct cr_conn {
    int fd;
    int state;
    unsigned events; /* epoll interest */
    size_t rcvd;
    uint64_t t0;
    SSL *ssl; /* --tls */
};

static const char small_msg[16] = "0123456789abcdef";

/* Start a new connection in slot c; returns -1 on immediate failure. */
static int cr_start(struct cr_conn *c) {
    c->fd = new_socket();
    c->rcvd = 0;
    c->t0 = now_ns();
    if (c->fd < 0) {
        c->state = S_IDLE;
        return -1;
    }
    if (connect(c->fd, (struct sockaddr *)&dst, dstlen) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->state = S_IDLE;
        return -1;
    }
    c->state = S_CONNECTING;
    c->events = EPOLLOUT;
    ep_set(c->fd, EPOLLOUT, c, EPOLL_CTL_ADD);
    return 0;
}

static void cr_fail(struct cr_conn *c) {
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
    }
    close(c->fd);
    c->fd = -1;
    c->state = S_IDLE;
    errors++;
}

/* Graceful close after the echo: close_notify first over TLS. */
static void cr_close(struct cr_conn *c) {
    if (c->ssl != NULL) {
        tls_close(c->ssl);
        c->ssl = NULL;
    }
    close(c->fd);
    c->fd = -1;
}

static void cr_want(struct cr_conn *c, unsigned events) {
    if (c->events != events) {
        c->events = events;
        ep_set(c->fd, events, c, EPOLL_CTL_MOD);
    }
}

/* TLS: handshake, 16 B write, 16 B read, each resumed where it had to wait;
 * returns 1 when the echo has completed. */
static int cr_event_tls(struct cr_conn *c) {
    for (;;) {
        const char *what;
        int r;
        ERR_clear_error();
        if (c->state == S_HANDSHAKE) {
            what = "handshake";
            r = SSL_do_handshake(c->ssl);
        } else if (c->state == S_WRITING) {
            what = "write";
            r = SSL_write(c->ssl, small_msg, (int)sizeof small_msg);
        } else {
            what = "read";
            r = SSL_read(c->ssl, scratch, (int)(sizeof small_msg - c->rcvd));
        }
        if (r > 0) {
            if (c->state == S_HANDSHAKE) {
                tls_handshake_done(c->ssl);
                c->state = S_WRITING;
            } else if (c->state == S_WRITING) {
                c->state = S_READING;
            } else {
                if (memcmp(scratch, small_msg + c->rcvd, (size_t)r) != 0) {
                    cr_fail(c);
                    return 0;
                }
                c->rcvd += (size_t)r;
                if (c->rcvd == sizeof small_msg)
                    return 1;
            }
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            cr_want(c, EPOLLIN);
            return 0;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            cr_want(c, EPOLLOUT);
            return 0;
        }
        tls_note(what, e);
        cr_fail(c);
        return 0;
    }
}

/* Drive one event; returns 1 when the 16 B echo has completed. */
static int cr_event(struct cr_conn *c, unsigned events) {
    if (c->state == S_CONNECTING && opt_tls) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP)) || proxy_send(c->fd) < 0 ||
            (c->ssl = tls_new(c->fd)) == NULL) {
            cr_fail(c);
            return 0;
        }
        c->state = S_HANDSHAKE; /* and send the ClientHello now (after any PROXY header) */
    }
    if (c->ssl != NULL)
        return cr_event_tls(c);
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP)) || proxy_send(c->fd) < 0) {
            cr_fail(c);
            return 0;
        }
        if (send(c->fd, small_msg, sizeof small_msg, MSG_NOSIGNAL) != (ssize_t)sizeof small_msg) {
            cr_fail(c);
            return 0;
        }
        c->state = S_READING;
        cr_want(c, EPOLLIN);
        return 0;
    }
    ssize_t r = recv(c->fd, scratch, sizeof small_msg - c->rcvd, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r <= 0 || memcmp(scratch, small_msg + c->rcvd, (size_t)r) != 0) {
        cr_fail(c);
        return 0;
    }
    c->rcvd += (size_t)r;
    return c->rcvd == sizeof small_msg;
}

static int run_connrate(void) {
    int k = opt_concurrency;
    struct cr_conn *cs = calloc((size_t)k, sizeof *cs);
    if (cs == NULL)
        die("calloc");
    phase_init();
    for (int i = 0; i < k; i++)
        if (cr_start(&cs[i]) < 0)
            errors++;
    struct epoll_event evs[MAX_EVENTS];
    uint64_t ok_total = 0;
    while (phase_tick()) {
        if (errors > 10000 && ok_total == 0) {
            printf("{\"error\": \"no connection succeeded%s%s\", \"errors\": %llu}\n",
                   tls_first_error[0] ? "; first TLS error: " : "", tls_first_error,
                   (unsigned long long)errors);
            return 1;
        }
        int n = epoll_wait(ep, evs, MAX_EVENTS, wait_ms());
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct cr_conn *c = evs[i].data.ptr;
            if (c->state == S_IDLE)
                continue;
            if (cr_event(c, evs[i].events)) {
                uint64_t t = now_ns();
                cr_close(c); /* graceful close (TLS: close_notify first) */
                c->state = S_IDLE;
                ok_total++;
                if (measuring) {
                    count++;
                    hist_add(t - c->t0);
                }
            }
        }
        for (int i = 0; i < k; i++) /* refill idle slots */
            if (cs[i].state == S_IDLE && cr_start(&cs[i]) < 0)
                errors++;
    }
    if (ok_total == 0) {
        printf("{\"error\": \"no connection succeeded%s%s\", \"errors\": %llu}\n",
               tls_first_error[0] ? "; first TLS error: " : "", tls_first_error,
               (unsigned long long)errors);
        return 1;
    }
    report(k);
    return 0;
}

static int run_hold(void) {
    /* opt_duration bounds the time allowed to establish the connections. */
    int k = opt_concurrency;
    struct cr_conn *cs = calloc((size_t)k, sizeof *cs);
    int *held = calloc((size_t)opt_conns, sizeof *held);
    SSL **held_ssl = calloc((size_t)opt_conns, sizeof *held_ssl);
    if (cs == NULL || held == NULL || held_ssl == NULL)
        die("calloc");
    int nheld = 0, inflight = 0;
    uint64_t begin = now_ns();
    uint64_t deadline = begin + (uint64_t)(opt_duration * 1e9);
    double c0 = self_cpu();
    struct epoll_event evs[MAX_EVENTS];
    while (nheld < opt_conns && now_ns() < deadline && errors < 1000) {
        for (int i = 0; i < k && nheld + inflight < opt_conns; i++)
            if (cs[i].state == S_IDLE) {
                if (cr_start(&cs[i]) < 0)
                    errors++;
                else
                    inflight++;
            }
        int n = epoll_wait(ep, evs, MAX_EVENTS, 50);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct cr_conn *c = evs[i].data.ptr;
            if (c->state == S_IDLE)
                continue;
            int done = cr_event(c, evs[i].events);
            if (c->state == S_IDLE) { /* failed */
                inflight--;
            } else if (done) {
                (void)epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                held_ssl[nheld] = c->ssl;
                held[nheld++] = c->fd;
                c->ssl = NULL;
                c->state = S_IDLE;
                inflight--;
            }
        }
    }
    double secs = (double)(now_ns() - begin) / 1e9;
    printf("{\"mode\": \"hold\", \"conns\": %d, \"held\": %d, \"seconds\": %.6f, "
           "\"lg_cpu\": %.4f, \"errors\": %llu%s%s}\n",
           opt_conns, nheld, secs, (self_cpu() - c0) / (secs > 0 ? secs : 1),
           (unsigned long long)errors, tls_fields(), proxy_fields());
    fflush(stdout);
    /* Wait for the runner to read the server's RSS (line or EOF on stdin). */
    struct pollfd p = {.fd = 0, .events = POLLIN};
    (void)poll(&p, 1, (int)(opt_hold_timeout * 1000));
    for (int i = 0; i < nheld; i++) {
        if (held_ssl[i] != NULL)
            tls_close(held_ssl[i]);
        close(held[i]);
    }
    return nheld == opt_conns ? 0 : 1;
}

/* ---------------------------------------------------------------- main */

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s pingpong|bulk|connrate|hold --port P [--host H] [--conns N]\n"
            "       [--size S] [--concurrency K] [--window B] [--warmup S] [--duration S]\n"
            "       [--hold-timeout S] [--server-pid PID[,PID...]] [--src-ips N]\n"
            "       [--tls [--tls-ca FILE]]   (not with bulk)   [--proxy-v2]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2)
        usage(argv[0]);
    opt_mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--tls")) {
            opt_tls = 1;
            continue;
        }
        if (!strcmp(a, "--proxy-v2")) {
            opt_proxy_v2 = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage(argv[0]);
        const char *v = argv[++i];
        if (!strcmp(a, "--host"))
            opt_host = v;
        else if (!strcmp(a, "--port"))
            opt_port = atoi(v);
        else if (!strcmp(a, "--conns"))
            opt_conns = atoi(v);
        else if (!strcmp(a, "--size"))
            opt_size = atoi(v);
        else if (!strcmp(a, "--concurrency"))
            opt_concurrency = atoi(v);
        else if (!strcmp(a, "--window"))
            opt_window = atol(v);
        else if (!strcmp(a, "--warmup"))
            opt_warmup = atof(v);
        else if (!strcmp(a, "--duration"))
            opt_duration = atof(v);
        else if (!strcmp(a, "--hold-timeout"))
            opt_hold_timeout = atof(v);
        else if (!strcmp(a, "--server-pid")) {
            if (parse_server_pids(v) != 0)
                usage(argv[0]);
        }
        else if (!strcmp(a, "--src-ips"))
            opt_src_ips = atoi(v);
        else if (!strcmp(a, "--tls-ca"))
            opt_tls_ca = v;
        else
            usage(argv[0]);
    }
    if (opt_port <= 0 || opt_port > 65535 || opt_conns < 1 || opt_size < 1 || opt_size > CHUNK ||
        opt_concurrency < 1 || opt_window < 1 || opt_duration <= 0 || opt_warmup < 0 ||
        (opt_tls_ca != NULL && !opt_tls) || (opt_tls && !strcmp(opt_mode, "bulk")))
        usage(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    resolve();
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    if (opt_tls)
        tls_init(!strcmp(opt_mode, "hold"));
    /* Hard stop whatever happens: warmup + duration + generous slack. */
    double limit = opt_warmup + opt_duration + 60.0;
    if (!strcmp(opt_mode, "hold"))
        limit = opt_duration + opt_hold_timeout + 30.0;
    alarm((unsigned)limit);

    if (!strcmp(opt_mode, "pingpong"))
        return run_pingpong();
    if (!strcmp(opt_mode, "bulk"))
        return run_bulk();
    if (!strcmp(opt_mode, "connrate"))
        return run_connrate();
    if (!strcmp(opt_mode, "hold"))
        return run_hold();
    usage(argv[0]);
    return 2;
}
