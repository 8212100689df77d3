/* settings.c - what a signed-in user does to their own account: view their
 * private data, change the password, bind and unbind a security phone and
 * email (each verified by a code), set security questions, switch
 * cross-device verification, and delete the account. Everything here is a
 * sensitive operation: it needs a recent authentication (step-up otherwise).
 * Security questions are stored sealed (record sealer) and their answers as
 * Argon2id hashes sealed under the pepper, as passwords are. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "crypto.h"
#include "kv.h"
#include "log.h"
#include "outbox.h"

static void uid_text(int64_t id, char out[24])
{
	snprintf(out, 24, "%lld", (long long)id);
}

int acct_me(acct_service *s, const struct acct_session *sess, json_t **out, mica_problem *f)
{
	static const char *const cols[] = {"account_no", "phone", "email", "security_phone",
					   "security_email"};
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char uid[24];
	int err;

	if ((err = acct_require_recent(s, sess, f)) != 0)
		return err;
	uid_text(sess->user_id, uid);
	const char *p[1] = {uid};
	err = mica_db_exec(
		db,
		"SELECT account_no_enc, phone_enc, email_enc, security_phone_enc,"
		" security_email_enc, status, cross_device, password_policy,"
		" password_changed_at::text, created_at::text,"
		" (SELECT count(*) FROM account.security_question q WHERE q.user_id = u.id)"
		" FROM account.user u WHERE id = $1",
		1, p, &res);
	if (err || PQntuples(res) != 1) {
		PQclear(res);
		return acct_problem_dependency(f, err ? err : MICA_ENOTFOUND, "the account store");
	}
	*out = json_object();
	for (int c = 0; c < 5; c++) {
		const char *sealed = mica_db_get(res, 0, c);
		char *v = NULL;
		if (sealed && *sealed &&
		    (err = acct_pii_open(s, "user", cols[c], uid, sealed, &v)) != 0)
			break;
		json_object_set_new(*out, c == 0 ? "account_id" : cols[c],
				    v ? json_string(v) : json_null());
		if (v) {
			mica_wipe(v, strlen(v));
			free(v);
		}
	}
	if (err) {
		json_decref(*out);
		*out = NULL;
		PQclear(res);
		return acct_problem_dependency(f, err, "the Key Center");
	}
	json_object_set_new(*out, "status", json_string(mica_db_get(res, 0, 5)));
	json_object_set_new(*out, "cross_device_verification",
			    json_boolean(strcmp(mica_db_get(res, 0, 6), "t") == 0));
	json_object_set_new(*out, "password_policy", json_string(mica_db_get(res, 0, 7)));
	json_object_set_new(*out, "password_changed_at", json_string(mica_db_get(res, 0, 8)));
	json_object_set_new(*out, "created_at", json_string(mica_db_get(res, 0, 9)));
	int64_t questions = 0;
	if (mica_db_get_int64(res, 0, 10, &questions) != 0) {
		json_decref(*out);
		*out = NULL;
		PQclear(res);
		return acct_problem_dependency(f, MICA_EDB, "the database");
	}
	json_object_set_new(*out, "security_questions", json_integer(questions));
	PQclear(res);
	return 0;
}

struct change_ctx {
	acct_service *s;
	int64_t user_id, keep_session;
	const char *password_enc; /* acct_password_protect()'s, made before */
};

static int change_tx(mica_db *db, void *arg)
{
	struct change_ctx *c = arg;
	char uid[24];
	int err;
	uid_text(c->user_id, uid);
	const char *p[2] = {uid, c->password_enc};
	if ((err = mica_db_exec(
		     db,
		     "UPDATE account.user SET password_enc = $2, password_changed_at = now()"
		     " WHERE id = $1",
		     2, p, NULL)) != 0)
		return err;
	/* No session outlives a password change but the one that made it. */
	if ((err = acct_session_revoke_all(c->s, db, c->user_id, c->keep_session)) != 0)
		return err;
	return acct_notice_emit(db, c->user_id, ACCT_NOTICE_PASSWORD_CHANGED, NULL, 0);
}

