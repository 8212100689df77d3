/* test_http.c - libmica http server and httpc client against each other
 * over real TLS on loopback, with the test CA from tests/run: routing,
 * JSON errors, body limits, mTLS principals, timeouts, retries, metrics,
 * blocking handlers on their pool and deferred replies. */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crypto.h"
#include "db.h"
#include "http.h"
#include "httpc.h"
#include "tests/check_main.h"
#include "thread.h"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	ck_assert_msg(v && *v, "environment variable %s is not set (run through tests/run)", name);
	return v;
}

static atomic_int flaky_calls;
/* The readiness probe's failures, and what it saw of its calls. */
static int probe_db_err, probe_audit_err;
static atomic_int probe_calls, probe_could_block;

static void hello(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)req, (void)ctx;
	mica_http_reply_json(resp, 200, json_pack("{s:s}", "hello", "world"));
}

static void echo(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	mica_http_reply_json(resp, 200, json_incref(req->json));
}

static void whoami(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	mica_http_reply_json(resp, 200, json_pack("{s:s}", "principal", req->peer));
}

static void item(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	mica_http_reply_json(resp, 200,
			     json_pack("{s:s,s:s}", "a", mica_http_param(req, "a"), "b",
				       mica_http_param(req, "b")));
}

static void flaky(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)req, (void)ctx;
	if (atomic_fetch_add(&flaky_calls, 1) < 2)
		mica_http_reply_error(resp, 503, "unavailable", "try again");
	else
		mica_http_reply_json(resp, 200,
				     json_pack("{s:i}", "calls", atomic_load(&flaky_calls)));
}

static void slow(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)req, (void)ctx;
	struct timespec ts = {1, 500000000};
	nanosleep(&ts, NULL);
	mica_http_reply_json(resp, 200, NULL);
}

static void silent(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)req, (void)resp, (void)ctx;
}

/* A gate the blocking and deferring handlers below stop at until the test
 * opens it, so a test can act while a handler is provably in progress. */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open, gate_arrived;
static mica_http_deferred *parked;
static mica_http_resp *parked_resp;

static void gate_reset(void)
{
	pthread_mutex_lock(&gate_mu);
	gate_open = gate_arrived = 0;
	parked = NULL;
	parked_resp = NULL;
	pthread_mutex_unlock(&gate_mu);
}

/* Waits until a handler arrived at the gate. */
static void gate_await_arrival(void)
{
	pthread_mutex_lock(&gate_mu);
	while (!gate_arrived)
		pthread_cond_wait(&gate_cv, &gate_mu);
	pthread_mutex_unlock(&gate_mu);
}

static void gate_release(void)
{
	pthread_mutex_lock(&gate_mu);
	gate_open = 1;
	pthread_cond_broadcast(&gate_cv);
	pthread_mutex_unlock(&gate_mu);
}

/* A blocking handler: holds its thread until the gate opens. */
static void blocked(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)req, (void)ctx;
	pthread_mutex_lock(&gate_mu);
	gate_arrived = 1;
	pthread_cond_broadcast(&gate_cv);
	while (!gate_open)
		pthread_cond_wait(&gate_cv, &gate_mu);
	pthread_mutex_unlock(&gate_mu);
	mica_http_reply_json(resp, 200, json_pack("{s:b}", "blocked", 1));
}

/* Defers its reply and parks it for the test to finish. */
static void deferring(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	mica_http_reply_error(resp, 500, "internal_error", "the finisher replaces this");
	pthread_mutex_lock(&gate_mu);
	parked = mica_http_defer(req);
	parked_resp = resp;
	gate_arrived = 1;
	pthread_cond_broadcast(&gate_cv);
	pthread_mutex_unlock(&gate_mu);
}

/* What a finisher on another thread does with a parked reply. */
static void finish_parked(void)
{
	pthread_mutex_lock(&gate_mu);
	mica_http_reply_json(parked_resp, 202, json_pack("{s:b}", "finished", 1));
	mica_http_finish(parked);
	parked = NULL;
	pthread_mutex_unlock(&gate_mu);
}

/* Defers and finishes before returning. */
static void defer_now(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	mica_http_deferred *d = mica_http_defer(req);
	mica_http_reply_json(resp, 200, json_pack("{s:b}", "now", 1));
	mica_http_finish(d);
}

/* On an event thread it moves itself to the blocking pool, and answers
 * there with what a second move returns (refused: it may block already).
 * Without a pool it answers 503. |moves_calls| counts the runs. */
static atomic_int moves_calls;

static void moves(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	atomic_fetch_add(&moves_calls, 1);
	if (!mica_thread_may_block()) {
		if (mica_http_run_blocking(req) != 0)
			mica_http_reply_error(resp, 503, "unavailable",
					      "no blocking pool to move to");
		return;
	}
	mica_http_reply_json(
		resp, 200,
		json_pack("{s:b,s:i}", "on_pool", 1, "again", mica_http_run_blocking(req)));
}

/* An on_refusal hook: refusals of paths under /v1/park are parked for the
 * test to end, /v1/unrecorded ones fail to be recorded, others are recorded
 * at once. |refusals| counts the calls. */
static atomic_int refusals;
static int refusal_status;

static void on_refusal(void *ctx, const char *method, const char *path, const char *peer,
		       const char *client_ip, int status, const char *code,
		       mica_http_deferred *done)
{
	(void)ctx, (void)method, (void)peer, (void)client_ip, (void)code;
	atomic_fetch_add(&refusals, 1);
	if (strncmp(path, "/v1/park", 8) == 0) {
		pthread_mutex_lock(&gate_mu);
		parked = done;
		refusal_status = status;
		gate_arrived = 1;
		pthread_cond_broadcast(&gate_cv);
		pthread_mutex_unlock(&gate_mu);
		return;
	}
	mica_http_refusal_done(done, strcmp(path, "/v1/unrecorded") != 0);
}

static int use_refusal_hook;

static void probe(void *ctx, mica_http_readiness *r)
{
	(void)ctx;
	atomic_fetch_add(&probe_calls, 1);
	atomic_store(&probe_could_block, mica_thread_may_block());
	if (probe_db_err)
		mica_http_not_ready(r, "database", probe_db_err);
	if (probe_audit_err)
		mica_http_not_ready(r, "audit", probe_audit_err);
}

