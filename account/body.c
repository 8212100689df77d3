/* body.c - the members of the account service's small request bodies
 * (reset, password change, binding, step-up, cross-device, revoke-all,
 * introspection), as lib/body.h specs: mica_body_fields() refuses absent,
 * mistyped, over-long, NUL-carrying and unknown members the same way,
 * naming the member, before any I/O. The larger bodies (registration,
 * login, security questions) have parsers of their own that apply the same
 * member rule; every one has a fuzz target (tests/fuzz/).
 */
#include "account/account.h"

/* The routes' bodies. Limits: identifiers as acct_ident_parse() takes them,
 * passwords as POST /v1/login, ids and codes a little above their size. */
#define ID_MAX 64
#define CODE_MAX 16
#define PASSWORD_MAX 1024
#define LOGIN_MAX 320

const mica_body_field acct_body_reset_start[1] = {{"login", MICA_BODY_STRING, true, LOGIN_MAX}};
const mica_body_field acct_body_reset_complete[3] = {
	{"verification_id", MICA_BODY_STRING, true, ID_MAX},
	{"code", MICA_BODY_STRING, true, CODE_MAX},
	{"new_password", MICA_BODY_STRING, true, PASSWORD_MAX}};
const mica_body_field acct_body_password_change[2] = {
	{"current_password", MICA_BODY_STRING, true, PASSWORD_MAX},
	{"new_password", MICA_BODY_STRING, true, PASSWORD_MAX}};
const mica_body_field acct_body_bind_phone[1] = {{"phone", MICA_BODY_STRING, true, LOGIN_MAX}};
const mica_body_field acct_body_bind_email[1] = {{"email", MICA_BODY_STRING, true, LOGIN_MAX}};
const mica_body_field acct_body_code[2] = {{"verification_id", MICA_BODY_STRING, true, ID_MAX},
					   {"code", MICA_BODY_STRING, true, CODE_MAX}};
const mica_body_field acct_body_stepup_send[1] = {{"method", MICA_BODY_STRING, true, 16}};
const mica_body_field acct_body_stepup_verify[1] = {{"code", MICA_BODY_STRING, false, CODE_MAX}};
const mica_body_field acct_body_cross_device[1] = {{"enabled", MICA_BODY_BOOL, true, 0}};
const mica_body_field acct_body_revoke_all[1] = {{"keep_current", MICA_BODY_BOOL, false, 0}};
const mica_body_field acct_body_introspect[1] = {{"token", MICA_BODY_STRING, true, 128}};

/* The larger bodies parse their members themselves; these lists only say
 * which members exist, so that any other is refused (unknown_field) as in
 * every other body. */
const mica_body_field acct_body_login_members[5] = {{"login", MICA_BODY_ANY, false, 0},
						    {"password", MICA_BODY_ANY, false, 0},
						    {"altcha", MICA_BODY_ANY, false, 0},
						    {"session_kind", MICA_BODY_ANY, false, 0},
						    {"device", MICA_BODY_ANY, false, 0}};
const mica_body_field acct_body_device_members[2] = {{"id", MICA_BODY_ANY, false, 0},
						     {"name", MICA_BODY_ANY, false, 0}};
const mica_body_field acct_body_register_start_members[2] = {{"phone", MICA_BODY_ANY, false, 0},
							     {"email", MICA_BODY_ANY, false, 0}};
const mica_body_field acct_body_register_complete_members[5] = {
	{"verification_id", MICA_BODY_ANY, false, 0},
	{"code", MICA_BODY_ANY, false, 0},
	{"password", MICA_BODY_ANY, false, 0},
	{"password_policy", MICA_BODY_ANY, false, 0},
	{"device", MICA_BODY_ANY, false, 0}};
const mica_body_field acct_body_questions_members[1] = {{"questions", MICA_BODY_ANY, false, 0}};
const mica_body_field acct_body_question_members[2] = {{"question", MICA_BODY_ANY, false, 0},
						       {"answer", MICA_BODY_ANY, false, 0}};

int acct_body_members(json_t *body, const mica_body_field *spec, size_t n, mica_problem *f)
{
	/* Members that are not objects are their parser's to refuse, with its
	 * own code. */
	return json_is_object(body) ? mica_body_fields(body, spec, n, NULL, f) : 0;
}
