/* http.c - HTTPS server on libmicrohttpd: routing, JSON bodies, uniform
 * errors, mTLS principals, /healthz, /readyz, /metrics on its own listener
 * and the access log.
 * Requests flow through on_request() (once per header block, once per body
 * chunk, once at the end), dispatch() picks the route, and on_completed()
 * records metrics and the access-log line. A handler runs inline on the event
 * thread, or, for MICA_ROUTE_BLOCKING routes, on the blocking pool while the
 * connection is suspended; a deferred reply also keeps it suspended. Once
 * the handler returned and (if deferred) mica_http_finish() was called, the
 * connection is resumed and on_request() runs once more to queue the reply. */
#include "http.h"

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "crypto.h"
#include "db.h"
#include "log.h"
#include "parse.h"
#include "thread.h"

#define MAX_SEGMENTS 16
#define MAX_PATH 2048
#define DISCARD_LIMIT (8u << 20) /* bytes read past max_body before hanging up */
/* TLS 1.3 (whose suites are all AEAD), and TLS 1.2 only with ephemeral
 * ECDH and an AEAD cipher: no CBC, no SHA-1 MAC, no static-RSA or
 * finite-field DH key exchange. GnuTLS keeps its NORMAL set of groups and
 * signature algorithms. */
#define TLS_PRIORITIES                                                                             \
	"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:"        \
	"+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA"
/* The metrics listener: a scraper or two, and an orchestrator's probes. */
#define METRICS_THREADS 1
#define METRICS_MAX_CONNS 16

/* Status codes that get their own metric series; others count as "other". */
static const int metric_codes[] = {200, 201, 202, 204, 400, 401, 403, 404, 405, 409,
				   413, 414, 415, 422, 423, 428, 429, 500, 503, 0};
#define NCODES (sizeof(metric_codes) / sizeof(metric_codes[0]))
static const double bucket_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
				   0.05,   0.1,	  0.25,	  0.5,	 1,    2.5};
#define NBUCKETS (sizeof(bucket_le) / sizeof(bucket_le[0]))

/* Route slots after the user's routes, for requests no route answered. */
enum { SLOT_HEALTHZ, SLOT_READYZ, SLOT_METRICS, SLOT_UNMATCHED, NBUILTIN };

struct compiled_route {
	int nseg;
	const char *seg[MAX_SEGMENTS]; /* points into |pattern_copy|; NULL = param */
	const char *param[MAX_SEGMENTS];
	char *pattern_copy;
};

/* One libmicrohttpd daemon: the public listener or the metrics one. */
struct listener {
	mica_http_server *srv;
	struct MHD_Daemon *daemon;
	char *ca_pem;	  /* client CA (PEM), or NULL: no client certificates */
	int require_peer; /* every request needs a verified client certificate */
	int metrics;	  /* the metrics listener: /metrics, /healthz, /readyz only */
	int port;
};

struct mica_http_readiness {
	json_t *failing; /* [{"dependency":..., "code":...}] */
};

struct mica_http_server {
	struct listener pub, adm; /* adm.daemon is NULL without a metrics listener */
	mica_http_options opt;
	const mica_http_route *routes;
	size_t nroutes;
	struct compiled_route *compiled;
	void *ctx;
	char *cert_pem, *key_pem;
	_Atomic unsigned long *counts; /* [(nroutes + NBUILTIN) * NCODES] */
	_Atomic unsigned long hist[NBUCKETS + 1];
	_Atomic unsigned long dur_sum_us, dur_count, inflight;
	_Atomic unsigned long moved; /* handlers moved to the pool (mica_http_run_blocking) */

	/* The blocking pool: a FIFO of suspended requests whose handler is due. */
	pthread_mutex_t pool_mu;
	pthread_cond_t pool_cv;
	struct req_state *qhead, *qtail;
	int pool_stopping;
	int npool;
	pthread_t *pool;

	/* Guards the hand-off fields of every req_state (running, deferred,
	 * finished, ready), counts requests given to a handler and not yet
	 * completed (reply sent or connection lost), and refuses new ones once
	 * stopping. */
	pthread_mutex_t defer_mu;
	pthread_cond_t defer_cv;
	unsigned long nactive;
	int stopping;
	int sync_ready; /* the mutexes and condition variables above exist */

	/* Readiness: one probe at a time (probe_mu, held across the probe); its
	 * result is reused for MICA_HTTP_READY_CACHE_MS (ready_mu, never held
	 * across anything slow, so event threads may take it). */
	pthread_mutex_t probe_mu, ready_mu;
	int64_t ready_at_ms; /* monotonic time of the cached result; 0: none */
	int ready_status;    /* 200 or 503 */
	char *ready_body;    /* the cached JSON reply */
};

/* Per TLS connection: the client certificate is verified once. */
struct conn_state {
	int checked;
	int cert; /* 0 none presented, 1 verified, -1 presented but invalid */
	char peer[128];
};

/* Per request. */
struct req_state {
	mica_http_server *srv;
	struct listener *lst;	  /* the listener the request came in on */
	const char *method, *url; /* borrowed from libmicrohttpd for the request's life */
	struct timespec start;
	char *body;
	size_t len, cap;
	int too_large;
	int answered_early; /* the 413 went out on the TLS session mid-upload */
	int queued;
	int status;
	size_t slot;
	char rid[33];
	char ip[INET6_ADDRSTRLEN];

	/* From dispatch to the reply: the handler's view and its reply. */
	char *path; /* the URL split into segments, which req's params point into */
	mica_http_req req;
	mica_http_resp resp;
	mica_http_handler fn;
	int dispatched;
	int running;		/* the handler has not returned yet */
	const char *code;	/* static error code of the server's own refusal */
	int deferred;		/* mica_http_defer() was called */
	int finished;		/* mica_http_finish() was called */
	int ready;		/* resp is the reply: on_request queues it after the resume */
	int rerun;		/* mica_http_run_blocking(): run the handler again on the pool */
	struct req_state *next; /* in the blocking pool's queue */
};

/* ---- small helpers ---------------------------------------------------- */

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;
	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && n < (1 << 20) &&
	    fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
		if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
			mica_free_wipe(buf); /* may be a private key */
			buf = NULL;
		} else {
			buf[n] = '\0';
		}
	}
	fclose(f);
	return buf;
}

static void new_request_id(char out[33])
{
	static __thread unsigned char prefix[8];
	static __thread uint64_t counter;
	static const char hex[] = "0123456789abcdef";
	unsigned char raw[16];

	if (counter == 0 && getrandom(prefix, sizeof(prefix), 0) != sizeof(prefix))
		memset(prefix, 0x5a, sizeof(prefix));
	counter++;
	memcpy(raw, prefix, 8);
	for (int i = 0; i < 8; i++)
		raw[8 + i] = (unsigned char)(counter >> (56 - 8 * i));
	for (int i = 0; i < 16; i++) {
		out[2 * i] = hex[raw[i] >> 4];
		out[2 * i + 1] = hex[raw[i] & 15];
	}
	out[32] = '\0';
}

static size_t code_index(int status)
{
	for (size_t i = 0; i + 1 < NCODES; i++)
		if (metric_codes[i] == status)
			return i;
	return NCODES - 1;
}

/* ---- replies ------------------------------------------------------------ */

/* Bodies may carry secrets (session tokens, data keys): every body buffer
 * is released wiped (mica_free_wipe), including the copy libmicrohttpd
 * frees after sending. */
static void resp_reset(mica_http_resp *resp)
{
	mica_free_wipe(resp->body);
	resp->body = NULL;
	resp->body_len = 0;
}

