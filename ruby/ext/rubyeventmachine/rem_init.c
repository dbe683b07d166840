/*
 * rem_init.c - Init_rubyeventmachine: the EventMachine module's native
 * surface as Debian's engine defines it (module functions, the Connection
 * class with its native methods, the event codes, the TLS constants and
 * the exception classes), on libem.

 */
#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <stdio.h>

#include "rem.h"

VALUE rem_mEM, rem_cConnection;
VALUE rem_eConnectionError, rem_eConnectionNotBound, rem_eUnknownTimerFired,
    rem_eUnsupported, rem_eInvalidSignature, rem_eInvalidPrivateKey,
    rem_eNoHandlerForAcceptedConnection;

ID rem_id_call, rem_id_event_callback, rem_id_receive_data,
    rem_id_connection_completed, rem_id_run_deferred_callbacks,
    rem_id_at_signature, rem_id_at_conns, rem_id_at_timers,
    rem_id_at_error_handler, rem_id_ssl_handshake_completed,
    rem_id_ssl_verify_peer, rem_id_proxy_target_unbound, rem_id_proxy_completed,
    rem_id_notify_readable, rem_id_notify_writable;

RUBY_FUNC_EXPORTED void Init_rubyeventmachine(void)
{
    rem_id_call = rb_intern("call");
    rem_id_event_callback = rb_intern("event_callback");
    rem_id_receive_data = rb_intern("receive_data");
    rem_id_connection_completed = rb_intern("connection_completed");
    rem_id_run_deferred_callbacks = rb_intern("run_deferred_callbacks");
    rem_id_at_signature = rb_intern("@signature");
    rem_id_at_conns = rb_intern("@conns");
    rem_id_at_timers = rb_intern("@timers");
    rem_id_at_error_handler = rb_intern("@error_handler");
    rem_id_ssl_handshake_completed = rb_intern("ssl_handshake_completed");
    rem_id_ssl_verify_peer = rb_intern("ssl_verify_peer");
    rem_id_proxy_target_unbound = rb_intern("proxy_target_unbound");
    rem_id_proxy_completed = rb_intern("proxy_completed");
    rem_id_notify_readable = rb_intern("notify_readable");
    rem_id_notify_writable = rb_intern("notify_writable");

    rem_mEM = rb_define_module("EventMachine");
    rem_cConnection = rb_define_class_under(rem_mEM, "Connection", rb_cObject);

    rem_eConnectionError =
        rb_define_class_under(rem_mEM, "ConnectionError", rb_eRuntimeError);
    rem_eConnectionNotBound =
        rb_define_class_under(rem_mEM, "ConnectionNotBound", rb_eRuntimeError);
    rem_eUnknownTimerFired =
        rb_define_class_under(rem_mEM, "UnknownTimerFired", rb_eRuntimeError);
    rem_eUnsupported =
        rb_define_class_under(rem_mEM, "Unsupported", rb_eRuntimeError);
    rem_eInvalidSignature =
        rb_define_class_under(rem_mEM, "InvalidSignature", rb_eRuntimeError);
    rem_eInvalidPrivateKey =
        rb_define_class_under(rem_mEM, "InvalidPrivateKey", rb_eRuntimeError);
    rem_eNoHandlerForAcceptedConnection = rb_define_class_under(
        rem_mEM, "NoHandlerForAcceptedConnection", rb_eRuntimeError);

    rb_define_const(rem_mEM, "TimerFired", INT2FIX(REM_TIMER_FIRED));
    rb_define_const(rem_mEM, "ConnectionData", INT2FIX(REM_CONNECTION_READ));
    rb_define_const(rem_mEM, "ConnectionUnbound",
                    INT2FIX(REM_CONNECTION_UNBOUND));
    rb_define_const(rem_mEM, "ConnectionAccepted",
                    INT2FIX(REM_CONNECTION_ACCEPTED));
    rb_define_const(rem_mEM, "ConnectionCompleted",
                    INT2FIX(REM_CONNECTION_COMPLETED));
    rb_define_const(rem_mEM, "LoopbreakSignalled",
                    INT2FIX(REM_LOOPBREAK_SIGNAL));
    rb_define_const(rem_mEM, "ConnectionNotifyReadable",
                    INT2FIX(REM_CONNECTION_NOTIFY_READABLE));
    rb_define_const(rem_mEM, "ConnectionNotifyWritable",
                    INT2FIX(REM_CONNECTION_NOTIFY_WRITABLE));
    rb_define_const(rem_mEM, "SslHandshakeCompleted",
                    INT2FIX(REM_SSL_HANDSHAKE_COMPLETED));
    rb_define_const(rem_mEM, "SslVerify", INT2FIX(REM_SSL_VERIFY));

    /* EventMachine's protocol bits (not libem's EM_TLS_* values). */
    rb_define_const(rem_mEM, "EM_PROTO_SSLv2", INT2FIX(2));
    rb_define_const(rem_mEM, "EM_PROTO_SSLv3", INT2FIX(4));
    rb_define_const(rem_mEM, "EM_PROTO_TLSv1", INT2FIX(8));
    rb_define_const(rem_mEM, "EM_PROTO_TLSv1_1", INT2FIX(16));
    rb_define_const(rem_mEM, "EM_PROTO_TLSv1_2", INT2FIX(32));
    rb_define_const(rem_mEM, "EM_PROTO_TLSv1_3", INT2FIX(64));
    rb_define_const(rem_mEM, "OPENSSL_NO_SSL2", Qtrue);
    rb_define_const(rem_mEM, "OPENSSL_NO_SSL3", Qtrue);
    rb_define_const(rem_mEM, "OPENSSL_VERSION",
                    rb_obj_freeze(rb_str_new_cstr(OPENSSL_VERSION_TEXT)));
    rb_define_const(
        rem_mEM, "OPENSSL_LIBRARY_VERSION",
        rb_obj_freeze(rb_str_new_cstr(OpenSSL_version(OPENSSL_VERSION))));

    /* Marks this engine (libem/eventmachine.rb checks it). */
    char version[32];
    snprintf(version, sizeof(version), "%d.%d.%d", EM_VERSION_MAJOR,
             EM_VERSION_MINOR, EM_VERSION_PATCH);
    rb_define_const(rem_mEM, "LIBEM_VERSION",
                    rb_obj_freeze(rb_str_new_cstr(version)));

    rem_define_machine();
    rem_define_conn();
    rem_define_more();
    rem_define_tls();
}
