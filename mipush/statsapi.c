/* statsapi.c - the developer routes for statistics, traces and registration
 * deletion (issue 21 items 4 and 5; docs/api/push.md), in MiPush's form:
 * GET /v1/stats/message/counters (per app and UTC day), GET
 * /v1/trace/message/status and /v1/trace/messages/status (per message),
 * POST /v1/push/registrations/delete. An app sees and deletes only its own;
 * nothing here is per device. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "form.h"
#include "mipush/push.h"
#include "parse.h"

#define STATS_MAX_DAYS 30   /* end_date - start_date, as MiPush's "under 30 days" */
#define TRACE_MAX_ROWS 1000 /* messages one trace answer lists */

/* ---- GET /v1/stats/message/counters ---------------------------------------------- */

/* A YYYYMMDD date as milliseconds since the epoch (midnight UTC) and as
 * "YYYY-MM-DD" in |iso|. */
static int parse_day(const char *s, int64_t *ms, char iso[11])
{
	char rfc[32];
	if (!s || strlen(s) != 8 || strspn(s, "0123456789") != 8)
		return MICA_EINVAL;
	snprintf(iso, 11, "%.4s-%.2s-%.2s", s, s + 4, s + 6);
	snprintf(rfc, sizeof(rfc), "%sT00:00:00Z", iso);
	return mica_parse_time_ms(rfc, ms);
}

static int stats_counters(const push_app *app, const char *start, const char *end, json_t **out,
			  mica_problem *p)
{
	char from[11], to[11];
	int64_t a = 0, b = 0;
	PGresult *res = NULL;
	if (parse_day(start, &a, from) != 0 || parse_day(end, &b, to) != 0)
		return mica_problemf(p, 400, "bad_date",
				     "start_date and end_date are dates written YYYYMMDD");
	if (b < a || (b - a) / 86400000 > STATS_MAX_DAYS)
		return mica_problemf(p, 400, "bad_date_range",
				     "end_date must be start_date or up to %d days after it",
				     STATS_MAX_DAYS);
	const char *params[] = {app->app_id, from, to};
	int err = mica_db_exec(mica_db_thread(),
			       "SELECT to_char(d, 'YYYYMMDD'), coalesce(sum(s.sent), 0),"
			       " coalesce(sum(s.delivered), 0), coalesce(sum(s.expired), 0),"
			       " coalesce(sum(s.dropped), 0), coalesce(sum(s.invalid), 0) FROM"
			       " generate_series($2::date, $3::date, interval '1 day') AS d LEFT"
			       " JOIN push.stat_daily s ON s.app_id = $1 AND s.day = d::date"
			       " GROUP BY d ORDER BY d",
			       3, params, &res);
	if (err)
		return push_problem_dependency(p, err, "reading the statistics");
	json_t *days = json_array();
	static const char *const names[] = {"sent", "delivered", "expired", "dropped", "invalid"};
	for (int i = 0; days && i < PQntuples(res); i++) {
		json_t *day = json_pack("{s:s}", "date", mica_db_get(res, i, 0));
		for (int k = 0; day && k < 5; k++) {
			int64_t v = 0;
			if (mica_db_get_int64(res, i, k + 1, &v) != 0 ||
			    json_object_set_new(day, names[k], json_integer(v)) != 0) {
				json_decref(day);
				day = NULL;
			}
		}
		if (!day || json_array_append_new(days, day) != 0) {
			json_decref(days);
			days = NULL;
		}
	}
	PQclear(res);
	if (!days)
		return mica_problemf(p, 500, "internal_error", "reading the statistics failed");
	*out = json_pack("{s:o}", "data", days);
	return *out ? 0 : mica_problemf(p, 500, "internal_error", "reading the statistics failed");
}

void push_h_stats_counters(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	static const mica_form_field spec[] = {
		{"start_date", true, 16}, {"end_date", true, 16}, PUSH_FORM_PACKAGE};
	char *v[3];
	push_app app = {0};
	json_t *out = NULL;
	mica_problem p = MICA_PROBLEM_INIT;
	if (!push_mipush_begin(svc, req, resp, MICA_FORM_FIELDS(spec), v, &app))
		return;
	if (stats_counters(&app, v[0], v[1], &out, &p) != 0)
		push_mipush_fail(resp, &p);
	else
		push_mipush_reply(resp, out);
	mica_form_free(v, 3);
}

