#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs and PHC strings are single-quoted on purpose
# test_account.sh - mica-account end to end, driven with curl against its own fresh database on
# the tests/run PostgreSQL, the harness Redis (ACL user account) and a private Key Center (the
# harness SoftHSM2 token), with small risk thresholds:
#   1. registration by email and phone with codes from `mica outbox list`; miui and nist
#      password policies (breached-password blocklist); code errors (wrong, used, expired, too
#      many attempts, too many codes); identifier in use; malformed identifiers
#   2. login: success, no enumeration (identical 401s), captcha per account (all its identifiers
#      together) and per network with ALTCHA challenges solved by the real altcha-lib, rising
#      cost, replay refused, a challenge spent on another login or below the cost due refused
#   3. step-up: new device and new network; email code; trusted-device approval; failed step-up
#      freezes (sessions revoked, password burned, user told); reset unfreezes
#   4. sessions: list, revoke one (fails at once, Redis tombstone, also on a second instance with
#      its in-process copy), revoke-all, logout, web idle
#      timeout, introspection for mTLS service principals only
#   5. sensitive operations after the recent-authentication window; password change; security
#      phone bind/unbind, questions, cross-device verification
#   6. recycled phone numbers
#   7. account deletion (outbox event account.deleted)
#   8. least privilege between the account and Key Center database roles
#   9. rehash on login when the Argon2id cost rises; unusual login rate
#  10. readiness: /readyz names the Key Center while it is down (/healthz stays 200); /metrics
#      only on the loopback metrics listener; session ids beyond int64; JSON without Content-Type
# Everything it starts is stopped and its database dropped on exit, whatever happens.
set -euo pipefail

# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"
stack_begin test_account MICA_REDIS_SOCKET MICA_REDIS_PASSWORD_FILE_ACCOUNT MICA_CERT_ACCOUNT \
	MICA_KEY_ACCOUNT MICA_CERT_KEYCENTER MICA_KEY_KEYCENTER MICA_CERT_ROGUE MICA_KEY_ROGUE
ACCT_BIN="$BUILD/bin/mica-account"
KC_BIN="$BUILD/bin/mica-keycenter"
ENVELOPE_OPEN="$BUILD/tests/peers/envelope_open"
SOLVER="tests/interop/altcha-solve.mjs"
BREACHED="tests/fixtures/breached"
for f in "$ACCT_BIN" "$KC_BIN"; do [[ -x "$f" ]] || fail "$f is missing (make all)"; done
[[ -f "$SOLVER" && -d tests/interop/node_modules/altcha-lib ]] ||
	fail "$SOLVER or its altcha-lib is missing (deploy/install-deps installs tests/interop)"
[[ -f "$BREACHED/E38AD" ]] || fail "the breached-password fixture $BREACHED is missing"
command -v node >/dev/null || fail "node is not installed"
command -v jq >/dev/null || fail "jq is not installed"

# The Redis keys of the account service outlive our database: failure and login counters of a
# previous run on the same stack would leak into this one.
redis_clear() {
	local k
	mica_redis_cli "$MICA_TEST_DIR" account --scan --pattern 'account:*' 2>/dev/null |
		while IFS= read -r k; do
			[[ -n "$k" ]] && mica_redis_cli "$MICA_TEST_DIR" account DEL "$k" >/dev/null
		done
}
stack_on_exit() { redis_clear || true; }
# code_limits_clear: forget how many codes were sent per address (5 an hour, not configurable),
# so one account can go through every flow of this test.
code_limits_clear() {
	local k
	mica_redis_cli "$MICA_TEST_DIR" account --scan --pattern 'account:codes:*' |
		while IFS= read -r k; do
			[[ -n "$k" ]] && mica_redis_cli "$MICA_TEST_DIR" account DEL "$k" >/dev/null
		done
}

# ---------------------------------------------------------------------------------------------
step="setup"
redis_clear
stack_account_setup
# shellcheck disable=SC2054 # a comma list is one value here
ACCT_ENV+=(
	MICA_ACCOUNT_PASSWORD_PEPPER_KEY_MAX_AGE_S=1
	MICA_ACCOUNT_RISK_CAPTCHA_ACCOUNT_FAILURES=3
	MICA_ACCOUNT_RISK_CAPTCHA_NETWORK_FAILURES=15
	MICA_ACCOUNT_RISK_FAILURE_WINDOW_S=900
	MICA_ACCOUNT_RISK_CAPTCHA_BASE_COST=1000
	MICA_ACCOUNT_RISK_CAPTCHA_MAX_COST=64000
	MICA_ACCOUNT_RISK_CAPTCHA_TTL_S=300
	MICA_ACCOUNT_RISK_STEPUP_NEW_DEVICE=true
	MICA_ACCOUNT_RISK_STEPUP_NEW_NETWORK=true
	MICA_ACCOUNT_RISK_LOGIN_RATE_MAX=30
	MICA_ACCOUNT_RISK_FREEZE_AFTER_STEPUP_FAILURES=2
	MICA_ACCOUNT_SESSION_WEB_IDLE_S=60
	MICA_ACCOUNT_SESSION_RECENT_AUTH_S=30
	MICA_ACCOUNT_CODES_TTL_S=120
	MICA_ACCOUNT_CODES_MAX_ATTEMPTS=3
	MICA_ACCOUNT_INTROSPECT_PRINCIPALS=keycenter,cloudsync
)
# A pepper key the service cannot take data keys from stops the start, naming the key.
if env "${ACCT_ENV[@]}" MICA_ACCOUNT_KEYCENTER_PEPPER_KEY=account-nope timeout 60 "$ACCT_BIN" \
	--config deploy/mica.conf.example >"$W/nope.log" 2>&1; then
	fail "mica-account started without a usable pepper key"
fi
grep -q 'Key Center key account-nope is not usable: ' "$W/nope.log" ||
	fail "start-up error: $(tail -n 3 "$W/nope.log")"
ok "mica-account refuses to start when the pepper key gives no data key"
# nist as the default policy without a breached-password list stops the start, naming the key.
if env "${ACCT_ENV[@]}" MICA_ACCOUNT_PASSWORD_POLICY=nist MICA_ACCOUNT_PASSWORD_BLOCKLIST_DIR= \
	timeout 60 "$ACCT_BIN" --config deploy/mica.conf.example >"$W/nist.log" 2>&1; then
	fail "mica-account started with the nist policy and no blocklist"
fi
grep -q 'nist needs account.password.blocklist_dir' "$W/nist.log" ||
	fail "start-up error: $(tail -n 3 "$W/nist.log")"
ok "mica-account refuses nist as its default policy without a breached-password list"
stack_start account "$AURL" "${ACCT_ENV[@]}" "$ACCT_BIN" --config deploy/mica.conf.example
ok "Key Center on $KURL with keys account-pii/-index/-pepper; mica-account on $AURL"

