#!/usr/bin/env bash
# test_push_register.sh - mica-push, issue 21 item 1, against real PostgreSQL and the Key Center:
# apps made with `mica push app create`, device registration and re-registration (same regid,
# new content key and token), the refusals (unknown app, wrong package, unknown member, bad
# hash), developer authentication (`Authorization: key=`; an unknown secret answers exactly as
# a wrong one for a known app), alias and topic subscription in MiPush's form, nothing secret
# or identifying in the push tables, and the mica_push role's least privilege.
set -euo pipefail
# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"

stack_begin test_push_register MICA_CERT_PUSH MICA_KEY_PUSH MICA_CERT_ACCOUNT MICA_KEY_ACCOUNT
command -v jq >/dev/null || fail "jq is not installed"

# ---------------------------------------------------------------------------------------------
step="setup"
stack_db_create
stack_push_setup
stack_start push "$PURL" "${PUSH_ENV[@]}" "$PUSH_BIN" --config deploy/mica.conf.example
ok "Key Center with push-index and push-content, mica-push on $PURL"

# kc OP KEY JSON: a Key Center request as the push principal; body in $W/kc.
kc() {
	curl -sS -o "$W/kc" -w '%{http_code}' --cacert "$MICA_CA" --cert "$MICA_CERT_PUSH" \
		--key "$MICA_KEY_PUSH" -H 'Content-Type: application/json' -d "$3" "$KURL/v1/$1/$2"
}

# ---------------------------------------------------------------------------------------------
step="app create"
# shellcheck source=tests/integration/lib-push.sh
. "$ROOT/tests/integration/lib-push.sh"
must_app com.example.news
APP1="$APP_ID" SECRET1="$APP_SECRET"
must_app com.example.chat
APP2="$APP_ID" SECRET2="$APP_SECRET"
[[ "$APP1" != "$APP2" && "$SECRET1" != "$SECRET2" ]] || check_fail "two apps share an id or secret"
rc=0
"$MICA" push app create --package com.example.news "${CLI_KC[@]}" >/dev/null 2>"$W/err" || rc=$?
{ [[ "$rc" == 1 ]] && grep -q 'an app for package com.example.news exists' "$W/err"; } ||
	check_fail "a second app for one package: exit $rc, $(cat "$W/err")"
rc=0
"$MICA" push app create --package '1bad package' "${CLI_KC[@]}" >/dev/null 2>"$W/err" || rc=$?
[[ "$rc" == 64 ]] || check_fail "a bad package name: exit $rc, want 64: $(cat "$W/err")"
rc=0
"$MICA" push app create --package com.example.x --db "$ADMIN_CI" >/dev/null 2>"$W/err" || rc=$?
[[ "$rc" == 64 ]] || check_fail "no Key Center options: exit $rc, want 64"
"$MICA" push app list --db "$ADMIN_CI" >"$W/list" 2>&1 || check_fail "app list: $(cat "$W/list")"
{ grep -q "^$APP1 .* com.example.news$" "$W/list" && grep -q "^$APP2 .* com.example.chat$" "$W/list"; } ||
	check_fail "app list: $(cat "$W/list")"
grep -q "$SECRET1" "$W/list" && check_fail "app list shows a secret"
ok "two apps, secrets shown once; duplicate and bad package refused"

# ---------------------------------------------------------------------------------------------
# preg JSON: POST /v1/push/register; body in $W/body, status in $status.
status=""
preg() {
	status="$(curl -sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' \
		-H 'Content-Type: application/json' -d "$1" "$PURL/v1/push/register")"
}
# expect_reg STATUS CODE JSON: a registration answered STATUS with error CODE (- for none).
expect_reg() {
	preg "$3"
	if [[ "$status" != "$1" ]]; then
		check_fail "register $3: status $status, want $1: $(cat "$W/body")"
	elif [[ "$2" != - && "$(jget error.code)" != "$2" ]]; then
		check_fail "register $3: error $(jget error.code), want $2: $(cat "$W/body")"
	else
		echo "ok - $step: register -> $1 $2"
	fi
}
reg_body() { jq -nc --arg a "$1" --arg p "$2" --arg h "$3" '{app_id: $a, package: $p, device_hash: $h}'; }

