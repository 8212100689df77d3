/* crypto.c - libmica's cryptography on top of OpenSSL 3: the CSPRNG, the
 * versioned AES-GCM envelope (format in crypto.h), HKDF-SHA256 and
 * HMAC-SHA256 through EVP_KDF / EVP_MAC, strict branch-free base64, base64url
 * and hex codecs, constant-time comparison and zeroization.
 */
#include "crypto.h"

#include <jansson.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

/* OpenSSL length arguments are int; larger buffers go through in chunks. */
#define OSSL_CHUNK ((size_t)1 << 30)

/* ---- Fetched algorithms --------------------------------------------------- */

/* OpenSSL 3 resolves an algorithm in the provider store (locks, a hash
 * lookup, a reference count) on every implicit fetch: EVP_sha256() or
 * EVP_aes_256_gcm() handed to an init function, EVP_MAC_fetch(), the digest
 * name of an HMAC. The hot paths here fetch each algorithm once per process
 * instead. The objects are never freed: they live as long as the default
 * library context, and freeing them at exit would race threads still
 * running. A failed fetch stays NULL and the functions using it return
 * MICA_ECRYPTO. */
static struct {
	EVP_MD *sha256;
	EVP_CIPHER *aes128_gcm, *aes256_gcm;
	EVP_KDF *hkdf;
	EVP_MAC *hmac;
	/* HMAC with its digest set and no key: mica_hmac_sha256() duplicates
	 * it, so the digest is not looked up by name per call. */
	EVP_MAC_CTX *hmac_sha256;
} algs;
static pthread_once_t algs_once = PTHREAD_ONCE_INIT;

static void algs_fetch(void)
{
	static char digest[] = "SHA256";
	OSSL_PARAM params[2];

	algs.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	algs.aes128_gcm = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
	algs.aes256_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	algs.hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	algs.hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	if (algs.hmac)
		algs.hmac_sha256 = EVP_MAC_CTX_new(algs.hmac);
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0);
	params[1] = OSSL_PARAM_construct_end();
	if (algs.hmac_sha256 && EVP_MAC_CTX_set_params(algs.hmac_sha256, params) != 1) {
		EVP_MAC_CTX_free(algs.hmac_sha256);
		algs.hmac_sha256 = NULL;
	}
}

static void algs_init(void)
{
	(void)pthread_once(&algs_once, algs_fetch);
}

const EVP_MD *mica_md_sha256(void)
{
	algs_init();
	return algs.sha256;
}

/* ---- Random, comparison, zeroization ------------------------------------ */

int mica_random(void *buf, size_t n)
{
	unsigned char *p = buf;
	size_t done = 0;

	if (!buf)
		return n ? MICA_EINVAL : 0;
	while (done < n) {
		size_t chunk = n - done < OSSL_CHUNK ? n - done : OSSL_CHUNK;

		if (RAND_bytes(p + done, (int)chunk) != 1) {
			mica_wipe(buf, n);
			return MICA_ECRYPTO;
		}
		done += chunk;
	}
	return 0;
}

bool mica_ct_equal(const void *a, const void *b, size_t n)
{
	if (n == 0)
		return true;
	return CRYPTO_memcmp(a, b, n) == 0;
}

void mica_wipe(void *p, size_t n)
{
	if (p && n)
		OPENSSL_cleanse(p, n);
}

/* ---- Memory that may hold secrets ----------------------------------------- */

static _Atomic(mica__free_hook_fn) free_hook;

void mica__free_hook_set(mica__free_hook_fn fn)
{
	atomic_store(&free_hook, fn);
}

void mica_free_wipe(void *p)
{
	mica__free_hook_fn hook;
	size_t n;
	if (!p)
		return;
	n = malloc_usable_size(p);
	if ((hook = atomic_load_explicit(&free_hook, memory_order_relaxed)) != NULL)
		hook(p, n, 0);
	mica_wipe(p, n);
	if (hook)
		hook(p, n, 1);
	free(p);
}