/* ---- secrets wiped on the way through ---------------------------------- */

#define REQ_SECRET "hunter2-request-secret-7f3a"
#define RESP_SECRET "session-token-9b1c-response-secret"
#define MAX_WATCH 8

/* Blocks the test knows held a secret: identified by their contents when
 * mica_free_wipe() is about to wipe them, then checked for zeros just
 * before free(). A block freed any other way is never identified. */
static struct watch {
	const void *p;
	const char *marker;
	int identified, zero_at_free;
} watched[MAX_WATCH];
static int nwatched;
static pthread_mutex_t watch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cv = PTHREAD_COND_INITIALIZER;

static void watch(const void *p, const char *marker)
{
	pthread_mutex_lock(&watch_mu);
	ck_assert_int_lt(nwatched, MAX_WATCH);
	watched[nwatched++] = (struct watch){.p = p, .marker = marker};
	pthread_mutex_unlock(&watch_mu);
}

static void free_hook(const void *p, size_t n, int wiped)
{
	pthread_mutex_lock(&watch_mu);
	for (int i = 0; i < nwatched; i++) {
		struct watch *w = &watched[i];
		if (w->p != p || w->zero_at_free)
			continue;
		if (!wiped) {
			w->identified = memmem(p, n, w->marker, strlen(w->marker)) != NULL;
		} else if (w->identified) {
			size_t z = 0;
			while (z < n && ((const unsigned char *)p)[z] == 0)
				z++;
			w->zero_at_free = z == n ? 1 : -1;
			pthread_cond_broadcast(&watch_cv);
		}
	}
	pthread_mutex_unlock(&watch_mu);
}

/* What /v1/secret saw of the thread it ran on. */
static atomic_int secret_on_event, secret_httpc_err, secret_db_err;

/* Takes {"password": REQ_SECRET} and answers {"token": RESP_SECRET}; puts
 * the request body, the parsed password string and the reply body on the
 * watch list; tries two blocking calls. */
static void secret(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	mica_httpc_options o = {.ca_file = "/nonexistent"};
	mica_httpc *h = NULL;
	mica_httpc_resp r;
	(void)ctx;
	atomic_store(&secret_on_event, mica_thread_is_event());
	if (mica_httpc_new(&h, &o) == 0) {
		atomic_store(&secret_httpc_err,
			     mica_httpc_request(h, "GET", "https://127.0.0.1:1/", NULL, 0, 0, &r));
		mica_httpc_resp_cleanup(&r);
		mica_httpc_free(h);
	}
	atomic_store(&secret_db_err, mica_db_exec(NULL, "SELECT 1", 0, NULL, NULL));
	watch(req->body, REQ_SECRET);
	watch(json_string_value(json_object_get(req->json, "password")), REQ_SECRET);
	char *body = strdup("{\"token\":\"" RESP_SECRET "\"}");
	mica_http_reply_raw(resp, 200, "application/json", body, body ? strlen(body) : 0);
	watch(resp->body, RESP_SECRET);
}

static const mica_http_route routes[] = {
	{"POST", "/v1/secret", secret, MICA_ROUTE_JSON},
	{"POST", "/v1/secret-pool", secret, MICA_ROUTE_JSON | MICA_ROUTE_BLOCKING},
	{"GET", "/v1/hello", hello, 0},
	{"POST", "/v1/echo", echo, MICA_ROUTE_JSON},
	{"GET", "/v1/whoami", whoami, MICA_ROUTE_PEER},
	{"GET", "/v1/items/{a}/sub/{b}", item, 0},
	{"DELETE", "/v1/items/{a}/sub/{b}", item, 0},
	{"GET", "/v1/flaky", flaky, 0},
	{"POST", "/v1/flaky", flaky, 0},
	{"GET", "/v1/slow", slow, 0},
	{"GET", "/v1/silent", silent, 0},
	{"GET", "/v1/blocked", blocked, MICA_ROUTE_BLOCKING},
	{"GET", "/v1/deferred", deferring, 0},
	{"GET", "/v1/deferred-blocking", deferring, MICA_ROUTE_BLOCKING},
	{"GET", "/v1/defer-now", defer_now, 0},
	{"GET", "/v1/defer-now-blocking", defer_now, MICA_ROUTE_BLOCKING},
	{"GET", "/v1/moves", moves, 0},
};
#define NROUTES (sizeof(routes) / sizeof(routes[0]))

static mica_http_server *srv;
static char base[64], metrics_base[64];
/* The metrics listener of the servers start_with() makes. */
static const char *metrics_bind = "127.0.0.1";
static const char *metrics_ca;

static mica_http_server *start_with(int require_peer, int timeout_s, int threads,
				    int blocking_threads)
{
	mica_http_options o;
	mica_http_server *s = NULL;
	mica_http_options_default(&o);
	o.service = "test";
	o.cert_file = env("MICA_CERT_SERVER");
	o.key_file = env("MICA_KEY_SERVER");
	o.client_ca_file = env("MICA_CA");
	o.require_client_cert = require_peer;
	o.max_body = 1024;
	o.timeout_s = timeout_s;
	o.access_log = 0;
	o.ready = probe;
	o.metrics_bind = metrics_bind;
	o.metrics_client_ca_file = metrics_ca;
	o.threads = threads;
	o.blocking_threads = blocking_threads;
	o.on_refusal = use_refusal_hook ? on_refusal : NULL;
	ck_assert_int_eq(mica_http_start(&s, &o, routes, NROUTES, NULL), 0);
	snprintf(base, sizeof(base), "https://localhost:%d", mica_http_port(s));
	snprintf(metrics_base, sizeof(metrics_base), "https://localhost:%d",
		 mica_http_metrics_port(s));
	return s;
}

static mica_http_server *start(int require_peer, int timeout_s)
{
	return start_with(require_peer, timeout_s, 0, 2);
}

static void setup(void)
{
	srv = start(0, 2);
}

