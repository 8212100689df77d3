/* test_thread.c - unit tests for lib/thread, the event-loop contract: on a
 * thread marked as an event thread every blocking libmica call (db, outbox,
 * kv, httpc, kc, auth) answers MICA_EWOULDBLOCK without touching the
 * network, which the test checks on listening sockets of its own that the
 * calls are pointed at: no connection ever arrives. Unmarked, the same
 * calls do connect. No services needed.
 */
#include <check.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "auth.h"
#include "db.h"
#include "httpc.h"
#include "kc.h"
#include "kv.h"
#include "outbox.h"
#include "tests/check_main.h"
#include "thread.h"

/* A TCP listener on 127.0.0.1 and a Unix one, which nothing may reach. */
static int tcp_fd = -1, unix_fd = -1, tcp_port;
static char unix_path[108];
static char url[64], conninfo[128];

static void listeners_up(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct sockaddr_un u = {.sun_family = AF_UNIX};
	socklen_t al = sizeof(a);

	tcp_fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(tcp_fd, 0);
	ck_assert_int_eq(bind(tcp_fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(tcp_fd, 16), 0);
	ck_assert_int_eq(getsockname(tcp_fd, (struct sockaddr *)&a, &al), 0);
	tcp_port = ntohs(a.sin_port);
	snprintf(url, sizeof(url), "https://127.0.0.1:%d", tcp_port);
	snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d connect_timeout=2", tcp_port);

	snprintf(unix_path, sizeof(unix_path), "/tmp/mica-test-thread-%d.sock", (int)getpid());
	unlink(unix_path);
	snprintf(u.sun_path, sizeof(u.sun_path), "%s", unix_path);
	unix_fd = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_ge(unix_fd, 0);
	ck_assert_int_eq(bind(unix_fd, (struct sockaddr *)&u, sizeof(u)), 0);
	ck_assert_int_eq(listen(unix_fd, 16), 0);
}

static void listeners_down(void)
{
	if (tcp_fd >= 0)
		close(tcp_fd);
	if (unix_fd >= 0)
		close(unix_fd);
	unlink(unix_path);
	tcp_fd = unix_fd = -1;
}

/* Whether a connection is waiting on |fd| (accepted and closed if so). */
static int connected(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	if (poll(&p, 1, 0) != 1)
		return 0;
	int c = accept(fd, NULL, NULL);
	if (c >= 0)
		close(c);
	return 1;
}

static int no_handler(mica_db *db, const struct mica_outbox_event *ev, void *arg)
{
	(void)db, (void)ev, (void)arg;
	return 0;
}

static int tx_fn(mica_db *db, void *arg)
{
	(void)db;
	*(int *)arg = 1;
	return 0;
}

/* Every blocking entry point, on the calling thread: each must answer
 * MICA_EWOULDBLOCK (asserted by the caller through |rc|, one per call). */
#define NCALLS 22
static void call_everything(int rc[NCALLS])
{
	struct mica_kv_config kc_cfg = {.socket_path = unix_path, .timeout_ms = 500};
	mica_httpc_options ho = {.ca_file = "/nonexistent", .timeout_ms = 500, .retries = 0};
	mica_kc_options ko = {.base_url = url,
			      .ca_file = "/nonexistent",
			      .cert_file = "/nonexistent",
			      .key_file = "/nonexistent",
			      .timeout_ms = 500,
			      .retries = -1};
	mica_auth_options ao = {.ca_file = "/nonexistent",
				.cert_file = "/nonexistent",
				.key_file = "/nonexistent",
				.timeout_ms = 500};
	char introspect[96], token[MICA_AUTH_TOKEN_LEN + 1], hash[MICA_AUTH_HASH_HEX_LEN + 1];
	char header[80], *s = NULL;
	uint8_t buf[32], *pt = NULL;
	size_t len = 0;
	int n = 0, ran = 0, handled = 0, allowed = 0;
	int64_t id = 0;
	mica_db *db = NULL, *dbt;
	mica_kv *kv = NULL, *kvt;
	mica_httpc *h = NULL;
	mica_httpc_resp r;
	mica_kc *kc = NULL;
	mica_auth *au = NULL;
	mica_auth_session as;
	long status = 0;
	json_t *ctx = json_pack("{s:s}", "table", "t"), *reply = NULL;

	/* db, and the outbox on top of it */
	rc[n++] = mica_db_open(&db, conninfo);
	ck_assert_ptr_nonnull(dbt = mica_db_thread());
	rc[n++] = mica_db_exec(dbt, "SELECT 1", 0, NULL, NULL);
	rc[n++] = mica_db_exec_trusted_script(dbt, "SELECT 1");
	rc[n++] = mica_db_tx(dbt, MICA_DB_READ_COMMITTED, tx_fn, &ran);
	ck_assert_int_eq(ran, 0);
	rc[n++] = mica_db_listen(dbt, "events");
	rc[n++] = mica_db_wait_notify(dbt, 100, NULL, NULL);
	rc[n++] = mica_outbox_subscribe(dbt, "c1", "topic");
	rc[n++] = mica_outbox_consume(dbt, "c1", 10, no_handler, NULL, &handled);
	rc[n++] = mica_outbox_wait(dbt, "c1", 100);
	rc[n++] = mica_outbox_prune(dbt, 60, &id);

	/* kv */
	rc[n++] = mica_kv_open(&kv, &kc_cfg);
	ck_assert_ptr_nonnull(kvt = mica_kv_thread());
	rc[n++] = mica_kv_set(kvt, "k", "v", 1, 10);
	rc[n++] = mica_kv_get(kvt, "k", &s, &len);
	rc[n++] = mica_kv_rate_limit(kvt, "k", 5, 60, &allowed, NULL);
	rc[n++] = mica_kv_nonce(kvt, "k", 60);

	/* httpc */
	ck_assert_int_eq(mica_httpc_new(&h, &ho), 0);
	rc[n++] = mica_httpc_request(h, "GET", url, NULL, 0, 1, &r);
	mica_httpc_resp_cleanup(&r);
	rc[n++] = mica_httpc_json(h, "POST", url, ctx, 1, &status, &reply);
	ck_assert_ptr_null(reply);
	mica_httpc_free(h);

	/* kc: the cache is empty, so each call would ask the Key Center */
	ck_assert_int_eq(mica_kc_new(&kc, &ko), 0);
	rc[n++] = mica_kc_datakey(kc, "k1", 256, ctx, buf, sizeof(buf), &s);
	rc[n++] = mica_kc_decrypt_datakey(kc, "k1", "kc:v1:AAAA", ctx, buf, sizeof(buf), &len);
	rc[n++] = mica_kc_hmac(kc, "k1", "x", 1, &s);
	rc[n++] = mica_kc_decrypt(kc, "k1", "kc:v1:AAAA", ctx, &pt, &len);
	mica_kc_free(kc);

	/* auth: no in-process cache, so it would read Redis, then introspect */
	snprintf(introspect, sizeof(introspect), "%s/v1/introspect", url);
	ao.introspect_url = introspect;
	ck_assert_int_eq(mica_auth_new(&au, &ao), 0);
	ck_assert_int_eq(mica_auth_token_new(token, hash), 0);
	snprintf(header, sizeof(header), "Bearer %s", token);
	ck_assert_int_eq(n, NCALLS - 1);
	rc[n++] = mica_auth_validate(au, header, &as);
	mica_auth_free(au);
	json_decref(ctx);
	mica_db_close(&db);
	mica_kv_close(&kv);
}

static int rc_event[NCALLS];

static void *event_thread(void *arg)
{
	(void)arg;
	mica_thread_set_event(true);
	ck_assert(mica_thread_is_event());
	ck_assert(!mica_thread_may_block());
	call_everything(rc_event);
	return NULL;
}

START_TEST(event_thread_gets_ewouldblock_everywhere)
{
	pthread_t t;
	struct mica_kv_config kv = {.socket_path = unix_path, .timeout_ms = 500};
	listeners_up();
	ck_assert_int_eq(mica_db_global_init(conninfo), 0);
	ck_assert_int_eq(mica_kv_global_init(&kv), 0);
	ck_assert(mica_thread_may_block()); /* threads start unmarked */
	ck_assert_int_eq(pthread_create(&t, NULL, event_thread, NULL), 0);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	for (int i = 0; i < NCALLS; i++)
		ck_assert_msg(rc_event[i] == MICA_EWOULDBLOCK, "call %d returned %s", i,
			      mica_strerror(rc_event[i]));
	ck_assert_msg(!connected(tcp_fd), "a call on an event thread connected over TCP");
	ck_assert_msg(!connected(unix_fd), "a call on an event thread connected to Redis");
	listeners_down();
}
END_TEST

/* The control: unmarked, the same calls do reach the sockets, so the
 * listeners above would have seen them. */
START_TEST(unmarked_thread_does_connect)
{
	struct mica_kv_config kv = {.socket_path = unix_path, .timeout_ms = 300};
	mica_httpc_options ho = {.ca_file = "/nonexistent", .timeout_ms = 300, .retries = 0};
	mica_httpc *h = NULL;
	mica_httpc_resp r;
	mica_kv *k = NULL;
	listeners_up();
	ck_assert_int_eq(mica_httpc_new(&h, &ho), 0);
	ck_assert_int_ne(mica_httpc_request(h, "GET", url, NULL, 0, 0, &r), MICA_EWOULDBLOCK);
	mica_httpc_resp_cleanup(&r);
	mica_httpc_free(h);
	ck_assert(connected(tcp_fd));
	ck_assert_int_ne(mica_kv_open(&k, &kv), MICA_EWOULDBLOCK);
	mica_kv_close(&k);
	ck_assert(connected(unix_fd));
	listeners_down();
}
END_TEST

START_TEST(mark_is_per_thread_and_reversible)
{
	mica_thread_set_event(true);
	ck_assert(mica_thread_is_event());
	ck_assert_int_eq(mica_db_exec(NULL, "SELECT 1", 0, NULL, NULL), MICA_EWOULDBLOCK);
	mica_thread_set_event(false);
	ck_assert(mica_thread_may_block());
	/* Past the guard: the NULL handle is now what it objects to. */
	ck_assert_int_eq(mica_db_exec(NULL, "SELECT 1", 0, NULL, NULL), MICA_EINVAL);
	ck_assert_str_eq(mica_strerror(MICA_EWOULDBLOCK), "would_block");
}
END_TEST

static Suite *thread_suite(void)
{
	Suite *s = suite_create("thread");
	TCase *tc = tcase_create("event threads");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, event_thread_gets_ewouldblock_everywhere);
	tcase_add_test(tc, unmarked_thread_does_connect);
	tcase_add_test(tc, mark_is_per_thread_and_reversible);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = thread_suite};