# req [-t TOKEN] [-c PRINCIPAL] [-i SOURCE_IP] METHOD PATH [JSON]: one request to mica-account
# (bearer token, client certificate of a principal or "rogue", source address on the loopback).
# Body in $W/body, headers in $W/headers, status in $status.
status=""
req() {
	local token="" who="" iface="" v
	while [[ "$1" == -? ]]; do
		case "$1" in
		-t) token="$2" ;;
		-c) who="$2" ;;
		-i) iface="$2" ;;
		esac
		shift 2
	done
	local args=(-sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -D "$W/headers"
		-w '%{http_code}' -X "$1")
	[[ -n "$token" ]] && args+=(-H "Authorization: Bearer $token")
	[[ -n "$iface" ]] && args+=(--interface "$iface")
	if [[ -n "$who" ]]; then
		v="$(mica_env_name "$who")"
		local cv="MICA_CERT_$v" kv="MICA_KEY_$v"
		args+=(--cert "${!cv}" --key "${!kv}")
	fi
	if (($# >= 3)); then args+=(-H 'Content-Type: application/json' --data-binary "$3"); fi
	status="$(curl "${args[@]}" "$AURL$2")" || fail "curl $1 $2 failed"
}

# expect STATUS CODE [req options] METHOD PATH [JSON]: req, then check the status and (unless
# CODE is -) that the error code is CODE.
expect() {
	local want="$1" code="$2" what
	shift 2
	req "$@"
	what="$(printf '%s ' "$@" | sed -E 's/(-t [A-Za-z0-9_-]{6})[A-Za-z0-9_-]+/\1…/' | cut -c1-110)"
	[[ "$status" == "$want" ]] || fail "$what: status $status, want $want: $(cat "$W/body")"
	if [[ "$code" != - ]]; then
		local got
		got="$(jget error.code)"
		[[ "$got" == "$code" ]] || fail "$what: error code '$got', want $code: $(cat "$W/body")"
	fi
	echo "ok - $step: ${what% } -> $want $code"
}

js() { jq -nc "$@"; }
# login_body LOGIN PASSWORD DEVICE [EXTRA_JQ]: a login request.
login_body() {
	js --arg l "$1" --arg p "$2" --arg d "$3" "{login: \$l, password: \$p,
		device: {id: \$d, name: (\$d + \" phone\")}} ${4:+ + $4}"
}
# code_for ADDR: the newest verification code sent to ADDR, read with `mica outbox list`.
code_for() {
	local c
	c="$("$MICA" outbox list --db "$ADMIN_CI" --to "$1" --limit 20 2>/dev/null |
		sed -n 's/.*verification code is \([0-9]\{6\}\)\..*/\1/p' | tail -n 1)"
	[[ "$c" =~ ^[0-9]{6}$ ]] || fail "no verification code for $1 in the outbox"
	printf '%s' "$c"
}
# bind_contact TOKEN phone|email VALUE: binds a security contact with the code sent to it (the
# session must have authenticated recently).
bind_contact() {
	local vid
	expect 200 - -t "$1" POST "/v1/security/$2" "$(js --arg k "$2" --arg v "$3" '{($k): $v}')"
	vid="$(jget verification_id)"
	expect 200 - -t "$1" POST "/v1/security/$2/verify" \
		"$(js --arg v "$vid" --arg c "$(code_for "$3")" '{verification_id: $v, code: $c}')"
}
# wrong_code CODE: a six-digit code that differs from CODE.
wrong_code() { printf '%s%s' "${1:0:5}" "$(((${1:5:1} + 1) % 10))"; }
# notes ADDR SUBJECT: how many messages with SUBJECT went to ADDR, once the notice worker has
# delivered every security notice recorded so far (they go out through the outbox, a moment
# after the change).
notes() {
	local deadline=$((SECONDS + 20))
	until [[ "$(sql "$ADMIN_CI" "SELECT (SELECT count(*) FROM outbox.pending WHERE consumer = 'account.notices')
		+ (SELECT count(*) FROM account.notice)")" == 0 ]]; do
		((SECONDS < deadline)) || fail "security notices still pending after 20 s"
		sleep 0.1
	done
	sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE lower(recipient) = lower('$1')
		AND subject = '$2'"
}
now() { date +%s; }
sha256() { printf '%s' "$1" | sha256sum | cut -c1-64; }

# register ADDR PASSWORD DEVICE [POLICY]: the whole registration; sets REG_TOKEN, REG_ACCOUNT,
# REG_SID and REG_UID.
register() {
	local kind=email
	[[ "$1" == +* ]] && kind=phone
	expect 200 - POST /v1/register/start "$(js --arg k "$kind" --arg v "$1" '{($k): $v}')"
	local vid
	vid="$(jget verification_id)"
	expect 201 - POST /v1/register/complete "$(js --arg v "$vid" --arg c "$(code_for "$1")" \
		--arg p "$2" --arg d "$3" --arg pol "${4:-}" '{verification_id: $v, code: $c,
		password: $p, device: {id: $d, name: "test"}} + (if $pol == "" then {} else
		{password_policy: $pol} end)')"
	REG_TOKEN="$(jget token)"
	REG_ACCOUNT="$(jget account_id)"
	REG_SID="$(jget session_id)"
	REG_UID="$(sql "$ADMIN_CI" "SELECT user_id FROM account.session WHERE id = $REG_SID")"
}

# solve CHALLENGE_FILE: the payload altcha-lib's solver builds (verified with altcha-lib too).
solve() {
	node "$SOLVER" --verify-key "$W/altcha.key" <"$1" 2>>"$W/solver.log" ||
		fail "altcha-solve failed: $(tail -n 3 "$W/solver.log")"
}

# stale SESSION_ID: make the session's last authentication an hour old: in PostgreSQL (as
# superuser), and drop the session's Redis cache entry, which carries auth_at and which the
# service reads first for app sessions.
stale() {
	local h
	h="$(sql "$ADMIN_CI" "UPDATE account.session SET auth_at = now() - interval '1 hour' WHERE id = $1
		RETURNING token_hash")"
	[[ "$h" =~ ^[0-9a-f]{64}$ ]] || fail "stale: no session $1"
	mica_redis_cli "$MICA_TEST_DIR" account DEL "session:$h" >/dev/null
}
# fresh SESSION_ID: the opposite, so a slow run (sanitizers) never outlives recent_auth_s (30 s)
# in the middle of a flow.
fresh() {
	local h
	h="$(sql "$ADMIN_CI" "UPDATE account.session SET auth_at = now() WHERE id = $1 RETURNING token_hash")"
	[[ "$h" =~ ^[0-9a-f]{64}$ ]] || fail "fresh: no session $1"
	mica_redis_cli "$MICA_TEST_DIR" account DEL "session:$h" >/dev/null
}

# kc_phc USER_ID: the user's Argon2id PHC string. The row holds "dk1.<wrapped data key>.<envelope>":
# the Key Center unwraps the data key for the account principal (with the key's own context only),
# then the envelope opens bound to the row (tests/peers/envelope_open).
PEPPER_KEY_CTX='{"service": "account", "table": "user", "column": "password", "purpose": "pepper"}'
pepper_aad() { echo "service=account;table=user;column=password;row=$1"; }
kc_pepper_key() { # WRAPPED [CONTEXT_JSON] -> base64 data key (HTTP status in $W/kc.code)
	curl -sS --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" \
		-H 'Content-Type: application/json' -o "$W/kc.json" -w '%{http_code}' \
		-d "$(js --arg c "$1" --argjson x "${2:-$PEPPER_KEY_CTX}" '{ciphertext: $c, context: $x}')" \
		"$KURL/v1/decrypt/account-pepper" >"$W/kc.code"
	[[ "$(<"$W/kc.code")" != 200 ]] || jget plaintext "$W/kc.json"
}
kc_pii() { # SEALED COLUMN ROW -> the plaintext (HTTP status in $W/kc.code)
	curl -sS --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" \
		-H 'Content-Type: application/json' -o "$W/kc.json" -w '%{http_code}' \
		-d "$(js --arg c "$1" --arg col "$2" --arg r "$3" '{ciphertext: $c, context: {service:
			"account", table: "user", column: $col, row: $r}}')" \
		"$KURL/v1/decrypt/account-pii" >"$W/kc.code"
	[[ "$(<"$W/kc.code")" != 200 ]] || jget plaintext "$W/kc.json" | base64 -d
}
kc_phc() {
	local enc
	enc="$(sql "$ADMIN_CI" "SELECT password_enc FROM account.user WHERE id = $1")"
	[[ "$enc" =~ ^dk1\.(kc:v[0-9]+:[A-Za-z0-9+/=]+)\.([A-Za-z0-9+/=]+)$ ]] ||
		fail "password_enc of user $1: $enc"
	printf '%s %s' "$(kc_pepper_key "${BASH_REMATCH[1]}")" "${BASH_REMATCH[2]}" |
		"$ENVELOPE_OPEN" "$(pepper_aad "$1")"
}

# ---------------------------------------------------------------------------------------------
step="1 registration"
PW_A='Alice-pass1'
expect 200 - POST /v1/register/start '{"email": "Alice@Example.com"}'
VID="$(jget verification_id)"
[[ "$VID" =~ ^[0-9a-f]{32}$ && "$(jget channel)" == email && "$(jget expires_in)" == 120 ]] ||
	fail "register/start: $(cat "$W/body")"
"$MICA" outbox list --db "$ADMIN_CI" --to alice@example.com >"$W/outbox.txt"
if ! { grep -q '^to: *alice@example.com$' "$W/outbox.txt" && grep -q '^channel: *email$' "$W/outbox.txt" &&
	grep -q '^subject: *Your mica verification code$' "$W/outbox.txt"; }; then
	fail "mica outbox list: $(cat "$W/outbox.txt")"
fi
CODE="$(code_for alice@example.com)"
complete() { # VID CODE PASSWORD [DEVICE]
	js --arg v "$1" --arg c "$2" --arg p "$3" --arg d "${4:-dev-alice}" \
		'{verification_id: $v, code: $c, password: $p, device: {id: $d, name: "Alice phone"}}'
}
expect 400 weak_password POST /v1/register/complete "$(complete "$VID" "$CODE" 'Ab1-x')"
[[ "$(jget error.message)" == too_short:* ]] || fail "message: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(complete "$VID" "$CODE" 'abcdefghijk')"
[[ "$(jget error.message)" == too_few_classes:* ]] || fail "message: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(complete "$VID" "$CODE" '123456789012')"
[[ "$(jget error.message)" == too_few_classes:* ]] || fail "message: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(complete "$VID" "$CODE" 'Abcdefgh-1234567x')"
[[ "$(jget error.message)" == too_long:* ]] || fail "17 characters: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(complete "$VID" "$CODE" 'pass word1')"
[[ "$(jget error.message)" == invalid_characters:* ]] || fail "space: $(jget error.message)"
expect 400 invalid_code POST /v1/register/complete "$(complete "$VID" "$(wrong_code "$CODE")" "$PW_A")"
expect 400 missing_field POST /v1/register/complete "{\"verification_id\": \"$VID\"}"
expect 400 bad_device POST /v1/register/complete \
	"$(js --arg v "$VID" --arg c "$CODE" --arg p "$PW_A" '{verification_id: $v, code: $c, password: $p}')"
expect 201 - POST /v1/register/complete "$(complete "$VID" "$CODE" "$PW_A")"
ALICE_NO="$(jget account_id)"
T_REG="$(jget token)"
[[ "$ALICE_NO" =~ ^[1-9][0-9]{9}$ && "$T_REG" =~ ^[A-Za-z0-9_-]{43}$ &&
	"$(jget session_id)" =~ ^[0-9]+$ && "$(jget expires_at)" =~ ^[0-9]+$ ]] ||
	fail "register/complete: $(cat "$W/body")"
ALICE_UID="$(sql "$ADMIN_CI" "SELECT user_id FROM account.session WHERE id = $(jget session_id)")"
expect 400 code_used POST /v1/register/complete "$(complete "$VID" "$CODE" "$PW_A")"
# Stored encrypted and indexed, never in clear.
row="$(sql "$ADMIN_CI" "SELECT email_enc || ' ' || email_idx || ' ' || account_no_enc || ' ' ||
	password_enc || ' ' || password_policy FROM account.user WHERE id = $ALICE_UID")"
[[ "$row" == kc:v1:*' 'kc:v1:*' 'kc:v1:*' 'dk1.kc:v1:*' miui' && "$row" != *alice* ]] ||
	fail "stored row: $row"
phc="$(kc_phc "$ALICE_UID")"
[[ "$phc" == '$argon2id$v=19$m=8192,t=2,p=1$'* ]] || fail "Alice's PHC: $phc"
# The pepper data key unwraps only with its own context, and the hash opens only for its row.
[[ "$row" =~ dk1\.(kc:v1:[^.]+)\.([^ ]+) ]] || fail "sealed hash: $row"
wrapped=${BASH_REMATCH[1]} env=${BASH_REMATCH[2]}
kc_pepper_key "$wrapped" '{"service": "account", "table": "user", "column": "password", "purpose": "other"}' >/dev/null
[[ "$(<"$W/kc.code")" == 400 ]] || fail "data key under another context: HTTP $(<"$W/kc.code")"
if printf '%s %s' "$(kc_pepper_key "$wrapped")" "$env" |
	"$ENVELOPE_OPEN" "$(pepper_aad $((ALICE_UID + 1)))" >/dev/null 2>&1; then
	fail "the sealed hash opened for another row"
