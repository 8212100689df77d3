#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs are single-quoted on purpose
# test_account_limits.sh - mica-account's security limits and what it keeps at rest, each check
# performing an attack a security review made against the service before these were fixed:
#   1. enumeration through the code quota: five reset/start for an existing address, then
#      register/start, answers exactly as for an unknown address (both reach 429 alike)
#   2. a stranger's reset/start from another network does not starve the owner: the owner's
#      step-up code and the owner's own reset still go out; the per-address ceiling counts only
#      what a requester's own bucket let through
#   3. the freeze cannot be dodged by spreading wrong codes over several step-ups; a password
#      reset starts the count again
#   4. from a database copy (psql as superuser): codes, network hashes, security questions and
#      answers and device names are not recoverable by unkeyed hashing or in clear; they still
#      open with the Key Center's keys, and the service still uses them end to end; rows written
#      before (unkeyed codes and networks, plain questions, answers and names) are retired,
#      sealed at start or re-keyed at login
#   5. Redis stopped (by pid): captcha counters, login rate and code quotas refuse with 503
#      unavailable naming Redis, for known and unknown addresses alike; once Redis is back the
#      limits count again
# Everything it starts is stopped, Redis restarted if it is down, its database dropped on exit.
set -euo pipefail

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"
account_begin test_account_limits
REG_DEVICE_NAME="Alice phone"
# Redis is shared with the tests after this one: never leave it stopped.
stack_on_exit() {
	mica_redis_running "$MICA_TEST_DIR" || mica__redis_start "$MICA_TEST_DIR" || true
	redis_clear || true
}

ACCT_ENV+=(
	MICA_ACCOUNT_RISK_CAPTCHA_ACCOUNT_FAILURES=3
	MICA_ACCOUNT_RISK_FREEZE_AFTER_STEPUP_FAILURES=3
	MICA_ACCOUNT_RISK_STEPUP_FAILURE_WINDOW_S=86400
	MICA_ACCOUNT_SESSION_RECENT_AUTH_S=3600
	MICA_ACCOUNT_CODES_PER_HOUR=5
	MICA_ACCOUNT_CODES_PER_ADDRESS_HOUR=8
)
account_start
ok "Key Center on $KURL; mica-account on $AURL"

# The unkeyed hashes the service used to store (acct_hash_hex: SHA-256 of domain, NUL, value).
legacy_hash() { printf '%s\0%s' "$1" "$2" | sha256sum | cut -c1-64; }
reset_body() { js --arg l "$1" '{login: $l}'; }


PW='Alice-pass1'
register alice@example.com "$PW" dev-alice
ALICE_UID="$REG_UID"
T_ALICE="$REG_TOKEN"
code_limits_clear

# ---------------------------------------------------------------------------------------------
step="1 enumeration through the code quota"
# Before: reset/start counted only when a code went out (an account exists), so register/start
# afterwards said 429 for an existing address and 200 for an unknown one.
for addr in alice@example.com nobody@example.com; do
	for _ in 1 2 3 4 5; do expect 200 - -i 127.6.0.1 POST /v1/password/reset/start "$(reset_body $addr)"; done
	expect 429 too_many_codes -i 127.6.0.1 POST /v1/register/start "$(js --arg v $addr '{email: $v}')"
	cp "$W/body" "$W/register-$addr.json"
	expect 429 too_many_codes -i 127.6.0.1 POST /v1/password/reset/start "$(reset_body $addr)"
	cp "$W/body" "$W/reset-$addr.json"
done
if ! cmp -s "$W/register-alice@example.com.json" "$W/register-nobody@example.com.json" ||
	! cmp -s "$W/reset-alice@example.com.json" "$W/reset-nobody@example.com.json"; then
	fail "answers differ for a known and an unknown address"
fi
ok "five reset/start then register/start: 429 for an existing and an unknown address alike"
code_limits_clear

