/*
 * loadgen.c - load client for the libem echo-server benchmarks.
 *
 * What: drives an echo server over TCP in one of two modes and prints one
 * machine-readable RESULT line on stdout (diagnostics go to stderr).
 *   pingpong: N connections, each keeps D messages of S bytes in flight and
 *             verifies every echoed byte; reports messages/s and latency.
 *   churn:    N slots, each repeatedly connects, exchanges one S-byte
 *             message, closes; reports connections/s.
 *
 * Why this way: a single thread on raw level-triggered epoll with
 * nonblocking sockets, so it depends on none of the libraries under test and
 * its own cost per message is a writev, a read and a memcmp.  Everything is
 * allocated before the timed window: the connection table, a ring of D send
 * timestamps per connection and a fixed log-linear latency histogram.
 * Message number m of connection c is the slice of one shared random pattern
 * starting at (7c + m) mod 251, so data that is lost, duplicated or reordered
 * fails the byte compare instead of passing silently.  Every wait is bounded
 * by a phase deadline, so the program always exits.  Server CPU time is read
 * at the window edges: the sum of the threads' /proc/PID/task/TID/schedstat
 * run time (ns) when present, else utime + stime from /proc/PID/stat, whose
 * 10 ms ticks would swamp a one-second window.  schedstat also gives the
 * server's run-queue wait, reported as server_runq_pct: on a shared machine
 * it shows how much of the window other processes took from the server.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define READ_BUF_SIZE (64 * 1024)
#define MAX_EVENTS 1024
#define MAX_IOV 64
#define PATTERN_SPREAD 251
#define MAX_CONNECTING 256
#define SOURCE_ADDR_COUNT 32
#define NS_PER_S 1000000000ull

/* Log-linear histogram: exact below 64 ns, then 32 linear buckets per
 * power of two (about 3% resolution) up to 2^64 ns. */
#define HIST_SUB_BITS 5
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS (2 * HIST_SUB + (64 - HIST_SUB_BITS - 1) * HIST_SUB)

enum mode { MODE_PINGPONG, MODE_CHURN };
enum phase { PHASE_CONNECT, PHASE_WARMUP, PHASE_MEASURE, PHASE_DONE };
enum conn_state { CONN_IDLE, CONN_CONNECTING, CONN_OPEN, CONN_DEAD };

struct options {
    const char *host;
    int port;
    int conns;
    size_t size;
    double duration;
    int pipeline;
    enum mode mode;
    double warmup;
    pid_t server_pid;
};

struct conn {
    int fd;
    int id;
    enum conn_state state;
    bool out_armed;
    uint64_t committed;  /* messages handed to the send path */
    uint64_t sent_bytes; /* bytes accepted by the kernel */
    uint64_t recv_bytes; /* bytes received and verified */
    uint64_t started_ns; /* churn: when this cycle's connect began */
    uint64_t *sent_ns;   /* ring of `pipeline` commit times by message no. */
};

struct histogram {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
};

/* Server CPU time and run-queue wait, seconds; negative when unknown. */
struct cpu_sample {
    double run_s;
    double wait_s;
};

struct loadgen {
    struct options opt;
    struct sockaddr_in server;
    bool server_is_loopback;
    int epfd;
    struct conn *conns;
    uint64_t *sent_ns_pool;
    unsigned char *pattern;
    enum phase phase;
    uint64_t phase_end_ns;
    uint64_t hard_deadline_ns;
    uint64_t window_start_ns;
    uint64_t window_end_ns;
    struct cpu_sample server_start;
    struct cpu_sample server_end;
    int next_to_connect;
    int connecting;
    int resolved;     /* pingpong connect phase: connected or failed */
    int idle_slots;   /* churn: slots waiting to be restarted */
    uint64_t ever_connected;
    bool rotate_source;
    unsigned source_seq;
    uint64_t done;    /* messages (or churn cycles) completed in window */
    uint64_t errors;
    struct histogram hist;
};

static unsigned char read_buf[READ_BUF_SIZE];

/* ------------------------------------------------------------------ time */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint64_t seconds_to_ns(double s)
{
    return s <= 0 ? 0 : (uint64_t)(s * (double)NS_PER_S);
}

