/* test_kv.c - lib/kv against the real Redis of tests/run (Unix socket, ACL
 * user "test" limited to keys "test:*"): binary-safe argv, get/set/del with
 * TTL, reconnect after a Redis restart, the fixed-window rate limit, nonces,
 * and ACL refusals. Keys carry the test's pid so runs never collide.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "kv.h"
#include "log.h"
#include "tests/check_main.h"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	if (!v || !*v)
		ck_abort_msg("environment variable %s is not set (run through tests/run)", name);
	return v;
}

static char password[256];

/* The password file holds one line; strip the newline. */
static void load_password(void)
{
	FILE *f = fopen(env("MICA_REDIS_PASSWORD_FILE"), "r");
	ck_assert_msg(f != NULL, "cannot open MICA_REDIS_PASSWORD_FILE");
	ck_assert_ptr_nonnull(fgets(password, sizeof(password), f));
	fclose(f);
	password[strcspn(password, "\r\n")] = '\0';
}

static struct mica_kv_config config(void)
{
	if (!password[0])
		load_password();
	struct mica_kv_config c = {
		.socket_path = env("MICA_REDIS_SOCKET"),
		.username = env("MICA_REDIS_USER"),
		.password = password,
		.timeout_ms = 5000,
	};
	return c;
}

static mica_kv *open_kv(void)
{
	struct mica_kv_config c = config();
	mica_kv *kv = NULL;
	int rc = mica_kv_open(&kv, &c);
	ck_assert_msg(rc == 0, "mica_kv_open: %s", mica_strerror(rc));
	return kv;
}

/* "test:<pid>:<suffix>": inside the test user's allowed prefix. */
static const char *key(const char *suffix)
{
	static char buf[8][512];
	static int i;
	char *k = buf[i++ % 8];
	snprintf(k, sizeof(buf[0]), "test:%d:%s", (int)getpid(), suffix);
	return k;
}

