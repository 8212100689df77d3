/* problem.h - the one way a mica service describes a failed request: an
 * HTTP status, a stable snake_case code, a message for people and optional
 * extra JSON members, filled by the flow that failed and sent by the one
 * reply function mica_http_reply_problem() (lib/http.h) as
 *
 *   {"error": {"code": "<code>", "message": "<message>"}, <extra members>}
 *
 * (docs/api/errors.md). Statuses of errors come from the MICA_ERRNO_MAP
 * column (mica_http_status()), so every service answers an error alike.
 *
 * Ownership: a mica_problem is caller-owned, zero-initialised
 * (MICA_PROBLEM_INIT); |extra| is owned by it and released by
 * mica_problem_cleanup() (safe to call twice) or by the reply. |code| is a
 * static string. Threads: a problem belongs to one request; no shared state.
 */
#ifndef MICA_PROBLEM_H
#define MICA_PROBLEM_H

#include <jansson.h>
#include <stdarg.h>

#include "err.h"

#define MICA_PROBLEM_MSG_MAX 256

typedef struct mica_problem {
	int status;			/* HTTP status; 0 until set (sent as 500) */
	const char *code;		/* stable snake_case code (static), NULL until set */
	char msg[MICA_PROBLEM_MSG_MAX]; /* a sentence for people, truncated to fit */
	json_t *extra;			/* extra top-level members (owned), or NULL */
} mica_problem;

/* clang-format off */
#define MICA_PROBLEM_INIT {0}
/* clang-format on */

/* Sets |status|, |code| (static) and the formatted message; keeps |extra|.
 * Returns MICA_EINVAL for a 4xx status and MICA_EIO otherwise, so a flow can
 * `return mica_problemf(...)`. */
int mica_problemf(mica_problem *p, int status, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* mica_problemf() for callers that take their own variable arguments (a
 * reply helper, an error's own status); returns nothing. */
void mica_problem_vsetf(mica_problem *p, int status, const char *code, const char *fmt, va_list ap)
	__attribute__((format(printf, 4, 0)));

/* Describes a request that ended with |err| while doing |what| (a phrase,
 * e.g. "loading the key"; NULL for none), as the MICA_ERRNO_MAP table says:
 * its status, and
 *   4xx and 503: the table's code (mica_strerror(err), e.g. "out_of_range",
 *                "hsm_unavailable") and the message "<what>: <errmsg>";
 *                a 503 whose error names a dependency (database, redis,
 *                hsm, audit, seal: the names /readyz uses) also gets the
 *                member "dependency";
 *   500:         "internal_error", "<what> failed" (the error's detail is
 *                for the log, not the client).
 * 0 or an error outside the enum is treated as 500. Returns |err| (MICA_EIO
 * for 0). */
int mica_problem_from_err(mica_problem *p, int err, const char *what);

/* A dependency the service calls (|dependency|: "database", "redis",
 * "keycenter", "notifier", ...: the names /readyz uses) is down or refusing
 * for now: 503 "unavailable", a message naming it, and the member
 * "dependency". Returns MICA_EIO. */
int mica_problem_unavailable(mica_problem *p, const char *dependency);

/* A call of a service to one of its dependencies failed with |err| while
 * doing |what| (a phrase for the log line "<service>: <what> failed: <error>",
 * which this writes): 503 unavailable naming the database (MICA_EDBCONN,
 * MICA_ETIMEOUT, MICA_ESERIALIZATION), redis (MICA_EKVCONN, MICA_EKV) or
 * the keycenter (what lib/kc answers when the Key Center refuses or cannot
 * be reached: MICA_EAUTH, MICA_EDENIED, MICA_ENOTFOUND, MICA_EAUDIT,
 * MICA_EHSM, MICA_EHTTP, MICA_ETLS, MICA_EBADHEADER), else 500
 * internal_error "<what> failed". For services whose only callers of these
 * errors are lib/db, lib/kv and lib/kc. Returns |err| (MICA_EIO for 0). */
int mica_problem_dependency(mica_problem *p, const char *service, int err, const char *what);

/* Sets extra member |name| to |value| (reference stolen; NULL is ignored).
 * Returns 0 or MICA_ENOMEM. */
int mica_problem_set_extra(mica_problem *p, const char *name, json_t *value);

/* The problem as its JSON reply body (new reference; NULL when out of
 * memory). A problem with no code is internal_error. |p| is unchanged. */
json_t *mica_problem_json(const mica_problem *p);

/* Releases |extra| and clears |p|. Safe to call twice; NULL is fine. */
void mica_problem_cleanup(mica_problem *p);

#endif
