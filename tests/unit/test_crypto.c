/* test_crypto.c - unit tests for lib/crypto: the envelope format and every
 * way it can be damaged, RFC 5869 / RFC 4231 vectors, and the strict
 * base64, base64url and hex codecs. Each bad input asserts its exact error.
 */
#include <check.h>
#include <jansson.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "tests/check_main.h"

/* Independent of mica_hex_decode so the vectors do not test the code with
 * itself. */
static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
	size_t n = strlen(hex) / 2;

	ck_assert_uint_le(n, cap);
	for (size_t i = 0; i < n; i++) {
		unsigned v;

		ck_assert_int_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
	return n;
}

static void assert_bytes_hex(const uint8_t *got, size_t len, const char *want_hex)
{
	uint8_t want[256];
	size_t n = unhex(want_hex, want, sizeof(want));

	ck_assert_uint_eq(len, n);
	ck_assert_mem_eq(got, want, n);
}

/* ---- random, ct_equal, wipe --------------------------------------------- */

START_TEST(test_random)
{
	uint8_t a[32] = {0}, b[32] = {0}, zero[32] = {0};

	ck_assert_int_eq(mica_random(a, sizeof(a)), 0);
	ck_assert_int_eq(mica_random(b, sizeof(b)), 0);
	ck_assert_mem_ne(a, zero, sizeof(a));
	ck_assert_mem_ne(a, b, sizeof(a));
	ck_assert_int_eq(mica_random(a, 0), 0);
	ck_assert_int_eq(mica_random(NULL, 0), 0);
	ck_assert_int_eq(mica_random(NULL, 1), MICA_EINVAL);
}
END_TEST

START_TEST(test_ct_equal_and_wipe)
{
	uint8_t a[40], b[40];

	memset(a, 0x5a, sizeof(a));
	memset(b, 0x5a, sizeof(b));
	ck_assert(mica_ct_equal(a, b, sizeof(a)));
	b[39] ^= 1;
	ck_assert(!mica_ct_equal(a, b, sizeof(a)));
	ck_assert(mica_ct_equal(a, b, 39));
	b[0] ^= 0x80;
	ck_assert(!mica_ct_equal(a, b, 39));
	ck_assert(mica_ct_equal(NULL, NULL, 0));

	mica_wipe(a, sizeof(a));
	memset(b, 0, sizeof(b));
	ck_assert_mem_eq(a, b, sizeof(a));
	mica_wipe(NULL, 10);
}
END_TEST

/* ---- wiping release -------------------------------------------------------- */

/* The block under watch: its contents when mica_free_wipe() was about to
 * wipe it, and whether it was all zeros just before free(). */
static const void *watched;
static unsigned char seen_before[64];
static size_t seen_size;
static int zero_at_free = -1;

static void free_hook(const void *p, size_t n, int wiped)
{
	if (p != watched)
		return;
	if (!wiped) {
		seen_size = n;
		memcpy(seen_before, p, n < sizeof(seen_before) ? n : sizeof(seen_before));
		return;
	}
	zero_at_free = 1;
	for (size_t i = 0; i < n; i++)
		if (((const unsigned char *)p)[i])
			zero_at_free = 0;
}

static void watch(const void *p)
{
	watched = p;
	seen_size = 0;
	zero_at_free = -1;
	mica__free_hook_set(free_hook);
}

START_TEST(test_free_wipe)
{
	char *p = malloc(40);
	ck_assert_ptr_nonnull(p);
	memcpy(p, "password=hunter2", 17);
	watch(p);
	mica_free_wipe(p);
	/* The whole usable block, slack included, and it held the secret. */
	ck_assert_uint_ge(seen_size, 40);
	ck_assert_str_eq((char *)seen_before, "password=hunter2");
	ck_assert_int_eq(zero_at_free, 1);
	mica_free_wipe(NULL);
}
END_TEST

START_TEST(test_realloc_wipe)
{
	char *p = mica_realloc_wipe(NULL, 16), *q;
	ck_assert_ptr_nonnull(p);
	size_t usable = malloc_usable_size(p);
	memcpy(p, "token-0123456789", 16);
	/* Room enough: the same block, nothing copied or freed. */
	watch(p);
	ck_assert_ptr_eq(mica_realloc_wipe(p, usable), p);
	ck_assert_int_eq(zero_at_free, -1);
	/* Growing: the contents move and the old block is wiped, not left. */
	q = mica_realloc_wipe(p, usable * 4);
	ck_assert_ptr_nonnull(q);
	ck_assert_ptr_ne(q, p);
	ck_assert_mem_eq(q, "token-0123456789", 16);
	ck_assert_mem_eq(seen_before, "token-0123456789", 16);
	ck_assert_int_eq(zero_at_free, 1);
	ck_assert_ptr_null(mica_realloc_wipe(q, 0));
	mica_free_wipe(q);
}
END_TEST

/* libmica installs its jansson allocator before main(): what json_decref()
 * and a json_dumps() string release is wiped. */
START_TEST(test_jansson_allocator_wipes)
{
	json_malloc_t m = NULL;
	json_free_t f = NULL;
	json_t *o;
	char *text;

	json_get_alloc_funcs(&m, &f);
	ck_assert_ptr_eq(f, mica_free_wipe);
	o = json_loads("{\"password\":\"correct horse battery\"}", 0, NULL);
	ck_assert_ptr_nonnull(o);
	watch(json_string_value(json_object_get(o, "password")));
	json_decref(o);
	ck_assert_str_eq((char *)seen_before, "correct horse battery");
	ck_assert_int_eq(zero_at_free, 1);

	o = json_pack("{s:s}", "token", "abcdefgh");
	text = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	watch(text);
	mica_free_wipe(text);
	ck_assert_str_eq((char *)seen_before, "{\"token\":\"abcdefgh\"}");
	ck_assert_int_eq(zero_at_free, 1);
}
END_TEST

/* ---- RFC 5869 HKDF-SHA256 ----------------------------------------------- */