void *mica_realloc_wipe(void *p, size_t n)
{
	size_t old;
	void *q;
	if (n == 0)
		return NULL;
	if (!p)
		return malloc(n);
	if ((old = malloc_usable_size(p)) >= n)
		return p;
	if (!(q = malloc(n)))
		return NULL;
	memcpy(q, p, old);
	mica_free_wipe(p);
	return q;
}

/* jansson's allocator for the whole process (crypto.h). A constructor runs
 * before main() and before any thread, so no json_t is ever allocated or
 * freed while the allocator changes; and since its blocks are plain malloc
 * blocks, one allocated before this ran (none is) would still be freed
 * correctly. It lives in this file because every libmica program links it
 * (mica_wipe, mica_free_wipe), which a static archive needs for the
 * constructor to be linked at all. */
__attribute__((constructor)) static void json_alloc_install(void)
{
	json_set_alloc_funcs(malloc, mica_free_wipe);
}

/* ---- AEAD envelope ------------------------------------------------------- */

/* A bounds-checked cursor over untrusted bytes. */
struct reader {
	const uint8_t *buf;
	size_t len;
	size_t off;
};

/* Return the next |n| bytes and advance, or NULL if fewer remain. */
static const uint8_t *reader_take(struct reader *r, size_t n)
{
	const uint8_t *at;
	size_t end;

	if (__builtin_add_overflow(r->off, n, &end) || end > r->len)
		return NULL;
	at = r->buf + r->off;
	r->off = end;
	return at;
}

static uint32_t load_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void store_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Key names end up in logs and SQL lookups, so only visible ASCII. */
static bool key_name_valid(const uint8_t *name, size_t len)
{
	if (len == 0 || len > MICA_ENVELOPE_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (name[i] < 0x21 || name[i] > 0x7e)
			return false;
	return true;
}

/* NULL for a bad key length (or if OpenSSL lacks AES-GCM). */
static const EVP_CIPHER *gcm_cipher(size_t key_len)
{
	algs_init();
	if (key_len == 16)
		return algs.aes128_gcm;
	if (key_len == 32)
		return algs.aes256_gcm;
	return NULL;
}

/* Feed |n| bytes to a GCM context: AAD when |out| is NULL, else data. */
static int gcm_update(EVP_CIPHER_CTX *ctx, uint8_t *out, const uint8_t *in, size_t n)
{
	size_t done = 0;

	while (done < n) {
		size_t chunk = n - done < OSSL_CHUNK ? n - done : OSSL_CHUNK;
		uint8_t *dst = out ? out + done : NULL;
		int outl;

		if (EVP_CipherUpdate(ctx, dst, &outl, in + done, (int)chunk) != 1)
			return MICA_ECRYPTO;
		if ((size_t)outl != chunk)
			return MICA_ECRYPTO;
		done += chunk;
	}
	return 0;
}

size_t mica_envelope_size(size_t name_len, size_t pt_len)
{
	size_t total;

	if (name_len == 0 || name_len > MICA_ENVELOPE_NAME_MAX ||
	    pt_len > MICA_ENVELOPE_MAX_PLAINTEXT)
		return 0;
	/* Cannot overflow a 64-bit size_t; the check keeps 32-bit builds honest. */
	if (__builtin_add_overflow(MICA_ENVELOPE_OVERHEAD + name_len, pt_len, &total))
		return 0;
	return total;
}

int mica_envelope_seal(const uint8_t *key, size_t key_len, const char *key_name,
		       uint32_t key_version, const void *aad, size_t aad_len, const void *pt,
		       size_t pt_len, uint8_t **out, size_t *out_len)
{
	const EVP_CIPHER *cipher = gcm_cipher(key_len);
	EVP_CIPHER_CTX *ctx = NULL;
	uint8_t *buf = NULL, *w, *nonce;
	size_t name_len, header_len, total;
	int outl, rc;

	if (!out || !out_len)
		return MICA_EINVAL;
	*out = NULL;
	*out_len = 0;
	if (!key || !cipher || !key_name || (!aad && aad_len) || (!pt && pt_len))
		return MICA_EINVAL;
	name_len = strnlen(key_name, MICA_ENVELOPE_NAME_MAX + 1);
	if (!key_name_valid((const uint8_t *)key_name, name_len))
		return MICA_EINVAL;
	if (pt_len > MICA_ENVELOPE_MAX_PLAINTEXT)
		return MICA_ETOOBIG;
	total = mica_envelope_size(name_len, pt_len);
	if (total == 0)
		return MICA_ETOOBIG;
	header_len = total - pt_len - MICA_ENVELOPE_TAG_LEN;

	buf = malloc(total);
	if (!buf)
		return MICA_ENOMEM;
	w = buf;
	memcpy(w, MICA_ENVELOPE_MAGIC, MICA_ENVELOPE_MAGIC_LEN);
	w += MICA_ENVELOPE_MAGIC_LEN;
	*w++ = MICA_ENVELOPE_VERSION;
	*w++ = (uint8_t)name_len;
	memcpy(w, key_name, name_len);
	w += name_len;
	store_be32(w, key_version);
	w += 4;
	store_be32(w, (uint32_t)pt_len);
	w += 4;
	nonce = w;
	rc = mica_random(nonce, MICA_ENVELOPE_NONCE_LEN);
	if (rc)
		goto out;

	rc = MICA_ECRYPTO;
	ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		goto out;
	/* GCM's default IV length is the 96 bits we use. */
	if (EVP_EncryptInit_ex(ctx, cipher, NULL, key, nonce) != 1)
		goto out;
	rc = gcm_update(ctx, NULL, buf, header_len);
	if (rc == 0)
		rc = gcm_update(ctx, NULL, aad, aad_len);
	if (rc == 0)
		rc = gcm_update(ctx, buf + header_len, pt, pt_len);
	if (rc)
		goto out;
	rc = MICA_ECRYPTO;
	if (EVP_EncryptFinal_ex(ctx, buf + header_len + pt_len, &outl) != 1 || outl != 0)
		goto out;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, MICA_ENVELOPE_TAG_LEN,
				buf + header_len + pt_len) != 1)
		goto out;

	*out = buf;
	*out_len = total;
	buf = NULL;
	rc = 0;