void mica_http_reply_json(mica_http_resp *resp, int status, json_t *body)
{
	resp_reset(resp);
	resp->status = status;
	resp->content_type = "application/json";
	resp->body = body ? json_dumps(body, JSON_COMPACT) : strdup("{}");
	if (!resp->body) {
		resp->status = 500;
		resp->body = strdup(
			"{\"error\":{\"code\":\"internal_error\",\"message\":\"out of memory\"}}");
	}
	resp->body_len = resp->body ? strlen(resp->body) : 0;
	json_decref(body);
}

void mica_http_reply_raw(mica_http_resp *resp, int status, const char *content_type, char *body,
			 size_t len)
{
	if (!body) {
		mica_http_reply_error(resp, 500, "internal_error", "out of memory");
		return;
	}
	resp_reset(resp);
	resp->status = status;
	resp->content_type = content_type;
	resp->body = body;
	resp->body_len = len;
}

void mica_http_reply_problem(mica_http_resp *resp, mica_problem *p)
{
	int status = p->code && p->status >= 400 && p->status <= 599 ? p->status : 500;
	mica_http_reply_json(resp, status, mica_problem_json(p));
	mica_problem_cleanup(p);
}

void mica_http_reply_error(mica_http_resp *resp, int status, const char *code, const char *fmt, ...)
{
	mica_problem p = MICA_PROBLEM_INIT;
	va_list ap;
	va_start(ap, fmt);
	mica_problem_vsetf(&p, status, code, fmt, ap);
	va_end(ap);
	mica_http_reply_problem(resp, &p);
}

void mica_http_add_header(mica_http_resp *resp, const char *name, const char *value)
{
	if (resp->nheaders >= MICA_HTTP_MAX_HEADERS)
		return;
	char *copy = strdup(value);
	if (!copy)
		return;
	resp->header_name[resp->nheaders] = name;
	resp->header_value[resp->nheaders++] = copy;
}

const char *mica_http_param(const mica_http_req *req, const char *name)
{
	for (int i = 0; i < req->nparams; i++)
		if (strcmp(req->param_name[i], name) == 0)
			return req->param_value[i];
	return NULL;
}

const char *mica_http_header(const mica_http_req *req, const char *name)
{
	return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *mica_http_query(const mica_http_req *req, const char *name)
{
	return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

static void resp_cleanup(mica_http_resp *resp)
{
	resp_reset(resp);
	for (int i = 0; i < resp->nheaders; i++)
		mica_free_wipe(resp->header_value[i]);
	resp->nheaders = 0;
}

/* Hands |resp| to MHD (body ownership moves to MHD) and cleans it up. */
static enum MHD_Result send_resp(struct MHD_Connection *conn, struct req_state *rs,
				 mica_http_resp *resp)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (resp->status == 0)
		mica_http_reply_error(resp, 500, "internal_error", "handler produced no response");
	r = MHD_create_response_from_buffer_with_free_callback(resp->body_len, resp->body,
							       mica_free_wipe);
	if (!r) {
		resp_cleanup(resp);
		return MHD_NO;
	}
	resp->body = NULL;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, resp->content_type);
	MHD_add_response_header(r, "X-Request-Id", rs->rid);
	for (int i = 0; i < resp->nheaders; i++)
		MHD_add_response_header(r, resp->header_name[i], resp->header_value[i]);
	rs->status = resp->status;
	rs->queued = 1;
	ret = MHD_queue_response(conn, (unsigned)resp->status, r);
	MHD_destroy_response(r);
	resp_cleanup(resp);
	return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, struct req_state *rs, int status,
				  const char *code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static enum MHD_Result handler_returned(mica_http_server *srv, struct req_state *rs, int inline_);

/* Sends the server's own refusal |resp| (4xx), or first hands it to the
 * service's on_refusal hook, which records it and ends it with
 * mica_http_refusal_done(); the connection waits suspended meanwhile, like a
 * deferred reply, and no thread waits with it. */
static enum MHD_Result refuse(struct MHD_Connection *conn, struct req_state *rs,
			      mica_http_resp *resp)
{
	mica_http_server *srv = rs->srv;
	const union MHD_ConnectionInfo *ci;
	struct conn_state *cs;
	/* The metrics listener is the operator's, not the service's API: its
	 * refusals are not the service's to record. */
	if (resp->status >= 500 || !srv->opt.on_refusal || rs->dispatched || rs->lst->metrics)
		return send_resp(conn, rs, resp);
	pthread_mutex_lock(&srv->defer_mu);
	srv->nactive++; /* stop waits for the record as for a deferred reply */
	pthread_mutex_unlock(&srv->defer_mu);
	ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	cs = ci ? ci->socket_context : NULL;
	rs->resp = *resp;
	memset(resp, 0, sizeof(*resp));
	rs->req.conn = conn;
	rs->dispatched = 1;
	rs->running = 1;
	rs->deferred = 1;
	srv->opt.on_refusal(srv->ctx, rs->method, rs->url, cs && cs->cert == 1 ? cs->peer : NULL,
			    rs->ip, rs->resp.status, rs->code, (mica_http_deferred *)rs);
	return handler_returned(srv, rs, 1);
}

void mica_http_refusal_done(mica_http_deferred *d, int recorded)
{
	struct req_state *rs = (struct req_state *)d;
	if (!recorded) {
		resp_cleanup(&rs->resp);
		mica_http_reply_error(&rs->resp, 503, "audit_unavailable",
				      "the request could not be audited, so it was not answered");
	}
	mica_http_finish(d);
}

static enum MHD_Result send_error(struct MHD_Connection *conn, struct req_state *rs, int status,
				  const char *code, const char *fmt, ...)
{
	mica_http_resp resp = {0};
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	rs->code = code;
	mica_http_reply_error(&resp, status, code, "%s", msg);
	return refuse(conn, rs, &resp);
}

/* ---- mutual TLS ------------------------------------------------------------ */

/* Verifies the client's certificate chain against the configured CA (for the
 * TLS client-auth purpose) and extracts its common name. */
static void check_peer(struct MHD_Connection *conn, struct conn_state *cs)
{
	const union MHD_ConnectionInfo *ci;
	gnutls_session_t session;
	const gnutls_datum_t *chain;
	unsigned int n = 0, status = 0;
	gnutls_x509_crt_t crt = NULL;
	gnutls_typed_vdata_st purpose = {.type = GNUTLS_DT_KEY_PURPOSE_OID,
					 .data = (void *)GNUTLS_KP_TLS_WWW_CLIENT};
	size_t sz = sizeof(cs->peer) - 1;

	cs->checked = 1;
	cs->cert = 0;
	ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	if (!ci || !ci->tls_session)
		return;
	session = (gnutls_session_t)ci->tls_session;
	chain = gnutls_certificate_get_peers(session, &n);
	if (!chain || n == 0)
		return;
	cs->cert = -1;
	if (gnutls_certificate_verify_peers(session, &purpose, 1, &status) < 0 || status != 0)
		return;
	if (gnutls_x509_crt_init(&crt) < 0)
		return;
	if (gnutls_x509_crt_import(crt, &chain[0], GNUTLS_X509_FMT_DER) >= 0 &&
	    gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cs->peer, &sz) >=
		    0 &&
	    sz > 0) {
		cs->peer[sz] = '\0';
		cs->cert = 1;
	}
	gnutls_x509_crt_deinit(crt);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode toe)
{
	(void)cls;
	(void)conn;
	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		*socket_context = calloc(1, sizeof(struct conn_state));
	} else {
		free(*socket_context);
		*socket_context = NULL;
	}
}

/* ---- built-in routes --------------------------------------------------------- */

/* Liveness: the process serves requests. It never asks a dependency, so an
 * orchestrator restarts a daemon only when the daemon itself is stuck. */
