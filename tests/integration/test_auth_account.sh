#!/usr/bin/env bash
# test_auth_account.sh - lib/auth against the real account service, not the stub of test_auth.c:
# tests/peers/auth_check validates bearer tokens as a non-account service would (Redis user
# keycenter, read-only on session:*; mTLS principal keycenter, allowed to introspect) against a
# mica-account with its own fresh database and a private Key Center:
#   a. a token of a registered, logged-in account validates; the account service fills the cache
#   b. with no cache entry (or no Redis at all) it validates through POST /v1/introspect, with
#      exactly the session PostgreSQL holds; web sessions always go there
#   c. a session revoked through the account API fails on the very next validation: with the
#      entry cached (tombstone), with a cold cache (introspection), and in a long-lived checker
#      holding it in its in-process copy (lib/kvcache)
#   d. principals outside account.introspect.principals, and an untrusted certificate, are
#      refused by the account service, so validation fails closed; no certificate, no validator
#   e. malformed Authorization values are refused before any lookup, without a crash
# Everything it starts is stopped and its database dropped on exit, whatever happens.
set -euo pipefail

# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"
stack_begin test_auth_account MICA_REDIS_SOCKET MICA_REDIS_PASSWORD_FILE_ACCOUNT \
	MICA_REDIS_PASSWORD_FILE_KEYCENTER MICA_CERT_ACCOUNT MICA_KEY_ACCOUNT MICA_CERT_KEYCENTER \
	MICA_KEY_KEYCENTER MICA_CERT_ROGUE MICA_KEY_ROGUE
ACCT_BIN="$BUILD/bin/mica-account"
KC_BIN="$BUILD/bin/mica-keycenter"
CHECK="$BUILD/tests/peers/auth_check"
for f in "$ACCT_BIN" "$KC_BIN" "$CHECK"; do [[ -x "$f" ]] || fail "$f is missing (make all)"; done
command -v jq >/dev/null || fail "jq is not installed"

# Our sessions' cache entries and the account service's counters outlive the database.
HASHES=()
redis_clear() {
	local k h
	for h in "${HASHES[@]}"; do
		mica_redis_cli "$MICA_TEST_DIR" account DEL "session:$h" >/dev/null
	done
	mica_redis_cli "$MICA_TEST_DIR" account --scan --pattern 'account:*' 2>/dev/null |
		while IFS= read -r k; do
			[[ -n "$k" ]] && mica_redis_cli "$MICA_TEST_DIR" account DEL "$k" >/dev/null
		done
}
stack_on_exit() {
	exec 5>&- 6<&-
	redis_clear || true
}

# ---------------------------------------------------------------------------------------------
step="setup"
redis_clear
stack_account_setup
# No step-up (one device, one network): only sessions matter here.
ACCT_ENV+=(
	MICA_ACCOUNT_RISK_STEPUP_NEW_DEVICE=false
	MICA_ACCOUNT_RISK_STEPUP_NEW_NETWORK=false
	MICA_ACCOUNT_INTROSPECT_PRINCIPALS=keycenter
)
stack_start account "$AURL" "${ACCT_ENV[@]}" "$ACCT_BIN" --config deploy/mica.conf.example
ok "Key Center on $KURL; mica-account on $AURL (introspection: keycenter only)"

# req [-t TOKEN] METHOD PATH [JSON]: one request to mica-account; body in $W/body, status in
# $status, which must be WANT (the first argument).
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
cached() { mica_redis_cli "$MICA_TEST_DIR" account GET "session:$(sha256 "$1")"; }
uncache() { mica_redis_cli "$MICA_TEST_DIR" account DEL "session:$(sha256 "$1")" >/dev/null; }

