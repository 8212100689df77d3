#!/usr/bin/env bash
# test_push_retention.sh - issue 21 item 4, the purging half, against real PostgreSQL with an
# injected clock (`mica push purge --at`): queue rows just before and at their TTL (counted
# expired in the message's trace and the app's day, markers counting nothing), devices silent
# 89 vs 91 days (the 91-day one deleted with its queue, counted dropped, and its aliases, topics
# and job keys), expired job keys, traces kept trace_days after expiry and not while a queue row
# is left; each run repeated is a no-op; two purges racing on one backlog count every row once
# (FOR UPDATE SKIP LOCKED); bad --at values are usage errors. State is set up with psql as the
# admin role (no send API, no broker needed).
set -euo pipefail
# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"

stack_begin test_push_retention

step="setup"
stack_db_create
A=1000000000000000001 B=1000000000000000002
# T0 = 2026-03-10T00:00:00Z; every time below is relative to it.
T0=1773100800000
H=3600000 DAY=86400000
ts() { echo "to_timestamp(($T0 + $1)::float8 / 1000)"; }
q() { sql "$ADMIN_CI" "$1"; }
q "INSERT INTO push.app (app_id, package, secret_idx) VALUES ('$A', 'com.example.a', 'idx-a'),
	('$B', 'com.example.b', 'idx-b')"
# reg APP REGID LAST_SEEN_OFFSET_MS
reg() {
	q "INSERT INTO push.registration (regid, app_id, device_idx, content_key_enc, token_idx, last_seen)
		VALUES ('$2', '$1', 'dev-$2', 'kc:v1:x', 'tok-$2', $(ts "$3"))"
}
# msg APP MSG_ID EXPIRES_OFFSET_MS QUEUED
msg() {
	q "INSERT INTO push.message (msg_id, app_id, target, created_at, expires_at, queued)
		VALUES ('$2', '$1', 'regid', $(ts "-$H"), $(ts "$3"), $4)"
}
# queue APP REGID MSG_ID|- EXPIRES_OFFSET_MS
queue() {
	local m="'$3'" kind=0
	[[ "$3" == - ]] && m=NULL kind=1
	q "INSERT INTO push.queue (regid, msg_id, app_id, kind, expires_at, body)
		VALUES ('$2', $m, '$1', $kind, $(ts "$4"), '\\x00')"
}
# purge AT [OPTIONS]: runs the CLI; its output in $W/purge; fails the step on a non-zero exit.
purge() {
	local at="$1"
	shift
	"$MICA" push purge --db "$ADMIN_CI" --at "$at" "$@" >"$W/purge" 2>"$W/purge.err" ||
		fail "purge --at $at: $(cat "$W/purge.err")"
}
# got NAME: the count the last purge printed for NAME.
got() { sed -n "s/^$1: //p" "$W/purge"; }
expect_purge() { # NAME WANT WHAT
	[[ "$(got "$1")" == "$2" ]] || check_fail "$3: $1 $(got "$1"), want $2 ($(tr '\n' ' ' <"$W/purge"))"
}
iso() { date -u -d "@$(((T0 + $1) / 1000))" +%Y-%m-%dT%H:%M:%SZ; }
stat_of() { q "SELECT coalesce(sum($2), 0) FROM push.stat_daily WHERE app_id = '$1' AND day = '$3'"; }

reg "$A" ra1 0
reg "$A" ra2 0
reg "$B" rb1 0
msg "$A" m1 "$H" 2
queue "$A" ra1 m1 "$H"
queue "$A" ra2 m1 "$H"
queue "$A" ra1 - "$H" # ra1's deleted_messages marker: expires with m1, counts nothing
msg "$B" m2 $((2 * H)) 1
queue "$B" rb1 m2 $((2 * H))
q "INSERT INTO push.jobkey VALUES ('ra1', '$A', 'job-1', $(ts $((H / 2)))), ('ra2', '$A', 'job-1', $(ts $((3 * H))))"
ok "two apps, three devices, two messages, a marker, two job keys"

# ---------------------------------------------------------------------------------------------
step="expiry"
purge "$((T0 + H - 1))"
expect_purge expired 0 "1 ms before the TTL"
[[ "$(q "SELECT count(*) FROM push.queue")" == 4 ]] || check_fail "a row went before its TTL"
expect_purge jobkeys 1 "the job key that expired at T0+30min"
purge "$(iso "$H")"
expect_purge expired 3 "at m1's TTL (two rows and the marker)"
[[ "$(q "SELECT count(*) FROM push.queue WHERE regid IN ('ra1', 'ra2')")" == 0 ]] ||
	check_fail "m1's rows or the marker survived their TTL"
