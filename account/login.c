/* login.c - login with the risk engine, step-up verification and freezing.
 * Answers, by risk level (docs/api/account.md has the policy):
 *   200 session; 401 invalid_credentials (wrong password and unknown account
 *   alike); 428 captcha_required (repeated failures per account, or per
 *   identifier without an account, or per network: an ALTCHA proof of work
 *   whose cost doubles with each further failure); 403 step_up_required (new
 *   device, new network, unusual login rate); 423 account_frozen (severe: the
 *   right password followed by failed step-up; every session is revoked, the
 *   password burned, the user told).
 * Wrong passwords alone never freeze an account: that would let anyone lock
 * anyone out. Failure counters live in Redis with the configured window
 * (limits.c) and fail closed: without Redis, a login is refused with 503.
 * Wrong step-up codes are counted per account over
 * cfg->stepup_failure_window_s, however many step-ups they are spread
 * over. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "account/account.h"
#include "clock.h"
#include "crypto.h"
#include "kv.h"
#include "log.h"

/* A PHC string verified when the account does not exist, so both cases
 * take the same time. Made once at start-up (acct_login_init). */
static char *dummy_phc;

int acct_login_init(acct_service *s)
{
	return dummy_phc ? 0 : acct_password_hash_with("mica-no-such-account", &s->argon2, &dummy_phc);
}

/* ---- step-up -------------------------------------------------------------------------- */