/* ---- traces ------------------------------------------------------------------------ */

#define TRACE_COLUMNS                                                                              \
	"SELECT msg_id, jobkey, target, (extract(epoch FROM created_at) * 1000)::bigint,"          \
	" (extract(epoch FROM expires_at - created_at) * 1000)::bigint, queued, delivered,"        \
	" expired, dropped, invalid, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"           \
	" HH24:MI:SS') FROM push.message"

/* Row |i| of a TRACE_COLUMNS result as a trace object, or NULL. */
static json_t *trace_json(const PGresult *res, int i)
{
	int64_t n[7];
	for (int k = 0; k < 7; k++)
		if (mica_db_get_int64(res, i, k + 3, &n[k]) != 0)
			return NULL;
	/* created, ttl, queued, delivered, expired, dropped, invalid */
	int64_t pending = n[2] - n[3] - n[4] - n[5];
	const char *jobkey = mica_db_get(res, i, 1);
	return json_pack("{s:s,s:o,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "id",
			 mica_db_get(res, i, 0), "jobkey",
			 jobkey ? json_string(jobkey) : json_null(), "target",
			 mica_db_get(res, i, 2), "create_time", mica_db_get(res, i, 10),
			 "create_timestamp", (json_int_t)n[0], "time_to_live", (json_int_t)n[1],
			 "resolved", (json_int_t)n[2], "delivered", (json_int_t)n[3], "expired",
			 (json_int_t)n[4], "dropped", (json_int_t)n[5], "invalid", (json_int_t)n[6],
			 "pending", (json_int_t)(pending > 0 ? pending : 0));
}

void push_h_trace_message(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	static const mica_form_field spec[] = {{"msg_id", true, 64}, PUSH_FORM_PACKAGE};
	char *v[2];
	push_app app = {0};
	PGresult *res = NULL;
	mica_problem p = MICA_PROBLEM_INIT;
	if (!push_mipush_begin(svc, req, resp, MICA_FORM_FIELDS(spec), v, &app))
		return;
	const char *params[] = {app.app_id, v[0]};
	int err = mica_db_exec(mica_db_thread(), TRACE_COLUMNS " WHERE app_id = $1 AND msg_id = $2",
			       2, params, &res);
	json_t *t = NULL;
	if (err)
		push_problem_dependency(&p, err, "reading the trace");
	else if (PQntuples(res) == 0)
		/* Another app's message answers as one that never was. */
		mica_problemf(&p, 404, "unknown_msg_id",
			      "msg_id names no message of this app (or its trace has been purged)");
	else if (!(t = trace_json(res, 0)))
		mica_problemf(&p, 500, "internal_error", "reading the trace failed");
	if (t)
		push_mipush_reply(resp, json_pack("{s:o}", "data", t));
	else
		push_mipush_fail(resp, &p);
	PQclear(res);
	mica_form_free(v, 2);
}

/* Milliseconds since the epoch in field |name|, or NULL when absent. */
static int parse_ms(const char *s, const char *name, char out[32], const char **param,
		    mica_problem *p)
{
	int64_t ms = 0;
	*param = NULL;
	if (!s)
		return 0;
	if (mica_parse_int64(s, 0, INT64_MAX / 2, &ms) != 0)
		return mica_problemf(p, 400, "bad_field", "%s is milliseconds since the epoch",
				     name);
	snprintf(out, 32, "%.3f", (double)ms / 1000.0);
	*param = out;
	return 0;
}