START_TEST(test_hkdf_rfc5869_case1)
{
	uint8_t ikm[22], salt[13], info[10], okm[42];

	memset(ikm, 0x0b, sizeof(ikm));
	unhex("000102030405060708090a0b0c", salt, sizeof(salt));
	unhex("f0f1f2f3f4f5f6f7f8f9", info, sizeof(info));
	ck_assert_int_eq(mica_hkdf_sha256(salt, sizeof(salt), ikm, sizeof(ikm), info, sizeof(info),
					  okm, sizeof(okm)),
			 0);
	assert_bytes_hex(okm, sizeof(okm),
			 "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
			 "34007208d5b887185865");
}
END_TEST

START_TEST(test_hkdf_rfc5869_case2)
{
	uint8_t ikm[80], salt[80], info[80], okm[82];

	for (int i = 0; i < 80; i++) {
		ikm[i] = (uint8_t)i;
		salt[i] = (uint8_t)(0x60 + i);
		info[i] = (uint8_t)(0xb0 + i);
	}
	ck_assert_int_eq(mica_hkdf_sha256(salt, sizeof(salt), ikm, sizeof(ikm), info, sizeof(info),
					  okm, sizeof(okm)),
			 0);
	assert_bytes_hex(okm, sizeof(okm),
			 "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
			 "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
			 "cc30c58179ec3e87c14c01d5c1f3434f1d87");
}
END_TEST

START_TEST(test_hkdf_rfc5869_case3)
{
	static const char okm_hex[] = "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f"
				      "3c738d2d9d201395faa4b61a96c8";
	uint8_t ikm[22], okm[42], zeros[32] = {0};

	memset(ikm, 0x0b, sizeof(ikm));
	ck_assert_int_eq(mica_hkdf_sha256(NULL, 0, ikm, sizeof(ikm), NULL, 0, okm, sizeof(okm)), 0);
	assert_bytes_hex(okm, sizeof(okm), okm_hex);
	/* RFC 5869 2.2: no salt means HashLen zero bytes. */
	ck_assert_int_eq(
		mica_hkdf_sha256(zeros, sizeof(zeros), ikm, sizeof(ikm), "", 0, okm, sizeof(okm)),
		0);
	assert_bytes_hex(okm, sizeof(okm), okm_hex);
}
END_TEST

START_TEST(test_hkdf_limits)
{
	static uint8_t big[MICA_HKDF_SHA256_MAX + 1];
	uint8_t ikm[16] = {1}, out[32];

	ck_assert_int_eq(mica_hkdf_sha256(NULL, 0, ikm, sizeof(ikm), NULL, 0, out, 0), MICA_EINVAL);
	ck_assert_int_eq(mica_hkdf_sha256(NULL, 0, ikm, sizeof(ikm), NULL, 0, big, sizeof(big)),
			 MICA_EINVAL);
	ck_assert_int_eq(
		mica_hkdf_sha256(NULL, 0, ikm, sizeof(ikm), NULL, 0, big, MICA_HKDF_SHA256_MAX), 0);
	ck_assert_int_eq(mica_hkdf_sha256(NULL, 0, ikm, sizeof(ikm), NULL, 0, NULL, 32),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_hkdf_sha256(NULL, 5, ikm, sizeof(ikm), NULL, 0, out, 32),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_hkdf_sha256(NULL, 0, NULL, 1, NULL, 0, out, 32), MICA_EINVAL);
	ck_assert_int_eq(mica_hkdf_sha256(NULL, 0, ikm, sizeof(ikm), NULL, 3, out, 32),
			 MICA_EINVAL);
	/* Empty IKM is legal HKDF; value from an independent implementation. */
	ck_assert_int_eq(mica_hkdf_sha256(NULL, 0, NULL, 0, NULL, 0, out, 32), 0);
	assert_bytes_hex(out, 32,
			 "eb70f01dede9afafa449eee1b1286504e1f62388b3f7dd4f956697b0e828fe18");
}
END_TEST

/* ---- RFC 4231 HMAC-SHA256 ----------------------------------------------- */

static void check_hmac(const uint8_t *key, size_t key_len, const void *msg, size_t msg_len,
		       const char *want_hex)
{
	uint8_t mac[MICA_SHA256_LEN];

	ck_assert_int_eq(mica_hmac_sha256(key, key_len, msg, msg_len, mac), 0);
	assert_bytes_hex(mac, sizeof(mac), want_hex);
}

