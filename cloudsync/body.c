/* body.c - the request bodies and headers of record sync, read from
 * untrusted bytes before anything is written (fuzzed:
 * tests/fuzz/fuzz_cloudsync_batch.c). Every member is declared (lib/body.h:
 * an unknown one is 400 unknown_field). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "body.h"
#include "cloudsync/cloudsync.h"
#include "parse.h"

int cs_parse_version(const char *s, int64_t *out)
{
	char digits[24];
	size_t n = s ? strlen(s) : 0;
	/* An entity tag, "N" (RFC 9110), or the bare number. */
	if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
		s++;
		n -= 2;
	}
	if (n == 0 || n >= sizeof(digits))
		return MICA_EINVAL;
	memcpy(digits, s, n);
	digits[n] = '\0';
	return mica_parse_int64(digits, 1, INT64_MAX, out);
}

/* The record's JSON as compact text, within the size limit. */
static int data_text(json_t *data, size_t max, cs_write *w, const char *where, mica_problem *p)
{
	char *text = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
	if (!text)
		return mica_problemf(p, 500, "internal_error", "out of memory");
	size_t len = strlen(text);
	if (len > max) {
		free(text);
		return mica_problemf(p, 413, "record_too_large",
				     "%s: a record holds at most %zu bytes of JSON, this one %zu",
				     where, max, len);
	}
	w->json = text;
	w->json_len = len;
	return 0;
}

int cs_parse_put(json_t *body, size_t record_max, cs_write *w, mica_problem *p)
{
	static const mica_body_field spec[] = {{"data", MICA_BODY_ANY, true, 0}};
	mica_body_value v[1];
	int err = mica_body_fields(body, MICA_BODY_FIELDS(spec), v, p);
	return err ? err : data_text(v[0].j, record_max, w, "data", p);
}

static int parse_item(json_t *item, size_t i, size_t record_max, cs_write *w, mica_problem *p)
{
	static const mica_body_field spec[] = {{"id", MICA_BODY_STRING, true, 128},
					       {"if_match", MICA_BODY_ANY, false, 0},
					       {"deleted", MICA_BODY_BOOL, false, 0},
					       {"data", MICA_BODY_ANY, false, 0}};
	mica_body_value v[4];
	char where[48];
	snprintf(where, sizeof(where), "changes[%zu]", i);
	int err = mica_body_fields(item, MICA_BODY_FIELDS(spec), v, p);
	if (err) {
		mica_problem_set_extra(p, "index", json_integer((json_int_t)i));
		return err;
	}
	if (!cs_record_id_ok(v[0].s))
		return mica_problemf(p, 400, "bad_record_id",
				     "%s.id: 1-128 of A-Z a-z 0-9 . _ ~ - starting with a letter or"
				     " digit",
				     where);
	w->id = v[0].s;
	if (v[1].j) {
		if (!json_is_integer(v[1].j) || json_integer_value(v[1].j) < 1)
			return mica_problemf(p, 400, "bad_field",
					     "%s.if_match: the version as a positive integer",
					     where);
		w->has_if_match = true;
		w->if_match = json_integer_value(v[1].j);
	}
	w->deleted = v[2].b;
	if (w->deleted && v[3].j)
		return mica_problemf(p, 400, "bad_field",
				     "%s: a deletion carries no data (deleted true, or data)",
				     where);
	if (!w->deleted && !v[3].j)
		return mica_problemf(p, 400, "missing_field",
				     "%s: data is required unless deleted is true", where);
	return w->deleted ? 0 : data_text(v[3].j, record_max, w, where, p);
}

int cs_parse_batch(json_t *body, size_t max_items, size_t record_max, cs_write **out, size_t *n,
		   bool *confirm, mica_problem *p)
{
	static const mica_body_field spec[] = {{"changes", MICA_BODY_ARRAY, true, 0},
					       {"confirm_mass_delete", MICA_BODY_BOOL, false, 0}};
	mica_body_value v[2];
	cs_write *w = NULL;
	size_t count = 0;
	int err = mica_body_fields(body, MICA_BODY_FIELDS(spec), v, p);
	*out = NULL;
	*n = 0;
	if (err)
		return err;
	count = json_array_size(v[0].j);
	if (count == 0 || count > max_items)
		return mica_problemf(p, 400, "bad_field", "changes: 1 to %zu writes, not %zu",
				     max_items, count);
	if (!(w = calloc(count, sizeof(*w))))
		return mica_problemf(p, 500, "internal_error", "out of memory");
	for (size_t i = 0; err == 0 && i < count; i++) {
		err = parse_item(json_array_get(v[0].j, i), i, record_max, &w[i], p);
		for (size_t k = 0; err == 0 && k < i; k++)
			if (strcmp(w[k].id, w[i].id) == 0)
				err = mica_problemf(p, 400, "duplicate_record",
						    "changes[%zu] and changes[%zu] both write %s",
						    k, i, w[i].id);
	}
	if (err) {
		cs_writes_cleanup(w, count);
		free(w);
		return err;
	}
	*out = w;
	*n = count;
	*confirm = v[1].b;
	return 0;
}
