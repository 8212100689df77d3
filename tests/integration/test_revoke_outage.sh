#!/usr/bin/env bash
# test_revoke_outage.sh - session revocation under Redis faults (issue 19, item 1), against a real
# mica-account and lib/auth (tests/peers/auth_check as a non-account service, Redis user
# keycenter) on a private Redis run as `make run` runs it (append-only file on, so a restarted
# Redis comes back with its data). The harness Redis is not touched.
#   a. Redis stopped (SIGTERM by pid): DELETE /v1/sessions/{id}, logout, revoke-all and a password
#      change answer 503 and change nothing in PostgreSQL (no half-done revocation to come back);
#      once Redis is back (with every cached entry, from its append-only file), retried, they
#      answer 200 and the tokens are refused by the account service, by a fresh lib/auth and by a
#      long-lived lib/auth with an in-process copy (lib/kvcache) that held them.
#   b. Redis paused (SIGSTOP: no connection breaks, no invalidation can arrive): the long-lived
#      checker stops serving its in-process copy within the sync window, and after Redis answers
#      again it does not serve what it held before the silence.
#   c. Redis back from an older append-only file, taken before a revocation (a restore, or a crash
#      that lost the file's tail): the revoked session's live entry is back in Redis. The account
#      service refuses the token at once (it reads only PostgreSQL until its resync), re-applies
#      the revocation from PostgreSQL (tombstone), and lib/auth refuses it after that.
#   d. Redis stopped during a freeze (failed step-ups after the right password): the freeze is not
#      refused (423, sessions revoked in PostgreSQL); the tombstones it could not write are
#      re-applied when Redis is back, so the frozen sessions are refused everywhere.
# Everything it starts is stopped and its database dropped on exit, whatever happens.
set -euo pipefail

# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"
stack_begin test_revoke_outage MICA_CERT_ACCOUNT MICA_KEY_ACCOUNT MICA_CERT_KEYCENTER \
	MICA_KEY_KEYCENTER
ACCT_BIN="$BUILD/bin/mica-account"
KC_BIN="$BUILD/bin/mica-keycenter"
CHECK="$BUILD/tests/peers/auth_check"
for f in "$ACCT_BIN" "$KC_BIN" "$CHECK"; do [[ -x "$f" ]] || fail "$f is missing (make all)"; done
command -v jq >/dev/null || fail "jq is not installed"

# The private Redis: users account and keycenter as deploy/lib.sh makes them, the harness CA.
R="$W/r"
mkdir -p "$R"
ln -s "$MICA_TEST_DIR/ca" "$R/ca"
RSOCK="$R/redis/redis.sock"
redis_pid() { mica_redis_pid "$R"; }
# The daemon must not inherit the checker's FIFO (fd 5) or jget's pipes (7, 8): it would keep
# them open after we close them.
redis_start() { mica_redis_up "$R" yes account keycenter >/dev/null 5>&- 6<&- 7>&- 8<&-; }
redis_stop() {
	local pid
	pid="$(redis_pid)" || fail "the private Redis is not running"
	kill -TERM "$pid"
	mica_wait_for 30 eval "! mica_pid_alive $pid" || fail "Redis $pid ignored SIGTERM"
}
rcli() { mica_redis_cli "$R" account "$@"; }
stack_on_exit() {
	local pid
	exec 5>&- 6<&- || true
	if pid="$(redis_pid)"; then
		kill -CONT "$pid" 2>/dev/null || true
		mica_redis_stop "$R"
	fi
}
redis_start

# ---------------------------------------------------------------------------------------------
step="setup"
stack_account_setup
ACCT_ENV+=(
	MICA_ACCOUNT_RISK_STEPUP_NEW_DEVICE=true
	MICA_ACCOUNT_RISK_STEPUP_NEW_NETWORK=false
	MICA_ACCOUNT_RISK_FREEZE_AFTER_STEPUP_FAILURES=2
	MICA_ACCOUNT_INTROSPECT_PRINCIPALS=keycenter
	"MICA_ACCOUNT_REDIS_SOCKET=$RSOCK"
	"MICA_ACCOUNT_REDIS_PASSWORD_FILE=$R/secrets/redis-account.password"
)
stack_start account "$AURL" "${ACCT_ENV[@]}" "$ACCT_BIN" --config deploy/mica.conf.example
ok "Key Center on $KURL; mica-account on $AURL; private Redis (appendonly yes) at $RSOCK"

