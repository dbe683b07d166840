/*
 * test_close.c - how a connection ends on the wire.
 *
 * close(2) on a socket that still holds unread input makes the kernel send
 * RST instead of FIN, and the peer then sees ECONNRESET instead of an
 * orderly end. A graceful close (em_close_connection(conn, 1)) therefore
 * discards readable input before closing, while an immediate close
 * (em_close_connection(conn, 0)) drops everything, as EventMachine's does.
 * The server here pauses the connection so that the client's extra bytes
 * are surely unread when it closes.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "em.h"
#include "helpers.h"

struct closer {
    int after_writing;
    int unbinds;
    em_conn *conn;
};

static void on_request(em_conn *conn, const char *data, size_t len)
{
    (void)data;
    (void)len;
    struct closer *c = em_conn_arg(conn);
    cr_assert_eq(em_send_data(conn, "OK\n", 3), 0);
    cr_assert_eq(em_pause(conn), 0); /* the client's next bytes stay unread */
    c->conn = conn;
}

static void on_unbind(em_conn *conn, int reason)
{
    struct closer *c = em_conn_arg(conn);
    cr_assert_eq(reason, 0);
    c->unbinds++;
}

static const em_handler closer_handler = {
    .receive_data = on_request,
    .unbind = on_unbind,
};

/* Client: request, then unread junk; the server answers, then closes. */
static int close_with_unread_input(int after_writing)
{
    em_loop *loop = th_loop();
    struct closer c = {.after_writing = after_writing};
    em_server *srv = th_start_server(loop, &closer_handler, &c);
    int fd = th_client_connect(th_listen_port(srv));

    th_send_all(fd, "GO", 2);
    char reply[3];
    cr_assert_eq(th_pump_recv(loop, fd, reply, sizeof reply, 5), 3);
    cr_assert_eq(memcmp(reply, "OK\n", 3), 0);
    cr_assert_not_null(c.conn);

    static char junk[16384];
    th_send_all(fd, junk, sizeof junk);
    th_sleep_ms(20); /* let the junk reach the server's receive queue */
    cr_assert_eq(em_close_connection(c.conn, after_writing), 0);
    int end = th_pump_eof(loop, fd, 5);
    th_run_until_count(loop, &c.unbinds, 1, 5);
    close(fd);
    th_stop_and_free(loop, srv);
    return end;
}

Test(close, graceful_close_with_unread_input_ends_with_fin,
     .timeout = TH_TIMEOUT(10))
{
    cr_assert_eq(close_with_unread_input(1), 0,
                 "peer must see an orderly EOF, not a reset");
}

Test(close, immediate_close_with_unread_input_resets, .timeout = TH_TIMEOUT(10))
{
    cr_assert_eq(close_with_unread_input(0), -ECONNRESET);
}
