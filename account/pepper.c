/* pepper.c - values sealed under Key Center data keys: an AES-256-GCM data
 * key from the Key Center, wrapped there and stored wrapped next to every
 * value it seals, so a database dump alone opens nothing. Two sealers use
 * it: the pepper (key cfg->pepper_key) over password hashes and security
 * answer hashes, and the record sealer (key cfg->pii_key) over device names
 * and security questions. Each keeps one current data key for sealing,
 * replaced after cfg->pepper_key_max_age_s seconds or
 * cfg->pepper_key_max_seals seals (at most 2^30, far below the 2^32
 * random-nonce bound of AES-GCM); opening unwraps the stored key through
 * lib/kc's bounded, TTL-limited cache, so a read costs the Key Center a call
 * only when the cache does not hold that key.
 *
 * Stored form: "dk1." <wrapped data key "kc:v<N>:..."> "." <base64 envelope>
 * (lib/crypto's envelope: key name and version in the header, the value's
 * place "service=account;table=T;column=C;row=R" as associated data). Password
 * rows written before this form ("kc:v<N>:...", encrypted by the Key Center
 * itself) still open, through the Key Center. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "account/account.h"
#include "clock.h"
#include "crypto.h"
#include "log.h"
#include "parse.h"

#define SEAL_PREFIX "dk1."
#define SEAL_PREFIX_LEN 4
#define SEAL_KEY_LEN 32
/* Longest wrapped data key accepted from a row ("kc:v<N>:" and base64). */
#define SEAL_WRAPPED_MAX 512
#define SEAL_AAD_MAX 256

struct acct_sealer {
	pthread_mutex_t mu;
	/* Borrowed, from the configuration and string literals, which outlive
	 * the sealer: the Key Center key and the data keys' own context. */
	const char *key_name, *ctx_table, *ctx_column, *purpose;
	uint8_t key[SEAL_KEY_LEN];
	char *wrapped; /* NULL until the first seal */
	time_t made_at;
	uint64_t seals;
};

int acct_sealer_new(const char *key_name, const char *table, const char *column,
		    const char *purpose, acct_sealer **out)
{
	acct_sealer *k = calloc(1, sizeof(*k));
	*out = NULL;
	if (!k)
		return MICA_ENOMEM;
	if (pthread_mutex_init(&k->mu, NULL) != 0) {
		free(k);
		return MICA_ENOMEM;
	}
	k->key_name = key_name;
	k->ctx_table = table;
	k->ctx_column = column;
	k->purpose = purpose;
	*out = k;
	return 0;
}

void acct_sealer_free(acct_sealer *k)
{
	if (!k)
		return;
	mica_wipe(k->key, sizeof(k->key));
	free(k->wrapped);
	pthread_mutex_destroy(&k->mu);
	free(k);
}

/* The data key's own context at the Key Center: unwrapping needs it. The
 * pepper's keeps the table and column it was minted with first. */
static json_t *key_context(const acct_sealer *k)
{
	if (k->ctx_table)
		return json_pack("{s:s,s:s,s:s,s:s}", "service", "account", "table", k->ctx_table,
				 "column", k->ctx_column, "purpose", k->purpose);
	return json_pack("{s:s,s:s}", "service", "account", "purpose", k->purpose);
}

/* Associated data of a sealed value: the place it belongs to. */
static int place_aad(const char *table, const char *column, const char *row, char *out, size_t cap)
{
	int n = snprintf(out, cap, "service=account;table=%s;column=%s;row=%s", table, column, row);
	return n > 0 && (size_t)n < cap ? n : -1;
}

/* The version of a wrapped key, from its "kc:v<N>:" prefix (0 if none). */
static uint32_t wrapped_version(const char *w)
{
	char digits[11];
	const char *colon;
	int64_t v;
	if (strncmp(w, "kc:v", 4) != 0 || !(colon = strchr(w + 4, ':')) ||
	    (size_t)(colon - (w + 4)) >= sizeof(digits))
		return 0;
	memcpy(digits, w + 4, (size_t)(colon - (w + 4)));
	digits[colon - (w + 4)] = '\0';
	return mica_parse_int64(digits, 1, UINT32_MAX, &v) == 0 ? (uint32_t)v : 0;
}

/* Replaces the sealing key with a fresh one from the Key Center. k->mu held. */
static int mint_locked(acct_service *s, acct_sealer *k, time_t now)
{
	uint8_t fresh[SEAL_KEY_LEN];
	char *w = NULL;
	json_t *ctx = key_context(k);
	int err = ctx ? mica_kc_datakey(s->kc, k->key_name, SEAL_KEY_LEN * 8, ctx, fresh,
					sizeof(fresh), &w)
		      : MICA_ENOMEM;
	json_decref(ctx);
	if (err == 0) {
		memcpy(k->key, fresh, sizeof(k->key));
		free(k->wrapped);
		k->wrapped = w;
		k->made_at = now;
		k->seals = 0;
		MICA_LOG(MICA_LOG_INFO, "account: a new %s data key (%s v%u)", k->purpose,
			 k->key_name, wrapped_version(w));
	}
	mica_wipe(fresh, sizeof(fresh));
	return err;
}

int acct_sealer_ready(acct_service *s, acct_sealer *k)
{
	int err = 0;
	pthread_mutex_lock(&k->mu);
	if (!k->wrapped)
		err = mint_locked(s, k, (time_t)mica_clock_now());
	pthread_mutex_unlock(&k->mu);
	return err;
}