static enum MHD_Result serve_healthz(struct MHD_Connection *conn, struct req_state *rs)
{
	mica_http_resp resp = {0};
	mica_http_reply_json(&resp, 200, json_pack("{s:s}", "status", "ok"));
	return send_resp(conn, rs, &resp);
}

void mica_http_not_ready(mica_http_readiness *r, const char *dependency, int err)
{
	if (!r || !r->failing || !dependency)
		return;
	json_array_append_new(r->failing, json_pack("{s:s,s:s}", "dependency", dependency, "code",
						    mica_strerror(err)));
}

/* Copies the cached readiness reply into |resp| if it is fresh. Returns 1
 * when it did. */
static int ready_cached(mica_http_server *srv, mica_http_resp *resp)
{
	int hit = 0;
	pthread_mutex_lock(&srv->ready_mu);
	if (srv->ready_body && mica_clock_ms() - srv->ready_at_ms < MICA_HTTP_READY_CACHE_MS) {
		char *body = strdup(srv->ready_body);
		mica_http_reply_raw(resp, srv->ready_status, "application/json", body,
				    body ? strlen(body) : 0);
		hit = 1;
	}
	pthread_mutex_unlock(&srv->ready_mu);
	return hit;
}

/* Runs the service's probe and builds the /readyz reply:
 *   200 {"status":"ready"}
 *   503 {"status":"unavailable","failing":[{"dependency":D,"code":C},...],
 *        "error":{"code":"unavailable","message":"not ready: D (C), ..."}} */
static json_t *probe_readiness(mica_http_server *srv, int *status)
{
	mica_http_readiness r = {.failing = json_array()};
	char msg[512] = "not ready:";
	size_t i;
	json_t *f;

	if (!r.failing)
		return NULL;
	srv->opt.ready(srv->ctx, &r);
	if (json_array_size(r.failing) == 0) {
		json_decref(r.failing);
		*status = 200;
		return json_pack("{s:s}", "status", "ready");
	}
	json_array_foreach(r.failing, i, f)
	{
		size_t n = strlen(msg);
		snprintf(msg + n, sizeof(msg) - n, "%s %s (%s)", i ? "," : "",
			 json_string_value(json_object_get(f, "dependency")),
			 json_string_value(json_object_get(f, "code")));
	}
	/* The uniform error, with the probe's members beside it. */
	mica_problem p = MICA_PROBLEM_INIT;
	json_t *body;
	mica_problemf(&p, 503, "unavailable", "%s", msg);
	(void)mica_problem_set_extra(&p, "status", json_string("unavailable"));
	(void)mica_problem_set_extra(&p, "failing", r.failing);
	*status = 503;
	body = mica_problem_json(&p);
	mica_problem_cleanup(&p);
	return body;
}

/* The /readyz handler (on the blocking pool when there is one): a fresh
 * cached result, or the probe's, which it caches. A change of state is
 * logged, so the log says when and why a daemon stopped being ready. */
static void readyz_handler(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	mica_http_server *srv = ((struct req_state *)req->impl)->srv;
	int status = 503, was;
	json_t *body;
	char *text;
	(void)ctx;

	pthread_mutex_lock(&srv->probe_mu);
	if (ready_cached(srv, resp)) { /* another request probed meanwhile */
		pthread_mutex_unlock(&srv->probe_mu);
		return;
	}
	body = probe_readiness(srv, &status);
	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!text) {
		pthread_mutex_unlock(&srv->probe_mu);
		mica_http_reply_error(resp, 500, "internal_error", "out of memory");
		return;
	}
	pthread_mutex_lock(&srv->ready_mu);
	was = srv->ready_body ? srv->ready_status : 200;
	free(srv->ready_body);
	srv->ready_body = strdup(text);
	srv->ready_status = status;
	srv->ready_at_ms = mica_clock_ms();
	pthread_mutex_unlock(&srv->ready_mu);
	pthread_mutex_unlock(&srv->probe_mu);
	if (status != was)
		MICA_LOG(status == 200 ? MICA_LOG_INFO : MICA_LOG_WARN, "http: %s is %s: %s",
			 srv->opt.service ? srv->opt.service : "mica",
			 status == 200 ? "ready again" : "not ready", text);
	mica_http_reply_raw(resp, status, "application/json", text, strlen(text));
}

static const char *slot_name(const mica_http_server *srv, size_t slot)
{
	if (slot < srv->nroutes)
		return srv->routes[slot].pattern;
	switch (slot - srv->nroutes) {
	case SLOT_HEALTHZ:
		return "/healthz";
	case SLOT_READYZ:
		return "/readyz";
	case SLOT_METRICS:
		return "/metrics";
	default:
		return "none"; /* answered before or without routing */
	}
}

static enum MHD_Result reply_not_allowed(struct MHD_Connection *conn, struct req_state *rs,
					 const char *allow, const char *method);

static enum MHD_Result serve_metrics(mica_http_server *srv, struct MHD_Connection *conn,
				     struct req_state *rs)
{
	mica_http_resp resp = {0};
	size_t cap = 4096, len = 0;
	char *out = malloc(cap);
	const char *svc = srv->opt.service ? srv->opt.service : "mica";

#define EMIT(...)                                                                                  \
	do {                                                                                       \
		int n_ = snprintf(out ? out + len : NULL, out ? cap - len : 0, __VA_ARGS__);       \
		if (out && n_ >= 0 && len + (size_t)n_ >= cap) {                                   \
			cap = (len + (size_t)n_ + 1) * 2;                                          \
			char *grown_ = realloc(out, cap);                                          \
			if (!grown_) {                                                             \
				free(out);                                                         \
				out = NULL;                                                        \
			} else {                                                                   \
				out = grown_;                                                      \
				n_ = snprintf(out + len, cap - len, __VA_ARGS__);                  \
			}                                                                          \
		}                                                                                  \
		if (out && n_ > 0)                                                                 \
			len += (size_t)n_;                                                         \
	} while (0)

