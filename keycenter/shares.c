/* shares.c - the unseal secret split into officers' shares with Shamir's
 * scheme (libgfshare does the GF(2^8) arithmetic), their one-line text form
 * with a checksum, and the token PINs derived from the secret. */
#include "keycenter/shares.h"

#include <ctype.h>
#include <libgfshare.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "crypto.h"

#define PREFIX "mks1-"
#define PREFIX_LEN 5
#define SET_LABEL "mica-keycenter-unseal-set-v1"
#define CHECK_LEN 4

/* libgfshare draws the random polynomial coefficients through this hook,
 * and gfshare_ctx_free() scrambles a context with it too (so it must be set
 * before combining as well; it is NULL by default in libgfshare 2.0.0). A failure of the
 * CSPRNG aborts: a share made from predictable coefficients leaks the
 * secret, and there is no way to report it through this interface. */
static void fill_rand(unsigned char *buf, unsigned int n)
{
	if (mica_random(buf, n) != 0)
		abort();
}

int kc_shares_set_id(const uint8_t secret[KC_SHARE_SECRET_LEN], uint8_t id[KC_SHARE_SET_ID_LEN])
{
	uint8_t mac[32];
	int rc = mica_hmac_sha256(secret, KC_SHARE_SECRET_LEN, SET_LABEL, sizeof(SET_LABEL) - 1,
				  mac);
	if (rc == 0)
		memcpy(id, mac, KC_SHARE_SET_ID_LEN);
	mica_wipe(mac, sizeof(mac));
	return rc;
}

/* The checksum of the first |len| characters of |text| (lower case). */
static int checksum(const char *text, size_t len, uint8_t out[CHECK_LEN])
{
	uint8_t md[32];
	unsigned int mdlen = 0;
	if (EVP_Digest(text, len, md, &mdlen, mica_md_sha256(), NULL) != 1 || mdlen != 32)
		return MICA_ECRYPTO;
	memcpy(out, md, CHECK_LEN);
	return 0;
}

static int format_share(const struct kc_share *sh, char out[KC_SHARE_TEXT_LEN + 1])
{
	char set_hex[2 * KC_SHARE_SET_ID_LEN + 1], y_hex[2 * KC_SHARE_SECRET_LEN + 1];
	char check_hex[2 * CHECK_LEN + 1];
	uint8_t check[CHECK_LEN];
	int n, rc;

	if ((rc = mica_hex_encode(sh->set_id, sizeof(sh->set_id), set_hex, sizeof(set_hex))) != 0 ||
	    (rc = mica_hex_encode(sh->y, sizeof(sh->y), y_hex, sizeof(y_hex))) != 0)
		goto out;
	n = snprintf(out, KC_SHARE_TEXT_LEN + 1, PREFIX "%02x%02x-%s-%s-", sh->threshold, sh->index,
		     set_hex, y_hex);
	if ((rc = checksum(out, (size_t)n, check)) != 0 ||
	    (rc = mica_hex_encode(check, sizeof(check), check_hex, sizeof(check_hex))) != 0)
		goto out;
	memcpy(out + n, check_hex, sizeof(check_hex));
out:
	mica_wipe(y_hex, sizeof(y_hex));
	return rc;
}

int kc_shares_split(const uint8_t secret[KC_SHARE_SECRET_LEN], unsigned n, unsigned k,
		    char (*texts)[KC_SHARE_TEXT_LEN + 1])
{
	unsigned char xs[KC_SHARES_MAX], buf[KC_SHARE_SECRET_LEN];
	struct kc_share sh;
	gfshare_ctx *ctx = NULL;
	int rc = 0;

	if (!secret || !texts || n < 2 || n > KC_SHARES_MAX || k < 2 || k > n)
		return MICA_EINVAL;
	memset(&sh, 0, sizeof(sh));
	sh.threshold = (uint8_t)k;
	if ((rc = kc_shares_set_id(secret, sh.set_id)) != 0)
		return rc;
	for (unsigned i = 0; i < n; i++)
		xs[i] = (unsigned char)(i + 1);
	gfshare_fill_rand = fill_rand;
	ctx = gfshare_ctx_init_enc(xs, n, (unsigned char)k, KC_SHARE_SECRET_LEN);
	if (!ctx)
		return MICA_ENOMEM;
	memcpy(buf, secret, sizeof(buf));
	gfshare_ctx_enc_setsecret(ctx, buf);
	for (unsigned i = 0; i < n && rc == 0; i++) {
		gfshare_ctx_enc_getshare(ctx, (unsigned char)i, sh.y);
		sh.index = xs[i];
		rc = format_share(&sh, texts[i]);
	}
	gfshare_ctx_free(ctx); /* overwrites the coefficients before freeing */
	mica_wipe(buf, sizeof(buf));
	mica_wipe(&sh, sizeof(sh));
	if (rc)
		mica_wipe(texts, (size_t)n * sizeof(texts[0]));
	return rc;
}

static int hex_field(const char *p, size_t digits, uint8_t *out)
{
	size_t got = 0;
	if (mica_hex_decode(p, digits, out, digits / 2, &got) != 0 || got != digits / 2)
		return MICA_EBADENCODING;
	return 0;
}

