/* pepper.c - password hashes sealed under the pepper: an AES-256-GCM data
 * key from the Key Center (key cfg->pepper_key), wrapped there and stored
 * wrapped next to every hash it seals, so a database dump alone opens
 * nothing. The service keeps one current data key for sealing, replaced
 * after cfg->pepper_key_max_age_s seconds or cfg->pepper_key_max_seals seals
 * (at most 2^30, far below the 2^32 random-nonce bound of AES-GCM);
 * opening unwraps the stored key through lib/kc's bounded, TTL-limited
 * cache, so a login costs the Key Center a call only when the cache does not
 * hold that key.
 *
 * Stored form: "dk1." <wrapped data key "kc:v<N>:..."> "." <base64 envelope>
 * (lib/crypto's envelope: key name and version in the header, the row's
 * context as associated data). Rows written before this form ("kc:v<N>:...",
 * encrypted by the Key Center itself) still open, through the Key Center. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "account/account.h"
#include "clock.h"
#include "crypto.h"
#include "log.h"

#define PEPPER_PREFIX "dk1."
#define PEPPER_PREFIX_LEN 4
#define PEPPER_KEY_LEN 32
/* Longest wrapped data key accepted from a row ("kc:v<N>:" and base64). */
#define PEPPER_WRAPPED_MAX 512

struct acct_pepper {
	pthread_mutex_t mu;
	uint8_t key[PEPPER_KEY_LEN];
	char *wrapped; /* NULL until the first seal */
	time_t made_at;
	uint64_t seals;
};

int acct_pepper_new(acct_pepper **out)
{
	acct_pepper *p = calloc(1, sizeof(*p));
	*out = NULL;
	if (!p)
		return MICA_ENOMEM;
	if (pthread_mutex_init(&p->mu, NULL) != 0) {
		free(p);
		return MICA_ENOMEM;
	}
	*out = p;
	return 0;
}

