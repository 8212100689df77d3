/* uvtls.h - TLS connections on libuv: the transport of the push long
 * connection (mipush's broker), the device library and the push load
 * generator.
 *
 * libuv owns every socket; OpenSSL never sees a file descriptor. Each
 * connection's SSL object reads from and writes to a small BIO of this module
 * (a "memory BIO" with no buffer of its own): bytes that libuv read are lent
 * to OpenSSL for the duration of the read callback, and the records OpenSSL
 * writes are gathered in one per-thread buffer that is written to the socket
 * (uv_try_write, the remainder queued with uv_write) before control returns
 * to the loop. An idle connection therefore holds no read buffer, no write
 * buffer and no BIO buffer: only its uv_tcp_t, its SSL object (with
 * SSL_MODE_RELEASE_BUFFERS, so OpenSSL frees its record buffers when they
 * are empty) and a small struct. docs/decisions.md ("The push transport")
 * has the measured bytes per idle connection. A server with detach_idle_ms
 * goes further: an idle TLS 1.3 connection gives up its SSL object too and
 * lib/uvtls protects its records itself (lib/tlsrec), so it holds its
 * uv_tcp_t, its struct and two directions of traffic keys, about 0.9 KB in
 * all (docs/decisions.md, "Idle TLS 1.3 connections without an SSL
 * object").
 *
 * TLS policy: TLS 1.3 preferred, TLS 1.2 only with ECDHE and an AEAD cipher
 * (MICA_TLS12_CIPHERS, lib/httpc.h); older versions and every CBC/SHA-1
 * suite are refused. Resumption: stateless session tickets (no server-side
 * session cache). The ticket keys come from one 32-byte secret (a file
 * shared by every process on a port, or random per process) and the wall
 * clock: the key of period e is HKDF-SHA256(secret, "mica uvtls ticket v1"
 * || e) with e = unix time / ticket_period_s, so every process holding the
 * same secret encrypts under the same key, and accepts tickets of periods
 * e-1, e and e+1 (clock skew between workers), with no coordination between
 * processes; keys rotate every period by themselves. Every resumed ticket is
 * renewed. Replacing the secret file (and restarting the workers)
 * invalidates every outstanding ticket: each costs one full handshake.
 *
 * Threads: a server, a client connection and every call on them belong to
 * the thread that runs their uv_loop_t; nothing here is thread-safe and
 * nothing blocks. Call mica_thread_set_event(true) (lib/thread.h) on that
 * thread before uv_run so a blocking libmica call made from a callback is
 * refused instead of stalling every connection.
 *
 * Signals: libuv writes with write(2), so a peer that hung up raises SIGPIPE;
 * a program using this module ignores it (lib/daemon does for every mica
 * daemon).
 *
 * Sessions: a TLS 1.3 session is single-use on an OpenSSL client (it is no
 * longer resumable once it resumed), and the server issues a new ticket on
 * every resumption, so a client keeps the newest session on_session gave it
 * and offers that on its next connect.
 *
 * Every callback runs from a libuv callback, never from inside a
 * mica_uvtls_* call (a close that a write causes reports on_close later). A
 * connection may be closed (mica_uvtls_close) from any of its callbacks;
 * after on_close returns the connection is freed.
 */
#ifndef MICA_UVTLS_H
#define MICA_UVTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "err.h"

typedef struct mica_uvtls_server mica_uvtls_server;
typedef struct mica_uvtls_conn mica_uvtls_conn;

/* Why a connection ended; given to on_close. A close cause rather than an
 * error return, so it lives here as a verdict enum (like KC_POLICY_*):
 * the broker counts each in /metrics under mica_uvtls_close_name(). */
typedef enum mica_uvtls_close_reason {
	MICA_UVTLS_CLOSED_LOCAL = 0,	     /* mica_uvtls_close() or the server freed */
	MICA_UVTLS_CLOSED_PEER,		     /* the peer sent close_notify or EOF */
	MICA_UVTLS_CLOSED_TLS,		     /* TLS failure: handshake refused, garbage, bad MAC */
	MICA_UVTLS_CLOSED_HANDSHAKE_TIMEOUT, /* no finished handshake in time (slowloris) */
	MICA_UVTLS_CLOSED_IDLE_TIMEOUT,	     /* no record within the idle timeout */
	MICA_UVTLS_CLOSED_IO,		     /* socket error (reset, connect refused, ...) */
	MICA_UVTLS_CLOSED_NOMEM,	     /* out of memory while serving it */
} mica_uvtls_close_reason;

/* Stable snake_case name of |r| ("local", "peer", "tls", "handshake_timeout",
 * "idle_timeout", "io", "nomem"; "unknown" otherwise). */
const char *mica_uvtls_close_name(mica_uvtls_close_reason r);

