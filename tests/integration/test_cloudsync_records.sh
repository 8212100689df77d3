#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs are single-quoted on purpose
# test_cloudsync_records.sh - issue 22 items 1, 4, 5 and 6 for records: mica-cloudsync against
# a real account service (its sessions), the Key Center (per-user data keys), PostgreSQL and
# Redis, driven with curl:
#   sessions: no token, a bad one, a revoked or idled-out web session -> 401; app and web
#   sessions of the same user see the same collections; another user sees none of them
#   records: create, read, update with If-Match; a stale or missing If-Match -> 409 with the
#   server copy, the losing copy kept as a conflict record that the other device pulls
#   sync tokens: changes since a token, paged, each change once, in order, also while four
#   writers race
#   at rest: bodies are ciphertext under the user's Key Center data key, bound to their place (a
#   body copied to another record does not open: 500 record_corrupt)
#   the mass-deletion guard; the recycle bin (list, restore as a new version, purge one, empty);
#   the purge strictly 30 days after deletion with an injected clock (`mica cloudsync purge
#   --at`), tombstones left for devices
#   bad bodies: 4xx naming the problem, nothing written
#   account deletion (account.deleted through the outbox): nothing of the user left in the
#   cloudsync schema or Redis, another user's data intact
set -euo pipefail

# shellcheck source=tests/integration/lib-cloudsync.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-cloudsync.sh"
cs_begin test_cloudsync_records
alice_setup
A1="$REG_TOKEN"
REG_DEVICE_NAME="Bob phone" register bob@example.com 'Bob-pass-1' dev-bob
B1="$REG_TOKEN"
cs_start
ok "Key Center, mica-account on $AURL, mica-cloudsync on $CSURL"

C=/v1/sync/contacts
# ---------------------------------------------------------------------------------------------
step="1 sessions"
sexpect 401 invalid_token GET "$C/changes"
sexpect 401 invalid_token -t "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" GET "$C/changes"
sexpect 401 invalid_token -H "Authorization: Basic YTpi" GET "$C/changes"
grep -qi '^WWW-Authenticate: Bearer' "$W/headers" || check_fail "no WWW-Authenticate: $(cat "$W/headers")"
sexpect 404 unknown_module -t "$A1" GET /v1/sync/photos_of_cats/changes
sexpect 400 bad_record_id -t "$A1" GET "$C/records/-x"
sexpect 200 - GET /v1/sync/modules
[[ "$(jget modules.#)" == 14 ]] || check_fail "modules: $(cat "$W/body")"
sexpect 200 - -t "$A1" GET "$C/changes"
[[ "$(jget changes.#)" == 0 && "$(jget token)" == 0 && "$(jget more)" == false ]] ||
	check_fail "empty collection: $(cat "$W/body")"
ok "401 invalid_token without a valid bearer session, 404 for an unknown module"

# ---------------------------------------------------------------------------------------------
step="2 records and conflicts"
sexpect 201 - -t "$A1" PUT "$C/records/c1" '{"data": {"fn": "Carol Secretname", "tel": "+15550100"}}'
[[ "$(jget version)" == 1 ]] || check_fail "first version: $(cat "$W/body")"
grep -qi '^ETag: "1"' "$W/headers" || check_fail "no ETag \"1\": $(cat "$W/headers")"
sexpect 200 - -t "$A1" GET "$C/records/c1"
[[ "$(jget data.fn)" == "Carol Secretname" && "$(jget deleted)" == false ]] || check_fail "read: $(cat "$W/body")"
sexpect 200 - -t "$A1" -H 'If-Match: "1"' PUT "$C/records/c1" '{"data": {"fn": "Carol Secretname", "tel": "+15550111"}}'
[[ "$(jget version)" == 2 ]] || check_fail "second version: $(cat "$W/body")"
# A second device of alice, a web session, writes with the version it read before.
A2="$(login_token dev-alice web)"
sexpect 409 version_conflict -t "$A2" -H 'If-Match: "1"' PUT "$C/records/c1" '{"data": {"fn": "Carol (web edit)"}}'
[[ "$(jget server.version)" == 2 && "$(jget server.data.tel)" == "+15550111" ]] ||
	check_fail "the server copy: $(cat "$W/body")"
