#!/usr/bin/env bash
# test_push_stats.sh - issue 21 items 4 and 5 through mica-push: the MiPush statistics route
# (per app and UTC day) and the trace routes (by msg_id, by job key, by time range), each app
# seeing only its own; the developer's registration deletion (queue, aliases, topics go; unknown
# ids reported, not an error; undelivered messages counted dropped); no statistics or receipt
# column named for a device and no regid value in them; the daemon's scheduled purge; and
# receipts (callback.url) POSTed batched to a local HTTPS receiver that fails twice then
# succeeds, carrying totals and the callback param but no regid, an http:// URL given up without
# a POST, a dead URL given up after max_attempts. Messages and counters are set up with psql as
# the admin role (the send API and broker are not needed).
set -euo pipefail
# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"

stack_begin test_push_stats MICA_CERT_PUSH MICA_KEY_PUSH
command -v jq >/dev/null || fail "jq is not installed"

SINK_PID=""
stack_on_exit() { if [[ -n "$SINK_PID" ]]; then kill "$SINK_PID" 2>/dev/null || true; fi; }

step="setup"
stack_db_create
stack_push_setup
SINK_PORT="" DEAD_PORT=""
mica_free_port SINK_PORT
mica_free_port DEAD_PORT
python3 tests/peers/receipt_sink.py "$MICA_CERT_SERVER" "$MICA_KEY_SERVER" "$SINK_PORT" \
	"$W/sink.out" 2 7>&- 8<&- &
SINK_PID=$!
PUSH_ENV+=(
	MICA_PUSH_RETENTION_INTERVAL=1
	"MICA_PUSH_RECEIPTS_CA_FILE=$MICA_CA"
	MICA_PUSH_RECEIPTS_BACKOFF_MS=200
	MICA_PUSH_RECEIPTS_MAX_ATTEMPTS=3
	MICA_PUSH_RECEIPTS_TIMEOUT_MS=2000
	MICA_PUSH_RECEIPTS_PRIVATE_ADDRESSES=true
)
stack_start push "$PURL" "${PUSH_ENV[@]}" "$PUSH_BIN" --config deploy/mica.conf.example
# shellcheck source=tests/integration/lib-push.sh
. "$ROOT/tests/integration/lib-push.sh"
must_app com.example.news
APP1="$APP_ID" SECRET1="$APP_SECRET"
must_app com.example.chat
APP2="$APP_ID" SECRET2="$APP_SECRET"
# register APP PACKAGE SEED: prints a new regid.
register() {
	local hash
	hash="$(printf '%s' "$3" | sha256sum | cut -c1-64)"
	curl -sS --cacert "$MICA_CA" -H 'Content-Type: application/json' \
		-d "{\"app_id\":\"$1\",\"package\":\"$2\",\"device_hash\":\"$hash\"}" \
		"$PURL/v1/push/register" | jq -r .regid
}
R1="$(register "$APP1" com.example.news phone-1)"
R2="$(register "$APP1" com.example.news phone-2)"
R3="$(register "$APP1" com.example.news phone-3)"
RB="$(register "$APP2" com.example.chat phone-1)"
for r in "$R1" "$R2" "$R3" "$RB"; do [[ "$r" =~ ^[A-Za-z0-9_-]{43}$ ]] || fail "registration: $r"; done
q() { sql "$ADMIN_CI" "$1"; }
ok "two apps, four registrations, receipt sink on $SINK_PORT"


# ---------------------------------------------------------------------------------------------
step="stats"
# A day's counters are shards (schema/0015): 2026-03-01 of app 1 is two of them, summed.
q "INSERT INTO push.stat_daily VALUES ('$APP1', '2026-03-01', 6, 4, 1, 0, 1, 0),
	('$APP1', '2026-03-01', 4, 3, 0, 1, 0, 9), ('$APP1', '2026-03-03', 5, 5, 0, 0, 0, 3),
	('$APP2', '2026-03-01', 99, 99, 0, 0, 0, 0)"
expect_dev 200 - GET /v1/stats/message/counters start_date=20260301 end_date=20260303 \
	restricted_package_name=com.example.news
