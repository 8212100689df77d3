/* stepup.c - step-up verification: a login the risk engine finds unusual
 * (risk.c), or a sensitive operation without a recent authentication, waits
 * in account.stepup until the user proves the account's phone or email with
 * a one-time code, or a trusted device approves it. Wrong codes are counted
 * per account over cfg->stepup_failure_window_s, however many step-ups they
 * are spread over; too many freeze the account (freeze.c). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "crypto.h"

/* The step-up methods |user_id| can use. */
static json_t *stepup_methods(mica_db *db, int64_t user_id)
{
	PGresult *res = NULL;
	char uid[24];
	json_t *m = json_array();
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	const char *p[1] = {uid};
	if (mica_db_exec(
		    db,
		    "SELECT phone_enc IS NOT NULL OR security_phone_enc IS NOT NULL,"
		    " email_enc IS NOT NULL OR security_email_enc IS NOT NULL,"
		    " cross_device AND EXISTS (SELECT 1 FROM account.session s JOIN account.device d"
		    " ON d.user_id = s.user_id AND d.device_hash = s.device_hash AND d.trusted"
		    " WHERE s.user_id = u.id AND s.revoked_at IS NULL AND s.expires_at > now())"
		    " FROM account.user u WHERE id = $1",
		    1, p, &res) == 0 &&
	    PQntuples(res) == 1) {
		if (strcmp(mica_db_get(res, 0, 0), "t") == 0)
			json_array_append_new(m, json_string("sms"));
		if (strcmp(mica_db_get(res, 0, 1), "t") == 0)
			json_array_append_new(m, json_string("email"));
		if (strcmp(mica_db_get(res, 0, 2), "t") == 0)
			json_array_append_new(m, json_string("trusted_device"));
	}
	PQclear(res);
	return m;
}

int acct_stepup_create(acct_service *s, const struct acct_stepup_new *n, json_t *reasons,
		       mica_problem *f)
{
	mica_db *db = mica_db_thread();
	uint8_t r[16];
	char id[33], uid[24], sid[24], ttl[16], *name = NULL;
	int err;
	if (!db) {
		json_decref(reasons);
		return acct_problem_dependency(f, MICA_EDBCONN, "the database");
	}
	if ((err = mica_random(r, sizeof(r))) != 0 ||
	    (err = mica_hex_encode(r, 16, id, sizeof(id)))) {
		json_decref(reasons);
		return acct_problem_dependency(f, err, "the random generator");
	}
	/* The name of the device waiting for step-up, sealed for this row. */
	if (!*n->device_name)
		name = strdup("");
	else if ((err = acct_seal(s, s->records, "stepup", "device_name", id, n->device_name,
				  &name)) != 0)
		err = acct_problem_dependency(f, err, "the Key Center");
	else if (!name)
		err = acct_problem_dependency(f, MICA_ENOMEM, "memory");
	if (err || !name) {
		json_decref(reasons);
		return err ? err : MICA_ENOMEM;
	}
	snprintf(uid, sizeof(uid), "%lld", (long long)n->user_id);
	snprintf(sid, sizeof(sid), "%lld", (long long)n->session_id);
	snprintf(ttl, sizeof(ttl), "%d", s->cfg->stepup_ttl_s);
	const char *p[8] = {id,	  uid,	       n->kind, n->session_id ? sid : NULL, n->device_hash,
			    name, n->net_hash, ttl};
	const char *q[9] = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], n->session_kind, p[7]};
	err = mica_db_exec(
		db,
		"INSERT INTO account.stepup (id, user_id, kind, session_id, device_hash,"
		" device_name, network_hash, session_kind, expires_at) VALUES ($1, $2, $3,"
		" $4, $5, $6, $7, $8, now() + make_interval(secs => $9::int))",
		9, q, NULL);
	free(name);
	if (err) {
		json_decref(reasons);
		return acct_problem_dependency(f, err, "the database");
	}
	mica_problemf(f, 403, "step_up_required",
		      "%s: verify with one of the methods, then POST /v1/stepup/%s/verify",
		      strcmp(n->kind, "login") == 0 ? "unusual login"
						    : "recent authentication needed",
		      id);
	f->extra = json_pack("{s:s,s:o,s:o}", "stepup_id", id, "methods",
			     stepup_methods(db, n->user_id), "reasons", reasons);
	return MICA_EDENIED;
}