/* ------------------------------------------------------------- histogram */

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - HIST_SUB_BITS;
    unsigned group = msb - HIST_SUB_BITS - 1;
    return 2 * HIST_SUB + group * HIST_SUB + (unsigned)((v >> shift) - HIST_SUB);
}

static double hist_bucket_mid(unsigned idx)
{
    if (idx < 2 * HIST_SUB)
        return idx;
    unsigned k = idx - 2 * HIST_SUB;
    unsigned shift = k / HIST_SUB + 1;
    double low = (double)((uint64_t)(HIST_SUB + k % HIST_SUB) << shift);
    return low + (double)(1ull << shift) / 2.0;
}

static void hist_record(struct histogram *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->total++;
}

static double hist_percentile_ns(const struct histogram *h, double q)
{
    if (h->total == 0)
        return 0;
    uint64_t target = (uint64_t)(q * (double)h->total);
    if (target == 0)
        target = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= target)
            return hist_bucket_mid(i);
    }
    return hist_bucket_mid(HIST_BUCKETS - 1);
}

/* --------------------------------------------------------------- options */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: loadgen [--host IP] [--port P] [--conns N] [--size S]\n"
            "               [--duration T] [--pipeline D] [--mode pingpong|churn]\n"
            "               [--warmup T] [--server-pid PID]\n");
}

static void options_defaults(struct options *o)
{
    o->host = "127.0.0.1";
    o->port = 8000;
    o->conns = 1;
    o->size = 64;
    o->duration = 5.0;
    o->pipeline = 1;
    o->mode = MODE_PINGPONG;
    o->warmup = 0.5;
    o->server_pid = 0;
}

static bool options_valid(const struct options *o)
{
    return o->port > 0 && o->port < 65536 && o->conns > 0 && o->size > 0 &&
           o->duration > 0 && o->pipeline > 0 && o->warmup >= 0;
}

static int parse_mode(const char *s, enum mode *mode)
{
    if (strcmp(s, "pingpong") == 0)
        *mode = MODE_PINGPONG;
    else if (strcmp(s, "churn") == 0)
        *mode = MODE_CHURN;
    else
        return -1;
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'h'},
        {"port", required_argument, NULL, 'p'},
        {"conns", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"duration", required_argument, NULL, 'd'},
        {"pipeline", required_argument, NULL, 'D'},
        {"mode", required_argument, NULL, 'm'},
        {"warmup", required_argument, NULL, 'w'},
        {"server-pid", required_argument, NULL, 'P'},
        {"help", no_argument, NULL, '?'},
        {NULL, 0, NULL, 0},
    };
    options_defaults(o);
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': o->host = optarg; break;
        case 'p': o->port = atoi(optarg); break;
        case 'c': o->conns = atoi(optarg); break;
        case 's': o->size = (size_t)strtoull(optarg, NULL, 10); break;
        case 'd': o->duration = strtod(optarg, NULL); break;
        case 'D': o->pipeline = atoi(optarg); break;
        case 'm':
            if (parse_mode(optarg, &o->mode) != 0)
                return -1;
            break;
        case 'w': o->warmup = strtod(optarg, NULL); break;
        case 'P': o->server_pid = (pid_t)atoi(optarg); break;
        default: return -1;
        }
    }
    return options_valid(o) ? 0 : -1;
}

/* ----------------------------------------------------------------- setup */

static void raise_fd_limit(int conns)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        perror("loadgen: setrlimit");
    if (rl.rlim_cur < (rlim_t)conns + 64)
        fprintf(stderr, "loadgen: warning: fd limit %llu too low for %d conns\n",
                (unsigned long long)rl.rlim_cur, conns);
}

static int resolve_server(struct loadgen *lg)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(lg->opt.host, NULL, &hints, &res) != 0 || res == NULL) {
        fprintf(stderr, "loadgen: cannot resolve %s\n", lg->opt.host);
        return -1;
    }
    memcpy(&lg->server, res->ai_addr, sizeof(lg->server));
    freeaddrinfo(res);
    lg->server.sin_port = htons((uint16_t)lg->opt.port);
    lg->server_is_loopback = (ntohl(lg->server.sin_addr.s_addr) >> 24) == 127;
    /* Churn leaves one TIME_WAIT per connection; with a single source the
     * kernel's ephemeral-port search slows as they pile up, so whichever
     * server runs later in a round would be measured against a slower
     * client. Spreading sources from the start keeps every run alike. */
    lg->rotate_source = lg->opt.mode == MODE_CHURN && lg->server_is_loopback;
    return 0;
}

