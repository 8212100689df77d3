/* register.c - one-time codes and the flows built on them: registration by
 * phone or email, password reset (the only way out of a freeze), and the
 * recycled-phone-number rule. Codes are six random digits, stored only as a
 * Key Center HMAC (index key) of the verification id and the code, so a
 * database copy does not give them away; single use, limited in attempts and
 * lifetime; their sending is limited per address and requester (limits.c),
 * counted alike whether or not an account has the address. Answers never
 * reveal whether an identifier has an account. */
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "crypto.h"
#include "kv.h"
#include "log.h"
#include "outbox.h"

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

int acct_fail_internal(struct acct_fail *f, int err, const char *what)
{
	MICA_LOG(MICA_LOG_ERROR, "account: %s failed: %s", what, mica_strerror(err));
	if (err == MICA_EDBCONN || err == MICA_EKVCONN || err == MICA_EHTTP || err == MICA_ETIMEOUT ||
	    err == MICA_ETLS || err == MICA_EAUDIT || err == MICA_EHSM)
		acct_failf(f, 503, "unavailable", "%s is unavailable; try again", what);
	else
		acct_failf(f, 500, "internal_error", "%s failed", what);
	return err;
}

/* The stored form of code |code| of verification |id|: the blind index of
 * kind "code" of "<id>:<code>" (*out malloc'd, "kc:v<N>:..."). Keyed, so
 * the million possible codes of a row cannot be tried without the Key
 * Center. */
static int code_hash(acct_service *s, const char *id, const char *code, char **out)
{
	char buf[64];
	int err;
	snprintf(buf, sizeof(buf), "%.32s:%.8s", id, code);
	err = acct_blind_index(s, "code", buf, out);
	mica_wipe(buf, sizeof(buf));
	return err;
}

static int random_digits(char *out, int n)
{
	uint8_t r[16];
	if (n > 16 || mica_random(r, (size_t)n) != 0)
		return MICA_ECRYPTO;
	for (int i = 0; i < n; i++)
		out[i] = (char)('0' + r[i] % 10); /* bias 256 % 10: under 1% per digit */
	out[n] = '\0';
	mica_wipe(r, sizeof(r));
	return 0;
}

static int random_hex(char *out, size_t bytes)
{
	uint8_t r[32];
	if (bytes > sizeof(r) || mica_random(r, bytes) != 0)
		return MICA_ECRYPTO;
	return mica_hex_encode(r, bytes, out, bytes * 2 + 1);
}

int acct_code_send(acct_service *s, const char *purpose, const char *channel, const char *target,
		   const char *target_idx, int64_t user_id, char **id_out, struct acct_fail *f)
{
	mica_db *db = mica_db_thread();
	char id[33], code[8], uid[24], ttl[16], subject[80], body[256];
	char *enc = NULL, *hash = NULL;
	int err;

	*id_out = NULL;
	if (!db)
		return acct_fail_internal(f, MICA_EDBCONN, "the database");
	if ((err = random_hex(id, 16)) != 0 || (err = random_digits(code, 6)) != 0)
		return acct_fail_internal(f, err, "the random generator");
	if ((err = code_hash(s, id, code, &hash)) != 0 ||
	    (err = acct_pii_seal(s, "verification", "target", id, target, &enc)) != 0) {
		mica_wipe(code, sizeof(code));
		free(hash);
		return acct_fail_internal(f, err, "the Key Center");
	}
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	snprintf(ttl, sizeof(ttl), "%d", s->cfg->code_ttl_s);
	const char *p[7] = {id, purpose, channel, target_idx, enc, user_id ? uid : NULL, hash};
	const char *q[8] = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], ttl};
	err = mica_db_exec(db,
			   "INSERT INTO account.verification (id, purpose, channel, target_idx,"
			   " target_enc, user_id, code_hash, expires_at) VALUES ($1, $2, $3, $4, $5,"
			   " $6, $7, now() + make_interval(secs => $8::int))",
			   8, q, NULL);
	free(enc);
	free(hash);
	if (err) {
		mica_wipe(code, sizeof(code));
		return acct_fail_internal(f, err, "the database");
	}
	snprintf(subject, sizeof(subject), "Your mica verification code");
	snprintf(body, sizeof(body),
		 "Your mica verification code is %s. It expires in %d minutes. Never share it.", code,
		 s->cfg->code_ttl_s / 60);
	err = acct_notify_send(s->notify, db, strcmp(channel, "sms") == 0 ? ACCT_CHANNEL_SMS
									 : ACCT_CHANNEL_EMAIL,
			       target, subject, body);
	mica_wipe(code, sizeof(code));
	mica_wipe(body, sizeof(body));
	if (err)
		return acct_fail_internal(f, err, "the notifier");
	if (!(*id_out = strdup(id)))
		return acct_fail_internal(f, MICA_ENOMEM, "memory");
	return 0;
}

