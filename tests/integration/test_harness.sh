#!/usr/bin/env bash
# Proves the services tests/run starts are the ones docs/testing.md promises: PostgreSQL over
# TLS only, Redis ACLs by key prefix over the Unix socket and TLS on the port, the SoftHSM2 token
# found by label with a working PIN, and the restart commands really restarting the servers.
# Run by tests/run (it needs its environment); exits non-zero at the first failed check.
set -euo pipefail

fail() {
	echo "FAIL: $*" >&2
	exit 1
}
check() { echo "-- $*"; }

for v in MICA_TEST_DIR MICA_CA MICA_CA_ROGUE MICA_PG_CONNINFO MICA_PG_HOST MICA_PG_PORT \
	MICA_PG_DATA MICA_PG_RESTART MICA_REDIS_SOCKET MICA_REDIS_PORT MICA_REDIS_USER \
	MICA_REDIS_PASSWORD_FILE MICA_REDIS_RESTART MICA_REDIS_ADMIN_PASSWORD_FILE SOFTHSM2_CONF \
	MICA_HSM_MODULE MICA_HSM_TOKEN_LABEL MICA_HSM_PIN_FILE; do
	[[ -n "${!v:-}" ]] || fail "$v is not set (run this through tests/run)"
done
export PGCONNECT_TIMEOUT=10

# ---- PostgreSQL
check "psql over TLS (sslmode=verify-full) with MICA_PG_CONNINFO: SELECT 1"
out="$(psql -X -Atc "SELECT 1" "$MICA_PG_CONNINFO")" || fail "psql with MICA_PG_CONNINFO failed"
[[ "$out" == 1 ]] || fail "SELECT 1 returned '$out'"

check "the session is encrypted (pg_stat_ssl)"
out="$(psql -X -Atc "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()" "$MICA_PG_CONNINFO")"
[[ "$out" == t ]] || fail "pg_stat_ssl.ssl is '$out'"

check "a plaintext TCP connection (sslmode=disable) is refused"
if out="$(psql -X -Atc "SELECT 1" "$MICA_PG_CONNINFO sslmode=disable" 2>&1)"; then
	fail "plaintext connection accepted"
fi
[[ "$out" == *"no pg_hba.conf entry"*"no encryption"* ]] || fail "unexpected error: $out"

check "a client trusting another CA refuses the server certificate"
if out="$(psql -X -Atc "SELECT 1" "$MICA_PG_CONNINFO sslrootcert=$MICA_CA_ROGUE" 2>&1)"; then
	fail "connection accepted with the rogue CA as trust anchor"
fi
[[ "$out" == *"certificate verify failed"* ]] || fail "unexpected error: $out"

# ---- Redis
rcli() { REDISCLI_AUTH="$(<"$MICA_REDIS_PASSWORD_FILE")" redis-cli --no-auth-warning --user "$MICA_REDIS_USER" "$@"; }

check "redis-cli over the Unix socket as '$MICA_REDIS_USER': SET/GET test:x"
[[ "$(rcli -s "$MICA_REDIS_SOCKET" SET test:x harness)" == OK ]] || fail "SET test:x"
[[ "$(rcli -s "$MICA_REDIS_SOCKET" GET test:x)" == harness ]] || fail "GET test:x"

check "the test user gets NOPERM for key other:x"
out="$(rcli -s "$MICA_REDIS_SOCKET" SET other:x 1 2>&1 || true)"
[[ "$out" == NOPERM* ]] || fail "SET other:x answered '$out'"

check "the test user cannot run dangerous commands (FLUSHALL)"
out="$(rcli -s "$MICA_REDIS_SOCKET" FLUSHALL 2>&1 || true)"
[[ "$out" == NOPERM* ]] || fail "FLUSHALL answered '$out'"

check "the default user is disabled"
out="$(redis-cli -s "$MICA_REDIS_SOCKET" PING 2>&1 || true)"
[[ "$out" == NOAUTH* ]] || fail "unauthenticated PING answered '$out'"

