/* fuzz_account_register.c - POST /v1/register/start and /complete bodies
 * through everything the account service does before any I/O: lib/http's
 * strict JSON (duplicate keys rejected, objects only), then
 * acct_register_start_parse() (exactly one of phone and email, of that form,
 * through acct_ident_parse) and acct_register_complete_parse() (required
 * fields, device id and name), then the password policy check the flow runs
 * next (acct_password_check with the body's policy, no blocklist: miui is
 * pure, nist must refuse without one). Every body goes through both parsers;
 * the raw bytes also through acct_ident_parse. */
#include "account_fuzz.h"

static void start(json_t *body)
{
	struct acct_register_start_req r;
	mica_problem f = {0};
	int err = acct_register_start_parse(body, &r, &f);
	if (err) {
		fuzz_check_fail(err, &f);
		return;
	}
	if (f.code || !!r.phone == !!r.email || r.kind != (r.phone ? ACCT_ID_PHONE : ACCT_ID_EMAIL))
		abort();
	FUZZ_ONLY_MEMBERS(body, "phone", "email");
	fuzz_check_ident(r.phone ? r.phone : r.email, sizeof(r.norm), r.kind, r.norm);
	if (fuzz_ident(r.phone ? r.phone : r.email, sizeof(r.norm)) != r.kind)
		abort();
}

static void complete(json_t *body)
{
	struct acct_register_complete_req r;
	struct acct_password_verdict v;
	mica_problem f = {0};
	int err = acct_register_complete_parse(body, &r, &f);
	if (err) {
		fuzz_check_fail(err, &f);
		return;
	}
	if (f.code || !r.verification_id || !r.code || !r.password || !r.device_name ||
	    strlen(r.device_name) > 100)
		abort();
	FUZZ_ONLY_MEMBERS(body, "verification_id", "code", "password", "password_policy", "device");
	FUZZ_ONLY_MEMBERS(json_object_get(body, "device"), "id", "name");
	fuzz_check_device(json_string_value(json_object_get(json_object_get(body, "device"), "id")),
			  r.device_hash);
	memset(&v, 0, sizeof(v));
	err = acct_password_check(r.policy ? r.policy : ACCT_PASSWORD_POLICY_DEFAULT, r.password,
				  NULL, &v);
	if (!v.code || (err == 0) != (strcmp(v.code, "ok") == 0) ||
	    (err == 0 && r.policy && strcmp(r.policy, "miui") != 0))
		abort(); /* only miui can accept without a blocklist */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *body;
	fuzz_ident_raw(data, size);
	if (!(body = fuzz_body(data, size)))
		return 0;
	start(body);
	complete(body);
	json_decref(body);
	return 0;
}
