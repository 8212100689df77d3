#!/usr/bin/env bash
# test_push_send.sh - mica-push's developer sends (issue 21 items 3 and 4), against real
# PostgreSQL, Redis and the Key Center, with no broker: every /v3/message route in MiPush's form
# fields and the JSON variant, checked in the database (ciphertext only: the plaintext is nowhere
# in the push tables; a queue body opened with the device's content key from its registration
# holds the sealed JSON and does not open for another regid), the wake lines on push:wake
# (redis-cli SUBSCRIBE as the push user), every refusal, notify_id replacement, jobkey at most
# once per device, the pending cap with its one deleted_messages marker, and the message id
# answered only after COMMIT (a COMMIT that fails, and PostgreSQL stopped, answer no id).
set -euo pipefail
# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"

stack_begin test_push_send MICA_CERT_PUSH MICA_KEY_PUSH MICA_REDIS_SOCKET MICA_REDIS_PASSWORD_FILE_PUSH
command -v jq >/dev/null || fail "jq is not installed"
command -v redis-cli >/dev/null || fail "redis-cli is not installed"
OPEN="$BUILD/tests/peers/envelope_open"
[[ -x "$OPEN" ]] || fail "$OPEN is missing (make all)"
CAP=5

# ---------------------------------------------------------------------------------------------
step="setup"
stack_db_create
stack_push_setup
stack_start push "$PURL" "${PUSH_ENV[@]}" MICA_PUSH_QUEUE_MAX_PENDING=$CAP "$PUSH_BIN" \
	--config deploy/mica.conf.example
# shellcheck source=tests/integration/lib-push.sh
. "$ROOT/tests/integration/lib-push.sh"
must_app com.example.news
APP1="$APP_ID" SECRET1="$APP_SECRET"
must_app com.example.chat
APP2="$APP_ID" SECRET2="$APP_SECRET"
# register NAME APP PACKAGE: a device; sets REG_<NAME> and KEY_<NAME>.
register() {
	local hash st
	hash="$(printf 'device %s' "$1" | sha256sum | cut -c1-64)"
	st="$(curl -sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' \
		-H 'Content-Type: application/json' \
		-d "$(jq -nc --arg a "$2" --arg p "$3" --arg h "$hash" '{app_id: $a, package: $p, device_hash: $h}')" \
		"$PURL/v1/push/register")"
	[[ "$st" == 200 ]] || fail "register $1: $st $(cat "$W/body")"
	printf -v "REG_$1" '%s' "$(jget regid)"
	printf -v "KEY_$1" '%s' "$(jget content_key)"
}
for d in A B C D E F; do register "$d" "$APP1" com.example.news; done
register X "$APP2" com.example.chat
# Every wake published from here on, as the push service's Redis user sees it.
REDISCLI_AUTH="$(<"$MICA_REDIS_PASSWORD_FILE_PUSH")" redis-cli --no-auth-warning -s "$MICA_REDIS_SOCKET" \
	--user push SUBSCRIBE push:wake >"$W/wake.out" 2>&1 &
SUB_PID=$!
stack_on_exit() { kill "$SUB_PID" 2>/dev/null || true; }
deadline=$((SECONDS + 10))
until grep -q '^subscribe$' "$W/wake.out"; do
	((SECONDS < deadline)) || fail "redis-cli did not subscribe: $(cat "$W/wake.out")"
	sleep 0.1
done
ok "two apps, six devices of one and one of the other, a subscriber on push:wake"