static void teardown(void)
{
	mica_http_stop(srv);
	srv = NULL;
	metrics_bind = "127.0.0.1";
	metrics_ca = NULL;
	probe_db_err = probe_audit_err = 0;
}

static mica_httpc *client(const char *principal)
{
	mica_httpc_options o = {.ca_file = env("MICA_CA"), .retries = 2, .backoff_ms = 5};
	mica_httpc *c = NULL;
	char cert[64], key[64];
	if (principal) {
		snprintf(cert, sizeof(cert), "MICA_CERT_%s", principal);
		snprintf(key, sizeof(key), "MICA_KEY_%s", principal);
		o.cert_file = env(cert);
		o.key_file = env(key);
	}
	ck_assert_int_eq(mica_httpc_new(&c, &o), 0);
	return c;
}

/* Performs a request and returns the JSON reply; asserts the status. */
static json_t *call(mica_httpc *c, const char *method, const char *path, const char *body,
		    long want_status)
{
	char url[256];
	mica_httpc_resp r;
	snprintf(url, sizeof(url), "%s%s", base, path);
	ck_assert_int_eq(mica_httpc_request(c, method, url, body, body ? strlen(body) : 0, 0, &r),
			 0);
	ck_assert_msg(r.status == want_status, "%s %s: status %ld, want %ld (%s)", method, path,
		      r.status, want_status, r.body);
	json_t *j = json_loads(r.body, 0, NULL);
	ck_assert_msg(j != NULL, "reply is not JSON: %s", r.body);
	mica_httpc_resp_cleanup(&r);
	return j;
}

static void assert_error(json_t *j, const char *code)
{
	const char *got = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
	ck_assert_msg(got && strcmp(got, code) == 0, "error code %s, want %s", got ? got : "(none)",
		      code);
	ck_assert(json_is_string(json_object_get(json_object_get(j, "error"), "message")));
	json_decref(j);
}

START_TEST(routes_params_and_errors)
{
	mica_httpc *c = client(NULL);
	json_t *j = call(c, "GET", "/v1/hello", NULL, 200);
	ck_assert_str_eq(json_string_value(json_object_get(j, "hello")), "world");
	json_decref(j);
	j = call(c, "GET", "/v1/items/x1/sub/y2", NULL, 200);
	ck_assert_str_eq(json_string_value(json_object_get(j, "a")), "x1");
	ck_assert_str_eq(json_string_value(json_object_get(j, "b")), "y2");
	json_decref(j);
	assert_error(call(c, "GET", "/v1/nothing", NULL, 404), "not_found");
	assert_error(call(c, "GET", "/v1/items/x1/sub", NULL, 404), "not_found");
	j = call(c, "PUT", "/v1/items/x1/sub/y2", NULL, 405);
	ck_assert_ptr_nonnull(
		strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")),
		       "GET, DELETE"));
	assert_error(j, "method_not_allowed");
	assert_error(call(c, "GET", "/v1/silent", NULL, 500), "internal_error");
	mica_httpc_free(c);
}
END_TEST

START_TEST(json_bodies)
{
	mica_httpc *c = client(NULL);
	json_t *j = call(c, "POST", "/v1/echo", "{\"k\":[1,2]}", 200);
	ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(j, "k"), 1)), 2);
	json_decref(j);
	j = call(c, "POST", "/v1/echo", "{\"k\":", 400);
	ck_assert_ptr_nonnull(
		strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")),
		       "line 1 column"));
	assert_error(j, "malformed_json");
	assert_error(call(c, "POST", "/v1/echo", "{\"k\":1,\"k\":2}", 400), "malformed_json");
	assert_error(call(c, "POST", "/v1/echo", "[1]", 400), "body_not_object");
	assert_error(call(c, "POST", "/v1/echo", NULL, 400), "missing_body");
	char big[2000];
	memset(big, ' ', sizeof(big) - 1);
	big[0] = '{';
	big[sizeof(big) - 2] = '}';
	big[sizeof(big) - 1] = '\0';
	assert_error(call(c, "POST", "/v1/echo", big, 413), "body_too_large");
	/* The connection stays usable for the next request. */
	json_decref(call(c, "GET", "/v1/hello", NULL, 200));
	mica_httpc_free(c);
}
END_TEST

START_TEST(mtls_principal)
{
	mica_httpc *c = client("TEST");
	json_t *j = call(c, "GET", "/v1/whoami", NULL, 200);
	ck_assert_str_eq(json_string_value(json_object_get(j, "principal")), "test");
	json_decref(j);
	mica_httpc_free(c);

	c = client(NULL);
	assert_error(call(c, "GET", "/v1/whoami", NULL, 401), "client_certificate_required");
	mica_httpc_free(c);

	c = client("ROGUE");
	assert_error(call(c, "GET", "/v1/whoami", NULL, 403), "client_certificate_invalid");
	mica_httpc_free(c);
}
END_TEST

START_TEST(mtls_required_mode)
{
	mica_http_server *strict = start(1, 5);
	mica_httpc *anon = client(NULL), *svc = client("ADMIN");
	json_decref(call(anon, "GET", "/healthz", NULL, 200));
	assert_error(call(anon, "GET", "/v1/hello", NULL, 401), "client_certificate_required");
	json_decref(call(anon, "GET", "/readyz", NULL, 200));
	assert_error(call(anon, "GET", "/metrics", NULL, 401), "client_certificate_required");
	assert_error(call(anon, "GET", "/v1/nothing", NULL, 401), "client_certificate_required");
	json_decref(call(svc, "GET", "/v1/hello", NULL, 200));
	/* Not even a trusted client reads metrics on the public listener. */
	assert_error(call(svc, "GET", "/metrics", NULL, 404), "not_found");
	mica_httpc_free(anon);
	mica_httpc_free(svc);
	mica_http_stop(strict);
}
END_TEST

START_TEST(untrusted_server_fails)
{
	mica_httpc_options o = {.ca_file = env("MICA_CA_ROGUE")};
	mica_httpc *c = NULL;
	mica_httpc_resp r;
	char url[128];
	ck_assert_int_eq(mica_httpc_new(&c, &o), 0);
	snprintf(url, sizeof(url), "%s/v1/hello", base);
	ck_assert_int_eq(mica_httpc_request(c, "GET", url, NULL, 0, 1, &r), MICA_ETLS);
	ck_assert_int_eq(r.attempts, 1);
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(c);
	ck_assert_int_eq(mica_httpc_new(&c, &(mica_httpc_options){0}), MICA_EINVAL);
}
END_TEST