fi
# The email opens only with its own context: its row and its column.
email_enc="$(sql "$ADMIN_CI" "SELECT email_enc FROM account.user WHERE id = $ALICE_UID")"
[[ "$(kc_pii "$email_enc" email "$ALICE_UID")" == alice@example.com ]] ||
	fail "email_enc does not open with its context: HTTP $(<"$W/kc.code")"
for ctx in "email $((ALICE_UID + 1))" "security_email $ALICE_UID" "account_no $ALICE_UID"; do
	kc_pii "$email_enc" "${ctx% *}" "${ctx#* }" >/dev/null
	[[ "$(<"$W/kc.code")" == 400 ]] || fail "email_enc under context $ctx: HTTP $(<"$W/kc.code")"
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
wrapped_of() { sql "$ADMIN_CI" "SELECT split_part(password_enc, '.', 2) FROM account.user WHERE id = $1"; }
[[ "$(wrapped_of "$P_UID")" == kc:v1:* && "$(wrapped_of "$P_UID")" != "$(wrapped_of "$ALICE_UID")" ]] ||
	fail "the pepper data key was not replaced after pepper_key_max_age_s"
[[ "$(kc_phc "$P_UID")" == '$argon2id$'* ]] || fail "the phone user's hash does not open"
ok "after pepper_key_max_age_s a new hash is sealed under a fresh data key"
[[ "$(sql "$ADMIN_CI" "SELECT channel FROM account.notification WHERE recipient = '+8613900000001'")" == sms ]] ||
	fail "the phone's code did not go out by SMS"
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
expect 200 - POST /v1/register/start '{"email": "nora@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for nora@example.com)"
nist() { js --arg v "$VID" --arg c "$CODE" --arg p "$1" '{verification_id: $v, code: $c,
	password: $p, password_policy: "nist", device: {id: "dev-nora", name: "Nora"}}'; }
expect 400 weak_password POST /v1/register/complete "$(nist password1)"
[[ "$(jget error.message)" == breached:* ]] || fail "message: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(nist qwerty123)"
[[ "$(jget error.message)" == breached:* ]] || fail "message: $(jget error.message)"
expect 400 weak_password POST /v1/register/complete "$(nist 'short')"
[[ "$(jget error.message)" == too_short:* ]] || fail "message: $(jget error.message)"
expect 201 - POST /v1/register/complete "$(nist 'correct horse battery staple, 2026')"
[[ "$(sql "$ADMIN_CI" "SELECT password_policy FROM account.user WHERE id = (SELECT user_id
	FROM account.session WHERE id = $(jget session_id))")" == nist ]] || fail "policy not stored"
expect 200 - POST /v1/login "$(login_body nora@example.com 'correct horse battery staple, 2026' dev-nora)"

# Code lifetime, attempts and sending rate.
expect 200 - POST /v1/register/start '{"email": "tom@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for tom@example.com)"
sql "$ADMIN_CI" "UPDATE account.verification SET expires_at = now() - interval '1 second' WHERE id = '$VID'"
expect 400 code_expired POST /v1/register/complete "$(complete "$VID" "$CODE" 'Tom-pass-1' dev-tom)"
expect 200 - POST /v1/register/start '{"email": "tom@example.com"}'
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
step="2 login"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
[[ "$(jget token)" =~ ^[A-Za-z0-9_-]{43}$ && "$(jget kind)" == app && "$(jget session_id)" =~ ^[0-9]+$ ]] ||
	fail "login: $(cat "$W/body")"
expect 200 - POST /v1/login "$(login_body "$ALICE_NO" "$PW_A" dev-alice)"
expect 200 - POST /v1/login "$(login_body ALICE@example.COM "$PW_A" dev-alice)"
# From a trusted device on a known network a login writes only its session: the device's
# last_seen moves when it is over a minute old, and not on every login.
ALICE_DEV="$(sql "$ADMIN_CI" "SELECT device_hash FROM account.session WHERE id = $(jget session_id)")"
last_seen() { # [SQL_EXPR]: the device's last_seen (epoch), after setting it to SQL_EXPR
	[[ -n "${1:-}" ]] && sql "$ADMIN_CI" "UPDATE account.device SET last_seen = $1
		WHERE user_id = $ALICE_UID AND device_hash = '$ALICE_DEV'" >/dev/null
	sql "$ADMIN_CI" "SELECT extract(epoch from last_seen)::bigint FROM account.device
		WHERE user_id = $ALICE_UID AND device_hash = '$ALICE_DEV'"
}
t=$(last_seen "now() - interval '30 seconds'")
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
[[ "$t" =~ ^[0-9]+$ && "$(last_seen)" == "$t" ]] || fail "a login moved a last_seen only 30 seconds old"
t=$(last_seen "now() - interval '2 minutes'")
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
(($(last_seen) >= t + 100)) || fail "a login left a 2-minute-old last_seen"
ok "a login from a trusted device refreshes its last_seen at most once a minute"
# Between requests the request threads' PostgreSQL connections wait idle on the shared stack.
metrics="$(curl -sS --cacert "$MICA_CA" "$AMURL/metrics")" || fail "GET /metrics failed"
grep -Eq '^mica_db_connections\{service="account",state="idle"\} [1-9][0-9]*$' <<<"$metrics" &&
	grep -q '^mica_db_connections{service="account",state="busy"} ' <<<"$metrics" ||
	fail "no idle database connections in /metrics: $(grep mica_db_ <<<"$metrics")"
ok "/metrics counts the idle and busy database connections"
# GET /v1/session runs on an event thread, where Redis and PostgreSQL answer would_block: a
# session the in-process cache does not hold yet (a fresh login's) is checked on the blocking
# pool instead, and the answer is the same.
moved() { curl -sS --cacert "$MICA_CA" "$AMURL/metrics" |
	sed -n 's/^mica_http_moved_to_pool_total{service="account"} //p'; }
m0="$(moved)"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
T_EV="$(jget token)"
expect 200 - -t "$T_EV" GET /v1/session
[[ "$(jget kind)" == app ]] || fail "GET /v1/session: $(cat "$W/body")"
m1="$(moved)"
((m1 >= m0 + 1)) || fail "a session-cache miss was not moved to the blocking pool ($m0 -> $m1)"
# The pool's run fills Redis, the next one the in-process cache (an invalidation racing the
# fill may cost one more round); from then on the event thread answers alone.
inline=0
for _ in 1 2 3 4 5; do
	expect 200 - -t "$T_EV" GET /v1/session
	m2="$(moved)"
	((m2 == m1)) && inline=1 && break
	m1="$m2"
done
((inline)) || fail "GET /v1/session never answered on the event thread"
ok "GET /v1/session answers a cache miss from the blocking pool and a hit on the event thread"
# A hash sealed the older way (encrypted by the Key Center itself, bound to the row) still logs in
# and is sealed again under a data key.
legacy="$(curl -sS --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" \
	-H 'Content-Type: application/json' -d "$(js --arg p "$(kc_phc "$ALICE_UID" | base64 -w0)" \
	--arg r "$ALICE_UID" '{plaintext: $p, context: {service: "account", table: "user",
	column: "password", row: $r}}')" "$KURL/v1/encrypt/account-pepper" | jq -r .ciphertext)"
[[ "$legacy" == kc:v1:* ]] || fail "legacy seal: $legacy"
sql "$ADMIN_CI" "UPDATE account.user SET password_enc = '$legacy' WHERE id = $ALICE_UID" >/dev/null
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
[[ "$(sql "$ADMIN_CI" "SELECT password_enc FROM account.user WHERE id = $ALICE_UID")" == dk1.kc:v1:* &&
	"$(kc_phc "$ALICE_UID")" == '$argon2id$'* ]] || fail "the legacy hash was not sealed again"
ok "a hash sealed by the Key Center's encrypt logs in and is sealed again under a data key"
# A damaged sealed hash is a clear server error, never a crash or a wrong answer.
sealed="$(sql "$ADMIN_CI" "SELECT password_enc FROM account.user WHERE id = $ALICE_UID")"
c=${sealed: -10:1}
[[ "$c" == A ]] && c=B || c=A
for bad in "${sealed:0:${#sealed}-10}$c${sealed: -9}" 'dk1.kc:v1:AAAA' 'dk1..' 'dk1.kc:v1:AAAA.%%%' 'x'; do
	sql "$ADMIN_CI" "UPDATE account.user SET password_enc = '$bad' WHERE id = $ALICE_UID" >/dev/null
	expect 500 internal_error POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
done
sql "$ADMIN_CI" "UPDATE account.user SET password_enc = '$sealed' WHERE id = $ALICE_UID" >/dev/null
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
ok "a tampered, truncated or malformed sealed hash answers 500 internal_error"
expect 400 missing_field POST /v1/login '{"login": "alice@example.com", "password": "x"}'
expect 400 bad_login POST /v1/login "$(login_body nobody "$PW_A" dev-alice)"
expect 400 bad_session_kind POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice '{session_kind: "tv"}')"
expect 400 bad_device POST /v1/login "{\"login\": \"alice@example.com\", \"password\": \"x\", \"device\": {\"id\": \"d\", \"name\": \"$(printf 'n%.0s' $(seq 101))\"}}"

# No enumeration: a wrong password and an unknown account answer exactly alike.
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com 'Wrong-pass1' dev-alice)"
cp "$W/body" "$W/wrong-password.json"
expect 401 invalid_credentials POST /v1/login "$(login_body nobody@example.com 'Wrong-pass1' dev-alice)"
cmp -s "$W/body" "$W/wrong-password.json" ||
	fail "bodies differ: $(cat "$W/wrong-password.json") vs $(cat "$W/body")"
ok "identical 401 bodies: $(cat "$W/body")"

