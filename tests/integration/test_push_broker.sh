#!/usr/bin/env bash
# test_push_broker.sh - the push long connection (issue 21 item 2, item 7's malformed MQTT)
# against real PostgreSQL, Redis and the Key Center: a registered device connects over TLS with
# Debian's mosquitto_sub (regid + token) and gets a message queued while it was offline, sealed
# for it (opened here); its queue row is gone after PUBACK and the delivery counted; a message
# woken over Redis reaches a connected device; a wrong token, an unknown regid and a token
# replaced by re-registration are refused with CONNACK 5; a subscription to another topic gets
# SUBACK 0x80; messages left without PUBACK come again with DUP; keepalive, PINGREQ and
# DISCONNECT; PUBLISH from the device, a second CONNECT, a bad remaining length, an oversize
# packet, a wrong protocol name and slowloris (handshake and CONNECT) end the connection, the
# daemon lives on, and /metrics counts each by reason.
set -euo pipefail
# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"

stack_begin test_push_broker MICA_CERT_PUSH MICA_KEY_PUSH MICA_REDIS_SOCKET \
	MICA_REDIS_PASSWORD_FILE_PUSH
command -v mosquitto_sub >/dev/null || fail "mosquitto_sub is not installed (deploy/install-deps)"

step="setup"
stack_db_create
stack_push_setup
# shellcheck source=tests/integration/lib-push-broker.sh
. "$ROOT/tests/integration/lib-push-broker.sh"
mica_free_port MPORT
MURL="https://localhost:$MPORT"
stack_start push "$PURL" "${PUSH_ENV[@]}" "MICA_PUSH_HTTP_METRICS_PORT=$MPORT" \
	MICA_PUSH_BROKER_HANDSHAKE_TIMEOUT_MS=1500 MICA_PUSH_BROKER_MAX_PACKET=1K \
	"$PUSH_BIN" --config deploy/mica.conf.example
broker_app
broker_device A
broker_device B
ok "mica-push with its broker on port $BPORT; app $APP, devices A and B"

# dev REGID TOKEN_VAR [push_device options...]: the C test device against the broker.
dev() {
	local regid="$1" tv="$2"
	shift 2
	"$DEVICE" --ca "$MICA_CA" --id "$regid" --token-env "$tv" "$@" 127.0.0.1 "$BPORT"
}
# Device tokens travel in the environment of the test devices, never on a command line.
export TOKEN_A TOKEN_B
drops() { metric "$MURL" "mica_push_broker_disconnects_total{reason=\"$1\"}"; }

# ---------------------------------------------------------------------------------------------
step="offline message, mosquitto_sub"
enqueue "$REGID_A" "$KEY_A" "hello while offline"
M1="$MSG"
[[ "$(queued "$REGID_A")" == 1 ]] || check_fail "the message is not queued"
out="$(mosquitto_sub -h localhost -p "$BPORT" --cafile "$MICA_CA" -i "$REGID_A" -u device \
	-P "$TOKEN_A" -t "d/$REGID_A" -q 1 -C 1 -W 20 -F '%x' 2>"$W/sub.err")" ||
	check_fail "mosquitto_sub: $(cat "$W/sub.err")"
json="$(open_body "$REGID_A" "$KEY_A" "$out")" || check_fail "the payload does not open for A: $out"
[[ "$(jq -r .id <<<"$json")" == "$M1" && "$(jq -r .payload <<<"$json")" == "hello while offline" &&
	"$(jq -r .type <<<"$json")" == pass_through ]] || check_fail "payload: $json"
open_body "$REGID_B" "$KEY_A" "$out" >/dev/null 2>&1 &&
	check_fail "a message sealed for A opens as B's (AAD)"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID_A'" 0 ||
	check_fail "the queue row is still there after PUBACK"
wait_sql "$ADMIN_CI" "SELECT delivered FROM push.message WHERE msg_id = '$M1'" 1 ||
	check_fail "message trace: delivered not 1"
[[ "$(sql "$ADMIN_CI" "SELECT sum(delivered) FROM push.stat_daily WHERE app_id = '$APP'")" == 1 ]] ||
	check_fail "stat_daily: delivered not 1"
ok "mosquitto_sub got it; the row is gone after PUBACK; delivered counted once"

# ---------------------------------------------------------------------------------------------
step="online message, woken over Redis"
dev "$REGID_A" TOKEN_A --count 1 --timeout 20000 >"$W/a.out" 2>&1 &
apid=$!
deadline=$((SECONDS + 10))
until grep -q '^suback 1$' "$W/a.out"; do
	((SECONDS < deadline)) || fail "device A did not subscribe: $(cat "$W/a.out")"
	sleep 0.1
