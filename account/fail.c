/* fail.c - how a flow reports why it failed: acct_failf() for an answer
 * the flow chose, acct_fail_internal() for a dependency's error, mapped to
 * 503 unavailable naming the dependency (as /readyz names it) or 500. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "account/account.h"
#include "log.h"

int acct_failf(struct acct_fail *f, int status, const char *code, const char *fmt, ...)
{
	va_list ap;
	f->status = status;
	f->code = code;
	va_start(ap, fmt);
	vsnprintf(f->msg, sizeof(f->msg), fmt, ap);
	va_end(ap);
	return status >= 500 ? MICA_EIO : MICA_EINVAL;
}

/* Failures that say a dependency is down or refusing for now. */
static bool unavailable(int err)
{
	return err == MICA_EDBCONN || err == MICA_EKVCONN || err == MICA_EHTTP ||
	       err == MICA_ETIMEOUT || err == MICA_ETLS || err == MICA_EAUDIT || err == MICA_EHSM;
}

/* The dependency behind a failure of |what| with |err|: named by the
 * caller when |what| is one, else told by the error. /readyz uses the same
 * names. */
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
	if (err == MICA_EDBCONN)
		return "database";
	return "keycenter"; /* the other unavailable() errors come from its client */
}

static const char *dependency_name(const char *dep)
{
	return strcmp(dep, "database") == 0   ? "the database (PostgreSQL)"
	       : strcmp(dep, "redis") == 0    ? "Redis"
	       : strcmp(dep, "notifier") == 0 ? "the notifier (e-mail or SMS sender)"
					      : "the Key Center";
}

int acct_fail_internal(struct acct_fail *f, int err, const char *what)
{
	MICA_LOG(MICA_LOG_ERROR, "account: %s failed: %s", what, mica_strerror(err));
	/* A mail or SMS server that fails or refuses is down for us, whatever
	 * its reason (the log line has it). */
	bool notifier =
	    strcmp(what, "the notifier") == 0 && err != MICA_EINVAL && err != MICA_ENOMEM;
	if (!unavailable(err) && !notifier) {
		acct_failf(f, 500, "internal_error", "%s failed", what);
		return err;
	}
	const char *dep = dependency_of(err, what);
	/* The Key Center records every request in PostgreSQL before it
	 * answers, so with the database down it fails too: name the cause. */
	mica_db *db = mica_db_thread();
	if (strcmp(dep, "keycenter") == 0 &&
	    (!db || mica_db_exec(db, "SELECT 1", 0, NULL, NULL) != 0))
		dep = "database";
	acct_failf(f, 503, "unavailable", "%s is unavailable; try again", dependency_name(dep));
	json_decref(f->extra);
	f->extra = json_pack("{s:s}", "dependency", dep);
	return err;
}