# Three failures for the account, through two of its identifiers: the fourth attempt, through
# either, needs a proof of work, even with the right password.
expect 401 invalid_credentials POST /v1/login "$(login_body "$ALICE_NO" 'Wrong-pass1' dev-alice)"
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com 'Wrong-pass1' dev-alice)"
expect 428 captcha_required POST /v1/login "$(login_body "$ALICE_NO" "$PW_A" dev-alice)"
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
jget challenge >"$W/c1.json"
# Asking again is no failure: a second challenge at the same cost, kept for later.
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
jget challenge >"$W/c1b.json"
[[ "$(jq -c 'keys' "$W/c1.json")" == '["algorithm","challenge","maxnumber","salt","signature"]' &&
	"$(jq -r .algorithm "$W/c1.json")" == SHA-256 && "$(jq .maxnumber "$W/c1.json")" == 1000 &&
	"$(jq -r .challenge "$W/c1.json")" =~ ^[0-9a-f]{64}$ &&
	"$(jq -r .signature "$W/c1.json")" =~ ^[0-9a-f]{64}$ ]] || fail "challenge: $(cat "$W/c1.json")"
# Other identifiers are not affected.
expect 200 - POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone)"
P1="$(solve "$W/c1.json")"
P1B="$(solve "$W/c1b.json")"
# A challenge fetched for another login (here an identifier with no account, at its own
# threshold) cannot be spent on this one.
for _ in 1 2 3; do
	expect 401 invalid_credentials POST /v1/login "$(login_body thrower@example.com 'Wrong-pass1' dev-t)"
done
expect 428 captcha_required POST /v1/login "$(login_body thrower@example.com 'Wrong-pass1' dev-t)"
jget challenge >"$W/ct.json"
PT="$(solve "$W/ct.json")"
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice "{altcha: \"$PT\"}")"
[[ "$(jget error.message)" == *wrong_scope* ]] || fail "foreign challenge: $(jget error.message)"
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice \
	'{altcha: "eyJhbGdvcml0aG0iOiJTSEEtMjU2In0="}')"
[[ "$(jget error.message)" == *malformed* ]] || fail "message: $(jget error.message)"
# The solution passes the gate; the password is still checked (and this is one more failure).
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com 'Wrong-pass1' dev-alice \
	"{altcha: \"$P1\"}")"
# The challenge fetched before that failure is now too cheap, and the new one costs twice as much.
expect 428 captcha_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice "{altcha: \"$P1B\"}")"
[[ "$(jget error.message)" == *too_cheap* ]] || fail "cheap challenge: $(jget error.message)"
jget challenge >"$W/c2.json"
[[ "$(jq .maxnumber "$W/c2.json")" == 2000 ]] || fail "cost did not rise: $(cat "$W/c2.json")"
P2="$(solve "$W/c2.json")"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice "{altcha: \"$P2\"}")"
# A success clears the account's counter, for all its identifiers.
expect 200 - POST /v1/login "$(login_body "$ALICE_NO" "$PW_A" dev-alice)"
ok "ALTCHA challenges (maxnumber 1000, then 2000) solved by altcha-lib; another login's challenge and a too cheap one refused"

# Per network: unknown identifiers, each failing once, from 127.3.0.1 (network 127.3.0.0/24).
for i in $(seq 1 15); do
	expect 401 invalid_credentials -i 127.3.0.1 POST /v1/login "$(login_body "ghost$i@example.com" 'Wrong-pass1' dev-g)"
done
expect 428 captcha_required -i 127.3.0.1 POST /v1/login "$(login_body ghost16@example.com 'Wrong-pass1' dev-g)"
[[ "$(jget challenge.maxnumber)" == 1000 ]] || fail "network challenge: $(cat "$W/body")"
# The network's captcha holds for a right password too. A solution passes once (here into a
# step-up for the new network, which neither counts nor clears a network failure); replayed at
# the same cost it is refused.
expect 428 captcha_required -i 127.3.0.1 POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone)"
jget challenge >"$W/cn.json"
PN="$(solve "$W/cn.json")"
expect 403 step_up_required -i 127.3.0.1 POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone "{altcha: \"$PN\"}")"
expect 428 captcha_required -i 127.3.0.1 POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone "{altcha: \"$PN\"}")"
[[ "$(jget error.message)" == *already_used* ]] || fail "replay message: $(jget error.message)"
expect 401 invalid_credentials -i 127.4.0.1 POST /v1/login "$(login_body ghost16@example.com 'Wrong-pass1' dev-g)"
ok "15 failures from one /24 network ask that network for a captcha, not others; replay refused"

# ---------------------------------------------------------------------------------------------
step="3 step-up"
N_SIGNIN="$(notes alice@example.com 'New sign-in to your mica account')"
expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-laptop)"
SU="$(jget stepup_id)"
[[ "$SU" =~ ^[0-9a-f]{32}$ && "$(jget methods)" == '["email"]' && "$(jget reasons)" == '["new_device"]' ]] ||
	fail "step-up: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT kind || ' ' || status FROM account.stepup WHERE id = '$SU'")" == "login pending" ]] ||
	fail "step-up row"
expect 409 no_code_sent POST "/v1/stepup/$SU/verify" '{"code": "123456"}'
expect 409 approval_pending POST "/v1/stepup/$SU/verify" '{}'
expect 400 bad_method POST "/v1/stepup/$SU/send" '{"method": "pigeon"}'
expect 400 method_unavailable POST "/v1/stepup/$SU/send" '{"method": "sms"}'
expect 404 unknown_stepup POST /v1/stepup/0123456789abcdef0123456789abcdef/send '{"method": "email"}'
expect 404 unknown_stepup POST /v1/stepup/nope/send '{"method": "email"}'
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
[[ "$(jget sent)" == true && "$(jget method)" == email ]] || fail "send: $(cat "$W/body")"
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for alice@example.com)\"}"
[[ "$(jget token)" =~ ^[A-Za-z0-9_-]{43}$ ]] || fail "verify: $(cat "$W/body")"
T_LAPTOP="$(jget token)"
expect 409 stepup_closed POST "/v1/stepup/$SU/verify" '{"code": "123456"}'
[[ "$(notes alice@example.com 'New sign-in to your mica account')" == $((N_SIGNIN + 1)) ]] ||
	fail "no new sign-in notification"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-laptop)"
ok "new device verified by email code, told by email, trusted from now on"

# A network the account never used (127.1.0.0/24): step-up, which then expires.
expect 403 step_up_required -i 127.1.0.1 POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
[[ "$(jget reasons)" == '["new_network"]' ]] || fail "reasons: $(cat "$W/body")"
SU="$(jget stepup_id)"
sql "$ADMIN_CI" "UPDATE account.stepup SET expires_at = now() - interval '1 second' WHERE id = '$SU'"
expect 410 stepup_expired POST "/v1/stepup/$SU/send" '{"method": "email"}'

# The right password, then failed step-up codes: the severe signal.
N_FROZEN="$(notes alice@example.com 'Your mica account was frozen')"
expect 200 - -t "$T_LAPTOP" GET /v1/sessions
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice '{session_kind: "web"}')"
T_WEB="$(jget token)"
expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-thief)"
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
	fail "account not frozen"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.session WHERE user_id = $ALICE_UID AND revoked_at IS NULL")" == 0 ]] ||
	fail "sessions survived the freeze"
expect 401 invalid_token -t "$T_LAPTOP" GET /v1/sessions
expect 401 invalid_token -t "$T_REG" GET /v1/sessions
expect 401 invalid_token -t "$T_WEB" GET /v1/sessions
[[ "$(notes alice@example.com 'Your mica account was frozen')" == $((N_FROZEN + 1)) ]] ||
	fail "no freeze notification"
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
expect 200 - POST /v1/password/reset/start '{"login": "alice@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for alice@example.com)"
expect 400 weak_password POST /v1/password/reset/complete "$(js --arg v "$VID" --arg c "$CODE" \
	'{verification_id: $v, code: $c, new_password: "abc"}')"
expect 200 - POST /v1/password/reset/start '{"login": "alice@example.com"}'
VID="$(jget verification_id)"
CODE="$(code_for alice@example.com)"
PW_A2='Alice-new-2'
expect 400 missing_field POST /v1/password/reset/complete "{\"verification_id\": \"$VID\"}"
expect 200 - POST /v1/password/reset/complete "$(js --arg v "$VID" --arg c "$CODE" --arg p "$PW_A2" \
	'{verification_id: $v, code: $c, new_password: $p}')"
[[ "$(jget reset)" == true ]] || fail "reset: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT status || ' ' || (frozen_at IS NULL) || ' ' || (password_reset_at IS NOT NULL)
	FROM account.user WHERE id = $ALICE_UID")" == "active true true" ]] || fail "not unfrozen"
[[ "$(notes alice@example.com 'Your mica password was reset')" -ge 1 ]] || fail "no reset notification"
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com "$PW_A" dev-alice)"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
# Reset never tells whether an account exists.
expect 200 - POST /v1/password/reset/start '{"login": "nobody@example.com"}'
[[ "$(jget verification_id)" =~ ^[0-9a-f]{32}$ && "$(jget channel)" == email ]] ||
	fail "reset/start for nobody: $(cat "$W/body")"
expect 400 invalid_code POST /v1/password/reset/complete "$(js --arg v "$(jget verification_id)" \
	'{verification_id: $v, code: "123456", new_password: "Whatever-1"}')"
expect 400 bad_login POST /v1/password/reset/start '{"login": "1234567890"}'
# A reset revokes every session of the account (here one that was never frozen).
expect 200 - POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone)"
T_P="$(jget token)"
expect 200 - -t "$T_P" GET /v1/sessions
code_limits_clear
expect 200 - POST /v1/password/reset/start '{"login": "+8613900000001"}'
VID="$(jget verification_id)"
PW_P='Phone-new-2'
expect 200 - POST /v1/password/reset/complete "$(js --arg v "$VID" --arg c "$(code_for +8613900000001)" \
	--arg p "$PW_P" '{verification_id: $v, code: $c, new_password: $p}')"
