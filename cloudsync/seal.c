/* seal.c - records at rest: each user has one AES-256 data key, minted by
 * the Key Center under cfg->user_key and stored only wrapped
 * (cloudsync.user_key), bound there to {service: cloudsync, user: <id>}.
 * Record bodies are lib/crypto envelopes under it, bound to their place
 * "service=cloudsync;user=U;module=M;record=ID;version=V": a body copied to
 * another user, module, record or version does not open. Unwrapping goes
 * through lib/kc's bounded, TTL-limited cache, so a request costs the Key
 * Center a call only when the user's key is not in it. Deleting the
 * user_key row (account deletion) leaves nothing that opens the bodies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cloudsync/cloudsync.h"
#include "crypto.h"

/* The envelope header names the data key as this, version 1: one key per
 * user, never rotated in place (docs/decisions.md). */
#define CS_ENVELOPE_KEY "cloudsync.user"
#define AAD_MAX 256

static json_t *key_context(int64_t user_id)
{
	char uid[24];
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	return json_pack("{s:s,s:s}", "service", "cloudsync", "user", uid);
}

static int stored_key(mica_db *db, const char *uid, char **wrapped)
{
	PGresult *res = NULL;
	const char *p[1] = {uid};
	int err = mica_db_exec(db, "SELECT wrapped FROM cloudsync.user_key WHERE user_id = $1", 1,
			       p, &res);
	*wrapped = NULL;
	if (err == 0 && PQntuples(res) == 1 && !(*wrapped = strdup(mica_db_get(res, 0, 0))))
		err = MICA_ENOMEM;
	PQclear(res);
	return err;
}

int cs_user_key(cs_service *s, mica_db *db, int64_t user_id, uint8_t key[CS_KEY_LEN])
{
	char uid[24], *wrapped = NULL;
	json_t *ctx = key_context(user_id);
	size_t len = 0;
	int err = ctx ? 0 : MICA_ENOMEM;
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	if (err == 0)
		err = stored_key(db, uid, &wrapped);
	if (err == 0 && !wrapped) {
		/* First use: mint, then keep whichever key was stored first. */
		PGresult *res = NULL;
		err = mica_kc_datakey(s->kc, s->cfg->user_key, CS_KEY_LEN * 8, ctx, key, CS_KEY_LEN,
				      &wrapped);
		const char *p[2] = {uid, wrapped};
		if (err == 0)
			err = mica_db_exec(db,
					   "INSERT INTO cloudsync.user_key (user_id, wrapped)"
					   " VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING"
					   " RETURNING 1",
					   2, p, &res);
		if (err == 0 && PQntuples(res) == 1) {
			PQclear(res);
			goto out;
		}
		PQclear(res);
		free(wrapped);
		wrapped = NULL;
		if (err == 0 && (err = stored_key(db, uid, &wrapped)) == 0 && !wrapped)
			err = MICA_ESTATE;
	}
	if (err == 0)
		err = mica_kc_decrypt_datakey(s->kc, s->cfg->user_key, wrapped, ctx, key,
					      CS_KEY_LEN, &len);
	if (err == 0 && len != CS_KEY_LEN)
		err = MICA_EBADHEADER;
out:
	if (err)
		mica_wipe(key, CS_KEY_LEN);
	free(wrapped);
	json_decref(ctx);
	return err;
}

static int place(int64_t user_id, const char *module, const char *id, int64_t version,
		 char out[AAD_MAX])
{
	int n = snprintf(out, AAD_MAX,
			 "service=cloudsync;user=%lld;module=%s;record=%s;version=%lld",
			 (long long)user_id, module, id, (long long)version);
	return n > 0 && n < AAD_MAX ? n : -1;
}

int cs_seal(const uint8_t key[CS_KEY_LEN], int64_t user_id, const char *module, const char *id,
	    int64_t version, const char *json, size_t len, uint8_t **out, size_t *out_len)
{
	char aad[AAD_MAX];
	int n = place(user_id, module, id, version, aad);
	*out = NULL;
	*out_len = 0;
	if (n < 0)
		return MICA_EINVAL;
	return mica_envelope_seal(key, CS_KEY_LEN, CS_ENVELOPE_KEY, 1, aad, (size_t)n, json, len,
				  out, out_len);
}

int cs_open(const uint8_t key[CS_KEY_LEN], int64_t user_id, const char *module, const char *id,
	    int64_t version, const uint8_t *body, size_t len, json_t **out)
{
	char aad[AAD_MAX];
	uint8_t *pt = NULL;
	size_t pt_len = 0;
	int n = place(user_id, module, id, version, aad), err;
	*out = NULL;
	if (n < 0)
		return MICA_EINVAL;
	err = mica_envelope_open(key, CS_KEY_LEN, aad, (size_t)n, body, len, &pt, &pt_len);
	if (err == 0 && !(*out = json_loadb((const char *)pt, pt_len, JSON_DECODE_ANY, NULL)))
		err = MICA_EBADHEADER;
	if (pt) {
		mica_wipe(pt, pt_len);
		free(pt);
	}
	return err;
}