/* A public_only client (webhooks) refuses this server, which is on
 * loopback, before connecting, and does not retry. */
START_TEST(public_only_refuses_internal_hosts)
{
	mica_httpc_options o = {.ca_file = env("MICA_CA"), .retries = 2, .public_only = true};
	mica_httpc *c = NULL;
	mica_httpc_resp r;
	char url[128];
	ck_assert_int_eq(mica_httpc_new(&c, &o), 0);
	snprintf(url, sizeof(url), "%s/v1/hello", base);
	ck_assert_int_eq(mica_httpc_request(c, "GET", url, NULL, 0, 1, &r), MICA_EDENIED);
	ck_assert_int_eq(r.attempts, 1);
	ck_assert_int_eq(r.status, 0);
	mica_httpc_resp_cleanup(&r);
	ck_assert_int_eq(mica_httpc_request(c, "GET", "https://[::1]:1/x", NULL, 0, 1, &r),
			 MICA_EDENIED);
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(c);
}
END_TEST

START_TEST(public_addresses)
{
	static const struct {
		const char *addr;
		bool pub;
	} cases[] = {
		{"8.8.8.8", true},
		{"1.1.1.1", true},
		{"100.63.255.255", true},
		{"172.32.0.1", true},
		{"192.169.0.1", true},
		{"2a00:1450:4001:80b::200e", true},
		{"2606:4700::1111", true},
		{"::ffff:8.8.8.8", true},
		{"0.0.0.0", false},
		{"10.1.2.3", false},
		{"100.64.0.1", false},
		{"127.0.0.1", false},
		{"127.255.255.254", false},
		{"169.254.169.254", false}, /* cloud metadata */
		{"172.16.0.1", false},
		{"172.31.255.255", false},
		{"192.0.2.1", false},
		{"192.168.1.1", false},
		{"198.18.0.1", false},
		{"224.0.0.1", false},
		{"255.255.255.255", false},
		{"::", false},
		{"::1", false},
		{"::ffff:127.0.0.1", false},
		{"::ffff:169.254.169.254", false},
		{"64:ff9b::10.0.0.1", false},
		{"2002:c0a8:0101::1", false}, /* 6to4 of 192.168.1.1 */
		{"fc00::1", false},
		{"fd12:3456::1", false},
		{"fe80::1", false},
		{"fec0::1", false},
		{"ff02::1", false},
		{"2001:db8::1", false},
		{"2001:0:4136:e378::1", false}, /* Teredo */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sockaddr_storage ss = {0};
		if (strchr(cases[i].addr, ':')) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
			s6->sin6_family = AF_INET6;
			ck_assert_int_eq(inet_pton(AF_INET6, cases[i].addr, &s6->sin6_addr), 1);
		} else {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
			s4->sin_family = AF_INET;
			ck_assert_int_eq(inet_pton(AF_INET, cases[i].addr, &s4->sin_addr), 1);
		}
		ck_assert_msg(mica_addr_public((struct sockaddr *)&ss) == cases[i].pub,
			      "%s: public should be %d", cases[i].addr, cases[i].pub);
	}
	struct sockaddr un = {.sa_family = AF_UNIX};
	ck_assert(!mica_addr_public(&un));
	ck_assert(!mica_addr_public(NULL));
}
END_TEST

START_TEST(retries_only_idempotent)
{
	mica_httpc *c = client(NULL);
	mica_httpc_resp r;
	char url[128];
	snprintf(url, sizeof(url), "%s/v1/flaky", base);
	atomic_store(&flaky_calls, 0);
	ck_assert_int_eq(mica_httpc_request(c, "POST", url, "{}", 2, 0, &r), 0);
	ck_assert_int_eq(r.status, 503);
	ck_assert_int_eq(r.attempts, 1);
	mica_httpc_resp_cleanup(&r);
	ck_assert_int_eq(mica_httpc_request(c, "GET", url, NULL, 0, 1, &r), 0);
	ck_assert_int_eq(r.status, 200);
	ck_assert_int_eq(r.attempts, 2);
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(c);
}
END_TEST

START_TEST(client_timeout)
{
	mica_httpc_options o = {.ca_file = env("MICA_CA"), .timeout_ms = 300};
	mica_httpc *c = NULL;
	mica_httpc_resp r;
	char url[128];
	ck_assert_int_eq(mica_httpc_new(&c, &o), 0);
	snprintf(url, sizeof(url), "%s/v1/slow", base);
	ck_assert_int_eq(mica_httpc_request(c, "GET", url, NULL, 0, 0, &r), MICA_ETIMEOUT);
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(c);
}
END_TEST

/* A client that connects and then sends nothing (or stalls mid-header) is
 * disconnected once the 2-second idle timeout passes. */
START_TEST(idle_and_slow_clients_time_out)
{
	for (int partial = 0; partial < 2; partial++) {
		struct sockaddr_in sa = {.sin_family = AF_INET,
					 .sin_port = htons((uint16_t)mica_http_port(srv))};
		inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
		if (partial) /* the start of a TLS ClientHello record, then nothing */
			ck_assert_int_eq(write(fd, "\x16\x03\x01\x02", 4), 4);
		time_t t0 = time(NULL);
		char buf[256];
		ssize_t n = 1;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		/* Drain until EOF; give up after 8 s (the timeout is 2 s). */
		while (n > 0 && poll(&p, 1, 8000) == 1)
			n = read(fd, buf, sizeof(buf));
		ck_assert_msg(n <= 0, "server kept the idle connection open");
		ck_assert_int_le(time(NULL) - t0, 6);
		close(fd);
	}
}
END_TEST

/* GET |url| (a full URL); returns the response for the caller to clean up. */
static mica_httpc_resp get_url(mica_httpc *c, const char *url)
{
	mica_httpc_resp r;
	ck_assert_int_eq(mica_httpc_request(c, "GET", url, NULL, 0, 1, &r), 0);
	return r;
}

