/* fuzz_altcha_payload.c - libFuzzer target for ALTCHA payload verification
 * (account/altcha.c). The input is tried twice: as the base64 text a client
 * submits, and as the JSON inside a well-formed base64 payload, so the
 * fuzzer reaches the JSON, hex, number and salt-parameter parsing. Each is
 * verified without and with wanted scope and cost. Whatever the bytes, the
 * verdict must be one of the documented ones and consistent: the wanted
 * checks come last, so they can only turn an "ok" into wrong_scope or
 * too_cheap.
 * Seeds (tests/fuzz/corpus/fuzz_altcha_payload/) are signed with |key|.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/altcha.h"
#include "crypto.h"
#include "fuzz_check.h"

/* 32 bytes; the seed corpus was signed with it. */
static const uint8_t key[] = "mica fuzz altcha hmac key 32byte";
#define NOW 1700000000

static int verify_want(const char *text, const struct acct_altcha_want *want,
		       struct acct_altcha_verdict *out)
{
	char challenge[ACCT_ALTCHA_HEX_LEN + 1];
	struct acct_altcha_verdict v;
	int rc = acct_altcha_verify(key, 32, text, NOW, want, challenge, &v);

	CHECK(rc == 0 || rc == MICA_EAUTH || rc == MICA_ENOMEM);
	CHECK(v.code != NULL && strcmp(v.code, acct_altcha_fault_code(v.fault)) == 0);
	if (rc == 0) {
		CHECK(v.fault == ACCT_ALTCHA_OK);
		CHECK(strlen(challenge) == ACCT_ALTCHA_HEX_LEN);
		CHECK(strspn(challenge, "0123456789abcdef") == ACCT_ALTCHA_HEX_LEN);
		CHECK(v.expires >= NOW);
	} else {
		CHECK(v.fault != ACCT_ALTCHA_OK);
		CHECK(challenge[0] == '\0');
	}
	if (!want)
		CHECK(v.fault != ACCT_ALTCHA_WRONG_SCOPE && v.fault != ACCT_ALTCHA_TOO_CHEAP);
	*out = v;
	return rc;
}

static void verify_text(const char *text)
{
	static const struct acct_altcha_want want = {"fuzz", 1000};
	struct acct_altcha_verdict plain, wanted;
	int rc = verify_want(text, NULL, &plain), rc_want = verify_want(text, &want, &wanted);

	if (rc == MICA_ENOMEM || rc_want == MICA_ENOMEM)
		return;
	if (plain.fault != ACCT_ALTCHA_OK)
		CHECK(wanted.fault == plain.fault);
	else
		CHECK(wanted.fault == ACCT_ALTCHA_OK || wanted.fault == ACCT_ALTCHA_WRONG_SCOPE ||
		      wanted.fault == ACCT_ALTCHA_TOO_CHEAP);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1), *b64 = NULL;

	CHECK(text != NULL);
	memcpy(text, data, size);
	text[size] = '\0';
	verify_text(text);
	free(text);

	if (size <= 3 * ACCT_ALTCHA_PAYLOAD_MAX / 4) {
		CHECK(mica_base64_encode_alloc(data, size, &b64, NULL) == 0);
		verify_text(b64);
		free(b64);
	}
	return 0;
}
