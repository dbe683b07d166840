/*
 * address.c - host/port and Unix paths into sockaddrs, without blocking.
 *
 * em__addr_literal accepts only numeric hosts: an IPv4 dotted quad, an IPv6
 * address (bare or in brackets, "[::1]"), or NULL/"" for 0.0.0.0. Anything
 * else is -EINVAL and the caller hands the name to the resolver thread.
 *
 * Alternatives considered: getaddrinfo(AI_NUMERICHOST) for every literal is
 * one call for all forms, but it allocates a list per call and glibc's IPv4
 * path uses inet_aton, which also takes "127.1" and "0x7f.1", forms we do not
 * want to treat as addresses. inet_pton is strict and allocation-free, so it
 * handles the common cases; getaddrinfo with AI_NUMERICHOST|AI_NUMERICSERV
 * (which never touches the network) is kept for IPv6 scope ids
 * ("fe80::1%eth0"), where it maps an interface name to its index.
 *
 * em__addr_unix builds a sockaddr_un. A path starting with '@' names a Linux
 * abstract socket: the '@' becomes the leading NUL and the length covers
 * exactly the name (abstract names are not NUL-terminated). A bare "@" is
 * refused: an empty abstract name is almost certainly a mistake.
 *
 * On failure *ss and *len are left untouched.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <net/if.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "internal.h"

/* Longest IPv6 text we accept: address, '%', interface name, NUL. */
#define EM__ADDR_TEXT_MAX (INET6_ADDRSTRLEN + 1 + IF_NAMESIZE)

static void set_v4(struct sockaddr_storage *ss, socklen_t *len,
                   const struct in_addr *ip, int port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;

    memset(ss, 0, sizeof(*ss));
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    sin->sin_addr = *ip;
    *len = sizeof(*sin);
}

static void set_v6(struct sockaddr_storage *ss, socklen_t *len,
                   const struct in6_addr *ip, int port)
{
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)port);
    sin6->sin6_addr = *ip;
    *len = sizeof(*sin6);
}

/* An IPv6 literal with a scope id; getaddrinfo resolves the interface. */
static int parse_scoped_v6(const char *text, int port,
                           struct sockaddr_storage *ss, socklen_t *len)
{
    struct addrinfo hints;
    struct addrinfo *res = NULL;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_INET6;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    if (getaddrinfo(text, "0", &hints, &res) != 0)
        return -EINVAL;
    if (res->ai_family != AF_INET6 || res->ai_addrlen != sizeof(*sin6)) {
        freeaddrinfo(res);
        return -EINVAL;
    }
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, res->ai_addr, sizeof(*sin6));
    freeaddrinfo(res);
    sin6->sin6_port = htons((uint16_t)port);
    *len = sizeof(*sin6);
    return 0;
}

/* text is an IPv6 literal without brackets, maybe with "%scope". */
static int parse_v6(const char *text, int port, struct sockaddr_storage *ss,
                    socklen_t *len)
{
    struct in6_addr ip6;

    if (inet_pton(AF_INET6, text, &ip6) == 1) {
        set_v6(ss, len, &ip6, port);
        return 0;
    }
    if (strchr(text, '%') == NULL)
        return -EINVAL;
    return parse_scoped_v6(text, port, ss, len);
}

/* "[addr]" -> addr, then parse_v6. Only IPv6 goes in brackets. */
static int parse_bracketed(const char *host, int port,
                           struct sockaddr_storage *ss, socklen_t *len)
{
    char text[EM__ADDR_TEXT_MAX];
    size_t n = strlen(host);

    if (n < 3 || host[n - 1] != ']' || n - 2 >= sizeof(text))
        return -EINVAL;
    memcpy(text, host + 1, n - 2);
    text[n - 2] = '\0';
    if (strchr(text, ':') == NULL)
        return -EINVAL;
    return parse_v6(text, port, ss, len);
}

int em__addr_literal(const char *host, int port, struct sockaddr_storage *ss,
                     socklen_t *len)
{
    struct in_addr ip4;

    if (ss == NULL || len == NULL || port < 0 || port > 65535)
        return -EINVAL;
    if (host == NULL || host[0] == '\0') {
        ip4.s_addr = htonl(INADDR_ANY);
        set_v4(ss, len, &ip4, port);
        return 0;
    }
    if (host[0] == '[')
        return parse_bracketed(host, port, ss, len);
    if (inet_pton(AF_INET, host, &ip4) == 1) {
        set_v4(ss, len, &ip4, port);
        return 0;
    }
    if (strchr(host, ':') == NULL)
        return -EINVAL;
    return parse_v6(host, port, ss, len);
}

int em__addr_unix(const char *path, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_un *sun = (struct sockaddr_un *)ss;
    size_t n;

    if (path == NULL || path[0] == '\0' || ss == NULL || len == NULL)
        return -EINVAL;
    n = strlen(path);
    if (path[0] == '@') {
        /* Abstract: NUL then the n - 1 name bytes, no terminator. */
        if (n == 1)
            return -EINVAL;
        if (n > sizeof(sun->sun_path))
            return -ENAMETOOLONG;
        memset(ss, 0, sizeof(*ss));
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path + 1, path + 1, n - 1);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
        return 0;
    }
    /* A filesystem path keeps its terminating NUL inside sun_path. */
    if (n >= sizeof(sun->sun_path))
        return -ENAMETOOLONG;
    memset(ss, 0, sizeof(*ss));
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, path, n + 1);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}