# ---------------------------------------------------------------------------------------------
# send [-s SECRET] [-j] TARGET FIELD...: POST /v3/message/TARGET; form fields (--data-urlencode),
# or with -j one JSON object given as the only FIELD. Body in $W/body, status in $status.
status=""
send() {
	local secret="$SECRET1" json="" args
	while [[ "$1" == -* ]]; do
		case "$1" in
		-s) secret="$2" && shift 2 ;;
		-j) json=1 && shift ;;
		esac
	done
	local target="$1"
	shift
	args=(-sS --max-time 60 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}')
	[[ -n "$secret" ]] && args+=(-H "Authorization: key=$secret")
	if [[ -n "$json" ]]; then
		args+=(-H 'Content-Type: application/json' --data-binary "$1")
	else
		for f in "$@"; do args+=(--data-urlencode "$f"); done
	fi
	status="$(curl "${args[@]}" "$PURL/v3/message/$target")"
}
# send_ok TARGET FIELD...: a send that must succeed with MiPush's envelope; sets MSG.
send_ok() {
	send "$@"
	MSG=""
	if [[ "$status" != 200 || "$(jget result)" != ok || "$(jget code)" != 0 ||
		"$(jget description)" != 成功 || -z "$(jget trace_id)" ]]; then
		check_fail "send $*: $status $(cat "$W/body")"
		return 0
	fi
	MSG="$(jget data.id)"
	[[ "$MSG" =~ ^[A-Za-z0-9_-]{24}$ ]] || check_fail "send $*: message id $MSG"
}
# expect_send STATUS CODE TARGET FIELD...: a refusal with the problem type and MiPush's members.
expect_send() {
	local want="$1" code="$2"
	shift 2
	send "$@"
	if [[ "$status" != "$want" || "$(jget error.code)" != "$code" || "$(jget result)" != error ||
		"$(jget reason)" != "$code" || "$(jget code)" != "$want" ]]; then
		check_fail "send ${1:0:40} ${2:0:60}...: want $want $code: $status $(head -c 400 "$W/body")"
	elif [[ "$(jget data)" != __absent__ ]]; then
		check_fail "send ${1:0:40} ${2:0:60}...: a refusal carries data: $(cat "$W/body")"
	else
		echo "ok - $step: ${1:0:40} ${2:0:60} ... -> $want $code"
	fi
}
q() { sql "$ADMIN_CI" "$1"; }
# queued MSG: devices a message is queued for (its trace counter).
queued() { q "SELECT queued FROM push.message WHERE msg_id = '$1'"; }
# body_of SEQ: the queue row's body in base64.
body_of() { q "SELECT encode(body, 'base64') FROM push.queue WHERE seq = $1" | tr -d '\n'; }
# open_body REGID KEY_B64 BODY_B64: the plaintext, or exit 1 when it does not open.
open_body() {
	local aad
	aad="$(printf 'mica-push v1' | od -An -tx1 | tr -d ' \n')00$(printf '%s' "$1" | od -An -tx1 | tr -d ' \n')"
	printf '%s %s' "$2" "$3" | "$OPEN" -x "$aad"
}
# wake_seen REGID SEQ BODY_B64: a W line for the row was published (waits up to 10 s).
wake_seen() {
	local deadline=$((SECONDS + 10))
	until grep -qxF "W $1 $2 0 $3" "$W/wake.out"; do
		((SECONDS < deadline)) || return 1
		sleep 0.1
	done
}

# ---------------------------------------------------------------------------------------------
step="regid"
BOGUS="$(printf 'x%.0s' {1..43})"
send_ok regid "registration_id=$REG_A,$REG_B,$BOGUS,$REG_X,$REG_A,$BOGUS" title=Headline-7Q2 \
	description=Body-text-9K1 payload=payload-secret-3F8 notify_type=1 extra.sound_uri=a.ogg \
	"extra.ticker=Ticker 中文" restricted_package_name=com.example.news time_to_live=60000
M1="$MSG"
[[ "$(jget info)" == *"2 devices (2 invalid"* ]] || check_fail "info: $(jget info)"
[[ "$(q "SELECT queued, invalid, target, dropped FROM push.message WHERE msg_id = '$M1' AND app_id = '$APP1'")" == "2|2|regid|0" ]] ||
	check_fail "message row: $(q "SELECT * FROM push.message WHERE msg_id = '$M1'")"
[[ "$(q "SELECT string_agg(regid, ',' ORDER BY regid) FROM push.queue WHERE msg_id = '$M1' AND kind = 0")" == \
	"$(printf '%s\n%s\n' "$REG_A" "$REG_B" | sort | paste -sd,)" ]] ||
	check_fail "queue rows: $(q "SELECT regid FROM push.queue WHERE msg_id = '$M1'")"
