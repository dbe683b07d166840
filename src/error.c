/*
 * error.c - em_strerror and em_err_name: text for the negative errnos that
 * every em_ function returns.
 *
 * Design:
 *   - Both functions return pointers to static, immutable strings, so they
 *     are thread-safe and the result never needs freeing. That rules out
 *     strerror() (may format unknown values into a shared buffer) and
 *     strerror_r() (needs a caller buffer).
 *   - glibc >= 2.32 has exactly what is needed: strerrordesc_np() and
 *     strerrorname_np() return the static description and name of an errno
 *     and NULL for a value they do not know. Those are used when present,
 *     which makes every errno the kernel can return covered.
 *   - Elsewhere (older glibc, musl) a table of the errnos a network library
 *     meets by name and description stands in; values outside it get the
 *     fallbacks below. Define EM_ERROR_PORTABLE to force that path.
 *   - 0 is not a failure: "success" and "OK", so that logging an unbind
 *     reason of 0 reads naturally. Positive values and INT_MIN (whose
 *     negation overflows) are not errors in libem's convention, and neither
 *     is a negative value no errno has: "unknown error" and "UNKNOWN".
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>

#include "em.h"

#if !defined(EM_ERROR_PORTABLE) && defined(__GLIBC__) &&                       \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
#define EM__HAVE_ERRNO_NP 1
#else
#define EM__HAVE_ERRNO_NP 0
#endif

static const char em__unknown_desc[] = "unknown error";
static const char em__unknown_name[] = "UNKNOWN";

/* The positive errno behind a libem error code, or 0 when err is not one. */
static int em__errno_of(int err)
{
    if (err >= 0 || err == INT_MIN)
        return 0;
    return -err;
}

#if !EM__HAVE_ERRNO_NP

typedef struct em__errno_entry {
    int code;
    const char *name;
    const char *desc;
} em__errno_entry;

/* Where two names share a value (EWOULDBLOCK/EAGAIN, ENOTSUP/EOPNOTSUPP on
 * Linux) the first entry wins, matching glibc's choice. */
static const em__errno_entry em__errno_table[] = {
    {EPERM, "EPERM", "Operation not permitted"},
    {ENOENT, "ENOENT", "No such file or directory"},
    {ESRCH, "ESRCH", "No such process"},
    {EINTR, "EINTR", "Interrupted system call"},
    {EIO, "EIO", "Input/output error"},
    {EBADF, "EBADF", "Bad file descriptor"},
    {ECHILD, "ECHILD", "No child processes"},
    {EAGAIN, "EAGAIN", "Resource temporarily unavailable"},
    {ENOMEM, "ENOMEM", "Cannot allocate memory"},
    {EACCES, "EACCES", "Permission denied"},
    {EFAULT, "EFAULT", "Bad address"},
    {EBUSY, "EBUSY", "Device or resource busy"},
    {EEXIST, "EEXIST", "File exists"},
    {ENOTDIR, "ENOTDIR", "Not a directory"},
    {EISDIR, "EISDIR", "Is a directory"},
    {EINVAL, "EINVAL", "Invalid argument"},
    {ENFILE, "ENFILE", "Too many open files in system"},
    {EMFILE, "EMFILE", "Too many open files"},
    {EFBIG, "EFBIG", "File too large"},
    {ENOSPC, "ENOSPC", "No space left on device"},
    {ESPIPE, "ESPIPE", "Illegal seek"},
    {EROFS, "EROFS", "Read-only file system"},
    {EPIPE, "EPIPE", "Broken pipe"},
    {ERANGE, "ERANGE", "Numerical result out of range"},
    {EDEADLK, "EDEADLK", "Resource deadlock avoided"},
    {ENAMETOOLONG, "ENAMETOOLONG", "File name too long"},
    {ENOSYS, "ENOSYS", "Function not implemented"},
    {ELOOP, "ELOOP", "Too many levels of symbolic links"},
    {EPROTO, "EPROTO", "Protocol error"},
    {EOVERFLOW, "EOVERFLOW", "Value too large for defined data type"},
    {ENOTSOCK, "ENOTSOCK", "Socket operation on non-socket"},
    {EDESTADDRREQ, "EDESTADDRREQ", "Destination address required"},
    {EMSGSIZE, "EMSGSIZE", "Message too long"},
    {EPROTOTYPE, "EPROTOTYPE", "Protocol wrong type for socket"},
    {ENOPROTOOPT, "ENOPROTOOPT", "Protocol not available"},
    {EPROTONOSUPPORT, "EPROTONOSUPPORT", "Protocol not supported"},
    {EOPNOTSUPP, "EOPNOTSUPP", "Operation not supported"},
    {ENOTSUP, "ENOTSUP", "Operation not supported"},
    {EAFNOSUPPORT, "EAFNOSUPPORT", "Address family not supported by protocol"},
    {EADDRINUSE, "EADDRINUSE", "Address already in use"},
    {EADDRNOTAVAIL, "EADDRNOTAVAIL", "Cannot assign requested address"},
    {ENETDOWN, "ENETDOWN", "Network is down"},
    {ENETUNREACH, "ENETUNREACH", "Network is unreachable"},
    {ENETRESET, "ENETRESET", "Network dropped connection on reset"},
    {ECONNABORTED, "ECONNABORTED", "Software caused connection abort"},
    {ECONNRESET, "ECONNRESET", "Connection reset by peer"},
    {ENOBUFS, "ENOBUFS", "No buffer space available"},
    {EISCONN, "EISCONN", "Transport endpoint is already connected"},
    {ENOTCONN, "ENOTCONN", "Transport endpoint is not connected"},
    {ESHUTDOWN, "ESHUTDOWN", "Cannot send after transport endpoint shutdown"},
    {ETIMEDOUT, "ETIMEDOUT", "Connection timed out"},
    {ECONNREFUSED, "ECONNREFUSED", "Connection refused"},
    {EHOSTDOWN, "EHOSTDOWN", "Host is down"},
    {EHOSTUNREACH, "EHOSTUNREACH", "No route to host"},
    {EALREADY, "EALREADY", "Operation already in progress"},
    {EINPROGRESS, "EINPROGRESS", "Operation now in progress"},
    {ECANCELED, "ECANCELED", "Operation canceled"},
};

static const em__errno_entry *em__errno_find(int code)
{
    size_t n = sizeof em__errno_table / sizeof em__errno_table[0];
    for (size_t i = 0; i < n; i++) {
        if (em__errno_table[i].code == code)
            return &em__errno_table[i];
    }
    return NULL;
}

#endif /* !EM__HAVE_ERRNO_NP */

const char *em_strerror(int err)
{
    if (err == 0)
        return "success";
    int code = em__errno_of(err);
    if (code == 0)
        return em__unknown_desc;
#if EM__HAVE_ERRNO_NP
    const char *desc = strerrordesc_np(code);
    return desc ? desc : em__unknown_desc;
#else
    const em__errno_entry *e = em__errno_find(code);
    return e ? e->desc : em__unknown_desc;
#endif
}

const char *em_err_name(int err)
{
    if (err == 0)
        return "OK";
    int code = em__errno_of(err);
    if (code == 0)
        return em__unknown_name;
#if EM__HAVE_ERRNO_NP
    const char *name = strerrorname_np(code);
    return name ? name : em__unknown_name;
#else
    const em__errno_entry *e = em__errno_find(code);
    return e ? e->name : em__unknown_name;
#endif
}
