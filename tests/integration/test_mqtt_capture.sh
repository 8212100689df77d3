#!/usr/bin/env bash
# test_mqtt_capture.sh - the MQTT codec (mipush/mqtt.c) against clients nobody here wrote:
# Debian's mosquitto_sub and mosquitto_pub (mosquitto-clients, deploy/install-deps) connect to
# tests/peers/mqtt_capture, a one-connection "broker" built only from our decoder and encoder.
# For each client the peer records the bytes it sent and prints what our decoder made of them as
# they arrived (TCP's own split points); the test asserts the fields (client id, user name,
# password, will, topic, QoS, packet ids, payload and its SHA-256), checks that decoding the
# recording one byte at a time gives the same lines, and that mosquitto_sub accepts our
# CONNACK, SUBACK and QoS 1 PUBLISH (it prints the payload and acknowledges it with PUBACK).
# An MQTT 3.1 client is refused with our CONNACK return code 1, which it reports as such.
set -euo pipefail
BUILD=${MICA_BUILD:-build}
: "${MICA_TEST_DIR:?run through tests/run}"
fail() {
	echo "FAIL: $*"
	exit 1
}
ok() { echo "ok - $*"; }

peer="$BUILD/tests/peers/mqtt_capture"
[ -x "$peer" ] || fail "$peer not built (make all)"
for tool in mosquitto_sub mosquitto_pub; do
	command -v "$tool" >/dev/null || fail "$tool is not installed (run deploy/install-deps)"
done
ok "$(mosquitto_sub --help | sed -n 's/^mosquitto_sub version \([^ ]*\).*/mosquitto_sub \1/p')"