/* The step-up methods |user_id| can use. */
static json_t *stepup_methods(mica_db *db, int64_t user_id)
{
	PGresult *res = NULL;
	char uid[24];
	json_t *m = json_array();
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	const char *p[1] = {uid};
	if (mica_db_exec(db,
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

struct stepup_new {
	int64_t user_id, session_id;
	const char *kind, *device_hash, *device_name, *net_hash, *session_kind;
};

static int stepup_create(acct_service *s, const struct stepup_new *n, json_t *reasons,
			 struct acct_fail *f)
{
	mica_db *db = mica_db_thread();
	uint8_t r[16];
	char id[33], uid[24], sid[24], ttl[16], *name = NULL;
	int err;
	if (!db)
		return acct_fail_internal(f, MICA_EDBCONN, "the database");
	if ((err = mica_random(r, sizeof(r))) != 0 || (err = mica_hex_encode(r, 16, id, sizeof(id))))
		return acct_fail_internal(f, err, "the random generator");
	/* The name of the device waiting for step-up, sealed for this row. */
	if (!*n->device_name)
		name = strdup("");
	else if ((err = acct_seal(s, s->records, "stepup", "device_name", id, n->device_name,
				  &name)) != 0)
		return acct_fail_internal(f, err, "the Key Center");
	if (!name)
		return acct_fail_internal(f, MICA_ENOMEM, "memory");
	snprintf(uid, sizeof(uid), "%lld", (long long)n->user_id);
	snprintf(sid, sizeof(sid), "%lld", (long long)n->session_id);
	snprintf(ttl, sizeof(ttl), "%d", s->cfg->stepup_ttl_s);
	const char *p[8] = {id, uid, n->kind, n->session_id ? sid : NULL, n->device_hash, name,
			    n->net_hash, ttl};
	const char *q[9] = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], n->session_kind, p[7]};
	err = mica_db_exec(db,
			   "INSERT INTO account.stepup (id, user_id, kind, session_id, device_hash,"
			   " device_name, network_hash, session_kind, expires_at) VALUES ($1, $2, $3,"
			   " $4, $5, $6, $7, $8, now() + make_interval(secs => $9::int))",
			   9, q, NULL);
	free(name);
	if (err)
		return acct_fail_internal(f, err, "the database");
	acct_failf(f, 403, "step_up_required",
		   "%s: verify with one of the methods, then POST /v1/stepup/%s/verify",
		   strcmp(n->kind, "login") == 0 ? "unusual login" : "recent authentication needed",
		   id);
	f->extra = json_pack("{s:s,s:o,s:o}", "stepup_id", id, "methods",
			     stepup_methods(db, n->user_id), "reasons", reasons);
	return MICA_EDENIED;
}

/* ---- login ------------------------------------------------------------------------------ */

struct user_row {
	int64_t id;
	char status[8];
	char *password_enc;
	bool device_trusted, network_known; /* the login's device and network */
	bool network_legacy;		    /* known only by its unkeyed hash (a row to upgrade) */
};

/* Finds the account of a login identifier and, in the same statement, whether
 * the login's device (|dev|, trusted) and network are known to it: by the
 * keyed hash |net|, or by the unkeyed hash |legacy| of rows written before. */
static int find_user(acct_service *s, enum acct_ident kind, const char *norm, const char *dev,
		     const char *net, const char *legacy, char **idx, struct user_row *u,
		     const char **what)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	static const char *const kinds[] = {"phone", "email", "account_no"};
#define FIND_USER(column)                                                                          \
	"SELECT u.id, u.status, u.password_enc,"                                                   \
	" EXISTS (SELECT 1 FROM account.device d WHERE d.user_id = u.id"                           \
	" AND d.device_hash = $2 AND d.trusted),"                                                  \
	" EXISTS (SELECT 1 FROM account.network n WHERE n.user_id = u.id"                          \
	" AND n.network_hash = $3),"                                                               \
	" EXISTS (SELECT 1 FROM account.network n WHERE n.user_id = u.id"                          \
	" AND n.network_hash = $4)"                                                                \
	" FROM account.user u WHERE u." column " = $1"
	static const char *const sql[] = {FIND_USER("phone_idx"), FIND_USER("email_idx"),
					  FIND_USER("account_no_idx")};
#undef FIND_USER
	int err;
	memset(u, 0, sizeof(*u));
	*what = "the Key Center";
	if ((err = acct_blind_index(s, kinds[kind], norm, idx)) != 0)
		return err;
	*what = "the database";
	if (!db)
		return MICA_EDBCONN;
	const char *p[4] = {*idx, dev, net, legacy};
	if ((err = mica_db_exec(db, sql[kind], 4, p, &res)) != 0)
		return err;
	if (PQntuples(res) == 1) {
		if (mica_db_get_int64(res, 0, 0, &u->id) != 0)
			u->id = 0;
		snprintf(u->status, sizeof(u->status), "%s", mica_db_get(res, 0, 1));
		u->password_enc = strdup(mica_db_get(res, 0, 2));
		u->device_trusted = strcmp(mica_db_get(res, 0, 3), "t") == 0;
		u->network_known = strcmp(mica_db_get(res, 0, 4), "t") == 0;
		u->network_legacy = !u->network_known && strcmp(mica_db_get(res, 0, 5), "t") == 0;
		u->network_known = u->network_known || u->network_legacy;
	}
	PQclear(res);
	return u->id && !u->password_enc ? MICA_ENOMEM : 0;
}

/* Writes |phc| for |user_id| again, sealed the current way, unless the
 * stored value changed meanwhile (a password change wins). */
static void reseal(acct_service *s, int64_t user_id, const char *old, const char *phc)
{
	mica_db *db = mica_db_thread();
	char *enc = NULL, uid[24];
	if (!db || acct_password_seal(s, user_id, phc, &enc) != 0)
		return;
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	const char *p[3] = {uid, enc, old};
	if (mica_db_exec(db,
			 "UPDATE account.user SET password_enc = $2 WHERE id = $1 AND password_enc = $3",
			 3, p, NULL) == 0)
		MICA_LOG(MICA_LOG_INFO, "account: a password hash was sealed under a data key");
	free(enc);
}

/* Verifies |password| for |u| (or the dummy hash when there is no account);
 * sets *ok and, when the stored hash is weaker than today's parameters,
 * *rehash. A correct password stored in the Key Center's older sealed form
 * is sealed again under a data key. */