static void fill_pattern(unsigned char *p, size_t len)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)x;
    }
}

static int allocate_state(struct loadgen *lg)
{
    size_t n = (size_t)lg->opt.conns;
    size_t ring = (size_t)lg->opt.pipeline;
    lg->conns = calloc(n, sizeof(*lg->conns));
    lg->sent_ns_pool = calloc(n * ring, sizeof(uint64_t));
    lg->pattern = malloc(lg->opt.size + PATTERN_SPREAD);
    if (!lg->conns || !lg->sent_ns_pool || !lg->pattern)
        return -1;
    fill_pattern(lg->pattern, lg->opt.size + PATTERN_SPREAD);
    for (size_t i = 0; i < n; i++) {
        lg->conns[i].fd = -1;
        lg->conns[i].id = (int)i;
        lg->conns[i].state = CONN_IDLE;
        lg->idle_slots++;
        lg->conns[i].sent_ns = lg->sent_ns_pool + i * ring;
    }
    return 0;
}

static void free_state(struct loadgen *lg)
{
    for (int i = 0; i < lg->opt.conns; i++)
        if (lg->conns[i].fd >= 0)
            close(lg->conns[i].fd);
    free(lg->conns);
    free(lg->sent_ns_pool);
    free(lg->pattern);
    if (lg->epfd >= 0)
        close(lg->epfd);
}

/* ------------------------------------------------------------ server cpu */

/* utime + stime of a process in seconds (10 ms ticks), or -1. */
static double read_stat_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may contain spaces */
    unsigned long long utime, stime;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                     &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* Sums one thread's schedstat line: run time and run-queue wait (ns). */
static int add_thread_schedstat(const char *path, struct cpu_sample *sum)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    unsigned long long run_ns, wait_ns;
    int n = fscanf(f, "%llu %llu", &run_ns, &wait_ns);
    fclose(f);
    if (n != 2)
        return -1;
    sum->run_s += (double)run_ns / 1e9;
    sum->wait_s += (double)wait_ns / 1e9;
    return 0;
}

/* The same CPU time at ns resolution (sum_exec_runtime of every thread),
 * plus the time the threads sat runnable but not running: the share of the
 * window that other processes on the machine took away from the server. */
static struct cpu_sample read_schedstat(pid_t pid)
{
    struct cpu_sample sum = {0, 0}, unknown = {-1, -1};
    char path[96];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *dir = opendir(path);
    if (!dir)
        return unknown;
    int threads = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%.16s/schedstat", (int)pid, de->d_name);
        threads += add_thread_schedstat(path, &sum) == 0;
    }
    closedir(dir);
    return threads > 0 ? sum : unknown;
}

/* Server CPU: precise schedstat when the kernel has it, else the
 * tick-granular utime + stime of /proc/PID/stat (too coarse for short runs). */
static struct cpu_sample read_server_cpu(pid_t pid)
{
    struct cpu_sample s = read_schedstat(pid);
    if (s.run_s < 0)
        s.run_s = read_stat_cpu_s(pid);
    return s;
}

/* ----------------------------------------------------------- connections */

static size_t pattern_offset(const struct conn *c, uint64_t msg)
{
    return (size_t)(((uint64_t)c->id * 7u + msg) % PATTERN_SPREAD);
}

static unsigned char *message_bytes(struct loadgen *lg, const struct conn *c,
                                    uint64_t msg)
{
    return lg->pattern + pattern_offset(c, msg);
}

static bool is_pingpong(const struct loadgen *lg)
{
    return lg->opt.mode == MODE_PINGPONG;
}

static int epoll_set(struct loadgen *lg, struct conn *c, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(lg->epfd, op, c->fd, &ev);
}

static void conn_reset_counters(struct conn *c)
{
    c->committed = 0;
    c->sent_bytes = 0;
    c->recv_bytes = 0;
    c->out_armed = false;
}

