/* test_hsm.c - keycenter/hsm against the real SoftHSM2 token of tests/run:
 * login failures told apart, key generation with its least-privilege
 * attributes read back from the token, public keys as PEM, KEK wrapping and
 * AES-GCM checked against OpenSSL in software, tampering, durability across
 * a module reload, ECDSA checkpoint signatures verified with EVP and the
 * openssl command, and concurrent use of one handle. Issue 18: a raw
 * PKCS#11 caller holding the PIN tries to unwrap a KEK in readable form and
 * is refused by the root key's unwrap template; a root key made before the
 * template is refused by kc_hsm_root_check() and moved by
 * kc_hsm_root_migrate(), including after a crash in the middle.
 */
#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "crypto.h"
#include "err.h"
#include "keycenter/hsm.h"
#include "log.h"
#include "tests/check_main.h"

/* The raw PKCS#11 interface, for the attacker's side of the tests (see the
 * note in keycenter/hsm.c on p11-kit's compatibility macros). */
#include <p11-kit/pkcs11.h>
#undef value
#undef value_len
#undef count

static const char *env(const char *name)
{
	const char *v = getenv(name);
	if (!v || !*v)
		ck_abort_msg("environment variable %s is not set (run through tests/run)", name);
	return v;
}

#define ck_assert_err(expr, want)                                                                  \
	do {                                                                                       \
		int rc_ = (expr);                                                                  \
		ck_assert_msg(rc_ == (want), "%s: got %s, want %s", #expr, mica_strerror(rc_),     \
			      mica_strerror(want));                                                \
	} while (0)

/* A file under MICA_TEST_DIR, named for this process so runs never collide;
 * returns its path (static storage, a few live at once). */
static const char *test_file(const char *name, const void *data, size_t len)
{
	static char paths[4][512];
	static int next;
	char *path = paths[next++ % 4];
	FILE *f;

	snprintf(path, sizeof(paths[0]), "%s/hsm-%d-%s", env("MICA_TEST_DIR"), (int)getpid(), name);
	f = fopen(path, "wb");
	ck_assert_msg(f != NULL, "cannot create %s: %s", path, strerror(errno));
	ck_assert_uint_eq(fwrite(data, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
	return path;
}

static kc_hsm *open_hsm(void)
{
	kc_hsm *h = NULL;
	int rc = kc_hsm_open(&h, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"),
			     env("MICA_HSM_PIN_FILE"));
	ck_assert_msg(rc == 0, "kc_hsm_open: %s", mica_strerror(rc));
	ck_assert_ptr_nonnull(h);
	return h;
}

/* Generate the keys unless an earlier test of this run did. */
static void ensure_keys(kc_hsm *h)
{
	char *pem = NULL;
	int rc = kc_hsm_public_pem(h, KC_HSM_ROOT_LABEL, &pem);

	if (rc == MICA_ENOTFOUND)
		ck_assert_err(kc_hsm_init_keys(h, 0), 0);
	else
		ck_assert_err(rc, 0);
	free(pem);
}

static kc_hsm_key *new_kek(kc_hsm *h, uint8_t **blob, size_t *blob_len)
{
	kc_hsm_key *kek = NULL;
	uint8_t *b = NULL;
	size_t n = 0;

	ck_assert_err(kc_hsm_kek_create(h, &b, &n), 0);
	ck_assert_uint_eq(n, KC_HSM_KEK_BLOB_LEN);
	ck_assert_err(kc_hsm_kek_load(h, b, n, &kek), 0);
	ck_assert_ptr_nonnull(kek);
	if (blob) {
		*blob = b;
		*blob_len = n;
	} else {
		free(b);
	}
	return kek;
}

static EVP_PKEY *public_key(kc_hsm *h, const char *label)
{
	char *pem = NULL;
	BIO *bio;
	EVP_PKEY *pkey;

	ck_assert_err(kc_hsm_public_pem(h, label, &pem), 0);
	ck_assert_ptr_nonnull(strstr(pem, "-----BEGIN PUBLIC KEY-----"));
	bio = BIO_new_mem_buf(pem, -1);
	ck_assert_ptr_nonnull(bio);
	pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
	ck_assert_msg(pkey != NULL, "OpenSSL cannot parse the PEM of %s", label);
	BIO_free(bio);
	free(pem);
	return pkey;
}

/* ---- Opening ------------------------------------------------------------- */

START_TEST(open_wrong_pin)
{
	kc_hsm *h = (kc_hsm *)1;
	const char *wrong = test_file("wrong.pin", "0123456789abcdef-wrong\n", 23);
	const char *short_pin = test_file("short.pin", "ab", 2);

	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"), wrong),
		      MICA_EPIN);
	ck_assert_ptr_null(h);
	/* Shorter than SoftHSM's minimum PIN length (4). */
	ck_assert_err(
		kc_hsm_open(&h, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"), short_pin),
		MICA_EPIN);
	/* Failed logins leave the module finalised: the right PIN still works. */
	kc_hsm_close(open_hsm());
}
END_TEST

START_TEST(open_unknown_token)
{
	kc_hsm *h = (kc_hsm *)1;

	ck_assert_err(
		kc_hsm_open(&h, env("MICA_HSM_MODULE"), "no-such-token", env("MICA_HSM_PIN_FILE")),
		MICA_EHSM);
	ck_assert_ptr_null(h);
	/* A prefix of the real label is not the label. */
	char prefix[64];
	snprintf(prefix, sizeof(prefix), "%.*s", (int)strlen(env("MICA_HSM_TOKEN_LABEL")) - 1,
		 env("MICA_HSM_TOKEN_LABEL"));
	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), prefix, env("MICA_HSM_PIN_FILE")),
		      MICA_EHSM);
	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), "", env("MICA_HSM_PIN_FILE")),
		      MICA_ECONFIG);
	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), "0123456789abcdef0123456789abcdefX",
				  env("MICA_HSM_PIN_FILE")),
		      MICA_ECONFIG);
}
END_TEST

START_TEST(open_bad_module)
{
	kc_hsm *h = (kc_hsm *)1;

	ck_assert_err(kc_hsm_open(&h, "/nonexistent/libsofthsm2.so", env("MICA_HSM_TOKEN_LABEL"),
				  env("MICA_HSM_PIN_FILE")),
		      MICA_EHSM);
	ck_assert_ptr_null(h);
	/* A real shared library that is not a PKCS#11 module. */
	ck_assert_err(
		kc_hsm_open(&h, "libz.so.1", env("MICA_HSM_TOKEN_LABEL"), env("MICA_HSM_PIN_FILE")),
		MICA_EHSM);
}
END_TEST

START_TEST(open_bad_pin_file)
{
	kc_hsm *h = (kc_hsm *)1;
	char missing[512];
	char big[400];

	snprintf(missing, sizeof(missing), "%s/hsm-%d-missing.pin", env("MICA_TEST_DIR"),
		 (int)getpid());
	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"), missing),
		      MICA_ECONFIG);
	ck_assert_ptr_null(h);
	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"),
				  test_file("empty.pin", "", 0)),
		      MICA_ECONFIG);
	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"),
				  test_file("newline.pin", "\r\n", 2)),
		      MICA_ECONFIG);
	memset(big, 'x', sizeof(big));
	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"),
				  test_file("big.pin", big, sizeof(big))),
		      MICA_ECONFIG);
	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"),
				  env("MICA_TEST_DIR")),
		      MICA_ECONFIG);
	ck_assert_err(kc_hsm_open(NULL, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"),
				  env("MICA_HSM_PIN_FILE")),
		      MICA_EINVAL);
}
END_TEST

