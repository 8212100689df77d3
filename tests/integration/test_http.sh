#!/usr/bin/env bash
# test_http.sh - curl (a real third-party client) against testd, a daemon on
# libmica's http module: TLS with the test CA works, a client that does not
# trust the CA fails, plaintext is refused, errors are JSON with stable codes,
# mTLS identities reach handlers, and the config file is what drives it.
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
CONF
"$BUILD/tests/peers/testd" "$dir/testd.conf" 2>"$dir/testd.log" &
pid=$!
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.05; done
port=$(cat "$dir/port")
url="https://localhost:$port"
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
head -c 4096 /dev/zero | tr '\0' ' ' >"$dir/big"
expect 413 body_too_large -H 'Content-Type: application/json' --data-binary @"$dir/big" "$url/v1/echo"
expect 413 body_too_large -H 'Content-Type: application/json' -H 'Transfer-Encoding: chunked' \
	--data-binary @"$dir/big" "$url/v1/echo"
expect 200 - -H 'Content-Type: application/json' -d '{"a":[1,2]}' "$url/v1/echo"
grep -qx '{"a":\[1,2\]}' "$dir/body" || fail "echo body: $(cat "$dir/body")"

expect 401 client_certificate_required "$url/v1/whoami"
expect 200 - --cert "$MICA_CERT_TEST" --key "$MICA_KEY_TEST" "$url/v1/whoami"
grep -qx '{"principal":"test"}' "$dir/body" || fail "whoami: $(cat "$dir/body")"
expect 403 client_certificate_invalid --cert "$MICA_CERT_ROGUE" --key "$MICA_KEY_ROGUE" "$url/v1/whoami"

expect 200 - "$url/healthz"
expect 200 - "$url/metrics"
grep -q '^mica_http_requests_total{service="testd",route="none",method="any",code="413"} 2$' \
	"$dir/body" || fail "metrics: $(cat "$dir/body")"
ok "metrics count the two 413s"

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
[ "$rc" = 2 ] && grep -q 'testd.http.port: 70000 is out of range 0..65535' "$dir/bad.err" ||
	fail "bad config: exit $rc: $(cat "$dir/bad.err")"
ok "bad config rejected naming testd.http.port"
echo "test_http.sh: all checks passed"
