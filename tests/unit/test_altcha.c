/* test_altcha.c - ALTCHA v1 challenges (account/altcha.c): the shape of a
 * created challenge, a brute-force solve in C verified end to end, a golden
 * payload made by altcha-lib 2.8.0 and the widget's encoding, and every
 * failure kind with its exact code (tampered signature, wrong number,
 * expiry, bad base64, missing or mistyped members, other algorithms).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "account/altcha.h"
#include "crypto.h"
#include "err.h"
#include "tests/check_main.h"

static const uint8_t key[] = "0123456789abcdef0123456789abcdef"; /* 32 bytes + NUL */
#define KEY_LEN 32
#define NOW 1700000000LL

/* altcha-lib 2.8.0: createChallenge({hmacKey: "mica altcha test key",
 * number: 4242, salt: "0123456789abcdef0123456789abcdef?expires=1900000000&"}),
 * then the widget's btoa(JSON.stringify({algorithm, challenge, number, salt,
 * signature, test, took})) with took 12. */
#define GOLDEN_KEY "mica altcha test key"
#define GOLDEN_CHALLENGE "652eea33f159c163730115b72b5fc29937b8484409dbe44d068dc74e7d4b274b"
#define GOLDEN_PAYLOAD                                                                             \
	"eyJhbGdvcml0aG0iOiJTSEEtMjU2IiwiY2hhbGxlbmdlIjoiNjUyZWVhMzNmMTU5YzE2MzczMDExNWI3MmI1ZmMy" \
	"OTkzN2I4NDg0NDA5ZGJlNDRkMDY4ZGM3NGU3ZDRiMjc0YiIsIm51bWJlciI6NDI0Miwic2FsdCI6IjAxMjM0NTY3" \
	"ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmP2V4cGlyZXM9MTkwMDAwMDAwMCYiLCJzaWduYXR1cmUiOiIyYTNjODhi" \
	"ZTdjZjk5Yjc2MDlhZWZmMjQzMGRiMTIwZjJlZWU5ZDYyNzhmMzI4MGMyNGExMTRiNjkzNzUxZjc3IiwidG9vayI6" \
	"MTJ9"

static json_t *create_for(long long maxnumber, int ttl, const char *scope)
{
	json_t *c = NULL;
	int rc = acct_altcha_create(key, KEY_LEN, maxnumber, ttl, NOW, scope, &c);

	ck_assert_msg(rc == 0, "create: %s", mica_strerror(rc));
	ck_assert_ptr_nonnull(c);
	return c;
}

static json_t *create(long long maxnumber, int ttl)
{
	return create_for(maxnumber, ttl, NULL);
}

static const char *str(json_t *obj, const char *name)
{
	const char *s = json_string_value(json_object_get(obj, name));

	ck_assert_msg(s != NULL, "member %s", name);
	return s;
}

static void sha256_hex(const char *text, char out[65])
{
	uint8_t md[32];
	unsigned len = 0;

	ck_assert_int_eq(EVP_Digest(text, strlen(text), md, &len, EVP_sha256(), NULL), 1);
	ck_assert_int_eq(mica_hex_encode(md, sizeof(md), out, 65), 0);
}

/* The client's job: try 0, 1, 2, ... up to maxnumber. */
static long long solve(json_t *c)
{
	long long max = json_integer_value(json_object_get(c, "maxnumber"));
	char buf[256], hex[65];

	for (long long n = 0; n <= max; n++) {
		snprintf(buf, sizeof(buf), "%s%lld", str(c, "salt"), n);
		sha256_hex(buf, hex);
		if (strcmp(hex, str(c, "challenge")) == 0)
			return n;
	}
	ck_abort_msg("no solution up to %lld", max);
	return -1;
}

/* The widget's payload for challenge |c| and |number|, as base64 JSON. */
static char *payload_json(json_t *obj)
{
	char *text = json_dumps(obj, JSON_COMPACT), *b64 = NULL;

	ck_assert_ptr_nonnull(text);
	ck_assert_int_eq(mica_base64_encode_alloc(text, strlen(text), &b64, NULL), 0);
	free(text);
	return b64;
}