void acct_pepper_free(acct_pepper *p)
{
	if (!p)
		return;
	mica_wipe(p->key, sizeof(p->key));
	free(p->wrapped);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

/* The data key's own context at the Key Center: unwrapping needs it. */
static json_t *key_context(void)
{
	return json_pack("{s:s,s:s,s:s,s:s}", "service", "account", "table", "user", "column",
			 "password", "purpose", "pepper");
}

/* Associated data of a sealed hash: the row it belongs to. */
static int row_aad(int64_t user_id, char *out, size_t cap)
{
	int n = snprintf(out, cap, "service=account;table=user;column=password;row=%lld",
			 (long long)user_id);
	return n > 0 && (size_t)n < cap ? n : -1;
}

/* The version of a wrapped key, from its "kc:v<N>:" prefix (0 if none). */
static uint32_t wrapped_version(const char *w)
{
	char *end;
	unsigned long v;
	if (strncmp(w, "kc:v", 4) != 0)
		return 0;
	v = strtoul(w + 4, &end, 10);
	return *end == ':' && v <= UINT32_MAX ? (uint32_t)v : 0;
}

/* Replaces the sealing key with a fresh one from the Key Center. p->mu held. */
static int mint_locked(acct_service *s, acct_pepper *p, time_t now)
{
	uint8_t fresh[PEPPER_KEY_LEN];
	char *w = NULL;
	json_t *ctx = key_context();
	int err = ctx ? mica_kc_datakey(s->kc, s->cfg->pepper_key, PEPPER_KEY_LEN * 8, ctx, fresh,
					sizeof(fresh), &w)
		      : MICA_ENOMEM;
	json_decref(ctx);
	if (err == 0) {
		memcpy(p->key, fresh, sizeof(p->key));
		free(p->wrapped);
		p->wrapped = w;
		p->made_at = now;
		p->seals = 0;
		MICA_LOG(MICA_LOG_INFO, "account: a new pepper data key (%s v%u)",
			 s->cfg->pepper_key, wrapped_version(w));
	}
	mica_wipe(fresh, sizeof(fresh));
	return err;
}

int acct_pepper_ready(acct_service *s)
{
	acct_pepper *p = s->pepper;
	int err = 0;
	pthread_mutex_lock(&p->mu);
	if (!p->wrapped)
		err = mint_locked(s, p, (time_t)mica_clock_now());
	pthread_mutex_unlock(&p->mu);
	return err;
}

/* Copies the current sealing key (a new one when there is none yet, it is
 * too old or has sealed too much) to |key| and its wrapped form to *wrapped
 * (malloc'd). */
static int sealing_key(acct_service *s, uint8_t key[PEPPER_KEY_LEN], char **wrapped)
{
	acct_pepper *p = s->pepper;
	time_t now = (time_t)mica_clock_now();
	int err = 0;
	*wrapped = NULL;
	pthread_mutex_lock(&p->mu);
	if (!p->wrapped || now - p->made_at >= s->cfg->pepper_key_max_age_s || now < p->made_at ||
	    p->seals >= (uint64_t)s->cfg->pepper_key_max_seals)
		err = mint_locked(s, p, now);
	if (err == 0 && !(*wrapped = strdup(p->wrapped)))
		err = MICA_ENOMEM;
	if (err == 0) {
		memcpy(key, p->key, PEPPER_KEY_LEN);
		p->seals++;
	}
	pthread_mutex_unlock(&p->mu);
	return err;
}

int acct_password_seal(acct_service *s, int64_t user_id, const char *phc, char **out)
{
	uint8_t key[PEPPER_KEY_LEN], *env = NULL;
	char aad[128], *wrapped = NULL, *b64 = NULL;
	size_t env_len = 0, b64_len = 0;
	int aad_len = row_aad(user_id, aad, sizeof(aad)), err;

	*out = NULL;
	if (aad_len < 0)
		return MICA_EINVAL;
	if ((err = sealing_key(s, key, &wrapped)) == 0)
		err = mica_envelope_seal(key, sizeof(key), s->cfg->pepper_key,
					 wrapped_version(wrapped), aad, (size_t)aad_len, phc,
					 strlen(phc), &env, &env_len);
	mica_wipe(key, sizeof(key));
	if (err == 0)
		err = mica_base64_encode_alloc(env, env_len, &b64, &b64_len);
	if (err == 0) {
		size_t n = PEPPER_PREFIX_LEN + strlen(wrapped) + 1 + b64_len + 1;
		if ((*out = malloc(n)) != NULL)
			snprintf(*out, n, PEPPER_PREFIX "%s.%s", wrapped, b64);
		else
			err = MICA_ENOMEM;
	}
	free(env);
	free(b64);
	free(wrapped);
	return err;
}

static int unseal_envelope(acct_service *s, int64_t user_id, const char *sealed, uint8_t **pt,
			   size_t *len)
{
	const char *w = sealed + PEPPER_PREFIX_LEN, *dot = strchr(w, '.');
	char wrapped[PEPPER_WRAPPED_MAX + 1], aad[128];
	uint8_t key[MICA_KC_DATAKEY_MAX], *env = NULL;
	size_t key_len = 0, env_len = 0;
	int aad_len = row_aad(user_id, aad, sizeof(aad)), err;
	json_t *ctx;

	if (!dot || dot == w || (size_t)(dot - w) > PEPPER_WRAPPED_MAX || aad_len < 0)
		return MICA_EBADHEADER;
	memcpy(wrapped, w, (size_t)(dot - w));
	wrapped[dot - w] = '\0';
	if ((err = mica_base64_decode_alloc(dot + 1, strlen(dot + 1), &env, &env_len)) != 0)
		return err == MICA_ENOMEM ? err : MICA_EBADHEADER;
	if (!(ctx = key_context())) {
		free(env);
		return MICA_ENOMEM;
	}
	err = mica_kc_decrypt_datakey(s->kc, s->cfg->pepper_key, wrapped, ctx, key, sizeof(key),
				      &key_len);
	json_decref(ctx);
	if (err == 0)
		err = mica_envelope_open(key, key_len, aad, (size_t)aad_len, env, env_len, pt, len);
	mica_wipe(key, sizeof(key));
	free(env);
	return err;
}

int acct_password_unseal(acct_service *s, int64_t user_id, const char *sealed, char **phc,
			 int *legacy)
{
	uint8_t *pt = NULL;
	size_t len = 0;
	int by_key_center = strncmp(sealed, PEPPER_PREFIX, PEPPER_PREFIX_LEN) != 0, err;
	*phc = NULL;
	if (legacy)
		*legacy = by_key_center;
	if (by_key_center) {
		/* Encrypted by the Key Center itself, before data keys. */
		char row[24];
		snprintf(row, sizeof(row), "%lld", (long long)user_id);
		return acct_kc_open(s, s->cfg->pepper_key, "user", "password", row, sealed, phc);
	}
	if ((err = unseal_envelope(s, user_id, sealed, &pt, &len)) != 0)
		return err;
	return acct_take_string(pt, len, phc);
}