out:
	/* Freeing the context cleanses the expanded key schedule. */
	EVP_CIPHER_CTX_free(ctx);
	free(buf);
	return rc;
}

static int envelope_decode(const uint8_t *in, size_t in_len, struct mica_envelope *env)
{
	struct reader r = {in, in_len, 0};
	const uint8_t *p;
	size_t magic_have = in_len < MICA_ENVELOPE_MAGIC_LEN ? in_len : MICA_ENVELOPE_MAGIC_LEN;
	uint32_t ct_len;

	/* A short input that starts like the magic is a cut envelope; anything
	 * else is not an envelope at all. */
	if (!mica_ct_equal(in, MICA_ENVELOPE_MAGIC, magic_have))
		return MICA_EBADHEADER;
	if (!reader_take(&r, MICA_ENVELOPE_MAGIC_LEN))
		return MICA_ETRUNCATED;

	if (!(p = reader_take(&r, 1)))
		return MICA_ETRUNCATED;
	if (*p != MICA_ENVELOPE_VERSION)
		return MICA_EBADVERSION;
	env->version = *p;

	if (!(p = reader_take(&r, 1)))
		return MICA_ETRUNCATED;
	env->key_name_len = *p;
	if (env->key_name_len == 0)
		return MICA_EBADHEADER;
	if (!(p = reader_take(&r, env->key_name_len)))
		return MICA_ETRUNCATED;
	if (!key_name_valid(p, env->key_name_len))
		return MICA_EBADHEADER;
	env->key_name = (const char *)p;

	if (!(p = reader_take(&r, 4)))
		return MICA_ETRUNCATED;
	env->key_version = load_be32(p);
	if (!(p = reader_take(&r, 4)))
		return MICA_ETRUNCATED;
	ct_len = load_be32(p);
	if (!(env->nonce = reader_take(&r, MICA_ENVELOPE_NONCE_LEN)))
		return MICA_ETRUNCATED;
	env->header_len = r.off;

	if (!(env->ciphertext = reader_take(&r, ct_len)))
		return MICA_ETRUNCATED;
	env->ciphertext_len = ct_len;
	if (!(env->tag = reader_take(&r, MICA_ENVELOPE_TAG_LEN)))
		return MICA_ETRUNCATED;
	if (r.off != r.len)
		return MICA_EBADHEADER;
	return 0;
}