/* The PIN file may end with a newline, as an editor would leave it. */
START_TEST(open_pin_with_newline)
{
	FILE *f = fopen(env("MICA_HSM_PIN_FILE"), "rb");
	char pin[300];
	size_t n;
	kc_hsm *h = NULL;

	ck_assert_ptr_nonnull(f);
	n = fread(pin, 1, sizeof(pin) - 2, f);
	fclose(f);
	ck_assert_uint_gt(n, 0);
	pin[n++] = '\n';
	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"),
				  test_file("nl.pin", pin, n)),
		      0);
	kc_hsm_close(h);
	mica_wipe(pin, sizeof(pin));
}
END_TEST

START_TEST(open_twice_in_process)
{
	kc_hsm *h = open_hsm(), *h2 = (kc_hsm *)1;

	ck_assert_err(kc_hsm_open(&h2, env("MICA_HSM_MODULE"), env("MICA_HSM_TOKEN_LABEL"),
				  env("MICA_HSM_PIN_FILE")),
		      MICA_ESTATE);
	ck_assert_ptr_null(h2);
	/* The failed second open must not have finalised the first. */
	ensure_keys(h);
	kc_hsm_key *kek = new_kek(h, NULL, NULL);
	kc_hsm_key_free(h, kek);
	kc_hsm_close(h);
	kc_hsm_close(NULL);
}
END_TEST

/* ---- A token of the test's own ------------------------------------------ */

/* Point SOFTHSM2_CONF (of this forked test only) at a new token directory
 * with |n| tokens labelled |label| and user PIN |pin|; returns the PIN file. */
static const char *private_tokens(const char *name, const char *label, int n, const char *pin)
{
	char dir[512], conf[600], cmd[2048];
	FILE *f;

	snprintf(dir, sizeof(dir), "%s/hsm-%d-%s", env("MICA_TEST_DIR"), (int)getpid(), name);
	ck_assert_int_eq(mkdir(dir, 0700), 0);
	snprintf(conf, sizeof(conf), "%s/softhsm2.conf", dir);
	f = fopen(conf, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n",
		dir);
	fclose(f);
	ck_assert_int_eq(setenv("SOFTHSM2_CONF", conf, 1), 0);
	for (int i = 0; i < n; i++) {
		snprintf(cmd, sizeof(cmd),
			 "softhsm2-util --init-token --free --label '%s' --so-pin so-%s --pin '%s' "
			 ">/dev/null",
			 label, pin, pin);
		ck_assert_msg(system(cmd) == 0, "softhsm2-util failed: %s", cmd);
	}
	char pin_name[64];
	snprintf(pin_name, sizeof(pin_name), "%s.pin", name);
	return test_file(pin_name, pin, strlen(pin));
}

START_TEST(uninitialised_token)
{
	const char *pin_file = private_tokens("fresh", "mica-fresh", 1, "fresh-pin-1234");
	kc_hsm *h = NULL;
	struct kc_hsm_key_info info;
	uint8_t digest[KC_HSM_DIGEST_LEN] = {0};
	uint8_t *out = (uint8_t *)1;
	size_t out_len = 1;
	char *pem = (char *)1;

	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), "mica-fresh", pin_file), 0);
	ck_assert_err(kc_hsm_public_pem(h, KC_HSM_ROOT_LABEL, &pem), MICA_ENOTFOUND);
	ck_assert_ptr_null(pem);
	ck_assert_err(kc_hsm_key_info(h, KC_HSM_AUDIT_LABEL, &info), MICA_ENOTFOUND);
	ck_assert_err(kc_hsm_kek_create(h, &out, &out_len), MICA_ENOTFOUND);
	ck_assert_ptr_null(out);
	ck_assert_uint_eq(out_len, 0);
	ck_assert_err(kc_hsm_sign(h, digest, &out, &out_len), MICA_ENOTFOUND);
	kc_hsm_close(h);
}
END_TEST

START_TEST(duplicate_token_labels)
{
	const char *pin_file = private_tokens("twins", "mica-twin", 2, "twin-pin-1234");
	kc_hsm *h = (kc_hsm *)1;

	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), "mica-twin", pin_file), MICA_EHSM);
	ck_assert_ptr_null(h);
}
END_TEST

/* ---- Keys ---------------------------------------------------------------- */

START_TEST(init_keys_refuses_then_forces)
{
	kc_hsm *h = open_hsm();
	char *pem_before = NULL, *pem_after = NULL, *pem_forced = NULL;
	uint8_t *blob = NULL;
	size_t blob_len = 0;
	kc_hsm_key *kek = NULL;

	ensure_keys(h);
	ck_assert_err(kc_hsm_public_pem(h, KC_HSM_ROOT_LABEL, &pem_before), 0);
	kc_hsm_key_free(h, new_kek(h, &blob, &blob_len));

	ck_assert_err(kc_hsm_init_keys(h, 0), MICA_EEXISTS);
	ck_assert_err(kc_hsm_public_pem(h, KC_HSM_ROOT_LABEL, &pem_after), 0);
	ck_assert_str_eq(pem_before, pem_after);

	ck_assert_err(kc_hsm_init_keys(h, 1), 0);
	ck_assert_err(kc_hsm_public_pem(h, KC_HSM_ROOT_LABEL, &pem_forced), 0);
	ck_assert_str_ne(pem_before, pem_forced);
	/* Exactly one pair per label after forcing. */
	struct kc_hsm_key_info info;
	ck_assert_err(kc_hsm_key_info(h, KC_HSM_ROOT_LABEL, &info), 0);
	ck_assert_err(kc_hsm_key_info(h, KC_HSM_AUDIT_LABEL, &info), 0);
	/* A KEK wrapped by the old root no longer loads. */
	ck_assert_err(kc_hsm_kek_load(h, blob, blob_len, &kek), MICA_EAUTH);
	ck_assert_ptr_null(kek);

	free(blob);
	free(pem_forced);
	free(pem_after);
	free(pem_before);
	kc_hsm_close(h);
}
END_TEST

START_TEST(root_key_attributes)
{
	kc_hsm *h = open_hsm();
	struct kc_hsm_key_info k;

	ensure_keys(h);
	ck_assert_err(kc_hsm_key_info(h, KC_HSM_ROOT_LABEL, &k), 0);
	ck_assert(k.is_rsa);
	ck_assert_uint_eq(k.bits, 4096);
	ck_assert(k.priv.token);
	ck_assert(k.priv.is_private);
	ck_assert(!k.priv.modifiable);
	ck_assert(k.priv.sensitive);
	ck_assert(k.priv.always_sensitive);
	ck_assert(!k.priv.extractable);
	ck_assert(k.priv.never_extractable);
	ck_assert(k.priv.local);
	ck_assert(k.priv.unwrap);
	ck_assert(!k.priv.decrypt);
	ck_assert(!k.priv.sign);
	ck_assert(!k.priv.sign_recover);
	ck_assert(!k.priv.derive);
	ck_assert(k.pub.token);
	ck_assert(!k.pub.modifiable);
	ck_assert(k.pub.wrap);
	ck_assert(!k.pub.encrypt);
	ck_assert(!k.pub.verify);
	ck_assert(!k.pub.verify_recover);
	ck_assert(!k.pub.derive);
	kc_hsm_close(h);
}
END_TEST

