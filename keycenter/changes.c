/* changes.c - dual control and the active policy. Deleting a key and
 * changing the policy are change requests that take effect, in the same
 * transaction as the second approval, only once two distinct security
 * officers approved them. The active policy is cached and re-read from the
 * database every POLICY_TTL_MS so several instances converge. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "db.h"
#include "keycenter/keycenter.h"
#include "log.h"

#define POLICY_TTL_MS 5000

static _Atomic int64_t policy_loaded_ms;

int kc_policy_load_active(kc_service *s)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	kc_policy *p = NULL, *old;
	char err_msg[256];
	int err;

	if (!db)
		return MICA_EDBCONN;
	err = mica_db_exec(db, "SELECT document::text FROM keycenter.policy WHERE active", 0, NULL,
			   &res);
	if (err)
		goto out;
	if (PQntuples(res) != 1) {
		err = MICA_ENOTFOUND;
		goto out;
	}
	const char *doc = mica_db_get(res, 0, 0);
	if ((err = kc_policy_parse(doc, strlen(doc), &p, err_msg, sizeof(err_msg))) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "keycenter: the active policy is invalid: %s", err_msg);
		goto out;
	}
	pthread_mutex_lock(&s->policy_lock);
	old = s->policy;
	s->policy = p;
	pthread_mutex_unlock(&s->policy_lock);
	if (!old || kc_policy_version(old) != kc_policy_version(p))
		MICA_LOG(MICA_LOG_INFO, "keycenter: policy version %d active",
			 kc_policy_version(p));
	kc_policy_unref(old);
	atomic_store(&policy_loaded_ms, mica_clock_ms());
out:
	PQclear(res);
	return err;
}

kc_policy *kc_policy_current(kc_service *s)
{
	kc_policy *p;
	int64_t last = atomic_load(&policy_loaded_ms);
	/* One thread refreshes; the others keep using the cached policy. */
	if (mica_clock_ms() - last > POLICY_TTL_MS &&
	    atomic_compare_exchange_strong(&policy_loaded_ms, &last, mica_clock_ms()) &&
	    kc_policy_load_active(s) != 0)
		MICA_LOG(MICA_LOG_WARN,
			 "keycenter: could not refresh the policy; keeping version %d",
			 s->policy ? kc_policy_version(s->policy) : 0);
	pthread_mutex_lock(&s->policy_lock);
	p = s->policy ? kc_policy_ref(s->policy) : NULL;
	pthread_mutex_unlock(&s->policy_lock);
	return p;
}

/* JSON view of change request |id| with its approvals. */
static int load_request(mica_db *db, int64_t id, json_t **out)
{
	PGresult *res = NULL, *ap = NULL;
	char idbuf[24];
	const char *p[1] = {idbuf};
	json_t *officers;
	int err;

	*out = NULL;
	snprintf(idbuf, sizeof(idbuf), "%lld", (long long)id);
	err = mica_db_exec(db,
			   "SELECT kind, target, status, requested_by, created_at::text,"
			   " applied_at::text FROM keycenter.change_request WHERE id = $1",
			   1, p, &res);
	if (err)
		goto out;
	if (PQntuples(res) != 1) {
		err = MICA_ENOTFOUND;
		goto out;
	}
	err = mica_db_exec(db,
			   "SELECT officer FROM keycenter.approval WHERE request_id = $1"
			   " ORDER BY approved_at, officer",
			   1, p, &ap);
	if (err)
		goto out;
	officers = json_array();
	for (int r = 0; r < PQntuples(ap); r++)
		json_array_append_new(officers, json_string(mica_db_get(ap, r, 0)));
	*out = json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:o,s:i,s:o}", "id", (json_int_t)id, "kind",
			 mica_db_get(res, 0, 0), "target", mica_db_get(res, 0, 1), "status",
			 mica_db_get(res, 0, 2), "requested_by", mica_db_get(res, 0, 3),
			 "created_at", mica_db_get(res, 0, 4), "approvals", officers,
			 "approvals_required", KC_APPROVALS_REQUIRED, "applied_at",
			 mica_db_get(res, 0, 5) ? json_string(mica_db_get(res, 0, 5))
						: json_null());
	if (!*out)
		err = MICA_ENOMEM;
out:
	PQclear(res);
	PQclear(ap);
	return err;
}

int kc_change_request(kc_service *s, const char *kind, const char *target, json_t *payload,
		      const char *principal, json_t **out)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char *pl = NULL;
	int64_t id;
	int err;
	(void)s;

	*out = NULL;
	if (!db)
		return MICA_EDBCONN;
	json_t *empty = payload ? NULL : json_object();
	pl = json_dumps(payload ? payload : empty, JSON_COMPACT);
	json_decref(empty);
	if (!pl)
		return MICA_ENOMEM;
	const char *p[4] = {kind, target, pl, principal};
	err = mica_db_exec(
		db,
		"INSERT INTO keycenter.change_request (kind, target, payload, requested_by)"
		" VALUES ($1, $2, $3::jsonb, $4) RETURNING id",
		4, p, &res);
	free(pl);
	if (err == 0 && (err = mica_db_get_int64(res, 0, 0, &id)) == 0)
		err = load_request(db, id, out);
	PQclear(res);
	if (err == 0)
		MICA_LOG(MICA_LOG_INFO,
			 "keycenter: change request %lld (%s %s) by %s awaits %d approvals",
			 (long long)id, kind, target, principal, KC_APPROVALS_REQUIRED);
	return err;
}

struct approve_ctx {
	kc_service *s;
	int64_t id;
	const char *officer;
	char kind[16];
	char target[KC_NAME_MAX + 1];
	int applied;
};

