/* test_tlsrec.c - lib/tlsrec: the traffic keys and two application data
 * records of RFC 8448 section 3 (a TLS 1.3 trace made by another
 * implementation), HKDF-Expand-Label for SHA-384 and KeyUpdate checked
 * against OpenSSL's own TLS13-KDF, round trips in the three suites, every
 * altered byte refused, padding, and the header and length rules.
 */
#include <check.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/kdf.h>

#include "crypto.h"
#include "tests/check_main.h"
#include "tlsrec.h"

static size_t unhex(const char *h, uint8_t *out, size_t cap)
{
	size_t n = 0;
	ck_assert_int_eq(mica_hex_decode(h, strlen(h), out, cap, &n), 0);
	return n;
}

/* RFC 8448 section 3: {server} and {client} application traffic secrets and
 * the keys and IVs derived from them. */
#define S_AP "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643"
#define C_AP "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5"

START_TEST(rfc8448_application_keys)
{
	uint8_t secret[32], want[32];
	mica_tlsrec_dir d;
	unhex(S_AP, secret, sizeof(secret));
	ck_assert_int_eq(mica_tlsrec_init(&d, MICA_TLSREC_AES_128_GCM_SHA256, secret, 32, 0), 0);
	unhex("9f02283b6c9c07efc26bb9f2ac92e356", want, sizeof(want));
	ck_assert_mem_eq(d.key, want, 16);
	unhex("cf782b88dd83549aadf1e984", want, sizeof(want));
	ck_assert_mem_eq(d.iv, want, 12);
	unhex(C_AP, secret, sizeof(secret));
	ck_assert_int_eq(mica_tlsrec_init(&d, MICA_TLSREC_AES_128_GCM_SHA256, secret, 32, 0), 0);
	unhex("17422dda596ed5d9acd890e3c63f5051", want, sizeof(want));
	ck_assert_mem_eq(d.key, want, 16);
	unhex("5b78923dee08579033e523d9", want, sizeof(want));
	ck_assert_mem_eq(d.iv, want, 12);
	mica_tlsrec_wipe(&d);
}
END_TEST

/* The trace's application data: 50 bytes 00..31 from the server (its second
 * record under the key: the first was the NewSessionTicket) and from the
 * client (its first). */
START_TEST(rfc8448_application_records)
{
	static const char *srv_rec =
		"17030300432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36e30efaf97d90e6dffc"
		"602dcb501a59a8fcc49c4bf2e5f0a21c0047c2abf332540dd032e167c2955d";
	static const char *cli_rec =
		"1703030043a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b9819a8a5b46b395bd5"
		"4a9a20441e2b62974e1f5a6292a2977014bd1e3deae63aeebb21694915e4";
	uint8_t content[50], secret[32], want[80], rec[80], pt[MICA_TLSREC_INNER_MAX];
	for (int i = 0; i < 50; i++)
		content[i] = (uint8_t)i;
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	mica_tlsrec_dir s, c;
	unhex(S_AP, secret, sizeof(secret));
	ck_assert_int_eq(mica_tlsrec_init(&s, MICA_TLSREC_AES_128_GCM_SHA256, secret, 32, 1), 0);
	unhex(C_AP, secret, sizeof(secret));
	ck_assert_int_eq(mica_tlsrec_init(&c, MICA_TLSREC_AES_128_GCM_SHA256, secret, 32, 0), 0);

	size_t n = unhex(srv_rec, want, sizeof(want));
	ck_assert_uint_eq(n, mica_tlsrec_sealed_len(50));
	ck_assert_int_eq(mica_tlsrec_seal(&s, x, MICA_TLSREC_APPLICATION_DATA, content, 50, rec),
			 0);
	ck_assert_mem_eq(rec, want, n);
	ck_assert_uint_eq(s.seq, 2);
	n = unhex(cli_rec, want, sizeof(want));
	ck_assert_int_eq(mica_tlsrec_seal(&c, x, MICA_TLSREC_APPLICATION_DATA, content, 50, rec),
			 0);
	ck_assert_mem_eq(rec, want, n);

	/* And the server's record opens with the reader's state at seq 1. */
	unhex(S_AP, secret, sizeof(secret));
	ck_assert_int_eq(mica_tlsrec_init(&s, MICA_TLSREC_AES_128_GCM_SHA256, secret, 32, 1), 0);
	n = unhex(srv_rec, want, sizeof(want));
	size_t len = 0;
	uint8_t type = 0;
	ck_assert_int_eq(mica_tlsrec_open(&s, x, want, n, pt, &len, &type), 0);
	ck_assert_uint_eq(len, 50);
	ck_assert_uint_eq(type, MICA_TLSREC_APPLICATION_DATA);
	ck_assert_mem_eq(pt, content, 50);
	/* At the wrong sequence number it does not. */
	s.seq = 1;
	s.seq++;
	ck_assert_int_eq(mica_tlsrec_open(&s, x, want, n, pt, &len, &type), MICA_EAUTH);
	ck_assert_uint_eq(s.seq, 2);
	EVP_CIPHER_CTX_free(x);
	mica_tlsrec_wipe(&s);
	mica_tlsrec_wipe(&c);
}
END_TEST

