/* reset.c - password reset by a one-time code to the login phone or email:
 * the only way out of a freeze. A reset asked through a login phone the
 * carrier recycled unbinds the number instead. Answers never reveal whether
 * an identifier has an account. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "crypto.h"
#include "log.h"

/* The phone or email login |login| resolves to: user id, channel, target. */
static int reset_target(acct_service *s, const char *login, int64_t *user_id, char norm[256],
			const char **channel, char **idx, char **bound_at)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	enum acct_ident kind = acct_ident_parse(login, norm, 256);
	int err;
	*user_id = 0;
	*idx = *bound_at = NULL;
	if (kind != ACCT_ID_PHONE && kind != ACCT_ID_EMAIL)
		return MICA_EINVAL;
	*channel = kind == ACCT_ID_PHONE ? "sms" : "email";
	if ((err = acct_blind_index(s, kind == ACCT_ID_PHONE ? "phone" : "email", norm, idx)) != 0)
		return err;
	const char *p[1] = {*idx};
	err = db ? mica_db_exec(db,
				kind == ACCT_ID_PHONE
					? "SELECT id, to_char(coalesce(phone_bound_at, created_at),"
					  " 'YYYY-MM-DD') FROM account.user WHERE phone_idx = $1"
					: "SELECT id, '' FROM account.user WHERE email_idx = $1",
				1, p, &res)
		 : MICA_EDBCONN;
	if (err == 0 && PQntuples(res) == 1 && mica_db_get_int64(res, 0, 0, user_id) == 0)
		*bound_at = strdup(mica_db_get(res, 0, 1));
	PQclear(res);
	return err;
}

/* A reset asked through a login phone the carrier recycled: the account
 * loses the number, and is told on its other contacts, in one transaction. */
struct unbind_recycled {
	int64_t user_id;
	const char *phone_idx;
};

static int unbind_recycled_tx(mica_db *db, void *arg)
{
	struct unbind_recycled *ub = arg;
	PGresult *res = NULL;
	char u[24];
	int err;
	snprintf(u, sizeof(u), "%lld", (long long)ub->user_id);
	const char *p[2] = {u, ub->phone_idx};
	if ((err = mica_db_exec(
		     db,
		     "UPDATE account.user SET phone_idx = NULL, phone_enc = NULL,"
		     " phone_bound_at = NULL WHERE id = $1 AND phone_idx = $2 RETURNING id",
		     2, p, &res)) != 0)
		return err;
	bool unbound = PQntuples(res) == 1;
	PQclear(res);
	return unbound ? acct_notice_emit(db, ub->user_id, ACCT_NOTICE_RESET_REFUSED, NULL, 0) : 0;
}

int acct_reset_start(acct_service *s, json_t *body, const char *ip, json_t **out, mica_problem *f)
{
	mica_body_value v[1];
	const char *channel = NULL;
	char norm[256], *idx = NULL, *bound = NULL, *id = NULL, *net = NULL;
	int64_t uid = 0;
	int recycled = 0, err;

	if ((err = mica_body_fields(body, MICA_BODY_FIELDS(acct_body_reset_start), v, f)) != 0)
		return err;
	err = reset_target(s, v[0].s, &uid, norm, &channel, &idx, &bound);
	if (err == MICA_EINVAL)
		return mica_problemf(f, 400, "bad_login",
				     "reset needs a phone number or an email address");
	if (!err)
		err = acct_network_hash(s, ip, &net, NULL);
	if (err) {
		free(idx);
		free(bound);
		return acct_problem_dependency(f, err, "the Key Center");
	}
	/* Every request counts, whether or not an account has the address and
	 * whether or not a code goes out: a known and an unknown address reach
	 * 429 (and 503) alike, here and at register/start. */
	err = acct_code_quota(s, ACCT_CODES_OPEN, idx, net, f);
	free(net);
	if (err) {
		free(idx);
		free(bound);
		return err;
	}
	if (uid && strcmp(channel, "sms") == 0 &&
	    (err = acct_number_recycled(s, mica_db_thread(), norm, idx, bound, &recycled)) != 0) {
		/* Unknown whether the number still reaches the account: no code,
		 * and the same answer as ever (a 5xx would tell an account exists). */
		MICA_LOG(MICA_LOG_WARN,
			 "account: no reset code: the number-recycling check failed: %s",
			 mica_strerror(err));
		uid = 0;
	} else if (uid && strcmp(channel, "sms") == 0 && recycled) {
		/* The number changed hands: its new holder must not take over the
		 * account, nor hear of it. The account loses the number, then is
		 * told on its other contacts. */
		struct unbind_recycled ub = {uid, idx};
		if (mica_db_tx(mica_db_thread(), MICA_DB_READ_COMMITTED, unbind_recycled_tx, &ub) !=
		    0)
			MICA_LOG(MICA_LOG_WARN,
				 "account: a recycled phone number could not be unbound");
		uid = 0;
	}
	/* Same answer whether or not an account exists (no enumeration); a code
	 * goes out only when one does. */
	err = uid ? acct_code_send(s, "reset", channel, norm, idx, uid, &id, f) : 0;
	free(idx);
	free(bound);
	if (err)
		return err;
	*out = json_pack("{s:s,s:s,s:i}", "verification_id", id ? id : "", "channel", channel,
			 "expires_in", s->cfg->code_ttl_s);
	if (!id) {
		/* A well-formed id that never verifies, so both answers look alike. */
		char fake[33];
		if (acct_random_hex(fake, 16) == 0)
			json_object_set_new(*out, "verification_id", json_string(fake));
	}
	free(id);
	return 0;
}

