#!/usr/bin/env bash
# test_device_push_register.sh - `mica-device push register` against a real mica-push (issue 21
# items 1 and 8): it sends the SHA-256 of the three identifiers (NUL-separated), never the
# identifiers, and stores regid, content key and token in a 0600 state file that `push listen`
# reads; registering again keeps the regid with a new key and token; a wrong package, an unknown
# app and a server its CA did not sign end with exit 1 and the reason, and no state file.
set -euo pipefail
# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"

stack_begin test_device_push_register MICA_CERT_PUSH MICA_KEY_PUSH MICA_CA_ROGUE
command -v jq >/dev/null || fail "jq is not installed"
DEV="$BUILD/bin/mica-device"
[[ -x "$DEV" ]] || fail "$DEV is missing (make all)"

# ---------------------------------------------------------------------------------------------
step="setup"
stack_db_create
stack_push_setup
stack_start push "$PURL" "${PUSH_ENV[@]}" "$PUSH_BIN" --config deploy/mica.conf.example
"$MICA" push app create --package com.example.news --db "$ADMIN_CI" --kc-url "$KURL" \
	--ca "$MICA_CA" --cert "$MICA_CERT_PUSH" --key "$MICA_KEY_PUSH" >"$W/app.out" 2>&1 ||
	fail "app create: $(cat "$W/app.out")"
APP="$(sed -n 's/^app_id: //p' "$W/app.out")"
[[ -n "$APP" ]] || fail "no app id: $(cat "$W/app.out")"
ok "mica-push on $PURL, app $APP"

IDS=(--device-id1 861234567890123 --device-id2 R58M12345 --device-id3 9774d56d682e549c)
register() { # register STATE [PACKAGE [CA]]: mica-device push register; exit status in $rc
	rc=0
	"$DEV" push register --url "$PURL" --ca "${3:-$MICA_CA}" --app-id "$APP" \
		--package "${2:-com.example.news}" "${IDS[@]}" --state "$1" >"$W/reg.out" 2>"$W/reg.err" || rc=$?
}

# ---------------------------------------------------------------------------------------------
step="register"
register "$W/state"
[[ "$rc" == 0 ]] || fail "exit $rc: $(cat "$W/reg.err")"
REGID="$(jq -r .regid "$W/state")"
[[ "$(cat "$W/reg.out")" == "regid: $REGID" && "$REGID" =~ ^[A-Za-z0-9_-]{43}$ ]] ||
	check_fail "output $(cat "$W/reg.out"), regid $REGID"
[[ "$(stat -c %a "$W/state")" == 600 ]] || check_fail "state file mode $(stat -c %a "$W/state")"
[[ "$(jq -r .content_key "$W/state" | base64 -d | wc -c)" == 32 ]] || check_fail "content key: $(cat "$W/state")"
[[ "$(jq -r .token "$W/state")" =~ ^[A-Za-z0-9_-]{43}$ ]] || check_fail "token: $(cat "$W/state")"
grep -q "$(jq -r .token "$W/state")" "$W/reg.out" "$W/reg.err" && check_fail "the token was printed"
# What was sent is SHA-256("id1\0id2\0id3"): registering that hash directly gives the same regid
# (the server answers with the regid of a known device hash).
HASH="$(printf '861234567890123\0R58M12345\0009774d56d682e549c' | sha256sum | cut -c1-64)"
st="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" -H 'Content-Type: application/json' \
	-d "$(jq -nc --arg a "$APP" --arg h "$HASH" '{app_id: $a, package: "com.example.news", device_hash: $h}')" \
	"$PURL/v1/push/register")"
[[ "$st" == 200 && "$(jget regid)" == "$REGID" ]] ||
	check_fail "the hash of the NUL-separated identifiers is not what was sent: $st $(cat "$W/body")"
# The identifiers never reach the server: not in its log, not in its tables.
grep -q -e 861234567890123 -e R58M12345 "$W/push.log" && check_fail "an identifier is in the mica-push log"
sql "$ADMIN_CI" "SELECT * FROM push.registration" | grep -q -e 861234567890123 -e R58M12345 &&
	check_fail "an identifier is in push.registration"
ok "regid $REGID stored with key and token, mode 0600; only the hash was sent"

step="register again"
old_key="$(jq -r .content_key "$W/state")" old_token="$(jq -r .token "$W/state")"
register "$W/state"
[[ "$rc" == 0 ]] || fail "exit $rc: $(cat "$W/reg.err")"
[[ "$(jq -r .regid "$W/state")" == "$REGID" ]] || check_fail "the regid changed"
[[ "$(jq -r .content_key "$W/state")" != "$old_key" && "$(jq -r .token "$W/state")" != "$old_token" ]] ||
	check_fail "the key or token did not change"
ok "same regid, new key and token"

step="refusals"
register "$W/state-pkg" com.example.chat
{ [[ "$rc" == 1 ]] && grep -q "answered 403 package_mismatch" "$W/reg.err" && [[ ! -e "$W/state-pkg" ]]; } ||
	check_fail "wrong package: exit $rc: $(cat "$W/reg.err")"
APP_SAVED="$APP" APP=1234567890123456789
register "$W/state-app"
APP="$APP_SAVED"
{ [[ "$rc" == 1 ]] && grep -q "answered 404 unknown_app" "$W/reg.err" && [[ ! -e "$W/state-app" ]]; } ||
	check_fail "unknown app: exit $rc: $(cat "$W/reg.err")"
register "$W/state-rogue" com.example.news "$MICA_CA_ROGUE"
{ [[ "$rc" == 1 ]] && grep -qi "tls" "$W/reg.err" && [[ ! -e "$W/state-rogue" ]]; } ||
	check_fail "a server the CA did not sign: exit $rc: $(cat "$W/reg.err")"
ok "wrong package, unknown app and an untrusted server: exit 1, no state file"

stack_end