/* The failing dependencies of a /readyz reply as "name:code,...". */
static void failing_list(json_t *j, char *out, size_t cap)
{
	size_t i, n = 0;
	json_t *f;
	out[0] = '\0';
	json_array_foreach(json_object_get(j, "failing"), i, f) n +=
		(size_t)snprintf(out + n, cap - n, "%s%s:%s", i ? "," : "",
				 json_string_value(json_object_get(f, "dependency")),
				 json_string_value(json_object_get(f, "code")));
}

/* /healthz is liveness: 200 whatever the dependencies say. /readyz runs the
 * probe (on the blocking pool, at most once per cache period) and names every
 * failing dependency with its code. Before the fix /healthz was the probe,
 * and a daemon whose audit trail refused writes could not say which
 * dependency failed. */
START_TEST(healthz_is_liveness_readyz_names_failures)
{
	mica_httpc *c = client(NULL);
	char list[256];
	json_t *j = call(c, "GET", "/readyz", NULL, 200);
	ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "ready");
	json_decref(j);
	ck_assert_int_eq(atomic_load(&probe_could_block), 1);

	mica_http_stop(srv);
	srv = start(0, 5);
	probe_db_err = MICA_EDBCONN;
	probe_audit_err = MICA_EAUDIT;
	atomic_store(&probe_calls, 0);
	j = call(c, "GET", "/healthz", NULL, 200);
	ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "ok");
	json_decref(j);
	ck_assert_int_eq(atomic_load(&probe_calls), 0);
	for (int i = 0; i < 5; i++) {
		j = call(c, "GET", "/readyz", NULL, 503);
		ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "unavailable");
		failing_list(j, list, sizeof(list));
		ck_assert_str_eq(list, "database:database_unavailable,audit:audit_unavailable");
		ck_assert_ptr_nonnull(strstr(
			json_string_value(json_object_get(json_object_get(j, "error"), "message")),
			"audit (audit_unavailable)"));
		assert_error(j, "unavailable");
	}
	/* Five asks within the cache period, one probe. */
	ck_assert_int_eq(atomic_load(&probe_calls), 1);
	/* The database is back; past the cache period only the audit fails. */
	probe_db_err = 0;
	struct timespec ts = {(MICA_HTTP_READY_CACHE_MS + 100) / 1000,
			      (MICA_HTTP_READY_CACHE_MS + 100) % 1000 * 1000000L};
	ck_assert_int_eq(nanosleep(&ts, NULL), 0);
	j = call(c, "GET", "/readyz", NULL, 503);
	failing_list(j, list, sizeof(list));
	ck_assert_str_eq(list, "audit:audit_unavailable");
	json_decref(j);
	ck_assert_int_eq(atomic_load(&probe_calls), 2);
	mica_httpc_free(c);
}
END_TEST

/* /metrics is served only on the metrics listener (the public one answers
 * 404: before the fix anyone could read per-route login failure rates
 * there), which serves nothing else but the two probes. */
START_TEST(metrics_only_on_the_metrics_listener)
{
	mica_httpc *c = client(NULL);
	mica_httpc_resp r;
	char url[128];
	json_decref(call(c, "GET", "/v1/hello", NULL, 200));
	assert_error(call(c, "GET", "/metrics", NULL, 404), "not_found");
	ck_assert_int_gt(mica_http_metrics_port(srv), 0);
	ck_assert_int_ne(mica_http_metrics_port(srv), mica_http_port(srv));

	snprintf(url, sizeof(url), "%s/metrics", metrics_base);
	r = get_url(c, url);
	ck_assert_int_eq(r.status, 200);
	ck_assert_ptr_nonnull(strstr(r.body,
				     "mica_http_requests_total{service=\"test\",route=\"/v1/"
				     "hello\",method=\"GET\",code=\"200\"} 1\n"));
	/* The public listener's refusal of /metrics is counted as unmatched. */
	ck_assert_ptr_nonnull(strstr(r.body, "route=\"none\",method=\"any\",code=\"404\"} 1\n"));
	ck_assert_ptr_nonnull(strstr(r.body, "mica_http_request_duration_seconds_count"));
	/* This server's handlers use no database: no connection, idle or busy. */
	ck_assert_ptr_nonnull(
		strstr(r.body, "mica_db_connections{service=\"test\",state=\"idle\"} 0\n"));
	ck_assert_ptr_nonnull(
		strstr(r.body, "mica_db_connections{service=\"test\",state=\"busy\"} 0\n"));
	mica_httpc_resp_cleanup(&r);

	snprintf(url, sizeof(url), "%s/healthz", metrics_base);
	r = get_url(c, url);
	ck_assert_int_eq(r.status, 200);
	mica_httpc_resp_cleanup(&r);
	snprintf(url, sizeof(url), "%s/readyz", metrics_base);
	r = get_url(c, url);
	ck_assert_int_eq(r.status, 200);
	mica_httpc_resp_cleanup(&r);
	/* The service's routes are not on the metrics listener. */
	snprintf(url, sizeof(url), "%s/v1/hello", metrics_base);
	r = get_url(c, url);
	ck_assert_int_eq(r.status, 404);
	ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"not_found\""));
	mica_httpc_resp_cleanup(&r);
	snprintf(url, sizeof(url), "%s/metrics", metrics_base);
	ck_assert_int_eq(mica_httpc_request(c, "POST", url, "{}", 2, 0, &r), 0);
	ck_assert_int_eq(r.status, 405);
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(c);
}
END_TEST

/* Beyond loopback the metrics listener needs a client CA (the server does
 * not start without one); with one it wants a trusted certificate. */