static int check_password(acct_service *s, const struct user_row *u, const char *password, int *ok,
			  int *rehash)
{
	char *phc = NULL;
	int err, legacy = 0;
	*ok = *rehash = 0;
	if (!u->id) {
		/* Same work as a real check; the answer is always "wrong". */
		if (acct_password_verify(dummy_phc, password) == 0)
			MICA_LOG(MICA_LOG_DEBUG, "account: the dummy hash matched");
		return 0;
	}
	if ((err = acct_password_unseal(s, u->id, u->password_enc, &phc, &legacy)) != 0)
		return err;
	*ok = acct_password_verify(phc, password) == 0;
	*rehash = *ok && acct_password_needs_rehash(phc, &s->argon2) == 1;
	if (*ok && legacy && !*rehash)
		reseal(s, u->id, u->password_enc, phc);
	mica_wipe(phc, strlen(phc));
	free(phc);
	return 0;
}

static void rehash(acct_service *s, int64_t user_id, const char *password)
{
	mica_db *db = mica_db_thread();
	char *phc = NULL, *enc = NULL, uid[24];
	if (acct_password_hash_with(password, &s->argon2, &phc) == 0 &&
	    acct_password_seal(s, user_id, phc, &enc) == 0 && db) {
		snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
		const char *p[2] = {uid, enc};
		if (mica_db_exec(db, "UPDATE account.user SET password_enc = $2 WHERE id = $1", 2, p,
				 NULL) == 0)
			MICA_LOG(MICA_LOG_INFO, "account: a password hash was upgraded to today's cost");
	}
	if (phc) {
		mica_wipe(phc, strlen(phc));
		free(phc);
	}
	free(enc);
}

/* Replaces a network row of |user_id| stored under the unkeyed hash
 * |legacy| by the keyed hash |net|, keeping when it was first seen. Done on
 * a right password only, so a guesser rewrites nothing. */
static void upgrade_network(int64_t user_id, const char *net, const char *legacy)
{
	mica_db *db = mica_db_thread();
	char uid[24];
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	const char *p[3] = {uid, net, legacy};
	if (!db || mica_db_exec(db,
				"WITH d AS (DELETE FROM account.network WHERE user_id = $1"
				" AND network_hash = $3 RETURNING first_seen)"
				" INSERT INTO account.network (user_id, network_hash, first_seen)"
				" SELECT $1, $2, first_seen FROM d ON CONFLICT DO NOTHING",
				3, p, NULL) != 0)
		MICA_LOG(MICA_LOG_WARN, "account: a network hash could not be keyed");
}

/* Which risk signals |u| raises from the login's device and network (looked
 * up by find_user()) and by its login rate. 0, or the 503 of a login rate
 * that cannot be counted. */
static int risk_reasons(acct_service *s, const struct user_row *u, json_t *reasons,
			struct acct_fail *f)
{
	char key[64];
	int allowed = 0, err;
	if (s->cfg->stepup_new_device && !u->device_trusted)
		json_array_append_new(reasons, json_string("new_device"));
	if (s->cfg->stepup_new_network && !u->network_known)
		json_array_append_new(reasons, json_string("new_network"));
	snprintf(key, sizeof(key), "account:logins:%lld", (long long)u->id);
	if ((err = acct_limit_hit(key, s->cfg->login_rate_max, s->cfg->login_rate_window_s,
				  &allowed, f)) != 0)
		return err;
	if (!allowed)
		json_array_append_new(reasons, json_string("unusual_rate"));
	return 0;
}

struct open_ctx {
	acct_service *s;
	int64_t user_id;
	const char *dev, *name, *net;
	int known;
	const char *kind;
	int notify_new;
	char **token;
	struct acct_session *session;
};