# ---------------------------------------------------------------------------------------------
step="2 a stranger cannot starve the owner"
# The owner logs in on a new device: a step-up waits for an email code.
must expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW" dev-laptop)"
SU="$(jget stepup_id)"
# A stranger on 127.7.0.0/24 asks for reset codes to Alice's address until refused, and on.
for _ in 1 2 3 4 5; do expect 200 - -i 127.7.0.1 POST /v1/password/reset/start "$(reset_body alice@example.com)"; done
for _ in 1 2 3; do expect 429 too_many_codes -i 127.7.0.1 POST /v1/password/reset/start "$(reset_body alice@example.com)"; done
# Before: the step-up code shared the address's five an hour with the stranger: 429.
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
expect 200 - POST "/v1/stepup/$SU/verify" "$(js --arg c "$(code_for alice@example.com)" '{code: $c}')"
# The refused requests did not count towards the address's ceiling (8): the owner's own reset
# from their network still goes out (6 of 8), and the step-up quota is apart.
expect 200 - POST /v1/password/reset/start "$(reset_body alice@example.com)"
[[ "$(jget verification_id)" == "$(sql "$ADMIN_CI" "SELECT id FROM account.verification
	WHERE purpose = 'reset' ORDER BY created_at DESC LIMIT 1")" ]] || fail "no reset code went out"
# Filling the ceiling takes a second network; then reset/start is refused everywhere (the
# price of bounding what one address receives), but step-up codes still go out.
for _ in 1 2; do expect 200 - -i 127.8.0.1 POST /v1/password/reset/start "$(reset_body alice@example.com)"; done
expect 429 too_many_codes -i 127.8.0.1 POST /v1/password/reset/start "$(reset_body alice@example.com)"
expect 429 too_many_codes POST /v1/password/reset/start "$(reset_body alice@example.com)"
expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW" dev-tablet)"
expect 200 - POST "/v1/stepup/$(jget stepup_id)/send" '{"method": "email"}'
ok "a stranger's reset/start from other networks left the owner's step-up codes untouched"
code_limits_clear

# ---------------------------------------------------------------------------------------------
step="3 the freeze counts per account"
# Before: failures were counted per step-up, so one wrong code in each of many step-ups never
# reached freeze_after_stepup_failures (3).
for i in 1 2 3; do
	must expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW" "dev-thief$i")"
	SU="$(jget stepup_id)"
	expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
	BAD="$(wrong_code "$(code_for alice@example.com)")"
	if ((i < 3)); then
		expect 400 invalid_code POST "/v1/stepup/$SU/verify" "$(js --arg c "$BAD" '{code: $c}')"
	else
		expect 423 account_frozen POST "/v1/stepup/$SU/verify" "$(js --arg c "$BAD" '{code: $c}')"
	fi
done
[[ "$(sql "$ADMIN_CI" "SELECT status FROM account.user WHERE id = $ALICE_UID")" == frozen ]] ||
	fail "the account is not frozen"
expect 401 invalid_token -t "$T_ALICE" GET /v1/sessions
# A reset ends the freeze and the count: one wrong code afterwards does not freeze again.
expect 200 - POST /v1/password/reset/start "$(reset_body alice@example.com)"
PW='Alice-new-22'
expect 200 - POST /v1/password/reset/complete "$(js --arg v "$(jget verification_id)" \
	--arg c "$(code_for alice@example.com)" --arg p "$PW" '{verification_id: $v, code: $c, new_password: $p}')"
must expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW" dev-new)"
SU="$(jget stepup_id)"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
CODE="$(code_for alice@example.com)"
expect 400 invalid_code POST "/v1/stepup/$SU/verify" "$(js --arg c "$(wrong_code "$CODE")" '{code: $c}')"
expect 200 - POST "/v1/stepup/$SU/verify" "$(js --arg c "$CODE" '{code: $c}')"
ok "one wrong code in each of three step-ups froze the account; the reset started the count again"
code_limits_clear

