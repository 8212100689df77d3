/* fuzz_account_bodies.c - the small account request bodies (reset,
 * password change, binding, step-up, cross-device, revoke-all,
 * introspection) through mica_body_fields() with each route's member list:
 * a member the list does not name is refused first (unknown_field).
 * The input is read twice: as lib/http reads a body (strict JSON), and with
 * NUL characters allowed, which lib/http refuses but the parser must refuse
 * too. Each verdict is compared with a plain reference of the documented
 * rules, and an accepted body's values with the JSON they came from. */
#include "account_fuzz.h"

static const struct {
	const mica_body_field *spec;
	size_t n;
} specs[] = {
	{MICA_BODY_FIELDS(acct_body_reset_start)},     {MICA_BODY_FIELDS(acct_body_reset_complete)},
	{MICA_BODY_FIELDS(acct_body_password_change)}, {MICA_BODY_FIELDS(acct_body_bind_phone)},
	{MICA_BODY_FIELDS(acct_body_bind_email)},      {MICA_BODY_FIELDS(acct_body_code)},
	{MICA_BODY_FIELDS(acct_body_stepup_send)},     {MICA_BODY_FIELDS(acct_body_stepup_verify)},
	{MICA_BODY_FIELDS(acct_body_cross_device)},    {MICA_BODY_FIELDS(acct_body_revoke_all)},
	{MICA_BODY_FIELDS(acct_body_introspect)},
};

/* The rules, member by member: 1 when |v| is acceptable for |d|. */
static int member_ok(const mica_body_field *d, json_t *v)
{
	if (!v || json_is_null(v))
		return !d->required;
	if (d->type == MICA_BODY_BOOL)
		return json_is_boolean(v);
	if (!json_is_string(v))
		return 0;
	size_t len = json_string_length(v);
	return memchr(json_string_value(v), '\0', len) == NULL && len <= d->max_len &&
	       (len > 0 || !d->required);
}

static void check(json_t *body, const mica_body_field *spec, size_t n)
{
	mica_body_value out[4];
	mica_problem f = {0};
	int want = 1, err;
	if (n > sizeof(out) / sizeof(out[0]))
		abort();
	/* The first member the spec does not name (lib/body.h: refused first). */
	const char *unknown = NULL, *k;
	json_t *v;
	json_object_foreach(body, k, v)
	{
		int known = 0;
		for (size_t i = 0; i < n; i++)
			known |= strcmp(k, spec[i].name) == 0;
		if (!known && !unknown)
			unknown = k;
	}
	want = json_is_object(body) && !unknown;
	for (size_t i = 0; i < n; i++)
		want = want && member_ok(&spec[i], json_object_get(body, spec[i].name));
	err = mica_body_fields(body, spec, n, out, &f);
	if ((err == 0) != want)
		abort();
	if (err) {
		fuzz_check_fail(err, &f);
		if (!json_is_object(body)) {
			if (strcmp(f.code, "body_not_object") != 0)
				abort();
			return;
		}
		if (unknown) {
			/* Named, quoted, cut at 64 bytes. */
			if (strcmp(f.code, "unknown_field") != 0 || f.msg[0] != '"' ||
			    strncmp(f.msg + 1, unknown, strnlen(unknown, 64)) != 0)
				abort();
			return;
		}
		if (strcmp(f.code, "missing_field") != 0 && strcmp(f.code, "bad_field") != 0)
			abort();
		int named = 0; /* the message starts with a member's name */
		for (size_t i = 0; i < n; i++)
			named |= strncmp(f.msg, spec[i].name, strlen(spec[i].name)) == 0;
		if (!named)
			abort();
		return;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *v = json_object_get(body, spec[i].name);
		int absent = !v || json_is_null(v);
		if (spec[i].type == MICA_BODY_BOOL) {
			if (out[i].b != (absent ? 0 : json_is_true(v)))
				abort();
		} else if (absent ? out[i].s != NULL
				  : (out[i].s != json_string_value(v) ||
				     strlen(out[i].s) > spec[i].max_len)) {
			abort();
		}
	}
}

static void run(json_t *body)
{
	if (!body)
		return;
	for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++)
		check(body, specs[i].spec, specs[i].n);
	json_decref(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_error_t jerr;
	run(fuzz_body(data, size));
	json_t *loose = json_loadb((const char *)data, size, JSON_ALLOW_NUL, &jerr);
	if (loose && !json_is_object(loose)) {
		json_decref(loose);
		loose = NULL;
	}
	run(loose);
	return 0;
}
