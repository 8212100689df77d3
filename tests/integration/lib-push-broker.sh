# shellcheck shell=bash
# lib-push-broker.sh - shared by the broker tests (test_push_broker*.sh): an app, devices
# registered over HTTPS, messages queued the way the developer API queues them (a sealed body in
# push.queue, a W line on push:wake), and the broker's /metrics. Sourced after lib-stack.sh and
# stack_push_setup, never run (tests/run skips lib-*.sh).
#
#   broker_app                   an app for com.example.news: APP, APP_SECRET
#   broker_device NAME [HASH]    registers a device (a random hash, or HASH): REGID_<NAME>,
#                                TOKEN_<NAME>, KEY_<NAME>
#   enqueue REGID KEY PAYLOAD [wake]
#                                seals PAYLOAD for REGID (tests/peers/push_seal), inserts its
#                                push.message and push.queue rows, publishes the W line when asked;
#                                sets MSG (message id), SEQ (queue row) and BODY (base64)
#   wake REGID SEQ ATTEMPTED BODY publishes one W line as the push Redis user
#   queued REGID                 number of queue rows of REGID
#   wait_sql CONNINFO QUERY WANT [SECONDS]
#                                polls until QUERY answers WANT (5 s default); 1 when it never does
#   metric URL NAME              the value of one /metrics line (NAME with its labels), 0 if absent
#   open_body REGID KEY HEX      the JSON a device got (push_seal open)

SEAL="$BUILD/tests/peers/push_seal"
DEVICE="$BUILD/tests/peers/push_device"
for _b in "$SEAL" "$DEVICE"; do [[ -x "$_b" ]] || fail "$_b is missing (make all)"; done
command -v jq >/dev/null || fail "jq is not installed"
command -v redis-cli >/dev/null || fail "redis-cli is not installed"

broker_app() {
	"$MICA" push app create --package com.example.news --db "$ADMIN_CI" --kc-url "$KURL" \
		--ca "$MICA_CA" --cert "$MICA_CERT_PUSH" --key "$MICA_KEY_PUSH" >"$W/app.out" 2>&1 ||
		fail "app create: $(cat "$W/app.out")"
	APP="$(sed -n 's/^app_id: //p' "$W/app.out")"
	APP_SECRET="$(sed -n 's/^app_secret: //p' "$W/app.out")"
	[[ -n "$APP" && -n "$APP_SECRET" ]] || fail "app create output: $(cat "$W/app.out")"
}

broker_device() {
	local name="$1" hash="${2:-}" st
	[[ -n "$hash" ]] || hash="$(head -c 32 /dev/urandom | sha256sum | cut -c1-64)"
	st="$(curl -sS --max-time 30 --cacert "$MICA_CA" -o "$W/reg" -w '%{http_code}' \
		-H 'Content-Type: application/json' \
		-d "$(jq -nc --arg a "$APP" --arg h "$hash" '{app_id: $a, package: "com.example.news", device_hash: $h}')" \
		"$PURL/v1/push/register")"
	[[ "$st" == 200 ]] || fail "register $name: $st $(cat "$W/reg")"
	printf -v "REGID_$name" '%s' "$(jq -r .regid "$W/reg")"
	printf -v "TOKEN_$name" '%s' "$(jq -r .token "$W/reg")"
	printf -v "KEY_$name" '%s' "$(jq -r .content_key "$W/reg")"
	printf -v "HASH_$name" '%s' "$hash"
}

wake() {
	REDISCLI_AUTH="$(<"$MICA_REDIS_PASSWORD_FILE_PUSH")" redis-cli -s "$MICA_REDIS_SOCKET" \
		--user push --no-auth-warning PUBLISH push:wake "W $1 $2 $3 $4" >/dev/null ||
		fail "publishing a wake"
}

enqueue() {
	local regid="$1" key="$2" payload="$3"
	MSG="m$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
	BODY="$(printf '%s' "$key" | "$SEAL" seal "$regid" "$MSG" "$APP" com.example.news "$payload")" ||
		fail "sealing a message"
	sql "$ADMIN_CI" "INSERT INTO push.message (msg_id, app_id, target, created_at, expires_at,
		queued) VALUES ('$MSG', '$APP', 'regid', now(), now() + interval '1 day', 1)" >/dev/null ||
		fail "inserting a message"
	SEQ="$(sql "$ADMIN_CI" "INSERT INTO push.queue (regid, msg_id, app_id, expires_at, body)
		VALUES ('$regid', '$MSG', '$APP', now() + interval '1 day',
		decode('$BODY', 'base64')) RETURNING seq")" || fail "inserting a queue row"
	if [[ "${4:-}" == wake ]]; then wake "$regid" "$SEQ" 0 "$BODY"; fi
}

queued() { sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$1'"; }

wait_sql() {
	local deadline=$((SECONDS + ${4:-5})) got
	while :; do
		got="$(sql "$1" "$2")"
		[[ "$got" == "$3" ]] && return 0
		((SECONDS < deadline)) || {
			echo "wait_sql: $2 -> $got, want $3" >&2
			return 1
		}
		sleep 0.1
	done
}

metric() {
	curl -sS --max-time 10 --cacert "$MICA_CA" "$1/metrics" >"$W/metrics" || fail "reading $1/metrics"
	awk -v n="$2" '$1 == n { v = $2 } END { print (v == "" ? 0 : v) }' "$W/metrics"
}

open_body() { printf '%s %s' "$2" "$3" | "$SEAL" open "$1"; }