step="register"
HASH="$(printf 'imei:861234567890123|serial:R58M12345|android:9774d56d682e549c' | sha256sum | cut -c1-64)"
HASH2="$(printf 'another phone' | sha256sum | cut -c1-64)"
must expect_reg 200 - "$(reg_body "$APP1" com.example.news "$HASH")"
REGID="$(jget regid)" KEY1="$(jget content_key)" TOKEN1="$(jget token)"
[[ "$REGID" =~ ^[A-Za-z0-9_-]{43}$ && "$TOKEN1" =~ ^[A-Za-z0-9_-]{43}$ ]] ||
	check_fail "regid or token shape: $(cat "$W/body")"
[[ "$(printf '%s' "$KEY1" | base64 -d 2>/dev/null | wc -c)" == 32 ]] ||
	check_fail "content_key is not 32 bytes in base64: $KEY1"
[[ "$(jget '#')" == 3 ]] || check_fail "the answer has other members: $(cat "$W/body")"
ok "first registration"

step="re-register"
UPPER="${HASH^^}"
must expect_reg 200 - "$(reg_body "$APP1" com.example.news "$UPPER")"
[[ "$(jget regid)" == "$REGID" ]] || check_fail "re-registration changed the regid: $(jget regid) != $REGID"
KEY2="$(jget content_key)" TOKEN2="$(jget token)"
[[ "$KEY2" != "$KEY1" && "$TOKEN2" != "$TOKEN1" ]] || check_fail "re-registration kept the key or token"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM push.registration")" == 1 ]] ||
	check_fail "re-registration added a row"
# The old token no longer matches what is stored; the new one does (HMAC as the push principal).
idx_of() { kc hmac push-index "$(jq -nc --arg i "$(printf 'token:%s' "$1" | base64 -w0)" '{input: $i}')" >/dev/null && jq -r .hmac "$W/kc"; }
stored_tok="$(sql "$ADMIN_CI" "SELECT token_idx FROM push.registration WHERE regid = '$REGID'")"
[[ "$(idx_of "$TOKEN2")" == "$stored_tok" ]] || check_fail "the new token is not the stored one"
[[ "$(idx_of "$TOKEN1")" != "$stored_tok" ]] || check_fail "the old token still matches"
# The stored content key opens, bound to its row, to the new key only.
enc="$(sql "$ADMIN_CI" "SELECT content_key_enc FROM push.registration WHERE regid = '$REGID'")"
ctx() { jq -nc --arg c "$enc" --arg r "$1" '{ciphertext: $c, context: {service: "push", table: "registration", column: "content_key", row: $r}}'; }
st="$(kc decrypt push-content "$(ctx "$REGID")")"
{ [[ "$st" == 200 ]] && [[ "$(jq -r .plaintext "$W/kc")" == "$KEY2" ]]; } ||
	check_fail "the sealed content key does not open to the new key: $st $(cat "$W/kc")"
st="$(kc decrypt push-content "$(ctx "another-row")")"
[[ "$st" == 400 && "$(jq -r .error.code "$W/kc")" == decryption_failed ]] ||
	check_fail "the content key opens under another row's context: $st"
must expect_reg 200 - "$(reg_body "$APP1" com.example.news "$HASH2")"
REGID2="$(jget regid)"
[[ "$REGID2" != "$REGID" ]] || check_fail "another device got the same regid"
must expect_reg 200 - "$(reg_body "$APP2" com.example.chat "$HASH")"
REGID_APP2="$(jget regid)"
[[ "$REGID_APP2" != "$REGID" ]] || check_fail "the same device in another app got the same regid"
ok "same regid with a new key and token; the old token and key are gone"

step="register refusals"
expect_reg 404 unknown_app "$(reg_body 1234567890123456789 com.example.news "$HASH")"
expect_reg 403 package_mismatch "$(reg_body "$APP1" com.example.chat "$HASH")"
expect_reg 400 unknown_field "$(jq -nc --arg a "$APP1" --arg h "$HASH" '{app_id: $a, package: "com.example.news", device_hash: $h, imei: "861234567890123"}')"
[[ "$(jget error.message)" == *imei* ]] || check_fail "unknown_field does not name the member: $(cat "$W/body")"
expect_reg 400 bad_device_hash "$(reg_body "$APP1" com.example.news "${HASH:0:63}g")"
expect_reg 400 bad_field "$(reg_body "$APP1" com.example.news "${HASH}00")"
expect_reg 400 missing_field "$(jq -nc --arg a "$APP1" '{app_id: $a, package: "com.example.news"}')"
st="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" -d "app_id=$APP1" "$PURL/v1/push/register")"
[[ "$st" == 415 ]] || check_fail "a form body on the JSON route: $st"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM push.registration")" == 3 ]] ||
	check_fail "a refused registration wrote a row"
