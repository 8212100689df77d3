#!/usr/bin/env bash
# test_device_push.sh - libmicadev's push client (`mica-device push listen`, issue 21 item 8)
# against a broker nobody here wrote: Debian's mosquitto 2.0 with a TLS listener on the test
# server certificate. Messages are sealed by tests/peers/push_seal (the server's own
# push_seal_message) and published to d/<regid> with mosquitto_pub. The client must print the
# messages that open for it, drop a duplicate (same bytes, and a re-sealed copy of the same id),
# a message sealed for another regid, one under another key and a tampered one; report a
# deleted_messages marker once; come back after mosquitto is killed and started again; resume
# its TLS session when it reconnects to the same broker; remember delivered ids across a
# restart (the --seen file); ping at the keep-alive; refuse a broker whose certificate the CA
# did not sign; exit 1 when the broker refuses its credentials; and answer usage errors with 64.
# MQTT.js (tests/interop/push-mqttjs.mjs) receives a sealed message over TLS as well.
set -euo pipefail
BUILD=${MICA_BUILD:-build}
: "${MICA_TEST_DIR:?run through tests/run}"
for v in MICA_CA MICA_CA_ROGUE MICA_CERT_SERVER MICA_KEY_SERVER; do
	[[ -n "${!v:-}" ]] || {
		echo "test_device_push: $v is not set; run through tests/run"
		exit 1
	}
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=deploy/lib.sh
. "$ROOT/deploy/lib.sh"

failures=0
step="setup"
fail() {
	echo "FAIL: $step: $*"
	exit 1
}
check_fail() {
	echo "not ok - $step: $*"
	failures=$((failures + 1))
}
# ok NOTE: "ok", or "not ok" when a check failed since the previous ok.
ok_failures=0
ok() {
	if ((failures > ok_failures)); then echo "not ok - $step: $*"; else echo "ok - $step: $*"; fi
	ok_failures=$failures
}

DEV="$BUILD/bin/mica-device"
SEAL="$BUILD/tests/peers/push_seal"
for b in "$DEV" "$SEAL"; do [[ -x "$b" ]] || fail "$b is missing (make all)"; done
for t in mosquitto mosquitto_pub mosquitto_passwd; do
	command -v "$t" >/dev/null || fail "$t is not installed (run deploy/install-deps)"
done