dir=$(mktemp -d "$MICA_TEST_DIR/mqtt.XXXXXX")
peer_pid=""
cleanup() {
	if [ -n "$peer_pid" ]; then kill "$peer_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

# start_peer NAME TOPIC PAYLOAD: run the peer in the background; sets $port.
start_peer() {
	local name=$1 i
	rm -f "$dir/$name.port"
	"$peer" serve "$dir/$name.port" "$dir/$name.raw" "$2" "$3" >"$dir/$name.out" \
		2>"$dir/$name.err" &
	peer_pid=$!
	for ((i = 0; i < 100; i++)); do
		[ -s "$dir/$name.port" ] && break
		kill -0 "$peer_pid" 2>/dev/null || fail "$name: peer exited: $(cat "$dir/$name.err")"
		sleep 0.05
	done
	[ -s "$dir/$name.port" ] || fail "$name: peer did not listen"
	port=$(cat "$dir/$name.port")
}

# end_peer NAME WANT_STATUS: wait for the peer; its status must be WANT_STATUS, and decoding its
# recording one byte at a time must print what it printed live.
end_peer() {
	local name=$1 want=$2 status=0
	wait "$peer_pid" || status=$?
	peer_pid=""
	[ "$status" = "$want" ] ||
		fail "$name: peer exit $status, want $want: $(cat "$dir/$name.err" "$dir/$name.out")"
	if [ "$want" = 0 ]; then
		"$peer" decode "$dir/$name.raw" >"$dir/$name.bytewise" ||
			fail "$name: the recording does not decode byte by byte: $(cat "$dir/$name.bytewise")"
		diff -u "$dir/$name.out" "$dir/$name.bytewise" ||
			fail "$name: byte-at-a-time decoding differs from the live decoding"
	fi
}

# expect_lines NAME LINE...: the peer printed exactly these lines.
expect_lines() {
	local name=$1
	shift
	printf '%s\n' "$@" >"$dir/$name.want"
	diff -u "$dir/$name.want" "$dir/$name.out" || fail "$name: decoded packets differ"
}

# 1. mosquitto_sub: CONNECT with credentials and a will, SUBSCRIBE QoS 1; our SUBACK and our
#    QoS 1 PUBLISH (sent in two writes cut after its first byte) are accepted: it prints the
#    message and acknowledges id 7 before disconnecting.
start_peer sub a/b "hello from mica"
got=$(timeout 30 mosquitto_sub -V mqttv311 -h 127.0.0.1 -p "$port" -i someid -u u -P p \
	-t a/b -q 1 -C 1 -v -W 10 -k 30 --will-topic dev/gone --will-payload bye \
	--will-qos 1 --will-retain 2>"$dir/sub.client-err") ||
	fail "mosquitto_sub failed: $(cat "$dir/sub.client-err")"
end_peer sub 0
[ "$got" = "a/b hello from mica" ] || fail "mosquitto_sub printed '$got'"
expect_lines sub \
	"CONNECT client_id=someid username=u password=p clean=1 keepalive=30 will=1 will_topic=dev/gone will_qos=1 will_retain=1 will_message=bye" \
	"SUBSCRIBE id=1 a/b:1" \
	"PUBACK id=7" \
	"DISCONNECT"
ok "mosquitto_sub: CONNECT (id, user, password, will, keepalive) and SUBSCRIBE decoded; our CONNACK, SUBACK and PUBLISH accepted ('$got', PUBACK id 7)"

# 2. mosquitto_pub QoS 1, with a UTF-8 user name and password: our PUBACK ends it.
start_peer pub a/b unused
timeout 30 mosquitto_pub -V mqttv311 -h 127.0.0.1 -p "$port" -i pubid -u 'user-ü' \
	-P 'pässwörd' -q 1 -m hello -t a/b 2>"$dir/pub.client-err" ||
	fail "mosquitto_pub failed: $(cat "$dir/pub.client-err")"
end_peer pub 0
hello_sha=$(printf hello | sha256sum | cut -d' ' -f1)
expect_lines pub \
	"CONNECT client_id=pubid username=hex:$(printf 'user-ü' | od -An -tx1 | tr -d ' \n') password=hex:$(printf 'pässwörd' | od -An -tx1 | tr -d ' \n') clean=1 keepalive=60 will=0" \
	"PUBLISH qos=1 dup=0 retain=0 id=1 topic=a/b len=5 sha256=$hello_sha payload=hello" \
	"DISCONNECT"
ok "mosquitto_pub -q 1: UTF-8 user name, password, topic, QoS, id and payload decoded; our PUBACK accepted"

# 3. mosquitto_pub QoS 2, retained, a 200,000-byte binary payload that arrives in many TCP
#    reads (the decoder gathers it in its buffer): our PUBREC and PUBCOMP complete the flow.
head -c 200000 /dev/urandom >"$dir/big"
big_sha=$(sha256sum "$dir/big" | cut -d' ' -f1)
start_peer big a/b unused
timeout 30 mosquitto_pub -V mqttv311 -h 127.0.0.1 -p "$port" -i bigid -q 2 -r \
	-f "$dir/big" -t dev/regid-1 2>"$dir/big.client-err" ||
	fail "mosquitto_pub -q 2 failed: $(cat "$dir/big.client-err")"
end_peer big 0
expect_lines big \
	"CONNECT client_id=bigid clean=1 keepalive=60 will=0" \
	"PUBLISH qos=2 dup=0 retain=1 id=1 topic=dev/regid-1 len=200000 sha256=$big_sha" \
	"PUBREL id=1" \
	"DISCONNECT"
ok "mosquitto_pub -q 2 -r: 200,000-byte payload decoded intact (SHA-256 equal); our PUBREC and PUBCOMP accepted"

# 4. A persistent session subscribing to two filters (one with wildcards) at QoS 2 and
#    unsubscribing from one: our UNSUBACK is accepted.
start_peer unsub c/x/y x
got=$(timeout 30 mosquitto_sub -V mqttv311 -h 127.0.0.1 -p "$port" -i unsubid -c \
	-t a/b -t 'c/+/#' -q 2 -U a/b -C 1 -W 10 2>"$dir/unsub.client-err") ||
	fail "mosquitto_sub -U failed: $(cat "$dir/unsub.client-err")"
end_peer unsub 0
[ "$got" = x ] || fail "mosquitto_sub -U printed '$got'"
# With -U and -C 1 mosquitto_sub 2.0.11 often closes right after its PUBACK without sending
# DISCONNECT (timing-dependent: the message can arrive before the UNSUBACK); the packet is the
# client's choice there, so a trailing DISCONNECT is optional in this case only.
sed -i '${/^DISCONNECT$/d}' "$dir/unsub.out"
expect_lines unsub \
	"CONNECT client_id=unsubid clean=0 keepalive=60 will=0" \
	"SUBSCRIBE id=1 a/b:2 c/+/#:2" \
	"UNSUBSCRIBE id=2 a/b" \
	"PUBACK id=7"
ok "mosquitto_sub -c -U: clean session 0, two filters, UNSUBSCRIBE decoded; our UNSUBACK accepted"

# 5. An MQTT 3.1 client ("MQIsdp", level 3): refused by name, answered with our CONNACK 1,
#    which the client reports as an unacceptable protocol version.
start_peer v31 a/b unused
status=0
timeout 30 mosquitto_sub -V mqttv31 -h 127.0.0.1 -p "$port" -i old -t a/b -W 10 \
	>/dev/null 2>"$dir/v31.client-err" || status=$?
end_peer v31 1
[ "$status" != 0 ] || fail "mosquitto_sub -V mqttv31 succeeded"
grep -q "unacceptable protocol version" "$dir/v31.client-err" ||
	fail "mosquitto_sub -V mqttv31 said: $(cat "$dir/v31.client-err")"
expect_lines v31 "REFUSED unsupported_version bad_protocol_level"
ok "MQTT 3.1 CONNECT refused as bad_protocol_level; the client read our CONNACK 1: $(cat "$dir/v31.client-err")"