/* Applies an approved request inside the approving transaction. */
static int apply(mica_db *db, struct approve_ctx *a, const char *idbuf)
{
	const char *p[1] = {idbuf};
	const char *status = "applied";
	int err = 0;

	if (strcmp(a->kind, "delete_key") == 0) {
		err = kc_key_delete_tx(a->s, db, a->target);
	} else {
		err = mica_db_exec(db, "UPDATE keycenter.policy SET active = false WHERE active", 0,
				   NULL, NULL);
		if (!err)
			err = mica_db_exec(
				db,
				"INSERT INTO keycenter.policy (version, document, active)"
				" SELECT (payload->>'version')::int, payload, true"
				" FROM keycenter.change_request WHERE id = $1",
				1, p, NULL);
	}
	/* The approvals stand; a request that can no longer apply is closed. */
	if (err == MICA_ESTATE || err == MICA_EEXISTS) {
		status = "failed";
		err = 0;
	}
	if (err)
		return err;
	const char *q[2] = {idbuf, status};
	err = mica_db_exec(db,
			   "UPDATE keycenter.change_request SET status = $2, applied_at = now()"
			   " WHERE id = $1",
			   2, q, NULL);
	a->applied = err == 0 && strcmp(status, "applied") == 0;
	return err;
}

static int approve_tx(mica_db *db, void *arg)
{
	struct approve_ctx *a = arg;
	PGresult *res = NULL;
	char idbuf[24];
	const char *p[2] = {idbuf, a->officer};
	int64_t count;
	int err;

	a->applied = 0;
	snprintf(idbuf, sizeof(idbuf), "%lld", (long long)a->id);
	err = mica_db_exec(db,
			   "SELECT kind, target, status FROM keycenter.change_request WHERE id = $1"
			   " FOR UPDATE",
			   1, p, &res);
	if (err)
		goto out;
	if (PQntuples(res) != 1) {
		err = MICA_ENOTFOUND;
		goto out;
	}
	snprintf(a->kind, sizeof(a->kind), "%s", mica_db_get(res, 0, 0));
	snprintf(a->target, sizeof(a->target), "%s", mica_db_get(res, 0, 1));
	if (strcmp(mica_db_get(res, 0, 2), "pending") != 0) {
		err = MICA_ESTATE;
		goto out;
	}
	PQclear(res);
	res = NULL;
	err = mica_db_exec(db,
			   "INSERT INTO keycenter.approval (request_id, officer) VALUES ($1, $2)",
			   2, p, NULL);
	if (err)
		goto out;
	err = mica_db_exec(db, "SELECT count(*) FROM keycenter.approval WHERE request_id = $1", 1,
			   p, &res);
	if (err || (err = mica_db_get_int64(res, 0, 0, &count)) != 0)
		goto out;
	if (count >= KC_APPROVALS_REQUIRED)
		err = apply(db, a, idbuf);
out:
	PQclear(res);
	return err;
}

int kc_change_approve(kc_service *s, int64_t id, const char *officer, json_t **out)
{
	struct approve_ctx a = {.s = s, .id = id, .officer = officer};
	mica_db *db = mica_db_thread();
	int err;

	*out = NULL;
	if (!db)
		return MICA_EDBCONN;
	if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, approve_tx, &a)) != 0)
		return err;
	if (a.applied && strcmp(a.kind, "delete_key") == 0) {
		kc_key_forget(s, a.target);
		MICA_LOG(MICA_LOG_WARN, "keycenter: key %s deleted under request %lld", a.target,
			 (long long)id);
	} else if (a.applied) {
		if ((err = kc_policy_load_active(s)) != 0)
			return err;
	}
	return load_request(db, id, out);
}

int kc_change_get(kc_service *s, int64_t id, json_t **out)
{
	mica_db *db = mica_db_thread();
	(void)s;
	return db ? load_request(db, id, out) : MICA_EDBCONN;
}

int kc_change_list(kc_service *s, const char *status, json_t **out)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	const char *p[1] = {status};
	json_t *list;
	int err;
	(void)s;

	*out = NULL;
	if (!db)
		return MICA_EDBCONN;
	err = mica_db_exec(db,
			   "SELECT id FROM keycenter.change_request WHERE status = $1 ORDER BY id"
			   " LIMIT 500",
			   1, p, &res);
	if (err)
		return err;
	list = json_array();
	for (int r = 0; r < PQntuples(res) && !err; r++) {
		int64_t id;
		json_t *one = NULL;
		if ((err = mica_db_get_int64(res, r, 0, &id)) == 0 &&
		    (err = load_request(db, id, &one)) == 0)
			json_array_append_new(list, one);
	}
	PQclear(res);
	if (err) {
		json_decref(list);
		return err;
	}
	*out = json_pack("{s:o}", "requests", list);
	return 0;
}

int kc_policy_active_document(kc_service *s, json_t **out)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	int err;
	(void)s;
	*out = NULL;
	if (!db)
		return MICA_EDBCONN;
	err = mica_db_exec(db, "SELECT version, document::text FROM keycenter.policy WHERE active",
			   0, NULL, &res);
	if (err == 0 && PQntuples(res) != 1)
		err = MICA_ENOTFOUND;
	int64_t version = 0;
	if (err == 0)
		err = mica_db_get_int64(res, 0, 0, &version);
	if (err == 0)
		*out = json_pack("{s:I,s:o}", "version", (json_int_t)version, "document",
				 json_loads(mica_db_get(res, 0, 1), 0, NULL));
	PQclear(res);
	return err || *out ? err : MICA_ENOMEM;
}
