/* fuzz_account_login.c - a POST /v1/login body through everything the
 * account service does with it before any I/O: lib/http's strict JSON
 * (duplicate keys rejected, objects only), then acct_login_parse() (the
 * function acct_login() calls: required fields, session kind, password
 * length, acct_ident_parse on the login, device id checks and hash). Every
 * refusal must be a 400 with a code; every acceptance must satisfy the
 * documented rules. The raw bytes are also fed to acct_ident_parse. */
#include "account_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct acct_login_req r;
	mica_problem f = {0};
	json_t *body;
	int err;

	fuzz_ident_raw(data, size);
	if (!(body = fuzz_body(data, size)))
		return 0;
	err = acct_login_parse(body, &r, &f);
	if (err) {
		fuzz_check_fail(err, &f);
	} else {
		if (f.code || !r.login || !r.password || !r.dev_name || !r.kind ||
		    strlen(r.password) > 1024 || strlen(r.dev_name) > 100 ||
		    (strcmp(r.kind, "app") != 0 && strcmp(r.kind, "web") != 0) ||
		    r.ident == ACCT_ID_INVALID)
			abort();
		/* Defaults only when the member is absent or not a string. */
		if (json_is_string(json_object_get(body, "session_kind")) !=
		    (r.kind == json_string_value(json_object_get(body, "session_kind"))))
			abort();
		FUZZ_ONLY_MEMBERS(body, "login", "password", "altcha", "session_kind", "device");
		FUZZ_ONLY_MEMBERS(json_object_get(body, "device"), "id", "name");
		fuzz_check_ident(r.login, sizeof(r.norm), r.ident, r.norm);
		if (fuzz_ident(r.login, sizeof(r.norm)) != r.ident)
			abort();
		fuzz_check_device(r.dev_id, r.dev_hash);
	}
	json_decref(body);
	return 0;
}