/* ---- step-up endpoints ------------------------------------------------------------------- */

struct stepup_row {
	int64_t user_id, session_id, approved_by;
	int failures;
	char kind[12], status[10], device_hash[65], session_kind[8];
	/* The name as stored (sealed for the step-up's row: up to a few hundred
	 * characters) and the network's keyed hash. */
	char device_name[1024], network_hash[160];
	char verification_id[33];
	int expired;
};

static int stepup_load(const char *id, struct stepup_row *r, mica_problem *f)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	int err;
	memset(r, 0, sizeof(*r));
	if (!id || strlen(id) != 32)
		return mica_problemf(f, 404, "unknown_stepup", "no such step-up");
	int64_t failures = 0;
	const char *p[1] = {id};
	err = db ? mica_db_exec(db,
				"SELECT user_id, coalesce(session_id, 0), coalesce(approved_by, 0),"
				" failures, kind, status, device_hash, device_name, network_hash,"
				" session_kind, coalesce(verification_id, ''), expires_at <= now()"
				" FROM account.stepup WHERE id = $1",
				1, p, &res)
		 : MICA_EDBCONN;
	if (err)
		return acct_problem_dependency(f, err, "the database");
	if (PQntuples(res) != 1) {
		PQclear(res);
		return mica_problemf(f, 404, "unknown_stepup", "no such step-up");
	}
	if (mica_db_get_int64(res, 0, 0, &r->user_id) != 0 ||
	    mica_db_get_int64(res, 0, 1, &r->session_id) != 0 ||
	    mica_db_get_int64(res, 0, 2, &r->approved_by) != 0 ||
	    mica_db_get_int64(res, 0, 3, &failures) != 0 || failures > INT_MAX) {
		PQclear(res);
		return acct_problem_dependency(f, MICA_EDB, "the database");
	}
	r->failures = (int)failures;
	snprintf(r->kind, sizeof(r->kind), "%s", mica_db_get(res, 0, 4));
	snprintf(r->status, sizeof(r->status), "%s", mica_db_get(res, 0, 5));
	snprintf(r->device_hash, sizeof(r->device_hash), "%s", mica_db_get(res, 0, 6));
	snprintf(r->device_name, sizeof(r->device_name), "%s", mica_db_get(res, 0, 7));
	snprintf(r->network_hash, sizeof(r->network_hash), "%s", mica_db_get(res, 0, 8));
	snprintf(r->session_kind, sizeof(r->session_kind), "%s", mica_db_get(res, 0, 9));
	snprintf(r->verification_id, sizeof(r->verification_id), "%s", mica_db_get(res, 0, 10));
	r->expired = strcmp(mica_db_get(res, 0, 11), "t") == 0;
	PQclear(res);
	if (strcmp(r->status, "pending") != 0)
		return mica_problemf(f, 409, "stepup_closed", "this step-up is already %s",
				     r->status);
	if (r->expired)
		return mica_problemf(f, 410, "stepup_expired", "this step-up expired; start again");
	return 0;
}

