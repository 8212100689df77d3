#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs and PHC strings are single-quoted on purpose
# test_account_settings.sh - mica-account end to end: sensitive operations.
# Driven with curl against its own fresh database on the tests/run PostgreSQL, the harness
# Redis (ACL user account) and a private Key Center (the harness SoftHSM2 token), with small
# risk thresholds (lib-account.sh):
#   sensitive operations after the recent-authentication window (step-up); password change
#   (current password, policy, burned passwords); security phone bind/unbind, security
#   questions, cross-device verification approved by a trusted device
# A failed check is reported and the test goes on (check_fail, expect); it exits 1 at the end
# with the count. Everything it starts is stopped and its database dropped on exit.
set -euo pipefail

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"
account_begin test_account_settings
account_small_limits
account_start
ok "Key Center on $KURL with keys account-pii/-index/-pepper; mica-account on $AURL"

alice_setup
# A burned password, as a freeze leaves: PW_A, after a change to PW_A2.
BURNED="$(sql "$ADMIN_CI" "SELECT password_enc FROM account.user WHERE id = $ALICE_UID")"
PW_A2='Alice-new-2'
must expect 200 - -t "$REG_TOKEN" POST /v1/password/change \
	"$(js --arg c "$PW_A" --arg n "$PW_A2" '{current_password: $c, new_password: $n}')"
sql "$ADMIN_CI" "INSERT INTO account.burned_password (user_id, password_enc)
	VALUES ($ALICE_UID, '$BURNED')" >/dev/null

# ---------------------------------------------------------------------------------------------
step="5 sensitive operations"
code_limits_clear
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T5="$(jget token)" S5="$(jget session_id)"
expect 200 - -t "$T5" GET /v1/me
[[ "$(jget account_id)" == "$ALICE_NO" && "$(jget email)" == alice@example.com && "$(jget phone)" == null &&
	"$(jget status)" == active && "$(jget password_policy)" == miui &&
	"$(jget cross_device_verification)" == false ]] || check_fail "me: $(cat "$W/body")"
expect 200 - -t "$T5" GET /v1/session
[[ "$(jget session_id)" == "$S5" && "$(jget kind)" == app && "$(jget recent_auth)" == true ]] ||
	check_fail "current session: $(cat "$W/body")"
stale "$S5"
expect 200 - -t "$T5" GET /v1/session
[[ "$(jget recent_auth)" == false ]] || check_fail "stale session: $(cat "$W/body")"
must expect 403 step_up_required -t "$T5" GET /v1/me
SU="$(jget stepup_id)"
[[ "$(jget reasons)" == '["stale_authentication"]' && "$(jget methods)" == '["email"]' ]] ||
	check_fail "sensitive step-up: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT kind || ' ' || session_id FROM account.stepup WHERE id = '$SU'")" == "sensitive $S5" ]] ||
	check_fail "step-up row"
! grep -q alice "$W/body" || check_fail "private data in the 403"
# Every other sensitive route, given a valid body, asks the same and changes nothing.
for route in "POST /v1/security/phone {\"phone\":\"+8613900000009\"}" \
	"POST /v1/security/phone/verify {\"verification_id\":\"x\",\"code\":\"1\"}" \
	"DELETE /v1/security/phone" "POST /v1/security/email {\"email\":\"a2@example.com\"}" \
	"POST /v1/security/email/verify {\"verification_id\":\"x\",\"code\":\"1\"}" \
	"DELETE /v1/security/email" \
	"PUT /v1/security/questions {\"questions\":[{\"question\":\"Pet?\",\"answer\":\"Rex\"}]}" \
	"PUT /v1/security/cross-device {\"enabled\":true}" \
	"POST /v1/password/change {\"current_password\":\"$PW_A2\",\"new_password\":\"Alice-new-9\"}" \
	"DELETE /v1/account"; do
	read -r method path json <<<"$route"
	expect 403 step_up_required -t "$T5" "$method" "$path" ${json:+"$json"}