CONFLICT="$(jget conflict_id)"
[[ "$CONFLICT" =~ ^conflict-[0-9a-f]{24}$ ]] || check_fail "conflict id: $CONFLICT"
# Creating what exists (no If-Match) loses the same way.
sexpect 409 version_conflict -t "$A2" PUT "$C/records/c1" '{"data": {"fn": "another"}}'
sexpect 400 bad_if_match -t "$A2" -H 'If-Match: "two"' PUT "$C/records/c1" '{"data": 1}'
# An update of a record that never existed loses too: the server copy says it is not there.
sexpect 409 version_conflict -t "$A2" -H 'If-Match: "1"' PUT "$C/records/ghost" '{"data": {"fn": "Ghost"}}'
[[ "$(jget server.deleted)" == true && "$(jget server.version)" == __absent__ &&
	"$(jget conflict_id)" =~ ^conflict- ]] || check_fail "update of nothing: $(cat "$W/body")"
# The first device pulls the conflict record with the losing copy.
sexpect 200 - -t "$A1" GET "$C/changes?since=0"
jq -e --arg c "$CONFLICT" '[.changes[] | select(.id == $c and .conflict_of == "c1"
	and .data.fn == "Carol (web edit)")] | length == 1' "$W/body" >/dev/null ||
	check_fail "conflict record in the changes: $(cat "$W/body")"
# Bob sees nothing of alice's.
sexpect 200 - -t "$B1" GET "$C/changes?since=0"
[[ "$(jget changes.#)" == 0 ]] || check_fail "bob sees alice's records: $(cat "$W/body")"
sexpect 404 record_not_found -t "$B1" GET "$C/records/c1"
ok "versions with ETag/If-Match, 409 with the server copy, losing copy kept and pulled"

# ---------------------------------------------------------------------------------------------
step="3 sync tokens"
sexpect 200 - -t "$A1" GET "$C/changes?since=0"
T0="$(jget token)"
batch="$(jq -nc '{changes: [range(0; 25) | {id: "b\(.)", data: {fn: "Person \(.)"}}]}')"
sexpect 200 - -t "$A1" POST "$C/batch" "$batch"
[[ "$(jq '[.results[] | select(.status == "ok" and .created == true)] | length' "$W/body")" == 25 ]] ||
	check_fail "batch results: $(head -c 400 "$W/body")"
# The other device pages through with limit 7: every change once, in order.
tok="$T0" seen="" pages=0
while :; do
	sreq -t "$A2" GET "$C/changes?since=$tok&limit=7"
	[[ "$status" == 200 ]] || fail "page: $status $(cat "$W/body")"
	seen+="$(jq -r '.changes[].id' "$W/body") "
	jq -e '[.changes[].token | tonumber] as $t | $t == ($t | sort)' "$W/body" >/dev/null ||
		check_fail "tokens out of order: $(cat "$W/body")"
	tok="$(jget token)"
	pages=$((pages + 1))
	[[ "$(jget more)" == true ]] || break
	((pages < 10)) || fail "more than 10 pages"
done
[[ "$(wc -w <<<"$seen")" == 25 && "$(tr ' ' '\n' <<<"$seen" | sort -u | grep -c .)" == 25 && $pages == 4 ]] ||
	check_fail "paging: $pages pages, ids: $seen"
sexpect 200 - -t "$A2" GET "$C/changes?since=$tok"
[[ "$(jget changes.#)" == 0 && "$(jget token)" == "$tok" ]] || check_fail "after the last page: $(cat "$W/body")"
sexpect 400 bad_token -t "$A2" GET "$C/changes?since=-1"
sexpect 400 bad_limit -t "$A2" GET "$C/changes?limit=100000"
ok "25 changes in 4 pages of 7, each once, tokens in order"

# ---------------------------------------------------------------------------------------------
step="3b tokens under concurrent writers"
# Four writers create 25 records each at once while a reader follows the changes: the reader must
# see every record exactly once, with tokens that only grow (a change committed late must not be
# numbered below a token the reader already moved past).
writers=()
for wr in 1 2 3 4; do
	(
		for ((i = 0; i < 25; i++)); do
			curl -sS -o /dev/null --cacert "$MICA_CA" -X PUT -H "Authorization: Bearer $B1" \
				-H 'Content-Type: application/json' -d '{"data": {"n": 1}}' \
				"$CSURL/v1/sync/notes/records/w$wr-$i" || exit 1
		done
	) &
	writers+=($!)
done
tok=0 seen="$W/seen"
: >"$seen"
deadline=$((SECONDS + 60))
while (($(wc -l <"$seen") < 100)); do
	((SECONDS < deadline)) || break
	sreq -t "$B1" GET "/v1/sync/notes/changes?since=$tok&limit=1000" >/dev/null
	[[ "$status" == 200 ]] || fail "reader: $status $(cat "$W/body")"
	jq -r '.changes[] | "\(.token) \(.id)"' "$W/body" >>"$seen"
	tok="$(jget token)"