/* Copies the current sealing key (a new one when there is none yet, it is
 * too old or has sealed too much) to |key| and its wrapped form to *wrapped
 * (malloc'd). */
static int sealing_key(acct_service *s, acct_sealer *k, uint8_t key[SEAL_KEY_LEN], char **wrapped)
{
	time_t now = (time_t)mica_clock_now();
	int err = 0;
	*wrapped = NULL;
	pthread_mutex_lock(&k->mu);
	if (!k->wrapped || now - k->made_at >= s->cfg->pepper_key_max_age_s || now < k->made_at ||
	    k->seals >= (uint64_t)s->cfg->pepper_key_max_seals)
		err = mint_locked(s, k, now);
	if (err == 0 && !(*wrapped = strdup(k->wrapped)))
		err = MICA_ENOMEM;
	if (err == 0) {
		memcpy(key, k->key, SEAL_KEY_LEN);
		k->seals++;
	}
	pthread_mutex_unlock(&k->mu);
	return err;
}

int acct_seal(acct_service *s, acct_sealer *k, const char *table, const char *column,
	      const char *row, const char *value, char **out)
{
	uint8_t key[SEAL_KEY_LEN], *env = NULL;
	char aad[SEAL_AAD_MAX], *wrapped = NULL, *b64 = NULL;
	size_t env_len = 0, b64_len = 0;
	int aad_len = place_aad(table, column, row, aad, sizeof(aad)), err;

	*out = NULL;
	if (aad_len < 0)
		return MICA_EINVAL;
	if ((err = sealing_key(s, k, key, &wrapped)) == 0)
		err = mica_envelope_seal(key, sizeof(key), k->key_name, wrapped_version(wrapped),
					 aad, (size_t)aad_len, value, strlen(value), &env,
					 &env_len);
	mica_wipe(key, sizeof(key));
	if (err == 0)
		err = mica_base64_encode_alloc(env, env_len, &b64, &b64_len);
	if (err == 0) {
		size_t n = SEAL_PREFIX_LEN + strlen(wrapped) + 1 + b64_len + 1;
		if ((*out = malloc(n)) != NULL)
			snprintf(*out, n, SEAL_PREFIX "%s.%s", wrapped, b64);
		else
			err = MICA_ENOMEM;
	}
	free(env);
	free(b64);
	free(wrapped);
	return err;
}

bool acct_is_sealed(const char *value)
{
	return value && strncmp(value, SEAL_PREFIX, SEAL_PREFIX_LEN) == 0;
}

int acct_unseal(acct_service *s, acct_sealer *k, const char *table, const char *column,
		const char *row, const char *sealed, char **out)
{
	const char *w = sealed + SEAL_PREFIX_LEN, *dot;
	char wrapped[SEAL_WRAPPED_MAX + 1], aad[SEAL_AAD_MAX];
	uint8_t key[MICA_KC_DATAKEY_MAX], *env = NULL, *pt = NULL;
	size_t key_len = 0, env_len = 0, len = 0;
	int aad_len = place_aad(table, column, row, aad, sizeof(aad)), err;
	json_t *ctx;

	*out = NULL;
	if (!acct_is_sealed(sealed))
		return MICA_EBADHEADER;
	dot = strchr(w, '.');
	if (!dot || dot == w || (size_t)(dot - w) > SEAL_WRAPPED_MAX || aad_len < 0)
		return MICA_EBADHEADER;
	memcpy(wrapped, w, (size_t)(dot - w));
	wrapped[dot - w] = '\0';
	if ((err = mica_base64_decode_alloc(dot + 1, strlen(dot + 1), &env, &env_len)) != 0)
		return err == MICA_ENOMEM ? err : MICA_EBADHEADER;
	if (!(ctx = key_context(k))) {
		free(env);
		return MICA_ENOMEM;
	}
	err = mica_kc_decrypt_datakey(s->kc, k->key_name, wrapped, ctx, key, sizeof(key), &key_len);
	json_decref(ctx);
	if (err == 0)
		err = mica_envelope_open(key, key_len, aad, (size_t)aad_len, env, env_len, &pt,
					 &len);
	mica_wipe(key, sizeof(key));
	free(env);
	return err ? err : acct_take_string(pt, len, out);
}

/* ---- password hashes under the pepper ------------------------------------------------ */

int acct_password_seal(acct_service *s, int64_t user_id, const char *phc, char **out)
{
	char row[24];
	snprintf(row, sizeof(row), "%lld", (long long)user_id);
	return acct_seal(s, s->pepper, "user", "password", row, phc, out);
}

int acct_password_protect(acct_service *s, int64_t user_id, const char *password, char **out)
{
	char *phc = NULL;
	int err = acct_password_hash_with(password, &s->argon2, &phc);
	*out = NULL;
	if (!err)
		err = acct_password_seal(s, user_id, phc, out);
	mica_free_wipe(phc);
	return err;
}

int acct_password_unseal(acct_service *s, int64_t user_id, const char *sealed, char **phc,
			 int *legacy)
{
	int by_key_center = !acct_is_sealed(sealed);
	char row[24];
	*phc = NULL;
	if (legacy)
		*legacy = by_key_center;
	snprintf(row, sizeof(row), "%lld", (long long)user_id);
	if (by_key_center)
		/* Encrypted by the Key Center itself, before data keys. */
		return acct_kc_open(s, s->cfg->pepper_key, "user", "password", row, sealed, phc);
	return acct_unseal(s, s->pepper, "user", "password", row, sealed, phc);
}
