/* freeze.c - freezing an account, the answer to a severe risk (the right
 * password followed by failed step-up): the password is burned, pending
 * step-ups fail, every session is revoked and the user is told. Wrong
 * passwords alone never freeze an account: that would let anyone lock
 * anyone out. A password reset (reset.c) is the way out. */
#include <stdio.h>

#include "account/account.h"
#include "log.h"

struct freeze_ctx {
	acct_service *s;
	int64_t user_id;
};

static int freeze_tx(mica_db *db, void *arg)
{
	struct freeze_ctx *z = arg;
	char uid[24];
	int err;
	snprintf(uid, sizeof(uid), "%lld", (long long)z->user_id);
	const char *p[1] = {uid};
	/* The current password is burned: kept only to refuse it forever. */
	if ((err = mica_db_exec(db,
				"INSERT INTO account.burned_password (user_id, password_enc)"
				" SELECT id, password_enc FROM account.user WHERE id = $1",
				1, p, NULL)) != 0 ||
	    (err = mica_db_exec(db,
				"UPDATE account.user SET status = 'frozen', frozen_at = now()"
				" WHERE id = $1",
				1, p, NULL)) != 0 ||
	    (err = mica_db_exec(db,
				"UPDATE account.stepup SET status = 'failed' WHERE user_id = $1"
				" AND status = 'pending'",
				1, p, NULL)) != 0 ||
	    (err = acct_notice_emit(db, z->user_id, ACCT_NOTICE_FROZEN, NULL, 0)) != 0)
		return err;
	return acct_session_revoke_all_deferred(z->s, db, z->user_id);
}

int acct_freeze(acct_service *s, int64_t user_id, const char *reason)
{
	struct freeze_ctx z = {s, user_id};
	mica_db *db = mica_db_thread();
	int err = db ? mica_db_tx(db, MICA_DB_READ_COMMITTED, freeze_tx, &z) : MICA_EDBCONN;
	acct_session_deferred_flush(s);
	if (err)
		return err;
	MICA_LOG(MICA_LOG_WARN, "account: an account was frozen (%s)", reason);
	return 0;
}