int acct_code_verify(acct_service *s, mica_db *db, const char *id, const char *purpose,
		     const char *code, int64_t *user_id, char **target_idx, char **target,
		     char **channel, struct acct_fail *f)
{
	PGresult *res = NULL;
	char *hash = NULL, max[16];
	int err;

	*user_id = 0;
	*target_idx = *target = *channel = NULL;
	if (!id || !code || strlen(id) != 32 || strlen(code) != 6)
		return acct_failf(f, 400, "invalid_code", "the code is wrong");
	if ((err = code_hash(s, id, code, &hash)) != 0)
		return acct_fail_internal(f, err, "the Key Center");
	snprintf(max, sizeof(max), "%d", s->cfg->code_max_attempts);
	const char *p[4] = {id, purpose, hash, max};
	/* One statement consumes a right code, so two requests cannot both use it. */
	err = mica_db_exec(db,
			   "UPDATE account.verification SET consumed_at = now() WHERE id = $1"
			   " AND purpose = $2 AND code_hash = $3 AND consumed_at IS NULL"
			   " AND expires_at > now() AND attempts < $4::int"
			   " RETURNING user_id, target_idx, target_enc, channel",
			   4, p, &res);
	if (err)
		goto out;
	if (PQntuples(res) == 1) {
		if (mica_db_get(res, 0, 0) && mica_db_get_int64(res, 0, 0, user_id) != 0)
			*user_id = 0;
		*target_idx = strdup(mica_db_get(res, 0, 1));
		*channel = strdup(mica_db_get(res, 0, 3));
		err = acct_pii_open(s, "verification", "target", id, mica_db_get(res, 0, 2), target);
		if (!err && (!*target_idx || !*channel))
			err = MICA_ENOMEM;
		if (err) {
			acct_fail_internal(f, err, "the Key Center");
			goto out;
		}
		goto out;
	}
	PQclear(res);
	res = NULL;
	/* Why not: count the attempt (committed on its own) and say which case. */
	const char *q[2] = {id, purpose};
	err = mica_db_exec(db,
			   "UPDATE account.verification SET attempts = attempts + 1 WHERE id = $1"
			   " AND purpose = $2 RETURNING attempts, expires_at > now(), consumed_at IS NULL",
			   2, q, &res);
	if (err)
		goto out;
	/* A wrong code is MICA_EAUTH; a used or expired one MICA_ESTATE, as it
	 * says nothing about who typed it (step-up does not count it). */
	err = MICA_EAUTH;
	if (PQntuples(res) != 1) {
		acct_failf(f, 400, "invalid_code", "the code is wrong");
	} else if (strcmp(mica_db_get(res, 0, 2), "t") != 0) {
		acct_failf(f, 400, "code_used", "this code was already used");
		err = MICA_ESTATE;
	} else if (strcmp(mica_db_get(res, 0, 1), "t") != 0) {
		acct_failf(f, 400, "code_expired", "the code expired; ask for a new one");
		err = MICA_ESTATE;
	} else if (atoi(mica_db_get(res, 0, 0)) > s->cfg->code_max_attempts) {
		acct_failf(f, 429, "too_many_attempts", "too many wrong codes; ask for a new one");
	} else {
		acct_failf(f, 400, "invalid_code", "the code is wrong");
	}
out:
	if (err && !f->code)
		acct_fail_internal(f, err, "the database");
	if (err) {
		free(*target_idx);
		free(*channel);
		if (*target)
			free(*target);
		*target_idx = *target = *channel = NULL;
	}
	free(hash);
	PQclear(res);
	return err;
}