[[ "$(q "SELECT count(*) FROM push.queue WHERE regid = '$REG_X'")" == 0 ]] ||
	check_fail "a device of another app was queued for"
[[ "$(q "SELECT sum(sent), sum(invalid) FROM push.stat_daily WHERE app_id = '$APP1'")" == "2|2" ]] ||
	check_fail "stat_daily: $(q "SELECT * FROM push.stat_daily")"
ttl="$(q "SELECT round(extract(epoch FROM expires_at - created_at)) FROM push.message WHERE msg_id = '$M1'")"
[[ "$ttl" == 60 ]] || check_fail "time_to_live 60000 ms stored as $ttl s"
ok "queued for the two devices of the app, two invalid targets counted"

step="ciphertext only"
for s in Headline-7Q2 Body-text-9K1 payload-secret-3F8 a.ogg; do
	n="$(q "SELECT (SELECT count(*) FROM push.queue WHERE position(convert_to('$s', 'UTF8') IN body) > 0)
		+ (SELECT count(*) FROM push.message m WHERE m::text LIKE '%$s%')
		+ (SELECT count(*) FROM push.stat_daily s WHERE s::text LIKE '%$s%')
		+ (SELECT count(*) FROM push.jobkey j WHERE j::text LIKE '%$s%')")"
	[[ "$n" == 0 ]] || check_fail "the plaintext $s is stored in a push table"
done
SEQ_A="$(q "SELECT seq FROM push.queue WHERE msg_id = '$M1' AND regid = '$REG_A'")"
BODY_A="$(body_of "$SEQ_A")"
open_body "$REG_A" "$KEY_A" "$BODY_A" >"$W/pt" 2>"$W/open.err" || check_fail "the body does not open: $(cat "$W/open.err")"
jq -e --arg id "$M1" --arg app "$APP1" '.id == $id and .type == "notification" and .app_id == $app
	and .package == "com.example.news" and .title == "Headline-7Q2" and .description == "Body-text-9K1"
	and .payload == "payload-secret-3F8" and .notify_type == 1 and .extra == {"sound_uri": "a.ogg", "ticker": "Ticker 中文"}
	and (.sent_at | type) == "number" and (has("notify_id") | not) and (has("count") | not)' "$W/pt" >/dev/null ||
	check_fail "the sealed message: $(cat "$W/pt")"
rc=0
open_body "$REG_B" "$KEY_A" "$BODY_A" >/dev/null 2>&1 || rc=$?
[[ "$rc" == 1 ]] || check_fail "A's body opened bound to B's regid (exit $rc)"
rc=0
open_body "$REG_A" "$KEY_B" "$BODY_A" >/dev/null 2>&1 || rc=$?
[[ "$rc" == 1 ]] || check_fail "A's body opened under B's key (exit $rc)"
ok "the body opens with A's content key bound to A's regid only; no plaintext in any push table"

step="wake"
wake_seen "$REG_A" "$SEQ_A" "$BODY_A" || check_fail "no W line for A's row: $(head -c 600 "$W/wake.out")"
SEQ_B="$(q "SELECT seq FROM push.queue WHERE msg_id = '$M1' AND regid = '$REG_B'")"
wake_seen "$REG_B" "$SEQ_B" "$(body_of "$SEQ_B")" || check_fail "no W line for B's row"
ok "one W line per committed row, with the stored body"

step="json variant"
send_ok -j regid "$(jq -nc --arg r "$REG_C" '{registration_id: $r, pass_through: 1, payload: "{\"k\":1}", notify_id: 3, "extra.k": "v"}')"
SEQ="$(q "SELECT seq FROM push.queue WHERE msg_id = '$MSG'")"
open_body "$REG_C" "$KEY_C" "$(body_of "$SEQ")" >"$W/pt" || check_fail "the JSON send's body does not open"
jq -e '.type == "pass_through" and .payload == "{\"k\":1}" and .notify_id == 3 and (has("title") | not) and .extra.k == "v"' \
	"$W/pt" >/dev/null || check_fail "the JSON send: $(cat "$W/pt")"