ok


step="developer auth"
# The same answer for a missing key, a malformed header, an unknown secret and a secret that
# would belong to no app: nothing tells a known app from an unknown one.
dev -s "" GET /v1/topic/all "registration_id=$REGID"
[[ "$status" == 401 ]] || check_fail "no Authorization: $status"
cp "$W/body" "$W/none"
for s in "wrong-secret" "$(openssl rand -base64 32 | tr '+/' '-_' | cut -c1-43)" "${SECRET1:0:42}x"; do
	dev -s "$s" GET /v1/topic/all "registration_id=$REGID"
	[[ "$status" == 401 && "$(jget error.code)" == invalid_app_secret ]] ||
		check_fail "secret $s: $status $(cat "$W/body")"
	cmp -s "$W/body" "$W/none" || check_fail "a wrong secret answers differently: $(cat "$W/body") vs $(cat "$W/none")"
done
# A wrong secret naming a known app's package and one naming no app's package: the same 401.
for pkg in com.example.news com.example.unknown; do
	dev -s "${SECRET2:0:42}x" GET /v1/topic/all "registration_id=$REGID" "restricted_package_name=$pkg"
	{ [[ "$status" == 401 ]] && cmp -s "$W/body" "$W/none"; } ||
		check_fail "a wrong secret for package $pkg: $status $(cat "$W/body")"
done
status="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" -G -H "Authorization: Bearer $SECRET1" \
	--data-urlencode "registration_id=$REGID" "$PURL/v1/topic/all")"
{ [[ "$status" == 401 ]] && cmp -s "$W/body" "$W/none"; } || check_fail "a Bearer header: $status"
expect_dev 403 package_mismatch GET /v1/topic/all "registration_id=$REGID" restricted_package_name=com.example.chat
expect_dev 200 - GET /v1/topic/all "registration_id=$REGID" restricted_package_name=com.example.news
# App 2's secret cannot reach app 1's registrations.
expect_dev 400 unknown_regid -s "$SECRET2" GET /v1/topic/all "registration_id=$REGID"
ok "401 alike for every wrong credential; package and app bound"

step="topics"
expect_dev 200 - POST /v2/topic/subscribe "registration_id=$REGID,$REGID2" topic=sports category=1 \
	restricted_package_name=com.example.news
expect_dev 200 - POST /v2/topic/subscribe "registration_id=$REGID" topic=news
expect_dev 200 - POST /v2/topic/subscribe "registration_id=$REGID" topic=news
expect_dev 200 - GET /v1/topic/all "registration_id=$REGID"
[[ "$(jget data.list)" == '["news", "sports"]' ]] || check_fail "topics of REGID: $(cat "$W/body")"
expect_dev 200 - POST /v2/topic/unsubscribe "registration_id=$REGID" topic=sports
expect_dev 200 - GET /v1/topic/all "registration_id=$REGID"
[[ "$(jget data.list)" == '["news"]' ]] || check_fail "after unsubscribe: $(cat "$W/body")"
expect_dev 200 - GET /v1/topic/all "registration_id=$REGID2"
[[ "$(jget data.list)" == '["sports"]' ]] || check_fail "topics of REGID2: $(cat "$W/body")"
expect_dev 400 unknown_regid POST /v2/topic/subscribe "registration_id=$REGID,$REGID_APP2" topic=x
expect_dev 400 bad_field POST /v2/topic/subscribe "registration_id=$REGID" "topic=a,b"
expect_dev 400 bad_field POST /v2/topic/subscribe "registration_id=$REGID" "topic=has space"
expect_dev 400 missing_field POST /v2/topic/subscribe "registration_id=$REGID"
expect_dev 400 unknown_field POST /v2/topic/subscribe "registration_id=$REGID" topic=x imei=1
[[ "$(jget error.message)" == *imei* ]] || check_fail "unknown_field does not name the field: $(cat "$W/body")"
expect_dev 400 bad_field POST /v2/topic/subscribe "registration_id=$REGID" topic=x topic=y
expect_dev 400 unknown_field GET /v1/topic/all "registration_id=$REGID" extra=1
# Percent escapes are decoded before the checks: an escaped NUL or space is refused, a '+' is a
# space, and a long value handed over in pieces by the parser is put together again (100 ids,
# over 4 KB, only the last one unknown: naming it shows the whole list was read).
status="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" -H "Authorization: key=$SECRET1" \
	-d "registration_id=$REGID&topic=a%00b" "$PURL/v2/topic/subscribe")"