/* ---- registration ---------------------------------------------------------------- */

int acct_register_start_parse(json_t *body, struct acct_register_start_req *r,
			      struct acct_fail *f)
{
	memset(r, 0, sizeof(*r));
	r->phone = json_string_value(json_object_get(body, "phone"));
	r->email = json_string_value(json_object_get(body, "email"));
	r->kind = ACCT_ID_INVALID;
	if (!!r->phone == !!r->email)
		return acct_failf(f, 400, "missing_field", "give exactly one of phone and email");
	r->kind = acct_ident_parse(r->phone ? r->phone : r->email, r->norm, sizeof(r->norm));
	if (r->kind != (r->phone ? ACCT_ID_PHONE : ACCT_ID_EMAIL))
		return acct_failf(f, 400, r->phone ? "bad_phone" : "bad_email",
				  r->phone ? "phone numbers are E.164: + and 7 to 15 digits"
					   : "the email address is malformed");
	return 0;
}

int acct_register_start(acct_service *s, json_t *body, const char *ip, json_t **out,
			struct acct_fail *f)
{
	struct acct_register_start_req r;
	const char *phone;
	char *idx = NULL, *id = NULL, *net = NULL;
	int err;

	if ((err = acct_register_start_parse(body, &r, f)) != 0)
		return err;
	phone = r.phone;
	if ((err = acct_blind_index(s, phone ? "phone" : "email", r.norm, &idx)) != 0 ||
	    (err = acct_network_hash(s, ip, &net, NULL)) != 0) {
		free(idx);
		return acct_fail_internal(f, err, "the Key Center");
	}
	/* Counted with reset/start's requests for the same address: both are
	 * open to anyone, and count alike for a known and an unknown address. */
	err = acct_code_quota(s, ACCT_CODES_OPEN, idx, net, f);
	if (!err)
		err =
		    acct_code_send(s, "register", phone ? "sms" : "email", r.norm, idx, 0, &id, f);
	free(idx);
	free(net);
	if (err)
		return err;
	*out = json_pack("{s:s,s:s,s:i}", "verification_id", id, "channel", phone ? "sms" : "email",
			 "expires_in", s->cfg->code_ttl_s);
	free(id);
	return 0;
}

int acct_password_admit(acct_service *s, const char *policy, const char *password,
			struct acct_fail *f)
{
	struct acct_password_verdict v;
	int err = acct_password_check(policy, password, s->blocklist, &v);
	if (err == 0)
		return 0;
	if (v.reason == ACCT_PASSWORD_CHECK_FAILED) {
		MICA_LOG(MICA_LOG_ERROR, "account: the %s password policy cannot run: %s", policy,
			 v.message);
		return acct_failf(f, 503, "policy_unavailable",
				  "the %s password policy is not available on this server", policy);
	}
	return acct_failf(f, 400, "weak_password", "%s: %s", v.code, v.message);
}