[[ "$(jq -c -S .data.data "$W/body")" == "$(jq -c -S . <<<'[
	{"date":"20260301","sent":10,"delivered":7,"expired":1,"dropped":1,"invalid":1},
	{"date":"20260302","sent":0,"delivered":0,"expired":0,"dropped":0,"invalid":0},
	{"date":"20260303","sent":5,"delivered":5,"expired":0,"dropped":0,"invalid":0}]')" ]] ||
	check_fail "counters of app 1: $(jget data.data)"
expect_dev 200 - -s "$SECRET2" GET /v1/stats/message/counters start_date=20260301 end_date=20260301
[[ "$(jget data.data.0.sent)" == 99 && "$(jget data.data.#)" == 1 ]] || check_fail "app 2 sees: $(cat "$W/body")"
expect_dev 403 package_mismatch GET /v1/stats/message/counters start_date=20260301 end_date=20260301 \
	restricted_package_name=com.example.chat
expect_dev 401 invalid_app_secret -s nope GET /v1/stats/message/counters start_date=20260301 end_date=20260301
expect_dev 400 bad_date GET /v1/stats/message/counters start_date=20260230 end_date=20260301
expect_dev 400 bad_date GET /v1/stats/message/counters start_date=2026-03-01 end_date=20260301
expect_dev 400 bad_date_range GET /v1/stats/message/counters start_date=20260302 end_date=20260301
expect_dev 400 bad_date_range GET /v1/stats/message/counters start_date=20260101 end_date=20260301
expect_dev 200 - GET /v1/stats/message/counters start_date=20260201 end_date=20260303
[[ "$(jget data.data.#)" == 31 ]] || check_fail "a 30-day span: $(jget data.data.#) days"
expect_dev 400 missing_field GET /v1/stats/message/counters start_date=20260301
expect_dev 400 unknown_field GET /v1/stats/message/counters start_date=20260301 end_date=20260301 regid=x
ok "per day, zero days filled, each app its own"

# ---------------------------------------------------------------------------------------------
step="traces"
now_ts="now()"
q "INSERT INTO push.message (msg_id, app_id, jobkey, target, created_at, expires_at, queued,
	delivered, expired, dropped, invalid) VALUES
	('ma1', '$APP1', 'job-x', 'alias', '2026-03-01 10:00:00+00', $now_ts + interval '1 day', 10, 6, 1, 1, 2),
	('ma2', '$APP1', 'job-x', 'regid', '2026-03-01 11:00:00+00', $now_ts + interval '1 day', 1, 0, 0, 0, 0),
	('ma3', '$APP1', NULL, 'topic', '2026-03-02 10:00:00+00', $now_ts + interval '1 day', 3, 3, 0, 0, 0),
	('mb1', '$APP2', 'job-x', 'all', '2026-03-01 10:30:00+00', $now_ts + interval '1 day', 4, 4, 0, 0, 0)"