static json_t *payload_obj(json_t *c, long long number)
{
	json_t *p = json_pack("{s:s, s:s, s:I, s:s, s:s, s:i}", "algorithm", str(c, "algorithm"),
			      "challenge", str(c, "challenge"), "number", (json_int_t)number,
			      "salt", str(c, "salt"), "signature", str(c, "signature"), "took", 42);

	ck_assert_ptr_nonnull(p);
	return p;
}

static void expect_b64_want(const char *b64, long long now, const struct acct_altcha_want *want,
			    int want_rc, const char *want_code)
{
	struct acct_altcha_verdict v;
	char challenge[ACCT_ALTCHA_HEX_LEN + 1] = "junk";
	int rc = acct_altcha_verify(key, KEY_LEN, b64, now, want, challenge, &v);

	ck_assert_msg(rc == want_rc && strcmp(v.code, want_code) == 0,
		      "verify: rc %s code %s, want %s %s", mica_strerror(rc), v.code,
		      mica_strerror(want_rc), want_code);
	ck_assert_str_eq(v.code, acct_altcha_fault_code(v.fault));
	if (rc != 0)
		ck_assert_str_eq(challenge, "");
}

static void expect_b64(const char *b64, long long now, int want_rc, const char *want_code)
{
	expect_b64_want(b64, now, NULL, want_rc, want_code);
}

/* Verify the payload object |p| (consumed) against |want|. */
static void expect_obj_want(json_t *p, const struct acct_altcha_want *want, int want_rc,
			    const char *want_code)
{
	char *b64 = payload_json(p);

	expect_b64_want(b64, NOW, want, want_rc, want_code);
	free(b64);
	json_decref(p);
}

/* Verify the payload object |p| (consumed). */
static void expect_obj(json_t *p, long long now, int want_rc, const char *want_code)
{
	char *b64 = payload_json(p);

	expect_b64(b64, now, want_rc, want_code);
	free(b64);
	json_decref(p);
}

/* A payload whose JSON text is |json| verbatim. */
static void expect_text(const char *json, int want_rc, const char *want_code)
{
	char *b64 = NULL;

	ck_assert_int_eq(mica_base64_encode_alloc(json, strlen(json), &b64, NULL), 0);
	expect_b64(b64, NOW, want_rc, want_code);
	free(b64);
}

/* A correctly signed challenge over an arbitrary salt, as a holder of the
 * key could make; for salts create() would never produce. */
static json_t *signed_payload(const char *salt, long long number)
{
	char buf[512], challenge[65], signature[65];
	uint8_t mac[32];

	snprintf(buf, sizeof(buf), "%s%lld", salt, number);
	sha256_hex(buf, challenge);
	ck_assert_int_eq(mica_hmac_sha256(key, KEY_LEN, challenge, 64, mac), 0);
	ck_assert_int_eq(mica_hex_encode(mac, sizeof(mac), signature, sizeof(signature)), 0);
	return json_pack("{s:s, s:s, s:I, s:s, s:s}", "algorithm", "SHA-256", "challenge",
			 challenge, "number", (json_int_t)number, "salt", salt, "signature",
			 signature);
}