int acct_password_burned(acct_service *s, int64_t user_id, const char *password, int *burned)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char uid[24];
	int err;
	*burned = 0;
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	const char *p[1] = {uid};
	err = db ? mica_db_exec(db, "SELECT password_enc FROM account.burned_password WHERE user_id = $1",
				1, p, &res)
		 : MICA_EDBCONN;
	for (int r = 0; err == 0 && r < PQntuples(res) && !*burned; r++) {
		char *phc = NULL;
		if ((err = acct_password_unseal(s, user_id, mica_db_get(res, r, 0), &phc, NULL)) != 0)
			break;
		*burned = acct_password_verify(phc, password) == 0;
		mica_wipe(phc, strlen(phc));
		free(phc);
	}
	PQclear(res);
	return err;
}

#define RECYCLED_MAX 8

struct new_account {
	acct_service *s;
	const char *kind; /* "phone" or "email" */
	const char *target, *target_idx, *password, *policy, *device_hash, *device_name, *net_hash;
	int64_t user_id, transferred_from;
	/* Accounts whose security phone was this recycled number (up to the
	 * first RECYCLED_MAX; the rest lose it all the same, untold). */
	int64_t lost_security[RECYCLED_MAX];
	int nlost_security;
	char account_no[11];
	char *token;
	struct acct_session session;
};