START_TEST(audit_key_attributes)
{
	kc_hsm *h = open_hsm();
	struct kc_hsm_key_info k;

	ensure_keys(h);
	ck_assert_err(kc_hsm_key_info(h, KC_HSM_AUDIT_LABEL, &k), 0);
	ck_assert(!k.is_rsa);
	ck_assert_uint_eq(k.bits, 256);
	ck_assert(k.priv.token);
	ck_assert(k.priv.is_private);
	ck_assert(k.priv.sensitive);
	ck_assert(!k.priv.extractable);
	ck_assert(k.priv.never_extractable);
	ck_assert(k.priv.sign);
	ck_assert(!k.priv.decrypt);
	ck_assert(!k.priv.unwrap);
	ck_assert(!k.priv.sign_recover);
	ck_assert(!k.priv.derive);
	ck_assert(k.pub.verify);
	ck_assert(!k.pub.encrypt);
	ck_assert(!k.pub.wrap);
	ck_assert(!k.pub.verify_recover);
	ck_assert(!k.pub.derive);
	ck_assert_err(kc_hsm_key_info(h, "no-such-key", &k), MICA_ENOTFOUND);
	kc_hsm_close(h);
}
END_TEST

START_TEST(public_pems_parse)
{
	kc_hsm *h = open_hsm();
	EVP_PKEY *root, *audit;
	char group[64];
	size_t group_len = 0;
	char *pem = (char *)1;

	ensure_keys(h);
	root = public_key(h, KC_HSM_ROOT_LABEL);
	ck_assert(EVP_PKEY_is_a(root, "RSA"));
	ck_assert_int_eq(EVP_PKEY_get_bits(root), 4096);
	audit = public_key(h, KC_HSM_AUDIT_LABEL);
	ck_assert(EVP_PKEY_is_a(audit, "EC"));
	ck_assert_int_eq(EVP_PKEY_get_utf8_string_param(audit, OSSL_PKEY_PARAM_GROUP_NAME, group,
							sizeof(group), &group_len),
			 1);
	ck_assert_str_eq(group, "prime256v1");
	ck_assert_err(kc_hsm_public_pem(h, "no-such-key", &pem), MICA_ENOTFOUND);
	ck_assert_ptr_null(pem);
	EVP_PKEY_free(audit);
	EVP_PKEY_free(root);
	kc_hsm_close(h);
}
END_TEST

/* ---- KEKs and sealing ---------------------------------------------------- */

START_TEST(seal_open_round_trip)
{
	kc_hsm *h = open_hsm();
	static const char aad[] = "keycenter/key_version/name=users.email/version=3";
	static const char msg[] = "thirty-two bytes of key material";
	uint8_t *sealed = NULL, *sealed2 = NULL, *pt = NULL;
	size_t sealed_len = 0, sealed2_len = 0, pt_len = 0;

	ensure_keys(h);
	kc_hsm_key *kek = new_kek(h, NULL, NULL);

	ck_assert_err(kc_hsm_seal(h, kek, aad, strlen(aad), msg, strlen(msg), &sealed, &sealed_len),
		      0);
	ck_assert_uint_eq(sealed_len, strlen(msg) + KC_HSM_SEAL_OVERHEAD);
	/* The ciphertext is not the plaintext. */
	ck_assert(memcmp(sealed + KC_HSM_NONCE_LEN, msg, strlen(msg)) != 0);
	ck_assert_err(
		kc_hsm_open_sealed(h, kek, aad, strlen(aad), sealed, sealed_len, &pt, &pt_len), 0);
	ck_assert_uint_eq(pt_len, strlen(msg));
	ck_assert_mem_eq(pt, msg, pt_len);
	free(pt);

	/* Fresh nonce each time. */
	ck_assert_err(
		kc_hsm_seal(h, kek, aad, strlen(aad), msg, strlen(msg), &sealed2, &sealed2_len), 0);
	ck_assert(memcmp(sealed, sealed2, KC_HSM_NONCE_LEN) != 0);
	free(sealed2);
	free(sealed);

	/* Empty plaintext and empty associated data. */
	ck_assert_err(kc_hsm_seal(h, kek, NULL, 0, NULL, 0, &sealed, &sealed_len), 0);
	ck_assert_uint_eq(sealed_len, KC_HSM_SEAL_OVERHEAD);
	ck_assert_err(kc_hsm_open_sealed(h, kek, NULL, 0, sealed, sealed_len, &pt, &pt_len), 0);
	ck_assert_ptr_nonnull(pt);
	ck_assert_uint_eq(pt_len, 0);
	free(pt);
	ck_assert_err(kc_hsm_open_sealed(h, kek, "x", 1, sealed, sealed_len, &pt, &pt_len),
		      MICA_EAUTH);
	free(sealed);

	/* A plaintext that is not a multiple of the AES block. */
	uint8_t big[1000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7);
	ck_assert_err(kc_hsm_seal(h, kek, NULL, 0, big, 999, &sealed, &sealed_len), 0);
	ck_assert_err(kc_hsm_open_sealed(h, kek, NULL, 0, sealed, sealed_len, &pt, &pt_len), 0);
	ck_assert_uint_eq(pt_len, 999);
	ck_assert_mem_eq(pt, big, 999);
	free(pt);
	free(sealed);

	ck_assert_err(kc_hsm_seal(h, NULL, NULL, 0, msg, 1, &sealed, &sealed_len), MICA_EINVAL);
	ck_assert_err(kc_hsm_seal(h, kek, NULL, 3, msg, 1, &sealed, &sealed_len), MICA_EINVAL);
	kc_hsm_key_free(h, kek);
	kc_hsm_close(h);
}
END_TEST