int mica_envelope_parse(const uint8_t *in, size_t in_len, struct mica_envelope *env)
{
	int rc;

	if (!env)
		return MICA_EINVAL;
	memset(env, 0, sizeof(*env));
	if (!in && in_len)
		return MICA_EINVAL;
	rc = envelope_decode(in, in_len, env);
	if (rc)
		memset(env, 0, sizeof(*env));
	return rc;
}

int mica_envelope_open(const uint8_t *key, size_t key_len, const void *aad, size_t aad_len,
		       const uint8_t *in, size_t in_len, uint8_t **pt, size_t *pt_len)
{
	const EVP_CIPHER *cipher = gcm_cipher(key_len);
	struct mica_envelope env;
	EVP_CIPHER_CTX *ctx = NULL;
	uint8_t *buf = NULL;
	uint8_t final_block[16];
	int outl, rc;

	if (!pt || !pt_len)
		return MICA_EINVAL;
	*pt = NULL;
	*pt_len = 0;
	if (!key || !cipher || (!aad && aad_len))
		return MICA_EINVAL;
	rc = mica_envelope_parse(in, in_len, &env);
	if (rc)
		return rc;

	buf = malloc(env.ciphertext_len ? env.ciphertext_len : 1);
	if (!buf)
		return MICA_ENOMEM;
	rc = MICA_ECRYPTO;
	ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		goto out;
	if (EVP_DecryptInit_ex(ctx, cipher, NULL, key, env.nonce) != 1)
		goto out;
	rc = gcm_update(ctx, NULL, in, env.header_len);
	if (rc == 0)
		rc = gcm_update(ctx, NULL, aad, aad_len);
	if (rc == 0)
		rc = gcm_update(ctx, buf, env.ciphertext, env.ciphertext_len);
	if (rc)
		goto out;
	rc = MICA_ECRYPTO;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, MICA_ENVELOPE_TAG_LEN,
				(void *)env.tag) != 1)
		goto out;
	/* The only way a correctly set-up GCM final fails is a tag mismatch. */
	if (EVP_DecryptFinal_ex(ctx, final_block, &outl) != 1) {
		rc = MICA_EAUTH;
		goto out;
	}

	*pt = buf;
	*pt_len = env.ciphertext_len;
	buf = NULL;
	rc = 0;
out:
	EVP_CIPHER_CTX_free(ctx);
	if (buf) {
		/* Never release plaintext that failed authentication. */
		mica_wipe(buf, env.ciphertext_len);
		free(buf);
	}
	return rc;
}

/* ---- Key derivation and MACs -------------------------------------------- */

/* OpenSSL treats a NULL key as "no key given", so empty inputs point here. */
static const uint8_t empty_input[1];