START_TEST(create_shape)
{
	json_t *c = create(50000, 300), *c2 = create(50000, 300);
	char salt_hex[33], tail[64], mac_hex[65];
	long long expires = 0, cost = 0;
	uint8_t mac[32];
	const char *ch = str(c, "challenge");

	ck_assert_uint_eq(json_object_size(c), 5);
	ck_assert_str_eq(str(c, "algorithm"), "SHA-256");
	ck_assert_int_eq(json_integer_value(json_object_get(c, "maxnumber")), 50000);
	ck_assert_uint_eq(strlen(ch), 64);
	ck_assert_uint_eq(strspn(ch, "0123456789abcdef"), 64);
	/* <32 hex>?expires=<now + ttl>&maxnumber=<cost>& */
	ck_assert_int_eq(sscanf(str(c, "salt"), "%32[0-9a-f]?expires=%lld&maxnumber=%lld%63s",
				salt_hex, &expires, &cost, tail),
			 4);
	ck_assert_uint_eq(strlen(salt_hex), 32);
	ck_assert_int_eq(expires, NOW + 300);
	ck_assert_int_eq(cost, 50000);
	ck_assert_str_eq(tail, "&");
	/* signature = HMAC-SHA256(key, challenge text) */
	ck_assert_int_eq(mica_hmac_sha256(key, KEY_LEN, ch, 64, mac), 0);
	ck_assert_int_eq(mica_hex_encode(mac, sizeof(mac), mac_hex, sizeof(mac_hex)), 0);
	ck_assert_str_eq(str(c, "signature"), mac_hex);
	ck_assert_str_ne(str(c, "salt"), str(c2, "salt"));
	json_decref(c);
	json_decref(c2);
}
END_TEST

START_TEST(solve_then_verify)
{
	json_t *c = create(2000, 120);
	long long n = solve(c);
	json_t *p = payload_obj(c, n);
	char *b64 = payload_json(p);
	char challenge[ACCT_ALTCHA_HEX_LEN + 1];
	struct acct_altcha_verdict v;

	ck_assert_int_ge(n, 0);
	ck_assert_int_le(n, 2000);
	ck_assert_int_eq(acct_altcha_verify(key, KEY_LEN, b64, NOW, NULL, challenge, &v), 0);
	ck_assert_int_eq(v.fault, ACCT_ALTCHA_OK);
	ck_assert_str_eq(v.code, "ok");
	ck_assert_str_eq(challenge, str(c, "challenge"));
	ck_assert_int_eq(v.expires, NOW + 120);
	/* Still valid at the expiry second, expired one second later. */
	expect_b64(b64, NOW + 120, 0, "ok");
	expect_b64(b64, NOW + 121, MICA_EAUTH, "expired");
	/* The module keeps no state: the same payload verifies again (single
	 * use is the caller's job, with mica_kv_nonce on the challenge). */
	expect_b64(b64, NOW, 0, "ok");
	free(b64);
	json_decref(p);
	json_decref(c);
}
END_TEST

/* The number is drawn from all of [0, maxnumber]: with maxnumber 1 both
 * values turn up (a false failure has probability 2^-63). */
START_TEST(number_covers_range)
{
	int seen[2] = {0, 0};

	for (int i = 0; i < 64; i++) {
		json_t *c = create(1, 60);

		seen[solve(c)]++;
		json_decref(c);
	}
	ck_assert_int_gt(seen[0], 0);
	ck_assert_int_gt(seen[1], 0);
}
END_TEST

START_TEST(golden_altcha_lib_payload)
{
	struct acct_altcha_verdict v;
	char challenge[ACCT_ALTCHA_HEX_LEN + 1];
	const uint8_t *gk = (const uint8_t *)GOLDEN_KEY;

	ck_assert_int_eq(acct_altcha_verify(gk, strlen(GOLDEN_KEY), GOLDEN_PAYLOAD, NOW, NULL,
					    challenge, &v),
			 0);
	ck_assert_str_eq(challenge, GOLDEN_CHALLENGE);
	ck_assert_int_eq(v.expires, 1900000000LL);
	ck_assert_int_eq(acct_altcha_verify(gk, strlen(GOLDEN_KEY), GOLDEN_PAYLOAD, 1900000001LL,
					    NULL, challenge, &v),
			 MICA_EAUTH);
	ck_assert_str_eq(v.code, "expired");
	/* Our key did not sign it. */
	expect_b64(GOLDEN_PAYLOAD, NOW, MICA_EAUTH, "bad_signature");
}
END_TEST