done
for p in "${writers[@]}"; do wait "$p" || check_fail "a writer failed"; done
[[ "$(wc -l <"$seen")" == 100 && "$(cut -d' ' -f2 "$seen" | sort -u | wc -l)" == 100 ]] ||
	check_fail "the reader saw $(wc -l <"$seen") changes, $(cut -d' ' -f2 "$seen" | sort -u | wc -l) distinct"
cut -d' ' -f1 "$seen" | sort -n -c 2>/dev/null || check_fail "tokens went back: $(cut -d' ' -f1 "$seen" | tr '\n' ' ')"
# Sixteen devices create the same record at once: one creates it, the others lose (409), and
# each losing copy is kept as a conflict record. The record table is held locked meanwhile, so
# that all sixteen reach their read of the record together when it is released.
sql "$ADMIN_CI" "BEGIN; LOCK TABLE cloudsync.record IN EXCLUSIVE MODE; SELECT pg_sleep(2); COMMIT" \
	>/dev/null &
holder=$!
sleep 0.3
racers=()
for wr in $(seq 1 16); do
	curl -sS -o /dev/null -w '%{http_code}\n' --cacert "$MICA_CA" -X PUT -H "Authorization: Bearer $B1" \
		-H 'Content-Type: application/json' -d "{\"data\": {\"by\": $wr}}" \
		"$CSURL/v1/sync/notes/records/same" >"$W/race.$wr" &
	racers+=($!)
done
for p in "${racers[@]}"; do wait "$p" || check_fail "a racer failed"; done
wait "$holder" || check_fail "the lock holder failed"
[[ "$(cat "$W"/race.* | sort | uniq -c | awk '{ printf "%s:%s ", $2, $1 }')" == "201:1 409:15 " ]] ||
	check_fail "racing creates: $(cat "$W"/race.* | tr '\n' ' ')"
sexpect 200 - -t "$B1" GET "/v1/sync/notes/changes?since=$tok"
[[ "$(jq '[.changes[] | select(.conflict_of == "same")] | length' "$W/body")" == 15 ]] ||
	check_fail "conflict records of the race: $(cat "$W/body")"
ok "100 records from 4 concurrent writers, each seen once, tokens in order; 16 racing creates: 1 wins"

# ---------------------------------------------------------------------------------------------
step="4 at rest"
q() { sql "$ADMIN_CI" "$1"; }
ALICE="$ALICE_UID"
[[ "$(q "SELECT count(*) FROM cloudsync.record WHERE user_id = $ALICE AND position(convert_to('Secretname',
	'UTF8') in body) > 0")" == 0 ]] || check_fail "a body holds the plaintext"
[[ "$(q "SELECT wrapped LIKE 'kc:v1:%' FROM cloudsync.user_key WHERE user_id = $ALICE")" == t ]] ||
	check_fail "alice's data key is not stored wrapped"
# A body moved to another record of the same user does not open there.
q "UPDATE cloudsync.record SET body = (SELECT body FROM cloudsync.record WHERE user_id = $ALICE
	AND module = 'contacts' AND id = 'b1') WHERE user_id = $ALICE AND module = 'contacts' AND id = 'b2'" >/dev/null
sexpect 500 record_corrupt -t "$A1" GET "$C/records/b2"
grep -q 'record contacts/b2 .*does not open' "$W/cloudsync.log" || check_fail "the log does not name b2"
sexpect 200 - -t "$A1" GET "$C/records/b1"
sexpect 200 - -t "$A1" -H 'If-Match: "1"' PUT "$C/records/b2" '{"data": {"fn": "Person 2"}}'
ok "ciphertext at rest, data key wrapped by the Key Center, a moved body refused and named"