[[ "$status" == 400 && "$(jget error.code)" == bad_field ]] || check_fail "an escaped NUL: $status $(cat "$W/body")"
status="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" -H "Authorization: key=$SECRET1" \
	-d "registration_id=$REGID&topic=a+b" "$PURL/v2/topic/subscribe")"
[[ "$status" == 400 && "$(jget error.code)" == bad_field ]] || check_fail "a '+' space: $status $(cat "$W/body")"
expect_dev 400 bad_field POST /v2/topic/subscribe "registration_id=$REGID" "topic=$(printf 'x%.0s' {1..129})"
many="$REGID"
for _ in $(seq 1 98); do many+=",$REGID"; done
last="$(printf 'r%042d' 100)"
many+=",$last"
expect_dev 400 unknown_regid POST /v2/topic/subscribe "registration_id=$many" topic=x
[[ "$(jget error.message)" == "registration_id $last is not a registration of this app" ]] ||
	check_fail "the long list was not read whole: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM push.topic_subscription WHERE topic = 'x'")" == 0 ]] ||
	check_fail "a refused subscription wrote a row"
st="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" -H "Authorization: key=$SECRET1" \
	-H 'Content-Type: application/json' -d '{"registration_id":"x","topic":"y"}' "$PURL/v2/topic/subscribe")"
[[ "$st" == 415 && "$(jget error.code)" == unsupported_media_type ]] || check_fail "JSON on a form route: $st"
ok

step="aliases"
expect_dev 200 - POST /v2/alias/subscribe "registration_id=$REGID" "aliases=user-7,home" \
	restricted_package_name=com.example.news
expect_dev 200 - GET /v1/alias/all "registration_id=$REGID"
[[ "$(jget data.list)" == '["home", "user-7"]' ]] || check_fail "aliases: $(cat "$W/body")"
expect_dev 200 - POST /v2/alias/unsubscribe "registration_id=$REGID" aliases=home
expect_dev 200 - GET /v1/alias/all "registration_id=$REGID"
[[ "$(jget data.list)" == '["user-7"]' ]] || check_fail "aliases after unsubscribe: $(cat "$W/body")"
expect_dev 400 unknown_regid -s "$SECRET2" POST /v2/alias/subscribe "registration_id=$REGID" aliases=x
expect_dev 400 bad_field POST /v2/alias/subscribe "registration_id=$REGID" "aliases=a,,b"
expect_dev 401 invalid_app_secret -s nope POST /v2/alias/subscribe "registration_id=$REGID" aliases=x
# Re-registering keeps the device's aliases and topics (same regid).
must expect_reg 200 - "$(reg_body "$APP1" com.example.news "$HASH")"
expect_dev 200 - GET /v1/alias/all "registration_id=$REGID"
[[ "$(jget data.list)" == '["user-7"]' ]] || check_fail "aliases after re-registration: $(cat "$W/body")"
ok

# ---------------------------------------------------------------------------------------------
step="app rotate and delete"
# A third app: its secret rotated (the old one answers the same 401 as any wrong secret at
# once), then the app deleted with its registration, subscription and everything else.
must_app com.example.gone
APP3="$APP_ID" SECRET3="$APP_SECRET"
must expect_reg 200 - "$(reg_body "$APP3" com.example.gone "$HASH")"
REGID3="$(jget regid)"
expect_dev 200 - -s "$SECRET3" POST /v2/topic/subscribe "registration_id=$REGID3" topic=news
"$MICA" push app rotate-secret --app-id "$APP3" "${CLI_KC[@]}" >"$W/app.out" 2>"$W/app.err" ||
	fail "rotate-secret: $(cat "$W/app.err")"