	EMIT("# HELP mica_http_requests_total HTTP requests answered, by route and status.\n"
	     "# TYPE mica_http_requests_total counter\n");
	for (size_t s = 0; s < srv->nroutes + NBUILTIN; s++) {
		const char *method = s < srv->nroutes ? srv->routes[s].method : "any";
		for (size_t c = 0; c < NCODES; c++) {
			unsigned long v = atomic_load(&srv->counts[s * NCODES + c]);
			if (!v)
				continue;
			char code[8];
			if (metric_codes[c])
				snprintf(code, sizeof(code), "%d", metric_codes[c]);
			else
				snprintf(code, sizeof(code), "other");
			EMIT("mica_http_requests_total{service=\"%s\",route=\"%s\",method=\"%s\","
			     "code=\"%s\"} %lu\n",
			     svc, slot_name(srv, s), method, code, v);
		}
	}
	EMIT("# HELP mica_http_request_duration_seconds Time from first byte to response.\n"
	     "# TYPE mica_http_request_duration_seconds histogram\n");
	unsigned long cum = 0;
	for (size_t b = 0; b < NBUCKETS; b++) {
		cum += atomic_load(&srv->hist[b]);
		EMIT("mica_http_request_duration_seconds_bucket{service=\"%s\",le=\"%g\"} %lu\n",
		     svc, bucket_le[b], cum);
	}
	cum += atomic_load(&srv->hist[NBUCKETS]);
	EMIT("mica_http_request_duration_seconds_bucket{service=\"%s\",le=\"+Inf\"} %lu\n", svc,
	     cum);
	EMIT("mica_http_request_duration_seconds_sum{service=\"%s\"} %.6f\n", svc,
	     (double)atomic_load(&srv->dur_sum_us) / 1e6);
	EMIT("mica_http_request_duration_seconds_count{service=\"%s\"} %lu\n", svc,
	     atomic_load(&srv->dur_count));
	EMIT("# HELP mica_http_requests_in_flight Requests being handled now.\n"
	     "# TYPE mica_http_requests_in_flight gauge\n"
	     "mica_http_requests_in_flight{service=\"%s\"} %lu\n",
	     svc, atomic_load(&srv->inflight));
	EMIT("# HELP mica_http_moved_to_pool_total Requests an event thread handed to the blocking"
	     " pool (a cache miss).\n"
	     "# TYPE mica_http_moved_to_pool_total counter\n"
	     "mica_http_moved_to_pool_total{service=\"%s\"} %lu\n",
	     svc, atomic_load(&srv->moved));
	unsigned db_open, db_idle;
	mica_db_thread_connections(&db_open, &db_idle);
	EMIT("# HELP mica_db_connections PostgreSQL connections of the request threads: idle on"
	     " the shared stack, or busy (a statement, a transaction or a LISTEN).\n"
	     "# TYPE mica_db_connections gauge\n"
	     "mica_db_connections{service=\"%s\",state=\"idle\"} %u\n"
	     "mica_db_connections{service=\"%s\",state=\"busy\"} %u\n",
	     svc, db_idle, svc, db_open - db_idle);
	if (srv->opt.metrics) {
		char *extra = NULL;
		size_t extra_len = 0;
		FILE *f = open_memstream(&extra, &extra_len);
		if (f) {
			srv->opt.metrics(srv->ctx, f);
			fclose(f);
		}
		if (!f || !extra) {
			free(out);
			out = NULL;
		} else {
			EMIT("%s", extra);
		}
		free(extra);
	}
#undef EMIT
	if (!out)
		return send_error(conn, rs, 500, "internal_error", "out of memory");
	resp.status = 200;
	resp.body = out;
	resp.body_len = len;
	resp.content_type = "text/plain; version=0.0.4";
	return send_resp(conn, rs, &resp);
}

/* ---- routing ----------------------------------------------------------------- */

static int split_path(char *copy, const char *seg[MAX_SEGMENTS])
{
	int n = 0;
	char *save = NULL;
	for (char *t = strtok_r(copy, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
		if (n == MAX_SEGMENTS)
			return -1;
		seg[n++] = t;
	}
	return n;
}

static int compile_routes(mica_http_server *srv)
{
	srv->compiled = calloc(srv->nroutes ? srv->nroutes : 1, sizeof(*srv->compiled));
	if (!srv->compiled)
		return MICA_ENOMEM;
	for (size_t i = 0; i < srv->nroutes; i++) {
		struct compiled_route *cr = &srv->compiled[i];
		const mica_http_route *r = &srv->routes[i];
		int nparams = 0;
		if (!r->method || !r->pattern || r->pattern[0] != '/' || !r->fn)
			return MICA_EINVAL;
		if (!(cr->pattern_copy = strdup(r->pattern)))
			return MICA_ENOMEM;
		cr->nseg = split_path(cr->pattern_copy, cr->seg);
		if (cr->nseg < 0)
			return MICA_EINVAL;
		for (int s = 0; s < cr->nseg; s++) {
			size_t l = strlen(cr->seg[s]);
			if (cr->seg[s][0] == '{' && cr->seg[s][l - 1] == '}' && l > 2) {
				cr->pattern_copy[cr->seg[s] - cr->pattern_copy + l - 1] = '\0';
				cr->param[s] = cr->seg[s] + 1;
				cr->seg[s] = NULL;
				if (++nparams > MICA_HTTP_MAX_PARAMS)
					return MICA_EINVAL;
			}
		}
	}
	return 0;
}

static int route_matches(const struct compiled_route *cr, const char *seg[], int nseg)
{
	if (cr->nseg != nseg)
		return 0;
	for (int s = 0; s < nseg; s++)
		if (cr->seg[s] && strcmp(cr->seg[s], seg[s]) != 0)
			return 0;
	return 1;
}

static enum MHD_Result reply_not_allowed(struct MHD_Connection *conn, struct req_state *rs,
					 const char *allow, const char *method)
{
	mica_http_resp resp = {0};
	rs->code = "method_not_allowed";
	mica_http_reply_error(&resp, 405, "method_not_allowed",
			      "method %s is not allowed here; allowed: %s", method, allow);
	mica_http_add_header(&resp, "Allow", allow);
	return refuse(conn, rs, &resp);
}

/* After a handler returned: the reply goes out now (inline, not deferred or
 * already finished), after a resume (pool), or when mica_http_finish() comes
 * (the connection stays or becomes suspended). */
static enum MHD_Result handler_returned(mica_http_server *srv, struct req_state *rs, int inline_)
{
	int send_now = 0, resume = 0;
	json_decref(rs->req.json);
	rs->req.json = NULL;
	pthread_mutex_lock(&srv->defer_mu);
	rs->running = 0;
	if (!rs->deferred || rs->finished) {
		if (inline_) {
			send_now = 1;
		} else {
			rs->ready = 1;
			resume = 1;
		}
	} else if (inline_) {
		MHD_suspend_connection(rs->req.conn);
	}
	pthread_mutex_unlock(&srv->defer_mu);
	if (send_now)
		return send_resp(rs->req.conn, rs, &rs->resp);
	if (resume)
		MHD_resume_connection(rs->req.conn);
	return MHD_YES;
}

/* Set while this thread (an event thread) runs a handler inline: what
 * mica_http_run_blocking() may move. */
static __thread int in_event_handler;

int mica_http_run_blocking(const mica_http_req *req)
{
	struct req_state *rs = req->impl;
	if (!in_event_handler || rs->srv->npool == 0 || rs->deferred)
		return MICA_ESTATE;
	rs->rerun = 1;
	return 0;
}

mica_http_deferred *mica_http_defer(const mica_http_req *req)
{
	struct req_state *rs = req->impl;
	pthread_mutex_lock(&rs->srv->defer_mu);
	rs->deferred = 1;
	pthread_mutex_unlock(&rs->srv->defer_mu);
	return (mica_http_deferred *)rs;
}

void mica_http_finish(mica_http_deferred *d)
{
	struct req_state *rs = (struct req_state *)d;
	mica_http_server *srv = rs->srv;
	struct MHD_Connection *conn = NULL;
	pthread_mutex_lock(&srv->defer_mu);
	rs->finished = 1;
	if (!rs->running) {
		/* Suspended by handler_returned(); after the resume |rs| may be
		 * gone, so nothing of it is touched past the unlock. */
		rs->ready = 1;
		conn = rs->req.conn;
	}
	pthread_mutex_unlock(&srv->defer_mu);
	if (conn)
		MHD_resume_connection(conn);
}

static void *pool_main(void *arg)
{
	mica_http_server *srv = arg;
	pthread_mutex_lock(&srv->pool_mu);
	for (;;) {
		struct req_state *rs = srv->qhead;
		if (!rs) {
			if (srv->pool_stopping)
				break;
			pthread_cond_wait(&srv->pool_cv, &srv->pool_mu);
			continue;
		}
		if (!(srv->qhead = rs->next))
			srv->qtail = NULL;
		pthread_mutex_unlock(&srv->pool_mu);
		rs->fn(&rs->req, &rs->resp, srv->ctx);
		(void)handler_returned(srv, rs, 0);
		pthread_mutex_lock(&srv->pool_mu);
	}
	pthread_mutex_unlock(&srv->pool_mu);
	return NULL;
}

/* Suspends the connection and queues the handler for the blocking pool. */
static enum MHD_Result run_on_pool(mica_http_server *srv, struct req_state *rs)
{
	MHD_suspend_connection(rs->req.conn);
	pthread_mutex_lock(&srv->pool_mu);
	rs->next = NULL;
	if (srv->qtail)
		srv->qtail->next = rs;
	else
		srv->qhead = rs;
	srv->qtail = rs;
	pthread_cond_signal(&srv->pool_cv);
	pthread_mutex_unlock(&srv->pool_mu);
	return MHD_YES;
}

/* Whether |ct| (a Content-Type value, may be NULL) is application/json,
 * case-insensitively, alone or followed by parameters (";charset=utf-8").
 * "application/json-seq" and "application/jsonx" are other types. */
static int is_json_media_type(const char *ct)
{
	static const char type[] = "application/json";
	if (!ct || strncasecmp(ct, type, sizeof(type) - 1) != 0)
		return 0;
	ct += sizeof(type) - 1;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	return *ct == '\0' || *ct == ';';
}

/* Hands |req| to |fn|: on the blocking pool when |blocking|, else inline
 * on this event thread. */
static enum MHD_Result start_handler(mica_http_server *srv, struct MHD_Connection *conn,
				     struct req_state *rs, mica_http_req *req, mica_http_handler fn,
				     int blocking)
{
	pthread_mutex_lock(&srv->defer_mu);
	if (srv->stopping) {
		pthread_mutex_unlock(&srv->defer_mu);
		json_decref(req->json);
		return send_error(conn, rs, 503, "unavailable", "the server is shutting down");
	}
	srv->nactive++;
	pthread_mutex_unlock(&srv->defer_mu);
	rs->req = *req;
	rs->fn = fn;
	rs->dispatched = 1;
	rs->running = 1;
	if (blocking)
		return run_on_pool(srv, rs);
	in_event_handler = 1;
	fn(&rs->req, &rs->resp, srv->ctx);
	in_event_handler = 0;
	if (rs->rerun) {
		rs->rerun = 0;
		atomic_fetch_add(&srv->moved, 1);
		return run_on_pool(srv, rs);
	}
	return handler_returned(srv, rs, 1);
}

/* Enforces the route's body and peer requirements, then runs the handler. */
static enum MHD_Result run_route(mica_http_server *srv, struct MHD_Connection *conn,
				 struct req_state *rs, size_t i, mica_http_req *req)
{
	const mica_http_route *r = &srv->routes[i];

	if (r->flags & MICA_ROUTE_JSON) {
		const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							     MHD_HTTP_HEADER_CONTENT_TYPE);
		json_error_t jerr;
		/* A body without a Content-Type is not JSON by declaration: a
		 * form post a browser sends cross-site must not be read as JSON. */
		if ((ct || rs->len > 0) && !is_json_media_type(ct))
			return send_error(conn, rs, 415, "unsupported_media_type",
					  "Content-Type must be application/json");
		if (rs->len == 0)
			return send_error(conn, rs, 400, "missing_body",
					  "a JSON object body is required");
		req->json = json_loadb(rs->body, rs->len, JSON_REJECT_DUPLICATES, &jerr);
		if (!req->json)
			return send_error(conn, rs, 400, "malformed_json",
					  "invalid JSON at line %d column %d: %s", jerr.line,
					  jerr.column, jerr.text);
		if (!json_is_object(req->json)) {
			json_decref(req->json);
			return send_error(conn, rs, 400, "body_not_object",
					  "the JSON body must be an object");
		}
	}
	if ((r->flags & MICA_ROUTE_BLOCKING) && srv->npool == 0) {
		json_decref(req->json);
		return send_error(conn, rs, 500, "internal_error",
				  "this route needs blocking threads and the server has none");
	}
	return start_handler(srv, conn, rs, req, r->fn, (r->flags & MICA_ROUTE_BLOCKING) != 0);
}

