#!/usr/bin/env bash
# test_uvtls.sh - openssl s_client (a TLS client nobody here wrote) against
# uvtls_echo, a lib/uvtls echo server: the echo round trip over TLS 1.3 and
# TLS 1.2, session resumption through -sess_out/-sess_in ("Reused") in both,
# a session resumed on a second process that reads the same ticket secret
# (and not on one with another secret), and the refusals: TLS 1.1, a TLS 1.2
# CBC suite, a TLS 1.2 suite without ECDHE.
set -euo pipefail
BUILD=${MICA_BUILD:-build}
: "${MICA_TEST_DIR:?run through tests/run}" "${MICA_CA:?}" "${MICA_CERT_SERVER:?}" "${MICA_KEY_SERVER:?}"
dir=$(mktemp -d "$MICA_TEST_DIR/uvtls.XXXXXX")
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT
failures=0
ok() { echo "ok - $*"; }
check_fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

# start NAME SECRET_FILE: an echo server; its port in $dir/NAME.port.
start() {
	"$BUILD/tests/peers/uvtls_echo" "$MICA_CERT_SERVER" "$MICA_KEY_SERVER" "$dir/$1.port" 0 \
		"$2" 2>"$dir/$1.log" &
	pids+=($!)
	for _ in $(seq 100); do [ -s "$dir/$1.port" ] && return 0; sleep 0.05; done
	echo "FAIL: uvtls_echo $1 did not start: $(cat "$dir/$1.log")"
	exit 1
}

head -c 32 /dev/urandom >"$dir/ticket.secret"
head -c 32 /dev/urandom >"$dir/other.secret"
start a "$dir/ticket.secret"
start b "$dir/ticket.secret"
start c "$dir/other.secret"
pa=$(cat "$dir/a.port") pb=$(cat "$dir/b.port") pc=$(cat "$dir/c.port")

# client PORT OUT ARGS...: s_client sends a line ending in BYE (the server
# echoes it and closes); its output goes to $dir/OUT.
client() {
	local port=$1 out=$2
	shift 2
	printf 'hello uvtls BYE\n' | timeout 10 openssl s_client -connect "127.0.0.1:$port" \
		-CAfile "$MICA_CA" -verify_return_error -ign_eof "$@" >"$dir/$out" 2>&1 || true
}

for v in tls1_3 tls1_2; do
	want=TLSv1.3
	[ "$v" = tls1_2 ] && want=TLSv1.2
	client "$pa" "$v.new" "-$v" -sess_out "$dir/$v.sess"
	if grep -q "^New, $want" "$dir/$v.new" && grep -q '^hello uvtls BYE$' "$dir/$v.new" &&
		grep -q 'Verify return code: 0 (ok)' "$dir/$v.new"; then
		ok "$want: handshake, certificate verified, echo"
	else
		check_fail "$want handshake or echo: $(cat "$dir/$v.new")"
	fi
	client "$pa" "$v.again" "-$v" -sess_in "$dir/$v.sess"
	if grep -q "^Reused, $want" "$dir/$v.again" && grep -q '^hello uvtls BYE$' "$dir/$v.again"; then
		ok "$want: the session resumed on the same process (Reused)"
	else
		check_fail "$want resumption: $(grep -E '^(New|Reused)' "$dir/$v.again")"
	fi
	client "$pb" "$v.other" "-$v" -sess_in "$dir/$v.sess"
	if grep -q "^Reused, $want" "$dir/$v.other"; then
		ok "$want: the session resumed on a second process with the same ticket secret"
	else
		check_fail "$want cross-process resumption: $(grep -E '^(New|Reused)' "$dir/$v.other")"
	fi
	client "$pc" "$v.foreign" "-$v" -sess_in "$dir/$v.sess"
	if grep -q "^New, $want" "$dir/$v.foreign" && grep -q '^hello uvtls BYE$' "$dir/$v.foreign"; then
		ok "$want: another ticket secret means a full handshake, not a failure"
	else
		check_fail "$want with a foreign ticket: $(grep -E '^(New|Reused)' "$dir/$v.foreign")"
	fi
done

# refused NAME ARGS...: the handshake must fail with the server's alert (the
# client offers only what the server refuses; SECLEVEL 0 so that the client
# itself does offer it).
refused() {
	local name=$1
	shift
	client "$pa" "refused.$name" "$@"
	if grep -q '^hello uvtls BYE$' "$dir/refused.$name" ||
		grep -qE '^(New|Reused), TLS' "$dir/refused.$name"; then
		check_fail "$name was accepted: $(grep -E '^(New|Reused)|Cipher' "$dir/refused.$name")"
	elif grep -qE 'alert (protocol version|handshake failure|insufficient security)' \
		"$dir/refused.$name"; then
		ok "$name refused by the server ($(grep -oE 'alert [a-z ]+' "$dir/refused.$name" | head -1))"
	else
		check_fail "$name: no handshake, but no TLS refusal either: $(cat "$dir/refused.$name")"
	fi
}
refused tls1.1 -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'
refused tls1.2-cbc -tls1_2 -cipher 'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0'
refused tls1.2-no-ecdhe -tls1_2 -cipher 'AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0'

# Positive control for the refusals: the same client options with an AEAD
# ECDHE suite succeed, so the refusals above are about the suite.
client "$pa" "tls12-gcm" -tls1_2 -cipher 'ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0'
if grep -q '^New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256' "$dir/tls12-gcm"; then
	ok "TLS 1.2 ECDHE-ECDSA-AES128-GCM-SHA256 accepted"
else
	check_fail "TLS 1.2 AEAD control: $(cat "$dir/tls12-gcm")"
fi

if ((failures > 0)); then
	echo "test_uvtls.sh: $failures checks failed"
	exit 1
fi
echo "test_uvtls.sh: all checks passed"