# ---------------------------------------------------------------------------------------------
step="4 at rest"
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW" dev-alice)"
T_ALICE="$(jget token)"
# Codes: the stored hash is keyed; the unkeyed hash of the id and the known code is nowhere.
must expect 200 - POST /v1/register/start '{"email": "bob@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for bob@example.com)"
stored="$(sql "$ADMIN_CI" "SELECT code_hash FROM account.verification WHERE id = '$VID'")"
[[ "$stored" == kc:v1:* ]] || fail "code_hash: $stored"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.verification WHERE code_hash IN
	('$(legacy_hash mica-account-code "$VID:$CODE")', '$(printf '%s' "$VID:$CODE" | sha256sum | cut -c1-64)')")" == 0 ]] ||
	fail "an unkeyed hash of a known code is stored"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.verification WHERE code_hash NOT LIKE 'kc:v%'")" == 0 ]] ||
	fail "a code hash is not keyed"
# Networks: keyed; the unkeyed hash of the /24 the test logs in from is nowhere.
NET_OLD="$(legacy_hash mica-network 127.0.0.0/24)"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.network WHERE network_hash = '$NET_OLD'")" == 0 &&
	"$(sql "$ADMIN_CI" "SELECT count(*) FROM account.stepup WHERE network_hash = '$NET_OLD'")" == 0 &&
	"$(sql "$ADMIN_CI" "SELECT count(*) FROM account.network WHERE network_hash NOT LIKE 'kc:v%'")" == 0 ]] ||
	fail "a network is stored under an unkeyed hash"
# Device names: sealed in account.device and account.stepup; the session list still shows them.
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.device WHERE name LIKE '%phone%' OR name LIKE '%Phone%'")" == 0 &&
	"$(sql "$ADMIN_CI" "SELECT count(*) FROM account.stepup WHERE device_name LIKE '%phone%'")" == 0 &&
	"$(sql "$ADMIN_CI" "SELECT count(*) FROM account.device WHERE name NOT LIKE 'dk1.kc:v%' AND name <> ''")" == 0 ]] ||
	fail "a device name is stored in clear"
expect 200 - -t "$T_ALICE" GET /v1/sessions
[[ "$(jq -r '[.sessions[].device_name] | unique | join(",")' "$W/body")" == *"Alice phone"* &&
	"$(jq -r '[.sessions[].device_name] | unique | join(",")' "$W/body")" == *"dev-new phone"* ]] ||
	fail "session list names: $(cat "$W/body")"
# Questions and answers: the question sealed, the answer an Argon2id hash sealed under the pepper.
expect 200 - -t "$T_ALICE" PUT /v1/security/questions \
	'{"questions": [{"question": "First pet?", "answer": "Rex  the Dog"}]}'
row="$(sql "$ADMIN_CI" "SELECT question || ' ' || answer_hash FROM account.security_question
	WHERE user_id = $ALICE_UID AND position = 1")"
[[ "$row" =~ ^dk1\.(kc:v1:[^.]+)\.([^ ]+)\ dk1\.(kc:v1:[^.]+)\.([^ ]+)$ && "$row" != *pet* && "$row" != *argon2* ]] ||
	fail "security question row: $row"
q_wrapped=${BASH_REMATCH[1]} q_env=${BASH_REMATCH[2]} a_wrapped=${BASH_REMATCH[3]} a_env=${BASH_REMATCH[4]}
kc_datakey() { # KEY WRAPPED CONTEXT_JSON -> base64 data key, unwrapped as the account principal
	curl -sS --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" \
		-H 'Content-Type: application/json' -o "$W/kc.json" -w '%{http_code}' \
		-d "$(js --arg c "$2" --argjson x "$3" '{ciphertext: $c, context: $x}')" \
		"$KURL/v1/decrypt/$1" >"$W/kc.code"
	[[ "$(<"$W/kc.code")" == 200 ]] || fail "unwrapping a $1 data key: HTTP $(<"$W/kc.code")"
	jget plaintext "$W/kc.json"
}
PEPPER_CTX='{"service": "account", "table": "user", "column": "password", "purpose": "pepper"}'
RECORDS_CTX='{"service": "account", "purpose": "records"}'
q="$(printf '%s %s' "$(kc_datakey account-pii "$q_wrapped" "$RECORDS_CTX")" "$q_env" |
	"$ENVELOPE_OPEN" "service=account;table=security_question;column=question;row=$ALICE_UID:1")"