static int create_account_tx(mica_db *db, void *arg)
{
	struct new_account *a = arg;
	acct_service *s = a->s;
	PGresult *res = NULL;
	char uid[24], *no_enc = NULL, *no_idx = NULL, *id_enc = NULL, *phc = NULL, *pw_enc = NULL;
	char *name_enc = NULL;
	int err;

	a->transferred_from = 0;
	a->nlost_security = 0;
	free(a->token);
	a->token = NULL;
	/* An identifier another account holds: a phone number may move when the
	 * carrier recycled it after that account bound it; anything else is taken. */
	const char *p1[1] = {a->target_idx};
	err = mica_db_exec(db,
			   strcmp(a->kind, "phone") == 0
				   ? "SELECT id, to_char(coalesce(phone_bound_at, created_at), 'YYYY-MM-DD')"
				     " FROM account.user WHERE phone_idx = $1 FOR UPDATE"
				   : "SELECT id, '' FROM account.user WHERE email_idx = $1 FOR UPDATE",
			   1, p1, &res);
	if (err)
		goto out;
	if (PQntuples(res) == 1) {
		int recycled = 0;
		if (strcmp(a->kind, "phone") != 0 ||
		    (err = acct_number_recycled(s, db, a->target, a->target_idx, mica_db_get(res, 0, 1),
						&recycled)) != 0 ||
		    !recycled) {
			err = err ? err : MICA_EEXISTS;
			goto out;
		}
		if ((err = mica_db_get_int64(res, 0, 0, &a->transferred_from)) != 0)
			goto out;
		const char *p2[1] = {mica_db_get(res, 0, 0)};
		if ((err = mica_db_exec(db,
					"UPDATE account.user SET phone_idx = NULL, phone_enc = NULL,"
					" phone_bound_at = NULL WHERE id = $1",
					1, p2, NULL)) != 0)
			goto out;
	}
	PQclear(res);
	res = NULL;
	/* Other accounts' security phone: recycled since they bound it, it no
	 * longer reaches them (else it is shared, which a security phone may be). */
	if (strcmp(a->kind, "phone") == 0) {
		if ((err = mica_db_exec(db,
					"SELECT id, to_char(coalesce(security_phone_bound_at,"
					" created_at), 'YYYY-MM-DD') FROM account.user"
					" WHERE security_phone_idx = $1 FOR UPDATE",
					1, p1, &res)) != 0)
			goto out;
		for (int i = 0; i < PQntuples(res); i++) {
			int recycled = 0;
			int64_t id = 0;
			if ((err = acct_number_recycled(s, db, a->target, a->target_idx,
							mica_db_get(res, i, 1), &recycled)) != 0 ||
			    (err = mica_db_get_int64(res, i, 0, &id)) != 0)
				goto out;
			if (!recycled)
				continue;
			const char *p3[1] = {mica_db_get(res, i, 0)};
			if ((err = mica_db_exec(db,
						"UPDATE account.user SET security_phone_enc = NULL,"
						" security_phone_idx = NULL, security_phone_bound_at = NULL"
						" WHERE id = $1",
						1, p3, NULL)) != 0)
				goto out;
			if (a->nlost_security < RECYCLED_MAX)
				a->lost_security[a->nlost_security++] = id;
		}
		PQclear(res);
		res = NULL;
	}

	/* A random ten-digit account number; retried on the rare collision. */
	for (int attempt = 0; attempt < 5; attempt++) {
		uint8_t r[10];
		if ((err = mica_random(r, sizeof(r))) != 0)
			goto out;
		a->account_no[0] = (char)('1' + r[0] % 9);
		for (int i = 1; i < 10; i++)
			a->account_no[i] = (char)('0' + r[i] % 10);
		a->account_no[10] = '\0';
		free(no_idx);
		no_idx = NULL;
		if ((err = acct_blind_index(s, "account_no", a->account_no, &no_idx)) != 0)
			goto out;
		const char *p3[4] = {no_idx, a->policy, strcmp(a->kind, "phone") == 0 ? a->target_idx : NULL,
				     strcmp(a->kind, "email") == 0 ? a->target_idx : NULL};
		err = mica_db_exec(db,
				   "INSERT INTO account.user (account_no_enc, account_no_idx, password_enc,"
				   " password_policy, phone_idx, email_idx, phone_bound_at)"
				   " VALUES ('', $1, '', $2, $3::text, $4::text, CASE WHEN $3::text IS NULL"
				   " THEN NULL ELSE now() END) ON CONFLICT (account_no_idx) DO NOTHING"
				   " RETURNING id",
				   4, p3, &res);
		if (err)
			goto out;
		if (PQntuples(res) == 1)
			break;
		PQclear(res);
		res = NULL;
	}
	if (!res || PQntuples(res) != 1 || (err = mica_db_get_int64(res, 0, 0, &a->user_id)) != 0) {
		err = err ? err : MICA_EEXISTS;
		goto out;
	}
	snprintf(uid, sizeof(uid), "%lld", (long long)a->user_id);
	if ((err = acct_pii_seal(s, "user", "account_no", uid, a->account_no, &no_enc)) != 0 ||
	    (err = acct_pii_seal(s, "user", a->kind, uid, a->target, &id_enc)) != 0 ||
	    (err = acct_password_hash_with(a->password, &s->argon2, &phc)) != 0 ||
	    (err = acct_password_seal(s, a->user_id, phc, &pw_enc)) != 0)
		goto out;
	const char *p4[4] = {uid, no_enc, id_enc, pw_enc};
	err = mica_db_exec(db,
			   strcmp(a->kind, "phone") == 0
				   ? "UPDATE account.user SET account_no_enc = $2, phone_enc = $3,"
				     " password_enc = $4 WHERE id = $1"
				   : "UPDATE account.user SET account_no_enc = $2, email_enc = $3,"
				     " password_enc = $4 WHERE id = $1",
			   4, p4, NULL);
	if (err)
		goto out;
	if ((err = acct_device_name_seal(s, a->user_id, a->device_hash, a->device_name,
					 &name_enc)) != 0)
		goto out;
	const char *p5[3] = {uid, a->device_hash, name_enc};
	if ((err = mica_db_exec(db,
				"INSERT INTO account.device (user_id, device_hash, name, trusted)"
				" VALUES ($1, $2, $3, true)",
				3, p5, NULL)) != 0)
		goto out;
	const char *p6[2] = {uid, a->net_hash};
	if ((err = mica_db_exec(db,
				"INSERT INTO account.network (user_id, network_hash) VALUES ($1, $2)", 2,
				p6, NULL)) != 0)
		goto out;
	err = acct_session_create(s, db, a->user_id, a->device_hash, "app", &a->token, &a->session);
out:
	if (phc) {
		mica_wipe(phc, strlen(phc));
		free(phc);
	}
	free(no_enc);
	free(no_idx);
	free(id_enc);
	free(pw_enc);
	free(name_enc);
	PQclear(res);
	return err;
}

