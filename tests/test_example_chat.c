/*
 * test_example_chat.c - examples/chat_server run as a child over real TCP
 * sockets: nicknames (refused, taken, accepted), broadcast to the others
 * only, /who, /quit (goodbye, then close, later input dropped), join and
 * leave notices; lines split across writes at every offset, byte by byte
 * and many per write; a reader that never reads is dropped while the room
 * goes on; an overlong line closes its sender; the nickname deadline fires
 * and is cancelled in time; --tls with a libem TLS client; SIGTERM with
 * users connected exits 0; the server keeps no descriptor for users that
 * left.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "example_child.h"

#define WELCOME "* welcome to the chat; your nickname?"

/* A connected client with its line reader. */
typedef struct user {
    int fd;
    ex_reader r;
} user;

static void send_str(const user *u, const char *s)
{
    th_send_all(u->fd, s, strlen(s));
}

static void expect(user *u, const char *want)
{
    ex_expect_line(&u->r, want);
}

static void connect_user(user *u, int port)
{
    u->fd = th_client_connect(port);
    ex_reader_init(&u->r, u->fd);
    expect(u, WELCOME);
}

/* Connects and joins as nick; `hello` is the greeting expected. */
static void join(user *u, int port, const char *nick, const char *hello)
{
    connect_user(u, port);
    char line[64];
    snprintf(line, sizeof(line), "%s\n", nick);
    send_str(u, line);
    expect(u, hello);
}

static void nodelay(int fd)
{
    int one = 1;
    cr_assert_eq(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)),
                 0);
}

static void start_chat(ex_child *c, const char *const args[])
{
    ex_start(c, "chat_server", args, 0);
    ex_read_port(c);
}

Test(example_chat, nicknames_broadcast_who_and_quit, .timeout = TH_TIMEOUT(20))
{
    ex_child srv;
    start_chat(&srv, (const char *[]){"0", NULL});
    int fds_idle = ex_count_child_fds(&srv);

    user a, b;
    connect_user(&a, srv.port);
    send_str(&a, "bad nick!\n");
    expect(&a, "* a nickname is 1 to 16 letters, digits, '-' or '_'; your "
               "nickname?");
    send_str(&a, "\n");
    expect(&a, "* a nickname is 1 to 16 letters, digits, '-' or '_'; your "
               "nickname?");
    send_str(&a, "abcdefghijklmnopq\n"); /* 17 */
    expect(&a, "* a nickname is 1 to 16 letters, digits, '-' or '_'; your "
               "nickname?");
    send_str(&a, "alice\n");
    expect(&a, "* hello alice; here: nobody else");

    connect_user(&b, srv.port);
    send_str(&b, "alice\n");
    expect(&b, "* that nickname is taken; your nickname?");
    send_str(&b, "bob\r\n"); /* telnet's line end */
    expect(&b, "* hello bob; here: alice");
    expect(&a, "* bob joined");

    send_str(&a, "/who\n");
    expect(&a, "* here: bob");
    send_str(&a, "hi bob\n\n"); /* the empty line is ignored */
    expect(&b, "alice: hi bob");
    send_str(&b, "hi alice, with a \tTAB\r\n");
    /* a got nothing of its own: the next line it reads is bob's. */
    expect(&a, "bob: hi alice, with a \tTAB");

    /* The goodbye is written before the close; what follows /quit in the
     * same write is dropped, not broadcast. */
    send_str(&b, "/quit\nnever seen\n");
    expect(&b, "* bye bob");
    ex_expect_eof(&b.r, 0);
    expect(&a, "* bob left");
    close(b.fd);

    send_str(&a, "/who\n");
    expect(&a, "* here: nobody else");
    send_str(&a, "/quit\n");
    expect(&a, "* bye alice");
    ex_expect_eof(&a.r, 0);
    close(a.fd);

    /* Every user's descriptor is gone once the server has seen them go
     * (the unbind of a closed connection may take a turn: poll). */
    double deadline = th_now() + TH_TIMEOUT(5.0);
    while (ex_count_child_fds(&srv) != fds_idle && th_now() < deadline)
        th_sleep_ms(10);
    cr_assert_eq(ex_count_child_fds(&srv), fds_idle);
    ex_stop(&srv);
}

