/* tlsrec.c - TLS 1.3 record protection for one direction: the key schedule
 * steps that follow a traffic secret (key, IV, KeyUpdate) through OpenSSL's
 * HKDF, and sealing and opening of records through OpenSSL's AEADs.
 * tlsrec.h is the contract.
 */
#include "tlsrec.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/kdf.h>

#include "crypto.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static EVP_KDF *hkdf;
static EVP_CIPHER *aes128gcm, *aes256gcm, *chacha;

static void init_once(void)
{
	hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	aes128gcm = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
	aes256gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	chacha = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
}

static int ready(void)
{
	return pthread_once(&once, init_once) == 0 && hkdf && aes128gcm && aes256gcm && chacha;
}

int mica_tlsrec_suite_ok(uint16_t suite)
{
	return suite == MICA_TLSREC_AES_128_GCM_SHA256 || suite == MICA_TLSREC_AES_256_GCM_SHA384 ||
	       suite == MICA_TLSREC_CHACHA20_POLY1305_SHA256;
}

size_t mica_tlsrec_secret_len(uint16_t suite)
{
	if (!mica_tlsrec_suite_ok(suite))
		return 0;
	return suite == MICA_TLSREC_AES_256_GCM_SHA384 ? 48 : 32;
}

static size_t key_len(uint16_t suite)
{
	return suite == MICA_TLSREC_AES_128_GCM_SHA256 ? 16 : 32;
}

static const EVP_CIPHER *cipher(uint16_t suite)
{
	switch (suite) {
	case MICA_TLSREC_AES_128_GCM_SHA256:
		return aes128gcm;
	case MICA_TLSREC_AES_256_GCM_SHA384:
		return aes256gcm;
	default:
		return chacha;
	}
}

int mica_tlsrec_expand_label(uint16_t suite, const uint8_t *secret, size_t secret_len,
			     const char *label, uint8_t *out, size_t out_len)
{
	size_t hlen = mica_tlsrec_secret_len(suite);
	size_t llen = label ? strlen(label) : 0;
	if (!hlen || !secret || secret_len != hlen || !out || out_len == 0 || out_len > 255 ||
	    llen == 0 || llen > 249)
		return MICA_EINVAL;
	if (!ready())
		return MICA_ECRYPTO;
	/* HkdfLabel: uint16 length, opaque label<7..255> ("tls13 " || label),
	 * opaque context<0..255> (empty here). */
	uint8_t info[2 + 1 + 255 + 1];
	size_t n = 0;
	info[n++] = (uint8_t)(out_len >> 8);
	info[n++] = (uint8_t)out_len;
	info[n++] = (uint8_t)(6 + llen);
	memcpy(info + n, "tls13 ", 6);
	n += 6;
	memcpy(info + n, label, llen);
	n += llen;
	info[n++] = 0;
	int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
		OSSL_PARAM_construct_utf8_string(
			OSSL_KDF_PARAM_DIGEST, hlen == 48 ? (char *)"SHA384" : (char *)"SHA256", 0),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secret_len),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n),
		OSSL_PARAM_construct_end()};
	EVP_KDF_CTX *k = EVP_KDF_CTX_new(hkdf);
	int r = k && EVP_KDF_derive(k, out, out_len, params) == 1 ? 0 : MICA_ECRYPTO;
	EVP_KDF_CTX_free(k);
	return r;
}

/* Key and IV of the secret in |d|. */
static int derive_key_iv(mica_tlsrec_dir *d)
{
	int r = mica_tlsrec_expand_label(d->suite, d->secret, d->secret_len, "key", d->key,
					 key_len(d->suite));
	if (r == 0)
		r = mica_tlsrec_expand_label(d->suite, d->secret, d->secret_len, "iv", d->iv,
					     MICA_TLSREC_IV_LEN);
	return r;
}

int mica_tlsrec_init(mica_tlsrec_dir *d, uint16_t suite, const uint8_t *secret, size_t len,
		     uint64_t seq)
{
	if (!d)
		return MICA_EINVAL;
	mica_tlsrec_wipe(d);
	if (!secret || !mica_tlsrec_suite_ok(suite) || len != mica_tlsrec_secret_len(suite))
		return MICA_EINVAL;
	d->suite = suite;
	d->secret_len = (uint8_t)len;
	memcpy(d->secret, secret, len);
	d->seq = seq;
	int r = derive_key_iv(d);
	if (r != 0)
		mica_tlsrec_wipe(d);
	return r;
}