expect 401 invalid_token -t "$T_P" GET /v1/sessions
ok "reset by code unfroze the account and revoked every session; old password refused, new one works"

# ---------------------------------------------------------------------------------------------
step="4 sessions"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T1="$(jget token)" S1="$(jget session_id)"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T2="$(jget token)" S2="$(jget session_id)"
t0="$(now)"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice '{session_kind: "web"}')"
T3="$(jget token)" S3="$(jget session_id)"
exp="$(jget expires_at)"
if ! [[ "$(jget kind)" == web ]] || ((exp < t0 + 59 || exp > $(now) + 61)); then
	fail "web session expires_at $exp, now $t0: $(cat "$W/body")"
fi
expect 200 - -t "$T1" GET /v1/sessions
python3 - "$W/body" "$S1" "$S2" "$S3" <<'PY' || fail "session list: $(cat "$W/body")"
import json, sys
ss = json.load(open(sys.argv[1]))["sessions"]
ids = {s["id"]: s for s in ss}
s1, s2, s3 = (int(x) for x in sys.argv[2:5])
assert {s1, s2, s3} <= set(ids), ids
assert ids[s1]["current"] is True and not ids[s2]["current"] and ids[s3]["kind"] == "web"
assert [s["id"] for s in ss if s["current"]] == [s1]
assert set(ss[0]) == {"id", "kind", "created_at", "last_seen_at", "device_name", "expires_at", "current"}
PY
ok "list shows the current session and the web session"
# The Redis cache other services read.
H1="$(sha256 "$T1")"
cached="$(mica_redis_cli "$MICA_TEST_DIR" account GET "session:$H1")"
[[ "$(jq -r .user_id <<<"$cached")" == "$ALICE_UID" && "$(jq -r .session_id <<<"$cached")" == "$S1" ]] ||
	fail "cache entry: $cached"
expect 200 - -t "$T2" GET /v1/sessions
expect 200 - -t "$T1" DELETE "/v1/sessions/$S2"
[[ "$(jget revoked)" == true ]] || fail "revoke: $(cat "$W/body")"
expect 401 invalid_token -t "$T2" GET /v1/sessions
grep -qi '^WWW-Authenticate: Bearer' "$W/headers" || fail "no WWW-Authenticate: $(cat "$W/headers")"
[[ "$(mica_redis_cli "$MICA_TEST_DIR" account GET "session:$(sha256 "$T2")")" == '{"revoked":true}' ]] ||
	fail "no tombstone in the cache"
expect 404 unknown_session -t "$T1" DELETE "/v1/sessions/$S2"
expect 404 unknown_session -t "$T1" DELETE /v1/sessions/999999
expect 400 bad_session_id -t "$T1" DELETE /v1/sessions/abc
# strtoll clamped an id beyond int64 to the largest one and answered 404 as for a real lookup.
expect 400 session_id_out_of_range -t "$T1" DELETE /v1/sessions/9223372036854775808
expect 400 session_id_out_of_range -t "$T1" DELETE /v1/sessions/0
expect 404 unknown_session -t "$T1" DELETE /v1/sessions/9223372036854775807
expect 401 invalid_token GET /v1/sessions
expect 401 invalid_token -t short GET /v1/sessions
ok "a revoked session fails on the very next request (PostgreSQL and a Redis tombstone)"

# A second instance on the same database and Redis. Its third check of T7 is answered from its
# in-process session copy (the second put it there, and PostgreSQL was touched by the first), so
# only the Redis client-tracking invalidation, pushed before the revoking instance even had its
# tombstone acknowledged, can make the very next check there fail.
mica_free_port APORT2
AURL_A="$AURL" AURL_B="https://localhost:$APORT2"
# It also seals at most two hashes per pepper data key (and not by age), and has no
# breached-password list; both are checked below.
stack_start account2 "$AURL_B" "${ACCT_ENV[@]}" "MICA_ACCOUNT_HTTP_PORT=$APORT2" MICA_ACCOUNT_HTTP_METRICS_PORT=0 \
	MICA_ACCOUNT_PASSWORD_PEPPER_KEY_MAX_SEALS=2 MICA_ACCOUNT_PASSWORD_PEPPER_KEY_MAX_AGE_S=3600 \
	MICA_ACCOUNT_PASSWORD_BLOCKLIST_DIR= "$ACCT_BIN" --config deploy/mica.conf.example
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T7="$(jget token)" S7="$(jget session_id)"
AURL="$AURL_B"
for _ in 1 2 3; do expect 200 - -t "$T7" GET /v1/session; done
AURL="$AURL_A"
expect 200 - -t "$T1" DELETE "/v1/sessions/$S7"
AURL="$AURL_B"
expect 401 invalid_token -t "$T7" GET /v1/session
ok "a session revoked through one instance fails on the very next request to another"
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
	fail "pepper data keys of three seals with pepper_key_max_seals=2: $k1 / $k2 / $k3"
for u in "${seal_uids[@]}"; do
	[[ "$(kc_phc "$u")" == '$argon2id$'* ]] || fail "hash of user $u does not open"
done
# Without the list, nist cannot run: a 503 naming the policy, not a 400 blaming the password;
# the code is not used up, and miui still works.
expect 200 - POST /v1/register/start '{"email": "nolist@example.com"}'
VID="$(jget verification_id)" CODE="$(code_for nolist@example.com)"
expect 503 policy_unavailable POST /v1/register/complete "$(js --arg v "$VID" --arg c "$CODE" \
	'{verification_id: $v, code: $c, password: "correct horse battery staple, 2026",
	password_policy: "nist", device: {id: "dev-nolist", name: "test"}}')"
expect 201 - POST /v1/register/complete "$(complete "$VID" "$CODE" 'Nolist-pass1' dev-nolist)"
AURL="$AURL_A"
stack_stop account2
ok "after pepper_key_max_seals hashes a fresh pepper data key is taken; nist without a list is 503"

# Introspection: mTLS service principals only.
expect 200 - -c keycenter POST /v1/introspect "{\"token\": \"$T1\"}"
[[ "$(jget active)" == true && "$(jget sub)" == "$ALICE_UID" && "$(jget sid)" == "$S1" &&
	"$(jget kind)" == app && "$(jget token_type)" == Bearer && "$(jget exp)" =~ ^[0-9]+$ &&
	"$(jget auth_time)" =~ ^[0-9]+$ && "$(jget device_id)" =~ ^[0-9a-f]{64}$ ]] ||
	fail "introspect: $(cat "$W/body")"
expect 200 - -c keycenter POST /v1/introspect "{\"token\": \"$T2\"}"
[[ "$(cat "$W/body")" == '{"active":false}' ]] || fail "revoked token: $(cat "$W/body")"
expect 200 - -c keycenter POST /v1/introspect '{"token": "not-a-token"}'
[[ "$(jget active)" == false ]] || fail "garbage token: $(cat "$W/body")"
expect 400 missing_field -c keycenter POST /v1/introspect '{}'
expect 401 client_certificate_required POST /v1/introspect "{\"token\": \"$T1\"}"
expect 403 access_denied -c admin POST /v1/introspect "{\"token\": \"$T1\"}"
expect 403 client_certificate_invalid -c rogue POST /v1/introspect "{\"token\": \"$T1\"}"
expect 403 access_denied -c account POST /v1/introspect "{\"token\": \"$T1\"}"

# Body members of the wrong type or too long are refused, naming the member.
expect 400 bad_field -c keycenter POST /v1/introspect '{"token": 5}'
expect 400 bad_field -c keycenter POST /v1/introspect "{\"token\": \"$(printf 'a%.0s' $(seq 129))\"}"
expect 400 missing_field -c keycenter POST /v1/introspect '{"token": ""}'
# A NUL inside a string never reaches a handler: the JSON is refused whole.
expect 400 malformed_json POST /v1/password/reset/complete '{"verification_id": "x", "code": "12\u00003456", "new_password": "Whatever-1"}'

# Web sessions idle out: each use pushes expires_at to now + web_idle_s; unused, they end.
sql "$ADMIN_CI" "UPDATE account.session SET expires_at = now() + interval '5 seconds' WHERE id = $S3"
expect 200 - -t "$T3" GET /v1/sessions
[[ "$(sql "$ADMIN_CI" "SELECT expires_at > now() + interval '55 seconds' AND expires_at <= now() + interval '61 seconds'
	FROM account.session WHERE id = $S3")" == t ]] || fail "web session not extended"
# A use seen by another service (through introspection) extends it the same way.
sql "$ADMIN_CI" "UPDATE account.session SET expires_at = now() + interval '5 seconds' WHERE id = $S3"
expect 200 - -c keycenter POST /v1/introspect "{\"token\": \"$T3\"}"
[[ "$(jget active)" == true && "$(sql "$ADMIN_CI" "SELECT expires_at > now() + interval '55 seconds'
	FROM account.session WHERE id = $S3")" == t ]] || fail "web session not extended by introspection"
sql "$ADMIN_CI" "UPDATE account.session SET expires_at = now() - interval '1 second' WHERE id = $S3"
expect 401 invalid_token -t "$T3" GET /v1/sessions
expect 200 - -c keycenter POST /v1/introspect "{\"token\": \"$T3\"}"
[[ "$(jget active)" == false ]] || fail "idle web session still active: $(cat "$W/body")"
ok "web session extended on use (its own or through introspection), ended when idle"

# Revoke all but the current one; then log out.
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T4="$(jget token)"
# A mistyped keep_current is refused, not read as false (which would end this session too).
expect 400 bad_field -t "$T1" POST /v1/sessions/revoke-all '{"keep_current": "true"}'
expect 200 - -t "$T4" GET /v1/sessions
expect 200 - -t "$T1" POST /v1/sessions/revoke-all '{"keep_current": true}'
expect 401 invalid_token -t "$T4" GET /v1/sessions
expect 401 invalid_token -t "$T_LAPTOP" GET /v1/sessions
expect 200 - -t "$T1" GET /v1/sessions
[[ "$(jget sessions.#)" == 1 ]] || fail "after revoke-all: $(cat "$W/body")"
expect 200 - -t "$T1" POST /v1/logout
expect 401 invalid_token -t "$T1" GET /v1/sessions
expect 401 invalid_token -t "$T1" POST /v1/logout
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T5="$(jget token)"
expect 200 - -t "$T5" POST /v1/sessions/revoke-all
expect 401 invalid_token -t "$T5" GET /v1/sessions

