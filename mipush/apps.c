/* apps.c - developer apps and their credentials: an operator creates an app
 * (`mica push app create`), which gets a random numeric app id and a random
 * app secret shown once; the secret is stored only as its Key Center HMAC,
 * by which a developer request's `Authorization: key=<secret>` is found. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "log.h"
#include "mipush/push.h"

#define AUTH_PREFIX "key="
#define SECRET_MAX 128

int push_random_b64(char out[PUSH_RANDOM_B64_LEN + 1])
{
	uint8_t raw[32];
	size_t len = 0;
	int err = mica_random(raw, sizeof(raw));
	if (err == 0)
		err = mica_base64url_encode(raw, sizeof(raw), out, PUSH_RANDOM_B64_LEN + 1, &len);
	mica_wipe(raw, sizeof(raw));
	if (err == 0 && len != PUSH_RANDOM_B64_LEN)
		err = MICA_ECRYPTO;
	return err;
}

static int kc_index(mica_kc *kc, const char *key, const char *kind, const char *value, char **idx)
{
	size_t n = strlen(kind) + 1 + strlen(value);
	char *in = malloc(n + 1);
	int err;
	*idx = NULL;
	if (!in)
		return MICA_ENOMEM;
	snprintf(in, n + 1, "%s:%s", kind, value);
	err = mica_kc_hmac(kc, key, in, n, idx);
	mica_wipe(in, n);
	free(in);
	return err;
}

int push_index(push_service *s, const char *kind, const char *value, char **idx)
{
	return kc_index(s->kc, s->cfg->index_key, kind, value, idx);
}

/* 1-255 of [A-Za-z0-9._-], starting with a letter (an Android package). */
static bool package_ok(const char *p)
{
	size_t n = strlen(p);
	if (n == 0 || n > PUSH_PACKAGE_MAX || !isalpha((unsigned char)p[0]))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)p[i]) && p[i] != '.' && p[i] != '_' && p[i] != '-')
			return false;
	return true;
}

/* A new app secret in |secret| and its HMAC in *idx. */
static int new_secret(mica_kc *kc, const char *index_key, char secret[PUSH_RANDOM_B64_LEN + 1],
		      char **idx)
{
	int err = push_random_b64(secret);
	return err ? err : kc_index(kc, index_key, "secret", secret, idx);
}

/* Hands |app_id| and |secret| to the caller as malloc'd copies. */
static int give(const char *app_id, const char *secret, char **app_id_out, char **secret_out)
{
	if (app_id_out && !(*app_id_out = strdup(app_id)))
		return MICA_ENOMEM;
	if (!(*secret_out = strdup(secret))) {
		if (app_id_out) {
			free(*app_id_out);
			*app_id_out = NULL;
		}
		return MICA_ENOMEM;
	}
	return 0;
}

int push_app_create(mica_db *db, mica_kc *kc, const char *index_key, const char *package,
		    char **app_id_out, char **secret_out)
{
	char secret[PUSH_RANDOM_B64_LEN + 1] = "", app_id[24];
	char *idx = NULL;
	uint64_t r = 0;
	int err;
	*app_id_out = *secret_out = NULL;
	if (!package_ok(package))
		return MICA_EINVAL;
	/* A numeric id as MiPush's, 19 digits at most (fits a bigint too). */
	if ((err = mica_random(&r, sizeof(r))) != 0)
		goto out;
	snprintf(app_id, sizeof(app_id), "%llu",
		 (unsigned long long)(r % 9000000000000000000ULL + 1000000000000000000ULL));
	if ((err = new_secret(kc, index_key, secret, &idx)) != 0)
		goto out;
	const char *params[] = {app_id, package, idx};
	err = mica_db_exec(db,
			   "INSERT INTO push.app (app_id, package, secret_idx) VALUES ($1, $2, $3)",
			   3, params, NULL);
	if (err == 0)
		err = give(app_id, secret, app_id_out, secret_out);
out:
	mica_wipe(secret, sizeof(secret));
	free(idx);
	return err;
}