# ---------------------------------------------------------------------------------------------
step="5 deletion and the recycle bin"
sexpect 428 precondition_required -t "$A1" DELETE "$C/records/b3"
sexpect 409 version_conflict -t "$A1" -H 'If-Match: "7"' DELETE "$C/records/b3"
[[ "$(jget server.data.fn)" == "Person 3" ]] || check_fail "delete conflict: $(cat "$W/body")"
sexpect 200 - -t "$A1" GET "$C/changes?since=0&limit=1000"
TD="$(jget token)"
sexpect 200 - -t "$A1" -H 'If-Match: "1"' DELETE "$C/records/b3"
[[ "$(jget deleted)" == true && "$(jget version)" == 2 ]] || check_fail "delete: $(cat "$W/body")"
sexpect 404 record_not_found -t "$A1" -H 'If-Match: "2"' DELETE "$C/records/b3"
sexpect 404 record_not_found -t "$A1" GET "$C/records/b3"
sexpect 200 - -t "$A2" GET "$C/changes?since=$TD"
[[ "$(jget changes.#)" == 1 && "$(jget changes.0.id)" == b3 && "$(jget changes.0.deleted)" == true &&
	"$(jget changes.0.data)" == __absent__ ]] || check_fail "tombstone: $(cat "$W/body")"
sexpect 200 - -t "$A1" GET "$C/bin"
[[ "$(jget records.#)" == 1 && "$(jget records.0.data.fn)" == "Person 3" && "$(jget keep_days)" == 30 ]] ||
	check_fail "bin: $(cat "$W/body")"
[[ "$(jq '.records[0].purge_at - .records[0].deleted_at' "$W/body")" == 2592000000 ]] ||
	check_fail "purge_at is not deleted_at + 30 days: $(cat "$W/body")"
sexpect 200 - -t "$A1" POST "$C/bin/b3/restore"
[[ "$(jget version)" == 3 ]] || check_fail "restore: $(cat "$W/body")"
sexpect 200 - -t "$A2" GET "$C/changes?since=$TD"
[[ "$(jget changes.0.deleted)" == false && "$(jget changes.0.data.fn)" == "Person 3" &&
	"$(jget changes.0.version)" == 3 ]] || check_fail "restored change: $(cat "$W/body")"
sexpect 404 record_not_found -t "$A1" POST "$C/bin/b3/restore"
# One purged from the bin by hand: gone for good, a tombstone stays.
sexpect 200 - -t "$A1" -H 'If-Match: "1"' DELETE "$C/records/b4"
sexpect 200 - -t "$A1" DELETE "$C/bin/b4"
[[ "$(jget purged)" == 1 ]] || check_fail "purge one: $(cat "$W/body")"
sexpect 404 record_not_found -t "$A1" POST "$C/bin/b4/restore"
sexpect 404 record_not_found -t "$A1" DELETE "$C/bin/b4"
[[ "$(q "SELECT state || ':' || (body IS NULL) FROM cloudsync.record WHERE user_id = $ALICE AND id = 'b4'")" == "2:true" ]] ||
	check_fail "b4 is not a tombstone"
ok "delete needs If-Match, goes to the bin as a tombstone change, restore is a new version"

# ---------------------------------------------------------------------------------------------
step="6 mass deletion"
N=/v1/sync/notes
sexpect 200 - -t "$A1" POST "$N/batch" "$(jq -nc '{changes: [range(0; 20) | {id: "n\(.)", data: {text: "note \(.)"}}]}')"
del15="$(jq -nc '{changes: [range(0; 15) | {id: "n\(.)", if_match: 1, deleted: true}]}')"
sexpect 409 mass_deletion_unconfirmed -t "$A1" POST "$N/batch" "$del15"
[[ "$(jget deleting)" == 15 && "$(jget records)" == 20 ]] || check_fail "guard: $(cat "$W/body")"
[[ "$(q "SELECT count(*) FROM cloudsync.record WHERE user_id = $ALICE AND module = 'notes' AND state = 0")" == 20 ]] ||
	check_fail "the refused batch deleted something"
# 9 of 20 (under the minimum of 10) and 10 of 20 (not more than half) pass unconfirmed.
sexpect 200 - -t "$A1" POST "$N/batch" "$(jq -nc '{changes: [range(0; 10) | {id: "n\(.)", if_match: 1, deleted: true}]}')"
sexpect 200 - -t "$A1" POST "$N/batch" "$(jq -nc '{changes: [range(10; 15) | {id: "n\(.)", if_match: 1, deleted: true}]}')"
sexpect 200 - -t "$A1" POST "$N/batch" "$(jq -nc '{changes: [range(15; 20) | {id: "n\(.)", if_match: 1, deleted: true}], confirm_mass_delete: true}')"
[[ "$(jq '[.results[] | select(.status == "ok")] | length' "$W/body")" == 5 ]] || check_fail "confirmed: $(cat "$W/body")"
sexpect 200 - -t "$A1" GET "$N/bin"
[[ "$(jget records.#)" == 20 ]] || check_fail "20 notes in the bin: $(head -c 300 "$W/body")"
ok "deleting more than half of a collection needs confirm_mass_delete; nothing written before"

