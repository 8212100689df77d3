/* altcha.c - ALTCHA v1 proof-of-work challenges: creation (random salt with
 * an expiry, secret number, SHA-256 challenge, HMAC-SHA256 signature) and
 * verification of the base64 JSON payload the widget submits, with one
 * distinct fault per failure kind. The format is described in altcha.h.
 */
#include "account/altcha.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "crypto.h"

/* "<32 hex>?expires=<int64>&maxnumber=<int64>&scope=<64>&" fits, and a salt
 * of ours must pass the payload's salt limit. */
#define SALT_BUF 200
_Static_assert(SALT_BUF - 1 <= ACCT_ALTCHA_SALT_MAX, "our own salts must verify");
#define NUMBER_DIGITS 20

static const char *const fault_codes[] = {
	[ACCT_ALTCHA_OK] = "ok",
	[ACCT_ALTCHA_MALFORMED] = "malformed",
	[ACCT_ALTCHA_UNSUPPORTED_ALGORITHM] = "unsupported_algorithm",
	[ACCT_ALTCHA_BAD_SIGNATURE] = "bad_signature",
	[ACCT_ALTCHA_WRONG_SOLUTION] = "wrong_solution",
	[ACCT_ALTCHA_EXPIRED] = "expired",
	[ACCT_ALTCHA_WRONG_SCOPE] = "wrong_scope",
	[ACCT_ALTCHA_TOO_CHEAP] = "too_cheap",
};

const char *acct_altcha_fault_code(enum acct_altcha_fault fault)
{
	if ((unsigned)fault >= sizeof(fault_codes) / sizeof(fault_codes[0]))
		return "unknown";
	return fault_codes[fault];
}

/* SHA-256 of |salt| followed by the decimal |number|, the ALTCHA challenge. */
static int solution_digest(const char *salt, size_t salt_len, long long number,
			   uint8_t out[MICA_SHA256_LEN])
{
	char digits[NUMBER_DIGITS + 1];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned out_len = 0;
	int n = snprintf(digits, sizeof(digits), "%lld", number);
	int ok = ctx && n > 0 && EVP_DigestInit_ex(ctx, mica_md_sha256(), NULL) == 1 &&
		 EVP_DigestUpdate(ctx, salt, salt_len) == 1 &&
		 EVP_DigestUpdate(ctx, digits, (size_t)n) == 1 &&
		 EVP_DigestFinal_ex(ctx, out, &out_len) == 1 && out_len == MICA_SHA256_LEN;

	EVP_MD_CTX_free(ctx);
	mica_wipe(digits, sizeof(digits));
	if (!ok) {
		mica_wipe(out, MICA_SHA256_LEN);
		return MICA_ECRYPTO;
	}
	return 0;
}

/* A uniform random integer in [0, max] (rejection sampling, no modulo bias). */
static int random_upto(long long max, long long *out)
{
	uint64_t range = (uint64_t)max + 1, limit = UINT64_MAX - UINT64_MAX % range, r;

	do {
		int rc = mica_random(&r, sizeof(r));

		if (rc)
			return rc;
	} while (r >= limit);
	*out = (long long)(r % range);
	mica_wipe(&r, sizeof(r));
	return 0;
}

/* 1 to ACCT_ALTCHA_SCOPE_MAX characters of [0-9a-z]: nothing that could
 * end a salt parameter or start another. */
static bool scope_valid(const char *scope)
{
	size_t n = strnlen(scope, ACCT_ALTCHA_SCOPE_MAX + 1);

	if (n == 0 || n > ACCT_ALTCHA_SCOPE_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((scope[i] >= '0' && scope[i] <= '9') || (scope[i] >= 'a' && scope[i] <= 'z')))
			return false;
	return true;
}

