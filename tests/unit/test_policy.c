/* test_policy.c - the Key Center policy (keycenter/policy.c): every
 * validation rule with its exact error code, fault and message, the
 * role x operation decision matrix, key pattern matching, name helpers and
 * the atomic reference count shared across threads. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "keycenter/policy.h"
#include "tests/check_main.h"

/* Two officers, so documents that test another rule get past dual control. */
#define OFFICERS "\"o1\":{\"role\":\"security-officer\"},\"o2\":{\"role\":\"security-officer\"}"
#define DOC(principals) "{\"version\":1,\"principals\":{" OFFICERS "," principals "}}"

/* clang-format off */
static const char example[] =
	"{\"version\": 3,\n"
	" \"principals\": {\n"
	"   \"admin\":    {\"role\": \"key-admin\"},\n"
	"   \"officer1\": {\"role\": \"security-officer\"},\n"
	"   \"officer2\": {\"role\": \"security-officer\"},\n"
	"   \"auditor\":  {\"role\": \"auditor\"},\n"
	"   \"account\":  {\"role\": \"service\", \"keys\": {\"account-*\": "
	"[\"encrypt\",\"decrypt\",\"datakey\",\"hmac\",\"rewrap\"]}}\n"
	" }}";
/* clang-format on */

static kc_policy *parse_ok(const char *json)
{
	kc_policy *p = NULL;
	char err[256] = "";
	enum kc_policy_fault fault = KC_POLICY__FAULT_COUNT;
	int rc = kc_policy_parse_fault(json, strlen(json), &p, err, sizeof(err), &fault);
	ck_assert_msg(rc == 0, "parse failed (%s): %s", mica_strerror(rc), err);
	ck_assert_int_eq(fault, KC_POLICY_OK);
	ck_assert_str_eq(err, "");
	ck_assert_ptr_nonnull(p);
	return p;
}

struct bad_case {
	const char *json;
	int rc;
	enum kc_policy_fault fault;
	const char *msg; /* must occur in the error message */
};