/* The only place a state changes, so the per-state counters stay exact. */
static void conn_set_state(struct loadgen *lg, struct conn *c, enum conn_state next)
{
    lg->connecting -= c->state == CONN_CONNECTING;
    lg->idle_slots -= c->state == CONN_IDLE;
    c->state = next;
    lg->connecting += next == CONN_CONNECTING;
    lg->idle_slots += next == CONN_IDLE;
}

static void conn_close(struct loadgen *lg, struct conn *c, enum conn_state next)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    conn_set_state(lg, c, next);
    conn_reset_counters(c);
}

/* Count an error and drop the connection; churn slots come back later. */
static void conn_fail(struct loadgen *lg, struct conn *c)
{
    bool was_connecting = c->state == CONN_CONNECTING;
    lg->errors++;
    conn_close(lg, c, is_pingpong(lg) ? CONN_DEAD : CONN_IDLE);
    if (was_connecting && is_pingpong(lg))
        lg->resolved++;
}

/* Spread churn connections over 127.0.0.x sources so the 4-tuple space
 * (ephemeral ports x sources) outlasts TIME_WAIT. */
static int bind_rotating_source(struct loadgen *lg, int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    struct sockaddr_in src = {.sin_family = AF_INET};
    unsigned host = 1 + (lg->source_seq++ % SOURCE_ADDR_COUNT);
    src.sin_addr.s_addr = htonl((127u << 24) | host);
    return bind(fd, (struct sockaddr *)&src, sizeof(src));
}

static int open_socket(struct loadgen *lg)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (lg->rotate_source && bind_rotating_source(lg, fd) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void conn_start_traffic(struct loadgen *lg, struct conn *c, uint64_t now);

static void conn_on_connected(struct loadgen *lg, struct conn *c, uint64_t now)
{
    conn_set_state(lg, c, CONN_OPEN);
    lg->ever_connected++;
    if (epoll_set(lg, c, EPOLL_CTL_MOD, EPOLLIN) != 0) {
        conn_fail(lg, c);
        return;
    }
    if (lg->phase == PHASE_CONNECT)
        lg->resolved++;
    else
        conn_start_traffic(lg, c, now);
}

/* Start a nonblocking connect; 0 when under way, -1 (errno set) if not. */
static int connect_once(struct loadgen *lg, struct conn *c)
{
    int fd = open_socket(lg);
    if (fd < 0)
        return -1;
    int rc = connect(fd, (struct sockaddr *)&lg->server, sizeof(lg->server));
    if (rc != 0 && errno != EINPROGRESS) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    c->fd = fd;
    if (epoll_set(lg, c, EPOLL_CTL_ADD, EPOLLOUT) != 0) {
        close(fd);
        c->fd = -1;
        return -1;
    }
    conn_set_state(lg, c, CONN_CONNECTING);
    return 0;
}

/* Called on an IDLE slot.  A failed attempt is an error; a churn slot stays
 * IDLE and is retried after a short back-off, a ping-pong slot is dead. */
static void conn_begin_connect(struct loadgen *lg, struct conn *c, uint64_t now)
{
    c->started_ns = now;
    if (connect_once(lg, c) == 0)
        return;
    if (errno == EADDRNOTAVAIL && lg->server_is_loopback && !lg->rotate_source) {
        fprintf(stderr, "loadgen: ephemeral ports exhausted, rotating sources\n");
        lg->rotate_source = true;
        if (connect_once(lg, c) == 0)
            return;
    }
    lg->errors++;
    if (is_pingpong(lg)) {
        conn_set_state(lg, c, CONN_DEAD);
        lg->resolved++;
    }
}

static void conn_finish_connect(struct loadgen *lg, struct conn *c, uint64_t now)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        conn_fail(lg, c);
        return;
    }
    conn_on_connected(lg, c, now);
}

/* ------------------------------------------------------------ data path */

static uint64_t commit_limit(const struct loadgen *lg, const struct conn *c)
{
    if (!is_pingpong(lg))
        return 1;
    return c->recv_bytes / lg->opt.size + (uint64_t)lg->opt.pipeline;
}

static void commit_messages(struct loadgen *lg, struct conn *c, uint64_t now)
{
    uint64_t limit = commit_limit(lg, c);
    while (c->committed < limit) {
        c->sent_ns[c->committed % (uint64_t)lg->opt.pipeline] = now;
        c->committed++;
    }
}