expect_send 400 unknown_field -j regid "$(jq -nc --arg r "$REG_C" '{registration_id: $r, pass_through: 1, payload: "p", extra: {k: "v"}}')"
expect_send 400 bad_field -j regid "$(jq -nc --arg r "$REG_C" '{registration_id: $r, pass_through: true, payload: "p"}')"
expect_send 400 malformed_json -j regid '{"registration_id": "x", "registration_id": "y"}'
ok

# ---------------------------------------------------------------------------------------------
step="alias, topic, multi_topic, all"
dev_sub() {
	local st
	st="$(curl -sS --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' -H "Authorization: key=$SECRET1" \
		--data-urlencode "registration_id=$2" --data-urlencode "$3" "$PURL$1")"
	[[ "$st" == 200 ]] || fail "$1 $3: $st $(cat "$W/body")"
}
dev_sub /v2/alias/subscribe "$REG_A" aliases=alice
dev_sub /v2/alias/subscribe "$REG_B,$REG_C" aliases=bob
dev_sub /v2/topic/subscribe "$REG_A,$REG_B" topic=sports
dev_sub /v2/topic/subscribe "$REG_B,$REG_C" topic=news
send_ok alias alias=alice,bob,nobody title=t description=d
[[ "$(queued "$MSG")|$(q "SELECT invalid FROM push.message WHERE msg_id = '$MSG'")" == "3|1" ]] ||
	check_fail "alias send: $(q "SELECT * FROM push.message WHERE msg_id = '$MSG'")"
send_ok topic topic=sports title=t description=d
[[ "$(queued "$MSG")" == 2 ]] || check_fail "topic send queued $(queued "$MSG")"
regids_of() { q "SELECT string_agg(regid, ',' ORDER BY regid) FROM push.queue WHERE msg_id = '$1'"; }
want() { printf '%s\n' "$@" | sort | paste -sd,; }
send_ok multi_topic 'topics=sports;$;news' topic_op=INTERSECTION title=t description=d
[[ "$(regids_of "$MSG")" == "$(want "$REG_B")" ]] || check_fail "INTERSECTION: $(regids_of "$MSG")"
send_ok multi_topic 'topics=sports;$;news' topic_op=UNION title=t description=d
[[ "$(regids_of "$MSG")" == "$(want "$REG_A" "$REG_B" "$REG_C")" ]] || check_fail "UNION: $(regids_of "$MSG")"
send_ok multi_topic 'topics=sports;$;news' topic_op=EXCEPT title=t description=d
[[ "$(regids_of "$MSG")" == "$(want "$REG_A")" ]] || check_fail "EXCEPT: $(regids_of "$MSG")"
expect_send 400 bad_field multi_topic 'topics=sports;$;news' topic_op=XOR title=t description=d
expect_send 400 bad_field multi_topic 'topics=a;$;b;$;c;$;d;$;e;$;f' title=t description=d
send_ok all title=t description=d
[[ "$(regids_of "$MSG")" == "$(want "$REG_A" "$REG_B" "$REG_C" "$REG_D" "$REG_E" "$REG_F")" ]] ||
	check_fail "all: $(regids_of "$MSG")"
send_ok -s "$SECRET2" all pass_through=1 payload=p
[[ "$(regids_of "$MSG")" == "$REG_X" ]] || check_fail "all of app 2: $(regids_of "$MSG")"
[[ "$(q "SELECT target FROM push.message WHERE msg_id = '$MSG'")" == all ]] || check_fail "target column"
ok "each target names exactly its devices, never another app's"

