/* fuzz_cloudsync_batch.c - the cloud sync request parsers on untrusted
 * bytes: a batch body (cs_parse_batch), a PUT body (cs_parse_put) and an
 * If-Match value (cs_parse_version). The input is read as lib/http reads a
 * JSON body. Invariants: an accepted batch has 1..MAX writes, each with a
 * valid record id, no id twice, a deletion without data (absent or null, as
 * lib/body.h counts null) and a put with data
 * whose JSON text is at most the record limit and parses back to the value
 * sent; a refusal sets a 4xx problem with a code; nothing leaks. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cloudsync/cloudsync.h"
#include "fuzz_check.h"

#define MAX_ITEMS 8
#define RECORD_MAX 256

static void check_refusal(int err, mica_problem *p)
{
	CHECK(err == MICA_EINVAL);
	CHECK(p->code && p->status >= 400 && p->status < 500);
	mica_problem_cleanup(p);
}

static void batch(json_t *body)
{
	cs_write *w = NULL;
	size_t n = 99;
	bool confirm = false;
	mica_problem p = MICA_PROBLEM_INIT;
	int err = cs_parse_batch(body, MAX_ITEMS, RECORD_MAX, &w, &n, &confirm, &p);
	if (err) {
		CHECK(!w && n == 0);
		check_refusal(err, &p);
		return;
	}
	json_t *changes = json_object_get(body, "changes");
	CHECK(n >= 1 && n <= MAX_ITEMS && n == json_array_size(changes));
	for (size_t i = 0; i < n; i++) {
		json_t *item = json_array_get(changes, i);
		CHECK(cs_record_id_ok(w[i].id));
		CHECK(strcmp(w[i].id, json_string_value(json_object_get(item, "id"))) == 0);
		for (size_t k = 0; k < i; k++)
			CHECK(strcmp(w[k].id, w[i].id) != 0);
		CHECK(!w[i].has_if_match || w[i].if_match >= 1);
		if (w[i].deleted) {
			json_t *d = json_object_get(item, "data"); /* null is absent */
			CHECK(!w[i].json && (!d || json_is_null(d)));
			continue;
		}
		CHECK(w[i].json && w[i].json_len == strlen(w[i].json) &&
		      w[i].json_len <= RECORD_MAX);
		json_t *back = json_loads(w[i].json, JSON_DECODE_ANY, NULL);
		CHECK(back && json_equal(back, json_object_get(item, "data")));
		json_decref(back);
	}
	cs_writes_cleanup(w, n);
	free(w);
}

static void put(json_t *body)
{
	cs_write w = {0};
	mica_problem p = MICA_PROBLEM_INIT;
	int err = cs_parse_put(body, RECORD_MAX, &w, &p);
	if (err) {
		CHECK(!w.json);
		check_refusal(err, &p);
		return;
	}
	CHECK(w.json && w.json_len <= RECORD_MAX);
	cs_writes_cleanup(&w, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *body = json_loadb((const char *)data, size, 0, NULL);
	if (body) {
		batch(body);
		put(body);
		json_decref(body);
	}
	/* The same bytes as an If-Match value: accepted only as "N" or N,
	 * digits only, N >= 1. */
	char *s = strndup((const char *)data, size);
	int64_t v = 0;
	if (s && cs_parse_version(s, &v) == 0) {
		size_t len = strlen(s), from = 0;
		if (len >= 2 && s[0] == '"' && s[len - 1] == '"') {
			from = 1;
			len--;
		}
		CHECK(v >= 1 && len > from);
		for (size_t i = from; i < len; i++)
			CHECK(s[i] >= '0' && s[i] <= '9');
	}
	free(s);
	return 0;
}