/* What a connection reports. Every member but on_data may be NULL. */
typedef struct mica_uvtls_callbacks {
	/* The TLS handshake finished; data may flow. */
	void (*on_open)(mica_uvtls_conn *c);
	/* |len| plaintext bytes arrived; |data| is borrowed and valid only
	 * during the call (it lives in a buffer shared by every connection of
	 * the thread). Called once per TLS record. */
	void (*on_data)(mica_uvtls_conn *c, const uint8_t *data, size_t len);
	/* mica_uvtls_pending() went from above zero to zero: everything
	 * written has been handed to the kernel. */
	void (*on_drain)(mica_uvtls_conn *c);
	/* Client connections only: a resumable session arrived (TLS 1.3
	 * sends tickets after the handshake, TLS 1.2 in it). |sess| is
	 * borrowed; SSL_SESSION_up_ref() it to keep it, and pass it to a
	 * later mica_uvtls_connect() to resume. */
	void (*on_session)(mica_uvtls_conn *c, SSL_SESSION *sess);
	/* The connection ended (once, always, also when the handshake never
	 * finished). The connection is freed when this returns; free what
	 * the user pointer holds here. */
	void (*on_close)(mica_uvtls_conn *c, mica_uvtls_close_reason reason);
} mica_uvtls_callbacks;

/* ---- Server ------------------------------------------------------------- */

#define MICA_UVTLS_TICKET_SECRET_LEN 32

typedef struct mica_uvtls_server_options {
	const char *host;      /* numeric IPv4 or IPv6 address to bind (required) */
	int port;	       /* 0: an ephemeral port (mica_uvtls_server_port) */
	int backlog;	       /* listen() backlog; 0: 4096 */
	bool reuseport;	       /* SO_REUSEPORT: several processes share the port */
	unsigned keepalive_s;  /* TCP keepalive delay on accepted sockets; 0: off */
	const char *cert_file; /* PEM certificate chain (required) */
	const char *key_file;  /* PEM private key (required) */
	/* File holding the ticket secret: exactly MICA_UVTLS_TICKET_SECRET_LEN
	 * bytes, raw (mode 0600 is the operator's job). Every process on one
	 * port must read the same file for a session to resume on any of them.
	 * NULL: a random secret of this process (resumption only here). */
	const char *ticket_secret_file;
	unsigned ticket_period_s;      /* ticket key period; 0: 3600 (1 h). A
					  ticket lives at most two periods. */
	unsigned tickets;	       /* TLS 1.3 tickets per handshake; 0: 1 */
	unsigned handshake_timeout_ms; /* 0: 10000 */
	unsigned close_timeout_ms;     /* wait for queued writes at close; 0: 5000 */
	/* Detach idle TLS 1.3 connections: once a connection has neither
	 * received a record nor been written to for this long (rounded up to
	 * the 250 ms wheel tick), its SSL object is freed and lib/uvtls carries
	 * its records itself (lib/tlsrec: the application traffic keys, the
	 * sequence numbers, close_notify and other alerts, KeyUpdate). An idle
	 * connection then costs about 0.9 KB instead of about 14.3 KB (bench/push). TLS 1.2
	 * connections, and TLS 1.3 ones that saw a KeyUpdate before detaching,
	 * keep OpenSSL. Session tickets are issued in the handshake, before.
	 * 0: off (every connection keeps its SSL object). At most 86,400,000. */
	unsigned detach_idle_ms;
} mica_uvtls_server_options;

/* Creates a server on |loop|, binds and listens. |opt| and its strings are
 * read during the call only; |cb| is copied (every connection the server
 * accepts reports through it; on_session is not used). |user| is the
 * server's user pointer (mica_uvtls_server_user).
 * Returns 0 with *out set, MICA_EINVAL (NULL argument, no host, bad
 * address, cb->on_data NULL), MICA_ECONFIG (certificate, key or ticket
 * secret unreadable or unusable), MICA_EIO (socket, bind or listen failed:
 * the port is in use, descriptors exhausted), MICA_ENOMEM or MICA_ECRYPTO.
 * On failure *out is NULL; a listener that was opened is closed and
 * released when the loop next runs. */
int mica_uvtls_server_new(uv_loop_t *loop, const mica_uvtls_server_options *opt,
			  const mica_uvtls_callbacks *cb, void *user,
			  mica_uvtls_server **out) MICA_WUR;

/* Stops listening and closes every connection (on_close with
 * MICA_UVTLS_CLOSED_LOCAL, from libuv callbacks); the server is freed once
 * the last handle has closed, so run the loop afterwards. NULL is a no-op;
 * calling it twice is not allowed. */
void mica_uvtls_server_free(mica_uvtls_server *s);

/* The bound port (useful with port 0). */
int mica_uvtls_server_port(const mica_uvtls_server *s);
void *mica_uvtls_server_user(const mica_uvtls_server *s);
/* Connections currently open (handshaking ones included). */
size_t mica_uvtls_server_connections(const mica_uvtls_server *s);

/* ---- Client ------------------------------------------------------------- */