int mica_hkdf_sha256(const void *salt, size_t salt_len, const void *ikm, size_t ikm_len,
		     const void *info, size_t info_len, void *out, size_t out_len)
{
	static char digest[] = "SHA256";
	EVP_KDF_CTX *kctx = NULL;
	OSSL_PARAM params[5], *p = params;
	int rc = MICA_ECRYPTO;

	if (!out || out_len == 0 || out_len > MICA_HKDF_SHA256_MAX || (!salt && salt_len) ||
	    (!ikm && ikm_len) || (!info && info_len))
		return MICA_EINVAL;

	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
						 (void *)(ikm_len ? ikm : empty_input), ikm_len);
	/* An absent salt is HashLen zeros (RFC 5869 2.2), the same HMAC key
	 * as an empty one, so only a non-empty salt is passed. */
	if (salt_len)
		*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt,
							 salt_len);
	if (info_len)
		*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info,
							 info_len);
	*p = OSSL_PARAM_construct_end();

	algs_init();
	if (!algs.hkdf)
		goto out;
	kctx = EVP_KDF_CTX_new(algs.hkdf);
	if (!kctx)
		goto out;
	if (EVP_KDF_derive(kctx, out, out_len, params) != 1)
		goto out;
	rc = 0;
out:
	/* Freeing the context clears the IKM copy OpenSSL keeps. */
	EVP_KDF_CTX_free(kctx);
	if (rc)
		mica_wipe(out, out_len);
	return rc;
}

int mica_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
		     uint8_t out[MICA_SHA256_LEN])
{
	EVP_MAC_CTX *ctx = NULL;
	int rc = MICA_ECRYPTO;

	if (!out || (!key && key_len) || (!msg && msg_len))
		return MICA_EINVAL;
	algs_init();
	if (!algs.hmac_sha256)
		goto out;
	ctx = EVP_MAC_CTX_dup(algs.hmac_sha256);
	if (!ctx)
		goto out;
	rc = mica_hmac_sha256_keyed(ctx, key_len ? key : empty_input, key_len, msg, msg_len, out);
out:
	/* Freeing the context cleanses the padded key it holds. */
	EVP_MAC_CTX_free(ctx);
	if (rc)
		mica_wipe(out, MICA_SHA256_LEN);
	return rc;
}

EVP_MAC_CTX *mica_hmac_sha256_new(void)
{
	algs_init();
	return algs.hmac_sha256 ? EVP_MAC_CTX_dup(algs.hmac_sha256) : NULL;
}

int mica_hmac_sha256_keyed(EVP_MAC_CTX *ctx, const void *key, size_t key_len, const void *msg,
			   size_t msg_len, uint8_t out[MICA_SHA256_LEN])
{
	size_t outl = 0;
	int ok;

	if (!ctx || !out || (!key && key_len) || (!msg && msg_len))
		return MICA_EINVAL;
	if (key && !key_len)
		key = empty_input;
	/* OpenSSL reads a NULL key as "keep the key set before". */
	ok = EVP_MAC_init(ctx, key, key_len, NULL) == 1 &&
	     (msg_len == 0 || EVP_MAC_update(ctx, msg, msg_len) == 1) &&
	     EVP_MAC_final(ctx, out, &outl, MICA_SHA256_LEN) == 1 && outl == MICA_SHA256_LEN;
	if (!ok) {
		mica_wipe(out, MICA_SHA256_LEN);
		return MICA_ECRYPTO;
	}
	return 0;
}

/* ---- Encodings ----------------------------------------------------------- */

/* Branch-free comparisons of values in 0..255: 0xff when true, 0 when false.
 * The codecs below map between bytes and characters with these instead of
 * table lookups or branches, so secrets (keys in config files, tokens) do
 * not show through cache or branch timing. */
static unsigned ct_lt(unsigned a, unsigned b)
{
	return ((a - b) >> 8) & 0xff;
}

static unsigned ct_ge(unsigned a, unsigned b)
{
	return ct_lt(a, b) ^ 0xff;
}

static unsigned ct_eq(unsigned a, unsigned b)
{
	return (((a ^ b) - 1) >> 8) & 0xff;
}

static unsigned ct_in(unsigned c, unsigned lo, unsigned hi)
{
	return ct_ge(c, lo) & ct_ge(hi, c);
}

enum b64_alphabet { B64_STD, B64_URL };

/* The two alphabets differ only in the characters for 62 and 63. */
static unsigned b64_char62(enum b64_alphabet a)
{
	return a == B64_URL ? '-' : '+';
}

