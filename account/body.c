/* body.c - the members of a request body, as a route declares them: one
 * parser for the small bodies (reset, password change, binding, step-up,
 * cross-device, revoke-all, introspection) so each refuses absent, mistyped,
 * over-long or NUL-carrying members the same way, naming the member, before
 * any I/O. The larger bodies (registration, login, security questions) have
 * parsers of their own; every one has a fuzz target (tests/fuzz/).
 */
#include <string.h>

#include "account/account.h"

int acct_body_fields(json_t *body, const struct acct_field *spec, size_t n,
		     union acct_field_value *out, struct acct_fail *f)
{
	for (size_t i = 0; i < n; i++) {
		const struct acct_field *d = &spec[i];
		json_t *v = json_object_get(body, d->name);
		memset(&out[i], 0, sizeof(out[i]));
		if (!v || json_is_null(v)) {
			if (d->required)
				return acct_failf(f, 400, "missing_field", "%s is required",
						  d->name);
			continue;
		}
		if (d->type == ACCT_FIELD_BOOL) {
			if (!json_is_boolean(v))
				return acct_failf(f, 400, "bad_field", "%s must be true or false",
						  d->name);
			out[i].b = json_is_true(v);
			continue;
		}
		if (!json_is_string(v))
			return acct_failf(f, 400, "bad_field", "%s must be a string", d->name);
		const char *s = json_string_value(v);
		size_t len = json_string_length(v);
		if (strlen(s) != len)
			return acct_failf(f, 400, "bad_field", "%s may not contain NUL characters",
					  d->name);
		if (len > d->max_len)
			return acct_failf(f, 400, "bad_field", "%s is at most %zu bytes", d->name,
					  d->max_len);
		if (d->required && len == 0)
			return acct_failf(f, 400, "missing_field", "%s is required", d->name);
		out[i].s = s;
	}
	return 0;
}

/* The routes' bodies. Limits: identifiers as acct_ident_parse() takes them,
 * passwords as POST /v1/login, ids and codes a little above their size. */
#define ID_MAX 64
#define CODE_MAX 16
#define PASSWORD_MAX 1024
#define LOGIN_MAX 320

const struct acct_field acct_body_reset_start[1] = {{"login", ACCT_FIELD_STRING, true, LOGIN_MAX}};
const struct acct_field acct_body_reset_complete[3] = {
    {"verification_id", ACCT_FIELD_STRING, true, ID_MAX},
    {"code", ACCT_FIELD_STRING, true, CODE_MAX},
    {"new_password", ACCT_FIELD_STRING, true, PASSWORD_MAX}};
const struct acct_field acct_body_password_change[2] = {
    {"current_password", ACCT_FIELD_STRING, true, PASSWORD_MAX},
    {"new_password", ACCT_FIELD_STRING, true, PASSWORD_MAX}};
const struct acct_field acct_body_bind_phone[1] = {{"phone", ACCT_FIELD_STRING, true, LOGIN_MAX}};
const struct acct_field acct_body_bind_email[1] = {{"email", ACCT_FIELD_STRING, true, LOGIN_MAX}};
const struct acct_field acct_body_code[2] = {{"verification_id", ACCT_FIELD_STRING, true, ID_MAX},
					     {"code", ACCT_FIELD_STRING, true, CODE_MAX}};
const struct acct_field acct_body_stepup_send[1] = {{"method", ACCT_FIELD_STRING, true, 16}};
const struct acct_field acct_body_stepup_verify[1] = {{"code", ACCT_FIELD_STRING, false, CODE_MAX}};
const struct acct_field acct_body_cross_device[1] = {{"enabled", ACCT_FIELD_BOOL, true, 0}};
const struct acct_field acct_body_revoke_all[1] = {{"keep_current", ACCT_FIELD_BOOL, false, 0}};
const struct acct_field acct_body_introspect[1] = {{"token", ACCT_FIELD_STRING, true, 128}};