int acct_altcha_create(const uint8_t *hmac_key, size_t key_len, long long maxnumber, int ttl_s,
		       int64_t now, const char *scope, json_t **challenge)
{
	uint8_t rnd[ACCT_ALTCHA_SALT_BYTES], digest[MICA_SHA256_LEN], mac[MICA_SHA256_LEN];
	char rnd_hex[2 * ACCT_ALTCHA_SALT_BYTES + 1], salt[SALT_BUF];
	char challenge_hex[ACCT_ALTCHA_HEX_LEN + 1], signature_hex[ACCT_ALTCHA_HEX_LEN + 1];
	long long number = 0;
	json_t *obj;
	int rc, n;

	if (!challenge)
		return MICA_EINVAL;
	*challenge = NULL;
	if (!hmac_key || key_len < ACCT_ALTCHA_MIN_KEY_LEN || maxnumber < 1 ||
	    maxnumber > ACCT_ALTCHA_MAXNUMBER_MAX || ttl_s < 1 || now < 0 ||
	    now > INT64_MAX - ttl_s || (scope && !scope_valid(scope)))
		return MICA_EINVAL;

	rc = mica_random(rnd, sizeof(rnd));
	if (rc)
		goto out;
	rc = mica_hex_encode(rnd, sizeof(rnd), rnd_hex, sizeof(rnd_hex));
	if (rc)
		goto out;
	n = snprintf(salt, sizeof(salt), "%s?expires=%lld&maxnumber=%lld&%s%s%s", rnd_hex,
		     (long long)(now + ttl_s), maxnumber, scope ? "scope=" : "", scope ? scope : "",
		     scope ? "&" : "");
	if (n < 0 || (size_t)n >= sizeof(salt)) {
		rc = MICA_EINVAL;
		goto out;
	}
	rc = random_upto(maxnumber, &number);
	if (rc)
		goto out;
	rc = solution_digest(salt, (size_t)n, number, digest);
	if (rc)
		goto out;
	rc = mica_hex_encode(digest, sizeof(digest), challenge_hex, sizeof(challenge_hex));
	if (rc)
		goto out;
	rc = mica_hmac_sha256(hmac_key, key_len, challenge_hex, ACCT_ALTCHA_HEX_LEN, mac);
	if (rc)
		goto out;
	rc = mica_hex_encode(mac, sizeof(mac), signature_hex, sizeof(signature_hex));
	if (rc)
		goto out;
	obj = json_pack("{s:s, s:s, s:I, s:s, s:s}", "algorithm", ACCT_ALTCHA_ALGORITHM,
			"challenge", challenge_hex, "maxnumber", (json_int_t)maxnumber, "salt",
			salt, "signature", signature_hex);
	if (!obj) {
		rc = MICA_ENOMEM;
		goto out;
	}
	*challenge = obj;
out:
	/* The number is the secret; the digest and salt lead straight to it. */
	mica_wipe(&number, sizeof(number));
	mica_wipe(rnd, sizeof(rnd));
	mica_wipe(digest, sizeof(digest));
	mica_wipe(mac, sizeof(mac));
	return rc;
}

/* ---- Verification -------------------------------------------------------- */

struct payload {
	const char *algorithm;
	const char *challenge; /* ACCT_ALTCHA_HEX_LEN lower-case hex digits */
	const char *salt;
	size_t salt_len;
	long long number;
	uint8_t challenge_bin[MICA_SHA256_LEN];
	uint8_t signature_bin[MICA_SHA256_LEN];
};

/* The string member |name| of |obj|, without embedded NULs, or NULL. */
static const char *member_string(json_t *obj, const char *name, size_t *len)
{
	json_t *s = json_object_get(obj, name);
	const char *text;

	if (!json_is_string(s))
		return NULL;
	text = json_string_value(s);
	*len = json_string_length(s);
	return strlen(text) == *len ? text : NULL;
}

/* Exactly ACCT_ALTCHA_HEX_LEN lower-case hex digits, decoded into |out|. */
static bool member_hex(json_t *obj, const char *name, const char **text, uint8_t *out)
{
	size_t len = 0, out_len = 0;
	const char *s = member_string(obj, name, &len);

	if (!s || len != ACCT_ALTCHA_HEX_LEN)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	if (mica_hex_decode(s, len, out, MICA_SHA256_LEN, &out_len) != 0 ||
	    out_len != MICA_SHA256_LEN)
		return false;
	*text = s;
	return true;
}