# ---------------------------------------------------------------------------------------------
step="refusals"
before="$(q "SELECT count(*) FROM push.message")"
expect_send 400 missing_field regid "registration_id=$REG_A" title=t
expect_send 400 missing_field regid "registration_id=$REG_A" pass_through=1 title=t description=d
expect_send 400 missing_field regid title=t description=d
expect_send 400 bad_field regid "registration_id=$REG_A" pass_through=2 payload=p
expect_send 400 bad_field regid "registration_id=$REG_A" pass_through=1 "payload=$(head -c 4097 /dev/zero | tr '\0' a)"
send_ok regid "registration_id=$REG_F" pass_through=1 "payload=$(head -c 4096 /dev/zero | tr '\0' a)"
expect_send 400 bad_field regid "registration_id=$REG_A" title=t description=d time_to_live=1209600001
send_ok regid "registration_id=$REG_F" title=t description=d time_to_live=1209600000
expect_send 400 bad_field regid "registration_id=$REG_A" title=t description=d time_to_live=0
expect_send 400 unknown_field regid "registration_id=$REG_A" title=t description=d time_to_send=1
[[ "$(jget error.message)" == *time_to_send* ]] || check_fail "unknown_field does not name it: $(cat "$W/body")"
many="$(for i in $(seq 1 1001); do printf 'r%042d,' "$i"; done)"
expect_send 400 bad_field regid "registration_id=${many%,}" title=t description=d
expect_send 401 invalid_app_secret -s wrong-secret regid "registration_id=$REG_A" title=t description=d
expect_send 401 invalid_app_secret -s "" regid "registration_id=$REG_A" title=t description=d
expect_send 403 package_mismatch regid "registration_id=$REG_A" title=t description=d restricted_package_name=com.example.chat
expect_send 400 bad_field regid "registration_id=$REG_A" title=t description=d notify_id=-1
expect_send 400 bad_field regid "registration_id=$REG_A" title=t description=d notify_type=9
expect_send 400 missing_field regid "registration_id=$REG_A" title=t description=d callback.type=1
expect_send 400 bad_field regid "registration_id=$REG_A" title=t description=d jobkey="a b"
ok "each rule answers 4xx naming the field"

step="hostile forms"
# send_raw BODY: a form body exactly as given.
send_raw() {
	status="$(curl -sS --max-time 60 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' \
		-H "Authorization: key=$SECRET1" -H 'Content-Type: application/x-www-form-urlencoded' \
		--data-binary "@$1" "$PURL/v3/message/regid")"
}
expect_raw() {
	send_raw "$W/raw"
	if [[ "$status" != 400 || "$(jget error.code)" != "$1" || "$(jget error.message)" != *"$2"* ]]; then
		check_fail "$3: want 400 $1 naming $2: $status $(head -c 300 "$W/body")"
	else
		echo "ok - $step: $3 -> 400 $1"
	fi
}
{ printf 'registration_id=%s&title=t&description=d' "$REG_A"; for i in $(seq 1 5000); do printf '&extra.k%d=v' "$i"; done; } >"$W/raw"
expect_raw bad_field "extra." "5000 extra.* fields"
{ printf 'registration_id=%s&title=t&description=d' "$REG_A"; for i in $(seq 1 33); do printf '&extra.k%d=v' "$i"; done; } >"$W/raw"
expect_raw bad_field "extra." "33 extra.* fields"
printf 'registration_id=%s&title=%%FF%%FE&description=d' "$REG_A" >"$W/raw"
expect_raw bad_field '"title"' "invalid UTF-8 in title"
printf 'registration_id=%s&title=%%C0%%AF&description=d' "$REG_A" >"$W/raw"
expect_raw bad_field '"title"' "an overlong UTF-8 form"
printf 'registration_id=%s&title=t&description=d&extra.k=%%ED%%A0%%80' "$REG_A" >"$W/raw"
expect_raw bad_field 'extra.k' "a surrogate in an extra value"
printf 'registration_id=%s&title=t&description=d&extra.k=1&extra.k=2' "$REG_A" >"$W/raw"
expect_raw bad_field 'extra.k' "extra.k twice"
printf 'registration_id=%s&title=t&title=u&description=d' "$REG_A" >"$W/raw"
expect_raw bad_field '"title"' "title twice"
printf 'registration_id=%s&title=t&description=d&extra.=v' "$REG_A" >"$W/raw"
expect_raw bad_field 'extra.' "an empty extra key"
{ printf 'registration_id=%s&title=t&description=d&extra.k=' "$REG_A"; head -c 1025 /dev/zero | tr '\0' v; } >"$W/raw"
expect_raw bad_field 'extra.k' "an extra value over 1024 bytes"
printf 'registration_id=%s&title=t%%00x&description=d' "$REG_A" >"$W/raw"
expect_raw bad_field '"title"' "a NUL in title"
after="$(q "SELECT count(*) FROM push.message")"
[[ "$after" == $((before + 2)) ]] || check_fail "refused sends wrote messages: $before -> $after (2 accepted)"
ok "refused, naming the field; nothing written"

