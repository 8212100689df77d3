/* test_cloudsync.c - the pure parts of cloud sync: record ids and modules,
 * If-Match values, the batch and PUT bodies (limits, duplicates, the
 * deletion/data rule), vCards, WebDAV bodies (no external entity loaded),
 * and what binds a sealed record to its place (user,
 * module, record, version: any other place does not open it). */
#define _GNU_SOURCE /* memmem */
#include <check.h>
#include <jansson.h>
#include <libxml/parser.h>
#include <stdlib.h>
#include <string.h>

#include "cloudsync/cloudsync.h"
#include "crypto.h"
#include "tests/check_main.h"

START_TEST(record_ids_and_modules)
{
	ck_assert(cs_record_id_ok("c1"));
	ck_assert(cs_record_id_ok("0b7f-43.a_b~c"));
	char long_id[130];
	memset(long_id, 'a', 128);
	long_id[128] = '\0';
	ck_assert(cs_record_id_ok(long_id));
	long_id[128] = 'a';
	long_id[129] = '\0';
	ck_assert(!cs_record_id_ok(long_id));
	static const char *const bad[] = {"", "-x", ".x", "a/b", "a b", "..", "x%2f", "é", NULL};
	for (size_t i = 0; bad[i]; i++)
		ck_assert_msg(!cs_record_id_ok(bad[i]), "accepted \"%s\"", bad[i]);
	ck_assert(!cs_record_id_ok(NULL));
	ck_assert(cs_module_known("contacts") && cs_module_known("security_lists"));
	ck_assert(!cs_module_known("Contacts") && !cs_module_known("") && !cs_module_known(NULL));
	json_t *m = cs_modules_json();
	ck_assert_uint_eq(json_array_size(m), 14);
	json_decref(m);
}
END_TEST

START_TEST(if_match_values)
{
	int64_t v = 0;
	ck_assert_int_eq(cs_parse_version("\"12\"", &v), 0);
	ck_assert_int_eq(v, 12);
	ck_assert_int_eq(cs_parse_version("7", &v), 0);
	ck_assert_int_eq(v, 7);
	static const char *const bad[] = {"",
					  "\"\"",
					  "\"",
					  "0",
					  "\"0\"",
					  "-1",
					  "W/\"1\"",
					  "1 ",
					  "\"1",
					  "x",
					  "99999999999999999999",
					  NULL};
	for (size_t i = 0; bad[i]; i++)
		ck_assert_msg(cs_parse_version(bad[i], &v) != 0, "accepted \"%s\"", bad[i]);
	ck_assert_int_ne(cs_parse_version(NULL, &v), 0);
}
END_TEST

/* Parses |text| as a batch; returns the error, leaves the problem's code in
 * *code and the parsed body (whose strings the writes borrow) in *body. */
static int batch(const char *text, size_t max_items, size_t record_max, const char **code,
		 json_t **body, cs_write **w, size_t *n)
{
	mica_problem p = MICA_PROBLEM_INIT;
	bool confirm = false;
	*body = json_loads(text, 0, NULL);
	ck_assert_ptr_nonnull(*body);
	int err = cs_parse_batch(*body, max_items, record_max, w, n, &confirm, &p);
	*code = p.code;
	mica_problem_cleanup(&p);
	return err;
}