# ---------------------------------------------------------------------------------------------
step="5 sensitive operations"
code_limits_clear
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T5="$(jget token)" S5="$(jget session_id)"
expect 200 - -t "$T5" GET /v1/me
[[ "$(jget account_id)" == "$ALICE_NO" && "$(jget email)" == alice@example.com && "$(jget phone)" == null &&
	"$(jget status)" == active && "$(jget password_policy)" == miui &&
	"$(jget cross_device_verification)" == false ]] || fail "me: $(cat "$W/body")"
expect 200 - -t "$T5" GET /v1/session
[[ "$(jget session_id)" == "$S5" && "$(jget kind)" == app && "$(jget recent_auth)" == true ]] ||
	fail "current session: $(cat "$W/body")"
stale "$S5"
expect 200 - -t "$T5" GET /v1/session
[[ "$(jget recent_auth)" == false ]] || fail "stale session: $(cat "$W/body")"
expect 403 step_up_required -t "$T5" GET /v1/me
SU="$(jget stepup_id)"
[[ "$(jget reasons)" == '["stale_authentication"]' && "$(jget methods)" == '["email"]' ]] ||
	fail "sensitive step-up: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT kind || ' ' || session_id FROM account.stepup WHERE id = '$SU'")" == "sensitive $S5" ]] ||
	fail "step-up row"
! grep -q alice "$W/body" || fail "private data in the 403"
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
	fail "a sensitive route changed something without a step-up"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for alice@example.com)\"}"
[[ "$(cat "$W/body")" == '{"verified":true}' ]] || fail "sensitive verify: $(cat "$W/body")"
expect 200 - -t "$T5" GET /v1/me
[[ "$(jget email)" == alice@example.com ]] || fail "me after step-up: $(cat "$W/body")"
expect 200 - -t "$T5" GET /v1/session
[[ "$(jget recent_auth)" == true ]] || fail "after step-up: $(cat "$W/body")"
ok "stale authentication needs a step-up; afterwards /v1/me answers"

# Password change: current password, policy, burned passwords; other sessions end.
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
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
[[ "$(jget changed)" == true ]] || fail "change: $(cat "$W/body")"
expect 401 invalid_token -t "$T6" GET /v1/sessions
expect 200 - -t "$T5" GET /v1/sessions
[[ "$(notes alice@example.com 'Your mica password was changed')" == $((N_CHANGED + 1)) ]] ||
	fail "no password-change notification"
expect 401 invalid_credentials POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A3" dev-alice)"

# A security phone, verified by SMS code; it becomes a step-up method; then unbound.
fresh "$S5"
expect 400 bad_phone -t "$T5" POST /v1/security/phone '{"phone": "12345"}'
expect 200 - -t "$T5" POST /v1/security/phone '{"phone": "+8613700000002"}'
VID="$(jget verification_id)"
CODE="$(code_for +8613700000002)"
expect 400 invalid_code -t "$T5" POST /v1/security/phone/verify \
	"{\"verification_id\": \"$VID\", \"code\": \"$(wrong_code "$CODE")\"}"
expect 400 invalid_code -t "$T5" POST /v1/security/email/verify "{\"verification_id\": \"$VID\", \"code\": \"$CODE\"}"
expect 200 - -t "$T5" POST /v1/security/phone/verify "{\"verification_id\": \"$VID\", \"code\": \"$CODE\"}"
[[ "$(jget bound)" == true ]] || fail "bind: $(cat "$W/body")"
expect 200 - -t "$T5" GET /v1/me
[[ "$(jget security_phone)" == +8613700000002 ]] || fail "me: $(cat "$W/body")"
expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW_A3" dev-tablet)"
[[ "$(jget methods)" == '["sms", "email"]' ]] || fail "methods with a security phone: $(cat "$W/body")"
SU="$(jget stepup_id)"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "sms"}'
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for +8613700000002)\"}"
[[ "$(notes +8613700000002 'New sign-in to your mica account')" == 1 ]] || fail "no SMS sign-in notice"
expect 200 - -t "$T5" DELETE /v1/security/phone
[[ "$(jget unbound)" == true ]] || fail "unbind: $(cat "$W/body")"
expect 200 - -t "$T5" GET /v1/me
[[ "$(jget security_phone)" == null ]] || fail "me after unbind: $(cat "$W/body")"
[[ "$(notes +8613700000002 'Security contact removed')" == 1 ]] || fail "no unbind notice"
ok "security phone bound by SMS code, used for step-up, unbound"

# Security questions (answers hashed and sealed, questions sealed) and cross-device verification.
fresh "$S5"
expect 400 bad_questions -t "$T5" PUT /v1/security/questions '{"questions": []}'
expect 400 bad_questions -t "$T5" PUT /v1/security/questions '{"questions": [{"question": "Pet?"}]}'
# Limits count the normalised answer and characters, not bytes.
expect 400 bad_questions -t "$T5" PUT /v1/security/questions '{"questions": [{"question": "Pet?", "answer": "   "}]}'
expect 400 bad_questions -t "$T5" PUT /v1/security/questions '{"questions": [{"question": "Pet?", "answer": " x  "}]}'
expect 400 bad_questions -t "$T5" PUT /v1/security/questions '{"questions": [{"question": "  ", "answer": "Rex"}]}'
[[ "$(jget error.message)" == "item 1 needs"* ]] || fail "bad_questions message: $(cat "$W/body")"
expect 400 bad_questions -t "$T5" PUT /v1/security/questions \
	"{\"questions\": [{\"question\": \"Pet?\", \"answer\": \"$(printf '答%.0s' {1..129})\"}]}"
expect 200 - -t "$T5" PUT /v1/security/questions \
	"{\"questions\": [{\"question\": \"$(printf '问%.0s' {1..200})\", \"answer\": \"$(printf '答%.0s' {1..128})\"}]}"
# Spaces do not count against the limit: 600 of them collapse into one.
expect 200 - -t "$T5" PUT /v1/security/questions \
	"{\"questions\": [{\"question\": \"Pet?\", \"answer\": \"a$(printf ' %.0s' {1..600})b\"}]}"
expect 200 - -t "$T5" PUT /v1/security/questions \
	'{"questions": [{"question": "First pet?", "answer": "Rex  the Dog"}, {"question": "City?", "answer": "Lyon"}]}'
[[ "$(jget questions)" == 2 ]] || fail "questions: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.security_question WHERE user_id = $ALICE_UID
	AND answer_hash LIKE 'dk1.kc:v1:%' AND question LIKE 'dk1.kc:v1:%'
	AND answer_hash NOT LIKE '%argon2%' AND question NOT LIKE '%pet%'")" == 2 ]] ||
	fail "answers not hashed and sealed, questions not sealed (test_account_limits.sh opens them)"
expect 400 bad_field -t "$T5" PUT /v1/security/cross-device '{"enabled": "yes"}'
expect 200 - -t "$T5" PUT /v1/security/cross-device '{"enabled": true}'
expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW_A3" dev-watch)"
[[ "$(jget methods)" == '["email", "trusted_device"]' ]] || fail "methods: $(cat "$W/body")"
SU="$(jget stepup_id)"
expect 409 approval_pending POST "/v1/stepup/$SU/verify" '{}'
expect 200 - -t "$T5" POST "/v1/stepup/$SU/approve"
[[ "$(jget approved)" == true ]] || fail "approve: $(cat "$W/body")"
expect 200 - POST "/v1/stepup/$SU/verify" '{}'
T_WATCH="$(jget token)"
expect 200 - -t "$T_WATCH" GET /v1/sessions
ok "a trusted device approved the new device's login"

# The window also guards the other sensitive operations.
stale "$S5"
expect 403 step_up_required -t "$T5" POST /v1/password/change "$(pwchange "$PW_A3" 'Alice-new-4')"
expect 403 step_up_required -t "$T5" POST /v1/security/email '{"email": "sec@example.com"}'
expect 403 step_up_required -t "$T5" PUT /v1/security/cross-device '{"enabled": false}'
expect 403 step_up_required -t "$T5" DELETE /v1/account

# ---------------------------------------------------------------------------------------------
step="6 recycled number"
register +8613800000001 'Arecycle-1' dev-a
A_TOKEN="$REG_TOKEN" A_UID="$REG_UID" A_NO="$REG_ACCOUNT"
fresh "$REG_SID"
bind_contact "$A_TOKEN" email a-sec@example.com
# Not recycled: the number stays with A.
expect 200 - POST /v1/register/start '{"phone": "+8613800000001"}'
expect 409 identifier_in_use POST /v1/register/complete \
	"$(complete "$(jget verification_id)" "$(code_for +8613800000001)" 'Brecycle-2' dev-b)"
expect 200 - POST /v1/login "$(login_body +8613800000001 'Arecycle-1' dev-a)"
# The carrier recycled it today: recorded with `mica recycled add` in the local stand-in of the
# number-recycling check, under the number's blind index (the Key Center computes it).
recycled_add() { # PHONE DATE
	"$MICA" recycled add --db "$ADMIN_CI" --phone "$1" --on "$2" --kc-url "$KURL" --ca "$MICA_CA" \
		--cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" >"$W/recycled.out" 2>&1
}
day="$(sql "$ADMIN_CI" "SELECT current_date")"
rc=0
recycled_add 8613800000001 "$day" || rc=$?
if [[ "$rc" != 64 ]] || ! grep -qx 'mica recycled add: --phone is + and 7 to 15 digits' "$W/recycled.out"; then
	fail "mica recycled add with a number without +: exit $rc: $(head -n 1 "$W/recycled.out")"