int push_app_rotate_secret(mica_db *db, mica_kc *kc, const char *index_key, const char *app_id,
			   char **secret_out)
{
	char secret[PUSH_RANDOM_B64_LEN + 1] = "";
	char *idx = NULL;
	PGresult *res = NULL;
	int err;
	*secret_out = NULL;
	if ((err = new_secret(kc, index_key, secret, &idx)) != 0)
		goto out;
	const char *params[] = {idx, app_id};
	err = mica_db_exec(db,
			   "UPDATE push.app SET secret_idx = $1 WHERE app_id = $2 RETURNING app_id",
			   2, params, &res);
	if (err == 0 && PQntuples(res) != 1)
		err = MICA_ENOTFOUND;
	if (err == 0)
		err = give(app_id, secret, NULL, secret_out);
out:
	PQclear(res);
	mica_wipe(secret, sizeof(secret));
	free(idx);
	return err;
}

int push_app_delete(mica_db *db, const char *app_id)
{
	PGresult *res = NULL;
	int err = mica_db_exec(db, "DELETE FROM push.app WHERE app_id = $1 RETURNING app_id", 1,
			       (const char *[]){app_id}, &res);
	if (err == 0 && PQntuples(res) != 1)
		err = MICA_ENOTFOUND;
	PQclear(res);
	return err;
}

int push_app_list(mica_db *db, FILE *f, int *n)
{
	PGresult *res = NULL;
	*n = 0;
	int err = mica_db_exec(db,
			       "SELECT app_id, package, to_char(created_at AT TIME ZONE 'UTC',"
			       " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM push.app"
			       " WHERE app_id <> $1 ORDER BY created_at, app_id",
			       1, (const char *[]){""}, &res);
	if (err)
		return err;
	*n = PQntuples(res);
	if (*n > 0)
		fprintf(f, "%-20s %-24s %s\n", "APP_ID", "CREATED", "PACKAGE");
	for (int i = 0; i < *n; i++)
		fprintf(f, "%-20s %-24s %s\n", mica_db_get(res, i, 0), mica_db_get(res, i, 2),
			mica_db_get(res, i, 1));
	PQclear(res);
	return 0;
}

static int unauthorized(mica_problem *p)
{
	return mica_problemf(p, 401, "invalid_app_secret",
			     "send Authorization: key=<app secret> with a valid app secret");
}

int push_app_authenticate(push_service *s, const char *authorization, const char *package,
			  push_app *app, mica_problem *p)
{
	char secret[SECRET_MAX + 1] = "";
	char *idx = NULL;
	PGresult *res = NULL;
	int err;
	/* A malformed header is hashed like any secret, so that it costs what
	 * a wrong one costs. */
	if (authorization && strncmp(authorization, AUTH_PREFIX, strlen(AUTH_PREFIX)) == 0 &&
	    strlen(authorization + strlen(AUTH_PREFIX)) <= SECRET_MAX)
		snprintf(secret, sizeof(secret), "%s", authorization + strlen(AUTH_PREFIX));
	if ((err = push_index(s, "secret", secret, &idx)) != 0) {
		err = push_problem_dependency(p, err, "checking the app secret");
		goto out;
	}
	const char *params[] = {idx};
	err = mica_db_exec(mica_db_thread(),
			   "SELECT app_id, package, secret_idx FROM push.app WHERE secret_idx = $1",
			   1, params, &res);
	if (err) {
		err = push_problem_dependency(p, err, "reading the app");
		goto out;
	}
	const char *stored = PQntuples(res) == 1 ? mica_db_get(res, 0, 2) : NULL;
	/* The lookup already matched the index; the comparison (constant
	 * time) keeps the decision on the full value, whatever the database's
	 * collation or index does. An empty secret never authenticates. */
	if (!*secret || !stored || strlen(stored) != strlen(idx) ||
	    !mica_ct_equal(stored, idx, strlen(idx))) {
		err = unauthorized(p);
		goto out;
	}
	if (package && *package && strcmp(package, mica_db_get(res, 0, 1)) != 0) {
		err = mica_problemf(p, 403, "package_mismatch",
				    "restricted_package_name is not this app's package");
		goto out;
	}
	snprintf(app->app_id, sizeof(app->app_id), "%s", mica_db_get(res, 0, 0));
	snprintf(app->package, sizeof(app->package), "%s", mica_db_get(res, 0, 1));
	err = 0;
out:
	mica_wipe(secret, sizeof(secret));
	free(idx);
	PQclear(res);
	return err;
}