static int open_tx(mica_db *db, void *arg)
{
	struct open_ctx *o = arg;
	int new_device = 0, err;
	if (*o->token) { /* a retried transaction: that token was never given out */
		mica_wipe(*o->token, strlen(*o->token));
		free(*o->token);
		*o->token = NULL;
	}
	err = acct_session_open(o->s, db, o->user_id, o->dev, o->name, o->net, o->known, o->kind,
				o->token, o->session, &new_device);
	if (!err && o->notify_new && new_device)
		err = acct_notice_emit(db, o->user_id, ACCT_NOTICE_NEW_SIGN_IN, o->dev, 0);
	return err;
}

/* Records a successful login from |dev| on |net| (|known|: already trusted
 * and known) and opens a session. */
static int finish_login(acct_service *s, int64_t user_id, const char *dev, const char *dev_name,
			const char *net, int known, const char *kind, int notify_new, json_t **out,
			struct acct_fail *f)
{
	struct acct_session session;
	mica_db *db = mica_db_thread();
	char *token = NULL, *name = NULL;
	int new_device = 0, err;
	/* A login that may write the device row writes its name sealed. */
	if (!known &&
	    (err = acct_device_name_seal(s, user_id, dev, dev_name ? dev_name : "", &name)) != 0)
		return acct_fail_internal(f, err, "the Key Center");
	struct open_ctx o = {s,	    user_id, dev,	 name ? name : "", net,
			     known, kind,    notify_new, &token,	   &session};
	/* A login that may add a device opens its session and records the
	 * new-device notice in one transaction; a known device needs neither. */
	err = !db     ? MICA_EDBCONN
	      : known ? acct_session_open(s, db, user_id, dev, "", net, known, kind, &token,
					  &session, &new_device)
		      : mica_db_tx(db, MICA_DB_READ_COMMITTED, open_tx, &o);
	free(name);
	if (err) {
		if (token) {
			mica_wipe(token, strlen(token));
			free(token);
		}
		return acct_fail_internal(f, err, "the database");
	}
	*out = json_pack("{s:s,s:I,s:I,s:s}", "token", token, "session_id", (json_int_t)session.id,
			 "expires_at", (json_int_t)session.expires_at, "kind", kind);
	mica_wipe(token, strlen(token));
	free(token);
	return 0;
}

int acct_login_parse(json_t *body, struct acct_login_req *r, struct acct_fail *f)
{
	json_t *d = json_object_get(body, "device");
	memset(r, 0, sizeof(*r));
	r->login = json_string_value(json_object_get(body, "login"));
	r->password = json_string_value(json_object_get(body, "password"));
	r->altcha = json_string_value(json_object_get(body, "altcha"));
	r->kind = json_string_value(json_object_get(body, "session_kind"));
	r->dev_id = json_string_value(json_object_get(d, "id"));
	r->dev_name = json_string_value(json_object_get(d, "name"));
	r->ident = ACCT_ID_INVALID;

	if (!r->login || !r->password || !r->dev_id || !*r->dev_id || strlen(r->dev_id) > 200)
		return acct_failf(f, 400, "missing_field",
				  "login, password and device.id are required");
	if (!r->kind)
		r->kind = "app";
	if (strcmp(r->kind, "app") != 0 && strcmp(r->kind, "web") != 0)
		return acct_failf(f, 400, "bad_session_kind", "session_kind is app or web");
	if (!r->dev_name)
		r->dev_name = "";
	if (strlen(r->dev_name) > 100)
		return acct_failf(f, 400, "bad_device", "device.name is at most 100 characters");
	if (strlen(r->password) > 1024)
		return acct_failf(f, 400, "bad_password", "the password is too long");
	if ((r->ident = acct_ident_parse(r->login, r->norm, sizeof(r->norm))) == ACCT_ID_INVALID)
		return acct_failf(f, 400, "bad_login",
				  "login is a phone number (+ and digits), an email or an account id");
	acct_hash_hex("mica-device", r->dev_id, r->dev_hash);
	return 0;
}