int mica_tlsrec_update(mica_tlsrec_dir *d)
{
	if (!d || !mica_tlsrec_suite_ok(d->suite))
		return MICA_EINVAL;
	uint8_t next[MICA_TLSREC_SECRET_MAX];
	int r = mica_tlsrec_expand_label(d->suite, d->secret, d->secret_len, "traffic upd", next,
					 d->secret_len);
	if (r != 0)
		goto out;
	memcpy(d->secret, next, d->secret_len);
	d->seq = 0;
	r = derive_key_iv(d);
out:
	mica_wipe(next, sizeof(next));
	if (r != 0)
		mica_tlsrec_wipe(d);
	return r;
}

/* The per-record nonce: the IV XOR the sequence number, left-padded. */
static void nonce(const mica_tlsrec_dir *d, uint8_t n[MICA_TLSREC_IV_LEN])
{
	memcpy(n, d->iv, MICA_TLSREC_IV_LEN);
	for (int i = 0; i < 8; i++)
		n[MICA_TLSREC_IV_LEN - 1 - i] ^= (uint8_t)(d->seq >> (8 * i));
}

int mica_tlsrec_seal(mica_tlsrec_dir *d, EVP_CIPHER_CTX *ctx, uint8_t type, const uint8_t *content,
		     size_t len, uint8_t *out)
{
	if (!d || !ctx || (!content && len > 0) || !out || len > MICA_TLSREC_CONTENT_MAX ||
	    !mica_tlsrec_suite_ok(d->suite))
		return MICA_EINVAL;
	if (d->seq == UINT64_MAX)
		return MICA_ERANGE;
	if (!ready())
		return MICA_ECRYPTO;
	size_t clen = len + 1 + MICA_TLSREC_TAG_LEN;
	uint8_t *hdr = out, *body = out + MICA_TLSREC_HEADER_LEN;
	hdr[0] = MICA_TLSREC_APPLICATION_DATA;
	hdr[1] = 3;
	hdr[2] = 3;
	hdr[3] = (uint8_t)(clen >> 8);
	hdr[4] = (uint8_t)clen;
	uint8_t n[MICA_TLSREC_IV_LEN];
	nonce(d, n);
	int outl = 0, tmpl = 0, r = MICA_ECRYPTO;
	if (EVP_CipherInit_ex2(ctx, cipher(d->suite), d->key, n, 1, NULL) != 1 ||
	    EVP_CipherUpdate(ctx, NULL, &outl, hdr, MICA_TLSREC_HEADER_LEN) != 1)
		goto out;
	if (len > 0 && EVP_CipherUpdate(ctx, body, &outl, content, (int)len) != 1)
		goto out;
	if (EVP_CipherUpdate(ctx, body + len, &tmpl, &type, 1) != 1 ||
	    EVP_CipherFinal_ex(ctx, body + len + 1, &tmpl) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, MICA_TLSREC_TAG_LEN, body + len + 1) !=
		    1)
		goto out;
	d->seq++;
	r = 0;
out:
	mica_wipe(n, sizeof(n));
	return r;
}

int mica_tlsrec_header(const uint8_t *hdr, size_t *total)
{
	if (!hdr || !total)
		return MICA_EINVAL;
	size_t clen = (size_t)hdr[3] << 8 | hdr[4];
	if (hdr[0] != MICA_TLSREC_APPLICATION_DATA || hdr[1] != 3 || hdr[2] != 3 ||
	    clen < 1 + MICA_TLSREC_TAG_LEN || clen > MICA_TLSREC_CIPHERTEXT_MAX)
		return MICA_EBADHEADER;
	*total = MICA_TLSREC_HEADER_LEN + clen;
	return 0;
}