# ---------------------------------------------------------------------------------------------
step="7 purge by time"
T=1796601600000 # 2026-12-07T00:00:00Z
DAY=86400000
ts() { echo "to_timestamp($((T + $1))::float8 / 1000)"; }
# n0..n9 deleted exactly 30 days before T, n10..n14 a second short of it, n15..n19 long ago.
q "UPDATE cloudsync.record SET deleted_at = $(ts "-30 * $DAY") WHERE user_id = $ALICE AND module = 'notes'
	AND id IN ($(printf "'n%s'," {0..9} | sed 's/,$//'))" >/dev/null
q "UPDATE cloudsync.record SET deleted_at = $(ts "-30 * $DAY + 1000") WHERE user_id = $ALICE AND module = 'notes'
	AND id IN ($(printf "'n%s'," {10..14} | sed 's/,$//'))" >/dev/null
q "UPDATE cloudsync.record SET deleted_at = $(ts "-400 * $DAY") WHERE user_id = $ALICE AND module = 'notes'
	AND id IN ($(printf "'n%s'," {15..19} | sed 's/,$//'))" >/dev/null
"$MICA" cloudsync purge --db "$ADMIN_CI" --at "$T" --batch 4 >"$W/purge" 2>&1 || fail "purge: $(cat "$W/purge")"
[[ "$(cat "$W/purge")" == "purged: 15" ]] || check_fail "purge at T: $(cat "$W/purge")"
"$MICA" cloudsync purge --db "$ADMIN_CI" --at "$T" >"$W/purge" 2>&1 || fail "purge again: $(cat "$W/purge")"
[[ "$(cat "$W/purge")" == "purged: 0" ]] || check_fail "purge twice: $(cat "$W/purge")"
sexpect 200 - -t "$A1" GET "$N/bin"
[[ "$(jq -c '[.records[].id] | sort' "$W/body")" == '["n10","n11","n12","n13","n14"]' ]] ||
	check_fail "left in the bin: $(cat "$W/body")"
"$MICA" cloudsync purge --db "$ADMIN_CI" --at "2026-12-07T00:00:01Z" >"$W/purge" 2>&1 || fail "purge +1s"
[[ "$(cat "$W/purge")" == "purged: 5" ]] || check_fail "purge a second later: $(cat "$W/purge")"
rc=0
"$MICA" cloudsync purge --db "$ADMIN_CI" --at yesterday >"$W/purge" 2>&1 || rc=$?
if ! { ((rc == 64)) && grep -q -- '--at must be RFC 3339' "$W/purge"; }; then
	check_fail "bad --at: exit $rc $(cat "$W/purge")"
fi
# Devices that synced before the deletions still learn of them: 20 tombstones.
sexpect 200 - -t "$A2" GET "$N/changes?since=0"
[[ "$(jq '[.changes[] | select(.deleted and (has("data") | not))] | length' "$W/body")" == 20 ]] ||
	check_fail "tombstones: $(head -c 300 "$W/body")"
# Emptying the bin through the API.
sexpect 200 - -t "$A1" -H 'If-Match: "3"' DELETE "$C/records/b3"
sexpect 200 - -t "$A1" DELETE "$C/bin"
[[ "$(jget purged)" == 1 ]] || check_fail "empty: $(cat "$W/body")"
sexpect 200 - -t "$A1" GET "$C/bin"
[[ "$(jget records.#)" == 0 ]] || check_fail "bin not empty: $(cat "$W/body")"
ok "purged exactly at 30 days (not a second before), once, tombstones kept; bin emptied on request"