static unsigned b64_char63(enum b64_alphabet a)
{
	return a == B64_URL ? '_' : '/';
}

/* 6-bit value -> character. */
static char b64_encode6(unsigned x, enum b64_alphabet a)
{
	return (char)((ct_lt(x, 26) & (x + 'A')) | (ct_in(x, 26, 51) & (x - 26 + 'a')) |
		      (ct_in(x, 52, 61) & (x - 52 + '0')) | (ct_eq(x, 62) & b64_char62(a)) |
		      (ct_eq(x, 63) & b64_char63(a)));
}

/* Character -> 6-bit value, or 0xff if it is not in the alphabet. */
static unsigned b64_decode6(unsigned char ch, enum b64_alphabet a)
{
	unsigned c = ch;
	unsigned upper = ct_in(c, 'A', 'Z'), lower = ct_in(c, 'a', 'z');
	unsigned digit = ct_in(c, '0', '9');
	unsigned is62 = ct_eq(c, b64_char62(a)), is63 = ct_eq(c, b64_char63(a));
	unsigned v = (upper & (c - 'A')) | (lower & (c - 'a' + 26)) | (digit & (c - '0' + 52)) |
		     (is62 & 62) | (is63 & 63);

	return v | ((upper | lower | digit | is62 | is63) ^ 0xff);
}

static size_t b64_encoded_len(size_t n, enum b64_alphabet a)
{
	size_t groups = n / 3, rem = n % 3, tail;

	if (groups > (SIZE_MAX - 4) / 4)
		return SIZE_MAX;
	if (a == B64_STD)
		tail = rem ? 4 : 0;
	else
		tail = rem ? rem + 1 : 0;
	return groups * 4 + tail;
}

static void b64_encode_into(const uint8_t *in, size_t n, char *out, enum b64_alphabet a)
{
	size_t i = 0;

	for (; n - i >= 3; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

		*out++ = b64_encode6(v >> 18, a);
		*out++ = b64_encode6((v >> 12) & 63, a);
		*out++ = b64_encode6((v >> 6) & 63, a);
		*out++ = b64_encode6(v & 63, a);
	}
	if (n - i == 1) {
		*out++ = b64_encode6(in[i] >> 2, a);
		*out++ = b64_encode6((in[i] & 3) << 4, a);
		if (a == B64_STD) {
			*out++ = '=';
			*out++ = '=';
		}
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)in[i] << 8 | in[i + 1];

		*out++ = b64_encode6(v >> 10, a);
		*out++ = b64_encode6((v >> 4) & 63, a);
		*out++ = b64_encode6((v << 2) & 63, a);
		if (a == B64_STD)
			*out++ = '=';
	}
	*out = '\0';
}

/* Check the shape of |in| (length and padding) and compute the number of
 * data characters and the exact decoded length. Characters themselves are
 * checked while decoding. */
static int b64_measure(const char *in, size_t in_len, enum b64_alphabet a, size_t *data_chars,
		       size_t *dec_len)
{
	size_t data = in_len, rem;

	if (a == B64_STD) {
		if (in_len % 4)
			return MICA_EBADENCODING;
		/* At most two '=' and only at the end; any other '=' is left
		 * among the data characters, where it is an invalid character. */
		if (in_len && in[in_len - 1] == '=') {
			data--;
			if (in[in_len - 2] == '=')
				data--;
		}
	}
	rem = data % 4;
	if (rem == 1)
		return MICA_EBADENCODING;
	*data_chars = data;
	*dec_len = data / 4 * 3 + (rem ? rem - 1 : 0);
	return 0;
}