START_TEST(metrics_listener_mtls)
{
	mica_http_server *s2 = NULL;
	mica_http_options o;
	mica_http_options_default(&o);
	o.cert_file = env("MICA_CERT_SERVER");
	o.key_file = env("MICA_KEY_SERVER");
	o.metrics_bind = "0.0.0.0";
	ck_assert_int_eq(mica_http_start(&s2, &o, routes, NROUTES, NULL), MICA_EINVAL);
	ck_assert_ptr_null(s2);
	o.metrics_bind = "::";
	ck_assert_int_eq(mica_http_start(&s2, &o, routes, NROUTES, NULL), MICA_EINVAL);
	o.metrics_bind = "not-an-address";
	ck_assert_int_eq(mica_http_start(&s2, &o, routes, NROUTES, NULL), MICA_EINVAL);
	/* An empty metrics_bind starts no metrics listener. */
	o.metrics_bind = "";
	ck_assert_int_eq(mica_http_start(&s2, &o, routes, NROUTES, NULL), 0);
	ck_assert_int_eq(mica_http_metrics_port(s2), 0);
	mica_http_stop(s2);

	mica_http_stop(srv);
	metrics_ca = env("MICA_CA");
	srv = start(0, 5);
	mica_httpc *anon = client(NULL), *scraper = client("TEST"), *rogue = client("ROGUE");
	mica_httpc_resp r;
	char url[128];
	snprintf(url, sizeof(url), "%s/metrics", metrics_base);
	r = get_url(anon, url);
	ck_assert_int_eq(r.status, 401);
	ck_assert_ptr_nonnull(strstr(r.body, "client_certificate_required"));
	mica_httpc_resp_cleanup(&r);
	r = get_url(rogue, url);
	ck_assert_int_eq(r.status, 403);
	mica_httpc_resp_cleanup(&r);
	r = get_url(scraper, url);
	ck_assert_int_eq(r.status, 200);
	ck_assert_ptr_nonnull(strstr(r.body, "mica_http_requests_total"));
	mica_httpc_resp_cleanup(&r);
	/* The public listener still answers without a certificate. */
	json_decref(call(anon, "GET", "/v1/hello", NULL, 200));
	mica_httpc_free(anon);
	mica_httpc_free(scraper);
	mica_httpc_free(rogue);
}
END_TEST

/* A loopback TCP port nothing listens on now. */
static int free_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &l), 0);
	close(fd);
	return ntohs(a.sin_port);
}

/* Starts `openssl s_server -www` on loopback offering TLS 1.2 with |cipher|
 * only, with the test server certificate, and waits until it accepts. */
static pid_t start_s_server(const char *cipher, int *port)
{
	char accept_on[32];
	const char *cert = env("MICA_CERT_SERVER"), *key = env("MICA_KEY_SERVER");
	*port = free_port();
	snprintf(accept_on, sizeof(accept_on), "127.0.0.1:%d", *port);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0), dup2(null, 1), dup2(null, 2);
		execlp("openssl", "openssl", "s_server", "-quiet", "-www", "-accept", accept_on,
		       "-cert", cert, "-key", key, "-tls1_2", "-cipher", cipher, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 200; i++) {
		struct sockaddr_in a = {.sin_family = AF_INET,
					.sin_port = htons((uint16_t)*port),
					.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		int fd = socket(AF_INET, SOCK_STREAM, 0), up;
		up = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
		close(fd);
		if (up)
			return pid;
		struct timespec ts = {0, 25000000};
		nanosleep(&ts, NULL);
	}
	kill(pid, SIGTERM);
	ck_abort_msg("openssl s_server did not start on %s", accept_on);
	return -1;
}

/* The client offers only AEAD suites: a server that can do nothing but
 * CBC-SHA1 (which the libcurl default accepted before the fix) is refused
 * at the handshake, one with AES-GCM or ChaCha20-Poly1305 is not. */
START_TEST(client_offers_only_aead_suites)
{
	static const struct {
		const char *cipher;
		int accepted;
	} cases[] = {
		{"ECDHE-ECDSA-AES128-SHA", 0},
		{"ECDHE-ECDSA-AES256-SHA384", 0},
		{"ECDHE-ECDSA-AES128-GCM-SHA256", 1},
		{"ECDHE-ECDSA-CHACHA20-POLY1305", 1},
	};
	mica_httpc *c = client(NULL);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int port, rc, st;
		char url[64];
		mica_httpc_resp r;
		pid_t pid = start_s_server(cases[i].cipher, &port);
		snprintf(url, sizeof(url), "https://localhost:%d/", port);
		rc = mica_httpc_request(c, "GET", url, NULL, 0, 0, &r);
		kill(pid, SIGTERM);
		waitpid(pid, &st, 0);
		if (cases[i].accepted) {
			ck_assert_msg(rc == 0 && r.status == 200, "%s: rc %s status %ld",
				      cases[i].cipher, mica_strerror(rc), r.status);
		} else {
			ck_assert_msg(rc != 0 && r.status == 0, "%s was accepted (status %ld)",
				      cases[i].cipher, r.status);
		}
		mica_httpc_resp_cleanup(&r);
	}
	mica_httpc_free(c);
}
END_TEST

START_TEST(start_rejects_bad_setup)
{
	mica_http_options o;
	mica_http_server *s = NULL;
	mica_http_route bad[] = {{"GET", "no-slash", hello, 0}};
	mica_http_options_default(&o);
	o.cert_file = env("MICA_CERT_SERVER");
	o.key_file = env("MICA_KEY_SERVER");
	ck_assert_int_eq(mica_http_start(&s, &o, bad, 1, NULL), MICA_EINVAL);
	o.cert_file = "/nonexistent.pem";
	ck_assert_int_eq(mica_http_start(&s, &o, routes, NROUTES, NULL), MICA_ETLS);
	o.cert_file = env("MICA_CERT_SERVER");
	o.bind = "not-an-address";
	ck_assert_int_eq(mica_http_start(&s, &o, routes, NROUTES, NULL), MICA_EINVAL);
	o.bind = "127.0.0.1";
	o.port = mica_http_port(srv); /* already taken */
	ck_assert_int_eq(mica_http_start(&s, &o, routes, NROUTES, NULL), MICA_EIO);
	ck_assert_ptr_null(s);
}
END_TEST

/* A request made on its own thread, for handlers that hold it up. */
struct bg_call {
	pthread_t thread;
	const char *path;
	long status;
	char body[256];
	int rc;
};