# ---------------------------------------------------------------------------------------------
step="8 bad bodies"
before="$(q "SELECT max(seq) FROM cloudsync.user_seq WHERE user_id = $ALICE")"
sexpect 400 unknown_field -t "$A1" POST "$C/batch" '{"changes": [{"id": "x1", "data": 1}], "confirm": true}'
sexpect 400 unknown_field -t "$A1" POST "$C/batch" '{"changes": [{"id": "x1", "dat": 1}]}'
[[ "$(jget index)" == 0 ]] || check_fail "index of the bad item: $(cat "$W/body")"
sexpect 400 missing_field -t "$A1" POST "$C/batch" '{"changes": [{"id": "x1"}]}'
sexpect 400 bad_field -t "$A1" POST "$C/batch" '{"changes": [{"id": "x1", "deleted": true, "data": 1}]}'
sexpect 400 bad_field -t "$A1" POST "$C/batch" '{"changes": [{"id": "x1", "if_match": "1", "data": 1}]}'
sexpect 400 bad_field -t "$A1" POST "$C/batch" '{"changes": []}'
sexpect 400 duplicate_record -t "$A1" POST "$C/batch" '{"changes": [{"id": "x1", "data": 1}, {"id": "x1", "data": 2}]}'
sexpect 400 bad_record_id -t "$A1" POST "$C/batch" '{"changes": [{"id": "../x", "data": 1}]}'
sexpect 400 malformed_json -t "$A1" POST "$C/batch" '{"changes": ['
sexpect 400 missing_field -t "$A1" PUT "$C/records/x1" '{}'
big="$(head -c 70000 /dev/zero | tr '\0' a)"
sexpect 413 record_too_large -t "$A1" PUT "$C/records/x1" "{\"data\": \"$big\"}"
[[ "$(q "SELECT max(seq) FROM cloudsync.user_seq WHERE user_id = $ALICE")" == "$before" ]] ||
	check_fail "a refused request wrote"
ok "bad bodies answered 4xx naming the problem, nothing written"

# ---------------------------------------------------------------------------------------------
step="9 sessions end"
# A web session idled out (its expiry is what the idle window moves) and a revoked one.
sql "$ADMIN_CI" "UPDATE account.session SET expires_at = now() - interval '1 second'
	WHERE token_hash = '$(sha256 "$A2")'" >/dev/null
sexpect 401 invalid_token -t "$A2" GET "$C/changes"
A3="$(login_token dev-alice app)"
sexpect 200 - -t "$A3" GET "$C/records/c1"
A3_SID="$(sql "$ADMIN_CI" "SELECT id FROM account.session WHERE token_hash = '$(sha256 "$A3")'")"
expect 200 - -t "$A3" DELETE "/v1/sessions/$A3_SID"
sexpect 401 invalid_token -t "$A3" GET "$C/records/c1"
ok "an idled-out web session and a revoked app session are refused"

# ---------------------------------------------------------------------------------------------
step="10 account deletion"
sexpect 201 - -t "$B1" PUT "$C/records/bob1" '{"data": {"fn": "Bob own"}}'
A_SID="$(sql "$ADMIN_CI" "SELECT id FROM account.session WHERE token_hash = '$(sha256 "$A1")'")"
stale "$A_SID"
must expect 403 step_up_required -t "$A1" DELETE /v1/account
SU="$(jget stepup_id)"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for alice@example.com)\"}"
expect 200 - -t "$A1" DELETE /v1/account
left() {
	q "SELECT (SELECT count(*) FROM cloudsync.record WHERE user_id = $ALICE)
		+ (SELECT count(*) FROM cloudsync.user_key WHERE user_id = $ALICE)
		+ (SELECT count(*) FROM cloudsync.user_seq WHERE user_id = $ALICE)
		+ (SELECT count(*) FROM outbox.pending WHERE consumer = 'cloudsync.accounts')"
}
deadline=$((SECONDS + 20))
until [[ "$(left)" == 0 ]]; do
	((SECONDS < deadline)) || fail "alice's cloudsync rows still there after 20 s: $(left)"
	sleep 0.2
done
# Every table of the schema, found from the catalogue, so a new one is covered too.
for t in $(q "SELECT table_name FROM information_schema.columns WHERE table_schema = 'cloudsync'
	AND column_name = 'user_id'"); do
	[[ "$(q "SELECT count(*) FROM cloudsync.$t WHERE user_id = $ALICE")" == 0 ]] ||
		check_fail "cloudsync.$t still holds alice's rows"
done
keys="$(mica_redis_cli "$MICA_TEST_DIR" admin --scan --pattern 'cloudsync:*' | grep -c "$ALICE" || true)"
[[ "$keys" == 0 ]] || check_fail "Redis keys of alice: $keys"
grep -q "deleted every record and key of user $ALICE" "$W/cloudsync.log" || check_fail "no log line"
sexpect 200 - -t "$B1" GET "$C/records/bob1"
[[ "$(jget data.fn)" == "Bob own" ]] || check_fail "bob's record: $(cat "$W/body")"
ok "account.deleted consumed: alice's records, key and sequence gone; bob's intact"

stack_stop cloudsync
stack_stop account
stack_stop keycenter
stack_end
