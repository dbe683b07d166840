/*
 * udp_loadgen.c - load client for the UDP echo benchmark.
 *
 * What: N UDP sockets, each connect()ed to the echo server and keeping W
 * datagrams of S bytes in flight; every echo that comes back is checked
 * (length and bytes) and replaced by a new datagram. After a warm-up it
 * counts echoes for D seconds and prints one machine-readable RESULT line:
 * echoes per second, and the server's CPU time over the same window, read
 * from /proc/PID/task/TID/schedstat (ns resolution, as bench/loadgen.c),
 * with its run-queue wait as server_runq_pct.
 *
 * Why this way: one thread on raw epoll, recvmmsg and sendmmsg, so that its
 * own cost per datagram is a fraction of the server's and it depends on no
 * library under test. N sockets are N senders, so the server's replies go
 * to different addresses, and W in flight per socket keeps the server's
 * receive queue non-empty (a server that batches its reads can batch).
 * UDP may drop datagrams (a full receive buffer): a socket that has heard
 * nothing for 100 ms counts what it had in flight as lost and refills its
 * window, so a drop never stalls the run; `lost` reports them. Every wait
 * is bounded, so the program always exits.
 *
 * Usage: udp_loadgen -p PORT [-h 127.0.0.1] [-n SOCKETS 8] [-w WINDOW 32]
 *                    [-s SIZE 64] [-d SECONDS 3] [-W WARMUP 0.5] [-P PID]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_SIZE 65507
#define STALL_NS 100000000ull /* 100 ms without an echo: count as lost */

struct sock {
    int fd;
    int inflight;
    uint64_t last_rx_ns;
};

struct cpu {
    double run_s;
    double wait_s;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sum of every thread's schedstat (run ns, run-queue wait ns). */
static struct cpu server_cpu(pid_t pid)
{
    struct cpu sum = {0, 0}, unknown = {-1, -1};
    if (pid <= 0)
        return unknown;
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
        snprintf(path, sizeof(path), "/proc/%d/task/%.16s/schedstat", (int)pid,
                 de->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        unsigned long long run, wait;
        if (fscanf(f, "%llu %llu", &run, &wait) == 2) {
            sum.run_s += (double)run / 1e9;
            sum.wait_s += (double)wait / 1e9;
            threads++;
        }
        fclose(f);
    }
    closedir(dir);
    return threads ? sum : unknown;
}

static unsigned char payload[MAX_SIZE];
static unsigned char rx[BATCH][MAX_SIZE + 1];

/* Sends up to `want` datagrams; returns how many left. */
static int send_some(struct sock *s, int want, size_t size)
{
    struct mmsghdr msgs[BATCH];
    struct iovec iov = {.iov_base = payload, .iov_len = size};
    int sent = 0;
    while (sent < want) {
        int n = want - sent < BATCH ? want - sent : BATCH;
        memset(msgs, 0, sizeof(msgs[0]) * (size_t)n);
        for (int i = 0; i < n; i++) {
            msgs[i].msg_hdr.msg_iov = &iov;
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(s->fd, msgs, (unsigned)n, 0);
        if (r <= 0)
            break; /* EAGAIN or a pending error: topped up later */
        sent += r;
    }
    s->inflight += sent;
    return sent;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0, nsocks = 8, window = 32;
    size_t size = 64;
    double duration = 3.0, warmup = 0.5;
    pid_t pid = 0;
    int opt;
    while ((opt = getopt(argc, argv, "h:p:n:w:s:d:W:P:")) != -1) {
        switch (opt) {
        case 'h':
            host = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 'n':
            nsocks = atoi(optarg);
            break;
        case 'w':
            window = atoi(optarg);
            break;
        case 's':
            size = (size_t)atol(optarg);
            break;
        case 'd':
            duration = atof(optarg);
            break;
        case 'W':
            warmup = atof(optarg);
            break;
        case 'P':
            pid = (pid_t)atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: see the comment at the top\n");
            return 2;
        }
    }
    if (port <= 0 || nsocks <= 0 || window <= 0 || size < 1 ||
        size > MAX_SIZE) {
        fprintf(stderr, "udp_loadgen: bad arguments\n");
        return 2;
    }
    for (size_t i = 0; i < size; i++)
        payload[i] = (unsigned char)(i * 131u + 7u);

    struct sockaddr_in to = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &to.sin_addr) != 1) {
        fprintf(stderr, "udp_loadgen: %s is not an IPv4 literal\n", host);
        return 2;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct sock *socks = calloc((size_t)nsocks, sizeof(*socks));
    uint64_t start = now_ns();
    for (int i = 0; i < nsocks; i++) {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int buf = 4 << 20;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
        if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof(to)) < 0) {
            perror("udp_loadgen: socket/connect");
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        socks[i] = (struct sock){.fd = fd, .last_rx_ns = start};
        send_some(&socks[i], window, size);
    }