int acct_stepup_send(acct_service *s, const char *id, json_t *body, json_t **out, mica_problem *f)
{
	mica_body_value v[1];
	struct stepup_row r;
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char uid[24], *target = NULL, *idx = NULL, *vid = NULL;
	const char *col;
	int err;

	if ((err = mica_body_fields(body, MICA_BODY_FIELDS(acct_body_stepup_send), v, f)) != 0 ||
	    (err = stepup_load(id, &r, f)) != 0)
		return err;
	const char *method = v[0].s;
	if (strcmp(method, "sms") != 0 && strcmp(method, "email") != 0)
		return mica_problemf(f, 400, "bad_method",
				     "method is sms or email (trusted_device needs no code)");
	snprintf(uid, sizeof(uid), "%lld", (long long)r.user_id);
	const char *p[1] = {uid};
	err = mica_db_exec(
		db,
		strcmp(method, "sms") == 0
			? "SELECT coalesce(phone_enc, security_phone_enc), CASE WHEN phone_enc"
			  " IS NOT NULL THEN 'phone' ELSE 'security_phone' END FROM account.user"
			  " WHERE id = $1"
			: "SELECT coalesce(email_enc, security_email_enc), CASE WHEN email_enc"
			  " IS NOT NULL THEN 'email' ELSE 'security_email' END FROM account.user"
			  " WHERE id = $1",
		1, p, &res);
	if (err || PQntuples(res) != 1 || !mica_db_get(res, 0, 0)) {
		PQclear(res);
		return err ? acct_problem_dependency(f, err, "the database")
			   : mica_problemf(f, 400, "method_unavailable",
					   "the account has no verified %s", method);
	}
	col = mica_db_get(res, 0, 1);
	err = acct_pii_open(s, "user", col, uid, mica_db_get(res, 0, 0), &target);
	PQclear(res);
	if (err)
		return acct_problem_dependency(f, err, "the Key Center");
	/* The owner's quota: a stranger's reset/start for the same address
	 * (the open class) cannot use it up. */
	char requester[32];
	snprintf(requester, sizeof(requester), "user:%lld", (long long)r.user_id);
	if ((err = acct_blind_index(s, strcmp(method, "sms") == 0 ? "phone" : "email", target,
				    &idx)) ||
	    (err = acct_code_quota(s, ACCT_CODES_OWNER, idx, requester, f)) != 0 ||
	    (err = acct_code_send(s, "stepup", method, target, idx, r.user_id, &vid, f)) != 0) {
		if (!f->code)
			acct_problem_dependency(f, err, "the Key Center");
		goto out;
	}
	const char *q[2] = {id, vid};
	if ((err = mica_db_exec(db, "UPDATE account.stepup SET verification_id = $2 WHERE id = $1",
				2, q, NULL)) != 0) {
		acct_problem_dependency(f, err, "the database");
		goto out;
	}
	*out = json_pack("{s:b,s:s}", "sent", 1, "method", method);
out:
	if (target) {
		mica_wipe(target, strlen(target));
		free(target);
	}
	free(idx);
	free(vid);
	return err;
}

/* Counts one more wrong code on step-up |id| and sets *failures to the
 * wrong codes of its account in the window: over every step-up created in
 * the last cfg->stepup_failure_window_s seconds and since the account's
 * last password reset (which ends a freeze), so spreading wrong codes over
 * several step-ups does not escape the freeze. The statement's snapshot
 * does not see its own increment, hence the + 1. */
static int stepup_failures_count(acct_service *s, const char *id, int *failures)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char window[16];
	int err;
	*failures = 0;
	snprintf(window, sizeof(window), "%d", s->cfg->stepup_failure_window_s);
	const char *p[2] = {id, window};
	err = db ? mica_db_exec(db,
				"WITH b AS (UPDATE account.stepup SET failures = failures + 1"
				" WHERE id = $1 RETURNING user_id)"
				" SELECT coalesce(sum(t.failures), 0) + 1 FROM account.stepup t"
				" JOIN account.user u ON u.id = t.user_id"
				" WHERE t.user_id = (SELECT user_id FROM b)"
				" AND t.created_at > now() - make_interval(secs => $2::int)"
				" AND t.created_at > coalesce(u.password_reset_at, '-infinity')",
				2, p, &res)
		 : MICA_EDBCONN;
	int64_t n = 0;
	if (err == 0 && PQntuples(res) == 1 && (err = mica_db_get_int64(res, 0, 0, &n)) == 0)
		*failures = n > INT_MAX ? INT_MAX : (int)n;
	PQclear(res);
	return err;
}

static int stepup_close(const char *id, const char *status)
{
	mica_db *db = mica_db_thread();
	const char *p[2] = {id, status};
	return db ? mica_db_exec(db, "UPDATE account.stepup SET status = $2 WHERE id = $1", 2, p,
				 NULL)
		  : MICA_EDBCONN;
}