int acct_password_change(acct_service *s, const struct acct_session *sess, json_t *body,
			 json_t **out, mica_problem *f)
{
	mica_body_value v[2];
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char uid[24], *phc = NULL;
	int ok = 0, burned = 0, err;

	if ((err = mica_body_fields(body, MICA_BODY_FIELDS(acct_body_password_change), v, f)) != 0)
		return err;
	const char *cur = v[0].s, *next = v[1].s;
	if ((err = acct_require_recent(s, sess, f)) != 0)
		return err;
	uid_text(sess->user_id, uid);
	const char *p[1] = {uid};
	if ((err = mica_db_exec(
		     db, "SELECT password_enc, password_policy FROM account.user WHERE id = $1", 1,
		     p, &res)) != 0 ||
	    PQntuples(res) != 1) {
		PQclear(res);
		return acct_problem_dependency(f, err ? err : MICA_ENOTFOUND, "the account store");
	}
	if ((err = acct_password_unseal(s, sess->user_id, mica_db_get(res, 0, 0), &phc, NULL)) ==
	    0) {
		ok = acct_password_verify(phc, cur) == 0;
		mica_wipe(phc, strlen(phc));
		free(phc);
	}
	/* The current password first: the new one is judged only for its owner. */
	if (err)
		err = acct_problem_dependency(f, err, "the Key Center");
	else if (!ok)
		err = mica_problemf(f, 401, "invalid_credentials", "the current password is wrong");
	else
		err = acct_password_admit(s, mica_db_get(res, 0, 1), next, f);
	PQclear(res);
	if (err)
		return err;
	if ((err = acct_password_burned(s, sess->user_id, next, &burned)) != 0)
		return acct_problem_dependency(f, err, "the Key Center");
	if (burned)
		return mica_problemf(f, 400, "password_burned",
				     "this password can never be used again");
	/* Hashed and sealed once, before the transaction a retry repeats. */
	char *enc = NULL;
	if ((err = acct_password_protect(s, sess->user_id, next, &enc)) != 0)
		return acct_problem_dependency(f, err, "the Key Center");
	struct change_ctx c = {s, sess->user_id, sess->id, enc};
	err = mica_db_tx(db, MICA_DB_READ_COMMITTED, change_tx, &c);
	free(enc);
	if (err)
		return acct_problem_dependency(f, err, "the password change");
	*out = json_pack("{s:b}", "changed", 1);
	return 0;
}

/* Binds (|enc| and |idx| set) or removes the security phone or email and
 * records the notice in the same transaction; a removed contact is told
 * too (its ciphertext travels with the notice). */
struct contact_ctx {
	int64_t user_id;
	const char *what; /* "phone" or "email" */
	const char *enc, *idx;
};

static int contact_set_tx(mica_db *db, void *arg)
{
	struct contact_ctx *c = arg;
	bool phone = strcmp(c->what, "phone") == 0;
	char uid[24];
	int err;
	uid_text(c->user_id, uid);
	if (!c->enc) {
		if ((err = acct_notice_emit(db, c->user_id, ACCT_NOTICE_CONTACT_REMOVED, c->what,
					    phone ? ACCT_CONTACT_SECURITY_PHONE
						  : ACCT_CONTACT_SECURITY_EMAIL)) != 0)
			return err;
		const char *p[1] = {uid};
		return mica_db_exec(
			db,
			phone ? "UPDATE account.user SET security_phone_enc = NULL,"
				" security_phone_idx = NULL, security_phone_bound_at = NULL"
				" WHERE id = $1"
			      : "UPDATE account.user SET security_email_enc = NULL,"
				" security_email_idx = NULL WHERE id = $1",
			1, p, NULL);
	}
	const char *p[3] = {uid, c->enc, c->idx};
	if ((err = mica_db_exec(db,
				phone ? "UPDATE account.user SET security_phone_enc = $2,"
					" security_phone_idx = $3, security_phone_bound_at = now()"
					" WHERE id = $1"
				      : "UPDATE account.user SET security_email_enc = $2,"
					" security_email_idx = $3 WHERE id = $1",
				3, p, NULL)) != 0)
		return err;
	return acct_notice_emit(db, c->user_id, ACCT_NOTICE_CONTACT_ADDED, c->what, 0);
}

