/* atrest.c - the start-up upgrade of rows written before the account
 * service sealed them: security answers (plain Argon2id PHC strings, now
 * sealed under the pepper), security questions and device names (plain
 * text, now sealed by the record sealer). Each row is rewritten only if it
 * still holds what was read, so instances starting together, or a request
 * writing the row meanwhile, never lose a write. Unkeyed code hashes are
 * retired by schema/0007 and unkeyed network hashes re-keyed at login
 * (login.c): neither can be recomputed from what the row holds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "crypto.h"
#include "log.h"

#define BATCH "100"

static void free_secret(char *p)
{
	if (p) {
		mica_wipe(p, strlen(p));
		free(p);
	}
}

/* Seals the questions and answers of one batch; *done is the rows rewritten. */
static int questions_batch(acct_service *s, mica_db *db, int *seen, int *done)
{
	PGresult *res = NULL;
	int err = mica_db_exec(db,
			       "SELECT user_id, position, question, answer_hash"
			       " FROM account.security_question WHERE question NOT LIKE 'dk1.%'"
			       " OR answer_hash NOT LIKE 'dk1.%' LIMIT " BATCH,
			       0, NULL, &res);
	*seen = *done = 0;
	for (int i = 0; err == 0 && i < PQntuples(res); i++) {
		const char *uid = mica_db_get(res, i, 0), *q = mica_db_get(res, i, 2),
			   *a = mica_db_get(res, i, 3);
		int64_t pos = 0;
		if ((err = mica_db_get_int64(res, i, 1, &pos)) != 0)
			break;
		char *q_enc = NULL, *a_enc = NULL;
		PGresult *u = NULL;
		(*seen)++;
		if (acct_is_sealed(q))
			q_enc = strdup(q);
		else
			err = acct_question_seal(s, uid, pos, q, &q_enc);
		if (err == 0 && acct_is_sealed(a))
			a_enc = strdup(a);
		else if (err == 0)
			err = acct_answer_seal(s, uid, pos, a, &a_enc);
		if (err == 0 && (!q_enc || !a_enc))
			err = MICA_ENOMEM;
		const char *p[6] = {uid, mica_db_get(res, i, 1), q_enc, a_enc, q, a};
		if (err == 0)
			err = mica_db_exec(db,
					   "UPDATE account.security_question SET question = $3,"
					   " answer_hash = $4 WHERE user_id = $1 AND position = $2"
					   " AND question = $5 AND answer_hash = $6 RETURNING 1",
					   6, p, &u);
		if (err == 0)
			*done += PQntuples(u);
		PQclear(u);
		free_secret(q_enc);
		free_secret(a_enc);
	}
	PQclear(res);
	return err;
}

/* Seals the device names of one batch, in account.device and account.stepup. */
static int names_batch(acct_service *s, mica_db *db, int *seen, int *done)
{
	PGresult *res = NULL;
	int err = mica_db_exec(
		db,
		"(SELECT 'device', user_id::text, device_hash, name FROM account.device"
		" WHERE name <> '' AND name NOT LIKE 'dk1.%' LIMIT " BATCH ")"
		" UNION ALL (SELECT 'stepup', id, '', device_name FROM account.stepup"
		" WHERE device_name <> '' AND device_name NOT LIKE 'dk1.%' LIMIT " BATCH ")",
		0, NULL, &res);
	*seen = *done = 0;
	for (int i = 0; err == 0 && i < PQntuples(res); i++) {
		const char *table = mica_db_get(res, i, 0), *key = mica_db_get(res, i, 1),
			   *dev = mica_db_get(res, i, 2), *name = mica_db_get(res, i, 3);
		int device = strcmp(table, "device") == 0;
		char *enc = NULL;
		PGresult *u = NULL;
		int64_t uid = 0;
		(*seen)++;
		if (device)
			err = mica_db_get_int64(res, i, 1, &uid);
		if (err == 0)
			err = device ? acct_device_name_seal(s, uid, dev, name, &enc)
				     : acct_seal(s, s->records, "stepup", "device_name", key, name,
						 &enc);
		const char *p[4] = {key, dev, enc, name};
		if (err == 0)
			err = device ? mica_db_exec(db,
						    "UPDATE account.device SET name = $3 WHERE"
						    " user_id = $1::bigint AND device_hash = $2"
						    " AND name = $4 RETURNING 1",
						    4, p, &u)
				     : mica_db_exec(
					       db,
					       "UPDATE account.stepup SET device_name = $3"
					       " WHERE id = $1 AND $2::text = '' AND device_name = $4"
					       " RETURNING 1",
					       4, p, &u);
		if (err == 0)
			*done += PQntuples(u);
		PQclear(u);
		free_secret(enc);
	}
	PQclear(res);
	return err;
}

int acct_at_rest_upgrade(acct_service *s)
{
	mica_db *db = mica_db_thread();
	int seen, done, total_q = 0, total_n = 0, err = db ? 0 : MICA_EDBCONN;
	/* A batch whose rows all changed under us makes no progress: stop
	 * rather than spin; the next start finishes. */
	do {
		if (err == 0)
			err = questions_batch(s, db, &seen, &done);
		total_q += err ? 0 : done;
	} while (err == 0 && seen > 0 && done > 0);
	do {
		if (err == 0)
			err = names_batch(s, db, &seen, &done);
		total_n += err ? 0 : done;
	} while (err == 0 && seen > 0 && done > 0);
	if (err)
		MICA_LOG(MICA_LOG_ERROR, "account: sealing rows written before sealing failed: %s",
			 mica_strerror(err));
	else if (total_q || total_n)
		MICA_LOG(MICA_LOG_INFO,
			 "account: sealed %d security questions and %d device names written before"
			 " sealing",
			 total_q, total_n);
	return err;
}
