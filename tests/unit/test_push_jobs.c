/* test_push_jobs.c - the pure parts of the push service's scheduled jobs:
 * mica_parse_time_ms() (the clock `mica push purge --at` injects: RFC 3339
 * with Z or an offset, or epoch milliseconds; impossible dates refused),
 * push_receipt_url_ok() (receipts go to https:// only) and
 * push_receipt_body() (MiPush's per-message map: totals and the echoed
 * param, only the kinds the developer asked for, and nothing else). */
#include <check.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mipush/push.h"
#include "parse.h"
#include "tests/check_main.h"

START_TEST(parses_rfc3339_and_epoch_ms)
{
	int64_t ms = 0;
	ck_assert_int_eq(mica_parse_time_ms("1970-01-01T00:00:00Z", &ms), 0);
	ck_assert(ms == 0);
	ck_assert_int_eq(mica_parse_time_ms("2026-03-10T00:00:00Z", &ms), 0);
	ck_assert(ms == 1773100800000LL);
	ck_assert_int_eq(mica_parse_time_ms("2026-03-10T02:00:00+02:00", &ms), 0);
	ck_assert(ms == 1773100800000LL);
	ck_assert_int_eq(mica_parse_time_ms("2026-03-09T23:30:00-00:30", &ms), 0);
	ck_assert(ms == 1773100800000LL);
	ck_assert_int_eq(mica_parse_time_ms("2026-03-10T00:00:00.25Z", &ms), 0);
	ck_assert(ms == 1773100800250LL);
	ck_assert_int_eq(mica_parse_time_ms("2026-03-10t00:00:00.123456789z", &ms), 0);
	ck_assert(ms == 1773100800123LL);
	ck_assert_int_eq(mica_parse_time_ms("2024-02-29T12:00:00Z", &ms), 0);
	ck_assert(ms == 1709208000000LL);
	ck_assert_int_eq(mica_parse_time_ms("1773100800001", &ms), 0);
	ck_assert(ms == 1773100800001LL);
}
END_TEST

START_TEST(refuses_what_is_not_a_time)
{
	static const char *const bad[] = {
		"",
		"now",
		"-1",
		"2026-03-10",
		"2026-03-10T00:00:00",	    /* no zone */
		"2026-03-10 00:00:00Z",	    /* space */
		"2026-02-29T00:00:00Z",	    /* not a leap year */
		"2026-04-31T00:00:00Z",	    /* April has 30 days */
		"2026-13-01T00:00:00Z",	    /* month */
		"2026-03-10T24:00:00Z",	    /* hour */
		"2026-03-10T00:60:00Z",	    /* minute */
		"2026-03-10T00:00:60Z",	    /* leap seconds are not accepted */
		"2026-03-10T00:00:00.Z",    /* empty fraction */
		"2026-03-10T00:00:00+2:00", /* offset digits */
		"2026-03-10T00:00:00+24:00",
		"2026-03-10T00:00:00Zjunk",
		"1969-12-31T23:59:59Z",
		"99999999999999999999999",
		"12a4",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int64_t ms = 42;
		ck_assert_msg(mica_parse_time_ms(bad[i], &ms) == MICA_EINVAL, "accepted \"%s\"",
			      bad[i]);
		ck_assert(ms == 42);
	}
	int64_t ms = 0;
	ck_assert_int_eq(mica_parse_time_ms(NULL, &ms), MICA_EINVAL);
}
END_TEST

START_TEST(receipts_go_to_https_only)
{
	ck_assert(push_receipt_url_ok("https://example.com/receipts"));
	ck_assert(push_receipt_url_ok("HTTPS://example.com:8443/r?k=v"));
	ck_assert(!push_receipt_url_ok("http://example.com/receipts"));
	ck_assert(!push_receipt_url_ok("https://"));
	ck_assert(!push_receipt_url_ok("https:///path"));
	ck_assert(!push_receipt_url_ok("https://@host/"));
	ck_assert(!push_receipt_url_ok("https://host/a b"));
	ck_assert(!push_receipt_url_ok("ftp://example.com/"));
	ck_assert(!push_receipt_url_ok("file:///etc/passwd"));
	ck_assert(!push_receipt_url_ok("example.com"));
	ck_assert(!push_receipt_url_ok(NULL));
}
END_TEST

START_TEST(receipt_body_carries_totals_and_param_only)
{
	json_error_t e;
	json_t *rows = json_loads("["
				  "{\"msg_id\":\"m1\",\"param\":\"p1\",\"type\":1,\"jobkey\":\"j\","
				  "\"delivered\":3,\"invalid\":9},"
				  "{\"msg_id\":\"m2\",\"param\":\"\",\"type\":17,\"jobkey\":null,"
				  "\"delivered\":0,\"invalid\":2},"
				  "{\"msg_id\":\"m3\",\"param\":\"x\",\"type\":16,\"jobkey\":null,"
				  "\"delivered\":5,\"invalid\":1}]",
				  0, &e);
	ck_assert_ptr_nonnull(rows);
	json_t *body = push_receipt_body(rows, 1773100800000LL);
	ck_assert_ptr_nonnull(body);
	char *text = json_dumps(body, JSON_SORT_KEYS | JSON_COMPACT);
	ck_assert_str_eq(text, "{\"m1\":{\"delivered\":3,\"jobkey\":\"j\",\"param\":\"p1\","
			       "\"timestamp\":1773100800000,\"type\":1},"
			       "\"m2\":{\"delivered\":0,\"invalid\":2,\"param\":\"\","
			       "\"timestamp\":1773100800000,\"type\":17},"
			       "\"m3\":{\"invalid\":1,\"param\":\"x\",\"timestamp\":1773100800000,"
			       "\"type\":16}}");
	free(text);
	json_decref(body);
	json_decref(rows);
	/* A row without a message id makes no body rather than a wrong one. */
	rows = json_loads("[{\"param\":\"p\",\"type\":1}]", 0, &e);
	ck_assert_ptr_null(push_receipt_body(rows, 0));
	json_decref(rows);
}
END_TEST

static Suite *push_jobs_suite(void)
{
	Suite *s = suite_create("push_jobs");
	TCase *tc = tcase_create("push_jobs");
	tcase_add_test(tc, parses_rfc3339_and_epoch_ms);
	tcase_add_test(tc, refuses_what_is_not_a_time);
	tcase_add_test(tc, receipts_go_to_https_only);
	tcase_add_test(tc, receipt_body_carries_totals_and_param_only);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = push_jobs_suite};