/* clang-format off */
static const struct bad_case bad_cases[] = {
	/* Document shape. */
	{"{\"version\":1,", MICA_ECONFIG, KC_POLICY_BAD_JSON, "not valid JSON at line 1"},
	{"{\"version\":1,\"principals\":{" OFFICERS "}} trailing", MICA_ECONFIG, KC_POLICY_BAD_JSON,
	 "not valid JSON"},
	{"{\"version\":1,\"principals\":{\"a\\u0000b\":{}}}", MICA_ECONFIG, KC_POLICY_BAD_JSON,
	 "not valid JSON"},
	{"", MICA_ECONFIG, KC_POLICY_BAD_JSON, "not valid JSON"},
	{"[1,2]", MICA_ECONFIG, KC_POLICY_NOT_OBJECT, "policy must be a JSON object"},
	{"{\"version\":1,\"principals\":{" OFFICERS "},\"principles\":{}}", MICA_ECONFIG,
	 KC_POLICY_UNKNOWN_FIELD, "unknown field \"principles\""},
	{"{\"version\":1,\"description\":7,\"principals\":{" OFFICERS "}}", MICA_ECONFIG,
	 KC_POLICY_BAD_DESCRIPTION, "field \"description\" must be a string"},
	/* Version. */
	{"{\"principals\":{" OFFICERS "}}", MICA_EBADVERSION, KC_POLICY_BAD_VERSION,
	 "field \"version\" is missing"},
	{"{\"version\":\"3\",\"principals\":{" OFFICERS "}}", MICA_EBADVERSION,
	 KC_POLICY_BAD_VERSION, "field \"version\" must be an integer from 1 to 2147483647"},
	{"{\"version\":0,\"principals\":{" OFFICERS "}}", MICA_EBADVERSION, KC_POLICY_BAD_VERSION,
	 "field \"version\" must be an integer"},
	{"{\"version\":-4,\"principals\":{" OFFICERS "}}", MICA_EBADVERSION, KC_POLICY_BAD_VERSION,
	 "field \"version\" must be an integer"},
	{"{\"version\":3.0,\"principals\":{" OFFICERS "}}", MICA_EBADVERSION,
	 KC_POLICY_BAD_VERSION, "field \"version\" must be an integer"},
	{"{\"version\":2147483648,\"principals\":{" OFFICERS "}}", MICA_EBADVERSION,
	 KC_POLICY_BAD_VERSION, "field \"version\" must be an integer"},
	/* The principals object. */
	{"{\"version\":1}", MICA_ECONFIG, KC_POLICY_BAD_PRINCIPALS,
	 "field \"principals\" must be an object"},
	{"{\"version\":1,\"principals\":[]}", MICA_ECONFIG, KC_POLICY_BAD_PRINCIPALS,
	 "field \"principals\" must be an object"},
	/* Principal names. */
	{DOC("\"Admin\":{\"role\":\"key-admin\"}"), MICA_ECONFIG, KC_POLICY_BAD_PRINCIPAL_NAME,
	 "principal \"Admin\": invalid name"},
	{DOC("\"-admin\":{\"role\":\"key-admin\"}"), MICA_ECONFIG, KC_POLICY_BAD_PRINCIPAL_NAME,
	 "principal \"-admin\": invalid name"},
	{DOC("\"a.b\":{\"role\":\"key-admin\"}"), MICA_ECONFIG, KC_POLICY_BAD_PRINCIPAL_NAME,
	 "principal \"a.b\": invalid name"},
	{DOC("\"\":{\"role\":\"key-admin\"}"), MICA_ECONFIG, KC_POLICY_BAD_PRINCIPAL_NAME,
	 "principal \"\": invalid name"},
	{DOC("\"a\\nb\":{\"role\":\"key-admin\"}"), MICA_ECONFIG, KC_POLICY_BAD_PRINCIPAL_NAME,
	 "principal \"a?b\": invalid name"},
	{DOC("\"a1234567890123456789012345678901234567890123456789012345678901234\":"
	     "{\"role\":\"auditor\"}"),
	 MICA_ECONFIG, KC_POLICY_BAD_PRINCIPAL_NAME,
	 "principal \"a123456789012345678901234567890123456789012345678901234567890123"
	 "...\": invalid name"},
	/* Principal entries and roles. */
	{DOC("\"bob\":\"service\""), MICA_ECONFIG, KC_POLICY_BAD_PRINCIPAL,
	 "principal bob: must be an object"},
	{DOC("\"bob\":{}"), MICA_ECONFIG, KC_POLICY_BAD_PRINCIPAL,
	 "principal bob: field \"role\" is missing"},
	{DOC("\"bob\":{\"role\":[\"auditor\"]}"), MICA_ECONFIG, KC_POLICY_BAD_PRINCIPAL,
	 "principal bob: field \"role\" must be a string"},
	{DOC("\"bob\":{\"role\":\"root\"}"), MICA_ECONFIG, KC_POLICY_UNKNOWN_ROLE,
	 "principal bob: unknown role \"root\""},
	{DOC("\"bob\":{\"role\":\"Auditor\"}"), MICA_ECONFIG, KC_POLICY_UNKNOWN_ROLE,
	 "principal bob: unknown role \"Auditor\""},
	{DOC("\"bob\":{\"role\":\"auditor\",\"key\":{}}"), MICA_ECONFIG, KC_POLICY_UNKNOWN_FIELD,
	 "principal bob: unknown field \"key\""},
	{DOC("\"bob\":{\"role\":\"auditor\",\"description\":false}"), MICA_ECONFIG,
	 KC_POLICY_BAD_DESCRIPTION, "principal bob: field \"description\" must be a string"},
	/* Separation of duties: one role, and only a service uses keys. */
	{DOC("\"admin\":{\"role\":\"key-admin\",\"keys\":{\"account-*\":[\"decrypt\"]}}"),
	 MICA_ECONFIG, KC_POLICY_ROLE_WITH_KEY_USE,
	 "principal admin: key-admin cannot also be granted key use"},
	{DOC("\"admin\":{\"role\":\"key-admin\",\"keys\":{}}"), MICA_ECONFIG,
	 KC_POLICY_ROLE_WITH_KEY_USE, "principal admin: key-admin cannot also be granted key use"},
	{DOC("\"aud\":{\"role\":\"auditor\",\"keys\":{\"k\":[\"read\"]}}"), MICA_ECONFIG,
	 KC_POLICY_ROLE_WITH_KEY_USE, "principal aud: auditor cannot also be granted key use"},
	{"{\"version\":1,\"principals\":{\"o1\":{\"role\":\"security-officer\","
	 "\"keys\":{\"k\":[\"hmac\"]}},\"o2\":{\"role\":\"security-officer\"}}}",
	 MICA_ECONFIG, KC_POLICY_ROLE_WITH_KEY_USE,
	 "principal o1: security-officer cannot also be granted key use"},
	{DOC("\"admin\":{\"role\":\"key-admin\"},"
	     "\"admin\":{\"role\":\"service\",\"keys\":{\"k\":[\"decrypt\"]}}"),
	 MICA_ECONFIG, KC_POLICY_DUPLICATE_PRINCIPAL, "principal admin: listed more than once"},
	{DOC("\"admin\":{\"role\":\"key-admin\"},\"adm\\u0069n\":{\"role\":\"auditor\"}"),
	 MICA_ECONFIG, KC_POLICY_DUPLICATE_PRINCIPAL,
	 "principal \"adm?u0069n\": listed more than once"},
	{"{\"version\":1,\"version\":2,\"principals\":{" OFFICERS "}}", MICA_ECONFIG,
	 KC_POLICY_DUPLICATE_FIELD, "field \"version\" appears more than once"},
	{DOC("\"bob\":{\"role\":\"auditor\",\"role\":\"key-admin\"}"), MICA_ECONFIG,
	 KC_POLICY_DUPLICATE_FIELD, "field \"role\" appears more than once"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"admin\":[\"hmac\"],\"admin\":[\"hmac\"]}}"),
	 MICA_ECONFIG, KC_POLICY_DUPLICATE_FIELD, "field \"admin\" appears more than once"},
	/* Services and their grants. */
	{DOC("\"svc\":{\"role\":\"service\"}"), MICA_ECONFIG, KC_POLICY_SERVICE_WITHOUT_KEYS,
	 "principal svc: a service needs at least one key grant in \"keys\""},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{}}"), MICA_ECONFIG,
	 KC_POLICY_SERVICE_WITHOUT_KEYS, "principal svc: a service needs at least one key grant"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":[\"k\"]}"), MICA_ECONFIG,
	 KC_POLICY_BAD_PRINCIPAL, "principal svc: field \"keys\" must be an object"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"*\":[\"encrypt\"]}}"), MICA_ECONFIG,
	 KC_POLICY_BAD_KEY_PATTERN, "principal svc: key pattern \"*\" would grant every key"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"a*b\":[\"encrypt\"]}}"), MICA_ECONFIG,
	 KC_POLICY_BAD_KEY_PATTERN, "principal svc: key pattern \"a*b\" is invalid"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"a**\":[\"encrypt\"]}}"), MICA_ECONFIG,
	 KC_POLICY_BAD_KEY_PATTERN, "principal svc: key pattern \"a**\" is invalid"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"Account\":[\"encrypt\"]}}"), MICA_ECONFIG,
	 KC_POLICY_BAD_KEY_PATTERN, "principal svc: key pattern \"Account\" is invalid"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"\":[\"encrypt\"]}}"), MICA_ECONFIG,
	 KC_POLICY_BAD_KEY_PATTERN, "principal svc: key pattern \"\" is invalid"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\".k\":[\"encrypt\"]}}"), MICA_ECONFIG,
	 KC_POLICY_BAD_KEY_PATTERN, "principal svc: key pattern \".k\" is invalid"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"k/x\":[\"encrypt\"]}}"), MICA_ECONFIG,
	 KC_POLICY_BAD_KEY_PATTERN, "principal svc: key pattern \"k/x\" is invalid"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{"
	     "\"k1234567890123456789012345678901234567890123456789012345678901234\":[\"hmac\"]}}"),
	 MICA_ECONFIG, KC_POLICY_BAD_KEY_PATTERN, "principal svc: key pattern \"k123"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"k\":\"encrypt\"}}"), MICA_ECONFIG,
	 KC_POLICY_BAD_OPERATIONS,
	 "principal svc: key pattern \"k\": operations must be a non-empty array of strings"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"k\":[]}}"), MICA_ECONFIG,
	 KC_POLICY_BAD_OPERATIONS, "principal svc: key pattern \"k\": operations must be"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"k\":[\"hmac\",1]}}"), MICA_ECONFIG,
	 KC_POLICY_BAD_OPERATIONS, "principal svc: key pattern \"k\": operation 1 is not a string"},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"k\":[\"sign\"]}}"), MICA_ECONFIG,
	 KC_POLICY_UNKNOWN_OPERATION, "principal svc: key pattern \"k\": unknown operation \"sign\""},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"k\":[\"ENCRYPT\"]}}"), MICA_ECONFIG,
	 KC_POLICY_UNKNOWN_OPERATION, "unknown operation \"ENCRYPT\""},
	{DOC("\"svc\":{\"role\":\"service\",\"keys\":{\"k\":[\"key_rotate\"]}}"), MICA_ECONFIG,
	 KC_POLICY_UNKNOWN_OPERATION, "unknown operation \"key_rotate\""},
	/* Dual control needs two officers. */
	{"{\"version\":1,\"principals\":{\"o1\":{\"role\":\"security-officer\"},"
	 "\"admin\":{\"role\":\"key-admin\"}}}",
	 MICA_ECONFIG, KC_POLICY_TOO_FEW_OFFICERS,
	 "policy needs at least 2 security officers for dual control, found 1"},
	{"{\"version\":1,\"principals\":{}}", MICA_ECONFIG, KC_POLICY_TOO_FEW_OFFICERS,
	 "found 0"},
};
/* clang-format on */

