/* test_log.c - error strings, the JSON-lines logger (escaping, request ids,
 * level checked before arguments are evaluated, buffered lines) and the
 * masking helpers. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "tests/check_main.h"

START_TEST(error_strings_are_distinct)
{
	ck_assert_str_eq(mica_strerror(0), "ok");
	ck_assert_str_eq(mica_strerror(MICA_EAUTH), "authentication_failed");
	ck_assert_str_eq(mica_errmsg(MICA_ENOMEM), "out of memory");
	ck_assert_str_eq(mica_strerror(1), "unknown_error");
	ck_assert_str_eq(mica_strerror(MICA__ERR_END), "unknown_error");
	for (int a = MICA__ERR_BASE + 1; a < MICA__ERR_END; a++) {
		ck_assert_str_ne(mica_strerror(a), "unknown_error");
		for (int b = a + 1; b < MICA__ERR_END; b++)
			ck_assert_str_ne(mica_strerror(a), mica_strerror(b));
	}
}
END_TEST

static int evaluated;
static const char *count_eval(void)
{
	evaluated++;
	return "x";
}

/* Runs MICA_LOG with stderr redirected to a file and returns what was written. */
static char *capture(int level, const char *msg)
{
	static char buf[8192];
	char path[] = "/tmp/mica-log-XXXXXX";
	int fd = mkstemp(path), saved = dup(2);
	dup2(fd, 2);
	MICA_LOG(level, "%s %s", msg, count_eval());
	dup2(saved, 2);
	close(saved);
	lseek(fd, 0, SEEK_SET);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = '\0';
	close(fd);
	unlink(path);
	return buf;
}

START_TEST(log_lines_are_json_and_level_first)
{
	mica_log_min_level = MICA_LOG_WARN;
	evaluated = 0;
	ck_assert_str_eq(capture(MICA_LOG_INFO, "hidden"), "");
	ck_assert_int_eq(evaluated, 0);
	mica_log_set_request_id("req-1");
	char *line = capture(MICA_LOG_ERROR, "quote\" nl\n ctl\x01");
	ck_assert_int_eq(evaluated, 1);
	ck_assert_ptr_nonnull(strstr(line, "\"level\":\"error\""));
	ck_assert_ptr_nonnull(strstr(line, "\"req\":\"req-1\""));
	ck_assert_ptr_nonnull(strstr(line, "\"msg\":\"quote\\\" nl\\n ctl\\u0001 x\"}\n"));
	ck_assert_int_eq((int)(strchr(line, '\n') - line), (int)strlen(line) - 1);
	mica_log_set_request_id(NULL);
	ck_assert_ptr_null(strstr(capture(MICA_LOG_ERROR, "y"), "\"req\""));
	ck_assert_int_eq(mica_log_level_parse("debug"), MICA_LOG_DEBUG);
	ck_assert_int_eq(mica_log_level_parse("loud"), -1);
}
END_TEST

/* Reads all of |fd| from its start into a malloc'd string. */
static char *slurp(int fd)
{
	off_t end = lseek(fd, 0, SEEK_END);
	char *b = malloc((size_t)end + 1);
	ck_assert_ptr_nonnull(b);
	ck_assert_int_eq(pread(fd, b, (size_t)end, 0), end);
	b[end] = '\0';
	return b;
}

/* Buffered lines arrive on their own within the flush interval, in order,
 * whole, none lost when they overflow the buffer, and before any
 * unbuffered line logged after them. */