static long long ttl_of(mica_kv *kv, const char *k)
{
	const char *argv[2] = {"TTL", k};
	redisReply *r = NULL;
	ck_assert_int_eq(mica_kv_command(kv, &r, 2, argv, NULL), 0);
	ck_assert_int_eq(r->type, REDIS_REPLY_INTEGER);
	long long t = r->integer;
	freeReplyObject(r);
	return t;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

START_TEST(get_set_del_ttl)
{
	mica_kv *kv = open_kv();
	static const char bin[] = "a\0b\r\n*3\r\n$3\r\nDEL\r\n";
	ck_assert_int_eq(mica_kv_set(kv, key("bin"), bin, sizeof(bin), 0), 0);
	char *v = NULL;
	size_t len = 0;
	ck_assert_int_eq(mica_kv_get(kv, key("bin"), &v, &len), 0);
	ck_assert_uint_eq(len, sizeof(bin));
	ck_assert_int_eq(memcmp(v, bin, sizeof(bin)), 0);
	free(v);
	ck_assert_int_eq(ttl_of(kv, key("bin")), -1);

	ck_assert_int_eq(mica_kv_set(kv, key("ttl"), "x", 1, 100), 0);
	long long t = ttl_of(kv, key("ttl"));
	ck_assert_msg(t > 0 && t <= 100, "ttl %lld", t);

	int deleted = -1;
	ck_assert_int_eq(mica_kv_del(kv, key("ttl"), &deleted), 0);
	ck_assert_int_eq(deleted, 1);
	ck_assert_int_eq(mica_kv_del(kv, key("ttl"), &deleted), 0);
	ck_assert_int_eq(deleted, 0);
	v = (char *)1;
	ck_assert_int_eq(mica_kv_get(kv, key("ttl"), &v, &len), MICA_ENOTFOUND);
	ck_assert_ptr_null(v);

	ck_assert_int_eq(mica_kv_set(kv, key("e"), "", 0, 0), 0);
	ck_assert_int_eq(mica_kv_get(kv, key("e"), &v, &len), 0);
	ck_assert_uint_eq(len, 0);
	ck_assert_str_eq(v, "");
	free(v);

	ck_assert_int_eq(mica_kv_set(kv, key("x"), "x", 1, -1), MICA_EINVAL);
	ck_assert_int_eq(mica_kv_set(kv, "", "x", 1, 0), MICA_EINVAL);
	ck_assert_int_eq(mica_kv_del(kv, key("bin"), NULL), 0);
	ck_assert_int_eq(mica_kv_del(kv, key("e"), NULL), 0);
	mica_kv_close(&kv);
	mica_kv_close(&kv);
	ck_assert_ptr_null(kv);
}
END_TEST

/* A key and value that look like RESP protocol and like extra arguments
 * stay one key and one value: arguments are length-delimited on the wire. */
START_TEST(argv_is_binary_safe)
{
	mica_kv *kv = open_kv();
	char inner[128];
	snprintf(inner, sizeof(inner), "a b\r\nSET %s 1\r\n", key("x"));
	const char *k = key(inner);
	static const char val[] = "v\r\n*1\r\n$8\r\nFLUSHALL\r\n";
	const char *argv[3] = {"SET", k, val};
	ck_assert_int_eq(mica_kv_command(kv, NULL, 3, argv, NULL), 0);
	char *v = NULL;
	size_t len = 0;
	ck_assert_int_eq(mica_kv_get(kv, k, &v, &len), 0);
	ck_assert_str_eq(v, val);
	free(v);
	ck_assert_int_eq(mica_kv_get(kv, key("x"), &v, &len), MICA_ENOTFOUND);
	const char *exists[2] = {"EXISTS", k};
	redisReply *r = NULL;
	ck_assert_int_eq(mica_kv_command(kv, &r, 2, exists, NULL), 0);
	ck_assert_int_eq(r->integer, 1);
	freeReplyObject(r);
	ck_assert_int_eq(mica_kv_del(kv, k, NULL), 0);

	/* Explicit lengths: a NUL inside an argument is data. */
	const char *argv2[3] = {"SET", key("nul"), "ab\0cd"};
	size_t lens[3] = {3, strlen(key("nul")), 5};
	argv2[1] = key("nul");
	ck_assert_int_eq(mica_kv_command(kv, NULL, 3, argv2, lens), 0);
	ck_assert_int_eq(mica_kv_get(kv, argv2[1], &v, &len), 0);
	ck_assert_uint_eq(len, 5);
	ck_assert_int_eq(memcmp(v, "ab\0cd", 5), 0);
	free(v);
	ck_assert_int_eq(mica_kv_del(kv, argv2[1], NULL), 0);

	ck_assert_int_eq(mica_kv_command(kv, NULL, 0, argv, NULL), MICA_EINVAL);
	const char *bad[1] = {"NOSUCHCOMMAND"};
	ck_assert_int_eq(mica_kv_command(kv, NULL, 1, bad, NULL), MICA_EKV);
	ck_assert_ptr_nonnull(strstr(mica_kv_errmsg(kv), "unknown command"));
	mica_kv_close(&kv);
}
END_TEST

START_TEST(reconnect_after_restart)
{
	mica_kv *kv = open_kv();
	struct mica_kv_config c = config();
	ck_assert_int_eq(mica_kv_global_init(&c), 0);
	mica_kv *t = mica_kv_thread();
	ck_assert_ptr_nonnull(t);
	ck_assert_ptr_eq(mica_kv_thread(), t);
	ck_assert_int_eq(mica_kv_set(kv, key("r"), "1", 1, 60), 0);
	ck_assert_int_eq(mica_kv_set(t, key("t"), "1", 1, 60), 0);

	int st = system(env("MICA_REDIS_RESTART"));
	ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "restart failed: %d", st);

	/* Same handles, next call: reconnected and authenticated again. */
	ck_assert_int_eq(mica_kv_set(kv, key("r"), "2", 1, 60), 0);
	char *v = NULL;
	ck_assert_int_eq(mica_kv_get(kv, key("r"), &v, NULL), 0);
	ck_assert_str_eq(v, "2");
	free(v);
	ck_assert_int_eq(mica_kv_set(t, key("t"), "2", 1, 60), 0);
	ck_assert_int_eq(mica_kv_del(kv, key("r"), NULL), 0);
	ck_assert_int_eq(mica_kv_del(t, key("t"), NULL), 0);
	mica_kv_global_cleanup();
	mica_kv_global_cleanup();
	mica_kv_close(&kv);
}
END_TEST

