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
#   push_node NAME [ENV...]      starts a mica-push "push<NAME>" with its own HTTPS, metrics and
#                                broker ports: URL_<NAME>, MURL_<NAME>, BPORT_<NAME>
#   node_dev NODE REGID TOKEN_VAR [OPTIONS...]
#                                the C test device (tests/peers/push_device) against node NODE
#   ids FILE REGID KEY           the message ids in a test device's output FILE, one per line
#   wait_line FILE REGEX         waits (10 s) until FILE has a line matching REGEX

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

# push_node NAME: a mica-push with its own HTTPS, metrics and broker ports: URL_<NAME>, MURL_<NAME>,
# BPORT_<NAME>; extra environment assignments may follow the name.
push_node() {
	local name="$1" hp mp bp
	shift
	mica_free_port hp
	mica_free_port mp
	mica_free_port bp
	printf -v "URL_$name" '%s' "https://localhost:$hp"
	printf -v "MURL_$name" '%s' "https://localhost:$mp"
	printf -v "BPORT_$name" '%s' "$bp"
	stack_start "push$name" "https://localhost:$hp" "${PUSH_ENV[@]}" "MICA_PUSH_HTTP_PORT=$hp" \
		"MICA_PUSH_HTTP_METRICS_PORT=$mp" "MICA_PUSH_BROKER_PORT=$bp" "$@" "$PUSH_BIN" \
		--config deploy/mica.conf.example
}

# node_dev NODE REGID TOKEN_VAR [options...]
node_dev() {
	local port="BPORT_$1" regid="$2" tv="$3"
	shift 3
	"$DEVICE" --ca "$MICA_CA" --id "$regid" --token-env "$tv" "$@" 127.0.0.1 "${!port}"
}
# ids FILE REGID KEY: the message ids of the device's output FILE, one per line.
ids() {
	local h
	sed -n 's/^msg .* hex=//p' "$1" | while read -r h; do open_body "$2" "$3" "$h" | jq -r .id; done
}
wait_line() { # FILE REGEX: until FILE has a line matching REGEX (10 s)
	local deadline=$((SECONDS + 10))
	until grep -q "$2" "$1"; do
		((SECONDS < deadline)) || fail "no '$2' in $1: $(cat "$1")"
		sleep 0.1
	done
}