/* OpenSSL's TLS13-KDF (libssl's own key schedule) computing the same label. */
static void openssl_expand_label(const char *md, const uint8_t *secret, size_t slen,
				 const char *label, uint8_t *out, size_t olen)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS13-KDF", NULL);
	ck_assert_ptr_nonnull(kdf);
	EVP_KDF_CTX *k = EVP_KDF_CTX_new(kdf);
	int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
	OSSL_PARAM p[] = {
		OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
		OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, slen),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, (void *)"tls13 ", 6),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, (void *)label,
						  strlen(label)),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_DATA, (void *)"", 0),
		OSSL_PARAM_construct_end()};
	ck_assert_int_eq(EVP_KDF_derive(k, out, olen, p), 1);
	EVP_KDF_CTX_free(k);
	EVP_KDF_free(kdf);
}

START_TEST(sha384_keys_and_key_update_match_openssl)
{
	uint8_t secret[48], next[48], key[32], iv[12];
	for (int i = 0; i < 48; i++)
		secret[i] = (uint8_t)(0xa0 + i);
	mica_tlsrec_dir d;
	ck_assert_int_eq(mica_tlsrec_init(&d, MICA_TLSREC_AES_256_GCM_SHA384, secret, 48, 7), 0);
	openssl_expand_label("SHA384", secret, 48, "key", key, 32);
	openssl_expand_label("SHA384", secret, 48, "iv", iv, 12);
	ck_assert_mem_eq(d.key, key, 32);
	ck_assert_mem_eq(d.iv, iv, 12);
	ck_assert_uint_eq(d.seq, 7);
	ck_assert_int_eq(mica_tlsrec_update(&d), 0);
	openssl_expand_label("SHA384", secret, 48, "traffic upd", next, 48);
	ck_assert_mem_eq(d.secret, next, 48);
	openssl_expand_label("SHA384", next, 48, "key", key, 32);
	ck_assert_mem_eq(d.key, key, 32);
	ck_assert_uint_eq(d.seq, 0);
	/* ChaCha20-Poly1305: SHA-256, a 32-byte key. */
	ck_assert_int_eq(mica_tlsrec_init(&d, MICA_TLSREC_CHACHA20_POLY1305_SHA256, secret, 32, 0),
			 0);
	openssl_expand_label("SHA256", secret, 32, "key", key, 32);
	ck_assert_mem_eq(d.key, key, 32);
	/* Wrong lengths and unknown suites are refused. */
	ck_assert_int_eq(mica_tlsrec_init(&d, MICA_TLSREC_AES_256_GCM_SHA384, secret, 32, 0),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_tlsrec_init(&d, 0x1304, secret, 32, 0), MICA_EINVAL);
	mica_tlsrec_wipe(&d);
}
END_TEST