[[ "$q" == "First pet?" ]] || fail "the sealed question opens to: $q"
phc="$(printf '%s %s' "$(kc_datakey account-pepper "$a_wrapped" "$PEPPER_CTX")" "$a_env" |
	"$ENVELOPE_OPEN" "service=account;table=security_question;column=answer;row=$ALICE_UID:1")"
[[ "$phc" == '$argon2id$v=19$m=8192,t=2,p=1$'* ]] || fail "the sealed answer opens to: $phc"
# Bound to its place: the answer does not open as another row's or as the question.
if printf '%s %s' "$(kc_datakey account-pepper "$a_wrapped" "$PEPPER_CTX")" "$a_env" |
	"$ENVELOPE_OPEN" "service=account;table=security_question;column=answer;row=$ALICE_UID:2" >/dev/null 2>&1; then
	fail "the sealed answer opened for another row"
fi
ok "codes and networks keyed, device names, questions and answers sealed; all still used end to end"

# Rows written before this change: plain names, questions and answers, unkeyed networks and codes.
LEGACY_PHC='$argon2id$v=19$m=8192,t=2,p=1$c2FsdHNhbHRzYWx0$2Yq4UOJ1qRyyCF2qtFqLYdR2mA1XWXoZkD0Fd+pqjBs'
sql "$ADMIN_CI" "UPDATE account.device SET name = 'Legacy phone' WHERE user_id = $ALICE_UID
	AND device_hash = (SELECT device_hash FROM account.session WHERE token_hash = '$(printf '%s' "$T_ALICE" | sha256sum | cut -c1-64)');
	UPDATE account.security_question SET question = 'Legacy city?', answer_hash = '$LEGACY_PHC'
	WHERE user_id = $ALICE_UID;
	UPDATE account.network SET network_hash = '$NET_OLD' WHERE user_id = $ALICE_UID;
	INSERT INTO account.verification (id, purpose, channel, target_idx, target_enc, code_hash, expires_at)
	VALUES ('0123456789abcdef0123456789abcdef', 'register', 'email', 'x', 'x',
	'$(legacy_hash mica-account-code 0123456789abcdef0123456789abcdef:123456)', now() + interval '5 minutes')" >/dev/null
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.network WHERE user_id = $ALICE_UID")" == 1 ]] ||
	fail "legacy setup: Alice has more than one network"
psql "$ADMIN_CI" -X -v ON_ERROR_STOP=1 -q -f schema/0007_account_sealed_at_rest.sql >/dev/null ||
	fail "schema/0007 does not apply again"
[[ "$(sql "$ADMIN_CI" "SELECT code_hash || ' ' || (expires_at <= now()) FROM account.verification
	WHERE id = '0123456789abcdef0123456789abcdef'")" == "retired true" ]] || fail "the unkeyed code was not retired"
stack_stop account
account_start
grep -q 'sealed 1 security questions and 1 device names written before sealing' "$W/account.log" ||
	fail "no start-up sealing in the log: $(tail -n 5 "$W/account.log")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.device WHERE name LIKE '%Legacy%'")" == 0 &&
	"$(sql "$ADMIN_CI" "SELECT count(*) FROM account.security_question WHERE question NOT LIKE 'dk1.%'
		OR answer_hash NOT LIKE 'dk1.%'")" == 0 ]] || fail "legacy rows were not sealed at start"