START_TEST(tampering)
{
	json_t *c = create(1000, 300), *p;
	long long n = solve(c);
	char sig[65], forged[65], buf[256];
	static const uint8_t other_key[] = "another key, also 32 bytes long!";
	uint8_t mac[32];

	/* One hex digit of the signature changed. */
	p = payload_obj(c, n);
	snprintf(sig, sizeof(sig), "%s", str(c, "signature"));
	sig[10] = sig[10] == '0' ? '1' : '0';
	json_object_set_new(p, "signature", json_string(sig));
	expect_obj(p, NOW, MICA_EAUTH, "bad_signature");

	/* Signed with another key. */
	ck_assert_int_eq(mica_hmac_sha256(other_key, KEY_LEN, str(c, "challenge"), 64, mac), 0);
	ck_assert_int_eq(mica_hex_encode(mac, sizeof(mac), sig, sizeof(sig)), 0);
	p = payload_obj(c, n);
	json_object_set_new(p, "signature", json_string(sig));
	expect_obj(p, NOW, MICA_EAUTH, "bad_signature");

	/* A challenge of the client's own making, with our signature of another. */
	snprintf(buf, sizeof(buf), "%s%d", str(c, "salt"), 7);
	sha256_hex(buf, forged);
	p = payload_obj(c, 7);
	json_object_set_new(p, "challenge", json_string(forged));
	expect_obj(p, NOW, MICA_EAUTH, "bad_signature");

	/* Wrong numbers. */
	expect_obj(payload_obj(c, n + 1), NOW, MICA_EAUTH, "wrong_solution");
	expect_obj(payload_obj(c, n == 0 ? 1 : n - 1), NOW, MICA_EAUTH, "wrong_solution");
	expect_obj(payload_obj(c, ACCT_ALTCHA_MAXNUMBER_MAX), NOW, MICA_EAUTH, "wrong_solution");

	/* A later expiry spliced into the salt breaks the hash. */
	p = payload_obj(c, n);
	snprintf(buf, sizeof(buf), "%s", str(c, "salt"));
	ck_assert_ptr_nonnull(strstr(buf, "?expires="));
	strchr(strstr(buf, "?expires="), '&')[-1]++; /* last digit of the expiry */
	json_object_set_new(p, "salt", json_string(buf));
	expect_obj(p, NOW, MICA_EAUTH, "wrong_solution");
	p = payload_obj(c, n);
	snprintf(buf, sizeof(buf), "%sexpires=9999999999&", str(c, "salt"));
	json_object_set_new(p, "salt", json_string(buf));
	expect_obj(p, NOW, MICA_EAUTH, "wrong_solution");

	/* Extra members (the widget's "took" and "test") are ignored. */
	p = payload_obj(c, n);
	json_object_set_new(p, "test", json_true());
	expect_obj(p, NOW, 0, "ok");
	json_decref(c);
}
END_TEST

START_TEST(expiry_in_salt)
{
	/* Expired, with everything else right. */
	expect_obj(signed_payload("abcd?expires=1699999999&", 5), NOW, MICA_EAUTH, "expired");
	expect_obj(signed_payload("abcd?expires=1700000000&", 5), NOW, 0, "ok");
	/* Other parameters around it are fine. */
	expect_obj(signed_payload("abcd?x=1&expires=1700000100&y=2", 5), NOW, 0, "ok");
	/* Freshness cannot be shown: expired, even though the signature holds. */
	expect_obj(signed_payload("abcd", 5), NOW, MICA_EAUTH, "expired");
	expect_obj(signed_payload("abcd?", 5), NOW, MICA_EAUTH, "expired");
	expect_obj(signed_payload("abcd?expire=1800000000&", 5), NOW, MICA_EAUTH, "expired");
	expect_obj(signed_payload("abcd?expires=&", 5), NOW, MICA_EAUTH, "expired");
	expect_obj(signed_payload("abcd?expires=18e8&", 5), NOW, MICA_EAUTH, "expired");
	expect_obj(signed_payload("abcd?expires=-1&", 5), NOW, MICA_EAUTH, "expired");
	expect_obj(signed_payload("abcd?expires=99999999999999999999&", 5), NOW, MICA_EAUTH,
		   "expired");
	expect_obj(signed_payload("abcd?expires=1800000000&expires=1800000000&", 5), NOW,
		   MICA_EAUTH, "expired");
}
END_TEST