static void *bg_main(void *arg)
{
	struct bg_call *b = arg;
	mica_httpc_options o = {.ca_file = getenv("MICA_CA"), .timeout_ms = 20000};
	mica_httpc *c = NULL;
	mica_httpc_resp r = {0};
	char url[256];
	snprintf(url, sizeof(url), "%s%s", base, b->path);
	if ((b->rc = mica_httpc_new(&c, &o)) == 0 &&
	    (b->rc = mica_httpc_request(c, "GET", url, NULL, 0, 0, &r)) == 0) {
		b->status = r.status;
		snprintf(b->body, sizeof(b->body), "%s", r.body ? r.body : "");
	}
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(c);
	return NULL;
}

static void bg_start(struct bg_call *b, const char *path)
{
	memset(b, 0, sizeof(*b));
	b->path = path;
	ck_assert_int_eq(pthread_create(&b->thread, NULL, bg_main, b), 0);
}

static void bg_join(struct bg_call *b, long want_status, const char *want_in_body)
{
	pthread_join(b->thread, NULL);
	ck_assert_msg(b->rc == 0, "%s: %s", b->path, mica_strerror(b->rc));
	ck_assert_msg(b->status == want_status, "%s: status %ld, want %ld (%s)", b->path, b->status,
		      want_status, b->body);
	ck_assert_msg(strstr(b->body, want_in_body), "%s: body %s lacks %s", b->path, b->body,
		      want_in_body);
}

/* One event thread: while a blocking handler holds its pool thread, the
 * event thread still answers other requests. */
START_TEST(blocking_handler_runs_on_its_pool)
{
	mica_http_stop(srv);
	srv = start_with(0, 5, 1, 1);
	gate_reset();
	struct bg_call b;
	bg_start(&b, "/v1/blocked");
	gate_await_arrival();
	mica_httpc *c = client(NULL);
	json_decref(call(c, "GET", "/v1/hello", NULL, 200));
	gate_release();
	bg_join(&b, 200, "\"blocked\":true");
	mica_httpc_free(c);
}
END_TEST

/* A deferred reply holds no thread (one event thread, one blocking thread
 * are free for other requests meanwhile) and is what the finisher left in
 * the reply; deferring from either kind of handler works, and so does
 * finishing before the handler returned. */
START_TEST(deferred_replies)
{
	static const char *const paths[] = {"/v1/deferred", "/v1/deferred-blocking"};
	mica_http_stop(srv);
	srv = start_with(0, 5, 1, 1);
	mica_httpc *c = client(NULL);
	for (size_t i = 0; i < 2; i++) {
		struct bg_call b;
		gate_reset();
		bg_start(&b, paths[i]);
		gate_await_arrival();
		json_decref(call(c, "GET", "/v1/hello", NULL, 200));
		json_decref(call(c, "GET", "/v1/defer-now-blocking", NULL, 200));
		finish_parked();
		bg_join(&b, 202, "\"finished\":true");
	}
	json_t *j = call(c, "GET", "/v1/defer-now", NULL, 200);
	ck_assert(json_is_true(json_object_get(j, "now")));
	json_decref(j);
	mica_httpc_free(c);
}
END_TEST

struct stopper {
	mica_http_server *srv;
	atomic_int done;
};

static void *stop_main(void *arg)
{
	struct stopper *st = arg;
	mica_http_stop(st->srv);
	atomic_store(&st->done, 1);
	return NULL;
}

/* Stop waits for a deferred request and the client still gets its reply;
 * a request that arrives meanwhile is refused with 503 unavailable. */
START_TEST(stop_waits_for_deferred)
{
	struct bg_call b;
	struct stopper st = {.srv = srv};
	pthread_t t;
	mica_httpc *c = client(NULL);
	gate_reset();
	bg_start(&b, "/v1/deferred");
	gate_await_arrival();
	srv = NULL; /* stopped here, not by the fixture */
	ck_assert_int_eq(pthread_create(&t, NULL, stop_main, &st), 0);
	usleep(200 * 1000);
	ck_assert_msg(!atomic_load(&st.done), "stop returned while a reply was deferred");
	assert_error(call(c, "GET", "/v1/hello", NULL, 503), "unavailable");
	finish_parked();
	bg_join(&b, 202, "\"finished\":true");
	pthread_join(t, NULL);
	ck_assert(atomic_load(&st.done));
	mica_httpc_free(c);
}
END_TEST

/* One event thread: a refusal waits for its record (parked here) without
 * holding the thread; recorded, it goes out as it was; not recorded, as 503
 * audit_unavailable, also when a 405 had headers of its own. */
START_TEST(refusals_wait_for_their_record)
{
	mica_http_stop(srv);
	use_refusal_hook = 1;
	srv = start_with(0, 5, 1, 1);
	use_refusal_hook = 0;
	mica_httpc *c = client(NULL);
	for (int recorded = 1; recorded >= 0; recorded--) {
		struct bg_call b;
		gate_reset();
		bg_start(&b, "/v1/park/here");
		gate_await_arrival();
		ck_assert_int_eq(refusal_status, 404);
		json_decref(call(c, "GET", "/v1/hello", NULL, 200));
		assert_error(call(c, "GET", "/v1/recorded-at-once", NULL, 404), "not_found");
		assert_error(call(c, "GET", "/v1/unrecorded", NULL, 503), "audit_unavailable");
		mica_http_refusal_done(parked, recorded);
		bg_join(&b, recorded ? 404 : 503, recorded ? "not_found" : "audit_unavailable");
	}
	/* Handled requests and 5xx errors never reach the hook. */
	int before = atomic_load(&refusals);
	json_decref(call(c, "GET", "/v1/hello", NULL, 200));
	assert_error(call(c, "GET", "/v1/blocked-nowhere", NULL, 404), "not_found");
	ck_assert_int_eq(atomic_load(&refusals), before + 1);
	mica_httpc_free(c);
}
END_TEST

/* A handler on an event thread can hand its request to the blocking pool,
 * where it runs again from the start (and /metrics counts the move);
 * without a pool it answers itself. */