int mica_tlsrec_open(mica_tlsrec_dir *d, EVP_CIPHER_CTX *ctx, const uint8_t *rec, size_t len,
		     uint8_t *out, size_t *content_len, uint8_t *type)
{
	if (!d || !ctx || !rec || !out || !content_len || !type || !mica_tlsrec_suite_ok(d->suite))
		return MICA_EINVAL;
	size_t total;
	if (len < MICA_TLSREC_HEADER_LEN || mica_tlsrec_header(rec, &total) != 0 || total != len)
		return MICA_EBADHEADER;
	if (d->seq == UINT64_MAX)
		return MICA_ERANGE;
	if (!ready())
		return MICA_ECRYPTO;
	size_t inner = len - MICA_TLSREC_HEADER_LEN - MICA_TLSREC_TAG_LEN;
	const uint8_t *body = rec + MICA_TLSREC_HEADER_LEN;
	uint8_t n[MICA_TLSREC_IV_LEN];
	nonce(d, n);
	int outl = 0, tmpl = 0, r = MICA_ECRYPTO;
	if (EVP_CipherInit_ex2(ctx, cipher(d->suite), d->key, n, 0, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, MICA_TLSREC_TAG_LEN,
				(void *)(body + inner)) != 1 ||
	    EVP_CipherUpdate(ctx, NULL, &outl, rec, MICA_TLSREC_HEADER_LEN) != 1 ||
	    EVP_CipherUpdate(ctx, out, &outl, body, (int)inner) != 1)
		goto out;
	if (EVP_CipherFinal_ex(ctx, out + outl, &tmpl) != 1) {
		r = MICA_EAUTH;
		goto out;
	}
	/* The content type is the last non-zero byte; zeros after it are
	 * padding (section 5.4). */
	size_t i = inner;
	while (i > 0 && out[i - 1] == 0)
		i--;
	if (i == 0) {
		r = MICA_ETRUNCATED;
		goto out;
	}
	if (i - 1 > MICA_TLSREC_CONTENT_MAX) {
		r = MICA_ETOOBIG;
		goto out;
	}
	*type = out[i - 1];
	*content_len = i - 1;
	d->seq++;
	r = 0;
out:
	mica_wipe(n, sizeof(n));
	return r;
}

static void reader_drop(mica_tlsrec_reader *r)
{
	free(r->part);
	r->part = NULL;
	r->part_len = r->part_need = 0;
	r->part_done = 0;
}

int mica_tlsrec_next(mica_tlsrec_reader *r, const uint8_t **in, size_t *in_len, const uint8_t **rec,
		     size_t *rec_len)
{
	if (!r || !in || !in_len || (!*in && *in_len) || !rec || !rec_len)
		return MICA_EINVAL;
	if (r->part_done)
		reader_drop(r);
	size_t total;
	if (!r->part) {
		if (r->hdr_len == 0 && *in_len >= MICA_TLSREC_HEADER_LEN) {
			if (mica_tlsrec_header(*in, &total) != 0)
				return MICA_EBADHEADER;
			if (*in_len >= total) {
				*rec = *in;
				*rec_len = total;
				*in += total;
				*in_len -= total;
				return 1;
			}
		}
		while (r->hdr_len<MICA_TLSREC_HEADER_LEN && * in_len> 0) {
			r->hdr[r->hdr_len++] = **in;
			(*in)++;
			(*in_len)--;
		}
		if (r->hdr_len < MICA_TLSREC_HEADER_LEN)
			return 0;
		if (mica_tlsrec_header(r->hdr, &total) != 0)
			return MICA_EBADHEADER;
		r->part = malloc(total);
		if (!r->part)
			return MICA_ENOMEM;
		memcpy(r->part, r->hdr, MICA_TLSREC_HEADER_LEN);
		r->part_len = MICA_TLSREC_HEADER_LEN;
		r->part_need = (uint32_t)total;
		r->hdr_len = 0;
	}
	size_t take = r->part_need - r->part_len;
	if (take > *in_len)
		take = *in_len;
	if (take > 0)
		memcpy(r->part + r->part_len, *in, take);
	r->part_len += (uint32_t)take;
	*in += take;
	*in_len -= take;
	if (r->part_len < r->part_need)
		return 0;
	r->part_done = 1;
	*rec = r->part;
	*rec_len = r->part_need;
	return 1;
}

void mica_tlsrec_reader_free(mica_tlsrec_reader *r)
{
	if (!r)
		return;
	reader_drop(r);
	memset(r, 0, sizeof(*r));
}

void mica_tlsrec_wipe(mica_tlsrec_dir *d)
{
	if (d)
		mica_wipe(d, sizeof(*d));
}