/* "phone" binds the security phone (sms), "email" the security email. */
int acct_bind_start(acct_service *s, const struct acct_session *sess, const char *what,
		    json_t *body, json_t **out, mica_problem *f)
{
	int phone = strcmp(what, "phone") == 0;
	mica_body_value v[1];
	char norm[256], *idx = NULL, *id = NULL;
	int err;

	if ((err = mica_body_fields(body, phone ? acct_body_bind_phone : acct_body_bind_email, 1, v,
				    f)) != 0)
		return err;
	const char *value = v[0].s;
	if (acct_ident_parse(value, norm, sizeof(norm)) != (phone ? ACCT_ID_PHONE : ACCT_ID_EMAIL))
		return mica_problemf(f, 400, phone ? "bad_phone" : "bad_email",
				     "the %s is malformed", what);
	if ((err = acct_require_recent(s, sess, f)) != 0)
		return err;
	if ((err = acct_blind_index(s, what, norm, &idx)) != 0)
		return acct_problem_dependency(f, err, "the Key Center");
	char requester[32];
	snprintf(requester, sizeof(requester), "user:%lld", (long long)sess->user_id);
	err = acct_code_quota(s, ACCT_CODES_OWNER, idx, requester, f);
	if (!err)
		err = acct_code_send(s, phone ? "bind_phone" : "bind_email",
				     phone ? "sms" : "email", norm, idx, sess->user_id, &id, f);
	free(idx);
	if (err)
		return err;
	*out = json_pack("{s:s,s:i}", "verification_id", id, "expires_in", s->cfg->code_ttl_s);
	free(id);
	return 0;
}

int acct_bind_complete(acct_service *s, const struct acct_session *sess, const char *what,
		       json_t *body, json_t **out, mica_problem *f)
{
	int phone = strcmp(what, "phone") == 0;
	mica_body_value v[2];
	char *idx = NULL, *target = NULL, *channel = NULL, *enc = NULL, uid[24];
	mica_db *db = mica_db_thread();
	int64_t owner = 0;
	int err;

	if ((err = mica_body_fields(body, MICA_BODY_FIELDS(acct_body_code), v, f)) != 0)
		return err;
	const char *vid = v[0].s, *code = v[1].s;
	if ((err = acct_require_recent(s, sess, f)) != 0)
		return err;
	if ((err = acct_code_verify(s, db, vid, phone ? "bind_phone" : "bind_email", code, &owner,
				    &idx, &target, &channel, f)) != 0)
		return err;
	if (owner != sess->user_id) {
		err = mica_problemf(f, 400, "invalid_code", "the code is wrong");
		goto out;
	}
	uid_text(sess->user_id, uid);
	if ((err = acct_pii_seal(s, "user", phone ? "security_phone" : "security_email", uid,
				 target, &enc)) != 0) {
		acct_problem_dependency(f, err, "the Key Center");
		goto out;
	}
	struct contact_ctx c = {sess->user_id, what, enc, idx};
	if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, contact_set_tx, &c)) != 0) {
		acct_problem_dependency(f, err, "the database");
		goto out;
	}
	*out = json_pack("{s:b}", "bound", 1);
out:
	free(idx);
	if (target) {
		mica_wipe(target, strlen(target));
		free(target);
	}
	free(channel);
	free(enc);
	return err;
}

int acct_unbind(acct_service *s, const struct acct_session *sess, const char *what, json_t **out,
		mica_problem *f)
{
	mica_db *db = mica_db_thread();
	int err;
	if ((err = acct_require_recent(s, sess, f)) != 0)
		return err;
	struct contact_ctx c = {sess->user_id, what, NULL, NULL};
	if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, contact_set_tx, &c)) != 0)
		return acct_problem_dependency(f, err, "the database");
	*out = json_pack("{s:b}", "unbound", 1);
	return 0;
}

size_t acct_answer_normalise(const char *in, char *out, size_t cap)
{
	size_t len = 0, j = 0; /* the whole form's length; bytes written */
	int space = 0, full = cap == 0;
	for (; *in; in++) {
		unsigned char c = (unsigned char)*in;
		if (isspace(c)) {
			space = len > 0;
			continue;
		}
		size_t need = space ? 2 : 1;
		if (!full && j + need < cap) {
			if (space)
				out[j++] = ' ';
			out[j++] = (char)tolower(c);
		} else {
			full = 1; /* stop writing, so what was written stays a prefix */
		}
		len += need;
		space = 0;
	}
	if (cap)
		out[j] = '\0';
	return len;
}

_Static_assert(ACCT_ANSWER_NORM_CAP - 1 <= ACCT_PASSWORD_MAX_BYTES,
	       "a normalised answer must fit the Argon2id input limit");