# req WANT [-t TOKEN] METHOD PATH [JSON]: one request to mica-account; body in $W/body, status in
# $status, which must be WANT.
status=""
req() {
	local want="$1" token="" args
	shift
	if [[ "$1" == -t ]]; then
		token="$2"
		shift 2
	fi
	args=(-sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' -X "$1")
	[[ -n "$token" ]] && args+=(-H "Authorization: Bearer $token")
	if (($# >= 3)); then args+=(-H 'Content-Type: application/json' --data-binary "$3"); fi
	status="$(curl "${args[@]}" "$AURL$2")" || fail "curl $1 $2 failed"
	[[ "$status" == "$want" ]] || fail "$1 $2: status $status, want $want: $(cat "$W/body")"
}
sha256() { printf '%s' "$1" | sha256sum | cut -c1-64; }
cached() { rcli GET "session:$(sha256 "$1")"; }
# revocation_cached TOKEN: Redis holds the tombstone of TOKEN's session.
revocation_cached() { [[ "$(cached "$1")" == '{"revoked":true}' ]]; }

EMAIL="outage-$$@example.com" PW='Outage-pass1' PW2='Outage-pass2'
# login: a new app session of our account; sets TOKEN and SID.
login() {
	req 200 POST /v1/login "$(jq -nc --arg l "$EMAIL" --arg p "$1" \
		'{login: $l, password: $p, session_kind: "app", device: {id: "dev-outage", name: "t"}}')"
	TOKEN="$(jget token)" SID="$(jget session_id)"
	[[ "$TOKEN" =~ ^[A-Za-z0-9_-]{43}$ && "$SID" =~ ^[0-9]+$ ]] || fail "login: $(cat "$W/body")"
}
# account_ok TOKEN / account_refuses TOKEN: the account service's own token check.
account_ok() { req 200 -t "$1" GET /v1/session; }
account_refuses() { req 401 -t "$1" GET /v1/session; }

# A long-lived lib/auth with an in-process copy, driven line by line through FIFOs.
mkfifo "$W/in" "$W/out"
"$CHECK" --introspect-url "$AURL/v1/introspect" --ca "$MICA_CA" --cert "$MICA_CERT_KEYCENTER" \
	--key "$MICA_KEY_KEYCENTER" --timeout-ms 20000 --redis-socket "$RSOCK" \
	--redis-user keycenter --redis-password-file "$R/secrets/redis-keycenter.password" \
	--local-cache <"$W/in" >"$W/out" 2>"$W/live.log" 7>&- 8<&- &
STACK_PID[auth_check]=$!
exec 5>"$W/in" 6<"$W/out"
# ask LINE: one line to the long-lived checker; its answer in $got.
got=""
ask() {
	printf '%s\n' "$1" >&5
	IFS= read -r -t 60 got <&6 || fail "the long-lived auth_check did not answer: $(cat "$W/live.log")"
}
# live_hit TOKEN: the long-lived checker answers valid from its in-process copy (its hit counter
# moves); live_refuses TOKEN: it answers access_denied.
stat_of() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$got"; }
# A copy can miss once on a host so loaded that a heartbeat came late (the copy lapsed and
# refilled from Redis): up to three tries.
live_hit() {
	local before
	for _ in 1 2 3; do
		ask "#stats"
		before="$(stat_of hits)"
		ask "Bearer $1"
		[[ "$got" == "valid "*" source=cache" ]] ||
			fail "long-lived checker: '$got', want valid from the cache"
		ask "#stats"
		(($(stat_of hits) == before + 1)) && return 0
	done
	fail "long-lived checker: not a hit of its copy ($got)"
}
live_refuses() {
	ask "Bearer $1"
	[[ "$got" == "invalid access_denied" ]] || fail "long-lived checker accepted a revoked token: $got"
}
# fresh_refuses TOKEN / fresh_ok TOKEN: a new lib/auth process (Redis, then introspection).
fresh() {
	"$CHECK" --introspect-url "$AURL/v1/introspect" --ca "$MICA_CA" --cert "$MICA_CERT_KEYCENTER" \
		--key "$MICA_KEY_KEYCENTER" --timeout-ms 20000 --redis-socket "$RSOCK" \
		--redis-user keycenter --redis-password-file "$R/secrets/redis-keycenter.password" \
		<<<"Bearer $1" 2>"$W/check.err" 7>&- 8<&- || fail "auth_check: $(cat "$W/check.err")"
}
fresh_refuses() {
	local out
	out="$(fresh "$1")"
	[[ "$out" == "invalid access_denied" ]] || fail "a fresh lib/auth accepted a revoked token: $out"
}
fresh_ok() {
	local out
	out="$(fresh "$1")"
	[[ "$out" == "valid "* ]] || fail "a fresh lib/auth refused a live token: $out"
}
revoked_count() { sql "$ADMIN_CI" "SELECT count(*) FROM account.session WHERE revoked_at IS NOT NULL"; }

# ---------------------------------------------------------------------------------------------
step="account"
req 200 POST /v1/register/start "$(jq -nc --arg e "$EMAIL" '{email: $e}')"
VID="$(jget verification_id)"
CODE="$("$MICA" outbox list --db "$ADMIN_CI" --to "$EMAIL" --limit 5 2>/dev/null |
	sed -n 's/.*verification code is \([0-9]\{6\}\)\..*/\1/p' | tail -n 1)"
[[ "$CODE" =~ ^[0-9]{6}$ ]] || fail "no verification code for $EMAIL in the outbox"
req 201 POST /v1/register/complete "$(jq -nc --arg v "$VID" --arg c "$CODE" --arg p "$PW" \
	'{verification_id: $v, code: $c, password: $p, device: {id: "dev-outage", name: "t"}}')"
T0="$(jget token)"
declare -A TOK SIDS
for n in 1 2 3 4 5; do
	login "$PW"
	TOK[$n]="$TOKEN" SIDS[$n]="$SID"
done
ok "registered $EMAIL; sessions ${SIDS[*]}"

# Every session cached everywhere: in Redis, in the account service's copy, in the checker's.
for n in 1 2 3 4 5; do
	account_ok "${TOK[$n]}"
	account_ok "${TOK[$n]}"
	[[ "$(jq -r .session_id <<<"$(cached "${TOK[$n]}")")" == "${SIDS[$n]}" ]] ||
		fail "session ${SIDS[$n]} is not cached in Redis: $(cached "${TOK[$n]}")"
	ask "Bearer ${TOK[$n]}"
	live_hit "${TOK[$n]}"
done
ok "sessions cached in Redis, in mica-account's and in the long-lived checker's copies"

# ---------------------------------------------------------------------------------------------
step="a. Redis stopped"
redis_stop
before="$(revoked_count)"
# T0 signs the requests that revoke others; the account service checks it in PostgreSQL.
req 503 -t "$T0" DELETE "/v1/sessions/${SIDS[1]}"
[[ "$(jget error.code)" == unavailable ]] || fail "DELETE: $(cat "$W/body")"
req 503 -t "${TOK[2]}" POST /v1/logout
req 503 -t "${TOK[3]}" POST /v1/sessions/revoke-all '{"keep_current": true}'
req 503 -t "${TOK[4]}" POST /v1/password/change \
	"$(jq -nc --arg c "$PW" --arg n "$PW2" '{current_password: $c, new_password: $n}')"
[[ "$(jget error.code)" == unavailable ]] || fail "password change: $(cat "$W/body")"
[[ "$(revoked_count)" == "$before" ]] || fail "a refused revocation changed PostgreSQL"
# Nothing was revoked, so nothing may stop working either (the account service and lib/auth
# answer from PostgreSQL while Redis is down).
account_ok "${TOK[1]}"
ask "Bearer ${TOK[1]}"
[[ "$got" == "valid "* ]] || fail "long-lived checker during the outage: $got"
ok "Redis down: DELETE, logout, revoke-all, password change answer 503; PostgreSQL unchanged"

redis_start
[[ "$(jq -r .session_id <<<"$(cached "${TOK[1]}")")" == "${SIDS[1]}" ]] ||
	fail "Redis did not come back with its data: $(cached "${TOK[1]}")"
login "$PW" # the password did not change
req 200 -t "$TOKEN" POST /v1/logout
req 200 -t "$T0" DELETE "/v1/sessions/${SIDS[1]}"
req 200 -t "${TOK[2]}" POST /v1/logout
# revoke-all from session 3 revokes 1, 2, 4, 5 and T0; keep 3. Password change from 4 revokes 3.
req 200 -t "${TOK[3]}" POST /v1/sessions/revoke-all '{"keep_current": true}'
account_refuses "${TOK[4]}"
login "$PW"
T4="$TOKEN"
req 200 -t "$T4" POST /v1/password/change \
	"$(jq -nc --arg c "$PW" --arg n "$PW2" '{current_password: $c, new_password: $n}')"
for n in 1 2 3 4 5; do
	account_refuses "${TOK[$n]}"
	live_refuses "${TOK[$n]}"
	fresh_refuses "${TOK[$n]}"
	[[ "$(cached "${TOK[$n]}")" == '{"revoked":true}' ]] || fail "no tombstone: $(cached "${TOK[$n]}")"
done
account_refuses "$T0"
fresh_refuses "$T0"
account_ok "$T4"
ok "Redis back: retried, every revocation holds in mica-account, a fresh and a long-lived lib/auth"

# ---------------------------------------------------------------------------------------------
step="b. Redis paused"
login "$PW2"
T6="$TOKEN" S6="$SID"
account_ok "$T6"
ask "Bearer $T6"
live_hit "$T6"
pid="$(redis_pid)"
kill -STOP "$pid"
sleep 1.5 # past the sync window (MICA_KVCACHE_SYNC_WINDOW_MS, 1 s)
ask "Bearer $T6" # the copy lapsed; Redis does not answer: introspection (PostgreSQL) answers
paused_answer="$got"
ask "#stats"
stats_paused="$got"
kill -CONT "$pid"
[[ "$paused_answer" == "valid "*" source=introspection" ]] ||
	fail "Redis silent for 1.5 s: '$paused_answer', want an answer from introspection, not the copy"
got="$stats_paused"
(($(stat_of lapses) >= 1)) || fail "no lapse while Redis was silent: $stats_paused"
ask "#stats"
entries="$(stat_of entries)"
((entries == 0)) || fail "entries held before the silence survived it: $got"
ok "Redis paused: the in-process copy stopped serving and dropped what it held"
req 200 -t "$T6" DELETE "/v1/sessions/$S6"
live_refuses "$T6"
fresh_refuses "$T6"
account_refuses "$T6"
ok "after the pause, session $S6 revoked: refused at once everywhere"

# ---------------------------------------------------------------------------------------------
step="c. Redis back from an older file"
login "$PW2"
T7="$TOKEN" S7="$SID"
account_ok "$T7"
account_ok "$T7"
ask "Bearer $T7"
live_hit "$T7"
redis_stop
cp -a "$R/redis/data" "$W/aof-before"
redis_start
req 200 -t "$T7" DELETE "/v1/sessions/$S7"
[[ "$(cached "$T7")" == '{"revoked":true}' ]] || fail "no tombstone: $(cached "$T7")"
redis_stop
rm -rf "$R/redis/data"
cp -a "$W/aof-before" "$R/redis/data"
redis_start
# The account service reads no session from Redis until it has resynced, whichever comes first.
account_refuses "$T7"
mica_wait_for 20 revocation_cached "$T7" ||
	fail "the account service did not re-apply the revocation: $(cached "$T7")"
grep -q 'session cache resync: 1 of [0-9]* entries were revoked' "$W/account.log" ||
	fail "no resync in the account log"
account_refuses "$T7"
fresh_refuses "$T7"
live_refuses "$T7"
ok "Redis restored from before the revocation of $S7: re-applied from PostgreSQL, refused everywhere"

 # ---------------------------------------------------------------------------------------------
step="d. freeze while Redis is stopped"
login "$PW2"
T8="$TOKEN"
account_ok "$T8"
account_ok "$T8"
ask "Bearer $T8"
live_hit "$T8"
# Login and the code send count in Redis (they answer 503 without it: the limits fail
# closed); the wrong codes that freeze count in PostgreSQL, so they go on while it is down.
req 403 POST /v1/login "$(jq -nc --arg l "$EMAIL" --arg p "$PW2" \
	'{login: $l, password: $p, session_kind: "app", device: {id: "dev-thief", name: "t"}}')"
SU="$(jget stepup_id)"
req 200 POST "/v1/stepup/$SU/send" '{"method": "email"}'
CODE="$("$MICA" outbox list --db "$ADMIN_CI" --to "$EMAIL" --limit 20 2>/dev/null |
	sed -n 's/.*verification code is \([0-9]\{6\}\)\..*/\1/p' | tail -n 1)"
[[ "$CODE" =~ ^[0-9]{6}$ ]] || fail "no step-up code in the outbox"
redis_stop
BAD="${CODE:0:5}$(((${CODE:5:1} + 1) % 10))"
req 400 POST "/v1/stepup/$SU/verify" "{\"code\": \"$BAD\"}"
req 423 POST "/v1/stepup/$SU/verify" "{\"code\": \"$BAD\"}"
[[ "$(jget error.code)" == account_frozen ]] || fail "freeze: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.session WHERE revoked_at IS NULL")" == 0 ]] ||
	fail "sessions survived the freeze"
account_refuses "$T8"
redis_start
[[ "$(jq -r .session_id <<<"$(cached "$T8")" 2>/dev/null)" =~ ^[0-9]+$ || "$(cached "$T8")" == '{"revoked":true}' ]] ||
	fail "unexpected cache entry after the restart: $(cached "$T8")"
account_refuses "$T8"
mica_wait_for 20 revocation_cached "$T8" ||
	fail "the freeze's revocation was not re-applied: $(cached "$T8")"
fresh_refuses "$T8"
live_refuses "$T8"
ok "Redis down: the freeze went through (423); its tombstones were written once Redis was back"

exec 5>&-
wait "${STACK_PID[auth_check]}" || fail "the long-lived auth_check exited with status $?"
exec 6<&-
STACK_PID[auth_check]=""