expect_dev 200 - GET /v1/trace/message/status msg_id=ma1
[[ "$(jq -c -S .data.data "$W/body")" == "$(jq -c -S . <<<'{"id":"ma1","jobkey":"job-x","target":"alias","create_time":"2026-03-01 10:00:00",
	"create_timestamp":1772359200000,"time_to_live":'"$(q "SELECT (extract(epoch FROM expires_at - created_at) * 1000)::bigint FROM push.message WHERE msg_id = 'ma1'")"',
	"resolved":10,"delivered":6,"expired":1,"dropped":1,"invalid":2,"pending":2}')" ]] ||
	check_fail "trace of ma1: $(jget data.data)"
expect_dev 404 unknown_msg_id GET /v1/trace/message/status msg_id=mb1
cp "$W/body" "$W/other"
expect_dev 404 unknown_msg_id GET /v1/trace/message/status msg_id=never-sent
cmp -s "$W/body" "$W/other" || check_fail "another app's message answers differently from none"
expect_dev 200 - GET /v1/trace/messages/status job_key=job-x
[[ "$(jget data.data.#)" == 2 && "$(jget data.data.0.id)" == ma1 && "$(jget data.data.1.id)" == ma2 &&
	"$(jget data.truncated)" == false ]] || check_fail "by job key: $(cat "$W/body")"
expect_dev 200 - GET /v1/trace/messages/status begin_time=1772359200000 end_time=1772362800000
[[ "$(jq -c '[.data.data[].id]' "$W/body")" == '["ma1","ma2"]' ]] || check_fail "by time: $(cat "$W/body")"
expect_dev 200 - GET /v1/trace/messages/status begin_time=1772359200000 end_time=1772362800000 job_key=nope
[[ "$(jget data.data.#)" == 0 ]] || check_fail "time and an unknown job key: $(cat "$W/body")"
expect_dev 200 - -s "$SECRET2" GET /v1/trace/messages/status job_key=job-x
[[ "$(jq -c '[.data.data[].id]' "$W/body")" == '["mb1"]' ]] || check_fail "app 2 by job key: $(cat "$W/body")"
expect_dev 400 missing_field GET /v1/trace/messages/status
expect_dev 400 missing_field GET /v1/trace/messages/status begin_time=1
expect_dev 400 missing_field GET /v1/trace/messages/status job_key=job-x end_time=1
expect_dev 400 bad_time_range GET /v1/trace/messages/status begin_time=5 end_time=4
expect_dev 400 bad_field GET /v1/trace/messages/status begin_time=x end_time=4
expect_dev 400 missing_field GET /v1/trace/message/status
ok "by id, job key and time; another app's message is not found"

# ---------------------------------------------------------------------------------------------
step="registration deletion"
q "INSERT INTO push.queue (regid, msg_id, app_id, expires_at, body) VALUES
	('$R1', 'ma3', '$APP1', now() + interval '1 day', '\\x00'),
	('$R1', 'ma3', '$APP1', now() + interval '1 day', '\\x01'),
	('$R2', 'ma3', '$APP1', now() + interval '1 day', '\\x02')"
q "INSERT INTO push.alias (regid, app_id, alias) VALUES ('$R1', '$APP1', 'user-1')"
q "INSERT INTO push.topic_subscription (regid, app_id, topic) VALUES ('$R1', '$APP1', 'news')"
q "INSERT INTO push.jobkey VALUES ('$R1', '$APP1', 'job-x', now() + interval '1 day')"
today="$(q "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')")"
expect_dev 200 - POST /v1/push/registrations/delete "registration_id=$R1,nope,$RB,$R1,nope" \
	restricted_package_name=com.example.news
[[ "$(jget data.deleted)" == 1 && "$(jq -c .data.unknown "$W/body")" == "[\"nope\",\"$RB\"]" ]] ||
	check_fail "delete: $(cat "$W/body")"
for t in registration queue alias topic_subscription jobkey; do
	[[ "$(q "SELECT count(*) FROM push.$t WHERE regid = '$R1'")" == 0 ]] || check_fail "push.$t keeps R1's rows"
done
[[ "$(q "SELECT count(*) FROM push.registration WHERE regid IN ('$R2', '$RB')")" == 2 ]] ||
	check_fail "another registration went"
[[ "$(q "SELECT dropped FROM push.message WHERE msg_id = 'ma3'")" == 2 &&
	"$(q "SELECT sum(dropped) FROM push.stat_daily WHERE app_id = '$APP1' AND day = '$today'")" == 2 ]] ||
	check_fail "R1's two queued rows not counted dropped"
expect_dev 200 - POST /v1/push/registrations/delete "registration_id=$R1"
[[ "$(jget data.deleted)" == 0 && "$(jq -c .data.unknown "$W/body")" == "[\"$R1\"]" ]] ||
	check_fail "deleting again: $(cat "$W/body")"
expect_dev 200 - -s "$SECRET2" POST /v1/push/registrations/delete "registration_id=$R2"
[[ "$(jget data.deleted)" == 0 ]] || check_fail "app 2 deleted app 1's registration"
expect_dev 400 bad_field POST /v1/push/registrations/delete "registration_id=$R2,,x"
expect_dev 400 bad_field POST /v1/push/registrations/delete "registration_id=${R2}x"
expect_dev 400 missing_field POST /v1/push/registrations/delete
expect_dev 401 invalid_app_secret -s "" POST /v1/push/registrations/delete "registration_id=$R2"
[[ "$(q "SELECT count(*) FROM push.registration WHERE regid = '$R2'")" == 1 ]] || check_fail "R2 went"
ok "deleted with queue, aliases, topics, job keys; unknown ones reported once"

# ---------------------------------------------------------------------------------------------
step="scheduled purge"
# An expired row: the daemon's own job (every second here) deletes and counts it.
q "INSERT INTO push.queue (regid, msg_id, app_id, expires_at, body) VALUES
	('$R2', 'ma2', '$APP1', now() - interval '1 second', '\\x00')"
gone() { [[ "$(q "SELECT count(*) FROM push.queue WHERE msg_id = 'ma2'")" == 0 ]]; }
mica_wait_for 15 gone || check_fail "the daemon did not purge an expired row"
[[ "$(q "SELECT expired FROM push.message WHERE msg_id = 'ma2'")" == 1 ]] || check_fail "the daemon's expiry was not counted"
ok "the daemon expires rows on its own"

# ---------------------------------------------------------------------------------------------
step="receipts"
SINK="https://localhost:$SINK_PORT/receipts?k=1"
q "INSERT INTO push.message (msg_id, app_id, jobkey, target, created_at, expires_at, queued, delivered,
	invalid, callback_url, callback_param, callback_type) VALUES
	('rc-ok', '$APP1', 'job-r', 'regid', now(), now() + interval '1 day', 5, 3, 0, '$SINK', 'p-ok', 1),
	('rc-inv', '$APP1', NULL, 'alias', now(), now() + interval '1 day', 2, 0, 2, '$SINK', 'p-inv', 17),
	('rc-none', '$APP1', NULL, 'regid', now(), now() + interval '1 day', 2, 0, 0, '$SINK', 'p-none', 1),
	('rc-http', '$APP1', NULL, 'regid', now(), now() + interval '1 day', 1, 1, 0,
		'http://localhost:$SINK_PORT/plain', 'p-http', 1),
	('rc-dead', '$APP1', NULL, 'regid', now(), now() + interval '1 day', 1, 1, 0,
		'https://localhost:$DEAD_PORT/x', 'p-dead', 1)"