/* Characters of |s|, which is valid UTF-8 (jansson admits nothing else). */
static size_t utf8_chars(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		n += ((unsigned char)*s & 0xC0) != 0x80;
	return n;
}

static int blank(const char *s)
{
	for (; *s; s++)
		if (!isspace((unsigned char)*s))
			return 0;
	return 1;
}

int acct_questions_parse(json_t *body, mica_problem *f)
{
	json_t *list = json_object_get(body, "questions");
	char norm[ACCT_ANSWER_NORM_CAP];
	int err = acct_body_members(body, MICA_BODY_FIELDS(acct_body_questions_members), f);
	if (err)
		return err;
	if (!json_is_array(list) || json_array_size(list) < 1 ||
	    json_array_size(list) > ACCT_QUESTIONS_MAX)
		return mica_problemf(f, 400, "bad_questions",
				     "questions is an array of 1 to %d items", ACCT_QUESTIONS_MAX);
	for (size_t i = 0; i < json_array_size(list); i++) {
		json_t *item = json_array_get(list, i);
		if ((err = acct_body_members(item, MICA_BODY_FIELDS(acct_body_question_members),
					     f)))
			return err;
		const char *q = json_string_value(json_object_get(item, "question"));
		const char *a = json_string_value(json_object_get(item, "answer"));
		size_t n = 0;
		if (a && acct_answer_normalise(a, norm, sizeof(norm)) < sizeof(norm))
			n = utf8_chars(norm);
		mica_wipe(norm, sizeof(norm));
		if (!q || blank(q) || utf8_chars(q) > ACCT_QUESTION_MAX_CHARS ||
		    n < ACCT_ANSWER_MIN_CHARS || n > ACCT_ANSWER_MAX_CHARS)
			return mica_problemf(
				f, 400, "bad_questions",
				"item %zu needs a question (1-%d characters, not all spaces)"
				" and an answer (%d-%d characters once spaces are collapsed)",
				i + 1, ACCT_QUESTION_MAX_CHARS, ACCT_ANSWER_MIN_CHARS,
				ACCT_ANSWER_MAX_CHARS);
	}
	return 0;
}

/* The place of question |pos| of |uid|, as its sealed values are bound. */
static void question_row(const char *uid, size_t pos, char out[48])
{
	snprintf(out, 48, "%s:%zu", uid, pos);
}

int acct_answer_seal(acct_service *s, const char *uid, size_t pos, const char *phc, char **out)
{
	char row[48];
	question_row(uid, pos, row);
	return acct_seal(s, s->pepper, "security_question", "answer", row, phc, out);
}

int acct_question_seal(acct_service *s, const char *uid, size_t pos, const char *question,
		       char **out)
{
	char row[48];
	question_row(uid, pos, row);
	return acct_seal(s, s->records, "security_question", "question", row, question, out);
}

/* A new set of questions, each sealed before the transaction that stores
 * them (so that a retried transaction repeats no Argon2id hash and no Key
 * Center round trip): question and answer of place i + 1 in enc[2 * i] and
 * enc[2 * i + 1]. */
struct questions_ctx {
	int64_t user_id;
	size_t n;
	char **enc;
};

static int questions_seal(acct_service *s, const char *uid, json_t *list, char **enc)
{
	char answer[ACCT_ANSWER_NORM_CAP];
	int err = 0;
	for (size_t i = 0; i < json_array_size(list) && !err; i++) {
		json_t *item = json_array_get(list, i);
		char *phc = NULL;
		acct_answer_normalise(json_string_value(json_object_get(item, "answer")), answer,
				      sizeof(answer));
		if ((err = acct_password_hash_with(answer, &s->argon2, &phc)) == 0 &&
		    (err = acct_answer_seal(s, uid, i + 1, phc, &enc[2 * i + 1])) == 0)
			err = acct_question_seal(
				s, uid, i + 1, json_string_value(json_object_get(item, "question")),
				&enc[2 * i]);
		mica_free_wipe(phc);
	}
	mica_wipe(answer, sizeof(answer));
	return err;
}

