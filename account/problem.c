/* problem.c - how the account service names a failed dependency in its
 * answers: which of its dependencies (database, Redis, Key Center,
 * notifier: the names /readyz uses) a failure belongs to, and whether it is
 * down for now (503, lib/problem.h) or a bug (500). */
#include <stdbool.h>
#include <string.h>

#include "account/account.h"
#include "log.h"

/* The dependency behind a failure of |what| with |err|: named by the
 * caller when |what| is one, else told by the error. */
static const char *dependency_of(int err, const char *what)
{
	static const struct {
		const char *what, *dep;
	} named[] = {
		{"the Key Center", "keycenter"},   {"the database", "database"},
		{"the account store", "database"}, {"the session store", "database"},
		{"the notifier", "notifier"},
	};
	/* The development notifier writes to the database. */
	if (err == MICA_EDBCONN && strcmp(what, "the notifier") == 0)
		return "database";
	for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++)
		if (strcmp(what, named[i].what) == 0)
			return named[i].dep;
	if (err == MICA_EKVCONN)
		return "redis";
	if (err == MICA_EDBCONN || err == MICA_ESERIALIZATION)
		return "database";
	return "keycenter"; /* the other unavailable errors come from its client */
}

int acct_problem_dependency(mica_problem *f, int err, const char *what)
{
	MICA_LOG(MICA_LOG_ERROR, "account: %s failed: %s", what, mica_strerror(err));
	int status = mica_http_status(err);
	/* A mail or SMS server that fails or refuses is down for us, whatever
	 * its reason (the log line has it); so is anything that rate-limits
	 * us. */
	bool down = status == 503 || status == 429 ||
		    (strcmp(what, "the notifier") == 0 && err != MICA_EINVAL && err != MICA_ENOMEM);
	if (!down || err == 0) {
		mica_problemf(f, 500, "internal_error", "%s failed", what);
		return err ? err : MICA_EIO;
	}
	const char *dep = dependency_of(err, what);
	/* The Key Center records every request in PostgreSQL before it
	 * answers, so with the database down it fails too: name the cause. */
	mica_db *db = mica_db_thread();
	if (strcmp(dep, "keycenter") == 0 &&
	    (!db || mica_db_exec(db, "SELECT 1", 0, NULL, NULL) != 0))
		dep = "database";
	json_decref(f->extra);
	f->extra = NULL;
	mica_problem_unavailable(f, dep);
	return err;
}
