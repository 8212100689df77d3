#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs and PHC strings are single-quoted on purpose
# test_account_sessions.sh - mica-account end to end: sessions.
# Driven with curl against its own fresh database on the tests/run PostgreSQL, the harness
# Redis (ACL user account) and a private Key Center (the harness SoftHSM2 token), with small
# risk thresholds (lib-account.sh):
#   sessions: list, revoke one (fails at once, Redis tombstone, also on a second instance with
#   its in-process copy), revoke-all, logout, web idle timeout, introspection for mTLS service
#   principals only; body members of the wrong type, too long, or with a NUL
# A failed check is reported and the test goes on (check_fail, expect); it exits 1 at the end
# with the count. Everything it starts is stopped and its database dropped on exit.
set -euo pipefail

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"
account_begin test_account_sessions
account_small_limits
account_start
ok "Key Center on $KURL with keys account-pii/-index/-pepper; mica-account on $AURL"

alice_setup
PW_A2="$PW_A"
# A session of another device, which revoke-all ends.
T_LAPTOP="$REG_TOKEN"

# ---------------------------------------------------------------------------------------------
step="4 sessions"
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T1="$(jget token)" S1="$(jget session_id)"
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T2="$(jget token)" S2="$(jget session_id)"
t0="$(now)"
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice '{session_kind: "web"}')"
T3="$(jget token)" S3="$(jget session_id)"
exp="$(jget expires_at)"
if ! [[ "$(jget kind)" == web ]] || ((exp < t0 + 59 || exp > $(now) + 61)); then
	check_fail "web session expires_at $exp, now $t0: $(cat "$W/body")"
fi
expect 200 - -t "$T1" GET /v1/sessions
python3 - "$W/body" "$S1" "$S2" "$S3" <<'PY' || check_fail "session list: $(cat "$W/body")"
import json, sys
ss = json.load(open(sys.argv[1]))["sessions"]
ids = {s["id"]: s for s in ss}
s1, s2, s3 = (int(x) for x in sys.argv[2:5])
assert {s1, s2, s3} <= set(ids), ids
assert ids[s1]["current"] is True and not ids[s2]["current"] and ids[s3]["kind"] == "web"
assert [s["id"] for s in ss if s["current"]] == [s1]
assert set(ss[0]) == {"id", "kind", "created_at", "last_seen_at", "device_name", "expires_at", "current"}
PY
ok "list shows the current session and the web session"
# The Redis cache other services read.
H1="$(sha256 "$T1")"
cached="$(mica_redis_cli "$MICA_TEST_DIR" account GET "session:$H1")"
[[ "$(jq -r .user_id <<<"$cached")" == "$ALICE_UID" && "$(jq -r .session_id <<<"$cached")" == "$S1" ]] ||
	check_fail "cache entry: $cached"
expect 200 - -t "$T2" GET /v1/sessions
expect 200 - -t "$T1" DELETE "/v1/sessions/$S2"
[[ "$(jget revoked)" == true ]] || check_fail "revoke: $(cat "$W/body")"
expect 401 invalid_token -t "$T2" GET /v1/sessions
grep -qi '^WWW-Authenticate: Bearer' "$W/headers" || check_fail "no WWW-Authenticate: $(cat "$W/headers")"
[[ "$(mica_redis_cli "$MICA_TEST_DIR" account GET "session:$(sha256 "$T2")")" == '{"revoked":true}' ]] ||
	check_fail "no tombstone in the cache"
expect 404 unknown_session -t "$T1" DELETE "/v1/sessions/$S2"
expect 404 unknown_session -t "$T1" DELETE /v1/sessions/999999
expect 400 bad_session_id -t "$T1" DELETE /v1/sessions/abc
# strtoll clamped an id beyond int64 to the largest one and answered 404 as for a real lookup.
expect 400 session_id_out_of_range -t "$T1" DELETE /v1/sessions/9223372036854775808
expect 400 session_id_out_of_range -t "$T1" DELETE /v1/sessions/0
expect 404 unknown_session -t "$T1" DELETE /v1/sessions/9223372036854775807
expect 401 invalid_token GET /v1/sessions
expect 401 invalid_token -t short GET /v1/sessions
ok "a revoked session fails on the very next request (PostgreSQL and a Redis tombstone)"

