#!/usr/bin/env bash
# test_push_e2e.sh - issue 21 end to end, every message sent through the developer API
# (POST /v3/message/*, as a MiPush server SDK sends): Debian's mosquitto_sub, connected with a
# regid and token, receives a pass-through message whose id is the one the API answered, sealed
# for that device only; the trace counts it delivered and the queue is empty; a notification sent
# to an alias reaches the device that holds the alias; and kill -9 of the node a device is
# connected to, while a developer sends through another node, loses none of the messages the API
# acknowledged: each arrives after the device reconnects (at least once; by message id).
set -euo pipefail
# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"

stack_begin test_push_e2e MICA_CERT_PUSH MICA_KEY_PUSH MICA_REDIS_SOCKET MICA_REDIS_PASSWORD_FILE_PUSH
command -v mosquitto_sub >/dev/null || fail "mosquitto_sub is not installed (deploy/install-deps)"

step="setup"
stack_db_create
stack_push_setup
# shellcheck source=tests/integration/lib-push-broker.sh
. "$ROOT/tests/integration/lib-push-broker.sh"
push_node A
push_node B
PURL="$URL_A"
broker_app
broker_device D
broker_device E
export TOKEN_D TOKEN_E
ok "nodes A (broker $BPORT_A) and B (broker $BPORT_B) on one database and Redis"

# send URL ROUTE FIELD=VALUE...: a developer request (form, app secret); the message id in SENT.
send() {
	local url="$1" route="$2" st f args=()
	shift 2
	for f in "$@"; do args+=(--data-urlencode "$f"); done
	st="$(curl -sS --max-time 30 --cacert "$MICA_CA" -o "$W/sent" -w '%{http_code}' \
		-H "Authorization: key=$APP_SECRET" "${args[@]}" \
		--data-urlencode restricted_package_name=com.example.news "$url$route")"
	[[ "$st" == 200 && "$(jq -r .result "$W/sent")" == ok ]] || fail "$route: $st $(cat "$W/sent")"
	SENT="$(jq -r .data.id "$W/sent")"
}

# ---------------------------------------------------------------------------------------------
step="API to mosquitto_sub"
send "$URL_B" /v3/message/regid "registration_id=$REGID_D" pass_through=1 "payload=hello D"
mosquitto_sub -h localhost -p "$BPORT_A" --cafile "$MICA_CA" -i "$REGID_D" -u device \
	-P "$TOKEN_D" -t "d/$REGID_D" -q 1 -C 1 -W 20 -F '%x' >"$W/sub.out" 2>"$W/sub.err" ||
	check_fail "mosquitto_sub: $(cat "$W/sub.err")"
json="$(open_body "$REGID_D" "$KEY_D" "$(cat "$W/sub.out")")" || check_fail "the payload does not open for D"
[[ "$(jq -r .id <<<"$json")" == "$SENT" && "$(jq -r .payload <<<"$json")" == "hello D" &&
	"$(jq -r .type <<<"$json")" == pass_through ]] || check_fail "D got $json, sent $SENT"
open_body "$REGID_E" "$KEY_D" "$(cat "$W/sub.out")" >/dev/null 2>&1 && check_fail "D's message opens as E's"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID_D'" 0 ||
	check_fail "D's queue row is left after PUBACK"
trace() {
	curl -sS --max-time 10 --cacert "$MICA_CA" -G -H "Authorization: key=$APP_SECRET" \
		--data-urlencode "msg_id=$1" "$URL_A/v1/trace/message/status" >"$W/trace"
	jq -r '.data.data.delivered // empty' "$W/trace"
}
deadline=$((SECONDS + 10))
until [[ "$(trace "$SENT")" == 1 ]]; do
	((SECONDS < deadline)) || check_fail "the trace does not count the delivery: $(cat "$W/trace")"
	sleep 0.2
done
ok "sent through B's API, delivered by A to mosquitto_sub, opened, acknowledged, traced"

# ---------------------------------------------------------------------------------------------
step="notification to an alias"
send "$URL_A" /v2/alias/subscribe "registration_id=$REGID_E" aliases=alice
node_dev A "$REGID_E" TOKEN_E --count 1 --timeout 20000 >"$W/e.out" 2>&1 &
epid=$!
wait_line "$W/e.out" '^suback 1$'
send "$URL_B" /v3/message/alias alias=alice pass_through=0 "title=Hi" "description=from alias"
wait "$epid" || true
h="$(sed -n 's/^msg .* hex=//p' "$W/e.out")"
json="$(open_body "$REGID_E" "$KEY_E" "$h")" || check_fail "E's notification does not open: $(cat "$W/e.out")"
[[ "$(jq -r .id <<<"$json")" == "$SENT" && "$(jq -r .type <<<"$json")" == notification &&
	"$(jq -r .title <<<"$json")" == Hi && "$(jq -r .description <<<"$json")" == "from alias" ]] ||
	check_fail "E got $json"
ok "a notification to alias alice reached E, online, through the wake"

# ---------------------------------------------------------------------------------------------
step="kill -9 while a developer sends"
node_dev A "$REGID_E" TOKEN_E --count 40 --timeout 30000 >"$W/k1.out" 2>&1 &
kpid=$!
wait_line "$W/k1.out" '^suback 1$'
: >"$W/acked"
for i in $(seq 1 40); do
	send "$URL_B" /v3/message/regid "registration_id=$REGID_E" pass_through=1 "payload=flow $i"
	echo "$SENT" >>"$W/acked"
	if ((i == 20)); then
		kill -KILL "${STACK_PID[pushA]}"
		STACK_PID[pushA]=""
	fi
done
wait "$kpid" || true
node_dev B "$REGID_E" TOKEN_E --count 40 --timeout 3000 >"$W/k2.out" 2>&1 || true
{
	ids "$W/k1.out" "$REGID_E" "$KEY_E"
	ids "$W/k2.out" "$REGID_E" "$KEY_E"
} | sort -u >"$W/got"
missing="$(sort "$W/acked" | comm -23 - "$W/got" | wc -l)"
((missing == 0)) || check_fail "$missing of the 40 acknowledged messages never arrived"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID_E'" 0 ||
	check_fail "rows left after B delivered"
echo "# kill -9: $(grep -c '^msg ' "$W/k1.out") delivered by A before it died, $(grep -c '^msg ' "$W/k2.out") by B after"
ok "A killed after 20 of 40 sends: every message id the API answered arrived"

stack_end
