/*
 * rem.h - the `rubyeventmachine` extension on libem: state shared by its
 * files.
 *
 *   rem_machine.c  the reactor: initialize/run/stop/release, the wait hook
 *                  (no GVL while waiting), protected calls into Ruby,
 *                  loopbreak, timers, settings
 *   rem_conn.c     connections: the one em_handler, servers, connects,
 *                  per-connection functions, Connection's native methods
 *   rem_more.c     descriptors, processes, datagrams, file watches, proxies
 *   rem_tls.c      set_tls_parms, start_tls, verification, TLS getters
 *   rem_write.c    send_data: a turn's writes to a connection leave in one
 *                  write at the end of the turn
 *   rem_init.c     Init_rubyeventmachine: classes, constants, functions
 *
 * EventMachine's engine is a process-wide singleton (its Ruby layer keeps
 * one @conns, one @timers), so the extension's state is one static struct,
 * `rem`; the loop in it is created by initialize_event_machine and freed by
 * release_machine.
 *
 * The rule that makes this safe: no Ruby exception (or throw) ever
 * longjmps through a libem frame. Every call from a libem callback into
 * Ruby goes through rem_call (rb_protect); a failure is parked in `rem`,
 * the rest of the turn delivers nothing more to Ruby, the turn loop ends
 * and run_machine (or release_machine) re-raises once libem has returned.
 * Native functions called by Ruby may raise freely, but only after their
 * last libem call that can run a callback has returned.
 *
 * One exception: a child forked inside a callback whose release_machine
 * freed the inherited loop. The libem frames under that callback belong to
 * a loop that no longer exists, so the child throws past them to its
 * run_machine (or release_machine) instead of returning into them
 * (rem_machine.c; libem's em_loop_free documents the rule for a child).
 */
#ifndef REM_H
#define REM_H

#include <ruby.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "em.h"

/* A TCP or Unix listener: its Ruby signature and libem server. */
typedef struct rem_server {
    uint64_t sig;
    em_server *server;
    struct rem_server *next;
} rem_server;

typedef struct rem_machine {
    em_loop *loop;             /* NULL: no machine */
    pid_t pid;                 /* the process that made it */
    atomic_int stop_requested; /* EM.stop: leave the turn loop */
    int running;               /* inside run_machine */
    int releasing;             /* release_machine's em_loop_free */
    int exc_state;             /* rb_protect's state of a parked failure */
    VALUE exc;                 /* its exception (or throw data) */
    VALUE conns;               /* EventMachine's @conns and @timers */
    VALUE timers;
    atomic_int loopbreak_pending;
    uint64_t next_sig;    /* timers, servers, file watches */
    long timer_count;     /* one-shot timers not yet fired */
    double heartbeat;     /* stored only: libem's timeouts are exact */
    rem_server *servers;  /* live listeners */
    long server_count;    /* they count in EM.connection_count */
    long close_scheduled; /* close_connection called, unbind not yet */
} rem_machine;

extern rem_machine rem;
extern long rem_max_timers;

extern VALUE rem_mEM, rem_cConnection;
extern VALUE rem_eConnectionError, rem_eConnectionNotBound,
    rem_eUnknownTimerFired, rem_eUnsupported, rem_eInvalidSignature,
    rem_eInvalidPrivateKey, rem_eNoHandlerForAcceptedConnection;

/* Ids of the Ruby methods and variables the engine uses. */
extern ID rem_id_call, rem_id_event_callback, rem_id_receive_data,
    rem_id_connection_completed, rem_id_run_deferred_callbacks,
    rem_id_at_signature, rem_id_at_conns, rem_id_at_timers,
    rem_id_at_error_handler, rem_id_ssl_handshake_completed,
    rem_id_ssl_verify_peer, rem_id_proxy_target_unbound, rem_id_proxy_completed,
    rem_id_notify_readable, rem_id_notify_writable;

/* EventMachine's event codes (EventMachine::TimerFired and friends). */
enum {
    REM_TIMER_FIRED = 100,
    REM_CONNECTION_READ = 101,
    REM_CONNECTION_UNBOUND = 102,
    REM_CONNECTION_ACCEPTED = 103,
    REM_CONNECTION_COMPLETED = 104,
    REM_LOOPBREAK_SIGNAL = 105,
    REM_CONNECTION_NOTIFY_READABLE = 106,
    REM_CONNECTION_NOTIFY_WRITABLE = 107,
    REM_SSL_HANDSHAKE_COMPLETED = 108,
    REM_SSL_VERIFY = 109,
};

/* Calls fn(arg) under rb_protect. Returns 0, or -1 when it raised (or
 * threw): with EM.error_handler set, a StandardError goes to it and 0 is
 * returned if the handler returned; otherwise the failure is parked and
 * the turn loop ends. Does nothing (-1) while a failure is parked. */