/* Decode |data| characters into |out| (exactly the measured length). */
static int b64_decode_into(const char *in, size_t data, uint8_t *out, enum b64_alphabet a)
{
	const unsigned char *s = (const unsigned char *)in;
	unsigned bad = 0;
	size_t i = 0, rem = data % 4;

	for (; data - i >= 4; i += 4) {
		unsigned v0 = b64_decode6(s[i], a), v1 = b64_decode6(s[i + 1], a);
		unsigned v2 = b64_decode6(s[i + 2], a), v3 = b64_decode6(s[i + 3], a);

		bad |= v0 | v1 | v2 | v3;
		*out++ = (uint8_t)(v0 << 2 | v1 >> 4);
		*out++ = (uint8_t)(v1 << 4 | v2 >> 2);
		*out++ = (uint8_t)(v2 << 6 | v3);
	}
	if (rem >= 2) {
		unsigned v0 = b64_decode6(s[i], a), v1 = b64_decode6(s[i + 1], a);

		bad |= v0 | v1;
		*out++ = (uint8_t)(v0 << 2 | v1 >> 4);
		if (rem == 2) {
			/* Unused low bits must be zero: one spelling per string. */
			bad |= (v1 & 0x0f) ? 0xff : 0;
		} else {
			unsigned v2 = b64_decode6(s[i + 2], a);

			bad |= v2 | ((v2 & 0x03) ? 0xff : 0);
			*out++ = (uint8_t)(v1 << 4 | v2 >> 2);
		}
	}
	/* Valid values fit in 6 bits; an invalid character set the top two. */
	return (bad & 0xc0) ? MICA_EBADENCODING : 0;
}

static int b64_encode(const void *in, size_t in_len, char *out, size_t out_cap, size_t *out_len,
		      enum b64_alphabet a)
{
	size_t len = b64_encoded_len(in_len, a);

	if ((!in && in_len) || !out)
		return MICA_EINVAL;
	if (len == SIZE_MAX || out_cap <= len)
		return MICA_ETOOBIG;
	b64_encode_into(in, in_len, out, a);
	if (out_len)
		*out_len = len;
	return 0;
}

static int b64_encode_alloc(const void *in, size_t in_len, char **out, size_t *out_len,
			    enum b64_alphabet a)
{
	size_t len = b64_encoded_len(in_len, a);

	if (!out)
		return MICA_EINVAL;
	*out = NULL;
	if (!in && in_len)
		return MICA_EINVAL;
	if (len == SIZE_MAX)
		return MICA_ETOOBIG;
	*out = malloc(len + 1);
	if (!*out)
		return MICA_ENOMEM;
	b64_encode_into(in, in_len, *out, a);
	if (out_len)
		*out_len = len;
	return 0;
}

static int b64_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len,
		      enum b64_alphabet a)
{
	size_t data, len;
	int rc;

	if (!out_len)
		return MICA_EINVAL;
	*out_len = 0;
	if ((!in && in_len) || (!out && out_cap))
		return MICA_EINVAL;
	rc = b64_measure(in, in_len, a, &data, &len);
	if (rc)
		return rc;
	if (len > out_cap)
		return MICA_ETOOBIG;
	rc = b64_decode_into(in, data, out, a);
	if (rc) {
		mica_wipe(out, len);
		return rc;
	}
	*out_len = len;
	return 0;
}

static int b64_decode_alloc(const char *in, size_t in_len, uint8_t **out, size_t *out_len,
			    enum b64_alphabet a)
{
	size_t data, len;
	uint8_t *buf;
	int rc;

	if (!out || !out_len)
		return MICA_EINVAL;
	*out = NULL;
	*out_len = 0;
	if (!in && in_len)
		return MICA_EINVAL;
	rc = b64_measure(in, in_len, a, &data, &len);
	if (rc)
		return rc;
	buf = malloc(len ? len : 1);
	if (!buf)
		return MICA_ENOMEM;
	rc = b64_decode_into(in, data, buf, a);
	if (rc) {
		mica_wipe(buf, len);
		free(buf);
		return rc;
	}
	*out = buf;
	*out_len = len;
	return 0;
}

size_t mica_base64_encoded_len(size_t n)
{
	return b64_encoded_len(n, B64_STD);
}

size_t mica_base64url_encoded_len(size_t n)
{
	return b64_encoded_len(n, B64_URL);
}

