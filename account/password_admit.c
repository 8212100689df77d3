/* password_admit.c - which new passwords a request may set: the account's
 * password policy (password.c runs it) and the passwords a freeze burned. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "crypto.h"
#include "log.h"

int acct_password_admit(acct_service *s, const char *policy, const char *password, mica_problem *f)
{
	struct acct_password_verdict v;
	int err = acct_password_check(policy, password, s->blocklist, &v);
	if (err == 0)
		return 0;
	if (v.reason == ACCT_PASSWORD_CHECK_FAILED) {
		MICA_LOG(MICA_LOG_ERROR, "account: the %s password policy cannot run: %s", policy,
			 v.message);
		return mica_problemf(f, 503, "policy_unavailable",
				     "the %s password policy is not available on this server",
				     policy);
	}
	return mica_problemf(f, 400, "weak_password", "%s: %s", v.code, v.message);
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
	err = db ? mica_db_exec(
			   db,
			   "SELECT password_enc FROM account.burned_password WHERE user_id = $1", 1,
			   p, &res)
		 : MICA_EDBCONN;
	for (int r = 0; err == 0 && r < PQntuples(res) && !*burned; r++) {
		char *phc = NULL;
		if ((err = acct_password_unseal(s, user_id, mica_db_get(res, r, 0), &phc, NULL)) !=
		    0)
			break;
		*burned = acct_password_verify(phc, password) == 0;
		mica_wipe(phc, strlen(phc));
		free(phc);
	}
	PQclear(res);
	return err;
}