START_TEST(algorithms)
{
	json_t *c = create(100, 300);
	long long n = solve(c);
	static const char *const others[] = {"SHA-1",	"SHA-512", "SHA-384",
					     "sha-256", "SHA256",  ""};

	for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
		json_t *p = payload_obj(c, n);

		json_object_set_new(p, "algorithm", json_string(others[i]));
		expect_obj(p, NOW, MICA_EAUTH, "unsupported_algorithm");
	}
	json_decref(c);
}
END_TEST

START_TEST(bad_base64)
{
	json_t *c = create(100, 300);
	json_t *p = payload_obj(c, solve(c));
	char *b64 = payload_json(p), *copy;
	size_t len = strlen(b64);
	char *big = malloc(ACCT_ALTCHA_PAYLOAD_MAX + 2);

	expect_b64(b64, NOW, 0, "ok");
	expect_b64("", NOW, MICA_EAUTH, "malformed");
	expect_b64("!!!!", NOW, MICA_EAUTH, "malformed");
	expect_b64("eyJ", NOW, MICA_EAUTH, "malformed"); /* bad length */
	copy = malloc(len + 2);
	ck_assert_ptr_nonnull(copy);
	/* Without its padding, with a line break, in the URL alphabet. */
	memcpy(copy, b64, len + 1);
	while (len > 0 && copy[len - 1] == '=')
		copy[--len] = '\0';
	if (len != strlen(b64))
		expect_b64(copy, NOW, MICA_EAUTH, "malformed");
	memcpy(copy, b64, strlen(b64));
	memcpy(copy + strlen(b64), "\n", 2);
	expect_b64(copy, NOW, MICA_EAUTH, "malformed");
	memcpy(copy, b64, strlen(b64) + 1);
	for (char *q = copy; *q; q++)
		if (*q == '+' || *q == '/')
			*q = *q == '+' ? '-' : '_';
	if (strcmp(copy, b64) != 0)
		expect_b64(copy, NOW, MICA_EAUTH, "malformed");
	/* Over the size limit, even if it were valid base64. */
	memset(big, 'A', ACCT_ALTCHA_PAYLOAD_MAX + 1);
	big[ACCT_ALTCHA_PAYLOAD_MAX + 1] = '\0';
	expect_b64(big, NOW, MICA_EAUTH, "malformed");
	free(big);
	free(copy);
	free(b64);
	json_decref(p);
	json_decref(c);
}
END_TEST