NEW3="$(sed -n 's/^app_secret: //p' "$W/app.out")"
[[ "$NEW3" =~ ^[A-Za-z0-9_-]{43}$ && "$NEW3" != "$SECRET3" ]] || check_fail "rotate-secret output: $(cat "$W/app.out")"
dev -s "$SECRET3" GET /v1/topic/all "registration_id=$REGID3"
{ [[ "$status" == 401 ]] && cmp -s "$W/body" "$W/none"; } || check_fail "the rotated-out secret: $status $(cat "$W/body")"
expect_dev 200 - -s "$NEW3" GET /v1/topic/all "registration_id=$REGID3"
rc=0
"$MICA" push app rotate-secret --app-id 1000000000000000001 "${CLI_KC[@]}" >/dev/null 2>"$W/err" || rc=$?
{ [[ "$rc" == 1 ]] && grep -q 'no app has this app id' "$W/err"; } || check_fail "rotating an unknown app: exit $rc $(cat "$W/err")"
# A message waits in the queue: the delete takes it and its trace too.
expect_dev 200 - -s "$NEW3" POST /v3/message/regid "registration_id=$REGID3" pass_through=1 payload=bye
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE app_id = '$APP3'")" == 1 ]] ||
	check_fail "the message to the app that goes is not queued"
"$MICA" push app delete --app-id "$APP3" --db "$ADMIN_CI" >/dev/null 2>"$W/err" || fail "app delete: $(cat "$W/err")"
left="$(sql "$ADMIN_CI" "SELECT (SELECT count(*) FROM push.app WHERE app_id = '$APP3') + (SELECT count(*) FROM push.registration WHERE app_id = '$APP3') + (SELECT count(*) FROM push.topic_subscription WHERE app_id = '$APP3') + (SELECT count(*) FROM push.queue WHERE app_id = '$APP3') + (SELECT count(*) FROM push.message WHERE app_id = '$APP3')")"
[[ "$left" == 0 ]] || check_fail "app delete left $left rows"
dev -s "$NEW3" GET /v1/topic/all "registration_id=$REGID3"
[[ "$status" == 401 ]] || check_fail "a deleted app's secret: $status"
rc=0
"$MICA" push app delete --app-id "$APP3" --db "$ADMIN_CI" >/dev/null 2>"$W/err" || rc=$?
[[ "$rc" == 1 ]] || check_fail "deleting it again: exit $rc"
ok "rotate-secret replaces the secret at once; delete removes the app and all of it"

step="at rest"
# Every value of the push schema, as text: no device hash (either case), app secret, token or
# content key (base64 or hex) appears in it.
sql "$ADMIN_CI" "SELECT row_to_json(t)::text FROM (SELECT * FROM push.app) t
	UNION ALL SELECT row_to_json(t)::text FROM (SELECT * FROM push.registration) t
	UNION ALL SELECT row_to_json(t)::text FROM (SELECT * FROM push.alias) t
	UNION ALL SELECT row_to_json(t)::text FROM (SELECT * FROM push.topic_subscription) t" >"$W/dump"
[[ "$(wc -l <"$W/dump")" -ge 8 ]] || check_fail "the dump is too short to mean anything: $(cat "$W/dump")"
preg "$(reg_body "$APP1" com.example.news "$HASH")"
KEY3="$(jget content_key)" TOKEN3="$(jget token)"
sql "$ADMIN_CI" "SELECT row_to_json(t)::text FROM (SELECT * FROM push.registration) t" >>"$W/dump"
for secret in "$HASH" "$UPPER" "$HASH2" "$SECRET1" "$SECRET2" "$TOKEN1" "$TOKEN2" "$TOKEN3" \
	"$KEY1" "$KEY2" "$KEY3" "$(printf '%s' "$KEY3" | base64 -d | od -An -tx1 | tr -d " \n")"; do
	grep -qiF "$secret" "$W/dump" && check_fail "a secret or device hash is stored in the clear: ${secret:0:8}…"
done
grep -q '"content_key_enc":"kc:v1:' "$W/dump" || check_fail "content keys are not Key Center ciphertexts"
grep -q '"device_idx":"kc:v1:' "$W/dump" || check_fail "device hashes are not Key Center HMACs"
grep -q '"secret_idx":"kc:v1:' "$W/dump" || check_fail "app secrets are not Key Center HMACs"
# The device index differs between apps for the same phone.
[[ "$(sql "$ADMIN_CI" "SELECT count(DISTINCT device_idx) FROM push.registration")" == 3 ]] ||
	check_fail "the same device has one index in two apps"
grep -rqiF "$HASH" "$W"/push.log && check_fail "the device hash reached the log"
grep -rqF "$SECRET1" "$W"/push.log && check_fail "an app secret reached the log"
grep -rqF "$TOKEN3" "$W"/push.log && check_fail "a token reached the log"
ok "only HMACs and Key Center ciphertexts at rest"