# login SESSION_KIND: a new session of our account; sets TOKEN and SID.
login() {
	req 200 POST /v1/login "$(jq -nc --arg l "$EMAIL" --arg p "$PW" --arg k "$1" \
		'{login: $l, password: $p, session_kind: $k, device: {id: "dev-auth", name: "test"}}')"
	TOKEN="$(jget token)" SID="$(jget session_id)"
	[[ "$TOKEN" =~ ^[A-Za-z0-9_-]{43}$ && "$SID" =~ ^[0-9]+$ ]] || fail "login: $(cat "$W/body")"
	HASHES+=("$(sha256 "$TOKEN")")
}

# session_line SID SOURCE: what auth_check must print for session SID, from PostgreSQL.
session_line() {
	printf '%s source=%s' "$(sql "$ADMIN_CI" "SELECT 'valid uid=' || user_id || ' sid=' || id ||
		' kind=' || kind || ' device=' || device_hash || ' auth_at=' ||
		extract(epoch from auth_at)::bigint || ' exp=' || extract(epoch from expires_at)::bigint
		FROM account.session WHERE id = $1")" "$2"
}

# check PRINCIPAL [--redis | --no-redis] [OPTION...] < LINES: auth_check presenting PRINCIPAL's
# certificate ("-" for none), with or without the Redis cache (user keycenter); its lines go to
# $W/check.out, one per input line. It must exit 0.
check() {
	local who="$1" v cv kv args=(--introspect-url "$AURL/v1/introspect" --ca "$MICA_CA"
		--timeout-ms 10000)
	shift
	if [[ "$who" != - ]]; then
		v="$(mica_env_name "$who")"
		cv="MICA_CERT_$v" kv="MICA_KEY_$v"
		args+=(--cert "${!cv}" --key "${!kv}")
	fi
	if [[ "$1" == --redis ]]; then
		args+=(--redis-socket "$MICA_REDIS_SOCKET" --redis-user keycenter
			--redis-password-file "$MICA_REDIS_PASSWORD_FILE_KEYCENTER")
	fi
	shift
	"$CHECK" "${args[@]}" "$@" >"$W/check.out" 2>"$W/check.err" 7>&- 8<&- ||
		fail "auth_check exited with status $?: $(cat "$W/check.err")"
}
# want N LINE: line N of the last check's output is exactly LINE.
want() {
	local got
	got="$(sed -n "$1p" "$W/check.out")"
	[[ "$got" == "$2" ]] || fail "auth_check line $1: '$got', want '$2'"
}

# ---------------------------------------------------------------------------------------------
step="account"
EMAIL="auth-$$@example.com" PW='Authcheck-pass1'
req 200 POST /v1/register/start "$(jq -nc --arg e "$EMAIL" '{email: $e}')"
VID="$(jget verification_id)"
CODE="$("$MICA" outbox list --db "$ADMIN_CI" --to "$EMAIL" --limit 5 2>/dev/null |
	sed -n 's/.*verification code is \([0-9]\{6\}\)\..*/\1/p' | tail -n 1)"
[[ "$CODE" =~ ^[0-9]{6}$ ]] || fail "no verification code for $EMAIL in the outbox"
req 201 POST /v1/register/complete "$(jq -nc --arg v "$VID" --arg c "$CODE" --arg p "$PW" \
	'{verification_id: $v, code: $c, password: $p, device: {id: "dev-auth", name: "test"}}')"
T0="$(jget token)"
HASHES+=("$(sha256 "$T0")")
UID_="$(sql "$ADMIN_CI" "SELECT user_id FROM account.session WHERE id = $(jget session_id)")"
[[ "$UID_" =~ ^[0-9]+$ ]] || fail "no session row for the registration"
login app
T1="$TOKEN" S1="$SID"
ok "registered $EMAIL (user $UID_), logged in: session $S1"