receipted() { [[ "$(q "SELECT receipted_delivered FROM push.message WHERE msg_id = 'rc-ok'")" == 3 ]]; }
mica_wait_for 30 receipted || check_fail "no receipt accepted: $(cat "$W/sink.out" 2>/dev/null)"
grep -c '^503 ' "$W/sink.out" | grep -qx 2 || check_fail "the sink did not fail twice first: $(cat "$W/sink.out")"
ok204="$(grep -m1 '^204 /receipts?k=1 ' "$W/sink.out" | cut -d' ' -f3-)"
[[ -n "$ok204" ]] || check_fail "no accepted POST: $(cat "$W/sink.out")"
[[ "$(jq -c -S '."rc-ok" | del(.timestamp)' <<<"$ok204")" == '{"delivered":3,"jobkey":"job-r","param":"p-ok","type":1}' ]] ||
	check_fail "rc-ok's receipt: $ok204"
[[ "$(jq -c -S '."rc-inv" | del(.timestamp)' <<<"$ok204")" == '{"delivered":0,"invalid":2,"param":"p-inv","type":17}' ]] ||
	check_fail "rc-inv's receipt (batched with rc-ok): $ok204"
[[ "$(jq -r 'has("rc-none")' <<<"$ok204")" == false ]] || check_fail "a message with nothing new was reported"
[[ "$(q "SELECT receipt_attempts || ' ' || receipted_invalid FROM push.message WHERE msg_id = 'rc-inv'")" == "0 2" ]] ||
	check_fail "rc-inv's receipt state after the success"