int acct_login(acct_service *s, json_t *body, const char *ip, json_t **out, struct acct_fail *f)
{
	struct acct_login_req r;
	char legacy[65], kacct[200], knet[200], *net_hash = NULL, *idx = NULL;
	struct user_row u = {0};
	long excess, acct_failures, net_failures;
	int ok = 0, need_rehash = 0, err;
	json_t *reasons = NULL;

	if ((err = acct_login_parse(body, &r, f)) != 0)
		return err;
	if ((err = acct_network_hash(s, ip, &net_hash, legacy)) != 0) {
		acct_fail_internal(f, err, "the Key Center");
		goto out;
	}
	const char *what = NULL;
	if ((err = find_user(s, r.ident, r.norm, r.dev_hash, net_hash, legacy, &idx, &u, &what)) !=
	    0) {
		acct_fail_internal(f, err, what);
		goto out;
	}
	/* Failures are counted per account (all its identifiers together), or
	 * per identifier when no account has it, and per client network,
	 * separately. */
	if (u.id)
		snprintf(kacct, sizeof(kacct), "account:fail:user:%lld", (long long)u.id);
	else
		snprintf(kacct, sizeof(kacct), "account:fail:id:%.150s", idx);
	snprintf(knet, sizeof(knet), "account:fail:net:%.150s", net_hash);
	if ((err = acct_counters_get(kacct, knet, &acct_failures, &net_failures, f)) != 0)
		goto out;
	excess = acct_failures - s->cfg->captcha_account_failures;
	long net_excess = net_failures - s->cfg->captcha_network_failures;
	if (net_excess > excess)
		excess = net_excess;
	if ((err = acct_captcha_gate(s, excess, kacct, knet, r.altcha, f)) != 0)
		goto out;
	if ((err = check_password(s, &u, r.password, &ok, &need_rehash)) != 0) {
		acct_fail_internal(f, err, "the password check");
		goto out;
	}
	if (!ok) {
		/* A failure that cannot be counted is refused as the counters are. */
		if ((err = acct_counter_bump(kacct, s->cfg->failure_window_s, f)) != 0 ||
		    (err = acct_counter_bump(knet, s->cfg->failure_window_s, f)) != 0)
			goto out;
		err =
		    acct_failf(f, 401, "invalid_credentials", "the login or the password is wrong");
		goto out;
	}
	if (acct_failures > 0)
		acct_counter_clear(kacct);
	if (u.network_legacy)
		upgrade_network(u.id, net_hash, legacy);
	if (strcmp(u.status, "frozen") == 0) {
		err = acct_failf(f, 423, "account_frozen",
				 "this account is frozen; recover it with a password reset");
		goto out;
	}
	if (need_rehash)
		rehash(s, u.id, r.password);
	reasons = json_array();
	if ((err = risk_reasons(s, &u, reasons, f)) != 0)
		goto out;
	if (json_array_size(reasons) > 0) {
		struct stepup_new n = {u.id, 0, "login", r.dev_hash, r.dev_name, net_hash, r.kind};
		err = stepup_create(s, &n, reasons, f);
		reasons = NULL;
		goto out;
	}
	err = finish_login(s, u.id, r.dev_hash, r.dev_name, net_hash,
			   u.device_trusted && u.network_known, r.kind, 0, out, f);
out:
	json_decref(reasons);
	free(net_hash);
	free(idx);
	free(u.password_enc);
	return err;
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

static int stepup_load(const char *id, struct stepup_row *r, struct acct_fail *f)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	int err;
	memset(r, 0, sizeof(*r));
	if (!id || strlen(id) != 32)
		return acct_failf(f, 404, "unknown_stepup", "no such step-up");
	const char *p[1] = {id};
	err = db ? mica_db_exec(db,
				"SELECT user_id, coalesce(session_id, 0), coalesce(approved_by, 0),"
				" failures, kind, status, device_hash, device_name, network_hash,"
				" session_kind, coalesce(verification_id, ''), expires_at <= now()"
				" FROM account.stepup WHERE id = $1",
				1, p, &res)
		 : MICA_EDBCONN;
	if (err)
		return acct_fail_internal(f, err, "the database");
	if (PQntuples(res) != 1) {
		PQclear(res);
		return acct_failf(f, 404, "unknown_stepup", "no such step-up");
	}
	if (mica_db_get_int64(res, 0, 0, &r->user_id) != 0 ||
	    mica_db_get_int64(res, 0, 1, &r->session_id) != 0 ||
	    mica_db_get_int64(res, 0, 2, &r->approved_by) != 0) {
		PQclear(res);
		return acct_fail_internal(f, MICA_EDB, "the database");
	}
	r->failures = atoi(mica_db_get(res, 0, 3));
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
		return acct_failf(f, 409, "stepup_closed", "this step-up is already %s", r->status);
	if (r->expired)
		return acct_failf(f, 410, "stepup_expired", "this step-up expired; start again");
	return 0;
}

