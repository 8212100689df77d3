/* problem.c - the failure of a request as status, code, message and extra
 * members (see problem.h), with the status of an error taken from the
 * MICA_ERRNO_MAP table so that no service keeps a private mapping. */
#include "problem.h"

#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void mica_problem_vsetf(mica_problem *p, int status, const char *code, const char *fmt, va_list ap)
{
	p->status = status;
	p->code = code;
	vsnprintf(p->msg, sizeof(p->msg), fmt, ap);
}

int mica_problemf(mica_problem *p, int status, const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	mica_problem_vsetf(p, status, code, fmt, ap);
	va_end(ap);
	return status >= 500 ? MICA_EIO : MICA_EINVAL;
}

/* The dependency an error names by itself, or NULL. */
static const char *dependency_of(int err)
{
	switch (err) {
	case MICA_EDBCONN:
	case MICA_ESERIALIZATION:
		return "database";
	case MICA_EKVCONN:
		return "redis";
	case MICA_EHSM:
	case MICA_EPIN:
		return "hsm";
	case MICA_EAUDIT:
		return "audit";
	case MICA_ESEALED:
		return "seal";
	default:
		return NULL;
	}
}

int mica_problem_from_err(mica_problem *p, int err, const char *what)
{
	int status = mica_http_status(err);
	if (err == 0)
		status = 500;
	if (status == 500) {
		mica_problemf(p, 500, "internal_error", "%s failed", what ? what : "the request");
	} else {
		if (what)
			mica_problemf(p, status, mica_strerror(err), "%s: %s", what,
				      mica_errmsg(err));
		else
			mica_problemf(p, status, mica_strerror(err), "%s", mica_errmsg(err));
		const char *dep = status == 503 ? dependency_of(err) : NULL;
		if (dep)
			(void)mica_problem_set_extra(p, "dependency", json_string(dep));
	}
	return err ? err : MICA_EIO;
}

/* How a message names a dependency. */
static const char *dependency_name(const char *dep)
{
	static const struct {
		const char *dep, *name;
	} names[] = {
		{"database", "the database (PostgreSQL)"},
		{"redis", "Redis"},
		{"keycenter", "the Key Center"},
		{"notifier", "the notifier (e-mail or SMS sender)"},
		{"hsm", "the HSM"},
		{"audit", "the audit trail"},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(dep, names[i].dep) == 0)
			return names[i].name;
	return dep;
}

int mica_problem_unavailable(mica_problem *p, const char *dependency)
{
	mica_problemf(p, 503, "unavailable", "%s is unavailable; try again",
		      dependency_name(dependency));
	(void)mica_problem_set_extra(p, "dependency", json_string(dependency));
	return MICA_EIO;
}

int mica_problem_dependency(mica_problem *p, const char *service, int err, const char *what)
{
	MICA_LOG(MICA_LOG_ERROR, "%s: %s failed: %s", service, what, mica_strerror(err));
	switch (err) {
	case MICA_EDBCONN:
	case MICA_ETIMEOUT:
	case MICA_ESERIALIZATION:
		mica_problem_unavailable(p, "database");
		return err;
	case MICA_EKVCONN:
	case MICA_EKV:
		mica_problem_unavailable(p, "redis");
		return err;
	case MICA_EAUTH:
	case MICA_EDENIED:
	case MICA_ENOTFOUND:
	case MICA_EAUDIT:
	case MICA_EHSM:
	case MICA_EHTTP:
	case MICA_ETLS:
	case MICA_EBADHEADER:
		mica_problem_unavailable(p, "keycenter");
		return err;
	default:
		mica_problemf(p, 500, "internal_error", "%s failed", what);
		return err ? err : MICA_EIO;
	}
}

int mica_problem_set_extra(mica_problem *p, const char *name, json_t *value)
{
	if (!value)
		return MICA_ENOMEM;
	if (!p->extra && !(p->extra = json_object())) {
		json_decref(value);
		return MICA_ENOMEM;
	}
	return json_object_set_new(p->extra, name, value) == 0 ? 0 : MICA_ENOMEM;
}

json_t *mica_problem_json(const mica_problem *p)
{
	const char *code = p->code ? p->code : "internal_error";
	const char *msg = p->code ? p->msg : "internal error";
	json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
	if (body && p->extra) {
		/* An extra member never replaces the error itself. */
		const char *k;
		json_t *v;
		json_object_foreach(p->extra, k, v)
		{
			if (strcmp(k, "error") != 0)
				json_object_set(body, k, v);
		}
	}
	return body;
}

void mica_problem_cleanup(mica_problem *p)
{
	if (!p)
		return;
	json_decref(p->extra);
	memset(p, 0, sizeof(*p));
}