/* Reads {"id": ..., "name": ...} of the caller's device. */
static int device_of(json_t *body, char hash[65], const char **name, struct acct_fail *f)
{
	json_t *d = json_object_get(body, "device");
	const char *id = json_string_value(json_object_get(d, "id"));
	*name = json_string_value(json_object_get(d, "name"));
	if (!id || !*id || strlen(id) > 200)
		return acct_failf(f, 400, "bad_device", "device.id (1 to 200 characters) is required");
	if (!*name)
		*name = "";
	if (strlen(*name) > 100)
		return acct_failf(f, 400, "bad_device", "device.name is at most 100 characters");
	acct_hash_hex("mica-device", id, hash);
	return 0;
}

int acct_register_complete_parse(json_t *body, struct acct_register_complete_req *r,
				 struct acct_fail *f)
{
	memset(r, 0, sizeof(*r));
	r->verification_id = json_string_value(json_object_get(body, "verification_id"));
	r->code = json_string_value(json_object_get(body, "code"));
	r->password = json_string_value(json_object_get(body, "password"));
	r->policy = json_string_value(json_object_get(body, "password_policy"));
	if (!r->verification_id || !r->code || !r->password)
		return acct_failf(f, 400, "missing_field",
				  "verification_id, code and password are required");
	return device_of(body, r->device_hash, &r->device_name, f);
}

int acct_register_complete(acct_service *s, json_t *body, const char *ip, json_t **out,
			   struct acct_fail *f)
{
	struct acct_register_complete_req r;
	struct new_account a = {.s = s};
	const char *policy;
	char *net_hash = NULL, *target_idx = NULL, *target = NULL, *channel = NULL;
	mica_db *db = mica_db_thread();
	int64_t none;
	int err;

	if (!db)
		return acct_fail_internal(f, MICA_EDBCONN, "the database");
	if ((err = acct_register_complete_parse(body, &r, f)) != 0)
		return err;
	a.password = r.password;
	a.device_name = r.device_name;
	policy = r.policy ? r.policy : s->cfg->password_policy;
	if ((err = acct_password_admit(s, policy, r.password, f)) != 0)
		return err;
	if ((err = acct_code_verify(s, db, r.verification_id, "register", r.code, &none, &target_idx,
				    &target, &channel, f)) != 0)
		return err;
	if ((err = acct_network_hash(s, ip, &net_hash, NULL)) != 0) {
		acct_fail_internal(f, err, "the Key Center");
		goto out;
	}
	a.kind = strcmp(channel, "sms") == 0 ? "phone" : "email";
	a.target = target;
	a.target_idx = target_idx;
	a.policy = policy;
	a.device_hash = r.device_hash;
	a.net_hash = net_hash;
	err = mica_db_tx(db, MICA_DB_READ_COMMITTED, create_account_tx, &a);
	if (err == MICA_EEXISTS)
		acct_failf(f, 409, "identifier_in_use",
			   "this %s already belongs to an account; log in or reset the password",
			   a.kind);
	else if (err)
		acct_fail_internal(f, err, "account creation");
	if (!err) {
		if (a.transferred_from) {
			MICA_LOG(MICA_LOG_WARN, "account: a recycled phone number moved to a new account");
			acct_notify_user(s, a.transferred_from, "Your phone number was removed",
					 "The phone number bound to your mica account was recycled by"
					 " the carrier and verified by a new owner. It can no longer be"
					 " used to log in or recover your account.");
		}
		for (int i = 0; i < a.nlost_security; i++)
			acct_notify_user(s, a.lost_security[i], "Your security phone number was removed",
					 "The security phone number of your mica account was recycled by"
					 " the carrier and verified by a new owner. It was removed; bind"
					 " a new one in your security settings.");
		*out = json_pack("{s:s,s:s,s:I,s:I}", "account_id", a.account_no, "token", a.token,
				 "session_id", (json_int_t)a.session.id, "expires_at",
				 (json_int_t)a.session.expires_at);
	}
out:
	if (a.token) {
		mica_wipe(a.token, strlen(a.token));
		free(a.token);
	}
	free(net_hash);
	free(target_idx);
	free(target);
	free(channel);
	return err;
}