int acct_stepup_send(acct_service *s, const char *id, json_t *body, json_t **out,
		     struct acct_fail *f)
{
	union acct_field_value v[1];
	struct stepup_row r;
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char uid[24], *target = NULL, *idx = NULL, *vid = NULL;
	const char *col;
	int err;

	if ((err = acct_body_fields(body, ACCT_FIELDS(acct_body_stepup_send), v, f)) != 0 ||
	    (err = stepup_load(id, &r, f)) != 0)
		return err;
	const char *method = v[0].s;
	if (strcmp(method, "sms") != 0 && strcmp(method, "email") != 0)
		return acct_failf(f, 400, "bad_method",
				  "method is sms or email (trusted_device needs no code)");
	snprintf(uid, sizeof(uid), "%lld", (long long)r.user_id);
	const char *p[1] = {uid};
	err = mica_db_exec(db,
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
		return err ? acct_fail_internal(f, err, "the database")
			   : acct_failf(f, 400, "method_unavailable",
					"the account has no verified %s", method);
	}
	col = mica_db_get(res, 0, 1);
	err = acct_pii_open(s, "user", col, uid, mica_db_get(res, 0, 0), &target);
	PQclear(res);
	if (err)
		return acct_fail_internal(f, err, "the Key Center");
	/* The owner's quota: a stranger's reset/start for the same address
	 * (the open class) cannot use it up. */
	char requester[32];
	snprintf(requester, sizeof(requester), "user:%lld", (long long)r.user_id);
	if ((err = acct_blind_index(s, strcmp(method, "sms") == 0 ? "phone" : "email", target,
				    &idx)) ||
	    (err = acct_code_quota(s, ACCT_CODES_OWNER, idx, requester, f)) != 0 ||
	    (err = acct_code_send(s, "stepup", method, target, idx, r.user_id, &vid, f)) != 0) {
		if (!f->code)
			acct_fail_internal(f, err, "the Key Center");
		goto out;
	}
	const char *q[2] = {id, vid};
	if ((err = mica_db_exec(db, "UPDATE account.stepup SET verification_id = $2 WHERE id = $1", 2,
				q, NULL)) != 0) {
		acct_fail_internal(f, err, "the database");
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
	if (err == 0 && PQntuples(res) == 1)
		*failures = atoi(mica_db_get(res, 0, 0));
	PQclear(res);
	return err;
}

static int stepup_close(const char *id, const char *status)
{
	mica_db *db = mica_db_thread();
	const char *p[2] = {id, status};
	return db ? mica_db_exec(db, "UPDATE account.stepup SET status = $2 WHERE id = $1", 2, p, NULL)
		  : MICA_EDBCONN;
}

int acct_stepup_verify(acct_service *s, const char *id, json_t *body, json_t **out,
		       struct acct_fail *f)
{
	union acct_field_value v[1];
	struct stepup_row r;
	mica_db *db = mica_db_thread();
	char *idx = NULL, *target = NULL, *channel = NULL;
	int64_t uid = 0;
	int err;

