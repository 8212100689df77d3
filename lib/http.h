/* http.h - the HTTPS server every mica daemon uses.
 *
 * Wraps libmicrohttpd (GnuTLS backend) with a routing table (method + path
 * pattern with {params}), JSON request bodies under a size limit, uniform JSON
 * errors {"error":{"code":"snake_case","message":"..."}}, TLS only (there is no
 * plaintext mode; TLS 1.3, and TLS 1.2 with ECDHE and AES-GCM or
 * ChaCha20-Poly1305 only), optional mutual TLS whose verified
 * client-certificate common name is the request's principal,
 * idle/slow-client timeouts, per-IP connection limits, built-in GET /healthz
 * (liveness) and GET /readyz (readiness: the service's dependencies), and a
 * JSON access log.
 *
 * Two listeners: the public one serves the routes, /healthz and /readyz; the
 * metrics listener (loopback by default, mutual TLS when it is bound
 * elsewhere) serves GET /metrics (Prometheus text) and copies of /healthz and
 * /readyz, and nothing else. /metrics is not served on the public listener.
 *
 * Threads: connections are served by an epoll thread pool (one event thread
 * per CPU). A handler runs on the event thread that read its request unless
 * its route has MICA_ROUTE_BLOCKING, in which case the connection is
 * suspended and the handler runs on a separate pool of blocking threads
 * (database, Key Center, Argon2id), so a slow handler never stalls the other
 * connections of an event thread. A handler that must wait for something
 * that completes on another thread (the Key Center's audit group commit)
 * defers its reply instead of blocking: mica_http_defer(), then
 * mica_http_finish() from whichever thread learns the outcome. One that
 * finds it must block after all (a cache miss) hands its request to the
 * blocking pool, where it runs again: mica_http_run_blocking(). The
 * readiness probe runs on the blocking pool too (inline when there is none).
 * The event threads are marked as such (lib/thread.h) while they run the
 * server's code, handlers and hooks: there every blocking libmica call
 * (db, kv, httpc, kc) answers MICA_EWOULDBLOCK, and a handler asks
 * mica_thread_may_block() whether it may block.
 *
 * Bodies are secret-safe: the request body (grown with mica_realloc_wipe),
 * the parsed request JSON (jansson's allocator wipes, lib/crypto.h), the
 * reply body and its headers are all wiped when released, the reply copy
 * libmicrohttpd frees after sending included.
 *
 * Built-in error codes (stable, documented in docs/api/errors.md):
 *   400 malformed_json, missing_body, body_not_object
 *   401 client_certificate_required     403 client_certificate_invalid
 *   404 not_found   405 method_not_allowed (with Allow)   413 body_too_large
 *   414 uri_too_long   415 unsupported_media_type   500 internal_error
 *   503 unavailable (also /readyz when a dependency fails)
 */
#ifndef MICA_HTTP_H
#define MICA_HTTP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"
#include "problem.h"

#define MICA_HTTP_MAX_PARAMS 4
#define MICA_HTTP_MAX_HEADERS 4

struct MHD_Connection;

/* One request as a handler sees it. Everything is borrowed and valid only
 * during the handler call. */
typedef struct mica_http_req {
	const char *method;
	const char *path;  /* decoded path without query string */
	const char *route; /* the matched pattern, e.g. "/v1/keys/{name}" */
	int nparams;
	const char *param_name[MICA_HTTP_MAX_PARAMS];
	const char *param_value[MICA_HTTP_MAX_PARAMS];
	const char *body; /* raw body (NUL-terminated), may be NULL */
	size_t body_len;
	json_t *json;		/* parsed object when the route has MICA_ROUTE_JSON */
	const char *peer;	/* verified client certificate CN, or NULL */
	const char *client_ip;	/* textual address of the TCP peer */
	const char *request_id; /* 32 hex characters, echoed as X-Request-Id */
	struct MHD_Connection *conn;
	void *impl; /* the server's request state */
} mica_http_req;

/* What a handler fills in with the mica_http_reply_* helpers. */
typedef struct mica_http_resp {
	int status;
	char *body; /* malloc'd, owned by the server after return */
	size_t body_len;
	const char *content_type; /* static string */
	int nheaders;
	const char *header_name[MICA_HTTP_MAX_HEADERS]; /* static strings */
	char *header_value[MICA_HTTP_MAX_HEADERS];	/* malloc'd copies */
} mica_http_resp;

/* A reply that comes later (mica_http_defer(), on_refusal). */
typedef struct mica_http_deferred mica_http_deferred;

/* What a readiness probe reports into (see mica_http_options.ready). */
typedef struct mica_http_readiness mica_http_readiness;

/* How long a readiness result is reused. */
#define MICA_HTTP_READY_CACHE_MS 1000

