/* fuzz_envelope.c - libFuzzer target for the envelope parser and opener.
 * Arbitrary bytes go through mica_envelope_parse() and mica_envelope_open()
 * under fixed keys; the target aborts if they disagree, if parse returns
 * pointers outside the input, or if a successfully opened envelope does not
 * survive a re-seal round trip. Seeds: tests/fuzz/corpus/fuzz_envelope/.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "fuzz_check.h"

/* The seed envelopes in the corpus were sealed with these, so the fuzzer
 * starts from inputs that authenticate. */
static const uint8_t fuzz_key[32] = {
	0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a,
	0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
	0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
};
static const char fuzz_aad[] = "fuzz/envelope/context";

static void check_parsed(const uint8_t *data, size_t size, const struct mica_envelope *env)
{
	CHECK(env->version == MICA_ENVELOPE_VERSION);
	CHECK(env->key_name_len >= 1 && env->key_name_len <= MICA_ENVELOPE_NAME_MAX);
	CHECK(env->key_name == (const char *)data + 5);
	CHECK(env->header_len == 25 + env->key_name_len);
	CHECK(env->nonce == data + env->header_len - MICA_ENVELOPE_NONCE_LEN);
	CHECK(env->ciphertext == data + env->header_len);
	CHECK(env->tag == env->ciphertext + env->ciphertext_len);
	CHECK(env->tag + MICA_ENVELOPE_TAG_LEN == data + size);
	CHECK(size == mica_envelope_size(env->key_name_len, env->ciphertext_len));
}

/* Seal the plaintext again under the same name and version and open it. */
static void check_reseal(const struct mica_envelope *env, const uint8_t *key, size_t key_len,
			 const uint8_t *pt, size_t pt_len)
{
	char name[MICA_ENVELOPE_NAME_MAX + 1];
	uint8_t *again = NULL, *back = NULL;
	size_t again_len = 0, back_len = 0;
	struct mica_envelope env2;

	memcpy(name, env->key_name, env->key_name_len);
	name[env->key_name_len] = '\0';
	CHECK(mica_envelope_seal(key, key_len, name, env->key_version, fuzz_aad,
				 sizeof(fuzz_aad) - 1, pt, pt_len, &again, &again_len) == 0);
	CHECK(mica_envelope_parse(again, again_len, &env2) == 0);
	CHECK(env2.key_version == env->key_version);
	CHECK(env2.key_name_len == env->key_name_len);
	CHECK(memcmp(env2.key_name, env->key_name, env->key_name_len) == 0);
	CHECK(mica_envelope_open(key, key_len, fuzz_aad, sizeof(fuzz_aad) - 1, again, again_len,
				 &back, &back_len) == 0);
	CHECK(back_len == pt_len && memcmp(back, pt, pt_len) == 0);
	free(back);
	free(again);
}

/* Open with one key; the outcome must agree with what parse said. */
static void try_open(const uint8_t *data, size_t size, int parse_rc,
		     const struct mica_envelope *env, size_t key_len)
{
	uint8_t *pt = NULL;
	size_t pt_len = 0;
	int rc = mica_envelope_open(fuzz_key, key_len, fuzz_aad, sizeof(fuzz_aad) - 1, data, size,
				    &pt, &pt_len);

	if (parse_rc != 0) {
		CHECK(rc == parse_rc);
	} else {
		CHECK(rc == 0 || rc == MICA_EAUTH);
	}
	if (rc != 0) {
		CHECK(pt == NULL && pt_len == 0);
		return;
	}
	CHECK(pt != NULL && pt_len == env->ciphertext_len);
	check_reseal(env, fuzz_key, key_len, pt, pt_len);
	free(pt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mica_envelope env;
	int rc = mica_envelope_parse(data, size, &env);

	if (rc == 0)
		check_parsed(data, size, &env);
	else
		CHECK(rc == MICA_ETRUNCATED || rc == MICA_EBADHEADER || rc == MICA_EBADVERSION);
	try_open(data, size, rc, &env, 32);
	try_open(data, size, rc, &env, 16);
	return 0;
}
