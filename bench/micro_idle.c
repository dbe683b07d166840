/*
 * micro_idle.c - user-space memory per idle libem connection.
 *
 * What: the process forks a client child, then runs a libem server on
 * 127.0.0.1 (any free port, backlog 4096). The child opens C plain TCP
 * connections (default 10,000; -c) and keeps them open and silent. The
 * server measures its own memory before the first connection and again once
 * all C are accepted and the loop has idled for a moment, and prints
 *   rss     VmRSS delta / C (everything resident, code pages included);
 *   anon    Anonymous delta from /proc/self/smaps_rollup / C: private
 *           user-space memory, the number to look at;
 *   heap    malloc's in-use bytes (mallinfo2 uordblks) delta / C;
 *   struct  sizeof(struct em_conn) (from src/internal.h) and what malloc
 *           really reserved for the first connection (malloc_usable_size,
 *           plus malloc's 8-byte chunk header).
 * Kernel socket buffers are not in any of these: RSS counts user space only.
 *
 * How the client fits C connections: one destination port gives one source
 * address about (ip_local_port_range) ephemeral ports, so the child binds
 * its sockets to 127.0.0.2, 127.0.0.3, ... (all of 127/8 is on lo) with
 * IP_BIND_ADDRESS_NO_PORT, so that connect() picks the port per 4-tuple,
 * at most 10,000 per address.
 * It connects in batches of at most half the accept backlog and waits for
 * the server's running count (sent over a pipe) before the next batch, so
 * the accept queue never overflows into SYN retransmits.
 * Both processes raise RLIMIT_NOFILE (soft and hard) to C + 1000; the
 * kernel limits that would make the run fail or hang (fs.nr_open,
 * fs.file-max, port range, somaxconn, conntrack) are checked up front, and
 * every wait has a deadline, so a failure is a message, not a hang.
 *
 * Usage: micro_idle [-c C] [-a SOURCE_ADDRS] [-t TIMEOUT_S]
 * Prints one line: RESULT name=idle conns=C ... ok=1|0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define FD_SLACK 1000
#define MAX_BATCH 1000
#define SETTLE_MS 300

struct options {
    long conns;
    int source_addrs; /* 0: as many as the port range needs */
    double timeout_s;
};

/* ---- small helpers ---------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Reads a whole /proc/sys value as a long (the first number); -1 if none. */
static long read_sysctl(const char *path, long *second)
{
    FILE *f = fopen(path, "r");
    long first = -1;
    if (f == NULL)
        return -1;
    if (second != NULL) {
        if (fscanf(f, "%ld %ld", &first, second) != 2)
            first = -1;
    } else if (fscanf(f, "%ld", &first) != 1) {
        first = -1;
    }
    fclose(f);
    return first;
}