W="$(mktemp -d "$MICA_TEST_DIR/device_push.XXXXXX")"
BROKER_PID=""
LISTEN_PID=""
cleanup() {
	[[ -n "$LISTEN_PID" ]] && kill "$LISTEN_PID" 2>/dev/null
	[[ -n "$BROKER_PID" ]] && kill "$BROKER_PID" 2>/dev/null
	if ((failures > 0)); then
		echo "--- files kept in $W"
		tail -n 20 "$W"/*.err "$W"/mosquitto*.log 2>/dev/null || true
	fi
	return 0
}
trap cleanup EXIT

mica_free_port PORT
mica_free_port PORT2

# broker_start CONF_EXTRA...: mosquitto on $PORT (TLS, the test server certificate); waits until
# it listens. `user` keeps it from switching to the mosquitto user when run as root (it could not
# read the key then).
broker_start() {
	local port=${BROKER_PORT:-$PORT} i
	{
		echo "listener $port 127.0.0.1"
		echo "certfile $MICA_CERT_SERVER"
		echo "keyfile $MICA_KEY_SERVER"
		echo "persistence false"
		echo "user $(id -un)"
		printf '%s\n' "$@"
	} >"$W/mosquitto-$port.conf"
	mosquitto -c "$W/mosquitto-$port.conf" >>"$W/mosquitto-$port.log" 2>&1 &
	BROKER_PID=$!
	for ((i = 0; i < 100; i++)); do
		mica_port_in_use "$port" && return 0
		kill -0 "$BROKER_PID" 2>/dev/null || fail "mosquitto exited: $(cat "$W/mosquitto-$port.log")"
		sleep 0.05
	done
	fail "mosquitto did not listen on $port"
}

# wait_count FILE PATTERN N: wait (20 s at most) until PATTERN matches N lines of FILE.
wait_count() {
	local i n
	for ((i = 0; i < 400; i++)); do
		n="$(grep -c -- "$2" "$1" 2>/dev/null || true)"
		((n >= $3)) && return 0
		sleep 0.05
	done
	check_fail "waited for $3 lines matching '$2' in $(basename "$1"), have ${n:-0}"
	return 1
}

pub() { mosquitto_pub -h 127.0.0.1 -p "$PORT" --cafile "$MICA_CA" -q 1 -t "d/$REGID" -f "$W/$1"; }

# The registration as `mica-device push register` stores it (its own test is
# test_device_push_register.sh): regid, token and content key, mode 0600.
REGID="$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
KEY="$(head -c 32 /dev/urandom | base64)"
OTHER_KEY="$(head -c 32 /dev/urandom | base64)"
(
	umask 077
	jq -n --arg r "$REGID" --arg k "$KEY" '{regid: $r, token: "t0ken", content_key: $k}' >"$W/state"
)
seal() {
	echo "${6:-$KEY}" | "$SEAL" seal "$1" "$2" 2882303761517 com.example.news "$4" "$3" |
		base64 -d >"$W/$5" || fail "sealing $5"
}
seal "$REGID" m1 pass_through hello m1
seal "$REGID" m1 pass_through hello m1-again # the same id sealed again: other bytes
seal "$REGID" m2 notification Title m2
seal "$REGID" m3 pass_through three m3
seal "$REGID" m4 pass_through four m4
seal "$REGID" m5 pass_through five m5
seal "$REGID" "deleted:$REGID" deleted_messages 5 mark
seal "other$REGID" m6 pass_through for-another-device other-regid
seal "$REGID" m7 pass_through wrong-key other-key "$OTHER_KEY"
cp "$W/m2" "$W/tampered"
# Flip one bit in the ciphertext (the last 16 bytes are the tag; 20 from the end is ciphertext).
size=$(stat -c %s "$W/tampered")
byte=$(od -An -tu1 -j $((size - 20)) -N1 "$W/tampered" | tr -d ' ')
printf '%b' "$(printf '\\%03o' $((byte ^ 1)))" | dd of="$W/tampered" bs=1 seek=$((size - 20)) conv=notrunc status=none
cmp -s "$W/m2" "$W/tampered" && fail "tampering changed nothing"
ok "regid, key and 10 sealed messages"

broker_start "allow_anonymous true"
ok "mosquitto $(mosquitto -h 2>/dev/null | sed -n 's/^mosquitto version //p') on 127.0.0.1:$PORT (TLS)"

# ---------------------------------------------------------------------------------------------
step="listen"
"$DEV" push listen --state "$W/state" --host 127.0.0.1 --port "$PORT" --ca "$MICA_CA" \
	--count 5 --timeout 60 >"$W/listen.out" 2>"$W/listen.err" &
LISTEN_PID=$!
wait_count "$W/listen.err" "event subscribed" 1 || fail "never subscribed: $(cat "$W/listen.err")"
for f in m1 m1 m1-again other-regid other-key tampered m2 mark mark; do pub "$f" || fail "mosquitto_pub $f"; done
wait_count "$W/listen.out" . 3 || true
wait_count "$W/listen.err" "event dropped" 6 || true
mapfile -t lines <"$W/listen.out"
[[ "$(jq -r '.id + " " + .type + " " + .payload' <<<"${lines[0]}")" == "m1 pass_through hello" ]] ||
	check_fail "line 1: ${lines[0]}"
[[ "$(jq -r '[.id, .type, .title, .description, .notify_id, .extra.k] | join(" ")' <<<"${lines[1]}")" == \
	"m2 notification Title d 7 v" ]] || check_fail "line 2: ${lines[1]}"
[[ "$(jq -r '[.id, .type, .count] | join(" ")' <<<"${lines[2]}")" == "deleted:$REGID deleted_messages 5" ]] ||
	check_fail "line 3: ${lines[2]}"
n="$(grep -c 'event dropped .* already_exists' "$W/listen.err" || true)"
[[ "$n" == 3 ]] || check_fail "duplicates dropped: $n, want 3 (m1 twice, the marker once)"
n="$(grep -c 'event dropped .* authentication_failed' "$W/listen.err" || true)"
[[ "$n" == 3 ]] || check_fail "refused envelopes: $n, want 3 (other regid, other key, tampered)"
grep -q 'for-another-device\|wrong-key' "$W/listen.out" && check_fail "a message that must not open was printed"
ok "3 printed; the duplicates and the 3 that do not open for this device dropped"

# ---------------------------------------------------------------------------------------------
step="broker restart"
kill -9 "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
wait_count "$W/listen.err" "event disconnected" 1 || true
broker_start "allow_anonymous true"
wait_count "$W/listen.err" "event subscribed" 2 || fail "not back after the restart: $(tail -5 "$W/listen.err")"
pub m3 || fail "mosquitto_pub m3"
wait_count "$W/listen.out" '"id":"m3"' 1 && ok "killed -9 and started again: reconnected, m3 received"
grep -q "event retry" "$W/listen.err" || check_fail "no retry was scheduled"

# ---------------------------------------------------------------------------------------------
step="TLS resumption"
# Another client takes over the client id (mosquitto closes the older connection): the client
# reconnects to the same broker process, offering the session ticket it got from it.
mosquitto_pub -h 127.0.0.1 -p "$PORT" --cafile "$MICA_CA" -i "$REGID" -t elsewhere -m x || true
wait_count "$W/listen.err" "event subscribed" 3 || fail "not back after the takeover"
grep -q "event connected 1" "$W/listen.err" || check_fail "the reconnect did not resume its TLS session"
pub m4 || fail "mosquitto_pub m4"
rc=0
wait "$LISTEN_PID" || rc=$?
LISTEN_PID=""
[[ "$rc" == 0 ]] || check_fail "listen exit $rc, want 0 after 5 messages"
[[ "$(jq -r .id "$W/listen.out" | tr '\n' ' ')" == "m1 m2 deleted:$REGID m3 m4 " ]] ||
	check_fail "messages: $(jq -r .id "$W/listen.out" | tr '\n' ' ')"
stats="$(sed -n 's/^mica-device push listen: stats //p' "$W/listen.err")"
[[ "$(jq -r '[.delivered, .deleted, .duplicates, .rejected, .subscribed] | join(" ")' <<<"$stats")" == "4 1 3 3 3" ]] ||
	check_fail "stats: $stats"
(($(jq .resumed <<<"$stats") >= 1)) || check_fail "no resumed session in the stats: $stats"
ok "resumed on reconnect; exit 0 after 5 messages; stats $stats"

# ---------------------------------------------------------------------------------------------
step="restart of the device"
# m1 was delivered by the first run; the --seen file (state.seen) remembers it. --keepalive 1:
# PINGREQ every second while it waits.
"$DEV" push listen --state "$W/state" --host localhost --port "$PORT" --ca "$MICA_CA" \
	--keepalive 1 --count 1 --timeout 30 >"$W/listen2.out" 2>"$W/listen2.err" &
LISTEN_PID=$!
wait_count "$W/listen2.err" "event subscribed" 1 || fail "never subscribed: $(cat "$W/listen2.err")"
pub m1 || fail "mosquitto_pub m1"
sleep 2.5
pub m5 || fail "mosquitto_pub m5"
rc=0
wait "$LISTEN_PID" || rc=$?
LISTEN_PID=""
[[ "$rc" == 0 && "$(jq -r .id "$W/listen2.out" | tr '\n' ' ')" == "m5 " ]] ||
	check_fail "exit $rc, messages $(jq -r .id "$W/listen2.out" | tr '\n' ' '), want m5 only"
stats="$(sed -n 's/^mica-device push listen: stats //p' "$W/listen2.err")"
[[ "$(jq .duplicates <<<"$stats")" == 1 ]] || check_fail "m1 not dropped after the restart: $stats"
(($(jq .pings <<<"$stats") >= 2)) || check_fail "no PINGREQ at keepalive 1 s: $stats"
head -1 "$W/state.seen" | grep -qx "micadev-seen v1" || check_fail "seen file: $(head -1 "$W/state.seen")"
[[ "$(stat -c %a "$W/state.seen")" == 600 ]] || check_fail "seen file mode $(stat -c %a "$W/state.seen")"
ok "m1 not delivered again after a restart; pings $(jq .pings <<<"$stats"); host name verified"

# ---------------------------------------------------------------------------------------------
step="MQTT.js"
# The interop script that later runs against mica-push (test_device_push_e2e.sh), here against
# mosquitto: it receives the sealed bytes exactly as published.
command -v node >/dev/null || fail "node is not installed (run deploy/install-deps)"
[[ -d tests/interop/node_modules/mqtt ]] || fail "tests/interop/node_modules/mqtt is missing (run deploy/install-deps)"
node tests/interop/push-mqttjs.mjs --state "$W/state" --host 127.0.0.1 --port "$PORT" \
	--ca "$MICA_CA" --count 1 --timeout 20 >"$W/mqttjs.out" 2>"$W/mqttjs.err" &
LISTEN_PID=$!
wait_count "$W/mqttjs.err" "subscribed granted=1" 1 || fail "MQTT.js: $(cat "$W/mqttjs.err")"
pub m2 || fail "mosquitto_pub m2"
rc=0
wait "$LISTEN_PID" || rc=$?
LISTEN_PID=""
{ [[ "$rc" == 0 ]] && [[ "$(cat "$W/mqttjs.out")" == "$(base64 -w0 "$W/m2")" ]]; } ||
	check_fail "MQTT.js: exit $rc, got $(head -c 80 "$W/mqttjs.out"): $(cat "$W/mqttjs.err")"
ok "MQTT.js $(jq -r .version tests/interop/node_modules/mqtt/package.json) received the sealed bytes"

# ---------------------------------------------------------------------------------------------
step="signal"
"$DEV" push listen --state "$W/state" --host 127.0.0.1 --port "$PORT" --ca "$MICA_CA" \
	>"$W/sig.out" 2>"$W/sig.err" &
LISTEN_PID=$!
wait_count "$W/sig.err" "event subscribed" 1 || fail "never subscribed: $(cat "$W/sig.err")"
kill -TERM "$LISTEN_PID"
rc=0
wait "$LISTEN_PID" || rc=$?
LISTEN_PID=""
{ [[ "$rc" == 0 ]] && grep -q "event disconnected 0 local" "$W/sig.err" && grep -q "stats {" "$W/sig.err"; } ||
	check_fail "SIGTERM: exit $rc: $(cat "$W/sig.err")"
ok "SIGTERM: DISCONNECT, exit 0 with the stats"

# ---------------------------------------------------------------------------------------------
step="certificate"
rc=0
"$DEV" push listen --state "$W/state" --host 127.0.0.1 --port "$PORT" --ca "$MICA_CA_ROGUE" \
	--count 1 --timeout 3 >"$W/rogue.out" 2>"$W/rogue.err" || rc=$?
{ [[ "$rc" == 1 ]] && grep -q "event disconnected .* tls" "$W/rogue.err" &&
	! grep -q "event subscribed" "$W/rogue.err" && grep -q "timed out with 0 of 1" "$W/rogue.err"; } ||
	check_fail "a broker the CA did not sign: exit $rc: $(cat "$W/rogue.err")"
ok "a broker certificate from another CA is refused"

# ---------------------------------------------------------------------------------------------
step="refused"
# A second mosquitto that knows the regid with another password: CONNACK 5, exit 1 at once.
mosquitto_passwd -b -c "$W/passwd" "$REGID" other-password >/dev/null 2>&1 || fail "mosquitto_passwd"
chmod 600 "$W/passwd"
first_pid="$BROKER_PID"
BROKER_PORT="$PORT2" broker_start "allow_anonymous false" "password_file $W/passwd"
rc=0
"$DEV" push listen --state "$W/state" --host 127.0.0.1 --port "$PORT2" --ca "$MICA_CA" \
	--count 1 --timeout 20 >"$W/refused.out" 2>"$W/refused.err" || rc=$?
{ [[ "$rc" == 1 ]] && grep -q "the broker refused the registration (CONNACK 5)" "$W/refused.err"; } ||
	check_fail "wrong token: exit $rc: $(cat "$W/refused.err")"
kill "$BROKER_PID" 2>/dev/null || true
BROKER_PID="$first_pid"
ok "a refused token ends listen with exit 1"

# ---------------------------------------------------------------------------------------------
step="usage"
expect_usage() {
	local want="$1" rc=0
	shift
	"$DEV" push "$@" >/dev/null 2>"$W/usage.err" || rc=$?
	{ [[ "$rc" == 64 ]] && grep -q -- "$want" "$W/usage.err"; } ||
		check_fail "push $*: exit $rc, want 64 with '$want': $(head -2 "$W/usage.err")"
}
expect_usage "--state is required" listen --host 127.0.0.1 --port 1 --ca "$MICA_CA"
expect_usage "--port must be a whole number in 1..65535" listen --state x --host h --port 70000 --ca c
expect_usage "--count must be a whole number" listen --state x --host h --port 1 --ca c --count 0
expect_usage "unknown option" listen --bogus
expect_usage "unexpected argument" listen extra --state x
expect_usage "--device-id3 is required" register --url https://x --ca c --app-id 1 --package p \
	--device-id1 a --device-id2 b --state s
expect_usage "must be an https:// URL" register --url http://x --ca c --app-id 1 --package p \
	--device-id1 a --device-id2 b --device-id3 c --state s
expect_usage "unknown verb" bogus
rc=0
"$DEV" >/dev/null 2>&1 || rc=$?
[[ "$rc" == 64 ]] || check_fail "no command: exit $rc"
cp "$W/state" "$W/state-open"
chmod 644 "$W/state-open"
rc=0
"$DEV" push listen --state "$W/state-open" --host 127.0.0.1 --port "$PORT" --ca "$MICA_CA" \
	--count 1 --timeout 2 >/dev/null 2>"$W/open.err" || rc=$?
{ [[ "$rc" == 1 ]] && grep -q "chmod 600" "$W/open.err"; } ||
	check_fail "a state file others can read: exit $rc: $(cat "$W/open.err")"
ok "usage errors exit 64 naming the problem; a world-readable state file is refused"

if ((failures > 0)); then
	echo "test_device_push: $failures check(s) failed"
	exit 1
fi
echo "test_device_push: all passed"
