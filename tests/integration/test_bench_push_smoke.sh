#!/usr/bin/env bash
# test_bench_push_smoke.sh - bench/push cannot rot: runs it at tiny sizes (BENCH_QUICK=1: 200
# devices for the idle/storm test, 100 devices x 3 messages for the QoS1 rate, one round) and
# checks that every figure came out for mosquitto (and for mica-push when this tree has its
# broker): all devices held, every reconnect resumed its TLS session, no message lost, numbers
# where numbers belong. Then the load generator's own failure paths: a refused connect is a
# failed device and exit 1, a server that completes TLS but never answers CONNECT does not hang
# it (-W: the stalled device counts as failed), bad arguments exit 2.
set -euo pipefail
BUILD=${MICA_BUILD:-build}
: "${MICA_TEST_DIR:?run through tests/run}" "${MICA_CA:?}" "${MICA_CERT_SERVER:?}" "${MICA_KEY_SERVER:?}"
fail() {
	echo "FAIL: $*"
	exit 1
}
ok() { echo "ok - $*"; }
[[ -x "$BUILD/bench/loadgen" ]] || fail "$BUILD/bench/loadgen not built (make all)"
command -v mosquitto >/dev/null || fail "mosquitto is not installed (run deploy/install-deps)"

out=$(BENCH_QUICK=1 TMPDIR="$MICA_TEST_DIR" bench/push/run "$BUILD" 2>&1) || fail "bench/push/run failed: $out"
printf '# %s\n' "${out//$'\n'/$'\n'# }"
# figure SERVER LABEL: the value bench/push printed for SERVER on the line starting with LABEL.
figure() {
	local line
	line=$(grep -F "bench/push: $2" <<<"$out" | head -n 1)
	[[ -n "$line" ]] || fail "no line '$2'"
	sed -n "s/.* $1 \([^ ]*\) .*/\1/p" <<<"$line"
}
servers=(mosquitto)
if grep -q 'round 1 mica storm' <<<"$out"; then servers+=(mica); fi
for s in "${servers[@]}"; do
	held=$(figure "$s" "devices held by one process")
	[[ "$held" == 200 ]] || fail "$s held $held of 200 devices"
	resumed=$(figure "$s" "reconnects that resumed")
	[[ "$resumed" == 200 ]] || fail "$s: $resumed of 200 reconnects resumed"
	lost=$(figure "$s" "QoS1 messages lost")
	[[ "$lost" == 0 ]] || fail "$s lost $lost messages"
	for label in "idle TLS memory per device" "reconnect storm" "QoS1 end-to-end rate" "QoS1 latency p99"; do
		v=$(figure "$s" "$label")
		[[ "$v" =~ ^[0-9]+(\.[0-9]+)?$ ]] || fail "$s: '$label' is '$v', not a number"
	done
	ok "$s: 200 devices held and resumed, 300 QoS1 messages delivered, every figure a number"
done

# A refused connect is a failed device, reported and exit 1 (a run cannot look healthy without
# its devices).
# Port 1 (tcpmux) listens nowhere here.
closed=1
ss -Hltn "sport = :$closed" | grep -q . && fail "something listens on port $closed"
rc=0
line=$("$BUILD/bench/loadgen" -M hold -k -n 3 -a "$MICA_CA" -p "$closed" 2>/dev/null) || rc=$?
[[ $rc == 1 && "$line" == *" failed=3 "* ]] || fail "loadgen against a closed port: exit $rc, '$line'"
ok "loadgen counts refused connects as failed devices and exits 1"
# A TLS server that never answers: openssl s_server holds the connection while its stdin (a fifo
# this shell keeps open) is open.
silent=""
for p in $(shuf -i 40000-49999 -n 20); do
	ss -Hltn "sport = :$p" | grep -q . || {
		silent=$p
		break
	}
done
[[ -n "$silent" ]] || fail "no free port for the silent server"
fifo=$(mktemp -u "$MICA_TEST_DIR/silent.XXXXXX")
mkfifo "$fifo"
openssl s_server -accept "127.0.0.1:$silent" -cert "$MICA_CERT_SERVER" \
	-key "$MICA_KEY_SERVER" -quiet <"$fifo" >/dev/null 2>&1 &
spid=$!
exec 9>"$fifo"
trap 'kill "$spid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do ss -Hltn "sport = :$silent" | grep -q . && break; sleep 0.1; done
rc=0
start=$SECONDS
line=$(timeout 50 "$BUILD/bench/loadgen" -M hold -k -n 1 -W 2 -a "$MICA_CA" -p "$silent" 2>/dev/null) || rc=$?
[[ $rc == 1 && "$line" == *" failed=1 "* ]] || fail "loadgen against a silent server: exit $rc, '$line'"
ok "a device whose CONNECT is never answered counts as failed after -W ($((SECONDS - start)) s), no hang"
kill "$spid" 2>/dev/null || true
exec 9>&-
rc=0
"$BUILD/bench/loadgen" -M rate -n 3 -a "$MICA_CA" -p 1 >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "loadgen without -k or -D: exit $rc, want 2"
rc=0
"$BUILD/bench/loadgen" -M bogus -k -n 3 -a "$MICA_CA" -p 1 >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "loadgen -M bogus: exit $rc, want 2"
ok "loadgen refuses bad arguments with exit 2"
