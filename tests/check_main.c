/*
 * check_main.c - main() of every Check test program; see check_main.h for what a test file
 * provides and what this does with it.
 */
#include "tests/check_main.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

const char *mica_check_name = "test";

static void set_log_level(enum mica_check_log log)
{
	const char *env = getenv("MICA_LOG_LEVEL");
	int level;

	if (log == MICA_CHECK_LOG_DEFAULT)
		return;
	level = log == MICA_CHECK_LOG_ERRORS ? MICA_LOG_ERROR : MICA_LOG_OFF;
	if (env && mica_log_level_parse(env) >= 0)
		level = mica_log_level_parse(env);
	mica_log_min_level = level;
}

int main(int argc, char **argv)
{
	const struct mica_check *t = &mica_check;
	int failed = 1;

	(void)argc;
	if (argv[0] && *argv[0]) {
		const char *slash = strrchr(argv[0], '/');
		mica_check_name = slash ? slash + 1 : argv[0];
	}
	for (const char *const *v = t->needs; v && *v; v++) {
		const char *value = getenv(*v);
		if (!value || !*value) {
			fprintf(stderr, "%s: %s is not set; run through tests/run\n",
				mica_check_name, *v);
			return EXIT_FAILURE;
		}
	}
	set_log_level(t->log);
	if (!t->setup || t->setup() == 0) {
		SRunner *sr = srunner_create(t->suite());
		if (!t->fork_from_env)
			srunner_set_fork_status(sr, CK_FORK);
		srunner_run_all(sr, CK_NORMAL);
		failed = srunner_ntests_failed(sr);
		srunner_free(sr);
	} else {
		fprintf(stderr, "%s: setup failed\n", mica_check_name);
	}
	if (t->teardown && t->teardown() != 0)
		failed = 1;
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