START_TEST(missing_and_mistyped_members)
{
	static const char *const members[] = {"algorithm", "challenge", "number", "salt",
					      "signature"};
	json_t *c = create(100, 300);
	long long n = solve(c);
	json_t *p;
	char upper[65];

	for (size_t i = 0; i < sizeof(members) / sizeof(members[0]); i++) {
		p = payload_obj(c, n);
		ck_assert_int_eq(json_object_del(p, members[i]), 0);
		expect_obj(p, NOW, MICA_EAUTH, "malformed");
		p = payload_obj(c, n);
		json_object_set_new(p, members[i], json_null());
		expect_obj(p, NOW, MICA_EAUTH, "malformed");
	}
	/* number must be a JSON integer in [0, ACCT_ALTCHA_MAXNUMBER_MAX]. */
	p = payload_obj(c, n);
	json_object_set_new(p, "number", json_sprintf("%lld", n));
	expect_obj(p, NOW, MICA_EAUTH, "malformed");
	p = payload_obj(c, n);
	json_object_set_new(p, "number", json_real((double)n));
	expect_obj(p, NOW, MICA_EAUTH, "malformed");
	expect_obj(payload_obj(c, -1), NOW, MICA_EAUTH, "malformed");
	expect_obj(payload_obj(c, ACCT_ALTCHA_MAXNUMBER_MAX + 1), NOW, MICA_EAUTH, "malformed");
	/* challenge and signature: exactly 64 lower-case hex digits. */
	p = payload_obj(c, n);
	json_object_set_new(p, "challenge", json_stringn(str(c, "challenge"), 63));
	expect_obj(p, NOW, MICA_EAUTH, "malformed");
	snprintf(upper, sizeof(upper), "%s", str(c, "challenge"));
	for (char *q = upper; *q; q++)
		if (*q >= 'a' && *q <= 'f')
			*q = (char)(*q - 'a' + 'A');
	p = payload_obj(c, n);
	json_object_set_new(p, "challenge", json_string(upper));
	expect_obj(p, NOW, MICA_EAUTH, "malformed");
	p = payload_obj(c, n);
	json_object_set_new(p, "signature", json_string("zz"));
	expect_obj(p, NOW, MICA_EAUTH, "malformed");
	p = payload_obj(c, n);
	json_object_set_new(p, "signature", json_integer(5));
	expect_obj(p, NOW, MICA_EAUTH, "malformed");
	/* salt: non-empty, bounded, no NUL. */
	p = payload_obj(c, n);
	json_object_set_new(p, "salt", json_string(""));
	expect_obj(p, NOW, MICA_EAUTH, "malformed");
	p = payload_obj(c, n);
	json_object_set_new(p, "salt", json_stringn("ab\0cd?expires=1", 15));
	expect_obj(p, NOW, MICA_EAUTH, "malformed");
	json_decref(c);

	/* Not an object, not JSON, duplicate members, trailing bytes. */
	expect_text("[1,2,3]", MICA_EAUTH, "malformed");
	expect_text("\"SHA-256\"", MICA_EAUTH, "malformed");
	expect_text("{", MICA_EAUTH, "malformed");
	expect_text("{}", MICA_EAUTH, "malformed");
	expect_text("{\"algorithm\":\"SHA-256\"} x", MICA_EAUTH, "malformed");
	expect_text("{\"algorithm\":\"SHA-1\",\"algorithm\":\"SHA-256\"}", MICA_EAUTH, "malformed");
	/* Malformed is decided before the algorithm. */
	expect_text("{\"algorithm\":\"SHA-1\"}", MICA_EAUTH, "malformed");
}
END_TEST

START_TEST(argument_errors)
{
	json_t *c = (json_t *)1;
	struct acct_altcha_verdict v;
	char challenge[ACCT_ALTCHA_HEX_LEN + 1] = "x";

	ck_assert_int_eq(acct_altcha_create(key, 15, 100, 60, NOW, NULL, &c), MICA_EINVAL);
	ck_assert_ptr_null(c);
	ck_assert_int_eq(acct_altcha_create(NULL, KEY_LEN, 100, 60, NOW, NULL, &c), MICA_EINVAL);
	ck_assert_int_eq(acct_altcha_create(key, KEY_LEN, 0, 60, NOW, NULL, &c), MICA_EINVAL);
	ck_assert_int_eq(
		acct_altcha_create(key, KEY_LEN, ACCT_ALTCHA_MAXNUMBER_MAX + 1, 60, NOW, NULL, &c),
		MICA_EINVAL);
	ck_assert_int_eq(acct_altcha_create(key, KEY_LEN, 100, 0, NOW, NULL, &c), MICA_EINVAL);
	ck_assert_int_eq(acct_altcha_create(key, KEY_LEN, 100, 60, -1, NULL, &c), MICA_EINVAL);
	ck_assert_int_eq(acct_altcha_create(key, KEY_LEN, 100, 60, INT64_MAX, NULL, &c),
			 MICA_EINVAL);
	ck_assert_int_eq(acct_altcha_create(key, KEY_LEN, 100, 60, NOW, NULL, NULL), MICA_EINVAL);
	ck_assert_int_eq(
		acct_altcha_create(key, KEY_LEN, ACCT_ALTCHA_MAXNUMBER_MAX, 60, NOW, NULL, &c), 0);
	json_decref(c);

	ck_assert_int_eq(acct_altcha_verify(key, 15, GOLDEN_PAYLOAD, NOW, NULL, challenge, &v),
			 MICA_EINVAL);
	ck_assert_str_eq(v.code, "malformed");
	ck_assert_str_eq(challenge, "");
	ck_assert_int_eq(acct_altcha_verify(key, KEY_LEN, NULL, NOW, NULL, challenge, &v),
			 MICA_EINVAL);
	ck_assert_int_eq(acct_altcha_verify(key, KEY_LEN, GOLDEN_PAYLOAD, NOW, NULL, NULL, &v),
			 MICA_EINVAL);
	ck_assert_int_eq(
		acct_altcha_verify(key, KEY_LEN, GOLDEN_PAYLOAD, NOW, NULL, challenge, NULL),
		MICA_EINVAL);
	ck_assert_str_eq(acct_altcha_fault_code(ACCT_ALTCHA_EXPIRED), "expired");
	ck_assert_str_eq(acct_altcha_fault_code(ACCT_ALTCHA_TOO_CHEAP), "too_cheap");
	ck_assert_str_eq(acct_altcha_fault_code((enum acct_altcha_fault)99), "unknown");
}
END_TEST