/* GET /readyz: 200 without a probe, a fresh cached result at once, else the
 * probe on the blocking pool (inline on a server without one). */
static enum MHD_Result serve_readyz(mica_http_server *srv, struct MHD_Connection *conn,
				    struct req_state *rs, const char *url, const char *method)
{
	mica_http_resp resp = {0};
	mica_http_req req = {0};

	rs->slot = srv->nroutes + SLOT_READYZ;
	if (!srv->opt.ready) {
		mica_http_reply_json(&resp, 200, json_pack("{s:s}", "status", "ready"));
		return send_resp(conn, rs, &resp);
	}
	if (ready_cached(srv, &resp))
		return send_resp(conn, rs, &resp);
	req.method = method;
	req.path = url;
	req.route = "/readyz";
	req.client_ip = rs->ip;
	req.request_id = rs->rid;
	req.conn = conn;
	req.impl = rs;
	return start_handler(srv, conn, rs, &req, readyz_handler, srv->npool > 0);
}

/* The metrics listener: GET /metrics, /healthz and /readyz, nothing else. */
static enum MHD_Result dispatch_metrics(mica_http_server *srv, struct MHD_Connection *conn,
					struct req_state *rs, const char *url, const char *method,
					struct conn_state *cs)
{
	int known = strcmp(url, "/metrics") == 0 || strcmp(url, "/healthz") == 0 ||
		    strcmp(url, "/readyz") == 0;
	if (rs->lst->require_peer && (!cs || cs->cert != 1)) {
		if (cs && cs->cert == -1)
			return send_error(conn, rs, 403, "client_certificate_invalid",
					  "the client certificate is not trusted");
		return send_error(conn, rs, 401, "client_certificate_required",
				  "the metrics listener needs a client certificate");
	}
	if (!known)
		return send_error(
			conn, rs, 404, "not_found",
			"the metrics listener serves only /metrics, /healthz and /readyz");
	if (strcmp(method, "GET") != 0)
		return reply_not_allowed(conn, rs, "GET", method);
	if (strcmp(url, "/healthz") == 0) {
		rs->slot = srv->nroutes + SLOT_HEALTHZ;
		return serve_healthz(conn, rs);
	}
	if (strcmp(url, "/readyz") == 0)
		return serve_readyz(srv, conn, rs, url, method);
	rs->slot = srv->nroutes + SLOT_METRICS;
	return serve_metrics(srv, conn, rs);
}

static enum MHD_Result dispatch(mica_http_server *srv, struct MHD_Connection *conn,
				struct req_state *rs, const char *url, const char *method)
{
	char *copy;
	const char *seg[MAX_SEGMENTS];
	char allow[128] = "";
	int nseg;
	const union MHD_ConnectionInfo *ci;
	struct conn_state *cs;
	mica_http_req req = {0};

	rs->slot = srv->nroutes + SLOT_UNMATCHED;
	if (strlen(url) >= MAX_PATH)
		return send_error(conn, rs, 414, "uri_too_long", "the path is longer than %d bytes",
				  MAX_PATH - 1);
	ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	cs = ci ? ci->socket_context : NULL;
	if (cs && !cs->checked && rs->lst->ca_pem)
		check_peer(conn, cs);
	if (rs->lst->metrics)
		return dispatch_metrics(srv, conn, rs, url, method, cs);

	/* Probes need no client certificate, so load balancers can ask. */
	if (strcmp(url, "/healthz") == 0 && strcmp(method, "GET") == 0) {
		rs->slot = srv->nroutes + SLOT_HEALTHZ;
		return serve_healthz(conn, rs);
	}
	if (strcmp(url, "/readyz") == 0 && strcmp(method, "GET") == 0)
		return serve_readyz(srv, conn, rs, url, method);
	if (rs->lst->require_peer && (!cs || cs->cert != 1))
		goto peer_refused;

