#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs and PHC strings are single-quoted on purpose
# test_account_register.sh - mica-account end to end: registration.
# Driven with curl against its own fresh database on the tests/run PostgreSQL, the harness
# Redis (ACL user account) and a private Key Center (the harness SoftHSM2 token), with small
# risk thresholds (lib-account.sh):
#   registration by email and phone with codes from `mica outbox list`; miui and nist password
#   policies (breached-password blocklist); code errors (wrong, used, expired, too many
#   attempts, too many codes); identifier in use; malformed identifiers; PII and the password
#   hash sealed by the Key Center and bound to their row; pepper data keys replaced by age and
#   by count; start-up refused without a usable pepper key or, for nist, a blocklist
# A failed check is reported and the test goes on (check_fail, expect); it exits 1 at the end
# with the count. Everything it starts is stopped and its database dropped on exit.
set -euo pipefail

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"
account_begin test_account_register
account_small_limits
# A pepper key the service cannot take data keys from stops the start, naming the key.
if env "${ACCT_ENV[@]}" MICA_ACCOUNT_KEYCENTER_PEPPER_KEY=account-nope timeout 60 "$ACCT_BIN" \
	--config deploy/mica.conf.example >"$W/nope.log" 2>&1; then
	check_fail "mica-account started without a usable pepper key"
fi
grep -q 'Key Center key account-nope is not usable: ' "$W/nope.log" ||
	check_fail "start-up error: $(tail -n 3 "$W/nope.log")"
ok "mica-account refuses to start when the pepper key gives no data key"
# nist as the default policy without a breached-password list stops the start, naming the key.
if env "${ACCT_ENV[@]}" MICA_ACCOUNT_PASSWORD_POLICY=nist MICA_ACCOUNT_PASSWORD_BLOCKLIST_DIR= \
	timeout 60 "$ACCT_BIN" --config deploy/mica.conf.example >"$W/nist.log" 2>&1; then
	check_fail "mica-account started with the nist policy and no blocklist"
fi
grep -q 'nist needs account.password.blocklist_dir' "$W/nist.log" ||
	check_fail "start-up error: $(tail -n 3 "$W/nist.log")"
ok "mica-account refuses nist as its default policy without a breached-password list"
account_start
ok "Key Center on $KURL with keys account-pii/-index/-pepper; mica-account on $AURL"

# ---------------------------------------------------------------------------------------------
step="1 registration"
PW_A='Alice-pass1'
must expect 200 - POST /v1/register/start '{"email": "Alice@Example.com"}'
VID="$(jget verification_id)"
[[ "$VID" =~ ^[0-9a-f]{32}$ && "$(jget channel)" == email && "$(jget expires_in)" == 120 ]] ||
	check_fail "register/start: $(cat "$W/body")"
"$MICA" outbox list --db "$ADMIN_CI" --to alice@example.com >"$W/outbox.txt"
if ! { grep -q '^to: *alice@example.com$' "$W/outbox.txt" && grep -q '^channel: *email$' "$W/outbox.txt" &&
	grep -q '^subject: *Your mica verification code$' "$W/outbox.txt"; }; then
	check_fail "mica outbox list: $(cat "$W/outbox.txt")"
fi
CODE="$(code_for alice@example.com)"
expect 400 weak_password POST /v1/register/complete "$(complete "$VID" "$CODE" 'Ab1-x')"
[[ "$(jget error.message)" == too_short:* ]] || check_fail "message: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(complete "$VID" "$CODE" 'abcdefghijk')"
[[ "$(jget error.message)" == too_few_classes:* ]] || check_fail "message: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(complete "$VID" "$CODE" '123456789012')"
[[ "$(jget error.message)" == too_few_classes:* ]] || check_fail "message: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(complete "$VID" "$CODE" 'Abcdefgh-1234567x')"
[[ "$(jget error.message)" == too_long:* ]] || check_fail "17 characters: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(complete "$VID" "$CODE" 'pass word1')"
[[ "$(jget error.message)" == invalid_characters:* ]] || check_fail "space: $(jget error.message)"
expect 400 invalid_code POST /v1/register/complete "$(complete "$VID" "$(wrong_code "$CODE")" "$PW_A")"
expect 400 missing_field POST /v1/register/complete "{\"verification_id\": \"$VID\"}"
expect 400 bad_device POST /v1/register/complete \
	"$(js --arg v "$VID" --arg c "$CODE" --arg p "$PW_A" '{verification_id: $v, code: $c, password: $p}')"
must expect 201 - POST /v1/register/complete "$(complete "$VID" "$CODE" "$PW_A")"
ALICE_NO="$(jget account_id)"
T_REG="$(jget token)"
[[ "$ALICE_NO" =~ ^[1-9][0-9]{9}$ && "$T_REG" =~ ^[A-Za-z0-9_-]{43}$ &&
	"$(jget session_id)" =~ ^[0-9]+$ && "$(jget expires_at)" =~ ^[0-9]+$ ]] ||
	check_fail "register/complete: $(cat "$W/body")"