[[ "$(q "SELECT count(*) FROM push.queue WHERE msg_id = 'm2'")" == 1 ]] || check_fail "m2 went early"
[[ "$(q "SELECT expired || '/' || queued FROM push.message WHERE msg_id = 'm1'")" == 2/2 ]] ||
	check_fail "m1's trace: $(q "SELECT expired, queued FROM push.message WHERE msg_id = 'm1'")"
[[ "$(stat_of "$A" expired 2026-03-10)" == 2 ]] ||
	check_fail "app A's day: expired $(stat_of "$A" expired 2026-03-10), want 2 (the marker counts nothing)"
[[ "$(stat_of "$B" expired 2026-03-10)" == 0 ]] || check_fail "app B counted m1's expiry"
ok "nothing 1 ms before the TTL; at it, both rows and the marker, counted 2 in trace and day"

step="expiry again"
purge "$(iso "$H")"
expect_purge expired 0 "the same run again"
expect_purge jobkeys 0 "the same run again"
[[ "$(q "SELECT expired FROM push.message WHERE msg_id = 'm1'")" == 2 &&
	"$(stat_of "$A" expired 2026-03-10)" == 2 ]] || check_fail "a repeated run moved the counters"
purge "$(iso $((2 * H)))"
expect_purge expired 1 "at m2's TTL"
[[ "$(stat_of "$B" expired 2026-03-10)" == 1 && "$(q "SELECT expired FROM push.message WHERE msg_id = 'm2'")" == 1 ]] ||
	check_fail "m2's expiry not counted for app B"
ok "idempotent; the other app's message at its own TTL"

# ---------------------------------------------------------------------------------------------
step="silent devices"
reg "$A" r89 $((-89 * DAY))
reg "$A" r91 $((-91 * DAY))
msg "$A" m3 $((10 * DAY)) 2
queue "$A" r91 m3 $((10 * DAY))
queue "$A" r89 m3 $((10 * DAY))
queue "$A" r91 - $((10 * DAY))
q "INSERT INTO push.alias (regid, app_id, alias) VALUES ('r91', '$A', 'user-91'), ('r89', '$A', 'user-89')"
q "INSERT INTO push.topic_subscription (regid, app_id, topic) VALUES ('r91', '$A', 'news')"
q "INSERT INTO push.jobkey VALUES ('r91', '$A', 'job-9', $(ts $((10 * DAY))))"
purge "$(iso 0)"
expect_purge silent_registrations 1 "89 and 91 days silent"
expect_purge dropped 2 "r91's queue (a message and its marker)"
[[ "$(q "SELECT string_agg(regid, ',' ORDER BY regid) FROM push.registration WHERE regid LIKE 'r8%' OR regid LIKE 'r9%'")" == r89 ]] ||
	check_fail "registrations left: $(q "SELECT string_agg(regid, ',') FROM push.registration")"
for t in queue alias topic_subscription jobkey; do
	[[ "$(q "SELECT count(*) FROM push.$t WHERE regid = 'r91'")" == 0 ]] || check_fail "r91's rows in push.$t survived"
done
[[ "$(q "SELECT count(*) FROM push.queue WHERE regid = 'r89'")" == 1 && "$(q "SELECT count(*) FROM push.alias WHERE regid = 'r89'")" == 1 ]] ||
	check_fail "r89 (89 days) lost its queue or alias"
[[ "$(q "SELECT dropped FROM push.message WHERE msg_id = 'm3'")" == 1 && "$(stat_of "$A" dropped 2026-03-10)" == 1 ]] ||
	check_fail "r91's undelivered message not counted dropped once"
purge "$(iso 0)"
expect_purge silent_registrations 0 "the same run again"
[[ "$(q "SELECT dropped FROM push.message WHERE msg_id = 'm3'")" == 1 ]] || check_fail "a repeated run counted again"
purge "$(iso $((2 * DAY)))" --silent-days 91
expect_purge silent_registrations 0 "r89 at 91 days with --silent-days 91"
purge "$(iso $((2 * DAY)))" --silent-days 90
expect_purge silent_registrations 1 "r89 at 91 days with --silent-days 90"
ok "91 days silent purged with queue, aliases, topics, job keys (counted dropped); 89 days kept"