fi
rc=0
"$MICA" recycled remove >/dev/null 2>"$W/recycled.err" || rc=$?
[[ "$rc" == 64 && "$(head -n 1 "$W/recycled.err")" == "mica recycled: expected add or import" ]] ||
	fail "mica recycled remove: exit $rc: $(head -n 1 "$W/recycled.err")"
recycled_add +8613800000001 "$day" ||
	fail "mica recycled add: $(cat "$W/recycled.out")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.recycled_number r JOIN account.user u
	ON u.phone_idx = r.phone_idx WHERE u.id = $A_UID")" == 1 ]] || fail "the recorded index is not A's number's"
# A carrier's list: checked whole before anything is written, then written in one transaction.
recycled_import() { # FILE
	"$MICA" recycled import --db "$ADMIN_CI" --file "$1" --kc-url "$KURL" --ca "$MICA_CA" \
		--cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" >"$W/recycled.out" 2>&1
}
recycled_rows() { sql "$ADMIN_CI" "SELECT count(*) FROM account.recycled_number"; }
rows=$(recycled_rows)
printf '+8613800000991,%s\n# from the carrier\n+8613800000992 ,2026-2-3\n' "$day" >"$W/recycled.bad"
rc=0
recycled_import "$W/recycled.bad" || rc=$?
[[ "$rc" == 65 && "$(head -n 1 "$W/recycled.out")" == "mica recycled import: $W/recycled.bad:3: the day is not YYYY-MM-DD" ]] ||
	fail "import of a bad list: exit $rc: $(head -n 1 "$W/recycled.out")"
[[ "$(recycled_rows)" == "$rows" ]] || fail "a failed import wrote rows"
printf '+8613800000991,%s\n+8613800000992,2026-13-01\n' "$day" >"$W/recycled.bad"
rc=0
recycled_import "$W/recycled.bad" || rc=$?
[[ "$rc" == 1 && "$(recycled_rows)" == "$rows" ]] ||
	fail "import with a day PostgreSQL refuses: exit $rc, rows $(recycled_rows) (was $rows): $(cat "$W/recycled.out")"
printf '# carrier list\r\n\r\n  +8613800000991 , %s\r\n+8613800000001,%s\n' "$day" "$day" >"$W/recycled.list"
recycled_import - <"$W/recycled.list" || fail "import from stdin: $(cat "$W/recycled.out")"
[[ "$(cat "$W/recycled.out")" == "numbers: 2 read, 1 recorded, 1 already recorded" ]] ||
	fail "import: $(cat "$W/recycled.out")"
[[ "$(recycled_rows)" == "$((rows + 1))" ]] || fail "import wrote $(recycled_rows) rows (was $rows)"
ok "mica recycled import: a bad line (exit 65) or a day PostgreSQL refuses writes nothing; CRLF, comments, stdin"
register +8613800000001 'Brecycle-2' dev-b
B_UID="$REG_UID"
[[ "$(sql "$ADMIN_CI" "SELECT (phone_idx IS NULL) || ' ' || (phone_enc IS NULL) FROM account.user WHERE id = $A_UID")" == "true true" ]] ||
	fail "A kept the number"
expect 401 invalid_credentials POST /v1/login "$(login_body +8613800000001 'Arecycle-1' dev-a)"
expect 200 - POST /v1/login "$(login_body +8613800000001 'Brecycle-2' dev-b)"
[[ "$(sql "$ADMIN_CI" "SELECT user_id FROM account.session WHERE id = $(jget session_id)")" == "$B_UID" ]] ||
	fail "the phone logs into the wrong account"
expect 200 - POST /v1/login "$(login_body "$A_NO" 'Arecycle-1' dev-a)"
[[ "$(notes a-sec@example.com 'Your phone number was removed')" == 1 ]] ||
	fail "A was not told on its security email"
# A reset through the number reaches B, never A. (With the recycling dated the very day B bound
# the number, the day-granular check cannot tell the order and refuses B too; a carrier's date
# before B's binding is the realistic case.)
sql "$ADMIN_CI" "UPDATE account.recycled_number SET recycled_on = current_date - 1"
expect 200 - POST /v1/password/reset/start '{"login": "+8613800000001"}'
[[ "$(sql "$ADMIN_CI" "SELECT user_id FROM account.verification WHERE id = '$(jget verification_id)'")" == "$B_UID" ]] ||
	fail "reset by the recycled number"
ok "recycled number moved to B; A cannot use it and was told by email"

# A security phone the carrier recycled: when its new owner registers it, the old account
# loses it (step-up codes and notices must not reach the new owner) and is told by email.
code_limits_clear
register c-recycle@example.com 'Crecycle-1' dev-c
C_TOKEN="$REG_TOKEN" C_UID="$REG_UID"
fresh "$REG_SID"
bind_contact "$C_TOKEN" phone +8613800000002
[[ "$(sql "$ADMIN_CI" "SELECT security_phone_bound_at IS NOT NULL FROM account.user WHERE id = $C_UID")" == t ]] ||
	fail "no security_phone_bound_at"
sql "$ADMIN_CI" "INSERT INTO account.recycled_number (phone_idx, recycled_on)
	SELECT security_phone_idx, current_date FROM account.user WHERE id = $C_UID" >/dev/null
register +8613800000002 'Drecycle-2' dev-d
[[ "$(sql "$ADMIN_CI" "SELECT (security_phone_idx IS NULL) || ' ' || (security_phone_enc IS NULL)
	FROM account.user WHERE id = $C_UID")" == "true true" ]] || fail "C kept the recycled security phone"
[[ "$(notes c-recycle@example.com 'Your security phone number was removed')" == 1 &&
	"$(notes +8613800000002 'Your security phone number was removed')" == 0 ]] ||
	fail "C was not told by email only"
# A security phone that was not recycled may be shared: it stays.
register e-recycle@example.com 'Erecycle-1' dev-e
E_TOKEN="$REG_TOKEN" E_UID="$REG_UID"
fresh "$REG_SID"
bind_contact "$E_TOKEN" phone +8613800000004
register +8613800000004 'Frecycle-2' dev-f
[[ "$(sql "$ADMIN_CI" "SELECT security_phone_idx IS NOT NULL FROM account.user WHERE id = $E_UID")" == t ]] ||
	fail "a shared, not recycled security phone was removed"
ok "a recycled security phone leaves the old account (told by email); a shared one stays"

# A reset asked through a login phone the carrier recycled (before anyone registered it): the
# same answer as always, no code, the account loses the number and is told by email only, so
# the number's new holder learns nothing.
code_limits_clear
register +8613800000003 'Grecycle-1' dev-g
G_TOKEN="$REG_TOKEN" G_UID="$REG_UID"
fresh "$REG_SID"
bind_contact "$G_TOKEN" email g-sec@example.com
sql "$ADMIN_CI" "INSERT INTO account.recycled_number (phone_idx, recycled_on)
	SELECT phone_idx, current_date FROM account.user WHERE id = $G_UID" >/dev/null
n_codes="$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE recipient = '+8613800000003'")"
expect 200 - POST /v1/password/reset/start '{"login": "+8613800000003"}'
[[ "$(jget channel)" == sms && "$(jget verification_id)" =~ ^[0-9a-f]{32}$ ]] ||
	fail "reset/start through a recycled number: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE recipient = '+8613800000003'")" == "$n_codes" ]] ||
	fail "the recycled number's new holder got a message"
[[ "$(sql "$ADMIN_CI" "SELECT phone_idx IS NULL FROM account.user WHERE id = $G_UID")" == t &&
	"$(notes g-sec@example.com 'Password reset refused')" == 1 ]] ||
	fail "G kept the number or was not told on its security email"
ok "a reset through a recycled number is refused silently; the account loses it and is told by email"

# The check as a carrier's HTTPS endpoint (account.recycling.mode = http), on a third instance.
mica_free_port CPORT
: >"$W/recycled.txt"
python3 tests/peers/carrier_stub.py "$MICA_CERT_SERVER" "$MICA_KEY_SERVER" "$MICA_CA" "$CPORT" \
	"$W/recycled.txt" "$W/carrier.log" </dev/null >/dev/null 2>&1 &
STACK_PID[carrier]=$!
if env "${ACCT_ENV[@]}" MICA_ACCOUNT_RECYCLING_MODE=http MICA_ACCOUNT_RECYCLING_URL="http://localhost:$CPORT/" \
	timeout 60 "$ACCT_BIN" --config deploy/mica.conf.example >"$W/recycling.log" 2>&1; then
	fail "mica-account started with a plain-http recycling URL"
fi
grep -q 'account.recycling.url: mode http needs an https:// URL' "$W/recycling.log" ||
	fail "start-up error: $(tail -n 3 "$W/recycling.log")"
if env "${ACCT_ENV[@]}" MICA_ACCOUNT_RECYCLING_MODE=https timeout 60 "$ACCT_BIN" \
	--config deploy/mica.conf.example >"$W/recycling.log" 2>&1; then
	fail "mica-account started with recycling mode https"
fi
grep -q 'account.recycling.mode: must be local or http' "$W/recycling.log" ||
	fail "start-up error: $(tail -n 3 "$W/recycling.log")"
mica_free_port APORT3
AURL_C="https://localhost:$APORT3"
stack_start account3 "$AURL_C" "${ACCT_ENV[@]}" "MICA_ACCOUNT_HTTP_PORT=$APORT3" MICA_ACCOUNT_HTTP_METRICS_PORT=0 \
	MICA_ACCOUNT_RECYCLING_MODE=http "MICA_ACCOUNT_RECYCLING_URL=https://localhost:$CPORT/v1/recycled" \
	"$ACCT_BIN" --config deploy/mica.conf.example
AURL="$AURL_C"
TODAY="$(sql "$ADMIN_CI" "SELECT to_char(now(), 'YYYY-MM-DD')")"
code_limits_clear
register +8613800000005 'Hrecycle-1' dev-h
H_UID="$REG_UID"
# The carrier says no: the number stays with H. It was asked with the number and H's date.
expect 200 - POST /v1/register/start '{"phone": "+8613800000005"}'
expect 409 identifier_in_use POST /v1/register/complete \
	"$(complete "$(jget verification_id)" "$(code_for +8613800000005)" 'Irecycle-2' dev-i)"
