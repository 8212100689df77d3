/* register.c - registration by phone or email with a one-time code
 * (codes.c), and the recycled-phone-number rule: a phone number the carrier
 * recycled moves to the new account, its former accounts told. Answers never
 * reveal whether an identifier has an account. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "crypto.h"
#include "log.h"

int acct_register_start_parse(json_t *body, struct acct_register_start_req *r, mica_problem *f)
{
	memset(r, 0, sizeof(*r));
	r->phone = json_string_value(json_object_get(body, "phone"));
	r->email = json_string_value(json_object_get(body, "email"));
	r->kind = ACCT_ID_INVALID;
	int err = acct_body_members(body, MICA_BODY_FIELDS(acct_body_register_start_members), f);
	if (err)
		return err;
	if (!!r->phone == !!r->email)
		return mica_problemf(f, 400, "missing_field",
				     "give exactly one of phone and email");
	r->kind = acct_ident_parse(r->phone ? r->phone : r->email, r->norm, sizeof(r->norm));
	if (r->kind != (r->phone ? ACCT_ID_PHONE : ACCT_ID_EMAIL))
		return mica_problemf(f, 400, r->phone ? "bad_phone" : "bad_email",
				     r->phone ? "phone numbers are E.164: + and 7 to 15 digits"
					      : "the email address is malformed");
	return 0;
}

int acct_register_start(acct_service *s, json_t *body, const char *ip, json_t **out,
			mica_problem *f)
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
		return acct_problem_dependency(f, err, "the Key Center");
	}
	/* Counted with reset/start's requests for the same address: both are
	 * open to anyone, and count alike for a known and an unknown address. */
	err = acct_code_quota(s, ACCT_CODES_OPEN, idx, net, f);
	if (!err)
		err = acct_code_send(s, "register", phone ? "sms" : "email", r.norm, idx, 0, &id,
				     f);
	free(idx);
	free(net);
	if (err)
		return err;
	*out = json_pack("{s:s,s:s,s:i}", "verification_id", id, "channel", phone ? "sms" : "email",
			 "expires_in", s->cfg->code_ttl_s);
	free(id);
	return 0;
}

#define ACCOUNT_NO_ATTEMPTS 5

/* A registration: everything that needs Argon2id or the Key Center is made
 * before the transaction (prepare_account), so the transaction only takes
 * row locks, consumes the code and inserts, and a serialization retry
 * repeats no hash and no Key Center round trip. */
struct new_account {
	acct_service *s;
	const char *kind; /* "phone" or "email" */
	const char *verification_id, *code_hash, *target, *target_idx, *policy, *device_hash,
		*net_hash;
	int64_t user_id, transferred_from;
	char uid[24];
	char account_no[11];
	/* Made before the transaction: the stored forms, bound to |uid|. */
	char *no_idx, *no_enc, *id_enc, *pw_enc, *name_enc;
	bool collided;	/* the account number is taken: draw another */
	bool code_gone; /* the code was used (or expired) meanwhile */
	char *token;
	struct acct_session session;
};

static void new_account_clear_number(struct new_account *a)
{
	free(a->no_idx);
	free(a->no_enc);
	a->no_idx = a->no_enc = NULL;
}

/* A random ten-digit account number, its blind index and its seal. */
static int draw_account_no(struct new_account *a)
{
	uint8_t r[10];
	int err;
	new_account_clear_number(a);
	if ((err = mica_random(r, sizeof(r))) != 0)
		return err;
	a->account_no[0] = (char)('1' + r[0] % 9);
	for (int i = 1; i < 10; i++)
		a->account_no[i] = (char)('0' + r[i] % 10);
	a->account_no[10] = '\0';
	if ((err = acct_blind_index(a->s, "account_no", a->account_no, &a->no_idx)) != 0)
		return err;
	return acct_pii_seal(a->s, "user", "account_no", a->uid, a->account_no, &a->no_enc);
}

/* The new account's id (from its sequence, so that its values can be
 * sealed for their row before the row exists), the password's Argon2id hash
 * sealed under the pepper, the identifier and device name sealed. |what|
 * names the dependency of a failure. */