/* ---- password reset ----------------------------------------------------------------- */

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

int acct_reset_start(acct_service *s, json_t *body, const char *ip, json_t **out,
		     struct acct_fail *f)
{
	union acct_field_value v[1];
	const char *channel = NULL;
	char norm[256], *idx = NULL, *bound = NULL, *id = NULL, *net = NULL;
	int64_t uid = 0;
	int recycled = 0, err;

	if ((err = acct_body_fields(body, ACCT_FIELDS(acct_body_reset_start), v, f)) != 0)
		return err;
	err = reset_target(s, v[0].s, &uid, norm, &channel, &idx, &bound);
	if (err == MICA_EINVAL)
		return acct_failf(f, 400, "bad_login",
				  "reset needs a phone number or an email address");
	if (!err)
		err = acct_network_hash(s, ip, &net, NULL);
	if (err) {
		free(idx);
		free(bound);
		return acct_fail_internal(f, err, "the Key Center");
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
		MICA_LOG(MICA_LOG_WARN, "account: no reset code: the number-recycling check failed: %s",
			 mica_strerror(err));
		uid = 0;
	} else if (uid && strcmp(channel, "sms") == 0 && recycled) {
		/* The number changed hands: its new holder must not take over the
		 * account, nor hear of it. The account loses the number, then is
		 * told on its other contacts. */
		char u[24];
		snprintf(u, sizeof(u), "%lld", (long long)uid);
		const char *p[2] = {u, idx};
		if (mica_db_exec(mica_db_thread(),
				 "UPDATE account.user SET phone_idx = NULL, phone_enc = NULL,"
				 " phone_bound_at = NULL WHERE id = $1 AND phone_idx = $2",
				 2, p, NULL) != 0)
			MICA_LOG(MICA_LOG_WARN, "account: a recycled phone number could not be unbound");
		else
			acct_notify_user(s, uid, "Password reset refused",
					 "Someone asked to reset your mica password with a phone number"
					 " the carrier has recycled. The number was removed from your"
					 " account; use your email or security contacts instead.");
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
		if (random_hex(fake, 16) == 0)
			json_object_set_new(*out, "verification_id", json_string(fake));
	}
	free(id);
	return 0;
}

struct reset_ctx {
	acct_service *s;
	int64_t user_id;
	const char *password;
};

static int reset_tx(mica_db *db, void *arg)
{
	struct reset_ctx *r = arg;
	char uid[24], *phc = NULL, *enc = NULL;
	int err;
	snprintf(uid, sizeof(uid), "%lld", (long long)r->user_id);
	if ((err = acct_password_hash_with(r->password, &r->s->argon2, &phc)) != 0 ||
	    (err = acct_password_seal(r->s, r->user_id, phc, &enc)) != 0)
		goto out;
	const char *p[2] = {uid, enc};
	/* A reset is also the way out of a freeze. */
	err = mica_db_exec(db,
			   "UPDATE account.user SET password_enc = $2, password_changed_at = now(),"
			   " password_reset_at = now(), status = 'active', frozen_at = NULL"
			   " WHERE id = $1",
			   2, p, NULL);
	if (!err)
		err = acct_session_revoke_all(r->s, db, r->user_id, 0);
out:
	if (phc) {
		mica_wipe(phc, strlen(phc));
		free(phc);
	}
	free(enc);
	return err;
}