/* The value in kB of `key` ("VmRSS:") in a /proc file; -1 if missing. */
static long proc_kb(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    char line[256];
    long kb = -1;
    size_t key_len = strlen(key);
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, key, key_len) == 0) {
            kb = strtol(line + key_len, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

struct mem_sample {
    long rss_kb;
    long anon_kb;
    long private_dirty_kb;
    size_t heap_bytes;
};

static struct mem_sample sample_memory(void)
{
    struct mem_sample s;
    s.rss_kb = proc_kb("/proc/self/status", "VmRSS:");
    s.anon_kb = proc_kb("/proc/self/smaps_rollup", "Anonymous:");
    s.private_dirty_kb = proc_kb("/proc/self/smaps_rollup", "Private_Dirty:");
    struct mallinfo2 mi = mallinfo2();
    s.heap_bytes = mi.uordblks + mi.hblkhd;
    return s;
}

static int raise_nofile(long want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        rl.rlim_cur = rl.rlim_max = 0;
    if (rl.rlim_cur >= (rlim_t)want && rl.rlim_max >= (rlim_t)want)
        return 0;
    rlim_t old_max = rl.rlim_max;
    rl.rlim_cur = (rlim_t)want;
    if (rl.rlim_max < (rlim_t)want)
        rl.rlim_max = (rlim_t)want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        fprintf(stderr,
                "micro_idle: setrlimit(RLIMIT_NOFILE, %ld): %s; the hard "
                "limit is %llu and raising it needs CAP_SYS_RESOURCE, so at "
                "most %lld connections fit here (-c)\n",
                want, strerror(errno), (unsigned long long)old_max,
                (long long)old_max - FD_SLACK);
        return -1;
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---- kernel limits ---------------------------------------------------- */

/* Checks what would make C connections fail; fills *per_addr (connections
 * per source address) and *batch. Returns 0 or -1 after printing why. */
static int check_kernel(const struct options *o, long *per_addr, long *batch)
{
    long want_fds = o->conns + FD_SLACK;
    long nr_open = read_sysctl("/proc/sys/fs/nr_open", NULL);
    if (nr_open > 0 && nr_open < want_fds) {
        fprintf(stderr,
                "micro_idle: fs.nr_open is %ld, need %ld descriptors per "
                "process (sysctl -w fs.nr_open=%ld)\n",
                nr_open, want_fds, want_fds);
        return -1;
    }
    long file_max = read_sysctl("/proc/sys/fs/file-max", NULL);
    if (file_max > 0 && file_max < 2 * o->conns + 2 * FD_SLACK) {
        fprintf(stderr,
                "micro_idle: fs.file-max is %ld, need about %ld open files "
                "system-wide\n",
                file_max, 2 * o->conns + 2 * FD_SLACK);
        return -1;
    }
    long hi = 0;
    long lo = read_sysctl("/proc/sys/net/ipv4/ip_local_port_range", &hi);
    if (lo <= 0 || hi < lo) {
        lo = 32768;
        hi = 60999;
    }
    /* Leave a quarter of the range for other programs' ports, and use at
     * most 10,000 per address: connect()'s free-port search slows down a
     * lot as one address's range fills up (measured: 48k -> 4.5k conn/s). */
    long usable = (hi - lo + 1) * 3 / 4;
    *per_addr = usable > 10000 ? 10000 : usable;
    if (*per_addr < 1) {
        fprintf(stderr, "micro_idle: ip_local_port_range %ld..%ld is empty\n",
                lo, hi);
        return -1;
    }
    long needed = (o->conns + *per_addr - 1) / *per_addr;
    if (o->source_addrs > 0) {
        needed = (o->conns + usable - 1) / usable;
        if (o->source_addrs < needed) {
            fprintf(stderr,
                    "micro_idle: %d source addresses x %ld ports (range "
                    "%ld..%ld) cannot hold %ld connections; use -a %ld\n",
                    o->source_addrs, usable, lo, hi, o->conns, needed);
            return -1;
        }
        *per_addr = (o->conns + o->source_addrs - 1) / o->source_addrs;
    } else if (needed > 250) {
        fprintf(stderr,
                "micro_idle: %ld connections need %ld source addresses "
                "(port range %ld..%ld); too many\n",
                o->conns, needed, lo, hi);
        return -1;
    }
    long somaxconn = read_sysctl("/proc/sys/net/core/somaxconn", NULL);
    *batch = MAX_BATCH;
    if (somaxconn > 0 && somaxconn / 2 < *batch)
        *batch = somaxconn / 2 > 0 ? somaxconn / 2 : 1;
    long ct_max = read_sysctl("/proc/sys/net/netfilter/nf_conntrack_max", NULL);
    long ct_count =
        read_sysctl("/proc/sys/net/netfilter/nf_conntrack_count", NULL);
    if (ct_max > 0 && ct_max < o->conns + (ct_count > 0 ? ct_count : 0)) {
        fprintf(stderr,
                "micro_idle: net.netfilter.nf_conntrack_max is %ld (%ld in "
                "use), too small for %ld connections if loopback is "
                "tracked\n",
                ct_max, ct_count, o->conns);
        return -1;
    }
    return 0;
}

/* ---- the client child ------------------------------------------------- */

/* Waits until the server's running accept count reaches `target`.
 * Returns 0, or -1 on timeout or when the server went away. */
static int wait_acked(int fd, uint64_t *acked, uint64_t target, int timeout_ms)
{
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
    while (*acked < target) {
        uint64_t now = now_ns();
        if (now >= deadline)
            return -1;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int rc = poll(&pfd, 1, (int)((deadline - now) / 1000000u) + 1);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            return -1;
        uint64_t values[64];
        ssize_t n = read(fd, values, sizeof(values));
        if (n <= 0)
            return -1;
        for (size_t i = 0; i < (size_t)n / sizeof(values[0]); i++)
            if (values[i] > *acked)
                *acked = values[i];
    }
    return 0;
}

/* Sends one line to the server ("OK ..." or "ERR ..."). */
__attribute__((format(printf, 2, 3)))
static void child_report(int fd, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (len > 0)
        (void)write_all(fd, msg, (size_t)len < sizeof(msg) ? (size_t)len
                                                           : sizeof(msg) - 1);
}

/* The client: reads the port, connects C sockets in acked batches, reports
 * "OK" or "ERR ...", then holds the sockets until the server closes its end
 * of the pipe. Never returns. */
static void run_client(const struct options *o, long per_addr, long batch,
                       int from_server, int to_server)
{
    int port = 0;
    uint64_t acked = 0;
    if (read(from_server, &port, sizeof(port)) != sizeof(port))
        _exit(1);
    int *fds = malloc((size_t)o->conns * sizeof(*fds));
    if (fds == NULL) {
        child_report(to_server, "ERR client: out of memory\n");
        _exit(1);
    }
    struct sockaddr_in dst = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port)};
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 5};
    int one = 1;

    for (long i = 0; i < o->conns; i++) {
        long addr_index = i / per_addr;
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + (uint32_t)addr_index);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            child_report(to_server, "ERR client: socket #%ld: %s\n", i,
                         strerror(errno));
            _exit(1);
        }
        /* a blocking connect bounded by SO_SNDTIMEO cannot hang */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0 ||
            connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0) {
            char why[160];
            snprintf(why, sizeof(why), "%s (source 127.0.0.%ld)",
                     errno == EINPROGRESS ? "connect timed out"
                                          : strerror(errno),
                     addr_index + 2);
            child_report(to_server, "ERR client: connection #%ld of %ld: %s\n",
                         i, o->conns, why);
            _exit(1);
        }
        fds[i] = fd;
        if ((i + 1) % batch == 0 || i + 1 == o->conns) {
            if (wait_acked(from_server, &acked, (uint64_t)(i + 1), 10000) < 0) {
                child_report(to_server,
                             "ERR client: server accepted only %ld of %ld "
                             "within 10 s\n",
                             (long)acked, i + 1);
                _exit(1);
            }
        }
    }
    child_report(to_server, "OK %ld %ld\n", o->conns, (long)acked);
    /* Hold every connection, silent, until the server hangs up the pipe. */
    for (;;) {
        uint64_t value;
        ssize_t n = read(from_server, &value, sizeof(value));
        if (n == 0 || (n < 0 && errno != EINTR))
            break;
    }
    _exit(0);
}

