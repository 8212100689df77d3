#!/usr/bin/env bash
# test_uvtls.sh - openssl s_client (a TLS client nobody here wrote) against
# uvtls_echo, a lib/uvtls echo server: the echo round trip over TLS 1.3 and
# TLS 1.2, session resumption through -sess_out/-sess_in ("Reused") in both,
# a session resumed on a second process that reads the same ticket secret
# (and not on one with another secret), and the refusals: TLS 1.1, a TLS 1.2
# CBC suite, a TLS 1.2 suite without ECDHE. Then detached connections
# (UVTLS_ECHO_DETACH_MS: the server frees the SSL object of an idle TLS 1.3
# connection and protects its records itself): in each TLS 1.3 suite, data
# both ways after detaching, a KeyUpdate from s_client without and with
# update_requested (answered by the server's own), a 40,000-byte server write
# in records s_client accepts, close_notify; TLS 1.2 never detaches; sessions
# resume between a detaching and a plain process in both directions.
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
# UVTLS_ECHO_DETACH_MS in the environment passes on.
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

# ---- Detached connections -----------------------------------------------

# timed LINES...: writes each argument as a line with 0.4 s between them
# ("pause" writes nothing and waits 1.6 s: longer than the 600 ms detach
# delay plus a wheel tick), then waits 1 s and ends stdin.
timed() {
	for l in "$@"; do
		if [ "$l" = pause ]; then sleep 1.6; else printf '%s\n' "$l" && sleep 0.4; fi
	done
	sleep 1
}

# interactive PORT OUT ARGS...: s_client in its interactive mode (no -quiet,
# no -ign_eof: a line "k" or "K" sends a KeyUpdate, end of stdin sends
# close_notify), -msg to show the records; stdin comes from timed.
interactive() {
	local port=$1 out=$2
	shift 2
	timeout 30 openssl s_client -connect "127.0.0.1:$port" -CAfile "$MICA_CA" \
		-verify_return_error -msg "$@" >"$dir/$out" 2>&1 || true
}

for suite in TLS_AES_128_GCM_SHA256 TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256; do
	UVTLS_ECHO_DETACH_MS=600 start "d-$suite" ""
	timed "before detach" pause "after detach" k "after k" K "after K" BIG "after big" |
		interactive "$(cat "$dir/d-$suite.port")" "d-$suite.out" -tls1_3 -ciphersuites "$suite"
	out=$dir/d-$suite.out log=$dir/d-$suite.log
	kus=$(grep -c '^<<< TLS 1.3, Handshake \[length 0005\], KeyUpdate' "$out" || true)
	# -msg cuts data lines where records end: drop its notes and join.
	big=$(sed -E 's/(<<<|>>>) .*$//; /^ {4}/d' "$out" | tr -d '\n' | grep -o BIGDATA | wc -l)
	if grep -q "^New, TLSv1.3, Cipher is $suite" "$out" &&
		grep -q '^before detach$' "$out" && grep -q '^after detach$' "$out" &&
		grep -q '^after k$' "$out" && grep -q '^after K$' "$out" &&
		grep -q '^after big$' "$out" && [ "$big" = 5714 ] && [ "$kus" = 1 ] &&
		grep -q 'echo 14 bytes detached=0' "$log" &&
		[ "$(grep -c 'detached=1' "$log")" = 5 ] &&
		grep -q 'connection closed: peer' "$log"; then
		ok "$suite detached: echo, KeyUpdate k and K (1 answered), 40,000-byte write, close_notify"
	else
		check_fail "$suite detached: KeyUpdates received $kus, BIGDATA $big," \
			"server log: $(cat "$log"), s_client: $(grep -E '^(New|after|before|DONE)' "$out")"
	fi
done

UVTLS_ECHO_DETACH_MS=600 start d-tls12 ""
timed "before detach" pause "after detach" | interactive "$(cat "$dir/d-tls12.port")" d-tls12.out -tls1_2
if grep -q '^New, TLSv1.2' "$dir/d-tls12.out" && grep -q '^after detach$' "$dir/d-tls12.out" &&
	[ "$(grep -c 'detached=0' "$dir/d-tls12.log")" = 2 ] &&
	! grep -q 'detached=1' "$dir/d-tls12.log"; then
	ok "TLS 1.2 keeps OpenSSL: never detached, echo after the idle delay"
else
	check_fail "TLS 1.2 with detaching on: $(cat "$dir/d-tls12.log")"
fi

# Sessions between a detaching process and a plain one with the same ticket
# secret: issued before detaching, resumed either way, data after detaching.
UVTLS_ECHO_DETACH_MS=600 start d-resume "$dir/ticket.secret"
pdr=$(cat "$dir/d-resume.port")
timed "first" pause "second" | interactive "$pdr" d-resume.new -tls1_3 -sess_out "$dir/d.sess"
client "$pa" d-resume.on-a -tls1_3 -sess_in "$dir/d.sess"
client "$pa" d-resume.from-a -tls1_3 -sess_out "$dir/a.sess"
timed "third" pause "fourth" | interactive "$pdr" d-resume.again -tls1_3 -sess_in "$dir/a.sess"
if grep -q '^New, TLSv1.3' "$dir/d-resume.new" && grep -q '^second$' "$dir/d-resume.new" &&
	grep -q '^Reused, TLSv1.3' "$dir/d-resume.on-a" &&
	grep -q '^Reused, TLSv1.3' "$dir/d-resume.again" && grep -q '^fourth$' "$dir/d-resume.again" &&
	[ "$(grep -c 'detached=1' "$dir/d-resume.log")" = 2 ]; then
	ok "sessions resume between a detaching process and a plain one, both ways"
else
	check_fail "resumption with detaching: $(grep -hE '^(New|Reused)' "$dir"/d-resume.*)" \
		"log: $(cat "$dir/d-resume.log")"
fi

if ((failures > 0)); then
	echo "test_uvtls.sh: $failures checks failed"
	exit 1
fi
echo "test_uvtls.sh: all checks passed"
