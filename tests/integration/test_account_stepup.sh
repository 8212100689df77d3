#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs and PHC strings are single-quoted on purpose
# test_account_stepup.sh - mica-account end to end: step-up, freeze and reset.
# Driven with curl against its own fresh database on the tests/run PostgreSQL, the harness
# Redis (ACL user account) and a private Key Center (the harness SoftHSM2 token), with small
# risk thresholds (lib-account.sh):
#   step-up: new device and new network; email code; failed step-up codes freeze the account
#   (sessions revoked, password burned, user told); expired codes do not count; a verified
#   reset unfreezes, never reveals whether an account exists, and revokes every session
# A failed check is reported and the test goes on (check_fail, expect); it exits 1 at the end
# with the count. Everything it starts is stopped and its database dropped on exit.
set -euo pipefail

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"
account_begin test_account_stepup
account_small_limits
account_start
ok "Key Center on $KURL with keys account-pii/-index/-pepper; mica-account on $AURL"

alice_setup
T_REG="$REG_TOKEN"
PW_P='Phone-pass2'
register +8613900000001 "$PW_P" dev-phone
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"

# ---------------------------------------------------------------------------------------------
step="3 step-up"
N_SIGNIN="$(notes alice@example.com 'New sign-in to your mica account')"
must expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-laptop)"
SU="$(jget stepup_id)"
[[ "$SU" =~ ^[0-9a-f]{32}$ && "$(jget methods)" == '["email"]' && "$(jget reasons)" == '["new_device"]' ]] ||
	check_fail "step-up: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT kind || ' ' || status FROM account.stepup WHERE id = '$SU'")" == "login pending" ]] ||
	check_fail "step-up row"
expect 409 no_code_sent POST "/v1/stepup/$SU/verify" '{"code": "123456"}'
expect 409 approval_pending POST "/v1/stepup/$SU/verify" '{}'
expect 400 bad_method POST "/v1/stepup/$SU/send" '{"method": "pigeon"}'
expect 400 method_unavailable POST "/v1/stepup/$SU/send" '{"method": "sms"}'
expect 404 unknown_stepup POST /v1/stepup/0123456789abcdef0123456789abcdef/send '{"method": "email"}'
expect 404 unknown_stepup POST /v1/stepup/nope/send '{"method": "email"}'
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
[[ "$(jget sent)" == true && "$(jget method)" == email ]] || check_fail "send: $(cat "$W/body")"
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for alice@example.com)\"}"
[[ "$(jget token)" =~ ^[A-Za-z0-9_-]{43}$ ]] || check_fail "verify: $(cat "$W/body")"
T_LAPTOP="$(jget token)"
expect 409 stepup_closed POST "/v1/stepup/$SU/verify" '{"code": "123456"}'
[[ "$(notes alice@example.com 'New sign-in to your mica account')" == $((N_SIGNIN + 1)) ]] ||
	check_fail "no new sign-in notification"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-laptop)"
ok "new device verified by email code, told by email, trusted from now on"

# A network the account never used (127.1.0.0/24): step-up, which then expires.
expect 403 step_up_required -i 127.1.0.1 POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
[[ "$(jget reasons)" == '["new_network"]' ]] || check_fail "reasons: $(cat "$W/body")"
SU="$(jget stepup_id)"
sql "$ADMIN_CI" "UPDATE account.stepup SET expires_at = now() - interval '1 second' WHERE id = '$SU'"
expect 410 stepup_expired POST "/v1/stepup/$SU/send" '{"method": "email"}'

# The right password, then failed step-up codes: the severe signal.
N_FROZEN="$(notes alice@example.com 'Your mica account was frozen')"
expect 200 - -t "$T_LAPTOP" GET /v1/sessions
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice '{session_kind: "web"}')"
T_WEB="$(jget token)"
must expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-thief)"
SU="$(jget stepup_id)"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
CODE="$(code_for alice@example.com)"
# An expired code, however often tried, is no sign of a thief: it does not count.
sql "$ADMIN_CI" "UPDATE account.verification SET expires_at = now() - interval '1 second'
	WHERE id = (SELECT verification_id FROM account.stepup WHERE id = '$SU')" >/dev/null
for _ in 1 2 3; do
	expect 400 code_expired POST "/v1/stepup/$SU/verify" "{\"code\": \"$CODE\"}"