static int prepare_account(struct new_account *a, const char *password, const char *device_name,
			   const char **what)
{
	acct_service *s = a->s;
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	int err;
	*what = "the database";
	err = db ? mica_db_exec(db, "SELECT nextval('account.user_id_seq')", 0, NULL, &res)
		 : MICA_EDBCONN;
	if (!err && (PQntuples(res) != 1 || mica_db_get_int64(res, 0, 0, &a->user_id) != 0))
		err = MICA_EDB;
	PQclear(res);
	if (err)
		return err;
	snprintf(a->uid, sizeof(a->uid), "%lld", (long long)a->user_id);
	*what = "the Key Center";
	if ((err = acct_password_protect(s, a->user_id, password, &a->pw_enc)) != 0 ||
	    (err = acct_pii_seal(s, "user", a->kind, a->uid, a->target, &a->id_enc)) != 0 ||
	    (err = acct_device_name_seal(s, a->user_id, a->device_hash, device_name,
					 &a->name_enc)) != 0)
		return err;
	return draw_account_no(a);
}

static void new_account_free(struct new_account *a)
{
	new_account_clear_number(a);
	free(a->id_enc);
	free(a->pw_enc);
	free(a->name_enc);
	if (a->token) {
		mica_wipe(a->token, strlen(a->token));
		free(a->token);
	}
	a->id_enc = a->pw_enc = a->name_enc = a->token = NULL;
}

/* Frees an identifier another account holds: a phone number may move when
 * the carrier recycled it after that account bound it; anything else is
 * taken (MICA_EEXISTS). Other accounts' security phone: recycled since they
 * bound it, it no longer reaches them (else it is shared, which a security
 * phone may be). Each account that loses a number is told (a notice in this
 * transaction). */
static int free_identifier(mica_db *db, struct new_account *a)
{
	acct_service *s = a->s;
	PGresult *res = NULL;
	bool phone = strcmp(a->kind, "phone") == 0;
	int err;
	const char *p1[1] = {a->target_idx};
	err = mica_db_exec(
		db,
		phone ? "SELECT id, to_char(coalesce(phone_bound_at, created_at), 'YYYY-MM-DD')"
			" FROM account.user WHERE phone_idx = $1 FOR UPDATE"
		      : "SELECT id, '' FROM account.user WHERE email_idx = $1 FOR UPDATE",
		1, p1, &res);
	if (err)
		goto out;
	if (PQntuples(res) == 1) {
		int recycled = 0;
		if (!phone ||
		    (err = acct_number_recycled(s, db, a->target, a->target_idx,
						mica_db_get(res, 0, 1), &recycled)) != 0 ||
		    !recycled) {
			err = err ? err : MICA_EEXISTS;
			goto out;
		}
		if ((err = mica_db_get_int64(res, 0, 0, &a->transferred_from)) != 0)
			goto out;
		const char *p2[1] = {mica_db_get(res, 0, 0)};
		if ((err = acct_notice_emit(db, a->transferred_from, ACCT_NOTICE_PHONE_RECYCLED,
					    NULL, 0)) != 0 ||
		    (err = mica_db_exec(
			     db,
			     "UPDATE account.user SET phone_idx = NULL, phone_enc = NULL,"
			     " phone_bound_at = NULL WHERE id = $1",
			     1, p2, NULL)) != 0)
			goto out;
	}
	PQclear(res);
	res = NULL;
	if (!phone)
		goto out;
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
		if ((err = acct_notice_emit(db, id, ACCT_NOTICE_SECURITY_PHONE_RECYCLED, NULL,
					    0)) != 0 ||
		    (err = mica_db_exec(db,
					"UPDATE account.user SET security_phone_enc = NULL,"
					" security_phone_idx = NULL, security_phone_bound_at = NULL"
					" WHERE id = $1",
					1, p3, NULL)) != 0)
			goto out;
	}
out:
	PQclear(res);
	return err;
}

/* The registration's transaction: consumes the code (so a failure before
 * the commit leaves it usable), frees the identifier, inserts the account,
 * its device, network and first session. No Key Center, no Argon2id. */