static const uint16_t suites[] = {MICA_TLSREC_AES_128_GCM_SHA256, MICA_TLSREC_AES_256_GCM_SHA384,
				  MICA_TLSREC_CHACHA20_POLY1305_SHA256};

/* A writer and a reader on the same secret agree across records and a
 * KeyUpdate; every single altered byte of a record is refused, and a
 * refused record leaves the reader where it was. */
START_TEST(round_trip_and_every_altered_byte_refused)
{
	uint16_t suite = suites[_i];
	size_t slen = mica_tlsrec_secret_len(suite);
	uint8_t secret[48], rec[200], pt[MICA_TLSREC_INNER_MAX], type;
	memset(secret, 0x5c, sizeof(secret));
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	mica_tlsrec_dir w, r;
	ck_assert_int_eq(mica_tlsrec_init(&w, suite, secret, slen, 3), 0);
	ck_assert_int_eq(mica_tlsrec_init(&r, suite, secret, slen, 3), 0);
	const char *msg = "a message under the application traffic key";
	size_t mlen = strlen(msg), n = mica_tlsrec_sealed_len(mlen), len;
	for (int round = 0; round < 3; round++) {
		ck_assert_int_eq(mica_tlsrec_seal(&w, x, MICA_TLSREC_APPLICATION_DATA,
						  (const uint8_t *)msg, mlen, rec),
				 0);
		for (size_t i = 0; i < n; i++) {
			rec[i] ^= 0x01;
			int e = mica_tlsrec_open(&r, x, rec, n, pt, &len, &type);
			ck_assert_msg(e == MICA_EAUTH || (i < 5 && e == MICA_EBADHEADER),
				      "byte %zu altered: %d", i, e);
			rec[i] ^= 0x01;
		}
		ck_assert_int_eq(mica_tlsrec_open(&r, x, rec, n, pt, &len, &type), 0);
		ck_assert_uint_eq(len, mlen);
		ck_assert_mem_eq(pt, msg, mlen);
		ck_assert_uint_eq(type, MICA_TLSREC_APPLICATION_DATA);
		/* Replayed: the reader moved on. */
		ck_assert_int_eq(mica_tlsrec_open(&r, x, rec, n, pt, &len, &type), MICA_EAUTH);
		if (round == 1) {
			ck_assert_int_eq(mica_tlsrec_update(&w), 0);
			ck_assert_int_eq(mica_tlsrec_update(&r), 0);
		}
	}
	/* A reader that missed the KeyUpdate cannot open what follows. */
	mica_tlsrec_dir stale;
	ck_assert_int_eq(mica_tlsrec_init(&stale, suite, secret, slen, w.seq), 0);
	ck_assert_int_eq(
		mica_tlsrec_seal(&w, x, MICA_TLSREC_ALERT, (const uint8_t *)"\1\0", 2, rec), 0);
	ck_assert_int_eq(
		mica_tlsrec_open(&stale, x, rec, mica_tlsrec_sealed_len(2), pt, &len, &type),
		MICA_EAUTH);
	ck_assert_int_eq(mica_tlsrec_open(&r, x, rec, mica_tlsrec_sealed_len(2), pt, &len, &type),
			 0);
	ck_assert_uint_eq(type, MICA_TLSREC_ALERT);
	ck_assert_uint_eq(len, 2);
	EVP_CIPHER_CTX_free(x);
	mica_tlsrec_wipe(&w);
	mica_tlsrec_wipe(&r);
	mica_tlsrec_wipe(&stale);
}
END_TEST

/* Padding: zeros after the content type are stripped; a record of nothing
 * but zeros has no content type. seal() adds no padding, so the inner
 * plaintext is built as content || type with a type of 0. */