/* ---- the server ------------------------------------------------------- */

struct server_state {
    const struct options *opt;
    long batch;
    int to_client;   /* running accept count goes here */
    int from_client; /* "OK ..." / "ERR ..." comes from here (nonblocking) */
    pid_t child;
    uint64_t accepted;
    size_t first_conn_usable;
    uint64_t t_first_accept;
    uint64_t t_last_accept;
    uint64_t deadline_ns;
    uint64_t settle_until; /* 0 until the client said OK */
    int client_ok;
    int failed;
    char client_msg[256];
    size_t client_msg_len;
    struct mem_sample after;
};

static struct server_state g;

static void on_post_init(em_conn *conn, void *arg)
{
    (void)arg;
    if (g.accepted == 0) {
        g.first_conn_usable = malloc_usable_size(conn);
        g.t_first_accept = now_ns();
    }
    g.accepted++;
    if (g.accepted % (uint64_t)g.batch == 0 ||
        g.accepted == (uint64_t)g.opt->conns) {
        g.t_last_accept = now_ns();
        if (write_all(g.to_client, &g.accepted, sizeof(g.accepted)) < 0)
            g.failed = 1;
    }
}

static const em_handler idle_handler = {.post_init = on_post_init};

static void drain_client_messages(void)
{
    for (;;) {
        size_t room = sizeof(g.client_msg) - 1 - g.client_msg_len;
        if (room == 0)
            break;
        ssize_t n = read(g.from_client, g.client_msg + g.client_msg_len, room);
        if (n <= 0)
            break;
        g.client_msg_len += (size_t)n;
    }
    g.client_msg[g.client_msg_len] = '\0';
}

/* Every 50 ms: client messages, child death, deadline, settle, measure. */
static void on_check(em_loop *loop, void *arg)
{
    (void)arg;
    uint64_t now = now_ns();
    drain_client_messages();
    if (strncmp(g.client_msg, "ERR", 3) == 0 && strchr(g.client_msg, '\n')) {
        fprintf(stderr, "micro_idle: %s", g.client_msg + 4);
        g.failed = 1;
    } else if (strncmp(g.client_msg, "OK", 2) == 0 && !g.client_ok) {
        g.client_ok = 1;
        g.settle_until = now + (uint64_t)SETTLE_MS * 1000000u;
    } else if (!g.client_ok && waitpid(g.child, NULL, WNOHANG) == g.child) {
        fprintf(stderr, "micro_idle: client exited early (%s)\n",
                g.client_msg_len ? g.client_msg : "no message");
        g.child = -1;
        g.failed = 1;
    } else if (now > g.deadline_ns) {
        fprintf(stderr,
                "micro_idle: timed out with %llu of %ld connections "
                "accepted\n",
                (unsigned long long)g.accepted, g.opt->conns);
        g.failed = 1;
    }
    if (g.failed) {
        em_stop(loop);
        return;
    }
    if (g.client_ok && now >= g.settle_until) {
        if (g.accepted != (uint64_t)g.opt->conns ||
            em_connection_count(loop) != (size_t)g.opt->conns) {
            fprintf(stderr, "micro_idle: %zu live connections, expected %ld\n",
                    em_connection_count(loop), g.opt->conns);
            g.failed = 1;
        }
        g.after = sample_memory();
        em_stop(loop);
        return;
    }
    em_add_timer(loop, 0.05, on_check, NULL, NULL);
}

