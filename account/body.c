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
