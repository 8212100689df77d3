#!/usr/bin/env bash
# test_unknown_fields.sh - one rule for request bodies in every service (lib/body.h,
# docs/decisions.md "One problem type, one status table"): a member a route does not declare is
# refused with 400 unknown_field naming it, before the route acts, in the Key Center and in the
# account service alike. Before, both ignored it, so a misspelt option silently took its default:
# {"keep_curent": true} revoked the calling session too.
#
#   1. Key Center: top-level members of key creation, configuration, the crypto routes and the
#      policy; a batch item's unknown member is that item's error; the refusal is audited
#   2. account: the small bodies (revoke-all, reset, password change), the larger ones with parsers
#      of their own (login, registration, security questions) and their nested objects (device,
#      question items); nothing was done (the session still works)
#   3. the error shape of every refusal: {"error": {"code", "message"}}, the message naming the
#      member
set -euo pipefail

# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"
stack_begin test_unknown_fields MICA_REDIS_SOCKET MICA_REDIS_PASSWORD_FILE_ACCOUNT \
	MICA_CERT_ACCOUNT MICA_KEY_ACCOUNT MICA_CERT_OFFICER1 MICA_KEY_OFFICER1
ACCT_BIN="$BUILD/bin/mica-account"
KC_BIN="$BUILD/bin/mica-keycenter"
for f in "$ACCT_BIN" "$KC_BIN"; do [[ -x "$f" ]] || fail "$f is missing (make all)"; done
command -v jq >/dev/null || fail "jq is not installed"

step="setup"
stack_account_setup
stack_start account "$AURL" "${ACCT_ENV[@]}" "$ACCT_BIN" --config deploy/mica.conf.example
ok "Key Center on $KURL; mica-account on $AURL"