static void usage(void)
{
    fprintf(stderr, "usage: micro_idle [-c CONNS] [-a SOURCE_ADDRS] "
                    "[-t TIMEOUT_S]\n");
}

int main(int argc, char **argv)
{
    struct options o = {.conns = 10000, .source_addrs = 0, .timeout_s = 0};
    int opt;
    while ((opt = getopt(argc, argv, "c:a:t:h")) != -1) {
        switch (opt) {
        case 'c': o.conns = strtol(optarg, NULL, 10); break;
        case 'a': o.source_addrs = atoi(optarg); break;
        case 't': o.timeout_s = strtod(optarg, NULL); break;
        default: usage(); return 2;
        }
    }
    if (o.conns <= 0 || o.source_addrs < 0 || o.source_addrs > 250) {
        usage();
        return 2;
    }
    if (o.timeout_s <= 0)
        o.timeout_s = 30.0 + (double)o.conns / 2000.0;

    long per_addr, batch;
    if (check_kernel(&o, &per_addr, &batch) < 0)
        return 1;
    if (raise_nofile(o.conns + FD_SLACK) < 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);

    int down[2], up[2]; /* down: server -> client, up: client -> server */
    if (pipe2(down, O_CLOEXEC) < 0 || pipe2(up, O_CLOEXEC) < 0) {
        perror("micro_idle: pipe2");
        return 1;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("micro_idle: fork");
        return 1;
    }
    if (child == 0) {
        close(down[1]);
        close(up[0]);
        if (raise_nofile(o.conns + FD_SLACK) < 0)
            _exit(1);
        run_client(&o, per_addr, batch, down[0], up[1]);
    }
    close(down[0]);
    close(up[1]);
    fcntl(up[0], F_SETFL, O_NONBLOCK);

    g.opt = &o;
    g.batch = batch;
    g.to_client = down[1];
    g.from_client = up[0];
    g.child = child;

    em_loop *loop;
    em_server *server;
    int err = em_loop_new(&loop);
    em_server_opts sopts = {.backlog = 4096};
    if (err == 0)
        err = em_start_server(loop, "127.0.0.1", 0, &idle_handler, NULL,
                              &sopts, &server);
    if (err < 0) {
        fprintf(stderr, "micro_idle: server: %s\n", em_strerror(err));
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return 1;
    }
    int port = em_server_port(server);
    em_run_once(loop, 0); /* one idle turn before the baseline */
    struct mem_sample before = sample_memory();

    g.deadline_ns = now_ns() + (uint64_t)(o.timeout_s * 1e9);
    em_add_timer(loop, 0.05, on_check, NULL, NULL);
    if (write_all(g.to_client, &port, sizeof(port)) < 0) {
        fprintf(stderr, "micro_idle: client gone before start\n");
        return 1;
    }
    em_run(loop); /* returns after on_check stops it; unbinds everything */

    /* Let the child go: it exits when the pipe closes. */
    close(g.to_client);
    if (g.child > 0) {
        if (g.failed)
            kill(g.child, SIGKILL);
        waitpid(g.child, NULL, 0);
    }
    em_loop_free(loop);
    if (g.failed)
        return 1;

    double c = (double)o.conns;
    struct mem_sample *a = &g.after;
    double accept_s = (double)(g.t_last_accept - g.t_first_accept) / 1e9;
    size_t conn_chunk = (g.first_conn_usable + 8 + 15) & ~(size_t)15;
    printf("RESULT name=idle conns=%ld source_addrs=%ld port=%d"
           " rss_bytes_per_conn=%.1f anon_bytes_per_conn=%.1f"
           " private_dirty_bytes_per_conn=%.1f heap_bytes_per_conn=%.1f"
           " sizeof_em_conn=%zu conn_usable=%zu conn_malloc_chunk=%zu"
           " rss_before_kb=%ld rss_after_kb=%ld accept_per_s=%.0f ok=1\n",
           o.conns, (o.conns + per_addr - 1) / per_addr, port,
           (double)(a->rss_kb - before.rss_kb) * 1024.0 / c,
           (double)(a->anon_kb - before.anon_kb) * 1024.0 / c,
           (double)(a->private_dirty_kb - before.private_dirty_kb) * 1024.0 / c,
           ((double)a->heap_bytes - (double)before.heap_bytes) / c,
           sizeof(struct em_conn), g.first_conn_usable, conn_chunk,
           before.rss_kb, a->rss_kb,
           accept_s > 0 ? (c - 1) / accept_s : 0.0);
    return 0;
}