static int create_account_tx(mica_db *db, void *arg)
{
	struct new_account *a = arg;
	PGresult *res = NULL;
	char max[16];
	int err;

	a->transferred_from = 0;
	a->collided = a->code_gone = false;
	if (a->token) {
		mica_wipe(a->token, strlen(a->token));
		free(a->token);
		a->token = NULL;
	}
	snprintf(max, sizeof(max), "%d", a->s->cfg->code_max_attempts);
	const char *pc[4] = {a->verification_id, a->code_hash, max, a->target_idx};
	if ((err = mica_db_exec(
		     db,
		     "UPDATE account.verification SET consumed_at = now() WHERE id = $1"
		     " AND purpose = 'register' AND code_hash = $2 AND consumed_at IS NULL"
		     " AND expires_at > now() AND attempts < $3::int AND target_idx = $4"
		     " RETURNING id",
		     4, pc, &res)) != 0)
		goto out;
	if (PQntuples(res) != 1) {
		a->code_gone = true;
		err = MICA_ESTATE;
		goto out;
	}
	PQclear(res);
	res = NULL;
	if ((err = free_identifier(db, a)) != 0)
		goto out;
	bool phone = strcmp(a->kind, "phone") == 0;
	const char *pu[8] = {a->uid,	a->no_enc,     a->no_idx, a->pw_enc,
			     a->policy, a->target_idx, a->id_enc, phone ? "phone" : "email"};
	err = mica_db_exec(
		db,
		"INSERT INTO account.user (id, account_no_enc, account_no_idx, password_enc,"
		" password_policy, phone_idx, phone_enc, email_idx, email_enc, phone_bound_at)"
		" VALUES ($1::bigint, $2, $3, $4, $5,"
		" CASE WHEN $8 = 'phone' THEN $6 END, CASE WHEN $8 = 'phone' THEN $7 END,"
		" CASE WHEN $8 = 'email' THEN $6 END, CASE WHEN $8 = 'email' THEN $7 END,"
		" CASE WHEN $8 = 'phone' THEN now() END)"
		" ON CONFLICT (account_no_idx) DO NOTHING RETURNING id",
		8, pu, &res);
	if (err)
		goto out;
	if (PQntuples(res) != 1) {
		a->collided = true;
		err = MICA_EEXISTS;
		goto out;
	}
	const char *p5[3] = {a->uid, a->device_hash, a->name_enc};
	if ((err = mica_db_exec(db,
				"INSERT INTO account.device (user_id, device_hash, name, trusted)"
				" VALUES ($1, $2, $3, true)",
				3, p5, NULL)) != 0)
		goto out;
	const char *p6[2] = {a->uid, a->net_hash};
	if ((err = mica_db_exec(
		     db, "INSERT INTO account.network (user_id, network_hash) VALUES ($1, $2)", 2,
		     p6, NULL)) != 0)
		goto out;
	err = acct_session_create(a->s, db, a->user_id, a->device_hash, "app", &a->token,
				  &a->session);
out:
	PQclear(res);
	return err;
}

/* Reads {"id": ..., "name": ...} of the caller's device. */
static int device_of(json_t *body, char hash[65], const char **name, mica_problem *f)
{
	json_t *d = json_object_get(body, "device");
	const char *id = json_string_value(json_object_get(d, "id"));
	*name = json_string_value(json_object_get(d, "name"));
	int err = acct_body_members(d, MICA_BODY_FIELDS(acct_body_device_members), f);
	if (err)
		return err;
	if (!id || !*id || strlen(id) > 200)
		return mica_problemf(f, 400, "bad_device",
				     "device.id (1 to 200 characters) is required");
	if (!*name)
		*name = "";
	if (strlen(*name) > 100)
		return mica_problemf(f, 400, "bad_device", "device.name is at most 100 characters");
	acct_hash_hex("mica-device", id, hash);
	return 0;
}

int acct_register_complete_parse(json_t *body, struct acct_register_complete_req *r,
				 mica_problem *f)
{
	memset(r, 0, sizeof(*r));
	r->verification_id = json_string_value(json_object_get(body, "verification_id"));
	r->code = json_string_value(json_object_get(body, "code"));
	r->password = json_string_value(json_object_get(body, "password"));
	r->policy = json_string_value(json_object_get(body, "password_policy"));
	int err = acct_body_members(body, MICA_BODY_FIELDS(acct_body_register_complete_members), f);
	if (err)
		return err;
	if (!r->verification_id || !r->code || !r->password)
		return mica_problemf(f, 400, "missing_field",
				     "verification_id, code and password are required");
	return device_of(body, r->device_hash, &r->device_name, f);
}

/* Checks code |code| of registration |vid| without consuming it (the
 * account's transaction does), so that neither a wrong code costs an
 * Argon2id hash nor a failure after this check burns a right one. Sets the
 * code's stored hash and the verified target, its index and channel (all
 * malloc'd). */