    uint64_t measure_from = start + (uint64_t)(warmup * 1e9);
    uint64_t measure_to = measure_from + (uint64_t)(duration * 1e9);
    uint64_t deadline = measure_to + 5000000000ull;
    uint64_t echoes = 0, lost = 0, bad = 0, counted_from = 0;
    struct cpu cpu0 = {-1, -1}, cpu1 = {-1, -1};
    int measuring = 0;
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = rx[i];
        iovs[i].iov_len = sizeof(rx[i]);
    }

    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && t >= measure_from) {
            measuring = 1;
            cpu0 = server_cpu(pid);
            counted_from = echoes;
            measure_from = t;
            measure_to = t + (uint64_t)(duration * 1e9);
        }
        if (measuring && t >= measure_to) {
            cpu1 = server_cpu(pid);
            measure_to = t;
            break;
        }
        if (t >= deadline)
            break;
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, 10);
        for (int e = 0; e < n; e++) {
            struct sock *s = &socks[evs[e].data.u32];
            memset(msgs, 0, sizeof(msgs));
            for (int i = 0; i < BATCH; i++) {
                msgs[i].msg_hdr.msg_iov = &iovs[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            int got = recvmmsg(s->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
            if (got <= 0)
                continue;
            for (int i = 0; i < got; i++)
                if (msgs[i].msg_len != size ||
                    memcmp(rx[i], payload, size) != 0)
                    bad++;
            echoes += (uint64_t)got;
            s->inflight -= got;
            if (s->inflight < 0)
                s->inflight = 0; /* a late echo of one counted lost */
            s->last_rx_ns = now_ns();
        }
        t = now_ns();
        for (int i = 0; i < nsocks; i++) {
            struct sock *s = &socks[i];
            if (s->inflight > 0 && t - s->last_rx_ns > STALL_NS) {
                lost += (uint64_t)s->inflight;
                s->inflight = 0;
                s->last_rx_ns = t;
            }
            if (s->inflight < window)
                send_some(s, window - s->inflight, size);
        }
    }

    double secs = (double)(measure_to - measure_from) / 1e9;
    uint64_t counted = echoes - counted_from;
    double cpu_s =
        cpu0.run_s >= 0 && cpu1.run_s >= 0 ? cpu1.run_s - cpu0.run_s : -1;
    double wait_s =
        cpu0.wait_s >= 0 && cpu1.wait_s >= 0 ? cpu1.wait_s - cpu0.wait_s : -1;
    printf("RESULT sockets=%d window=%d size=%zu seconds=%.3f echoes=%llu "
           "pps=%.0f lost=%llu bad=%llu server_cpu_s=%.4f "
           "server_cpu_pct=%.1f server_ns_per_pkt=%.1f server_runq_pct=%.1f "
           "ok=%d\n",
           nsocks, window, size, secs, (unsigned long long)counted,
           secs > 0 ? (double)counted / secs : 0, (unsigned long long)lost,
           (unsigned long long)bad, cpu_s, cpu_s >= 0 ? 100 * cpu_s / secs : -1,
           cpu_s >= 0 && counted ? cpu_s * 1e9 / (double)counted : -1,
           wait_s >= 0 ? 100 * wait_s / secs : -1, counted > 0 && bad == 0);
    return counted > 0 && bad == 0 ? 0 : 1;
}
