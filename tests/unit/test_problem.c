/* test_problem.c - one status table and one error reply: every error of the
 * MICA_ERRNO_MAP table has an HTTP status of the documented set, the errors
 * the services used to map apart (TIMEOUT 500 vs 503, LIMITED 500) have one
 * status, a problem becomes the documented JSON shape exactly once (extra
 * members released), and request bodies carry only declared members
 * (lib/body.h: unknown_field). */
#include <check.h>
#include <jansson.h>
#include <string.h>

#include "account/account.h"
#include "body.h"
#include "err.h"
#include "http.h"
#include "problem.h"
#include "tests/check_main.h"

START_TEST(every_error_has_a_documented_status)
{
	static const int allowed[] = {400, 403, 404, 409, 413, 429, 500, 503};
	int n = 0;
	for (int e = MICA__ERR_BASE + 1; e < MICA__ERR_END; e++, n++) {
		int st = mica_http_status(e), ok = 0;
		for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
			ok |= st == allowed[i];
		ck_assert_msg(ok, "%s has status %d", mica_strerror(e), st);
		ck_assert_str_ne(mica_strerror(e), "unknown_error");
	}
	ck_assert_int_eq(n, MICA__ERR_END - MICA__ERR_BASE - 1);
	ck_assert_int_eq(mica_http_status(0), 200);
	ck_assert_int_eq(mica_http_status(MICA__ERR_END), 500);
	ck_assert_int_eq(mica_http_status(MICA__ERR_BASE), 500);
	ck_assert_int_eq(mica_http_status(-1), 500);
}
END_TEST

START_TEST(the_statuses_services_disagreed_on)
{
	/* The Key Center said 500 for these, the account service 503. */
	ck_assert_int_eq(mica_http_status(MICA_ETIMEOUT), 503);
	ck_assert_int_eq(mica_http_status(MICA_EHTTP), 503);
	ck_assert_int_eq(mica_http_status(MICA_ETLS), 503);
	ck_assert_int_eq(mica_http_status(MICA_EKVCONN), 503);
	/* Both said 500. */
	ck_assert_int_eq(mica_http_status(MICA_ELIMITED), 429);
	ck_assert_int_eq(mica_http_status(MICA_ERANGE), 400);
	ck_assert_int_eq(mica_http_status(MICA_ESEALED), 503);
	ck_assert_int_eq(mica_http_status(MICA_EREPLAY), 409);
	/* Unchanged. */
	ck_assert_int_eq(mica_http_status(MICA_EINVAL), 400);
	ck_assert_int_eq(mica_http_status(MICA_EBADENCODING), 400);
	ck_assert_int_eq(mica_http_status(MICA_EDENIED), 403);
	ck_assert_int_eq(mica_http_status(MICA_ENOTFOUND), 404);
	ck_assert_int_eq(mica_http_status(MICA_EEXISTS), 409);
	ck_assert_int_eq(mica_http_status(MICA_ESTATE), 409);
	ck_assert_int_eq(mica_http_status(MICA_ETOOBIG), 413);
	ck_assert_int_eq(mica_http_status(MICA_EDBCONN), 503);
	ck_assert_int_eq(mica_http_status(MICA_EHSM), 503);
	ck_assert_int_eq(mica_http_status(MICA_EAUDIT), 503);
	ck_assert_int_eq(mica_http_status(MICA_ENOMEM), 500);
	ck_assert_int_eq(mica_http_status(MICA_ECRYPTO), 500);
}
END_TEST

START_TEST(problem_from_error)
{
	mica_problem p = MICA_PROBLEM_INIT;
	ck_assert_int_eq(mica_problem_from_err(&p, MICA_ELIMITED, "sending the code"),
			 MICA_ELIMITED);
	ck_assert_int_eq(p.status, 429);
	ck_assert_str_eq(p.code, "rate_limited");
	ck_assert_str_eq(p.msg, "sending the code: rate limit exceeded");
	ck_assert_ptr_null(p.extra);
	mica_problem_cleanup(&p);

	/* A 503 whose error names its dependency says which. */
	ck_assert_int_eq(mica_problem_from_err(&p, MICA_EDBCONN, NULL), MICA_EDBCONN);
	ck_assert_int_eq(p.status, 503);
	ck_assert_str_eq(p.code, "database_unavailable");
	ck_assert_str_eq(json_string_value(json_object_get(p.extra, "dependency")), "database");
	mica_problem_cleanup(&p);
	mica_problem_cleanup(&p); /* twice is fine */
	ck_assert_ptr_null(p.extra);

	/* 500: no detail for the client. */
	ck_assert_int_eq(mica_problem_from_err(&p, MICA_ECRYPTO, "sealing"), MICA_ECRYPTO);
	ck_assert_int_eq(p.status, 500);
	ck_assert_str_eq(p.code, "internal_error");
	ck_assert_str_eq(p.msg, "sealing failed");
	ck_assert_int_eq(mica_problem_from_err(&p, 0, NULL), MICA_EIO);
	ck_assert_int_eq(p.status, 500);

	ck_assert_int_eq(mica_problem_unavailable(&p, "keycenter"), MICA_EIO);
	ck_assert_int_eq(p.status, 503);
	ck_assert_str_eq(p.code, "unavailable");
	ck_assert_ptr_nonnull(strstr(p.msg, "the Key Center"));
	ck_assert_str_eq(json_string_value(json_object_get(p.extra, "dependency")), "keycenter");
	mica_problem_cleanup(&p);

	ck_assert_int_eq(mica_problemf(&p, 409, "key_exists", "a key named %s exists", "k"),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_problemf(&p, 503, "no_policy", "none"), MICA_EIO);
}
END_TEST