/* Sends text in two writes split at `at`, with a pause between so that
 * the server most likely reads them as two chunks (the assertions hold
 * either way; the pause only makes the split real). */
static void send_split(const user *u, const char *text, size_t at)
{
    size_t len = strlen(text);
    if (at > 0)
        th_send_all(u->fd, text, at);
    th_sleep_ms(2);
    if (at < len)
        th_send_all(u->fd, text + at, len - at);
}

Test(example_chat, lines_split_anywhere_and_many_per_write,
     .timeout = TH_TIMEOUT(30))
{
    ex_child srv;
    start_chat(&srv, (const char *[]){"0", NULL});
    user a, b;
    join(&a, srv.port, "alice", "* hello alice; here: nobody else");
    join(&b, srv.port, "bob", "* hello bob; here: alice");
    expect(&a, "* bob joined");
    nodelay(a.fd);

    /* Two lines, the split at every offset (the delimiter included). */
    const char *two = "first line\r\nsecond, longer line\n";
    for (size_t at = 0; at <= strlen(two); at++) {
        send_split(&a, two, at);
        expect(&b, "alice: first line");
        expect(&b, "alice: second, longer line");
    }

    /* Byte by byte. */
    const char *bytes = "one\ntwo\r\nthree\n";
    for (size_t i = 0; bytes[i]; i++) {
        th_send_all(a.fd, bytes + i, 1);
        th_sleep_ms(1);
    }
    expect(&b, "alice: one");
    expect(&b, "alice: two");
    expect(&b, "alice: three");

    /* Many lines in one write, up to the longest one allowed (1024). */
    size_t cap = 1 << 20, len = 0;
    char *burst = malloc(cap);
    int lines = 300;
    for (int i = 0; i < lines; i++)
        len += (size_t)snprintf(burst + len, cap - len, "line %d\n", i);
    memset(burst + len, 'x', 1024);
    len += 1024;
    burst[len++] = '\n';
    th_send_all(a.fd, burst, len);
    char want[64];
    for (int i = 0; i < lines; i++) {
        snprintf(want, sizeof(want), "alice: line %d", i);
        expect(&b, want);
    }
    char *longest = malloc(2048);
    memcpy(longest, "alice: ", 7);
    memset(longest + 7, 'x', 1024);
    longest[7 + 1024] = '\0';
    expect(&b, longest);
    free(longest);
    free(burst);

    /* SIGTERM with both connected: exit 0, and each sees the close. */
    ex_stop(&srv);
    ex_expect_eof(&a.r, 1);
    ex_expect_eof(&b.r, 1);
    close(a.fd);
    close(b.fd);
}

/* A client that reads nothing, with a small receive buffer so that the
 * server's socket fills early; the room goes on without it. */
