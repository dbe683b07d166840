/*
 * http_evhttp.c - the "Hello, World!" HTTP server on libevent's evhttp, one
 * thread, for comparison with examples/http_hello.c (bench/http_run.sh).
 *
 * What: usage http_evhttp PORT (127.0.0.1; 0 = any free port; the port is
 * printed). Every request gets 200, Content-Type text/plain and the body
 * "Hello, World!"; evhttp adds Date, Content-Length and the keep-alive
 * handling (HTTP/1.1 by default, HTTP/1.0 with Connection: keep-alive).
 *
 * Why this way: it is the server evhttp's documentation and samples teach
 * (a generic callback and evhttp_send_reply), with the one change a tuned
 * server would make: the reply body is one evbuffer made at start and
 * refilled per request (evhttp_send_reply moves its bytes out), instead of
 * an evbuffer_new/evbuffer_free per request. SIGINT/SIGTERM end the loop
 * through evsignal events and everything is freed.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

static const char body[] = "Hello, World!";

static void hello(struct evhttp_request *req, void *arg)
{
    struct evbuffer *reply = arg;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain");
    evbuffer_add(reply, body, sizeof(body) - 1);
    evhttp_send_reply(req, HTTP_OK, "OK", reply);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopexit(arg, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    struct event_base *base = event_base_new();
    struct evhttp *http = base ? evhttp_new(base) : NULL;
    struct evbuffer *reply = evbuffer_new();
    if (!http || !reply) {
        fprintf(stderr, "http_evhttp: out of memory\n");
        return 1;
    }
    evhttp_set_gencb(http, hello, reply);
    struct evhttp_bound_socket *bound =
        evhttp_bind_socket_with_handle(http, "127.0.0.1", atoi(argv[1]));
    if (!bound) {
        fprintf(stderr, "http_evhttp: cannot listen on 127.0.0.1:%s\n",
                argv[1]);
        return 1;
    }
    struct sockaddr_in sin;
    socklen_t len = sizeof(sin);
    getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin,
                &len);
    struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
    struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    printf("http_evhttp listening on 127.0.0.1:%d\n", ntohs(sin.sin_port));
    fflush(stdout);

    event_base_dispatch(base);

    event_free(sigint);
    event_free(sigterm);
    evhttp_free(http);
    evbuffer_free(reply);
    event_base_free(base);
    return 0;
}