/* A challenge counts only for the scope it was issued for and at the cost
 * now due; the salt carries both, authenticated through the challenge. */
START_TEST(scope_and_cost)
{
	json_t *c = create_for(2000, 300, "abc123"), *plain = create(2000, 300);
	long long n = solve(c), pn = solve(plain);
	char scope64[ACCT_ALTCHA_SCOPE_MAX + 2];
	struct acct_altcha_want ok = {"abc123", 2000}, cheaper = {"abc123", 1000};
	struct acct_altcha_want other = {"abc124", 2000}, prefix = {"abc12", 2000};
	struct acct_altcha_want dearer = {"abc123", 2001}, any = {NULL, 2000};

	ck_assert_ptr_nonnull(strstr(str(c, "salt"), "&maxnumber=2000&scope=abc123&"));
	expect_obj_want(payload_obj(c, n), &ok, 0, "ok");
	expect_obj_want(payload_obj(c, n), &cheaper, 0, "ok");
	expect_obj_want(payload_obj(c, n), &any, 0, "ok");
	expect_obj_want(payload_obj(c, n), &other, MICA_EAUTH, "wrong_scope");
	expect_obj_want(payload_obj(c, n), &prefix, MICA_EAUTH, "wrong_scope");
	expect_obj_want(payload_obj(c, n), &dearer, MICA_EAUTH, "too_cheap");
	/* Without a scope it cannot be spent where one is wanted. */
	expect_obj_want(payload_obj(plain, pn), &ok, MICA_EAUTH, "wrong_scope");
	expect_obj_want(payload_obj(plain, pn), &any, 0, "ok");
	/* A wrong solution is reported as such before the scope is read. */
	expect_obj_want(payload_obj(c, n + 1), &other, MICA_EAUTH, "wrong_solution");

	/* Salts only a key holder could sign: repeated, missing or bad values. */
	expect_obj_want(
		signed_payload("ab?expires=1800000000&maxnumber=9&scope=abc123&scope=abc123&", 1),
		&ok, MICA_EAUTH, "wrong_scope");
	expect_obj_want(signed_payload("ab?expires=1800000000&maxnumber=9&xscope=abc123&", 1), &ok,
			MICA_EAUTH, "wrong_scope");
	expect_obj_want(signed_payload("ab?expires=1800000000&scope=abc123&", 1), &cheaper,
			MICA_EAUTH, "too_cheap");
	expect_obj_want(signed_payload("ab?expires=1800000000&maxnumber=&scope=abc123&", 1),
			&cheaper, MICA_EAUTH, "too_cheap");
	expect_obj_want(signed_payload("ab?expires=1800000000&maxnumber=2e3&scope=abc123&", 1),
			&cheaper, MICA_EAUTH, "too_cheap");
	expect_obj_want(
		signed_payload("ab?expires=1800000000&maxnumber=5000&maxnumber=5000&scope=abc123&",
			       1),
		&cheaper, MICA_EAUTH, "too_cheap");
	expect_obj_want(signed_payload("ab?expires=1800000000&maxnumber=5000&scope=abc123&", 1),
			&cheaper, 0, "ok");
	/* Expiry is checked first. */
	expect_obj_want(signed_payload("ab?expires=1600000000&maxnumber=5000&scope=abc124&", 1),
			&ok, MICA_EAUTH, "expired");

	/* Scopes are 1 to 64 characters of [0-9a-z]. The longest, with the
	 * largest cost, still fits: its payload gets past the salt-length check
	 * (else "malformed") to the hash check. */
	json_t *bad = (json_t *)1;
	const char *bad_scopes[] = {"", "Abc", "a&b", "a=b", "a b", "\xc3\xa9"};
	for (size_t i = 0; i < sizeof(bad_scopes) / sizeof(bad_scopes[0]); i++)
		ck_assert_int_eq(acct_altcha_create(key, KEY_LEN, 10, 60, NOW, bad_scopes[i], &bad),
				 MICA_EINVAL);
	memset(scope64, 'z', sizeof(scope64));
	scope64[ACCT_ALTCHA_SCOPE_MAX + 1] = '\0';
	ck_assert_int_eq(acct_altcha_create(key, KEY_LEN, 10, 60, NOW, scope64, &bad), MICA_EINVAL);
	scope64[ACCT_ALTCHA_SCOPE_MAX] = '\0';
	json_decref(c);
	c = create_for(ACCT_ALTCHA_MAXNUMBER_MAX, 300, scope64);
	struct acct_altcha_want longest = {scope64, ACCT_ALTCHA_MAXNUMBER_MAX};
	expect_obj_want(payload_obj(c, 0), &longest, MICA_EAUTH, "wrong_solution");
	json_decref(c);
	json_decref(plain);
}
END_TEST

