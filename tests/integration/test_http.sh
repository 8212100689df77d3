#!/usr/bin/env bash
# test_http.sh - curl (a real third-party client) against testd, a daemon on
# libmica's http module: TLS with the test CA works, a client that does not
# trust the CA fails, plaintext is refused, only AEAD TLS suites are offered
# (openssl s_client), errors are JSON with stable codes (415 without a JSON
# Content-Type, 400 for ids beyond int64, 413 for a chunked body far over the
# limit), mTLS identities reach handlers, /metrics lives on its own listener,
# and the config file is what drives it.
set -euo pipefail
BUILD=${MICA_BUILD:-build}
: "${MICA_TEST_DIR:?run through tests/run}" "${MICA_CA:?}"
dir=$(mktemp -d "$MICA_TEST_DIR/http.XXXXXX")
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true' EXIT

cat >"$dir/testd.conf" <<CONF
[log]
level = warn
[testd.http]
port = 0
cert_file = $MICA_CERT_SERVER
key_file = $MICA_KEY_SERVER
client_ca_file = $MICA_CA
max_body = 2K
timeout = 5
[testd]
port_file = $dir/port
metrics_port_file = $dir/metrics-port
CONF
"$BUILD/tests/peers/testd" "$dir/testd.conf" 2>"$dir/testd.log" &
pid=$!
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.05; done
port=$(cat "$dir/port")
url="https://localhost:$port"
murl="https://localhost:$(cat "$dir/metrics-port")"
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok - $*"; }

# expect STATUS CODE ARGS...: runs curl, checks the status and the JSON error code.
expect() {
	local want=$1 code=$2 out status
	shift 2
	out=$(curl -sS --cacert "$MICA_CA" -o "$dir/body" -w '%{http_code}' "$@") || fail "curl $*"
	status=$out
	[ "$status" = "$want" ] || fail "$*: status $status, want $want: $(cat "$dir/body")"
	if [ "$code" != - ]; then
		grep -q "\"code\":\"$code\"" "$dir/body" || fail "$*: body $(cat "$dir/body") lacks $code"
	fi
	ok "$* -> $want $code"
}

expect 200 - "$url/v1/hello"
grep -qx '{"hello":"world"}' "$dir/body" || fail "hello body: $(cat "$dir/body")"

# Without the CA in its trust store curl refuses the server (exit 60).
rc=0
curl -sS -o /dev/null "$url/v1/hello" 2>/dev/null || rc=$?
[ "$rc" = 60 ] || fail "curl without the CA: exit $rc, want 60"
ok "client without the CA's trust fails (curl exit 60)"
rc=0
curl -sS -o /dev/null --cacert "$MICA_CA_ROGUE" "$url/v1/hello" 2>/dev/null || rc=$?
[ "$rc" = 60 ] || fail "curl trusting another CA: exit $rc, want 60"
ok "client trusting another CA fails (curl exit 60)"

# No plaintext mode: an http:// request gets no HTTP answer.
rc=0
curl -sS -o /dev/null "http://localhost:$port/v1/hello" 2>/dev/null || rc=$?
[ "$rc" != 0 ] || fail "plaintext HTTP was answered"
ok "plaintext HTTP refused (curl exit $rc)"

expect 404 not_found "$url/v1/none"
expect 405 method_not_allowed -X PUT "$url/v1/items/7"
curl -sS --cacert "$MICA_CA" -D "$dir/headers" -o /dev/null -X PUT "$url/v1/items/7"
grep -qi '^Allow: GET, DELETE' "$dir/headers" || fail "405 without Allow: $(cat "$dir/headers")"
ok "405 carries Allow: GET, DELETE"
expect 400 malformed_json -H 'Content-Type: application/json' -d '{"a":' "$url/v1/echo"
expect 415 unsupported_media_type -H 'Content-Type: text/plain' -d '{}' "$url/v1/echo"
# A JSON body without Content-Type (curl -H 'Content-Type:' drops it) was read as
# JSON before: a cross-site form post could reach a JSON route.
expect 415 unsupported_media_type -H 'Content-Type:' --data-binary '{"a":1}' "$url/v1/echo"
expect 415 unsupported_media_type -d '{"a":1}' "$url/v1/echo" # form-urlencoded
expect 415 unsupported_media_type -H 'Content-Type: application/jsonx' -d '{}' "$url/v1/echo"
expect 415 unsupported_media_type -H 'Content-Type: application/json-seq' -d '{}' "$url/v1/echo"
expect 200 - -H 'Content-Type: application/json; charset=utf-8' -d '{"a":1}' "$url/v1/echo"
expect 200 - -H 'Content-Type: Application/JSON' -d '{"a":1}' "$url/v1/echo"
expect 400 missing_body -X POST -H 'Content-Type:' "$url/v1/echo"