START_TEST(each_validation_error_is_exact)
{
	const struct bad_case *c = &bad_cases[_i];
	kc_policy *p = (kc_policy *)&p; /* must be reset to NULL */
	char err[256];
	enum kc_policy_fault fault = KC_POLICY_OK;

	int rc = kc_policy_parse_fault(c->json, strlen(c->json), &p, err, sizeof(err), &fault);
	ck_assert_msg(rc == c->rc, "case %d: rc %s, want %s (%s)", _i, mica_strerror(rc),
		      mica_strerror(c->rc), err);
	ck_assert_msg(fault == c->fault, "case %d: fault %s, want %s (%s)", _i,
		      kc_policy_fault_name(fault), kc_policy_fault_name(c->fault), err);
	ck_assert_msg(strstr(err, c->msg) != NULL, "case %d: message \"%s\" lacks \"%s\"", _i, err,
		      c->msg);
	ck_assert_ptr_null(p);
	/* The plain entry point agrees. */
	rc = kc_policy_parse(c->json, strlen(c->json), &p, NULL, 0);
	ck_assert_int_eq(rc, c->rc);
	ck_assert_ptr_null(p);
}
END_TEST

START_TEST(the_example_parses)
{
	kc_policy *p = parse_ok(example);

	ck_assert_int_eq(kc_policy_version(p), 3);
	ck_assert_uint_eq(kc_policy_principal_count(p), 5);
	ck_assert_int_eq(kc_policy_role(p, "admin"), KC_ROLE_KEY_ADMIN);
	ck_assert_int_eq(kc_policy_role(p, "officer1"), KC_ROLE_SECURITY_OFFICER);
	ck_assert_int_eq(kc_policy_role(p, "officer2"), KC_ROLE_SECURITY_OFFICER);
	ck_assert_int_eq(kc_policy_role(p, "auditor"), KC_ROLE_AUDITOR);
	ck_assert_int_eq(kc_policy_role(p, "account"), KC_ROLE_SERVICE);
	ck_assert_int_eq(kc_policy_role(p, "nobody"), KC_ROLE_NONE);
	ck_assert_int_eq(kc_policy_role(p, "Admin"), KC_ROLE_NONE);
	ck_assert_int_eq(kc_policy_role(p, ""), KC_ROLE_NONE);
	ck_assert_int_eq(kc_policy_role(p, NULL), KC_ROLE_NONE);
	ck_assert_int_eq(kc_policy_role(NULL, "admin"), KC_ROLE_NONE);
	ck_assert_int_eq(kc_policy_role(p, "admin-but-much-longer-than-the-name-limit-of-sixty-"
					   "four-characters"),
			 KC_ROLE_NONE);
	kc_policy_free(p);
}
END_TEST

