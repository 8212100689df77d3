/* login.c - login: the password check, the risk engine's verdict (risk.c),
 * the captcha gate (captcha.c), step-up (stepup.c) and the session.
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

#include "account/account.h"
#include "crypto.h"
#include "log.h"

/* A PHC string verified when the account does not exist, so both cases
 * take the same time. Made once at start-up (acct_login_init). */
static char *dummy_phc;

int acct_login_init(acct_service *s)
{
	return dummy_phc ? 0
			 : acct_password_hash_with("mica-no-such-account", &s->argon2, &dummy_phc);
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
	if (mica_db_exec(
		    db,
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
	char *enc = NULL, uid[24];
	if (acct_password_protect(s, user_id, password, &enc) == 0 && db) {
		snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
		const char *p[2] = {uid, enc};
		if (mica_db_exec(db, "UPDATE account.user SET password_enc = $2 WHERE id = $1", 2,
				 p, NULL) == 0)
			MICA_LOG(MICA_LOG_INFO,
				 "account: a password hash was upgraded to today's cost");
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
int acct_login_finish(acct_service *s, int64_t user_id, const char *dev, const char *dev_name,
		      const char *net, int known, const char *kind, int notify_new, json_t **out,
		      mica_problem *f)
{
	struct acct_session session;
	mica_db *db = mica_db_thread();
	char *token = NULL, *name = NULL;
	int new_device = 0, err;
	/* A login that may write the device row writes its name sealed. */
	if (!known &&
	    (err = acct_device_name_seal(s, user_id, dev, dev_name ? dev_name : "", &name)) != 0)
		return acct_problem_dependency(f, err, "the Key Center");
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
		return acct_problem_dependency(f, err, "the database");
	}
	*out = json_pack("{s:s,s:I,s:I,s:s}", "token", token, "session_id", (json_int_t)session.id,
			 "expires_at", (json_int_t)session.expires_at, "kind", kind);
	mica_wipe(token, strlen(token));
	free(token);
	return 0;
}

int acct_login_parse(json_t *body, struct acct_login_req *r, mica_problem *f)
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
	int err = acct_body_members(body, MICA_BODY_FIELDS(acct_body_login_members), f);
	if (err || (err = acct_body_members(d, MICA_BODY_FIELDS(acct_body_device_members), f)))
		return err;

	if (!r->login || !r->password || !r->dev_id || !*r->dev_id || strlen(r->dev_id) > 200)
		return mica_problemf(f, 400, "missing_field",
				     "login, password and device.id are required");
	if (!r->kind)
		r->kind = "app";
	if (strcmp(r->kind, "app") != 0 && strcmp(r->kind, "web") != 0)
		return mica_problemf(f, 400, "bad_session_kind", "session_kind is app or web");
	if (!r->dev_name)
		r->dev_name = "";
	if (strlen(r->dev_name) > 100)
		return mica_problemf(f, 400, "bad_device", "device.name is at most 100 characters");
	if (strlen(r->password) > 1024)
		return mica_problemf(f, 400, "bad_password", "the password is too long");
	if ((r->ident = acct_ident_parse(r->login, r->norm, sizeof(r->norm))) == ACCT_ID_INVALID)
		return mica_problemf(
			f, 400, "bad_login",
			"login is a phone number (+ and digits), an email or an account id");
	acct_hash_hex("mica-device", r->dev_id, r->dev_hash);
	return 0;
}

int acct_login(acct_service *s, json_t *body, const char *ip, json_t **out, mica_problem *f)
{
	struct acct_login_req r;
	char legacy[65], kacct[200], knet[200], *net_hash = NULL, *idx = NULL;
	struct user_row u = {0};
	char krate[64];
	long acct_failures, net_failures;
	int ok = 0, need_rehash = 0, allowed = 0, err;
	struct acct_risk_captcha due;
	struct acct_risk_signals sig = {0};
	struct acct_risk_decision d;

	if ((err = acct_login_parse(body, &r, f)) != 0)
		return err;
	if ((err = acct_network_hash(s, ip, &net_hash, legacy)) != 0) {
		acct_problem_dependency(f, err, "the Key Center");
		goto out;
	}
	const char *what = NULL;
	if ((err = find_user(s, r.ident, r.norm, r.dev_hash, net_hash, legacy, &idx, &u, &what)) !=
	    0) {
		acct_problem_dependency(f, err, what);
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
	acct_risk_captcha(s->cfg, acct_failures, net_failures, &due);
	if ((err = acct_captcha_gate(s, &due, kacct, knet, r.altcha, f)) != 0)
		goto out;
	if ((err = check_password(s, &u, r.password, &ok, &need_rehash)) != 0) {
		acct_problem_dependency(f, err, "the password check");
		goto out;
	}
	if (!ok) {
		/* A failure that cannot be counted is refused as the counters are. */
		if ((err = acct_counter_bump(kacct, s->cfg->failure_window_s, f)) != 0 ||
		    (err = acct_counter_bump(knet, s->cfg->failure_window_s, f)) != 0)
			goto out;
		err = mica_problemf(f, 401, "invalid_credentials",
				    "the login or the password is wrong");
		goto out;
	}
	if (acct_failures > 0)
		acct_counter_clear(kacct);
	if (u.network_legacy)
		upgrade_network(u.id, net_hash, legacy);
	sig.frozen = strcmp(u.status, "frozen") == 0;
	sig.device_trusted = u.device_trusted;
	sig.network_known = u.network_known;
	if (!sig.frozen) {
		/* A frozen account's logins are neither rehashed nor counted. */
		if (need_rehash)
			rehash(s, u.id, r.password);
		snprintf(krate, sizeof(krate), "account:logins:%lld", (long long)u.id);
		if ((err = acct_limit_hit(krate, s->cfg->login_rate_max,
					  s->cfg->login_rate_window_s, &allowed, f)) != 0)
			goto out;
		sig.rate_allowed = allowed;
	}
	acct_risk_decide(s->cfg, &sig, &d);
	if (d.verdict == ACCT_RISK_FROZEN) {
		err = mica_problemf(f, 423, "account_frozen",
				    "this account is frozen; recover it with a password reset");
		goto out;
	}
	if (d.verdict == ACCT_RISK_STEPUP) {
		struct acct_stepup_new n = {u.id,	0,	  "login", r.dev_hash,
					    r.dev_name, net_hash, r.kind};
		err = acct_stepup_create(s, &n, acct_risk_reasons_json(d.reasons), f);
		goto out;
	}
	err = acct_login_finish(s, u.id, r.dev_hash, r.dev_name, net_hash,
				u.device_trusted && u.network_known, r.kind, 0, out, f);
out:
	free(net_hash);
	free(idx);
	free(u.password_enc);
	return err;
}