check "redis-cli --tls with the test CA on 127.0.0.1:$MICA_REDIS_PORT answers PING"
out="$(rcli --tls --cacert "$MICA_CA" -h 127.0.0.1 -p "$MICA_REDIS_PORT" PING 2>&1)" || true
[[ "$out" == PONG ]] || fail "TLS PING answered '$out'"

check "redis-cli --tls trusting the rogue CA cannot connect"
out="$(rcli --tls --cacert "$MICA_CA_ROGUE" -h 127.0.0.1 -p "$MICA_REDIS_PORT" PING 2>&1)" || true
[[ "$out" != PONG ]] || fail "TLS connection accepted with the rogue CA as trust anchor"

# ---- SoftHSM2
check "softhsm2-util --show-slots lists the token '$MICA_HSM_TOKEN_LABEL'"
out="$(softhsm2-util --show-slots)"
grep -Eq "^[[:space:]]*Label:[[:space:]]+${MICA_HSM_TOKEN_LABEL}[[:space:]]*$" <<<"$out" ||
	fail "token not listed by softhsm2-util"

check "pkcs11-tool --list-token-slots finds it through $MICA_HSM_MODULE"
out="$(pkcs11-tool --module "$MICA_HSM_MODULE" --list-token-slots)"
grep -Eq "token label[[:space:]]*:[[:space:]]*${MICA_HSM_TOKEN_LABEL}[[:space:]]*$" <<<"$out" ||
	fail "token not listed by pkcs11-tool"

check "login with the PIN from MICA_HSM_PIN_FILE works (--list-objects)"
pkcs11-tool --module "$MICA_HSM_MODULE" --token-label "$MICA_HSM_TOKEN_LABEL" --login \
	--pin "$(<"$MICA_HSM_PIN_FILE")" --list-objects >/dev/null || fail "login with the user PIN failed"

# ---- Restarts
check "MICA_PG_RESTART restarts PostgreSQL (new postmaster pid) and it accepts connections after"
pid_before="$(head -n 1 "$MICA_PG_DATA/postmaster.pid")"
started_before="$(psql -X -Atc "SELECT pg_postmaster_start_time()" "$MICA_PG_CONNINFO")"
sh -c "$MICA_PG_RESTART" || fail "MICA_PG_RESTART failed"
pid_after="$(head -n 1 "$MICA_PG_DATA/postmaster.pid")"
[[ "$pid_after" != "$pid_before" ]] || fail "postmaster pid unchanged ($pid_before)"
stat="$(cat "/proc/$pid_before/stat" 2>/dev/null || true)"
[[ -z "$stat" || "${stat##*) }" == Z* ]] || fail "old postmaster $pid_before still alive"
started_after="$(psql -X -Atc "SELECT pg_postmaster_start_time()" "$MICA_PG_CONNINFO")" ||
	fail "no connection after restart"
[[ "$started_after" != "$started_before" ]] || fail "postmaster start time unchanged"

check "MICA_REDIS_RESTART restarts Redis (new run_id) on the same socket and port"
admin_info() {
	REDISCLI_AUTH="$(<"$MICA_REDIS_ADMIN_PASSWORD_FILE")" redis-cli --no-auth-warning --user admin \
		-s "$MICA_REDIS_SOCKET" INFO server | tr -d '\r' | sed -n 's/^run_id://p'
}
run_before="$(admin_info)"
[[ -n "$run_before" ]] || fail "no run_id from Redis"
sh -c "$MICA_REDIS_RESTART" || fail "MICA_REDIS_RESTART failed"
run_after="$(admin_info)"
[[ -n "$run_after" && "$run_after" != "$run_before" ]] || fail "run_id '$run_before' -> '$run_after'"
[[ "$(rcli --tls --cacert "$MICA_CA" -h 127.0.0.1 -p "$MICA_REDIS_PORT" PING)" == PONG ]] ||
	fail "no TLS PING after restart"

echo "harness: all checks passed"
