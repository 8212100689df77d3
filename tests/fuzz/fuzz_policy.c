/* fuzz_policy.c - libFuzzer target for the Key Center policy parser.
 * Arbitrary bytes go through kc_policy_parse_fault(); a rejection must come
 * with a consistent code, fault and printable message, and an accepted
 * policy must answer kc_policy_allows() for every principal, operation and a
 * set of key names exactly as a naive re-reading of the same JSON says.
 * Seeds: tests/fuzz/corpus/fuzz_policy/.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "keycenter/policy.h"

static void check_rejection(int rc, enum kc_policy_fault fault, const kc_policy *p, const char *err)
{
	CHECK(p == NULL);
	CHECK(fault != KC_POLICY_OK && fault != KC_POLICY_BAD_ARGUMENT);
	switch (fault) {
	case KC_POLICY_TOO_LARGE:
		CHECK(rc == MICA_ETOOBIG);
		break;
	case KC_POLICY_NO_MEMORY:
		CHECK(rc == MICA_ENOMEM);
		break;
	case KC_POLICY_BAD_VERSION:
		CHECK(rc == MICA_EBADVERSION);
		break;
	default:
		CHECK(rc == MICA_ECONFIG);
	}
	CHECK(err[0] != '\0');
	for (const char *c = err; *c; c++)
		CHECK(*c >= 0x20 && *c <= 0x7e);
}

/* The grant operation name for |op|, NULL if a grant cannot list it. */
static const char *grant_name(enum kc_op op)
{
	switch (op) {
	case KC_OP_ENCRYPT:
	case KC_OP_DECRYPT:
	case KC_OP_REWRAP:
	case KC_OP_DATAKEY:
	case KC_OP_HMAC:
		return kc_op_name(op);
	case KC_OP_KEY_READ:
		return "read";
	default:
		return NULL;
	}
}

/* What the policy should say, from the JSON the parser accepted. */
static int expected(json_t *entry, enum kc_op op, const char *key)
{
	const char *role = json_string_value(json_object_get(entry, "role"));
	const char *pat, *want = grant_name(op);
	json_t *ops, *v;
	size_t i;

	if (strcmp(role, "key-admin") == 0)
		return op <= KC_OP_KEY_DELETE_REQUEST;
	if (strcmp(role, "auditor") == 0)
		return op == KC_OP_AUDIT_READ || op == KC_OP_ALERT_READ;
	if (strcmp(role, "security-officer") == 0)
		return op == KC_OP_APPROVE || op == KC_OP_POLICY_REQUEST ||
		       op == KC_OP_POLICY_READ || op == KC_OP_ALERT_READ;
	CHECK(strcmp(role, "service") == 0);
	if (!want || !kc_policy_key_name_valid(key))
		return 0;
	json_object_foreach(json_object_get(entry, "keys"), pat, ops)
	{
		size_t n = strlen(pat);
		int match =
			pat[n - 1] == '*' ? strncmp(key, pat, n - 1) == 0 : strcmp(key, pat) == 0;
		if (!match)
			continue;
		json_array_foreach(ops, i, v)
		{
			if (strcmp(json_string_value(v), want) == 0)
				return 1;
		}
	}
	return 0;
}

#define MAX_KEYS 32
#define KEY_BUF 80

/* Key names to ask about for one principal: fixed ones, the input's last
 * bytes (an arbitrary name), and for each grant pattern the pattern itself,
 * its stem (pattern minus the last character) and the stem plus "x". */
static size_t probe_keys(json_t *entry, const char *tail, char keys[MAX_KEYS][KEY_BUF])
{
	static const char *const fixed[] = {"", "a", "zz-none"};
	const char *pat;
	json_t *ops;
	size_t nk = 0;

	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		snprintf(keys[nk++], KEY_BUF, "%s", fixed[i]);
	snprintf(keys[nk++], KEY_BUF, "%s", tail);
	json_object_foreach(json_object_get(entry, "keys"), pat, ops)
	{
		int stem = (int)strlen(pat) - 1;
		if (nk + 3 > MAX_KEYS)
			break;
		snprintf(keys[nk++], KEY_BUF, "%s", pat);
		snprintf(keys[nk++], KEY_BUF, "%.*s", stem, pat);
		snprintf(keys[nk++], KEY_BUF, "%.*sx", stem, pat);
	}
	return nk;
}

static void check_accepted(const uint8_t *data, size_t size, kc_policy *p)
{
	json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	json_t *principals, *entry;
	const char *name;
	char tail[KEY_BUF], keys[MAX_KEYS][KEY_BUF];
	size_t tail_len = size < sizeof(tail) - 1 ? size : sizeof(tail) - 1;

	CHECK(root != NULL);
	CHECK(kc_policy_version(p) == json_integer_value(json_object_get(root, "version")));
	principals = json_object_get(root, "principals");
	CHECK(kc_policy_principal_count(p) == json_object_size(principals));
	memcpy(tail, data + size - tail_len, tail_len);
	tail[tail_len] = '\0';

	json_object_foreach(principals, name, entry)
	{
		enum kc_role role = kc_policy_role(p, name);
		const char *declared = json_string_value(json_object_get(entry, "role"));
		size_t nk = probe_keys(entry, tail, keys);

		CHECK(strcmp(kc_role_name(role), declared) == 0);
		for (int op = 0; op < KC_OP__COUNT; op++) {
			int rc = kc_policy_allows(p, name, op, NULL);
			CHECK(rc == 0 || rc == MICA_EDENIED);
			CHECK((rc == 0) ==
			      (strcmp(declared, "service") != 0 && expected(entry, op, "")));
			for (size_t k = 0; k < nk; k++) {
				rc = kc_policy_allows(p, name, op, keys[k]);
				CHECK(rc == 0 || rc == MICA_EDENIED);
				CHECK((rc == 0) == expected(entry, op, keys[k]));
			}
		}
	}
	/* Names that are not in the policy get nothing. */
	if (!json_object_get(principals, tail))
		for (int op = 0; op < KC_OP__COUNT; op++)
			CHECK(kc_policy_allows(p, tail, op, "a") == MICA_EDENIED);
	json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	kc_policy *p = (kc_policy *)&p;
	char err[256];
	enum kc_policy_fault fault;
	int rc = kc_policy_parse_fault((const char *)data, size, &p, err, sizeof(err), &fault);

	if (rc != 0) {
		check_rejection(rc, fault, p, err);
		return 0;
	}
	CHECK(fault == KC_POLICY_OK && err[0] == '\0' && p != NULL);
	CHECK(kc_policy_ref(p) == p);
	check_accepted(data, size, p);
	kc_policy_unref(p);
	kc_policy_unref(p);
	return 0;
}