START_TEST(handler_moves_to_the_pool)
{
	mica_http_stop(srv);
	srv = start_with(0, 5, 1, 1);
	mica_httpc *c = client(NULL);
	atomic_store(&moves_calls, 0);
	json_t *j = call(c, "GET", "/v1/moves", NULL, 200);
	ck_assert(json_is_true(json_object_get(j, "on_pool")));
	ck_assert_int_eq(json_integer_value(json_object_get(j, "again")), MICA_ESTATE);
	ck_assert_int_eq(atomic_load(&moves_calls), 2);
	json_decref(j);
	char url[128];
	mica_httpc_resp r;
	snprintf(url, sizeof(url), "%s/metrics", metrics_base);
	ck_assert_int_eq(mica_httpc_request(c, "GET", url, NULL, 0, 1, &r), 0);
	ck_assert_ptr_nonnull(
		strstr(r.body, "mica_http_moved_to_pool_total{service=\"test\"} 1\n"));
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(c);
	mica_http_stop(srv);
	srv = start_with(0, 5, 1, 0);
	c = client(NULL);
	atomic_store(&moves_calls, 0);
	assert_error(call(c, "GET", "/v1/moves", NULL, 503), "unavailable");
	ck_assert_int_eq(atomic_load(&moves_calls), 1);
	mica_httpc_free(c);
}
END_TEST

/* A blocking route on a server started without blocking threads. */
START_TEST(blocking_route_without_pool)
{
	mica_http_stop(srv);
	srv = start_with(0, 5, 1, 0);
	mica_httpc *c = client(NULL);
	assert_error(call(c, "GET", "/v1/blocked", NULL, 500), "internal_error");
	json_decref(call(c, "GET", "/v1/hello", NULL, 200));
	mica_httpc_free(c);
}
END_TEST

/* Sends a secret through /v1/{path} and back; every buffer that held one
 * on either side (request body, parsed JSON, reply body, the client's copy
 * of the reply) reaches free() wiped. */
static void secret_round_trip(const char *path)
{
	mica_httpc *c = client(NULL);
	mica_httpc_resp r;
	char url[256];
	const char *body = "{\"password\":\"" REQ_SECRET "\"}";
	struct timespec deadline;
	int done = 0;

	mica__free_hook_set(free_hook);
	snprintf(url, sizeof(url), "%s%s", base, path);
	ck_assert_int_eq(mica_httpc_request(c, "POST", url, body, strlen(body), 0, &r), 0);
	ck_assert_int_eq(r.status, 200);
	ck_assert_ptr_nonnull(strstr(r.body, RESP_SECRET));
	watch(r.body, RESP_SECRET);
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(c);

	/* The server releases its buffers once the reply is out: a condition,
	 * waited on with a deadline, not a sleep. */
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 10;
	pthread_mutex_lock(&watch_mu);
	while (!done) {
		done = nwatched == 4;
		for (int i = 0; done && i < nwatched; i++)
			done = watched[i].zero_at_free != 0;
		if (!done && pthread_cond_timedwait(&watch_cv, &watch_mu, &deadline) != 0)
			break;
	}
	ck_assert_int_eq(nwatched, 4);
	static const char *const what[] = {"request body", "request JSON string", "reply body",
					   "client's reply body"};
	char bad[512] = "";
	for (int i = 0; i < nwatched; i++)
		if (watched[i].zero_at_free != 1)
			snprintf(bad + strlen(bad), sizeof(bad) - strlen(bad), " [%s %s]", what[i],
				 watched[i].zero_at_free ? "was not zero when freed"
							 : "was not freed through mica_free_wipe");
	ck_assert_msg(bad[0] == '\0', "secrets left behind:%s", bad);
	pthread_mutex_unlock(&watch_mu);
	mica__free_hook_set(NULL);
}

START_TEST(secrets_are_wiped_on_the_way_through)
{
	secret_round_trip("/v1/secret");
	/* On the event thread: marked, so blocking calls refused at once. */
	ck_assert_int_eq(atomic_load(&secret_on_event), 1);
	ck_assert_int_eq(atomic_load(&secret_httpc_err), MICA_EWOULDBLOCK);
	ck_assert_int_eq(atomic_load(&secret_db_err), MICA_EWOULDBLOCK);
}
END_TEST

START_TEST(blocking_pool_threads_may_block)
{
	secret_round_trip("/v1/secret-pool");
	ck_assert_int_eq(atomic_load(&secret_on_event), 0);
	/* Past the guards: the client really tried port 1, where nothing
	 * listens, and the database call got as far as its NULL handle. */
	ck_assert_int_eq(atomic_load(&secret_httpc_err), MICA_EHTTP);
	ck_assert_int_eq(atomic_load(&secret_db_err), MICA_EINVAL);
}
END_TEST

static Suite *http_suite(void)
{
	Suite *s = suite_create("http");
	TCase *tc = tcase_create("server+client");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, routes_params_and_errors);
	tcase_add_test(tc, secrets_are_wiped_on_the_way_through);
	tcase_add_test(tc, blocking_pool_threads_may_block);
	tcase_add_test(tc, json_bodies);
	tcase_add_test(tc, mtls_principal);
	tcase_add_test(tc, mtls_required_mode);
	tcase_add_test(tc, untrusted_server_fails);
	tcase_add_test(tc, retries_only_idempotent);
	tcase_add_test(tc, public_only_refuses_internal_hosts);
	tcase_add_test(tc, public_addresses);
	tcase_add_test(tc, client_timeout);
	tcase_add_test(tc, idle_and_slow_clients_time_out);
	tcase_add_test(tc, healthz_is_liveness_readyz_names_failures);
	tcase_add_test(tc, metrics_only_on_the_metrics_listener);
	tcase_add_test(tc, metrics_listener_mtls);
	tcase_add_test(tc, client_offers_only_aead_suites);
	tcase_add_test(tc, start_rejects_bad_setup);
	tcase_add_test(tc, blocking_handler_runs_on_its_pool);
	tcase_add_test(tc, deferred_replies);
	tcase_add_test(tc, stop_waits_for_deferred);
	tcase_add_test(tc, blocking_route_without_pool);
	tcase_add_test(tc, handler_moves_to_the_pool);
	tcase_add_test(tc, refusals_wait_for_their_record);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = http_suite, .fork_from_env = true};