START_TEST(padding_and_missing_content_type)
{
	uint8_t secret[32] = {1}, rec[64], pt[MICA_TLSREC_INNER_MAX], type;
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	mica_tlsrec_dir w, r;
	ck_assert_int_eq(mica_tlsrec_init(&w, MICA_TLSREC_AES_128_GCM_SHA256, secret, 32, 0), 0);
	ck_assert_int_eq(mica_tlsrec_init(&r, MICA_TLSREC_AES_128_GCM_SHA256, secret, 32, 0), 0);
	static const uint8_t padded[] = {'h', 'i', MICA_TLSREC_APPLICATION_DATA, 0, 0, 0};
	size_t len;
	ck_assert_int_eq(mica_tlsrec_seal(&w, x, 0, padded, sizeof(padded), rec), 0);
	ck_assert_int_eq(mica_tlsrec_open(&r, x, rec, mica_tlsrec_sealed_len(sizeof(padded)), pt,
					  &len, &type),
			 0);
	ck_assert_uint_eq(len, 2);
	ck_assert_uint_eq(type, MICA_TLSREC_APPLICATION_DATA);
	ck_assert_mem_eq(pt, "hi", 2);
	static const uint8_t zeros[4] = {0};
	ck_assert_int_eq(mica_tlsrec_seal(&w, x, 0, zeros, sizeof(zeros), rec), 0);
	ck_assert_int_eq(mica_tlsrec_open(&r, x, rec, mica_tlsrec_sealed_len(sizeof(zeros)), pt,
					  &len, &type),
			 MICA_ETRUNCATED);
	ck_assert_uint_eq(r.seq, 1);
	EVP_CIPHER_CTX_free(x);
	mica_tlsrec_wipe(&w);
	mica_tlsrec_wipe(&r);
}
END_TEST

/* AES-128-GCM of |inner| (a whole TLSInnerPlaintext, any length) as the
 * record of sequence number 0 under |d|: what only a key holder can make,
 * for the rules that apply after the tag verified. */
static size_t raw_seal(const mica_tlsrec_dir *d, const uint8_t *inner, size_t n, uint8_t *out)
{
	size_t clen = n + MICA_TLSREC_TAG_LEN;
	uint8_t hdr[5] = {23, 3, 3, (uint8_t)(clen >> 8), (uint8_t)clen};
	memcpy(out, hdr, 5);
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	int l = 0;
	ck_assert_int_eq(EVP_EncryptInit_ex(x, EVP_aes_128_gcm(), NULL, d->key, d->iv), 1);
	ck_assert_int_eq(EVP_EncryptUpdate(x, NULL, &l, hdr, 5), 1);
	ck_assert_int_eq(EVP_EncryptUpdate(x, out + 5, &l, inner, (int)n), 1);
	ck_assert_int_eq(EVP_EncryptFinal_ex(x, out + 5 + n, &l), 1);
	ck_assert_int_eq(EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, out + 5 + n), 1);
	EVP_CIPHER_CTX_free(x);
	return 5 + clen;
}

/* More than 2^14 bytes of content inside a ciphertext within its own limit
 * (2^14 + 256) is record_overflow; exactly 2^14 passes, and so does a
 * 2^14 + 255-byte inner plaintext of content, type and padding. */
START_TEST(content_over_2_14_is_refused)
{
	uint8_t secret[32] = {2}, type;
	static uint8_t inner[MICA_TLSREC_INNER_MAX], rec[MICA_TLSREC_CIPHERTEXT_MAX + 5],
		pt[MICA_TLSREC_INNER_MAX];
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	mica_tlsrec_dir r;
	size_t len;
	for (int over = 0; over < 3; over++) {
		ck_assert_int_eq(
			mica_tlsrec_init(&r, MICA_TLSREC_AES_128_GCM_SHA256, secret, 32, 0), 0);
		size_t content = MICA_TLSREC_CONTENT_MAX + (over == 1 ? 1 : 0);
		size_t n = over == 2 ? MICA_TLSREC_INNER_MAX : content + 1;
		memset(inner, 'a', content);
		memset(inner + content, 0, n - content);
		inner[content] = MICA_TLSREC_APPLICATION_DATA;
		size_t rl = raw_seal(&r, inner, n, rec);
		int e = mica_tlsrec_open(&r, x, rec, rl, pt, &len, &type);
		if (over == 1) {
			ck_assert_int_eq(e, MICA_ETOOBIG);
			ck_assert_uint_eq(r.seq, 0);
		} else {
			ck_assert_int_eq(e, 0);
			ck_assert_uint_eq(len, MICA_TLSREC_CONTENT_MAX);
		}
	}
	EVP_CIPHER_CTX_free(x);
	mica_tlsrec_wipe(&r);
}
END_TEST

