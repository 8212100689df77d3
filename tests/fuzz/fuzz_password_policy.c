/* fuzz_password_policy.c - libFuzzer target for the password module's
 * parsers of untrusted bytes (account/password.c). The first input byte
 * picks the parser, the rest is its input: 0 the miui policy, 1 the nist
 * policy (with the tests/fixtures/breached blocklist, or an empty one), 2 the
 * PHC string parser with needs_rehash (and verify when the stored cost is
 * tiny), 3 the HIBP range-file scanner. Accepted PHC strings must re-encode
 * to exactly the input, since the parser admits one spelling per hash.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "account/password.h"
#include "crypto.h"
#include "fuzz_check.h"

static acct_blocklist *blocklist;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static char empty[] = "/tmp/mica-fuzz-blocklist.XXXXXX";

	(void)argc;
	(void)argv;
	/* tests/run starts fuzzers in the repository root. */
	if (acct_blocklist_open("tests/fixtures/breached", &blocklist) == 0)
		return 0;
	CHECK(mkdtemp(empty) != NULL);
	CHECK(acct_blocklist_open(empty, &blocklist) == 0);
	rmdir(empty); /* the open directory stays usable and empty */
	return 0;
}

static void policy(const char *name, const char *pw)
{
	struct acct_password_verdict v;
	int rc = acct_password_check(name, pw, blocklist, &v);

	CHECK(rc == 0 || rc == MICA_EINVAL);
	CHECK(v.code != NULL);
	CHECK(memchr(v.message, '\0', sizeof(v.message)) != NULL);
	if (rc == 0) {
		CHECK(v.reason == ACCT_PASSWORD_OK && strcmp(v.code, "ok") == 0);
		if (strcmp(name, "miui") == 0) {
			size_t n = strlen(pw);

			CHECK(n >= ACCT_PASSWORD_MIUI_MIN && n <= ACCT_PASSWORD_MIUI_MAX);
			for (size_t i = 0; i < n; i++)
				CHECK(pw[i] >= 0x21 && pw[i] <= 0x7e);
		}
	} else {
		CHECK(v.reason != ACCT_PASSWORD_OK && v.message[0] != '\0');
	}
}

/* Unpadded standard base64, as PHC writes it. */
static void append_b64(char *out, size_t cap, const uint8_t *in, size_t n)
{
	char *b64 = NULL;
	size_t len = 0;

	CHECK(mica_base64_encode_alloc(in, n, &b64, &len) == 0);
	while (len > 0 && b64[len - 1] == '=')
		b64[--len] = '\0';
	CHECK(strlen(out) + len < cap);
	strcat(out, b64);
	free(b64);
}

static void phc(const char *text)
{
	struct acct_phc parsed;
	char again[ACCT_PHC_MAX_LEN + 64];
	int rc = acct_phc_parse(text, &parsed);
	int rehash = acct_password_needs_rehash(text, &acct_argon2_defaults);

	CHECK(rc == 0 || rc == MICA_EINVAL);
	if (rc != 0) {
		CHECK(rehash == MICA_EINVAL);
		return;
	}
	CHECK(rehash == 0 || rehash == 1);
	CHECK(acct_argon2_params_valid(&parsed.params));
	snprintf(again, sizeof(again), "$argon2id$v=19$m=%u,t=%u,p=%u$", parsed.params.m_kib,
		 parsed.params.t, parsed.params.p);
	append_b64(again, sizeof(again), parsed.salt, parsed.salt_len);
	strcat(again, "$");
	append_b64(again, sizeof(again), parsed.hash, parsed.hash_len);
	CHECK(strcmp(again, text) == 0);
	if (parsed.params.m_kib <= 64 && parsed.params.t <= 2 && parsed.params.p <= 2) {
		rc = acct_password_verify(text, "password");
		CHECK(rc == 0 || rc == MICA_EAUTH);
	}
}

static void range_file(const uint8_t *data, size_t size)
{
	uint64_t count = 0, malformed = 0, lines = 0;

	acct__blocklist_scan((const char *)data, size, "214943DAAD1D64C102FAEC29DE4AFE9DA3D",
			     &count, &malformed);
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	CHECK(malformed <= lines + 1);
	CHECK(count == 0 || size >= ACCT_BLOCKLIST_SUFFIX_LEN + 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text;

	if (size == 0)
		return 0;
	text = malloc(size);
	CHECK(text != NULL);
	memcpy(text, data + 1, size - 1);
	text[size - 1] = '\0';
	switch (data[0] % 4) {
	case 0:
		policy("miui", text);
		break;
	case 1:
		policy("nist", text);
		break;
	case 2:
		phc(text);
		break;
	default:
		range_file(data + 1, size - 1);
		break;
	}
	free(text);
	return 0;
}