done
code_limits_clear
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
CODE="$(code_for alice@example.com)"
BAD="$(wrong_code "$CODE")"
expect 400 invalid_code POST "/v1/stepup/$SU/verify" "{\"code\": \"$BAD\"}"
expect 423 account_frozen POST "/v1/stepup/$SU/verify" "{\"code\": \"$BAD\"}"
expect 409 stepup_closed POST "/v1/stepup/$SU/verify" "{\"code\": \"$CODE\"}"
[[ "$(sql "$ADMIN_CI" "SELECT status || ' ' || (frozen_at IS NOT NULL) FROM account.user WHERE id = $ALICE_UID")" == "frozen true" ]] ||
	check_fail "account not frozen"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.session WHERE user_id = $ALICE_UID AND revoked_at IS NULL")" == 0 ]] ||
	check_fail "sessions survived the freeze"
expect 401 invalid_token -t "$T_LAPTOP" GET /v1/sessions
expect 401 invalid_token -t "$T_REG" GET /v1/sessions
expect 401 invalid_token -t "$T_WEB" GET /v1/sessions
[[ "$(notes alice@example.com 'Your mica account was frozen')" == $((N_FROZEN + 1)) ]] ||
	check_fail "no freeze notification"
# Frozen: even the right password from a trusted device gets 423, and wrong passwords stay 401
# (they never freeze, and never reveal the freeze).
expect 423 account_frozen POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com 'Wrong-pass1' dev-alice)"
ok "expired codes did not count; two wrong step-up codes froze the account: app and web sessions revoked, user told"

# Recovery only by a verified reset; the burned password can never be set again.
code_limits_clear
expect 200 - POST /v1/password/reset/start '{"login": "alice@example.com"}'
expect 400 password_burned POST /v1/password/reset/complete "$(js --arg v "$(jget verification_id)" \
	--arg c "$(code_for alice@example.com)" --arg p "$PW_A" '{verification_id: $v, code: $c, new_password: $p}')"
must expect 200 - POST /v1/password/reset/start '{"login": "alice@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for alice@example.com)"
expect 400 weak_password POST /v1/password/reset/complete "$(js --arg v "$VID" --arg c "$CODE" \
	'{verification_id: $v, code: $c, new_password: "abc"}')"
must expect 200 - POST /v1/password/reset/start '{"login": "alice@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for alice@example.com)"
PW_A2='Alice-new-2'
expect 400 missing_field POST /v1/password/reset/complete "{\"verification_id\": \"$VID\"}"
expect 200 - POST /v1/password/reset/complete "$(js --arg v "$VID" --arg c "$CODE" --arg p "$PW_A2" \
	'{verification_id: $v, code: $c, new_password: $p}')"
[[ "$(jget reset)" == true ]] || check_fail "reset: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT status || ' ' || (frozen_at IS NULL) || ' ' || (password_reset_at IS NOT NULL)
	FROM account.user WHERE id = $ALICE_UID")" == "active true true" ]] || check_fail "not unfrozen"
[[ "$(notes alice@example.com 'Your mica password was reset')" -ge 1 ]] || check_fail "no reset notification"
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
# Reset never tells whether an account exists.
expect 200 - POST /v1/password/reset/start '{"login": "nobody@example.com"}'
[[ "$(jget verification_id)" =~ ^[0-9a-f]{32}$ && "$(jget channel)" == email ]] ||
	check_fail "reset/start for nobody: $(cat "$W/body")"
expect 400 invalid_code POST /v1/password/reset/complete "$(js --arg v "$(jget verification_id)" \
	'{verification_id: $v, code: "123456", new_password: "Whatever-1"}')"
expect 400 bad_login POST /v1/password/reset/start '{"login": "1234567890"}'
# A reset revokes every session of the account (here one that was never frozen).
must expect 200 - POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone)"
T_P="$(jget token)"
expect 200 - -t "$T_P" GET /v1/sessions
code_limits_clear
must expect 200 - POST /v1/password/reset/start '{"login": "+8613900000001"}'
VID="$(jget verification_id)"
PW_P='Phone-new-2'
expect 200 - POST /v1/password/reset/complete "$(js --arg v "$VID" --arg c "$(code_for +8613900000001)" \
	--arg p "$PW_P" '{verification_id: $v, code: $c, new_password: $p}')"
expect 401 invalid_token -t "$T_P" GET /v1/sessions
ok "reset by code unfroze the account and revoked every session; old password refused, new one works"

stack_stop account
stack_stop keycenter
stack_end