# ---------------------------------------------------------------------------------------------
step="a. a live token validates"
check keycenter --redis <<<"Bearer $T1"$'\n'"Bearer $T1"
first="$(sed -n 1p "$W/check.out")"
want 1 "$(session_line "$S1" "${first##*source=}")"
# Whoever answered first, the account service has filled the cache by now.
want 2 "$(session_line "$S1" cache)"
[[ "$(jq -r .session_id <<<"$(cached "$T1")")" == "$S1" ]] || fail "cache entry: $(cached "$T1")"
ok "session $S1 valid (first answer from ${first##*source=}, then from the cache)"

# ---------------------------------------------------------------------------------------------
step="b. introspection"
uncache "$T1"
check keycenter --redis <<<"Bearer $T1"
want 1 "$(session_line "$S1" introspection)"
[[ "$(jq -r .session_id <<<"$(cached "$T1")")" == "$S1" ]] ||
	fail "the account service did not refill the cache: $(cached "$T1")"
ok "cache miss: /v1/introspect over mTLS answers the session PostgreSQL holds; cache refilled"
check keycenter --no-redis <<<"bEaReR $T1"
want 1 "$(session_line "$S1" introspection)"
ok "no Redis at all: introspection answers (scheme name case-insensitive)"
login web
T3="$TOKEN" S3="$SID"
check keycenter --redis <<<"Bearer $T3"
# Each introspection of a web session moves its idle expiry: compare after it.
want 1 "$(session_line "$S3" introspection)"
[[ -z "$(cached "$T3")" ]] || fail "a web session was cached: $(cached "$T3")"
ok "web session $S3: never cached, validated by introspection"

# ---------------------------------------------------------------------------------------------
step="c. revocation"
check keycenter --redis <<<"Bearer $T1"
want 1 "$(session_line "$S1" cache)"
req 200 -t "$T0" DELETE "/v1/sessions/$S1"
check keycenter --redis <<<"Bearer $T1"
want 1 "invalid access_denied"
[[ "$(cached "$T1")" == '{"revoked":true}' ]] || fail "no tombstone: $(cached "$T1")"
ok "DELETE /v1/sessions/$S1 while cached: the next validation is denied (tombstone)"
uncache "$T1"
check keycenter --redis <<<"Bearer $T1"
want 1 "invalid access_denied"
[[ -z "$(cached "$T1")" ]] || fail "a revoked session was cached again: $(cached "$T1")"
ok "revoked session $S1 with a cold cache: introspection says inactive"

login app
T2="$TOKEN" S2="$SID"
uncache "$T2"
check keycenter --no-redis <<<"Bearer $T2"
want 1 "$(session_line "$S2" introspection)"
req 200 -t "$T2" POST /v1/logout
uncache "$T2"
check keycenter --redis <<<"Bearer $T2"
want 1 "invalid access_denied"
check keycenter --no-redis <<<"Bearer $T2"
want 1 "invalid access_denied"
ok "POST /v1/logout of session $S2: the next introspection says inactive"
req 200 -t "$T3" POST /v1/logout
check keycenter --redis <<<"Bearer $T3"
want 1 "invalid access_denied"
ok "logout of web session $S3: denied on the next introspection"

# A long-lived checker with an in-process copy in front of Redis, driven line by line through
# FIFOs: its copy of the session must be gone on the very next request after the revocation.
login app
T4="$TOKEN" S4="$SID"
mkfifo "$W/in" "$W/out"
"$CHECK" --introspect-url "$AURL/v1/introspect" --ca "$MICA_CA" --cert "$MICA_CERT_KEYCENTER" \
	--key "$MICA_KEY_KEYCENTER" --timeout-ms 10000 --redis-socket "$MICA_REDIS_SOCKET" \
	--redis-user keycenter --redis-password-file "$MICA_REDIS_PASSWORD_FILE_KEYCENTER" \
	--local-cache <"$W/in" >"$W/out" 2>"$W/live.log" 7>&- 8<&- &
STACK_PID[auth_check]=$!
exec 5>"$W/in" 6<"$W/out"
# ask LINE [WANT]: one validation by the long-lived checker; its answer in $got, which must be
# WANT if given.
got=""
ask() {
	printf '%s\n' "$1" >&5
	IFS= read -r -t 30 got <&6 || fail "the long-lived auth_check did not answer: $(cat "$W/live.log")"
	[[ $# -lt 2 || "$got" == "$2" ]] || fail "long-lived auth_check: '$got', want '$2'"
}
ask "Bearer $T4" "$(session_line "$S4" introspection)"
ask "Bearer $T4" "$(session_line "$S4" cache)"
ask "Bearer $T4" "$(session_line "$S4" cache)"
req 200 -t "$T0" DELETE "/v1/sessions/$S4"
ask "Bearer $T4" "invalid access_denied"
# Another session of the same user is still valid in the same process.
ask "Bearer $T0"
[[ "$got" == "valid uid=$UID_ "* && "$got" != *" sid=$S4 "* ]] || fail "session of T0: $got"
exec 5>&-
wait "${STACK_PID[auth_check]}" || fail "the long-lived auth_check exited with status $?"
exec 6<&-
STACK_PID[auth_check]=""
ok "long-lived checker with an in-process copy: session $S4 denied on the very next request"

# ---------------------------------------------------------------------------------------------
step="d. introspection principals"
# T0 is live and, after the cold-cache reads above, cached: take it out so the account service
# must answer.
uncache "$T0"
for who in admin account rogue; do
	check "$who" --redis <<<"Bearer $T0"
	want 1 "invalid permission_denied"
	[[ -z "$(cached "$T0")" ]] || fail "$who's refused introspection filled the cache"
done
st="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" -H 'Content-Type: application/json' \
	-d "$(jq -nc --arg t "$T0" '{token: $t}')" "$AURL/v1/introspect")"
[[ "$st" == 401 && "$(jget error.code)" == client_certificate_required ]] ||
	fail "introspection without a client certificate: $st $(cat "$W/body")"
if "$CHECK" --introspect-url "$AURL/v1/introspect" --ca "$MICA_CA" <<<"Bearer $T0" \
	>"$W/check.out" 2>"$W/check.err" 7>&- 8<&-; then
	fail "auth_check validated without a client certificate: $(cat "$W/check.out")"
fi
grep -q 'mica_auth_new: invalid_argument' "$W/check.err" || fail "no certificate: $(cat "$W/check.err")"
check keycenter --redis <<<"Bearer $T0"
[[ "$(sed -n 1p "$W/check.out")" == "valid uid=$UID_ "*" source=introspection" ]] ||
	fail "keycenter after the refusals: $(cat "$W/check.out")"
ok "admin, account (not listed) and rogue (untrusted) are refused: permission_denied, fail closed"

# ---------------------------------------------------------------------------------------------
step="e. malformed values"
UNKNOWN="$(openssl rand 32 | base64 | tr '+/' '-_' | tr -d '=\n')"
LONG="$(head -c 20000 /dev/zero | tr '\0' 'A')"
# Garbage first, the live token last: the checker survives and still works.
printf '%s\n' "" "Bearer" "Bearer " "Basic dXNlcjpwYXNz" "Bearer  $T0" "Bearer $T0 " \
	"Bearer $T0 $T0" "Bearer ${T0}A" "Bearer ${T0:0:42}" "Bearer ${T0:0:42}B" \
	"Bearer ${T0:0:20}+${T0:21}" "Bearer ${T0:0:20}=${T0:21}" "Bearer ${T0:0:20}é${T0:22}" \
	"Bearer $T0"$'\r' "Bearer $LONG" "$LONG" "Bearer $UNKNOWN" "Bearer $T0" >"$W/garbage"
check keycenter --redis <"$W/garbage"
[[ "$(wc -l <"$W/check.out")" == 18 ]] || fail "$(wc -l <"$W/check.out") answers for 18 lines"
for n in $(seq 1 16); do want "$n" "invalid invalid_argument"; done
want 17 "invalid access_denied"
[[ "$(sed -n 18p "$W/check.out")" == "valid uid=$UID_ "* ]] || fail "live token: $(sed -n 18p "$W/check.out")"
ok "16 malformed values: invalid_argument; an unknown well-formed token: access_denied"