START_TEST(rate_limit_fixed_window)
{
	mica_kv *kv = open_kv();
	const char *k = key("rl");
	int allowed = -1;
	long remaining = -1;
	for (long i = 1; i <= 5; i++) {
		ck_assert_int_eq(mica_kv_rate_limit(kv, k, 5, 60, &allowed, &remaining), 0);
		ck_assert_int_eq(allowed, 1);
		ck_assert_int_eq(remaining, 5 - i);
	}
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(mica_kv_rate_limit(kv, k, 5, 60, &allowed, &remaining), 0);
		ck_assert_int_eq(allowed, 0);
		ck_assert_int_eq(remaining, 0);
	}
	long long t = ttl_of(kv, k);
	ck_assert_msg(t > 0 && t <= 60, "window ttl %lld", t);

	/* A new window opens when the old one expires. */
	const char *k2 = key("rl1");
	ck_assert_int_eq(mica_kv_rate_limit(kv, k2, 1, 1, &allowed, &remaining), 0);
	ck_assert_int_eq(allowed, 1);
	ck_assert_int_eq(mica_kv_rate_limit(kv, k2, 1, 1, &allowed, &remaining), 0);
	ck_assert_int_eq(allowed, 0);
	int64_t deadline = now_ms() + 5000;
	while (!allowed && now_ms() < deadline) {
		usleep(50 * 1000);
		ck_assert_int_eq(mica_kv_rate_limit(kv, k2, 1, 1, &allowed, &remaining), 0);
	}
	ck_assert_msg(allowed, "window never reopened");

	ck_assert_int_eq(mica_kv_rate_limit(kv, k, 0, 60, &allowed, &remaining), MICA_EINVAL);
	ck_assert_int_eq(mica_kv_rate_limit(kv, k, 5, 0, &allowed, &remaining), MICA_EINVAL);
	ck_assert_int_eq(mica_kv_del(kv, k, NULL), 0);
	ck_assert_int_eq(mica_kv_del(kv, k2, NULL), 0);
	mica_kv_close(&kv);
}
END_TEST

START_TEST(nonce_single_use)
{
	mica_kv *kv = open_kv();
	const char *k = key("nonce");
	ck_assert_int_eq(mica_kv_nonce(kv, k, 300), 0);
	ck_assert_int_eq(mica_kv_nonce(kv, k, 300), MICA_EREPLAY);
	ck_assert_int_eq(mica_kv_nonce(kv, k, 300), MICA_EREPLAY);
	long long t = ttl_of(kv, k);
	ck_assert_msg(t > 0 && t <= 300, "nonce ttl %lld", t);
	ck_assert_int_eq(mica_kv_nonce(kv, key("other-nonce"), 300), 0);
	ck_assert_int_eq(mica_kv_nonce(kv, k, 0), MICA_EINVAL);
	ck_assert_int_eq(mica_kv_del(kv, k, NULL), 0);
	ck_assert_int_eq(mica_kv_del(kv, key("other-nonce"), NULL), 0);
	mica_kv_close(&kv);
}
END_TEST

START_TEST(acl_refusals)
{
	mica_kv *kv = open_kv();
	char other[64];
	snprintf(other, sizeof(other), "account:%d:x", (int)getpid());
	ck_assert_int_eq(mica_kv_set(kv, other, "x", 1, 10), MICA_EPERM);
	ck_assert_msg(strncmp(mica_kv_errmsg(kv), "NOPERM", 6) == 0, "errmsg: %s",
		      mica_kv_errmsg(kv));
	char *v = NULL;
	ck_assert_int_eq(mica_kv_get(kv, other, &v, NULL), MICA_EPERM);
	int allowed = 1;
	ck_assert_int_eq(mica_kv_rate_limit(kv, other, 5, 60, &allowed, NULL), MICA_EPERM);
	ck_assert_int_eq(allowed, 0);
	ck_assert_int_eq(mica_kv_nonce(kv, other, 60), MICA_EPERM);
	/* The connection is still good for permitted keys. */
	ck_assert_int_eq(mica_kv_set(kv, key("ok"), "x", 1, 10), 0);
	ck_assert_int_eq(mica_kv_del(kv, key("ok"), NULL), 0);
	mica_kv_close(&kv);
}
END_TEST

START_TEST(connect_failures)
{
	struct mica_kv_config c = config();
	mica_kv *kv = (mica_kv *)1;
	c.password = "not the password";
	ck_assert_int_eq(mica_kv_open(&kv, &c), MICA_ECONFIG);
	ck_assert_ptr_null(kv);

	char path[512];
	snprintf(path, sizeof(path), "%s/no-such-redis-%d.sock", env("MICA_TEST_DIR"),
		 (int)getpid());
	c = config();
	c.socket_path = path;
	ck_assert_int_eq(mica_kv_open(&kv, &c), MICA_EKVCONN);
	ck_assert_ptr_null(kv);

	/* A thread handle reports the same on its first command. */
	ck_assert_int_eq(mica_kv_global_init(&c), 0);
	ck_assert_int_eq(mica_kv_global_init(&c), MICA_ESTATE);
	mica_kv *t = mica_kv_thread();
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(mica_kv_set(t, key("x"), "x", 1, 10), MICA_EKVCONN);
	mica_kv_global_cleanup();

	c.socket_path = NULL;
	ck_assert_int_eq(mica_kv_open(&kv, &c), MICA_EINVAL);
}
END_TEST

