#!/usr/bin/env bash
# test_cloudsync_faults.sh - issue 22 item 9 for records: mica-cloudsync killed with SIGKILL
# while a device writes loses no acknowledged record and leaves no half-written one (every change
# number the user has is one stored record); the Key Center down makes a user whose data key is
# not in memory get 503 naming it, while a user whose key is cached goes on; the database down is
# 503 naming it; the account service down is 503 naming it for a session it must check (a web
# session) while a cached app session goes on; all recover without a restart.
set -euo pipefail

# shellcheck source=tests/integration/lib-cloudsync.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-cloudsync.sh"
cs_begin test_cloudsync_faults
alice_setup
A1="$REG_TOKEN"
REG_DEVICE_NAME="Bob phone" register bob@example.com 'Bob-pass-1' dev-bob
B1="$REG_TOKEN"
cs_start
ok "mica-account on $AURL, mica-cloudsync on $CSURL"

# ---------------------------------------------------------------------------------------------
step="1 kill -9 while writing"
acked="$W/acked"
: >"$acked"
(
	for ((i = 0; i < 300; i++)); do
		st="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$MICA_CA" -X PUT \
			-H "Authorization: Bearer $A1" -H 'Content-Type: application/json' \
			-d "{\"data\": {\"n\": $i}}" "$CSURL/v1/sync/notes/records/k$i")" || true
		[[ "$st" == 201 ]] && echo "k$i" >>"$acked"
		# Once the service is gone, go on slowly until it is back.
		[[ "$st" == 201 ]] || sleep 0.05
	done
) &
writer=$!
deadline=$((SECONDS + 30))
until (($(wc -l <"$acked") >= 50)); do
	((SECONDS < deadline)) || fail "the writer got no 50 acknowledgements in 30 s"
	sleep 0.02
done
kill -KILL "${STACK_PID[cloudsync]}"
wait "${STACK_PID[cloudsync]}" 2>/dev/null || true
STACK_PID[cloudsync]=""
killed_at="$(wc -l <"$acked")"
cs_start
wait "$writer" || true
n="$(wc -l <"$acked")"
((n > killed_at)) || check_fail "no write acknowledged after the restart ($n)"
missing=0
while IFS= read -r id; do
	sreq -t "$A1" GET "/v1/sync/notes/records/$id"
	[[ "$status" == 200 ]] || missing=$((missing + 1))
done <"$acked"
((missing == 0)) || check_fail "$missing of $n acknowledged records are missing"
# Every change number handed out belongs to one stored record: no half-written write.
[[ "$(sql "$ADMIN_CI" "SELECT (SELECT seq FROM cloudsync.user_seq WHERE user_id = $ALICE_UID) =
	(SELECT count(*) FROM cloudsync.record WHERE user_id = $ALICE_UID)")" == t ]] ||
	check_fail "change numbers and records disagree"
ok "killed after $killed_at acknowledgements; all $n acknowledged records there, none half-written"

# ---------------------------------------------------------------------------------------------
step="2 Key Center down"
# Bob's first write mints his data key (lib/kc does not cache a key it mints), his second
# unwraps it into lib/kc's cache. Carol, registered now, has written nothing yet.
sexpect 201 - -t "$B1" PUT /v1/sync/notes/records/b-before '{"data": 1}'
sexpect 201 - -t "$B1" PUT /v1/sync/notes/records/b-before2 '{"data": 1}'
REG_DEVICE_NAME="Carol phone" register carol@example.com 'Carol-pass-1' dev-carol
C1="$REG_TOKEN"
stack_stop keycenter
sexpect 201 - -t "$B1" PUT /v1/sync/notes/records/b-during '{"data": 2}'
sexpect 503 unavailable -t "$C1" PUT /v1/sync/notes/records/c1 '{"data": 3}'
[[ "$(jget dependency)" == keycenter ]] || check_fail "dependency: $(cat "$W/body")"
kc_start
sexpect 201 - -t "$C1" PUT /v1/sync/notes/records/c1 '{"data": 3}'
ok "a cached user writes on, an uncached one gets 503 keycenter, and writes once it is back"

# ---------------------------------------------------------------------------------------------
step="3 database down"
mica_pg_stop "$MICA_TEST_DIR"
sexpect 503 unavailable -t "$B1" GET /v1/sync/notes/changes
[[ "$(jget dependency)" == database ]] || check_fail "dependency: $(cat "$W/body")"
mica__pg_start "$MICA_TEST_DIR"
deadline=$((SECONDS + 30))
until sreq -t "$B1" GET /v1/sync/notes/changes && [[ "$status" == 200 ]]; do
	((SECONDS < deadline)) || fail "still $status 30 s after PostgreSQL came back"
	sleep 0.2
done
ok "503 database while PostgreSQL is down, served again once it is back, no restart"

# ---------------------------------------------------------------------------------------------
step="4 account service down"
# A web session is never served from the cache: each use asks the account service.
must expect 200 - POST /v1/login "$(login_body bob@example.com 'Bob-pass-1' dev-bob '{session_kind: "web"}')"
BW="$(jget token)"
sexpect 200 - -t "$BW" GET /v1/sync/notes/changes
stack_stop account
sexpect 503 unavailable -t "$BW" GET /v1/sync/notes/changes
[[ "$(jget dependency)" == account ]] || check_fail "dependency: $(cat "$W/body")"
sexpect 200 - -t "$B1" GET /v1/sync/notes/changes
account_start
sexpect 200 - -t "$BW" GET /v1/sync/notes/changes
ok "a session that needs the account service gets 503 account while it is down; a cached one goes on"

stack_stop cloudsync
stack_stop account
stack_stop keycenter
stack_end