done
enqueue "$REGID_A" "$KEY_A" "hello online" wake
M2="$MSG"
wait "$apid" || true
grep -q "^msg pid=[0-9]* dup=0 qos=1 topic=d/$REGID_A hex=" "$W/a.out" ||
	check_fail "device A: $(cat "$W/a.out")"
hex="$(sed -n 's/^msg .* hex=//p' "$W/a.out" | head -n 1)"
[[ "$(open_body "$REGID_A" "$KEY_A" "$hex" | jq -r .id)" == "$M2" ]] || check_fail "not message $M2"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID_A'" 0 ||
	check_fail "row of the woken message left"
ok "delivered on the wake, acknowledged, deleted"

# ---------------------------------------------------------------------------------------------
step="authentication"
before="$(metric "$MURL" mica_push_broker_auth_failures_total)"
WRONG="$TOKEN_B"
export WRONG
dev "$REGID_A" WRONG >"$W/x.out" 2>&1 || true
{ [[ "$(head -n 1 "$W/x.out")" == "connack 5" ]] && grep -q '^closed$' "$W/x.out"; } ||
	check_fail "a wrong token: $(cat "$W/x.out")"
dev "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" TOKEN_A >"$W/x.out" 2>&1 || true
[[ "$(head -n 1 "$W/x.out")" == "connack 5" ]] || check_fail "an unknown regid: $(cat "$W/x.out")"
dev "bad/id" TOKEN_A >"$W/x.out" 2>&1 || true
[[ "$(head -n 1 "$W/x.out")" == "connack 2" ]] || check_fail "a malformed client id: $(cat "$W/x.out")"
rc=0
mosquitto_sub -h localhost -p "$BPORT" --cafile "$MICA_CA" -i "$REGID_A" -u device -P "nope" \
	-t "d/$REGID_A" -q 1 -C 1 -W 10 >/dev/null 2>"$W/sub.err" || rc=$?
{ [[ "$rc" != 0 ]] && grep -qi 'not authori' "$W/sub.err"; } ||
	check_fail "mosquitto_sub with a wrong password: rc $rc, $(cat "$W/sub.err")"
after="$(metric "$MURL" mica_push_broker_auth_failures_total)"
((after == before + 3)) || check_fail "auth failures counted $before -> $after, want +3"
# Re-registration gives a new token; the old one (verified and cached before) stops working.
OLD_TOKEN="$TOKEN_A"
export OLD_TOKEN
broker_device A "$HASH_A"
export TOKEN_A
[[ "$OLD_TOKEN" != "$TOKEN_A" ]] || check_fail "re-registration kept the token"
dev "$REGID_A" OLD_TOKEN >"$W/x.out" 2>&1 || true
[[ "$(head -n 1 "$W/x.out")" == "connack 5" ]] || check_fail "the replaced token: $(cat "$W/x.out")"
dev "$REGID_A" TOKEN_A --count 0 >"$W/x.out" 2>&1 || true
[[ "$(head -n 1 "$W/x.out")" == "connack 0" ]] || check_fail "the new token: $(cat "$W/x.out")"
hits0="$(metric "$MURL" mica_push_broker_auth_cache_hits_total)"
dev "$REGID_A" TOKEN_A --count 0 >"$W/x.out" 2>&1 || true
hits1="$(metric "$MURL" mica_push_broker_auth_cache_hits_total)"
((hits1 == hits0 + 1)) || check_fail "a reconnect did not hit the token cache: $hits0 -> $hits1"
ok "wrong token, unknown regid (CONNACK 5), bad client id (2); replaced token refused; cache hit on reconnect"

# ---------------------------------------------------------------------------------------------
step="subscriptions"
dev "$REGID_A" TOKEN_A --topic "d/$REGID_B" --count 0 >"$W/x.out" 2>&1 || true
grep -q '^suback 128$' "$W/x.out" || check_fail "another device's topic: $(cat "$W/x.out")"
dev "$REGID_A" TOKEN_A --topic "d/#" --count 0 >"$W/x.out" 2>&1 || true
grep -q '^suback 128$' "$W/x.out" || check_fail "a wildcard: $(cat "$W/x.out")"
# A refused subscription delivers nothing.
enqueue "$REGID_A" "$KEY_A" "not for the wrong topic"
dev "$REGID_A" TOKEN_A --topic "d/$REGID_B" --count 1 --timeout 1500 >"$W/x.out" 2>&1 || true
grep -q '^msg ' "$W/x.out" && check_fail "delivered without the device's own subscription"
ok "SUBACK 0x80 for another topic and for wildcards"

