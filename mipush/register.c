/* register.c - device registration (POST /v1/push/register): an app id, its
 * package and a device hash give a registration id (random, the same one for
 * the same hash of the same app), a fresh content key and a fresh token (the
 * long connection's password). Every Key Center call and random draw happens
 * before the transaction, which only writes. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "body.h"
#include "crypto.h"
#include "kv.h"
#include "mipush/push.h"

struct reg_tx {
	const char *app_id, *device_idx, *new_regid, *key_enc, *token_idx;
	/* For an existing registration the content key is sealed to its regid,
	 * which is only known inside the transaction: sealed again there would
	 * repeat a Key Center call on retry, so the flow looks it up first. */
	char regid[PUSH_RANDOM_B64_LEN + 1];
};

static bool hex64(const char *h)
{
	if (strlen(h) != PUSH_DEVICE_HASH_HEX)
		return false;
	for (size_t i = 0; i < PUSH_DEVICE_HASH_HEX; i++)
		if (!isxdigit((unsigned char)h[i]))
			return false;
	return true;
}

/* One hit on the registration limit of |kind| ("ip", "device") for |who|. */
static int register_limit(const char *kind, const char *who, int max, int window_s, mica_problem *p)
{
	char key[320];
	int allowed = 0, err;
	mica_kv *kv = mica_kv_thread();
	snprintf(key, sizeof(key), "push:rl:register:%s:%s", kind, who);
	err = kv ? mica_kv_rate_limit(kv, key, max, window_s, &allowed, NULL) : MICA_EKVCONN;
	if (err)
		return push_problem_dependency(p, err, "counting registrations");
	if (!allowed)
		return mica_problemf(p, 429, "rate_limited",
				     "too many registrations from this %s; try again later",
				     strcmp(kind, "ip") == 0 ? "address" : "device");
	return 0;
}

/* The content key sealed by the Key Center to its row. */
static int seal_content_key(push_service *s, const char *regid, const uint8_t *key, char **enc)
{
	json_t *ctx = json_pack("{s:s,s:s,s:s,s:s}", "service", "push", "table", "registration",
				"column", "content_key", "row", regid);
	int err = ctx ? mica_kc_encrypt(s->kc, s->cfg->content_key, key, PUSH_CONTENT_KEY_LEN, ctx,
					enc)
		      : MICA_ENOMEM;
	json_decref(ctx);
	return err;
}

/* Looks up the app's package and the registration of |device_idx|. */
static int lookup(const char *app_id, const char *device_idx, char *package, size_t pcap,
		  char *regid, size_t rcap, bool *app_found)
{
	PGresult *res = NULL;
	const char *params[] = {app_id, device_idx};
	int err =
		mica_db_exec(mica_db_thread(),
			     "SELECT a.package, r.regid FROM push.app a LEFT JOIN push.registration"
			     " r ON r.app_id = a.app_id AND r.device_idx = $2 WHERE a.app_id = $1",
			     2, params, &res);
	*app_found = false;
	regid[0] = '\0';
	if (err == 0 && PQntuples(res) == 1) {
		*app_found = true;
		snprintf(package, pcap, "%s", mica_db_get(res, 0, 0));
		if (mica_db_get(res, 0, 1))
			snprintf(regid, rcap, "%s", mica_db_get(res, 0, 1));
	}
	PQclear(res);
	return err;
}

/* Writes the registration: a new row, or new key and token on the row the
 * device already has (same regid). A concurrent first registration of the
 * same device makes the insert conflict: the caller starts over. */
static int reg_write(mica_db *db, void *arg)
{
	struct reg_tx *t = arg;
	if (t->regid[0]) {
		const char *params[] = {t->key_enc, t->token_idx, t->regid, t->app_id,
					t->device_idx};
		PGresult *res = NULL;
		int err = mica_db_exec(db,
				       "UPDATE push.registration SET content_key_enc = $1,"
				       " token_idx = $2, last_seen = now() WHERE regid = $3"
				       " AND app_id = $4 AND device_idx = $5 RETURNING regid",
				       5, params, &res);
		int n = res ? PQntuples(res) : 0;
		PQclear(res);
		return err ? err : n == 1 ? 0 : MICA_ENOTFOUND;
	}
	const char *params[] = {t->new_regid, t->app_id, t->device_idx, t->key_enc, t->token_idx};
	return mica_db_exec(db,
			    "INSERT INTO push.registration (regid, app_id, device_idx,"
			    " content_key_enc, token_idx) VALUES ($1, $2, $3, $4, $5)",
			    5, params, NULL);
}