/* lib/kvcache's handle is bound to its connection: after a restart it fails
 * with MICA_EKVCONN every time instead of reconnecting, since tracking and
 * subscription set up on the old connection would be missing on a new one. */
START_TEST(quiet_handle_never_reconnects)
{
	struct mica_kv_config c = config();
	mica_kv *q = NULL;
	redisReply *r = NULL;
	const char *argv[2] = {"CLIENT", "ID"};
	ck_assert_int_eq(mica__kv_open_quiet(&q, &c), 0);
	ck_assert_int_eq(mica_kv_command(q, &r, 2, argv, NULL), 0);
	freeReplyObject(r);
	r = NULL;

	int st = system(env("MICA_REDIS_RESTART"));
	ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "restart failed: %d", st);

	ck_assert_int_eq(mica_kv_command(q, &r, 2, argv, NULL), MICA_EKVCONN);
	ck_assert_ptr_null(r);
	ck_assert_ptr_null(mica__kv_context(q));
	ck_assert_int_eq(mica_kv_command(q, &r, 2, argv, NULL), MICA_EKVCONN);
	ck_assert_ptr_null(r);
	mica_kv_close(&q);
}
END_TEST

static pthread_barrier_t both_connected;

struct thread_result {
	const char *key;
	long long client_id;
	int rc;
};

static void *thread_main(void *arg)
{
	struct thread_result *r = arg;
	mica_kv *kv = mica_kv_thread();
	const char *argv[2] = {"CLIENT", "ID"};
	redisReply *reply = NULL;
	r->rc = kv ? mica_kv_command(kv, &reply, 2, argv, NULL) : MICA_ENOMEM;
	if (r->rc == 0) {
		r->client_id = reply->integer;
		freeReplyObject(reply);
	}
	/* Both connections are open at once from here on. */
	pthread_barrier_wait(&both_connected);
	if (r->rc == 0)
		r->rc = mica_kv_nonce(kv, r->key, 60);
	return NULL;
}

/* Two threads, each on its own connection, race for one nonce: exactly one
 * wins. */
START_TEST(thread_handles_share_nothing)
{
	struct mica_kv_config c = config();
	ck_assert_int_eq(mica_kv_global_init(&c), 0);
	ck_assert_int_eq(pthread_barrier_init(&both_connected, NULL, 2), 0);
	const char *k = key("thread-nonce");
	struct thread_result r[2] = {{.key = k}, {.key = k}};
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, thread_main, &r[i]), 0);
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_join(th[i], NULL), 0);
	ck_assert_int_ne(r[0].client_id, r[1].client_id);
	ck_assert_msg((r[0].rc == 0 && r[1].rc == MICA_EREPLAY) ||
			      (r[1].rc == 0 && r[0].rc == MICA_EREPLAY),
		      "rcs %d %d", r[0].rc, r[1].rc);
	mica_kv *kv = mica_kv_thread();
	ck_assert_ptr_nonnull(kv);
	ck_assert_int_eq(mica_kv_del(kv, k, NULL), 0);
	mica_kv_global_cleanup();
	pthread_barrier_destroy(&both_connected);
}
END_TEST

static Suite *kv_suite(void)
{
	Suite *s = suite_create("kv");
	TCase *tc = tcase_create("redis");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, get_set_del_ttl);
	tcase_add_test(tc, argv_is_binary_safe);
	tcase_add_test(tc, reconnect_after_restart);
	tcase_add_test(tc, quiet_handle_never_reconnects);
	tcase_add_test(tc, rate_limit_fixed_window);
	tcase_add_test(tc, nonce_single_use);
	tcase_add_test(tc, acl_refusals);
	tcase_add_test(tc, connect_failures);
	tcase_add_test(tc, thread_handles_share_nothing);
	suite_add_tcase(s, tc);
	return s;
}

static const char *const needs[] = {
	"MICA_REDIS_SOCKET",  "MICA_REDIS_USER", "MICA_REDIS_PASSWORD_FILE",
	"MICA_REDIS_RESTART", "MICA_TEST_DIR",	 NULL};

const struct mica_check mica_check = {
	.suite = kv_suite, .needs = needs, .log = MICA_CHECK_LOG_ERRORS};