/* The reset's transaction: the new password was hashed and sealed before
 * it (|password_enc|), so it runs no Argon2id hash and no Key Center
 * request while it holds the account's row, and a serialization retry
 * (mica_db_tx repeats the whole function) repeats neither. */
struct reset_ctx {
	acct_service *s;
	int64_t user_id;
	const char *password_enc;
};

static int reset_tx(mica_db *db, void *arg)
{
	struct reset_ctx *r = arg;
	char uid[24];
	int err;
	snprintf(uid, sizeof(uid), "%lld", (long long)r->user_id);
	const char *p[2] = {uid, r->password_enc};
	/* A reset is also the way out of a freeze. */
	err = mica_db_exec(db,
			   "UPDATE account.user SET password_enc = $2, password_changed_at = now(),"
			   " password_reset_at = now(), status = 'active', frozen_at = NULL"
			   " WHERE id = $1",
			   2, p, NULL);
	if (!err)
		err = acct_session_revoke_all(r->s, db, r->user_id, 0);
	if (!err)
		err = acct_notice_emit(db, r->user_id, ACCT_NOTICE_PASSWORD_RESET, NULL, 0);
	return err;
}

int acct_reset_complete(acct_service *s, json_t *body, json_t **out, mica_problem *f)
{
	mica_body_value v[3];
	mica_db *db = mica_db_thread();
	char *idx = NULL, *target = NULL, *channel = NULL, policy[16] = "miui";
	int64_t uid = 0;
	int burned = 0, err;

	if ((err = mica_body_fields(body, MICA_BODY_FIELDS(acct_body_reset_complete), v, f)) != 0)
		return err;
	if (!db)
		return acct_problem_dependency(f, MICA_EDBCONN, "the database");
	const char *vid = v[0].s, *code = v[1].s, *password = v[2].s;
	if ((err = acct_code_verify(s, db, vid, "reset", code, &uid, &idx, &target, &channel, f)))
		return err;
	free(idx);
	free(target);
	free(channel);
	PGresult *res = NULL;
	char u[24];
	snprintf(u, sizeof(u), "%lld", (long long)uid);
	const char *p[1] = {u};
	if (mica_db_exec(db, "SELECT password_policy FROM account.user WHERE id = $1", 1, p,
			 &res) == 0 &&
	    PQntuples(res) == 1)
		snprintf(policy, sizeof(policy), "%s", mica_db_get(res, 0, 0));
	PQclear(res);
	if ((err = acct_password_admit(s, policy, password, f)) == 0) {
		if ((err = acct_password_burned(s, uid, password, &burned)) != 0)
			acct_problem_dependency(f, err, "the Key Center");
		else if (burned)
			err = mica_problemf(f, 400, "password_burned",
					    "this password was burned when the account was frozen;"
					    " choose another");
	}
	if (err) {
		/* The code proved the channel; a refused password must not use it up. */
		const char *q[1] = {vid};
		if (mica_db_exec(db,
				 "UPDATE account.verification SET consumed_at = NULL WHERE id = $1",
				 1, q, NULL) != 0)
			MICA_LOG(MICA_LOG_WARN, "account: a reset code could not be released");
		return err;
	}
	char *enc = NULL;
	if ((err = acct_password_protect(s, uid, password, &enc)) == 0) {
		struct reset_ctx r = {s, uid, enc};
		err = mica_db_tx(db, MICA_DB_READ_COMMITTED, reset_tx, &r);
	}
	free(enc);
	if (err)
		return acct_problem_dependency(f, err, "the password reset");
	*out = json_pack("{s:b}", "reset", 1);
	return 0;
}