static int build_iov(struct loadgen *lg, struct conn *c, struct iovec *iov)
{
    size_t size = lg->opt.size;
    uint64_t end = c->committed * size;
    uint64_t pos = c->sent_bytes;
    int n = 0;
    while (pos < end && n < MAX_IOV) {
        uint64_t msg = pos / size;
        size_t off = (size_t)(pos % size);
        iov[n].iov_base = message_bytes(lg, c, msg) + off;
        iov[n].iov_len = size - off;
        pos += size - off;
        n++;
    }
    return n;
}

static void conn_arm_output(struct loadgen *lg, struct conn *c, bool want)
{
    if (c->out_armed == want)
        return;
    uint32_t events = EPOLLIN | (want ? EPOLLOUT : 0u);
    if (epoll_set(lg, c, EPOLL_CTL_MOD, events) != 0) {
        conn_fail(lg, c);
        return;
    }
    c->out_armed = want;
}

/* Write committed-but-unsent bytes until done or the socket is full. */
static void conn_flush(struct loadgen *lg, struct conn *c)
{
    struct iovec iov[MAX_IOV];
    while (c->sent_bytes < c->committed * lg->opt.size) {
        int n = build_iov(lg, c, iov);
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_arm_output(lg, c, true);
            return;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            conn_fail(lg, c);
            return;
        }
        c->sent_bytes += (uint64_t)w;
    }
    conn_arm_output(lg, c, false);
}

static void conn_start_traffic(struct loadgen *lg, struct conn *c, uint64_t now)
{
    commit_messages(lg, c, now);
    conn_flush(lg, c);
}

static void record_completion(struct loadgen *lg, uint64_t latency_ns)
{
    if (lg->phase != PHASE_MEASURE)
        return;
    lg->done++;
    hist_record(&lg->hist, latency_ns);
}

static void complete_message(struct loadgen *lg, struct conn *c, uint64_t msg,
                             uint64_t now)
{
    uint64_t start = is_pingpong(lg)
                         ? c->sent_ns[msg % (uint64_t)lg->opt.pipeline]
                         : c->started_ns;
    record_completion(lg, now - start);
}

/* Verify echoed bytes against what must come back next. */
static bool conn_consume(struct loadgen *lg, struct conn *c,
                         const unsigned char *data, size_t len, uint64_t now)
{
    size_t size = lg->opt.size;
    while (len > 0) {
        uint64_t msg = c->recv_bytes / size;
        size_t off = (size_t)(c->recv_bytes % size);
        size_t take = len < size - off ? len : size - off;
        if (c->recv_bytes + take > c->sent_bytes)
            return false; /* more than we sent */
        if (memcmp(data, message_bytes(lg, c, msg) + off, take) != 0)
            return false;
        c->recv_bytes += take;
        data += take;
        len -= take;
        if (off + take == size)
            complete_message(lg, c, msg, now);
    }
    return true;
}

static void churn_restart(struct loadgen *lg, struct conn *c, uint64_t now)
{
    conn_close(lg, c, CONN_IDLE);
    if (lg->phase == PHASE_WARMUP || lg->phase == PHASE_MEASURE)
        conn_begin_connect(lg, c, now);
}

static void conn_on_readable(struct loadgen *lg, struct conn *c)
{
    ssize_t n = read(c->fd, read_buf, sizeof(read_buf));
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) { /* EOF or ECONNRESET: the server dropped us */
        conn_fail(lg, c);
        return;
    }
    uint64_t now = now_ns();
    if (!conn_consume(lg, c, read_buf, (size_t)n, now)) {
        conn_fail(lg, c);
        return;
    }
    if (!is_pingpong(lg) && c->recv_bytes == lg->opt.size) {
        churn_restart(lg, c, now);
        return;
    }
    if (lg->phase == PHASE_WARMUP || lg->phase == PHASE_MEASURE)
        conn_start_traffic(lg, c, now);
}

static void handle_event(struct loadgen *lg, struct conn *c, uint32_t events)
{
    if (c->state == CONN_CONNECTING) {
        conn_finish_connect(lg, c, now_ns());
        return;
    }
    if (c->state != CONN_OPEN)
        return;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        conn_on_readable(lg, c);
    if (c->state == CONN_OPEN && (events & EPOLLOUT))
        conn_flush(lg, c);
}