# ---------------------------------------------------------------------------------------------
step="notify_id"
dropped_day="$(q "SELECT sum(dropped) FROM push.stat_daily WHERE app_id = '$APP1'")"
send_ok regid "registration_id=$REG_D" title=first description=d notify_id=7
N1="$MSG"
send_ok regid "registration_id=$REG_D" title=other description=d notify_id=8
N2="$MSG"
send_ok regid "registration_id=$REG_D" title=second description=d notify_id=7
N3="$MSG"
[[ "$(q "SELECT string_agg(msg_id, ',' ORDER BY seq) FROM push.queue WHERE regid = '$REG_D' AND notify_id IS NOT NULL")" == "$N2,$N3" ]] ||
	check_fail "notify_id 7 did not replace the older one: $(q "SELECT msg_id, notify_id FROM push.queue WHERE regid = '$REG_D'")"
[[ "$(q "SELECT dropped FROM push.message WHERE msg_id = '$N1'")" == 1 ]] || check_fail "the replaced message's dropped"
# A row a broker already sent (attempted) is not replaced: the device may hold it.
q "UPDATE push.queue SET attempted = true WHERE msg_id = '$N3'" >/dev/null
send_ok regid "registration_id=$REG_D" title=third description=d notify_id=7
[[ "$(q "SELECT count(*) FROM push.queue WHERE regid = '$REG_D' AND notify_id = 7")" == 2 ]] ||
	check_fail "an attempted row was replaced"
[[ "$(q "SELECT sum(dropped) FROM push.stat_daily WHERE app_id = '$APP1'")" == $((dropped_day + 1)) ]] ||
	check_fail "stat_daily dropped: $(q "SELECT sum(dropped) FROM push.stat_daily WHERE app_id = '$APP1'"), want $((dropped_day + 1))"
ok "a newer notify_id replaces the queued, never-sent one, counted as dropped"

step="jobkey"
send_ok regid "registration_id=$REG_E,$REG_F" title=t description=d jobkey=job-1
[[ "$(queued "$MSG")" == 2 ]] || check_fail "first jobkey send queued $(queued "$MSG")"
send_ok regid "registration_id=$REG_E,$REG_F,$REG_C" title=t description=d jobkey=job-1
[[ "$(regids_of "$MSG")" == "$REG_C" ]] || check_fail "second jobkey send: $(regids_of "$MSG")"
[[ "$(jget info)" == *"2 already had the jobkey"* ]] || check_fail "info: $(jget info)"
send_ok -s "$SECRET2" regid "registration_id=$REG_X" pass_through=1 payload=p jobkey=job-1
[[ "$(queued "$MSG")" == 1 ]] || check_fail "another app's jobkey is its own"
ok "at most once per device and app"

step="pending cap"
# F holds four rows (the send to all, the 4096-byte payload, the 14-day one, the first jobkey
# send); five more push the four oldest and then the first of these out.
CAPMSG=()
dropped_day="$(q "SELECT sum(dropped) FROM push.stat_daily WHERE app_id = '$APP1'")"
for i in 1 2 3 4 5; do
	send_ok regid "registration_id=$REG_F" title="cap $i" description=d
	CAPMSG+=("$MSG")
done
[[ "$(q "SELECT count(*) FROM push.queue WHERE regid = '$REG_F' AND kind = 0")" == "$CAP" ]] ||
	check_fail "F holds $(q "SELECT count(*) FROM push.queue WHERE regid = '$REG_F' AND kind = 0") rows, cap $CAP"
[[ "$(q "SELECT count(*) FROM push.queue WHERE regid = '$REG_F' AND kind = 1")" == 1 ]] ||
	check_fail "F has no single marker"
