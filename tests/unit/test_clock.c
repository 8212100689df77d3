/* test_clock.c - unit tests for lib/clock: both clocks follow the kernel's,
 * and the test hooks move them (advance: both; skew: the wall clock only)
 * so that tests make a TTL pass without sleeping. */
#include <check.h>
#include <stdlib.h>
#include <time.h>

#include "clock.h"
#include "tests/check_main.h"

static int64_t real_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

START_TEST(clocks_follow_the_kernel)
{
	int64_t w = real_wall_ms();
	ck_assert_int_le(llabs(mica_clock_now_ms() - w), 1000);
	ck_assert_int_le(llabs(mica_clock_now() - (int64_t)time(NULL)), 1);
	ck_assert_int_le(llabs(mica_clock_now_us() / 1000 - w), 1000);
	int64_t a = mica_clock_ms(), b = mica_clock_ms();
	ck_assert_int_ge(b, a);
}
END_TEST

START_TEST(advance_moves_both_clocks)
{
	int64_t mono = mica_clock_ms(), wall = mica_clock_now_ms(), secs = mica_clock_now();
	mica__clock_advance_ms(3600 * 1000);
	ck_assert_int_ge(mica_clock_ms() - mono, 3600 * 1000);
	ck_assert_int_lt(mica_clock_ms() - mono, 3600 * 1000 + 1000);
	ck_assert_int_ge(mica_clock_now_ms() - wall, 3600 * 1000);
	ck_assert_int_ge(mica_clock_now() - secs, 3600);
	ck_assert_int_le(mica_clock_now() - secs, 3601);
	ck_assert_int_ge(mica_clock_now_us() / 1000 - wall, 3600 * 1000);
	/* Time never runs backwards. */
	int64_t before = mica_clock_ms();
	mica__clock_advance_ms(-5000);
	ck_assert_int_ge(mica_clock_ms(), before);
}
END_TEST

START_TEST(skew_moves_only_the_wall_clock)
{
	int64_t mono = mica_clock_ms(), wall = mica_clock_now_ms();
	mica__clock_skew_wall_ms(-86400 * 1000LL);
	ck_assert_int_le(llabs(mica_clock_now_ms() - (wall - 86400 * 1000LL)), 1000);
	ck_assert_int_lt(mica_clock_ms() - mono, 1000);
	ck_assert_int_le(llabs(mica_clock_now() - ((int64_t)time(NULL) - 86400)), 1);
}
END_TEST

static Suite *clock_suite(void)
{
	Suite *s = suite_create("clock");
	TCase *tc = tcase_create("clocks");

	tcase_add_test(tc, clocks_follow_the_kernel);
	tcase_add_test(tc, advance_moves_both_clocks);
	tcase_add_test(tc, skew_moves_only_the_wall_clock);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = clock_suite};