/* The reply: the documented shape, the status, extra members at the top
 * level (never replacing "error"), and the problem released. */
START_TEST(one_reply_shape)
{
	mica_problem p = MICA_PROBLEM_INIT;
	mica_http_resp resp = {0};
	json_t *challenge = json_pack("{s:s}", "algorithm", "SHA-256");
	mica_problemf(&p, 401, "captcha_required", "solve %s", "it");
	ck_assert_int_eq(mica_problem_set_extra(&p, "challenge", json_incref(challenge)), 0);
	ck_assert_int_eq(mica_problem_set_extra(&p, "error", json_string("spoof")), 0);
	ck_assert_int_eq(challenge->refcount, 2);
	mica_http_reply_problem(&resp, &p);
	ck_assert_int_eq(challenge->refcount, 1); /* released with the problem */
	ck_assert_ptr_null(p.extra);
	ck_assert_ptr_null(p.code);
	ck_assert_int_eq(resp.status, 401);
	json_t *body = json_loadb(resp.body, resp.body_len, 0, NULL);
	ck_assert_ptr_nonnull(body);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(body, "error"), "code")),
			 "captcha_required");
	ck_assert_str_eq(
		json_string_value(json_object_get(json_object_get(body, "error"), "message")),
		"solve it");
	ck_assert_int_eq(json_object_size(json_object_get(body, "error")), 2);
	ck_assert_str_eq(
		json_string_value(json_object_get(json_object_get(body, "challenge"), "algorithm")),
		"SHA-256");
	ck_assert_int_eq(json_object_size(body), 2);
	json_decref(body);
	json_decref(challenge);
	free(resp.body);

	/* A problem never set is a 500, not a 200 or a crash. */
	memset(&resp, 0, sizeof(resp));
	mica_http_reply_problem(&resp, &p);
	ck_assert_int_eq(resp.status, 500);
	ck_assert_ptr_nonnull(strstr(resp.body, "\"internal_error\""));
	free(resp.body);

	/* The shorthand writes the same shape. */
	memset(&resp, 0, sizeof(resp));
	mica_http_reply_error(&resp, 404, "unknown_key", "no key named %s", "k");
	body = json_loadb(resp.body, resp.body_len, 0, NULL);
	ck_assert_int_eq(resp.status, 404);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(body, "error"), "code")),
			 "unknown_key");
	ck_assert_int_eq(json_object_size(body), 1);
	json_decref(body);
	free(resp.body);
}
END_TEST

static const mica_body_field spec[] = {{"name", MICA_BODY_STRING, true, 8},
				       {"keep", MICA_BODY_BOOL, false, 0},
				       {"doc", MICA_BODY_OBJECT, false, 0},
				       {"list", MICA_BODY_ARRAY, false, 0},
				       {"any", MICA_BODY_ANY, false, 0}};

/* Runs the spec over |text|; returns the code ("ok" on success). The values
 * in |v| borrow from the body, which lives until the next call. */
static const char *body_code(const char *text, mica_body_value *v, char *msg, size_t cap)
{
	static char code[32];
	static json_t *body;
	mica_problem p = MICA_PROBLEM_INIT;
	json_decref(body);
	body = text ? json_loads(text, JSON_ALLOW_NUL, NULL) : NULL;
	int err = mica_body_fields(body, MICA_BODY_FIELDS(spec), v, &p);
	ck_assert(err == 0 || (err == MICA_EINVAL && p.status == 400));
	snprintf(code, sizeof(code), "%s", err ? p.code : "ok");
	if (msg)
		snprintf(msg, cap, "%s", p.msg);
	mica_problem_cleanup(&p);
	return code;
}

START_TEST(unknown_members_are_refused)
{
	mica_body_value v[5];
	char msg[256];
	ck_assert_str_eq(body_code("{\"name\":\"a\",\"kep\":true}", v, msg, sizeof(msg)),
			 "unknown_field");
	ck_assert_ptr_nonnull(strstr(msg, "\"kep\""));
	/* Named as unknown even when a required member is missing too: the
	 * misspelling is the client's real mistake. */
	ck_assert_str_eq(body_code("{\"nmae\":\"a\"}", v, msg, sizeof(msg)), "unknown_field");
	ck_assert_ptr_nonnull(strstr(msg, "\"nmae\""));
	/* Case matters; so does every byte. */
	ck_assert_str_eq(body_code("{\"name\":\"a\",\"Keep\":true}", v, NULL, 0), "unknown_field");
	ck_assert_str_eq(body_code("{\"name\":\"a\",\"keep \":true}", v, NULL, 0), "unknown_field");
	/* A null value does not make an unknown member known. */
	ck_assert_str_eq(body_code("{\"name\":\"a\",\"x\":null}", v, NULL, 0), "unknown_field");
	/* The member named in the message is cut, not the message overrun. */
	char big[600];
	memset(big, 'k', sizeof(big));
	snprintf(big, sizeof(big), "{\"name\":\"a\",\"%0500d\":1}", 0);
	ck_assert_str_eq(body_code(big, v, msg, sizeof(msg)), "unknown_field");
	ck_assert_uint_lt(strlen(msg), 120);
}
END_TEST