/* Fill |p| from the JSON object |obj|; false when anything is missing,
 * mistyped or out of range (borrowed strings point into |obj|). */
static bool parse_payload(json_t *obj, struct payload *p)
{
	json_t *number = json_object_get(obj, "number");
	const char *signature = NULL;
	size_t len = 0;

	if (!json_is_object(obj))
		return false;
	p->algorithm = member_string(obj, "algorithm", &len);
	p->salt = member_string(obj, "salt", &p->salt_len);
	if (!p->algorithm || !p->salt || p->salt_len == 0 || p->salt_len > ACCT_ALTCHA_SALT_MAX)
		return false;
	if (!member_hex(obj, "challenge", &p->challenge, p->challenge_bin) ||
	    !member_hex(obj, "signature", &signature, p->signature_bin))
		return false;
	if (!json_is_integer(number))
		return false;
	p->number = json_integer_value(number);
	return p->number >= 0 && p->number <= ACCT_ALTCHA_MAXNUMBER_MAX;
}

/* The value of parameter |key| (with its '=') in the salt's query part
 * ("<hex>?a=1&b=2&"): false when there is no query part or |key| does not
 * occur exactly once. */
static bool salt_param(const char *salt, size_t salt_len, const char *key, const char **val,
		       size_t *val_len)
{
	const char *q = memchr(salt, '?', salt_len), *end = salt + salt_len;
	size_t key_len = strlen(key);
	bool found = false;

	if (!q)
		return false;
	for (const char *p = q + 1; p < end;) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *stop = amp ? amp : end;

		if ((size_t)(stop - p) >= key_len && memcmp(p, key, key_len) == 0) {
			if (found)
				return false;
			*val = p + key_len;
			*val_len = (size_t)(stop - *val);
			found = true;
		}
		p = amp ? amp + 1 : end;
	}
	return found;
}

/* Salt parameter |key| as a non-empty decimal without overflow. */
static bool salt_decimal(const char *salt, size_t salt_len, const char *key, int64_t *out)
{
	const char *d = NULL;
	size_t n = 0;
	int64_t v = 0;

	if (!salt_param(salt, salt_len, key, &d, &n) || n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (d[i] < '0' || d[i] > '9' || v > (INT64_MAX - (d[i] - '0')) / 10)
			return false;
		v = v * 10 + (d[i] - '0');
	}
	*out = v;
	return true;
}

/* Whether the salt carries what |want| asks for; the fault otherwise. */
static enum acct_altcha_fault salt_wanted(const struct payload *p,
					  const struct acct_altcha_want *want)
{
	const char *scope = NULL;
	size_t scope_len = 0;
	int64_t cost = 0;

	if (want->scope &&
	    (!salt_param(p->salt, p->salt_len, "scope=", &scope, &scope_len) ||
	     scope_len != strlen(want->scope) || memcmp(scope, want->scope, scope_len) != 0))
		return ACCT_ALTCHA_WRONG_SCOPE;
	if (!salt_decimal(p->salt, p->salt_len, "maxnumber=", &cost) || cost < want->min_cost)
		return ACCT_ALTCHA_TOO_CHEAP;
	return ACCT_ALTCHA_OK;
}

static int verdict(struct acct_altcha_verdict *v, enum acct_altcha_fault fault)
{
	v->fault = fault;
	v->code = fault_codes[fault];
	return fault == ACCT_ALTCHA_OK ? 0 : MICA_EAUTH;
}

/* The checks after decoding, in the documented order. */
static int check_payload(const uint8_t *hmac_key, size_t key_len, const struct payload *p,
			 int64_t now, const struct acct_altcha_want *want,
			 struct acct_altcha_verdict *v)
{
	uint8_t mac[MICA_SHA256_LEN], digest[MICA_SHA256_LEN];
	int64_t expires = 0;
	int rc;