int rem_call(VALUE (*fn)(VALUE), VALUE arg);

/* Raises what rem_call parked, if anything (clearing it). */
void rem_raise_parked(void);

/* The machine's loop, or RuntimeError "eventmachine not initialized:
 * <what>" (EventMachine's message, with its C function's name). */
em_loop *rem_loop(const char *what);

/* A new signature for a timer, server or watch (never 0; never one of
 * libem's connection ids, which are at least 2^32). */
uint64_t rem_new_sig(void);

/* The connection with Ruby signature sig, or NULL. */
em_conn *rem_conn_of(VALUE sig);

/* The handler of every connection Ruby sees (rem_conn.c). */
extern const em_handler rem_handler;

/* What a turn's send_data calls may hold back per connection (a response
 * header and a small body); more is written at once. */
#define REM_PEND_MAX 512
/* A receive_data chunk this long may be followed at once by another read
 * of the same connection (libem reads again after filling its 64 KiB
 * buffer): what is held is written first (rem_write.c). */
#define REM_FLUSH_READ 16384

/* Per-connection state (em_conn_state of rem_handler's connections). */
typedef struct rem_conn {
    uint64_t sig;   /* em_conn_id at post_init */
    unsigned flags; /* REM_KNOWN, ... */
    int ruby_fd;    /* attach_fd: Ruby's descriptor (libem has a dup) */
    struct rem_tls_parms *tls_parms;   /* set_tls_parms until start_tls */
    struct rem_tls_secure *tls_secure; /* LibEM.set_tls_verify, same */
    char *connect_host;    /* the name connect_server resolved, for TLS */
    uint32_t verify_asked; /* ssl_verify_peer answered, by depth */
    uint32_t verify_accepted;
    uint64_t proxied_base;   /* em_get_proxied_bytes at the last start_proxy */
    uint32_t pend_len;       /* send_data bytes held until the end of */
    char pend[REM_PEND_MAX]; /* the turn (rem_write.c) */
} rem_conn;

enum {
    REM_KNOWN = 1u << 0,         /* Ruby has (or is making) its object */
    REM_CLOSE_COUNTED = 1u << 1, /* counted in rem.close_scheduled */
    REM_WRITE_AT_ONCE = 1u << 2, /* datagram, proxy end (rem_write.c) */
    REM_TLS_SECURE = 1u << 3,    /* set_tls_verify: OpenSSL decides */
    REM_TLS_ASK_RUBY = 1u << 4,  /* ... then the program's ssl_verify_peer */
};

/* send_data's writes (rem_write.c). rem_call brackets every call into Ruby
 * with enter/leave, run_machine's turns call turn_begin/turn_end; held
 * bytes are written at the end of the turn (or when a call outside a turn
 * returns). rem_write returns as em_send_data; rem_write_flush writes what
 * conn holds (rem_conn_of does, for every other per-connection function);
 * rem_write_after_read flushes conn after a receive_data of len bytes when
 * libem may read it again at once; rem_write_reset starts a new machine. */
void rem_write_enter(void);
void rem_write_leave(void);
void rem_write_turn_begin(void);
void rem_write_turn_end(void);
void rem_write_reset(void);
int rem_write(em_conn *conn, const char *data, size_t len);
void rem_write_flush(em_conn *conn);
void rem_write_flush_all(void);
void rem_write_after_read(em_conn *conn, size_t len);

/* @conns[sig], or EM::ConnectionNotBound (inside rem_call only). */
VALUE rem_conn_object(uint64_t sig);

/* TLS (rem_tls.c): the handler's ssl_verify_peer; set_tls_parms's and
 * set_tls_verify's copies, freed at start_tls, and everything TLS keeps
 * (connect_host too) at unbind (rem_tls_free). */
int rem_on_verify_peer(em_conn *conn, const char *pem, size_t len, int depth,
                       int preverified);
void rem_tls_parms_free(rem_conn *rc);
void rem_tls_free(rem_conn *rc);

/* Event for EventMachine.event_callback(sig, code, data). */
typedef struct rem_event {
    uint64_t sig;
    int code;
    uint64_t data;
} rem_event;
VALUE rem_event_callback(VALUE ev);

/* Resolves host:port (blocking, without the GVL) into a numeric address
 * string in buf (AI_ADDRCONFIG, first answer, as EventMachine). Returns 0
 * or a getaddrinfo error (EAI_*). */
int rem_resolve(const char *host, int port, char *buf, size_t size);

/* Definitions, one function per file (rem_init.c calls them). */
void rem_define_machine(void);
void rem_define_conn(void);
void rem_define_more(void);
void rem_define_tls(void);
/* release_machine: frees what the connection side keeps (servers). */
void rem_conn_release(void);

#endif