/* Descriptions are allowed, the document need not be NUL-terminated, and
 * the version can be large. */
START_TEST(optional_fields_and_lengths)
{
	static const char doc[] =
		"{\"description\":\"prod\",\"version\":2147483647,\"principals\":{" OFFICERS
		",\"a\":{\"role\":\"auditor\",\"description\":\"Eve from compliance\"}}}XXXX";
	kc_policy *p = NULL;
	char err[128];

	ck_assert_int_eq(kc_policy_parse(doc, strlen(doc) - 4, &p, err, sizeof(err)), 0);
	ck_assert_int_eq(kc_policy_version(p), 2147483647);
	ck_assert_int_eq(kc_policy_role(p, "a"), KC_ROLE_AUDITOR);
	kc_policy_unref(p);
	/* The same bytes with the tail are not JSON. */
	ck_assert_int_eq(kc_policy_parse(doc, strlen(doc), &p, err, sizeof(err)), MICA_ECONFIG);
}
END_TEST

START_TEST(bad_arguments_and_short_error_buffers)
{
	kc_policy *p = NULL;
	char err[16];
	enum kc_policy_fault fault;

	ck_assert_int_eq(kc_policy_parse(NULL, 3, &p, err, sizeof(err)), MICA_EINVAL);
	ck_assert_str_eq(err, "no policy docum");
	ck_assert_int_eq(kc_policy_parse_fault(example, strlen(example), NULL, NULL, 0, &fault),
			 MICA_EINVAL);
	ck_assert_int_eq(fault, KC_POLICY_BAD_ARGUMENT);
	/* Truncated but terminated. */
	ck_assert_int_eq(kc_policy_parse("[]", 2, &p, err, sizeof(err)), MICA_ECONFIG);
	ck_assert_uint_eq(strlen(err), sizeof(err) - 1);
	ck_assert_int_eq(kc_policy_parse("[]", 2, &p, err, 1), MICA_ECONFIG);
	ck_assert_str_eq(err, "");
}
END_TEST

START_TEST(limits_are_enforced)
{
	size_t cap = KC_POLICY_MAX_BYTES + 64, n = 0;
	char *buf = malloc(cap), err[128];
	kc_policy *p = NULL;
	enum kc_policy_fault fault;

	ck_assert_ptr_nonnull(buf);
	/* Too many bytes: refused before parsing. */
	memset(buf, ' ', cap);
	ck_assert_int_eq(
		kc_policy_parse_fault(buf, KC_POLICY_MAX_BYTES + 1, &p, err, sizeof(err), &fault),
		MICA_ETOOBIG);
	ck_assert_int_eq(fault, KC_POLICY_TOO_LARGE);
	ck_assert_ptr_nonnull(strstr(err, "larger than 1048576 bytes"));

	/* One principal too many. */
	n = (size_t)snprintf(buf, cap, "{\"version\":1,\"principals\":{" OFFICERS);
	for (int i = 0; i < KC_POLICY_MAX_PRINCIPALS - 1; i++)
		n += (size_t)snprintf(buf + n, cap - n, ",\"p%d\":{\"role\":\"auditor\"}", i);
	snprintf(buf + n, cap - n, "}}");
	ck_assert_int_eq(kc_policy_parse_fault(buf, strlen(buf), &p, err, sizeof(err), &fault),
			 MICA_ETOOBIG);
	ck_assert_int_eq(fault, KC_POLICY_TOO_LARGE);
	ck_assert_str_eq(err, "more than 4096 principals");
	/* Exactly the limit is fine. */
	snprintf(strrchr(buf, ','), cap - n, "}}");
	ck_assert_int_eq(kc_policy_parse(buf, strlen(buf), &p, err, sizeof(err)), 0);
	ck_assert_uint_eq(kc_policy_principal_count(p), KC_POLICY_MAX_PRINCIPALS);
	ck_assert_int_eq(kc_policy_role(p, "p4093"), KC_ROLE_AUDITOR);
	kc_policy_unref(p);

	/* One grant too many. */
	n = (size_t)snprintf(buf, cap,
			     "{\"version\":1,\"principals\":{" OFFICERS
			     ",\"svc\":{\"role\":\"service\",\"keys\":{\"k\":[\"hmac\"]");
	for (int i = 0; i < KC_POLICY_MAX_GRANTS; i++)
		n += (size_t)snprintf(buf + n, cap - n, ",\"k%d\":[\"hmac\"]", i);
	snprintf(buf + n, cap - n, "}}}}");
	ck_assert_int_eq(kc_policy_parse_fault(buf, strlen(buf), &p, err, sizeof(err), &fault),
			 MICA_ETOOBIG);
	ck_assert_int_eq(fault, KC_POLICY_TOO_LARGE);
	ck_assert_str_eq(err, "principal svc: more than 256 key patterns");
	free(buf);
}
END_TEST