START_TEST(declared_members_are_checked)
{
	mica_body_value v[5];
	ck_assert_str_eq(
		body_code("{\"name\":\"abc\",\"keep\":true,\"doc\":{},\"list\":[1],\"any\":7}", v,
			  NULL, 0),
		"ok");
	ck_assert_str_eq(v[0].s, "abc");
	ck_assert_int_eq(v[1].b, 1);
	ck_assert(json_is_object(v[2].j));
	ck_assert(json_is_array(v[3].j));
	ck_assert(json_is_integer(v[4].j));
	ck_assert_str_eq(body_code("{\"name\":\"abc\",\"keep\":null}", v, NULL, 0), "ok");
	ck_assert_int_eq(v[1].b, 0);
	ck_assert_ptr_null(v[2].j);
	ck_assert_str_eq(body_code("{}", v, NULL, 0), "missing_field");
	ck_assert_str_eq(body_code("{\"name\":\"\"}", v, NULL, 0), "missing_field");
	ck_assert_str_eq(body_code("{\"name\":\"123456789\"}", v, NULL, 0), "bad_field");
	ck_assert_str_eq(body_code("{\"name\":\"a\\u0000b\"}", v, NULL, 0), "bad_field");
	ck_assert_str_eq(body_code("{\"name\":1}", v, NULL, 0), "bad_field");
	ck_assert_str_eq(body_code("{\"name\":\"a\",\"keep\":\"yes\"}", v, NULL, 0), "bad_field");
	ck_assert_str_eq(body_code("{\"name\":\"a\",\"doc\":[]}", v, NULL, 0), "bad_field");
	ck_assert_str_eq(body_code("{\"name\":\"a\",\"list\":{}}", v, NULL, 0), "bad_field");
	ck_assert_str_eq(body_code("[]", v, NULL, 0), "body_not_object");
	/* No body: every member absent (the required one is missing). */
	ck_assert_str_eq(body_code(NULL, v, NULL, 0), "missing_field");
	/* A whitelist only: |out| NULL. */
	mica_problem p = MICA_PROBLEM_INIT;
	json_t *body = json_pack("{s:s}", "name", "a");
	ck_assert_int_eq(mica_body_fields(body, MICA_BODY_FIELDS(spec), NULL, &p), 0);
	json_decref(body);
}
END_TEST

/* The account service's dependency failures: 503 naming the dependency
 * whenever the table says down or refusing for now (a timeout was already
 * 503 there; a rate limit was 500), 500 otherwise. */
static void assert_dependency(int err, const char *what, int status, const char *dep)
{
	mica_problem p = MICA_PROBLEM_INIT;
	ck_assert_int_eq(acct_problem_dependency(&p, err, what), err);
	ck_assert_int_eq(p.status, status);
	ck_assert_str_eq(p.code, status == 503 ? "unavailable" : "internal_error");
	if (dep)
		ck_assert_str_eq(json_string_value(json_object_get(p.extra, "dependency")), dep);
	else
		ck_assert_ptr_null(p.extra);
	mica_problem_cleanup(&p);
}

START_TEST(account_dependency_failures)
{
	assert_dependency(MICA_ETIMEOUT, "the session store", 503, "database");
	assert_dependency(MICA_ESERIALIZATION, "the random generator", 503, "database");
	assert_dependency(MICA_EKVCONN, "the captcha", 503, "redis");
	assert_dependency(MICA_ELIMITED, "the notifier", 503, "notifier");
	assert_dependency(MICA_EPERM, "the notifier", 503, "notifier");
	assert_dependency(MICA_EDBCONN, "the notifier", 503, "database");
	assert_dependency(MICA_EINVAL, "the notifier", 500, NULL);
	assert_dependency(MICA_EINVAL, "the database", 500, NULL);
	assert_dependency(MICA_ENOMEM, "memory", 500, NULL);
}
END_TEST

static Suite *problem_suite(void)
{
	Suite *s = suite_create("problem");
	TCase *tc = tcase_create("problem");
	tcase_add_test(tc, every_error_has_a_documented_status);
	tcase_add_test(tc, the_statuses_services_disagreed_on);
	tcase_add_test(tc, problem_from_error);
	tcase_add_test(tc, one_reply_shape);
	tcase_add_test(tc, unknown_members_are_refused);
	tcase_add_test(tc, declared_members_are_checked);
	tcase_add_test(tc, account_dependency_failures);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = problem_suite};