# ---------------------------------------------------------------------------------------------
step="redelivery with DUP"
enqueue "$REGID_A" "$KEY_A" "second"
enqueue "$REGID_A" "$KEY_A" "third"
dev "$REGID_A" TOKEN_A --count 3 --no-ack >"$W/r1.out" 2>&1 || true
[[ "$(grep -c '^msg .* dup=0 ' "$W/r1.out")" == 3 ]] || check_fail "first round: $(cat "$W/r1.out")"
wait_sql "$ADMIN_CI" "SELECT count(*) FILTER (WHERE attempted) FROM push.queue WHERE regid = '$REGID_A'" 3 ||
	check_fail "rows not marked attempted after the connection closed"
red0="$(metric "$MURL" mica_push_broker_messages_redelivered_total)"
dev "$REGID_A" TOKEN_A --count 3 >"$W/r2.out" 2>&1 || true
[[ "$(grep -c '^msg .* dup=1 ' "$W/r2.out")" == 3 ]] || check_fail "second round: $(cat "$W/r2.out")"
ids1="$(sed -n 's/^msg .* hex=//p' "$W/r1.out" | while read -r h; do open_body "$REGID_A" "$KEY_A" "$h" | jq -r .id; done)"
ids2="$(sed -n 's/^msg .* hex=//p' "$W/r2.out" | while read -r h; do open_body "$REGID_A" "$KEY_A" "$h" | jq -r .id; done)"
[[ -n "$ids1" && "$ids1" == "$ids2" ]] || check_fail "redelivered other messages: $ids1 / $ids2"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID_A'" 0 ||
	check_fail "rows left after the second round's PUBACKs"
red1="$(metric "$MURL" mica_push_broker_messages_redelivered_total)"
((red1 == red0 + 3)) || check_fail "redelivered counted $red0 -> $red1"
ok "3 unacknowledged messages came again with DUP=1, in order, then were deleted"

# ---------------------------------------------------------------------------------------------
step="inflight window"
for i in $(seq 1 25); do enqueue "$REGID_B" "$KEY_B" "w$i"; done
dev "$REGID_B" TOKEN_B --count 25 --no-ack --timeout 1500 >"$W/w.out" 2>&1 || true
[[ "$(grep -c '^msg ' "$W/w.out")" == 20 ]] ||
	check_fail "unacknowledged in flight: $(grep -c '^msg ' "$W/w.out"), want 20"
dev "$REGID_B" TOKEN_B --count 25 >"$W/w.out" 2>&1 || true
[[ "$(grep -c '^msg ' "$W/w.out")" == 25 ]] || check_fail "with PUBACKs: $(grep -c '^msg ' "$W/w.out")"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID_B'" 0 ||
	check_fail "rows of B left"
ok "20 in flight without PUBACK (push.broker.inflight), all 25 with"

# ---------------------------------------------------------------------------------------------
step="a burst of wakes"
# 60 messages committed at once and woken in one Redis message: more than the broker holds for
# a device (2 x inflight); those it leaves are read from the queue as the device acknowledges.
: >"$W/burst.sql"
: >"$W/burst.ids"
wakes=""
for i in $(seq 1 60); do
	id="burst$i-$RANDOM"
	body="$(printf '%s' "$KEY_B" | "$SEAL" seal "$REGID_B" "$id" "$APP" com.example.news "b$i")"
	echo "$id" >>"$W/burst.ids"
	printf "INSERT INTO push.message (msg_id, app_id, target, created_at, expires_at, queued) VALUES ('%s', '%s', 'regid', now(), now() + interval '1 day', 1);\n" "$id" "$APP" >>"$W/burst.sql"
	printf "INSERT INTO push.queue (regid, msg_id, app_id, expires_at, body) VALUES ('%s', '%s', '%s', now() + interval '1 day', decode('%s', 'base64'));\n" "$REGID_B" "$id" "$APP" "$body" >>"$W/burst.sql"
done
dev "$REGID_B" TOKEN_B --count 60 --timeout 20000 >"$W/burst.out" 2>&1 &
bpid=$!
deadline=$((SECONDS + 10))
until grep -q '^suback 1$' "$W/burst.out"; do
	((SECONDS < deadline)) || fail "device B did not subscribe: $(cat "$W/burst.out")"
	sleep 0.1
done
psql "$ADMIN_CI" -X -q -1 -v ON_ERROR_STOP=1 -f "$W/burst.sql" >/dev/null ||
	fail "inserting the burst"
while IFS='|' read -r seq b64; do
	wakes+="W $REGID_B $seq 0 $b64"$'\n'