ALICE_UID="$(sql "$ADMIN_CI" "SELECT user_id FROM account.session WHERE id = $(jget session_id)")"
expect 400 code_used POST /v1/register/complete "$(complete "$VID" "$CODE" "$PW_A")"
# Stored encrypted and indexed, never in clear.
row="$(sql "$ADMIN_CI" "SELECT email_enc || ' ' || email_idx || ' ' || account_no_enc || ' ' ||
	password_enc || ' ' || password_policy FROM account.user WHERE id = $ALICE_UID")"
[[ "$row" == kc:v1:*' 'kc:v1:*' 'kc:v1:*' 'dk1.kc:v1:*' miui' && "$row" != *alice* ]] ||
	check_fail "stored row: $row"
phc="$(kc_phc "$ALICE_UID")"
[[ "$phc" == '$argon2id$v=19$m=8192,t=2,p=1$'* ]] || check_fail "Alice's PHC: $phc"
# The pepper data key unwraps only with its own context, and the hash opens only for its row.
[[ "$row" =~ dk1\.(kc:v1:[^.]+)\.([^ ]+) ]] || check_fail "sealed hash: $row"
wrapped=${BASH_REMATCH[1]} env=${BASH_REMATCH[2]}
kc_pepper_key "$wrapped" '{"service": "account", "table": "user", "column": "password", "purpose": "other"}' >/dev/null
[[ "$(<"$W/kc.code")" == 400 ]] || check_fail "data key under another context: HTTP $(<"$W/kc.code")"
if printf '%s %s' "$(kc_pepper_key "$wrapped")" "$env" |
	"$ENVELOPE_OPEN" "$(pepper_aad $((ALICE_UID + 1)))" >/dev/null 2>&1; then
	check_fail "the sealed hash opened for another row"
fi
# The email opens only with its own context: its row and its column.
email_enc="$(sql "$ADMIN_CI" "SELECT email_enc FROM account.user WHERE id = $ALICE_UID")"
[[ "$(kc_pii "$email_enc" email "$ALICE_UID")" == alice@example.com ]] ||
	check_fail "email_enc does not open with its context: HTTP $(<"$W/kc.code")"
for ctx in "email $((ALICE_UID + 1))" "security_email $ALICE_UID" "account_no $ALICE_UID"; do
	kc_pii "$email_enc" "${ctx% *}" "${ctx#* }" >/dev/null
	[[ "$(<"$W/kc.code")" == 400 ]] || check_fail "email_enc under context $ctx: HTTP $(<"$W/kc.code")"
done
ok "email and account number are Key Center ciphertexts bound to their row and column, the password hash sealed under a wrapped pepper data key bound to its row; email found by HMAC index"

# The same address again: a code is sent, but the account cannot be created twice.
expect 200 - POST /v1/register/start '{"email": "alice@example.com"}'
expect 409 identifier_in_use POST /v1/register/complete \
	"$(complete "$(jget verification_id)" "$(code_for alice@example.com)" 'Other-pass9' dev-x)"

# By phone (SMS), then log in by phone and by account number.
PW_P='Phone-pass2'
sleep 1.1 # past pepper_key_max_age_s=1: this hash is sealed under a fresh data key
register +8613900000001 "$PW_P" dev-phone
P_UID="$REG_UID"
P_NO="$REG_ACCOUNT"
[[ "$(wrapped_of "$P_UID")" == kc:v1:* && "$(wrapped_of "$P_UID")" != "$(wrapped_of "$ALICE_UID")" ]] ||
	check_fail "the pepper data key was not replaced after pepper_key_max_age_s"
[[ "$(kc_phc "$P_UID")" == '$argon2id$'* ]] || check_fail "the phone user's hash does not open"
ok "after pepper_key_max_age_s a new hash is sealed under a fresh data key"
[[ "$(sql "$ADMIN_CI" "SELECT channel FROM account.notification WHERE recipient = '+8613900000001'")" == sms ]] ||
	check_fail "the phone's code did not go out by SMS"
expect 200 - POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone)"
expect 200 - POST /v1/login "$(login_body "$P_NO" "$PW_P" dev-phone)"

# Malformed identifiers.
expect 400 bad_email POST /v1/register/start '{"email": "not-an-email"}'
expect 400 bad_email POST /v1/register/start '{"email": "a@b@example.com"}'
expect 400 bad_phone POST /v1/register/start '{"phone": "13800000000"}'
expect 400 bad_phone POST /v1/register/start '{"phone": "+12345"}'
expect 400 bad_phone POST /v1/register/start '{"phone": "+86138000000001234"}'
expect 400 missing_field POST /v1/register/start '{"phone": "+8613900000002", "email": "x@example.com"}'
expect 400 missing_field POST /v1/register/start '{}'