# Ids: an id beyond int64 used to be clamped by strtoll to the largest id (and
# answered 404 as if it were a real lookup); now it is a 400 naming the range.
expect 200 - "$url/v1/items/9223372036854775807"
grep -qx '{"id":9223372036854775807}' "$dir/body" || fail "item body: $(cat "$dir/body")"
expect 400 item_id_out_of_range "$url/v1/items/9223372036854775808"
expect 400 item_id_out_of_range "$url/v1/items/99999999999999999999999999"
expect 400 item_id_out_of_range "$url/v1/items/0"
expect 400 item_id_out_of_range "$url/v1/items/-5"
expect 400 bad_item_id "$url/v1/items/12a"
expect 400 bad_item_id "$url/v1/items/%2012"
expect 400 bad_item_id "$url/v1/items/+12"
head -c 4096 /dev/zero | tr '\0' ' ' >"$dir/big"
expect 413 body_too_large -H 'Content-Type: application/json' --data-binary @"$dir/big" "$url/v1/echo"
expect 413 body_too_large -H 'Content-Type: application/json' -H 'Transfer-Encoding: chunked' \
	--data-binary @"$dir/big" "$url/v1/echo"
# A chunked body far past the limit (64 MiB against 2 KiB; the server drains at
# most 8 MiB past the limit, then hangs up) used to get the connection closed
# with no answer: now the 413 goes out as the limit is crossed.
status=$(head -c 64M /dev/zero | curl -sS --cacert "$MICA_CA" -o "$dir/body" -w '%{http_code}' \
	-H 'Content-Type: application/json' -H 'Transfer-Encoding: chunked' -T - -X POST \
	"$url/v1/echo" 2>"$dir/curl.err") || true
[ "$status" = 413 ] || fail "64 MiB chunked body: status '$status' ($(cat "$dir/curl.err"))"
grep -q '"code":"body_too_large"' "$dir/body" || fail "64 MiB chunked body: $(cat "$dir/body")"
ok "a chunked body far over the limit gets 413 body_too_large before the connection closes"
expect 200 - "$url/v1/hello" # the server is fine
expect 200 - -H 'Content-Type: application/json' -d '{"a":[1,2]}' "$url/v1/echo"
grep -qx '{"a":\[1,2\]}' "$dir/body" || fail "echo body: $(cat "$dir/body")"

expect 401 client_certificate_required "$url/v1/whoami"
expect 200 - --cert "$MICA_CERT_TEST" --key "$MICA_KEY_TEST" "$url/v1/whoami"
grep -qx '{"principal":"test"}' "$dir/body" || fail "whoami: $(cat "$dir/body")"
expect 403 client_certificate_invalid --cert "$MICA_CERT_ROGUE" --key "$MICA_KEY_ROGUE" "$url/v1/whoami"

expect 200 - "$url/healthz"
expect 200 - "$url/readyz"
grep -qx '{"status":"ready"}' "$dir/body" || fail "readyz: $(cat "$dir/body")"
# /metrics is not on the public listener (per-route status counts are for operators).
expect 404 not_found "$url/metrics"
expect 404 not_found --cert "$MICA_CERT_TEST" --key "$MICA_KEY_TEST" "$url/metrics"
expect 200 - "$murl/metrics"
grep -q '^mica_http_requests_total{service="testd",route="none",method="any",code="413"} 3$' \
	"$dir/body" || fail "metrics: $(cat "$dir/body")"
ok "metrics on the metrics listener count the three 413s"
expect 200 - "$murl/healthz"
expect 200 - "$murl/readyz"
expect 404 not_found "$murl/v1/hello"

