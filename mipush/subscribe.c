/* subscribe.c - aliases and topics of registrations, set by the app's
 * developer: MiPush's /v2/topic/subscribe and /v2/topic/unsubscribe, and
 * mica's alias twins (MiPush sets aliases from its device SDK; here the app
 * server sets them, docs/decisions.md). Lists are comma-separated, as
 * MiPush's registration_id and aliases fields are. */
#include <stdlib.h>
#include <string.h>

#include "mipush/push.h"

/* Splits the comma list |s| into a new JSON array of its items; each must
 * be 1..|max_len| bytes of printable ASCII without spaces or commas. An
 * empty item or a bad one: 400 |code| naming |field|. */
static int split_list(const char *s, size_t max_len, const char *field, json_t **arr,
		      mica_problem *p)
{
	json_t *a = json_array();
	const char *at = s;
	*arr = NULL;
	if (!a)
		return mica_problemf(p, 500, "internal_error", "reading %s failed", field);
	for (;;) {
		const char *end = strchr(at, ',');
		size_t n = end ? (size_t)(end - at) : strlen(at);
		bool ok = n > 0 && n <= max_len;
		for (size_t i = 0; ok && i < n; i++)
			ok = at[i] > 0x20 && at[i] < 0x7f;
		if (!ok || json_array_size(a) >= PUSH_LIST_MAX) {
			json_decref(a);
			return mica_problemf(p, 400, "bad_field",
					     "%s: each item is 1-%zu printable characters without"
					     " spaces, at most %d items",
					     field, max_len, PUSH_LIST_MAX);
		}
		json_array_append_new(a, json_stringn(at, n));
		if (!end)
			break;
		at = end + 1;
	}
	*arr = a;
	return 0;
}

/* Every regid of |regids| belongs to |app_id|; else 400 unknown_regid
 * naming the first that does not. */
static int check_regids(const char *app_id, json_t *regids, mica_problem *p)
{
	char *list = json_dumps(regids, JSON_COMPACT);
	PGresult *res = NULL;
	if (!list)
		return mica_problemf(p, 500, "internal_error", "reading the registrations failed");
	const char *params[] = {app_id, list};
	int err = mica_db_exec(mica_db_thread(),
			       "SELECT x FROM json_array_elements_text($2::json) AS x WHERE NOT"
			       " EXISTS (SELECT 1 FROM push.registration r WHERE r.regid = x AND"
			       " r.app_id = $1) LIMIT 1",
			       2, params, &res);
	free(list);
	if (err)
		err = push_problem_dependency(p, err, "reading the registrations");
	else if (PQntuples(res) > 0)
		err = mica_problemf(p, 400, "unknown_regid",
				    "registration_id %.64s is not a registration of this app",
				    mica_db_get(res, 0, 0));
	PQclear(res);
	return err;
}

struct sub_tx {
	enum push_sub_kind kind;
	bool subscribe;
	const char *app_id, *regids, *names;
};

static int sub_write(mica_db *db, void *arg)
{
	struct sub_tx *t = arg;
	const char *params[] = {t->app_id, t->regids, t->names};
	static const char *const sql[2][2] = {
		{"DELETE FROM push.alias WHERE app_id = $1 AND regid IN (SELECT"
		 " json_array_elements_text($2::json)) AND alias IN (SELECT"
		 " json_array_elements_text($3::json))",
		 "INSERT INTO push.alias (regid, app_id, alias) SELECT r, $1, n FROM"
		 " json_array_elements_text($2::json) AS r, json_array_elements_text($3::json)"
		 " AS n ON CONFLICT DO NOTHING"},
		{"DELETE FROM push.topic_subscription WHERE app_id = $1 AND regid IN (SELECT"
		 " json_array_elements_text($2::json)) AND topic IN (SELECT"
		 " json_array_elements_text($3::json))",
		 "INSERT INTO push.topic_subscription (regid, app_id, topic) SELECT r, $1, n FROM"
		 " json_array_elements_text($2::json) AS r, json_array_elements_text($3::json)"
		 " AS n ON CONFLICT DO NOTHING"},
	};
	return mica_db_exec(db, sql[t->kind][t->subscribe], 3, params, NULL);
}

int push_subscribe(push_service *s, const push_app *app, enum push_sub_kind kind, bool subscribe,
		   const char *regids, const char *names, mica_problem *p)
{
	json_t *r = NULL, *n = NULL;
	char *rs = NULL, *ns = NULL;
	int err;
	(void)s;
	if ((err = split_list(regids, PUSH_RANDOM_B64_LEN, "registration_id", &r, p)) != 0 ||
	    (err = split_list(names, PUSH_NAME_MAX, kind == PUSH_SUB_ALIAS ? "aliases" : "topic",
			      &n, p)) != 0)
		goto out;
	if (kind == PUSH_SUB_TOPIC && json_array_size(n) != 1) {
		err = mica_problemf(p, 400, "bad_field", "topic: one topic per request");
		goto out;
	}
	if ((err = check_regids(app->app_id, r, p)) != 0)
		goto out;
	rs = json_dumps(r, JSON_COMPACT);
	ns = json_dumps(n, JSON_COMPACT);
	if (!rs || !ns) {
		err = mica_problemf(p, 500, "internal_error", "writing the subscriptions failed");
		goto out;
	}
	struct sub_tx t = {kind, subscribe, app->app_id, rs, ns};
	if ((err = mica_db_tx(mica_db_thread(), MICA_DB_READ_COMMITTED, sub_write, &t)) != 0)
		err = push_problem_dependency(p, err, "writing the subscriptions");
out:
	json_decref(r);
	json_decref(n);
	free(rs);
	free(ns);
	return err;
}

int push_subscriptions(push_service *s, const push_app *app, enum push_sub_kind kind,
		       const char *regid, json_t **list, mica_problem *p)
{
	json_t *r = NULL, *a = NULL;
	PGresult *res = NULL;
	int err;
	(void)s;
	*list = NULL;
	if ((err = split_list(regid, PUSH_RANDOM_B64_LEN, "registration_id", &r, p)) != 0)
		return err;
	if (json_array_size(r) != 1) {
		json_decref(r);
		return mica_problemf(p, 400, "bad_field", "registration_id: one per request");
	}
	err = check_regids(app->app_id, r, p);
	json_decref(r);
	if (err)
		return err;
	const char *params[] = {app->app_id, regid};
	err = mica_db_exec(mica_db_thread(),
			   kind == PUSH_SUB_ALIAS
				   ? "SELECT alias FROM push.alias WHERE app_id = $1 AND regid = $2"
				     " ORDER BY alias"
				   : "SELECT topic FROM push.topic_subscription WHERE app_id = $1"
				     " AND regid = $2 ORDER BY topic",
			   2, params, &res);
	if (err)
		return push_problem_dependency(p, err, "reading the subscriptions");
	a = json_array();
	for (int i = 0; a && i < PQntuples(res); i++)
		json_array_append_new(a, json_string(mica_db_get(res, i, 0)));
	PQclear(res);
	if (!a)
		return mica_problemf(p, 500, "internal_error", "reading the subscriptions failed");
	*list = a;
	return 0;
}