	if (!(copy = rs->path = strdup(url)))
		return send_error(conn, rs, 500, "internal_error", "out of memory");
	nseg = split_path(copy, seg);
	for (size_t i = 0; nseg >= 0 && i < srv->nroutes; i++) {
		const struct compiled_route *cr = &srv->compiled[i];
		if (!route_matches(cr, seg, nseg))
			continue;
		if (strcmp(srv->routes[i].method, method) != 0) {
			if (!strstr(allow, srv->routes[i].method) &&
			    strlen(allow) + strlen(srv->routes[i].method) + 3 < sizeof(allow)) {
				if (allow[0])
					strcat(allow, ", ");
				strcat(allow, srv->routes[i].method);
			}
			continue;
		}
		rs->slot = i;
		if ((srv->routes[i].flags & MICA_ROUTE_PEER) && (!cs || cs->cert != 1))
			goto peer_refused;
		req.method = method;
		req.path = url;
		req.route = srv->routes[i].pattern;
		for (int s = 0; s < nseg; s++) {
			if (cr->seg[s])
				continue;
			req.param_name[req.nparams] = cr->param[s];
			req.param_value[req.nparams++] = seg[s];
		}
		req.body = rs->body;
		req.body_len = rs->len;
		req.peer = cs && cs->cert == 1 ? cs->peer : NULL;
		req.client_ip = rs->ip;
		req.request_id = rs->rid;
		req.conn = conn;
		req.impl = rs;
		return run_route(srv, conn, rs, i, &req);
	}
	if (allow[0])
		return reply_not_allowed(conn, rs, allow, method);
	return send_error(conn, rs, 404, "not_found", "no route for %s", url);

peer_refused:
	if (cs && cs->cert == -1)
		return send_error(conn, rs, 403, "client_certificate_invalid",
				  "the client certificate is not trusted");
	return send_error(conn, rs, 401, "client_certificate_required",
			  "this endpoint needs a client certificate");
}

/* ---- libmicrohttpd callbacks ------------------------------------------------- */

static void client_ip(struct MHD_Connection *conn, char *out, size_t cap)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	out[0] = '\0';
	if (!ci || !ci->client_addr)
		return;
	if (ci->client_addr->sa_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)ci->client_addr)->sin_addr, out,
			  (socklen_t)cap);
	else if (ci->client_addr->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ci->client_addr)->sin6_addr, out,
			  (socklen_t)cap);
}

/* Writes a complete "413 body_too_large" response, with Connection: close,
 * straight onto the connection's TLS session while the client is still
 * uploading: libmicrohttpd 0.9.75 queues a response only before the body or
 * after all of it, and a body far over the limit must not be read to its end.
 * Safe because this runs on the connection's own thread between two of
 * libmicrohttpd's reads and nothing else is ever sent on the connection after
 * it. Returns 1 when the whole response was written, 0 when nothing was (no
 * TLS session), -1 when only part of it was: the connection must close. */
static int answer_too_large_now(struct MHD_Connection *conn, struct req_state *rs)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	char body[160], msg[512];
	size_t off = 0;
	int n, bl;

	if (!ci || !ci->tls_session)
		return 0;
	bl = snprintf(body, sizeof(body),
		      "{\"error\":{\"code\":\"body_too_large\",\"message\":\"the body exceeds the"
		      " limit of %zu bytes\"}}",
		      rs->srv->opt.max_body);
	n = snprintf(msg, sizeof(msg),
		     "HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
		     "X-Request-Id: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		     rs->rid, bl, body);
	if (bl < 0 || (size_t)bl >= sizeof(body) || n < 0 || (size_t)n >= sizeof(msg))
		return 0;
	/* The socket is non-blocking and this is an event thread, which must
	 * not wait: a send buffer too full for a few hundred bytes (nothing
	 * was sent on this connection yet, so only a client that stopped
	 * reading long ago) ends the attempt and the connection. */
	for (int tries = 0; off < (size_t)n && tries < 8; tries++) {
		ssize_t w = gnutls_record_send((gnutls_session_t)ci->tls_session, msg + off,
					       (size_t)n - off);
		if (w > 0)
			off += (size_t)w;
		else if (w != GNUTLS_E_AGAIN && w != GNUTLS_E_INTERRUPTED)
			break;
	}
	return off == (size_t)n ? 1 : -1;
}

static enum MHD_Result request_step(void *cls, struct MHD_Connection *conn, const char *url,
				    const char *method, const char *version,
				    const char *upload_data, size_t *upload_data_size,
				    void **con_cls)
{
	struct listener *lst = cls;
	mica_http_server *srv = lst->srv;
	struct req_state *rs = *con_cls;
	(void)version;

	if (!rs) {
		const char *cl;
		if (!(rs = calloc(1, sizeof(*rs))))
			return MHD_NO;
		*con_cls = rs;
		rs->srv = srv;
		rs->lst = lst;
		rs->method = method;
		rs->url = url;
		clock_gettime(CLOCK_MONOTONIC, &rs->start);
		new_request_id(rs->rid);
		client_ip(conn, rs->ip, sizeof(rs->ip));
		rs->slot = srv->nroutes + SLOT_UNMATCHED;
		atomic_fetch_add(&srv->inflight, 1);
		cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						 MHD_HTTP_HEADER_CONTENT_LENGTH);
		/* A length beyond int64 is over any limit; a malformed one is
		 * libmicrohttpd's to refuse. */
		int64_t cl_n = 0;
		int cl_err = cl ? mica_parse_int64(cl, 0, INT64_MAX, &cl_n) : MICA_EINVAL;
		if (cl_err == MICA_ERANGE || (cl_err == 0 && (uint64_t)cl_n > srv->opt.max_body)) {
			rs->too_large = 1;
			return send_error(conn, rs, 413, "body_too_large",
					  "the body exceeds the limit of %zu bytes",
					  srv->opt.max_body);
		}
		return MHD_YES;
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (!rs->too_large && rs->len + n > srv->opt.max_body) {
			/* A body without Content-Length (chunked) crossed the limit.
			 * The 413 goes out now, on the TLS session itself, and the
			 * rest is read and dropped for up to DISCARD_LIMIT bytes so
			 * the client reads the answer rather than a reset; past that
			 * the connection is closed. */
			rs->too_large = 1;
			mica_free_wipe(rs->body);
			rs->body = NULL;
			rs->cap = 0;
			int sent = answer_too_large_now(conn, rs);
			if (sent < 0)
				return MHD_NO;
			if (sent) {
				rs->answered_early = 1;
				rs->status = 413;
				rs->queued = 1; /* counted and logged as answered */
			}
		}
		if (rs->too_large) {
			rs->len += n;
			return rs->len > srv->opt.max_body + DISCARD_LIMIT ? MHD_NO : MHD_YES;
		}
		if (rs->len + n + 1 > rs->cap) {
			size_t cap = (rs->len + n + 1) * 2;
			if (cap > srv->opt.max_body + 1)
				cap = srv->opt.max_body + 1;
			char *grown = mica_realloc_wipe(rs->body, cap);
			if (!grown)
				return MHD_NO;
			rs->body = grown;
			rs->cap = cap;
		}
		memcpy(rs->body + rs->len, upload_data, n);
		rs->len += n;
		rs->body[rs->len] = '\0';
		return MHD_YES;
	}
	if (rs->answered_early) /* the 413 is out: nothing more on this connection */
		return MHD_NO;
	if (rs->queued)
		return MHD_YES;
	if (rs->dispatched) /* called again after a resume */
		return rs->ready ? send_resp(conn, rs, &rs->resp) : MHD_YES;
	if (rs->too_large)
		return send_error(conn, rs, 413, "body_too_large",
				  "the body exceeds the limit of %zu bytes", srv->opt.max_body);
	return dispatch(srv, conn, rs, url, method);
}