dead_given_up() { [[ "$(q "SELECT receipt_given_up FROM push.message WHERE msg_id = 'rc-dead'")" == t ]]; }
mica_wait_for 30 dead_given_up || check_fail "a dead URL not given up: $(q "SELECT receipt_attempts FROM push.message WHERE msg_id = 'rc-dead'")"
[[ "$(q "SELECT receipt_attempts FROM push.message WHERE msg_id = 'rc-dead'")" == 3 ]] ||
	check_fail "given up after $(q "SELECT receipt_attempts FROM push.message WHERE msg_id = 'rc-dead'") attempts, want 3"
[[ "$(q "SELECT receipt_given_up FROM push.message WHERE msg_id = 'rc-http'")" == t ]] || check_fail "http:// not given up"
grep -q '/plain' "$W/sink.out" && check_fail "an http:// callback was POSTed to"
grep -q 'not https' "$W/push.log" || check_fail "the refused http:// URL is not logged"
# More deliveries: a new receipt with the new total.
q "UPDATE push.message SET delivered = 5 WHERE msg_id = 'rc-ok'"
again() { grep -q '"rc-ok":{[^}]*"delivered":5' "$W/sink.out"; }
mica_wait_for 15 again || check_fail "no receipt for the new total: $(cat "$W/sink.out")"
# Nothing per device leaves: no regid in any receipt.
for r in "$R1" "$R2" "$R3" "$RB"; do grep -qF "$r" "$W/sink.out" && check_fail "a receipt carries a regid"; done
ok "batched, retried after two failures, totals and param, no regid; http:// and a dead URL given up"

# The default: a callback host at a non-public address (the sink, on loopback) is refused before
# any connection and given up at once, its URL not logged.
stack_stop push
stack_start push "$PURL" "${PUSH_ENV[@]}" MICA_PUSH_RECEIPTS_PRIVATE_ADDRESSES=false \
	"$PUSH_BIN" --config deploy/mica.conf.example
q "INSERT INTO push.message (msg_id, app_id, created_at, expires_at, target, queued, delivered,
	callback_url, callback_param, callback_type) VALUES ('rc-inside', '$APP1', now(),
	now() + interval '1 day', 'regid', 1, 1, 'https://127.0.0.1:$SINK_PORT/inside?k=secret-ish', 'p', 1)"
inside_given_up() { [[ "$(q "SELECT receipt_given_up FROM push.message WHERE msg_id = 'rc-inside'")" == t ]]; }
mica_wait_for 30 inside_given_up || check_fail "a loopback callback host not given up"
[[ "$(q "SELECT receipt_attempts FROM push.message WHERE msg_id = 'rc-inside'")" == 1 ]] ||
	check_fail "a loopback callback host was retried"
grep -q '/inside' "$W/sink.out" && check_fail "a loopback callback host was POSTed to"
grep -q 'not a public address' "$W/push.log" || check_fail "the refused host is not logged"
grep -q 'secret-ish' "$W/push.log" && check_fail "the refused callback URL reached the log"
ok "a callback host at a loopback address: refused, given up, URL not logged"

# ---------------------------------------------------------------------------------------------
step="nothing per device"
# No statistics, trace or receipt column is named for a device, and none holds a regid.
cols="$(q "SELECT table_name || '.' || column_name FROM information_schema.columns
	WHERE table_schema = 'push' AND table_name IN ('stat_daily', 'message')
	AND (column_name ILIKE '%regid%' OR column_name ILIKE 'device%' OR column_name ILIKE '%alias%'
		OR column_name ILIKE '%token%' OR column_name ILIKE '%registration%')")"
[[ -z "$cols" ]] || check_fail "statistics columns named for a device: $cols"
[[ "$(q "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'push'
	AND table_name IN ('stat_daily', 'message')")" -ge 20 ]] || check_fail "the column check saw too few columns"
q "SELECT row_to_json(t)::text FROM (SELECT * FROM push.stat_daily) t
	UNION ALL SELECT row_to_json(t)::text FROM (SELECT * FROM push.message) t" >"$W/stats.dump"
[[ "$(wc -l <"$W/stats.dump")" -ge 8 ]] || check_fail "the dump is too short to mean anything"
for r in "$R1" "$R2" "$R3" "$RB"; do grep -qF "$r" "$W/stats.dump" && check_fail "a regid in the statistics"; done
ok "no device column, no regid value"

stack_stop push
stack_end