# nist: long passphrases without composition rules, but never a breached password.
must expect 200 - POST /v1/register/start '{"email": "nora@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for nora@example.com)"
nist() { js --arg v "$VID" --arg c "$CODE" --arg p "$1" '{verification_id: $v, code: $c,
	password: $p, password_policy: "nist", device: {id: "dev-nora", name: "Nora"}}'; }
expect 400 weak_password POST /v1/register/complete "$(nist password1)"
[[ "$(jget error.message)" == breached:* ]] || check_fail "message: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(nist qwerty123)"
[[ "$(jget error.message)" == breached:* ]] || check_fail "message: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(nist 'short')"
[[ "$(jget error.message)" == too_short:* ]] || check_fail "message: $(jget error.message)"
expect 201 - POST /v1/register/complete "$(nist 'correct horse battery staple, 2026')"
[[ "$(sql "$ADMIN_CI" "SELECT password_policy FROM account.user WHERE id = (SELECT user_id
	FROM account.session WHERE id = $(jget session_id))")" == nist ]] || check_fail "policy not stored"
expect 200 - POST /v1/login "$(login_body nora@example.com 'correct horse battery staple, 2026' dev-nora)"

# Code lifetime, attempts and sending rate.
must expect 200 - POST /v1/register/start '{"email": "tom@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for tom@example.com)"
sql "$ADMIN_CI" "UPDATE account.verification SET expires_at = now() - interval '1 second' WHERE id = '$VID'"
expect 400 code_expired POST /v1/register/complete "$(complete "$VID" "$CODE" 'Tom-pass-1' dev-tom)"
must expect 200 - POST /v1/register/start '{"email": "tom@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for tom@example.com)"
# max_attempts = 3 wrong codes; then even the right one is dead.
for _ in 1 2 3; do
	expect 400 invalid_code POST /v1/register/complete "$(complete "$VID" "$(wrong_code "$CODE")" 'Tom-pass-1' dev-tom)"
done
expect 429 too_many_attempts POST /v1/register/complete "$(complete "$VID" "$CODE" 'Tom-pass-1' dev-tom)"
for _ in 1 2 3 4 5; do expect 200 - POST /v1/register/start '{"email": "flood@example.com"}'; done
expect 429 too_many_codes POST /v1/register/start '{"email": "flood@example.com"}'


# ---------------------------------------------------------------------------------------------
step="1 registration: pepper data keys by count, nist without a list"
# A second instance that seals at most two hashes per pepper data key (and not by age), and has
# no breached-password list.
mica_free_port APORT2
AURL_A="$AURL" AURL_B="https://localhost:$APORT2"
account_start_instance account2 "$AURL_B" "MICA_ACCOUNT_HTTP_PORT=$APORT2" MICA_ACCOUNT_HTTP_METRICS_PORT=0 \
	MICA_ACCOUNT_PASSWORD_PEPPER_KEY_MAX_SEALS=2 MICA_ACCOUNT_PASSWORD_PEPPER_KEY_MAX_AGE_S=3600 \
	MICA_ACCOUNT_PASSWORD_BLOCKLIST_DIR=
AURL="$AURL_B"
# pepper_key_max_seals=2: the first two hashes the instance seals share a data key, the third
# takes a fresh one, and every one of them opens.
seal_uids=()
for n in 1 2 3; do
	register "seals$n@example.com" "Seals-pass$n" "dev-seals$n"
	seal_uids+=("$REG_UID")
done
k1="$(wrapped_of "${seal_uids[0]}")" k2="$(wrapped_of "${seal_uids[1]}")"
k3="$(wrapped_of "${seal_uids[2]}")"
[[ "$k1" == kc:v1:* && "$k1" == "$k2" && "$k3" == kc:v1:* && "$k3" != "$k1" ]] ||
	check_fail "pepper data keys of three seals with pepper_key_max_seals=2: $k1 / $k2 / $k3"
for u in "${seal_uids[@]}"; do
	[[ "$(kc_phc "$u")" == '$argon2id$'* ]] || check_fail "hash of user $u does not open"
done
# Without the list, nist cannot run: a 503 naming the policy, not a 400 blaming the password;
# the code is not used up, and miui still works.
must expect 200 - POST /v1/register/start '{"email": "nolist@example.com"}'
VID="$(jget verification_id)" CODE="$(code_for nolist@example.com)"
expect 503 policy_unavailable POST /v1/register/complete "$(js --arg v "$VID" --arg c "$CODE" \
	'{verification_id: $v, code: $c, password: "correct horse battery staple, 2026",
	password_policy: "nist", device: {id: "dev-nolist", name: "test"}}')"
expect 201 - POST /v1/register/complete "$(complete "$VID" "$CODE" 'Nolist-pass1' dev-nolist)"
AURL="$AURL_A"
stack_stop account2
ok "after pepper_key_max_seals hashes a fresh pepper data key is taken; nist without a list is 503"

stack_stop account
stack_stop keycenter
stack_end