/* Expected decisions for each role on key "account-1", in kc_op order. The
 * service holds every grantable operation on "account-*". */
/* clang-format off */
static const struct {
	const char *principal;
	int allowed[KC_OP__COUNT];
} matrix[] = {
	/*              create read rot cfg del enc dec rew dk hmac audit alert appr pread preq */
	{"admin", {1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	{"account", {0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0}},
	{"auditor", {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0}},
	{"officer1", {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1}},
	{"officer2", {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1}},
	{"stranger", {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
};

static const char matrix_doc[] =
	"{\"version\":1,\"principals\":{"
	"\"admin\":{\"role\":\"key-admin\"},"
	"\"officer1\":{\"role\":\"security-officer\"},"
	"\"officer2\":{\"role\":\"security-officer\"},"
	"\"auditor\":{\"role\":\"auditor\"},"
	"\"account\":{\"role\":\"service\",\"keys\":{\"account-*\":"
	"[\"encrypt\",\"decrypt\",\"rewrap\",\"datakey\",\"hmac\",\"read\"]}}}}";
/* clang-format on */

START_TEST(role_by_operation_matrix)
{
	kc_policy *p = parse_ok(matrix_doc);

	for (size_t r = 0; r < sizeof(matrix) / sizeof(matrix[0]); r++) {
		for (int op = 0; op < KC_OP__COUNT; op++) {
			int want = matrix[r].allowed[op] ? 0 : MICA_EDENIED;
			int got = kc_policy_allows(p, matrix[r].principal, op, "account-1");
			ck_assert_msg(got == want, "%s %s: got %s, want %s", matrix[r].principal,
				      kc_op_name(op), mica_strerror(got), mica_strerror(want));
			/* Non-key operations ignore the key, even NULL. */
			if (op >= KC_OP_AUDIT_READ || strcmp(matrix[r].principal, "account") != 0)
				ck_assert_int_eq(kc_policy_allows(p, matrix[r].principal, op, NULL),
						 want);
		}
	}
	/* A key admin manages every key but uses none of them. */
	ck_assert_int_eq(kc_policy_allows(p, "admin", KC_OP_KEY_ROTATE, "billing-1"), 0);
	ck_assert_int_eq(kc_policy_allows(p, "admin", KC_OP_DECRYPT, "billing-1"), MICA_EDENIED);
	/* Out-of-range operations and missing arguments are denied. */
	ck_assert_int_eq(kc_policy_allows(p, "admin", KC_OP__COUNT, "k"), MICA_EDENIED);
	ck_assert_int_eq(kc_policy_allows(p, "admin", (enum kc_op) - 1, "k"), MICA_EDENIED);
	ck_assert_int_eq(kc_policy_allows(p, NULL, KC_OP_KEY_READ, "k"), MICA_EDENIED);
	ck_assert_int_eq(kc_policy_allows(NULL, "admin", KC_OP_KEY_READ, "k"), MICA_EDENIED);
	kc_policy_unref(p);
}
END_TEST

static const char grants_doc[] = DOC("\"billing\":{\"role\":\"service\",\"keys\":{"
				     "\"billing-key\":[\"encrypt\"],"
				     "\"billing-*\":[\"decrypt\"],"
				     "\"shared-hmac\":[\"hmac\",\"read\",\"hmac\"]}}");

START_TEST(key_patterns_match_exactly_or_by_prefix)
{
	kc_policy *p = parse_ok(grants_doc);
	static const struct {
		enum kc_op op;
		const char *key;
		int allowed;
	} cases[] = {
		{KC_OP_ENCRYPT, "billing-key", 1},  /* exact */
		{KC_OP_ENCRYPT, "billing-key2", 0}, /* exact is not a prefix */
		{KC_OP_ENCRYPT, "billing-ke", 0},   /* nor a suffix */
		{KC_OP_ENCRYPT, "billing-x", 0},    /* prefix grant lacks encrypt */
		{KC_OP_DECRYPT, "billing-key", 1},  /* prefix covers the exact name too */
		{KC_OP_DECRYPT, "billing-x.v2", 1}, /* prefix */
		{KC_OP_DECRYPT, "billing-", 1},	    /* '*' matches the empty rest */
		{KC_OP_DECRYPT, "billing", 0},	    /* shorter than the prefix */
		{KC_OP_DECRYPT, "xbilling-1", 0},   /* prefix anchors at the start */
		{KC_OP_DECRYPT, "billing-X", 0},    /* not a valid key name */
		{KC_OP_DECRYPT, "billing-../x", 0}, /* not a valid key name */
		{KC_OP_DECRYPT, "billing-\n", 0},   /* not a valid key name */
		{KC_OP_DECRYPT, "", 0},		    /* not a valid key name */
		{KC_OP_DECRYPT, NULL, 0},	    /* a key operation needs a key */
		{KC_OP_HMAC, "shared-hmac", 1},	    /* repeated operation is harmless */
		{KC_OP_KEY_READ, "shared-hmac", 1}, /* "read" grants metadata */
		{KC_OP_KEY_READ, "billing-key", 0}, /* ...only where listed */
		{KC_OP_HMAC, "shared-hmac2", 0},
		{KC_OP_REWRAP, "billing-key", 0},
		{KC_OP_DATAKEY, "billing-key", 0},
		{KC_OP_KEY_ROTATE, "billing-key", 0}, /* services never administer */
		{KC_OP_KEY_CREATE, "billing-new", 0},
		{KC_OP_KEY_DELETE_REQUEST, "billing-key", 0},
		{KC_OP_DECRYPT, /* 65 characters: too long for a key name */
		 "billing-123456789012345678901234567890123456789012345678901234567", 0},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int want = cases[i].allowed ? 0 : MICA_EDENIED;
		ck_assert_msg(kc_policy_allows(p, "billing", cases[i].op, cases[i].key) == want,
			      "case %zu: %s on %s", i, kc_op_name(cases[i].op),
			      cases[i].key ? cases[i].key : "(null)");
	}
	/* 64 characters is the longest valid name, and a prefix reaches it. */
	ck_assert_int_eq(kc_policy_allows(p, "billing", KC_OP_DECRYPT,
					  "billing-12345678901234567890123456789012345678901234567"
					  "890123456"),
			 0);
	kc_policy_unref(p);
}
END_TEST

START_TEST(many_principals_are_all_found)
{
	char buf[16384];
	size_t n = (size_t)snprintf(buf, sizeof(buf), "{\"version\":1,\"principals\":{" OFFICERS);
	kc_policy *p;
	char name[16];

	/* Reverse order, so the table must really be sorted. */
	for (int i = 199; i >= 0; i--)
		n += (size_t)snprintf(
			buf + n, sizeof(buf) - n,
			",\"s%03d\":{\"role\":\"service\",\"keys\":{\"k%03d\":[\"hmac\"]}}", i, i);
	snprintf(buf + n, sizeof(buf) - n, "}}");
	p = parse_ok(buf);
	for (int i = 0; i < 200; i++) {
		char key[16], other[16];
		snprintf(name, sizeof(name), "s%03d", i);
		snprintf(key, sizeof(key), "k%03d", i);
		snprintf(other, sizeof(other), "k%03d", (i + 1) % 200);
		ck_assert_int_eq(kc_policy_role(p, name), KC_ROLE_SERVICE);
		ck_assert_int_eq(kc_policy_allows(p, name, KC_OP_HMAC, key), 0);
		ck_assert_int_eq(kc_policy_allows(p, name, KC_OP_HMAC, other), MICA_EDENIED);
	}
	ck_assert_int_eq(kc_policy_role(p, "s200"), KC_ROLE_NONE);
	kc_policy_unref(p);
}
END_TEST

START_TEST(names_are_stable_and_distinct)
{
	ck_assert_str_eq(kc_op_name(KC_OP_KEY_CREATE), "key_create");
	ck_assert_str_eq(kc_op_name(KC_OP_DATAKEY), "datakey");
	ck_assert_str_eq(kc_op_name(KC_OP_POLICY_REQUEST), "policy_request");
	ck_assert_str_eq(kc_op_name(KC_OP__COUNT), "unknown");
	ck_assert_str_eq(kc_op_name((enum kc_op) - 1), "unknown");
	for (int a = 0; a < KC_OP__COUNT; a++)
		for (int b = a + 1; b < KC_OP__COUNT; b++)
			ck_assert_str_ne(kc_op_name(a), kc_op_name(b));
	ck_assert_str_eq(kc_role_name(KC_ROLE_NONE), "none");
	ck_assert_str_eq(kc_role_name(KC_ROLE_KEY_ADMIN), "key-admin");
	ck_assert_str_eq(kc_role_name(KC_ROLE_SERVICE), "service");
	ck_assert_str_eq(kc_role_name(KC_ROLE_AUDITOR), "auditor");
	ck_assert_str_eq(kc_role_name(KC_ROLE_SECURITY_OFFICER), "security-officer");
	ck_assert_str_eq(kc_role_name((enum kc_role)99), "unknown");
	ck_assert_str_eq(kc_policy_fault_name(KC_POLICY_OK), "ok");
	ck_assert_str_eq(kc_policy_fault_name(KC_POLICY_ROLE_WITH_KEY_USE), "role_with_key_use");
	ck_assert_str_eq(kc_policy_fault_name(KC_POLICY__FAULT_COUNT), "unknown");
	for (int a = 0; a < KC_POLICY__FAULT_COUNT; a++)
		for (int b = a + 1; b < KC_POLICY__FAULT_COUNT; b++)
			ck_assert_str_ne(kc_policy_fault_name(a), kc_policy_fault_name(b));

	ck_assert(kc_policy_principal_name_valid("a"));
	ck_assert(kc_policy_principal_name_valid("0svc_x-1"));
	ck_assert(!kc_policy_principal_name_valid("_a"));
	ck_assert(!kc_policy_principal_name_valid("a.b"));
	ck_assert(!kc_policy_principal_name_valid(NULL));
	ck_assert(kc_policy_key_name_valid("account-user.v2_x"));
	ck_assert(!kc_policy_key_name_valid("account-*"));
	ck_assert(!kc_policy_key_name_valid("-a"));
	ck_assert(!kc_policy_key_name_valid(""));
}
END_TEST

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = malloc(1 << 16);

	ck_assert_msg(f != NULL, "cannot open %s (run from the repository root)", path);
	ck_assert_ptr_nonnull(buf);
	*len = fread(buf, 1, (1 << 16) - 1, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

/* The full example in docs/keycenter-policy.md is valid, says what the page
 * says, and is the fuzz seed of the same name (so the two cannot drift). */
START_TEST(documented_example_loads)
{
	size_t doc_len, seed_len;
	char *doc = slurp("docs/keycenter-policy.md", &doc_len);
	char *seed = slurp("tests/fuzz/corpus/fuzz_policy/valid_docs_example.json", &seed_len);
	char *start = strstr(doc, "```json\n"), *end;
	kc_policy *p;

	ck_assert_ptr_nonnull(start);
	start += strlen("```json\n");
	ck_assert_ptr_nonnull(end = strstr(start, "```"));
	*end = '\0';
	ck_assert_str_eq(start, seed);
	p = parse_ok(start);
	ck_assert_int_eq(kc_policy_version(p), 7);
	ck_assert_uint_eq(kc_policy_principal_count(p), 8);
	ck_assert_int_eq(kc_policy_allows(p, "kc-admin", KC_OP_KEY_ROTATE, "pay-card"), 0);
	ck_assert_int_eq(kc_policy_allows(p, "kc-admin", KC_OP_DECRYPT, "pay-card"), MICA_EDENIED);
	ck_assert_int_eq(kc_policy_allows(p, "account", KC_OP_DATAKEY, "account-pepper"), 0);
	ck_assert_int_eq(kc_policy_allows(p, "account", KC_OP_KEY_READ, "account-pepper"),
			 MICA_EDENIED);
	ck_assert_int_eq(kc_policy_allows(p, "account", KC_OP_HMAC, "blind-index-user"),
			 MICA_EDENIED);
	/* The union of an exact grant and a prefix, as the page says. */
	ck_assert_int_eq(kc_policy_allows(p, "sync", KC_OP_HMAC, "sync-index"), 0);
	ck_assert_int_eq(kc_policy_allows(p, "sync", KC_OP_REWRAP, "sync-index"), 0);
	ck_assert_int_eq(kc_policy_allows(p, "sync", KC_OP_KEY_READ, "blind-index-user"), 0);
	ck_assert_int_eq(kc_policy_allows(p, "sync", KC_OP_ENCRYPT, "sync-1"), MICA_EDENIED);
	ck_assert_int_eq(kc_policy_allows(p, "pay", KC_OP_DECRYPT, "pay-card"), 0);
	ck_assert_int_eq(kc_policy_allows(p, "pay", KC_OP_DECRYPT, "pay-card-token"), MICA_EDENIED);
	ck_assert_int_eq(kc_policy_allows(p, "officer-zhao", KC_OP_APPROVE, NULL), 0);
	ck_assert_int_eq(kc_policy_allows(p, "auditor", KC_OP_AUDIT_READ, NULL), 0);
	kc_policy_unref(p);
	free(seed);
	free(doc);
}
END_TEST

/* The development policy gives the account principal exactly what
 * mica-account calls (docs/keycenter-policy.md "The account service's
 * grants"): every other (operation, key) pair is refused. */
START_TEST(dev_policy_is_least_privilege)
{
	static const char *const keys[] = {"account-pii",  "account-index", "account-pepper",
					   "account-demo", "account-",	    "other-pii"};
	static const struct {
		const char *key;
		enum kc_op op;
	} needed[] = {
		{"account-pii", KC_OP_ENCRYPT},	   {"account-pii", KC_OP_DECRYPT},
		{"account-pii", KC_OP_DATAKEY},	   {"account-index", KC_OP_HMAC},
		{"account-pepper", KC_OP_DATAKEY}, {"account-pepper", KC_OP_DECRYPT},
	};
	size_t len, allowed = 0;
	char *doc = slurp("deploy/dev/keycenter-policy.json", &len);
	kc_policy *p = parse_ok(doc);
	for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
		for (int op = 0; op < KC_OP__COUNT; op++) {
			int want = 0;
			for (size_t n = 0; n < sizeof(needed) / sizeof(needed[0]); n++)
				want |= needed[n].op == (enum kc_op)op &&
					strcmp(needed[n].key, keys[k]) == 0;
			int rc = kc_policy_allows(p, "account", (enum kc_op)op, keys[k]);
			ck_assert_msg(rc == (want ? 0 : MICA_EDENIED), "account %s %s on %s",
				      rc ? "refused" : "allowed", kc_op_name((enum kc_op)op),
				      keys[k]);
			allowed += rc == 0;
		}
	}
	ck_assert_uint_eq(allowed, sizeof(needed) / sizeof(needed[0]));
	/* Separation of duties holds as before. */
	ck_assert_int_eq(kc_policy_allows(p, "admin", KC_OP_KEY_CREATE, "account-pii"), 0);
	ck_assert_int_eq(kc_policy_allows(p, "admin", KC_OP_DECRYPT, "account-pii"), MICA_EDENIED);
	ck_assert_int_eq(kc_policy_allows(p, "auditor", KC_OP_AUDIT_READ, NULL), 0);
	kc_policy_unref(p);
	free(doc);
}
END_TEST

/* A grant of the development policy: |op| on |key|. */
struct dev_grant {
	const char *key;
	enum kc_op op;
};

/* Checks that |principal| may do exactly needed[] on keys[] of the
 * development policy, and that account may do nothing on |own| keys (the
 * principal's prefix). */
static void check_dev_least_privilege(const char *principal, const char *own,
				      const char *const *keys, size_t nkeys,
				      const struct dev_grant *needed, size_t nneeded)
{
	size_t len, allowed = 0;
	char *doc = slurp("deploy/dev/keycenter-policy.json", &len);
	kc_policy *p = parse_ok(doc);
	for (size_t k = 0; k < nkeys; k++) {
		for (int op = 0; op < KC_OP__COUNT; op++) {
			int want = 0;
			for (size_t n = 0; n < nneeded; n++)
				want |= needed[n].op == (enum kc_op)op &&
					strcmp(needed[n].key, keys[k]) == 0;
			int rc = kc_policy_allows(p, principal, (enum kc_op)op, keys[k]);
			ck_assert_msg(rc == (want ? 0 : MICA_EDENIED), "%s %s %s on %s", principal,
				      rc ? "refused" : "allowed", kc_op_name((enum kc_op)op),
				      keys[k]);
			allowed += rc == 0;
			if (strncmp(keys[k], own, strlen(own)) == 0)
				ck_assert_msg(kc_policy_allows(p, "account", (enum kc_op)op,
							       keys[k]) == MICA_EDENIED,
					      "account allowed %s on %s",
					      kc_op_name((enum kc_op)op), keys[k]);
		}
	}
	ck_assert_uint_eq(allowed, nneeded);
	kc_policy_unref(p);
	free(doc);
}

/* The push principal (issue 21) gets an HMAC on its index key and encrypt and
 * decrypt on its content key, nothing on the account keys; account gets
 * nothing on the push keys. */
START_TEST(dev_policy_push_is_least_privilege)
{
	static const char *const keys[] = {"push-index",  "push-content",  "push-demo",
					   "account-pii", "account-index", "account-pepper"};
	static const struct dev_grant needed[] = {
		{"push-index", KC_OP_HMAC},
		{"push-content", KC_OP_ENCRYPT},
		{"push-content", KC_OP_DECRYPT},
	};
	check_dev_least_privilege("push", "push-", keys, sizeof(keys) / sizeof(keys[0]), needed,
				  sizeof(needed) / sizeof(needed[0]));
}
END_TEST

/* The cloudsync principal (issue 22) mints users' data keys and unwraps
 * them, on its one key, and nothing else: no encrypt (a data key is never
 * sent back to be wrapped), no rewrap, nothing on the other services' keys. */
START_TEST(dev_policy_cloudsync_is_least_privilege)
{
	static const char *const keys[] = {"cloudsync-user", "cloudsync-demo", "push-content",
					   "account-pii", "account-pepper"};
	static const struct dev_grant needed[] = {
		{"cloudsync-user", KC_OP_DATAKEY},
		{"cloudsync-user", KC_OP_DECRYPT},
	};
	check_dev_least_privilege("cloudsync", "cloudsync-", keys, sizeof(keys) / sizeof(keys[0]),
				  needed, sizeof(needed) / sizeof(needed[0]));
}
END_TEST

START_TEST(refcount_keeps_the_policy_alive)
{
	kc_policy *p = parse_ok(example);

	ck_assert_ptr_eq(kc_policy_ref(p), p);
	ck_assert_ptr_null(kc_policy_ref(NULL));
	kc_policy_unref(p); /* one reference left: still usable */
	ck_assert_int_eq(kc_policy_allows(p, "account", KC_OP_DECRYPT, "account-7"), 0);
	kc_policy_unref(p); /* freed; ASan reports a leak or a double free */
	kc_policy_unref(NULL);
	kc_policy_free(NULL);
}
END_TEST

static void *reader(void *arg)
{
	kc_policy *shared = arg;

	for (int i = 0; i < 20000; i++) {
		kc_policy *mine = kc_policy_ref(shared);
		if (kc_policy_allows(mine, "account", KC_OP_ENCRYPT, "account-1") != 0 ||
		    kc_policy_allows(mine, "admin", KC_OP_ENCRYPT, "account-1") == 0)
			return (void *)1;
		kc_policy_unref(mine);
	}
	/* Each thread drops the reference the main thread took for it, so the
	 * last one out frees the policy. */
	kc_policy_unref(shared);
	return NULL;
}

START_TEST(refcount_is_atomic_across_threads)
{
	kc_policy *p = parse_ok(example);
	pthread_t t[4];

	for (int i = 0; i < 3; i++)
		kc_policy_ref(p); /* four references, one per thread */
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, reader, p), 0);
	for (int i = 0; i < 4; i++) {
		void *res;
		ck_assert_int_eq(pthread_join(t[i], &res), 0);
		ck_assert_ptr_null(res);
	}
}
END_TEST

static Suite *policy_suite(void)
{
	Suite *s = suite_create("policy");
	TCase *tc = tcase_create("policy");

	tcase_add_loop_test(tc, each_validation_error_is_exact, 0,
			    (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
	tcase_add_test(tc, the_example_parses);
	tcase_add_test(tc, optional_fields_and_lengths);
	tcase_add_test(tc, bad_arguments_and_short_error_buffers);
	tcase_add_test(tc, limits_are_enforced);
	tcase_add_test(tc, role_by_operation_matrix);
	tcase_add_test(tc, key_patterns_match_exactly_or_by_prefix);
	tcase_add_test(tc, many_principals_are_all_found);
	tcase_add_test(tc, names_are_stable_and_distinct);
	tcase_add_test(tc, documented_example_loads);
	tcase_add_test(tc, dev_policy_is_least_privilege);
	tcase_add_test(tc, dev_policy_push_is_least_privilege);
	tcase_add_test(tc, dev_policy_cloudsync_is_least_privilege);
	tcase_add_test(tc, refcount_keeps_the_policy_alive);
	tcase_add_test(tc, refcount_is_atomic_across_threads);
	tcase_set_timeout(tc, 30);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = policy_suite};