START_TEST(tampering_detected)
{
	kc_hsm *h = open_hsm();
	static const char aad[] = "account/users/email/42";
	static const char msg[] = "secret";
	uint8_t *sealed = NULL, *pt = (uint8_t *)1;
	size_t sealed_len = 0, pt_len = 1;

	ensure_keys(h);
	kc_hsm_key *kek = new_kek(h, NULL, NULL);
	ck_assert_err(kc_hsm_seal(h, kek, aad, strlen(aad), msg, strlen(msg), &sealed, &sealed_len),
		      0);

	ck_assert_err(kc_hsm_open_sealed(h, kek, "account/users/email/43", strlen(aad), sealed,
					 sealed_len, &pt, &pt_len),
		      MICA_EAUTH);
	ck_assert_ptr_null(pt);
	ck_assert_uint_eq(pt_len, 0);
	ck_assert_err(kc_hsm_open_sealed(h, kek, NULL, 0, sealed, sealed_len, &pt, &pt_len),
		      MICA_EAUTH);
	/* Every byte: nonce, ciphertext and tag. */
	for (size_t i = 0; i < sealed_len; i++) {
		sealed[i] ^= 0x01;
		ck_assert_err(kc_hsm_open_sealed(h, kek, aad, strlen(aad), sealed, sealed_len, &pt,
						 &pt_len),
			      MICA_EAUTH);
		sealed[i] ^= 0x01;
	}
	/* Cut short: below the overhead it is truncated, above it the tag fails. */
	for (size_t n = 0; n < KC_HSM_SEAL_OVERHEAD; n++)
		ck_assert_err(kc_hsm_open_sealed(h, kek, aad, strlen(aad), sealed, n, &pt, &pt_len),
			      MICA_ETRUNCATED);
	for (size_t n = KC_HSM_SEAL_OVERHEAD; n < sealed_len; n++)
		ck_assert_err(kc_hsm_open_sealed(h, kek, aad, strlen(aad), sealed, n, &pt, &pt_len),
			      MICA_EAUTH);
	uint8_t longer[64];
	memcpy(longer, sealed, sealed_len);
	longer[sealed_len] = 0;
	ck_assert_err(
		kc_hsm_open_sealed(h, kek, aad, strlen(aad), longer, sealed_len + 1, &pt, &pt_len),
		MICA_EAUTH);
	/* Another KEK. */
	kc_hsm_key *other = new_kek(h, NULL, NULL);
	ck_assert_err(
		kc_hsm_open_sealed(h, other, aad, strlen(aad), sealed, sealed_len, &pt, &pt_len),
		MICA_EAUTH);
	/* After all those failures the untouched input still opens. */
	ck_assert_err(
		kc_hsm_open_sealed(h, kek, aad, strlen(aad), sealed, sealed_len, &pt, &pt_len), 0);
	ck_assert_mem_eq(pt, msg, strlen(msg));
	free(pt);
	free(sealed);
	kc_hsm_key_free(h, other);
	kc_hsm_key_free(h, kek);
	kc_hsm_close(h);
}
END_TEST

START_TEST(bad_kek_blobs)
{
	kc_hsm *h = open_hsm();
	uint8_t *blob = NULL;
	size_t blob_len = 0;
	kc_hsm_key *kek = (kc_hsm_key *)1;

	ensure_keys(h);
	ck_assert_err(kc_hsm_kek_create(h, &blob, &blob_len), 0);
	blob[100] ^= 0x80;
	ck_assert_err(kc_hsm_kek_load(h, blob, blob_len, &kek), MICA_EAUTH);
	ck_assert_ptr_null(kek);
	blob[100] ^= 0x80;
	blob[blob_len - 1] ^= 0x01;
	ck_assert_err(kc_hsm_kek_load(h, blob, blob_len, &kek), MICA_EAUTH);
	blob[blob_len - 1] ^= 0x01;
	ck_assert_err(kc_hsm_kek_load(h, blob, blob_len - 1, &kek), MICA_ETRUNCATED);
	ck_assert_err(kc_hsm_kek_load(h, blob, 0, &kek), MICA_ETRUNCATED);
	uint8_t longer[KC_HSM_KEK_BLOB_LEN + 1] = {0};
	memcpy(longer, blob, blob_len);
	ck_assert_err(kc_hsm_kek_load(h, longer, sizeof(longer), &kek), MICA_ETOOBIG);
	uint8_t zeros[KC_HSM_KEK_BLOB_LEN] = {0};
	ck_assert_err(kc_hsm_kek_load(h, zeros, sizeof(zeros), &kek), MICA_EAUTH);
	/* All 0xff is larger than the modulus: not even an RSA ciphertext. */
	memset(zeros, 0xff, sizeof(zeros));
	ck_assert_err(kc_hsm_kek_load(h, zeros, sizeof(zeros), &kek), MICA_EAUTH);
	/* The intact blob still loads. */
	ck_assert_err(kc_hsm_kek_load(h, blob, blob_len, &kek), 0);
	kc_hsm_key_free(h, kek);
	free(blob);
	kc_hsm_close(h);
}
END_TEST

/* RSA-OAEP encryption of |key| (|key_len| bytes) with the root public key,
 * in software, with |md| as OAEP and MGF1 hash. */
static uint8_t *software_wrap(EVP_PKEY *root, const EVP_MD *md, const uint8_t *key, size_t key_len,
			      size_t *out_len)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, root, NULL);
	uint8_t *out;

	ck_assert_ptr_nonnull(ctx);
	ck_assert_int_eq(EVP_PKEY_encrypt_init(ctx), 1);
	ck_assert_int_eq(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING), 1);
	ck_assert_int_eq(EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md), 1);
	ck_assert_int_eq(EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md), 1);
	ck_assert_int_eq(EVP_PKEY_encrypt(ctx, NULL, out_len, key, key_len), 1);
	out = malloc(*out_len);
	ck_assert_ptr_nonnull(out);
	ck_assert_int_eq(EVP_PKEY_encrypt(ctx, out, out_len, key, key_len), 1);
	EVP_PKEY_CTX_free(ctx);
	return out;
}

/* AES-256-GCM in software, in the sealed format; |decrypt| selects the
 * direction. Returns the output length, or -1 if the tag does not verify. */
static int software_gcm(int decrypt, const uint8_t key[32], const uint8_t *aad, size_t aad_len,
			const uint8_t *in, size_t in_len, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int n = 0, fin = 0, total;

	ck_assert_ptr_nonnull(ctx);
	if (!decrypt) {
		memset(out, 0x5a, KC_HSM_NONCE_LEN); /* any nonce will do here */
		ck_assert_int_eq(EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, out), 1);
		ck_assert_int_eq(EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len), 1);
		ck_assert_int_eq(
			EVP_EncryptUpdate(ctx, out + KC_HSM_NONCE_LEN, &n, in, (int)in_len), 1);
		ck_assert_int_eq(EVP_EncryptFinal_ex(ctx, out + KC_HSM_NONCE_LEN + n, &fin), 1);
		total = KC_HSM_NONCE_LEN + n + fin;
		ck_assert_int_eq(
			EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, KC_HSM_TAG_LEN, out + total),
			1);
		total += KC_HSM_TAG_LEN;
	} else {
		size_t ct_len = in_len - KC_HSM_SEAL_OVERHEAD;

		ck_assert_int_eq(EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, in), 1);
		ck_assert_int_eq(EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len), 1);
		ck_assert_int_eq(
			EVP_DecryptUpdate(ctx, out, &n, in + KC_HSM_NONCE_LEN, (int)ct_len), 1);
		ck_assert_int_eq(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, KC_HSM_TAG_LEN,
						     (void *)(in + in_len - KC_HSM_TAG_LEN)),
				 1);
		total = EVP_DecryptFinal_ex(ctx, out + n, &fin) == 1 ? n + fin : -1;
	}
	EVP_CIPHER_CTX_free(ctx);
	return total;
}

/* A KEK wrapped in software with the exported root PEM loads into the token,
 * and what the token seals is standard AES-256-GCM in the documented layout:
 * this checks the PEM, the OAEP parameters and the GCM parameters at once. */