int acct_reset_complete(acct_service *s, json_t *body, json_t **out, struct acct_fail *f)
{
	union acct_field_value v[3];
	mica_db *db = mica_db_thread();
	char *idx = NULL, *target = NULL, *channel = NULL, policy[16] = "miui";
	int64_t uid = 0;
	int burned = 0, err;

	if ((err = acct_body_fields(body, ACCT_FIELDS(acct_body_reset_complete), v, f)) != 0)
		return err;
	if (!db)
		return acct_fail_internal(f, MICA_EDBCONN, "the database");
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
	if (mica_db_exec(db, "SELECT password_policy FROM account.user WHERE id = $1", 1, p, &res) ==
		    0 &&
	    PQntuples(res) == 1)
		snprintf(policy, sizeof(policy), "%s", mica_db_get(res, 0, 0));
	PQclear(res);
	if ((err = acct_password_admit(s, policy, password, f)) == 0) {
		if ((err = acct_password_burned(s, uid, password, &burned)) != 0)
			acct_fail_internal(f, err, "the Key Center");
		else if (burned)
			err = acct_failf(f, 400, "password_burned",
					 "this password was burned when the account was frozen;"
					 " choose another");
	}
	if (err) {
		/* The code proved the channel; a refused password must not use it up. */
		const char *q[1] = {vid};
		if (mica_db_exec(db, "UPDATE account.verification SET consumed_at = NULL WHERE id = $1",
				 1, q, NULL) != 0)
			MICA_LOG(MICA_LOG_WARN, "account: a reset code could not be released");
		return err;
	}
	struct reset_ctx r = {s, uid, password};
	if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, reset_tx, &r)) != 0)
		return acct_fail_internal(f, err, "the password reset");
	acct_notify_user(s, uid, "Your mica password was reset",
			 "Your password was reset and every session was signed out. If this was not"
			 " you, contact support at once.");
	*out = json_pack("{s:b}", "reset", 1);
	return 0;
}

/* ---- notifications to an account ----------------------------------------------------------- */

void acct_contacts_load(acct_service *s, int64_t user_id, struct acct_contacts *c)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char uid[24];
	static const char *const cols[4] = {"phone", "email", "security_phone", "security_email"};
	memset(c, 0, sizeof(*c));
	if (!db)
		return;
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	const char *p[1] = {uid};
	if (mica_db_exec(db,
			 "SELECT phone_enc, email_enc, security_phone_enc, security_email_enc"
			 " FROM account.user WHERE id = $1",
			 1, p, &res) != 0 ||
	    PQntuples(res) != 1) {
		PQclear(res);
		return;
	}
	for (int i = 0; i < 4; i++) {
		const char *sealed = mica_db_get(res, 0, i);
		if (sealed && *sealed && acct_pii_open(s, "user", cols[i], uid, sealed, &c->to[i]) != 0)
			c->to[i] = NULL;
	}
	PQclear(res);
}

void acct_contacts_send(acct_service *s, const struct acct_contacts *c, const char *subject,
			const char *body)
{
	mica_db *db = mica_db_thread();
	for (int i = 0; i < 4; i++)
		if (db && c->to[i] &&
		    acct_notify_send(s->notify, db, i % 2 == 0 ? ACCT_CHANNEL_SMS : ACCT_CHANNEL_EMAIL,
				     c->to[i], subject, body) != 0)
			MICA_LOG(MICA_LOG_ERROR, "account: a notification could not be sent");
}

void acct_contacts_free(struct acct_contacts *c)
{
	for (int i = 0; i < 4; i++) {
		if (c->to[i]) {
			mica_wipe(c->to[i], strlen(c->to[i]));
			free(c->to[i]);
		}
		c->to[i] = NULL;
	}
}

void acct_notify_user(acct_service *s, int64_t user_id, const char *subject, const char *body)
{
	struct acct_contacts c;
	acct_contacts_load(s, user_id, &c);
	acct_contacts_send(s, &c, subject, body);
	acct_contacts_free(&c);
}