static int questions_tx(mica_db *db, void *arg)
{
	struct questions_ctx *q = arg;
	char uid[24], pos[24];
	int err;
	uid_text(q->user_id, uid);
	const char *p[1] = {uid};
	if ((err = mica_db_exec(db, "DELETE FROM account.security_question WHERE user_id = $1", 1,
				p, NULL)) != 0)
		return err;
	for (size_t i = 0; i < q->n && !err; i++) {
		snprintf(pos, sizeof(pos), "%zu", i + 1);
		const char *r[4] = {uid, pos, q->enc[2 * i], q->enc[2 * i + 1]};
		err = mica_db_exec(db,
				   "INSERT INTO account.security_question (user_id, position,"
				   " question, answer_hash) VALUES ($1, $2, $3, $4)",
				   4, r, NULL);
	}
	return err;
}

int acct_questions_set(acct_service *s, const struct acct_session *sess, json_t *body, json_t **out,
		       mica_problem *f)
{
	json_t *list = json_object_get(body, "questions");
	mica_db *db = mica_db_thread();
	char uid[24];
	int err;
	if ((err = acct_questions_parse(body, f)) != 0)
		return err;
	if ((err = acct_require_recent(s, sess, f)) != 0)
		return err;
	size_t n = json_array_size(list);
	struct questions_ctx q = {sess->user_id, n, calloc(2 * n + 1, sizeof(char *))};
	uid_text(sess->user_id, uid);
	if (!q.enc)
		err = acct_problem_dependency(f, MICA_ENOMEM, "memory");
	else if ((err = questions_seal(s, uid, list, q.enc)) != 0)
		acct_problem_dependency(f, err, "the Key Center");
	else if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, questions_tx, &q)) != 0)
		acct_problem_dependency(f, err, "the account store");
	for (size_t i = 0; q.enc && i < 2 * n; i++)
		free(q.enc[i]);
	free(q.enc);
	if (err)
		return err;
	*out = json_pack("{s:i}", "questions", (int)n);
	return 0;
}

int acct_cross_device_set(acct_service *s, const struct acct_session *sess, json_t *body,
			  json_t **out, mica_problem *f)
{
	mica_body_value v[1];
	mica_db *db = mica_db_thread();
	char uid[24];
	int err;
	if ((err = mica_body_fields(body, MICA_BODY_FIELDS(acct_body_cross_device), v, f)) != 0)
		return err;
	if ((err = acct_require_recent(s, sess, f)) != 0)
		return err;
	uid_text(sess->user_id, uid);
	const char *p[2] = {uid, v[0].b ? "true" : "false"};
	if ((err = mica_db_exec(db, "UPDATE account.user SET cross_device = $2 WHERE id = $1", 2, p,
				NULL)) != 0)
		return acct_problem_dependency(f, err, "the account store");
	*out = json_pack("{s:b}", "cross_device_verification", v[0].b);
	return 0;
}

struct delete_ctx {
	acct_service *s;
	int64_t user_id;
};

static int delete_tx(mica_db *db, void *arg)
{
	struct delete_ctx *d = arg;
	char uid[24], payload[64];
	int err;
	uid_text(d->user_id, uid);
	snprintf(payload, sizeof(payload), "{\"user_id\":%lld}", (long long)d->user_id);
	const char *p[1] = {uid};
	/* The notice first, carrying the contacts it must reach; sessions
	 * next, so their cache entries are tombstoned; then the rows (dependent
	 * tables cascade) and the event, all in one transaction. */
	if ((err = acct_notice_emit(db, d->user_id, ACCT_NOTICE_DELETED, NULL,
				    ACCT_CONTACTS_ALL)) != 0 ||
	    (err = acct_session_revoke_all(d->s, db, d->user_id, 0)) != 0 ||
	    (err = mica_db_exec(db, "DELETE FROM account.verification WHERE user_id = $1", 1, p,
				NULL)) != 0 ||
	    (err = mica_db_exec(db, "DELETE FROM account.user WHERE id = $1", 1, p, NULL)) != 0)
		return err;
	return mica_outbox_emit(db, "account.deleted", payload, NULL);
}

int acct_delete(acct_service *s, const struct acct_session *sess, json_t **out, mica_problem *f)
{
	struct delete_ctx d = {s, sess->user_id};
	mica_db *db = mica_db_thread();
	int err;
	if ((err = acct_require_recent(s, sess, f)) != 0)
		return err;
	if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, delete_tx, &d)) != 0)
		return acct_problem_dependency(f, err, "the database");
	MICA_LOG(MICA_LOG_INFO, "account: an account was deleted");
	*out = json_pack("{s:b}", "deleted", 1);
	return 0;
}