START_TEST(batch_bodies)
{
	const char *code = NULL;
	cs_write *w = NULL;
	size_t n = 0;
	json_t *body = NULL;
	ck_assert_int_eq(batch("{\"changes\": [{\"id\": \"a\", \"data\": {\"x\": [1, \"é\"]}},"
			       " {\"id\": \"b\", \"if_match\": 4, \"deleted\": true}]}",
			       8, 64, &code, &body, &w, &n),
			 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(w[0].id, "a");
	ck_assert_str_eq(w[0].json, "{\"x\":[1,\"é\"]}");
	ck_assert(!w[0].has_if_match && !w[0].deleted);
	ck_assert(w[1].has_if_match && w[1].if_match == 4 && w[1].deleted && !w[1].json);
	cs_writes_cleanup(w, n);
	free(w);
	json_decref(body);
	static const struct {
		const char *body, *code;
	} bad[] = {
		{"{\"changes\": []}", "bad_field"},
		{"{\"changes\": [{\"id\": \"a\", \"data\": 1}, {\"id\": \"b\", \"data\": 1},"
		 " {\"id\": \"c\", \"data\": 1}]}",
		 "bad_field"}, /* over max_items (2 below) */
		{"{\"changes\": [{\"id\": \"a\", \"data\": 1}, {\"id\": \"a\", \"data\": 2}]}",
		 "duplicate_record"},
		{"{\"changes\": [{\"id\": \"a\"}]}", "missing_field"},
		{"{\"changes\": [{\"id\": \"a\", \"deleted\": true, \"data\": 1}]}", "bad_field"},
		{"{\"changes\": [{\"id\": \"a\", \"if_match\": 0, \"data\": 1}]}", "bad_field"},
		{"{\"changes\": [{\"id\": \"a\", \"if_match\": 1.5, \"data\": 1}]}", "bad_field"},
		{"{\"changes\": [{\"id\": \"a/b\", \"data\": 1}]}", "bad_record_id"},
		{"{\"changes\": [{\"id\": \"a\", \"data\": 1, \"extra\": 1}]}", "unknown_field"},
		{"{\"changes\": [1]}", "body_not_object"},
		{"{\"change\": []}", "unknown_field"},
		{"{\"changes\": [{\"id\": \"a\", \"data\": \"0123456789012345678901234567890\"}]}",
		 "record_too_large"}, /* 33 bytes of JSON over 32 */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		w = NULL;
		n = 7;
		ck_assert_msg(batch(bad[i].body, 2, 32, &code, &body, &w, &n) == MICA_EINVAL,
			      "accepted %s", bad[i].body);
		json_decref(body);
		ck_assert_msg(code && strcmp(code, bad[i].code) == 0, "%s: %s, want %s",
			      bad[i].body, code ? code : "(none)", bad[i].code);
		ck_assert(!w && n == 0);
	}
}
END_TEST

START_TEST(sealed_records_open_only_in_their_place)
{
	uint8_t key[CS_KEY_LEN], other[CS_KEY_LEN], *body = NULL;
	size_t len = 0;
	json_t *out = NULL;
	const char *json = "{\"fn\":\"Carol\"}";
	ck_assert_int_eq(mica_random(key, sizeof(key)), 0);
	ck_assert_int_eq(mica_random(other, sizeof(other)), 0);
	ck_assert_int_eq(cs_seal(key, 42, "contacts", "c1", 3, json, strlen(json), &body, &len), 0);
	ck_assert(memmem(body, len, "Carol", 5) == NULL);
	ck_assert_int_eq(cs_open(key, 42, "contacts", "c1", 3, body, len, &out), 0);
	ck_assert_str_eq(json_string_value(json_object_get(out, "fn")), "Carol");
	json_decref(out);
	ck_assert_int_eq(cs_open(key, 43, "contacts", "c1", 3, body, len, &out), MICA_EAUTH);
	ck_assert_int_eq(cs_open(key, 42, "notes", "c1", 3, body, len, &out), MICA_EAUTH);
	ck_assert_int_eq(cs_open(key, 42, "contacts", "c2", 3, body, len, &out), MICA_EAUTH);
	ck_assert_int_eq(cs_open(key, 42, "contacts", "c1", 2, body, len, &out), MICA_EAUTH);
	ck_assert_int_eq(cs_open(other, 42, "contacts", "c1", 3, body, len, &out), MICA_EAUTH);
	body[len - 1] ^= 1;
	ck_assert_int_eq(cs_open(key, 42, "contacts", "c1", 3, body, len, &out), MICA_EAUTH);
	ck_assert_ptr_null(out);
	free(body);
}
END_TEST

START_TEST(vcards)
{
	char uid[64];
	const char *why = NULL;
	static const char good[] = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:abc-1\r\nFN:Carol\r\n"
				   "  Folded\r\nitem1.TEL;TYPE=\"a:b\":+1555\r\nEND:VCARD\r\n";
	ck_assert_int_eq(cs_vcard_check(good, strlen(good), uid, sizeof(uid), &why), 0);
	ck_assert_str_eq(uid, "abc-1");
	static const char lf[] = "begin:vcard\nversion:4.0\nfn:x\nend:vcard";
	ck_assert_int_eq(cs_vcard_check(lf, strlen(lf), uid, sizeof(uid), &why), 0);
	ck_assert_str_eq(uid, "");
	static const char *const bad[] = {
		"",
		"BEGIN:VCARD\r\nFN:x\r\nEND:VCARD\r\n",			      /* no VERSION */
		"BEGIN:VCARD\r\nVERSION:2.1\r\nEND:VCARD\r\n",		      /* 2.1 */
		"BEGIN:VCARD\r\nVERSION:3.0\r\n",			      /* no END */
		"VERSION:3.0\r\nBEGIN:VCARD\r\nEND:VCARD\r\n",		      /* not first */
		"BEGIN:VCARD\r\nVERSION:3.0\r\nno colon\r\nEND:VCARD\r\n",    /* not a line */
		"BEGIN:VCARD\r\nVERSION:3.0\r\nEND:VCARD\r\nBEGIN:VCARD\r\n", /* two */
		"BEGIN:VCALENDAR\r\nVERSION:3.0\r\nEND:VCALENDAR\r\n",
		"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:\xff\r\nEND:VCARD\r\n", /* not UTF-8 */
		NULL,
	};
	for (size_t i = 0; bad[i]; i++) {
		why = NULL;
		ck_assert_msg(cs_vcard_check(bad[i], strlen(bad[i]), uid, sizeof(uid), &why) ==
				      MICA_EINVAL,
			      "accepted #%zu", i);
		ck_assert_ptr_nonnull(why);
	}
}
END_TEST

START_TEST(dav_bodies)
{
	cs_dav_query q;
	const char *why = NULL;
	xmlInitParser();
	ck_assert_int_eq(cs_dav_parse("", 0, false, &q, &why), 0);
	ck_assert_int_eq(q.mode, CS_DAV_ALLPROP);
	static const char pf[] = "<d:propfind xmlns:d=\"DAV:\"><d:prop><d:getetag/>"
				 "<x:y xmlns:x=\"urn:x\"/></d:prop></d:propfind>";
	ck_assert_int_eq(cs_dav_parse(pf, strlen(pf), false, &q, &why), 0);
	ck_assert_int_eq(q.mode, CS_DAV_PROP);
	ck_assert_uint_eq(q.nprops, 2);
	ck_assert_str_eq(q.props[0].ns, "DAV:");
	ck_assert_str_eq(q.props[0].name, "getetag");
	ck_assert_str_eq(q.props[1].ns, "urn:x");
	cs_dav_query_cleanup(&q);
	/* An external entity is never loaded: the href stays empty. */
	static const char xxe[] =
		"<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>"
		"<c:addressbook-multiget xmlns:d=\"DAV:\" xmlns:c=\"urn:ietf:params:xml:ns:carddav\">"
		"<d:href>&x;</d:href></c:addressbook-multiget>";
	ck_assert_int_eq(cs_dav_parse(xxe, strlen(xxe), true, &q, &why), 0);
	ck_assert_uint_eq(q.nhrefs, 1);
	ck_assert(strstr(q.hrefs[0], "root:") == NULL);
	cs_dav_query_cleanup(&q);
	static const char query[] =
		"<c:addressbook-query xmlns:c=\"urn:ietf:params:xml:ns:carddav\"/>";
	ck_assert_int_eq(cs_dav_parse(query, strlen(query), true, &q, &why), MICA_EDENIED);
	ck_assert_int_eq(cs_dav_parse("<d:propfind", 11, false, &q, &why), MICA_EINVAL);
	ck_assert_int_eq(cs_dav_parse("<a/>", 4, false, &q, &why), MICA_EINVAL);
	ck_assert_ptr_nonnull(why);
}
END_TEST

static Suite *cloudsync_suite(void)
{
	Suite *s = suite_create("cloudsync");
	TCase *tc = tcase_create("cloudsync");
	tcase_add_test(tc, record_ids_and_modules);
	tcase_add_test(tc, if_match_values);
	tcase_add_test(tc, batch_bodies);
	tcase_add_test(tc, sealed_records_open_only_in_their_place);
	tcase_add_test(tc, vcards);
	tcase_add_test(tc, dav_bodies);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = cloudsync_suite};