int acct_stepup_verify(acct_service *s, const char *id, json_t *body, json_t **out, mica_problem *f)
{
	mica_body_value v[1];
	struct stepup_row r;
	mica_db *db = mica_db_thread();
	char *idx = NULL, *target = NULL, *channel = NULL;
	int64_t uid = 0;
	int err;

	if ((err = mica_body_fields(body, MICA_BODY_FIELDS(acct_body_stepup_verify), v, f)) != 0 ||
	    (err = stepup_load(id, &r, f)) != 0)
		return err;
	const char *code = v[0].s;
	if (!code) {
		if (!r.approved_by)
			return mica_problemf(
				f, 409, "approval_pending",
				"no code given and no trusted device has approved yet");
	} else {
		if (!r.verification_id[0])
			return mica_problemf(f, 409, "no_code_sent",
					     "ask for a code first: POST /v1/stepup/%s/send", id);
		err = acct_code_verify(s, db, r.verification_id, "stepup", code, &uid, &idx,
				       &target, &channel, f);
		free(idx);
		free(target);
		free(channel);
		/* Wrong codes (and a code of another account) count; a used or
		 * expired one (MICA_ESTATE) does not. */
		if (err == MICA_EAUTH || (!err && uid != r.user_id)) {
			/* The right password followed by failed step-ups: severe. */
			int failures = 0, cerr;
			if ((cerr = stepup_failures_count(s, id, &failures)) != 0) {
				json_decref(f->extra);
				f->extra = NULL;
				return acct_problem_dependency(f, cerr, "the database");
			}
			if (acct_risk_freeze_due(s->cfg, failures)) {
				json_decref(f->extra);
				f->extra = NULL;
				if ((err = acct_freeze(s, r.user_id, "failed step-up")) != 0)
					return acct_problem_dependency(f, err,
								       "freezing the account");
				return mica_problemf(
					f, 423, "account_frozen",
					"too many failed verifications: the account is frozen;"
					" recover it with a password reset");
			}
			return MICA_EAUTH;
		}
		if (err)
			return err;
	}
	if ((err = stepup_close(id, "done")) != 0)
		return acct_problem_dependency(f, err, "the database");
	if (strcmp(r.kind, "sensitive") == 0) {
		if ((err = acct_session_touch_auth(s, r.session_id)) != 0)
			return acct_problem_dependency(f, err, "the session store");
		*out = json_pack("{s:b}", "verified", 1);
		return 0;
	}
	char *name = NULL;
	if (!acct_is_sealed(r.device_name)) /* "", or a row written before names were sealed */
		name = strdup(r.device_name);
	else if ((err = acct_unseal(s, s->records, "stepup", "device_name", id, r.device_name,
				    &name)) != 0)
		return acct_problem_dependency(f, err, "the Key Center");
	if (!name)
		return acct_problem_dependency(f, MICA_ENOMEM, "memory");
	err = acct_login_finish(s, r.user_id, r.device_hash, name, r.network_hash, 0,
				r.session_kind, 1, out, f);
	free(name);
	return err;
}

int acct_stepup_approve(acct_service *s, const struct acct_session *approver, const char *id,
			json_t **out, mica_problem *f)
{
	struct stepup_row r;
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char uid[24], sid[24];
	int err;

	(void)s;
	if ((err = stepup_load(id, &r, f)) != 0)
		return err;
	if (r.user_id != approver->user_id)
		return mica_problemf(f, 404, "unknown_stepup", "no such step-up");
	snprintf(uid, sizeof(uid), "%lld", (long long)r.user_id);
	const char *p[2] = {uid, approver->device_hash};
	err = mica_db_exec(
		db,
		"SELECT u.cross_device AND d.trusted FROM account.user u JOIN account.device d"
		" ON d.user_id = u.id WHERE u.id = $1 AND d.device_hash = $2",
		2, p, &res);
	if (err || PQntuples(res) != 1 || strcmp(mica_db_get(res, 0, 0), "t") != 0) {
		PQclear(res);
		return err ? acct_problem_dependency(f, err, "the database")
			   : mica_problemf(
				     f, 403, "not_trusted_device",
				     "approve from a trusted device with cross-device verification on");
	}
	PQclear(res);
	if (strcmp(approver->device_hash, r.device_hash) == 0)
		return mica_problemf(f, 403, "not_trusted_device",
				     "a device cannot approve its own login");
	snprintf(sid, sizeof(sid), "%lld", (long long)approver->id);
	const char *q[2] = {id, sid};
	if ((err = mica_db_exec(db, "UPDATE account.stepup SET approved_by = $2 WHERE id = $1", 2,
				q, NULL)) != 0)
		return acct_problem_dependency(f, err, "the database");
	*out = json_pack("{s:b}", "approved", 1);
	return 0;
}

int acct_require_recent(acct_service *s, const struct acct_session *sess, mica_problem *f)
{
	if (acct_auth_recent(s, sess))
		return 0;
	struct acct_stepup_new n = {sess->user_id, sess->id,  "sensitive", sess->device_hash, "",
				    "-",	   sess->kind};
	return acct_stepup_create(s, &n, json_pack("[s]", "stale_authentication"), f);
}