size_t mica_base64_decoded_max(size_t in_len)
{
	return in_len / 4 * 3;
}

size_t mica_base64url_decoded_max(size_t in_len)
{
	size_t rem = in_len % 4;

	return in_len / 4 * 3 + (rem > 1 ? rem - 1 : 0);
}

int mica_base64_encode(const void *in, size_t in_len, char *out, size_t out_cap, size_t *out_len)
{
	return b64_encode(in, in_len, out, out_cap, out_len, B64_STD);
}

int mica_base64_encode_alloc(const void *in, size_t in_len, char **out, size_t *out_len)
{
	return b64_encode_alloc(in, in_len, out, out_len, B64_STD);
}

int mica_base64_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len)
{
	return b64_decode(in, in_len, out, out_cap, out_len, B64_STD);
}

int mica_base64_decode_alloc(const char *in, size_t in_len, uint8_t **out, size_t *out_len)
{
	return b64_decode_alloc(in, in_len, out, out_len, B64_STD);
}

int mica_base64url_encode(const void *in, size_t in_len, char *out, size_t out_cap, size_t *out_len)
{
	return b64_encode(in, in_len, out, out_cap, out_len, B64_URL);
}

int mica_base64url_encode_alloc(const void *in, size_t in_len, char **out, size_t *out_len)
{
	return b64_encode_alloc(in, in_len, out, out_len, B64_URL);
}

int mica_base64url_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap,
			  size_t *out_len)
{
	return b64_decode(in, in_len, out, out_cap, out_len, B64_URL);
}

int mica_base64url_decode_alloc(const char *in, size_t in_len, uint8_t **out, size_t *out_len)
{
	return b64_decode_alloc(in, in_len, out, out_len, B64_URL);
}

/* 4-bit value -> lower-case hex digit. */
static char hex_encode4(unsigned x)
{
	return (char)((ct_lt(x, 10) & (x + '0')) | (ct_ge(x, 10) & (x - 10 + 'a')));
}

/* Hex digit -> 4-bit value, or 0xff if it is not one. */
static unsigned hex_decode4(unsigned char ch)
{
	unsigned c = ch;
	unsigned digit = ct_in(c, '0', '9'), lower = ct_in(c, 'a', 'f'), upper = ct_in(c, 'A', 'F');
	unsigned v = (digit & (c - '0')) | (lower & (c - 'a' + 10)) | (upper & (c - 'A' + 10));

	return v | ((digit | lower | upper) ^ 0xff);
}

int mica_hex_encode(const void *in, size_t in_len, char *out, size_t out_cap)
{
	const uint8_t *s = in;

	if ((!in && in_len) || !out)
		return MICA_EINVAL;
	if (in_len > (SIZE_MAX - 1) / 2 || out_cap < 2 * in_len + 1)
		return MICA_ETOOBIG;
	for (size_t i = 0; i < in_len; i++) {
		*out++ = hex_encode4(s[i] >> 4);
		*out++ = hex_encode4(s[i] & 0x0f);
	}
	*out = '\0';
	return 0;
}

int mica_hex_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len)
{
	const unsigned char *s = (const unsigned char *)in;
	unsigned bad = 0;

	if (!out_len)
		return MICA_EINVAL;
	*out_len = 0;
	if ((!in && in_len) || (!out && out_cap))
		return MICA_EINVAL;
	if (in_len % 2)
		return MICA_EBADENCODING;
	if (in_len / 2 > out_cap)
		return MICA_ETOOBIG;
	for (size_t i = 0; i < in_len / 2; i++) {
		unsigned hi = hex_decode4(s[2 * i]), lo = hex_decode4(s[2 * i + 1]);

		bad |= hi | lo;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	/* Valid nibbles fit in 4 bits; an invalid digit set the top four. */
	if (bad & 0xf0) {
		mica_wipe(out, in_len / 2);
		return MICA_EBADENCODING;
	}
	*out_len = in_len / 2;
	return 0;
}