/* A client SSL_CTX with mica's TLS policy that verifies the server against
 * |ca_file| (PEM, required), presenting |cert_file|/|key_file| when both are
 * given. Sessions are cached by the caller (on_session), not by OpenSSL.
 * Returns 0 with *out set (the caller frees it with SSL_CTX_free after the
 * last connection on it has closed), MICA_EINVAL, MICA_ECONFIG (a file is
 * unreadable) or MICA_ENOMEM. */
int mica_uvtls_client_ctx_new(const char *ca_file, const char *cert_file, const char *key_file,
			      SSL_CTX **out) MICA_WUR;

typedef struct mica_uvtls_connect_options {
	const char *host; /* numeric server address (required) */
	int port;
	const char *server_name; /* name verified in the certificate and sent as
				    SNI; NULL: |host| verified as an IP address */
	const char *source;	 /* numeric local address to bind, or NULL */
	SSL_SESSION *session;	 /* session to resume, or NULL; borrowed */
	unsigned timeout_ms;	 /* connect + handshake; 0: 10000 */
} mica_uvtls_connect_options;

/* Starts a TLS connection on |loop| with |ctx| (borrowed; must outlive the
 * connection). |cb| is borrowed and must outlive the connection. The result
 * comes later: on_open when the handshake finished, or on_close with the
 * reason it failed (connect refused: MICA_UVTLS_CLOSED_IO, certificate
 * rejected: MICA_UVTLS_CLOSED_TLS, too slow:
 * MICA_UVTLS_CLOSED_HANDSHAKE_TIMEOUT).
 * Returns 0 with *out set (valid until on_close returns), MICA_EINVAL
 * (NULL argument, bad address), MICA_EIO (no socket: descriptors
 * exhausted; nothing was started, no on_close follows) or MICA_ENOMEM. */
int mica_uvtls_connect(uv_loop_t *loop, SSL_CTX *ctx, const mica_uvtls_connect_options *opt,
		       const mica_uvtls_callbacks *cb, void *user, mica_uvtls_conn **out) MICA_WUR;

/* ---- Connections -------------------------------------------------------- */

/* Encrypts |len| bytes of |data| (copied; may be freed on return) and sends
 * them: what the kernel does not take at once is queued in memory and
 * counted by mica_uvtls_pending(). Large writes are split into records of
 * at most 16 KiB.
 * Returns 0, MICA_EINVAL (NULL argument), MICA_ESTATE (the handshake has
 * not finished, or the connection is closing), MICA_ETLS (OpenSSL failed;
 * the connection is being closed) or MICA_ENOMEM. */
int mica_uvtls_write(mica_uvtls_conn *c, const void *data, size_t len) MICA_WUR;

/* Bytes written but not yet taken by the kernel: the backpressure figure.
 * A sender stops writing to a connection above its own limit and resumes
 * at on_drain. */
size_t mica_uvtls_pending(const mica_uvtls_conn *c);

/* Sends close_notify, waits (at most the close timeout) for queued bytes
 * to leave, then closes; on_close follows with MICA_UVTLS_CLOSED_LOCAL
 * unless the connection had already begun to close for another reason.
 * Calling it again, or on a closing connection, is a no-op. */
void mica_uvtls_close(mica_uvtls_conn *c);

/* Idle timeout: the connection is closed (MICA_UVTLS_CLOSED_IDLE_TIMEOUT)
 * when no TLS record has decrypted for |ms| milliseconds (0 turns it off;
 * at most 86,400,000, larger is clamped). Counting whole records, not raw
 * bytes, means a peer dribbling a byte at a time does not stay alive. This
 * is how the MQTT layer enforces keepalive (1.5 x the client's keep-alive):
 * the deadlines sit on one coarse timer wheel per server (ticks of 250 ms),
 * so a connection pays a few bytes for its timer, not a uv_timer_t. Set
 * before on_open, it starts counting at on_open. */
void mica_uvtls_set_idle_timeout(mica_uvtls_conn *c, unsigned ms);

void mica_uvtls_set_user(mica_uvtls_conn *c, void *user);
void *mica_uvtls_user(const mica_uvtls_conn *c);
/* The connection's server, or NULL for a client connection. */
mica_uvtls_server *mica_uvtls_conn_server(const mica_uvtls_conn *c);
/* The SSL object (borrowed; for SSL_session_reused, SSL_get_version, the
 * peer certificate). Do not read, write or shut it down directly. NULL once
 * the connection detached (detach_idle_ms; server connections only): ask
 * what you need of it in on_open, which always runs attached. */
SSL *mica_uvtls_ssl(const mica_uvtls_conn *c);
/* Whether the connection detached: its SSL object is freed and lib/uvtls
 * protects its TLS 1.3 records itself. */
bool mica_uvtls_detached(const mica_uvtls_conn *c);
/* The peer's address as numeric text into |buf| (|n| bytes; 46 is
 * enough). Returns 0, MICA_EINVAL or MICA_EIO. */
int mica_uvtls_peer_address(const mica_uvtls_conn *c, char *buf, size_t n) MICA_WUR;

#endif