int push_register(push_service *s, const char *client_ip, json_t *body, json_t **out,
		  mica_problem *p)
{
	static const mica_body_field spec[] = {
		{"app_id", MICA_BODY_STRING, true, 19},
		{"package", MICA_BODY_STRING, true, PUSH_PACKAGE_MAX},
		{"device_hash", MICA_BODY_STRING, true, PUSH_DEVICE_HASH_HEX},
	};
	mica_body_value v[3];
	char hash[PUSH_DEVICE_HASH_HEX + 1], package[PUSH_PACKAGE_MAX + 1] = "";
	char token[PUSH_RANDOM_B64_LEN + 1] = "", new_regid[PUSH_RANDOM_B64_LEN + 1] = "";
	uint8_t key[PUSH_CONTENT_KEY_LEN];
	char *device_idx = NULL, *token_idx = NULL, *key_enc = NULL, *key_b64 = NULL;
	struct reg_tx t = {0};
	bool app_found;
	int err, attempt;

	*out = NULL;
	if ((err = register_limit("ip", client_ip ? client_ip : "-", s->cfg->register_ip_max,
				  s->cfg->register_ip_window_s, p)) != 0)
		return err;
	if ((err = mica_body_fields(body, MICA_BODY_FIELDS(spec), v, p)) != 0)
		return err;
	if (!hex64(v[2].s))
		return mica_problemf(p, 400, "bad_device_hash",
				     "device_hash must be 64 hex digits (SHA-256)");
	/* One form of the hash, whatever the case the device sent. */
	for (size_t i = 0; i <= PUSH_DEVICE_HASH_HEX; i++)
		hash[i] = (char)tolower((unsigned char)v[2].s[i]);
	size_t n = strlen(v[0].s) + 1 + PUSH_DEVICE_HASH_HEX;
	char idx_in[19 + 1 + PUSH_DEVICE_HASH_HEX + 1];
	if (n >= sizeof(idx_in))
		return mica_problemf(p, 404, "unknown_app", "no app has this app_id");
	snprintf(idx_in, sizeof(idx_in), "%s:%s", v[0].s, hash);
	if ((err = push_index(s, "device", idx_in, &device_idx)) != 0) {
		err = push_problem_dependency(p, err, "indexing the device");
		goto out;
	}
	/* By the device's index, before the app is looked up: an unknown app
	 * counts exactly as a known one. */
	if ((err = register_limit("device", device_idx, s->cfg->register_device_max,
				  s->cfg->register_device_window_s, p)) != 0)
		goto out;
	if ((err = mica_random(key, sizeof(key))) != 0 || (err = push_random_b64(token)) != 0 ||
	    (err = push_random_b64(new_regid)) != 0) {
		err = push_problem_dependency(p, err, "drawing random values");
		goto out;
	}
	if ((err = push_index(s, "token", token, &token_idx)) != 0) {
		err = push_problem_dependency(p, err, "indexing the token");
		goto out;
	}
	/* Twice at most: a first registration that lost a race to a
	 * concurrent one of the same device becomes a re-registration. */
	for (attempt = 0; attempt < 2; attempt++) {
		if ((err = lookup(v[0].s, device_idx, package, sizeof(package), t.regid,
				  sizeof(t.regid), &app_found)) != 0) {
			err = push_problem_dependency(p, err, "reading the registration");
			goto out;
		}
		if (!app_found) {
			err = mica_problemf(p, 404, "unknown_app", "no app has this app_id");
			goto out;
		}
		if (strcmp(package, v[1].s) != 0) {
			err = mica_problemf(p, 403, "package_mismatch",
					    "package is not the package of this app");
			goto out;
		}
		free(key_enc);
		key_enc = NULL;
		if ((err = seal_content_key(s, t.regid[0] ? t.regid : new_regid, key, &key_enc)) !=
		    0) {
			err = push_problem_dependency(p, err, "sealing the content key");
			goto out;
		}
		t.app_id = v[0].s;
		t.device_idx = device_idx;
		t.new_regid = new_regid;
		t.key_enc = key_enc;
		t.token_idx = token_idx;
		err = mica_db_tx(mica_db_thread(), MICA_DB_READ_COMMITTED, reg_write, &t);
		if (err != MICA_EEXISTS && err != MICA_ENOTFOUND)
			break;
	}
	/* Still racing after the retry: as retryable as a serialization
	 * failure (503 database), not a Key Center failure. */
	if (err == MICA_EEXISTS || err == MICA_ENOTFOUND)
		err = MICA_ESERIALIZATION;
	if (err) {
		err = push_problem_dependency(p, err, "writing the registration");
		goto out;
	}
	size_t b64len = 0;
	if ((err = mica_base64_encode_alloc(key, sizeof(key), &key_b64, &b64len)) != 0 ||
	    !(*out = json_pack("{s:s,s:s,s:s}", "regid", t.regid[0] ? t.regid : new_regid,
			       "content_key", key_b64, "token", token))) {
		err = push_problem_dependency(p, err ? err : MICA_ENOMEM, "answering");
		goto out;
	}
out:
	mica_wipe(key, sizeof(key));
	mica_wipe(token, sizeof(token));
	mica_wipe(idx_in, sizeof(idx_in));
	if (key_b64) {
		mica_wipe(key_b64, strlen(key_b64));
		free(key_b64);
	}
	free(device_idx);
	free(token_idx);
	free(key_enc);
	return err;
}