/* ---------------------------------------------------------------- phases */

static double connect_timeout_s(const struct loadgen *lg)
{
    return 5.0 + lg->opt.conns / 1000.0;
}

static void start_pending_connects(struct loadgen *lg, uint64_t now)
{
    while (lg->next_to_connect < lg->opt.conns && lg->connecting < MAX_CONNECTING) {
        conn_begin_connect(lg, &lg->conns[lg->next_to_connect++], now);
    }
}

static void restart_idle_slots(struct loadgen *lg, uint64_t now)
{
    for (int i = 0; i < lg->opt.conns && lg->idle_slots > 0; i++) {
        if (lg->conns[i].state == CONN_IDLE)
            conn_begin_connect(lg, &lg->conns[i], now);
    }
}

static void abandon_pending_connects(struct loadgen *lg)
{
    for (int i = 0; i < lg->opt.conns; i++)
        if (lg->conns[i].state == CONN_CONNECTING)
            conn_fail(lg, &lg->conns[i]);
}

static void begin_warmup(struct loadgen *lg, uint64_t now)
{
    lg->phase = PHASE_WARMUP;
    lg->phase_end_ns = now + seconds_to_ns(lg->opt.warmup);
    if (is_pingpong(lg)) {
        for (int i = 0; i < lg->opt.conns; i++)
            if (lg->conns[i].state == CONN_OPEN)
                conn_start_traffic(lg, &lg->conns[i], now);
    } else {
        restart_idle_slots(lg, now);
    }
}

static void finish_connect_phase(struct loadgen *lg, uint64_t now)
{
    abandon_pending_connects(lg);
    fprintf(stderr, "loadgen: %llu/%d connections established\n",
            (unsigned long long)lg->ever_connected, lg->opt.conns);
    if (lg->ever_connected == 0) {
        lg->phase = PHASE_DONE;
        return;
    }
    begin_warmup(lg, now);
}

static void begin_measure(struct loadgen *lg, uint64_t now)
{
    lg->phase = PHASE_MEASURE;
    lg->window_start_ns = now;
    lg->phase_end_ns = now + seconds_to_ns(lg->opt.duration);
    if (lg->opt.server_pid > 0)
        lg->server_start = read_server_cpu(lg->opt.server_pid);
}

static void end_measure(struct loadgen *lg, uint64_t now)
{
    if (lg->opt.server_pid > 0)
        lg->server_end = read_server_cpu(lg->opt.server_pid);
    lg->window_end_ns = now;
    lg->phase = PHASE_DONE;
}

static void advance_phase(struct loadgen *lg, uint64_t now)
{
    if (now >= lg->hard_deadline_ns && lg->phase != PHASE_MEASURE) {
        fprintf(stderr, "loadgen: hard deadline reached\n");
        lg->phase = PHASE_DONE;
        return;
    }
    switch (lg->phase) {
    case PHASE_CONNECT:
        start_pending_connects(lg, now);
        if (lg->resolved >= lg->opt.conns || now >= lg->phase_end_ns)
            finish_connect_phase(lg, now);
        break;
    case PHASE_WARMUP:
        if (now >= lg->phase_end_ns && lg->ever_connected == 0)
            lg->phase = PHASE_DONE; /* churn against nothing: give up */
        else if (now >= lg->phase_end_ns)
            begin_measure(lg, now);
        break;
    case PHASE_MEASURE:
        if (now >= lg->phase_end_ns)
            end_measure(lg, now);
        break;
    case PHASE_DONE:
        break;
    }
    if (!is_pingpong(lg) && lg->idle_slots > 0 && lg->phase != PHASE_DONE)
        restart_idle_slots(lg, now);
}

static int wait_timeout_ms(const struct loadgen *lg, uint64_t now)
{
    if (lg->phase == PHASE_CONNECT && lg->resolved >= lg->opt.conns)
        return 0;
    if (!is_pingpong(lg) && lg->idle_slots > 0)
        return 1; /* back off a little before retrying failed slots */
    if (now >= lg->phase_end_ns)
        return 0;
    uint64_t ms = (lg->phase_end_ns - now + 999999) / 1000000;
    return ms > 1000 ? 1000 : (int)ms;
}

