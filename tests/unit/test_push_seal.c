/* test_push_seal.c - push_seal_message (mipush/seal.c), the one sealer of
 * what a device receives (docs/push-internals.md, "The sealed message"):
 * opened with mica_envelope_open under the device's content key and the AAD
 * "mica-push v1\0<regid>", it is the documented JSON; the same bytes do not
 * open for another regid, under another key, or once tampered with. Also
 * the form rules the send path relies on (lib/form.h): the extra.* family
 * and the UTF-8 check. */
#define _GNU_SOURCE /* memmem */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "form.h"
#include "mipush/push.h"
#include "tests/check_main.h"

static const char *const REGID = "berbCRfHT7zvFWXPaVzhNNmHgw5lQ-rhz3XiN5tXTlY";
static const char *const OTHER = "xerbCRfHT7zvFWXPaVzhNNmHgw5lQ-rhz3XiN5tXTlY";

static size_t aad_of(const char *regid, char *aad)
{
	static const char prefix[] = "mica-push v1";
	memcpy(aad, prefix, sizeof(prefix)); /* with its NUL */
	memcpy(aad + sizeof(prefix), regid, strlen(regid));
	return sizeof(prefix) + strlen(regid);
}

/* Opens |env| for |regid| under |key|; the parsed JSON, or NULL. *rc gets
 * mica_envelope_open's result. */
static json_t *open_for(const uint8_t *key, const char *regid, const uint8_t *env, size_t len,
			int *rc)
{
	char aad[128];
	size_t al = aad_of(regid, aad), pl = 0;
	uint8_t *pt = NULL;
	json_t *j = NULL;
	*rc = mica_envelope_open(key, PUSH_CONTENT_KEY_LEN, aad, al, env, len, &pt, &pl);
	if (*rc == 0) {
		j = json_loadb((const char *)pt, pl, JSON_REJECT_DUPLICATES, NULL);
		free(pt);
	}
	return j;
}

static void key_fill(uint8_t *key, uint8_t v)
{
	for (int i = 0; i < PUSH_CONTENT_KEY_LEN; i++)
		key[i] = (uint8_t)(v + i);
}

START_TEST(notification_opens_for_its_regid_only)
{
	uint8_t key[PUSH_CONTENT_KEY_LEN], other_key[PUSH_CONTENT_KEY_LEN], *env = NULL;
	size_t len = 0;
	int rc;
	key_fill(key, 1);
	key_fill(other_key, 2);
	json_t *extra = json_pack("{s:s}", "sound_uri", "a.ogg");
	push_message_view v = {.msg_id = "m1",
			       .type = "notification",
			       .app_id = "123",
			       .package = "com.example.news",
			       .title = "Hello",
			       .description = "World 中文",
			       .payload = "p",
			       .notify_id = 7,
			       .notify_type = -1,
			       .extra = extra,
			       .sent_at_ms = 1765112345678LL};
	ck_assert_int_eq(push_seal_message(key, REGID, &v, &env, &len), 0);
	ck_assert_ptr_null(memmem(env, len, "Hello", 5)); /* ciphertext only */

	json_t *j = open_for(key, REGID, env, len, &rc);
	ck_assert_int_eq(rc, 0);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "m1");
	ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "notification");
	ck_assert_str_eq(json_string_value(json_object_get(j, "app_id")), "123");
	ck_assert_str_eq(json_string_value(json_object_get(j, "package")), "com.example.news");
	ck_assert_str_eq(json_string_value(json_object_get(j, "title")), "Hello");
	ck_assert_str_eq(json_string_value(json_object_get(j, "description")), "World 中文");
	ck_assert_str_eq(json_string_value(json_object_get(j, "payload")), "p");
	ck_assert_int_eq(json_integer_value(json_object_get(j, "notify_id")), 7);
	ck_assert_int_eq(json_integer_value(json_object_get(j, "notify_type")), -1);
	ck_assert(json_equal(json_object_get(j, "extra"), extra));
	ck_assert(json_integer_value(json_object_get(j, "sent_at")) == 1765112345678LL);
	ck_assert_ptr_null(json_object_get(j, "count"));
	json_decref(j);

	ck_assert_ptr_null(open_for(key, OTHER, env, len, &rc));
	ck_assert_int_eq(rc, MICA_EAUTH); /* bound to the regid: not replayable elsewhere */
	ck_assert_ptr_null(open_for(other_key, REGID, env, len, &rc));
	ck_assert_int_eq(rc, MICA_EAUTH);
	env[len - 1] ^= 1;
	ck_assert_ptr_null(open_for(key, REGID, env, len, &rc));
	ck_assert_int_eq(rc, MICA_EAUTH);

	struct mica_envelope e;
	env[len - 1] ^= 1;
	ck_assert_int_eq(mica_envelope_parse(env, len, &e), 0);
	ck_assert_int_eq((int)e.key_name_len, 12);
	ck_assert(memcmp(e.key_name, "push-content", 12) == 0);
	ck_assert_uint_eq(e.key_version, 1);
	free(env);
	json_decref(extra);
}
END_TEST