START_TEST(header_rules)
{
	size_t total = 0;
	uint8_t h[5] = {23, 3, 3, 0, 17};
	ck_assert_int_eq(mica_tlsrec_header(h, &total), 0);
	ck_assert_uint_eq(total, 22);
	h[3] = 0x41; /* 16,640 = 2^14 + 256 */
	h[4] = 0x00;
	ck_assert_int_eq(mica_tlsrec_header(h, &total), 0);
	ck_assert_uint_eq(total, 16645);
	h[4] = 0x01;
	ck_assert_int_eq(mica_tlsrec_header(h, &total), MICA_EBADHEADER);
	uint8_t short_len[5] = {23, 3, 3, 0, 16};
	ck_assert_int_eq(mica_tlsrec_header(short_len, &total), MICA_EBADHEADER);
	uint8_t plain_alert[5] = {21, 3, 3, 0, 2};
	ck_assert_int_eq(mica_tlsrec_header(plain_alert, &total), MICA_EBADHEADER);
	uint8_t ccs[5] = {20, 3, 3, 0, 1};
	ck_assert_int_eq(mica_tlsrec_header(ccs, &total), MICA_EBADHEADER);
	uint8_t old[5] = {23, 3, 1, 0, 20};
	ck_assert_int_eq(mica_tlsrec_header(old, &total), MICA_EBADHEADER);

	/* open() wants exactly the record the header names. */
	uint8_t secret[32] = {3}, rec[64], pt[MICA_TLSREC_INNER_MAX], type;
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	mica_tlsrec_dir w, r;
	ck_assert_int_eq(mica_tlsrec_init(&w, MICA_TLSREC_AES_128_GCM_SHA256, secret, 32, 0), 0);
	ck_assert_int_eq(mica_tlsrec_init(&r, MICA_TLSREC_AES_128_GCM_SHA256, secret, 32, 0), 0);
	ck_assert_int_eq(mica_tlsrec_seal(&w, x, 23, (const uint8_t *)"abc", 3, rec), 0);
	size_t n = mica_tlsrec_sealed_len(3), len;
	ck_assert_int_eq(mica_tlsrec_open(&r, x, rec, n - 1, pt, &len, &type), MICA_EBADHEADER);
	ck_assert_int_eq(mica_tlsrec_open(&r, x, rec, n + 1, pt, &len, &type), MICA_EBADHEADER);
	ck_assert_int_eq(mica_tlsrec_open(&r, x, rec, 3, pt, &len, &type), MICA_EBADHEADER);
	ck_assert_int_eq(mica_tlsrec_open(&r, x, rec, n, pt, &len, &type), 0);
	/* The sequence number never wraps. */
	w.seq = UINT64_MAX;
	ck_assert_int_eq(mica_tlsrec_seal(&w, x, 23, (const uint8_t *)"abc", 3, rec), MICA_ERANGE);
	EVP_CIPHER_CTX_free(x);
	mica_tlsrec_wipe(&w);
	mica_tlsrec_wipe(&r);
}
END_TEST

static Suite *tlsrec_suite(void)
{
	Suite *s = suite_create("tlsrec");
	TCase *tc = tcase_create("tlsrec");
	tcase_add_test(tc, rfc8448_application_keys);
	tcase_add_test(tc, rfc8448_application_records);
	tcase_add_test(tc, sha384_keys_and_key_update_match_openssl);
	tcase_add_loop_test(tc, round_trip_and_every_altered_byte_refused, 0, 3);
	tcase_add_test(tc, padding_and_missing_content_type);
	tcase_add_test(tc, content_over_2_14_is_refused);
	tcase_add_test(tc, header_rules);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = tlsrec_suite};
