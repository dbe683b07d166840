/*
 * stream_client.c - the load side of the stream benchmarks.
 *
 *   stream_client proxy PORT SINK_PORT BYTES SERVER_PID
 *       listens on SINK_PORT (the proxy's target), connects to PORT, sends
 *       BYTES through the proxy and counts them at the sink.
 *   stream_client file PORT BYTES SERVER_PID
 *       fetches the served file over and over until BYTES arrived.
 *
 * Prints one line: mode bytes seconds server_cpu_seconds cpu_ns_per_mib.
 * Server CPU comes from /proc/PID/schedstat (time on CPU, all threads of
 * a one-thread server), read before and after. Blocking sockets and one
 * extra thread: the client's own cost is not measured.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/schedstat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    unsigned long long ns = 0;
    if (fscanf(f, "%llu", &ns) != 1)
        ns = 0;
    fclose(f);
    return (double)ns / 1e9;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("connect");
        exit(1);
    }
    return fd;
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(fd, 16) < 0) {
        perror("sink listen");
        exit(1);
    }
    return fd;
}

typedef struct sink {
    int listen_fd;
    unsigned long long want;
    unsigned long long got;
} sink;

static void *sink_main(void *arg)
{
    sink *s = arg;
    int fd = accept(s->listen_fd, NULL, NULL);
    static char buf[1 << 20];
    while (s->got < s->want) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        s->got += (unsigned long long)n;
    }
    close(fd);
    return NULL;
}

static void report(const char *mode, unsigned long long bytes, double secs,
                   double cpu)
{
    double mib = (double)bytes / (1024.0 * 1024.0);
    printf("%s bytes=%llu seconds=%.3f server_cpu=%.4f cpu_ns_per_mib=%.0f "
           "mib_per_s=%.1f\n",
           mode, bytes, secs, cpu, cpu * 1e9 / mib, mib / secs);
}

static int run_proxy(int port, int sink_port, unsigned long long bytes,
                     int pid)
{
    sink s = {.listen_fd = listen_on(sink_port), .want = bytes};
    pthread_t t;
    pthread_create(&t, NULL, sink_main, &s);
    double cpu0 = cpu_seconds(pid), t0 = now();
    int fd = connect_to(port);
    static char buf[1 << 20];
    memset(buf, 'x', sizeof(buf));
    unsigned long long sent = 0;
    while (sent < bytes) {
        size_t n = bytes - sent < sizeof(buf) ? (size_t)(bytes - sent)
                                              : sizeof(buf);
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w <= 0) {
            perror("send");
            return 1;
        }
        sent += (unsigned long long)w;
    }
    pthread_join(t, NULL);
    double secs = now() - t0, cpu = cpu_seconds(pid) - cpu0;
    close(fd);
    close(s.listen_fd);
    if (s.got != bytes) {
        fprintf(stderr, "sink got %llu of %llu\n", s.got, bytes);
        return 1;
    }
    report("proxy", bytes, secs, cpu);
    return 0;
}

static int run_file(int port, unsigned long long bytes, int pid)
{
    static char buf[1 << 20];
    unsigned long long got = 0;
    double cpu0 = cpu_seconds(pid), t0 = now();
    while (got < bytes) {
        int fd = connect_to(port);
        for (;;) {
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n <= 0)
                break;
            got += (unsigned long long)n;
        }
        close(fd);
    }
    double secs = now() - t0, cpu = cpu_seconds(pid) - cpu0;
    report("file", got, secs, cpu);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "proxy") == 0)
        return run_proxy(atoi(argv[2]), atoi(argv[3]),
                         strtoull(argv[4], NULL, 10), atoi(argv[5]));
    if (argc == 5 && strcmp(argv[1], "file") == 0)
        return run_file(atoi(argv[2]), strtoull(argv[3], NULL, 10),
                        atoi(argv[4]));
    fprintf(stderr, "usage: %s proxy PORT SINK_PORT BYTES SERVER_PID\n"
                    "       %s file PORT BYTES SERVER_PID\n",
            argv[0], argv[0]);
    return 2;
}