mseq="$(q "SELECT seq FROM push.queue WHERE regid = '$REG_F' AND kind = 1")"
mbody="$(body_of "$mseq")"
open_body "$REG_F" "$KEY_F" "$mbody" >"$W/pt" || check_fail "the marker does not open"
jq -e --arg id "deleted:$REG_F" '.type == "deleted_messages" and .id == $id and .count == 4' "$W/pt" >/dev/null ||
	check_fail "the marker: $(cat "$W/pt")"
wake_seen "$REG_F" "$mseq" "$mbody" || check_fail "no W line for the marker"
send_ok regid "registration_id=$REG_F" title="cap 6" description=d
[[ "$(q "SELECT count(*) FROM push.queue WHERE regid = '$REG_F' AND kind = 1")" == 1 ]] || check_fail "two markers"
mbody="$(q "SELECT encode(body, 'base64') FROM push.queue WHERE regid = '$REG_F' AND kind = 1" | tr -d '\n')"
open_body "$REG_F" "$KEY_F" "$mbody" >"$W/pt" || check_fail "the new marker does not open"
jq -e '.count == 5' "$W/pt" >/dev/null || check_fail "the marker's running count: $(cat "$W/pt")"
[[ "$(q "SELECT string_agg(msg_id, ',' ORDER BY seq) FROM push.queue WHERE regid = '$REG_F' AND kind = 0")" == \
	"$(IFS=,; echo "${CAPMSG[*]:1},$MSG")" ]] || check_fail "not the newest $CAP kept"
[[ "$(q "SELECT dropped FROM push.message WHERE msg_id = '${CAPMSG[0]}'")" == 1 ]] || check_fail "the dropped message's trace"
[[ "$(q "SELECT sum(dropped) FROM push.stat_daily WHERE app_id = '$APP1'")" == $((dropped_day + 5)) ]] ||
	check_fail "stat_daily dropped: $(q "SELECT sum(dropped) FROM push.stat_daily WHERE app_id = '$APP1'")"
ok "the oldest dropped beyond $CAP, one marker with the running count"

# ---------------------------------------------------------------------------------------------
step="id only after commit"
# A COMMIT that fails (a deferred trigger raising at commit time): no id, nothing stored, no wake.
q "CREATE FUNCTION public.refuse_commit() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN RAISE EXCEPTION 'refused at commit'; END \$\$;
   CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON push.queue DEFERRABLE INITIALLY DEFERRED
   FOR EACH ROW EXECUTE FUNCTION public.refuse_commit()" >/dev/null
before="$(q "SELECT count(*) FROM push.message")"
lines="$(grep -c '^W ' "$W/wake.out" || true)"
send regid "registration_id=$REG_A" title=never description=d
{ [[ "$status" == 500 && "$(jget data)" == __absent__ && "$(jget result)" == error ]]; } ||
	check_fail "a failed COMMIT answered: $status $(cat "$W/body")"
[[ "$(q "SELECT count(*) FROM push.message")" == "$before" ]] || check_fail "a message row survived the failed COMMIT"
q "DROP TRIGGER refuse_commit ON push.queue; DROP FUNCTION public.refuse_commit()" >/dev/null
# PostgreSQL down: 503 naming the database, no id.
mica_pg_stop "$MICA_TEST_DIR"
send regid "registration_id=$REG_A" title=never description=d
{ [[ "$status" == 503 && "$(jget error.code)" == unavailable && "$(jget dependency)" == database &&
	"$(jget data)" == __absent__ ]]; } || check_fail "PostgreSQL down: $status $(cat "$W/body")"
mica__pg_start "$MICA_TEST_DIR"
[[ "$(q "SELECT count(*) FROM push.message")" == "$before" ]] || check_fail "a message was stored while refused"
[[ "$(grep -c '^W ' "$W/wake.out" || true)" == "$lines" ]] || check_fail "a refused send published a wake"
send_ok regid "registration_id=$REG_A" title=after description=d
ok "no id without a COMMIT; the service sends again once PostgreSQL is back"

stack_end
