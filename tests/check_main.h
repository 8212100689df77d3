/*
 * check_main.h - the one main() of every Check test program (tests/check_main.c).
 *
 * A test file (tests/unit/test_NAME.c, tests/integration/test_NAME.c) holds only its tests,
 * the function that builds its Suite and one description the shared main reads:
 *
 *     static Suite *name_suite(void)
 *     {
 *             Suite *s = suite_create("name");
 *             TCase *tc = tcase_create("name");
 *             tcase_add_test(tc, first_test);
 *             tcase_set_timeout(tc, 30);
 *             suite_add_tcase(s, tc);
 *             return s;
 *     }
 *
 *     const struct mica_check mica_check = {.suite = name_suite};
 *
 * The Makefile links tests/check_main.c into every such program. main() then:
 *   1. checks that every variable in .needs is set and not empty (else: "test_NAME: VAR is not
 *      set; run through tests/run", exit 1, nothing else runs);
 *   2. sets mica_log_min_level as .log says;
 *   3. runs .setup, if any; when it fails (nonzero) the suite does not run and the test fails;
 *   4. runs the suite in Check's fork mode (each test in its own process, so timeouts, crashes
 *      and exits are reported per test), or as the CK_FORK environment variable says when
 *      .fork_from_env is set; output CK_NORMAL;
 *   5. runs .teardown, if any, always (also after a failed setup, so it must cope with a
 *      partial setup); a nonzero result fails the test;
 *   6. exits 0 when no test failed or erred and setup and teardown succeeded, else 1.
 *
 * Check's own environment variables keep working: CK_RUN_SUITE, CK_RUN_CASE, CK_DEFAULT_TIMEOUT,
 * CK_TIMEOUT_MULTIPLIER (tests/run sets it under build-asan), CK_VERBOSITY.
 */
#ifndef MICA_TESTS_CHECK_MAIN_H
#define MICA_TESTS_CHECK_MAIN_H

#include <check.h>
#include <stdbool.h>

/* The log level of a test run. MICA_LOG_LEVEL in the environment, when it names a level
 * (debug, info, warn, error, off), wins over ERRORS and OFF. */
enum mica_check_log {
	MICA_CHECK_LOG_DEFAULT = 0, /* libmica's default; the tests set it where they care */
	MICA_CHECK_LOG_ERRORS,	    /* only errors (MICA_LOG_ERROR) */
	MICA_CHECK_LOG_OFF,	    /* nothing (MICA_LOG_OFF) */
};

struct mica_check {
	/* Builds the suite: its test cases, their timeouts, fixtures and loop tests. Required. */
	Suite *(*suite)(void);
	/* Environment variables the test needs, NULL-terminated; NULL for none. */
	const char *const *needs;
	/* Before the suite, in the parent process (databases, daemons, files the tests share).
	 * Returns 0 on success; it prints why it failed. NULL for none. */
	int (*setup)(void);
	/* After the suite, always, in the parent process. Returns 0 on success. NULL for none. */
	int (*teardown)(void);
	enum mica_check_log log;
	/* true: Check's default, the CK_FORK environment variable decides (CK_FORK=no runs the
	 * tests in this process, for a debugger); false: always fork. */
	bool fork_from_env;
};

/* Defined once by each test file. */
extern const struct mica_check mica_check;

/* The program's name (test_NAME), for messages; set by main() before anything runs. */
extern const char *mica_check_name;

#endif