done
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.security_question WHERE user_id = $ALICE_UID")" == 0 &&
	"$(sql "$ADMIN_CI" "SELECT cross_device FROM account.user WHERE id = $ALICE_UID")" == f ]] ||
	check_fail "a sensitive route changed something without a step-up"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for alice@example.com)\"}"
[[ "$(cat "$W/body")" == '{"verified":true}' ]] || check_fail "sensitive verify: $(cat "$W/body")"
expect 200 - -t "$T5" GET /v1/me
[[ "$(jget email)" == alice@example.com ]] || check_fail "me after step-up: $(cat "$W/body")"
expect 200 - -t "$T5" GET /v1/session
[[ "$(jget recent_auth)" == true ]] || check_fail "after step-up: $(cat "$W/body")"
ok "stale authentication needs a step-up; afterwards /v1/me answers"

# Password change: current password, policy, burned passwords; other sessions end.
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T6="$(jget token)"
fresh "$S5"
N_CHANGED="$(notes alice@example.com 'Your mica password was changed')"
pwchange() { js --arg c "$1" --arg n "$2" '{current_password: $c, new_password: $n}'; }
expect 401 invalid_credentials -t "$T5" POST /v1/password/change "$(pwchange 'Wrong-pass1' 'Alice-new-3')"
# A wrong current password is reported first, whatever the new one is.
expect 401 invalid_credentials -t "$T5" POST /v1/password/change "$(pwchange 'Wrong-pass1' 'alllowercase')"
expect 400 weak_password -t "$T5" POST /v1/password/change "$(pwchange "$PW_A2" 'alllowercase')"
expect 400 password_burned -t "$T5" POST /v1/password/change "$(pwchange "$PW_A2" "$PW_A")"
expect 400 missing_field -t "$T5" POST /v1/password/change '{"current_password": "x"}'
expect 200 - -t "$T6" GET /v1/sessions
PW_A3='Alice-new-3'
expect 200 - -t "$T5" POST /v1/password/change "$(pwchange "$PW_A2" "$PW_A3")"
[[ "$(jget changed)" == true ]] || check_fail "change: $(cat "$W/body")"
expect 401 invalid_token -t "$T6" GET /v1/sessions
expect 200 - -t "$T5" GET /v1/sessions
[[ "$(notes alice@example.com 'Your mica password was changed')" == $((N_CHANGED + 1)) ]] ||
	check_fail "no password-change notification"
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A3" dev-alice)"

# A security phone, verified by SMS code; it becomes a step-up method; then unbound.
fresh "$S5"
expect 400 bad_phone -t "$T5" POST /v1/security/phone '{"phone": "12345"}'
must expect 200 - -t "$T5" POST /v1/security/phone '{"phone": "+8613700000002"}'
VID="$(jget verification_id)"
CODE="$(code_for +8613700000002)"
expect 400 invalid_code -t "$T5" POST /v1/security/phone/verify \
	"{\"verification_id\": \"$VID\", \"code\": \"$(wrong_code "$CODE")\"}"
expect 400 invalid_code -t "$T5" POST /v1/security/email/verify "{\"verification_id\": \"$VID\", \"code\": \"$CODE\"}"
expect 200 - -t "$T5" POST /v1/security/phone/verify "{\"verification_id\": \"$VID\", \"code\": \"$CODE\"}"
[[ "$(jget bound)" == true ]] || check_fail "bind: $(cat "$W/body")"
expect 200 - -t "$T5" GET /v1/me
[[ "$(jget security_phone)" == +8613700000002 ]] || check_fail "me: $(cat "$W/body")"
expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW_A3" dev-tablet)"
[[ "$(jget methods)" == '["sms", "email"]' ]] || check_fail "methods with a security phone: $(cat "$W/body")"
SU="$(jget stepup_id)"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "sms"}'
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for +8613700000002)\"}"
[[ "$(notes +8613700000002 'New sign-in to your mica account')" == 1 ]] || check_fail "no SMS sign-in notice"
expect 200 - -t "$T5" DELETE /v1/security/phone
[[ "$(jget unbound)" == true ]] || check_fail "unbind: $(cat "$W/body")"
expect 200 - -t "$T5" GET /v1/me
[[ "$(jget security_phone)" == null ]] || check_fail "me after unbind: $(cat "$W/body")"
[[ "$(notes +8613700000002 'Security contact removed')" == 1 ]] || check_fail "no unbind notice"
ok "security phone bound by SMS code, used for step-up, unbound"