typedef void (*mica_http_handler)(const mica_http_req *req, mica_http_resp *resp, void *ctx);

enum {
	MICA_ROUTE_JSON = 1 << 0,     /* body must be a JSON object sent with Content-Type
				       * application/json (parameters such as charset
				       * allowed): 415 for any other or no Content-Type,
				       * 400 for a missing or malformed body */
	MICA_ROUTE_PEER = 1 << 1,     /* a verified client certificate is required */
	MICA_ROUTE_BLOCKING = 1 << 2, /* the handler may block (database, Key Center,
				       * Argon2id ...): it runs on the blocking pool */
};

typedef struct mica_http_route {
	const char *method;  /* "GET", "POST", ... */
	const char *pattern; /* "/v1/keys/{name}"; {x} matches one non-empty segment */
	mica_http_handler fn;
	unsigned flags; /* MICA_ROUTE_* */
} mica_http_route;

typedef struct mica_http_options {
	const char *service;	    /* name used in logs and metrics */
	const char *bind;	    /* address to listen on, e.g. "127.0.0.1" or "::1" */
	int port;		    /* 0 picks a free port; see mica_http_port() */
	const char *cert_file;	    /* PEM server certificate chain (required) */
	const char *key_file;	    /* PEM private key (required) */
	const char *client_ca_file; /* PEM CA that signs client certificates, or NULL */
	int require_client_cert;    /* 1: every route (but /healthz, /readyz) needs a peer */
	size_t max_body;	    /* bytes; larger bodies get 413 */
	int timeout_s;		    /* idle connection timeout */
	int threads;		    /* event threads (0 = number of CPUs) */
	int blocking_threads;	    /* threads that run MICA_ROUTE_BLOCKING handlers;
				       0 starts none (such routes then answer 500) */
	int max_conns;		    /* total connection limit */
	int per_ip_conns;	    /* connection limit per client address (0 = none) */
	int access_log;		    /* 1: one JSON log line per request */
	/* The metrics listener: GET /metrics, /healthz and /readyz only.
	 * Empty |metrics_bind| (or NULL) starts none. A |metrics_bind| that is
	 * not a loopback address (127.0.0.0/8, ::1) needs
	 * |metrics_client_ca_file|; with one, every request on this listener
	 * needs a client certificate that chains to it. */
	const char *metrics_bind;	    /* default "127.0.0.1" */
	int metrics_port;		    /* 0 picks a free port; see mica_http_metrics_port() */
	const char *metrics_client_ca_file; /* PEM CA, or NULL/"" (loopback only) */
	/* Optional readiness probe behind GET /readyz. It calls
	 * mica_http_not_ready() once per failing dependency and returns; no
	 * call means ready. It may block when it runs on the blocking pool;
	 * a server without one runs it on an event thread, where blocking
	 * libmica calls answer MICA_EWOULDBLOCK (lib/thread.h), which it
	 * reports like any failure. One probe runs at a time, and its result is
	 * reused for MICA_HTTP_READY_CACHE_MS, so probing /readyz often costs
	 * the dependencies nothing more. */
	void (*ready)(void *ctx, mica_http_readiness *r);
	/* Optional hook called before the server itself refuses a request
	 * (4xx built-in errors: certificates, routing, bodies) with what is
	 * known of it; |peer| and |client_ip| may be NULL, the strings are
	 * valid during the call only. The refusal waits, its connection
	 * suspended and no thread held, until the hook (or whatever it hands
	 * |done| to, on any thread) calls mica_http_refusal_done(done, ok)
	 * exactly once: ok 0 turns it into 503 audit_unavailable. Services
	 * whose every request must be recorded (the Key Center) record here. */
	void (*on_refusal)(void *ctx, const char *method, const char *path, const char *peer,
			   const char *client_ip, int status, const char *code,
			   mica_http_deferred *done);
	/* Optional: the service's own metrics, appended to GET /metrics. It
	 * writes Prometheus text to |out| (a memory stream) and must not block:
	 * it runs on an event thread of the metrics listener. */
	void (*metrics)(void *ctx, FILE *out);
} mica_http_options;

typedef struct mica_http_server mica_http_server;

/* Fills |opt| with defaults: bind 127.0.0.1, port 0, 1 MiB body limit, 30 s
 * timeout, CPU-count threads, 1024 connections, 64 per IP, access log on,
 * metrics listener on 127.0.0.1 port 0. */
void mica_http_options_default(mica_http_options *opt);

/* Starts listening. |routes| (and the strings in it) and |ctx| are borrowed
 * and must outlive the server. Returns 0 and sets *out, MICA_EINVAL for a bad
 * route table, a missing certificate or a metrics listener bound beyond
 * loopback without a client CA (logged, naming the setting), MICA_ETLS if
 * the certificate, key or a CA cannot be loaded, MICA_EIO if a socket cannot
 * be bound. */