	if (strcmp(p->algorithm, ACCT_ALTCHA_ALGORITHM) != 0)
		return verdict(v, ACCT_ALTCHA_UNSUPPORTED_ALGORITHM);
	rc = mica_hmac_sha256(hmac_key, key_len, p->challenge, ACCT_ALTCHA_HEX_LEN, mac);
	if (rc)
		goto out;
	if (!mica_ct_equal(mac, p->signature_bin, sizeof(mac))) {
		rc = verdict(v, ACCT_ALTCHA_BAD_SIGNATURE);
		goto out;
	}
	rc = solution_digest(p->salt, p->salt_len, p->number, digest);
	if (rc)
		goto out;
	if (!mica_ct_equal(digest, p->challenge_bin, sizeof(digest))) {
		rc = verdict(v, ACCT_ALTCHA_WRONG_SOLUTION);
		goto out;
	}
	if (!salt_decimal(p->salt, p->salt_len, "expires=", &expires) || now > expires) {
		rc = verdict(v, ACCT_ALTCHA_EXPIRED);
		goto out;
	}
	rc = verdict(v, want ? salt_wanted(p, want) : ACCT_ALTCHA_OK);
	if (rc == 0)
		v->expires = expires;
out:
	mica_wipe(mac, sizeof(mac));
	mica_wipe(digest, sizeof(digest));
	return rc;
}

int acct_altcha_verify(const uint8_t *hmac_key, size_t key_len, const char *payload_b64,
		       int64_t now, const struct acct_altcha_want *want,
		       char challenge_out[ACCT_ALTCHA_HEX_LEN + 1], struct acct_altcha_verdict *v)
{
	struct payload p;
	uint8_t *json_text = NULL;
	size_t b64_len, json_len = 0;
	json_t *obj = NULL;
	int rc;

	if (v) {
		memset(v, 0, sizeof(*v));
		verdict(v, ACCT_ALTCHA_MALFORMED);
	}
	if (challenge_out)
		challenge_out[0] = '\0';
	if (!v || !challenge_out || !hmac_key || key_len < ACCT_ALTCHA_MIN_KEY_LEN || !payload_b64)
		return MICA_EINVAL;
	memset(&p, 0, sizeof(p));

	b64_len = strnlen(payload_b64, ACCT_ALTCHA_PAYLOAD_MAX + 1);
	if (b64_len > ACCT_ALTCHA_PAYLOAD_MAX)
		return verdict(v, ACCT_ALTCHA_MALFORMED);
	rc = mica_base64_decode_alloc(payload_b64, b64_len, &json_text, &json_len);
	if (rc == MICA_ENOMEM)
		return rc;
	if (rc)
		return verdict(v, ACCT_ALTCHA_MALFORMED);
	obj = json_loadb((const char *)json_text, json_len, JSON_REJECT_DUPLICATES, NULL);
	if (!obj || !parse_payload(obj, &p)) {
		rc = verdict(v, ACCT_ALTCHA_MALFORMED);
		goto out;
	}
	rc = check_payload(hmac_key, key_len, &p, now, want, v);
	if (rc == 0)
		memcpy(challenge_out, p.challenge, ACCT_ALTCHA_HEX_LEN + 1);
	else if (rc != MICA_EAUTH)
		verdict(v, ACCT_ALTCHA_MALFORMED); /* could not check: never "ok" */
out:
	json_decref(obj);
	free(json_text);
	return rc;
}

long long acct_altcha_maxnumber_for(long long base, unsigned failures, long long cap)
{
	long long v = base < 1 ? 1 : base;

	if (cap > ACCT_ALTCHA_MAXNUMBER_MAX)
		cap = ACCT_ALTCHA_MAXNUMBER_MAX;
	if (cap < 1)
		cap = 1;
	for (unsigned i = 0; i < failures && v < cap; i++)
		v *= 2;
	return v < cap ? v : cap;
}
