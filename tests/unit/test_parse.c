/* test_parse.c - mica_parse_int64(): the whole string or nothing, no
 * clamping at the int64 bounds (strtoll's LLONG_MAX for "99...9" is what let
 * an out-of-range id reach a lookup), and the caller's range enforced. */
#include <check.h>
#include <stdint.h>

#include "parse.h"
#include "tests/check_main.h"

START_TEST(accepts_whole_decimal_integers)
{
	int64_t v = 0;
	ck_assert_int_eq(mica_parse_int64("0", INT64_MIN, INT64_MAX, &v), 0);
	ck_assert_int_eq(v, 0);
	ck_assert_int_eq(mica_parse_int64("42", 1, 100, &v), 0);
	ck_assert_int_eq(v, 42);
	ck_assert_int_eq(mica_parse_int64("007", 1, 100, &v), 0);
	ck_assert_int_eq(v, 7);
	ck_assert_int_eq(mica_parse_int64("-17", -20, 0, &v), 0);
	ck_assert_int_eq(v, -17);
	ck_assert_int_eq(mica_parse_int64("9223372036854775807", 1, INT64_MAX, &v), 0);
	ck_assert(v == INT64_MAX);
	ck_assert_int_eq(mica_parse_int64("-9223372036854775808", INT64_MIN, 0, &v), 0);
	ck_assert(v == INT64_MIN);
}
END_TEST

START_TEST(beyond_int64_is_out_of_range_not_clamped)
{
	int64_t v = 5;
	ck_assert_int_eq(mica_parse_int64("9223372036854775808", 1, INT64_MAX, &v), MICA_ERANGE);
	ck_assert_int_eq(mica_parse_int64("-9223372036854775809", INT64_MIN, 0, &v), MICA_ERANGE);
	ck_assert_int_eq(mica_parse_int64("18446744073709551616", INT64_MIN, INT64_MAX, &v),
			 MICA_ERANGE);
	ck_assert_int_eq(mica_parse_int64("99999999999999999999999999999999", 1, INT64_MAX, &v),
			 MICA_ERANGE);
	ck_assert_int_eq(v, 5); /* untouched on failure */
}
END_TEST

START_TEST(outside_the_callers_range)
{
	int64_t v = 5;
	ck_assert_int_eq(mica_parse_int64("0", 1, INT64_MAX, &v), MICA_ERANGE);
	ck_assert_int_eq(mica_parse_int64("-1", 0, 10, &v), MICA_ERANGE);
	ck_assert_int_eq(mica_parse_int64("1001", 1, 1000, &v), MICA_ERANGE);
	ck_assert_int_eq(mica_parse_int64("1000", 1, 1000, &v), 0);
	ck_assert_int_eq(v, 1000);
	ck_assert_int_eq(mica_parse_int64("1", 2, 1, &v), MICA_EINVAL); /* min > max */
}
END_TEST

START_TEST(malformed)
{
	static const char *const bad[] = {"",	 "-",	"+1",  " 1",  "1 ",  "1\n", "\t1", "0x10",
					  "1e3", "1.0", "12a", "a12", "--1", "1-",  "٣",   "1,000"};
	int64_t v = 5;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(mica_parse_int64(bad[i], INT64_MIN, INT64_MAX, &v) == MICA_EINVAL,
			      "'%s' was not refused as malformed", bad[i]);
	/* Malformed wins over too long: the digits run past int64 before the x. */
	ck_assert_int_eq(mica_parse_int64("99999999999999999999x", 1, INT64_MAX, &v), MICA_EINVAL);
	ck_assert_int_eq(mica_parse_int64(NULL, 1, 2, &v), MICA_EINVAL);
	ck_assert_int_eq(mica_parse_int64("1", 1, 2, NULL), MICA_EINVAL);
	ck_assert_int_eq(v, 5);
	ck_assert_str_eq(mica_strerror(MICA_ERANGE), "out_of_range");
}
END_TEST

static Suite *parse_suite(void)
{
	Suite *s = suite_create("parse");
	TCase *tc = tcase_create("int64");
	tcase_add_test(tc, accepts_whole_decimal_integers);
	tcase_add_test(tc, beyond_int64_is_out_of_range_not_clamped);
	tcase_add_test(tc, outside_the_callers_range);
	tcase_add_test(tc, malformed);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = parse_suite, .fork_from_env = true};