static int register_code_check(acct_service *s, mica_db *db, const char *vid, const char *code,
			       char **hash, char **target_idx, char **target, char **channel,
			       mica_problem *f)
{
	PGresult *res = NULL;
	char max[16];
	int err;
	*hash = *target_idx = *target = *channel = NULL;
	if (strlen(vid) != 32 || strlen(code) != 6)
		return mica_problemf(f, 400, "invalid_code", "the code is wrong");
	if ((err = acct_code_hash(s, vid, code, hash)) != 0)
		return acct_problem_dependency(f, err, "the Key Center");
	snprintf(max, sizeof(max), "%d", s->cfg->code_max_attempts);
	const char *p[3] = {vid, *hash, max};
	if ((err = mica_db_exec(
		     db,
		     "SELECT target_idx, target_enc, channel FROM account.verification"
		     " WHERE id = $1 AND purpose = 'register' AND code_hash = $2"
		     " AND consumed_at IS NULL AND expires_at > now() AND attempts < $3::int",
		     3, p, &res)) != 0) {
		acct_problem_dependency(f, err, "the database");
		goto out;
	}
	if (PQntuples(res) != 1) {
		if ((err = acct_code_refused(s, db, vid, "register", f)) != 0 && !f->code)
			acct_problem_dependency(f, err, "the database");
		goto out;
	}
	*target_idx = strdup(mica_db_get(res, 0, 0));
	*channel = strdup(mica_db_get(res, 0, 2));
	if ((err = acct_pii_open(s, "verification", "target", vid, mica_db_get(res, 0, 1),
				 target)) != 0)
		acct_problem_dependency(f, err, "the Key Center");
	else if (!*target_idx || !*channel)
		err = acct_problem_dependency(f, MICA_ENOMEM, "memory");
out:
	PQclear(res);
	if (err) {
		free(*hash);
		free(*target_idx);
		free(*channel);
		if (*target) {
			mica_wipe(*target, strlen(*target));
			free(*target);
		}
		*hash = *target_idx = *target = *channel = NULL;
	}
	return err;
}

int acct_register_complete(acct_service *s, json_t *body, const char *ip, json_t **out,
			   mica_problem *f)
{
	struct acct_register_complete_req r;
	struct new_account a = {.s = s};
	const char *policy, *what = NULL;
	char *net_hash = NULL, *target_idx = NULL, *target = NULL, *channel = NULL, *hash = NULL;
	mica_db *db = mica_db_thread();
	int err;

	if (!db)
		return acct_problem_dependency(f, MICA_EDBCONN, "the database");
	if ((err = acct_register_complete_parse(body, &r, f)) != 0)
		return err;
	policy = r.policy ? r.policy : s->cfg->password_policy;
	if ((err = acct_password_admit(s, policy, r.password, f)) != 0)
		return err;
	if ((err = register_code_check(s, db, r.verification_id, r.code, &hash, &target_idx,
				       &target, &channel, f)) != 0)
		return err;
	if ((err = acct_network_hash(s, ip, &net_hash, NULL)) != 0) {
		acct_problem_dependency(f, err, "the Key Center");
		goto out;
	}
	a.kind = strcmp(channel, "sms") == 0 ? "phone" : "email";
	a.verification_id = r.verification_id;
	a.code_hash = hash;
	a.target = target;
	a.target_idx = target_idx;
	a.policy = policy;
	a.device_hash = r.device_hash;
	a.net_hash = net_hash;
	if ((err = prepare_account(&a, r.password, r.device_name, &what)) != 0) {
		acct_problem_dependency(f, err, what);
		goto out;
	}
	for (int attempt = 0;; attempt++) {
		err = mica_db_tx(db, MICA_DB_READ_COMMITTED, create_account_tx, &a);
		if (!(err == MICA_EEXISTS && a.collided) || attempt + 1 == ACCOUNT_NO_ATTEMPTS)
			break;
		if ((err = draw_account_no(&a)) != 0)
			break;
	}
	if (err == MICA_ESTATE && a.code_gone) {
		/* Another request used the code since the check (or it expired). */
		if ((err = acct_code_refused(s, db, r.verification_id, "register", f)) != 0 &&
		    !f->code)
			acct_problem_dependency(f, err, "the database");
		err = err ? err : MICA_ESTATE;
	} else if (err == MICA_EEXISTS && !a.collided) {
		mica_problemf(f, 409, "identifier_in_use",
			      "this %s already belongs to an account; log in or reset the password",
			      a.kind);
	} else if (err) {
		acct_problem_dependency(f, err,
					a.collided ? "the account numbering" : "the database");
	}
	if (!err) {
		if (a.transferred_from)
			MICA_LOG(MICA_LOG_WARN,
				 "account: a recycled phone number moved to a new account");
		*out = json_pack("{s:s,s:s,s:I,s:I}", "account_id", a.account_no, "token", a.token,
				 "session_id", (json_int_t)a.session.id, "expires_at",
				 (json_int_t)a.session.expires_at);
	}
out:
	new_account_free(&a);
	mica_wipe(a.account_no, sizeof(a.account_no));
	free(hash);
	free(net_hash);
	free(target_idx);
	if (target) {
		mica_wipe(target, strlen(target));
		free(target);
	}
	free(channel);
	return err;
}