Test(example_chat, slow_reader_is_dropped, .timeout = TH_TIMEOUT(60))
{
    ex_child srv;
    start_chat(&srv, (const char *[]){"0", NULL});

    user slow;
    slow.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(slow.fd, 0);
    int small = 4096;
    cr_assert_eq(
        setsockopt(slow.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)srv.port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(slow.fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    struct timeval tv = {.tv_sec = TH_TIMEOUT(5)};
    setsockopt(slow.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ex_reader_init(&slow.r, slow.fd);
    expect(&slow, WELCOME);
    send_str(&slow, "slow\n");
    expect(&slow, "* hello slow; here: nobody else");

    user fast, other;
    join(&fast, srv.port, "fast", "* hello fast; here: slow");
    join(&other, srv.port, "other", "* hello other; here: slow, fast");
    expect(&fast, "* other joined");

    /* Flood: 1000-byte lines, 64 per write, until the notice comes. The
     * server's queue for slow is bounded (64 KiB) but the kernel buffers
     * in front of it may take a few MiB first (3 MB here; the socket send
     * buffer grows to tcp_wmem's 4 MiB at most). other reads along. */
    char line[1001];
    memset(line, 'z', 1000);
    line[1000] = '\n';
    char *batch = malloc(64 * sizeof(line));
    for (int i = 0; i < 64; i++)
        memcpy(batch + i * sizeof(line), line, sizeof(line));
    char got[4096];
    size_t sent = 0, limit = (size_t)32 << 20;
    int dropped = 0;
    char other_line[1024 + 16];
    size_t other_lines = 0;
    while (!dropped) {
        cr_assert_lt(sent, limit, "slow was never dropped after %zu bytes",
                     sent);
        th_send_all(fast.fd, batch, 64 * sizeof(line));
        sent += 64 * sizeof(line);
        /* fast gets nothing but notices; look without blocking. */
        struct pollfd p = {.fd = fast.fd, .events = POLLIN};
        if (poll(&p, 1, 0) == 1) {
            int n = ex_next_line(&fast.r, got, sizeof(got), 5.0);
            cr_assert_geq(n, 0);
            cr_assert_str_eq(got, "* slow was dropped: too slow");
            dropped = 1;
        }
        /* other keeps up: reads everything fast sent so far. */
        while (other_lines < sent / sizeof(line)) {
            int n =
                ex_next_line(&other.r, other_line, sizeof(other_line), 10.0);
            cr_assert_geq(n, 0);
            if (strcmp(other_line, "* slow was dropped: too slow") == 0)
                continue;
            cr_assert_eq(n, 1000 + 6, "other got: %.40s", other_line);
            other_lines++;
        }
    }
    free(batch);

    /* The room goes on without slow. */
    send_str(&fast, "/who\n");
    expect(&fast, "* here: other");
    send_str(&fast, "still here\n");
    for (;;) { /* skip other's notice, which may come before */
        int n = ex_next_line(&other.r, other_line, sizeof(other_line), 5.0);
        cr_assert_geq(n, 0);
        if (strcmp(other_line, "fast: still here") == 0)
            break;
        cr_assert_str_eq(other_line, "* slow was dropped: too slow");
    }

    /* slow finds its connection closed once it reads what the kernel
     * still held: EOF or a reset, and no more than it was sent. */
    size_t slow_bytes = 0;
    for (;;) {
        char buf[65536];
        ssize_t n = recv(slow.fd, buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            break;
        cr_assert_gt(n, 0, "recv: %s", strerror(errno));
        slow_bytes += (size_t)n;
    }
    /* "fast: " makes each 1001-byte line 1007 bytes. */
    cr_assert_leq(slow_bytes, sent / 1001 * 1007 + 4096);
    close(slow.fd);
    close(fast.fd);
    close(other.fd);
    ex_stop(&srv);
}

Test(example_chat, overlong_line_closes_its_sender, .timeout = TH_TIMEOUT(20))
{
    ex_child srv;
    start_chat(&srv, (const char *[]){"0", NULL});
    user a, c, d;
    join(&a, srv.port, "alice", "* hello alice; here: nobody else");
    join(&c, srv.port, "carol", "* hello carol; here: alice");
    expect(&a, "* carol joined");

    /* 1025 bytes with no delimiter yet: one more than MAX_LINE. */
    char big[1025];
    memset(big, 'y', sizeof(big));
    th_send_all(c.fd, big, sizeof(big));
    ex_expect_eof(&c.r, 1);
    expect(&a, "* carol was dropped: line too long");
    close(c.fd);

    /* Before joining: closed too, and nobody is told. */
    connect_user(&d, srv.port);
    th_send_all(d.fd, big, sizeof(big));
    ex_expect_eof(&d.r, 1);
    close(d.fd);
    send_str(&a, "/who\n");
    expect(&a, "* here: nobody else"); /* not a notice about d */
    close(a.fd);
    ex_stop(&srv);
}

Test(example_chat, nickname_deadline, .timeout = TH_TIMEOUT(20))
{
    ex_child srv;
    start_chat(&srv, (const char *[]){"--nick-timeout", "0.3", "0", NULL});

    /* Connects and leaves before its deadline: the timer is cancelled in
     * unbind (else it would fire on a freed connection: ASan and valgrind
     * runs trace this child too). */
    for (int i = 0; i < 5; i++) {
        user gone;
        connect_user(&gone, srv.port);
        close(gone.fd);
    }

    double t0 = th_now();
    user late, quick;
    connect_user(&late, srv.port);
    join(&quick, srv.port, "quick", "* hello quick; here: nobody else");
    expect(&late, "* too slow picking a nickname");
    ex_expect_eof(&late.r, 0);
    cr_assert_geq(th_now() - t0, 0.29);
    close(late.fd);

    /* quick joined in time: still in the room well after the deadline. */
    th_sleep_ms(400);
    send_str(&quick, "/who\n");
    expect(&quick, "* here: nobody else");
    close(quick.fd);
    ex_stop(&srv);
}

/* ---- --tls: a libem client with line framing -------------------------- */

typedef struct tls_user {
    const char *nick;
    em_conn *conn;
    int handshakes;
    int unbinds;
    int reason;
    int nlines;
    char lines[16][128];
} tls_user;

static void tls_post_init(em_conn *conn, void *arg)
{
    tls_user *u = arg;
    u->conn = conn;
    em_tls_options opts = {.verify_peer = EM_TLS_VERIFY_NONE};
    cr_assert_eq(em_start_tls(conn, &opts), 0);
    cr_assert_eq(em_use_lines(conn, NULL), 0);
}

static void tls_handshake(em_conn *conn)
{
    tls_user *u = em_conn_arg(conn);
    u->handshakes++;
}

static void tls_line(em_conn *conn, const char *line, size_t len)
{
    tls_user *u = em_conn_arg(conn);
    cr_assert_lt(u->nlines, 16);
    cr_assert_lt(len, sizeof(u->lines[0]));
    memcpy(u->lines[u->nlines], line, len);
    u->lines[u->nlines][len] = '\0';
    u->nlines++;
}

static void tls_unbind(em_conn *conn, int reason)
{
    tls_user *u = em_conn_arg(conn);
    u->conn = NULL;
    u->reason = reason;
    u->unbinds++;
}

static const em_handler tls_handler = {
    .post_init = tls_post_init,
    .ssl_handshake_completed = tls_handshake,
    .receive_line = tls_line,
    .unbind = tls_unbind,
};

static void tls_say(tls_user *u, const char *text)
{
    cr_assert_eq(em_send_data(u->conn, text, strlen(text)), 0);
}

static void tls_expect(em_loop *loop, tls_user *u, int n, const char *want)
{
    th_run_until_count(loop, &u->nlines, n, 10.0);
    cr_assert_str_eq(u->lines[n - 1], want);
}

Test(example_chat, tls_room, .timeout = TH_TIMEOUT(30))
{
    ex_child srv;
    ex_start(&srv, "chat_server", (const char *[]){"--tls", "0", NULL}, 0);
    ex_read_port(&srv);
    int fds = th_count_fds();

    em_loop *loop = th_loop();
    tls_user a = {.nick = "alice"}, b = {.nick = "bob"};
    cr_assert_eq(
        em_connect(loop, "127.0.0.1", srv.port, &tls_handler, &a, NULL), 0);
    tls_expect(loop, &a, 1, WELCOME);
    cr_assert_eq(a.handshakes, 1);
    cr_assert_not_null(em_tls_protocol(a.conn));
    tls_say(&a, "alice\n");
    tls_expect(loop, &a, 2, "* hello alice; here: nobody else");

    cr_assert_eq(
        em_connect(loop, "127.0.0.1", srv.port, &tls_handler, &b, NULL), 0);
    tls_expect(loop, &b, 1, WELCOME);
    tls_say(&b, "bob\n");
    tls_expect(loop, &b, 2, "* hello bob; here: alice");
    tls_expect(loop, &a, 3, "* bob joined");

    tls_say(&a, "secret over TLS\n");
    tls_expect(loop, &b, 3, "alice: secret over TLS");
    tls_say(&b, "/quit\n");
    tls_expect(loop, &b, 4, "* bye bob");
    th_run_until(loop, &b.unbinds, 10.0);
    cr_assert_eq(b.reason, 0, "%s", em_strerror(b.reason));
    tls_expect(loop, &a, 4, "* bob left");
    tls_say(&a, "/quit\n");
    tls_expect(loop, &a, 5, "* bye alice");
    th_run_until(loop, &a.unbinds, 10.0);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), fds, "the test's client leaked descriptors");
    ex_stop(&srv);
}