int kc_share_parse(const char *text, struct kc_share *out)
{
	char c[KC_SHARE_TEXT_LEN + 1];
	uint8_t kx[2], check[CHECK_LEN], want[CHECK_LEN];
	size_t len = 0;
	int rc;

	if (!text || !out)
		return MICA_EINVAL;
	memset(out, 0, sizeof(*out));
	/* Canonical form: no blanks, lower case. */
	for (const char *p = text; *p; p++) {
		if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
			continue;
		if (len == KC_SHARE_TEXT_LEN) {
			rc = MICA_EBADENCODING;
			goto out;
		}
		c[len++] = (char)tolower((unsigned char)*p);
	}
	c[len] = '\0';
	if (len < PREFIX_LEN || memcmp(c, PREFIX, PREFIX_LEN) != 0) {
		rc = len >= 3 && memcmp(c, "mks", 3) == 0 ? MICA_EBADVERSION : MICA_EBADENCODING;
		goto out;
	}
	rc = MICA_EBADENCODING;
	if (len != KC_SHARE_TEXT_LEN || c[9] != '-' || c[26] != '-' || c[91] != '-')
		goto out;
	if (hex_field(c + 5, 4, kx) || hex_field(c + 10, 16, out->set_id) ||
	    hex_field(c + 27, 64, out->y) || hex_field(c + 92, 8, check))
		goto out;
	out->threshold = kx[0];
	out->index = kx[1];
	if (out->threshold < 2 || out->index == 0)
		goto out;
	if ((rc = checksum(c, 92, want)) != 0)
		goto out;
	rc = mica_ct_equal(want, check, CHECK_LEN) ? 0 : MICA_ECHECKSUM;
out:
	mica_wipe(c, sizeof(c));
	if (rc)
		mica_wipe(out, sizeof(*out));
	return rc;
}

int kc_shares_combine(const struct kc_share *shares, unsigned n,
		      uint8_t secret[KC_SHARE_SECRET_LEN])
{
	unsigned char xs[255];
	uint8_t id[KC_SHARE_SET_ID_LEN], y[KC_SHARE_SECRET_LEN];
	gfshare_ctx *ctx;
	unsigned k;
	int rc = 0;

	if (!shares || !secret || n == 0 || n > 255)
		return MICA_EINVAL;
	k = shares[0].threshold;
	if (n < k)
		return MICA_EINVAL;
	for (unsigned i = 0; i < n; i++) {
		if (shares[i].threshold != k || shares[i].index == 0 ||
		    memcmp(shares[i].set_id, shares[0].set_id, KC_SHARE_SET_ID_LEN) != 0)
			return MICA_EINVAL;
		for (unsigned j = 0; j < i; j++)
			if (shares[j].index == shares[i].index)
				return MICA_EINVAL;
		xs[i] = shares[i].index;
	}
	gfshare_fill_rand = fill_rand;
	/* Exactly k shares: more add nothing, and all must lie on the one
	 * polynomial for the set id check below to vouch for each. */
	ctx = gfshare_ctx_init_dec(xs, k, KC_SHARE_SECRET_LEN);
	if (!ctx)
		return MICA_ENOMEM;
	for (unsigned i = 0; i < k; i++) {
		memcpy(y, shares[i].y, sizeof(y));
		gfshare_ctx_dec_giveshare(ctx, (unsigned char)i, y);
	}
	gfshare_ctx_dec_extract(ctx, secret);
	gfshare_ctx_free(ctx);
	mica_wipe(y, sizeof(y));
	if ((rc = kc_shares_set_id(secret, id)) == 0 &&
	    !mica_ct_equal(id, shares[0].set_id, KC_SHARE_SET_ID_LEN))
		rc = MICA_EAUTH;
	if (rc)
		mica_wipe(secret, KC_SHARE_SECRET_LEN);
	return rc;
}

int kc_shares_pins(const uint8_t secret[KC_SHARE_SECRET_LEN], char user_pin[KC_SHARE_PIN_LEN + 1],
		   char so_pin[KC_SHARE_PIN_LEN + 1])
{
	static const char user_info[] = "mica-keycenter-user-pin-v1";
	static const char so_info[] = "mica-keycenter-so-pin-v1";
	uint8_t u[32], s[32];
	int rc;

	if ((rc = mica_hkdf_sha256(NULL, 0, secret, KC_SHARE_SECRET_LEN, user_info,
				   sizeof(user_info) - 1, u, sizeof(u))) != 0 ||
	    (rc = mica_hkdf_sha256(NULL, 0, secret, KC_SHARE_SECRET_LEN, so_info,
				   sizeof(so_info) - 1, s, sizeof(s))) != 0 ||
	    (rc = mica_hex_encode(u, sizeof(u), user_pin, KC_SHARE_PIN_LEN + 1)) != 0 ||
	    (rc = mica_hex_encode(s, sizeof(s), so_pin, KC_SHARE_PIN_LEN + 1)) != 0)
		rc = rc == MICA_ECRYPTO ? rc : MICA_ECRYPTO;
	mica_wipe(u, sizeof(u));
	mica_wipe(s, sizeof(s));
	return rc;
}