row="$(sql "$ADMIN_CI" "SELECT answer_hash FROM account.security_question WHERE user_id = $ALICE_UID")"
[[ "$row" =~ ^dk1\.(kc:v1:[^.]+)\.([^ ]+)$ ]] || fail "sealed legacy answer: $row"
[[ "$(printf '%s %s' "$(kc_datakey account-pepper "${BASH_REMATCH[1]}" "$PEPPER_CTX")" "${BASH_REMATCH[2]}" |
	"$ENVELOPE_OPEN" "service=account;table=security_question;column=answer;row=$ALICE_UID:1")" == "$LEGACY_PHC" ]] ||
	fail "the legacy answer hash did not survive sealing"
# The network known by its unkeyed hash still counts as known (no step-up), and is re-keyed.
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW" dev-alice)"
T_ALICE="$(jget token)"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.network WHERE user_id = $ALICE_UID AND network_hash LIKE 'kc:v1:%'")" == 1 &&
	"$(sql "$ADMIN_CI" "SELECT count(*) FROM account.network WHERE network_hash = '$NET_OLD'")" == 0 ]] ||
	fail "the legacy network hash was not re-keyed at login"
expect 200 - -t "$T_ALICE" GET /v1/sessions
[[ "$(jq -r '[.sessions[].device_name] | join(",")' "$W/body")" == *"Legacy phone"* ]] ||
	fail "the sealed legacy name does not open: $(cat "$W/body")"
ok "legacy codes retired by the migration, names and questions sealed at start, networks re-keyed at login"
code_limits_clear

# ---------------------------------------------------------------------------------------------
step="5 Redis down"
# A step-up waiting for a code, made while Redis is up.
must expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW" dev-outage)"
SU="$(jget stepup_id)"
mica_redis_stop "$MICA_TEST_DIR"
! mica_redis_running "$MICA_TEST_DIR" || fail "Redis is still running"
# Before: counters read as 0 and limits were skipped, so a right password got in after any
# number of wrong ones and codes went out without a quota.
expect 503 unavailable POST /v1/login "$(login_body alice@example.com "$PW" dev-alice)"
[[ "$(jget error.message)" == *Redis* ]] || fail "the 503 does not name Redis: $(cat "$W/body")"
expect 503 unavailable POST /v1/login "$(login_body alice@example.com 'Wrong-pass1' dev-alice)"
expect 503 unavailable POST /v1/login "$(login_body nobody@example.com 'Wrong-pass1' dev-alice)"
expect 503 unavailable POST /v1/register/start '{"email": "carol@example.com"}'
expect 503 unavailable POST /v1/password/reset/start "$(reset_body alice@example.com)"
cp "$W/body" "$W/reset-known.json"
expect 503 unavailable POST /v1/password/reset/start "$(reset_body nobody@example.com)"
cmp -s "$W/body" "$W/reset-known.json" || fail "503 answers differ for a known and an unknown address"
expect 503 unavailable POST "/v1/stepup/$SU/send" '{"method": "email"}'
grep -q 'Redis is unreachable' "$W/account.log" || fail "the outage was not logged"
ok "with Redis stopped every limited request answers 503 unavailable naming Redis"
mica__redis_start "$MICA_TEST_DIR"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW" dev-alice)"
for _ in 1 2 3; do expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com 'Wrong-pass1' dev-alice)"; done
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW" dev-alice)"
for _ in 1 2 3 4 5; do expect 200 - POST /v1/register/start '{"email": "carol@example.com"}'; done
expect 429 too_many_codes POST /v1/register/start '{"email": "carol@example.com"}'
grep -q 'Redis is reachable again' "$W/account.log" || fail "the recovery was not logged"
ok "after Redis restarted the captcha threshold and the code quota count again"

stack_stop account
stack_stop keycenter
stack_end
