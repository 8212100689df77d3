#!/usr/bin/env bash
# test_device_push_e2e.sh - the device side end to end against mica-push's own broker (issue 21
# items 2 and 8): `mica-device push register` over HTTPS, then `mica-device push listen` on the
# broker's MQTT-over-TLS port receives what is queued for it (rows sealed by push_seal_message,
# queued as the developer API queues them: tests/integration/lib-push-broker.sh), in order, and
# its PUBACKs empty the queue; a redelivered message it already delivered before a restart is
# dropped and acknowledged; a message queued
# while the device is away arrives when it connects; the device comes back after mica-push is
# stopped and started again; a session taken over by MQTT.js (tests/interop/push-mqttjs.mjs, a
# client nobody here wrote) is resumed with the broker's TLS ticket when the device reconnects,
# and MQTT.js receives the sealed bytes of a queued message exactly.
set -euo pipefail
# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"

stack_begin test_device_push_e2e MICA_CERT_PUSH MICA_KEY_PUSH MICA_REDIS_SOCKET \
	MICA_REDIS_PASSWORD_FILE_PUSH
DEV="$BUILD/bin/mica-device"
[[ -x "$DEV" ]] || fail "$DEV is missing (make all)"
command -v node >/dev/null || fail "node is not installed (run deploy/install-deps)"
[[ -d tests/interop/node_modules/mqtt ]] || fail "tests/interop/node_modules/mqtt is missing (run deploy/install-deps)"

# ---------------------------------------------------------------------------------------------
step="setup"
stack_db_create
stack_push_setup
# shellcheck source=tests/integration/lib-push-broker.sh
. "$ROOT/tests/integration/lib-push-broker.sh"
start_push() { stack_start push "$PURL" "${PUSH_ENV[@]}" "$PUSH_BIN" --config deploy/mica.conf.example; }
start_push
broker_app
"$DEV" push register --url "$PURL" --ca "$MICA_CA" --app-id "$APP" --package com.example.news \
	--device-id1 861234567890123 --device-id2 R58M12345 --device-id3 9774d56d682e549c \
	--state "$W/state" >"$W/reg.out" 2>&1 || fail "register: $(cat "$W/reg.out")"
REGID="$(jq -r .regid "$W/state")"
KEY="$(jq -r .content_key "$W/state")"
ok "mica-push with its broker on port $BPORT; device $REGID registered by mica-device"

LISTEN_PID=""
stack_on_exit() { [[ -n "$LISTEN_PID" ]] && kill "$LISTEN_PID" 2>/dev/null; return 0; }

# listen NAME COUNT [options]: mica-device push listen in the background (LISTEN_PID).
listen() {
	local name="$1" count="$2"
	shift 2
	"$DEV" push listen --state "$W/state" --host 127.0.0.1 --port "$BPORT" --ca "$MICA_CA" \
		--count "$count" --timeout 60 "$@" >"$W/$name.out" 2>"$W/$name.err" &
	LISTEN_PID=$!
}
# wait_lines FILE PATTERN N: wait (20 s at most) until PATTERN matches N lines of FILE.
wait_lines() {
	local i n=0
	for ((i = 0; i < 400; i++)); do
		n="$(grep -c -- "$2" "$1" 2>/dev/null || true)"
		((n >= $3)) && return 0
		sleep 0.05
	done
	check_fail "waited for $3 lines matching '$2' in $(basename "$1"), have $n"
	return 1
}
# finish: wait for the background listen; its exit status in $rc.
finish() {
	rc=0
	wait "$LISTEN_PID" || rc=$?
	LISTEN_PID=""
}

# ---------------------------------------------------------------------------------------------
step="deliver"
enqueue "$REGID" "$KEY" "queued while away"
M0="$MSG"
listen l1 4
wait_lines "$W/l1.err" "event subscribed" 1 || fail "never subscribed: $(cat "$W/l1.err")"
wait_lines "$W/l1.out" "\"id\":\"$M0\"" 1 || true
enqueue "$REGID" "$KEY" "one" wake
M1="$MSG" B1="$BODY"
enqueue "$REGID" "$KEY" "two" wake
M2="$MSG"
enqueue "$REGID" "$KEY" "three" wake
M3="$MSG"
finish
[[ "$rc" == 0 ]] || check_fail "listen exit $rc: $(tail -5 "$W/l1.err")"
[[ "$(jq -r .id "$W/l1.out" | tr '\n' ' ')" == "$M0 $M1 $M2 $M3 " ]] ||
	check_fail "ids $(jq -r .id "$W/l1.out" | tr '\n' ' '), want $M0 $M1 $M2 $M3"
[[ "$(jq -r .payload "$W/l1.out" | tr '\n' '|')" == "queued while away|one|two|three|" ]] ||
	check_fail "payloads $(jq -r .payload "$W/l1.out" | tr '\n' '|')"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID'" 0 ||
	check_fail "the PUBACKs did not empty the queue: $(queued "$REGID") rows left"