int mica_http_start(mica_http_server **out, const mica_http_options *opt,
		    const mica_http_route *routes, size_t nroutes, void *ctx) MICA_WUR;

/* The port actually bound (useful with port 0). */
int mica_http_port(const mica_http_server *srv);

/* The port the metrics listener bound, or 0 when there is none. */
int mica_http_metrics_port(const mica_http_server *srv);

/* Called by a readiness probe for each dependency that fails: |dependency|
 * is a short stable name ("database", "audit", "hsm", ...; copied) and |err|
 * the MICA_E* code of the failure, reported as mica_strerror(err). */
void mica_http_not_ready(mica_http_readiness *r, const char *dependency, int err);

/* Stops accepting, runs the blocking handlers already queued, waits until
 * every deferred request is finished, then frees. NULL is fine. */
void mica_http_stop(mica_http_server *srv);

/* Reply helpers. Each replaces any earlier reply in |resp|. */
/* Serializes |body| (reference stolen, may be NULL for an empty object). */
void mica_http_reply_json(mica_http_resp *resp, int status, json_t *body);
/* Sends |body| (malloc'd, |len| bytes, ownership taken; NULL is out of
 * memory and becomes 500) as it is: for hot routes that format their JSON
 * themselves rather than through jansson. |content_type| is static. */
void mica_http_reply_raw(mica_http_resp *resp, int status, const char *content_type, char *body,
			 size_t len);
/* The one error reply: |p| as {"error":{"code":...,"message":...}} plus its
 * extra members (lib/problem.h), with its status (500 internal_error for a
 * problem never set). Releases |p|'s extra members and clears it. */
void mica_http_reply_problem(mica_http_resp *resp, mica_problem *p);
/* Shorthand for mica_http_reply_problem() of a problem without extra
 * members: {"error":{"code":code,"message":...}}. |code| is a stable
 * snake_case code (static). */
void mica_http_reply_error(mica_http_resp *resp, int status, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Adds a response header; |name| must be a static string, |value| is copied. */
void mica_http_add_header(mica_http_resp *resp, const char *name, const char *value);

/* Deferred replies. Called by a handler, mica_http_defer() tells the server
 * that the reply comes later: when the handler returns, the connection is
 * suspended (no thread waits) until mica_http_finish(), which may be called
 * from any thread, even before the handler returned. The reply sent is what
 * the handler's |resp| holds when both the handler returned and finish was
 * called; |resp| stays valid (and the server's) until then, so the finisher
 * may replace it (e.g. by an error). |req| is valid only during the handler
 * call. Every deferred request must be finished exactly once; stop waits for
 * it. */
mica_http_deferred *mica_http_defer(const mica_http_req *req);
void mica_http_finish(mica_http_deferred *d);
/* Ends a refusal handed to on_refusal (see mica_http_options): |recorded|
 * 0 replaces it by 503 audit_unavailable. */
void mica_http_refusal_done(mica_http_deferred *d, int recorded);

/* For a handler running on an event thread that finds it must block after
 * all (a cache miss): once the handler returns, the connection is suspended
 * and the same handler runs again, from the start and with the same
 * request, on the blocking pool. The handler must return at once, without
 * replying or deferring. Returns 0, or MICA_ESTATE (not on an event
 * thread, the server has no blocking threads, or the reply was deferred):
 * the handler then answers on its own. */
int mica_http_run_blocking(const mica_http_req *req) MICA_WUR;

/* The value of parameter |name| in the matched route, or NULL. */
const char *mica_http_param(const mica_http_req *req, const char *name);

/* The value of request header |name| (case-insensitive), or NULL. Borrowed,
 * valid during the handler call. */
const char *mica_http_header(const mica_http_req *req, const char *name);

/* The decoded value of query-string argument |name|, or NULL. Borrowed,
 * valid during the handler call. */
const char *mica_http_query(const mica_http_req *req, const char *name);

/* Path parameter |name| as an integer in [min, max] (mica_parse_int64()
 * rules): 0 and *out set, MICA_EINVAL (absent or not an integer) or
 * MICA_ERANGE (an integer outside the range, also beyond int64). */
int mica_http_param_int64(const mica_http_req *req, const char *name, int64_t min, int64_t max,
			  int64_t *out) MICA_WUR;

/* Query argument |name| as an integer in [min, max]: *out = |def| and 0 when
 * the argument is absent, else as mica_http_param_int64() (an empty value,
 * "?limit=", is MICA_EINVAL). */
int mica_http_query_int64(const mica_http_req *req, const char *name, int64_t min, int64_t max,
			  int64_t def, int64_t *out) MICA_WUR;

#endif