static void run_event_loop(struct loadgen *lg)
{
    static struct epoll_event events[MAX_EVENTS];
    while (lg->phase != PHASE_DONE) {
        int n = epoll_wait(lg->epfd, events, MAX_EVENTS,
                           wait_timeout_ms(lg, now_ns()));
        if (n < 0 && errno != EINTR) {
            perror("loadgen: epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++)
            handle_event(lg, events[i].data.ptr, events[i].events);
        advance_phase(lg, now_ns());
    }
}

static void start_run(struct loadgen *lg)
{
    uint64_t now = now_ns();
    double total = connect_timeout_s(lg) + lg->opt.warmup + lg->opt.duration + 2.0;
    lg->hard_deadline_ns = now + seconds_to_ns(total);
    if (is_pingpong(lg)) {
        lg->phase = PHASE_CONNECT;
        lg->phase_end_ns = now + seconds_to_ns(connect_timeout_s(lg));
        start_pending_connects(lg, now);
    } else {
        begin_warmup(lg, now);
    }
}

/* ---------------------------------------------------------------- report */

static bool sample_known(const struct loadgen *lg, double start, double end)
{
    return lg->opt.server_pid > 0 && start >= 0 && end >= start;
}

/* server_cpu_ns_per_<unit>, server_cpu_pct and server_runq_pct: the share
 * of the window the server was runnable but waiting for a CPU (noise). */
static void print_server_cpu(const struct loadgen *lg, const char *unit,
                             double window_s)
{
    const struct cpu_sample *a = &lg->server_start, *b = &lg->server_end;
    if (!sample_known(lg, a->run_s, b->run_s) || lg->done == 0 || window_s <= 0) {
        printf(" server_cpu_ns_per_%s=na server_cpu_pct=na server_runq_pct=na", unit);
        return;
    }
    double cpu = b->run_s - a->run_s;
    printf(" server_cpu_ns_per_%s=%.0f server_cpu_pct=%.1f", unit,
           cpu * 1e9 / (double)lg->done, cpu * 100.0 / window_s);
    if (sample_known(lg, a->wait_s, b->wait_s))
        printf(" server_runq_pct=%.1f", (b->wait_s - a->wait_s) * 100.0 / window_s);
    else
        printf(" server_runq_pct=na");
}

static void print_result(const struct loadgen *lg)
{
    double window_s = lg->window_end_ns > lg->window_start_ns
                          ? (double)(lg->window_end_ns - lg->window_start_ns) / 1e9
                          : 0;
    double rate = window_s > 0 ? (double)lg->done / window_s : 0;
    bool pp = is_pingpong(lg);
    printf("RESULT mode=%s conns=%d size=%zu pipeline=%d duration=%.2f",
           pp ? "pingpong" : "churn", lg->opt.conns, lg->opt.size,
           lg->opt.pipeline, window_s);
    if (pp)
        printf(" msgs=%llu msgs_per_s=%.1f mb_per_s=%.2f",
               (unsigned long long)lg->done, rate,
               rate * (double)lg->opt.size / 1e6);
    else
        printf(" conns_done=%llu conns_per_s=%.1f", (unsigned long long)lg->done,
               rate);
    printf(" p50_us=%.1f p99_us=%.1f errors=%llu",
           hist_percentile_ns(&lg->hist, 0.50) / 1e3,
           hist_percentile_ns(&lg->hist, 0.99) / 1e3,
           (unsigned long long)lg->errors);
    print_server_cpu(lg, pp ? "msg" : "conn", window_s);
    printf("\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    static struct loadgen lg;
    lg.epfd = -1;
    if (parse_options(argc, argv, &lg.opt) != 0) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(lg.opt.conns);
    lg.server_start.run_s = lg.server_start.wait_s = -1;
    lg.server_end = lg.server_start;
    if (resolve_server(&lg) != 0 || allocate_state(&lg) != 0)
        return 2;
    lg.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (lg.epfd < 0) {
        perror("loadgen: epoll_create1");
        return 2;
    }
    start_run(&lg);
    run_event_loop(&lg);
    print_result(&lg);
    int status = lg.ever_connected > 0 ? 0 : 1;
    free_state(&lg);
    return status;
}