/* libmicrohttpd's request callback. It runs on an event thread, which it
 * marks as one for its duration (lib/thread.h), so whatever it calls, the
 * inline handlers and the on_refusal hook included, gets MICA_EWOULDBLOCK
 * from a blocking libmica call instead of stalling the thread's other
 * connections. Scoped rather than set for good because libmicrohttpd may
 * run callbacks on the thread that stops a daemon. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	bool was = mica_thread_is_event();
	enum MHD_Result ret;
	mica_thread_set_event(true);
	ret = request_step(cls, conn, url, method, version, upload_data, upload_data_size, con_cls);
	mica_thread_set_event(was);
	return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	mica_http_server *srv = ((struct listener *)cls)->srv;
	struct req_state *rs = *con_cls;
	struct timespec end;
	double secs;
	size_t b;
	(void)conn;

	if (!rs)
		return;
	clock_gettime(CLOCK_MONOTONIC, &end);
	secs = (double)(end.tv_sec - rs->start.tv_sec) +
	       (double)(end.tv_nsec - rs->start.tv_nsec) / 1e9;
	for (b = 0; b < NBUCKETS && secs > bucket_le[b]; b++)
		;
	atomic_fetch_add(&srv->hist[b], 1);
	atomic_fetch_add(&srv->dur_sum_us, (unsigned long)(secs * 1e6));
	atomic_fetch_add(&srv->dur_count, 1);
	atomic_fetch_sub(&srv->inflight, 1);
	if (rs->queued)
		atomic_fetch_add(&srv->counts[rs->slot * NCODES + code_index(rs->status)], 1);
	if (srv->opt.access_log && mica_log_min_level <= MICA_LOG_INFO) {
		char ip[64];
		mica_log_set_request_id(rs->rid);
		MICA_LOG_BUFFERED(MICA_LOG_INFO,
				  "access route=%s status=%d dur_ms=%.3f client=%s%s",
				  slot_name(srv, rs->slot), rs->queued ? rs->status : 0, secs * 1e3,
				  mica_mask_ip(ip, sizeof(ip), rs->ip),
				  toe == MHD_REQUEST_TERMINATED_COMPLETED_OK || rs->answered_early
					  ? ""
					  : " aborted=1");
		mica_log_set_request_id(NULL);
	}
	if (rs->dispatched) {
		pthread_mutex_lock(&srv->defer_mu);
		if (--srv->nactive == 0 && srv->stopping)
			pthread_cond_broadcast(&srv->defer_cv);
		pthread_mutex_unlock(&srv->defer_mu);
	}
	resp_cleanup(&rs->resp);
	free(rs->path);
	mica_free_wipe(rs->body);
	free(rs);
	*con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;
	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = '\0';
	MICA_LOG(MICA_LOG_INFO, "libmicrohttpd: %s", msg);
}

/* ---- lifecycle -------------------------------------------------------------- */

void mica_http_options_default(mica_http_options *opt)
{
	memset(opt, 0, sizeof(*opt));
	opt->service = "mica";
	opt->bind = "127.0.0.1";
	opt->max_body = 1 << 20;
	opt->timeout_s = 30;
	opt->threads = 0;
	opt->max_conns = 1024;
	opt->per_ip_conns = 64;
	opt->access_log = 1;
	opt->metrics_bind = "127.0.0.1";
}

/* Stops the blocking pool after it ran everything queued. */
static void pool_stop(mica_http_server *srv)
{
	pthread_mutex_lock(&srv->pool_mu);
	srv->pool_stopping = 1;
	pthread_cond_broadcast(&srv->pool_cv);
	pthread_mutex_unlock(&srv->pool_mu);
	for (int i = 0; i < srv->npool; i++)
		pthread_join(srv->pool[i], NULL);
	srv->npool = 0;
}

static int sync_init(mica_http_server *srv)
{
	if (pthread_mutex_init(&srv->pool_mu, NULL))
		return MICA_ENOMEM;
	if (pthread_mutex_init(&srv->defer_mu, NULL))
		goto no_defer_mu;
	if (pthread_cond_init(&srv->pool_cv, NULL))
		goto no_pool_cv;
	if (pthread_cond_init(&srv->defer_cv, NULL))
		goto no_defer_cv;
	if (pthread_mutex_init(&srv->probe_mu, NULL))
		goto no_probe_mu;
	if (pthread_mutex_init(&srv->ready_mu, NULL))
		goto no_ready_mu;
	srv->sync_ready = 1;
	return 0;
no_ready_mu:
	pthread_mutex_destroy(&srv->probe_mu);
no_probe_mu:
	pthread_cond_destroy(&srv->defer_cv);
no_defer_cv:
	pthread_cond_destroy(&srv->pool_cv);
no_pool_cv:
	pthread_mutex_destroy(&srv->defer_mu);
no_defer_mu:
	pthread_mutex_destroy(&srv->pool_mu);
	return MICA_ENOMEM;
}

/* Stops both listeners; their threads are gone when this returns. */
static void stop_daemons(mica_http_server *srv)
{
	if (srv->adm.daemon)
		MHD_stop_daemon(srv->adm.daemon);
	if (srv->pub.daemon)
		MHD_stop_daemon(srv->pub.daemon);
	srv->adm.daemon = srv->pub.daemon = NULL;
}

static void server_free(mica_http_server *srv)
{
	if (!srv)
		return;
	if (srv->sync_ready) {
		pool_stop(srv);
		pthread_mutex_destroy(&srv->ready_mu);
		pthread_mutex_destroy(&srv->probe_mu);
		pthread_cond_destroy(&srv->defer_cv);
		pthread_cond_destroy(&srv->pool_cv);
		pthread_mutex_destroy(&srv->defer_mu);
		pthread_mutex_destroy(&srv->pool_mu);
	}
	free(srv->pool);
	if (srv->compiled)
		for (size_t i = 0; i < srv->nroutes; i++)
			free(srv->compiled[i].pattern_copy);
	free(srv->compiled);
	free(srv->counts);
	free(srv->cert_pem);
	if (srv->key_pem) {
		mica_free_wipe(srv->key_pem);
	}
	free(srv->pub.ca_pem);
	free(srv->adm.ca_pem);
	free(srv->ready_body);
	free(srv);
}

static int parse_bind(const char *bind, int port, struct sockaddr_storage *ss, int *v6)
{
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	memset(ss, 0, sizeof(*ss));
	if (port < 0 || port > 65535)
		return MICA_EINVAL;
	if (inet_pton(AF_INET, bind, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)port);
		*v6 = 0;
		return 0;
	}
	if (inet_pton(AF_INET6, bind, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)port);
		*v6 = 1;
		return 0;
	}
	return MICA_EINVAL;
}

static int is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
	return ss->ss_family == AF_INET6 &&
	       IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* Starts one listener's libmicrohttpd daemon on |ss| (already parsed). */