# A second instance on the same database and Redis. Its third check of T7 is answered from its
# in-process session copy (the second put it there, and PostgreSQL was touched by the first), so
# only the Redis client-tracking invalidation, pushed before the revoking instance even had its
# tombstone acknowledged, can make the very next check there fail.
mica_free_port APORT2
AURL_A="$AURL" AURL_B="https://localhost:$APORT2"
account_start_instance account2 "$AURL_B" "MICA_ACCOUNT_HTTP_PORT=$APORT2" MICA_ACCOUNT_HTTP_METRICS_PORT=0
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T7="$(jget token)" S7="$(jget session_id)"
AURL="$AURL_B"
for _ in 1 2 3; do expect 200 - -t "$T7" GET /v1/session; done
AURL="$AURL_A"
expect 200 - -t "$T1" DELETE "/v1/sessions/$S7"
AURL="$AURL_B"
expect 401 invalid_token -t "$T7" GET /v1/session
ok "a session revoked through one instance fails on the very next request to another"
AURL="$AURL_A"
stack_stop account2
# Introspection: mTLS service principals only.
expect 200 - -c keycenter POST /v1/introspect "{\"token\": \"$T1\"}"
[[ "$(jget active)" == true && "$(jget sub)" == "$ALICE_UID" && "$(jget sid)" == "$S1" &&
	"$(jget kind)" == app && "$(jget token_type)" == Bearer && "$(jget exp)" =~ ^[0-9]+$ &&
	"$(jget auth_time)" =~ ^[0-9]+$ && "$(jget device_id)" =~ ^[0-9a-f]{64}$ ]] ||
	check_fail "introspect: $(cat "$W/body")"
expect 200 - -c keycenter POST /v1/introspect "{\"token\": \"$T2\"}"
[[ "$(cat "$W/body")" == '{"active":false}' ]] || check_fail "revoked token: $(cat "$W/body")"
expect 200 - -c keycenter POST /v1/introspect '{"token": "not-a-token"}'
[[ "$(jget active)" == false ]] || check_fail "garbage token: $(cat "$W/body")"
expect 400 missing_field -c keycenter POST /v1/introspect '{}'
expect 401 client_certificate_required POST /v1/introspect "{\"token\": \"$T1\"}"
expect 403 access_denied -c admin POST /v1/introspect "{\"token\": \"$T1\"}"
expect 403 client_certificate_invalid -c rogue POST /v1/introspect "{\"token\": \"$T1\"}"
expect 403 access_denied -c account POST /v1/introspect "{\"token\": \"$T1\"}"

# Body members of the wrong type or too long are refused, naming the member.
expect 400 bad_field -c keycenter POST /v1/introspect '{"token": 5}'
expect 400 bad_field -c keycenter POST /v1/introspect "{\"token\": \"$(printf 'a%.0s' $(seq 129))\"}"
expect 400 missing_field -c keycenter POST /v1/introspect '{"token": ""}'
# A NUL inside a string never reaches a handler: the JSON is refused whole.
expect 400 malformed_json POST /v1/password/reset/complete '{"verification_id": "x", "code": "12\u00003456", "new_password": "Whatever-1"}'

# Web sessions idle out: each use pushes expires_at to now + web_idle_s; unused, they end.
sql "$ADMIN_CI" "UPDATE account.session SET expires_at = now() + interval '5 seconds' WHERE id = $S3"
expect 200 - -t "$T3" GET /v1/sessions
[[ "$(sql "$ADMIN_CI" "SELECT expires_at > now() + interval '55 seconds' AND expires_at <= now() + interval '61 seconds'
	FROM account.session WHERE id = $S3")" == t ]] || check_fail "web session not extended"
# A use seen by another service (through introspection) extends it the same way.
sql "$ADMIN_CI" "UPDATE account.session SET expires_at = now() + interval '5 seconds' WHERE id = $S3"
expect 200 - -c keycenter POST /v1/introspect "{\"token\": \"$T3\"}"
[[ "$(jget active)" == true && "$(sql "$ADMIN_CI" "SELECT expires_at > now() + interval '55 seconds'
	FROM account.session WHERE id = $S3")" == t ]] || check_fail "web session not extended by introspection"
sql "$ADMIN_CI" "UPDATE account.session SET expires_at = now() - interval '1 second' WHERE id = $S3"
expect 401 invalid_token -t "$T3" GET /v1/sessions
expect 200 - -c keycenter POST /v1/introspect "{\"token\": \"$T3\"}"
[[ "$(jget active)" == false ]] || check_fail "idle web session still active: $(cat "$W/body")"
ok "web session extended on use (its own or through introspection), ended when idle"

# Revoke all but the current one; then log out.
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T4="$(jget token)"
# A mistyped keep_current is refused, not read as false (which would end this session too).
expect 400 bad_field -t "$T1" POST /v1/sessions/revoke-all '{"keep_current": "true"}'
expect 200 - -t "$T4" GET /v1/sessions
expect 200 - -t "$T1" POST /v1/sessions/revoke-all '{"keep_current": true}'
expect 401 invalid_token -t "$T4" GET /v1/sessions
expect 401 invalid_token -t "$T_LAPTOP" GET /v1/sessions
expect 200 - -t "$T1" GET /v1/sessions
[[ "$(jget sessions.#)" == 1 ]] || check_fail "after revoke-all: $(cat "$W/body")"
expect 200 - -t "$T1" POST /v1/logout
expect 401 invalid_token -t "$T1" GET /v1/sessions
expect 401 invalid_token -t "$T1" POST /v1/logout
must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A2" dev-alice)"
T5="$(jget token)"
expect 200 - -t "$T5" POST /v1/sessions/revoke-all
expect 401 invalid_token -t "$T5" GET /v1/sessions


stack_stop account
stack_stop keycenter
stack_end