# Security questions (answers hashed and sealed, questions sealed) and cross-device verification.
fresh "$S5"
expect 400 bad_questions -t "$T5" PUT /v1/security/questions '{"questions": []}'
expect 400 bad_questions -t "$T5" PUT /v1/security/questions '{"questions": [{"question": "Pet?"}]}'
# Limits count the normalised answer and characters, not bytes.
expect 400 bad_questions -t "$T5" PUT /v1/security/questions '{"questions": [{"question": "Pet?", "answer": "   "}]}'
expect 400 bad_questions -t "$T5" PUT /v1/security/questions '{"questions": [{"question": "Pet?", "answer": " x  "}]}'
expect 400 bad_questions -t "$T5" PUT /v1/security/questions '{"questions": [{"question": "  ", "answer": "Rex"}]}'
[[ "$(jget error.message)" == "item 1 needs"* ]] || check_fail "bad_questions message: $(cat "$W/body")"
expect 400 bad_questions -t "$T5" PUT /v1/security/questions \
	"{\"questions\": [{\"question\": \"Pet?\", \"answer\": \"$(printf '答%.0s' {1..129})\"}]}"
expect 200 - -t "$T5" PUT /v1/security/questions \
	"{\"questions\": [{\"question\": \"$(printf '问%.0s' {1..200})\", \"answer\": \"$(printf '答%.0s' {1..128})\"}]}"
# Spaces do not count against the limit: 600 of them collapse into one.
expect 200 - -t "$T5" PUT /v1/security/questions \
	"{\"questions\": [{\"question\": \"Pet?\", \"answer\": \"a$(printf ' %.0s' {1..600})b\"}]}"
expect 200 - -t "$T5" PUT /v1/security/questions \
	'{"questions": [{"question": "First pet?", "answer": "Rex  the Dog"}, {"question": "City?", "answer": "Lyon"}]}'
[[ "$(jget questions)" == 2 ]] || check_fail "questions: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.security_question WHERE user_id = $ALICE_UID
	AND answer_hash LIKE 'dk1.kc:v1:%' AND question LIKE 'dk1.kc:v1:%'
	AND answer_hash NOT LIKE '%argon2%' AND question NOT LIKE '%pet%'")" == 2 ]] ||
	check_fail "answers not hashed and sealed, questions not sealed (test_account_limits.sh opens them)"
expect 400 bad_field -t "$T5" PUT /v1/security/cross-device '{"enabled": "yes"}'
expect 200 - -t "$T5" PUT /v1/security/cross-device '{"enabled": true}'
expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW_A3" dev-watch)"
[[ "$(jget methods)" == '["email", "trusted_device"]' ]] || check_fail "methods: $(cat "$W/body")"
SU="$(jget stepup_id)"
expect 409 approval_pending POST "/v1/stepup/$SU/verify" '{}'
expect 200 - -t "$T5" POST "/v1/stepup/$SU/approve"
[[ "$(jget approved)" == true ]] || check_fail "approve: $(cat "$W/body")"
must expect 200 - POST "/v1/stepup/$SU/verify" '{}'
T_WATCH="$(jget token)"
expect 200 - -t "$T_WATCH" GET /v1/sessions
ok "a trusted device approved the new device's login"

# The window also guards the other sensitive operations.
stale "$S5"
expect 403 step_up_required -t "$T5" POST /v1/password/change "$(pwchange "$PW_A3" 'Alice-new-4')"
expect 403 step_up_required -t "$T5" POST /v1/security/email '{"email": "sec@example.com"}'
expect 403 step_up_required -t "$T5" PUT /v1/security/cross-device '{"enabled": false}'
expect 403 step_up_required -t "$T5" DELETE /v1/account


stack_stop account
stack_stop keycenter
stack_end