static int listener_start(mica_http_server *srv, struct listener *l,
			  const struct sockaddr_storage *ss, int v6, unsigned int threads,
			  unsigned int max_conns, unsigned int per_ip, const char *bind)
{
	const mica_http_options *opt = &srv->opt;
	const union MHD_DaemonInfo *di;
	unsigned int flags = MHD_USE_TLS | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0) |
			     MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME;
	/* Settings given only when used, as an END-terminated option array. */
	struct MHD_OptionItem optional[3];
	int nopt = 0;

	l->srv = srv;
	if (l->ca_pem)
		optional[nopt++] =
			(struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_TRUST, 0, l->ca_pem};
	if (threads > 1)
		optional[nopt++] =
			(struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, threads, NULL};
	optional[nopt] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
	/* One option and its arguments per line. */
	/* clang-format off */
	l->daemon = MHD_start_daemon(
		flags, 0, NULL, NULL, on_request, l,
		MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, srv,
		MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)ss,
		MHD_OPTION_HTTPS_MEM_CERT, srv->cert_pem,
		MHD_OPTION_HTTPS_MEM_KEY, srv->key_pem,
		MHD_OPTION_HTTPS_PRIORITIES, TLS_PRIORITIES,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)opt->timeout_s,
		MHD_OPTION_CONNECTION_LIMIT, max_conns,
		MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, l,
		MHD_OPTION_NOTIFY_CONNECTION, on_connection, l,
		MHD_OPTION_ARRAY, optional,
		MHD_OPTION_END);
	/* clang-format on */
	if (!l->daemon) {
		MICA_LOG(MICA_LOG_ERROR, "http: cannot listen on %s port %d", bind,
			 ntohs(ss->ss_family == AF_INET
				       ? ((const struct sockaddr_in *)ss)->sin_port
				       : ((const struct sockaddr_in6 *)ss)->sin6_port));
		return MICA_EIO;
	}
	di = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_BIND_PORT);
	l->port = di ? di->port : 0;
	MICA_LOG(MICA_LOG_INFO, "http: %s %s on https://%s:%d (mTLS %s)",
		 opt->service ? opt->service : "mica",
		 l->metrics ? "metrics listening" : "listening", bind, l->port,
		 l->require_peer ? "required"
		 : l->ca_pem	 ? "optional"
				 : "off");
	return 0;
}

/* Reads the metrics listener's settings: *on 0 when there is none. */
static int metrics_setup(mica_http_server *srv, struct sockaddr_storage *ss, int *v6, int *on)
{
	const mica_http_options *opt = &srv->opt;
	const char *ca = opt->metrics_client_ca_file;
	*on = opt->metrics_bind && *opt->metrics_bind;
	if (!*on)
		return 0;
	if (parse_bind(opt->metrics_bind, opt->metrics_port, ss, v6) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "http: metrics_bind %s / metrics_port %d: not an address",
			 opt->metrics_bind, opt->metrics_port);
		return MICA_EINVAL;
	}
	if (ca && *ca && !(srv->adm.ca_pem = read_file(ca))) {
		MICA_LOG(MICA_LOG_ERROR, "http: cannot read metrics_client_ca_file %s", ca);
		return MICA_ETLS;
	}
	if (!srv->adm.ca_pem && !is_loopback(ss)) {
		MICA_LOG(MICA_LOG_ERROR,
			 "http: metrics_bind %s is not a loopback address, so"
			 " metrics_client_ca_file is required (mutual TLS)",
			 opt->metrics_bind);
		return MICA_EINVAL;
	}
	srv->adm.metrics = 1;
	srv->adm.require_peer = srv->adm.ca_pem != NULL;
	return 0;
}

int mica_http_start(mica_http_server **out, const mica_http_options *opt,
		    const mica_http_route *routes, size_t nroutes, void *ctx)
{
	mica_http_server *srv = NULL;
	struct sockaddr_storage ss, mss;
	int v6 = 0, mv6 = 0, metrics_on = 0, err;

	*out = NULL;
	if (!opt || !opt->cert_file || !opt->key_file || !opt->bind || opt->max_body == 0)
		return MICA_EINVAL;
	if (parse_bind(opt->bind, opt->port, &ss, &v6) != 0)
		return MICA_EINVAL;
	if (!(srv = calloc(1, sizeof(*srv))))
		return MICA_ENOMEM;
	srv->opt = *opt;
	srv->routes = routes;
	srv->nroutes = nroutes;
	srv->ctx = ctx;
	if ((err = compile_routes(srv)) != 0 || (err = sync_init(srv)) != 0)
		goto fail;
	if (opt->blocking_threads < 0 || opt->blocking_threads > 4096) {
		err = MICA_EINVAL;
		goto fail;
	}
	err = MICA_ENOMEM;
	if (!(srv->counts = calloc((nroutes + NBUILTIN) * NCODES, sizeof(*srv->counts))))
		goto fail;
	err = MICA_ETLS;
	srv->cert_pem = read_file(opt->cert_file);
	srv->key_pem = read_file(opt->key_file);
	if (!srv->cert_pem || !srv->key_pem) {
		MICA_LOG(MICA_LOG_ERROR, "http: cannot read certificate %s or its key",
			 opt->cert_file);
		goto fail;
	}
	if (opt->client_ca_file && *opt->client_ca_file &&
	    !(srv->pub.ca_pem = read_file(opt->client_ca_file))) {
		MICA_LOG(MICA_LOG_ERROR, "http: cannot read client CA %s", opt->client_ca_file);
		goto fail;
	}
	if (opt->require_client_cert && !srv->pub.ca_pem) {
		err = MICA_EINVAL;
		goto fail;
	}
	srv->pub.require_peer = opt->require_client_cert;
	if ((err = metrics_setup(srv, &mss, &mv6, &metrics_on)) != 0)
		goto fail;

	if (opt->blocking_threads > 0) {
		err = MICA_ENOMEM;
		if (!(srv->pool = calloc((size_t)opt->blocking_threads, sizeof(*srv->pool))))
			goto fail;
		for (; srv->npool < opt->blocking_threads; srv->npool++)
			if (pthread_create(&srv->pool[srv->npool], NULL, pool_main, srv))
				goto fail;
	}

	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned int threads = opt->threads > 0 ? (unsigned)opt->threads
			       : ncpu > 0	? (unsigned)ncpu
						: 1;
	if ((err = listener_start(srv, &srv->pub, &ss, v6, threads, (unsigned)opt->max_conns,
				  (unsigned)opt->per_ip_conns, opt->bind)) != 0 ||
	    (metrics_on && (err = listener_start(srv, &srv->adm, &mss, mv6, METRICS_THREADS,
						 METRICS_MAX_CONNS, 0, opt->metrics_bind)) != 0))
		goto fail;
	*out = srv;
	return 0;
fail:
	if (srv->pub.daemon || srv->adm.daemon)
		stop_daemons(srv);
	server_free(srv);
	return err;
}

int mica_http_port(const mica_http_server *srv)
{
	return srv->pub.port;
}

int mica_http_metrics_port(const mica_http_server *srv)
{
	return srv->adm.daemon ? srv->adm.port : 0;
}

int mica_http_param_int64(const mica_http_req *req, const char *name, int64_t min, int64_t max,
			  int64_t *out)
{
	const char *v = mica_http_param(req, name);
	return v ? mica_parse_int64(v, min, max, out) : MICA_EINVAL;
}

int mica_http_query_int64(const mica_http_req *req, const char *name, int64_t min, int64_t max,
			  int64_t def, int64_t *out)
{
	const char *v = mica_http_query(req, name);
	if (!v) {
		*out = def;
		return 0;
	}
	return mica_parse_int64(v, min, max, out);
}

void mica_http_stop(mica_http_server *srv)
{
	if (!srv)
		return;
	/* New requests are refused from here on; the ones given to a handler
	 * get their reply (libmicrohttpd must not be stopped with a connection
	 * still suspended). */
	pthread_mutex_lock(&srv->defer_mu);
	srv->stopping = 1;
	while (srv->nactive > 0)
		pthread_cond_wait(&srv->defer_cv, &srv->defer_mu);
	pthread_mutex_unlock(&srv->defer_mu);
	stop_daemons(srv);
	server_free(srv);
}