START_TEST(cost_escalation)
{
	ck_assert_int_eq(acct_altcha_maxnumber_for(1000, 0, 1000000), 1000);
	ck_assert_int_eq(acct_altcha_maxnumber_for(1000, 1, 1000000), 2000);
	ck_assert_int_eq(acct_altcha_maxnumber_for(1000, 3, 1000000), 8000);
	ck_assert_int_eq(acct_altcha_maxnumber_for(1000, 3, 5000), 5000);
	ck_assert_int_eq(acct_altcha_maxnumber_for(1000, 4000000000u, 1000000), 1000000);
	ck_assert_int_eq(acct_altcha_maxnumber_for(9000, 0, 5000), 5000);
	ck_assert_int_eq(acct_altcha_maxnumber_for(0, 0, 5000), 1);
	ck_assert_int_eq(acct_altcha_maxnumber_for(-5, 2, 5000), 4);
	ck_assert_int_eq(acct_altcha_maxnumber_for(1000, 60, ACCT_ALTCHA_MAXNUMBER_MAX * 10),
			 ACCT_ALTCHA_MAXNUMBER_MAX);
	ck_assert_int_eq(acct_altcha_maxnumber_for(1000, 1, 0), 1);
}
END_TEST

static Suite *altcha_suite(void)
{
	Suite *s = suite_create("altcha");
	TCase *tc = tcase_create("altcha");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, create_shape);
	tcase_add_test(tc, solve_then_verify);
	tcase_add_test(tc, number_covers_range);
	tcase_add_test(tc, golden_altcha_lib_payload);
	tcase_add_test(tc, tampering);
	tcase_add_test(tc, expiry_in_salt);
	tcase_add_test(tc, algorithms);
	tcase_add_test(tc, bad_base64);
	tcase_add_test(tc, missing_and_mistyped_members);
	tcase_add_test(tc, argument_errors);
	tcase_add_test(tc, scope_and_cost);
	tcase_add_test(tc, cost_escalation);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = altcha_suite};