status=""
# kc PRINCIPAL METHOD PATH [BODY]: a Key Center request with PRINCIPAL's certificate.
kc() {
	local p="${1^^}" args
	args=(-sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' -X "$2")
	local cert="MICA_CERT_$p" key="MICA_KEY_$p"
	args+=(--cert "${!cert}" --key "${!key}")
	if (($# >= 4)); then args+=(-H 'Content-Type: application/json' --data-binary "$4"); fi
	status="$(curl "${args[@]}" "$KURL$3")" || fail "curl $2 $3 failed"
}
# acct [-t TOKEN] METHOD PATH [BODY]: an account request.
acct() {
	local token=""
	if [[ "$1" == -t ]]; then
		token="$2"
		shift 2
	fi
	local args=(-sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' -X "$1")
	[[ -n "$token" ]] && args+=(-H "Authorization: Bearer $token")
	if (($# >= 3)); then args+=(-H 'Content-Type: application/json' --data-binary "$3"); fi
	status="$(curl "${args[@]}" "$AURL$2")" || fail "curl $1 $2 failed"
}
# refused MEMBER WHAT: the last answer is 400 unknown_field naming MEMBER, in the one error shape.
refused() {
	[[ "$status" == 400 ]] || fail "$2: status $status, want 400: $(cat "$W/body")"
	[[ "$(jget error.code)" == unknown_field ]] || fail "$2: $(cat "$W/body")"
	jq -e --arg m "\"$1\"" '(.error.message | contains($m)) and (.error | keys == ["code", "message"])' \
		"$W/body" >/dev/null || fail "$2: the message does not name $1: $(cat "$W/body")"
	echo "ok - $step: $2 -> 400 unknown_field ($1)"
}

CTX='{"table":"t","row":"1"}'
PT="$(printf 'hello' | base64)"

step="1 Key Center"
kc admin POST /v1/keys/account-typo '{"owner":"account","tpye":"aes128-gcm"}'
refused tpye "key create with a misspelt type"
kc admin GET /v1/keys/account-typo
[[ "$status" == 404 ]] || fail "the refused key was created: $status $(cat "$W/body")"
kc admin POST /v1/keys/account-pii/config '{"deletion_alowed":true}'
refused deletion_alowed "key config with a misspelt member"
kc admin GET /v1/keys/account-pii
[[ "$(jget deletion_allowed)" == false ]] || fail "the refused config changed the key: $(cat "$W/body")"
kc account POST /v1/encrypt/account-pii "{\"plaintext\":\"$PT\",\"context\":$CTX,\"contxt\":$CTX}"
refused contxt "encrypt with a misspelt context"
kc account POST /v1/datakey/plaintext/account-pii "{\"context\":$CTX,\"bit\":128}"
refused bit "datakey with a misspelt bits"
kc account POST /v1/hmac/account-index "{\"input\":\"$PT\",\"version\":1}"
refused version "hmac with key_version misspelt"
kc officer1 POST /v1/policy '{"document":{},"reason":"x"}'
refused reason "policy change with an extra member"
# A batch: the item with the unknown member fails alone, the others are answered.
kc account POST /v1/encrypt/account-pii "{\"batch_input\":[{\"plaintext\":\"$PT\",\"context\":$CTX},
	{\"plaintext\":\"$PT\",\"context\":$CTX,\"nonce\":\"AAAA\"}]}"
[[ "$status" == 200 ]] || fail "batch: $status $(cat "$W/body")"
[[ "$(jq -r '.batch_results[0].ciphertext | startswith("kc:v1:")' "$W/body")" == true &&
	"$(jq -r '.batch_results[1].error.code' "$W/body")" == unknown_field ]] ||
	fail "batch: $(cat "$W/body")"
ok "a batch item's unknown member is that item's error"
# The refusals are in the audit trail like every other answer.
n="$(sql "$ADMIN_CI" "SELECT count(*) FROM keycenter.audit WHERE result = 'unknown_field'")"
((n >= 6)) || fail "only $n unknown_field refusals in the audit trail"
ok "the refusals are audited ($n records)"

step="2 account"
acct POST /v1/register/start '{"email":"alice@example.com"}'
[[ "$status" == 200 ]] || fail "register/start: $status $(cat "$W/body")"
VID="$(jget verification_id)"
CODE="$("$MICA" outbox list --db "$ADMIN_CI" --to alice@example.com --limit 5 2>/dev/null |
	sed -n 's/.*verification code is \([0-9]\{6\}\)\..*/\1/p' | tail -n 1)"
[[ "$CODE" =~ ^[0-9]{6}$ ]] || fail "no code in the outbox"
reg() { # EXTRA_TOP EXTRA_DEVICE
	jq -nc --arg v "$VID" --arg c "$CODE" "{verification_id: \$v, code: \$c, password: \"Alice-pass1\",
		device: ({id: \"dev-a\", name: \"phone\"} + $2)} + $1"
}
acct POST /v1/register/complete "$(reg '{"pasword_policy":"nist"}' '{}')"
refused pasword_policy "register/complete with a misspelt password_policy"
acct POST /v1/register/complete "$(reg '{}' '{"imei":"35"}')"
refused imei "register/complete with an unknown device member"
acct POST /v1/register/complete "$(reg '{}' '{}')"
[[ "$status" == 201 ]] || fail "register/complete (the code stayed usable): $status $(cat "$W/body")"
T="$(jget token)"
ok "the refused registrations left the code usable"
acct POST /v1/register/start '{"email":"bob@example.com","phone_number":"+8613800000000"}'
refused phone_number "register/start with an unknown member"
acct POST /v1/login '{"login":"alice@example.com","password":"Alice-pass1","device":{"id":"dev-a"},"remember_me":true}'
refused remember_me "login with an unknown member"
acct POST /v1/login '{"login":"alice@example.com","password":"Alice-pass1","device":{"id":"dev-a","model":"x"}}'
refused model "login with an unknown device member"
acct -t "$T" PUT /v1/security/questions \
	'{"questions":[{"question":"First pet?","answer":"rex the dog","hint":"dog"}]}'
refused hint "security questions with an unknown item member"
acct -t "$T" POST /v1/password/change '{"current_password":"Alice-pass1","new_password":"Alice-pass2","logout_others":true}'
refused logout_others "password change with an unknown member"
acct POST /v1/password/reset/start '{"login":"alice@example.com","channel":"sms"}'
refused channel "reset/start with an unknown member"
# The security case: a misspelt keep_current used to be ignored, so the call revoked the calling
# session as well. Now nothing is revoked and the caller is told.
acct -t "$T" POST /v1/sessions/revoke-all '{"keep_curent":true}'
refused keep_curent "revoke-all with keep_current misspelt"
acct -t "$T" GET /v1/session
[[ "$status" == 200 ]] || fail "the session was revoked by a refused request: $status $(cat "$W/body")"
acct -t "$T" POST /v1/sessions/revoke-all '{"keep_current":true}'
[[ "$status" == 200 ]] || fail "revoke-all keep_current: $status $(cat "$W/body")"
acct -t "$T" GET /v1/session
[[ "$status" == 200 ]] || fail "keep_current did not keep the session: $status"
ok "nothing was done by a refused request; the declared member works"