void push_h_trace_messages(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	static const mica_form_field spec[] = {{"job_key", false, 128},
					       {"begin_time", false, 19},
					       {"end_time", false, 19},
					       PUSH_FORM_PACKAGE};
	char *v[4], b[32], e[32];
	const char *bp = NULL, *ep = NULL;
	push_app app = {0};
	PGresult *res = NULL;
	json_t *list = NULL;
	mica_problem p = MICA_PROBLEM_INIT;
	int err;
	if (!push_mipush_begin(svc, req, resp, MICA_FORM_FIELDS(spec), v, &app))
		return;
	if ((err = parse_ms(v[1], "begin_time", b, &bp, &p)) != 0 ||
	    (err = parse_ms(v[2], "end_time", e, &ep, &p)) != 0)
		goto out;
	if (!v[0] && (!bp || !ep)) {
		err = mica_problemf(&p, 400, "missing_field",
				    "give job_key, or begin_time and end_time, or all three");
		goto out;
	}
	if ((bp != NULL) != (ep != NULL)) {
		err = mica_problemf(&p, 400, "missing_field",
				    "begin_time and end_time go together");
		goto out;
	}
	if (bp && strtod(ep, NULL) < strtod(bp, NULL)) {
		err = mica_problemf(&p, 400, "bad_time_range", "end_time is before begin_time");
		goto out;
	}
	char lim[16];
	snprintf(lim, sizeof(lim), "%d", TRACE_MAX_ROWS + 1);
	const char *params[] = {app.app_id, v[0], bp, ep, lim};
	err = mica_db_exec(mica_db_thread(),
			   TRACE_COLUMNS " WHERE app_id = $1 AND ($2::text IS NULL OR jobkey = $2)"
					 " AND ($3::float8 IS NULL OR created_at >="
					 " to_timestamp($3::float8)) AND ($4::float8 IS NULL OR"
					 " created_at <= to_timestamp($4::float8)) ORDER BY"
					 " created_at, msg_id LIMIT $5::int",
			   5, params, &res);
	if (err) {
		push_problem_dependency(&p, err, "reading the traces");
		goto out;
	}
	int rows = PQntuples(res);
	list = json_array();
	for (int i = 0; list && i < rows && i < TRACE_MAX_ROWS; i++) {
		json_t *t = trace_json(res, i);
		if (!t || json_array_append_new(list, t) != 0) {
			json_decref(list);
			list = NULL;
		}
	}
	if (!list) {
		err = mica_problemf(&p, 500, "internal_error", "reading the traces failed");
		goto out;
	}
	push_mipush_reply(resp,
			  json_pack("{s:o,s:b}", "data", list, "truncated", rows > TRACE_MAX_ROWS));
	list = NULL;
out:
	if (err)
		push_mipush_fail(resp, &p);
	PQclear(res);
	mica_form_free(v, 4);
}

/* ---- POST /v1/push/registrations/delete ------------------------------------------------ */

/* The comma list |s| as a new JSON array: 1..PUSH_LIST_MAX items of 1-43
 * printable characters without spaces. */
static int regid_list(const char *s, json_t **out, mica_problem *p)
{
	json_t *a = json_array();
	*out = NULL;
	if (!a)
		return mica_problemf(p, 500, "internal_error", "reading registration_id failed");
	for (const char *at = s;;) {
		const char *end = strchr(at, ',');
		size_t n = end ? (size_t)(end - at) : strlen(at);
		bool ok = n > 0 && n <= PUSH_RANDOM_B64_LEN && json_array_size(a) < PUSH_LIST_MAX;
		for (size_t i = 0; ok && i < n; i++)
			ok = at[i] > 0x20 && at[i] < 0x7f;
		if (!ok || json_array_append_new(a, json_stringn(at, n)) != 0) {
			json_decref(a);
			return mica_problemf(
				p, 400, "bad_field",
				"registration_id: each item is 1-%d printable characters"
				" without spaces, at most %d items",
				PUSH_RANDOM_B64_LEN, PUSH_LIST_MAX);
		}
		if (!end)
			break;
		at = end + 1;
	}
	*out = a;
	return 0;
}

void push_h_registrations_delete(const mica_http_req *req, mica_http_resp *resp, void *svc)
{
	static const mica_form_field spec[] = {{"registration_id", true, 64 * 1024},
					       PUSH_FORM_PACKAGE};
	char *v[2];
	push_app app = {0};
	json_t *ids = NULL, *unknown = NULL;
	long deleted = 0;
	mica_problem p = MICA_PROBLEM_INIT;
	if (!push_mipush_begin(svc, req, resp, MICA_FORM_FIELDS(spec), v, &app))
		return;
	int err = regid_list(v[0], &ids, &p);
	if (!err && (err = push_registrations_delete(mica_db_thread(), app.app_id, ids,
						     mica_clock_now_ms(), &deleted, &unknown)) != 0)
		push_problem_dependency(&p, err, "deleting the registrations");
	if (err)
		push_mipush_fail(resp, &p);
	else
		push_mipush_reply(resp, json_pack("{s:I,s:o}", "deleted", (json_int_t)deleted,
						  "unknown", unknown));
	json_decref(ids);
	mica_form_free(v, 2);
}
