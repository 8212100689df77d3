/* test_limits.c - account/limits.c fails closed: with no Redis configured,
 * or Redis configured but unreachable, every security limit (rate limit,
 * counters, captcha nonce, code quota) refuses with 503 unavailable naming
 * Redis instead of letting the request through uncounted, and the readiness
 * state says Redis is down. No services: the unreachable Redis is a socket
 * path nothing listens on. */
#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "kv.h"
#include "tests/check_main.h"

/* Asserts a 503 naming Redis (message and "dependency" member), then
 * clears |f| for the next call. */
static void assert_503(mica_problem *f, int err)
{
	ck_assert_int_ne(err, 0);
	ck_assert_int_eq(f->status, 503);
	ck_assert_str_eq(f->code, "unavailable");
	ck_assert_ptr_nonnull(strstr(f->msg, "Redis"));
	ck_assert_str_eq(json_string_value(json_object_get(f->extra, "dependency")), "redis");
	json_decref(f->extra);
	memset(f, 0, sizeof(*f));
}

/* Every limit, refused; and the state it leaves. */
static void every_limit_refuses(void)
{
	struct acct_config cfg = {.codes_per_hour = 5, .codes_per_address_hour = 20};
	acct_service s = {.cfg = &cfg};
	mica_problem f = {0};
	long a = 7, b = 7;
	int allowed = 1, fresh = 1;
	const char *why = NULL;

	assert_503(&f, acct_limit_hit("account:logins:1", 30, 3600, &allowed, &f));
	ck_assert_int_eq(allowed, 0);
	assert_503(&f, acct_counters_get("account:fail:user:1", "account:fail:net:x", &a, &b, &f));
	ck_assert_int_eq(a, 0);
	assert_503(&f, acct_counter_bump("account:fail:user:1", 900, &f));
	assert_503(&f, acct_nonce_use("account:altcha:x", 360, &fresh, &f));
	ck_assert_int_eq(fresh, 0);
	assert_503(&f, acct_code_quota(&s, ACCT_CODES_OPEN, "kc:v1:idx", "kc:v1:net", &f));
	assert_503(&f, acct_code_quota(&s, ACCT_CODES_OWNER, "kc:v1:idx", "user:1", &f));
	acct_counter_clear("account:fail:user:1"); /* only logs */
	ck_assert(!acct_limits_ready(&why));
	ck_assert_ptr_nonnull(why);
	ck_assert_ptr_nonnull(strstr(why, "Redis"));
	ck_assert(!acct_limits_probe(NULL));
}

START_TEST(no_redis_configured)
{
	ck_assert(acct_limits_ready(NULL)); /* nothing tried yet */
	every_limit_refuses();
}
END_TEST

START_TEST(redis_unreachable)
{
	struct mica_kv_config c = {.socket_path = "/nonexistent/mica-test/redis.sock",
				   .username = "account",
				   .password = "x",
				   .timeout_ms = 200};
	ck_assert_int_eq(mica_kv_global_init(&c), 0);
	every_limit_refuses();
	mica_kv_global_cleanup();
}
END_TEST

static Suite *limits_suite(void)
{
	Suite *s = suite_create("limits");
	TCase *tc = tcase_create("fail_closed");
	tcase_add_test(tc, no_redis_configured);
	tcase_add_test(tc, redis_unreachable);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = limits_suite};