START_TEST(interoperates_with_openssl)
{
	kc_hsm *h = open_hsm();
	static const char aad[] = "keycenter/kek/account";
	static const char msg[] = "data key material, 32 bytes long";
	uint8_t key[32], soft[128], *sealed = NULL, *pt = NULL, *blob;
	size_t sealed_len = 0, pt_len = 0, blob_len;
	kc_hsm_key *kek = NULL;
	EVP_PKEY *root;

	ensure_keys(h);
	root = public_key(h, KC_HSM_ROOT_LABEL);
	ck_assert_err(mica_random(key, sizeof(key)), 0);
	blob = software_wrap(root, EVP_sha1(), key, sizeof(key), &blob_len);
	ck_assert_uint_eq(blob_len, KC_HSM_KEK_BLOB_LEN);
	ck_assert_err(kc_hsm_kek_load(h, blob, blob_len, &kek), 0);
	free(blob);

	ck_assert_err(kc_hsm_seal(h, kek, aad, strlen(aad), msg, strlen(msg), &sealed, &sealed_len),
		      0);
	ck_assert_int_eq(
		software_gcm(1, key, (const uint8_t *)aad, strlen(aad), sealed, sealed_len, soft),
		(int)strlen(msg));
	ck_assert_mem_eq(soft, msg, strlen(msg));
	free(sealed);

	int n = software_gcm(0, key, (const uint8_t *)aad, strlen(aad), (const uint8_t *)msg,
			     strlen(msg), soft);
	ck_assert_err(kc_hsm_open_sealed(h, kek, aad, strlen(aad), soft, (size_t)n, &pt, &pt_len),
		      0);
	ck_assert_uint_eq(pt_len, strlen(msg));
	ck_assert_mem_eq(pt, msg, pt_len);
	free(pt);
	kc_hsm_key_free(h, kek);

	/* SoftHSM 2.6.1 implements OAEP with SHA-1 only: a blob made with
	 * OAEP-SHA-256 is refused. */
	blob = software_wrap(root, EVP_sha256(), key, sizeof(key), &blob_len);
	ck_assert_err(kc_hsm_kek_load(h, blob, blob_len, &kek), MICA_EAUTH);
	ck_assert_ptr_null(kek);
	free(blob);

	mica_wipe(key, sizeof(key));
	EVP_PKEY_free(root);
	kc_hsm_close(h);
}
END_TEST

/* The wrapped KEK is all that persists: after the module is finalised and
 * loaded again (a daemon restart), it opens what was sealed before. */
START_TEST(kek_survives_reopen)
{
	static const char aad[] = "durable";
	static const char msg[] = "sealed before the restart";
	kc_hsm *h = open_hsm();
	uint8_t *blob = NULL, *sealed = NULL, *pt = NULL;
	size_t blob_len = 0, sealed_len = 0, pt_len = 0;
	kc_hsm_key *kek;

	ensure_keys(h);
	kek = new_kek(h, &blob, &blob_len);
	ck_assert_err(kc_hsm_seal(h, kek, aad, strlen(aad), msg, strlen(msg), &sealed, &sealed_len),
		      0);
	kc_hsm_key_free(h, kek);
	kc_hsm_close(h);

	h = open_hsm();
	ck_assert_err(kc_hsm_kek_load(h, blob, blob_len, &kek), 0);
	ck_assert_err(
		kc_hsm_open_sealed(h, kek, aad, strlen(aad), sealed, sealed_len, &pt, &pt_len), 0);
	ck_assert_uint_eq(pt_len, strlen(msg));
	ck_assert_mem_eq(pt, msg, pt_len);
	free(pt);
	kc_hsm_key_free(h, kek);
	kc_hsm_close(h);
	free(sealed);
	free(blob);
}
END_TEST

/* ---- Signatures ---------------------------------------------------------- */

static int openssl_verify(const char *pub, const char *sig, const char *msg)
{
	char cmd[2048];

	snprintf(cmd, sizeof(cmd),
		 "openssl dgst -sha256 -verify '%s' -signature '%s' '%s' >/dev/null 2>&1", pub, sig,
		 msg);
	return system(cmd);
}

START_TEST(sign_verifies_offline)
{
	kc_hsm *h = open_hsm();
	static const char msg[] = "checkpoint seq=1000 head=4f2a...";
	uint8_t digest[SHA256_DIGEST_LENGTH], *sig = NULL;
	size_t sig_len = 0;
	EVP_PKEY *pub;
	EVP_MD_CTX *md;
	char *pem = NULL;

	ensure_keys(h);
	SHA256((const unsigned char *)msg, strlen(msg), digest);
	ck_assert_err(kc_hsm_sign(h, digest, &sig, &sig_len), 0);
	ck_assert_uint_le(sig_len, 72);
	ck_assert_uint_eq(sig[0], 0x30); /* DER SEQUENCE */

	pub = public_key(h, KC_HSM_AUDIT_LABEL);
	md = EVP_MD_CTX_new();
	ck_assert_int_eq(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub), 1);
	ck_assert_int_eq(EVP_DigestVerify(md, sig, sig_len, (const uint8_t *)msg, strlen(msg)), 1);
	ck_assert_int_eq(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub), 1);
	ck_assert_int_ne(EVP_DigestVerify(md, sig, sig_len, (const uint8_t *)msg, strlen(msg) - 1),
			 1);
	EVP_MD_CTX_free(md);

	/* What an auditor runs. */
	ck_assert_err(kc_hsm_public_pem(h, KC_HSM_AUDIT_LABEL, &pem), 0);
	const char *pub_path = test_file("audit.pem", pem, strlen(pem));
	const char *sig_path = test_file("sig.der", sig, sig_len);
	const char *msg_path = test_file("msg", msg, strlen(msg));
	ck_assert_int_eq(openssl_verify(pub_path, sig_path, msg_path), 0);
	msg_path = test_file("msg2", msg, strlen(msg) - 1);
	ck_assert_int_ne(openssl_verify(pub_path, sig_path, msg_path), 0);

	free(pem);
	EVP_PKEY_free(pub);
	free(sig);
	kc_hsm_close(h);
}
END_TEST

/* ---- Concurrency --------------------------------------------------------- */

struct worker {
	kc_hsm *h;
	const kc_hsm_key *kek;
	int id;
	int failures;
	int last_rc;
};

static void *seal_open_loop(void *arg)
{
	struct worker *w = arg;

	for (int i = 0; i < 200; i++) {
		char aad[64], msg[64];
		uint8_t *sealed = NULL, *pt = NULL;
		size_t sealed_len = 0, pt_len = 0;
		int rc;

		snprintf(aad, sizeof(aad), "thread=%d/i=%d", w->id, i);
		snprintf(msg, sizeof(msg), "message %d from thread %d", i, w->id);
		rc = kc_hsm_seal(w->h, w->kek, aad, strlen(aad), msg, strlen(msg), &sealed,
				 &sealed_len);
		if (rc == 0)
			rc = kc_hsm_open_sealed(w->h, w->kek, aad, strlen(aad), sealed, sealed_len,
						&pt, &pt_len);
		if (rc == 0 && (pt_len != strlen(msg) || memcmp(pt, msg, pt_len) != 0))
			rc = MICA_EAUTH;
		if (rc) {
			w->failures++;
			w->last_rc = rc;
		}
		free(pt);
		free(sealed);
	}
	return NULL;
}