START_TEST(buffered_lines_keep_order_and_arrive)
{
	char path[] = "/tmp/mica-log-XXXXXX";
	int fd = mkstemp(path), saved = dup(2);
	ck_assert_int_ge(fd, 0);
	unlink(path);
	dup2(fd, 2);
	mica_log_min_level = MICA_LOG_INFO;

	MICA_LOG_BUFFERED(MICA_LOG_INFO, "alone %d", 1);
	char *b = NULL;
	for (int i = 0; i < 500; i++) { /* 5 s at most; due after 100 ms */
		free(b);
		b = slurp(fd);
		if (strstr(b, "alone 1"))
			break;
		nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
	}
	ck_assert_ptr_nonnull(strstr(b, "\"msg\":\"alone 1\"}\n"));
	free(b);

	/* 3000 lines of about 130 bytes: several times the 64 KiB buffer. */
	enum { N = 3000 };
	ck_assert_int_eq(ftruncate(fd, 0), 0);
	lseek(fd, 0, SEEK_SET); /* stderr shares this offset */
	for (int i = 0; i < N; i++)
		MICA_LOG_BUFFERED(MICA_LOG_INFO, "access n=%d", i);
	MICA_LOG(MICA_LOG_WARN, "after the access lines");
	dup2(saved, 2);
	close(saved);

	b = slurp(fd);
	close(fd);
	char *p = b, *nl;
	int next = 0;
	while ((nl = strchr(p, '\n'))) {
		*nl = '\0';
		ck_assert_msg(p[0] == '{' && nl[-1] == '}', "torn line: %s", p);
		char *m = strstr(p, "\"msg\":\"access n=");
		if (m) {
			ck_assert_int_eq(atoi(m + strlen("\"msg\":\"access n=")), next);
			next++;
		} else {
			ck_assert_ptr_nonnull(strstr(p, "after the access lines"));
			ck_assert_int_eq(next, N);
			ck_assert_str_eq(nl + 1, "");
		}
		p = nl + 1;
	}
	ck_assert_int_eq(next, N);
	ck_assert_str_eq(p, "");
	free(b);
}
END_TEST

/* A process that exits right after buffering lines still writes them. */
START_TEST(buffered_lines_are_written_at_exit)
{
	char path[] = "/tmp/mica-log-XXXXXX";
	int fd = mkstemp(path), status;
	ck_assert_int_ge(fd, 0);
	unlink(path);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		dup2(fd, 2);
		mica_log_min_level = MICA_LOG_INFO;
		for (int i = 0; i < 3; i++)
			MICA_LOG_BUFFERED(MICA_LOG_INFO, "exiting %d", i);
		exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	char *b = slurp(fd);
	close(fd);
	ck_assert_ptr_nonnull(strstr(b, "exiting 0"));
	ck_assert_ptr_nonnull(strstr(b, "exiting 2\"}\n"));
	free(b);
}
END_TEST

START_TEST(masks)
{
	char b[64];
	ck_assert_str_eq(mica_mask_ip(b, sizeof(b), "192.168.10.77"), "192.168.*.*");
	ck_assert_str_eq(mica_mask_ip(b, sizeof(b), "2001:db8:1:2::5"), "2001:db8:*");
	ck_assert_str_eq(mica_mask_ip(b, sizeof(b), "256.1.1.1"), "***");
	ck_assert_str_eq(mica_mask_ip(b, sizeof(b), "1.2.3"), "***");
	ck_assert_str_eq(mica_mask_ip(b, sizeof(b), NULL), "***");
	ck_assert_str_eq(mica_mask_phone(b, sizeof(b), "13812345678"), "138****5678");
	ck_assert_str_eq(mica_mask_phone(b, sizeof(b), "123"), "***");
	ck_assert_str_eq(mica_mask_email(b, sizeof(b), "alice@example.com"), "a***@example.com");
	ck_assert_str_eq(mica_mask_email(b, sizeof(b), "@example.com"), "***");
	ck_assert_str_eq(mica_mask_email(b, sizeof(b), "alice"), "***");
	ck_assert_str_eq(mica_mask_id(b, sizeof(b), "a1b2c3d4e5f6"), "a1b2******");
	ck_assert_str_eq(mica_mask_id(b, sizeof(b), "short"), "***");
	ck_assert_str_eq(mica_mask_card(b, sizeof(b), "4111111111111111"), "************1111");
	ck_assert_str_eq(mica_mask_card(b, sizeof(b), "4111"), "***");
	ck_assert_str_eq(mica_mask_phone(b, 5, "13812345678"), "138*");
}
END_TEST

static Suite *log_suite(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("log");
	tcase_add_test(tc, error_strings_are_distinct);
	tcase_add_test(tc, log_lines_are_json_and_level_first);
	tcase_add_test(tc, buffered_lines_keep_order_and_arrive);
	tcase_add_test(tc, buffered_lines_are_written_at_exit);
	tcase_add_test(tc, masks);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = log_suite, .fork_from_env = true};