# TLS: only TLS 1.3 and TLS 1.2 ECDHE with AES-GCM or ChaCha20-Poly1305.
# tls_try HOST:PORT ARGS...: true when openssl s_client completes a handshake with ARGS.
tls_try() {
	local hp=$1
	shift
	openssl s_client -connect "$hp" -servername localhost -CAfile "$MICA_CA" "$@" \
		</dev/null >"$dir/s_client.out" 2>&1 &&
		grep -q 'Cipher is [A-Z]' "$dir/s_client.out"
}
# tls_suites HOST:PORT KX: the suite checks for a server whose key is KX (ECDSA or RSA).
tls_suites() {
	local hp=$1 kx=$2 c
	for c in "ECDHE-$kx-AES128-SHA" "ECDHE-$kx-AES256-SHA" "ECDHE-$kx-AES128-SHA256" \
		"ECDHE-$kx-AES256-SHA384" AES128-GCM-SHA256 AES128-SHA DHE-RSA-AES128-GCM-SHA256; do
		! tls_try "$hp" -tls1_2 -cipher "$c" || fail "TLS 1.2 $c was accepted"
		ok "TLS 1.2 $c refused ($kx key)"
	done
	for c in "ECDHE-$kx-AES128-GCM-SHA256" "ECDHE-$kx-AES256-GCM-SHA384" \
		"ECDHE-$kx-CHACHA20-POLY1305"; do
		tls_try "$hp" -tls1_2 -cipher "$c" || fail "TLS 1.2 $c refused: $(cat "$dir/s_client.out")"
		grep -q "Cipher is $c" "$dir/s_client.out" || fail "$c: $(cat "$dir/s_client.out")"
		ok "TLS 1.2 $c accepted ($kx key)"
	done
	tls_try "$hp" -tls1_3 || fail "TLS 1.3 refused: $(cat "$dir/s_client.out")"
	ok "TLS 1.3 accepted ($kx key)"
	! tls_try "$hp" -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' || fail "TLS 1.1 was accepted"
	ok "TLS 1.1 refused ($kx key)"
}
tls_suites "localhost:$port" ECDSA
tls_suites "localhost:$(cat "$dir/metrics-port")" ECDSA

# The same with an RSA server key (self-signed; s_client reports, not enforces, trust).
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/rsa.key" -out "$dir/rsa.pem" \
	-subj /CN=localhost -days 1 2>/dev/null
sed -e "s|^cert_file = .*|cert_file = $dir/rsa.pem|" -e "s|^key_file = .*|key_file = $dir/rsa.key|" \
	-e "s|^port_file = .*|port_file = $dir/rsa-port|" -e "/^metrics_port_file/d" \
	"$dir/testd.conf" >"$dir/rsa.conf"
"$BUILD/tests/peers/testd" "$dir/rsa.conf" 2>"$dir/rsa.log" &
rsa_pid=$!
for _ in $(seq 100); do [ -s "$dir/rsa-port" ] && break; sleep 0.05; done
tls_suites "localhost:$(cat "$dir/rsa-port")" RSA
kill "$rsa_pid"
wait "$rsa_pid" || true

# X-Request-Id is echoed and the access log never carries a full client address.
sed -i 's/^level = warn/level = info/' "$dir/testd.conf"
kill "$pid"; wait "$pid" || true
rm -f "$dir/port"
"$BUILD/tests/peers/testd" "$dir/testd.conf" 2>"$dir/testd.log" &
pid=$!
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.05; done
url="https://localhost:$(cat "$dir/port")"
curl -sS --cacert "$MICA_CA" -D "$dir/headers" -o /dev/null "$url/v1/hello"
rid=$(awk 'tolower($1) == "x-request-id:" {print $2}' "$dir/headers" | tr -d '\r')
[[ "$rid" =~ ^[0-9a-f]{32}$ ]] || fail "X-Request-Id: '$rid'"
# Access lines are buffered: written at most 100 ms later (poll for 5 s).
for _ in $(seq 100); do grep -q "\"req\":\"$rid\"" "$dir/testd.log" && break; sleep 0.05; done
grep -q "\"req\":\"$rid\".*route=/v1/hello status=200.*client=127.0.\*.\*" "$dir/testd.log" ||
	fail "access log: $(cat "$dir/testd.log")"
ok "access log line carries the request id and a masked address"
# A line still in the buffer when the daemon is stopped is written as it exits.
curl -sS --cacert "$MICA_CA" -D "$dir/headers" -o /dev/null "$url/v1/hello"
rid=$(awk 'tolower($1) == "x-request-id:" {print $2}' "$dir/headers" | tr -d '\r')
kill "$pid"
wait "$pid" || fail "testd exit status $?"
pid=""
grep -q "\"req\":\"$rid\".*route=/v1/hello status=200" "$dir/testd.log" ||
	fail "access line lost at exit: $(tail -n 3 "$dir/testd.log")"
ok "a buffered access line is written when the daemon stops"

# A config error names the key and stops the daemon with exit 2.
printf '[testd.http]\nport = 70000\n' >"$dir/bad.conf"
rc=0
"$BUILD/tests/peers/testd" "$dir/bad.conf" 2>"$dir/bad.err" || rc=$?
{ [ "$rc" = 2 ] && grep -q 'testd.http.port: 70000 is out of range 0..65535' "$dir/bad.err"; } ||
	fail "bad config: exit $rc: $(cat "$dir/bad.err")"
ok "bad config rejected naming testd.http.port"
echo "test_http.sh: all checks passed"
