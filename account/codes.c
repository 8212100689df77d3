/* codes.c - one-time codes. Codes are six random digits, stored only as a
 * Key Center HMAC (index key) of the verification id and the code, so a
 * database copy does not give them away; single use, limited in attempts and
 * lifetime; their sending is limited per address and requester (limits.c),
 * counted alike whether or not an account has the address. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "crypto.h"
#include "log.h"

/* The stored form of code |code| of verification |id|: the blind index of
 * kind "code" of "<id>:<code>" (*out malloc'd, "kc:v<N>:..."). Keyed, so
 * the million possible codes of a row cannot be tried without the Key
 * Center. */
int acct_code_hash(acct_service *s, const char *id, const char *code, char **out)
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

int acct_random_hex(char *out, size_t bytes)
{
	uint8_t r[32];
	if (bytes > sizeof(r) || mica_random(r, bytes) != 0)
		return MICA_ECRYPTO;
	return mica_hex_encode(r, bytes, out, bytes * 2 + 1);
}

int acct_code_send(acct_service *s, const char *purpose, const char *channel, const char *target,
		   const char *target_idx, int64_t user_id, char **id_out, mica_problem *f)
{
	mica_db *db = mica_db_thread();
	char id[33], code[8], uid[24], ttl[16], subject[80], body[256];
	char *enc = NULL, *hash = NULL;
	int err;

	*id_out = NULL;
	if (!db)
		return acct_problem_dependency(f, MICA_EDBCONN, "the database");
	if ((err = acct_random_hex(id, 16)) != 0 || (err = random_digits(code, 6)) != 0)
		return acct_problem_dependency(f, err, "the random generator");
	if ((err = acct_code_hash(s, id, code, &hash)) != 0 ||
	    (err = acct_pii_seal(s, "verification", "target", id, target, &enc)) != 0) {
		mica_wipe(code, sizeof(code));
		free(hash);
		return acct_problem_dependency(f, err, "the Key Center");
	}
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	snprintf(ttl, sizeof(ttl), "%d", s->cfg->code_ttl_s);
	const char *p[7] = {id, purpose, channel, target_idx, enc, user_id ? uid : NULL, hash};
	const char *q[8] = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], ttl};
	err = mica_db_exec(
		db,
		"INSERT INTO account.verification (id, purpose, channel, target_idx,"
		" target_enc, user_id, code_hash, expires_at) VALUES ($1, $2, $3, $4, $5,"
		" $6, $7, now() + make_interval(secs => $8::int))",
		8, q, NULL);
	free(enc);
	free(hash);
	if (err) {
		mica_wipe(code, sizeof(code));
		return acct_problem_dependency(f, err, "the database");
	}
	snprintf(subject, sizeof(subject), "Your mica verification code");
	snprintf(body, sizeof(body),
		 "Your mica verification code is %s. It expires in %d minutes. Never share it.",
		 code, s->cfg->code_ttl_s / 60);
	err = acct_notify_send(s->notify, db,
			       strcmp(channel, "sms") == 0 ? ACCT_CHANNEL_SMS : ACCT_CHANNEL_EMAIL,
			       target, subject, body);
	mica_wipe(code, sizeof(code));
	mica_wipe(body, sizeof(body));
	if (err)
		return acct_problem_dependency(f, err, "the notifier");
	if (!(*id_out = strdup(id)))
		return acct_problem_dependency(f, MICA_ENOMEM, "memory");
	return 0;
}

/* Why code |id| for |purpose| was not accepted: counts the attempt
 * (committed on its own) and fills |f|. MICA_EAUTH for a wrong code (or too
 * many), MICA_ESTATE for one already used or expired, or the database's
 * error (|f| left for the caller). */
int acct_code_refused(acct_service *s, mica_db *db, const char *id, const char *purpose,
		      mica_problem *f)
{
	PGresult *res = NULL;
	const char *q[2] = {id, purpose};
	int err =
		mica_db_exec(db,
			     "UPDATE account.verification SET attempts = attempts + 1 WHERE id = $1"
			     " AND purpose = $2 RETURNING attempts, expires_at > now(),"
			     " consumed_at IS NULL",
			     2, q, &res);
	if (err)
		return err;
	/* A wrong code is MICA_EAUTH; a used or expired one MICA_ESTATE, as it
	 * says nothing about who typed it (step-up does not count it). */
	err = MICA_EAUTH;
	int64_t attempts = 0;
	if (PQntuples(res) != 1) {
		mica_problemf(f, 400, "invalid_code", "the code is wrong");
	} else if (strcmp(mica_db_get(res, 0, 2), "t") != 0) {
		mica_problemf(f, 400, "code_used", "this code was already used");
		err = MICA_ESTATE;
	} else if (strcmp(mica_db_get(res, 0, 1), "t") != 0) {
		mica_problemf(f, 400, "code_expired", "the code expired; ask for a new one");
		err = MICA_ESTATE;
	} else if (mica_db_get_int64(res, 0, 0, &attempts) != 0 ||
		   attempts > s->cfg->code_max_attempts) {
		mica_problemf(f, 429, "too_many_attempts",
			      "too many wrong codes; ask for a new one");
	} else {
		mica_problemf(f, 400, "invalid_code", "the code is wrong");
	}
	PQclear(res);
	return err;
}

int acct_code_verify(acct_service *s, mica_db *db, const char *id, const char *purpose,
		     const char *code, int64_t *user_id, char **target_idx, char **target,
		     char **channel, mica_problem *f)
{
	PGresult *res = NULL;
	char *hash = NULL, max[16];
	int err;

	*user_id = 0;
	*target_idx = *target = *channel = NULL;
	if (!id || !code || strlen(id) != 32 || strlen(code) != 6)
		return mica_problemf(f, 400, "invalid_code", "the code is wrong");
	if ((err = acct_code_hash(s, id, code, &hash)) != 0)
		return acct_problem_dependency(f, err, "the Key Center");
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
		err = acct_pii_open(s, "verification", "target", id, mica_db_get(res, 0, 2),
				    target);
		if (!err && (!*target_idx || !*channel))
			err = MICA_ENOMEM;
		if (err) {
			/* The target did not open: the code was not used for
			 * anything, so it stays usable. */
			const char *q[1] = {id};
			if (mica_db_exec(db,
					 "UPDATE account.verification SET consumed_at = NULL"
					 " WHERE id = $1",
					 1, q, NULL) != 0)
				MICA_LOG(MICA_LOG_WARN, "account: a code could not be released");
			acct_problem_dependency(f, err, "the Key Center");
		}
		goto out;
	}
	PQclear(res);
	res = NULL;
	err = acct_code_refused(s, db, id, purpose, f);
out:
	if (err && !f->code)
		acct_problem_dependency(f, err, "the database");
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