ok "4 messages in order, the queue empty"

# ---------------------------------------------------------------------------------------------
step="redelivery"
# A PUBACK lost with the connection: the broker sends the row again (DUP, attempted). Here M1's
# row comes back after the device has restarted; its --seen file knows M1, so it is dropped and
# acknowledged, and only the next message is printed.
SEQ="$(sql "$ADMIN_CI" "INSERT INTO push.queue (regid, msg_id, app_id, expires_at, body, attempted)
	VALUES ('$REGID', '$M1', '$APP', now() + interval '1 day', decode('$B1', 'base64'), true)
	RETURNING seq")" || fail "queueing M1 again"
listen l1b 1
wait_lines "$W/l1b.err" "event dropped .* already_exists" 1 || true
enqueue "$REGID" "$KEY" "after the redelivery" wake
M4="$MSG"
finish
[[ "$rc" == 0 && "$(jq -r .id "$W/l1b.out" | tr '\n' ' ')" == "$M4 " ]] ||
	check_fail "exit $rc, printed $(jq -r .id "$W/l1b.out" | tr '\n' ' '), want $M4 only: $(cat "$W/l1b.err")"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID'" 0 ||
	check_fail "the duplicate was not acknowledged: $(queued "$REGID") rows left"
ok "the redelivered M1 dropped (the --seen file) and acknowledged; M4 printed"

# ---------------------------------------------------------------------------------------------
step="broker restart"
listen l2 2
wait_lines "$W/l2.err" "event subscribed" 1 || fail "never subscribed: $(cat "$W/l2.err")"
enqueue "$REGID" "$KEY" "before" wake
wait_lines "$W/l2.out" . 1 || true
stack_stop push
enqueue "$REGID" "$KEY" "while down"
M5="$MSG"
start_push
finish
[[ "$rc" == 0 && "$(jq -r .id "$W/l2.out" | tail -1)" == "$M5" ]] ||
	check_fail "after the restart: exit $rc, $(jq -r .id "$W/l2.out" | tr '\n' ' '): $(tail -5 "$W/l2.err")"
grep -q "event retry" "$W/l2.err" || check_fail "no retry was scheduled"
ok "mica-push stopped and started: the device came back and got what was queued meanwhile"

# ---------------------------------------------------------------------------------------------
step="takeover and resumption"
listen l3 1
wait_lines "$W/l3.err" "event subscribed" 1 || fail "never subscribed: $(cat "$W/l3.err")"
# MQTT.js connects as the same device: the broker closes the older connection (ours), which
# reconnects (kicking MQTT.js in turn) and offers the broker's ticket.
node tests/interop/push-mqttjs.mjs --state "$W/state" --host 127.0.0.1 --port "$BPORT" \
	--ca "$MICA_CA" --count 1 --timeout 5 >"$W/kick.out" 2>"$W/kick.err" || true
wait_lines "$W/l3.err" "event subscribed" 2 || true
grep -q "event connected 1" "$W/l3.err" || check_fail "the reconnect did not resume its TLS session: $(cat "$W/l3.err")"
enqueue "$REGID" "$KEY" "after takeover" wake
finish
[[ "$rc" == 0 ]] || check_fail "listen exit $rc: $(tail -5 "$W/l3.err")"
ok "taken over, reconnected with a resumed TLS session"

# ---------------------------------------------------------------------------------------------
step="MQTT.js"
node tests/interop/push-mqttjs.mjs --state "$W/state" --host 127.0.0.1 --port "$BPORT" \
	--ca "$MICA_CA" --count 1 --timeout 20 >"$W/mqttjs.out" 2>"$W/mqttjs.err" &
LISTEN_PID=$!
wait_lines "$W/mqttjs.err" "subscribed granted=1" 1 || fail "MQTT.js: $(cat "$W/mqttjs.err")"
enqueue "$REGID" "$KEY" "to MQTT.js" wake
finish
{ [[ "$rc" == 0 ]] && [[ "$(cat "$W/mqttjs.out")" == "$BODY" ]]; } ||
	check_fail "MQTT.js: exit $rc, got $(head -c 60 "$W/mqttjs.out"), want the body: $(cat "$W/mqttjs.err")"
[[ "$(open_body "$REGID" "$KEY" "$(base64 -d <<<"$BODY" | od -An -tx1 | tr -d ' \n')" | jq -r .payload)" == "to MQTT.js" ]] ||
	check_fail "the body MQTT.js got does not open to its payload"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID'" 0 ||
	check_fail "MQTT.js's PUBACK did not empty the queue (message $MSG): $(sql "$ADMIN_CI" "SELECT seq, msg_id, attempted FROM push.queue") $(cat "$W/mqttjs.err")"
ok "MQTT.js $(jq -r .version tests/interop/node_modules/mqtt/package.json) received and acknowledged the sealed message"

stack_end