[[ "$(tail -n 1 "$W/carrier.log" | jq -c .)" == "{\"phone\":\"+8613800000005\",\"since\":\"$TODAY\"}" ]] ||
	fail "carrier request: $(tail -n 1 "$W/carrier.log")"
# The carrier says yes: it moves.
echo "+8613800000005 $TODAY" >>"$W/recycled.txt"
register +8613800000005 'Irecycle-2' dev-i
[[ "$(sql "$ADMIN_CI" "SELECT phone_idx IS NULL FROM account.user WHERE id = $H_UID")" == t ]] ||
	fail "H kept the number the carrier recycled"
# The carrier fails: the registration answers 503 and the number stays (fail closed), and a
# reset through the number sends no code but answers as always.
register +8613800000006 'Jrecycle-1' dev-j
J_UID="$REG_UID"
echo "+8613800000006 fail" >>"$W/recycled.txt"
expect 200 - POST /v1/register/start '{"phone": "+8613800000006"}'
VID="$(jget verification_id)" CODE="$(code_for +8613800000006)"
expect 503 unavailable POST /v1/register/complete "$(complete "$VID" "$CODE" 'Krecycle-2' dev-k)"
[[ "$(sql "$ADMIN_CI" "SELECT phone_idx IS NOT NULL FROM account.user WHERE id = $J_UID")" == t ]] ||
	fail "J lost the number while the carrier was down"
n_codes="$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE recipient = '+8613800000006'")"
expect 200 - POST /v1/password/reset/start '{"login": "+8613800000006"}'
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE recipient = '+8613800000006'")" == "$n_codes" ]] ||
	fail "a reset code went out while the carrier was down"
AURL="$AURL_A"
stack_stop account3
kill "${STACK_PID[carrier]}" 2>/dev/null || true
STACK_PID[carrier]=""
ok "the carrier's HTTPS check (mTLS) decides; a failing carrier keeps numbers where they are"

# ---------------------------------------------------------------------------------------------
step="7 deletion"
register dave@example.com 'Dave-pass-1' dev-dave
D_TOKEN="$REG_TOKEN" D_UID="$REG_UID" D_SID="$REG_SID"
expect 200 - POST /v1/login "$(login_body dave@example.com 'Dave-pass-1' dev-dave)"
D_TOKEN2="$(jget token)"
stale "$D_SID"
expect 403 step_up_required -t "$D_TOKEN" DELETE /v1/account
SU="$(jget stepup_id)"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for dave@example.com)\"}"
# Rows in every table that holds an account's data: security questions, and a burned password
# as a freeze would leave.
expect 200 - -t "$D_TOKEN" PUT /v1/security/questions '{"questions": [{"question": "Pet?", "answer": "Rex"}]}'
sql "$ADMIN_CI" "INSERT INTO account.burned_password (user_id, password_enc)
	SELECT id, password_enc FROM account.user WHERE id = $D_UID" >/dev/null
N_GONE="$(notes dave@example.com 'Your mica account was deleted')"
expect 200 - -t "$D_TOKEN" DELETE /v1/account
[[ "$(jget deleted)" == true ]] || fail "delete: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM outbox.event WHERE topic = 'account.deleted'
	AND payload = '{\"user_id\": $D_UID}'::jsonb")" == 1 ]] || fail "no account.deleted event"
[[ "$(notes dave@example.com 'Your mica account was deleted')" == $((N_GONE + 1)) ]] ||
	fail "no deletion notice"
# Every table of the account schema that refers to an account, found from the catalogue so a
# new table is covered too.
tables="$(sql "$ADMIN_CI" "SELECT table_name FROM information_schema.columns
	WHERE table_schema = 'account' AND column_name = 'user_id' ORDER BY 1")"
[[ "$tables" == *security_question* && "$tables" == *burned_password* ]] || fail "tables: $tables"
for t in user $tables; do
	col=user_id
	[[ "$t" == user ]] && col=id
	[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.$t WHERE $col = $D_UID")" == 0 ]] ||
		fail "account.$t still has rows of the deleted user"
done
expect 401 invalid_token -t "$D_TOKEN" GET /v1/sessions
expect 401 invalid_token -t "$D_TOKEN2" GET /v1/sessions
expect 401 invalid_credentials POST /v1/login "$(login_body dave@example.com 'Dave-pass-1' dev-dave)"
ok "account.deleted emitted, rows gone from $(wc -w <<<"user $tables") tables, notice sent after, tokens dead"

# ---------------------------------------------------------------------------------------------
step="8 least privilege"
ACCT_CI="$(mica_service_conninfo "$MICA_TEST_DIR" account "$DB")"
KCR_CI="$(mica_keycenter_conninfo "$MICA_TEST_DIR" "$DB")"
denied() { # CONNINFO QUERY
	if sql "$1" "$2" >"$W/psql.out" 2>&1; then fail "allowed: $2"; fi
	grep -q 'permission denied' "$W/psql.out" || fail "$2: $(cat "$W/psql.out")"
	echo "ok - $step: as $(sql "$1" 'SELECT current_user'): $2 -> permission denied"
}
denied "$ACCT_CI" "SELECT * FROM keycenter.key"
denied "$ACCT_CI" "SELECT * FROM keycenter.audit"
denied "$ACCT_CI" "INSERT INTO account.recycled_number VALUES ('x', current_date)"
denied "$KCR_CI" "SELECT * FROM account.user"
denied "$KCR_CI" "SELECT * FROM account.session"
denied "$KCR_CI" "SELECT * FROM account.notification"
denied "$ADMIN_CI" "SET ROLE mica_account; SELECT * FROM keycenter.key"
denied "$ADMIN_CI" "SET ROLE mica_keycenter; SELECT * FROM account.user"
[[ "$(sql "$ACCT_CI" "SELECT count(*) > 0 FROM account.user")" == t ]] || fail "mica_account reads its own table"

# ---------------------------------------------------------------------------------------------
step="9 rehash and login rate"
phc="$(kc_phc "$P_UID")"
[[ "$phc" == '$argon2id$v=19$m=8192,t=2,p=1$'* ]] || fail "stored PHC before: $phc"
stack_stop account
ACCT_ENV+=(MICA_ACCOUNT_PASSWORD_ARGON2_MEMORY_KIB=19456 MICA_ACCOUNT_RISK_LOGIN_RATE_MAX=1)
stack_start account "$AURL" "${ACCT_ENV[@]}" "$ACCT_BIN" --config deploy/mica.conf.example
# The phone account already logged in more than once this hour from its own device.
expect 403 step_up_required POST /v1/login "$(login_body +8613900000001 "$PW_P" dev-phone)"
[[ "$(jget reasons)" == '["unusual_rate"]' ]] || fail "reasons: $(cat "$W/body")"
phc="$(kc_phc "$P_UID")"
[[ "$phc" == '$argon2id$v=19$m=19456,t=2,p=1$'* ]] || fail "stored PHC after: $phc"
SU="$(jget stepup_id)"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "sms"}'
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for +8613900000001)\"}"
ok "the hash was upgraded to m=19456 at login; an unusual login rate asked for a step-up"

# ---------------------------------------------------------------------------------------------
step="10 readiness and metrics"
# probe URL: status of URL (no client certificate), body in $W/probe.
probe() { curl -sS --max-time 20 --cacert "$MICA_CA" -o "$W/probe" -w '%{http_code}' "$1" || fail "curl $1"; }
# readyz_until STATUS: /readyz results are reused for a second; poll for up to 15 s.
readyz_until() {
	local deadline=$((SECONDS + 15)) st
	until st="$(probe "$AURL/readyz")" && [[ "$st" == "$1" ]]; do
		((SECONDS < deadline)) || fail "/readyz $st, want $1: $(cat "$W/probe")"
		sleep 0.2
	done
}
readyz_until 200
grep -qx '{"status":"ready"}' "$W/probe" || fail "/readyz: $(cat "$W/probe")"
stack_stop keycenter
readyz_until 503
[[ "$(jq -c .failing "$W/probe")" == '[{"dependency":"keycenter","code":"http_error"}]' ]] ||
	fail "/readyz with the Key Center down: $(cat "$W/probe")"
[[ "$(probe "$AMURL/readyz")" == 503 ]] || fail "metrics listener /readyz: $(cat "$W/probe")"
[[ "$(probe "$AURL/healthz")" == 200 ]] || fail "/healthz with the Key Center down: $(cat "$W/probe")"
ok "the Key Center down: /readyz 503 naming it, /healthz 200"
stack_start keycenter "$KURL" "${KC_ENV[@]}" "$KC_BIN" --config deploy/mica.conf.example
readyz_until 200
ok "the Key Center back: /readyz 200"
# /metrics with its per-route login failure counts is not on the public listener.
[[ "$(probe "$AURL/metrics")" == 404 ]] || fail "public /metrics: $(cat "$W/probe")"
[[ "$(probe "$AMURL/metrics")" == 200 ]] || fail "metrics listener: $(cat "$W/probe")"
grep -q '^mica_http_requests_total{service="account",route="/v1/login",method="POST",code="403"} ' \
	"$W/probe" || fail "login counts: $(grep requests_total "$W/probe" | head)"
[[ "$(probe "$AMURL/v1/session")" == 404 ]] || fail "the metrics listener served a route"
ok "/metrics 404 on $AURL, served on $AMURL"
# A JSON body without Content-Type is not JSON (a cross-site form post could send it).
status="$(curl -sS --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' -H 'Content-Type:' \
	--data-binary "$(login_body alice@example.com "$PW_A" dev-alice)" "$AURL/v1/login")" || fail "curl"
[[ "$status" == 415 && "$(jget error.code)" == unsupported_media_type ]] ||
	fail "login without Content-Type: $status $(cat "$W/body")"
ok "a login body without Content-Type gets 415"

stack_stop account
stack_stop keycenter
echo "test_account.sh: all checks passed"