done < <(sql "$ADMIN_CI" "SELECT seq, translate(encode(body, 'base64'), E'\\n', '') FROM push.queue
	WHERE regid = '$REGID_B' ORDER BY seq")
REDISCLI_AUTH="$(<"$MICA_REDIS_PASSWORD_FILE_PUSH")" redis-cli -s "$MICA_REDIS_SOCKET" --user push \
	--no-auth-warning PUBLISH push:wake "${wakes%$'\n'}" >/dev/null || fail "publishing the burst"
wait "$bpid" || true
sed -n 's/^msg .* hex=//p' "$W/burst.out" | while read -r h; do open_body "$REGID_B" "$KEY_B" "$h" | jq -r .id; done |
	sort >"$W/burst.got"
[[ "$(sort -u "$W/burst.got")" == "$(sort "$W/burst.ids")" ]] ||
	check_fail "burst: $(sort -u "$W/burst.got" | wc -l) distinct of 60 arrived"
[[ "$(wc -l <"$W/burst.got")" == 60 ]] || check_fail "burst: $(wc -l <"$W/burst.got") deliveries for 60"
wait_sql "$ADMIN_CI" "SELECT count(*) FROM push.queue WHERE regid = '$REGID_B'" 0 || check_fail "burst rows left"
ok "60 woken at once: each arrived once"

# ---------------------------------------------------------------------------------------------
step="keepalive, PINGREQ, DISCONNECT"
k0="$(drops keepalive_timeout)"
dev "$REGID_A" TOKEN_A --keepalive 1 --after c000 --timeout 6000 >"$W/x.out" 2>&1 || true
{ grep -q '^packet PINGRESP$' "$W/x.out" && grep -q '^closed$' "$W/x.out"; } ||
	check_fail "PINGREQ then silence: $(cat "$W/x.out")"
k1="$(drops keepalive_timeout)"
((k1 == k0 + 1)) || check_fail "keepalive timeouts $k0 -> $k1"
d0="$(drops client_disconnect)"
dev "$REGID_A" TOKEN_A --after e000 >"$W/x.out" 2>&1 || true
grep -q '^closed$' "$W/x.out" || check_fail "DISCONNECT: $(cat "$W/x.out")"
((d0 + 1 == $(drops client_disconnect))) || check_fail "client_disconnect not counted"
ok "PINGRESP; closed 1.5 x keepalive later; DISCONNECT"

# ---------------------------------------------------------------------------------------------
step="protocol violations"
# violation REASON DESCRIPTION push_device-options...: the broker closes and counts REASON.
violation() {
	local reason="$1" what="$2" v0 v1
	shift 2
	v0="$(drops "$reason")"
	"$DEVICE" --ca "$MICA_CA" "$@" 127.0.0.1 "$BPORT" >"$W/v.out" 2>&1 || true
	grep -q '^closed$' "$W/v.out" || check_fail "$what: not closed: $(cat "$W/v.out")"
	v1="$(drops "$reason")"
	((v1 == v0 + 1)) || check_fail "$what: $reason counted $v0 -> $v1"
	echo "ok - $step: $what -> closed, $reason counted"
}
# PUBLISH QoS 0 to d/<A> "x" after the subscription.
topic_hex="$(printf 'd/%s' "$REGID_A" | od -An -tx1 | tr -d ' \n')"
tl="$(printf '%04x' $((2 + ${#REGID_A})))"
rl="$(printf '%02x' $((2 + 2 + ${#REGID_A} + 1)))"
violation publish_from_device "PUBLISH from the device" --id "$REGID_A" --token-env TOKEN_A \
	--after "30${rl}${tl}${topic_hex}78"
# A second CONNECT (a minimal valid one: client id "x").
violation second_connect "a second CONNECT" --id "$REGID_A" --token-env TOKEN_A \
	--after 100d00044d5154540402003c000178
m0="$(metric "$MURL" 'mica_push_broker_malformed_total{reason="bad_remaining_length"}')"
violation malformed "a 5-byte remaining length" --raw 10ffffffff01
m1="$(metric "$MURL" 'mica_push_broker_malformed_total{reason="bad_remaining_length"}')"
((m1 == m0 + 1)) || check_fail "malformed{bad_remaining_length} $m0 -> $m1"
violation oversize "a packet over max_packet (5000 > 1K)" --raw 108827
violation wrong_protocol "protocol name MQTX" --raw 100d00044d5154580402003c000178
violation wrong_protocol "protocol level 5" --raw 100d00044d5154540502003c000178
violation not_connected "SUBSCRIBE before CONNECT" --raw 8206000100017800
violation handshake_timeout "slowloris TLS handshake (a byte each 400 ms)" --plain --trickle 400 \
	--raw 1603010200010001fc0303
violation connect_timeout "TLS but no CONNECT" --raw "" --timeout 5000
violation slow_packet "a CONNECT a byte per TLS record, each 400 ms" --trickle 400 \
	--raw 100d00044d5154540402003c000178
kill -0 "${STACK_PID[push]}" || fail "mica-push died"
ok "each violation closed its connection; the daemon lives"

stack_stop push
stack_end
