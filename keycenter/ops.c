/* ops.c - encrypt, decrypt and HMAC on named keys, the encryption-context
 * canonical form and the "kc:v<version>:" ciphertext format (see ops.h).
 * Key material is copied out of the cache into a stack buffer for the
 * duration of one operation and wiped at the single exit. */
#include "keycenter/ops.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "keycenter/keycenter.h"

#define PREFIX "kc:v"

static int fail(mica_problem *why, int err, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(mica_problem *why, int err, const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	mica_problem_vsetf(why, mica_http_status(err), code, fmt, ap);
	va_end(ap);
	return err;
}

/* kc_key_material() with a missing key or version described in |why|. */
static int material(kc_service *s, const char *name, uint32_t version, uint8_t key[32], int *bits,
		    uint32_t *used_version, struct kc_key_info *info, mica_problem *why)
{
	int err = kc_key_material(s, name, version, key, bits, used_version, info);
	if (err == MICA_ENOTFOUND)
		fail(why, err, version ? "unknown_version" : "unknown_key",
		     version ? "key %s has no version %u" : "no key named %s", name, version);
	return err;
}

int kc_context_canonical(const json_t *ctx, char **out, size_t *len, mica_problem *why)
{
	const char *k;
	json_t *v;
	*out = NULL;
	*len = 0;
	if (!json_is_object(ctx) || json_object_size(ctx) == 0)
		return fail(why, MICA_EINVAL, "bad_context",
			    "context must be a non-empty object of strings");
	json_object_foreach((json_t *)ctx, k, v)
	{
		if (!json_is_string(v))
			return fail(why, MICA_EINVAL, "bad_context",
				    "context member \"%.64s\" is not a string", k);
	}
	if (!(*out = json_dumps(ctx, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII)))
		return fail(why, MICA_ENOMEM, "internal_error", "out of memory");
	*len = strlen(*out);
	return 0;
}

static int format_versioned(uint32_t version, const uint8_t *blob, size_t len, char **out)
{
	char head[24];
	int hl = snprintf(head, sizeof(head), PREFIX "%u:", version);
	size_t b64 = mica_base64_encoded_len(len);
	char *s = malloc((size_t)hl + b64 + 1);
	size_t n = 0;
	if (!s)
		return MICA_ENOMEM;
	memcpy(s, head, (size_t)hl);
	if (mica_base64_encode(blob, len, s + hl, b64 + 1, &n) != 0) {
		free(s);
		return MICA_ECRYPTO;
	}
	s[hl + n] = '\0';
	*out = s;
	return 0;
}

int kc_ciphertext_parse(const char *text, size_t len, uint32_t *version, uint8_t **blob,
			size_t *blob_len)
{
	size_t i = sizeof(PREFIX) - 1;
	uint64_t v = 0;
	*blob = NULL;
	*blob_len = 0;
	if (!text || len < i + 2 || memcmp(text, PREFIX, i) != 0)
		return MICA_EBADHEADER;
	if (text[i] < '1' || text[i] > '9')
		return MICA_EBADHEADER;
	for (; i < len && text[i] >= '0' && text[i] <= '9'; i++) {
		v = v * 10 + (uint64_t)(text[i] - '0');
		if (v > 0x7fffffff)
			return MICA_EBADHEADER;
	}
	if (i >= len || text[i] != ':')
		return MICA_EBADHEADER;
	i++;
	*version = (uint32_t)v;
	return mica_base64_decode_alloc(text + i, len - i, blob, blob_len);
}

int kc_op_encrypt(kc_service *s, const char *name, uint32_t version, const uint8_t *pt,
		  size_t pt_len, const char *ctx, size_t ctx_len, char **ciphertext,
		  uint32_t *used_version, mica_problem *why)
{
	uint8_t key[32], *env = NULL;
	size_t env_len = 0;
	struct kc_key_info info;
	int bits = 0, err;

	*ciphertext = NULL;
	if ((err = material(s, name, version, key, &bits, used_version, &info, why)) != 0)
		goto out;
	if (version && info.min_encryption && version < info.min_encryption) {
		err = fail(why, MICA_EDENIED, "version_below_minimum",
			   "version %u is below min_encryption_version %u", version,
			   info.min_encryption);
		goto out;
	}
	err = mica_envelope_seal(key, (size_t)bits / 8, name, *used_version, ctx, ctx_len, pt,
				 pt_len, &env, &env_len);
	if (err == MICA_ETOOBIG)
		fail(why, err, "plaintext_too_large", "plaintext too large");
	if (!err)
		err = format_versioned(*used_version, env, env_len, ciphertext);
out:
	mica_wipe(key, sizeof(key));
	free(env);
	return err;
}

int kc_op_decrypt(kc_service *s, const char *name, const char *ciphertext, const char *ctx,
		  size_t ctx_len, uint8_t **pt, size_t *pt_len, uint32_t *version,
		  mica_problem *why)
{
	uint8_t key[32], *blob = NULL;
	size_t blob_len = 0;
	struct mica_envelope env;
	struct kc_key_info info;
	uint32_t used;
	int bits = 0, err;

	*pt = NULL;
	*pt_len = 0;
	*version = 0;
	err = kc_ciphertext_parse(ciphertext, strlen(ciphertext), version, &blob, &blob_len);
	if (err == MICA_EBADHEADER) {
		fail(why, err, "bad_version_prefix", "ciphertext must start with kc:v<version>:");
		goto out;
	}
	if (err) {
		fail(why, err, "bad_base64", "the ciphertext after kc:v%u: is not valid base64",
		     *version);
		goto out;
	}
	if ((err = mica_envelope_parse(blob, blob_len, &env)) != 0) {
		fail(why, err, "malformed_ciphertext",
		     "the ciphertext is not a key center envelope: %s", mica_strerror(err));
		goto out;
	}
	if (env.key_version != *version || env.key_name_len != strlen(name) ||
	    memcmp(env.key_name, name, env.key_name_len) != 0) {
		err = fail(why, MICA_EAUTH, "wrong_key",
			   "the ciphertext was not made by version %u of key %s", *version, name);
		goto out;
	}
	if ((err = material(s, name, *version, key, &bits, &used, &info, why)) != 0)
		goto out;
	if (*version < info.min_decryption) {
		err = fail(why, MICA_EDENIED, "version_below_minimum",
			   "version %u is below min_decryption_version %u", *version,
			   info.min_decryption);
		goto out;
	}
	err = mica_envelope_open(key, (size_t)bits / 8, ctx, ctx_len, blob, blob_len, pt, pt_len);
	if (err == MICA_EAUTH)
		fail(why, err, "decryption_failed",
		     "the ciphertext does not decrypt under this context (wrong context or "
		     "tampered)");
out:
	mica_wipe(key, sizeof(key));
	free(blob);
	return err;
}

int kc_op_hmac(kc_service *s, const char *name, uint32_t version, const uint8_t *input,
	       size_t input_len, char **mac_out, uint32_t *used_version, mica_problem *why)
{
	uint8_t key[32], hkey[32], mac[32];
	char info_str[KC_NAME_MAX + 32];
	int bits = 0, err;

	*mac_out = NULL;
	if ((err = material(s, name, version, key, &bits, used_version, NULL, why)) != 0)
		goto out;
	/* A separate key for HMAC, so the same material never serves two
	 * algorithms. */
	int il = snprintf(info_str, sizeof(info_str), "mica-kc-hmac-v1:%s:%u", name, *used_version);
	if ((err = mica_hkdf_sha256(NULL, 0, key, (size_t)bits / 8, info_str, (size_t)il, hkey,
				    sizeof(hkey))) != 0 ||
	    (err = mica_hmac_sha256(hkey, sizeof(hkey), input, input_len, mac)) != 0)
		goto out;
	err = format_versioned(*used_version, mac, sizeof(mac), mac_out);
out:
	mica_wipe(key, sizeof(key));
	mica_wipe(hkey, sizeof(hkey));
	return err;
}