# ---------------------------------------------------------------------------------------------
step="traces"
# m1 expired at T0+1h: its trace stays 30 days after that. m4 expired too but still has a queue
# row (its row's own expiry is later): never purged while one is left.
msg "$A" m4 "$H" 1
reg "$A" rlate $((40 * DAY))
queue "$A" rlate m4 $((40 * DAY))
purge "$((T0 + H + 30 * DAY - 1))"
expect_purge messages 0 "1 ms before trace_days"
purge "$((T0 + H + 30 * DAY))"
expect_purge messages 1 "m1, 30 days after its expiry"
[[ "$(q "SELECT string_agg(msg_id, ',' ORDER BY msg_id) FROM push.message")" == m2,m3,m4 ]] ||
	check_fail "traces left: $(q "SELECT string_agg(msg_id, ',' ORDER BY msg_id) FROM push.message"), want m2,m3,m4"
[[ "$(stat_of "$A" expired 2026-03-10)" == 2 ]] || check_fail "purging a trace touched the daily counters"
# With no trace kept, every expired message goes at once, except m4 (a queue row is left).
purge "$((T0 + H + 30 * DAY))" --trace-days 0
expect_purge messages 2 "m2 and m3 with --trace-days 0"
[[ "$(q "SELECT string_agg(msg_id, ',' ORDER BY msg_id) FROM push.message")" == m4 ]] ||
	check_fail "with --trace-days 0: $(q "SELECT string_agg(msg_id, ',' ORDER BY msg_id) FROM push.message"), want m4"
ok "traces kept trace_days after expiry, and while a queue row is left; daily counters stay"

# ---------------------------------------------------------------------------------------------
step="two purges at once"
# 3000 rows of one message expire; two purges with small batches race on them: every row is
# deleted and counted exactly once between them.
msg "$B" m5 $((3 * DAY)) 3000
q "INSERT INTO push.queue (regid, msg_id, app_id, expires_at, body)
	SELECT 'rb1', 'm5', '$B', $(ts $((3 * DAY))), '\\x00' FROM generate_series(1, 3000)"
before="$(q "SELECT coalesce(sum(expired), 0) FROM push.stat_daily WHERE app_id = '$B'")"
at="$(iso $((3 * DAY)))"
"$MICA" push purge --db "$ADMIN_CI" --at "$at" --batch 50 >"$W/p1" 2>&1 &
p1=$!
"$MICA" push purge --db "$ADMIN_CI" --at "$at" --batch 50 >"$W/p2" 2>&1 &
p2=$!
wait "$p1" || fail "purge 1: $(cat "$W/p1")"
wait "$p2" || fail "purge 2: $(cat "$W/p2")"
n1="$(sed -n 's/^expired: //p' "$W/p1")" n2="$(sed -n 's/^expired: //p' "$W/p2")"
((n1 + n2 == 3000)) || check_fail "the two purges deleted $n1 + $n2 rows, want 3000"
[[ "$(q "SELECT expired FROM push.message WHERE msg_id = 'm5'")" == 3000 ]] ||
	check_fail "m5's trace: expired $(q "SELECT expired FROM push.message WHERE msg_id = 'm5'")"
after="$(q "SELECT sum(expired) FROM push.stat_daily WHERE app_id = '$B'")"
((after - before == 3000)) || check_fail "app B's days counted $((after - before)) expired, want 3000"
ok "3000 rows: $n1 + $n2, each counted once"

# ---------------------------------------------------------------------------------------------
step="options"
for bad in yesterday 2026-02-30T00:00:00Z 2026-03-10T00:00:00 2026-03-10T25:00:00Z -5 "2026-03-10T00:00:00+2:00"; do
	rc=0
	"$MICA" push purge --db "$ADMIN_CI" --at "$bad" >/dev/null 2>"$W/err" || rc=$?
	{ ((rc == 64)) && grep -q -- "--at must be RFC 3339" "$W/err"; } || check_fail "--at $bad: exit $rc $(cat "$W/err")"
done
rc=0
"$MICA" push purge --db "$ADMIN_CI" --silent-days 0 >/dev/null 2>"$W/err" || rc=$?
((rc == 64)) || check_fail "--silent-days 0: exit $rc"
# An offset is honoured: 02:00+02:00 is midnight UTC.
purge "2026-03-10T02:00:00.000+02:00"
[[ "$(got expired)" == 0 ]] || check_fail "an RFC 3339 offset: $(cat "$W/purge")"
"$MICA" push purge --help >"$W/help" || check_fail "--help exit status"
grep -q "usage: mica push purge" "$W/help" || check_fail "--help: $(cat "$W/help")"
ok "bad --at values exit 64 naming the option"

stack_end