	if ((err = acct_body_fields(body, ACCT_FIELDS(acct_body_stepup_verify), v, f)) != 0 ||
	    (err = stepup_load(id, &r, f)) != 0)
		return err;
	const char *code = v[0].s;
	if (!code) {
		if (!r.approved_by)
			return acct_failf(f, 409, "approval_pending",
					  "no code given and no trusted device has approved yet");
	} else {
		if (!r.verification_id[0])
			return acct_failf(f, 409, "no_code_sent",
					  "ask for a code first: POST /v1/stepup/%s/send", id);
		err = acct_code_verify(s, db, r.verification_id, "stepup", code, &uid, &idx, &target,
				       &channel, f);
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
				return acct_fail_internal(f, cerr, "the database");
			}
			if (failures >= s->cfg->freeze_after_stepup_failures) {
				json_decref(f->extra);
				f->extra = NULL;
				if ((err = acct_freeze(s, r.user_id, "failed step-up")) != 0)
					return acct_fail_internal(f, err, "freezing the account");
				return acct_failf(f, 423, "account_frozen",
						  "too many failed verifications: the account is frozen;"
						  " recover it with a password reset");
			}
			return MICA_EAUTH;
		}
		if (err)
			return err;
	}
	if ((err = stepup_close(id, "done")) != 0)
		return acct_fail_internal(f, err, "the database");
	if (strcmp(r.kind, "sensitive") == 0) {
		if ((err = acct_session_touch_auth(s, r.session_id)) != 0)
			return acct_fail_internal(f, err, "the session store");
		*out = json_pack("{s:b}", "verified", 1);
		return 0;
	}
	char *name = NULL;
	if (!acct_is_sealed(r.device_name)) /* "", or a row written before names were sealed */
		name = strdup(r.device_name);
	else if ((err = acct_unseal(s, s->records, "stepup", "device_name", id, r.device_name,
				    &name)) != 0)
		return acct_fail_internal(f, err, "the Key Center");
	if (!name)
		return acct_fail_internal(f, MICA_ENOMEM, "memory");
	err = finish_login(s, r.user_id, r.device_hash, name, r.network_hash, 0, r.session_kind, 1,
			   out, f);
	free(name);
	return err;
}

int acct_stepup_approve(acct_service *s, const struct acct_session *approver, const char *id,
			json_t **out, struct acct_fail *f)
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
		return acct_failf(f, 404, "unknown_stepup", "no such step-up");
	snprintf(uid, sizeof(uid), "%lld", (long long)r.user_id);
	const char *p[2] = {uid, approver->device_hash};
	err = mica_db_exec(db,
			   "SELECT u.cross_device AND d.trusted FROM account.user u JOIN account.device d"
			   " ON d.user_id = u.id WHERE u.id = $1 AND d.device_hash = $2",
			   2, p, &res);
	if (err || PQntuples(res) != 1 || strcmp(mica_db_get(res, 0, 0), "t") != 0) {
		PQclear(res);
		return err ? acct_fail_internal(f, err, "the database")
			   : acct_failf(f, 403, "not_trusted_device",
					"approve from a trusted device with cross-device verification on");
	}
	PQclear(res);
	if (strcmp(approver->device_hash, r.device_hash) == 0)
		return acct_failf(f, 403, "not_trusted_device",
				  "a device cannot approve its own login");
	snprintf(sid, sizeof(sid), "%lld", (long long)approver->id);
	const char *q[2] = {id, sid};
	if ((err = mica_db_exec(db, "UPDATE account.stepup SET approved_by = $2 WHERE id = $1", 2, q,
				NULL)) != 0)
		return acct_fail_internal(f, err, "the database");
	*out = json_pack("{s:b}", "approved", 1);
	return 0;
}

int acct_require_recent(acct_service *s, const struct acct_session *sess, struct acct_fail *f)
{
	if (acct_auth_recent(s, sess))
		return 0;
	struct stepup_new n = {sess->user_id, sess->id, "sensitive", sess->device_hash, "", "-",
			       sess->kind};
	return stepup_create(s, &n, json_pack("[s]", "stale_authentication"), f);
}