START_TEST(concurrent_seal_open)
{
	kc_hsm *h = open_hsm();
	pthread_t threads[4];
	struct worker workers[4];

	ensure_keys(h);
	kc_hsm_key *kek = new_kek(h, NULL, NULL);
	for (int i = 0; i < 4; i++) {
		workers[i] = (struct worker){.h = h, .kek = kek, .id = i};
		ck_assert_int_eq(pthread_create(&threads[i], NULL, seal_open_loop, &workers[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_join(threads[i], NULL), 0);
	for (int i = 0; i < 4; i++)
		ck_assert_msg(workers[i].failures == 0, "thread %d: %d failures, last %s", i,
			      workers[i].failures, mica_strerror(workers[i].last_rc));
	kc_hsm_key_free(h, kek);
	kc_hsm_close(h);
}
END_TEST

/* ---- Issue 18: a PIN holder with raw PKCS#11 ---------------------------- */

/* A second, hostile PKCS#11 client: the module loaded directly, logged in to
 * the token labelled |label| with the PIN in |pin_file|. kc_hsm must not be
 * open in this process at the same time (one C_Initialize per process). */
struct raw {
	void *mod;
	CK_FUNCTION_LIST_PTR p;
	CK_SESSION_HANDLE s;
};

static void raw_open(struct raw *r, const char *label, const char *pin_file)
{
	CK_C_GetFunctionList get;
	CK_SLOT_ID slots[64];
	CK_ULONG n = 64;
	char pin[300];
	FILE *f = fopen(pin_file, "r");
	bool found = false;

	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(fgets(pin, sizeof(pin), f));
	fclose(f);
	pin[strcspn(pin, "\r\n")] = '\0';
	r->mod = dlopen(env("MICA_HSM_MODULE"), RTLD_NOW | RTLD_LOCAL);
	ck_assert_ptr_nonnull(r->mod);
	get = (CK_C_GetFunctionList)dlsym(r->mod, "C_GetFunctionList");
	ck_assert_ptr_nonnull(get);
	ck_assert_int_eq(get(&r->p), CKR_OK);
	ck_assert_int_eq(r->p->C_Initialize(NULL), CKR_OK);
	ck_assert_int_eq(r->p->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
	for (CK_ULONG i = 0; i < n && !found; i++) {
		CK_TOKEN_INFO ti;
		size_t l = strlen(label);
		if (r->p->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		if (memcmp(ti.label, label, l) == 0 && (l == 32 || ti.label[l] == ' ')) {
			ck_assert_int_eq(r->p->C_OpenSession(slots[i],
							     CKF_SERIAL_SESSION | CKF_RW_SESSION,
							     NULL, NULL, &r->s),
					 CKR_OK);
			found = true;
		}
	}
	ck_assert_msg(found, "no token labelled %s", label);
	ck_assert_int_eq(r->p->C_Login(r->s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
	mica_wipe(pin, sizeof(pin));
}

static void raw_close(struct raw *r)
{
	ck_assert_int_eq(r->p->C_Finalize(NULL), CKR_OK);
	dlclose(r->mod);
}

static CK_OBJECT_HANDLE raw_find(struct raw *r, CK_OBJECT_CLASS cls, const char *label)
{
	CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
			    {CKA_LABEL, (void *)label, strlen(label)}};
	CK_OBJECT_HANDLE o[2];
	CK_ULONG n = 0;

	ck_assert_int_eq(r->p->C_FindObjectsInit(r->s, t, 2), CKR_OK);
	ck_assert_int_eq(r->p->C_FindObjects(r->s, o, 2, &n), CKR_OK);
	ck_assert_int_eq(r->p->C_FindObjectsFinal(r->s), CKR_OK);
	ck_assert_uint_eq(n, 1);
	return o[0];
}

static CK_RV raw_unwrap(struct raw *r, CK_OBJECT_HANDLE root, const uint8_t *blob, size_t len,
			CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *obj)
{
	CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
	CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
	*obj = CK_INVALID_HANDLE;
	return r->p->C_UnwrapKey(r->s, &m, root, (CK_BYTE_PTR)blob, len, t, n, obj);
}

/* The attack of issue 18 against a token initialised by kc_hsm_init_keys():
 * with the PIN and a stored KEK blob, unwrap the KEK as readable, or with
 * the protective attributes left out, then read CKA_VALUE. Every route to
 * the key bytes is refused by the token itself. */
START_TEST(pin_holder_cannot_extract_kek)
{
	static CK_BBOOL t = CK_TRUE, f = CK_FALSE;
	static CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
	static CK_KEY_TYPE aes = CKK_AES;
	CK_ATTRIBUTE readable[] = {{CKA_CLASS, &sk, sizeof(sk)},
				   {CKA_KEY_TYPE, &aes, sizeof(aes)},
				   {CKA_TOKEN, &f, sizeof(f)},
				   {CKA_SENSITIVE, &f, sizeof(f)},
				   {CKA_EXTRACTABLE, &t, sizeof(t)}};
	CK_ATTRIBUTE omitted[] = {{CKA_CLASS, &sk, sizeof(sk)},
				  {CKA_KEY_TYPE, &aes, sizeof(aes)},
				  {CKA_TOKEN, &f, sizeof(f)}};
	CK_ATTRIBUTE as_token[] = {{CKA_CLASS, &sk, sizeof(sk)},
				   {CKA_KEY_TYPE, &aes, sizeof(aes)},
				   {CKA_TOKEN, &t, sizeof(t)},
				   {CKA_EXTRACTABLE, &t, sizeof(t)}};
	CK_ATTRIBUTE derivable[] = {
		{CKA_CLASS, &sk, sizeof(sk)},	  {CKA_KEY_TYPE, &aes, sizeof(aes)},
		{CKA_TOKEN, &f, sizeof(f)},	  {CKA_SENSITIVE, &t, sizeof(t)},
		{CKA_EXTRACTABLE, &f, sizeof(f)}, {CKA_ENCRYPT, &t, sizeof(t)},
		{CKA_DECRYPT, &t, sizeof(t)},	  {CKA_WRAP, &f, sizeof(f)},
		{CKA_UNWRAP, &f, sizeof(f)},	  {CKA_SIGN, &f, sizeof(f)},
		{CKA_VERIFY, &f, sizeof(f)},	  {CKA_DERIVE, &t, sizeof(t)}};
	/* What the Key Center itself asks for: allowed, and still unreadable. */
	CK_ATTRIBUTE honest[] = {
		{CKA_CLASS, &sk, sizeof(sk)},	  {CKA_KEY_TYPE, &aes, sizeof(aes)},
		{CKA_TOKEN, &f, sizeof(f)},	  {CKA_SENSITIVE, &t, sizeof(t)},
		{CKA_EXTRACTABLE, &f, sizeof(f)}, {CKA_ENCRYPT, &t, sizeof(t)},
		{CKA_DECRYPT, &t, sizeof(t)},	  {CKA_WRAP, &f, sizeof(f)},
		{CKA_UNWRAP, &f, sizeof(f)},	  {CKA_SIGN, &f, sizeof(f)},
		{CKA_VERIFY, &f, sizeof(f)},	  {CKA_DERIVE, &f, sizeof(f)}};
	uint8_t *blob = NULL, value[64];
	size_t blob_len = 0;
	struct raw r;
	CK_OBJECT_HANDLE root, kek, copy, mine, wrapped_obj;
	kc_hsm *h = open_hsm();

	ensure_keys(h);
	ck_assert_err(kc_hsm_root_check(h), 0);
	ck_assert_err(kc_hsm_kek_create(h, &blob, &blob_len), 0);
	kc_hsm_close(h);

	raw_open(&r, env("MICA_HSM_TOKEN_LABEL"), env("MICA_HSM_PIN_FILE"));
	root = raw_find(&r, CKO_PRIVATE_KEY, KC_HSM_ROOT_LABEL);
	ck_assert_int_eq(raw_unwrap(&r, root, blob, blob_len, readable, 5, &kek),
			 CKR_TEMPLATE_INCONSISTENT);
	ck_assert_int_eq(raw_unwrap(&r, root, blob, blob_len, omitted, 3, &kek),
			 CKR_TEMPLATE_INCONSISTENT);
	ck_assert_int_eq(raw_unwrap(&r, root, blob, blob_len, as_token, 4, &kek),
			 CKR_TEMPLATE_INCONSISTENT);
	ck_assert_int_eq(raw_unwrap(&r, root, blob, blob_len, derivable, 12, &kek),
			 CKR_TEMPLATE_INCONSISTENT);

	/* The honest template works; the value stays inside the token. */
	ck_assert_int_eq(raw_unwrap(&r, root, blob, blob_len, honest, 12, &kek), CKR_OK);
	CK_ATTRIBUTE va = {CKA_VALUE, value, sizeof(value)};
	ck_assert_int_eq(r.p->C_GetAttributeValue(r.s, kek, &va, 1), CKR_ATTRIBUTE_SENSITIVE);
	CK_ATTRIBUTE make_ext[] = {{CKA_EXTRACTABLE, &t, sizeof(t)}};
	CK_ATTRIBUTE make_plain[] = {{CKA_SENSITIVE, &f, sizeof(f)}};
	ck_assert_int_ne(r.p->C_SetAttributeValue(r.s, kek, make_ext, 1), CKR_OK);
	ck_assert_int_ne(r.p->C_SetAttributeValue(r.s, kek, make_plain, 1), CKR_OK);
	ck_assert_int_ne(r.p->C_CopyObject(r.s, kek, make_ext, 1, &copy), CKR_OK);
	ck_assert_int_ne(r.p->C_CopyObject(r.s, kek, make_plain, 1, &copy), CKR_OK);
	/* Nor can it be wrapped out under a key of the attacker's. */
	CK_ULONG len32 = 32;
	CK_ATTRIBUTE wk[] = {{CKA_CLASS, &sk, sizeof(sk)},
			     {CKA_KEY_TYPE, &aes, sizeof(aes)},
			     {CKA_VALUE_LEN, &len32, sizeof(len32)},
			     {CKA_TOKEN, &f, sizeof(f)},
			     {CKA_WRAP, &t, sizeof(t)},
			     {CKA_EXTRACTABLE, &t, sizeof(t)},
			     {CKA_SENSITIVE, &f, sizeof(f)}};
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0}, kw = {CKM_AES_KEY_WRAP, NULL, 0};
	uint8_t out[128];
	CK_ULONG out_len = sizeof(out);
	ck_assert_int_eq(r.p->C_GenerateKey(r.s, &gen, wk, 7, &mine), CKR_OK);
	ck_assert_int_eq(r.p->C_WrapKey(r.s, &kw, mine, kek, out, &out_len), CKR_KEY_UNEXTRACTABLE);
	(void)wrapped_obj;
	/* And the root key's template cannot be taken away. */
	CK_ATTRIBUTE no_template[] = {{CKA_UNWRAP_TEMPLATE, NULL, 0}};
	ck_assert_int_ne(r.p->C_SetAttributeValue(r.s, root, no_template, 1), CKR_OK);
	ck_assert_int_ne(r.p->C_CopyObject(r.s, root, no_template, 1, &copy), CKR_OK);
	raw_close(&r);
	free(blob);
}
END_TEST

/* A root key as kc_hsm_init_keys() made it before issue 18: unwrap without
 * a template. Generated on the token labelled |label| with raw PKCS#11. */
static void make_legacy_root(const char *label, const char *pin_file)
{
	static CK_BBOOL t = CK_TRUE, f = CK_FALSE;
	static CK_OBJECT_CLASS pubc = CKO_PUBLIC_KEY, privc = CKO_PRIVATE_KEY;
	static CK_KEY_TYPE rsa = CKK_RSA;
	static CK_BYTE e[] = {1, 0, 1};
	CK_ULONG bits = KC_HSM_ROOT_BITS;
	uint8_t id[16];
	struct raw r;
	CK_ATTRIBUTE pub[] = {{CKA_CLASS, &pubc, sizeof(pubc)},
			      {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
			      {CKA_TOKEN, &t, 1},
			      {CKA_PRIVATE, &f, 1},
			      {CKA_MODIFIABLE, &f, 1},
			      {CKA_LABEL, (void *)KC_HSM_ROOT_LABEL, strlen(KC_HSM_ROOT_LABEL)},
			      {CKA_ID, id, sizeof(id)},
			      {CKA_MODULUS_BITS, &bits, sizeof(bits)},
			      {CKA_PUBLIC_EXPONENT, e, sizeof(e)},
			      {CKA_WRAP, &t, 1},
			      {CKA_ENCRYPT, &f, 1},
			      {CKA_VERIFY, &f, 1}};
	CK_ATTRIBUTE priv[] = {{CKA_CLASS, &privc, sizeof(privc)},
			       {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
			       {CKA_TOKEN, &t, 1},
			       {CKA_PRIVATE, &t, 1},
			       {CKA_MODIFIABLE, &f, 1},
			       {CKA_LABEL, (void *)KC_HSM_ROOT_LABEL, strlen(KC_HSM_ROOT_LABEL)},
			       {CKA_ID, id, sizeof(id)},
			       {CKA_SENSITIVE, &t, 1},
			       {CKA_EXTRACTABLE, &f, 1},
			       {CKA_UNWRAP, &t, 1},
			       {CKA_DECRYPT, &f, 1},
			       {CKA_SIGN, &f, 1}};
	CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
	CK_OBJECT_HANDLE po, ko;

	ck_assert_err(mica_random(id, sizeof(id)), 0);
	raw_open(&r, label, pin_file);
	ck_assert_int_eq(r.p->C_GenerateKeyPair(r.s, &m, pub, 12, priv, 12, &po, &ko), CKR_OK);
	raw_close(&r);
}

struct captured {
	int calls, fail_with, exit_in_commit;
	const char *exit_file;
	uint8_t blobs[2][KC_HSM_KEK_BLOB_LEN];
};

/* The database side of a migration: keep the blobs, or fail, or die right
 * after "committing" them (written to |exit_file|) as a crash would. */
static int capture_commit(const uint8_t *const *blobs, size_t n, void *arg)
{
	struct captured *c = arg;
	c->calls++;
	if (c->fail_with)
		return c->fail_with;
	ck_assert_uint_eq(n, 2);
	for (size_t i = 0; i < n; i++)
		memcpy(c->blobs[i], blobs[i], KC_HSM_KEK_BLOB_LEN);
	if (c->exit_in_commit) {
		FILE *f = fopen(c->exit_file, "wb");
		if (!f || fwrite(c->blobs, 1, sizeof(c->blobs), f) != sizeof(c->blobs) || fclose(f))
			_exit(3);
		_exit(0);
	}
	return 0;
}

static void open_with(kc_hsm *h, const uint8_t *blob, const uint8_t *sealed, size_t sealed_len,
		      const char *want)
{
	kc_hsm_key *kek = NULL;
	uint8_t *pt = NULL;
	size_t pt_len = 0;
	ck_assert_err(kc_hsm_kek_load(h, blob, KC_HSM_KEK_BLOB_LEN, &kek), 0);
	ck_assert_err(kc_hsm_open_sealed(h, kek, "m", 1, sealed, sealed_len, &pt, &pt_len), 0);
	ck_assert_uint_eq(pt_len, strlen(want));
	ck_assert_mem_eq(pt, want, pt_len);
	free(pt);
	kc_hsm_key_free(h, kek);
}

/* A token made before issue 18 is refused, then migrated: a failed commit
 * changes nothing; a crash right after the commit (_i = 1) or before it
 * (_i = 0, the database still holds the old blobs) is finished by running
 * the migration again; afterwards what was sealed still opens, the new root
 * enforces the template, and a third run has nothing to do. */
START_TEST(legacy_root_refused_then_migrated)
{
	char name[32], label[32], crash_file[600];
	static const char *const msgs[2] = {"sealed under kek 0", "sealed under kek 1"};
	uint8_t *blobs[2], *sealed[2];
	size_t len, sealed_len[2];
	struct captured fail = {.fail_with = MICA_EDB}, crash = {0}, again = {0};
	struct kc_hsm_key_info info;
	kc_hsm *h = NULL;
	kc_hsm_key *kek;
	int status;
	pid_t pid;

	snprintf(name, sizeof(name), "legacy%d", _i);
	snprintf(label, sizeof(label), "mica-legacy-%d", _i);
	const char *pin_file = private_tokens(name, label, 1, "legacy-pin-1234");
	make_legacy_root(label, pin_file);

	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), label, pin_file), 0);
	ck_assert_err(kc_hsm_root_check(h), MICA_ESTATE);
	for (int i = 0; i < 2; i++) {
		ck_assert_err(kc_hsm_kek_create(h, &blobs[i], &len), 0);
		ck_assert_err(kc_hsm_kek_load(h, blobs[i], len, &kek), 0);
		ck_assert_err(kc_hsm_seal(h, kek, "m", 1, msgs[i], strlen(msgs[i]), &sealed[i],
					  &sealed_len[i]),
			      0);
		kc_hsm_key_free(h, kek);
	}
	/* A commit that fails leaves exactly the old state. */
	ck_assert_err(
		kc_hsm_root_migrate(h, (const uint8_t *const *)blobs, 2, capture_commit, &fail),
		MICA_EDB);
	ck_assert_int_eq(fail.calls, 1);
	ck_assert_err(kc_hsm_key_info(h, KC_HSM_ROOT_LABEL, &info), 0);
	ck_assert_err(kc_hsm_root_check(h), MICA_ESTATE);
	open_with(h, blobs[0], sealed[0], sealed_len[0], msgs[0]);
	kc_hsm_close(h);

	/* A migration that dies right after its commit. */
	snprintf(crash_file, sizeof(crash_file), "%s/hsm-%d-%s.crash", env("MICA_TEST_DIR"),
		 (int)getpid(), name);
	crash.exit_in_commit = 1;
	crash.exit_file = crash_file;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		kc_hsm *c = NULL;
		if (kc_hsm_open(&c, env("MICA_HSM_MODULE"), label, pin_file) != 0)
			_exit(2);
		int rc = kc_hsm_root_migrate(c, (const uint8_t *const *)blobs, 2, capture_commit,
					     &crash);
		_exit(rc ? 5 : 4); /* capture_commit never returned */
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
	FILE *f = fopen(crash_file, "rb");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fread(crash.blobs, 1, sizeof(crash.blobs), f), sizeof(crash.blobs));
	fclose(f);

	/* Two root pairs now: the Key Center refuses the token until the
	 * migration is run again. */
	ck_assert_err(kc_hsm_open(&h, env("MICA_HSM_MODULE"), label, pin_file), 0);
	ck_assert_err(kc_hsm_root_check(h), MICA_EHSM);
	const uint8_t *stored[2];
	for (int i = 0; i < 2; i++)
		stored[i] = _i ? crash.blobs[i] : blobs[i];
	ck_assert_err(kc_hsm_root_migrate(h, stored, 2, capture_commit, &again), 0);
	ck_assert_int_eq(again.calls, _i ? 0 : 1);
	for (int i = 0; i < 2; i++)
		stored[i] = _i ? crash.blobs[i] : again.blobs[i];
	ck_assert_err(kc_hsm_root_check(h), 0);
	ck_assert_err(kc_hsm_key_info(h, KC_HSM_ROOT_LABEL, &info), 0);
	for (int i = 0; i < 2; i++)
		open_with(h, stored[i], sealed[i], sealed_len[i], msgs[i]);
	/* The old blobs went with the old root key. */
	kek = NULL;
	ck_assert_err(kc_hsm_kek_load(h, blobs[0], KC_HSM_KEK_BLOB_LEN, &kek), MICA_EAUTH);
	ck_assert_err(kc_hsm_root_migrate(h, stored, 2, capture_commit, &again), MICA_EEXISTS);
	kc_hsm_close(h);
	for (int i = 0; i < 2; i++) {
		free(blobs[i]);
		free(sealed[i]);
	}
}
END_TEST

static Suite *hsm_suite(void)
{
	Suite *s = suite_create("hsm");
	TCase *open = tcase_create("open");
	TCase *keys = tcase_create("keys");

	tcase_set_timeout(open, 60);
	tcase_add_test(open, open_wrong_pin);
	tcase_add_test(open, open_unknown_token);
	tcase_add_test(open, open_bad_module);
	tcase_add_test(open, open_bad_pin_file);
	tcase_add_test(open, open_pin_with_newline);
	tcase_add_test(open, open_twice_in_process);
	tcase_add_test(open, uninitialised_token);
	tcase_add_test(open, duplicate_token_labels);
	suite_add_tcase(s, open);

	/* RSA-4096 generation in SoftHSM takes seconds, more under ASan. */
	tcase_set_timeout(keys, 180);
	tcase_add_test(keys, init_keys_refuses_then_forces);
	tcase_add_test(keys, root_key_attributes);
	tcase_add_test(keys, audit_key_attributes);
	tcase_add_test(keys, public_pems_parse);
	tcase_add_test(keys, seal_open_round_trip);
	tcase_add_test(keys, tampering_detected);
	tcase_add_test(keys, bad_kek_blobs);
	tcase_add_test(keys, interoperates_with_openssl);
	tcase_add_test(keys, kek_survives_reopen);
	tcase_add_test(keys, sign_verifies_offline);
	tcase_add_test(keys, concurrent_seal_open);
	tcase_add_test(keys, pin_holder_cannot_extract_kek);
	tcase_add_loop_test(keys, legacy_root_refused_then_migrated, 0, 2);
	suite_add_tcase(s, keys);
	return s;
}

static const char *const needs[] = {"SOFTHSM2_CONF",	 "MICA_HSM_MODULE", "MICA_HSM_TOKEN_LABEL",
				    "MICA_HSM_PIN_FILE", "MICA_TEST_DIR",   NULL};

const struct mica_check mica_check = {
	.suite = hsm_suite, .needs = needs, .log = MICA_CHECK_LOG_ERRORS};