step="least privilege"
denied() {
	local out
	if out="$(psql "$PUSH_CI" -X -v ON_ERROR_STOP=1 -qAtc "$1" 2>&1)"; then
		check_fail "mica_push may: $1 ($out)"
	elif [[ "$out" != *"permission denied"* ]]; then
		check_fail "$1: $out"
	else
		echo "ok - $step: denied: $1"
	fi
}
denied "SELECT count(*) FROM account.user"
denied "SELECT count(*) FROM keycenter.key"
denied "INSERT INTO push.app (app_id, package, secret_idx) VALUES ('1000000000000000001', 'x.y', 'z')"
denied "UPDATE push.app SET secret_idx = 'z'"
denied "CREATE TABLE push.extra (x int)"
[[ "$(psql "$PUSH_CI" -X -qAtc 'SELECT count(*) FROM push.registration')" == 3 ]] ||
	check_fail "mica_push cannot read its own registrations"
ok

step="limits"
# Registrations are limited per device of an app (by its index, before the app is looked up, so
# an unknown app counts alike) and per client address; both answer 429 rate_limited.
stack_stop push
stack_start push "$PURL" "${PUSH_ENV[@]}" MICA_PUSH_REGISTER_DEVICE_MAX=2 MICA_PUSH_REGISTER_IP_MAX=1000 \
	"$PUSH_BIN" --config deploy/mica.conf.example
HASH3="$(printf 'limit phone' | sha256sum | cut -c1-64)"
must expect_reg 200 - "$(reg_body "$APP1" com.example.news "$HASH3")"
must expect_reg 200 - "$(reg_body "$APP1" com.example.news "$HASH3")"
expect_reg 429 rate_limited "$(reg_body "$APP1" com.example.news "$HASH3")"
expect_reg 404 unknown_app "$(reg_body 999999999 com.example.news "$HASH3")"
expect_reg 404 unknown_app "$(reg_body 999999999 com.example.news "$HASH3")"
expect_reg 429 rate_limited "$(reg_body 999999999 com.example.news "$HASH3")"
must expect_reg 200 - "$(reg_body "$APP1" com.example.news "$(printf 'limit phone 2' | sha256sum | cut -c1-64)")"
stack_stop push
mica_redis_cli "$MICA_TEST_DIR" admin DEL push:rl:register:ip:127.0.0.1 >/dev/null
stack_start push "$PURL" "${PUSH_ENV[@]}" MICA_PUSH_REGISTER_IP_MAX=2 "$PUSH_BIN" --config deploy/mica.conf.example
expect_reg 404 unknown_app "$(reg_body 999999998 com.example.news "$HASH2")"
expect_reg 400 bad_device_hash "$(reg_body "$APP1" com.example.news "${HASH:0:63}g")"
expect_reg 429 rate_limited "$(reg_body "$APP1" com.example.news "$HASH2")"
stack_stop push
mica_redis_cli "$MICA_TEST_DIR" admin DEL push:rl:register:ip:127.0.0.1 >/dev/null
stack_start push "$PURL" "${PUSH_ENV[@]}" "$PUSH_BIN" --config deploy/mica.conf.example
ok "per device (a known and an unknown app alike) and per address"

step="readiness"
st="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" "$PURL/readyz")"
[[ "$st" == 200 ]] || check_fail "/readyz: $st $(cat "$W/body")"
# With the Key Center down nothing is stored unkeyed: a registration (whose new token needs an
# HMAC no cache holds) answers 503 naming the Key Center, and writes nothing.
stack_stop keycenter
before="$(sql "$ADMIN_CI" "SELECT token_idx FROM push.registration WHERE regid = '$REGID'")"
preg "$(reg_body "$APP1" com.example.news "$HASH")"
[[ "$status" == 503 && "$(jget error.code)" == unavailable && "$(jget dependency)" == keycenter ]] ||
	check_fail "register with the Key Center down: $status $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT token_idx FROM push.registration WHERE regid = '$REGID'")" == "$before" ]] ||
	check_fail "a registration without the Key Center changed the row"
# The readiness result is reused for a second (MICA_HTTP_READY_CACHE_MS): ask until it is fresh.
not_ready() {
	[[ "$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" "$PURL/readyz")" == 503 ]] &&
		grep -q keycenter "$W/body"
}
mica_wait_for 10 not_ready || check_fail "/readyz without the Key Center: $(cat "$W/body")"
stack_stop push
ok "ready; 503 keycenter without the Key Center; stops cleanly on SIGTERM"

stack_end