START_TEST(marker_and_pass_through_carry_their_members)
{
	uint8_t key[PUSH_CONTENT_KEY_LEN], *env = NULL;
	size_t len = 0;
	int rc;
	key_fill(key, 9);
	push_message_view m = {.msg_id = "deleted:x",
			       .type = "deleted_messages",
			       .notify_id = -1,
			       .sent_at_ms = 5,
			       .count = 12};
	ck_assert_int_eq(push_seal_message(key, REGID, &m, &env, &len), 0);
	json_t *j = open_for(key, REGID, env, len, &rc);
	ck_assert_ptr_nonnull(j);
	ck_assert_int_eq(json_integer_value(json_object_get(j, "count")), 12);
	ck_assert_ptr_null(json_object_get(j, "notify_id"));
	ck_assert_ptr_null(json_object_get(j, "notify_type"));
	ck_assert_ptr_null(json_object_get(j, "title"));
	json_decref(j);
	free(env);

	push_message_view p = {
		.msg_id = "m2", .type = "pass_through", .payload = "{\"a\":1}", .notify_id = -1};
	ck_assert_int_eq(push_seal_message(key, REGID, &p, &env, &len), 0);
	j = open_for(key, REGID, env, len, &rc);
	ck_assert_str_eq(json_string_value(json_object_get(j, "payload")), "{\"a\":1}");
	ck_assert_ptr_null(json_object_get(j, "count")); /* only markers count */
	json_decref(j);
	free(env);

	push_message_view bad = {.type = "notification"};
	ck_assert_int_eq(push_seal_message(key, REGID, &bad, &env, &len), MICA_EINVAL);
	ck_assert_ptr_null(env);
}
END_TEST

static const mica_form_family fam = {"extra.", 3, 8, 10, 14};

START_TEST(extra_family_rules)
{
	mica_problem p = MICA_PROBLEM_INIT;
	json_t *o = json_object();
	ck_assert_int_eq(mica_form_family_add(&fam, o, "extra.a", "1", 1, &p), 0);
	ck_assert_int_eq(mica_form_family_add(&fam, o, "extra.a", "2", 1, &p), MICA_EINVAL);
	ck_assert_str_eq(p.code, "bad_field");
	ck_assert_ptr_nonnull(strstr(p.msg, "extra.a"));
	ck_assert_int_eq(mica_form_family_add(&fam, o, "extra.", "2", 1, &p), MICA_EINVAL);
	ck_assert_int_eq(mica_form_family_add(&fam, o, "extra.123456789", "2", 1, &p),
			 MICA_EINVAL); /* key over 8 */
	ck_assert_int_eq(mica_form_family_add(&fam, o, "extra.b", "12345678901", 11, &p),
			 MICA_EINVAL); /* value over 10 */
	ck_assert_int_eq(mica_form_family_add(&fam, o, "extra.b", "a\0b", 3, &p), MICA_EINVAL);
	ck_assert_int_eq(mica_form_family_add(&fam, o, "extra.b", "\xff", 1, &p), MICA_EINVAL);
	ck_assert_ptr_nonnull(strstr(p.msg, "UTF-8"));
	ck_assert_int_eq(mica_form_family_add(&fam, o, "other", "x", 1, &p), MICA_EINVAL);
	ck_assert_str_eq(p.code, "unknown_field");
	ck_assert_int_eq(mica_form_family_add(&fam, o, "extra.b", "1234567890", 10, &p), 0);
	/* 2 + 11 = 13 bytes so far: "c" and "1" make 15, over max_total 14 */
	ck_assert_int_eq(mica_form_family_add(&fam, o, "extra.c", "1", 1, &p), MICA_EINVAL);
	ck_assert_ptr_nonnull(strstr(p.msg, "together"));
	ck_assert_int_eq(json_object_size(o), 2);
	json_object_clear(o);
	for (int i = 0; i < 3; i++) {
		char k[32];
		snprintf(k, sizeof(k), "extra.%d", i);
		ck_assert_int_eq(mica_form_family_add(&fam, o, k, "v", 1, &p), 0);
	}
	ck_assert_int_eq(mica_form_family_add(&fam, o, "extra.9", "v", 1, &p), MICA_EINVAL);
	ck_assert_ptr_nonnull(strstr(p.msg, "more than 3"));
	json_decref(o);
	mica_problem_cleanup(&p);
}
END_TEST

START_TEST(utf8_validity)
{
	static const char *const good[] = {"",
					   "ascii",
					   "中文",
					   "\xf0\x9f\x98\x80",
					   "\xc2\x80",
					   "\xef\xbf\xbf",
					   "\xf4\x8f\xbf\xbf"};
	static const char *const bad[] = {
		"\xff", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80",	   "\xf4\x90\x80\x80",
		"\xc2", "\xe4\xb8", "a\x80",	    "\xf8\x88\x80\x80\x80"};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(mica_utf8_valid(good[i], strlen(good[i])), "good[%zu] refused", i);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!mica_utf8_valid(bad[i], strlen(bad[i])), "bad[%zu] accepted", i);
}
END_TEST

static Suite *push_seal_suite(void)
{
	Suite *s = suite_create("push_seal");
	TCase *tc = tcase_create("push_seal");
	tcase_add_test(tc, notification_opens_for_its_regid_only);
	tcase_add_test(tc, marker_and_pass_through_carry_their_members);
	tcase_add_test(tc, extra_family_rules);
	tcase_add_test(tc, utf8_validity);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = push_seal_suite};