START_TEST(test_hmac_rfc4231)
{
	uint8_t key[131], data[50];

	/* Test case 1 */
	memset(key, 0x0b, 20);
	check_hmac(key, 20, "Hi There", 8,
		   "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
	/* Test case 2: key shorter than the output */
	check_hmac((const uint8_t *)"Jefe", 4, "what do ya want for nothing?", 28,
		   "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
	/* Test case 3 */
	memset(key, 0xaa, 20);
	memset(data, 0xdd, 50);
	check_hmac(key, 20, data, 50,
		   "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
	/* Test case 4 */
	for (int i = 0; i < 25; i++)
		key[i] = (uint8_t)(i + 1);
	memset(data, 0xcd, 50);
	check_hmac(key, 25, data, 50,
		   "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
	/* Test case 6: key larger than the block size */
	memset(key, 0xaa, 131);
	check_hmac(key, 131, "Test Using Larger Than Block-Size Key - Hash Key First", 54,
		   "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
	/* Test case 7: key and data larger than the block size */
	static const char tc7[] = "This is a test using a larger than block-size key and a larger "
				  "than block-size data. The key needs to be hashed before being "
				  "used by the HMAC algorithm.";
	check_hmac(key, 131, tc7, strlen(tc7),
		   "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}
END_TEST

START_TEST(test_hmac_edges)
{
	uint8_t mac[MICA_SHA256_LEN];

	/* HMAC-SHA256 of empty key and empty message. */
	check_hmac(NULL, 0, NULL, 0,
		   "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
	ck_assert_int_eq(mica_hmac_sha256(NULL, 1, "x", 1, mac), MICA_EINVAL);
	ck_assert_int_eq(mica_hmac_sha256("k", 1, NULL, 1, mac), MICA_EINVAL);
	ck_assert_int_eq(mica_hmac_sha256("k", 1, "x", 1, NULL), MICA_EINVAL);
}
END_TEST

/* ---- envelope ------------------------------------------------------------ */

static const uint8_t key256[32] = {
	0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae,
	0xf0, 0x85, 0x7d, 0x77, 0x81, 0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61,
	0x08, 0xd7, 0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14, 0xdf, 0xf4,
};
static const char ctx_row1[] = "account/users/phone/row=1";
static const char ctx_row2[] = "account/users/phone/row=2";
static const char plain[] = "+86 138 0013 8000";

/* Seal |plain| under key256, "kek.account" v7, context row 1. */
static uint8_t *seal_sample(size_t *len)
{
	uint8_t *env = NULL;

	ck_assert_int_eq(mica_envelope_seal(key256, 32, "kek.account", 7, ctx_row1,
					    strlen(ctx_row1), plain, strlen(plain), &env, len),
			 0);
	ck_assert_ptr_nonnull(env);
	return env;
}

static int open_sample(const uint8_t *env, size_t len)
{
	uint8_t *pt = (uint8_t *)"sentinel";
	size_t pt_len = 99;
	int rc = mica_envelope_open(key256, 32, ctx_row1, strlen(ctx_row1), env, len, &pt, &pt_len);

	if (rc) {
		ck_assert_ptr_null(pt);
		ck_assert_uint_eq(pt_len, 0);
	} else {
		free(pt);
	}
	return rc;
}

START_TEST(test_envelope_layout)
{
	size_t len, name_len = strlen("kek.account"), pt_len = strlen(plain);
	uint8_t *env = seal_sample(&len);
	struct mica_envelope e;

	ck_assert_uint_eq(len, MICA_ENVELOPE_OVERHEAD + name_len + pt_len);
	ck_assert_uint_eq(len, mica_envelope_size(name_len, pt_len));
	ck_assert_mem_eq(env, "MCE\x01", 4);
	ck_assert_uint_eq(env[4], name_len);
	ck_assert_mem_eq(env + 5, "kek.account", name_len);
	ck_assert_mem_eq(env + 5 + name_len, "\x00\x00\x00\x07", 4);
	ck_assert_uint_eq(env[9 + name_len + 3], pt_len);

	ck_assert_int_eq(mica_envelope_parse(env, len, &e), 0);
	ck_assert_uint_eq(e.version, 1);
	ck_assert_uint_eq(e.key_name_len, name_len);
	ck_assert_ptr_eq(e.key_name, (const char *)env + 5);
	ck_assert_mem_eq(e.key_name, "kek.account", name_len);
	ck_assert_uint_eq(e.key_version, 7);
	ck_assert_uint_eq(e.header_len, 25 + name_len);
	ck_assert_ptr_eq(e.nonce, env + 13 + name_len);
	ck_assert_ptr_eq(e.ciphertext, env + e.header_len);
	ck_assert_uint_eq(e.ciphertext_len, pt_len);
	ck_assert_ptr_eq(e.tag, env + len - MICA_ENVELOPE_TAG_LEN);
	/* Encryption really happened. */
	ck_assert_mem_ne(e.ciphertext, plain, pt_len);
	free(env);
}
END_TEST

START_TEST(test_envelope_roundtrip_small)
{
	size_t len, pt_len;
	uint8_t *env = seal_sample(&len), *pt = NULL, *env2;

	ck_assert_int_eq(
		mica_envelope_open(key256, 32, ctx_row1, strlen(ctx_row1), env, len, &pt, &pt_len),
		0);
	ck_assert_uint_eq(pt_len, strlen(plain));
	ck_assert_mem_eq(pt, plain, pt_len);
	free(pt);

	/* A fresh nonce every time: same input, different envelope. */
	env2 = seal_sample(&len);
	ck_assert_mem_ne(env + 24, env2 + 24, MICA_ENVELOPE_NONCE_LEN);
	free(env);
	free(env2);
}
END_TEST

START_TEST(test_envelope_roundtrip_empty)
{
	uint8_t *env = NULL, *pt = NULL;
	size_t len, pt_len = 1;
	struct mica_envelope e;

	ck_assert_int_eq(mica_envelope_seal(key256, 32, "k", 0, NULL, 0, NULL, 0, &env, &len), 0);
	ck_assert_uint_eq(len, MICA_ENVELOPE_OVERHEAD + 1);
	ck_assert_int_eq(mica_envelope_parse(env, len, &e), 0);
	ck_assert_uint_eq(e.ciphertext_len, 0);
	ck_assert_int_eq(mica_envelope_open(key256, 32, NULL, 0, env, len, &pt, &pt_len), 0);
	ck_assert_ptr_nonnull(pt);
	ck_assert_uint_eq(pt_len, 0);
	free(pt);
	/* Even an empty plaintext is bound to its (empty) context. */
	ck_assert_int_eq(mica_envelope_open(key256, 32, "x", 1, env, len, &pt, &pt_len),
			 MICA_EAUTH);
	free(env);
}
END_TEST

static void roundtrip_large(const uint8_t *key, size_t key_len)
{
	size_t n = 3 * 1024 * 1024 + 7, len, pt_len;
	uint8_t *big = malloc(n), *env = NULL, *pt = NULL;

	ck_assert_ptr_nonnull(big);
	ck_assert_int_eq(mica_random(big, n), 0);
	ck_assert_int_eq(mica_envelope_seal(key, key_len, "cloudsync.block", 0xfffffffe, "blk", 3,
					    big, n, &env, &len),
			 0);
	ck_assert_uint_eq(len, n + MICA_ENVELOPE_OVERHEAD + strlen("cloudsync.block"));
	ck_assert_int_eq(mica_envelope_open(key, key_len, "blk", 3, env, len, &pt, &pt_len), 0);
	ck_assert_uint_eq(pt_len, n);
	ck_assert_mem_eq(pt, big, n);
	/* The last ciphertext byte is covered too. */
	free(pt);
	env[len - MICA_ENVELOPE_TAG_LEN - 1] ^= 1;
	ck_assert_int_eq(mica_envelope_open(key, key_len, "blk", 3, env, len, &pt, &pt_len),
			 MICA_EAUTH);
	free(env);
	free(big);
}

START_TEST(test_envelope_roundtrip_large)
{
	uint8_t key128[16];

	roundtrip_large(key256, 32);
	memcpy(key128, key256, 16);
	roundtrip_large(key128, 16);
}
END_TEST

START_TEST(test_envelope_wrong_key)
{
	size_t len, pt_len;
	uint8_t *env = seal_sample(&len), *pt = NULL, other[32];

	memcpy(other, key256, 32);
	other[31] ^= 1;
	ck_assert_int_eq(
		mica_envelope_open(other, 32, ctx_row1, strlen(ctx_row1), env, len, &pt, &pt_len),
		MICA_EAUTH);
	/* The AES-128 key made of the first half of the right key. */
	ck_assert_int_eq(
		mica_envelope_open(key256, 16, ctx_row1, strlen(ctx_row1), env, len, &pt, &pt_len),
		MICA_EAUTH);
	ck_assert_ptr_null(pt);
	free(env);
}
END_TEST

START_TEST(test_envelope_wrong_aad)
{
	size_t len, pt_len;
	uint8_t *env = seal_sample(&len), *pt = NULL;

	/* Copied to another row. */
	ck_assert_int_eq(
		mica_envelope_open(key256, 32, ctx_row2, strlen(ctx_row2), env, len, &pt, &pt_len),
		MICA_EAUTH);
	/* Context cut short, extended, or dropped. */
	ck_assert_int_eq(mica_envelope_open(key256, 32, ctx_row1, strlen(ctx_row1) - 1, env, len,
					    &pt, &pt_len),
			 MICA_EAUTH);
	ck_assert_int_eq(
		mica_envelope_open(key256, 32, ctx_row1, sizeof(ctx_row1), env, len, &pt, &pt_len),
		MICA_EAUTH);
	ck_assert_int_eq(mica_envelope_open(key256, 32, NULL, 0, env, len, &pt, &pt_len),
			 MICA_EAUTH);
	ck_assert_ptr_null(pt);
	ck_assert_uint_eq(pt_len, 0);
	free(env);
}
END_TEST

START_TEST(test_envelope_tampered_ciphertext)
{
	size_t len;
	uint8_t *env = seal_sample(&len);
	struct mica_envelope e;

	ck_assert_int_eq(mica_envelope_parse(env, len, &e), 0);
	env[e.header_len] ^= 0x01;
	ck_assert_int_eq(open_sample(env, len), MICA_EAUTH);
	env[e.header_len] ^= 0x01;
	env[e.header_len + 5] ^= 0x80;
	ck_assert_int_eq(open_sample(env, len), MICA_EAUTH);
	env[e.header_len + 5] ^= 0x80;
	ck_assert_int_eq(open_sample(env, len), 0);
	free(env);
}
END_TEST

START_TEST(test_envelope_tampered_tag)
{
	size_t len;
	uint8_t *env = seal_sample(&len);

	env[len - 1] ^= 0x01;
	ck_assert_int_eq(open_sample(env, len), MICA_EAUTH);
	env[len - 1] ^= 0x01;
	env[len - MICA_ENVELOPE_TAG_LEN] ^= 0x40;
	ck_assert_int_eq(open_sample(env, len), MICA_EAUTH);
	free(env);
}
END_TEST

START_TEST(test_envelope_tampered_header)
{
	size_t len, name_len = strlen("kek.account");
	uint8_t *env = seal_sample(&len);
	struct mica_envelope e;

	/* Key version 7 -> 8: still parses (it is only a hint), never opens. */
	env[5 + name_len + 3] = 8;
	ck_assert_int_eq(mica_envelope_parse(env, len, &e), 0);
	ck_assert_uint_eq(e.key_version, 8);
	ck_assert_int_eq(open_sample(env, len), MICA_EAUTH);
	env[5 + name_len + 3] = 7;

	/* Key name "kek.account" -> "kek.accounu", still a valid name. */
	env[5 + name_len - 1] = 'u';
	ck_assert_int_eq(mica_envelope_parse(env, len, &e), 0);
	ck_assert_int_eq(open_sample(env, len), MICA_EAUTH);
	env[5 + name_len - 1] = 't';

	/* Nonce. */
	env[13 + name_len] ^= 0x10;
	ck_assert_int_eq(open_sample(env, len), MICA_EAUTH);
	env[13 + name_len] ^= 0x10;
	ck_assert_int_eq(open_sample(env, len), 0);
	free(env);
}
END_TEST

/* Every single-bit flip anywhere in an envelope must be rejected. */
START_TEST(test_envelope_every_bit_flip)
{
	size_t len;
	uint8_t *env = seal_sample(&len);

	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit++) {
			env[i] ^= (uint8_t)(1u << bit);
			ck_assert_msg(open_sample(env, len) != 0, "flip byte %zu bit %d accepted",
				      i, bit);
			env[i] ^= (uint8_t)(1u << bit);
		}
	}
	ck_assert_int_eq(open_sample(env, len), 0);
	free(env);
}
END_TEST

START_TEST(test_envelope_truncated_every_prefix)
{
	size_t len;
	uint8_t *env = seal_sample(&len);
	struct mica_envelope e;

	for (size_t cut = 0; cut < len; cut++) {
		/* A private copy so ASan catches any read past |cut|. */
		uint8_t *prefix = malloc(cut ? cut : 1);

		memcpy(prefix, env, cut);
		ck_assert_msg(mica_envelope_parse(prefix, cut, &e) == MICA_ETRUNCATED,
			      "parse of %zu-byte prefix", cut);
		ck_assert_ptr_null(e.key_name);
		ck_assert_msg(open_sample(prefix, cut) == MICA_ETRUNCATED,
			      "open of %zu-byte prefix", cut);
		free(prefix);
	}
	ck_assert_int_eq(mica_envelope_parse(NULL, 0, &e), MICA_ETRUNCATED);
	free(env);
}
END_TEST

START_TEST(test_envelope_trailing_bytes)
{
	size_t len;
	uint8_t *env = seal_sample(&len), *longer = malloc(len + 1);
	struct mica_envelope e;

	memcpy(longer, env, len);
	longer[len] = 0;
	ck_assert_int_eq(mica_envelope_parse(longer, len + 1, &e), MICA_EBADHEADER);
	ck_assert_int_eq(open_sample(longer, len + 1), MICA_EBADHEADER);
	free(longer);
	free(env);
}
END_TEST

START_TEST(test_envelope_length_field)
{
	size_t len, name_len = strlen("kek.account");
	uint8_t *env = seal_sample(&len);
	uint8_t *len_field;
	struct mica_envelope e;

	len_field = env + 9 + name_len;
	/* Claims one byte more than is there. */
	len_field[3]++;
	ck_assert_int_eq(mica_envelope_parse(env, len, &e), MICA_ETRUNCATED);
	ck_assert_int_eq(open_sample(env, len), MICA_ETRUNCATED);
	/* Claims one byte less: a byte is left over after the tag. */
	len_field[3] -= 2;
	ck_assert_int_eq(mica_envelope_parse(env, len, &e), MICA_EBADHEADER);
	ck_assert_int_eq(open_sample(env, len), MICA_EBADHEADER);
	/* Claims 4 GiB: must not read past the buffer. */
	memset(len_field, 0xff, 4);
	ck_assert_int_eq(mica_envelope_parse(env, len, &e), MICA_ETRUNCATED);
	ck_assert_int_eq(open_sample(env, len), MICA_ETRUNCATED);
	free(env);
}
END_TEST

START_TEST(test_envelope_bad_version)
{
	static const uint8_t versions[] = {0, 2, 0x81, 0xff};
	size_t len;
	uint8_t *env = seal_sample(&len);
	struct mica_envelope e;

	for (size_t i = 0; i < sizeof(versions); i++) {
		env[3] = versions[i];
		ck_assert_int_eq(mica_envelope_parse(env, len, &e), MICA_EBADVERSION);
		ck_assert_int_eq(open_sample(env, len), MICA_EBADVERSION);
	}
	/* Only the magic and an unknown version: the version decides. */
	ck_assert_int_eq(mica_envelope_parse((const uint8_t *)"MCE\x02", 4, &e), MICA_EBADVERSION);
	free(env);
}
END_TEST

START_TEST(test_envelope_bad_magic)
{
	static const char *const magics[] = {"MCF", "XCE", "mce", "\0CE"};
	size_t len;
	uint8_t *env = seal_sample(&len);
	struct mica_envelope e;

	for (size_t i = 0; i < sizeof(magics) / sizeof(magics[0]); i++) {
		memcpy(env, magics[i], 3);
		ck_assert_int_eq(mica_envelope_parse(env, len, &e), MICA_EBADHEADER);
		ck_assert_int_eq(open_sample(env, len), MICA_EBADHEADER);
	}
	/* Short input that is not a prefix of the magic is not "truncated". */
	ck_assert_int_eq(mica_envelope_parse((const uint8_t *)"X", 1, &e), MICA_EBADHEADER);
	ck_assert_int_eq(mica_envelope_parse((const uint8_t *)"MX", 2, &e), MICA_EBADHEADER);
	ck_assert_int_eq(mica_envelope_parse((const uint8_t *)"MC", 2, &e), MICA_ETRUNCATED);
	free(env);
}
END_TEST

START_TEST(test_envelope_bad_key_name)
{
	size_t len;
	uint8_t *env = seal_sample(&len);
	uint8_t zero_name[64] = "MCE\x01";
	struct mica_envelope e;

	env[5] = ' ';
	ck_assert_int_eq(mica_envelope_parse(env, len, &e), MICA_EBADHEADER);
	env[5] = 0x7f;
	ck_assert_int_eq(mica_envelope_parse(env, len, &e), MICA_EBADHEADER);
	env[5] = '\0';
	ck_assert_int_eq(open_sample(env, len), MICA_EBADHEADER);
	/* Zero-length name: rejected as soon as the length byte is read. */
	ck_assert_int_eq(mica_envelope_parse(zero_name, 5, &e), MICA_EBADHEADER);
	ck_assert_int_eq(mica_envelope_parse(zero_name, sizeof(zero_name), &e), MICA_EBADHEADER);
	free(env);
}
END_TEST

START_TEST(test_envelope_seal_args)
{
	char name[MICA_ENVELOPE_NAME_MAX + 2];
	uint8_t *env = (uint8_t *)"sentinel";
	size_t len = 5;
	struct mica_envelope e;

	ck_assert_int_eq(mica_envelope_seal(key256, 24, "k", 1, NULL, 0, "x", 1, &env, &len),
			 MICA_EINVAL);
	ck_assert_ptr_null(env);
	ck_assert_uint_eq(len, 0);
	ck_assert_int_eq(mica_envelope_seal(key256, 0, "k", 1, NULL, 0, "x", 1, &env, &len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_seal(NULL, 32, "k", 1, NULL, 0, "x", 1, &env, &len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_seal(key256, 32, "", 1, NULL, 0, "x", 1, &env, &len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_seal(key256, 32, NULL, 1, NULL, 0, "x", 1, &env, &len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_seal(key256, 32, "a key", 1, NULL, 0, "x", 1, &env, &len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_seal(key256, 32, "k\n", 1, NULL, 0, "x", 1, &env, &len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_seal(key256, 32, "k", 1, NULL, 4, "x", 1, &env, &len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_seal(key256, 32, "k", 1, NULL, 0, NULL, 1, &env, &len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_seal(key256, 32, "k", 1, NULL, 0, "x", 1, NULL, &len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_seal(key256, 32, "k", 1, NULL, 0, "x", 1, &env, NULL),
			 MICA_EINVAL);
#if SIZE_MAX > UINT32_MAX
	/* Length is checked before the plaintext is touched. */
	ck_assert_int_eq(mica_envelope_seal(key256, 32, "k", 1, NULL, 0, "x",
					    MICA_ENVELOPE_MAX_PLAINTEXT + 1, &env, &len),
			 MICA_ETOOBIG);
	ck_assert_uint_eq(mica_envelope_size(1, MICA_ENVELOPE_MAX_PLAINTEXT + 1), 0);
#endif

	/* 255 characters is the longest name; 256 is one too many. */
	memset(name, 'n', sizeof(name));
	name[MICA_ENVELOPE_NAME_MAX + 1] = '\0';
	ck_assert_int_eq(mica_envelope_seal(key256, 32, name, 1, NULL, 0, "x", 1, &env, &len),
			 MICA_EINVAL);
	name[MICA_ENVELOPE_NAME_MAX] = '\0';
	ck_assert_int_eq(
		mica_envelope_seal(key256, 32, name, 0xffffffffu, NULL, 0, "x", 1, &env, &len), 0);
	ck_assert_int_eq(mica_envelope_parse(env, len, &e), 0);
	ck_assert_uint_eq(e.key_name_len, MICA_ENVELOPE_NAME_MAX);
	ck_assert_uint_eq(e.key_version, 0xffffffffu);
	free(env);

	ck_assert_uint_eq(mica_envelope_size(0, 1), 0);
	ck_assert_uint_eq(mica_envelope_size(256, 1), 0);
	ck_assert_uint_eq(mica_envelope_size(1, 0), MICA_ENVELOPE_OVERHEAD + 1);
}
END_TEST

START_TEST(test_envelope_open_args)
{
	size_t len, pt_len;
	uint8_t *env = seal_sample(&len), *pt = NULL;
	struct mica_envelope e;

	ck_assert_int_eq(
		mica_envelope_open(key256, 31, ctx_row1, strlen(ctx_row1), env, len, &pt, &pt_len),
		MICA_EINVAL);
	ck_assert_int_eq(
		mica_envelope_open(NULL, 32, ctx_row1, strlen(ctx_row1), env, len, &pt, &pt_len),
		MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_open(key256, 32, NULL, 3, env, len, &pt, &pt_len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_open(key256, 32, NULL, 0, NULL, 3, &pt, &pt_len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_open(key256, 32, NULL, 0, env, len, NULL, &pt_len),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_open(key256, 32, NULL, 0, env, len, &pt, NULL), MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_parse(env, len, NULL), MICA_EINVAL);
	ck_assert_int_eq(mica_envelope_parse(NULL, 4, &e), MICA_EINVAL);
	free(env);
}
END_TEST

/* ---- base64 -------------------------------------------------------------- */

struct b64_vector {
	const char *raw;
	const char *std;
	const char *url;
};

/* RFC 4648 section 10, plus bytes that use characters 62 and 63. */
static const struct b64_vector b64_vectors[] = {
	{"", "", ""},
	{"f", "Zg==", "Zg"},
	{"fo", "Zm8=", "Zm8"},
	{"foo", "Zm9v", "Zm9v"},
	{"foob", "Zm9vYg==", "Zm9vYg"},
	{"fooba", "Zm9vYmE=", "Zm9vYmE"},
	{"foobar", "Zm9vYmFy", "Zm9vYmFy"},
	{"\xfb\xff", "+/8=", "-_8"},
	{"\xfb\xef\xbe", "++++", "----"},
	{"\xff\xff\xff", "////", "____"},
};

START_TEST(test_base64_vectors)
{
	for (size_t i = 0; i < sizeof(b64_vectors) / sizeof(b64_vectors[0]); i++) {
		const struct b64_vector *v = &b64_vectors[i];
		size_t raw_len = strlen(v->raw), n;
		char text[32];
		uint8_t bin[32];

		ck_assert_uint_eq(mica_base64_encoded_len(raw_len), strlen(v->std));
		ck_assert_int_eq(mica_base64_encode(v->raw, raw_len, text, sizeof(text), &n), 0);
		ck_assert_str_eq(text, v->std);
		ck_assert_uint_eq(n, strlen(v->std));
		ck_assert_int_eq(mica_base64_decode(v->std, strlen(v->std), bin, sizeof(bin), &n),
				 0);
		ck_assert_uint_eq(n, raw_len);
		ck_assert_mem_eq(bin, v->raw, raw_len);
		ck_assert_uint_ge(mica_base64_decoded_max(strlen(v->std)), raw_len);

		ck_assert_uint_eq(mica_base64url_encoded_len(raw_len), strlen(v->url));
		ck_assert_int_eq(mica_base64url_encode(v->raw, raw_len, text, sizeof(text), &n), 0);
		ck_assert_str_eq(text, v->url);
		ck_assert_int_eq(
			mica_base64url_decode(v->url, strlen(v->url), bin, sizeof(bin), &n), 0);
		ck_assert_uint_eq(n, raw_len);
		ck_assert_mem_eq(bin, v->raw, raw_len);
		ck_assert_uint_eq(mica_base64url_decoded_max(strlen(v->url)), raw_len);
	}
}
END_TEST

static int b64_std(const char *s, size_t len)
{
	uint8_t out[64];
	size_t n = 77;
	int rc = mica_base64_decode(s, len, out, sizeof(out), &n);

	if (rc)
		ck_assert_uint_eq(n, 0);
	return rc;
}

static int b64_url(const char *s, size_t len)
{
	uint8_t out[64];
	size_t n = 77;
	int rc = mica_base64url_decode(s, len, out, sizeof(out), &n);

	if (rc)
		ck_assert_uint_eq(n, 0);
	return rc;
}

#define STD(lit) b64_std(lit, sizeof(lit) - 1)
#define URL(lit) b64_url(lit, sizeof(lit) - 1)

START_TEST(test_base64_bad_chars)
{
	ck_assert_int_eq(STD("Zm9*"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm 9"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm9v\nZm9v"), MICA_EBADENCODING); /* 9 chars: length */
	ck_assert_int_eq(STD("Zm9\n"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm9\t"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm\0v"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm9v\0\0\0\0"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("-_8="), MICA_EBADENCODING); /* url alphabet */
	ck_assert_int_eq(STD("Zm9\x80"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("\xffm9v"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm9v"), 0);
}
END_TEST

START_TEST(test_base64_bad_padding)
{
	ck_assert_int_eq(STD("Z==="), MICA_EBADENCODING);
	ck_assert_int_eq(STD("===="), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zg=a"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Z=g="), MICA_EBADENCODING);
	ck_assert_int_eq(STD("=Zg="), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zg==Zg=="), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm9v===="), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zg"), MICA_EBADENCODING);	 /* padding required */
	ck_assert_int_eq(STD("Zg="), MICA_EBADENCODING); /* padding short */
	ck_assert_int_eq(STD("Zm8"), MICA_EBADENCODING); /* padding missing */
	ck_assert_int_eq(STD("Zg==="), MICA_EBADENCODING);
}
END_TEST

START_TEST(test_base64_trailing_bits)
{
	/* "Zg==" is "f"; "Zh==" has the same first byte but a non-zero unused
	 * low nibble, so it would be a second spelling of "f". */
	ck_assert_int_eq(STD("Zg=="), 0);
	ck_assert_int_eq(STD("Zh=="), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zv=="), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm8="), 0);
	ck_assert_int_eq(STD("Zm9="), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm/="), MICA_EBADENCODING);
	ck_assert_int_eq(URL("Zg"), 0);
	ck_assert_int_eq(URL("Zh"), MICA_EBADENCODING);
	ck_assert_int_eq(URL("Zm8"), 0);
	ck_assert_int_eq(URL("Zm9"), MICA_EBADENCODING);
	ck_assert_int_eq(URL("Zm_"), MICA_EBADENCODING);
}
END_TEST

START_TEST(test_base64_bad_length)
{
	ck_assert_int_eq(STD("Z"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm9"), MICA_EBADENCODING);
	ck_assert_int_eq(STD("Zm9vY"), MICA_EBADENCODING);
	ck_assert_int_eq(STD(""), 0);
	ck_assert_int_eq(URL("Z"), MICA_EBADENCODING);
	ck_assert_int_eq(URL("Zm9vY"), MICA_EBADENCODING);
	ck_assert_int_eq(URL(""), 0);
}
END_TEST

START_TEST(test_base64url_bad)
{
	ck_assert_int_eq(URL("Zg=="), MICA_EBADENCODING); /* no padding in base64url */
	ck_assert_int_eq(URL("Zm8="), MICA_EBADENCODING);
	ck_assert_int_eq(URL("+/8"), MICA_EBADENCODING); /* std alphabet */
	ck_assert_int_eq(URL("Zm9v Zm"), MICA_EBADENCODING);
	ck_assert_int_eq(URL("Zm9v\n"), MICA_EBADENCODING);
	ck_assert_int_eq(URL("Zm\0"), MICA_EBADENCODING);
	ck_assert_int_eq(URL("-_8"), 0);
}
END_TEST

/* Each of the 256 byte values is accepted exactly when it is in the
 * alphabet; this pins down the branch-free classifier. */
START_TEST(test_base64_alphabet_exhaustive)
{
	static const char std_abc[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	static const char url_abc[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

	for (int c = 0; c < 256; c++) {
		char s[4] = {(char)c, 'A', 'A', 'A'};
		uint8_t out[3];
		size_t n;
		const char *in_std = c ? memchr(std_abc, c, 64) : NULL;
		const char *in_url = c ? memchr(url_abc, c, 64) : NULL;
		int rc;

		rc = mica_base64_decode(s, 4, out, sizeof(out), &n);
		ck_assert_int_eq(rc, in_std ? 0 : MICA_EBADENCODING);
		if (in_std)
			ck_assert_uint_eq(out[0] >> 2, (unsigned)(in_std - std_abc));
		rc = mica_base64url_decode(s, 4, out, sizeof(out), &n);
		ck_assert_int_eq(rc, in_url ? 0 : MICA_EBADENCODING);
		if (in_url)
			ck_assert_uint_eq(out[0] >> 2, (unsigned)(in_url - url_abc));
	}
}
END_TEST

START_TEST(test_base64_capacity)
{
	uint8_t out[8] = {0}, zero[8] = {0};
	char text[9];
	size_t n = 9;

	ck_assert_int_eq(mica_base64_decode("Zm9vYmFy", 8, out, 5, &n), MICA_ETOOBIG);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(mica_base64_decode("Zm9vYmE=", 8, out, 5, &n), 0);
	ck_assert_uint_eq(n, 5);
	ck_assert_int_eq(mica_base64url_decode("Zm9vYmE", 7, out, 4, &n), MICA_ETOOBIG);
	ck_assert_int_eq(mica_base64_decode("", 0, NULL, 0, &n), 0);
	ck_assert_uint_eq(n, 0);
	/* Encoders need room for the NUL. */
	ck_assert_int_eq(mica_base64_encode("foobar", 6, text, 8, NULL), MICA_ETOOBIG);
	ck_assert_int_eq(mica_base64_encode("foobar", 6, text, 9, NULL), 0);
	ck_assert_str_eq(text, "Zm9vYmFy");
	ck_assert_int_eq(mica_base64url_encode("fooba", 5, text, 7, NULL), MICA_ETOOBIG);
	/* A bad character found late wipes what was already decoded. */
	memset(out, 0xee, sizeof(out));
	ck_assert_int_eq(mica_base64_decode("Zm9vYm*y", 8, out, sizeof(out), &n),
			 MICA_EBADENCODING);
	ck_assert_mem_eq(out, zero, 6);

	ck_assert_int_eq(mica_base64_decode(NULL, 4, out, 8, &n), MICA_EINVAL);
	ck_assert_int_eq(mica_base64_decode("Zm9v", 4, NULL, 8, &n), MICA_EINVAL);
	ck_assert_int_eq(mica_base64_decode("Zm9v", 4, out, 8, NULL), MICA_EINVAL);
	ck_assert_int_eq(mica_base64_encode(NULL, 1, text, 9, NULL), MICA_EINVAL);

	ck_assert_uint_eq(mica_base64_decoded_max(0), 0);
	ck_assert_uint_eq(mica_base64_decoded_max(8), 6);
	ck_assert_uint_eq(mica_base64url_decoded_max(6), 4);
	ck_assert_uint_eq(mica_base64url_decoded_max(7), 5);
	ck_assert_uint_eq(mica_base64_encoded_len(SIZE_MAX), SIZE_MAX);
}
END_TEST

START_TEST(test_base64_alloc_roundtrip)
{
	uint8_t raw[200];

	ck_assert_int_eq(mica_random(raw, sizeof(raw)), 0);
	for (size_t len = 0; len <= sizeof(raw); len++) {
		char *text = NULL;
		uint8_t *back = NULL;
		size_t tlen, blen;

		ck_assert_int_eq(mica_base64_encode_alloc(raw, len, &text, &tlen), 0);
		ck_assert_uint_eq(strlen(text), tlen);
		ck_assert_uint_eq(tlen % 4, 0);
		ck_assert_int_eq(mica_base64_decode_alloc(text, tlen, &back, &blen), 0);
		ck_assert_ptr_nonnull(back);
		ck_assert_uint_eq(blen, len);
		ck_assert_mem_eq(back, raw, len);
		free(text);
		free(back);

		ck_assert_int_eq(mica_base64url_encode_alloc(raw, len, &text, &tlen), 0);
		ck_assert_uint_eq(strlen(text), tlen);
		ck_assert_ptr_null(strchr(text, '='));
		ck_assert_int_eq(mica_base64url_decode_alloc(text, tlen, &back, &blen), 0);
		ck_assert_uint_eq(blen, len);
		ck_assert_mem_eq(back, raw, len);
		free(text);
		free(back);
	}
	{
		uint8_t *back = (uint8_t *)"sentinel";
		size_t blen = 3;

		ck_assert_int_eq(mica_base64_decode_alloc("Zh==", 4, &back, &blen),
				 MICA_EBADENCODING);
		ck_assert_ptr_null(back);
		ck_assert_uint_eq(blen, 0);
		ck_assert_int_eq(mica_base64url_decode_alloc("Z", 1, &back, &blen),
				 MICA_EBADENCODING);
	}
}
END_TEST

/* ---- hex ----------------------------------------------------------------- */

START_TEST(test_hex)
{
	static const uint8_t raw[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xff};
	char text[17];
	uint8_t out[8];
	size_t n;

	ck_assert_int_eq(mica_hex_encode(raw, sizeof(raw), text, sizeof(text)), 0);
	ck_assert_str_eq(text, "00017f80abcdefff");
	ck_assert_int_eq(mica_hex_encode(raw, sizeof(raw), text, 16), MICA_ETOOBIG);
	ck_assert_int_eq(mica_hex_encode(NULL, 0, text, 1), 0);
	ck_assert_str_eq(text, "");

	ck_assert_int_eq(mica_hex_decode("00017F80ABcdefFF", 16, out, sizeof(out), &n), 0);
	ck_assert_uint_eq(n, 8);
	ck_assert_mem_eq(out, raw, 8);
	ck_assert_int_eq(mica_hex_decode("abc", 3, out, sizeof(out), &n), MICA_EBADENCODING);
	ck_assert_int_eq(mica_hex_decode("0g", 2, out, sizeof(out), &n), MICA_EBADENCODING);
	ck_assert_int_eq(mica_hex_decode("0 ", 2, out, sizeof(out), &n), MICA_EBADENCODING);
	ck_assert_int_eq(mica_hex_decode("\0"
					 "0",
					 2, out, sizeof(out), &n),
			 MICA_EBADENCODING);
	ck_assert_int_eq(mica_hex_decode("0x00", 4, out, sizeof(out), &n), MICA_EBADENCODING);
	ck_assert_int_eq(mica_hex_decode("000000", 6, out, 2, &n), MICA_ETOOBIG);
	ck_assert_int_eq(mica_hex_decode("ab", 2, out, 1, NULL), MICA_EINVAL);

	for (int c = 0; c < 256; c++) {
		char s[3] = {'0', (char)c, '\0'};
		int valid =
			(c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');

		ck_assert_int_eq(mica_hex_decode(s, 2, out, 1, &n), valid ? 0 : MICA_EBADENCODING);
		if (valid)
			ck_assert_uint_eq(out[0], (unsigned)strtoul(s, NULL, 16));
	}
}
END_TEST

static Suite *crypto_suite(void)
{
	Suite *s = suite_create("crypto");
	TCase *tc;

	tc = tcase_create("primitives");
	tcase_add_test(tc, test_random);
	tcase_add_test(tc, test_ct_equal_and_wipe);
	tcase_add_test(tc, test_free_wipe);
	tcase_add_test(tc, test_realloc_wipe);
	tcase_add_test(tc, test_jansson_allocator_wipes);
	tcase_add_test(tc, test_hkdf_rfc5869_case1);
	tcase_add_test(tc, test_hkdf_rfc5869_case2);
	tcase_add_test(tc, test_hkdf_rfc5869_case3);
	tcase_add_test(tc, test_hkdf_limits);
	tcase_add_test(tc, test_hmac_rfc4231);
	tcase_add_test(tc, test_hmac_edges);
	suite_add_tcase(s, tc);

	tc = tcase_create("envelope");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_envelope_layout);
	tcase_add_test(tc, test_envelope_roundtrip_small);
	tcase_add_test(tc, test_envelope_roundtrip_empty);
	tcase_add_test(tc, test_envelope_roundtrip_large);
	tcase_add_test(tc, test_envelope_wrong_key);
	tcase_add_test(tc, test_envelope_wrong_aad);
	tcase_add_test(tc, test_envelope_tampered_ciphertext);
	tcase_add_test(tc, test_envelope_tampered_tag);
	tcase_add_test(tc, test_envelope_tampered_header);
	tcase_add_test(tc, test_envelope_every_bit_flip);
	tcase_add_test(tc, test_envelope_truncated_every_prefix);
	tcase_add_test(tc, test_envelope_trailing_bytes);
	tcase_add_test(tc, test_envelope_length_field);
	tcase_add_test(tc, test_envelope_bad_version);
	tcase_add_test(tc, test_envelope_bad_magic);
	tcase_add_test(tc, test_envelope_bad_key_name);
	tcase_add_test(tc, test_envelope_seal_args);
	tcase_add_test(tc, test_envelope_open_args);
	suite_add_tcase(s, tc);

	tc = tcase_create("encoding");
	tcase_add_test(tc, test_base64_vectors);
	tcase_add_test(tc, test_base64_bad_chars);
	tcase_add_test(tc, test_base64_bad_padding);
	tcase_add_test(tc, test_base64_trailing_bits);
	tcase_add_test(tc, test_base64_bad_length);
	tcase_add_test(tc, test_base64url_bad);
	tcase_add_test(tc, test_base64_alphabet_exhaustive);
	tcase_add_test(tc, test_base64_capacity);
	tcase_add_test(tc, test_base64_alloc_roundtrip);
	tcase_add_test(tc, test_hex);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = crypto_suite};
